//! create, read, vread, update (and create-on-update), delete, with their headers.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{FHIR_JSON, patient, spawn_app, spawn_app_with};

#[tokio::test]
async fn create_answers_201_with_location_etag_and_the_stored_resource() {
    let app = spawn_app().await;

    let response = app.create(&patient("Durand")).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(headers["location"].to_str().unwrap(), format!("{}/Patient/{id}/_history/1", app.base));
    assert!(headers["content-type"].to_str().unwrap().starts_with(FHIR_JSON));
    assert!(headers.contains_key("last-modified"));
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["meta"]["versionId"], "1");
    assert_eq!(body["name"][0]["family"], "Durand");
}

#[tokio::test]
async fn the_server_assigns_the_id_on_create() {
    let app = spawn_app().await;
    let mut resource = patient("Martin");
    resource["id"] = json!("client-chosen");

    let body = app.create_ok(&resource).await;

    assert_ne!(body["id"], "client-chosen");
}

#[tokio::test]
async fn read_returns_what_create_stored() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Bernard")).await;
    let id = created["id"].as_str().unwrap();

    let response = app.get(&format!("Patient/{id}")).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    assert_eq!(response.json::<Value>().await.unwrap(), created);
}

#[tokio::test]
async fn update_makes_version_2_and_vread_still_finds_version_1() {
    let app = spawn_app().await;
    let mut resource = app.create_ok(&patient("Petit")).await;
    let id = resource["id"].as_str().unwrap().to_owned();
    resource["name"][0]["given"] = json!(["Camille", "Louise"]);

    let response = app.update(&resource).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    assert_eq!(response.headers()["location"].to_str().unwrap(), format!("{}/Patient/{id}/_history/2", app.base));
    let v1: Value = app.get(&format!("Patient/{id}/_history/1")).await.json().await.unwrap();
    assert_eq!(v1["name"][0]["given"], json!(["Camille"]));
    let current: Value = app.get(&format!("Patient/{id}")).await.json().await.unwrap();
    assert_eq!(current["meta"]["versionId"], "2");
    assert_eq!(current["name"][0]["given"], json!(["Camille", "Louise"]));
}

#[tokio::test]
async fn update_with_a_new_client_id_creates_the_resource() {
    let app = spawn_app().await;
    let mut resource = patient("Robert");
    resource["id"] = json!("chosen-by-client");

    let response = app.update(&resource).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    assert_eq!(app.get("Patient/chosen-by-client").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn if_match_guards_updates_and_deletes() {
    let app = spawn_app().await;
    let mut resource = app.create_ok(&patient("Richard")).await;
    let id = resource["id"].as_str().unwrap().to_owned();
    resource["active"] = json!(true);
    let put = |etag: &'static str, body: Value| {
        app.request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", FHIR_JSON)
            .header("if-match", etag)
            .body(body.to_string())
            .send()
    };

    assert_eq!(put("W/\"1\"", resource.clone()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(put("W/\"1\"", resource.clone()).await.unwrap().status(), StatusCode::PRECONDITION_FAILED);
    let delete = app.request(Method::DELETE, &format!("Patient/{id}")).header("if-match", "W/\"1\"").send().await;
    assert_eq!(delete.unwrap().status(), StatusCode::PRECONDITION_FAILED);
    let delete = app.request(Method::DELETE, &format!("Patient/{id}")).header("if-match", "W/\"2\"").send().await;
    assert_eq!(delete.unwrap().status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn concurrent_updates_with_the_same_if_match_let_exactly_one_through() {
    let app = spawn_app().await;
    let resource = app.create_ok(&patient("Dubois")).await;
    let id = resource["id"].as_str().unwrap().to_owned();

    let attempts = (0..8).map(|i| {
        let mut body = resource.clone();
        body["name"][0]["given"] = json!([format!("Attempt{i}")]);
        app.request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", FHIR_JSON)
            .header("if-match", "W/\"1\"")
            .body(body.to_string())
            .send()
    });
    let statuses: Vec<StatusCode> =
        futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap().status()).collect();

    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::PRECONDITION_FAILED), "{statuses:?}");
    let current: Value = app.get(&format!("Patient/{id}")).await.json().await.unwrap();
    assert_eq!(current["meta"]["versionId"], "2");
}

#[tokio::test]
async fn concurrent_updates_without_if_match_all_land_in_order() {
    let app = spawn_app().await;
    let resource = app.create_ok(&patient("Moreau")).await;
    let id = resource["id"].as_str().unwrap().to_owned();

    let updates = (0..6).map(|_| app.update(&resource));
    let statuses: Vec<StatusCode> = futures::future::join_all(updates).await.into_iter().map(|r| r.status()).collect();

    // Each update retries after losing a race; a client may still see 409 after three losses.
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT), "{statuses:?}");
    let current: Value = app.get(&format!("Patient/{id}")).await.json().await.unwrap();
    assert_eq!(current["meta"]["versionId"], (ok + 1).to_string());
}

