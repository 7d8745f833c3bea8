//! The index over SQL, written once for both databases.
//!
//! The SQL is portable: numbered `$n` parameters (SQLite reads `$1` as parameter 1), `RETURNING`,
//! `ON CONFLICT`, and 64-bit integers everywhere. What differs (connection setup, how a write
//! transaction starts) lives in `sqlite.rs` and `postgres.rs`; each implements `Index` with
//! `impl_index!` so the two cannot drift apart.

use super::{Method, ObjectKey, StorageError, VersionRow, parse_row_ids};
use crate::time::Timestamp;

#[derive(sqlx::FromRow)]
pub(super) struct DbVersion {
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

pub(super) const SELECT_CURRENT: &str = "SELECT v.seq, v.tenant, v.resource_type, v.resource_id, v.version, \
     v.method, v.object_key, v.location, v.compartment, v.last_updated \
     FROM resources r JOIN resource_versions v ON v.tenant = r.tenant AND v.resource_type = r.resource_type \
     AND v.resource_id = r.resource_id AND v.version = r.current_version \
     WHERE r.tenant = $1 AND r.resource_type = $2 AND r.resource_id = $3";

pub(super) const SELECT_VERSION: &str = "SELECT seq, tenant, resource_type, resource_id, version, method, \
     object_key, location, compartment, last_updated FROM resource_versions \
     WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3 AND version = $4";

pub(super) const SELECT_CURRENT_VERSION: &str =
    "SELECT current_version FROM resources WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3";

pub(super) const INSERT_VERSION: &str = "INSERT INTO resource_versions (tenant, resource_type, resource_id, \
     version, method, object_key, location, compartment, last_updated) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq";

pub(super) const UPSERT_CURRENT: &str = "INSERT INTO resources (tenant, resource_type, resource_id, \
     current_version) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, resource_type, resource_id) \
     DO UPDATE SET current_version = excluded.current_version";

pub(super) const HISTORY_INSTANCE: &str = "SELECT seq, tenant, resource_type, resource_id, version, method, \
     object_key, location, compartment, last_updated FROM resource_versions \
     WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3 AND last_updated >= $4 AND seq < $5 \
     ORDER BY seq DESC LIMIT $6";

pub(super) const HISTORY_TYPE: &str = "SELECT seq, tenant, resource_type, resource_id, version, method, \
     object_key, location, compartment, last_updated FROM resource_versions \
     WHERE tenant = $1 AND resource_type = $2 AND last_updated >= $3 AND seq < $4 \
     ORDER BY seq DESC LIMIT $5";

pub(super) const COUNT_INSTANCE: &str = "SELECT COUNT(*) FROM resource_versions \
     WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3 AND last_updated >= $4";

pub(super) const COUNT_TYPE: &str =
    "SELECT COUNT(*) FROM resource_versions WHERE tenant = $1 AND resource_type = $2 AND last_updated >= $3";

pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit_records (recorded_at, request_id, tenant, \
     agent_subject, agent_issuer, agent_role, agent_jurisdiction, purpose, token_id, source_ip, action, \
     resource_type, resource_id, version, compartment, outcome, detail, policy) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

pub(super) const SELECT_TENANT_KEY: &str =
    "SELECT kek_version, wrapped FROM tenant_keys WHERE tenant = $1 AND key_ref = $2";

pub(super) const INSERT_TENANT_KEY: &str = "INSERT INTO tenant_keys (tenant, key_ref, kek_version, wrapped, \
     created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, key_ref) DO NOTHING";

pub(super) const OBJECT_KNOWN: &str = "SELECT COUNT(*) FROM resource_versions WHERE object_key = $1";

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub(super) fn version_from_db(raw: i64) -> Result<crate::ids::VersionId, StorageError> {
    u32::try_from(raw)
        .ok()
        .and_then(|v| crate::ids::VersionId::from_u32(v).ok())
        .ok_or_else(|| StorageError::Corrupt("version".into()))
}

/// `impl Index for $index`, where `$index` has a `pool` and an
/// `async fn begin_write(&self) -> Result<Transaction<'static, $db>, StorageError>`.
macro_rules! impl_index {
    ($index:ty, $db:ty) => {
        async fn insert_audit(
            tx: &mut sqlx::Transaction<'static, $db>,
            r: &$crate::audit::AuditRecord,
        ) -> Result<(), $crate::storage::StorageError> {
            use $crate::ids::{ResourceId, ResourceType, TenantId};
            sqlx::query($crate::storage::sql::INSERT_AUDIT)
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

        #[async_trait::async_trait]
        impl $crate::storage::Index for $index {
            async fn ping(&self) -> Result<(), $crate::storage::StorageError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn current(
                &self,
                tenant: &$crate::ids::TenantId,
                rt: $crate::ids::ResourceType,
                id: &$crate::ids::ResourceId,
            ) -> Result<Option<$crate::storage::VersionRow>, $crate::storage::StorageError> {
                let row: Option<$crate::storage::sql::DbVersion> = sqlx::query_as($crate::storage::sql::SELECT_CURRENT)
                    .bind(tenant.as_str())
                    .bind(rt.as_str())
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map($crate::storage::VersionRow::try_from).transpose()
            }

            async fn version(
                &self,
                tenant: &$crate::ids::TenantId,
                rt: $crate::ids::ResourceType,
                id: &$crate::ids::ResourceId,
                version: $crate::ids::VersionId,
            ) -> Result<Option<$crate::storage::VersionRow>, $crate::storage::StorageError> {
                let row: Option<$crate::storage::sql::DbVersion> = sqlx::query_as($crate::storage::sql::SELECT_VERSION)
                    .bind(tenant.as_str())
                    .bind(rt.as_str())
                    .bind(id.as_str())
                    .bind(i64::from(version.get()))
                    .fetch_optional(&self.pool)
                    .await?;
                row.map($crate::storage::VersionRow::try_from).transpose()
            }

            async fn commit_version(
                &self,
                v: &$crate::storage::NewVersion,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<i64, $crate::storage::StorageError> {
                use $crate::storage::StorageError;
                use $crate::storage::sql;
                let mut tx = self.begin_write().await?;
                let current: Option<i64> = sqlx::query_scalar(sql::SELECT_CURRENT_VERSION)
                    .bind(v.tenant.as_str())
                    .bind(v.resource_type.as_str())
                    .bind(v.id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                let current = current.map(sql::version_from_db).transpose()?;
                if current != v.expected_current {
                    return Err(StorageError::Conflict { current });
                }
                // On PostgreSQL two writers may both pass the check above; the unique
                // (tenant, type, id, version) constraint lets exactly one of them insert.
                let inserted = sqlx::query_scalar(sql::INSERT_VERSION)
                    .bind(v.tenant.as_str())
                    .bind(v.resource_type.as_str())
                    .bind(v.id.as_str())
                    .bind(i64::from(v.version.get()))
                    .bind(v.method.as_str())
                    .bind(v.object_key.as_ref().map($crate::storage::ObjectKey::as_str))
                    .bind(&v.location)
                    .bind(&v.compartment)
                    .bind(v.last_updated.millis())
                    .fetch_one(&mut *tx)
                    .await;
                let seq: i64 = match inserted {
                    Ok(seq) => seq,
                    Err(e) if sql::is_unique_violation(&e) => return Err(StorageError::Conflict { current }),
                    Err(e) => return Err(e.into()),
                };
                sqlx::query(sql::UPSERT_CURRENT)
                    .bind(v.tenant.as_str())
                    .bind(v.resource_type.as_str())
                    .bind(v.id.as_str())
                    .bind(i64::from(v.version.get()))
                    .execute(&mut *tx)
                    .await?;
                insert_audit(&mut tx, audit).await?;
                match tx.commit().await {
                    Ok(()) => Ok(seq),
                    Err(e) if sql::is_unique_violation(&e) => Err(StorageError::Conflict { current }),
                    Err(e) => Err(e.into()),
                }
            }

            async fn history(
                &self,
                q: &$crate::storage::HistoryQuery,
            ) -> Result<Vec<$crate::storage::VersionRow>, $crate::storage::StorageError> {
                use $crate::storage::sql;
                let since = q.since.map_or(i64::MIN, $crate::time::Timestamp::millis);
                let before = q.before_seq.unwrap_or(i64::MAX);
                let rows: Vec<sql::DbVersion> = match &q.id {
                    Some(id) => {
                        sqlx::query_as(sql::HISTORY_INSTANCE)
                            .bind(q.tenant.as_str())
                            .bind(q.resource_type.as_str())
                            .bind(id.as_str())
                            .bind(since)
                            .bind(before)
                            .bind(i64::from(q.limit))
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => {
                        sqlx::query_as(sql::HISTORY_TYPE)
                            .bind(q.tenant.as_str())
                            .bind(q.resource_type.as_str())
                            .bind(since)
                            .bind(before)
                            .bind(i64::from(q.limit))
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                rows.into_iter().map($crate::storage::VersionRow::try_from).collect()
            }

            async fn history_total(
                &self,
                q: &$crate::storage::HistoryQuery,
            ) -> Result<u64, $crate::storage::StorageError> {
                use $crate::storage::sql;
                let since = q.since.map_or(i64::MIN, $crate::time::Timestamp::millis);
                let count: i64 = match &q.id {
                    Some(id) => {
                        sqlx::query_scalar(sql::COUNT_INSTANCE)
                            .bind(q.tenant.as_str())
                            .bind(q.resource_type.as_str())
                            .bind(id.as_str())
                            .bind(since)
                            .fetch_one(&self.pool)
                            .await?
                    }
                    None => {
                        sqlx::query_scalar(sql::COUNT_TYPE)
                            .bind(q.tenant.as_str())
                            .bind(q.resource_type.as_str())
                            .bind(since)
                            .fetch_one(&self.pool)
                            .await?
                    }
                };
                u64::try_from(count).map_err(|_| $crate::storage::StorageError::Corrupt("count".into()))
            }

            async fn append_audit(
                &self,
                records: &[$crate::audit::AuditRecord],
            ) -> Result<(), $crate::storage::StorageError> {
                let mut tx = self.begin_write().await?;
                for record in records {
                    insert_audit(&mut tx, record).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn tenant_key(
                &self,
                tenant: &$crate::ids::TenantId,
                key_ref: &str,
            ) -> Result<Option<$crate::crypto::WrappedKey>, $crate::storage::StorageError> {
                let row: Option<(i64, Vec<u8>)> = sqlx::query_as($crate::storage::sql::SELECT_TENANT_KEY)
                    .bind(tenant.as_str())
                    .bind(key_ref)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|(v, bytes)| {
                    let kek_version =
                        u32::try_from(v).map_err(|_| $crate::storage::StorageError::Corrupt("kek version".into()))?;
                    Ok($crate::crypto::WrappedKey { kek_version, bytes })
                })
                .transpose()
            }

            async fn insert_tenant_key(
                &self,
                tenant: &$crate::ids::TenantId,
                key_ref: &str,
                wrapped: &$crate::crypto::WrappedKey,
            ) -> Result<$crate::crypto::WrappedKey, $crate::storage::StorageError> {
                sqlx::query($crate::storage::sql::INSERT_TENANT_KEY)
                    .bind(tenant.as_str())
                    .bind(key_ref)
                    .bind(i64::from(wrapped.kek_version))
                    .bind(&wrapped.bytes)
                    .bind($crate::time::Timestamp::now().millis())
                    .execute(&self.pool)
                    .await?;
                self.tenant_key(tenant, key_ref)
                    .await?
                    .ok_or_else(|| $crate::storage::StorageError::Corrupt("tenant key vanished after insert".into()))
            }

            async fn knows_object(&self, key: &str) -> Result<bool, $crate::storage::StorageError> {
                let count: i64 =
                    sqlx::query_scalar($crate::storage::sql::OBJECT_KNOWN).bind(key).fetch_one(&self.pool).await?;
                Ok(count > 0)
            }
        }
    };
}

pub(super) use impl_index;
