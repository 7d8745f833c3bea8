//! The PostgreSQL index (production): a connection pool, a server-side statement timeout, and
//! migrations run under sqlx's advisory lock so that replicas starting together migrate once.
//!
//! Write transactions run at READ COMMITTED. A writer moves the current pointer only from the
//! version it expects (`UPDATE ... WHERE current_version = expected`, or an insert that does
//! nothing if the resource exists); a concurrent writer of the same resource waits for the
//! first to commit, then finds the pointer moved and reports a conflict, which is the same
//! outcome SQLite gets from its single writer. Batches take their row locks in (tenant, type, id)
//! order, so two batches never deadlock on each other.

use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sqlx::Arguments as _;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection};
use sqlx::{Postgres, Transaction};

use std::collections::BTreeMap;

use super::audit_log::{self as log, LogSealer, SealReport};
use super::lease::Leases;
use super::search::{DateRow, NumberRow, RefRow, SearchRows};
use super::sql::{self, InsertedVersion};
use super::{IndexOptions, Lookup, NewVersion, ObjectKey, StorageError, VersionCommit, VersionRow};
use crate::audit::AuditRecord;
use crate::crypto::WrappedKey;
use crate::ids::{ResourceId, ResourceType, TenantId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresIndex {
    leases: Leases<Postgres>,
    /// Connections for the statements of reads by id only: batched lookups (`LOOK_UP`) and the
    /// audit records of reads answered from remembered rows (`INSERT_AUDITS_IF_CURRENT`), whose
    /// sessions always use a prepared statement's generic plan. PostgreSQL plans a statement
    /// anew at each execution while a plan for the values at hand looks cheaper than the
    /// generic one, and for an array whose length it sees, it always does: planning `LOOK_UP`
    /// cost more than running it, and doubled the database's CPU per read; planning
    /// `INSERT_AUDITS_IF_CURRENT` cost the database 30-60 µs a read more (BENCHMARKS.md,
    /// "Remembered rows"). Their generic plans are the ones wanted at any length.
    read_leases: Leases<Postgres>,
    statistics: Statistics,
}

/// Connections of the reads' pool: a batch of lookups and a batch of records in flight, one
/// more opening or closing.
const READ_CONNECTIONS: u32 = 3;

/// One pool partition (see `lease`) per thread that talks to the database, at the defaults:
/// two per core, for the HTTP workers (one per core), the main runtime's thread and the audit
/// sealer's.
fn pool_partitions() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_mul(2))
}

impl PostgresIndex {
    pub async fn open(url: &str, options: &IndexOptions) -> Result<Self, StorageError> {
        let statement_timeout = format!("{}ms", options.statement_timeout.as_millis());
        let connect = PgConnectOptions::from_str(url)?
            .application_name("fhirvault")
            .options([("statement_timeout", statement_timeout.as_str())]);
        let leases =
            Leases::open(&connect, options.max_connections, pool_partitions(), options.connect_timeout, &MIGRATOR)
                .await?;
        let generic = connect.options([("plan_cache_mode", "force_generic_plan")]);
        let read_leases = Leases::new(&generic, READ_CONNECTIONS, 1, options.connect_timeout)?;
        Ok(Self { leases, read_leases, statistics: Statistics::default() })
    }

    /// Once per process, a few milliseconds: the batch that crosses the threshold waits for it.
    async fn note_versions(&self, versions: usize) {
        if self.statistics.due(versions) {
            match analyze_if_never_analyzed(&self.leases).await {
                Ok(true) => tracing::info!("index tables analyzed (they had no planner statistics yet)"),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "could not analyze the index tables; autovacuum will"),
            }
        }
    }

    async fn begin_write(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>, StorageError> {
        Ok(sqlx::Connection::begin(conn).await?)
    }

    /// One statement is atomic on its own: no `BEGIN`/`COMMIT` round trips.
    async fn append_audit_rows(&self, records: &[&AuditRecord]) -> Result<(), StorageError> {
        let mut conn = self.leases.get().await?;
        insert_audit_rows(&mut conn, records).await?;
        conn.done();
        Ok(())
    }

    /// `Index::append_audit_if_current` in one statement (`INSERT_AUDITS_IF_CURRENT`) on a
    /// connection of the reads' pool: the checks and the inserts share its snapshot, and it
    /// commits on its own.
    async fn append_audit_rows_if_current(
        &self,
        records: &[&AuditRecord],
        if_current: &[&AuditRecord],
    ) -> Result<Vec<bool>, StorageError> {
        let all: Vec<&AuditRecord> = records.iter().chain(if_current).copied().collect();
        let checked: Vec<bool> = records.iter().map(|_| false).chain(if_current.iter().map(|_| true)).collect();
        let args = arguments(|a| {
            add_audits(a, &all)?;
            a.add(checked)
        })?;
        let mut conn = self.read_leases.get().await?;
        let written: Vec<i64> =
            sqlx::query_scalar_with(INSERT_AUDITS_IF_CURRENT.as_str(), args).fetch_all(&mut *conn).await?;
        conn.done();
        // Positions count from 1, the records without a check first.
        let mut answer = vec![false; if_current.len()];
        for position in written {
            let slot = usize::try_from(position).ok().and_then(|p| p.checked_sub(records.len() + 1));
            if let Some(slot) = slot.and_then(|i| answer.get_mut(i)) {
                *slot = true;
            }
        }
        Ok(answer)
    }
}

