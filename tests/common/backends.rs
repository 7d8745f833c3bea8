//! The real backends the tests run on, chosen by environment variables that `./scripts/test`
//! sets (plain `cargo test` runs the embedded default: SQLite and local files).
//!
//! - `FHIRVAULT_TEST_DATABASE=postgres`: each test gets its own PostgreSQL database on
//!   `FHIRVAULT_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//!   dropped when the test ends.
//! - `FHIRVAULT_TEST_S3_ENDPOINT` (+ `_BUCKET`, `_REGION`, `_ACCESS_KEY`, `_SECRET_KEY`): an
//!   S3-compatible server for the S3 tests; each test writes under its own prefix.
//! - `FHIRVAULT_TEST_PKCS11_MODULE` (+ `_TOKEN`, `_PIN`): a PKCS#11 token (SoftHSM2) for the
//!   key provider tests; each test's KEKs carry their own label prefix.
//! - `FHIRVAULT_TEST_TRANSIT_ADDR` (+ `_TOKEN`): an OpenBao server with the transit engine
//!   mounted at `transit`; each test's keys carry their own prefix.

#![expect(
    clippy::disallowed_methods,
    clippy::panic,
    reason = "test harness: which real servers to use comes from the environment `./scripts/test` sets"
)]

use fhirvault::config::S3Settings;
use secrecy::SecretString;
use sqlx::Connection as _;

pub fn postgres_admin_url() -> String {
    std::env::var("FHIRVAULT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether the suite runs on PostgreSQL (`FHIRVAULT_TEST_DATABASE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("FHIRVAULT_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// Whether tests that need a server outside the embedded default must run rather than be
/// skipped: always in CI, where `./scripts/test` provides every server.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A PostgreSQL database of its own, dropped (connections and all) when this is dropped.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        let admin = postgres_admin_url();
        let name = format!("fhirvault_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} (start it, or run ./scripts/test): {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        Self { url: format!("{base}/{name}"), name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (postgres_admin_url(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}

/// The S3 server configured for the tests, with a fresh prefix; `None` (test skipped) when no
/// server is configured outside CI.
pub fn s3_settings() -> Option<S3Settings> {
    let Ok(endpoint) = std::env::var("FHIRVAULT_TEST_S3_ENDPOINT") else {
        assert!(!required(), "CI must run the S3 tests: FHIRVAULT_TEST_S3_ENDPOINT is not set");
        eprintln!("skipped: no S3 server (FHIRVAULT_TEST_S3_ENDPOINT); ./scripts/test starts one");
        return None;
    };
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    Some(S3Settings {
        endpoint: Some(endpoint),
        region: var("FHIRVAULT_TEST_S3_REGION", "us-east-1"),
        bucket: var("FHIRVAULT_TEST_S3_BUCKET", "fhirvault-test"),
        prefix: Some(format!("test-{}", uuid::Uuid::new_v4().simple())),
        access_key_id: Some(var("FHIRVAULT_TEST_S3_ACCESS_KEY", "fhirvault")),
        secret_access_key: Some(SecretString::from(var("FHIRVAULT_TEST_S3_SECRET_KEY", "fhirvault-secret"))),
        path_style: true,
        allow_http: true,
    })
}

/// The PKCS#11 token initialised for the tests (SoftHSM2), with a fresh KEK label prefix;
/// `None` (test skipped) when no token is configured outside CI.
pub fn pkcs11_settings() -> Option<fhirvault::config::Pkcs11Settings> {
    let Ok(module) = std::env::var("FHIRVAULT_TEST_PKCS11_MODULE") else {
        assert!(!required(), "CI must run the PKCS#11 tests: FHIRVAULT_TEST_PKCS11_MODULE is not set");
        eprintln!("skipped: no PKCS#11 token (FHIRVAULT_TEST_PKCS11_MODULE); ./scripts/test initialises one");
        return None;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    Some(fhirvault::config::Pkcs11Settings {
        module: module.into(),
        token_label: var("FHIRVAULT_TEST_PKCS11_TOKEN"),
        pin: Some(SecretString::from(var("FHIRVAULT_TEST_PKCS11_PIN"))),
        pin_file: None,
        label_prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        create_missing_keys: true,
        jurisdiction: "FR".to_owned(),
        operator: fhirvault::config::OperatorSettings {
            name: Some("Test HSM operator".to_owned()),
            country: "FR".to_owned(),
            extraterritorial_laws: Vec::new(),
        },
    })
}

/// The OpenBao transit engine started for the tests, with a fresh key prefix; `None` (test
/// skipped) when no engine is configured outside CI.
pub fn transit_settings() -> Option<fhirvault::config::TransitSettings> {
    let Ok(address) = std::env::var("FHIRVAULT_TEST_TRANSIT_ADDR") else {
        assert!(!required(), "CI must run the transit tests: FHIRVAULT_TEST_TRANSIT_ADDR is not set");
        eprintln!("skipped: no transit engine (FHIRVAULT_TEST_TRANSIT_ADDR); ./scripts/test starts OpenBao");
        return None;
    };
    Some(fhirvault::config::TransitSettings {
        address,
        mount: "transit".to_owned(),
        token: Some(SecretString::from(std::env::var("FHIRVAULT_TEST_TRANSIT_TOKEN").unwrap_or_default())),
        token_file: None,
        key_prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        create_missing_keys: true,
        timeout_seconds: 10,
        jurisdiction: "FR".to_owned(),
        operator: fhirvault::config::OperatorSettings {
            name: Some("Test KMS operator".to_owned()),
            country: "FR".to_owned(),
            extraterritorial_laws: Vec::new(),
        },
    })
}
