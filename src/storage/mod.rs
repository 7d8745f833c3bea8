//! Storage: sealed objects in an object store, and an index in a SQL database.
//!
//! **Architecture Invariant:** only this module knows sqlx and object_store. Nothing here sees
//! plaintext health data: objects arrive sealed, index rows hold opaque ids, versions, times.
//!
//! **Architecture Invariant:** an index row never points at an object that was not written
//! first. Writers PUT the object, then commit the row; a crash in between leaves an orphan
//! object (removed by the sweeper), never a dangling row.

pub mod audit_log;
pub mod commit;
pub mod gc;
mod lease;
pub mod lifecycle;
mod lookup;
pub mod objects;
mod page_cache;
pub mod postgres;
pub mod search;
mod sql;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::audit::AuditRecord;
use crate::crypto::WrappedKey;
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
use crate::time::Timestamp;

pub use audit_log::{LogEntry, LogFilter, LogSealer, LogSearch, SealReport, StoredCheckpoint};
pub use commit::Committer;
pub use lifecycle::{ERASED, Erasure, ErasureState, KekCalls, KekVersion, LegalHold, PatientStatus};
pub use lookup::Lookups;
pub use objects::{Locations, ObjectKey, ObjectStorage};
pub use search::{Direction, Link, LinkQuery, Order, Position, SearchQuery, SearchRows};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The current version is not the one the writer expected (a concurrent write won).
    #[error("version conflict: the current version is {current:?}")]
    Conflict { current: Option<VersionId> },
    /// An index row names an object the store does not have.
    #[error("object `{0}` is missing from the object store")]
    ObjectMissing(String),
    #[error("object `{0}` already exists; object keys are never reused")]
    ObjectExists(String),
    /// A version meant to create its compartment's key found one already stored.
    #[error("a key named `{0}` already exists")]
    KeyExists(String),
    /// The group committer is not running (the server is stopping).
    #[error("the index's committer or lookup task has stopped")]
    TaskStopped,
    #[error("index database error")]
    Database(#[from] sqlx::Error),
    /// The connection pool itself failed (not the database).
    #[error("index connection pool error: {0}")]
    Pool(String),
    #[error("index migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("object store error")]
    Objects(#[from] object_store::Error),
    #[error("the index holds a value it cannot have written: {0}")]
    Corrupt(String),
    /// Work handed to a blocking thread did not finish (it panicked, or the runtime is stopping).
    #[error("a background task did not finish: {0}")]
    Task(String),
    #[error("unsupported database URL scheme `{0}`: use `sqlite://PATH` or `postgres://USER@HOST/DATABASE`")]
    UnsupportedUrl(String),
}

/// How a version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Create,
    Update,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Result<Self, StorageError> {
        match s {
            "create" => Ok(Self::Create),
            "update" => Ok(Self::Update),
            "delete" => Ok(Self::Delete),
            other => Err(StorageError::Corrupt(format!("method `{other}`"))),
        }
    }
}

/// One version of one resource, as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// Position in the tenant-wide commit order (history paging key).
    pub seq: i64,
    pub tenant: TenantId,
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version: VersionId,
    pub method: Method,
    /// `None` for a deletion (there is no object).
    pub object_key: Option<ObjectKey>,
    /// The storage location of the object.
    pub location: String,
    /// `Patient/{id}` or `tenant`.
    pub compartment: String,
    pub last_updated: Timestamp,
}

impl VersionRow {
    pub fn is_deletion(&self) -> bool {
        self.method == Method::Delete
    }
}

/// A version to commit, and what the writer believes the current version is.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub tenant: TenantId,
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version: VersionId,
    pub method: Method,
    pub object_key: Option<ObjectKey>,
    pub location: String,
    pub compartment: String,
    pub last_updated: Timestamp,
    /// `None`: the resource must not exist yet. `Some(v)`: `v` must be current.
    pub expected_current: Option<VersionId>,
}