impl PostgresIndex {
    /// `Index::look_up`: one statement, on a connection of the reads' pool.
    async fn look_up_rows(&self, lookups: &[Lookup]) -> Result<Vec<Option<VersionRow>>, StorageError> {
        if lookups.is_empty() {
            return Ok(Vec::new());
        }
        let args = arguments(|a| {
            a.add(lookups.iter().map(|l| l.tenant.as_str()).collect::<Vec<_>>())?;
            a.add(lookups.iter().map(|l| l.resource_type.as_str()).collect::<Vec<_>>())?;
            a.add(lookups.iter().map(|l| l.id.as_str()).collect::<Vec<_>>())
        })?;
        let mut conn = self.read_leases.get().await?;
        let rows: Vec<sql::DbVersion> = sqlx::query_as_with(LOOK_UP.as_str(), args).fetch_all(&mut *conn).await?;
        conn.done();
        // At most one row per resource (its current version), however many lookups name it.
        let rows = rows.into_iter().map(VersionRow::try_from).collect::<Result<Vec<_>, _>>()?;
        let found: std::collections::HashMap<(&TenantId, ResourceType, &ResourceId), &VersionRow> =
            rows.iter().map(|r| ((&r.tenant, r.resource_type, &r.id), r)).collect();
        Ok(lookups.iter().map(|l| found.get(&(&l.tenant, l.resource_type, &l.id)).map(|&r| r.clone())).collect())
    }
}

/// The current versions of the resources named by three arrays (tenant, type, id). One
/// primary-key lookup per name: `LATERAL ... LIMIT 1` keeps the planner from turning the
/// names into a hash table probed by a scan of every resource, which a prepared statement's
/// generic plan (ten names assumed) otherwise chose.
static LOOK_UP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT c.* FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k (tenant, resource_type, resource_id) \
         CROSS JOIN LATERAL (SELECT {} FROM resources r JOIN resource_versions v ON v.tenant = r.tenant \
         AND v.resource_type = r.resource_type AND v.resource_id = r.resource_id AND v.version = r.current_version \
         WHERE r.tenant = k.tenant AND r.resource_type = k.resource_type AND r.resource_id = k.resource_id \
         LIMIT 1) c",
        sql::VERSION_FIELDS_OF_V
    )
});

/// Planner statistics for a database that has never had any.
///
/// Until its first `ANALYZE`, PostgreSQL estimates every equality at a default selectivity, and
/// a lookup by (tenant, type, id, version) then costs the same through the unique index as
/// through `resource_versions_by_type` (tenant, type, seq), which it takes for being smaller:
/// every read scanned all versions of its type (0.2 ms at 3,000 rows, growing with the table).
/// Autovacuum analyzes a new table within a minute or so; a fresh deployment's first bulk load
/// happens sooner. So once this process has committed `AFTER_VERSIONS` versions, it checks
/// whether the index tables were ever analyzed, and analyzes them if not (PostgreSQL's own
/// advice after a bulk load). Once is enough: estimates scale with the table from then on.
#[derive(Default)]
struct Statistics {
    versions: AtomicUsize,
    checked: AtomicBool,
}

impl Statistics {
    const AFTER_VERSIONS: usize = 1_000;

    /// Whether the batch of `versions` about to commit is the one that crosses the threshold.
    fn due(&self, versions: usize) -> bool {
        if self.checked.load(Ordering::Relaxed) {
            return false;
        }
        let total = self.versions.fetch_add(versions, Ordering::Relaxed).saturating_add(versions);
        total >= Self::AFTER_VERSIONS && !self.checked.swap(true, Ordering::Relaxed)
    }
}

