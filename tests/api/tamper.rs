//! Tampering with stored objects is detected: the read fails with an opaque 500 (request id
//! only), the audit log records an integrity failure, and no wrong data is ever returned.

use serde_json::{Value, json};

use crate::helpers::{TestApp, patient, spawn_app};

async fn assert_integrity_failure(app: &TestApp, path: &str) {
    let response = app.get(path).await;
    assert_eq!(response.status(), 500, "{path}");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    let says = body["issue"][0]["diagnostics"].as_str().unwrap();
    assert_eq!(says, format!("internal error (request id {request_id})"));

    let pool = app.index().await;
    let detail: String = sqlx::query_scalar("SELECT detail FROM audit_records WHERE request_id = $1")
        .bind(&request_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(detail.starts_with("integrity failure"), "{detail}");
}

#[tokio::test]
async fn swapped_objects_do_not_open() {
    let app = spawn_app().await;
    let a = app.create_ok(&patient("Aubert")).await["id"].as_str().unwrap().to_owned();
    let b = app.create_ok(&patient("Brun")).await["id"].as_str().unwrap().to_owned();
    let (_, file_a) = app.object_files("Patient", &a).await.remove(0);
    let (_, file_b) = app.object_files("Patient", &b).await.remove(0);
    let (bytes_a, bytes_b) = (std::fs::read(&file_a).unwrap(), std::fs::read(&file_b).unwrap());
    std::fs::write(&file_a, &bytes_b).unwrap();
    std::fs::write(&file_b, &bytes_a).unwrap();

    assert_integrity_failure(&app, &format!("Patient/{a}")).await;
    assert_integrity_failure(&app, &format!("Patient/{b}")).await;
}

#[tokio::test]
async fn a_flipped_byte_anywhere_is_detected() {
    let app = spawn_app().await;
    let id = app.create_ok(&patient("Carpentier")).await["id"].as_str().unwrap().to_owned();
    let (_, file) = app.object_files("Patient", &id).await.remove(0);
    let original = std::fs::read(&file).unwrap();
    // Header, wrapped key, commitment, nonce, ciphertext, tag.
    for position in [0, 5, 10, 70, 100, 120, original.len() - 1] {
        let mut bytes = original.clone();
        bytes[position] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        assert_integrity_failure(&app, &format!("Patient/{id}")).await;
    }
    std::fs::write(&file, &original).unwrap();
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 200);
}

#[tokio::test]
async fn an_old_version_replayed_under_a_newer_key_is_refused() {
    let app = spawn_app().await;
    let mut resource = app.create_ok(&patient("Deschamps")).await;
    let id = resource["id"].as_str().unwrap().to_owned();
    resource["active"] = json!(false);
    assert_eq!(app.update(&resource).await.status(), 200);
    let files = app.object_files("Patient", &id).await;
    let (v1, v2) = (&files[0].1, &files[1].1);
    std::fs::copy(v1, v2).unwrap();

    assert_integrity_failure(&app, &format!("Patient/{id}")).await;
    // Version 1 itself is untouched and still reads.
    assert_eq!(app.get(&format!("Patient/{id}/_history/1")).await.status(), 200);
}

#[tokio::test]
async fn a_missing_object_is_an_opaque_500() {
    let app = spawn_app().await;
    let id = app.create_ok(&patient("Fabre")).await["id"].as_str().unwrap().to_owned();
    let (_, file) = app.object_files("Patient", &id).await.remove(0);
    std::fs::remove_file(file).unwrap();

    let response = app.get(&format!("Patient/{id}")).await;
    assert_eq!(response.status(), 500);
    let body = response.text().await.unwrap();
    assert!(body.contains("request id") && !body.contains("objects/"), "{body}");
}
