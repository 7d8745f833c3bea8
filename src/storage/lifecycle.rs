//! The index side of key rotation and crypto-shredding: KEK versions and their states, re-wrapping
//! stored keys, patients' erasures and legal holds. Shared by both backends (`impl_lifecycle`).
//!
//! **Architecture Invariant:** an erased compartment keeps a tombstone in `tenant_keys`
//! (`kek_version` 0, no key), so that nothing creates a new key under its name: a write to an
//! erased patient's record is refused, not given a fresh start.

use crate::time::Timestamp;

use super::StorageError;

/// The `kek_version` of an erased compartment's tombstone.
pub const ERASED: u32 = 0;

/// Where a patient's erasure stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureState {
    /// Requested; the key is destroyed at `due_at` unless cancelled before.
    Scheduled,
    Cancelled,
    /// The compartment key is gone.
    Done,
}

impl ErasureState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Cancelled => "cancelled",
            Self::Done => "done",
        }
    }

    fn parse(s: &str) -> Result<Self, StorageError> {
        match s {
            "scheduled" => Ok(Self::Scheduled),
            "cancelled" => Ok(Self::Cancelled),
            "done" => Ok(Self::Done),
            other => Err(StorageError::Corrupt(format!("erasure state `{other}`"))),
        }
    }
}

/// A patient's erasure request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub state: ErasureState,
    pub requested_at: Timestamp,
    /// The requester's subject.
    pub requested_by: String,
    pub due_at: Timestamp,
    pub done_at: Option<Timestamp>,
}

/// Provider calls made with one KEK version since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekCalls {
    pub tenant: crate::ids::TenantId,
    pub version: u32,
    pub wraps: u64,
    pub unwraps: u64,
}

/// A legal hold on a patient's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalHold {
    pub reason: String,
    pub set_by: String,
    pub set_at: Timestamp,
}

/// What stands between a patient's data and its erasure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientStatus {
    pub erasure: Option<Erasure>,
    pub hold: Option<LegalHold>,
}

/// One recorded KEK version of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekVersion {
    pub tenant: String,
    pub version: u32,
    pub key_id: Vec<u8>,
    pub created_at: Timestamp,
    /// When the provider destroyed it; `None` while it exists.
    pub destroyed_at: Option<Timestamp>,
    /// Provider calls made with it: wraps, unwraps (as flushed by the servers).
    pub wraps: u64,
    pub unwraps: u64,
}

pub(super) type DbErasure = (String, i64, String, i64, Option<i64>);
pub(super) type DbHold = (String, String, i64);
pub(super) type DbKekVersion = (String, i64, Vec<u8>, i64, Option<i64>, i64, i64);

pub(super) fn erasure_from_db(
    (state, requested_at, requested_by, due_at, done_at): DbErasure,
) -> Result<Erasure, StorageError> {
    Ok(Erasure {
        state: ErasureState::parse(&state)?,
        requested_at: Timestamp::from_millis(requested_at),
        requested_by,
        due_at: Timestamp::from_millis(due_at),
        done_at: done_at.map(Timestamp::from_millis),
    })
}

pub(super) fn hold_from_db((reason, set_by, set_at): DbHold) -> LegalHold {
    LegalHold { reason, set_by, set_at: Timestamp::from_millis(set_at) }
}

pub(super) fn kek_version_from_db(
    (tenant, version, key_id, created_at, destroyed_at, wraps, unwraps): DbKekVersion,
) -> Result<KekVersion, StorageError> {
    let count = |n: i64| u64::try_from(n).map_err(|_| StorageError::Corrupt("a negative count".into()));
    Ok(KekVersion {
        wraps: count(wraps)?,
        unwraps: count(unwraps)?,
        tenant,
        version: u32::try_from(version).map_err(|_| StorageError::Corrupt("kek version".into()))?,
        key_id,
        created_at: Timestamp::from_millis(created_at),
        destroyed_at: destroyed_at.map(Timestamp::from_millis),
    })
}

pub(super) const SELECT_ERASURE: &str = "SELECT state, requested_at, requested_by, due_at, done_at \
     FROM patient_erasures WHERE tenant = $1 AND patient_id = $2";

pub(super) const SELECT_HOLD: &str =
    "SELECT reason, set_by, set_at FROM legal_holds WHERE tenant = $1 AND patient_id = $2";

