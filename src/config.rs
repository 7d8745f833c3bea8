//! Settings: embedded defaults < TOML file (`--config`) < `FHIRVAULT__SECTION__KEY` environment
//! variables < command-line flags. Unknown keys are errors that name the key. Loading
//! configuration reads; it never writes (the data directory is prepared by `startup`).
//!
//! The JSON schema of this tree is published as `schemas/config.schema.json`
//! (`fhirvault config schema`); a test keeps the two in step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::ids::TenantId;

pub const ENV_PREFIX: &str = "FHIRVAULT__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// Where settings come from, besides the embedded defaults and the environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// One process, SQLite, local files, a local key file and the development token issuer.
    #[default]
    Embedded,
    /// Development conveniences are off unless explicitly (and loudly) enabled.
    Production,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `embedded` (zero-config development defaults) or `production`.
    pub profile: Profile,
    /// Where the embedded profile keeps its index, objects and development keys.
    pub data_dir: PathBuf,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub keys: KeySettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub gc: GcSettings,
    pub search: SearchSettings,
    pub writes: WriteSettings,
    pub audit: AuditSettings,
    pub erasure: ErasureSettings,
    /// Where this server runs. It handles plaintext while serving, so its site falls under the
    /// same residency rules as the storage locations. Required in the production profile; the
    /// embedded profile assumes a development machine in France.
    pub hosting: Option<SiteSettings>,
    /// Named storage locations (object stores), by name (lowercase letters, digits and `-`).
    /// The embedded default is one location, `local`, in the data directory.
    pub locations: BTreeMap<String, LocationSettings>,
    /// Tenants by id (lowercase letters, digits and `-`).
    pub tenants: BTreeMap<String, TenantSettings>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// The public URL of this server (`https://fhir.example.org`), used in `Location`, `fullUrl`
    /// and paging links. Without it, links are built from the request's `Host`.
    pub public_base_url: Option<String>,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// HTTP worker threads; defaults to the number of CPU cores.
    pub workers: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_timeout_seconds: u64,
    /// Lifetime of `next` paging links.
    pub paging_link_ttl_seconds: u64,
    /// `_count` when the client gives none.
    pub default_page_size: u32,
    /// Largest `_count` honoured.
    pub max_page_size: u32,
}

#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`; defaults to
    /// `index.sqlite` in the data directory. The scheme selects the backend.
    #[schemars(with = "Option<String>")]
    pub url: Option<SecretString>,
    /// Largest number of open connections (PostgreSQL: plus two for batched reads by id).
    pub max_connections: u32,
    /// Seconds to wait for a connection (from the pool, or a new one).
    pub connect_timeout_seconds: u64,
    /// PostgreSQL: seconds after which the server cancels a statement. SQLite: seconds a writer
    /// waits for the write lock.
    pub statement_timeout_seconds: u64,
}

/// A site: the country of the data centre and who operates it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteSettings {
    /// ISO 3166-1 alpha-2 code of the country where the data centre is (`FR`, `DE`...).
    pub jurisdiction: String,
    pub operator: OperatorSettings,
}

/// The legal entity that operates a site.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorSettings {
    /// The entity's name, for the residency report.
    #[serde(default)]
    pub name: Option<String>,
    /// ISO 3166-1 alpha-2 code of the country of the entity's legal seat.
    pub country: String,
    /// Non-EU laws with extraterritorial reach the entity is subject to (for instance
    /// `US CLOUD Act`, `US FISA 702`); empty when none. `strict` tenants refuse such operators.
    #[serde(default)]
    pub extraterritorial_laws: Vec<String>,
}

/// A named storage location: a site and the object store there.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationSettings {
    /// ISO 3166-1 alpha-2 code of the country where the objects are stored.
    pub jurisdiction: String,
    pub operator: OperatorSettings,
    pub backend: BackendSettings,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum BackendSettings {
    /// A local directory (fsynced writes).
    Local {
        /// Defaults to `objects` in the data directory.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// An S3-compatible object store.
    S3(S3Settings),
}

#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The service URL, e.g. `https://s3.gra.io.cloud.ovh.net`; AWS's own endpoint when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Keys are written under this prefix inside the bucket.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub secret_access_key: Option<SecretString>,
    /// Path-style requests (`endpoint/bucket/key`), as most non-AWS servers want.
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Allow a plain `http://` endpoint (test servers on loopback only).
    #[serde(default)]
    pub allow_http: bool,
}

