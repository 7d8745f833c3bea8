//! Every error status, table-driven: each answer is an OperationOutcome with a clear message.

use fhirvault::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{FHIR_JSON, TestApp, diagnostics, patient, spawn_app, spawn_app_with};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
    status: StatusCode,
    /// A fragment the OperationOutcome's diagnostics must contain.
    says: &'static str,
}

fn case(name: &'static str, method: Method, path: impl Into<String>, status: StatusCode, says: &'static str) -> Case {
    Case { name, method, path: path.into(), headers: Vec::new(), body: None, status, says }
}

impl Case {
    fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self.headers.push(("content-type", FHIR_JSON.to_owned()));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }
}

async fn run(app: &TestApp, cases: Vec<Case>, token: Option<String>) {
    for case in cases {
        let mut request = app.client.request(case.method.clone(), format!("{}{}", app.address, case.path));
        if let Some(token) = &token
            && !case.headers.iter().any(|(n, _)| *n == "authorization")
        {
            request = request.bearer_auth(token);
        }
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = &case.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let says = diagnostics(response).await;
        assert_eq!(status, case.status, "{}: {says}", case.name);
        assert!(content_type.unwrap_or_default().starts_with(FHIR_JSON), "{}: content type", case.name);
        assert!(says.contains(case.says), "{}: expected {:?} in {says:?}", case.name, case.says);
    }
}

