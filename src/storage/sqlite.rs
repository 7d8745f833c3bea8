//! The SQLite index (embedded default): WAL journal, `synchronous = FULL`, one writer at a time
//! (`BEGIN IMMEDIATE`, so a read-then-write transaction never fails on a lock upgrade).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

use super::{HistoryQuery, Index, Method, NewVersion, ObjectKey, StorageError, VersionRow, parse_row_ids};
use crate::audit::AuditRecord;
use crate::crypto::WrappedKey;
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
use crate::time::Timestamp;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteIndex {
    pool: SqlitePool,
}

#[derive(sqlx::FromRow)]
struct DbVersion {
    seq: i64,
    tenant: String,
    resource_type: String,
    resource_id: String,
    version: i64,
    method: String,
    object_key: Option<String>,
    location: String,
    compartment: String,
    last_updated: i64,
}

impl TryFrom<DbVersion> for VersionRow {
    type Error = StorageError;

    fn try_from(row: DbVersion) -> Result<Self, StorageError> {
        let (tenant, resource_type, id, version) =
            parse_row_ids(&row.tenant, &row.resource_type, &row.resource_id, row.version)?;
        Ok(Self {
            seq: row.seq,
            tenant,
            resource_type,
            id,
            version,
            method: Method::parse(&row.method)?,
            object_key: row.object_key.map(ObjectKey::from_index),
            location: row.location,
            compartment: row.compartment,
            last_updated: Timestamp::from_millis(row.last_updated),
        })
    }
}

const VERSION_COLUMNS: &str =
    "seq, tenant, resource_type, resource_id, version, method, object_key, location, compartment, last_updated";