fn yes() -> bool {
    true
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    pub provider: KeyProviderSettings,
    /// Unwrapped compartment keys kept in memory.
    pub cache_capacity: u64,
    /// How long an unwrapped compartment key stays cached. Also how long a server that did
    /// not run an erasure may still open the erased patient's records from its cache.
    pub cache_ttl_seconds: u64,
    /// How often a server re-reads each tenant's primary KEK version (a rotation run by
    /// `fhirvault keys rotate` reaches the servers within this), and how long the rotation waits
    /// for them before it re-wraps the old keys.
    pub version_refresh_seconds: u64,
    /// Add the provider calls counted per KEK version to the index's usage counters this often.
    pub usage_flush_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum KeyProviderSettings {
    /// A root key in a local file (mode 0600) from which tenant KEKs are derived. Development
    /// only: whoever reads the file can decrypt everything.
    InsecureLocalFile {
        /// Defaults to `keys/root.key` in the data directory.
        path: Option<PathBuf>,
    },
    /// A PKCS#11 token (a hardware security module) holding one non-extractable AES-256 KEK per
    /// tenant and KEK version, labelled `{label_prefix}/{tenant}/kek/v{version}`; tenant keys
    /// are wrapped inside the token (AES-GCM, the key's identity as AAD).
    Pkcs11(Pkcs11Settings),
    /// The transit secrets engine of OpenBao or HashiCorp Vault: one transit key per tenant
    /// (`{key_prefix}-{tenant}`), whose versions are the tenant's KEK versions; tenant keys are
    /// wrapped by the engine (`encrypt`/`decrypt` with the key's identity as associated data).
    Transit(TransitSettings),
}

impl KeyProviderSettings {
    /// Where a remote provider runs and who operates it (the residency rules); `None` for the
    /// local key file, which is on the server.
    pub fn site(&self) -> Option<(&str, &OperatorSettings)> {
        match self {
            Self::InsecureLocalFile { .. } => None,
            Self::Pkcs11(p) => Some((&p.jurisdiction, &p.operator)),
            Self::Transit(t) => Some((&t.jurisdiction, &t.operator)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitSettings {
    /// The server's base URL, e.g. `https://bao.internal:8200` (`http` only on loopback).
    pub address: String,
    /// Where the transit engine is mounted.
    #[serde(default = "default_transit_mount")]
    pub mount: String,
    /// The token the server authenticates with (a policy allowing `encrypt`, `decrypt` and
    /// reading and creating its keys). Prefer the environment (`FHIRVAULT__KEYS__PROVIDER__TOKEN`)
    /// or `token_file`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub token: Option<SecretString>,
    /// A file holding the token (mode 0600), instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Transit keys are named `{key_prefix}-{tenant}`.
    #[serde(default = "default_kek_label_prefix")]
    pub key_prefix: String,
    /// Create a tenant's transit key when it has none. Off: an operator creates each key
    /// beforehand, and the server refuses to start while one is missing.
    #[serde(default = "yes")]
    pub create_missing_keys: bool,
    /// Time allowed for one call to the engine, in seconds.
    #[serde(default = "default_transit_timeout")]
    pub timeout_seconds: u64,
    /// ISO 3166-1 alpha-2 code of the country where the engine runs.
    pub jurisdiction: String,
    /// Who operates the engine (residency rules, as for `pkcs11`).
    pub operator: OperatorSettings,
}

fn default_transit_mount() -> String {
    "transit".to_owned()
}

const fn default_transit_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Settings {
    /// The token vendor's PKCS#11 module (a shared library), e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token to use (exactly one token may carry it).
    pub token_label: String,
    /// The user PIN. Prefer the environment (`FHIRVAULT__KEYS__PROVIDER__PIN`) or `pin_file`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub pin: Option<SecretString>,
    /// A file holding the user PIN (mode 0600), instead of `pin`.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// The start of the labels of this server's KEKs in the token.
    #[serde(default = "default_kek_label_prefix")]
    pub label_prefix: String,
    /// Generate a tenant's first KEK in the token when it has none. Off: an operator creates
    /// each KEK beforehand, and the server refuses to start while one is missing.
    #[serde(default = "yes")]
    pub create_missing_keys: bool,
    /// ISO 3166-1 alpha-2 code of the country where the token (the HSM) runs.
    pub jurisdiction: String,
    /// Who operates the HSM (residency rules: `strict` tenants refuse a non-EEA operator or one
    /// subject to an extraterritorial law).
    pub operator: OperatorSettings,
}

fn default_kek_label_prefix() -> String {
    "fhirvault".to_owned()
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Trust the built-in development token issuer (`fhirvault token`). Defaults to on in the
    /// embedded profile and off in production.
    pub insecure_dev_issuer: Option<bool>,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// OpenID providers whose access tokens (JWT, RFC 9068) are trusted, by a name of your choice.
    pub issuers: BTreeMap<String, IssuerSettings>,
}

/// An OpenID provider: where it runs, which tenants trust it, and how its claims read.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The issuer identifier, exactly as its tokens' `iss` and its discovery document say
    /// (`https://idp.example.eu/realms/hospital`). Plain `http` only on a loopback address.
    pub issuer: String,
    /// The tenants that accept this issuer's tokens; a token naming another tenant is refused.
    pub tenants: Vec<String>,
    /// ISO 3166-1 alpha-2 code of the country where the identity provider runs.
    pub jurisdiction: String,
    pub operator: OperatorSettings,
    /// The `aud` values accepted. Empty: `auth.audience`, and the tenant's FHIR base URL when
    /// `http.public_base_url` is set.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Hosts other than the issuer's own that may serve its keys (`jwks_uri`); they are declared
    /// to be in the issuer's jurisdiction, under the same operator.
    #[serde(default)]
    pub jwks_hosts: Vec<String>,
    /// The least time between two key-set fetches triggered by an unknown `kid`, in seconds.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_seconds: u64,
    /// The longest a fetched key set is used before it is fetched again, in seconds.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_seconds: u64,
    /// Where the principal's attributes are in the token.
    #[serde(default)]
    pub claims: ClaimSettings,
}

fn default_jwks_min_refresh() -> u64 {
    30
}

fn default_jwks_max_age() -> u64 {
    3600
}

/// Claim names (a dotted path reaches into objects: `realm_access.roles`). Unset fields take
/// the preset's value.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimSettings {
    /// `generic` (flat claims named as below) or `keycloak` (roles in `realm_access.roles`).
    pub preset: ClaimPreset,
    /// The user or client identifier (default `sub`).
    pub subject: Option<String>,
    /// The FHIR resource of the user, such as `Practitioner/123` (default `fhirUser`).
    pub fhir_user: Option<String>,
    /// The requesting organization (default `organization`).
    pub organization: Option<String>,
    /// The tenant; may be absent when the issuer serves one tenant only (default `tenant`).
    pub tenant: Option<String>,
    /// The role, a string or a list of which the first known role counts (default `role`;
    /// `realm_access.roles` for Keycloak).
    pub role: Option<String>,
    /// Role names of the provider mapped to ours (`practitioner`, `service`, `researcher`,
    /// `auditor`, `patient`, `admin`), e.g. `{ doctor = "practitioner" }`.
    pub role_names: BTreeMap<String, String>,
    /// The country the requesting organization operates from (default `jurisdiction`).
    pub jurisdiction: Option<String>,
    /// Purpose of use, such as `TREAT` (default `purpose_of_use`).
    pub purpose_of_use: Option<String>,
    /// The granted scopes, space-separated or a list (default `scope`).
    pub scope: Option<String>,
    /// For patient tokens, the patient's id in this tenant (default `patient`).
    pub patient: Option<String>,
    /// Sensitivity labels the user is cleared for, a list or space-separated (default `grants`).
    pub grants: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimPreset {
    #[default]
    Generic,
    Keycloak,
}

impl ClaimSettings {
    /// The claim path of each attribute, preset defaults filled in.
    pub fn resolved(&self) -> ResolvedClaims {
        let pick = |set: &Option<String>, default: &str| set.clone().unwrap_or_else(|| default.to_owned());
        let role_default = match self.preset {
            ClaimPreset::Generic => "role",
            ClaimPreset::Keycloak => "realm_access.roles",
        };
        ResolvedClaims {
            subject: pick(&self.subject, "sub"),
            fhir_user: pick(&self.fhir_user, "fhirUser"),
            organization: pick(&self.organization, "organization"),
            tenant: pick(&self.tenant, "tenant"),
            role: pick(&self.role, role_default),
            role_names: self.role_names.clone(),
            jurisdiction: pick(&self.jurisdiction, "jurisdiction"),
            purpose_of_use: pick(&self.purpose_of_use, "purpose_of_use"),
            scope: pick(&self.scope, "scope"),
            patient: pick(&self.patient, "patient"),
            grants: pick(&self.grants, "grants"),
        }
    }
}

/// Claim paths with the preset's defaults applied.
#[derive(Debug, Clone)]
pub struct ResolvedClaims {
    pub subject: String,
    pub fhir_user: String,
    pub organization: String,
    pub tenant: String,
    pub role: String,
    pub role_names: BTreeMap<String, String>,
    pub jurisdiction: String,
    pub purpose_of_use: String,
    pub scope: String,
    pub patient: String,
    pub grants: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `fhirvault=debug,info`.
    pub filter: String,
}

/// Patients' erasure (crypto-shredding, `Patient/{id}/$erase`) and what may prevent it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ErasureSettings {
    /// Days between an erasure request and the destruction of the patient's compartment key
    /// (0 to 30); the request can be cancelled until then (`$erase-cancel`).
    pub delay_days: u32,
    /// How often the server looks for erasures that have fallen due.
    pub check_interval_seconds: u64,
    /// Records the law requires to be kept: while a patient's record holds a resource of one of
    /// these categories changed less than `years` ago, their erasure is refused (409).
    pub retention: Vec<RetentionRule>,
}

impl Default for ErasureSettings {
    fn default() -> Self {
        Self { delay_days: 7, check_interval_seconds: 60, retention: Vec::new() }
    }
}

/// A retention rule: resources of a category are kept `years` after their last change.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// A name for the category, shown in the refusal (such as `hospital-record`).
    pub category: String,
    /// The FHIR resource types of the category (such as `Encounter`, `Observation`).
    pub resource_types: Vec<String>,
    pub years: u32,
}

/// The orphan sweeper (`fhirvault gc`, and optionally a background task).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GcSettings {
    /// Objects with no index row are removed only once older than this (seconds). Must be far
    /// longer than any write can take.
    pub grace_seconds: u64,
    /// Run the sweeper in the server every this many seconds; 0 turns the background task off.
    pub interval_seconds: u64,
}

impl Default for GcSettings {
    fn default() -> Self {
        Self { grace_seconds: 3600, interval_seconds: 0 }
    }
}

/// The tamper-evident audit log: how records are sealed into each tenant's Merkle tree, and the
/// key that signs its checkpoints.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// A file holding the log's Ed25519 signing key as a signed-note private key
    /// (`PRIVATE+KEY+<name>+<id>+<key>`, as `fhirvault audit keygen` or Go's `note.GenerateKey`
    /// print it). Unset: with the development key provider, `keys/audit-log.key` in the data
    /// directory, generated on first start under the name `origin`; with an HSM or a KMS, a key
    /// generated once and kept in the index, wrapped by the provider.
    pub signing_key_file: Option<PathBuf>,
    /// The name a generated key gets, and so the prefix of every log's origin
    /// (`<origin>/<tenant>`), for example `fhir.example.org/audit`.
    pub origin: String,
    /// Sign a checkpoint every this many entries of a log...
    pub checkpoint_every_entries: u64,
    /// ...and whenever a log has unsigned entries and its last checkpoint is this old.
    pub checkpoint_every_ms: u64,
    /// Records moved from the inbox into the logs per transaction.
    pub seal_batch: u32,
    /// How long the sealer waits after a pass that did not fill a batch (milliseconds). Each
    /// pass has a cost of its own beside its records: under load, a pass a second costs reads
    /// less than five (BENCHMARKS.md, "Remembered decisions").
    pub seal_idle_ms: u64,
    /// Run the sealer in this server. Off: records wait in the inbox (still durable, not yet
    /// in the tree) until a server with the sealer on, or `fhirvault audit seal`, seals them.
    pub sealer: bool,
    /// How long sealed entries must be kept, in years (French hospital records: 20). The server
    /// never deletes sealed entries; this is what an operator's archiving must honour.
    pub retention_years: u32,
    /// Entries one evidence package (`GET /audit/{tenant}/export`) may hold; a larger range is
    /// exported in several packages.
    pub max_export_entries: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            origin: "fhirvault.localhost/audit".into(),
            checkpoint_every_entries: 1_000,
            checkpoint_every_ms: 1_000,
            seal_batch: 5_000,
            seal_idle_ms: 1_000,
            sealer: true,
            retention_years: 20,
            max_export_entries: 100_000,
        }
    }
}

