//! Wiring: settings in, a running HTTP server out. Tests build the same `Application` on port 0.

use std::collections::BTreeSet;
use std::fs::DirBuilder;
use std::net::TcpListener;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use crate::api::{self, AppState};
use crate::auth::Authenticator;
use crate::auth::dev_issuer::{DevIssuer, DevIssuerError};
use crate::config::{KeyProviderSettings, Settings};
use crate::engine::{Engine, Limits};
use crate::fhir::model;
use crate::keys::{KeyError, KeyService, LocalFileProvider};
use crate::storage::{self, ObjectStorage, StorageError};

/// The name of the embedded default's storage location (bound into every object's AAD).
pub const LOCAL_LOCATION: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot prepare the data directory `{path}`")]
    DataDir { path: String, source: std::io::Error },
    #[error("the embedded FHIR model is broken")]
    Model(#[source] &'static model::ModelError),
    #[error("cannot open the index")]
    Index(#[source] StorageError),
    #[error("cannot open the object store")]
    Objects(#[source] StorageError),
    #[error("cannot load the key provider")]
    Keys(#[from] KeyError),
    #[error("cannot load the development token issuer")]
    DevIssuer(#[from] DevIssuerError),
    #[error("cannot listen on `{addr}`")]
    Listen { addr: String, source: std::io::Error },
}

pub struct Application {
    server: Server,
    port: u16,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let model = model::r4().map_err(StartupError::Model)?;
        prepare_data_dir(&settings)?;

        let timeout = Duration::from_secs(settings.database.acquire_timeout_seconds);
        let index = storage::open_index(&settings.database_url(), settings.database.max_connections, timeout)
            .await
            .map_err(StartupError::Index)?;
        let objects =
            ObjectStorage::local(LOCAL_LOCATION, &settings.data_dir.join("objects")).map_err(StartupError::Objects)?;

        let KeyProviderSettings::InsecureLocalFile { .. } = &settings.keys.provider;
        let provider = LocalFileProvider::load(&settings.root_key_path())?;
        warn_development_key(&settings.root_key_path());
        let keys = KeyService::new(
            Arc::new(provider),
            index.clone(),
            settings.keys.cache_capacity,
            Duration::from_secs(settings.keys.cache_ttl_seconds),
        );

        let dev = if settings.dev_issuer_enabled() {
            let path = settings.dev_issuer_key_path();
            DevIssuer::ensure_key(&path)?;
            tracing::warn!(
                key = %path.display(),
                "DEVELOPMENT TOKEN ISSUER ENABLED: anyone who can read this key can mint tokens for any role. \
                 Disable it (auth.insecure_dev_issuer = false) outside development."
            );
            Some(DevIssuer::load(&path, &settings.auth.audience, settings.auth.leeway_seconds)?)
        } else {
            None
        };

        let limits = Limits {
            paging_link_ttl: Duration::from_secs(settings.http.paging_link_ttl_seconds),
            default_page_size: settings.http.default_page_size,
            max_page_size: settings.http.max_page_size,
        };
        let state = web::Data::new(AppState {
            engine: Engine::new(index, objects, keys, model, limits),
            auth: Authenticator::new(dev),
            tenants: settings.tenant_ids().into_iter().collect::<BTreeSet<_>>(),
            public_base_url: settings.http.public_base_url.clone(),
            max_body_bytes: settings.http.max_body_bytes,
        });

        let addr = settings.http.listen;
        let listen_err = |source| StartupError::Listen { addr: addr.to_string(), source };
        let listener = TcpListener::bind(addr).map_err(listen_err)?;
        let port = listener.local_addr().map_err(listen_err)?.port();
        let mut server = HttpServer::new(move || {
            App::new().app_data(state.clone()).wrap(from_fn(api::request_context)).configure(api::routes)
        })
        .shutdown_timeout(settings.http.shutdown_timeout_seconds);
        if let Some(workers) = settings.http.workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener).map_err(listen_err)?.run();
        tracing::info!(address = %addr.ip(), port, tenants = settings.tenants.len(), "fhirvault listening");
        Ok(Self { server, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serve until SIGTERM/SIGINT (or `handle().stop(true)`); in-flight requests finish first.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Create the data directory layout (mode 0700) and the development keys it needs.
pub fn prepare_data_dir(settings: &Settings) -> Result<(), StartupError> {
    let dir = &settings.data_dir;
    for sub in [dir.clone(), dir.join("objects"), dir.join("keys")] {
        create_private_dir(&sub)?;
    }
    let root = settings.root_key_path();
    if let Some(parent) = root.parent() {
        create_private_dir(parent)?;
    }
    LocalFileProvider::ensure_file(&root)?;
    Ok(())
}

pub fn create_private_dir(path: &Path) -> Result<(), StartupError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StartupError::DataDir { path: path.display().to_string(), source })
}

fn warn_development_key(path: &Path) {
    tracing::warn!("==================================================================================");
    tracing::warn!("DEVELOPMENT KEY PROVIDER: the root key-encryption key is a local file:");
    tracing::warn!("    {}", path.display());
    tracing::warn!("Whoever reads it can decrypt every record. Use a PKCS#11 HSM or a KMS in production.");
    tracing::warn!("==================================================================================");
}
