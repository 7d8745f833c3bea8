//! The sealed audit log in the index: the inbox (`audit_records`), the entries (`audit_log`),
//! the tree's stored hashes (`audit_hash_runs`, up to `RUN` consecutive hashes a row) and the
//! signed checkpoints (`audit_checkpoints`).
//!
//! The storage layer moves rows; what goes into the log (the rendered AuditEvent, the tree
//! hashes, the signed checkpoints) is decided by a `LogSealer` (the audit module's sealer), in
//! the middle of the sealing transaction, without IO of its own.

use std::collections::BTreeMap;

use super::StorageError;
use crate::audit::{Agent, AuditAction, AuditRecord};
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
use crate::time::Timestamp;

/// A log's size and the size of its latest signed checkpoint, as the index holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogHead {
    pub size: u64,
    pub checkpoint_size: u64,
}

/// One record waiting in the inbox.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    pub seq: i64,
    pub record: AuditRecord,
}

/// One sealed entry: the event as hashed, and the fields the auditor searches by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub log: String,
    pub index: u64,
    pub recorded: Timestamp,
    pub action: String,
    pub outcome: u16,
    /// The user's subject.
    pub agent: Option<String>,
    /// `Patient/{id}` when the entry concerns a patient.
    pub patient: Option<String>,
    /// `Type/id` (or `Type` for a query) of the resource.
    pub entity: Option<String>,
    pub event: Vec<u8>,
}

/// One condition of an auditor's search of a log: an entry matches if ANY of its
/// alternatives holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFilter {
    /// When it was recorded (the stored instant is the range `[t, t + 1 ms)`).
    Recorded(Vec<super::search::DateCond>),
    /// The user's subject is one of these.
    Agent(Vec<String>),
    /// The resource (`Type/id`) or the type searched (`Type`) is one of these.
    Entity(Vec<String>),
    /// The patient (`Patient/{id}`) is one of these.
    Patient(Vec<String>),
    /// The interaction (`AuditAction::as_str`) is one of these.
    Action(Vec<String>),
    /// The HTTP status falls in one of these ranges `[lo, hi)`.
    Status(Vec<(u16, u16)>),
}

/// An auditor's search of one log: every filter holds; newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSearch {
    pub log: String,
    pub filters: Vec<LogFilter>,
    /// Only entries below this index (the page before ended there).
    pub before: Option<u64>,
    pub limit: u32,
}

/// The statement for `q`: its entries newest first, or their number.
pub(super) fn build_search(q: &LogSearch, count: bool) -> Result<super::search::Built, StorageError> {
    use super::search::{Arg, Built, alternatives, date_cond, list};
    let mut b = Built::default();
    let log = b.arg(Arg::Text(q.log.clone()));
    let mut terms = vec![format!("tenant = {log}")];
    let texts = |b: &mut Built, column: &str, values: &[String]| match values {
        [] => "1 = 0".to_owned(),
        _ => format!("{column} IN ({})", list(b, values.iter().cloned().map(Arg::Text))),
    };
    for filter in &q.filters {
        terms.push(match filter {
            LogFilter::Recorded(any) => {
                alternatives(any.iter().map(|cond| date_cond(&mut b, "recorded_at", "(recorded_at + 1)", cond)))
            }
            LogFilter::Agent(values) => texts(&mut b, "agent", values),
            LogFilter::Entity(values) => texts(&mut b, "entity", values),
            LogFilter::Patient(values) => texts(&mut b, "patient", values),
            LogFilter::Action(values) => texts(&mut b, "action", values),
            LogFilter::Status(ranges) => alternatives(ranges.iter().map(|(lo, hi)| {
                let (lo, hi) = (b.arg(Arg::Int(i64::from(*lo))), b.arg(Arg::Int(i64::from(*hi))));
                format!("outcome >= {lo} AND outcome < {hi}")
            })),
        });
    }
    if count {
        b.sql = format!("SELECT COUNT(*) FROM audit_log WHERE {}", terms.join(" AND "));
        return Ok(b);
    }
    if let Some(before) = q.before {
        terms.push(format!("idx < {}", b.arg(Arg::Int(to_i64(before)?))));
    }
    let limit = b.arg(Arg::Int(i64::from(q.limit)));
    b.sql =
        format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE {} ORDER BY idx DESC LIMIT {limit}", terms.join(" AND "));
    Ok(b)
}