const NEVER_ANALYZED: &str = "SELECT EXISTS (SELECT 1 FROM pg_stat_user_tables \
     WHERE schemaname = current_schema() AND relname IN ('resources', 'resource_versions', 'search_token_sets', \
     'search_dates', 'search_numbers', 'search_refs') \
     AND last_analyze IS NULL AND last_autoanalyze IS NULL)";

async fn analyze_if_never_analyzed(leases: &Leases<Postgres>) -> Result<bool, StorageError> {
    let mut conn = leases.get().await?;
    let never: bool = sqlx::query_scalar(NEVER_ANALYZED).fetch_one(&mut *conn).await?;
    if never {
        sqlx::raw_sql(
            "ANALYZE resources, resource_versions, search_token_sets, search_dates, search_numbers, search_refs",
        )
        .execute(&mut *conn)
        .await?;
    }
    conn.done();
    Ok(never)
}

// Bulk inserts bind one array per column and `UNNEST` them: one prepared statement and one round
// trip for any number of rows, taken in array order (the caller's lock order).

const UNNEST_POINTERS: &str = "UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])";
const UNNEST_VERSIONS: &str = "UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::bigint[])";

static INSERT_POINTERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO resources ({}) SELECT * FROM {UNNEST_POINTERS}{}",
        sql::POINTER_COLUMNS,
        sql::POINTER_RETURNING
    )
});
static INSERT_VERSIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO resource_versions ({}) SELECT * FROM {UNNEST_VERSIONS}{}",
        sql::VERSION_COLUMNS,
        sql::VERSION_RETURNING
    )
});
static INSERT_AUDITS: LazyLock<String> =
    LazyLock::new(|| format!("INSERT INTO audit_records ({}) SELECT * FROM {}", sql::AUDIT_COLUMNS, unnest_audits(1)));

/// Audit records, those marked (`checked`, the last array) only while the version they name is
/// the resource's current one, in one statement; answers the positions (from 1) of the marked
/// records it wrote. Its parts share one snapshot: a version that became current after the
/// statement began counts as not current yet.
///
/// The check is a scalar subquery, one primary-key probe per record: written as `EXISTS`, the
/// generic plan hashed the whole `resources` table instead (a "hashed SubPlan" over a
/// sequential scan), which cost the database more than the lookup it replaces.
static INSERT_AUDITS_IF_CURRENT: LazyLock<String> = LazyLock::new(|| {
    let columns = sql::AUDIT_COLUMNS;
    let arrays = unnest_audits(1);
    let arrays = arrays.strip_suffix(')').unwrap_or(&arrays);
    format!(
        "WITH k AS (SELECT * FROM {arrays}, $19::bool[]) WITH ORDINALITY AS u ({columns}, checked, position)), \
         ok AS (SELECT * FROM k WHERE NOT k.checked OR k.version = (SELECT r.current_version FROM resources r \
         WHERE r.tenant = k.tenant AND r.resource_type = k.resource_type AND r.resource_id = k.resource_id)), \
         written AS (INSERT INTO audit_records ({columns}) SELECT {columns} FROM ok ORDER BY position) \
         SELECT position FROM ok WHERE checked"
    )
});

/// `UNNEST` of the audit columns, numbered from `$first`.
fn unnest_audits(first: usize) -> String {
    const TYPES: [&str; 18] = [
        "bigint", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "text",
        "bigint", "text", "bigint", "text", "text",
    ];
    let columns: Vec<String> = TYPES.iter().zip(first..).map(|(t, n)| format!("${n}::{t}[]")).collect();
    format!("UNNEST({})", columns.join(", "))
}

