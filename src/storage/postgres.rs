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

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::sql::{self, InsertedVersion};
use super::{IndexOptions, NewVersion, ObjectKey, StorageError};
use crate::audit::AuditRecord;
use crate::ids::{ResourceId, ResourceType, TenantId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresIndex {
    pool: PgPool,
}

impl PostgresIndex {
    pub async fn open(url: &str, options: &IndexOptions) -> Result<Self, StorageError> {
        let statement_timeout = format!("{}ms", options.statement_timeout.as_millis());
        let connect = PgConnectOptions::from_str(url)?
            .application_name("fhirvault")
            .options([("statement_timeout", statement_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StorageError> {
        Ok(self.pool.begin().await?)
    }

    /// One statement is atomic on its own: no `BEGIN`/`COMMIT` round trips.
    async fn append_audit_rows(&self, records: &[&AuditRecord]) -> Result<(), StorageError> {
        let mut conn = self.pool.acquire().await?;
        insert_audit_rows(&mut conn, records).await
    }
}

// Bulk inserts bind one array per column and `UNNEST` them: one prepared statement and one round
// trip for any number of rows, taken in array order (the caller's lock order).

static INSERT_POINTERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO resources ({}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]){}",
        sql::POINTER_COLUMNS,
        sql::POINTER_RETURNING
    )
});
static INSERT_VERSIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO resource_versions ({}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], \
         $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[]){}",
        sql::VERSION_COLUMNS,
        sql::VERSION_RETURNING
    )
});
static INSERT_AUDITS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO audit_records ({}) SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
         $13::text[], $14::bigint[], $15::text[], $16::bigint[], $17::text[], $18::text[])",
        sql::AUDIT_COLUMNS
    )
});

async fn insert_pointer_rows(
    conn: &mut PgConnection,
    rows: &[&NewVersion],
) -> Result<Vec<(String, String, String)>, StorageError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(INSERT_POINTERS.as_str())
        .bind(rows.iter().map(|v| v.tenant.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.resource_type.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| i64::from(v.version.get())).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?)
}

async fn insert_version_rows(
    conn: &mut PgConnection,
    rows: &[&NewVersion],
) -> Result<Vec<InsertedVersion>, StorageError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(INSERT_VERSIONS.as_str())
        .bind(rows.iter().map(|v| v.tenant.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.resource_type.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| i64::from(v.version.get())).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.method.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.object_key.as_ref().map(ObjectKey::as_str)).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.location.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.compartment.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|v| v.last_updated.millis()).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?)
}

async fn insert_audit_rows(conn: &mut PgConnection, records: &[&AuditRecord]) -> Result<(), StorageError> {
    if records.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&AuditRecord) -> Option<&str>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    sqlx::query(INSERT_AUDITS.as_str())
        .bind(records.iter().map(|r| r.recorded.millis()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>())
        .bind(text(|r| r.tenant.as_ref().map(TenantId::as_str)))
        .bind(text(|r| r.agent.subject.as_deref()))
        .bind(text(|r| r.agent.issuer.as_deref()))
        .bind(text(|r| r.agent.role.as_deref()))
        .bind(text(|r| r.agent.jurisdiction.as_deref()))
        .bind(text(|r| r.agent.purpose.as_deref()))
        .bind(text(|r| r.agent.token_id.as_deref()))
        .bind(text(|r| r.source_ip.as_deref()))
        .bind(records.iter().map(|r| r.action.as_str()).collect::<Vec<_>>())
        .bind(text(|r| r.resource_type.map(ResourceType::as_str)))
        .bind(text(|r| r.resource_id.as_ref().map(ResourceId::as_str)))
        .bind(records.iter().map(|r| r.version.map(|v| i64::from(v.get()))).collect::<Vec<_>>())
        .bind(text(|r| r.compartment.as_deref()))
        .bind(records.iter().map(|r| i64::from(r.outcome)).collect::<Vec<_>>())
        .bind(text(|r| r.detail.as_deref()))
        .bind(text(|r| r.policy.as_deref()))
        .execute(conn)
        .await?;
    Ok(())
}

// Two committers: one flushes its batch while the other fills the next.
super::sql::impl_index!(PostgresIndex, Postgres, commit_workers = 2);
