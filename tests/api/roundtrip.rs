//! Official R4 examples survive create + read unchanged, apart from `id` and `meta`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::spawn_app;

/// The example without what the server owns (`id`, `meta.versionId`, `meta.lastUpdated`).
fn comparable(mut resource: Value) -> Value {
    let object = resource.as_object_mut().unwrap();
    object.remove("id");
    if let Some(Value::Object(meta)) = object.get_mut("meta") {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            object.remove("meta");
        }
    }
    resource
}

#[tokio::test]
async fn official_examples_round_trip() {
    let app = spawn_app().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/r4-examples");
    let mut types = BTreeSet::new();
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let original: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let rt = original["resourceType"].as_str().unwrap().to_owned();

        let response = app.create(&original).await;
        let status = response.status();
        let created: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{}: {created}", path.display());
        let id = created["id"].as_str().unwrap();
        let read: Value = app.get(&format!("{rt}/{id}")).await.json().await.unwrap();

        assert_eq!(read, created, "{}: read differs from create", path.display());
        assert_eq!(comparable(read), comparable(original), "{}", path.display());
        types.insert(rt);
        count += 1;
    }
    assert!(count >= 50, "only {count} examples");
    assert!(types.len() >= 20, "only {} types", types.len());
}