/// The search rows' inserts, as data-modifying `WITH` items (`dates AS (...), ...`), their
/// arrays numbered from `$first`: dates (6 arrays), numbers (8), references (6), token sets (4,
/// each set's tokens concatenated, split into its array by `fhirvault_token_array`, migration
/// 0004). `token_sets` ends the token sets' insert (`ON CONFLICT ...` for updates).
fn insert_search(first: usize, token_sets: &str) -> String {
    let tables = [
        ("search_dates", sql::DATE_COLUMNS, &["text", "text", "text", "text", "bigint", "bigint"][..], "*", ""),
        (
            "search_numbers",
            sql::NUMBER_COLUMNS,
            &["text", "text", "text", "text", "float8", "text", "text", "text"][..],
            "*",
            "",
        ),
        ("search_refs", sql::REF_COLUMNS, &["text", "text", "text", "text", "text", "text"][..], "*", ""),
        (
            "search_token_sets",
            sql::TOKEN_SET_COLUMNS,
            &["text", "text", "text", "bytea"][..],
            "c1, c2, c3, fhirvault_token_array(c4)",
            token_sets,
        ),
    ];
    let mut n = first;
    let mut items = Vec::new();
    for (table, columns, types, select, tail) in tables {
        let arrays: Vec<String> = types
            .iter()
            .map(|t| {
                n += 1;
                format!("${}::{t}[]", n - 1)
            })
            .collect();
        let names: Vec<String> = (1..=types.len()).map(|i| format!("c{i}")).collect();
        items.push(format!(
            "{table} AS (INSERT INTO {table} ({columns}) SELECT {select} FROM UNNEST({}) AS u({}){tail})",
            arrays.join(", "),
            names.join(", ")
        ));
    }
    items.join(", ")
}

/// Remove the search rows of the resources that ever belonged to a compartment ($1 tenant,
/// $2 compartment): one statement per table.
static DELETE_COMPARTMENT_SEARCH: LazyLock<Vec<String>> = LazyLock::new(|| {
    sql::SEARCH_TABLES_BY_RESOURCE
        .iter()
        .chain(std::iter::once(&"search_token_sets"))
        .map(|table| {
            format!(
                "DELETE FROM {table} x USING (SELECT DISTINCT resource_type, resource_id FROM resource_versions \
                 WHERE tenant = $1 AND compartment = $2) c \
                 WHERE x.tenant = $1 AND x.resource_type = c.resource_type AND x.resource_id = c.resource_id"
            )
        })
        .collect()
});

/// Remove every search row of the resources that ever belonged to `compartment` (an erasure).
async fn delete_compartment_search(
    conn: &mut PgConnection,
    tenant: &str,
    compartment: &str,
) -> Result<(), StorageError> {
    for delete in DELETE_COMPARTMENT_SEARCH.iter() {
        sqlx::query(delete.as_str()).bind(tenant).bind(compartment).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Replace the search rows of updated resources: delete the old rows of the resources $1-$3
/// (tenant, type, id arrays) and insert the new ones from $4; a resource's new token set
/// replaces its old one. One statement, whatever the batch.
static REPLACE_SEARCH: LazyLock<String> = LazyLock::new(|| {
    const UPDATED: &str = "UNNEST($1::text[], $2::text[], $3::text[]) AS u(tenant, resource_type, resource_id)";
    let deletes: Vec<String> = sql::SEARCH_TABLES_BY_RESOURCE
        .iter()
        .map(|table| {
            format!(
                "deleted_{table} AS (DELETE FROM {table} x USING {UPDATED} WHERE x.tenant = u.tenant \
                 AND x.resource_type = u.resource_type AND x.resource_id = u.resource_id)"
            )
        })
        .collect();
    let upsert = " ON CONFLICT (tenant, resource_type, resource_id) DO UPDATE SET tokens = EXCLUDED.tokens";
    format!("WITH {}, {} SELECT 1", deletes.join(", "), insert_search(4, upsert))
});

/// A batch of new resources in one autocommitted statement: their compartment keys, pointers,
/// versions, search rows and audit records (and the batch's standalone audit records). Plain
/// inserts, no `ON CONFLICT`: any clash (an id or key already taken) fails the whole statement,
/// and nothing of it is written. Parameters: keys $1-$5, version rows $6-$14 (the pointer takes
/// $6-$9), audit records $15-$32, search rows from $33.
static COMMIT_CREATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {search}, keys AS (INSERT INTO tenant_keys (tenant, key_ref, kek_version, wrapped, created_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::bigint[])), \
         pointers AS (INSERT INTO resources ({pointers}) \
         SELECT * FROM UNNEST($6::text[], $7::text[], $8::text[], $9::bigint[])), \
         audits AS (INSERT INTO audit_records ({audits}) SELECT * FROM {unnest_audits}) \
         INSERT INTO resource_versions ({versions}) SELECT * FROM UNNEST($6::text[], $7::text[], $8::text[], \
         $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[]){returning}",
        search = insert_search(33, ""),
        pointers = sql::POINTER_COLUMNS,
        audits = sql::AUDIT_COLUMNS,
        unnest_audits = unnest_audits(15),
        versions = sql::VERSION_COLUMNS,
        returning = sql::VERSION_RETURNING,
    )
});

