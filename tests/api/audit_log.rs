//! The sealed audit log: every interaction becomes a BALP AuditEvent in its tenant's Merkle
//! tree, checkpoints are signed and copied to object storage, and the offline verifier finds
//! and locates each kind of tampering someone with write access to the database could try.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fhirvault::audit::log::{LogKey, Tree, check_consistency, check_inclusion, open_checkpoint, record_hash};
use fhirvault::audit::verify::{self, Finding, LogReport};
use fhirvault::auth::Role;
use serde_json::Value;

use crate::binary::BIN;
use crate::helpers::{TestApp, patient, spawn_app_with};

/// An app that signs a checkpoint every 4 entries, with 12 sealed entries in `demo`'s log
/// (6 creates, 6 reads): checkpoints at 4, 8 and 12.
async fn sealed_app() -> TestApp {
    let app = spawn_app_with(|s| s.audit.checkpoint_every_entries = 4).await;
    for i in 0..6 {
        let created = app.create_ok(&patient(&format!("Family{i}"))).await;
        let id = created["id"].as_str().unwrap();
        assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 200);
    }
    assert_eq!(app.seal().await, 12);
    app
}

fn log_key(app: &TestApp) -> LogKey {
    LogKey::load(&app.settings.audit_key_path()).unwrap()
}

async fn verify(app: &TestApp) -> LogReport {
    let (index, locations) = fhirvault::startup::open_storage(&app.settings).await.unwrap();
    let evidence = verify::gather(index.as_ref(), &locations, "demo").await.unwrap();
    verify::verify_log(&evidence, &log_key(app).verifier_key("demo"))
}

/// What someone who can write to the database does first.
async fn disable_log_triggers(app: &TestApp) -> sqlx::AnyPool {
    let pool = app.index().await;
    let statements: Vec<String> = if app.on_postgres() {
        ["audit_log", "audit_hash_runs", "audit_checkpoints"]
            .iter()
            .map(|t| format!("ALTER TABLE {t} DISABLE TRIGGER USER"))
            .collect()
    } else {
        ["audit_log", "audit_hash_runs", "audit_checkpoints"]
            .iter()
            .flat_map(|t| [format!("DROP TRIGGER {t}_no_update"), format!("DROP TRIGGER {t}_no_delete")])
            .collect()
    };
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&pool).await.unwrap();
    }
    pool
}