impl NewVersion {
    /// The row this version is once committed at `seq`.
    pub fn row(&self, seq: i64) -> VersionRow {
        VersionRow {
            seq,
            tenant: self.tenant.clone(),
            resource_type: self.resource_type,
            id: self.id.clone(),
            version: self.version,
            method: self.method,
            object_key: self.object_key.clone(),
            location: self.location.clone(),
            compartment: self.compartment.clone(),
            last_updated: self.last_updated,
        }
    }
}

/// One version to commit in a batch, with its audit record and, for a compartment that this
/// version creates (a new Patient's own), the compartment key wrapped under the tenant KEK.
#[derive(Debug, Clone)]
pub struct VersionCommit {
    pub version: NewVersion,
    pub audit: AuditRecord,
    /// Stored under `(version.tenant, version.compartment)` in the same transaction; the commit
    /// fails (`KeyExists`) if a key is already stored under that name.
    pub new_key: Option<WrappedKey>,
    /// The version's search rows, in place of its resource's old ones (`Some` and empty for a
    /// deletion). `None` leaves the search index as it is.
    pub search: Option<SearchRows>,
}

/// A resource whose current version a read by id wants (see `Index::look_up`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub tenant: TenantId,
    pub resource_type: ResourceType,
    pub id: ResourceId,
}

/// Which versions a history request wants, newest first.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub tenant: TenantId,
    pub resource_type: ResourceType,
    /// `None` for type-level history.
    pub id: Option<ResourceId>,
    /// Only versions with `last_updated >= since`.
    pub since: Option<Timestamp>,
    /// Only versions committed before this one (keyset paging).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// One tenant's KEK of one version, as the index knows it (`Index::kek_usage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekUsage {
    pub tenant: String,
    pub version: u32,
    /// The provider's id of the KEK (`None` for the development provider, which derives it).
    pub key_id: Option<Vec<u8>>,
    /// Stored keys (compartment, MAC and server keys) wrapped under it. Version 0 counts the
    /// tombstones of erased compartments.
    pub wrapped_keys: u64,
    /// When it was recorded (`None` for a version only in use, never recorded).
    pub created_at: Option<Timestamp>,
    /// When the provider destroyed it.
    pub destroyed_at: Option<Timestamp>,
    /// Provider calls made with it (wraps, unwraps), as the servers flushed them.
    pub wraps: u64,
    pub unwraps: u64,
}

/// The index. Every method is one round trip or one transaction; none holds a lock across calls.
#[async_trait]
pub trait Index: Send + Sync {
    /// Whether other writers wait while a sealing pass holds its lock (SQLite's one write lock;
    /// on PostgreSQL the sealer's advisory lock stops only other sealers).
    fn sealing_blocks_writers(&self) -> bool;

    /// Whether reads by id should hand their lookups to a `Lookups` task, which reads all
    /// those that queued up meanwhile in one round trip (`look_up`). Worth it where a round
    /// trip wakes a server process (PostgreSQL); not on SQLite, in-process.
    fn batches_lookups(&self) -> bool;

    /// Readiness: the database answers.
    async fn ping(&self) -> Result<(), StorageError>;