type Encoded = Result<(), BoxDynError>;

/// Tenant, type, id, version: a pointer row, and the first four columns of a version row.
fn add_ids(args: &mut PgArguments, rows: &[&NewVersion]) -> Encoded {
    args.add(rows.iter().map(|v| v.tenant.as_str()).collect::<Vec<_>>())?;
    args.add(rows.iter().map(|v| v.resource_type.as_str()).collect::<Vec<_>>())?;
    args.add(rows.iter().map(|v| v.id.as_str()).collect::<Vec<_>>())?;
    args.add(rows.iter().map(|v| i64::from(v.version.get())).collect::<Vec<_>>())
}

/// The rest of a version row: method, object key, location, compartment, last updated.
fn add_version_tail(args: &mut PgArguments, rows: &[&NewVersion]) -> Encoded {
    args.add(rows.iter().map(|v| v.method.as_str()).collect::<Vec<_>>())?;
    args.add(rows.iter().map(|v| v.object_key.as_ref().map(ObjectKey::as_str)).collect::<Vec<_>>())?;
    args.add(rows.iter().map(|v| v.location.as_str()).collect::<Vec<_>>())?;
    args.add(rows.iter().map(|v| v.compartment.as_str()).collect::<Vec<_>>())?;
    args.add(rows.iter().map(|v| v.last_updated.millis()).collect::<Vec<_>>())
}

fn add_audits(args: &mut PgArguments, records: &[&AuditRecord]) -> Encoded {
    let text = |f: fn(&AuditRecord) -> Option<&str>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    args.add(records.iter().map(|r| r.recorded.millis()).collect::<Vec<_>>())?;
    args.add(records.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>())?;
    args.add(text(|r| r.tenant.as_ref().map(TenantId::as_str)))?;
    args.add(text(|r| r.agent.subject.as_deref()))?;
    args.add(text(|r| r.agent.issuer.as_deref()))?;
    args.add(text(|r| r.agent.role.as_deref()))?;
    args.add(text(|r| r.agent.jurisdiction.as_deref()))?;
    args.add(text(|r| r.agent.purpose.as_deref()))?;
    args.add(text(|r| r.agent.token_id.as_deref()))?;
    args.add(text(|r| r.source_ip.as_deref()))?;
    args.add(records.iter().map(|r| r.action.as_str()).collect::<Vec<_>>())?;
    args.add(text(|r| r.resource_type.map(ResourceType::as_str)))?;
    args.add(text(|r| r.resource_id.as_ref().map(ResourceId::as_str)))?;
    args.add(records.iter().map(|r| r.version.map(|v| i64::from(v.get()))).collect::<Vec<_>>())?;
    args.add(text(|r| r.compartment.as_deref()))?;
    args.add(records.iter().map(|r| i64::from(r.outcome)).collect::<Vec<_>>())?;
    args.add(text(|r| r.detail.as_deref()))?;
    args.add(text(|r| r.policy.as_deref()))
}

/// The new compartment keys of a batch: tenant, key name, KEK version, wrapped key, created at.
fn add_keys(args: &mut PgArguments, versions: &[VersionCommit]) -> Encoded {
    let keys: Vec<(&VersionCommit, &WrappedKey)> =
        versions.iter().filter_map(|c| c.new_key.as_ref().map(|k| (c, k))).collect();
    args.add(keys.iter().map(|(c, _)| c.version.tenant.as_str()).collect::<Vec<_>>())?;
    args.add(keys.iter().map(|(c, _)| c.version.compartment.as_str()).collect::<Vec<_>>())?;
    args.add(keys.iter().map(|(_, k)| i64::from(k.kek_version)).collect::<Vec<_>>())?;
    args.add(keys.iter().map(|(_, k)| k.bytes.as_slice()).collect::<Vec<_>>())?;
    args.add(keys.iter().map(|(c, _)| c.audit.recorded.millis()).collect::<Vec<_>>())
}

