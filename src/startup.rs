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

use crate::api::{self, AppState, BodyLimit};
use crate::audit::log::LogKey;
use crate::audit::sealer::{Cadence, Sealer};
use crate::auth::dev_issuer::{DevIssuer, DevIssuerError};
use crate::auth::{Audiences, Authenticator, OidcIssuer};
use crate::config::{BackendSettings, KeyProviderSettings, Settings};
use crate::engine::{Engine, ErasurePolicy, Limits, delay_of_days};
use crate::fhir::model;
use crate::ids::{CountryCode, TenantId};
use crate::keys::{
    KeyError, KeyProvider, KeyService, LocalFileProvider, Pkcs11Options, Pkcs11Provider, TransitOptions,
    TransitProvider,
};
use crate::storage::{self, Index, Locations, ObjectStorage, StorageError};
use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot prepare the data directory `{path}`")]
    DataDir { path: String, source: std::io::Error },
    #[error("the embedded FHIR model is broken")]
    Model(#[source] &'static model::ModelError),
    #[error("the embedded search parameter table is broken")]
    SearchParams(#[source] &'static crate::fhir::search_params::SearchParamError),
    #[error("cannot open the index")]
    Index(#[source] StorageError),
    #[error("cannot open storage location `{name}`")]
    Location { name: String, source: StorageError },
    #[error("cannot load the key provider")]
    Keys(#[from] KeyError),
    #[error("the access policies are not valid")]
    Policies(#[from] crate::policy::PolicyError),
    #[error("cannot load the development token issuer")]
    DevIssuer(#[from] DevIssuerError),
    #[error("cannot set up identity provider `{name}`")]
    Issuer { name: String, source: crate::auth::oidc::FetchError },
    #[error("cannot load the audit log key")]
    AuditKey(#[from] crate::audit::log::LogError),
    #[error("cannot start the audit sealer's thread")]
    Sealer(#[source] std::io::Error),
    #[error("cannot listen on `{addr}`")]
    Listen { addr: String, source: std::io::Error },
}

pub struct Application {
    server: Server,
    port: u16,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let (state, index) = build_state(&settings).await?;
        let tasks_state = state.clone();

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
        if settings.gc.interval_seconds > 0 {
            spawn_sweeper(&settings, index.clone())?;
        }
        spawn_key_lifecycle(&settings, tasks_state);
        if settings.audit.sealer {
            let sealer = audit_sealer(&settings, &index).await?;
            crate::audit::sealer::spawn(index, sealer, open_locations(&settings)?).map_err(StartupError::Sealer)?;
        }
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

/// Everything a request needs (the engine with its index, locations and keys; authentication;
/// tenants), opened and checked. Also used in-process by the benchmarks.
pub async fn build_state(settings: &Settings) -> Result<(web::Data<AppState>, Arc<dyn Index>), StartupError> {
    let model = model::r4().map_err(StartupError::Model)?;
    let search_params = crate::fhir::search_params::r4().map_err(StartupError::SearchParams)?;
    let mut policies = crate::policy::Policies::shipped()?;
    for (id, tenant) in &settings.tenants {
        if let Ok(id) = TenantId::parse(id) {
            let location = settings.locations.get(&tenant.location);
            let facts = crate::policy::TenantFacts {
                allows_adequacy: tenant.allow_adequacy_countries,
                hide_denied_existence: tenant.hide_denied_existence,
                location_jurisdiction: location.and_then(|l| CountryCode::parse(&l.jurisdiction).ok()),
            };
            policies = policies.with_tenant(id, facts);
        }
    }
    let policies = Arc::new(policies);
    prepare_data_dir(settings)?;

    let (index, locations) = open_storage(settings).await?;
    for (tenant, why) in crate::residency::exposed_tenants(settings) {
        tracing::warn!(tenant, "records reachable from outside the EEA: {why} (allowed for `standard` tenants)");
    }

    let provider = key_provider(settings).await?;
    let keys = key_service(settings, provider, &index);
    keys.prepare(&settings.tenant_ids()).await?;

    let dev = if settings.dev_issuer_enabled() {
        let path = settings.dev_issuer_key_path();
        DevIssuer::ensure_key(&path)?;
        tracing::warn!(
            key = %path.display(),
            "DEVELOPMENT TOKEN ISSUER ENABLED: anyone who can read this key can mint tokens for any role. \
             Disable it (auth.insecure_dev_issuer = false) outside development."
        );
        let dev = DevIssuer::load(&path, &settings.auth.audience, settings.auth.leeway_seconds)?;
        // A development token that names no country speaks for the server's own site.
        match CountryCode::parse(&settings.hosting().jurisdiction) {
            Ok(country) => Some(dev.with_default_jurisdiction(country)),
            Err(_) => Some(dev),
        }
    } else {
        None
    };

    let issuers = oidc_issuers(settings).await?;

    let limits = Limits {
        paging_link_ttl: Duration::from_secs(settings.http.paging_link_ttl_seconds),
        default_page_size: settings.http.default_page_size,
        max_page_size: settings.http.max_page_size,
        string_indexing: settings.search.string_indexing(),
        max_bundle_entries: settings.writes.bundle_max_entries,
        conditional_delete_multiple: settings.writes.conditional_delete_multiple,
        conditional_delete_max: settings.writes.conditional_delete_max,
        audit_public_key: Some(audit_key(settings, &index).await?.public_key()),
        max_export_entries: settings.audit.max_export_entries,
    };
    let state = web::Data::new(AppState {
        engine: Engine::new(index.clone(), locations, keys, policies, (model, search_params), limits).with_erasure(
            ErasurePolicy {
                delay: delay_of_days(settings.erasure.delay_days),
                retention: settings.erasure.retention.clone(),
            },
        ),
        auth: Authenticator::new(dev, issuers),
        tenants: settings.tenant_ids().into_iter().collect::<BTreeSet<_>>(),
        public_base_url: settings.http.public_base_url.clone(),
        body_limit: BodyLimit { bytes: settings.http.max_body_bytes, setting: "http.max_body_bytes" },
        bundle_limit: BodyLimit { bytes: settings.writes.bundle_max_bytes, setting: "writes.bundle_max_bytes" },
    });
    Ok((state, index))
}

/// The trusted OpenID providers, each discovered now if it answers. One that does not is not
/// fatal: its tokens are refused (401) until discovery succeeds on a later request.
async fn oidc_issuers(settings: &Settings) -> Result<Vec<OidcIssuer>, StartupError> {
    let mut issuers = Vec::new();
    for (name, issuer) in &settings.auth.issuers {
        let audiences = if issuer.audience.is_empty() {
            Audiences::Default {
                audience: settings.auth.audience.clone(),
                public_base_url: settings.http.public_base_url.clone(),
            }
        } else {
            Audiences::Listed(issuer.audience.clone())
        };
        let oidc = OidcIssuer::new(name, issuer, audiences, settings.auth.leeway_seconds)
            .map_err(|source| StartupError::Issuer { name: name.clone(), source })?;
        match oidc.refresh().await {
            Ok(()) => tracing::info!(issuer = %name, url = %issuer.issuer, "identity provider discovered"),
            Err(e) => tracing::warn!(
                issuer = %name,
                url = %issuer.issuer,
                error = %e,
                "identity provider not reachable at start; its tokens are refused until it is"
            ),
        }
        issuers.push(oidc);
    }
    Ok(issuers)
}

/// Open the index and every storage location the configuration declares.
pub async fn open_storage(settings: &Settings) -> Result<(Arc<dyn Index>, Locations), StartupError> {
    let index =
        storage::open_index(&settings.database_url(), &settings.index_options()).await.map_err(StartupError::Index)?;
    Ok((index, open_locations(settings)?))
}

/// Every storage location the configuration declares, and each tenant's assignment.
pub fn open_locations(settings: &Settings) -> Result<Locations, StartupError> {
    let mut locations = Locations::new();
    for (name, location) in &settings.locations {
        let storage = match &location.backend {
            BackendSettings::Local { path } => {
                let root = path.clone().unwrap_or_else(|| settings.data_dir.join("objects"));
                create_private_dir(&root)?;
                ObjectStorage::local(name, &root)
            }
            BackendSettings::S3(s3) => ObjectStorage::s3(name, s3),
        };
        locations.add(storage.map_err(|source| StartupError::Location { name: name.clone(), source })?);
    }
    for tenant in settings.tenant_ids() {
        if let Some(t) = settings.tenants.get(tenant.as_str()) {
            locations.assign(tenant.clone(), &t.location);
        }
    }
    Ok(locations)
}

/// The name of the audit log key among the server's own keys.
const AUDIT_LOG_KEY_REF: &str = "audit:log-signing";

/// The audit log key: the file `audit.signing_key_file` when set; else, with the development
/// key provider, a file in the data directory (generated on first start); else (an HSM or a
/// KMS) a key generated once and kept in the index wrapped by the provider, under the server's
/// own KEK, like the tenants' keys.
pub async fn audit_key(settings: &Settings, index: &Arc<dyn Index>) -> Result<LogKey, StartupError> {
    if audit_key_is_managed(settings) {
        let keys = KeyService::new(key_provider(settings).await?, index.clone(), 1, Duration::from_secs(1));
        keys.prepare(&[TenantId::server_scope()]).await?;
        let seed = keys.server_secret(AUDIT_LOG_KEY_REF).await?;
        return Ok(LogKey::from_secret(&settings.audit.origin, &seed)?);
    }
    let path = settings.audit_key_path();
    if settings.audit.signing_key_file.is_none() {
        LogKey::ensure_file(&path, &settings.audit.origin)?;
    }
    Ok(LogKey::load(&path)?)
}

/// Whether the audit log key is kept by the key provider (an HSM or a KMS, and no key file
/// configured) rather than in a file.
pub fn audit_key_is_managed(settings: &Settings) -> bool {
    settings.audit.signing_key_file.is_none() && settings.root_key_path().is_none()
}

/// The audit log sealer, with the log key.
pub async fn audit_sealer(settings: &Settings, index: &Arc<dyn Index>) -> Result<Sealer, StartupError> {
    let key = Arc::new(audit_key(settings, index).await?);
    let cadence = Cadence {
        batch: settings.audit.seal_batch.max(1),
        idle: Duration::from_millis(settings.audit.seal_idle_ms),
        checkpoint_every_entries: settings.audit.checkpoint_every_entries.max(1),
        checkpoint_every: Duration::from_millis(settings.audit.checkpoint_every_ms),
    };
    Ok(Sealer::new(key, cadence, settings.tenant_ids()))
}

/// The key service the configuration describes, over `provider`.
pub fn key_service(settings: &Settings, provider: Arc<dyn KeyProvider>, index: &Arc<dyn Index>) -> KeyService {
    KeyService::new(
        provider,
        index.clone(),
        settings.keys.cache_capacity,
        Duration::from_secs(settings.keys.cache_ttl_seconds),
    )
    .with_version_refresh(Duration::from_secs(settings.keys.version_refresh_seconds))
}

/// The background tasks of key management: executing erasures as they fall due, and adding
/// the provider calls counted per KEK version to the index's usage counters.
fn spawn_key_lifecycle(settings: &Settings, state: web::Data<AppState>) {
    let erasures = Duration::from_secs(settings.erasure.check_interval_seconds);
    let usage = Duration::from_secs(settings.keys.usage_flush_seconds.max(1));
    tokio::spawn(async move {
        let mut erasure_ticks = tokio::time::interval(erasures);
        let mut usage_ticks = tokio::time::interval(usage);
        for ticks in [&mut erasure_ticks, &mut usage_ticks] {
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = erasure_ticks.tick() => match state.engine.run_due_erasures().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(erased = n, "executed the erasures that fell due"),
                    Err(error) => tracing::error!(%error, "executing due erasures failed; retrying later"),
                },
                _ = usage_ticks.tick() => {
                    if let Err(error) = state.engine.keys().flush_usage().await {
                        tracing::warn!(%error, "could not record the key provider usage counters; retrying later");
                    }
                }
            }
        }
    });
}

/// The background orphan sweeper: every `gc.interval_seconds`, one sweep of every location.
fn spawn_sweeper(settings: &Settings, index: Arc<dyn Index>) -> Result<(), StartupError> {
    let locations = open_locations(settings)?;
    let interval = Duration::from_secs(settings.gc.interval_seconds);
    let grace = Duration::from_secs(settings.gc.grace_seconds);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for location in locations.iter() {
                match storage::gc::sweep(index.as_ref(), location, grace).await {
                    Ok(report) => tracing::info!(?report, "orphan sweep done"),
                    Err(error) => tracing::error!(location = location.name(), %error, "orphan sweep failed"),
                }
            }
        }
    });
    Ok(())
}

/// Create the data directory layout (mode 0700) and the development keys it needs.
pub fn prepare_data_dir(settings: &Settings) -> Result<(), StartupError> {
    let dir = &settings.data_dir;
    for sub in [dir.clone(), dir.join("keys")] {
        create_private_dir(&sub)?;
    }
    if let Some(root) = settings.root_key_path() {
        if let Some(parent) = root.parent() {
            create_private_dir(parent)?;
        }
        LocalFileProvider::ensure_file(&root)?;
    }
    Ok(())
}

/// The configured key provider, opened, with every tenant's primary KEK in place.
pub async fn key_provider(settings: &Settings) -> Result<Arc<dyn KeyProvider>, StartupError> {
    match &settings.keys.provider {
        KeyProviderSettings::InsecureLocalFile { .. } => {
            let path = settings.root_key_path().unwrap_or_default();
            let provider = LocalFileProvider::load(&path)?;
            warn_development_key(&path);
            Ok(Arc::new(provider))
        }
        KeyProviderSettings::Pkcs11(p) => {
            let pin = secret_from("pin", p.pin.as_ref(), p.pin_file.as_deref())?;
            let options = Pkcs11Options {
                module: p.module.clone(),
                token_label: p.token_label.clone(),
                pin,
                label_prefix: p.label_prefix.clone(),
                create_missing_keys: p.create_missing_keys,
            };
            let provider = tokio::task::spawn_blocking(move || Pkcs11Provider::open(options))
                .await
                .map_err(|e| KeyError::Provider(format!("opening the PKCS#11 token did not complete: {e}")))??;
            tracing::info!(provider = %provider.describe(), "key provider ready");
            Ok(Arc::new(provider))
        }
        KeyProviderSettings::Transit(t) => {
            let token = secret_from("token", t.token.as_ref(), t.token_file.as_deref())?;
            let address = url::Url::parse(&t.address)
                .map_err(|e| KeyError::Provider(format!("keys.provider.address `{}`: {e}", t.address)))?;
            let provider = TransitProvider::new(TransitOptions {
                address,
                mount: t.mount.clone(),
                token,
                key_prefix: t.key_prefix.clone(),
                create_missing_keys: t.create_missing_keys,
                timeout: Duration::from_secs(t.timeout_seconds),
            })?;
            provider.check().await?;
            tracing::info!(provider = %provider.describe(), "key provider ready");
            Ok(Arc::new(provider))
        }
    }
}

/// A provider's secret (PIN, token): given in the settings, or read from a 0600 file.
fn secret_from(what: &str, given: Option<&SecretString>, file: Option<&Path>) -> Result<SecretString, KeyError> {
    match (given, file) {
        (Some(secret), None) => Ok(secret.clone()),
        (None, Some(path)) => {
            let text = crate::keys::local::read_private_file(path)
                .map_err(|why| KeyError::Provider(format!("{what} file `{}`: {why}", path.display())))?;
            Ok(SecretString::from(text.trim().to_owned()))
        }
        _ => Err(KeyError::Provider(format!("keys.provider: set exactly one of `{what}` and `{what}_file`"))),
    }
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