    /// The current version of a resource (a deletion if it was deleted), or `None` if the
    /// resource never existed.
    async fn current(
        &self,
        tenant: &TenantId,
        rt: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<VersionRow>, StorageError>;

    /// The current version of each of `lookups`, in their order (each as `current` answers).
    async fn look_up(&self, lookups: &[Lookup]) -> Result<Vec<Option<VersionRow>>, StorageError>;

    /// One version, or `None` if that version does not exist.
    async fn version(
        &self,
        tenant: &TenantId,
        rt: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<VersionRow>, StorageError>;

    /// In ONE transaction: every version of `versions` whose `expected_current` holds (with its
    /// new key, version row, current pointer and audit record), and every record of `audits`.
    /// A version whose expectation fails gets `Err(Conflict)` and writes nothing; the others
    /// still commit. `Err` outside means the transaction failed and nothing was written.
    ///
    /// This is what the group committer calls: one transaction and one durable flush for many
    /// requests.
    async fn commit_batch(
        &self,
        versions: &[VersionCommit],
        audits: &[AuditRecord],
    ) -> Result<Vec<Result<i64, StorageError>>, StorageError>;

    /// In ONE transaction, all or nothing: every version of `versions` (as `commit_batch`) and
    /// every record of `audits`. If a version's expectation fails (or its new key's name is
    /// taken), nothing is written and the answer is `Ok(Err((its index, why)))`: a FHIR
    /// transaction Bundle commits through here.
    async fn commit_atomic(
        &self,
        versions: &[VersionCommit],
        audits: &[AuditRecord],
    ) -> Result<Result<Vec<i64>, (usize, StorageError)>, StorageError>;

    /// In ONE transaction: check that `v.expected_current` is current (else `Conflict`, nothing
    /// written), insert the version row, move the current pointer, append `audit`.
    async fn commit_version(&self, v: &NewVersion, audit: &AuditRecord) -> Result<i64, StorageError> {
        let commit = VersionCommit { version: v.clone(), audit: audit.clone(), new_key: None, search: None };
        let mut results = self.commit_batch(std::slice::from_ref(&commit), &[]).await?;
        results.pop().unwrap_or_else(|| Err(StorageError::Corrupt("a batch of one returned no result".into())))
    }

    /// Versions matching `q`, newest first, at most `q.limit`.
    async fn history(&self, q: &HistoryQuery) -> Result<Vec<VersionRow>, StorageError>;

    /// How many versions match `q` (ignoring `before_seq` and `limit`).
    async fn history_total(&self, q: &HistoryQuery) -> Result<u64, StorageError>;

    /// The current versions matching `q`, in `q.order`, at most `q.limit`.
    async fn search(&self, q: &SearchQuery) -> Result<Vec<VersionRow>, StorageError>;

    /// How many current versions match `q` (ignoring `after` and `limit`).
    async fn search_count(&self, q: &SearchQuery) -> Result<u64, StorageError>;

    /// The values of `q.order`'s sort keys for one resource: where a page that ends with it
    /// stopped.
    async fn sort_position(&self, q: &SearchQuery, id: &str) -> Result<Position, StorageError>;

    /// The references between current resources that `q` asks for, in a stable order.
    async fn links(&self, q: &LinkQuery) -> Result<Vec<Link>, StorageError>;

    /// Append audit records (reads, refusals) in one transaction. Returns when durable.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StorageError> {
        self.commit_batch(&[], records).await.map(drop)
    }

    /// In ONE transaction (one durable flush): every record of `records`, and each record of
    /// `if_current` only while the version it names (its tenant, resource type, id and
    /// version) is that resource's current version. Returns, for each of `if_current` in
    /// order, whether it was, and so was written. A read answered from a remembered lookup
    /// commits its record through here: the check and the record share the database's
    /// snapshot, so the read answers only a version that was current while it ran.
    async fn append_audit_if_current(
        &self,
        records: &[AuditRecord],
        if_current: &[AuditRecord],
    ) -> Result<Vec<bool>, StorageError>;

    /// A wrapped tenant key (compartment key, MAC key) by name.
    async fn tenant_key(&self, tenant: &TenantId, key_ref: &str) -> Result<Option<WrappedKey>, StorageError>;

    /// Store a wrapped tenant key unless one exists under that name; returns the stored one
    /// (ours, or the one a concurrent writer stored first).
    async fn insert_tenant_key(
        &self,
        tenant: &TenantId,
        key_ref: &str,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, StorageError>;

    /// The key provider's id of `tenant`'s KEK of `version`, once one is recorded.
    async fn kek_id(&self, tenant: &TenantId, version: u32) -> Result<Option<Vec<u8>>, StorageError>;

    /// Record `key_id` as `tenant`'s KEK of `version` unless one is recorded; returns the
    /// recorded id (ours, or the one a concurrent replica recorded first).
    async fn claim_kek_id(&self, tenant: &TenantId, version: u32, key_id: &[u8]) -> Result<Vec<u8>, StorageError>;

    /// Every KEK version recorded or in use: per tenant and version, the provider's id of the
    /// KEK (when recorded) and how many stored keys it wraps.
    async fn kek_usage(&self) -> Result<Vec<KekUsage>, StorageError>;

    /// Every recorded KEK version of every tenant, by tenant and version.
    async fn kek_versions(&self) -> Result<Vec<KekVersion>, StorageError>;

    /// Add provider calls to the usage counters of their KEK versions.
    async fn add_kek_calls(&self, calls: &[KekCalls]) -> Result<(), StorageError>;

    /// Record that the provider destroyed `tenant`'s KEK of `version`.
    async fn kek_destroyed(&self, tenant: &TenantId, version: u32) -> Result<(), StorageError>;

    /// Up to `limit` stored keys of `tenant` wrapped under KEK `version`, named after `after`,
    /// by name.
    async fn keys_under(
        &self,
        tenant: &TenantId,
        version: u32,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, WrappedKey)>, StorageError>;

    /// How many stored keys of `tenant` are wrapped under KEK `version`.
    async fn count_under(&self, tenant: &TenantId, version: u32) -> Result<u64, StorageError>;

    /// Replace a stored key by its re-wrapped form if it is still `old`; `false` if it changed
    /// meanwhile (re-wrapped by another rotation, or erased).
    async fn rewrap_tenant_key(
        &self,
        tenant: &TenantId,
        key_ref: &str,
        old: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StorageError>;

    /// A patient's erasure and legal hold, if any.
    async fn patient_status(&self, tenant: &TenantId, patient: &str) -> Result<PatientStatus, StorageError>;

    /// The newest change of each resource type in a compartment (`Patient/{id}`).
    async fn compartment_activity(
        &self,
        tenant: &TenantId,
        compartment: &str,
    ) -> Result<Vec<(String, Timestamp)>, StorageError>;

    /// In ONE transaction: schedule a patient's erasure (due at `due_at`) and append `audit`.
    /// `false` (nothing written): a legal hold is set, or an erasure is already scheduled or
    /// done.
    async fn schedule_erasure(
        &self,
        tenant: &TenantId,
        patient: &str,
        requested_by: &str,
        due_at: Timestamp,
        audit: &AuditRecord,
    ) -> Result<bool, StorageError>;

    /// In ONE transaction: cancel a scheduled erasure not yet due and append `audit`; `false`
    /// (nothing written) when there was none to cancel.
    async fn cancel_erasure(&self, tenant: &TenantId, patient: &str, audit: &AuditRecord)
    -> Result<bool, StorageError>;

    /// In ONE transaction: set (`Some`) or clear a patient's legal hold and append `audit`.
    /// Setting one cancels a scheduled erasure (then `true`).
    async fn set_legal_hold(
        &self,
        tenant: &TenantId,
        patient: &str,
        hold: Option<&LegalHold>,
        audit: &AuditRecord,
    ) -> Result<bool, StorageError>;

    /// In ONE transaction, if the patient's erasure is scheduled, due at `audit.recorded` and no
    /// legal hold is set: mark it done, replace the compartment key by its tombstone, remove the
    /// compartment's search rows, append `audit`. `false` (nothing written) otherwise.
    async fn erase(&self, tenant: &TenantId, patient: &str, audit: &AuditRecord) -> Result<bool, StorageError>;

    /// Up to `limit` (tenant, patient) whose scheduled erasure is due at `now`, oldest first.
    async fn due_erasures(&self, now: Timestamp, limit: u32) -> Result<Vec<(String, String)>, StorageError>;

    /// Whether some version row names this object key (the orphan sweeper asks).
    async fn knows_object(&self, key: &str) -> Result<bool, StorageError>;

    /// One sealing pass: under the sealer lock, in one transaction, take up to `limit` inbox
    /// records in order, write what `sealer` makes of them (log entries, tree hashes,
    /// checkpoints) and remove them from the inbox.
    async fn seal(&self, limit: u32, sealer: &mut dyn LogSealer) -> Result<SealReport, StorageError>;

    /// The names of the logs that hold entries or checkpoints.
    async fn log_names(&self) -> Result<Vec<String>, StorageError>;

    /// Up to `limit` entries of `log` from index `from`, in index order.
    async fn log_entries(&self, log: &str, from: u64, limit: u32) -> Result<Vec<LogEntry>, StorageError>;

    /// Up to `limit` entries' events (as hashed) of `log` from index `from`, in index order:
    /// what an evidence package carries, without the search columns (the verifier reads
    /// `log_entries`, to check those columns too).
    async fn log_events(&self, log: &str, from: u64, limit: u32) -> Result<Vec<(u64, Vec<u8>)>, StorageError>;

    /// Up to `limit` stored tree hashes of `log` from stored-hash index `from`, in order; fewer
    /// does not mean the last (read on from the last one returned until none come).
    async fn log_hashes(&self, log: &str, from: u64, limit: u32) -> Result<Vec<(u64, [u8; 32])>, StorageError>;

    /// The stored tree hashes of `log` at these stored-hash indexes (those it has).
    async fn log_hashes_at(&self, log: &str, indexes: &[u64]) -> Result<Vec<(u64, [u8; 32])>, StorageError>;

    /// The signed checkpoints of `log` by size (only the latest with `latest_only`).
    async fn log_checkpoints(&self, log: &str, latest_only: bool) -> Result<Vec<StoredCheckpoint>, StorageError>;

    /// The entries of a log that match `q`, newest first (or their number, `count`).
    async fn search_log(&self, q: &LogSearch) -> Result<Vec<LogEntry>, StorageError>;

    /// How many entries of a log match `q` (its `before` and `limit` aside).
    async fn count_log(&self, q: &LogSearch) -> Result<u64, StorageError>;
}

/// How the index connects.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    pub max_connections: u32,
    /// How long to wait for a connection (from the pool, or a new one).
    pub connect_timeout: Duration,
    /// PostgreSQL: the server cancels statements running longer. SQLite: how long a writer
    /// waits for the write lock.
    pub statement_timeout: Duration,
}

/// Open the index named by `url` (`sqlite:` or `postgres:`), running its migrations.
pub async fn open_index(url: &SecretString, options: &IndexOptions) -> Result<Arc<dyn Index>, StorageError> {
    let raw = url.expose_secret();
    match raw.split_once(':').map(|(scheme, _)| scheme) {
        Some("sqlite") => Ok(Arc::new(sqlite::SqliteIndex::open(raw, options).await?)),
        Some("postgres" | "postgresql") => Ok(Arc::new(postgres::PostgresIndex::open(raw, options).await?)),
        Some(scheme) => Err(StorageError::UnsupportedUrl(scheme.to_owned())),
        None => Err(StorageError::UnsupportedUrl(String::new())),
    }
}

fn parse_row_ids(
    tenant: &str,
    rt: &str,
    id: &str,
    version: i64,
) -> Result<(TenantId, ResourceType, ResourceId, VersionId), StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(what.to_owned());
    let version = u32::try_from(version).ok().and_then(|v| VersionId::from_u32(v).ok());
    Ok((
        TenantId::parse(tenant).map_err(|_| corrupt("tenant"))?,
        ResourceType::parse(rt).map_err(|_| corrupt("resource type"))?,
        ResourceId::parse(id).map_err(|_| corrupt("resource id"))?,
        version.ok_or_else(|| corrupt("version"))?,
    ))
}