/// A signed checkpoint of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub log: String,
    pub size: u64,
    pub note: String,
    pub created: Timestamp,
}

/// What one sealing transaction writes.
#[derive(Debug, Default)]
pub struct Sealed {
    pub entries: Vec<LogEntry>,
    /// (log, stored-hash index, hash)
    pub hashes: Vec<(String, u64, [u8; 32])>,
    pub checkpoints: Vec<StoredCheckpoint>,
}

/// Decides what the sealing transaction writes (see `audit::sealer`). Called under the sealer
/// lock, in the transaction; no IO.
pub trait LogSealer: Send {
    /// The logs whose heads it wants besides those of the records taken (for checkpoints due
    /// by time).
    fn logs(&self) -> Vec<String>;
    /// The stored hashes it needs loaded to extend these logs (empty when it has them).
    fn needs(&self, heads: &BTreeMap<String, LogHead>) -> Vec<(String, Vec<u64>)>;
    /// The entries, hashes and checkpoints for these records (taken in inbox order).
    fn seal(
        &mut self,
        heads: &BTreeMap<String, LogHead>,
        loaded: Vec<(String, u64, [u8; 32])>,
        inbox: Vec<InboxEntry>,
    ) -> Result<Sealed, StorageError>;
    /// The transaction did not commit: forget what `seal` assumed.
    fn abort(&mut self);
}

/// The log an inbox record goes to.
pub fn log_of(record: &AuditRecord) -> String {
    record.tenant.as_ref().map_or_else(|| crate::audit::log::SERVER_LOG.to_owned(), |t| t.as_str().to_owned())
}

/// An inbox row, as read back.
#[derive(sqlx::FromRow)]
pub(super) struct DbAuditRecord {
    seq: i64,
    recorded_at: i64,
    request_id: String,
    tenant: Option<String>,
    agent_subject: Option<String>,
    agent_issuer: Option<String>,
    agent_role: Option<String>,
    agent_jurisdiction: Option<String>,
    purpose: Option<String>,
    token_id: Option<String>,
    source_ip: Option<String>,
    action: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    version: Option<i64>,
    compartment: Option<String>,
    outcome: i64,
    detail: Option<String>,
    policy: Option<String>,
}

impl DbAuditRecord {
    pub(super) const fn seq(&self) -> i64 {
        self.seq
    }
}

impl TryFrom<DbAuditRecord> for InboxEntry {
    type Error = StorageError;

    fn try_from(r: DbAuditRecord) -> Result<Self, StorageError> {
        let seq = r.seq;
        let corrupt = |what: &str| StorageError::Corrupt(format!("audit record {seq}: {what}"));
        let version = r
            .version
            .map(|v| u32::try_from(v).ok().and_then(|v| VersionId::from_u32(v).ok()).ok_or_else(|| corrupt("version")))
            .transpose()?;
        let record = AuditRecord {
            recorded: Timestamp::from_millis(r.recorded_at),
            request_id: r.request_id,
            tenant: r.tenant.as_deref().map(TenantId::parse).transpose().map_err(|_| corrupt("tenant"))?,
            agent: Agent {
                subject: r.agent_subject,
                issuer: r.agent_issuer,
                role: r.agent_role,
                jurisdiction: r.agent_jurisdiction,
                purpose: r.purpose,
                token_id: r.token_id,
            },
            source_ip: r.source_ip,
            action: AuditAction::parse(&r.action).ok_or_else(|| corrupt("action"))?,
            resource_type: r
                .resource_type
                .as_deref()
                .map(ResourceType::parse)
                .transpose()
                .map_err(|_| corrupt("resource type"))?,
            resource_id: r.resource_id.as_deref().map(ResourceId::parse).transpose().map_err(|_| corrupt("id"))?,
            version,
            compartment: r.compartment,
            outcome: u16::try_from(r.outcome).map_err(|_| corrupt("outcome"))?,
            detail: r.detail,
            policy: r.policy,
        };
        Ok(Self { seq, record })
    }
}

pub(super) const INBOX_COLUMNS: &str = "seq, recorded_at, request_id, tenant, agent_subject, agent_issuer, \
     agent_role, agent_jurisdiction, purpose, token_id, source_ip, action, resource_type, resource_id, version, \
     compartment, outcome, detail, policy";
