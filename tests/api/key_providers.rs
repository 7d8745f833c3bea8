//! The server on each production key provider that `./scripts/test` starts: a PKCS#11 token
//! (SoftHSM2) and OpenBao's transit engine. Records are written and read back with tenant keys
//! wrapped by the provider, the index records which KEK each tenant uses, no key file lives in
//! the data directory, and a start is refused, with the reason, when the token cannot be used.

use std::process::Command;

use fhirvault::audit::verify;
use fhirvault::config::KeyProviderSettings;
use reqwest::StatusCode;

use crate::backends::{pkcs11_settings, transit_settings};
use crate::binary::BIN;
use crate::helpers::{TestApp, patient, spawn_app_with};
use crate::residency::refused;

#[tokio::test]
async fn records_round_trip_with_keys_wrapped_in_the_token() {
    let Some(hsm) = pkcs11_settings() else { return };
    let app = spawn_app_with(|s| s.keys.provider = KeyProviderSettings::Pkcs11(hsm)).await;
    let created = app.create_ok(&patient("Durand")).await;
    let id = created["id"].as_str().unwrap();
    let read = app.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    let body: serde_json::Value = read.json().await.unwrap();
    assert_eq!(body["name"][0]["family"], "Durand");
    assert!(
        !app.data_files().iter().any(|f| f.ends_with("root.key")),
        "with an HSM, no key-encryption key lives in the data directory"
    );
    let ready = app.client.get(format!("{}/readyz", app.address)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // Each tenant's KEK in the token is recorded in the index (one per tenant, version 1, and
    // one for the server's own keys), and every stored key was wrapped under that version.
    let pool = app.index().await;
    let keks: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant, version FROM kek_versions ORDER BY tenant").fetch_all(&pool).await.unwrap();
    assert_eq!(keks, [("-server".to_owned(), 1), ("demo".to_owned(), 1), ("other".to_owned(), 1)]);
    let versions: Vec<(i64,)> =
        sqlx::query_as("SELECT DISTINCT kek_version FROM tenant_keys").fetch_all(&pool).await.unwrap();
    assert_eq!(versions, [(1,)]);

    // `keys status` names each KEK by its CKA_ID, in hex.
    let rows: serde_json::Value = serde_json::from_str(&keys_status(&app, true)).unwrap();
    let demo = rows.as_array().unwrap().iter().find(|r| r["tenant"] == "demo").unwrap();
    let id = demo["provider_key"].as_str().unwrap();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{demo}");
}

#[test]
fn the_server_refuses_a_token_it_cannot_use() {
    let Some(hsm) = pkcs11_settings() else { return };
    let module = hsm.module.display().to_string();
    let refused = |token: &str, pin: &str| {
        refused(&format!(
            "[keys.provider]\nkind = \"pkcs11\"\nmodule = \"{module}\"\ntoken_label = \"{token}\"\npin = \"{pin}\"\n\
             label_prefix = \"{}\"\njurisdiction = \"FR\"\noperator = {{ country = \"FR\" }}\n",
            hsm.label_prefix
        ))
    };
    let pin = secrecy::ExposeSecret::expose_secret(hsm.pin.as_ref().unwrap()).to_owned();
    let err = refused(&hsm.token_label, &format!("{pin}9"));
    assert!(err.contains("refused the PIN"), "{err}");
    let err = refused("no-such-token", &pin);
    assert!(err.contains("no PKCS#11 token labelled `no-such-token`"), "{err}");
}

#[tokio::test]
async fn records_round_trip_with_keys_wrapped_by_the_transit_engine() {
    let Some(transit) = transit_settings() else { return };
    let prefix = transit.key_prefix.clone();
    let app = spawn_app_with(|s| s.keys.provider = KeyProviderSettings::Transit(transit)).await;
    let created = app.create_ok(&patient("Martin")).await;
    let id = created["id"].as_str().unwrap();
    let body: serde_json::Value = app.get(&format!("Patient/{id}")).await.json().await.unwrap();
    assert_eq!(body["name"][0]["family"], "Martin");

    let pool = app.index().await;
    let keks: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT tenant, key_id FROM kek_versions ORDER BY tenant").fetch_all(&pool).await.unwrap();
    let expected = |t: &str| (t.to_owned(), format!("transit/{prefix}-{t}").into_bytes());
    assert_eq!(keks, [expected("-server"), expected("demo"), expected("other")]);
    let wrapped: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT wrapped FROM tenant_keys").fetch_all(&pool).await.unwrap();
    assert!(!wrapped.is_empty() && wrapped.iter().all(|(w,)| w.starts_with(b"vault:v1:")));
}

/// With an HSM or a KMS, the audit log's signing key is kept like the tenants' keys: generated
/// once, stored in the index wrapped by the provider under the server's own KEK, and the same
/// key after a restart. The sealed log verifies against it; no key file is written.
async fn the_audit_log_key_is_kept_by(provider: KeyProviderSettings) {
    let app = spawn_app_with(|s| s.keys.provider = provider).await;
    app.create_ok(&patient("Bernard")).await;
    assert!(app.seal().await > 0);
    assert!(!app.data_files().iter().any(|f| f.ends_with("audit-log.key")), "no key file with a provider");

    let (index, locations) = fhirvault::startup::open_storage(&app.settings).await.unwrap();
    let key = fhirvault::startup::audit_key(&app.settings, &index).await.unwrap();
    let again = fhirvault::startup::audit_key(&app.settings, &index).await.unwrap();
    assert_eq!(key.public_key(), again.public_key(), "one key, kept");
    let evidence = verify::gather(index.as_ref(), &locations, "demo").await.unwrap();
    let report = verify::verify_log(&evidence, &key.verifier_key("demo"));
    assert!(report.ok() && report.checkpoints > 0 && report.verified_size == report.entries, "{report:?}");

    let pool = app.index().await;
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT key_ref, kek_version FROM tenant_keys WHERE tenant = '-server'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored, [("audit:log-signing".to_owned(), 1)]);
    let server_kek: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kek_versions WHERE tenant = '-server'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(server_kek, 1);
}