/// How string values are indexed for search (their blind index: see SECURITY.md). Changing
/// these applies to resources written afterwards.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSettings {
    /// Word prefixes shorter than this are not indexed: a query word shorter than this matches
    /// whole words only. Short prefixes reveal the most (the distribution of initials).
    pub min_prefix_chars: usize,
    /// Prefixes are indexed up to this many characters; a longer query word matches on its
    /// first `max_prefix_chars` characters.
    pub max_prefix_chars: usize,
}

impl Default for SearchSettings {
    fn default() -> Self {
        let defaults = crate::search::StringIndexing::default();
        Self { min_prefix_chars: defaults.min_prefix_chars, max_prefix_chars: defaults.max_prefix_chars }
    }
}

impl SearchSettings {
    pub fn string_indexing(&self) -> crate::search::StringIndexing {
        crate::search::StringIndexing {
            min_prefix_chars: self.min_prefix_chars,
            max_prefix_chars: self.max_prefix_chars,
        }
    }
}

/// Transaction and batch Bundles, and conditional writes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WriteSettings {
    /// Entries a transaction or batch Bundle may hold (413 above).
    pub bundle_max_entries: usize,
    /// Largest transaction or batch Bundle accepted, in bytes (413 above). Other requests are
    /// bounded by `http.max_body_bytes`.
    pub bundle_max_bytes: usize,
    /// Whether a conditional delete that matches several resources deletes them all (when
    /// false, it is refused with 412).
    pub conditional_delete_multiple: bool,
    /// The most resources one conditional delete removes.
    pub conditional_delete_max: u32,
}

