//! Conditional create, update and delete, `If-None-Match: *`, and PATCH (JSON Patch).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, diagnostics, patient, spawn_app, spawn_app_with};

const FHIR_JSON: &str = "application/fhir+json";
const NIR: &str = "identifier=urn:oid:1.2.250.1.213.1.4.8|NIR-";

async fn send(app: &TestApp, method: Method, path: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.request(method, path).header("content-type", FHIR_JSON).body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn patch(app: &TestApp, path: &str, ops: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request =
        app.request(Method::PATCH, path).header("content-type", "application/json-patch+json").body(ops.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_conditional_create_creates_once() {
    let app = spawn_app().await;
    let condition = format!("{NIR}Once");
    let first = send(&app, Method::POST, "Patient", &patient("Once"), &[("if-none-exist", &condition)]).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = send(&app, Method::POST, "Patient", &patient("Once"), &[("if-none-exist", &condition)]).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    // Two matches: the server cannot tell which was meant.
    app.create_ok(&patient("Once")).await;
    let twice = send(&app, Method::POST, "Patient", &patient("Once"), &[("if-none-exist", &condition)]).await;
    assert_eq!(twice.status(), StatusCode::PRECONDITION_FAILED);
    // A condition with an unknown parameter is refused, never widened.
    let unknown = send(&app, Method::POST, "Patient", &patient("X"), &[("if-none-exist", "nickname=x")]).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_conditional_update_updates_the_one_match_or_creates() {
    let app = spawn_app().await;
    let path = format!("Patient?{NIR}Cond");
    let created = send(&app, Method::PUT, &path, &patient("Cond"), &[]).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();

    let mut changed = patient("Cond");
    changed["gender"] = "other".into();
    let updated = send(&app, Method::PUT, &path, &changed, &[]).await;
    assert_eq!(updated.status(), StatusCode::OK);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["gender"], "other");

    changed["id"] = "someone-else".into();
    let mismatch = send(&app, Method::PUT, &path, &changed, &[]).await;
    assert_eq!(mismatch.status(), StatusCode::BAD_REQUEST);

    app.create_ok(&patient("Cond")).await;
    let ambiguous = send(&app, Method::PUT, &path, &patient("Cond"), &[]).await;
    assert_eq!(ambiguous.status(), StatusCode::PRECONDITION_FAILED);
    assert!(diagnostics(ambiguous).await.contains("more than one"));
    let bare = send(&app, Method::PUT, "Patient", &patient("Cond"), &[]).await;
    assert_eq!(bare.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_conditional_delete_deletes_one_or_as_configured_several() {
    let app = spawn_app().await;
    let one = app.create_ok(&patient("Solo")).await;
    let response = app.request(Method::DELETE, &format!("Patient?{NIR}Solo")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("Patient/{}", one["id"].as_str().unwrap())).await.status(), StatusCode::GONE);
    let none = app.request(Method::DELETE, &format!("Patient?{NIR}Solo")).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::NO_CONTENT);

    app.create_ok(&patient("Pair")).await;
    app.create_ok(&patient("Pair")).await;
    let refused = app.request(Method::DELETE, "Patient?family=Pair").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::PRECONDITION_FAILED);
    assert!(diagnostics(refused).await.contains("writes.conditional_delete_multiple"));

    let lax = spawn_app_with(|s| s.writes.conditional_delete_multiple = true).await;
    lax.create_ok(&patient("Pair")).await;
    lax.create_ok(&patient("Pair")).await;
    let deleted = lax.request(Method::DELETE, "Patient?family=Pair").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let left: Value = lax.get("Patient?family=Pair").await.json().await.unwrap();
    assert_eq!(left["total"], 0);
}

#[tokio::test]
async fn if_none_match_star_creates_but_never_overwrites() {
    let app = spawn_app().await;
    let body = json!({"resourceType": "Patient", "id": "chosen", "gender": "female"});
    let first = send(&app, Method::PUT, "Patient/chosen", &body, &[("if-none-match", "*")]).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let second = send(&app, Method::PUT, "Patient/chosen", &body, &[("if-none-match", "*")]).await;
    assert_eq!(second.status(), StatusCode::PRECONDITION_FAILED);
    let read: Value = app.get("Patient/chosen").await.json().await.unwrap();
    assert_eq!(read["meta"]["versionId"], "1");
}

#[tokio::test]
async fn a_json_patch_changes_what_it_says_or_nothing() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Patched")).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());

    let ops = json!([{"op": "replace", "path": "/birthDate", "value": "1981-03-01"},
                     {"op": "add", "path": "/active", "value": true}]);
    let response = patch(&app, &path, &ops, &[("if-match", "W/\"1\"")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["birthDate"], "1981-03-01");
    assert_eq!(patched["active"], true);
    assert_eq!(patched["meta"]["versionId"], "2");
    assert_eq!(patched["name"], created["name"]);

    let cases = [
        (json!([{"op": "test", "path": "/gender", "value": "male"}]), &[][..], StatusCode::UNPROCESSABLE_ENTITY),
        (json!([{"op": "replace", "path": "/gender", "value": "sometimes"}]), &[], StatusCode::UNPROCESSABLE_ENTITY),
        (json!([{"op": "replace", "path": "/id", "value": "other"}]), &[], StatusCode::BAD_REQUEST),
        (json!({"op": "replace"}), &[], StatusCode::BAD_REQUEST),
        (json!([{"op": "remove", "path": "/active"}]), &[("if-match", "W/\"1\"")], StatusCode::PRECONDITION_FAILED),
    ];
    for (ops, headers, status) in cases {
        assert_eq!(patch(&app, &path, &ops, headers).await.status(), status, "{ops}");
    }
    let wrong_type = send(&app, Method::PATCH, &path, &json!([]), &[]).await;
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let unknown = patch(&app, "Patient/nobody", &json!([]), &[]).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let read: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(read["meta"]["versionId"], "2");

    // In a transaction, a PATCH travels as a Binary.
    let data = base64_encode(&json!([{"op": "replace", "path": "/gender", "value": "male"}]).to_string());
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
        "request": {"method": "PATCH", "url": path}}]});
    let response = send(&app, Method::POST, "", &bundle, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let read: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!((read["gender"].as_str(), read["meta"]["versionId"].as_str()), (Some("male"), Some("3")));
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