#[tokio::test]
async fn the_hsm_keeps_the_audit_log_key() {
    let Some(hsm) = pkcs11_settings() else { return };
    the_audit_log_key_is_kept_by(KeyProviderSettings::Pkcs11(hsm)).await;
}

#[tokio::test]
async fn the_transit_engine_keeps_the_audit_log_key() {
    let Some(transit) = transit_settings() else { return };
    the_audit_log_key_is_kept_by(KeyProviderSettings::Transit(transit)).await;
}

/// What `fhirvault keys status` prints for `app`'s index (`--json` when `json`).
fn keys_status(app: &TestApp, json: bool) -> String {
    let url = secrecy::ExposeSecret::expose_secret(&app.settings.database_url()).to_owned();
    let mut cmd = Command::new(BIN);
    cmd.args(["keys", "status", "--data-dir", app.data_path().to_str().unwrap()]).env("FHIRVAULT__DATABASE__URL", url);
    if json {
        cmd.arg("--json");
    }
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// `fhirvault keys status`: per tenant and KEK version, the provider's key and how many stored
/// keys it wraps, as the index counts them.
#[tokio::test]
async fn keys_status_counts_the_keys_each_kek_wraps() {
    let app = crate::helpers::spawn_app().await;
    app.create_ok(&patient("Petit")).await;
    app.create_ok(&patient("Moreau")).await;
    let pool = app.index().await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM tenant_keys WHERE tenant = 'demo'").fetch_one(&pool).await.unwrap();
    assert!(stored >= 3, "two patients' keys and the tenant's: {stored}");
    let rows: serde_json::Value = serde_json::from_str(&keys_status(&app, true)).unwrap();
    let demo = rows.as_array().unwrap().iter().find(|r| r["tenant"] == "demo").unwrap();
    assert_eq!(demo["kek_version"], 1);
    assert_eq!(demo["wrapped_keys"], stored);
    assert_eq!(demo["provider_key"], "derived-from-root-file", "the development provider derives its KEKs: {demo}");
    assert_eq!(demo["state"], "primary");
    let table = keys_status(&app, false);
    assert!(table.contains("derived-from-root-file") && table.contains("demo"), "{table}");
}