#[tokio::test]
async fn delete_then_read_is_410_and_history_keeps_the_versions() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Laurent")).await;
    let id = created["id"].as_str().unwrap();

    let response = app.request(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), StatusCode::GONE);
    assert_eq!(app.get(&format!("Patient/{id}/_history/2")).await.status(), StatusCode::GONE);
    assert_eq!(app.get(&format!("Patient/{id}/_history/1")).await.status(), StatusCode::OK);
    // Deleting again changes nothing.
    let again = app.request(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    assert_eq!(again.headers()["etag"], "W/\"2\"");
    // An update brings it back as version 3.
    let mut revived = created.clone();
    revived["active"] = json!(true);
    let response = app.update(&revived).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["etag"], "W/\"3\"");
}

#[tokio::test]
async fn deleting_what_never_existed_is_204() {
    let app = spawn_app().await;
    let response = app.request(Method::DELETE, "Patient/never-was").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn prefer_return_shapes_the_answer() {
    let app = spawn_app().await;
    let send = |prefer: &'static str| {
        app.request(Method::POST, "Patient")
            .header("content-type", FHIR_JSON)
            .header("prefer", prefer)
            .body(patient("Simon").to_string())
            .send()
    };

    let minimal = send("return=minimal").await.unwrap();
    assert_eq!(minimal.status(), StatusCode::CREATED);
    assert!(minimal.headers().contains_key("location"));
    assert_eq!(minimal.bytes().await.unwrap().len(), 0);

    let outcome: Value = send("return=OperationOutcome").await.unwrap().json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["severity"], "information");

    let representation: Value = send("return=representation").await.unwrap().json().await.unwrap();
    assert_eq!(representation["resourceType"], "Patient");
}

#[tokio::test]
async fn plain_json_and_format_parameters_are_accepted() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(patient("Michel").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));

    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let pretty = app.get(&format!("Patient/{id}?_format=application/fhir%2Bjson&_pretty=true")).await;
    assert_eq!(pretty.status(), StatusCode::OK);
    assert!(pretty.headers()["content-type"].to_str().unwrap().starts_with(FHIR_JSON));
    assert!(pretty.text().await.unwrap().contains("\n  \"resourceType\""));
    let short = app.get(&format!("Patient/{id}?_format=json")).await;
    assert!(short.headers()["content-type"].to_str().unwrap().starts_with(FHIR_JSON));
}

#[tokio::test]
async fn the_request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let echoed =
        app.client.get(format!("{}/metadata", app.base)).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let generated = app.client.get(format!("{}/metadata", app.base)).send().await.unwrap();
    assert_eq!(generated.headers()["x-request-id"].len(), 36);
    let refused = app.client.get(format!("{}/metadata", app.base)).header("x-request-id", "a b").send().await.unwrap();
    assert_ne!(refused.headers()["x-request-id"], "a b");
}

#[tokio::test]
async fn every_r4_resource_type_is_accepted() {
    let app = spawn_app().await;
    for rt in fhirvault::ids::ResourceType::all() {
        let minimal = minimal_resource(rt.as_str());
        let response = app.create(&minimal).await;
        let status = response.status();
        // AuditEvents are the server's own audit log: read and searched, never written by clients.
        let expected =
            if rt == fhirvault::ids::ResourceType::AUDIT_EVENT { StatusCode::FORBIDDEN } else { StatusCode::CREATED };
        assert_eq!(status, expected, "{rt}: {}", response.text().await.unwrap());
    }
}