/// A new erasure, or a cancelled one requested again; never while a legal hold is set, never
/// over a scheduled or done one. $1 tenant, $2 patient, $3 requested at, $4 by, $5 due at.
pub(super) const SCHEDULE_ERASURE: &str = "INSERT INTO patient_erasures \
     (tenant, patient_id, state, requested_at, requested_by, due_at, done_at) \
     SELECT $1, $2, 'scheduled', $3, $4, $5, NULL \
     WHERE NOT EXISTS (SELECT 1 FROM legal_holds WHERE tenant = $1 AND patient_id = $2) \
     ON CONFLICT (tenant, patient_id) DO UPDATE SET state = 'scheduled', requested_at = excluded.requested_at, \
     requested_by = excluded.requested_by, due_at = excluded.due_at, done_at = NULL \
     WHERE patient_erasures.state = 'cancelled'";

/// Cancel a scheduled erasure that is not due yet ($3: now).
pub(super) const CANCEL_ERASURE: &str = "UPDATE patient_erasures SET state = 'cancelled' \
     WHERE tenant = $1 AND patient_id = $2 AND state = 'scheduled' AND due_at > $3";

/// Cancel a scheduled erasure whatever its due date (a legal hold was set).
pub(super) const HOLD_CANCELS_ERASURE: &str =
    "UPDATE patient_erasures SET state = 'cancelled' WHERE tenant = $1 AND patient_id = $2 AND state = 'scheduled'";

/// Mark a due erasure done, unless a legal hold is set. $3: now.
pub(super) const COMPLETE_ERASURE: &str = "UPDATE patient_erasures SET state = 'done', done_at = $3 \
     WHERE tenant = $1 AND patient_id = $2 AND state = 'scheduled' AND due_at <= $3 \
     AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.tenant = $1 AND h.patient_id = $2)";

/// The erased compartment's key in place of its key: no key, under no KEK.
pub(super) const TOMBSTONE_KEY: &str = "INSERT INTO tenant_keys (tenant, key_ref, kek_version, wrapped, created_at) \
     VALUES ($1, $2, 0, $3, $4) ON CONFLICT (tenant, key_ref) DO UPDATE SET kek_version = 0, wrapped = excluded.wrapped";

pub(super) const DUE_ERASURES: &str = "SELECT tenant, patient_id FROM patient_erasures \
     WHERE state = 'scheduled' AND due_at <= $1 ORDER BY due_at LIMIT $2";

pub(super) const SET_HOLD: &str = "INSERT INTO legal_holds (tenant, patient_id, reason, set_by, set_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, patient_id) DO UPDATE SET reason = excluded.reason, \
     set_by = excluded.set_by, set_at = excluded.set_at";

pub(super) const CLEAR_HOLD: &str = "DELETE FROM legal_holds WHERE tenant = $1 AND patient_id = $2";

/// The newest change per resource type in a compartment.
pub(super) const COMPARTMENT_ACTIVITY: &str = "SELECT resource_type, MAX(last_updated) FROM resource_versions \
     WHERE tenant = $1 AND compartment = $2 GROUP BY resource_type ORDER BY resource_type";

/// The resources that ever belonged to a compartment.
pub(super) const COMPARTMENT_RESOURCES: &str =
    "SELECT DISTINCT resource_type, resource_id FROM resource_versions WHERE tenant = $1 AND compartment = $2";

pub(super) const KEK_VERSIONS: &str = "SELECT tenant, version, key_id, created_at, destroyed_at, wraps, unwraps \
     FROM kek_versions ORDER BY tenant, version";

pub(super) const ADD_KEK_CALLS: &str =
    "UPDATE kek_versions SET wraps = wraps + $3, unwraps = unwraps + $4 WHERE tenant = $1 AND version = $2";

pub(super) const KEK_DESTROYED: &str =
    "UPDATE kek_versions SET destroyed_at = $3 WHERE tenant = $1 AND version = $2 AND destroyed_at IS NULL";

/// A page of the stored keys of a tenant wrapped under one KEK version, by name.
pub(super) const KEYS_UNDER: &str = "SELECT key_ref, wrapped FROM tenant_keys \
     WHERE tenant = $1 AND kek_version = $2 AND key_ref > $3 ORDER BY key_ref LIMIT $4";

pub(super) const COUNT_UNDER: &str = "SELECT COUNT(*) FROM tenant_keys WHERE tenant = $1 AND kek_version = $2";

/// Replace a wrapped key by its re-wrapped form, only if it is still what was read.
pub(super) const REWRAP: &str = "UPDATE tenant_keys SET kek_version = $5, wrapped = $6 \
     WHERE tenant = $1 AND key_ref = $2 AND kek_version = $3 AND wrapped = $4";