pub(super) const LOG_SIZE: &str = "SELECT MAX(idx) FROM audit_log WHERE tenant = $1";
pub(super) const CHECKPOINT_SIZE: &str = "SELECT MAX(size) FROM audit_checkpoints WHERE tenant = $1";
pub(super) const ENTRY_COLUMNS: &str = "tenant, idx, recorded_at, action, outcome, agent, patient, entity, event";
pub(super) const INSERT_CHECKPOINT: &str =
    "INSERT INTO audit_checkpoints (tenant, size, note, created_at) VALUES ($1, $2, $3, $4)";

pub(super) const READ_ENTRIES: &str = "SELECT tenant, idx, recorded_at, action, outcome, agent, patient, entity, \
     event FROM audit_log WHERE tenant = $1 AND idx >= $2 ORDER BY idx LIMIT $3";
pub(super) const READ_EVENTS: &str =
    "SELECT idx, event FROM audit_log WHERE tenant = $1 AND idx >= $2 ORDER BY idx LIMIT $3";
/// The runs of stored hashes from the one that holds stored hash `$2` on, `$3` runs at most.
pub(super) const READ_HASH_RUNS: &str = "SELECT idx, hashes FROM audit_hash_runs WHERE tenant = $1 AND idx >= \
     COALESCE((SELECT idx FROM audit_hash_runs WHERE tenant = $1 AND idx <= $2 ORDER BY idx DESC LIMIT 1), 0) \
     ORDER BY idx LIMIT $3";
pub(super) const READ_CHECKPOINTS: &str =
    "SELECT tenant, size, note, created_at FROM audit_checkpoints WHERE tenant = $1 ORDER BY size";
pub(super) const LATEST_CHECKPOINT: &str = "SELECT tenant, size, note, created_at FROM audit_checkpoints \
     WHERE tenant = $1 ORDER BY size DESC LIMIT 1";
/// Stored hashes looked up per statement (a proof needs at most about 2 log2(n)).
pub(super) const HASHES_PER_QUERY: usize = 64;
pub(super) const LOG_NAMES: &str =
    "SELECT DISTINCT tenant FROM audit_checkpoints UNION SELECT DISTINCT tenant FROM audit_hash_runs ORDER BY 1";

/// Stored hashes in one row of `audit_hash_runs` at most (2 KB: see its migration, 0011).
pub(super) const RUN: usize = 64;

/// A pass's stored hashes (log, stored-hash index, hash) as rows of `audit_hash_runs`: for each
/// log, its hashes in index order cut into runs of at most `RUN` consecutive ones (log, index
/// of the first, the hashes end to end).
pub(super) fn hash_runs(hashes: &[(String, u64, [u8; 32])]) -> Vec<(&str, u64, Vec<u8>)> {
    let mut by_log: BTreeMap<&str, Vec<(u64, &[u8; 32])>> = BTreeMap::new();
    for (log, i, hash) in hashes {
        by_log.entry(log).or_default().push((*i, hash));
    }
    let mut runs = Vec::new();
    for (log, mut hashes) in by_log {
        hashes.sort_unstable_by_key(|(i, _)| *i);
        let mut run: Option<(u64, Vec<u8>)> = None;
        for (i, hash) in hashes {
            match &mut run {
                Some((first, bytes)) if bytes.len() < RUN * 32 && *first + (bytes.len() / 32) as u64 == i => {
                    bytes.extend_from_slice(hash);
                }
                _ => {
                    runs.extend(run.take().map(|(first, bytes)| (log, first, bytes)));
                    let mut bytes = Vec::with_capacity(RUN * 32);
                    bytes.extend_from_slice(hash);
                    run = Some((i, bytes));
                }
            }
        }
        runs.extend(run.map(|(first, bytes)| (log, first, bytes)));
    }
    runs
}

/// The hashes of the run stored at `idx`: (stored-hash index, hash).
pub(super) fn run_hashes(idx: i64, bytes: &[u8]) -> Result<(u64, &[[u8; 32]]), StorageError> {
    let first = u64::try_from(idx).map_err(|_| StorageError::Corrupt("stored hash index".into()))?;
    match bytes.as_chunks::<32>() {
        (hashes, []) if !hashes.is_empty() => Ok((first, hashes)),
        _ => Err(StorageError::Corrupt(format!("the stored hash run at {first}"))),
    }
}

