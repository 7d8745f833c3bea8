//! The S3 backend against a real S3-compatible server (s3s-fs by default, Garage with
//! `FHIRVAULT_TEST_S3=garage`), started by `./scripts/test`.

use std::time::Duration;

use fhirvault::config::{BackendSettings, LocationSettings, OperatorSettings};
use fhirvault::ids::{ResourceId, ResourceType, TenantId, VersionId};
use fhirvault::startup::open_storage;
use fhirvault::storage::gc::sweep;
use fhirvault::storage::{ObjectKey, ObjectStorage};

use crate::backends::s3_settings;
use crate::helpers::{TestApp, patient, spawn_app_with};

/// The app with tenant `demo` on an S3 location; `None` when no S3 server is configured.
async fn spawn_on_s3() -> Option<TestApp> {
    let s3 = s3_settings()?;
    let location = LocationSettings {
        jurisdiction: "FR".to_owned(),
        operator: OperatorSettings { name: None, country: "FR".to_owned(), extraterritorial_laws: Vec::new() },
        backend: BackendSettings::S3(s3),
    };
    Some(
        spawn_app_with(|s| {
            s.locations.insert("s3".to_owned(), location);
            s.tenants.get_mut("demo").unwrap().location = "s3".to_owned();
        })
        .await,
    )
}

fn bucket(app: &TestApp) -> ObjectStorage {
    let BackendSettings::S3(s3) = &app.settings.locations["s3"].backend else { unreachable!() };
    ObjectStorage::s3("s3", s3).unwrap()
}

#[tokio::test]
async fn crud_and_history_work_on_s3_and_objects_are_sealed() {
    let Some(app) = spawn_on_s3().await else { return };
    assert_eq!(app.client.get(format!("{}/readyz", app.address)).send().await.unwrap().status(), 200);
    let mut created = app.create_ok(&patient("Sthreefamily")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    created["active"] = serde_json::json!(true);
    assert_eq!(app.update(&created).await.status(), 200);
    let read: serde_json::Value = app.get(&format!("Patient/{id}")).await.json().await.unwrap();
    assert_eq!((read["meta"]["versionId"].as_str(), read["active"].as_bool()), (Some("2"), Some(true)));
    let v1: serde_json::Value = app.get(&format!("Patient/{id}/_history/1")).await.json().await.unwrap();
    assert!(v1.get("active").is_none());
    let history: serde_json::Value = app.get(&format!("Patient/{id}/_history")).await.json().await.unwrap();
    assert_eq!(history["total"], 2);
    assert_eq!(app.request(reqwest::Method::DELETE, &format!("Patient/{id}")).send().await.unwrap().status(), 204);
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 410);

    // Nothing legible in the bucket, and no local objects were written.
    let store = bucket(&app);
    let objects = store.list_objects().await.unwrap();
    assert_eq!(objects.len(), 2);
    for object in &objects {
        let bytes = store.get(&object.key).await.unwrap();
        assert!(bytes.starts_with(b"FVLT"), "sealed envelope");
        assert!(!bytes.windows(12).any(|w| w == b"Sthreefamily"), "no plaintext in {:?}", object.key);
    }
    assert!(!app.data_files().iter().any(|f| f.to_string_lossy().contains("/objects/tenants/")));
}

#[tokio::test]
async fn orphans_are_swept_from_s3_and_referenced_objects_kept() {
    let Some(app) = spawn_on_s3().await else { return };
    let created = app.create_ok(&patient("Keptons3")).await;
    let store = bucket(&app);
    let orphan = ObjectKey::new_for(
        &TenantId::parse("demo").unwrap(),
        ResourceType::parse("Patient").unwrap(),
        &ResourceId::parse("never-committed").unwrap(),
        VersionId::FIRST,
    );
    store.put_new(&orphan, b"sealed bytes of a write that never committed".to_vec()).await.unwrap();

    let (index, _) = open_storage(&app.settings).await.unwrap();
    let report = sweep(index.as_ref(), &store, Duration::ZERO).await.unwrap();
    assert_eq!((report.scanned, report.referenced, report.deleted), (2, 1, 1));
    assert!(matches!(store.get(&orphan).await, Err(fhirvault::storage::StorageError::ObjectMissing(_))));
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 200);
}
