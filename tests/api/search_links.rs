//! Searches that follow references: chained parameters, `_has`, `_include` and `_revinclude`,
//! compartment search and `Patient/{id}/$everything`; and `_elements`.

use fhirvault::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TokenSpec, assert_refused, diagnostics, observation, patient, spawn_app};

/// A searchset's entries as `mode Type/id`, sorted.
async fn entries(app: &TestApp, query: &str) -> Vec<String> {
    entries_with(app, query, &app.practitioner()).await
}

async fn entries_with(app: &TestApp, query: &str, token: &str) -> Vec<String> {
    let response = app.get_with(query, token).await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let bundle: Value = response.json().await.unwrap();
    assert_eq!(bundle["type"], "searchset");
    let mut found: Vec<String> = bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let r = &e["resource"];
            format!(
                "{} {}/{}",
                e["search"]["mode"].as_str().unwrap(),
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    found.sort();
    found
}

fn m(rt: &str, id: &str) -> String {
    format!("match {rt}/{id}")
}

fn i(rt: &str, id: &str) -> String {
    format!("include {rt}/{id}")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

struct Fixture {
    dr: String,
    anna: String,
    ben: String,
    anna_hr: String,
    ben_hr: String,
    anna_visit: String,
}

/// Dr Moreau; Anna (GP Moreau) with a heart rate and an encounter with Moreau; Ben with a
/// heart rate.
async fn fixture(app: &TestApp) -> Fixture {
    let dr = app
        .create_ok(&json!({"resourceType": "Practitioner", "name": [{"family": "Moreau"}],
            "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "RPPS-1"}]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut anna = patient("Anna");
    anna["generalPractitioner"] = json!([{"reference": format!("Practitioner/{dr}")}]);
    let anna = app.create_ok(&anna).await["id"].as_str().unwrap().to_owned();
    let ben = app.create_ok(&patient("Benoit")).await["id"].as_str().unwrap().to_owned();
    let anna_hr = app.create_ok(&observation(&anna)).await["id"].as_str().unwrap().to_owned();
    let mut ben_obs = observation(&ben);
    ben_obs["code"]["coding"][0]["code"] = "8310-5".into();
    let ben_hr = app.create_ok(&ben_obs).await["id"].as_str().unwrap().to_owned();
    let visit = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{anna}")},
        "participant": [{"individual": {"reference": format!("Practitioner/{dr}")}}]});
    let anna_visit = app.create_ok(&visit).await["id"].as_str().unwrap().to_owned();
    Fixture { dr, anna, ben, anna_hr, ben_hr, anna_visit }
}

#[tokio::test]
async fn chains_and_has_search_through_references() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    // Chained: the subject's identifier or name, typed or not.
    assert_eq!(entries(&app, "Observation?subject:Patient.identifier=NIR-Anna").await, [m("Observation", &f.anna_hr)]);
    assert_eq!(entries(&app, "Observation?subject.family=benoit").await, [m("Observation", &f.ben_hr)]);
    assert_eq!(entries(&app, "Observation?patient.family=anna&code=8867-4").await, [m("Observation", &f.anna_hr)]);
    assert!(entries(&app, "Observation?subject.family=nobody").await.is_empty());
    assert_eq!(
        entries(&app, "Encounter?participant.identifier=urn:oid:1.2.250.1.71.4.2.1|RPPS-1").await,
        [m("Encounter", &f.anna_visit)]
    );
    // `_has`: patients with a heart rate of that code; with an encounter.
    assert_eq!(entries(&app, "Patient?_has:Observation:patient:code=8310-5").await, [m("Patient", &f.ben)]);
    assert_eq!(
        entries(&app, "Patient?_has:Observation:subject:code=8867-4,8310-5").await,
        sorted(vec![m("Patient", &f.anna), m("Patient", &f.ben)])
    );
    assert_eq!(entries(&app, "Patient?_has:Encounter:subject:status=finished").await, [m("Patient", &f.anna)]);
    // Refusals name the parameter.
    assert_refused(
        &app,
        &[
            ("Observation?subject.nickname=x", "unknown search parameter `subject.nickname`"),
            ("Observation?code.name=x", "not a reference parameter"),
            ("Observation?subject.organization.name=x", "one level"),
            ("Patient?_has:Observation:code:code=x", "not a reference to Patient"),
            ("Patient?_has:Observation=x", "_has:Type:reference:parameter"),
        ],
    )
    .await;
}

#[tokio::test]
async fn includes_add_what_the_page_refers_to_and_what_refers_to_it() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    assert_eq!(
        entries(&app, "Encounter?subject=Patient/{a}&_include=Encounter:practitioner".replace("{a}", &f.anna).as_str())
            .await,
        [i("Practitioner", &f.dr), m("Encounter", &f.anna_visit)]
    );
    // Typed include that matches no target adds nothing.
    let typed = format!("Encounter?subject={}&_include=Encounter:participant:RelatedPerson", f.anna);
    assert_eq!(entries(&app, &typed).await, [m("Encounter", &f.anna_visit)]);
    // Revinclude: Anna's observations and encounters; iterate one more level to the practitioner.
    let rev = format!("Patient?_id={}&_revinclude=Observation:subject&_revinclude=Encounter:subject", f.anna);
    assert_eq!(
        entries(&app, &rev).await,
        [i("Encounter", &f.anna_visit), i("Observation", &f.anna_hr), m("Patient", &f.anna)]
    );
    let iterate =
        format!("Patient?_id={}&_revinclude=Encounter:subject&_include:iterate=Encounter:practitioner", f.anna);
    assert_eq!(
        entries(&app, &iterate).await,
        [i("Encounter", &f.anna_visit), i("Practitioner", &f.dr), m("Patient", &f.anna)]
    );
    // A resource both matched and referred to appears once, as a match.
    let twice = format!("Patient?_id={}&_revinclude=Encounter:subject&_include:iterate=Encounter:subject", f.anna);
    assert_eq!(entries(&app, &twice).await, [i("Encounter", &f.anna_visit), m("Patient", &f.anna)]);
    let both = "Patient?family=anna,benoit&_include=Patient:general-practitioner&_include=Patient:link";
    assert_eq!(
        entries(&app, both).await,
        sorted(vec![i("Practitioner", &f.dr), m("Patient", &f.anna), m("Patient", &f.ben)])
    );
    // The self link keeps the includes; the search's audit record counts both.
    let bundle: Value = app.get(&rev).await.json().await.unwrap();
    let self_link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("_revinclude=Observation%3Asubject"), "{self_link}");
    assert_refused(
        &app,
        &[
            ("Encounter?_include=Encounter:nothing", "no reference parameter `nothing`"),
            ("Encounter?_include=Patient:general-practitioner", "`_include:iterate`"),
            ("Encounter?_include=*", "`*` is not supported"),
            ("Encounter?_include=Encounter:subject:Organization", "does not refer to Organization"),
        ],
    )
    .await;
}

