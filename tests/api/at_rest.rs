//! No plaintext at rest: distinctive names and identifiers appear in no file of the data
//! directory (SQLite database, its WAL, object files) nor in any PostgreSQL row (search index
//! included), byte by byte.

use crate::helpers::{observation, patient, spawn_app};

#[tokio::test]
async fn names_and_identifiers_never_reach_the_disk_in_clear() {
    let app = spawn_app().await;
    let families = ["Zqxjvbrownfox", "Wkplmnoqrstuv", "Yhgfedcbazyxw"];
    for family in families {
        let created = app.create_ok(&patient(family)).await;
        let id = created["id"].as_str().unwrap();
        let mut obs = observation(id);
        obs["note"] = serde_json::json!([{"text": format!("{family} reports chest pain")}]);
        app.create_ok(&obs).await;
        // Reads and history go through the index too.
        assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 200);
    }
    assert_eq!(app.get("Patient/_history").await.status(), 200);
    // The search index finds them, without holding their names.
    let found: serde_json::Value = app.get("Patient?family=zqxjv").await.json().await.unwrap();
    assert_eq!(found["total"], 1);

    let files = app.data_files();
    assert_eq!(files.iter().any(|f| f.ends_with("index.sqlite")), !app.on_postgres());
    assert!(files.iter().filter(|f| f.to_string_lossy().contains("/objects/")).count() >= 6);
    let contents = files
        .into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .chain([("the index database".to_owned(), app.index_contents().await)]);
    for (file, bytes) in contents {
        for family in families {
            let folded = family.to_lowercase();
            for needle in [family.to_owned(), folded, format!("NIR-{family}"), format!("12 rue {family}")] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "`{needle}` found in clear in {file}"
                );
            }
        }
        for needle in ["chest pain", "Camille", "8867-4"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "`{needle}` in {file}");
        }
    }
}