/// The search rows of `rows` as 24 arrays (see `insert_search`).
fn add_search(args: &mut PgArguments, rows: &[(&NewVersion, &SearchRows)]) -> Encoded {
    fn ids<'a, T>(rows: &[(&'a NewVersion, &'a T)], args: &mut PgArguments) -> Encoded {
        args.add(rows.iter().map(|(v, _)| v.tenant.as_str()).collect::<Vec<_>>())?;
        args.add(rows.iter().map(|(v, _)| v.resource_type.as_str()).collect::<Vec<_>>())?;
        args.add(rows.iter().map(|(v, _)| v.id.as_str()).collect::<Vec<_>>())
    }
    let dates: Vec<(&NewVersion, &DateRow)> =
        rows.iter().flat_map(|(v, r)| r.dates.iter().map(move |d| (*v, d))).collect();
    ids(&dates, args)?;
    args.add(dates.iter().map(|(_, d)| d.param.as_ref()).collect::<Vec<_>>())?;
    args.add(dates.iter().map(|(_, d)| d.lo).collect::<Vec<_>>())?;
    args.add(dates.iter().map(|(_, d)| d.hi).collect::<Vec<_>>())?;
    let numbers: Vec<(&NewVersion, &NumberRow)> =
        rows.iter().flat_map(|(v, r)| r.numbers.iter().map(move |n| (*v, n))).collect();
    ids(&numbers, args)?;
    args.add(numbers.iter().map(|(_, n)| n.param.as_ref()).collect::<Vec<_>>())?;
    args.add(numbers.iter().map(|(_, n)| n.value).collect::<Vec<_>>())?;
    args.add(numbers.iter().map(|(_, n)| n.system.as_deref()).collect::<Vec<_>>())?;
    args.add(numbers.iter().map(|(_, n)| n.code.as_deref()).collect::<Vec<_>>())?;
    args.add(numbers.iter().map(|(_, n)| n.unit.as_deref()).collect::<Vec<_>>())?;
    let refs: Vec<(&NewVersion, &RefRow)> =
        rows.iter().flat_map(|(v, r)| r.refs.iter().map(move |x| (*v, x))).collect();
    ids(&refs, args)?;
    args.add(refs.iter().map(|(_, x)| x.param.as_ref()).collect::<Vec<_>>())?;
    args.add(refs.iter().map(|(_, x)| x.target_type.as_ref()).collect::<Vec<_>>())?;
    args.add(refs.iter().map(|(_, x)| x.target_id.as_ref()).collect::<Vec<_>>())?;
    ids(rows, args)?;
    args.add(rows.iter().map(|(_, r)| r.token_set()).collect::<Vec<_>>())
}

/// Encode a statement's arguments; a value that does not encode is `sqlx::Error::Encode`.
fn arguments(add: impl FnOnce(&mut PgArguments) -> Encoded) -> Result<PgArguments, sqlx::Error> {
    let mut args = PgArguments::default();
    add(&mut args).map_err(sqlx::Error::Encode)?;
    Ok(args)
}

async fn insert_pointer_rows(
    conn: &mut PgConnection,
    rows: &[&NewVersion],
) -> Result<Vec<(String, String, String)>, StorageError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let args = arguments(|a| add_ids(a, rows))?;
    Ok(sqlx::query_as_with(INSERT_POINTERS.as_str(), args).fetch_all(conn).await?)
}

async fn insert_version_rows(
    conn: &mut PgConnection,
    rows: &[&NewVersion],
) -> Result<Vec<InsertedVersion>, StorageError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let args = arguments(|a| {
        add_ids(a, rows)?;
        add_version_tail(a, rows)
    })?;
    Ok(sqlx::query_as_with(INSERT_VERSIONS.as_str(), args).fetch_all(conn).await?)
}

async fn insert_audit_rows(conn: &mut PgConnection, records: &[&AuditRecord]) -> Result<(), StorageError> {
    if records.is_empty() {
        return Ok(());
    }
    let args = arguments(|a| add_audits(a, records))?;
    sqlx::query_with(INSERT_AUDITS.as_str(), args).execute(conn).await?;
    Ok(())
}

/// Each version's search rows in place of its resource's old ones, in one statement.
async fn replace_search_rows(conn: &mut PgConnection, rows: &[(&NewVersion, &SearchRows)]) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let replaced: Vec<(&NewVersion, &SearchRows)> =
        rows.iter().filter(|(v, _)| v.expected_current.is_some()).copied().collect();
    let args = arguments(|a| {
        a.add(replaced.iter().map(|(v, _)| v.tenant.as_str()).collect::<Vec<_>>())?;
        a.add(replaced.iter().map(|(v, _)| v.resource_type.as_str()).collect::<Vec<_>>())?;
        a.add(replaced.iter().map(|(v, _)| v.id.as_str()).collect::<Vec<_>>())?;
        add_search(a, rows)
    })?;
    sqlx::query_with(REPLACE_SEARCH.as_str(), args).execute(conn).await?;
    Ok(())
}