/// The runs holding the stored hashes `$2`, `$3`, ... (`n` of them) of log `$1`: for each, the
/// run with the greatest first index at or below it.
pub(super) fn hash_runs_at(n: usize) -> String {
    let wanted: Vec<String> = (0..n).map(|k| format!("(CAST(${} AS BIGINT))", k + 2)).collect();
    // Only placeholders are formatted into the statement.
    format!(
        "WITH wanted (i) AS (VALUES {}) SELECT idx, hashes FROM audit_hash_runs WHERE tenant = $1 AND idx IN \
         (SELECT (SELECT idx FROM audit_hash_runs WHERE tenant = $1 AND idx <= wanted.i ORDER BY idx DESC LIMIT 1) \
         FROM wanted)",
        wanted.join(", ")
    )
}

/// The stored hashes at `indexes` out of the runs `hash_runs_at` found, in index order; an
/// index that no run holds is left out.
pub(super) fn pick_hashes(indexes: &[u64], rows: &[(i64, Vec<u8>)]) -> Result<Vec<(u64, [u8; 32])>, StorageError> {
    let mut runs = BTreeMap::new();
    for (idx, bytes) in rows {
        let (first, hashes) = run_hashes(*idx, bytes)?;
        runs.insert(first, hashes);
    }
    let mut picked: Vec<(u64, [u8; 32])> = indexes
        .iter()
        .filter_map(|&i| {
            let (first, hashes) = runs.range(..=i).next_back()?;
            let hash = hashes.get(usize::try_from(i - first).ok()?)?;
            Some((i, *hash))
        })
        .collect();
    picked.sort_unstable_by_key(|(i, _)| *i);
    picked.dedup_by_key(|(i, _)| *i);
    Ok(picked)
}

#[derive(sqlx::FromRow)]
pub(super) struct DbEntry {
    tenant: String,
    idx: i64,
    recorded_at: i64,
    action: String,
    outcome: i64,
    agent: Option<String>,
    patient: Option<String>,
    entity: Option<String>,
    event: Vec<u8>,
}

impl TryFrom<DbEntry> for LogEntry {
    type Error = StorageError;

