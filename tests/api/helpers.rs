//! `spawn_app()`: the real application on port 0, with its own data directory (and its own
//! PostgreSQL database when the suite runs on PostgreSQL), plus typed helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fhirvault::auth::dev_issuer::DevIssuer;
use fhirvault::auth::{Role, TokenRequest};
use fhirvault::config::{self, Settings};
use fhirvault::ids::{ResourceId, TenantId};
use fhirvault::startup::Application;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::backends::{PgDatabase, on_postgres};

pub const FHIR_JSON: &str = "application/fhir+json";

pub struct TestApp {
    pub address: String,
    /// `http://127.0.0.1:{port}/fhir/demo`
    pub base: String,
    pub data_dir: tempfile::TempDir,
    pub client: reqwest::Client,
    issuer: DevIssuer,
    handle: actix_web::dev::ServerHandle,
    /// Dropped after the server is told to stop (fields drop in declaration order).
    database: Option<PgDatabase>,
    index_url: String,
    /// The settings the application started with.
    pub settings: Settings,
}

/// Start the embedded default (SQLite, local objects, local key file, development issuer).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Start the application after adjusting its settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    fhirvault::crypto::install_tls_provider();
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let mut settings = Settings { data_dir: data_dir.path().to_path_buf(), ..Settings::default() };
    settings.http.listen = "127.0.0.1:0".parse().expect("address");
    settings.tenants.insert("other".to_owned(), Default::default());
    // Tests seal the audit inbox when they want to (`seal`), so they read a stable inbox.
    settings.audit.sealer = false;
    let database = if on_postgres() { Some(PgDatabase::create().await) } else { None };
    if let Some(db) = &database {
        settings.database.url = Some(db.url.clone().into());
    }
    adjust(&mut settings);
    let index_url = secrecy::ExposeSecret::expose_secret(&settings.database_url()).to_owned();
    let app = Application::build(settings.clone()).await.expect("the application starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let issuer = DevIssuer::load(&config::dev_issuer_key_path(&settings.data_dir), &settings.auth.audience, 0)
        .expect("the development issuer key exists once the app started");
    TestApp {
        base: format!("{address}/fhir/demo"),
        address,
        data_dir,
        client: reqwest::Client::new(),
        issuer,
        handle,
        database,
        index_url,
        settings,
    }
}

impl TestApp {
    /// A token for `role` on tenant `demo` with the role's default scopes.
    pub fn token(&self, role: Role) -> String {
        self.token_for(TokenSpec { role, ..TokenSpec::default() })
    }

    pub fn token_for(&self, spec: TokenSpec<'_>) -> String {
        let req = TokenRequest {
            tenant: TenantId::parse(spec.tenant).expect("tenant"),
            role: spec.role,
            subject: spec.subject.map(str::to_owned),
            jurisdiction: spec.jurisdiction.map(|c| fhirvault::ids::CountryCode::parse(c).expect("country")),
            scope: spec.scope.map(str::to_owned),
            patient: spec.patient.map(|p| ResourceId::parse(p).expect("patient id")),
            purpose: spec.purpose.map(str::to_owned),
            grants: spec.grants.iter().map(|g| (*g).to_owned()).collect(),
            organization: None,
            ttl: Duration::from_secs(600),
        };
        self.issuer.issue(&req).expect("token")
    }

    pub fn practitioner(&self) -> String {
        self.token(Role::Practitioner)
    }

