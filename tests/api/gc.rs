//! The orphan sweeper: an object whose index commit failed is removed once older than the grace
//! period; objects the index names are never touched. The failure is injected for real, by a
//! database trigger that refuses the version row after the object was written.

use std::process::Command;
use std::time::Duration;

use fhirvault::startup::open_storage;
use fhirvault::storage::gc::sweep;
use fhirvault::storage::{Locations, ObjectStorage};

use crate::binary::BIN;
use crate::helpers::{TestApp, patient, spawn_app};

async fn inject_commit_failure(app: &TestApp, on: bool) {
    let pool = app.index().await;
    let statements: &[&'static str] = match (app.on_postgres(), on) {
        (false, true) => &["CREATE TRIGGER inject_failure BEFORE INSERT ON resource_versions \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"],
        (false, false) => &["DROP TRIGGER inject_failure"],
        (true, true) => &[
            "CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END; $$",
            "CREATE TRIGGER inject_failure BEFORE INSERT ON resource_versions \
             FOR EACH ROW EXECUTE FUNCTION inject_failure()",
        ],
        (true, false) => &["DROP TRIGGER inject_failure ON resource_versions"],
    };
    for statement in statements {
        sqlx::query(*statement).execute(&pool).await.unwrap();
    }
}

fn local(locations: &Locations) -> &ObjectStorage {
    locations.get("local").unwrap()
}

fn object_count(app: &TestApp) -> usize {
    app.data_files().iter().filter(|f| f.to_string_lossy().contains("/objects/tenants/")).count()
}

#[tokio::test]
async fn an_object_whose_commit_failed_is_swept_after_the_grace_period() {
    let app = spawn_app().await;
    let kept = app.create_ok(&patient("Kept")).await;
    inject_commit_failure(&app, true).await;
    assert_eq!(app.create(&patient("Orphaned")).await.status(), 500);
    inject_commit_failure(&app, false).await;
    assert_eq!(object_count(&app), 2, "the failed write left its object behind");

    let (index, locations) = open_storage(&app.settings).await.unwrap();
    let report = sweep(index.as_ref(), local(&locations), Duration::from_secs(3600)).await.unwrap();
    assert_eq!((report.scanned, report.referenced, report.recent_orphans, report.deleted), (2, 1, 1, 0));

    let report = sweep(index.as_ref(), local(&locations), Duration::ZERO).await.unwrap();
    assert_eq!((report.scanned, report.referenced, report.deleted), (2, 1, 1));
    assert!(report.deleted_bytes > 0);
    assert_eq!(object_count(&app), 1);
    let id = kept["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 200, "committed data is untouched");
}

#[tokio::test]
async fn the_gc_command_reports_each_location() {
    let app = spawn_app().await;
    app.create_ok(&patient("Kept")).await;
    inject_commit_failure(&app, true).await;
    assert_eq!(app.create(&patient("Orphaned")).await.status(), 500);

    let config = app.data_path().join("gc.toml");
    let url = app.settings.database_url();
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", secrecy::ExposeSecret::expose_secret(&url))).unwrap();
    let output = Command::new(BIN)
        .args(["gc", "--config", config.to_str().unwrap(), "--data-dir", app.data_path().to_str().unwrap()])
        .env("FHIRVAULT__LOG__FILTER", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The default grace period (an hour) protects the orphan, which might be a write in flight.
    assert_eq!(report["location"], "local");
    assert_eq!((report["referenced"].as_u64(), report["recent_orphans"].as_u64()), (Some(1), Some(1)));
    assert_eq!(report["deleted"], 0);
}