/// `impl $index` with the lifecycle operations `Index` exposes; the invoking module has
/// `delete_compartment_search(conn, tenant, compartment)`.
macro_rules! impl_lifecycle {
    ($index:ty, $db:ty) => {
        impl $index {
            async fn lc_patient_status(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
            ) -> Result<$crate::storage::lifecycle::PatientStatus, $crate::storage::StorageError> {
                use $crate::storage::lifecycle as lc;
                let mut conn = self.leases.get().await?;
                let erasure: Option<lc::DbErasure> = sqlx::query_as(lc::SELECT_ERASURE)
                    .bind(tenant.as_str())
                    .bind(patient)
                    .fetch_optional(&mut *conn)
                    .await?;
                let hold: Option<lc::DbHold> = sqlx::query_as(lc::SELECT_HOLD)
                    .bind(tenant.as_str())
                    .bind(patient)
                    .fetch_optional(&mut *conn)
                    .await?;
                conn.done();
                Ok(lc::PatientStatus {
                    erasure: erasure.map(lc::erasure_from_db).transpose()?,
                    hold: hold.map(lc::hold_from_db),
                })
            }

            async fn lc_compartment_activity(
                &self,
                tenant: &$crate::ids::TenantId,
                compartment: &str,
            ) -> Result<Vec<(String, $crate::time::Timestamp)>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let rows: Vec<(String, i64)> = sqlx::query_as($crate::storage::lifecycle::COMPARTMENT_ACTIVITY)
                    .bind(tenant.as_str())
                    .bind(compartment)
                    .fetch_all(&mut *conn)
                    .await?;
                conn.done();
                Ok(rows.into_iter().map(|(rt, at)| (rt, $crate::time::Timestamp::from_millis(at))).collect())
            }

            /// Run `statement` in a write transaction; if it changed exactly one row, append
            /// `audit` and commit (`true`), else roll back (`false`).
            async fn lc_one_row_audited(
                &self,
                statement: sqlx::query::Query<'_, $db, <$db as sqlx::Database>::Arguments>,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let mut tx = Self::begin_write(&mut conn).await?;
                if statement.execute(&mut *tx).await?.rows_affected() != 1 {
                    tx.rollback().await?;
                    conn.done();
                    return Ok(false);
                }
                insert_audit_rows(&mut tx, &[audit]).await?;
                tx.commit().await?;
                conn.done();
                Ok(true)
            }

            async fn lc_schedule_erasure(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
                requested_by: &str,
                due_at: $crate::time::Timestamp,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                let statement = sqlx::query($crate::storage::lifecycle::SCHEDULE_ERASURE)
                    .bind(tenant.as_str())
                    .bind(patient)
                    .bind(audit.recorded.millis())
                    .bind(requested_by)
                    .bind(due_at.millis());
                self.lc_one_row_audited(statement, audit).await
            }

            async fn lc_cancel_erasure(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                let statement = sqlx::query($crate::storage::lifecycle::CANCEL_ERASURE)
                    .bind(tenant.as_str())
                    .bind(patient)
                    .bind(audit.recorded.millis());
                self.lc_one_row_audited(statement, audit).await
            }

            async fn lc_set_legal_hold(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
                hold: Option<&$crate::storage::lifecycle::LegalHold>,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                use $crate::storage::lifecycle as lc;
                let mut conn = self.leases.get().await?;
                let mut tx = Self::begin_write(&mut conn).await?;
                let cancelled = match hold {
                    Some(hold) => {
                        sqlx::query(lc::SET_HOLD)
                            .bind(tenant.as_str())
                            .bind(patient)
                            .bind(&hold.reason)
                            .bind(&hold.set_by)
                            .bind(hold.set_at.millis())
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(lc::HOLD_CANCELS_ERASURE)
                            .bind(tenant.as_str())
                            .bind(patient)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected()
                            == 1
                    }
                    None => {
                        sqlx::query(lc::CLEAR_HOLD).bind(tenant.as_str()).bind(patient).execute(&mut *tx).await?;
                        false
                    }
                };
                insert_audit_rows(&mut tx, &[audit]).await?;
                tx.commit().await?;
                conn.done();
                Ok(cancelled)
            }

            async fn lc_erase(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                use $crate::storage::lifecycle as lc;
                let compartment = format!("Patient/{patient}");
                let now = audit.recorded.millis();
                let mut conn = self.leases.get().await?;
                let mut tx = Self::begin_write(&mut conn).await?;
                let due = sqlx::query(lc::COMPLETE_ERASURE)
                    .bind(tenant.as_str())
                    .bind(patient)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if due != 1 {
                    tx.rollback().await?;
                    conn.done();
                    return Ok(false);
                }
                sqlx::query(lc::TOMBSTONE_KEY)
                    .bind(tenant.as_str())
                    .bind(&compartment)
                    .bind(Vec::<u8>::new())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                delete_compartment_search(&mut tx, tenant.as_str(), &compartment).await?;
                insert_audit_rows(&mut tx, &[audit]).await?;
                tx.commit().await?;
                conn.done();
                Ok(true)
            }

            async fn lc_due_erasures(
                &self,
                now: $crate::time::Timestamp,
                limit: u32,
            ) -> Result<Vec<(String, String)>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let rows: Vec<(String, String)> = sqlx::query_as($crate::storage::lifecycle::DUE_ERASURES)
                    .bind(now.millis())
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                conn.done();
                Ok(rows)
            }

            async fn lc_kek_versions(
                &self,
            ) -> Result<Vec<$crate::storage::lifecycle::KekVersion>, $crate::storage::StorageError> {
                use $crate::storage::lifecycle as lc;
                let mut conn = self.leases.get().await?;
                let rows: Vec<lc::DbKekVersion> = sqlx::query_as(lc::KEK_VERSIONS).fetch_all(&mut *conn).await?;
                conn.done();
                rows.into_iter().map(lc::kek_version_from_db).collect()
            }

            async fn lc_add_kek_calls(
                &self,
                calls: &[$crate::storage::KekCalls],
            ) -> Result<(), $crate::storage::StorageError> {
                let to_i64 = |n: u64| {
                    i64::try_from(n).map_err(|_| $crate::storage::StorageError::Corrupt("a count beyond i64".into()))
                };
                let mut conn = self.leases.get().await?;
                for c in calls {
                    sqlx::query($crate::storage::lifecycle::ADD_KEK_CALLS)
                        .bind(c.tenant.as_str())
                        .bind(i64::from(c.version))
                        .bind(to_i64(c.wraps)?)
                        .bind(to_i64(c.unwraps)?)
                        .execute(&mut *conn)
                        .await?;
                }
                conn.done();
                Ok(())
            }

            async fn lc_kek_destroyed(
                &self,
                tenant: &$crate::ids::TenantId,
                version: u32,
            ) -> Result<(), $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                sqlx::query($crate::storage::lifecycle::KEK_DESTROYED)
                    .bind(tenant.as_str())
                    .bind(i64::from(version))
                    .bind($crate::time::Timestamp::now().millis())
                    .execute(&mut *conn)
                    .await?;
                conn.done();
                Ok(())
            }

            async fn lc_keys_under(
                &self,
                tenant: &$crate::ids::TenantId,
                version: u32,
                after: &str,
                limit: u32,
            ) -> Result<Vec<(String, $crate::crypto::WrappedKey)>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let rows: Vec<(String, Vec<u8>)> = sqlx::query_as($crate::storage::lifecycle::KEYS_UNDER)
                    .bind(tenant.as_str())
                    .bind(i64::from(version))
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                conn.done();
                Ok(rows
                    .into_iter()
                    .map(|(key_ref, bytes)| (key_ref, $crate::crypto::WrappedKey { kek_version: version, bytes }))
                    .collect())
            }

            async fn lc_count_under(
                &self,
                tenant: &$crate::ids::TenantId,
                version: u32,
            ) -> Result<u64, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let n: i64 = sqlx::query_scalar($crate::storage::lifecycle::COUNT_UNDER)
                    .bind(tenant.as_str())
                    .bind(i64::from(version))
                    .fetch_one(&mut *conn)
                    .await?;
                conn.done();
                u64::try_from(n).map_err(|_| $crate::storage::StorageError::Corrupt("a negative count".into()))
            }

            async fn lc_rewrap(
                &self,
                tenant: &$crate::ids::TenantId,
                key_ref: &str,
                old: &$crate::crypto::WrappedKey,
                new: &$crate::crypto::WrappedKey,
            ) -> Result<bool, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let n = sqlx::query($crate::storage::lifecycle::REWRAP)
                    .bind(tenant.as_str())
                    .bind(key_ref)
                    .bind(i64::from(old.kek_version))
                    .bind(&old.bytes)
                    .bind(i64::from(new.kek_version))
                    .bind(&new.bytes)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                conn.done();
                Ok(n == 1)
            }
        }
    };
}

pub(super) use impl_lifecycle;