    fn try_from(r: DbEntry) -> Result<Self, StorageError> {
        Ok(Self {
            log: r.tenant,
            index: u64::try_from(r.idx).map_err(|_| StorageError::Corrupt("log index".into()))?,
            recorded: Timestamp::from_millis(r.recorded_at),
            action: r.action,
            outcome: u16::try_from(r.outcome).map_err(|_| StorageError::Corrupt("log outcome".into()))?,
            agent: r.agent,
            patient: r.patient,
            entity: r.entity,
            event: r.event,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DbCheckpoint {
    tenant: String,
    size: i64,
    note: String,
    created_at: i64,
}

impl TryFrom<DbCheckpoint> for StoredCheckpoint {
    type Error = StorageError;

    fn try_from(r: DbCheckpoint) -> Result<Self, StorageError> {
        Ok(Self {
            log: r.tenant,
            size: u64::try_from(r.size).map_err(|_| StorageError::Corrupt("checkpoint size".into()))?,
            note: r.note,
            created: Timestamp::from_millis(r.created_at),
        })
    }
}

pub(super) fn to_i64(n: u64) -> Result<i64, StorageError> {
    i64::try_from(n).map_err(|_| StorageError::Corrupt("a log index beyond 2^63".into()))
}

/// The logs to read heads for: those of the records taken, and those the sealer names.
pub(super) fn logs_to_head(inbox: &[InboxEntry], sealer: &dyn LogSealer) -> Vec<String> {
    let mut logs: std::collections::BTreeSet<String> = sealer.logs().into_iter().collect();
    logs.extend(inbox.iter().map(|e| log_of(&e.record)));
    logs.into_iter().collect()
}

/// The log-reading part of `Index`, the same SQL on both databases, as inherent methods that
/// `impl_index!` delegates to.
macro_rules! impl_log_reads {
    ($index:ty, $conn:ty) => {
        impl $index {
            async fn read_log_names(&self) -> Result<Vec<String>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let names: Vec<String> =
                    sqlx::query_scalar($crate::storage::audit_log::LOG_NAMES).fetch_all(&mut *conn).await?;
                conn.done();
                Ok(names)
            }

            async fn read_log_entries(
                &self,
                log: &str,
                from: u64,
                limit: u32,
            ) -> Result<Vec<$crate::storage::audit_log::LogEntry>, $crate::storage::StorageError> {
                use $crate::storage::audit_log as l;
                let mut conn = self.leases.get().await?;
                let rows: Vec<l::DbEntry> = sqlx::query_as(l::READ_ENTRIES)
                    .bind(log)
                    .bind(l::to_i64(from)?)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                conn.done();
                rows.into_iter().map(l::LogEntry::try_from).collect()
            }

            /// `(idx, blob)` rows of `sql` (`READ_EVENTS` or `READ_HASH_RUNS`): `log`, from `from`, up to `limit`.
            async fn read_log_blobs(
                &self,
                sql: &'static str,
                log: &str,
                from: u64,
                limit: u32,
            ) -> Result<Vec<(i64, Vec<u8>)>, $crate::storage::StorageError> {
                use $crate::storage::audit_log as l;
                let mut conn = self.leases.get().await?;
                let rows = sqlx::query_as(sql)
                    .bind(log)
                    .bind(l::to_i64(from)?)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                conn.done();
                Ok(rows)
            }

            async fn read_log_events(
                &self,
                log: &str,
                from: u64,
                limit: u32,
            ) -> Result<Vec<(u64, Vec<u8>)>, $crate::storage::StorageError> {
                let rows = self.read_log_blobs($crate::storage::audit_log::READ_EVENTS, log, from, limit).await?;
                rows.into_iter()
                    .map(|(i, event)| {
                        let i =
                            u64::try_from(i).map_err(|_| $crate::storage::StorageError::Corrupt("log index".into()))?;
                        Ok((i, event))
                    })
                    .collect()
            }

            async fn read_log_hashes(
                &self,
                log: &str,
                from: u64,
                limit: u32,
            ) -> Result<Vec<(u64, [u8; 32])>, $crate::storage::StorageError> {
                use $crate::storage::audit_log as l;
                // Enough runs for `limit` hashes when they are full; fewer hashes when they are
                // not (the caller reads on from the last one it got).
                let runs = u32::try_from(l::RUN).map_or(limit, |run| limit.div_ceil(run).saturating_add(1));
                let rows = self.read_log_blobs(l::READ_HASH_RUNS, log, from, runs).await?;
                let mut hashes = Vec::new();
                for (idx, bytes) in &rows {
                    let (first, run) = l::run_hashes(*idx, bytes)?;
                    hashes.extend((first..).zip(run.iter().copied()).filter(|(i, _)| *i >= from));
                }
                hashes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                Ok(hashes)
            }

            async fn read_log_hashes_at(
                &self,
                log: &str,
                indexes: &[u64],
            ) -> Result<Vec<(u64, [u8; 32])>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let hashes = Self::hashes_at(&mut conn, log, indexes).await?;
                conn.done();
                Ok(hashes)
            }

            /// The stored hashes of `log` at `indexes` (those it has), on `conn`: a reader's
            /// connection, or the sealer's transaction.
            async fn hashes_at(
                conn: &mut $conn,
                log: &str,
                indexes: &[u64],
            ) -> Result<Vec<(u64, [u8; 32])>, $crate::storage::StorageError> {
                use $crate::storage::audit_log as l;
                let mut rows = Vec::new();
                for chunk in indexes.chunks(l::HASHES_PER_QUERY) {
                    let sql = l::hash_runs_at(chunk.len());
                    let mut query = sqlx::query_as::<_, (i64, Vec<u8>)>(sqlx::AssertSqlSafe(sql)).bind(log);
                    for &i in chunk {
                        query = query.bind(l::to_i64(i)?);
                    }
                    rows.extend(query.fetch_all(&mut *conn).await?);
                }
                l::pick_hashes(indexes, &rows)
            }

            async fn read_log_checkpoints(
                &self,
                log: &str,
                latest_only: bool,
            ) -> Result<Vec<$crate::storage::audit_log::StoredCheckpoint>, $crate::storage::StorageError> {
                use $crate::storage::audit_log as l;
                let sql = if latest_only { l::LATEST_CHECKPOINT } else { l::READ_CHECKPOINTS };
                let mut conn = self.leases.get().await?;
                let rows: Vec<l::DbCheckpoint> = sqlx::query_as(sql).bind(log).fetch_all(&mut *conn).await?;
                conn.done();
                rows.into_iter().map(l::StoredCheckpoint::try_from).collect()
            }

            async fn read_log_search(
                &self,
                q: &$crate::storage::audit_log::LogSearch,
            ) -> Result<Vec<$crate::storage::audit_log::LogEntry>, $crate::storage::StorageError> {
                use $crate::storage::audit_log as l;
                let built = l::build_search(q, false)?;
                let mut conn = self.leases.get().await?;
                let query = $crate::storage::search::bind_args!(
                    sqlx::query_as::<_, l::DbEntry>(sqlx::AssertSqlSafe(built.sql)),
                    built.args
                );
                let rows = query.fetch_all(&mut *conn).await?;
                conn.done();
                rows.into_iter().map(l::LogEntry::try_from).collect()
            }

            async fn read_log_count(
                &self,
                q: &$crate::storage::audit_log::LogSearch,
            ) -> Result<u64, $crate::storage::StorageError> {
                use $crate::storage::audit_log as l;
                let built = l::build_search(q, true)?;
                let mut conn = self.leases.get().await?;
                let query = $crate::storage::search::bind_args!(
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(built.sql)),
                    built.args
                );
                let count = query.fetch_one(&mut *conn).await?;
                conn.done();
                u64::try_from(count).map_err(|_| $crate::storage::StorageError::Corrupt("a negative count".into()))
            }

            async fn seal_log(
                &self,
                limit: u32,
                sealer: &mut dyn $crate::storage::audit_log::LogSealer,
            ) -> Result<$crate::storage::audit_log::SealReport, $crate::storage::StorageError> {
                let result = self.seal_in_transaction(limit, sealer).await;
                if result.is_err() {
                    sealer.abort();
                }
                result
            }
        }
    };
}
pub(super) use impl_log_reads;

/// What a sealing pass did.
#[derive(Debug, Default)]
pub struct SealReport {
    /// Entries moved from the inbox into the log.
    pub sealed: usize,
    /// The checkpoints it signed, to be copied to object storage.
    pub checkpoints: Vec<StoredCheckpoint>,
    /// Another process holds the sealer lock.
    pub busy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u64) -> [u8; 32] {
        let mut h = [0; 32];
        for (d, s) in h.iter_mut().zip(n.to_be_bytes()) {
            *d = s;
        }
        h
    }

