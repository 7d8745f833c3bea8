//! Transaction and batch Bundles through the HTTP API: atomicity, processing order, reference
//! rewriting, conditional entries, limits, and independent batch entries.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, diagnostics, observation, patient, spawn_app, spawn_app_with};

const FHIR_JSON: &str = "application/fhir+json";

async fn post_bundle(app: &TestApp, bundle: &Value) -> reqwest::Response {
    app.request(Method::POST, "").header("content-type", FHIR_JSON).body(bundle.to_string()).send().await.unwrap()
}

fn entry(full_url: Option<&str>, method: &str, url: &str, resource: Option<Value>) -> Value {
    let mut entry = json!({"request": {"method": method, "url": url}});
    if let Some(full_url) = full_url {
        entry["fullUrl"] = full_url.into();
    }
    if let Some(resource) = resource {
        entry["resource"] = resource;
    }
    entry
}

fn transaction(entries: Vec<Value>) -> Value {
    let entries = Value::Array(entries);
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// The ids a search finds.
async fn found(app: &TestApp, query: &str) -> Vec<String> {
    let response = app.get(query).await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let bundle: Value = response.json().await.unwrap();
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// `Type/id` of a response entry's `location` (`Type/id/_history/v`).
fn located(entry: &Value) -> String {
    let location = entry["response"]["location"].as_str().unwrap();
    location.split("/_history/").next().unwrap().to_owned()
}

#[tokio::test]
async fn a_transaction_commits_every_entry_and_rewrites_its_references() {
    let app = spawn_app().await;
    let existing = app.create_ok(&patient("Existing")).await;
    let existing_id = existing["id"].as_str().unwrap();

    let mut obs = observation("ignored");
    obs["subject"] = json!({"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"});
    obs["performer"] = json!([{"reference": "Organization/org-1"}]);
    obs["contained"] = json!([{"resourceType": "Provenance", "recorded": "2024-05-01T10:00:00Z",
        "target": [{"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}],
        "agent": [{"who": {"reference": "http://example.org/fhir/Organization/org-1"}}]}]);
    let mut other = observation("ignored");
    other["subject"] = json!({"reference": "Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|NIR-Existing"});
    let bundle = transaction(vec![
        // GET first in the Bundle, processed last: it sees the new Patient.
        entry(None, "GET", "Patient?family=Transacted", None),
        entry(Some("urn:uuid:e0b5a5b3-1c8f-4b0e-9a0b-3b8c5f2f0c11"), "POST", "Observation", Some(obs)),
        entry(Some("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"), "POST", "Patient", Some(patient("Transacted"))),
        entry(
            Some("http://example.org/fhir/Organization/org-1"),
            "PUT",
            "Organization/org-1",
            Some(json!({"resourceType": "Organization", "id": "org-1", "name": "CHU"})),
        ),
        entry(None, "POST", "Observation", Some(other)),
    ]);
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["type"], "transaction-response");
    let entries = answer["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let statuses: Vec<&str> = entries.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK", "201 Created", "201 Created", "201 Created", "201 Created"]);
    for written in entries.iter().skip(1) {
        assert!(written["response"]["etag"].as_str().unwrap().starts_with("W/\""), "{written}");
        assert!(written.get("resource").is_none(), "minimal by default: {written}");
    }
    let new_patient = located(&entries[2]);
    assert!(new_patient.starts_with("Patient/"), "{new_patient}");
    assert_eq!(located(&entries[3]), "Organization/org-1");

    // The GET entry ran after the writes.
    let searched = &entries[0]["resource"];
    assert_eq!(searched["type"], "searchset");
    assert_eq!(searched["total"], 1);

    // References to the Bundle's entries now name the ids the server chose, everywhere.
    let stored: Value = app.get(&located(&entries[1])).await.json().await.unwrap();
    assert_eq!(stored["subject"]["reference"], new_patient.as_str());
    assert_eq!(stored["performer"][0]["reference"], "Organization/org-1");
    assert_eq!(stored["contained"][0]["target"][0]["reference"], new_patient.as_str());
    assert_eq!(stored["contained"][0]["agent"][0]["who"]["reference"], "Organization/org-1");
    // The conditional reference resolved to the one Patient it matches.
    let resolved: Value = app.get(&located(&entries[4])).await.json().await.unwrap();
    assert_eq!(resolved["subject"]["reference"], format!("Patient/{existing_id}"));
    // And the new resources are searchable.
    let subject = new_patient.trim_start_matches("Patient/");
    assert_eq!(found(&app, &format!("Observation?subject={new_patient}")).await.len(), 1);
    assert_eq!(found(&app, &format!("Observation?patient={subject}")).await.len(), 1);
}

#[tokio::test]
async fn a_failed_transaction_leaves_nothing_behind() {
    let app = spawn_app().await;
    let kept = app.create_ok(&patient("Kept")).await;
    let kept_id = kept["id"].as_str().unwrap();
    let mut invalid = observation("x");
    invalid["status"] = "not-a-status".into();
    invalid["subject"] = json!({"reference": "urn:uuid:1d0c7e1c-0e43-4b0c-9d7e-0b5f2c1e2a33"});

    // An invalid resource: 422, naming the entry.
    let bundle = transaction(vec![
        entry(Some("urn:uuid:1d0c7e1c-0e43-4b0c-9d7e-0b5f2c1e2a33"), "POST", "Patient", Some(patient("Ghost"))),
        entry(None, "POST", "Observation", Some(invalid)),
        entry(None, "DELETE", &format!("Patient/{kept_id}"), None),
    ]);
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(diagnostics(response).await.contains("entry 1"));

    // A failed version precondition, found only when the index commits: still nothing.
    let mut stale = kept.clone();
    stale["gender"] = "male".into();
    let mut put = entry(None, "PUT", &format!("Patient/{kept_id}"), Some(stale));
    put["request"]["ifMatch"] = "W/\"7\"".into();
    let bundle = transaction(vec![entry(None, "POST", "Patient", Some(patient("Ghost"))), put]);
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    assert!(diagnostics(response).await.contains("entry 1"));

    assert!(found(&app, "Patient?family=Ghost").await.is_empty());
    assert_eq!(found(&app, "Patient").await, [kept_id]);
    assert_eq!(app.get(&format!("Patient/{kept_id}")).await.status(), StatusCode::OK);
    let history: Value = app.get("Patient/_history").await.json().await.unwrap();
    assert_eq!(history["total"], 1);
}

#[tokio::test]
async fn a_transaction_refuses_what_it_cannot_do_whole() {
    let app = spawn_app_with(|s| s.writes.bundle_max_entries = 3).await;
    let cases = [
        (
            transaction(vec![entry(None, "POST", "Observation", Some(observation("x"))).tap(|e| {
                e["resource"]["subject"]["reference"] = "urn:uuid:0b9f3c84-9d2c-4c6e-8a41-7f1e2d3c4b5a".into();
            })]),
            StatusCode::BAD_REQUEST,
            "names no entry",
        ),
        (
            transaction(vec![
                entry(None, "PUT", "Patient/p1", Some(json!({"resourceType": "Patient", "id": "p1"}))),
                entry(None, "DELETE", "Patient/p1", None),
            ]),
            StatusCode::BAD_REQUEST,
            "another entry",
        ),
        (
            transaction(vec![entry(None, "POST", "Observation?code=x", Some(observation("x")))]),
            StatusCode::BAD_REQUEST,
            "cannot name",
        ),
        (
            transaction((0..4).map(|_| entry(None, "POST", "Patient", Some(patient("Many")))).collect()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "writes.bundle_max_entries",
        ),
        (json!({"resourceType": "Bundle", "type": "collection"}), StatusCode::BAD_REQUEST, "transaction"),
        (json!({"resourceType": "Patient"}), StatusCode::BAD_REQUEST, "Bundle"),
    ];
    for (bundle, status, message) in cases {
        let response = post_bundle(&app, &bundle).await;
        assert_eq!(response.status(), status, "{bundle}");
        let said = diagnostics(response).await;
        assert!(said.contains(message), "{said}");
    }
    assert!(found(&app, "Patient").await.is_empty());

    let small = spawn_app_with(|s| s.writes.bundle_max_bytes = 512).await;
    let big = transaction((0..3).map(|_| entry(None, "POST", "Patient", Some(patient("Big")))).collect());
    let response = post_bundle(&small, &big).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(diagnostics(response).await.contains("writes.bundle_max_bytes"));
}

#[tokio::test]
async fn a_transaction_deletes_first_and_answers_with_representations_when_asked() {
    let app = spawn_app().await;
    let doomed = app.create_ok(&patient("Doomed")).await;
    let doomed_id = doomed["id"].as_str().unwrap();
    let bundle = transaction(vec![
        entry(None, "POST", "Patient", Some(patient("Born"))),
        entry(None, "DELETE", &format!("Patient/{doomed_id}"), None),
        entry(None, "DELETE", "Patient?family=Nobody", None),
    ]);
    let response = app
        .request(Method::POST, "")
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=representation")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["entry"][0]["resource"]["name"][0]["family"], "Born");
    assert_eq!(answer["entry"][1]["response"]["status"], "204 No Content");
    assert_eq!(answer["entry"][2]["response"]["status"], "204 No Content");
    assert_eq!(app.get(&format!("Patient/{doomed_id}")).await.status(), StatusCode::GONE);

    // A conditional create that matches writes nothing and answers 200 with the match.
    let mut conditional = entry(None, "POST", "Patient", Some(patient("Born")));
    conditional["request"]["ifNoneExist"] = "identifier=urn:oid:1.2.250.1.213.1.4.8|NIR-Born".into();
    let answer: Value = post_bundle(&app, &transaction(vec![conditional])).await.json().await.unwrap();
    assert_eq!(answer["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(found(&app, "Patient?family=Born").await.len(), 1);
}

#[tokio::test]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let app = spawn_app().await;
    let mut invalid = patient("Invalid");
    invalid["gender"] = "sometimes".into();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry(None, "POST", "Patient", Some(patient("Batched"))),
        entry(None, "GET", "Patient/does-not-exist", None),
        entry(None, "POST", "Patient", Some(invalid)),
        entry(None, "GET", "Patient?family=Batched", None),
        entry(None, "PUT", "Patient/batch-1", Some(json!({"resourceType": "Patient", "id": "batch-1"}))),
    ]});
    let response = post_bundle(&app, &batch).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["type"], "batch-response");
    let statuses: Vec<&str> =
        answer["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "404 Not Found", "422 Unprocessable Entity", "200 OK", "201 Created"]);
    assert_eq!(answer["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(answer["entry"][3]["resource"]["total"], 1);
    assert_eq!(found(&app, "Patient").await.len(), 2);
}

/// `Value::tap`: adjust a value in place, in an expression.
trait Tap {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