async fn event(pool: &sqlx::AnyPool, idx: i64) -> Vec<u8> {
    sqlx::query_scalar("SELECT event FROM audit_log WHERE tenant = 'demo' AND idx = $1")
        .bind(idx)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn set_event(pool: &sqlx::AnyPool, idx: i64, bytes: Vec<u8>) {
    sqlx::query("UPDATE audit_log SET event = $1 WHERE tenant = 'demo' AND idx = $2")
        .bind(bytes)
        .bind(idx)
        .execute(pool)
        .await
        .unwrap();
}

/// Event `idx` with its outcome turned from success into a failure.
async fn edited(pool: &sqlx::AnyPool, idx: i64) -> Vec<u8> {
    let original = String::from_utf8(event(pool, idx).await).unwrap();
    assert!(original.contains(r#""outcome":"0""#));
    original.replace(r#""outcome":"0""#, r#""outcome":"4""#).into_bytes()
}

/// Rewrite `demo`'s whole log as `events`, with consistent tree hashes, and checkpoints at
/// `sizes` signed by `key`: the most an attacker with the database (and perhaps a key) can do.
async fn rewrite_log(pool: &sqlx::AnyPool, events: &[Vec<u8>], key: &LogKey, sizes: &[u64]) {
    for table in ["audit_log", "audit_hash_runs", "audit_checkpoints"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE tenant = 'demo'")))
            .execute(pool)
            .await
            .unwrap();
    }
    let mut tree = Tree::new();
    for (i, e) in events.iter().enumerate() {
        tree.push(record_hash(e)).unwrap();
        sqlx::query(
            "INSERT INTO audit_log (tenant, idx, recorded_at, action, outcome, event) \
             VALUES ('demo', $1, 0, 'read', 200, $2)",
        )
        .bind(i as i64)
        .bind(e.clone())
        .execute(pool)
        .await
        .unwrap();
    }
    for (i, hash) in tree.stored_hashes().iter().enumerate() {
        sqlx::query("INSERT INTO audit_hash_runs (tenant, idx, hashes) VALUES ('demo', $1, $2)")
            .bind(i as i64)
            .bind(hash.0.to_vec())
            .execute(pool)
            .await
            .unwrap();
    }
    for &size in sizes {
        let note = key.sign("demo", size, tree.root_at(size).unwrap()).unwrap();
        sqlx::query("INSERT INTO audit_checkpoints (tenant, size, note, created_at) VALUES ('demo', $1, $2, 0)")
            .bind(size as i64)
            .bind(note)
            .execute(pool)
            .await
            .unwrap();
    }
}

async fn all_events(pool: &sqlx::AnyPool) -> Vec<Vec<u8>> {
    sqlx::query_scalar("SELECT event FROM audit_log WHERE tenant = 'demo' ORDER BY idx").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn every_interaction_is_sealed_as_a_balp_audit_event_and_signed() {
    let app = spawn_app_with(|s| s.audit.checkpoint_every_entries = 4).await;
    let created = app.create_ok(&patient("Lefebvre")).await;
    let id = created["id"].as_str().unwrap();
    app.get(&format!("Patient/{id}")).await;
    app.get("Patient?family=lefebvre").await;
    app.client.get(format!("{}/Patient/{id}", app.base)).send().await.unwrap(); // 401
    app.get_with(&format!("Patient/{id}"), &app.token(Role::Researcher)).await; // 403
    let inbox: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_records").fetch_one(&app.index().await).await.unwrap();
    assert_eq!(app.seal().await, inbox as usize);

    let pool = app.index().await;
    let events: Vec<Value> = all_events(&pool).await.iter().map(|e| serde_json::from_slice(e).unwrap()).collect();
    assert_eq!(events.len(), 5);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["id"], i.to_string(), "the event's id is its index in the log");
    }
    let subtypes: Vec<&str> = events.iter().map(|e| e["subtype"][0]["code"].as_str().unwrap()).collect();
    assert_eq!(subtypes, ["create", "read", "search-type", "110122", "read"]);
    let outcomes: Vec<&str> = events.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["0", "0", "0", "4", "4"]);
    assert_eq!(events[1]["entity"][2]["what"]["reference"], format!("Patient/{id}"));
    let policies = events[1]["agent"][1]["policy"].as_array().unwrap();
    assert!(!policies.is_empty() && policies.iter().all(|p| p.as_str().unwrap().starts_with("urn:fhirvault:policy:")));
    assert_eq!(events[4]["agent"][2]["role"][0]["coding"][0]["code"], "researcher");
    let raw = String::from_utf8(all_events(&pool).await.concat()).unwrap();
    assert!(!raw.contains("Lefebvre") && !raw.contains("lefebvre"), "no health data in the log");

    let report = verify(&app).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.entries, report.verified_size), (5, 5));
    let published = app.data_dir.path().join("objects/audit/demo/checkpoints");
    let names: Vec<String> =
        std::fs::read_dir(&published).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&format!("{:020}", 4)) && names.contains(&format!("{:020}", 5)), "{names:?}");
    assert_eq!(report.checkpoints, 4, "each checkpoint in the index and in the object store");
}

#[tokio::test]
async fn an_edited_event_is_located() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    let forged = edited(&pool, 5).await;
    set_event(&pool, 5, forged).await;
    let report = verify(&app).await;
    assert!(report.findings.contains(&Finding::Altered { index: 5 }), "{:?}", report.findings);
    assert_eq!(report.verified_size, 4);
}