    #[test]
    fn a_pass_hashes_become_runs_of_consecutive_indexes_per_log() {
        // Two logs interleaved as a pass makes them; `b` has a gap (never made by a sealer, but
        // a run must not cross it).
        let mut hashes = Vec::new();
        for i in 10..150 {
            hashes.push(("a".to_owned(), i, hash(i)));
            if i % 3 == 0 && i != 42 {
                hashes.push(("b".to_owned(), i / 3, hash(1_000 + i / 3)));
            }
        }
        let runs = hash_runs(&hashes);
        let shape: Vec<(&str, u64, usize)> =
            runs.iter().map(|(log, first, bytes)| (*log, *first, bytes.len() / 32)).collect();
        assert_eq!(shape, [("a", 10, 64), ("a", 74, 64), ("a", 138, 12), ("b", 4, 10), ("b", 15, 35)]);
        for (log, first, bytes) in &runs {
            let (start, run) = run_hashes(to_i64(*first).unwrap(), bytes).unwrap();
            for (i, h) in (start..).zip(run) {
                let offset = if *log == "a" { 0 } else { 1_000 };
                assert_eq!(*h, hash(offset + i));
            }
        }
    }

    #[test]
    fn hashes_are_picked_from_the_runs_that_hold_them() {
        let rows: Vec<(i64, Vec<u8>)> = vec![
            (0, (0..64).flat_map(hash).collect()),
            (64, hash(64).to_vec()),
            (65, (65..70).flat_map(hash).collect()),
        ];
        let picked = pick_hashes(&[69, 0, 64, 63, 70, 65, 0], &rows).unwrap();
        let expected: Vec<(u64, [u8; 32])> = [0, 63, 64, 65, 69].into_iter().map(|i| (i, hash(i))).collect();
        assert_eq!(picked, expected, "in order, once each, and 70 (past the last run) left out");
        assert!(pick_hashes(&[0], &[(0, vec![0; 33])]).is_err(), "a run that is not whole hashes is corrupt");
        assert!(pick_hashes(&[0], &[(0, Vec::new())]).is_err());
    }
}