impl Default for WriteSettings {
    fn default() -> Self {
        Self {
            bundle_max_entries: 10_000,
            bundle_max_bytes: 64 * 1024 * 1024,
            conditional_delete_multiple: false,
            conditional_delete_max: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    /// A human-readable name, shown in the CapabilityStatement.
    pub display_name: Option<String>,
    /// Where this tenant's records must stay: `EEA`, or one EEA country (`FR`).
    pub residency: String,
    /// `standard`, or `strict`: no operator subject to a non-EU extraterritorial law.
    pub sovereignty: Sovereignty,
    /// The storage location of this tenant's records (a key of `locations`).
    pub location: String,
    /// Also serve organizations operating from a country with an EU adequacy decision (GDPR
    /// art. 45), not only from the EEA.
    pub allow_adequacy_countries: bool,
    /// Answer every refused read, update or delete 404 rather than 403, so that a refusal never
    /// confirms that a resource exists. Off: only policies marked `@hide_existence` answer 404.
    pub hide_denied_existence: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Sovereignty {
    #[default]
    Standard,
    /// Every site holding or serving this tenant's data is operated by an entity seated in the
    /// EEA and subject to no non-EU extraterritorial law.
    Strict,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            display_name: None,
            residency: "EEA".to_owned(),
            sovereignty: Sovereignty::Standard,
            location: DEFAULT_LOCATION.to_owned(),
            allow_adequacy_countries: false,
            hide_denied_existence: false,
        }
    }
}

/// The embedded default's one storage location.
pub const DEFAULT_LOCATION: &str = "local";

impl Default for SiteSettings {
    /// The embedded default describes a development machine in France run by its owner;
    /// anything else declares its own sites.
    fn default() -> Self {
        Self {
            jurisdiction: "FR".to_owned(),
            operator: OperatorSettings { name: None, country: "FR".to_owned(), extraterritorial_laws: Vec::new() },
        }
    }
}

fn default_locations() -> BTreeMap<String, LocationSettings> {
    let site = SiteSettings::default();
    BTreeMap::from([(
        DEFAULT_LOCATION.to_owned(),
        LocationSettings {
            jurisdiction: site.jurisdiction,
            operator: site.operator,
            backend: BackendSettings::Local { path: None },
        },
    )])
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            profile: Profile::Embedded,
            data_dir: PathBuf::from("./fhirvault-data"),
            http: HttpSettings::default(),
            database: DatabaseSettings::default(),
            keys: KeySettings::default(),
            auth: AuthSettings::default(),
            log: LogSettings::default(),
            gc: GcSettings::default(),
            search: SearchSettings::default(),
            writes: WriteSettings::default(),
            audit: AuditSettings::default(),
            erasure: ErasureSettings::default(),
            hosting: None,
            locations: default_locations(),
            tenants: BTreeMap::from([("demo".to_owned(), TenantSettings::default())]),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_base_url: None,
            max_body_bytes: 16 * 1024 * 1024,
            workers: None,
            shutdown_timeout_seconds: 30,
            paging_link_ttl_seconds: 3600,
            default_page_size: 50,
            max_page_size: 1000,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: None, max_connections: 8, connect_timeout_seconds: 10, statement_timeout_seconds: 30 }
    }
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            provider: KeyProviderSettings::InsecureLocalFile { path: None },
            cache_capacity: 100_000,
            cache_ttl_seconds: 600,
            version_refresh_seconds: 30,
            usage_flush_seconds: 60,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            insecure_dev_issuer: None,
            audience: "fhirvault".to_owned(),
            leeway_seconds: 30,
            issuers: BTreeMap::new(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, filter: "info".to_owned() }
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.url.as_ref().map(|u| redact_url(u.expose_secret())))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .field("statement_timeout_seconds", &self.statement_timeout_seconds)
            .finish()
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