impl PostgresIndex {
    /// A batch that only creates resources, in one round trip instead of six (`BEGIN`, keys,
    /// pointers, versions, audit records, `COMMIT`). `Ok(None)` when the batch does not qualify
    /// (it moves an existing pointer) or when the statement hit a unique constraint (an id
    /// taken, by this batch or another writer): nothing was written, and the general path then
    /// settles each version on its own.
    async fn commit_creates(
        &self,
        versions: &[VersionCommit],
        audits: &[AuditRecord],
    ) -> Result<Option<Vec<i64>>, StorageError> {
        if versions.iter().any(|c| c.version.expected_current.is_some()) {
            return Ok(None);
        }
        let rows: Vec<&NewVersion> = versions.iter().map(|c| &c.version).collect();
        let records: Vec<&AuditRecord> = versions.iter().map(|c| &c.audit).chain(audits).collect();
        let search: Vec<(&NewVersion, &SearchRows)> =
            versions.iter().filter_map(|c| c.search.as_ref().map(|s| (&c.version, s))).collect();
        let args = arguments(|a| {
            add_keys(a, versions)?;
            add_ids(a, &rows)?;
            add_version_tail(a, &rows)?;
            add_audits(a, &records)?;
            add_search(a, &search)
        })?;
        let mut conn = self.leases.get().await?;
        let inserted: Vec<InsertedVersion> =
            match sqlx::query_as_with(COMMIT_CREATES.as_str(), args).fetch_all(&mut *conn).await {
                Ok(inserted) => inserted,
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    // The statement failed whole; the session is fine.
                    conn.done();
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            };
        conn.done();
        sql::seqs_in_order(&rows, inserted).map(Some)
    }
}

impl PostgresIndex {
    /// One sealing pass, under a transaction-scoped advisory lock: a second sealer (another
    /// replica) finds it taken and skips this pass.
    async fn seal_in_transaction(&self, limit: u32, sealer: &mut dyn LogSealer) -> Result<SealReport, StorageError> {
        let mut conn = self.leases.get().await?;
        let mut tx = Self::begin_write(&mut conn).await?;
        let locked: bool = sqlx::query_scalar(TRY_SEALER_LOCK).bind(SEALER_LOCK).fetch_one(&mut *tx).await?;
        if !locked {
            tx.rollback().await?;
            conn.done();
            return Ok(SealReport { busy: true, ..SealReport::default() });
        }
        let mut rows: Vec<log::DbAuditRecord> =
            sqlx::query_as(TAKE_INBOX.as_str()).bind(i64::from(limit)).fetch_all(&mut *tx).await?;
        rows.sort_unstable_by_key(log::DbAuditRecord::seq);
        let inbox = rows.into_iter().map(log::InboxEntry::try_from).collect::<Result<Vec<_>, _>>()?;
        let mut heads = BTreeMap::new();
        for name in log::logs_to_head(&inbox, sealer) {
            let size: Option<i64> = sqlx::query_scalar(log::LOG_SIZE).bind(&name).fetch_one(&mut *tx).await?;
            let signed: Option<i64> = sqlx::query_scalar(log::CHECKPOINT_SIZE).bind(&name).fetch_one(&mut *tx).await?;
            heads.insert(name, super::sqlite::head(size, signed)?);
        }
        let mut loaded = Vec::new();
        for (name, indexes) in sealer.needs(&heads) {
            let hashes = Self::hashes_at(&mut tx, &name, &indexes).await?;
            loaded.extend(hashes.into_iter().map(|(i, hash)| (name.clone(), i, hash)));
        }
        let sealed = sealer.seal(&heads, loaded, inbox)?;
        if !sealed.entries.is_empty() {
            let mut rows = CopyRows::with_capacity(sealed.entries.iter().map(|e| e.event.len() + 160).sum());
            for e in &sealed.entries {
                rows.row(9);
                rows.text(Some(&e.log))?;
                rows.int8(log::to_i64(e.index)?);
                rows.int8(e.recorded.millis());
                rows.text(Some(&e.action))?;
                rows.int8(i64::from(e.outcome));
                rows.text(e.agent.as_deref())?;
                rows.text(e.patient.as_deref())?;
                rows.text(e.entity.as_deref())?;
                rows.bytes(&e.event)?;
            }
            copy_in(&mut tx, &COPY_ENTRIES, rows).await?;
        }
        let runs = log::hash_runs(&sealed.hashes);
        if !runs.is_empty() {
            let mut rows = CopyRows::with_capacity(runs.iter().map(|(_, _, hashes)| hashes.len() + 48).sum());
            for (name, first, hashes) in &runs {
                rows.row(3);
                rows.text(Some(name))?;
                rows.int8(log::to_i64(*first)?);
                rows.bytes(hashes)?;
            }
            copy_in(&mut tx, COPY_HASH_RUNS, rows).await?;
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
        tx.commit().await?;
        conn.done();
        Ok(SealReport { sealed: sealed.entries.len(), checkpoints: sealed.checkpoints, busy: false })
    }
}

/// The sealer's advisory lock key ("fhirvaul" in ASCII).
const SEALER_LOCK: i64 = 0x6668_6972_7661_756c;
/// The lock, and the flag the inbox's delete trigger wants (for this transaction only).
const TRY_SEALER_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock($1) AND set_config('fhirvault.sealer', 'on', true) = 'on'";
/// The first records of the inbox, taken out of it (the transaction puts them back if it does
/// not commit). One statement and one snapshot: a record with a smaller sequence number that
/// commits meanwhile is neither read nor deleted, and waits for the next pass. `RETURNING`
/// keeps no order; the caller sorts.
static TAKE_INBOX: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM audit_records WHERE seq IN (SELECT seq FROM audit_records ORDER BY seq LIMIT $1) RETURNING {}",
        log::INBOX_COLUMNS
    )
});
/// Sealed entries and runs of tree hashes go in with binary COPY: a pass writes a few thousand
/// rows of about 2 KB, and COPY streams them into the table without the arrays that a single
/// INSERT of them needs (built, sent, parsed and unnested: about 7% of a pass).
static COPY_ENTRIES: LazyLock<String> =
    LazyLock::new(|| format!("COPY audit_log ({}) FROM STDIN WITH (FORMAT binary)", log::ENTRY_COLUMNS));