#[tokio::test]
async fn a_changed_search_column_is_located() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    // Hide a read from the patient's access log, and pin another on someone else.
    for statement in [
        "UPDATE audit_log SET patient = NULL WHERE tenant = 'demo' AND idx = 3",
        "UPDATE audit_log SET agent = 'someone-else' WHERE tenant = 'demo' AND idx = 7",
        "UPDATE audit_log SET outcome = 403 WHERE tenant = 'demo' AND idx = 9",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let report = verify(&app).await;
    let columns: Vec<&Finding> =
        report.findings.iter().filter(|f| matches!(f, Finding::ColumnsAltered { .. })).collect();
    let expected = [3, 7, 9].map(|index| Finding::ColumnsAltered { index });
    assert_eq!(columns, expected.iter().collect::<Vec<_>>(), "{:?}", report.findings);
    assert_eq!(report.verified_size, 12, "the events themselves are intact");
}

#[tokio::test]
async fn a_deleted_event_is_located() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    sqlx::query("DELETE FROM audit_log WHERE tenant = 'demo' AND idx = 6").execute(&pool).await.unwrap();
    let report = verify(&app).await;
    assert!(report.findings.contains(&Finding::Removed { from: 6, to: 7 }), "{:?}", report.findings);
}

#[tokio::test]
async fn swapped_events_are_located() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    let (a, b) = (event(&pool, 2).await, event(&pool, 3).await);
    set_event(&pool, 2, b).await;
    set_event(&pool, 3, a).await;
    let report = verify(&app).await;
    assert!(report.findings.contains(&Finding::Reordered { index: 2, after: 3 }), "{:?}", report.findings);
}

#[tokio::test]
async fn a_truncated_tail_is_located_even_when_the_index_checkpoints_go_too() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    sqlx::query("DELETE FROM audit_log WHERE tenant = 'demo' AND idx >= 9").execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints WHERE tenant = 'demo' AND size > 8").execute(&pool).await.unwrap();
    let report = verify(&app).await;
    assert!(report.findings.contains(&Finding::Truncated { from: 9, to: 12 }), "{:?}", report.findings);
}

#[tokio::test]
async fn an_inserted_event_is_located() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    let mut events = all_events(&pool).await;
    events.insert(7, events[6].clone());
    rewrite_log(&pool, &events, &log_key(&app), &[]).await;
    let report = verify(&app).await;
    assert!(report.findings.contains(&Finding::Inserted { position: 7, claims: Some(6) }), "{:?}", report.findings);
}

#[tokio::test]
async fn a_replaced_checkpoint_is_refused() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    let stranger = LogKey::parse(&LogKey::generate(log_key(&app).name()).unwrap()).unwrap();
    let mut tree = Tree::new();
    for e in all_events(&pool).await {
        tree.push(record_hash(&e)).unwrap();
    }
    let note = stranger.sign("demo", 8, tree.root_at(8).unwrap()).unwrap();
    sqlx::query("UPDATE audit_checkpoints SET note = $1 WHERE tenant = 'demo' AND size = 8")
        .bind(note)
        .execute(&pool)
        .await
        .unwrap();
    let report = verify(&app).await;
    assert!(
        report.findings.iter().any(|f| matches!(f, Finding::BadCheckpoint { source, .. } if source == "index:8")),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn a_log_resigned_with_another_key_is_refused_and_the_published_checkpoints_bound_the_edit() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    let mut events = all_events(&pool).await;
    events[10] = edited(&pool, 10).await;
    let stranger = LogKey::parse(&LogKey::generate(log_key(&app).name()).unwrap()).unwrap();
    rewrite_log(&pool, &events, &stranger, &[4, 8, 12]).await;
    let report = verify(&app).await;
    let bad = report.findings.iter().filter(|f| matches!(f, Finding::BadCheckpoint { .. })).count();
    assert_eq!(bad, 3, "{:?}", report.findings);
    assert!(report.findings.contains(&Finding::AlteredWithin { from: 8, to: 12 }), "{:?}", report.findings);
    assert_eq!(report.verified_size, 8);
}

