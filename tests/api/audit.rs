//! Every interaction leaves an audit record, including refusals; the records are append-only.

use reqwest::Method;

use crate::helpers::{patient, spawn_app};

#[tokio::test]
async fn each_interaction_and_refusal_is_recorded() {
    let app = spawn_app().await;
    let mut resource = app.create_ok(&patient("Garnier")).await;
    let id = resource["id"].as_str().unwrap().to_owned();
    app.get(&format!("Patient/{id}")).await;
    app.get(&format!("Patient/{id}/_history/1")).await;
    resource["active"] = serde_json::json!(true);
    app.update(&resource).await;
    app.get(&format!("Patient/{id}/_history")).await;
    app.get("Patient/_history").await;
    app.request(Method::DELETE, &format!("Patient/{id}")).send().await.unwrap();
    app.get(&format!("Patient/{id}")).await; // 410
    app.get("Patient/nobody").await; // 404
    app.create(&serde_json::json!({"resourceType": "Patient", "gender": "robot"})).await; // 422
    app.client.get(format!("{}/Patient/{id}", app.base)).send().await.unwrap(); // 401
    app.get_with(&format!("Patient/{id}"), &app.token(fhirvault::auth::Role::Researcher)).await; // 403

    let pool = app.index().await;
    type Row = (String, i64, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT action, outcome, agent_role, resource_id, policy FROM audit_records ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let summary: Vec<(&str, i64)> = rows.iter().map(|r| (r.0.as_str(), r.1)).collect();
    assert_eq!(
        summary,
        vec![
            ("create", 201),
            ("read", 200),
            ("vread", 200),
            ("update", 200),
            ("history-instance", 200),
            ("history-type", 200),
            ("delete", 204),
            ("read", 410),
            ("read", 404),
            ("create", 422),
            ("authenticate", 401),
            ("read", 403),
        ]
    );
    assert!(rows.iter().filter(|r| r.0 != "authenticate").all(|r| r.2.is_some()), "agents are recorded");
    // Every decision is recorded with the policies that took it: permits and refusals alike.
    for (action, outcome, _, _, policy) in &rows {
        if *outcome < 300 {
            assert_eq!(policy.as_deref(), Some("clinical-access"), "{action} {outcome}");
        }
    }
    assert_eq!(rows[0].3.as_deref(), Some(id.as_str()));
    assert_eq!(rows[11].4.as_deref(), Some("researcher-bulk-export-only"));
    let request_ids: i64 =
        sqlx::query_scalar("SELECT COUNT(DISTINCT request_id) FROM audit_records").fetch_one(&pool).await.unwrap();
    assert_eq!(request_ids, 12);
}

#[tokio::test]
async fn the_database_refuses_to_change_or_remove_audit_records() {
    let app = spawn_app().await;
    app.create_ok(&patient("Chevalier")).await;
    let pool = app.index().await;
    let mut statements = vec!["UPDATE audit_records SET outcome = 200"];
    if app.on_postgres() {
        // On SQLite the inbox is the sealer's to empty (see migration 0005); PostgreSQL lets
        // only the sealer's transaction delete.
        statements.extend(["DELETE FROM audit_records", "TRUNCATE audit_records"]);
    }
    for statement in statements {
        let err = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{statement}: {err}");
    }
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_records").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn refusals_by_the_api_layer_after_authentication_are_recorded() {
    let app = spawn_app().await;
    let created = app.create_ok(&patient("Roux")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let token = app.practitioner();

    // Unsupported media type on create.
    let response = app
        .request(Method::POST, "Patient")
        .header("Content-Type", "text/plain")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // Unknown search/read parameter.
    assert_eq!(app.get(&format!("Patient/{id}?_bogus=1")).await.status(), 400);
    // Malformed If-Match on update.
    let response = app
        .request(Method::PUT, &format!("Patient/{id}"))
        .header("Content-Type", "application/fhir+json")
        .header("If-Match", "not-an-etag")
        .json(&created)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Unknown resource type.
    assert_eq!(app.get_with("Spaceship/1", &token).await.status(), 404);

    let pool = app.index().await;
    let rows: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT action, outcome, agent_role FROM audit_records WHERE seq > 1 ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let summary: Vec<(&str, i64)> = rows.iter().map(|r| (r.0.as_str(), r.1)).collect();
    assert_eq!(summary, vec![("create", 415), ("read", 400), ("update", 400), ("read", 404)]);
    assert!(rows.iter().all(|r| r.2.as_deref() == Some("practitioner")), "{rows:?}");
}
