//! Instance and type history: order, `_count` paging through MAC-bound links, `_since`.

use std::collections::BTreeSet;

use fhirvault::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TokenSpec, diagnostics, observation, patient, spawn_app};

async fn bundle(app: &TestApp, url: &str, token: &str) -> Value {
    let response = app.client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "history");
    body
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_owned())
}

async fn make_versions(app: &TestApp, family: &str, updates: usize) -> String {
    let mut resource = app.create_ok(&patient(family)).await;
    for i in 0..updates {
        resource["name"][0]["given"] = json!([format!("V{}", i + 2)]);
        assert_eq!(app.update(&resource).await.status(), StatusCode::OK);
    }
    resource["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn instance_history_pages_newest_first_through_next_links() {
    let app = spawn_app().await;
    let id = make_versions(&app, "Roux", 4).await;
    app.request(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap();
    let token = app.practitioner();

    let mut url = format!("{}/Patient/{id}/_history?_count=2", app.base);
    let mut versions = Vec::new();
    let mut pages = 0;
    loop {
        let page = bundle(&app, &url, &token).await;
        assert_eq!(page["total"], 6);
        pages += 1;
        for entry in page["entry"].as_array().unwrap() {
            versions.push(entry["response"]["etag"].as_str().unwrap().to_owned());
            let method = entry["request"]["method"].as_str().unwrap();
            assert_eq!(entry["resource"].is_null(), method == "DELETE");
        }
        match next_link(&page) {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (1..=6).rev().map(|v| format!("W/\"{v}\"")).collect();
    assert_eq!(versions, expected);
}

#[tokio::test]
async fn type_history_lists_every_resource_of_the_type() {
    let app = spawn_app().await;
    let a = make_versions(&app, "Blanc", 1).await;
    let b = make_versions(&app, "Guerin", 0).await;
    app.create_ok(&observation(&a)).await;

    let page = bundle(&app, &format!("{}/Patient/_history", app.base), &app.practitioner()).await;

    assert_eq!(page["total"], 3);
    let ids: BTreeSet<&str> =
        page["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([a.as_str(), b.as_str()]));
    let first = &page["entry"][0];
    assert_eq!(first["fullUrl"].as_str().unwrap(), format!("{}/Patient/{b}", app.base));
    assert_eq!(first["request"]["method"], "POST");
    assert_eq!(first["response"]["status"], "201 Created");
}

#[tokio::test]
async fn since_keeps_only_later_versions() {
    let app = spawn_app().await;
    let mut resource = app.create_ok(&patient("Muller")).await;
    let id = resource["id"].as_str().unwrap().to_owned();
    resource["active"] = json!(true);
    let v2: Value = app.update(&resource).await.json().await.unwrap();
    let since = v2["meta"]["lastUpdated"].as_str().unwrap().to_owned();

    let url = format!("{}/Patient/{id}/_history?_since={}", app.base, since.replace('+', "%2B"));
    let page = bundle(&app, &url, &app.practitioner()).await;

    assert_eq!(page["total"], 1);
    assert_eq!(page["entry"][0]["resource"]["meta"]["versionId"], "2");
}

#[tokio::test]
async fn paging_links_work_only_for_whom_and_what_they_were_issued() {
    let app = spawn_app().await;
    let id = make_versions(&app, "Faure", 3).await;
    let alice = app.token_for(TokenSpec { subject: Some("alice"), ..TokenSpec::default() });
    let bob = app.token_for(TokenSpec { subject: Some("bob"), ..TokenSpec::default() });
    let first = bundle(&app, &format!("{}/Patient/{id}/_history?_count=1", app.base), &alice).await;
    let next = next_link(&first).unwrap();

    // The owner can follow it.
    assert_eq!(app.client.get(&next).bearer_auth(&alice).send().await.unwrap().status(), StatusCode::OK);
    // Another user, another query, a tampered cursor, another tenant: refused.
    let refused = [
        (next.clone(), bob.clone()),
        (next.replace("_count=1", "_count=2"), alice.clone()),
        (next.replace("_cursor=", "_cursor=A"), alice.clone()),
        (
            next.replace("/fhir/demo/", "/fhir/other/"),
            app.token_for(TokenSpec { tenant: "other", subject: Some("alice"), ..TokenSpec::default() }),
        ),
    ];
    for (url, token) in refused {
        let response = app.client.get(&url).bearer_auth(&token).send().await.unwrap();
        let status = response.status();
        let says = diagnostics(response).await;
        assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND, "{url}: {status} {says}");
    }
}

#[tokio::test]
async fn a_patient_sees_only_their_compartment_in_type_history() {
    let app = spawn_app().await;
    let me = app.create_ok(&patient("Andre")).await["id"].as_str().unwrap().to_owned();
    let other = app.create_ok(&patient("Lambert")).await["id"].as_str().unwrap().to_owned();
    app.create_ok(&observation(&me)).await;
    app.create_ok(&observation(&other)).await;
    let token = app.token_for(TokenSpec { role: Role::Patient, patient: Some(&me), ..TokenSpec::default() });

    let page = bundle(&app, &format!("{}/Observation/_history", app.base), &token).await;

    let entries = page["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["resource"]["subject"]["reference"], format!("Patient/{me}"));
    assert!(page.get("total").is_none(), "a filtered listing must not reveal the unfiltered total");
}