#[tokio::test]
async fn a_forked_log_is_detected() {
    let app = sealed_app().await;
    let pool = disable_log_triggers(&app).await;
    // Whoever holds the key rewrites history from entry 9 on and signs it again.
    let mut events = all_events(&pool).await;
    events[9] = edited(&pool, 9).await;
    rewrite_log(&pool, &events, &log_key(&app), &[4, 8, 12]).await;
    let report = verify(&app).await;
    assert!(
        report.findings.iter().any(|f| matches!(f, Finding::Fork { sizes: (12, 12), .. })),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn the_verifier_command_reports_tampering_with_its_location() {
    let app = sealed_app().await;
    let key = log_key(&app).public_key();
    let data_dir = app.data_dir.path().to_str().unwrap().to_owned();
    let mut args = vec!["audit", "verify", "--data-dir", &data_dir, "--key", &key];
    let url = secrecy::ExposeSecret::expose_secret(&app.settings.database_url()).to_owned();
    if app.on_postgres() {
        args.extend(["--database-url", url.as_str()]);
    }
    let run = |args: &[&str]| std::process::Command::new(BIN).args(args).output().unwrap();
    let clean = run(&args);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{stdout}{}", String::from_utf8_lossy(&clean.stderr));
    assert!(stdout.contains("log demo: OK: 12 entries"), "{stdout}");

    let pool = disable_log_triggers(&app).await;
    let forged = edited(&pool, 5).await;
    set_event(&pool, 5, forged).await;
    let tampered = run(&args);
    let stdout = String::from_utf8_lossy(&tampered.stdout);
    assert_eq!(tampered.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("log demo: TAMPERED") && stdout.contains("entry 5 was altered"), "{stdout}");
}

#[tokio::test]
async fn auditors_get_the_signed_checkpoint_and_proofs_that_check_against_it() {
    let app = sealed_app().await;
    let auditor = app.token(Role::Auditor);
    let get = |path: String| {
        let request = app.client.get(format!("{}/audit/demo/{path}", app.address)).bearer_auth(&auditor);
        async move { request.send().await.unwrap() }
    };
    let response = get("checkpoint".into()).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let note = response.text().await.unwrap();
    let checkpoint = open_checkpoint(note.as_bytes(), &log_key(&app).verifier_key("demo")).unwrap();
    assert_eq!(checkpoint.size, 12);

    let pool = app.index().await;
    let leaf = record_hash(&event(&pool, 5).await);
    let proof: Value = get("proof/inclusion?index=5&size=12".into()).await.json().await.unwrap();
    assert_eq!(proof["leafHash"], STANDARD.encode(leaf.0));
    assert!(check_inclusion(&hashes(&proof["proof"]), 12, checkpoint.root, 5, leaf));

    let older =
        sqlx::query_scalar::<_, String>("SELECT note FROM audit_checkpoints WHERE tenant = 'demo' AND size = 4")
            .fetch_one(&pool)
            .await
            .unwrap();
    let older = open_checkpoint(older.as_bytes(), &log_key(&app).verifier_key("demo")).unwrap();
    let proof: Value = get("proof/consistency?from=4&to=12".into()).await.json().await.unwrap();
    assert!(check_consistency(&hashes(&proof["proof"]), 4, older.root, 12, checkpoint.root));

    for (query, status) in [
        ("proof/inclusion?index=12&size=12", 400),
        ("proof/inclusion?index=1&size=13", 404),
        ("proof/inclusion?index=1", 400),
        ("proof/inclusion?index=1&size=4&extra=1", 400),
        ("proof/consistency?from=0&to=4", 400),
        ("proof/consistency?from=5&to=4", 400),
        ("proof/consistency?from=4&to=99", 404),
        ("checkpoint?x=1", 400),
    ] {
        let response = get(query.into()).await;
        assert_eq!(response.status(), status, "{query}");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{query}");
    }
}

#[tokio::test]
async fn only_auditors_read_the_audit_log_and_every_read_is_audited() {
    let app = sealed_app().await;
    let url = format!("{}/audit/demo/checkpoint", app.address);
    for (role, status) in [
        (Role::Practitioner, 403),
        (Role::Admin, 403),
        (Role::Service, 403),
        (Role::Researcher, 403),
        (Role::Auditor, 200),
    ] {
        let response = app.client.get(&url).bearer_auth(app.token(role)).send().await.unwrap();
        assert_eq!(response.status(), status, "{role:?}");
    }
    let patient =
        app.token_for(crate::helpers::TokenSpec { role: Role::Patient, patient: Some("p1"), ..Default::default() });
    assert_eq!(app.client.get(&url).bearer_auth(patient).send().await.unwrap().status(), 404);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
    let other = app.client.get(format!("{}/audit/other/checkpoint", app.address)).bearer_auth(app.token(Role::Auditor));
    assert_eq!(other.send().await.unwrap().status(), 403, "an auditor of one tenant is a stranger to another");

    let rows: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT action, outcome, agent_role FROM audit_records WHERE action = 'audit-log' ORDER BY seq")
            .fetch_all(&app.index().await)
            .await
            .unwrap();
    let seen: Vec<(i64, &str)> = rows.iter().map(|(_, o, r)| (*o, r.as_deref().unwrap_or("-"))).collect();
    assert_eq!(
        seen,
        [
            (403, "practitioner"),
            (403, "admin"),
            (403, "service"),
            (403, "researcher"),
            (200, "auditor"),
            (404, "patient"),
            (403, "auditor"),
        ]
    );
}

fn hashes(proof: &Value) -> Vec<fhirvault::audit::log::Hash> {
    proof
        .as_array()
        .unwrap()
        .iter()
        .map(|h| fhirvault::audit::log::Hash(STANDARD.decode(h.as_str().unwrap()).unwrap().try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn an_exported_evidence_package_verifies_offline_and_shows_tampering() {
    let app = sealed_app().await;
    let auditor = app.token(Role::Auditor);
    let export =
        |query: &str| app.client.get(format!("{}/audit/demo/export{query}", app.address)).bearer_auth(&auditor).send();
    let response = export("").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let whole = response.text().await.unwrap();
    let public_key = log_key(&app).public_key();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("evidence.ndjson");
    std::fs::write(&file, &whole).unwrap();
    let verify_package = |file: &std::path::Path| {
        std::process::Command::new(BIN)
            .args(["audit", "verify", "--package"])
            .arg(file)
            .args(["--key", &public_key])
            .output()
            .unwrap()
    };
    let out = verify_package(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("log demo: OK: 12 entries"), "{stdout}");
    // Every line is JSON; each entry carries the event exactly as the tree hashed it.
    let pool = app.index().await;
    let sealed = all_events(&pool).await;
    let entries: Vec<&str> = whole.lines().filter(|l| l.starts_with(r#"{"type":"entry""#)).collect();
    assert_eq!(entries.len(), 12);
    for (line, event) in entries.iter().zip(&sealed) {
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["event"], serde_json::from_slice::<Value>(event).unwrap());
        assert!(line.contains(std::str::from_utf8(event).unwrap()));
    }

    // A range is rounded up to the next checkpoint, and linked to the rest by proofs.
    let part = export("?from=5&to=7").await.unwrap().text().await.unwrap();
    let header: Value = serde_json::from_str(part.lines().next().unwrap()).unwrap();
    assert_eq!((header["from"].as_u64(), header["to"].as_u64()), (Some(5), Some(8)));
    assert_eq!(part.lines().filter(|l| l.starts_with(r#"{"type":"entry""#)).count(), 3);
    assert_eq!(part.lines().filter(|l| l.starts_with(r#"{"type":"consistency""#)).count(), 2);
    std::fs::write(&file, &part).unwrap();
    assert!(verify_package(&file).status.success());

    // An edited entry in a package is found and bounded by the checkpoints around it.
    let tampered = whole.replacen(r#""outcome":"0""#, r#""outcome":"4""#, 1);
    std::fs::write(&file, &tampered).unwrap();
    let out = verify_package(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("TAMPERED") && stdout.contains("between index 0 and 4"), "{stdout}");

    // Bad ranges are refused with an outcome; a range past the last checkpoint is not there yet.
    for (query, status) in [("?from=9&to=3", 400), ("?to=13", 404), ("?from=x", 400), ("?size=3", 400)] {
        let response = export(query).await.unwrap();
        assert_eq!(response.status(), status, "{query}");
        assert_eq!(response.json::<Value>().await.unwrap()["resourceType"], "OperationOutcome");
    }
    let practitioner = app.client.get(format!("{}/audit/demo/export", app.address)).bearer_auth(app.practitioner());
    assert_eq!(practitioner.send().await.unwrap().status(), 403);
}