/// The smallest valid instance of a type: `resourceType` plus its mandatory elements.
fn minimal_resource(rt: &str) -> Value {
    let model = fhirvault::fhir::model::r4().unwrap();
    let ty = model.type_def(rt).unwrap();
    let mut resource = json!({ "resourceType": rt });
    for alternatives in ty.required.iter() {
        let name = alternatives.first().unwrap().to_string();
        let element = ty.elements.get(name.as_str()).unwrap();
        resource[name.as_str()] = sample_value(model, element);
    }
    resource
}

fn sample_value(model: &fhirvault::fhir::model::Model, element: &fhirvault::fhir::model::ElementDef) -> Value {
    use fhirvault::fhir::model::{ElementKind, Primitive};
    let single = match &element.kind {
        ElementKind::Primitive { primitive, name, .. } => match (primitive, &element.value_set) {
            (_, Some(vs)) => json!(vs.ordered[0].to_string()),
            (Primitive::Boolean, _) => json!(true),
            (Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt, _) => json!(1),
            (Primitive::Decimal, _) => json!(1.5),
            (Primitive::Date, _) => json!("2024-01-01"),
            (Primitive::DateTime | Primitive::Instant, _) => json!("2024-01-01T00:00:00Z"),
            (Primitive::Time, _) => json!("10:00:00"),
            (Primitive::Base64Binary, _) => json!("aGVsbG8="),
            (Primitive::Xhtml, _) => json!("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"),
            (Primitive::Text, _) => match &**name {
                "oid" => json!("urn:oid:1.2.3"),
                "uuid" => json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"),
                "id" => json!("x1"),
                "uri" | "url" | "canonical" => json!("http://example.org/x"),
                _ => json!("x"),
            },
        },
        ElementKind::Complex(index) => {
            let ty = model.type_at(*index).unwrap();
            let mut object = serde_json::Map::new();
            for alternatives in ty.required.iter() {
                let name = alternatives.first().unwrap().to_string();
                object.insert(name.clone(), sample_value(model, ty.elements.get(name.as_str()).unwrap()));
            }
            if object.is_empty() {
                // An element needs content: give it one optional child.
                let (name, el) = ty
                    .elements
                    .iter()
                    .filter(|(n, el)| {
                        !n.starts_with('_')
                            && !["id", "extension", "modifierExtension"].contains(&&***n)
                            && matches!(el.kind, ElementKind::Primitive { .. })
                    })
                    .min_by_key(|(n, _)| n.to_string())
                    .unwrap();
                object.insert(name.to_string(), sample_value(model, el));
            }
            Value::Object(object)
        }
        ElementKind::Resource => json!({"resourceType": "Basic", "code": {"text": "x"}}),
    };
    if element.array { json!([single]) } else { single }
}

/// Two servers on one index and one object store (as behind a load balancer): a read on one
/// answers the version the other wrote last, however often it read the older one before (on
/// PostgreSQL, a server remembers the rows it looked up), and each answered read has one audit
/// record naming the version it answered.
#[tokio::test]
async fn a_read_answers_the_version_another_server_wrote_last() {
    let a = spawn_app().await;
    let shared = a.settings.clone();
    let b = spawn_app_with(move |s| *s = shared).await;
    let created = a.create_ok(&patient("Before")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(read_patient(&a, &id).await["meta"]["versionId"], "1");
    }
    let mut changed = created.clone();
    changed["name"][0]["family"] = json!("After");
    assert_eq!(b.update(&changed).await.status(), StatusCode::OK);
    let after = read_patient(&a, &id).await;
    assert_eq!((&after["meta"]["versionId"], &after["name"][0]["family"]), (&json!("2"), &json!("After")));
    assert_eq!(read_patient(&a, &id).await["meta"]["versionId"], "2");

    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM audit_records WHERE action = 'read' AND resource_id = $1 ORDER BY seq")
            .bind(&id)
            .fetch_all(&a.index().await)
            .await
            .unwrap();
    assert_eq!(versions, [1, 1, 1, 2, 2]);
}

async fn read_patient(app: &crate::helpers::TestApp, id: &str) -> Value {
    let response = app.get(&format!("Patient/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}