impl Settings {
    /// Load settings from every source, then check what serde cannot.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = &sources.file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        if let Some(listen) = sources.listen {
            figment = figment.merge(Serialized::default("http.listen", listen.to_string()));
        }
        if let Some(dir) = &sources.data_dir {
            figment = figment.merge(Serialized::default("data_dir", dir));
        }
        let settings: Self = figment.extract().map_err(Box::new)?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid { key: key.to_owned(), reason };
        if self.tenants.is_empty() {
            return Err(invalid("tenants", "at least one tenant is required".into()));
        }
        for id in self.tenants.keys() {
            TenantId::parse(id).map_err(|e| invalid(&format!("tenants.{id}"), e.to_string()))?;
        }
        if let Some(base) = &self.http.public_base_url {
            let parsed = url::Url::parse(base).map_err(|e| invalid("http.public_base_url", e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || base.ends_with('/') {
                return Err(invalid(
                    "http.public_base_url",
                    format!("`{base}` must be an http(s) URL without query or trailing slash"),
                ));
            }
        }
        if self.http.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes", "must be positive".into()));
        }
        if self.writes.bundle_max_bytes == 0 {
            return Err(invalid("writes.bundle_max_bytes", "must be positive".into()));
        }
        if self.http.default_page_size == 0 || self.http.default_page_size > self.http.max_page_size {
            return Err(invalid("http.default_page_size", "must be between 1 and http.max_page_size".into()));
        }
        if self.gc.grace_seconds < 60 {
            return Err(invalid(
                "gc.grace_seconds",
                "must be at least 60: a shorter grace could remove objects of writes in flight".into(),
            ));
        }
        if self.search.min_prefix_chars == 0 || self.search.min_prefix_chars > self.search.max_prefix_chars {
            return Err(invalid("search.min_prefix_chars", "must be between 1 and search.max_prefix_chars".into()));
        }
        if self.search.max_prefix_chars > 64 {
            return Err(invalid("search.max_prefix_chars", "must be at most 64".into()));
        }
        if self.erasure.delay_days > 30 {
            return Err(invalid("erasure.delay_days", "must be between 0 and 30".into()));
        }
        if self.erasure.check_interval_seconds == 0 {
            return Err(invalid("erasure.check_interval_seconds", "must be positive".into()));
        }
        for (i, rule) in self.erasure.retention.iter().enumerate() {
            for rt in &rule.resource_types {
                crate::ids::ResourceType::parse(rt)
                    .map_err(|e| invalid(&format!("erasure.retention[{i}].resource_types"), e.to_string()))?;
            }
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be positive".into()));
        }
        if let Some(url) = &self.database.url {
            let scheme = url.expose_secret().split_once(':').map_or("", |(scheme, _)| scheme);
            if !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
                return Err(invalid(
                    "database.url",
                    format!("unsupported scheme `{scheme}`: use `sqlite://PATH` or `postgres://USER@HOST/DATABASE`"),
                ));
            }
        }
        let audit = &self.audit;
        // Each log signs as `<origin>/<tenant>`, a signed-note key name: no spaces, no `+`.
        if !signed_note::is_key_name_valid(&format!("{}/{}", audit.origin, crate::audit::log::SERVER_LOG)) {
            return Err(invalid(
                "audit.origin",
                format!("`{}` is not a signed-note key name (printable, no spaces, no `+`)", audit.origin),
            ));
        }
        for (key, value) in [
            ("audit.seal_batch", u64::from(audit.seal_batch)),
            ("audit.checkpoint_every_entries", audit.checkpoint_every_entries),
            ("audit.checkpoint_every_ms", audit.checkpoint_every_ms),
            ("audit.max_export_entries", audit.max_export_entries),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be positive".into()));
            }
        }
        for name in self.locations.keys() {
            TenantId::parse(name).map_err(|_| {
                invalid(&format!("locations.{name}"), "a location name is lowercase letters, digits and `-`".into())
            })?;
        }
        crate::residency::check(self).map_err(|e| invalid(&e.key, e.reason))
    }

    /// The index connection options.
    pub fn index_options(&self) -> crate::storage::IndexOptions {
        crate::storage::IndexOptions {
            max_connections: self.database.max_connections,
            connect_timeout: std::time::Duration::from_secs(self.database.connect_timeout_seconds),
            statement_timeout: std::time::Duration::from_secs(self.database.statement_timeout_seconds),
        }
    }

    /// The site this server runs in: declared, or (embedded profile) the development default.
    pub fn hosting(&self) -> SiteSettings {
        self.hosting.clone().unwrap_or_default()
    }

    /// Whether tokens of the development issuer are trusted.
    pub fn dev_issuer_enabled(&self) -> bool {
        self.auth.insecure_dev_issuer.unwrap_or(self.profile == Profile::Embedded)
    }

    /// The index database URL: configured, or a SQLite file in the data directory.
    pub fn database_url(&self) -> SecretString {
        match &self.database.url {
            Some(url) => url.clone(),
            None => SecretString::from(format!("sqlite://{}", self.data_dir.join("index.sqlite").display())),
        }
    }

    pub fn tenant_ids(&self) -> Vec<TenantId> {
        self.tenants.keys().filter_map(|id| TenantId::parse(id).ok()).collect()
    }

    pub fn root_key_path(&self) -> Option<PathBuf> {
        match &self.keys.provider {
            KeyProviderSettings::InsecureLocalFile { path: Some(path) } => Some(path.clone()),
            KeyProviderSettings::InsecureLocalFile { path: None } => Some(self.data_dir.join("keys").join("root.key")),
            KeyProviderSettings::Pkcs11(_) | KeyProviderSettings::Transit(_) => None,
        }
    }

    pub fn dev_issuer_key_path(&self) -> PathBuf {
        dev_issuer_key_path(&self.data_dir)
    }

    pub fn audit_key_path(&self) -> PathBuf {
        self.audit.signing_key_file.clone().unwrap_or_else(|| self.data_dir.join("keys").join("audit-log.key"))
    }
}

