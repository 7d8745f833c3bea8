//! Type-level search through the HTTP API: every parameter type, modifiers and prefixes,
//! OR and AND, paging links bound to their principal, errors as OperationOutcomes.

use fhirvault::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TokenSpec, assert_refused, observation, patient, spawn_app};

/// The ids a search finds (one page), asserting a `searchset` with a consistent total.
async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let response = app.get(query).await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let bundle: Value = response.json().await.unwrap();
    assert_eq!(bundle["type"], "searchset", "{query}");
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    for entry in &entries {
        assert_eq!(entry["search"]["mode"], "match");
        assert!(entry["fullUrl"].as_str().unwrap().ends_with(entry["resource"]["id"].as_str().unwrap()));
    }
    let mut ids: Vec<String> = entries.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(bundle["total"], ids.len(), "{query}");
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<&str>) -> Vec<String> {
    ids.sort_unstable();
    ids.into_iter().map(str::to_owned).collect()
}

async fn create_id(app: &TestApp, resource: &Value) -> String {
    app.create_ok(resource).await["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_parameter_type_finds_what_it_should() {
    let app = spawn_app().await;
    let mut anna = patient("Müller");
    anna["name"] = json!([{"family": "Müller", "given": ["Anna-Lena"], "text": "Anna-Lena Müller"}]);
    anna["birthDate"] = "1970-03-15".into();
    let anna = create_id(&app, &anna).await;
    let mut li = patient("Li");
    li["gender"] = "male".into();
    li["birthDate"] = "1985".into();
    li["active"] = true.into();
    let li = create_id(&app, &li).await;
    let other = create_id(&app, &patient("Lindqvist")).await;

    // Strings: word starts, folded; short words whole; `:exact`; several words as a prefix.
    assert_eq!(ids(&app, "Patient?family=muller").await, sorted(vec![&anna]));
    assert_eq!(ids(&app, "Patient?family=MÜL").await, sorted(vec![&anna]));
    assert_eq!(ids(&app, "Patient?given=lena").await, sorted(vec![&anna]));
    assert_eq!(ids(&app, "Patient?family=li").await, sorted(vec![&li]));
    assert_eq!(ids(&app, "Patient?family=lin").await, sorted(vec![&other]));
    assert_eq!(ids(&app, "Patient?family=li,lin").await, sorted(vec![&li, &other]));
    assert_eq!(ids(&app, "Patient?family:exact=Müller").await, sorted(vec![&anna]));
    assert!(ids(&app, "Patient?family:exact=muller").await.is_empty());
    assert_eq!(ids(&app, "Patient?name=anna-lena m").await, sorted(vec![&anna]));
    assert!(ids(&app, "Patient?family=ller").await.is_empty());
    // `name` and `address` find the parts that `family`, `given`, `address-city`... index.
    assert_eq!(ids(&app, "Patient?name=muller").await, sorted(vec![&anna]));
    assert_eq!(ids(&app, "Patient?name=lena").await, sorted(vec![&anna]));
    assert_eq!(ids(&app, "Patient?name=li").await, sorted(vec![&li]));
    assert_eq!(ids(&app, "Patient?name=camille").await, sorted(vec![&li, &other]));
    assert_eq!(ids(&app, "Patient?name:exact=Müller").await, sorted(vec![&anna]));
    assert_eq!(ids(&app, "Patient?name:exact=Anna-Lena Müller").await, sorted(vec![&anna]));
    assert_eq!(ids(&app, "Patient?phonetic=lindq").await, sorted(vec![&other]));
    assert_eq!(ids(&app, "Patient?address=lindq").await, sorted(vec![&other]));
    assert_eq!(ids(&app, "Patient?address=lyon&address=fr").await.len(), 3);
    assert_eq!(ids(&app, "Patient?address:exact=Lyon").await.len(), 3);
    assert_eq!(ids(&app, "Patient?address-city=lyo&address-country=fr").await.len(), 3);
    assert_eq!(ids(&app, "Patient?given:missing=false&address-city:missing=false").await.len(), 3);
    assert!(ids(&app, "Patient?address-state:missing=false").await.is_empty());
    assert!(ids(&app, "Patient?address-city=rue").await.is_empty(), "a line is not a city");

    // Tokens: code, system|code, |code, system|; `:not`; booleans; identifiers.
    assert_eq!(ids(&app, "Patient?gender=male").await, sorted(vec![&li]));
    assert_eq!(ids(&app, "Patient?gender:not=male").await, sorted(vec![&anna, &other]));
    assert_eq!(ids(&app, "Patient?active=true").await, sorted(vec![&li]));
    assert_eq!(ids(&app, "Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|NIR-Li").await, sorted(vec![&li]));
    assert_eq!(ids(&app, "Patient?identifier=NIR-Li").await, sorted(vec![&li]));
    assert!(ids(&app, "Patient?identifier=|NIR-Li").await.is_empty(), "the identifier has a system");
    assert_eq!(ids(&app, "Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|").await.len(), 3);

    // Dates with prefixes and partial precision; AND by repetition.
    assert_eq!(ids(&app, "Patient?birthdate=1970-03").await, sorted(vec![&anna]));
    assert_eq!(ids(&app, "Patient?birthdate=lt1971").await, sorted(vec![&anna]));
    // `1985` overlaps the days above 1985-01-01 and those below 1985-12-31 (R4's `ge`, `le`).
    assert_eq!(ids(&app, "Patient?birthdate=ge1985-01-01&birthdate=le1985-12-31").await, sorted(vec![&li]));
    assert_eq!(ids(&app, "Patient?birthdate=sa1979&birthdate=eb1985").await, sorted(vec![&other]));
    assert_eq!(ids(&app, "Patient?birthdate=sa1979&birthdate=eb1986").await, sorted(vec![&li, &other]));
    assert_eq!(ids(&app, "Patient?birthdate=1985").await, sorted(vec![&li]));
    assert_eq!(ids(&app, "Patient?birthdate=ne1985").await, sorted(vec![&anna, &other]));

    // `:missing`, `_id`, and a parameter combined with `_id`.
    assert_eq!(ids(&app, "Patient?active:missing=false").await, sorted(vec![&li]));
    assert_eq!(ids(&app, "Patient?active:missing=true").await, sorted(vec![&anna, &other]));
    assert_eq!(ids(&app, &format!("Patient?_id={anna},{li}")).await, sorted(vec![&anna, &li]));
    assert_eq!(ids(&app, &format!("Patient?_id={anna}&gender=male")).await, Vec::<String>::new());

    // References, quantities, codes and dates on Observations.
    let first = create_id(&app, &observation(&anna)).await;
    let mut later = observation(&li);
    later["effectiveDateTime"] = "2025-01-02".into();
    later["valueQuantity"] =
        json!({"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"});
    later["code"] = json!({"coding": [{"system": "http://loinc.org", "code": "8480-6"}]});
    let later = create_id(&app, &later).await;
    assert_eq!(ids(&app, &format!("Observation?subject=Patient/{anna}")).await, sorted(vec![&first]));
    assert_eq!(ids(&app, &format!("Observation?patient={li}")).await, sorted(vec![&later]));
    assert_eq!(ids(&app, &format!("Observation?subject:Patient={li}")).await, sorted(vec![&later]));
    assert_eq!(ids(&app, &format!("Observation?subject={}/Patient/{anna}", app.base)).await, sorted(vec![&first]));
    assert_eq!(ids(&app, "Observation?code=http://loinc.org|8867-4").await, sorted(vec![&first]));
    assert_eq!(ids(&app, "Observation?code=8867-4,8480-6").await, sorted(vec![&first, &later]));
    assert_eq!(ids(&app, "Observation?date=ge2025").await, sorted(vec![&later]));
    assert_eq!(ids(&app, "Observation?date=2024-05-01").await, sorted(vec![&first]));
    assert_eq!(ids(&app, "Observation?value-quantity=72.5").await, sorted(vec![&first]));
    assert_eq!(ids(&app, "Observation?value-quantity=72").await, Vec::<String>::new());
    assert_eq!(
        ids(&app, "Observation?value-quantity=gt100|http://unitsofmeasure.org|mm[Hg]").await,
        sorted(vec![&later])
    );
    assert_eq!(ids(&app, "Observation?value-quantity=gt50||/min").await, sorted(vec![&first]));
    assert_eq!(ids(&app, "Observation?value-quantity=gt50||mmHg").await, sorted(vec![&later]), "the written unit");

    // An update moves the resource in the index; a deletion takes it out.
    let mut renamed = app.get(&format!("Patient/{other}")).await.json::<Value>().await.unwrap();
    renamed["name"] = json!([{"family": "Okafor"}]);
    assert_eq!(app.update(&renamed).await.status(), StatusCode::OK);
    assert!(ids(&app, "Patient?family=lindqvist").await.is_empty());
    assert_eq!(ids(&app, "Patient?family=okafor").await, sorted(vec![&other]));
    assert_eq!(app.request(Method::DELETE, &format!("Patient/{other}")).send().await.unwrap().status(), 204);
    assert!(ids(&app, "Patient?family=okafor").await.is_empty());
    assert_eq!(ids(&app, "Patient").await, sorted(vec![&anna, &li]));
}

#[tokio::test]
async fn pages_follow_next_links_that_only_their_principal_can_use() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(create_id(&app, &patient(&format!("Durand{i}"))).await);
    }
    created.sort();
    let token = app.practitioner();
    let mut url = format!("{}/Patient?address-city=lyon&_count=2", app.base);
    let mut seen = Vec::new();
    let mut first_next = None;
    loop {
        let page: Value = app.client.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        assert_eq!(page["total"], 5);
        assert!(page["link"][0]["url"].as_str().unwrap().contains("address-city=lyon"));
        seen.extend(page["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()));
        let next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next");
        match next {
            Some(link) => {
                url = link["url"].as_str().unwrap().to_owned();
                first_next.get_or_insert_with(|| url.clone());
            }
            None => break,
        }
    }
    assert_eq!(seen, created, "every match once, in id order");

    let next = first_next.unwrap();
    let other = app.token_for(TokenSpec { subject: Some("someone-else"), ..TokenSpec::default() });
    let replayed = app.client.get(&next).bearer_auth(&other).send().await.unwrap();
    assert_eq!(replayed.status(), StatusCode::BAD_REQUEST);
    let tampered = next.replace("address-city=lyon", "address-city=paris");
    let response = app.client.get(&tampered).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn control_parameters_post_search_and_refusals() {
    let app = spawn_app().await;
    for family in ["Martin", "Martinez", "Bernard"] {
        app.create_ok(&patient(family)).await;
    }
    let summary: Value = app.get("Patient?family=martin&_summary=count").await.json().await.unwrap();
    assert_eq!((summary["total"].as_u64(), summary.get("entry")), (Some(2), None));
    let no_total: Value = app.get("Patient?family=martin&_total=none").await.json().await.unwrap();
    assert!(no_total.get("total").is_none());
    assert_eq!(no_total["entry"].as_array().unwrap().len(), 2);

    // POST [type]/_search: the form's parameters and the URL's together.
    let posted = app
        .request(Method::POST, "Patient/_search?gender=female")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=bern")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    let posted: Value = posted.json().await.unwrap();
    assert_eq!(posted["total"], 1);
    let json_body = app
        .request(Method::POST, "Patient/_search")
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Unknown or unsupported: 400 with an OperationOutcome naming it; lenient: ignored, not in `self`.
    assert_refused(
        &app,
        &[
            ("Patient?nickname=x", "unknown search parameter `nickname`"),
            ("Patient?family:contains=art", "not available"),
            ("Patient?birthdate=yesterday", "not a FHIR date"),
            ("Patient?gender:text=f", "not supported"),
            ("Patient?_sort=family", "have no order"),
            ("Patient?_count=many", "_count"),
        ],
    )
    .await;
    let lenient = app
        .request(Method::GET, "Patient?nickname=x&family=martinez")
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(lenient.status(), StatusCode::OK);
    let lenient: Value = lenient.json().await.unwrap();
    assert_eq!(lenient["total"], 1);
    let self_link = lenient["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("family=martinez") && !self_link.contains("nickname"), "{self_link}");
}

#[tokio::test]
async fn sorted_searches_page_in_their_order() {
    let app = spawn_app().await;
    let mut made = Vec::new();
    for (family, born) in
        [("Sorel", Some("1990-05-01")), ("Sorin", Some("1960")), ("Soria", None), ("Soro", Some("1975-01-01"))]
    {
        let mut p = patient(family);
        match born {
            Some(date) => p["birthDate"] = date.into(),
            None => drop(p.as_object_mut().unwrap().remove("birthDate")),
        }
        made.push((family, create_id(&app, &p).await));
    }
    let family_of = |id: &str| made.iter().find(|(_, i)| i == id).unwrap().0;
    // Follow `next` links two at a time; the order holds across pages, undated last.
    let order = |query: &str| {
        let url = format!("{}/{query}&_count=2", app.base);
        let (client, token, family_of) = (&app.client, app.practitioner(), &family_of);
        async move {
            let (mut url, mut families) = (url, Vec::new());
            loop {
                let page: Value = client.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
                assert_eq!(page["total"], 4, "{url}");
                for e in page["entry"].as_array().unwrap() {
                    families.push(family_of(e["resource"]["id"].as_str().unwrap()));
                }
                match page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
                    Some(next) => url = next["url"].as_str().unwrap().to_owned(),
                    None => break,
                }
            }
            families
        }
    };
    assert_eq!(order("Patient?family=sor&_sort=birthdate").await, ["Sorin", "Soro", "Sorel", "Soria"]);
    assert_eq!(order("Patient?family=sor&_sort=-birthdate").await, ["Sorel", "Soro", "Sorin", "Soria"]);
    assert_eq!(order("Patient?family=sor&_sort=-_lastUpdated").await, ["Soro", "Soria", "Sorin", "Sorel"]);
    let self_link: Value = app.get("Patient?family=sor&_sort=-birthdate,_id").await.json().await.unwrap();
    assert!(self_link["link"][0]["url"].as_str().unwrap().contains("_sort=-birthdate%2C_id"));
    let unknown = app.get("Patient?_sort=shoe-size").await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_patient_finds_only_their_own_records_and_no_total() {
    let app = spawn_app().await;
    let mine = create_id(&app, &patient("Petit")).await;
    let theirs = create_id(&app, &patient("Petitjean")).await;
    app.create_ok(&observation(&mine)).await;
    app.create_ok(&observation(&theirs)).await;
    let token = app.token_for(TokenSpec { role: Role::Patient, patient: Some(&mine), ..TokenSpec::default() });
    let response = app.get_with("Patient?family=petit", &token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let bundle: Value = response.json().await.unwrap();
    assert!(bundle.get("total").is_none(), "a filtered listing shows no total");
    let found: Vec<&str> =
        bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(found, [mine.as_str()]);
    let observations: Value = app.get_with("Observation?code=8867-4", &token).await.json().await.unwrap();
    assert_eq!(observations["entry"].as_array().unwrap().len(), 1);
    // A researcher has no clinical search.
    let researcher = app.token(Role::Researcher);
    assert_eq!(app.get_with("Patient?family=petit", &researcher).await.status(), StatusCode::FORBIDDEN);
}