const COPY_HASH_RUNS: &str = "COPY audit_hash_runs (tenant, idx, hashes) FROM STDIN WITH (FORMAT binary)";

async fn copy_in(tx: &mut Transaction<'_, Postgres>, statement: &str, rows: CopyRows) -> Result<(), StorageError> {
    let mut copy = tx.copy_in_raw(statement).await?;
    copy.send(rows.finish()).await?;
    copy.finish().await?;
    Ok(())
}

/// Rows in PostgreSQL's binary COPY format (the `COPY` page of its manual, "Binary Format"):
/// a signature and two zero words; per row, its field count (16 bits), then per field its
/// length (32 bits, -1 for NULL) and its value in the type's binary form (text and bytea as
/// they are, bigint as 8 bytes big-endian); `-1` (16 bits) after the last row. All integers are
/// big-endian.
struct CopyRows {
    buf: Vec<u8>,
}

impl CopyRows {
    const SIGNATURE: &'static [u8; 11] = b"PGCOPY\n\xff\r\n\0";

    fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + 21);
        buf.extend_from_slice(Self::SIGNATURE);
        buf.extend_from_slice(&0_i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0_i32.to_be_bytes()); // no header extension
        Self { buf }
    }

    fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn bytes(&mut self, value: &[u8]) -> Result<(), StorageError> {
        let len = i32::try_from(value.len()).map_err(|_| StorageError::Corrupt("a value beyond 2 GB".into()))?;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        Ok(())
    }

    fn text(&mut self, value: Option<&str>) -> Result<(), StorageError> {
        match value {
            Some(text) => self.bytes(text.as_bytes()),
            None => {
                self.buf.extend_from_slice(&(-1_i32).to_be_bytes());
                Ok(())
            }
        }
    }

    fn int8(&mut self, value: i64) {
        self.buf.extend_from_slice(&8_i32.to_be_bytes());
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1_i16).to_be_bytes());
        self.buf
    }
}

super::audit_log::impl_log_reads!(PostgresIndex, PgConnection);
super::lifecycle::impl_lifecycle!(PostgresIndex, Postgres);
super::sql::impl_index!(
    PostgresIndex,
    Postgres,
    batches_lookups = true,
    sealing_blocks_writers = false,
    dialect = super::search::Dialect::Postgres
);