#[tokio::test]
async fn included_resources_are_decided_like_reads() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    // Anna, through a patient token, sees her own records and the practitioner (tenant
    // compartment) but not Ben's observation, even if a query asks for it.
    let token = app.token_for(TokenSpec { role: Role::Patient, patient: Some(&f.anna), ..TokenSpec::default() });
    let rev = "Patient?_revinclude=Observation:subject&_include=Patient:general-practitioner";
    let seen = entries_with(&app, rev, &token).await;
    assert!(seen.contains(&m("Patient", &f.anna)) && seen.contains(&i("Observation", &f.anna_hr)), "{seen:?}");
    assert!(!seen.iter().any(|e| e.contains(&f.ben) || e.contains(&f.ben_hr)), "{seen:?}");
    // Another patient's `$everything`: refused as if Ben did not exist (a 403 would confirm he does).
    let everything = format!("Patient/{}/$everything", f.ben);
    assert_eq!(app.get_with(&everything, &token).await.status(), StatusCode::NOT_FOUND);
    // Her own: her compartment; the practitioner is outside it, and a patient token reads only
    // its own compartment, so it is left out like any refused read.
    let own = entries_with(&app, &format!("Patient/{}/$everything", f.anna), &token).await;
    assert_eq!(own, sorted(vec![m("Encounter", &f.anna_visit), m("Observation", &f.anna_hr), m("Patient", &f.anna)]));
}

