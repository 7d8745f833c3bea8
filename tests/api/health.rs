//! Operator endpoints and the CapabilityStatement.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(format!("{}{path}", app.address)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = app.client.post(format!("{}/healthz", app.address)).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn the_capability_statement_lists_what_is_implemented_and_needs_no_token() {
    let app = spawn_app().await;
    let response = app.client.get(format!("{}/metadata", app.base)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cs: Value = response.json().await.unwrap();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["implementation"]["url"], app.base);
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146);
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let codes: Vec<&str> =
        patient["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]
    );
    assert_eq!(cs["rest"][0]["interaction"], serde_json::json!([{"code": "transaction"}, {"code": "batch"}]));
    assert_eq!(
        (patient["conditionalCreate"].as_bool(), patient["conditionalDelete"].as_str()),
        (Some(true), Some("single"))
    );
    let params: Vec<(&str, &str)> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["type"].as_str().unwrap()))
        .collect();
    for expected in [("family", "string"), ("birthdate", "date"), ("identifier", "token"), ("_id", "token")] {
        assert!(params.contains(&expected), "{expected:?} in {params:?}");
    }
}