impl SqliteIndex {
    pub async fn open(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StorageError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

async fn insert_audit(tx: &mut Transaction<'static, Sqlite>, r: &AuditRecord) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO audit_records (recorded_at, request_id, tenant, agent_subject, agent_issuer, agent_role, \
         agent_jurisdiction, purpose, token_id, source_ip, action, resource_type, resource_id, version, \
         compartment, outcome, detail, policy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
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
    .bind(&r.policy)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Index for SqliteIndex {
    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn current(
        &self,
        tenant: &TenantId,
        rt: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<VersionRow>, StorageError> {
        let row: Option<DbVersion> = sqlx::query_as(
            "SELECT v.seq, v.tenant, v.resource_type, v.resource_id, v.version, v.method, v.object_key, \
             v.location, v.compartment, v.last_updated \
             FROM resources r JOIN resource_versions v ON v.tenant = r.tenant \
             AND v.resource_type = r.resource_type AND v.resource_id = r.resource_id AND v.version = r.current_version \
             WHERE r.tenant = ? AND r.resource_type = ? AND r.resource_id = ?",
        )
        .bind(tenant.as_str())
        .bind(rt.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(VersionRow::try_from).transpose()
    }

    async fn version(
        &self,
        tenant: &TenantId,
        rt: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<VersionRow>, StorageError> {
        let row: Option<DbVersion> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM resource_versions \
             WHERE tenant = ? AND resource_type = ? AND resource_id = ? AND version = ?"
        )))
        .bind(tenant.as_str())
        .bind(rt.as_str())
        .bind(id.as_str())
        .bind(i64::from(version.get()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(VersionRow::try_from).transpose()
    }

    async fn commit_version(&self, v: &NewVersion, audit: &AuditRecord) -> Result<i64, StorageError> {
        let mut tx = self.begin_write().await?;
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT current_version FROM resources WHERE tenant = ? AND resource_type = ? AND resource_id = ?",
        )
        .bind(v.tenant.as_str())
        .bind(v.resource_type.as_str())
        .bind(v.id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let current = current
            .map(|c| u32::try_from(c).ok().and_then(|c| VersionId::from_u32(c).ok()))
            .map(|c| c.ok_or_else(|| StorageError::Corrupt("current version".into())))
            .transpose()?;
        if current != v.expected_current {
            return Err(StorageError::Conflict { current });
        }
        let inserted = sqlx::query_scalar(
            "INSERT INTO resource_versions (tenant, resource_type, resource_id, version, method, object_key, \
             location, compartment, last_updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        )
        .bind(v.tenant.as_str())
        .bind(v.resource_type.as_str())
        .bind(v.id.as_str())
        .bind(i64::from(v.version.get()))
        .bind(v.method.as_str())
        .bind(v.object_key.as_ref().map(ObjectKey::as_str))
        .bind(&v.location)
        .bind(&v.compartment)
        .bind(v.last_updated.millis())
        .fetch_one(&mut *tx)
        .await;
        let seq: i64 = match inserted {
            Ok(seq) => seq,
            Err(e) if is_unique_violation(&e) => return Err(StorageError::Conflict { current }),
            Err(e) => return Err(e.into()),
        };
        sqlx::query(
            "INSERT INTO resources (tenant, resource_type, resource_id, current_version) VALUES (?, ?, ?, ?) \
             ON CONFLICT (tenant, resource_type, resource_id) DO UPDATE SET current_version = excluded.current_version",
        )
        .bind(v.tenant.as_str())
        .bind(v.resource_type.as_str())
        .bind(v.id.as_str())
        .bind(i64::from(v.version.get()))
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn history(&self, q: &HistoryQuery) -> Result<Vec<VersionRow>, StorageError> {
        let sql = if q.id.is_some() {
            format!(
                "SELECT {VERSION_COLUMNS} FROM resource_versions WHERE tenant = ? AND resource_type = ? \
                 AND resource_id = ? AND last_updated >= ? AND seq < ? ORDER BY seq DESC LIMIT ?"
            )
        } else {
            format!(
                "SELECT {VERSION_COLUMNS} FROM resource_versions WHERE tenant = ? AND resource_type = ? \
                 AND last_updated >= ? AND seq < ? ORDER BY seq DESC LIMIT ?"
            )
        };
        let mut query = sqlx::query_as::<_, DbVersion>(sqlx::AssertSqlSafe(sql))
            .bind(q.tenant.as_str())
            .bind(q.resource_type.as_str());
        if let Some(id) = &q.id {
            query = query.bind(id.as_str());
        }
        let rows = query
            .bind(q.since.map_or(i64::MIN, Timestamp::millis))
            .bind(q.before_seq.unwrap_or(i64::MAX))
            .bind(i64::from(q.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(VersionRow::try_from).collect()
    }

    async fn history_total(&self, q: &HistoryQuery) -> Result<u64, StorageError> {
        let since = q.since.map_or(i64::MIN, Timestamp::millis);
        let count: i64 = match &q.id {
            Some(id) => {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM resource_versions WHERE tenant = ? AND resource_type = ? \
                     AND resource_id = ? AND last_updated >= ?",
                )
                .bind(q.tenant.as_str())
                .bind(q.resource_type.as_str())
                .bind(id.as_str())
                .bind(since)
                .fetch_one(&self.pool)
                .await?
            }
            None => {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM resource_versions WHERE tenant = ? AND resource_type = ? \
                     AND last_updated >= ?",
                )
                .bind(q.tenant.as_str())
                .bind(q.resource_type.as_str())
                .bind(since)
                .fetch_one(&self.pool)
                .await?
            }
        };
        u64::try_from(count).map_err(|_| StorageError::Corrupt("count".into()))
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StorageError> {
        let mut tx = self.begin_write().await?;
        for record in records {
            insert_audit(&mut tx, record).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_key(&self, tenant: &TenantId, key_ref: &str) -> Result<Option<WrappedKey>, StorageError> {
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT kek_version, wrapped FROM tenant_keys WHERE tenant = ? AND key_ref = ?")
                .bind(tenant.as_str())
                .bind(key_ref)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(v, bytes)| {
            let kek_version = u32::try_from(v).map_err(|_| StorageError::Corrupt("kek version".into()))?;
            Ok(WrappedKey { kek_version, bytes })
        })
        .transpose()
    }

    async fn insert_tenant_key(
        &self,
        tenant: &TenantId,
        key_ref: &str,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, StorageError> {
        sqlx::query(
            "INSERT INTO tenant_keys (tenant, key_ref, kek_version, wrapped, created_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (tenant, key_ref) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(key_ref)
        .bind(i64::from(wrapped.kek_version))
        .bind(&wrapped.bytes)
        .bind(Timestamp::now().millis())
        .execute(&self.pool)
        .await?;
        self.tenant_key(tenant, key_ref)
            .await?
            .ok_or_else(|| StorageError::Corrupt("tenant key vanished after insert".into()))
    }
}
