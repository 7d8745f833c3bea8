//! A patient's erasure (`Patient/{id}/$erase`): administrators only, refused under a legal hold
//! or a retention rule, scheduled after the configured delay and cancellable until then; once
//! done, every record of the patient answers 410 saying it was erased, the search index no
//! longer finds them, and the key that opened them is gone from the index. `fhirvault keys
//! rotate` then destroys the KEK version that wrapped it.

use fhirvault::auth::Role;
use fhirvault::config::RetentionRule;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, diagnostics, observation, patient, spawn_app_with};

fn admin(app: &TestApp) -> String {
    app.token(Role::Admin)
}

async fn operation(app: &TestApp, id: &str, name: &str, token: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app.client.post(format!("{}/Patient/{id}/{name}", app.base)).bearer_auth(token);
    if let Some(body) = body {
        request = request.header("content-type", "application/fhir+json").body(body.to_string());
    }
    request.send().await.unwrap()
}

fn hold(set: bool, reason: Option<&str>) -> Value {
    let mut parameter = vec![json!({"name": "hold", "valueBoolean": set})];
    if let Some(reason) = reason {
        parameter.push(json!({"name": "reason", "valueString": reason}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

async fn audited_actions(app: &TestApp) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT action, outcome FROM audit_records WHERE action LIKE 'operation-%' ORDER BY seq")
        .fetch_all(&app.index().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_erased_patient_is_gone_for_good_and_others_stay() {
    let app = spawn_app_with(|s| s.erasure.delay_days = 0).await;
    let erased = app.create_ok(&patient("Lefebvre")).await["id"].as_str().unwrap().to_owned();
    let kept = app.create_ok(&patient("Garnier")).await["id"].as_str().unwrap().to_owned();
    let obs = app.create_ok(&observation(&erased)).await["id"].as_str().unwrap().to_owned();
    let kept_obs = app.create_ok(&observation(&kept)).await["id"].as_str().unwrap().to_owned();

    // Nobody but an administrator erases, not even the treating practitioner.
    let refused = operation(&app, &erased, "$erase", &app.practitioner(), None).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(diagnostics(refused).await.contains("only an administrator"));
    let unknown = operation(&app, "no-such-patient", "$erase", &admin(&app), None).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let get = app.client.get(format!("{}/Patient/{erased}/$erase", app.base)).bearer_auth(admin(&app));
    assert_eq!(get.send().await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);

    let done = operation(&app, &erased, "$erase", &admin(&app), None).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert!(diagnostics(done).await.contains("was erased"));

    // Every version of every record of the patient answers 410, saying why.
    for path in [format!("Patient/{erased}"), format!("Observation/{obs}"), format!("Observation/{obs}/_history/1")] {
        let response = app.get(&path).await;
        assert_eq!(response.status(), StatusCode::GONE, "{path}");
        let text = diagnostics(response).await;
        assert!(text.contains(&format!("Patient/{erased} was erased")), "{path}: {text}");
    }
    // Writing to the erased record is refused the same way: it does not start again.
    let again = app.create(&observation(&erased)).await;
    assert_eq!(again.status(), StatusCode::GONE);
    // Searches and histories no longer find it; the other patient is untouched.
    let found: Value = app.get("Patient?family=Lefebvre").await.json().await.unwrap();
    assert_eq!(found["total"], 0, "{found}");
    let found: Value = app.get(&format!("Observation?subject=Patient/{erased}")).await.json().await.unwrap();
    assert_eq!(found["total"], 0, "{found}");
    let history: Value = app.get("Observation/_history").await.json().await.unwrap();
    let ids: Vec<&str> =
        history["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [kept_obs.as_str()], "{history}");
    assert_eq!(app.get(&format!("Patient/{kept}")).await.status(), StatusCode::OK);
    let found: Value = app.get("Patient?family=Garnier").await.json().await.unwrap();
    assert_eq!(found["total"], 1);

    // The index keeps no key for the patient, only its tombstone; the objects stay, sealed
    // under a key that no longer exists anywhere but in copies made before.
    let pool = app.index().await;
    let (version, wrapped): (i64, Vec<u8>) =
        sqlx::query_as("SELECT kek_version, wrapped FROM tenant_keys WHERE tenant = 'demo' AND key_ref = $1")
            .bind(format!("Patient/{erased}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((version, wrapped.len()), (0, 0));
    assert!(app.object_files("Observation", &obs).await.iter().all(|(_, file)| file.exists()));

    // A second request finds it erased; the erasure and its refusals are in the audit log.
    let twice = operation(&app, &erased, "$erase", &admin(&app), None).await;
    assert_eq!(twice.status(), StatusCode::GONE);
    let actions = audited_actions(&app).await;
    assert!(actions.contains(&("operation-erase".to_owned(), 200)), "{actions:?}");
    assert!(actions.contains(&("operation-erase".to_owned(), 403)), "{actions:?}");
}

#[tokio::test]
async fn an_erasure_waits_its_delay_and_can_be_cancelled() {
    let app = spawn_app_with(|s| s.erasure.delay_days = 7).await;
    let id = app.create_ok(&patient("Roussel")).await["id"].as_str().unwrap().to_owned();
    let scheduled = operation(&app, &id, "$erase", &admin(&app), None).await;
    assert_eq!(scheduled.status(), StatusCode::ACCEPTED);
    let text = diagnostics(scheduled).await;
    assert!(text.contains("scheduled for") && text.contains("$erase-cancel"), "{text}");
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), StatusCode::OK, "readable until due");
    let again = operation(&app, &id, "$erase", &admin(&app), None).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert!(diagnostics(again).await.contains("already scheduled"));

    let cancelled = operation(&app, &id, "$erase-cancel", &admin(&app), None).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    let nothing = operation(&app, &id, "$erase-cancel", &admin(&app), None).await;
    assert_eq!(nothing.status(), StatusCode::CONFLICT);
    assert!(diagnostics(nothing).await.contains("no erasure"));
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_legal_hold_or_a_retention_rule_keeps_the_record() {
    let app = spawn_app_with(|s| {
        s.erasure.delay_days = 0;
        s.erasure.retention = vec![RetentionRule {
            category: "hospital-record".into(),
            resource_types: vec!["Encounter".into()],
            years: 20,
        }];
    })
    .await;
    let id = app.create_ok(&patient("Fontaine")).await["id"].as_str().unwrap().to_owned();

    // A hold needs a reason, is set by an administrator only, and refuses the erasure.
    let no_reason = operation(&app, &id, "$legal-hold", &admin(&app), Some(hold(true, None))).await;
    assert_eq!(no_reason.status(), StatusCode::BAD_REQUEST);
    let by_practitioner = operation(&app, &id, "$legal-hold", &app.practitioner(), Some(hold(true, Some("x")))).await;
    assert_eq!(by_practitioner.status(), StatusCode::FORBIDDEN);
    let set = operation(&app, &id, "$legal-hold", &admin(&app), Some(hold(true, Some("court order 2026-118")))).await;
    assert_eq!(set.status(), StatusCode::OK);
    let refused = operation(&app, &id, "$erase", &admin(&app), None).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert!(diagnostics(refused).await.contains("legal hold"));
    let cleared = operation(&app, &id, "$legal-hold", &admin(&app), Some(hold(false, None))).await;
    assert_eq!(cleared.status(), StatusCode::OK);

    // A hospital record (an Encounter) within its 20 years: refused, naming the rule.
    let encounter = json!({
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{id}")}
    });
    app.create_ok(&encounter).await;
    let retained = operation(&app, &id, "$erase", &admin(&app), None).await;
    assert_eq!(retained.status(), StatusCode::CONFLICT);
    let text = diagnostics(retained).await;
    assert!(text.contains("retention rule `hospital-record`") && text.contains("20 years"), "{text}");

    // Without such records, the erasure goes ahead.
    let other = app.create_ok(&patient("Chevalier")).await["id"].as_str().unwrap().to_owned();
    assert_eq!(operation(&app, &other, "$erase", &admin(&app), None).await.status(), StatusCode::OK);
    let actions = audited_actions(&app).await;
    for expected in [("operation-legal-hold", 200), ("operation-legal-hold", 400), ("operation-erase", 409)] {
        assert!(actions.contains(&(expected.0.to_owned(), expected.1)), "{expected:?} in {actions:?}");
    }
}

/// `fhirvault keys rotate` on a running server's index: each tenant's KEK moves to version 2,
/// every stored key is re-wrapped, version 1 is retired, records still read, and the
/// rotation is in the audit log.
#[tokio::test]
async fn keys_rotate_rewraps_online_and_is_audited() {
    let app = spawn_app_with(|s| s.keys.version_refresh_seconds = 0).await;
    let id = app.create_ok(&patient("Marchand")).await["id"].as_str().unwrap().to_owned();
    let url = secrecy::ExposeSecret::expose_secret(&app.settings.database_url()).to_owned();
    let output = std::process::Command::new(crate::binary::BIN)
        .args(["keys", "rotate", "--json", "--data-dir", app.data_path().to_str().unwrap()])
        .env("FHIRVAULT__DATABASE__URL", &url)
        .env("FHIRVAULT__KEYS__VERSION_REFRESH_SECONDS", "0")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rotations: Value = serde_json::from_slice(&output.stdout).unwrap();
    let demo = rotations.as_array().unwrap().iter().find(|r| r["tenant"] == "demo").unwrap();
    assert_eq!((demo["primary"].as_u64(), demo["destroyed"].clone()), (Some(2), json!([1])), "{demo}");
    assert!(demo["rewrapped"].as_u64().unwrap() >= 2, "{demo}");

    // The server reads what it wrote before, and wraps new keys under version 2.
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), StatusCode::OK);
    app.create_ok(&patient("Lemoine")).await;
    let pool = app.index().await;
    let versions: Vec<(i64,)> =
        sqlx::query_as("SELECT DISTINCT kek_version FROM tenant_keys WHERE tenant = 'demo' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, [(2,)]);
    let rotated: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_records WHERE action = 'key-rotation' AND outcome = 200 AND tenant = 'demo'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rotated, 1);
}
