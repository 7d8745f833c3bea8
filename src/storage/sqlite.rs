//! The SQLite index (embedded default): WAL journal, `synchronous = FULL` (every commit flushed,
//! but for the audit sealer's: see `seal_in_transaction`), one writer at a time (`BEGIN
//! IMMEDIATE`, so a read-then-write transaction never fails on a lock upgrade).

use std::str::FromStr;

use std::sync::LazyLock;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

use std::collections::BTreeMap;

use super::audit_log::{self as log, LogSealer, SealReport};
use super::lease::Leases;
use super::search::{self, SearchRows};
use super::sql::{self, InsertedVersion};
use super::{IndexOptions, NewVersion, StorageError};
use crate::audit::AuditRecord;
use crate::ids::{ResourceId, ResourceType, TenantId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteIndex {
    leases: Leases<Sqlite>,
}

impl SqliteIndex {
    pub async fn open(url: &str, options: &IndexOptions) -> Result<Self, StorageError> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // For a new database only (an existing one keeps its page size): sealed AuditEvents
            // are about 2 KB, and a 4 KB page holds one of them with half of it left empty.
            .page_size(8192)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // SQLite has no statement timeout; a writer waits this long for the write lock.
            .busy_timeout(options.statement_timeout);
        let leases = Leases::open(&connect, options.max_connections, 1, options.connect_timeout, &MIGRATOR).await?;
        Ok(Self { leases })
    }

    async fn begin_write(conn: &mut SqliteConnection) -> Result<Transaction<'_, Sqlite>, StorageError> {
        Ok(sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await?)
    }

    /// SQLite's planner prefers the index that matches the most columns, with or without
    /// statistics: nothing to bootstrap (see the PostgreSQL index).
    async fn note_versions(&self, _versions: usize) {}

    /// SQLite has no data-modifying `WITH`, and a statement costs it no network round trip:
    /// every batch takes the general path.
    async fn commit_creates(
        &self,
        _versions: &[super::VersionCommit],
        _audits: &[AuditRecord],
    ) -> Result<Option<Vec<i64>>, StorageError> {
        Ok(None)
    }

    /// `Index::look_up`: each on its own (a statement here costs no round trip).
    async fn look_up_rows(&self, lookups: &[super::Lookup]) -> Result<Vec<Option<super::VersionRow>>, StorageError> {
        use super::Index as _;
        let mut rows = Vec::with_capacity(lookups.len());
        for l in lookups {
            rows.push(self.current(&l.tenant, l.resource_type, &l.id).await?);
        }
        Ok(rows)
    }

    async fn append_audit_rows(&self, records: &[&AuditRecord]) -> Result<(), StorageError> {
        let mut conn = self.leases.get().await?;
        let mut tx = Self::begin_write(&mut conn).await?;
        insert_audit_rows(&mut tx, records).await?;
        tx.commit().await?;
        conn.done();
        Ok(())
    }

    /// `Index::append_audit_if_current` in one write transaction: no other writer moves a
    /// pointer between the checks and the commit.
    async fn append_audit_rows_if_current(
        &self,
        records: &[&AuditRecord],
        if_current: &[&AuditRecord],
    ) -> Result<Vec<bool>, StorageError> {
        let mut conn = self.leases.get().await?;
        let mut tx = Self::begin_write(&mut conn).await?;
        let mut written = records.to_vec();
        let mut answer = Vec::with_capacity(if_current.len());
        for &record in if_current {
            let current = match (&record.tenant, record.resource_type, &record.resource_id, record.version) {
                (Some(tenant), Some(rt), Some(id), Some(version)) => {
                    let current: Option<i64> = sqlx::query_scalar(sql::SELECT_CURRENT_VERSION)
                        .bind(tenant.as_str())
                        .bind(rt.as_str())
                        .bind(id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    current == Some(i64::from(version.get()))
                }
                _ => false,
            };
            if current {
                written.push(record);
            }
            answer.push(current);
        }
        insert_audit_rows(&mut tx, &written).await?;
        tx.commit().await?;
        conn.done();
        Ok(answer)
    }

    /// One sealing pass. `BEGIN IMMEDIATE` is the sealer lock: no other writer, in this process
    /// or another, commits between reading the heads and writing the entries.
    /// One sealing pass. Its commit is not flushed (`synchronous = NORMAL` on this connection,
    /// for this transaction only): a pass lost to a power cut rolls back whole, inbox deletion
    /// included, and the next pass seals the same records in the same order into the same
    /// tree (rendering is deterministic, Ed25519 signatures too), so a checkpoint already
    /// published stays true. The next flushed commit of any connection makes it durable.
    async fn seal_in_transaction(&self, limit: u32, sealer: &mut dyn LogSealer) -> Result<SealReport, StorageError> {
        let mut conn = self.leases.get().await?;
        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
        // Room in this connection's page cache for every page the pass dirties (about 3 KB a
        // record: the event, its index entries, its tree hashes), so that none is spilled to
        // the WAL and read back before the commit: a sixth of a pass at the default 2 MB.
        let cache_kib = (i64::from(limit) * 4).max(SQLITE_DEFAULT_CACHE_KIB);
        sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{cache_kib}"))).execute(&mut *conn).await?;
        let mut tx = Self::begin_write(&mut conn).await?;
        let rows: Vec<log::DbAuditRecord> =
            sqlx::query_as(TAKE_INBOX.as_str()).bind(i64::from(limit)).fetch_all(&mut *tx).await?;
        let inbox = rows.into_iter().map(log::InboxEntry::try_from).collect::<Result<Vec<_>, _>>()?;
        let last_seq = inbox.last().map(|e| e.seq);
        let mut heads = BTreeMap::new();
        for name in log::logs_to_head(&inbox, sealer) {
            let size: Option<i64> = sqlx::query_scalar(log::LOG_SIZE).bind(&name).fetch_one(&mut *tx).await?;
            let signed: Option<i64> = sqlx::query_scalar(log::CHECKPOINT_SIZE).bind(&name).fetch_one(&mut *tx).await?;
            heads.insert(name, head(size, signed)?);
        }
        let mut loaded = Vec::new();
        for (name, indexes) in sealer.needs(&heads) {
            let hashes = Self::hashes_at(&mut tx, &name, &indexes).await?;
            loaded.extend(hashes.into_iter().map(|(i, hash)| (name.clone(), i, hash)));
        }
        let sealed = sealer.seal(&heads, loaded, inbox)?;
        for chunk in chunks(&sealed.entries) {
            let mut query = sqlx::query(INSERT_ENTRIES.sql(chunk.len()));
            for e in chunk {
                query = query
                    .bind(&e.log)
                    .bind(log::to_i64(e.index)?)
                    .bind(e.recorded.millis())
                    .bind(&e.action)
                    .bind(i64::from(e.outcome))
                    .bind(&e.agent)
                    .bind(&e.patient)
                    .bind(&e.entity)
                    .bind(&e.event);
            }
            query.execute(&mut *tx).await?;
        }
        let runs = log::hash_runs(&sealed.hashes);
        for chunk in chunks(&runs) {
            let mut query = sqlx::query(INSERT_HASH_RUNS.sql(chunk.len()));
            for (name, first, hashes) in chunk {
                query = query.bind(*name).bind(log::to_i64(*first)?).bind(hashes.as_slice());
            }
            query.execute(&mut *tx).await?;
        }
        for c in &sealed.checkpoints {
            sqlx::query(log::INSERT_CHECKPOINT)
                .bind(&c.log)
                .bind(log::to_i64(c.size)?)
                .bind(&c.note)
                .bind(c.created.millis())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(last) = last_seq {
            sqlx::query(DELETE_INBOX).bind(last).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        // Back to flushed commits and the default cache (its pages beyond it are freed) before
        // the connection serves anyone else; on any error before this, the lease is dropped
        // and the connection closed, never reused.
        sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await?;
        sqlx::query(RESET_CACHE).execute(&mut *conn).await?;
        conn.done();
        Ok(SealReport { sealed: sealed.entries.len(), checkpoints: sealed.checkpoints, busy: false })
    }
}

/// A log's head from `MAX(idx)` and `MAX(size)` (NULL when there is none).
pub(super) fn head(last_index: Option<i64>, signed: Option<i64>) -> Result<log::LogHead, StorageError> {
    let size = last_index.map_or(Ok(0), |i| u64::try_from(i).map(|i| i + 1));
    let signed = signed.map_or(Ok(0), u64::try_from);
    match (size, signed) {
        (Ok(size), Ok(checkpoint_size)) => Ok(log::LogHead { size, checkpoint_size }),
        _ => Err(StorageError::Corrupt("a negative log index".into())),
    }
}

static TAKE_INBOX: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {} FROM audit_records ORDER BY seq LIMIT $1", log::INBOX_COLUMNS));
/// SQLite's default page cache: 2,000 KiB per connection.
const SQLITE_DEFAULT_CACHE_KIB: i64 = 2_000;
const RESET_CACHE: &str = "PRAGMA cache_size = -2000";
/// Under `BEGIN IMMEDIATE` nothing was added to the inbox since it was read.
const DELETE_INBOX: &str = "DELETE FROM audit_records WHERE seq <= $1";
static INSERT_ENTRIES: LazyLock<MultiRow> = LazyLock::new(|| MultiRow::new("audit_log", log::ENTRY_COLUMNS, ""));
static INSERT_HASH_RUNS: LazyLock<MultiRow> =
    LazyLock::new(|| MultiRow::new("audit_hash_runs", "tenant, idx, hashes", ""));

/// Multi-row statements: rows are cut into chunks of these sizes, largest first, so that each
/// connection prepares (and caches) a few statements per table however batches vary.
const CHUNKS: [usize; 7] = [64, 16, 8, 4, 3, 2, 1];

/// One `INSERT ... VALUES (...), (...)` per chunk size.
struct MultiRow {
    by_size: Vec<String>,
}

impl MultiRow {
    fn new(table: &str, columns: &str, tail: &str) -> Self {
        let width = columns.split(',').count();
        let by_size = CHUNKS
            .iter()
            .map(|&rows| {
                // Anonymous `?` parameters, bound in order: sqlx looks the name of each numbered
                // one up in a list as long as the statement (quadratic in its size).
                let tuple = format!("({})", vec!["?"; width].join(", "));
                format!("INSERT INTO {table} ({columns}) VALUES {}{tail}", vec![tuple; rows].join(", "))
            })
            .collect();
        Self { by_size }
    }

    fn sql(&'static self, rows: usize) -> &'static str {
        let at = CHUNKS.iter().position(|&size| size == rows).unwrap_or(CHUNKS.len() - 1);
        self.by_size.get(at).map_or("", String::as_str)
    }
}

/// `items` cut into chunks whose sizes are in `CHUNKS`, largest first.
fn chunks<T>(mut items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    for size in CHUNKS {
        while items.len() >= size {
            let (chunk, rest) = items.split_at(size);
            out.push(chunk);
            items = rest;
        }
    }
    out
}

static INSERT_POINTERS: LazyLock<MultiRow> =
    LazyLock::new(|| MultiRow::new("resources", sql::POINTER_COLUMNS, sql::POINTER_RETURNING));
static INSERT_VERSIONS: LazyLock<MultiRow> =
    LazyLock::new(|| MultiRow::new("resource_versions", sql::VERSION_COLUMNS, sql::VERSION_RETURNING));
static INSERT_AUDITS: LazyLock<MultiRow> = LazyLock::new(|| MultiRow::new("audit_records", sql::AUDIT_COLUMNS, ""));

async fn insert_pointer_rows(
    conn: &mut SqliteConnection,
    rows: &[&NewVersion],
) -> Result<Vec<(String, String, String)>, StorageError> {
    let mut inserted = Vec::new();
    for chunk in chunks(rows) {
        let mut query = sqlx::query_as(INSERT_POINTERS.sql(chunk.len()));
        for v in chunk {
            query = query
                .bind(v.tenant.as_str())
                .bind(v.resource_type.as_str())
                .bind(v.id.as_str())
                .bind(i64::from(v.version.get()));
        }
        inserted.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(inserted)
}

async fn insert_version_rows(
    conn: &mut SqliteConnection,
    rows: &[&NewVersion],
) -> Result<Vec<InsertedVersion>, StorageError> {
    let mut inserted = Vec::new();
    for chunk in chunks(rows) {
        let mut query = sqlx::query_as(INSERT_VERSIONS.sql(chunk.len()));
        for v in chunk {
            query = query
                .bind(v.tenant.as_str())
                .bind(v.resource_type.as_str())
                .bind(v.id.as_str())
                .bind(i64::from(v.version.get()))
                .bind(v.method.as_str())
                .bind(v.object_key.as_ref().map(super::ObjectKey::as_str))
                .bind(&v.location)
                .bind(&v.compartment)
                .bind(v.last_updated.millis());
        }
        inserted.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(inserted)
}

async fn insert_audit_rows(conn: &mut SqliteConnection, records: &[&AuditRecord]) -> Result<(), StorageError> {
    for chunk in chunks(records) {
        let mut query = sqlx::query(INSERT_AUDITS.sql(chunk.len()));
        for r in chunk {
            query = query
                .bind(r.recorded.millis())
                .bind(&r.request_id)
                .bind(r.tenant.as_ref().map(TenantId::as_str))
                .bind(&r.agent.subject)
                .bind(&r.agent.issuer)
                .bind(&r.agent.role)
                .bind(&r.agent.jurisdiction)
                .bind(&r.agent.purpose)
                .bind(&r.agent.token_id)
                .bind(&r.source_ip)
                .bind(r.action.as_str())
                .bind(r.resource_type.map(ResourceType::as_str))
                .bind(r.resource_id.as_ref().map(ResourceId::as_str))
                .bind(r.version.map(|v| i64::from(v.get())))
                .bind(&r.compartment)
                .bind(i64::from(r.outcome))
                .bind(&r.detail)
                .bind(&r.policy);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

static INSERT_TOKENS: LazyLock<MultiRow> = LazyLock::new(|| MultiRow::new("search_tokens", sql::TOKEN_COLUMNS, ""));
static INSERT_DATES: LazyLock<MultiRow> = LazyLock::new(|| MultiRow::new("search_dates", sql::DATE_COLUMNS, ""));
static INSERT_NUMBERS: LazyLock<MultiRow> = LazyLock::new(|| MultiRow::new("search_numbers", sql::NUMBER_COLUMNS, ""));
static INSERT_REFS: LazyLock<MultiRow> = LazyLock::new(|| MultiRow::new("search_refs", sql::REF_COLUMNS, ""));
static INSERT_TOKEN_SETS: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "search_token_sets",
        sql::TOKEN_SET_COLUMNS,
        " ON CONFLICT (tenant, resource_type, resource_id) DO UPDATE SET tokens = excluded.tokens",
    )
});
static DELETE_SEARCH: LazyLock<Vec<String>> = LazyLock::new(|| {
    sql::SEARCH_TABLES_BY_RESOURCE
        .iter()
        .map(|table| format!("DELETE FROM {table} WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3"))
        .collect()
});
const SELECT_TOKEN_SET: &str =
    "SELECT tokens FROM search_token_sets WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3";
const DELETE_TOKEN: &str =
    "DELETE FROM search_tokens WHERE token = $1 AND tenant = $2 AND resource_type = $3 AND resource_id = $4";

/// Remove a resource's search rows but its token set (which the caller replaces or removes);
/// its token rows are found through the set.
async fn delete_search_rows(conn: &mut SqliteConnection, tenant: &str, rt: &str, id: &str) -> Result<(), StorageError> {
    for delete in DELETE_SEARCH.iter() {
        sqlx::query(delete.as_str()).bind(tenant).bind(rt).bind(id).execute(&mut *conn).await?;
    }
    let set: Option<Vec<u8>> =
        sqlx::query_scalar(SELECT_TOKEN_SET).bind(tenant).bind(rt).bind(id).fetch_optional(&mut *conn).await?;
    for token in search::tokens_of_set(set.as_deref().unwrap_or_default()) {
        sqlx::query(DELETE_TOKEN).bind(token).bind(tenant).bind(rt).bind(id).execute(&mut *conn).await?;
    }
    Ok(())
}

const DELETE_TOKEN_SET: &str =
    "DELETE FROM search_token_sets WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3";

/// Remove every search row of the resources that ever belonged to `compartment` (an erasure).
async fn delete_compartment_search(
    conn: &mut SqliteConnection,
    tenant: &str,
    compartment: &str,
) -> Result<(), StorageError> {
    let resources: Vec<(String, String)> = sqlx::query_as(super::lifecycle::COMPARTMENT_RESOURCES)
        .bind(tenant)
        .bind(compartment)
        .fetch_all(&mut *conn)
        .await?;
    for (rt, id) in resources {
        delete_search_rows(conn, tenant, &rt, &id).await?;
        sqlx::query(DELETE_TOKEN_SET).bind(tenant).bind(&rt).bind(&id).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Each version's search rows in place of its resource's old ones; the old token rows are
/// found through the resource's token set.
async fn replace_search_rows(
    conn: &mut SqliteConnection,
    rows: &[(&NewVersion, &SearchRows)],
) -> Result<(), StorageError> {
    for (v, _) in rows.iter().filter(|(v, _)| v.expected_current.is_some()) {
        delete_search_rows(conn, v.tenant.as_str(), v.resource_type.as_str(), v.id.as_str()).await?;
    }
    for chunk in chunks(rows) {
        let mut query = sqlx::query(INSERT_TOKEN_SETS.sql(chunk.len()));
        for (v, r) in chunk {
            query =
                query.bind(v.tenant.as_str()).bind(v.resource_type.as_str()).bind(v.id.as_str()).bind(r.token_set());
        }
        query.execute(&mut *conn).await?;
    }
    let tokens: Vec<(&NewVersion, &search::Token)> =
        rows.iter().flat_map(|(v, r)| r.tokens.iter().map(move |t| (*v, t))).collect();
    for chunk in chunks(&tokens) {
        let mut query = sqlx::query(INSERT_TOKENS.sql(chunk.len()));
        for (v, token) in chunk {
            query =
                query.bind(v.tenant.as_str()).bind(v.resource_type.as_str()).bind(v.id.as_str()).bind(token.as_slice());
        }
        query.execute(&mut *conn).await?;
    }
    let dates: Vec<(&NewVersion, &search::DateRow)> =
        rows.iter().flat_map(|(v, r)| r.dates.iter().map(move |d| (*v, d))).collect();
    for chunk in chunks(&dates) {
        let mut query = sqlx::query(INSERT_DATES.sql(chunk.len()));
        for (v, d) in chunk {
            query = query
                .bind(v.tenant.as_str())
                .bind(v.resource_type.as_str())
                .bind(v.id.as_str())
                .bind(d.param.as_ref())
                .bind(d.lo)
                .bind(d.hi);
        }
        query.execute(&mut *conn).await?;
    }
    let numbers: Vec<(&NewVersion, &search::NumberRow)> =
        rows.iter().flat_map(|(v, r)| r.numbers.iter().map(move |n| (*v, n))).collect();
    for chunk in chunks(&numbers) {
        let mut query = sqlx::query(INSERT_NUMBERS.sql(chunk.len()));
        for (v, n) in chunk {
            query = query
                .bind(v.tenant.as_str())
                .bind(v.resource_type.as_str())
                .bind(v.id.as_str())
                .bind(n.param.as_ref())
                .bind(n.value)
                .bind(n.system.as_deref())
                .bind(n.code.as_deref())
                .bind(n.unit.as_deref());
        }
        query.execute(&mut *conn).await?;
    }
    let refs: Vec<(&NewVersion, &search::RefRow)> =
        rows.iter().flat_map(|(v, r)| r.refs.iter().map(move |x| (*v, x))).collect();
    for chunk in chunks(&refs) {
        let mut query = sqlx::query(INSERT_REFS.sql(chunk.len()));
        for (v, x) in chunk {
            query = query
                .bind(v.tenant.as_str())
                .bind(v.resource_type.as_str())
                .bind(v.id.as_str())
                .bind(x.param.as_ref())
                .bind(x.target_type.as_ref())
                .bind(x.target_id.as_ref());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

// One writer at a time: a second committer would only wait for the lock.
super::audit_log::impl_log_reads!(SqliteIndex, SqliteConnection);
super::lifecycle::impl_lifecycle!(SqliteIndex, Sqlite);
super::sql::impl_index!(
    SqliteIndex,
    Sqlite,
    batches_lookups = false,
    sealing_blocks_writers = true,
    dialect = search::Dialect::Sqlite
);