pub fn dev_issuer_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("dev-issuer.pk8")
}

/// The JSON schema of the configuration, as published in `schemas/config.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Settings);
    // INVARIANT: a schema is plain JSON and always serializes.
    let mut out = serde_json::to_string_pretty(&schema).unwrap_or_default();
    out.push('\n');
    out
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment's `Jail` closures return figment's own error type")]
mod tests {
    use figment::Jail;

    use super::*;

    #[test]
    fn zero_config_is_the_embedded_default() {
        Jail::expect_with(|_| {
            let s = Settings::load(&Sources::default()).unwrap();
            assert_eq!(s.profile, Profile::Embedded);
            assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(s.data_dir, PathBuf::from("./fhirvault-data"));
            assert!(s.dev_issuer_enabled());
            assert_eq!(s.tenant_ids(), vec![TenantId::parse("demo").unwrap()]);
            assert!(s.database_url().expose_secret().ends_with("fhirvault-data/index.sqlite"));
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_then_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "f.toml",
                "profile = \"production\"\n[http]\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 10\n\
                 [hosting]\njurisdiction = \"FR\"\noperator = { country = \"FR\" }\n[tenants.chu-lyon]\n",
            )?;
            jail.set_env("FHIRVAULT__HTTP__MAX_BODY_BYTES", "20");
            let mut sources = Sources { file: Some("f.toml".into()), ..Sources::default() };
            let s = Settings::load(&sources).unwrap();
            assert_eq!(s.http.listen.port(), 9000);
            assert_eq!(s.http.max_body_bytes, 20);
            assert!(!s.dev_issuer_enabled());
            assert_eq!(s.tenant_ids(), vec![TenantId::parse("chu-lyon").unwrap()]);
            sources.listen = Some("127.0.0.1:9100".parse().unwrap());
            assert_eq!(Settings::load(&sources).unwrap().http.listen.port(), 9100);
            Ok(())
        });
    }

    #[test]
    fn unknown_and_invalid_keys_are_named() {
        let cases = [
            ("[http]\nlisten_port = 1\n", "listen_port"),
            ("colour = \"blue\"\n", "colour"),
            ("[tenants.Bad_Id]\n", "tenants.Bad_Id"),
            ("[http]\npublic_base_url = \"https://x.org/\"\n", "http.public_base_url"),
            ("[keys.provider]\nkind = \"magic\"\n", "magic"),
            ("[audit]\norigin = \"my log\"\n", "audit.origin"),
            ("[audit]\norigin = \"a+b\"\n", "audit.origin"),
            ("[audit]\nseal_batch = 0\n", "audit.seal_batch"),
            ("[audit]\ncheckpoint_every_entries = 0\n", "audit.checkpoint_every_entries"),
        ];
        for (toml, name) in cases {
            Jail::expect_with(|jail| {
                jail.create_file("f.toml", toml)?;
                let err = Settings::load(&Sources { file: Some("f.toml".into()), ..Sources::default() }).unwrap_err();
                assert!(err.to_string().contains(name), "{toml}: {err}");
                Ok(())
            });
        }
        Jail::expect_with(|jail| {
            jail.set_env("FHIRVAULT__HTTP__NOPE", "1");
            let err = Settings::load(&Sources::default()).unwrap_err();
            assert!(err.to_string().contains("nope"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn debug_output_redacts_database_passwords() {
        let s = DatabaseSettings {
            url: Some(SecretString::from("postgres://app:hunter2@db/fhir")),
            ..DatabaseSettings::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app:***@db"), "{shown}");
    }

    #[test]
    fn the_published_schema_is_current() {
        let published = include_str!("../schemas/config.schema.json");
        assert!(
            published == json_schema(),
            "schemas/config.schema.json is stale: run `cargo run -- config schema > schemas/config.schema.json`"
        );
    }
}