#[tokio::test]
async fn compartment_search_and_everything_cover_the_patient() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    assert_eq!(entries(&app, &format!("Patient/{}/Observation", f.anna)).await, [m("Observation", &f.anna_hr)]);
    assert_eq!(
        entries(&app, &format!("Patient/{}/Observation?code=8310-5", f.ben)).await,
        [m("Observation", &f.ben_hr)]
    );
    assert!(entries(&app, &format!("Patient/{}/Observation?code=8310-5", f.anna)).await.is_empty());
    assert_eq!(entries(&app, &format!("Patient/{}/Encounter", f.anna)).await, [m("Encounter", &f.anna_visit)]);
    assert_eq!(
        entries(&app, &format!("Practitioner/{}/Encounter", f.dr)).await,
        [m("Encounter", &f.anna_visit)],
        "the Practitioner compartment too"
    );
    let not_member = app.get(&format!("Patient/{}/Organization", f.anna)).await;
    assert_eq!(not_member.status(), StatusCode::BAD_REQUEST);
    assert!(diagnostics(not_member).await.contains("not in the Patient compartment"));

    // $everything: the patient, its compartment, and the practitioner they refer to.
    let all = entries(&app, &format!("Patient/{}/$everything", f.anna)).await;
    assert_eq!(
        all,
        [i("Practitioner", &f.dr), m("Encounter", &f.anna_visit), m("Observation", &f.anna_hr), m("Patient", &f.anna)]
    );
    let only = entries(&app, &format!("Patient/{}/$everything?_type=Observation,Patient", f.anna)).await;
    assert_eq!(only, [i("Practitioner", &f.dr), m("Observation", &f.anna_hr), m("Patient", &f.anna)]);
    // Paged: one member per page, every member once, through `next` links.
    let mut url = format!("Patient/{}/$everything?_count=1", f.anna);
    let mut members = Vec::new();
    loop {
        let bundle: Value = app.get(&url).await.json().await.unwrap();
        assert_eq!(bundle["total"], 3);
        for e in bundle["entry"].as_array().unwrap() {
            if e["search"]["mode"] == "match" {
                members.push(e["resource"]["resourceType"].as_str().unwrap().to_owned());
            }
        }
        let next = bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next");
        let Some(next) = next else { break };
        url = next["url"].as_str().unwrap().strip_prefix(&format!("{}/", app.base)).unwrap().to_owned();
    }
    assert_eq!(members, ["Encounter", "Observation", "Patient"]);
    // Unknown patient, and `$everything` elsewhere.
    assert_eq!(app.get("Patient/nobody/$everything").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get(&format!("Practitioner/{}/$everything", f.dr)).await.status(), StatusCode::NOT_FOUND);
    let bad = app.get(&format!("Patient/{}/$everything?since=2020", f.anna)).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn elements_keep_only_what_was_asked_and_say_so() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let bundle: Value =
        app.get(&format!("Observation?_id={}&_elements=status,value", f.anna_hr)).await.json().await.unwrap();
    let resource = &bundle["entry"][0]["resource"];
    let mut keys: Vec<&str> = resource.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["id", "meta", "resourceType", "status", "valueQuantity"]);
    assert_eq!(resource["meta"]["tag"][0]["code"], "SUBSETTED");
    assert!(resource["meta"]["versionId"].is_string());
    let self_link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("_elements=status%2Cvalue"), "{self_link}");
}