#[tokio::test]
async fn client_errors_are_operation_outcomes_with_the_right_status() {
    let app = spawn_app().await;
    let existing = app.create_ok(&patient("Fournier")).await;
    let id = existing["id"].as_str().unwrap();
    let deleted = app.create_ok(&patient("Girard")).await;
    let deleted_id = deleted["id"].as_str().unwrap();
    app.request(Method::DELETE, &format!("Patient/{deleted_id}")).send().await.unwrap();
    let p = |rest: &str| format!("/fhir/demo/{rest}");

    let cases = vec![
        case("malformed JSON", Method::POST, p("Patient"), StatusCode::BAD_REQUEST, "not valid JSON")
            .body("{\"resourceType\": "),
        case("duplicate key", Method::POST, p("Patient"), StatusCode::BAD_REQUEST, "duplicate key `gender`")
            .body(r#"{"resourceType":"Patient","gender":"male","gender":"female"}"#),
        case("not an object", Method::POST, p("Patient"), StatusCode::BAD_REQUEST, "JSON object").body("[]"),
        case("no resourceType", Method::POST, p("Patient"), StatusCode::BAD_REQUEST, "missing `resourceType`")
            .body("{}"),
        case(
            "wrong resourceType",
            Method::POST,
            p("Patient"),
            StatusCode::BAD_REQUEST,
            "`resourceType` is `Observation`",
        )
        .body(r#"{"resourceType":"Observation"}"#),
        case("id mismatch", Method::PUT, p(&format!("Patient/{id}")), StatusCode::BAD_REQUEST, "does not match")
            .body(r#"{"resourceType":"Patient","id":"other"}"#),
        case("update without id", Method::PUT, p(&format!("Patient/{id}")), StatusCode::BAD_REQUEST, "no `id`")
            .body(r#"{"resourceType":"Patient"}"#),
        case("empty body", Method::POST, p("Patient"), StatusCode::BAD_REQUEST, "empty").body(""),
        case("bad id in URL", Method::GET, p("Patient/a_b"), StatusCode::BAD_REQUEST, "not a valid resource id"),
        case("bad If-Match", Method::PUT, p(&format!("Patient/{id}")), StatusCode::BAD_REQUEST, "`If-Match`")
            .body(existing.to_string())
            .header("if-match", "yesterday"),
        case(
            "unknown parameter",
            Method::GET,
            p(&format!("Patient/{id}?colour=blue")),
            StatusCode::BAD_REQUEST,
            "`colour`",
        ),
        case("bad _count", Method::GET, p("Patient/_history?_count=many"), StatusCode::BAD_REQUEST, "`_count`"),
        case("bad _since", Method::GET, p("Patient/_history?_since=yesterday"), StatusCode::BAD_REQUEST, "`_since`"),
        case(
            "forged cursor",
            Method::GET,
            p("Patient/_history?_count=50&_cursor=AAAA"),
            StatusCode::BAD_REQUEST,
            "paging link",
        ),
        case("unknown id", Method::GET, p("Patient/nobody"), StatusCode::NOT_FOUND, "Patient/nobody is not known"),
        case(
            "unknown version",
            Method::GET,
            p(&format!("Patient/{id}/_history/9")),
            StatusCode::NOT_FOUND,
            "version 9",
        ),
        case("unknown type", Method::GET, p("Robot/1"), StatusCode::NOT_FOUND, "`Robot` is not an R4 resource type"),
        case("unknown tenant", Method::GET, "/fhir/nowhere/Patient/1", StatusCode::NOT_FOUND, "no tenant `nowhere`"),
        case("unknown endpoint", Method::GET, "/admin", StatusCode::NOT_FOUND, "no such endpoint"),
        case("history of nothing", Method::GET, p("Patient/nobody/_history"), StatusCode::NOT_FOUND, "not known"),
        case(
            "PATCH without JSON Patch",
            Method::PATCH,
            p(&format!("Patient/{id}")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json-patch+json",
        ),
        case(
            "OPTIONS on an instance",
            Method::OPTIONS,
            p(&format!("Patient/{id}")),
            StatusCode::METHOD_NOT_ALLOWED,
            "allowed: GET, PUT, PATCH, DELETE",
        ),
        case(
            "POST on an instance",
            Method::POST,
            p(&format!("Patient/{id}")),
            StatusCode::METHOD_NOT_ALLOWED,
            "allowed",
        ),
        case("PATCH a type", Method::PATCH, p("Patient"), StatusCode::METHOD_NOT_ALLOWED, "allowed: GET, POST, PUT"),
        case("bad search", Method::GET, p("Patient?family:contains=x"), StatusCode::BAD_REQUEST, "not available"),
        case("DELETE metadata", Method::DELETE, p("metadata"), StatusCode::METHOD_NOT_ALLOWED, "allowed: GET"),
        case("stale If-Match", Method::PUT, p(&format!("Patient/{id}")), StatusCode::PRECONDITION_FAILED, "`If-Match`")
            .body(existing.to_string())
            .header("if-match", "W/\"7\""),
        case("deleted", Method::GET, p(&format!("Patient/{deleted_id}")), StatusCode::GONE, "was deleted"),
        case("XML body", Method::POST, p("Patient"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "only JSON is served")
            .body("<Patient xmlns=\"http://hl7.org/fhir\"/>")
            .header("content-type", "application/fhir+xml"),
        case("form body", Method::POST, p("Patient"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "is not accepted")
            .body("a=b")
            .header("content-type", "application/x-www-form-urlencoded"),
        case(
            "no content type",
            Method::POST,
            p("Patient"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "`Content-Type` is required",
        )
        .body(patient("x").to_string())
        .header("content-type", ""),
        case(
            "XML accepted only",
            Method::GET,
            p(&format!("Patient/{id}")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only JSON",
        )
        .header("accept", "application/fhir+xml"),
        case(
            "_format=xml",
            Method::GET,
            p(&format!("Patient/{id}?_format=xml")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only JSON",
        ),
        case(
            "other FHIR version",
            Method::GET,
            p(&format!("Patient/{id}")),
            StatusCode::NOT_ACCEPTABLE,
            "FHIR version `5.0`",
        )
        .header("accept", "application/fhir+json; fhirVersion=5.0"),
        case("text only", Method::GET, p(&format!("Patient/{id}")), StatusCode::NOT_ACCEPTABLE, "only JSON")
            .header("accept", "text/html"),
        case("invalid code", Method::POST, p("Patient"), StatusCode::UNPROCESSABLE_ENTITY, "`robot` is not a code")
            .body(r#"{"resourceType":"Patient","gender":"robot"}"#),
        case(
            "unknown element",
            Method::POST,
            p("Patient"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown element `colour`",
        )
        .body(r#"{"resourceType":"Patient","colour":"blue"}"#),
        case("wrong type", Method::POST, p("Patient"), StatusCode::UNPROCESSABLE_ENTITY, "must be a JSON boolean")
            .body(r#"{"resourceType":"Patient","active":"yes"}"#),
        case("bad date", Method::POST, p("Patient"), StatusCode::UNPROCESSABLE_ENTITY, "not a valid date")
            .body(r#"{"resourceType":"Patient","birthDate":"29/02/1980"}"#),
        case(
            "missing mandatory",
            Method::POST,
            p("Observation"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "mandatory element `status`",
        )
        .body(r#"{"resourceType":"Observation","code":{"text":"x"}}"#),
    ];
    run(&app, cases, Some(app.practitioner())).await;
}

#[tokio::test]
async fn lenient_handling_ignores_unknown_parameters() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Bonnet")).await;
    let id = created["id"].as_str().unwrap();
    let response = app
        .request(Method::GET, &format!("Patient/{id}?colour=blue"))
        .header("prefer", "handling=lenient")
        .send()
        .await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn authentication_failures_are_401_with_a_challenge() {
    let app = spawn_app().await;
    let other = spawn_app().await;
    let foreign_token = other.practitioner();
    let p = "/fhir/demo/Patient/x";
    let cases = vec![
        case("no token", Method::GET, p, StatusCode::UNAUTHORIZED, "bearer token is required"),
        case("not bearer", Method::GET, p, StatusCode::UNAUTHORIZED, "must be `Bearer")
            .header("authorization", "Basic dXNlcjpwYXNz"),
        case("garbage", Method::GET, p, StatusCode::UNAUTHORIZED, "malformed")
            .header("authorization", "Bearer not-a-jwt"),
        case("another issuer key", Method::GET, p, StatusCode::UNAUTHORIZED, "bad signature")
            .header("authorization", format!("Bearer {foreign_token}")),
    ];
    run(&app, cases, None).await;

    let response = app.client.get(format!("{}/Patient/x", app.base)).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"fhirvault\"");
}

#[tokio::test]
async fn the_body_limit_is_413() {
    let app = spawn_app_with(|s| s.http.max_body_bytes = 1024).await;
    let mut big = patient("Lefebvre");
    big["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "x".repeat(2000))});
    let cases = vec![
        case("too large", Method::POST, "/fhir/demo/Patient", StatusCode::PAYLOAD_TOO_LARGE, "1024-byte limit")
            .body(big.to_string()),
    ];
    run(&app, cases, Some(app.practitioner())).await;
}

#[tokio::test]
async fn refusals_by_role_scope_tenant_and_compartment() {
    let app = spawn_app().await;
    let mine = app.create_ok(&patient("Mercier")).await;
    let my_id = mine["id"].as_str().unwrap().to_owned();
    let theirs = app.create_ok(&patient("Dupont")).await;
    let their_id = theirs["id"].as_str().unwrap().to_owned();
    let spec = |role, scope, tenant, patient| crate::helpers::TokenSpec {
        role,
        scope,
        tenant,
        patient,
        subject: None,
        jurisdiction: None,
        purpose: None,
        grants: &[],
    };

    let checks: Vec<(&str, String, String, StatusCode, &str)> = vec![
        ("researcher", app.token(Role::Researcher), format!("Patient/{my_id}"), StatusCode::FORBIDDEN, "bulk export"),
        ("auditor", app.token(Role::Auditor), format!("Patient/{my_id}"), StatusCode::FORBIDDEN, "audit log"),
        (
            "narrow scope",
            app.token_for(spec(Role::Practitioner, Some("user/Observation.rs"), "demo", None)),
            format!("Patient/{my_id}"),
            StatusCode::FORBIDDEN,
            "do not grant `r` on `Patient`",
        ),
        (
            "other tenant's token",
            app.token_for(spec(Role::Practitioner, None, "other", None)),
            format!("Patient/{my_id}"),
            StatusCode::FORBIDDEN,
            "token is for tenant `other`",
        ),
        (
            "another patient's record",
            app.token_for(spec(Role::Patient, None, "demo", Some(&my_id))),
            format!("Patient/{their_id}"),
            StatusCode::NOT_FOUND,
            "not known",
        ),
    ];
    for (name, token, path, status, says) in checks {
        let response = app.get_with(&path, &token).await;
        assert_eq!(response.status(), status, "{name}");
        let text = diagnostics(response).await;
        assert!(text.contains(says), "{name}: {text}");
    }
    let own = app
        .get_with(&format!("Patient/{my_id}"), &app.token_for(spec(Role::Patient, None, "demo", Some(&my_id))))
        .await;
    assert_eq!(own.status(), StatusCode::OK);
}
