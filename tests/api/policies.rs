//! The main access rules over HTTP, each decided by the shipped Cedar policies and audited with
//! the id of the policy that decided.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, TokenSpec, diagnostics, observation, patient, spawn_app, spawn_app_with};

async fn audited_policies(app: &TestApp) -> Vec<(i64, Option<String>)> {
    sqlx::query_as("SELECT outcome, policy FROM audit_records ORDER BY seq")
        .fetch_all(&app.index().await)
        .await
        .unwrap()
}

async fn last_audited(app: &TestApp) -> (i64, Option<String>) {
    audited_policies(app).await.pop().unwrap()
}

#[tokio::test]
async fn a_token_of_one_tenant_reaches_nothing_of_another() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Bolatenant")).await;
    let id = created["id"].as_str().unwrap();
    let other = app.token_for(TokenSpec { tenant: "other", ..TokenSpec::default() });
    let response = app.get_with(&format!("Patient/{id}"), &other).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(diagnostics(response).await.contains("the token is for tenant `other`, not `demo`"));
    assert_eq!(last_audited(&app).await, (403, Some("tenant-isolation".to_owned())));
    let search = app.get_with("Patient?family=Bolatenant", &other).await;
    assert_eq!(search.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_patient_token_reaches_its_own_record_and_not_even_the_existence_of_another() {
    let app = spawn_app().await;
    let mine = app.create_ok(&patient("Compartmentmine")).await;
    let theirs = app.create_ok(&patient("Compartmenttheirs")).await;
    let (mine, theirs) = (mine["id"].as_str().unwrap(), theirs["id"].as_str().unwrap());
    app.create_ok(&observation(theirs)).await;
    let token =
        app.token_for(TokenSpec { role: fhirvault::auth::Role::Patient, patient: Some(mine), ..TokenSpec::default() });
    assert_eq!(app.get_with(&format!("Patient/{mine}"), &token).await.status(), StatusCode::OK);
    let other = app.get_with(&format!("Patient/{theirs}"), &token).await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    assert_eq!(last_audited(&app).await, (404, Some("patient-compartment".to_owned())));
    // Their observations do not appear in a search either.
    let search: Value =
        app.get_with(&format!("Observation?subject=Patient/{theirs}"), &token).await.json().await.unwrap();
    assert_eq!(search["entry"].as_array().map_or(0, Vec::len), 0, "{search}");
}

#[tokio::test]
async fn organizations_outside_the_eea_are_refused() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Jurisdictionfar")).await;
    let id = created["id"].as_str().unwrap();
    let from = |country| app.token_for(TokenSpec { jurisdiction: Some(country), ..TokenSpec::default() });

    assert_eq!(app.get_with(&format!("Patient/{id}"), &from("DE")).await.status(), StatusCode::OK);
    assert_eq!(app.get_with(&format!("Patient/{id}"), &from("NO")).await.status(), StatusCode::OK);
    for country in ["US", "CH", "CN"] {
        let response = app.get_with(&format!("Patient/{id}"), &from(country)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{country}");
        let text = diagnostics(response).await;
        assert!(text.contains(&format!("operates from {country}")), "{text}");
        assert_eq!(last_audited(&app).await, (403, Some("eea-jurisdiction".to_owned())));
    }
    // Writes and searches too.
    let write = app.post_with("Patient", &patient("Jurisdictionwrite"), &from("US")).await;
    assert_eq!(write.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get_with("Patient?family=Jurisdictionfar", &from("US")).await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_tenant_may_serve_adequacy_countries_and_hide_what_it_refuses() {
    let app = spawn_app_with(|s| {
        let demo = s.tenants.get_mut("demo").unwrap();
        demo.allow_adequacy_countries = true;
        demo.hide_denied_existence = true;
    })
    .await;
    let created = app.create_ok(&patient("Adequacy")).await;
    let id = created["id"].as_str().unwrap();
    let from = |country| app.token_for(TokenSpec { jurisdiction: Some(country), ..TokenSpec::default() });
    assert_eq!(app.get_with(&format!("Patient/{id}"), &from("CH")).await.status(), StatusCode::OK);
    assert_eq!(app.get_with(&format!("Patient/{id}"), &from("JP")).await.status(), StatusCode::OK);
    // Refused, and answered as if the record did not exist.
    let us = app.get_with(&format!("Patient/{id}"), &from("US")).await;
    assert_eq!(us.status(), StatusCode::NOT_FOUND);
    assert_eq!(last_audited(&app).await, (404, Some("eea-jurisdiction".to_owned())));
    let scoped = app.token_for(TokenSpec { scope: Some("user/Observation.rs"), ..TokenSpec::default() });
    assert_eq!(app.get_with(&format!("Patient/{id}"), &scoped).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(last_audited(&app).await, (404, Some("smart-scopes".to_owned())));
}

#[tokio::test]
async fn a_practitioner_token_issued_for_research_is_refused() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Purposeful")).await;
    let id = created["id"].as_str().unwrap();
    let for_purpose = |purpose| app.token_for(TokenSpec { purpose: Some(purpose), ..TokenSpec::default() });
    assert_eq!(app.get_with(&format!("Patient/{id}"), &for_purpose("TREAT")).await.status(), StatusCode::OK);
    let research = app.get_with(&format!("Patient/{id}"), &for_purpose("HRESCH")).await;
    assert_eq!(research.status(), StatusCode::FORBIDDEN);
    assert!(diagnostics(research).await.contains("purpose of use is `HRESCH`"));
    assert_eq!(last_audited(&app).await, (403, Some("practitioner-treatment-purpose".to_owned())));
}

#[tokio::test]
async fn permitted_interactions_are_audited_with_the_policies_that_permitted() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Auditedpermit")).await;
    assert_eq!(last_audited(&app).await, (201, Some("clinical-access".to_owned())));
    let id = created["id"].as_str().unwrap();
    for path in
        [format!("Patient/{id}"), "Patient?family=Auditedpermit".to_owned(), format!("Patient/{id}/$everything")]
    {
        assert_eq!(app.get(&path).await.status(), StatusCode::OK, "{path}");
        assert_eq!(last_audited(&app).await, (200, Some("clinical-access".to_owned())), "{path}");
    }
}

/// A psychiatric note: an Observation labelled `PSY` (HL7 v3 ActCode) in `meta.security`.
fn psychiatric(patient_id: &str) -> Value {
    let mut resource = observation(patient_id);
    resource["meta"] = serde_json::json!({
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]
    });
    resource
}

/// `GET {base}/{path}` breaking the glass for `reason`.
async fn break_glass(app: &TestApp, path: &str, token: &str, reason: &str) -> reqwest::Response {
    let request = app.client.get(format!("{}/{path}", app.base)).bearer_auth(token);
    request.header("X-Break-Glass-Reason", reason).send().await.unwrap()
}

async fn last_detail(app: &TestApp) -> Option<String> {
    sqlx::query_scalar("SELECT detail FROM audit_records ORDER BY seq DESC LIMIT 1")
        .fetch_one(&app.index().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn sensitive_records_need_a_grant_or_a_stated_break_glass() {
    let app = spawn_app().await;
    let subject = app.create_ok(&patient("Sensitive")).await;
    let subject = subject["id"].as_str().unwrap();
    let note = app.create_ok(&psychiatric(subject)).await;
    let note = note["id"].as_str().unwrap();
    let plain = app.create_ok(&observation(subject)).await;
    let path = format!("Observation/{note}");

    let uncleared = app.practitioner();
    let refused = app.get_with(&path, &uncleared).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(diagnostics(refused).await.contains("labelled restricted or sensitive (PSY)"));
    assert_eq!(last_audited(&app).await, (403, Some("sensitive-labels".to_owned())));

    let cleared = app.token_for(TokenSpec { grants: &["PSY"], ..TokenSpec::default() });
    assert_eq!(app.get_with(&path, &cleared).await.status(), StatusCode::OK);

    // Break-glass: allowed for a practitioner who states a reason; flagged in the audit record.
    let broken = break_glass(&app, &path, &uncleared, "unconscious patient in the emergency department").await;
    assert_eq!(broken.status(), StatusCode::OK);
    assert_eq!(
        last_detail(&app).await.as_deref(),
        Some("break-glass: unconscious patient in the emergency department")
    );
    let no_reason = break_glass(&app, &path, &uncleared, "  ").await;
    assert_eq!(no_reason.status(), StatusCode::BAD_REQUEST);
    assert!(diagnostics(no_reason).await.contains("must state why"));
    let service = app.token(fhirvault::auth::Role::Service);
    let by_service = break_glass(&app, &path, &service, "batch job").await;
    assert_eq!(by_service.status(), StatusCode::FORBIDDEN, "only practitioners break the glass");

    // Listings leave the note out for the uncleared, and keep it for the cleared.
    let ids = |bundle: &Value| -> Vec<String> {
        bundle["entry"]
            .as_array()
            .map(|e| e.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let search = format!("Observation?subject=Patient/{subject}");
    let seen: Value = app.get_with(&search, &uncleared).await.json().await.unwrap();
    assert_eq!(ids(&seen), vec![plain["id"].as_str().unwrap().to_owned()]);
    let seen: Value = app.get_with(&search, &cleared).await.json().await.unwrap();
    assert_eq!(ids(&seen).len(), 2);
    let history: Value = app.get_with(&format!("{path}/_history"), &uncleared).await.json().await.unwrap();
    assert!(ids(&history).is_empty(), "{history}");
    let everything: Value =
        app.get_with(&format!("Patient/{subject}/$everything"), &uncleared).await.json().await.unwrap();
    assert!(!ids(&everything).contains(&note.to_owned()), "{everything}");
}

/// SMART scopes hold on every interaction: a token scoped to Observations reads no Patient,
/// whether asked directly, through `_include`/`_revinclude`, a history, or a bundle entry.
#[tokio::test]
async fn nothing_outside_the_granted_scopes_leaks() {
    let app = spawn_app().await;
    let subject = app.create_ok(&patient("Scopedleak")).await;
    let subject = subject["id"].as_str().unwrap();
    app.create_ok(&observation(subject)).await;
    let observations = app.token_for(TokenSpec { scope: Some("user/Observation.rs"), ..TokenSpec::default() });
    let patients = app.token_for(TokenSpec { scope: Some("user/Patient.rs"), ..TokenSpec::default() });
    let types = |bundle: &Value| -> Vec<String> {
        bundle["entry"]
            .as_array()
            .map(|e| e.iter().map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };

    // Included and revincluded resources of types outside the scopes are left out.
    let included: Value = app
        .get_with(&format!("Observation?subject=Patient/{subject}&_include=Observation:subject"), &observations)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(types(&included), ["Observation"], "{included}");
    let revincluded: Value = app
        .get_with(&format!("Patient?_id={subject}&_revinclude=Observation:subject"), &patients)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(types(&revincluded), ["Patient"], "{revincluded}");

    // Direct reads, searches and histories of other types are refused.
    for path in [format!("Patient/{subject}"), format!("Patient/{subject}/_history"), "Patient/_history".to_owned()] {
        assert_eq!(app.get_with(&path, &observations).await.status(), StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(app.get_with("Patient?family=Scopedleak", &observations).await.status(), StatusCode::FORBIDDEN);
    let history: Value = app.get_with("Observation/_history", &observations).await.json().await.unwrap();
    assert_eq!(types(&history), ["Observation"]);

    // Bundle entries are decided one by one: a batch reads what the scopes grant, no more, and
    // a read-only token writes nothing.
    let batch = serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{subject}")}},
        {"request": {"method": "GET", "url": format!("Observation?subject=Patient/{subject}")}},
        {"request": {"method": "POST", "url": "Observation"}, "resource": observation(subject)},
    ]});
    let answer: Value = app.post_with("", &batch, &observations).await.json().await.unwrap();
    let statuses: Vec<&str> =
        answer["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["403 Forbidden", "200 OK", "403 Forbidden"], "{answer}");
    let mut transaction = batch.clone();
    transaction["type"] = "transaction".into();
    let refused = app.post_with("", &transaction, &observations).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}