    /// A request to `{base}/{path}` with a practitioner token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}/{path}", self.base)).bearer_auth(self.practitioner())
    }

    pub async fn create(&self, resource: &Value) -> Response {
        let rt = resource["resourceType"].as_str().expect("resourceType");
        self.post_with(rt, resource, &self.practitioner()).await
    }

    /// `POST {base}/{path}` of a FHIR JSON body with `token` (`path` empty for a Bundle).
    pub async fn post_with(&self, path: &str, body: &Value, token: &str) -> Response {
        let url = if path.is_empty() { self.base.clone() } else { format!("{}/{path}", self.base) };
        self.client
            .post(url)
            .bearer_auth(token)
            .header("content-type", FHIR_JSON)
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// Create and return the stored resource (asserting 201).
    pub async fn create_ok(&self, resource: &Value) -> Value {
        let response = self.create(resource).await;
        assert_eq!(response.status(), StatusCode::CREATED, "create {resource}");
        response.json().await.expect("json")
    }

    pub async fn update(&self, resource: &Value) -> Response {
        let path = format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        self.request(Method::PUT, &path)
            .header("content-type", FHIR_JSON)
            .body(resource.to_string())
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("request")
    }

    pub async fn get_with(&self, path: &str, token: &str) -> Response {
        self.client.get(format!("{}/{path}", self.base)).bearer_auth(token).send().await.expect("request")
    }

    pub fn data_path(&self) -> &Path {
        self.data_dir.path()
    }

    /// Every file under the data directory (index, WAL, objects, keys).
    pub fn data_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() { walk(&path, out) } else { out.push(path) }
            }
        }
        let mut out = Vec::new();
        walk(self.data_path(), &mut out);
        out
    }

    /// The object files of one resource, by version number (as the index names them).
    pub async fn object_files(&self, rt: &str, id: &str) -> Vec<(u32, PathBuf)> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT version, object_key FROM resource_versions \
             WHERE tenant = 'demo' AND resource_type = $1 AND resource_id = $2 AND object_key IS NOT NULL \
             ORDER BY version",
        )
        .bind(rt)
        .bind(id)
        .fetch_all(&self.index().await)
        .await
        .expect("object keys");
        let objects = self.data_path().join("objects");
        rows.into_iter().map(|(v, key)| (u32::try_from(v).expect("version"), objects.join(key))).collect()
    }

    /// A direct connection to the index (SQLite or PostgreSQL), for assertions about what it holds.
    pub async fn index(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.index_url).await.expect("index")
    }

    /// Seal every record in the audit inbox into the logs (what the background sealer does),
    /// through a second connection to the same index.
    pub async fn seal(&self) -> usize {
        let (index, locations) = fhirvault::startup::open_storage(&self.settings).await.expect("storage");
        let mut sealer = fhirvault::startup::audit_sealer(&self.settings, &index).await.expect("sealer");
        fhirvault::audit::sealer::drain(index.as_ref(), &mut sealer, &locations).await.expect("sealing")
    }

    pub fn on_postgres(&self) -> bool {
        self.database.is_some()
    }

    /// Everything the index database holds, as bytes: the SQLite files, or every PostgreSQL
    /// table rendered as text.
    pub async fn index_contents(&self) -> Vec<u8> {
        if !self.on_postgres() {
            return self
                .data_files()
                .iter()
                .filter(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("index.sqlite")))
                .flat_map(|f| std::fs::read(f).unwrap())
                .collect();
        }
        let pool = self.index().await;
        let mut out = Vec::new();
        // Every table, so that a table a later migration adds is dumped too.
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(tables.iter().any(|t| t == "search_token_sets"), "{tables:?}");
        for table in tables {
            let sql = format!("SELECT COALESCE(string_agg(t::text, E'\\n'), '') FROM {table} t");
            let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap();
            assert!(table != "resource_versions" || !text.is_empty(), "the index holds versions");
            out.extend_from_slice(text.as_bytes());
        }
        out
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The stop command is sent at once; nobody needs to wait for the workers to wind down.
        drop(self.handle.stop(false));
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TokenSpec<'a> {
    pub tenant: &'a str,
    pub role: Role,
    pub subject: Option<&'a str>,
    pub scope: Option<&'a str>,
    pub patient: Option<&'a str>,
    /// The organization's country; none: the server's own site.
    pub jurisdiction: Option<&'a str>,
    /// Purpose of use (`TREAT`, `HRESCH`...); none: unstated.
    pub purpose: Option<&'a str>,
    /// Sensitivity labels the token is cleared for.
    pub grants: &'a [&'a str],
}

impl Default for TokenSpec<'_> {
    fn default() -> Self {
        Self {
            tenant: "demo",
            role: Role::Practitioner,
            subject: None,
            scope: None,
            patient: None,
            jurisdiction: None,
            purpose: None,
            grants: &[],
        }
    }
}

/// The body of an OperationOutcome's issues' diagnostics, joined (for assertions).
pub async fn diagnostics(response: Response) -> String {
    let body: Value = response.json().await.expect("an OperationOutcome");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    body["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| i["diagnostics"].as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Each query answers 400 with an OperationOutcome whose diagnostics contain its text.
pub async fn assert_refused(app: &TestApp, cases: &[(&str, &str)]) {
    for (query, says) in cases {
        let response = app.get(query).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let text = diagnostics(response).await;
        assert!(text.contains(says), "{query}: {text}");
    }
}

/// A Patient with a name and identifier nobody else has.
pub fn patient(family: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": format!("NIR-{family}")}],
        "name": [{"family": family, "given": ["Camille"]}],
        "gender": "female",
        "birthDate": "1980-02-29",
        "address": [{"line": [format!("12 rue {family}")], "city": "Lyon", "country": "FR"}]
    })
}

pub fn observation(patient_id: &str) -> Value {
    serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": "2024-05-01T10:00:00+02:00",
        "valueQuantity": {"value": 72.50, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}
