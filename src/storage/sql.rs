//! The index over SQL, written once for both databases.
//!
//! The SQL is portable: numbered `$n` parameters (SQLite reads `$1` as parameter 1), `RETURNING`,
//! `ON CONFLICT`, and 64-bit integers everywhere. What differs (connection setup, how a write
//! transaction starts) lives in `sqlite.rs` and `postgres.rs`; each implements `Index` with
//! `impl_index!` so the two cannot drift apart.

use super::{Method, NewVersion, ObjectKey, StorageError, VersionRow, parse_row_ids};
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

/// A version row's columns, read from the `resource_versions` table named `v`.
macro_rules! version_fields_of_v {
    () => {
        "v.seq, v.tenant, v.resource_type, v.resource_id, v.version, v.method, v.object_key, v.location, \
         v.compartment, v.last_updated"
    };
}
pub(super) const VERSION_FIELDS_OF_V: &str = version_fields_of_v!();

pub(super) const SELECT_CURRENT: &str = concat!(
    "SELECT ",
    version_fields_of_v!(),
    " FROM resources r JOIN resource_versions v ON v.tenant = r.tenant AND v.resource_type = r.resource_type \
     AND v.resource_id = r.resource_id AND v.version = r.current_version \
     WHERE r.tenant = $1 AND r.resource_type = $2 AND r.resource_id = $3"
);

pub(super) const SELECT_VERSION: &str = "SELECT seq, tenant, resource_type, resource_id, version, method, \
     object_key, location, compartment, last_updated FROM resource_versions \
     WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3 AND version = $4";

pub(super) const SELECT_CURRENT_VERSION: &str =
    "SELECT current_version FROM resources WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3";

/// Move the current pointer from the version the writer expects; no row changed = a conflict.
pub(super) const ADVANCE_CURRENT: &str = "UPDATE resources SET current_version = $4 \
     WHERE tenant = $1 AND resource_type = $2 AND resource_id = $3 AND current_version = $5";

/// The columns the bulk inserts write, in the order they bind them.
pub(super) const POINTER_COLUMNS: &str = "tenant, resource_type, resource_id, current_version";
pub(super) const VERSION_COLUMNS: &str =
    "tenant, resource_type, resource_id, version, method, object_key, location, compartment, last_updated";
pub(super) const AUDIT_COLUMNS: &str = "recorded_at, request_id, tenant, agent_subject, agent_issuer, agent_role, \
     agent_jurisdiction, purpose, token_id, source_ip, action, resource_type, resource_id, version, compartment, \
     outcome, detail, policy";

/// The search index tables whose rows are found by their resource (migration 0002), and the
/// columns the bulk inserts of every search table write. SQLite's token rows are indexed by
/// token only; a resource's tokens are found through its row of `search_token_sets` (migration
/// 0003), which on PostgreSQL holds them (migration 0004).
pub(super) const SEARCH_TABLES_BY_RESOURCE: [&str; 3] = ["search_dates", "search_numbers", "search_refs"];
pub(super) const TOKEN_COLUMNS: &str = "tenant, resource_type, resource_id, token";
pub(super) const TOKEN_SET_COLUMNS: &str = "tenant, resource_type, resource_id, tokens";
pub(super) const DATE_COLUMNS: &str = "tenant, resource_type, resource_id, param, lo, hi";
pub(super) const NUMBER_COLUMNS: &str = "tenant, resource_type, resource_id, param, value, system, code, unit";
pub(super) const REF_COLUMNS: &str = "tenant, resource_type, resource_id, param, target_type, target_id";

/// What a new pointer row's insert returns (the rows it did insert) and when it conflicts.
pub(super) const POINTER_RETURNING: &str =
    " ON CONFLICT (tenant, resource_type, resource_id) DO NOTHING RETURNING tenant, resource_type, resource_id";
pub(super) const VERSION_RETURNING: &str = " RETURNING seq, tenant, resource_type, resource_id, version";

/// A version row as `RETURNING` gives it back: seq, tenant, type, id, version.
pub(super) type InsertedVersion = (i64, String, String, String, i64);

/// Each of `rows`' `seq`, in `rows` order, from what `RETURNING` gave back (in no promised
/// order). A row missing or one too many means the index is not what this code wrote.
pub(super) fn seqs_in_order(rows: &[&NewVersion], inserted: Vec<InsertedVersion>) -> Result<Vec<i64>, StorageError> {
    use std::collections::HashMap;
    let returned = inserted.len();
    let mut seqs: HashMap<(String, String, String, i64), i64> =
        inserted.into_iter().map(|(seq, tenant, rt, id, version)| ((tenant, rt, id, version), seq)).collect();
    if seqs.len() != returned || returned != rows.len() {
        return Err(StorageError::Corrupt("the version rows returned are not those inserted".into()));
    }
    rows.iter()
        .map(|v| {
            let key = (v.tenant.to_string(), v.resource_type.to_string(), v.id.to_string(), i64::from(v.version.get()));
            seqs.remove(&key).ok_or_else(|| StorageError::Corrupt("a version row the batch did not insert".into()))
        })
        .collect()
}

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

pub(super) const SELECT_TENANT_KEY: &str =
    "SELECT kek_version, wrapped FROM tenant_keys WHERE tenant = $1 AND key_ref = $2";

pub(super) const INSERT_TENANT_KEY: &str = "INSERT INTO tenant_keys (tenant, key_ref, kek_version, wrapped, \
     created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, key_ref) DO NOTHING";

pub(super) const SELECT_KEK_VERSION: &str = "SELECT key_id FROM kek_versions WHERE tenant = $1 AND version = $2";

pub(super) const INSERT_KEK_VERSION: &str = "INSERT INTO kek_versions (tenant, version, key_id, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, version) DO NOTHING";

pub(super) const KEK_RECORDS: &str =
    "SELECT tenant, version, key_id, created_at, destroyed_at, wraps, unwraps FROM kek_versions";

pub(super) const WRAPPED_PER_KEK: &str =
    "SELECT tenant, kek_version, COUNT(*) FROM tenant_keys GROUP BY tenant, kek_version";

pub(super) const OBJECT_KNOWN: &str = "SELECT COUNT(*) FROM resource_versions WHERE object_key = $1";

pub(super) fn version_from_db(raw: i64) -> Result<crate::ids::VersionId, StorageError> {
    u32::try_from(raw)
        .ok()
        .and_then(|v| crate::ids::VersionId::from_u32(v).ok())
        .ok_or_else(|| StorageError::Corrupt("version".into()))
}

/// The KEK versions the index records or uses, in order: `records` are `kek_versions` rows,
/// `counts` the stored keys per tenant and KEK version.
pub(super) fn kek_usage(
    records: Vec<super::lifecycle::DbKekVersion>,
    counts: Vec<(String, i64, i64)>,
) -> Result<Vec<super::KekUsage>, StorageError> {
    let version = |v: i64| u32::try_from(v).map_err(|_| StorageError::Corrupt("kek version".into()));
    let mut usage: std::collections::BTreeMap<(String, u32), super::KekUsage> = std::collections::BTreeMap::new();
    for record in records {
        let k = super::lifecycle::kek_version_from_db(record)?;
        let usage_of = super::KekUsage {
            tenant: k.tenant.clone(),
            version: k.version,
            key_id: Some(k.key_id),
            wrapped_keys: 0,
            created_at: Some(k.created_at),
            destroyed_at: k.destroyed_at,
            wraps: k.wraps,
            unwraps: k.unwraps,
        };
        usage.insert((k.tenant, k.version), usage_of);
    }
    for (tenant, v, n) in counts {
        let v = version(v)?;
        let n = u64::try_from(n).map_err(|_| StorageError::Corrupt("a negative count".into()))?;
        usage
            .entry((tenant.clone(), v))
            .or_insert(super::KekUsage {
                tenant,
                version: v,
                key_id: None,
                wrapped_keys: 0,
                created_at: None,
                destroyed_at: None,
                wraps: 0,
                unwraps: 0,
            })
            .wrapped_keys = n;
    }
    Ok(usage.into_values().collect())
}

/// `impl Index for $index`, where `$index` has `leases` (a `lease::Leases<$db>`),
/// `async fn begin_write(&mut $db's connection) -> Result<Transaction<'_, $db>, StorageError>`,
/// `async fn append_audit_rows(&self, &[&AuditRecord])` (one atomic append),
/// `async fn append_audit_rows_if_current(&self, &[&AuditRecord], &[&AuditRecord]) -> Result<Vec<bool>, _>`
/// (`Index::append_audit_if_current`),
/// `async fn look_up_rows(&self, &[Lookup])` (`Index::look_up`),
/// `async fn note_versions(&self, usize)` (told the size of each batch of versions before it commits) and
/// `async fn commit_creates(&self, &[VersionCommit], &[AuditRecord]) -> Result<Option<Vec<i64>>, _>`
/// (a shortcut for batches of new resources; `None`: take the general path), and the invoking
/// module has the bulk inserts `insert_pointer_rows`, `insert_version_rows` and
/// `insert_audit_rows` (multi-row `VALUES` on SQLite, `UNNEST` of arrays on PostgreSQL) and
/// `replace_search_rows` (a version's search rows in place of its resource's old ones).
macro_rules! impl_index {
    (
        $index:ty,
        $db:ty,
        batches_lookups = $batches:expr,
        sealing_blocks_writers = $blocks:expr,
        dialect = $dialect:expr
    ) => {
        /// Store the new compartment keys; a name already taken fails that version.
        async fn insert_new_keys(
            tx: &mut sqlx::Transaction<'_, $db>,
            versions: &[$crate::storage::VersionCommit],
            results: &mut [Option<Result<i64, $crate::storage::StorageError>>],
        ) -> Result<(), $crate::storage::StorageError> {
            let mut with_keys: Vec<usize> =
                (0..versions.len()).filter(|&i| versions.get(i).is_some_and(|c| c.new_key.is_some())).collect();
            with_keys.sort_by(|&a, &b| {
                let key =
                    |i: usize| versions.get(i).map(|c| (c.version.tenant.as_str(), c.version.compartment.as_str()));
                key(a).cmp(&key(b))
            });
            for i in with_keys {
                let (Some(c), Some(slot)) = (versions.get(i), results.get_mut(i)) else { continue };
                let Some(wrapped) = &c.new_key else { continue };
                let done = sqlx::query($crate::storage::sql::INSERT_TENANT_KEY)
                    .bind(c.version.tenant.as_str())
                    .bind(&c.version.compartment)
                    .bind(i64::from(wrapped.kek_version))
                    .bind(&wrapped.bytes)
                    .bind(c.audit.recorded.millis())
                    .execute(&mut **tx)
                    .await?;
                if done.rows_affected() == 0 {
                    *slot = Some(Err($crate::storage::StorageError::KeyExists(c.version.compartment.clone())));
                }
            }
            Ok(())
        }

        /// Move the current pointers: new resources with multi-row inserts, then updates one by
        /// one, each in (tenant, type, id) order so that two batches never wait on each other in
        /// a cycle. A pointer that is not where its writer expected marks that version a conflict.
        async fn advance_pointers(
            tx: &mut sqlx::Transaction<'_, $db>,
            versions: &[$crate::storage::VersionCommit],
            results: &mut [Option<Result<i64, $crate::storage::StorageError>>],
        ) -> Result<(), $crate::storage::StorageError> {
            use std::collections::HashSet;
            use $crate::storage::{StorageError, sql};
            let id_of = |i: usize| {
                versions
                    .get(i)
                    .map(|c| (c.version.tenant.as_str(), c.version.resource_type.as_str(), c.version.id.as_str()))
            };
            let mut order: Vec<usize> =
                (0..versions.len()).filter(|&i| results.get(i).is_some_and(Option::is_none)).collect();
            order.sort_by(|&a, &b| id_of(a).cmp(&id_of(b)));
            let (creates, updates): (Vec<usize>, Vec<usize>) =
                order.into_iter().partition(|&i| versions.get(i).is_some_and(|c| c.version.expected_current.is_none()));

            // The same new resource twice in one batch: the first one is the attempt, the others conflict.
            let mut attempted = HashSet::new();
            let mut inserts = Vec::new();
            for i in creates {
                if attempted.insert(id_of(i)) {
                    inserts.push(i);
                } else if let Some(slot) = results.get_mut(i) {
                    *slot = Some(Err(StorageError::Conflict { current: None }));
                }
            }
            let rows: Vec<&$crate::storage::NewVersion> =
                inserts.iter().filter_map(|&i| versions.get(i)).map(|c| &c.version).collect();
            let inserted: HashSet<(String, String, String)> =
                insert_pointer_rows(&mut **tx, &rows).await?.into_iter().collect();
            for i in inserts {
                let Some(c) = versions.get(i) else { continue };
                let v = &c.version;
                let key = (v.tenant.as_str().to_owned(), v.resource_type.as_str().to_owned(), v.id.as_str().to_owned());
                if !inserted.contains(&key) {
                    let current = current_version(tx, v).await?;
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(Err(StorageError::Conflict { current }));
                    }
                }
            }

            for i in updates {
                let Some(c) = versions.get(i) else { continue };
                let v = &c.version;
                let expected = v.expected_current.map(|e| i64::from(e.get()));
                let done = sqlx::query(sql::ADVANCE_CURRENT)
                    .bind(v.tenant.as_str())
                    .bind(v.resource_type.as_str())
                    .bind(v.id.as_str())
                    .bind(i64::from(v.version.get()))
                    .bind(expected)
                    .execute(&mut **tx)
                    .await?;
                if done.rows_affected() == 0 {
                    let current = current_version(tx, v).await?;
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(Err(StorageError::Conflict { current }));
                    }
                }
            }
            Ok(())
        }

        async fn current_version(
            tx: &mut sqlx::Transaction<'_, $db>,
            v: &$crate::storage::NewVersion,
        ) -> Result<Option<$crate::ids::VersionId>, $crate::storage::StorageError> {
            let current: Option<i64> = sqlx::query_scalar($crate::storage::sql::SELECT_CURRENT_VERSION)
                .bind(v.tenant.as_str())
                .bind(v.resource_type.as_str())
                .bind(v.id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
            current.map($crate::storage::sql::version_from_db).transpose()
        }

        /// Insert the version rows of the versions whose pointer moved; their `seq` is the result.
        async fn insert_versions(
            tx: &mut sqlx::Transaction<'_, $db>,
            versions: &[$crate::storage::VersionCommit],
            results: &mut [Option<Result<i64, $crate::storage::StorageError>>],
        ) -> Result<(), $crate::storage::StorageError> {
            let winners: Vec<usize> =
                (0..versions.len()).filter(|&i| results.get(i).is_some_and(Option::is_none)).collect();
            let rows: Vec<&$crate::storage::NewVersion> =
                winners.iter().filter_map(|&i| versions.get(i)).map(|c| &c.version).collect();
            let inserted = insert_version_rows(&mut **tx, &rows).await?;
            let seqs = $crate::storage::sql::seqs_in_order(&rows, inserted)?;
            for (i, seq) in winners.into_iter().zip(seqs) {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(Ok(seq));
                }
            }
            Ok(())
        }

        /// After the pointers moved: the version rows, search rows and audit records of the
        /// versions that won, and the standalone audit records.
        async fn write_winners(
            tx: &mut sqlx::Transaction<'_, $db>,
            versions: &[$crate::storage::VersionCommit],
            results: &mut [Option<Result<i64, $crate::storage::StorageError>>],
            audits: &[$crate::audit::AuditRecord],
        ) -> Result<(), $crate::storage::StorageError> {
            insert_versions(tx, versions, results).await?;
            let won = |r: &Option<Result<i64, $crate::storage::StorageError>>| matches!(r, Some(Ok(_)));
            let searchable: Vec<(&$crate::storage::NewVersion, &$crate::storage::SearchRows)> = versions
                .iter()
                .zip(results.iter())
                .filter(|(_, r)| won(r))
                .filter_map(|(c, _)| c.search.as_ref().map(|rows| (&c.version, rows)))
                .collect();
            replace_search_rows(&mut **tx, &searchable).await?;
            let mut records: Vec<&$crate::audit::AuditRecord> =
                versions.iter().zip(results.iter()).filter(|(_, r)| won(r)).map(|(c, _)| &c.audit).collect();
            records.extend(audits);
            insert_audit_rows(&mut **tx, &records).await
        }

        #[async_trait::async_trait]
        impl $crate::storage::Index for $index {
            fn sealing_blocks_writers(&self) -> bool {
                $blocks
            }

            fn batches_lookups(&self) -> bool {
                $batches
            }

            async fn look_up(
                &self,
                lookups: &[$crate::storage::Lookup],
            ) -> Result<Vec<Option<$crate::storage::VersionRow>>, $crate::storage::StorageError> {
                self.look_up_rows(lookups).await
            }

            async fn ping(&self) -> Result<(), $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                sqlx::query("SELECT 1").execute(&mut *conn).await?;
                conn.done();
                Ok(())
            }

            async fn current(
                &self,
                tenant: &$crate::ids::TenantId,
                rt: $crate::ids::ResourceType,
                id: &$crate::ids::ResourceId,
            ) -> Result<Option<$crate::storage::VersionRow>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let row: Option<$crate::storage::sql::DbVersion> = sqlx::query_as($crate::storage::sql::SELECT_CURRENT)
                    .bind(tenant.as_str())
                    .bind(rt.as_str())
                    .bind(id.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                conn.done();
                row.map($crate::storage::VersionRow::try_from).transpose()
            }

            async fn version(
                &self,
                tenant: &$crate::ids::TenantId,
                rt: $crate::ids::ResourceType,
                id: &$crate::ids::ResourceId,
                version: $crate::ids::VersionId,
            ) -> Result<Option<$crate::storage::VersionRow>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let row: Option<$crate::storage::sql::DbVersion> = sqlx::query_as($crate::storage::sql::SELECT_VERSION)
                    .bind(tenant.as_str())
                    .bind(rt.as_str())
                    .bind(id.as_str())
                    .bind(i64::from(version.get()))
                    .fetch_optional(&mut *conn)
                    .await?;
                conn.done();
                row.map($crate::storage::VersionRow::try_from).transpose()
            }

            async fn commit_batch(
                &self,
                versions: &[$crate::storage::VersionCommit],
                audits: &[$crate::audit::AuditRecord],
            ) -> Result<Vec<Result<i64, $crate::storage::StorageError>>, $crate::storage::StorageError> {
                use $crate::storage::StorageError;
                if versions.is_empty() {
                    let records: Vec<&$crate::audit::AuditRecord> = audits.iter().collect();
                    self.append_audit_rows(&records).await?;
                    return Ok(Vec::new());
                }
                self.note_versions(versions.len()).await;
                if let Some(seqs) = self.commit_creates(versions, audits).await? {
                    return Ok(seqs.into_iter().map(Ok).collect());
                }
                let mut results: Vec<Option<Result<i64, StorageError>>> = versions.iter().map(|_| None).collect();
                let mut conn = self.leases.get().await?;
                let mut tx = Self::begin_write(&mut conn).await?;
                insert_new_keys(&mut tx, versions, &mut results).await?;
                advance_pointers(&mut tx, versions, &mut results).await?;
                write_winners(&mut tx, versions, &mut results, audits).await?;
                tx.commit().await?;
                conn.done();
                Ok(results
                    .into_iter()
                    .map(|r| {
                        r.unwrap_or_else(|| Err(StorageError::Corrupt("a version the batch left undecided".into())))
                    })
                    .collect())
            }

            async fn append_audit_if_current(
                &self,
                records: &[$crate::audit::AuditRecord],
                if_current: &[$crate::audit::AuditRecord],
            ) -> Result<Vec<bool>, $crate::storage::StorageError> {
                if if_current.is_empty() {
                    self.commit_batch(&[], records).await?;
                    return Ok(Vec::new());
                }
                let records: Vec<&$crate::audit::AuditRecord> = records.iter().collect();
                let if_current: Vec<&$crate::audit::AuditRecord> = if_current.iter().collect();
                self.append_audit_rows_if_current(&records, &if_current).await
            }

            async fn commit_atomic(
                &self,
                versions: &[$crate::storage::VersionCommit],
                audits: &[$crate::audit::AuditRecord],
            ) -> Result<Result<Vec<i64>, (usize, $crate::storage::StorageError)>, $crate::storage::StorageError> {
                use $crate::storage::StorageError;
                if versions.is_empty() {
                    return self.commit_batch(&[], audits).await.map(|_| Ok(Vec::new()));
                }
                self.note_versions(versions.len()).await;
                if let Some(seqs) = self.commit_creates(versions, audits).await? {
                    return Ok(Ok(seqs));
                }
                let mut results: Vec<Option<Result<i64, StorageError>>> = versions.iter().map(|_| None).collect();
                let mut conn = self.leases.get().await?;
                let mut tx = Self::begin_write(&mut conn).await?;
                insert_new_keys(&mut tx, versions, &mut results).await?;
                advance_pointers(&mut tx, versions, &mut results).await?;
                let failed = results.iter_mut().enumerate().find_map(|(i, r)| match r.take() {
                    Some(Err(e)) => Some((i, e)),
                    other => {
                        *r = other;
                        None
                    }
                });
                if let Some(failed) = failed {
                    tx.rollback().await?;
                    conn.done();
                    return Ok(Err(failed));
                }
                write_winners(&mut tx, versions, &mut results, audits).await?;
                tx.commit().await?;
                conn.done();
                results
                    .into_iter()
                    .map(|r| match r {
                        Some(Ok(seq)) => Ok(seq),
                        _ => Err(StorageError::Corrupt("a version the transaction left undecided".into())),
                    })
                    .collect::<Result<Vec<i64>, StorageError>>()
                    .map(Ok)
            }

            async fn history(
                &self,
                q: &$crate::storage::HistoryQuery,
            ) -> Result<Vec<$crate::storage::VersionRow>, $crate::storage::StorageError> {
                use $crate::storage::sql;
                let since = q.since.map_or(i64::MIN, $crate::time::Timestamp::millis);
                let before = q.before_seq.unwrap_or(i64::MAX);
                let mut conn = self.leases.get().await?;
                let rows: Vec<sql::DbVersion> = match &q.id {
                    Some(id) => {
                        sqlx::query_as(sql::HISTORY_INSTANCE)
                            .bind(q.tenant.as_str())
                            .bind(q.resource_type.as_str())
                            .bind(id.as_str())
                            .bind(since)
                            .bind(before)
                            .bind(i64::from(q.limit))
                            .fetch_all(&mut *conn)
                            .await?
                    }
                    None => {
                        sqlx::query_as(sql::HISTORY_TYPE)
                            .bind(q.tenant.as_str())
                            .bind(q.resource_type.as_str())
                            .bind(since)
                            .bind(before)
                            .bind(i64::from(q.limit))
                            .fetch_all(&mut *conn)
                            .await?
                    }
                };
                conn.done();
                rows.into_iter().map($crate::storage::VersionRow::try_from).collect()
            }

            async fn history_total(
                &self,
                q: &$crate::storage::HistoryQuery,
            ) -> Result<u64, $crate::storage::StorageError> {
                use $crate::storage::sql;
                let since = q.since.map_or(i64::MIN, $crate::time::Timestamp::millis);
                let mut conn = self.leases.get().await?;
                let count: i64 = match &q.id {
                    Some(id) => {
                        sqlx::query_scalar(sql::COUNT_INSTANCE)
                            .bind(q.tenant.as_str())
                            .bind(q.resource_type.as_str())
                            .bind(id.as_str())
                            .bind(since)
                            .fetch_one(&mut *conn)
                            .await?
                    }
                    None => {
                        sqlx::query_scalar(sql::COUNT_TYPE)
                            .bind(q.tenant.as_str())
                            .bind(q.resource_type.as_str())
                            .bind(since)
                            .fetch_one(&mut *conn)
                            .await?
                    }
                };
                conn.done();
                u64::try_from(count).map_err(|_| $crate::storage::StorageError::Corrupt("count".into()))
            }

            async fn search(
                &self,
                q: &$crate::storage::SearchQuery,
            ) -> Result<Vec<$crate::storage::VersionRow>, $crate::storage::StorageError> {
                // Every value is a bound parameter; the SQL text comes only from `search::build`.
                let built = $crate::storage::search::build(q, false, $dialect);
                let query = $crate::storage::search::bind_args!(
                    sqlx::query_as::<_, $crate::storage::sql::DbVersion>(sqlx::AssertSqlSafe(built.sql)),
                    built.args
                );
                let mut conn = self.leases.get().await?;
                let rows = query.fetch_all(&mut *conn).await?;
                conn.done();
                rows.into_iter().map($crate::storage::VersionRow::try_from).collect()
            }

            async fn search_count(
                &self,
                q: &$crate::storage::SearchQuery,
            ) -> Result<u64, $crate::storage::StorageError> {
                let built = $crate::storage::search::build(q, true, $dialect);
                let query = $crate::storage::search::bind_args!(
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(built.sql)),
                    built.args
                );
                let mut conn = self.leases.get().await?;
                let count = query.fetch_one(&mut *conn).await?;
                conn.done();
                u64::try_from(count).map_err(|_| $crate::storage::StorageError::Corrupt("count".into()))
            }

            async fn sort_position(
                &self,
                q: &$crate::storage::SearchQuery,
                id: &str,
            ) -> Result<$crate::storage::search::Position, $crate::storage::StorageError> {
                use sqlx::Row as _;
                let built = $crate::storage::search::build_position(q, id);
                let query =
                    $crate::storage::search::bind_args!(sqlx::query(sqlx::AssertSqlSafe(built.sql)), built.args);
                let mut conn = self.leases.get().await?;
                let row = query.fetch_optional(&mut *conn).await?;
                conn.done();
                let row = row.ok_or_else(|| $crate::storage::StorageError::Corrupt("a result vanished".into()))?;
                let mut values = Vec::with_capacity(q.order.keys.len());
                for (i, key) in q.order.keys.iter().enumerate() {
                    values.push(match key.by {
                        $crate::storage::search::SortBy::Number(_) => {
                            $crate::storage::search::SortValue::Real(row.try_get::<f64, _>(i)?)
                        }
                        _ => $crate::storage::search::SortValue::Int(row.try_get::<i64, _>(i)?),
                    });
                }
                Ok($crate::storage::search::Position { values, id: id.to_owned() })
            }

            async fn links(
                &self,
                q: &$crate::storage::LinkQuery,
            ) -> Result<Vec<$crate::storage::Link>, $crate::storage::StorageError> {
                let built = $crate::storage::search::build_links(q);
                let query = $crate::storage::search::bind_args!(
                    sqlx::query_as::<_, (String, String, String, String, String)>(sqlx::AssertSqlSafe(built.sql)),
                    built.args
                );
                let mut conn = self.leases.get().await?;
                let rows = query.fetch_all(&mut *conn).await?;
                conn.done();
                Ok(rows
                    .into_iter()
                    .map(|(resource_type, resource_id, param, target_type, target_id)| $crate::storage::Link {
                        resource_type,
                        resource_id,
                        param,
                        target_type,
                        target_id,
                    })
                    .collect())
            }

            async fn tenant_key(
                &self,
                tenant: &$crate::ids::TenantId,
                key_ref: &str,
            ) -> Result<Option<$crate::crypto::WrappedKey>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let row: Option<(i64, Vec<u8>)> = sqlx::query_as($crate::storage::sql::SELECT_TENANT_KEY)
                    .bind(tenant.as_str())
                    .bind(key_ref)
                    .fetch_optional(&mut *conn)
                    .await?;
                conn.done();
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
                let mut conn = self.leases.get().await?;
                sqlx::query($crate::storage::sql::INSERT_TENANT_KEY)
                    .bind(tenant.as_str())
                    .bind(key_ref)
                    .bind(i64::from(wrapped.kek_version))
                    .bind(&wrapped.bytes)
                    .bind($crate::time::Timestamp::now().millis())
                    .execute(&mut *conn)
                    .await?;
                conn.done();
                self.tenant_key(tenant, key_ref)
                    .await?
                    .ok_or_else(|| $crate::storage::StorageError::Corrupt("tenant key vanished after insert".into()))
            }

            async fn kek_id(
                &self,
                tenant: &$crate::ids::TenantId,
                version: u32,
            ) -> Result<Option<Vec<u8>>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let id: Option<Vec<u8>> = sqlx::query_scalar($crate::storage::sql::SELECT_KEK_VERSION)
                    .bind(tenant.as_str())
                    .bind(i64::from(version))
                    .fetch_optional(&mut *conn)
                    .await?;
                conn.done();
                Ok(id)
            }

            async fn claim_kek_id(
                &self,
                tenant: &$crate::ids::TenantId,
                version: u32,
                key_id: &[u8],
            ) -> Result<Vec<u8>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                sqlx::query($crate::storage::sql::INSERT_KEK_VERSION)
                    .bind(tenant.as_str())
                    .bind(i64::from(version))
                    .bind(key_id)
                    .bind($crate::time::Timestamp::now().millis())
                    .execute(&mut *conn)
                    .await?;
                conn.done();
                self.kek_id(tenant, version)
                    .await?
                    .ok_or_else(|| $crate::storage::StorageError::Corrupt("KEK version vanished after insert".into()))
            }

            async fn kek_usage(&self) -> Result<Vec<$crate::storage::KekUsage>, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let records: Vec<$crate::storage::lifecycle::DbKekVersion> =
                    sqlx::query_as($crate::storage::sql::KEK_RECORDS).fetch_all(&mut *conn).await?;
                let counts: Vec<(String, i64, i64)> =
                    sqlx::query_as($crate::storage::sql::WRAPPED_PER_KEK).fetch_all(&mut *conn).await?;
                conn.done();
                $crate::storage::sql::kek_usage(records, counts)
            }

            async fn seal(
                &self,
                limit: u32,
                sealer: &mut dyn $crate::storage::audit_log::LogSealer,
            ) -> Result<$crate::storage::audit_log::SealReport, $crate::storage::StorageError> {
                self.seal_log(limit, sealer).await
            }

            async fn log_names(&self) -> Result<Vec<String>, $crate::storage::StorageError> {
                self.read_log_names().await
            }

            async fn log_entries(
                &self,
                log: &str,
                from: u64,
                limit: u32,
            ) -> Result<Vec<$crate::storage::audit_log::LogEntry>, $crate::storage::StorageError> {
                self.read_log_entries(log, from, limit).await
            }

            async fn log_events(
                &self,
                log: &str,
                from: u64,
                limit: u32,
            ) -> Result<Vec<(u64, Vec<u8>)>, $crate::storage::StorageError> {
                self.read_log_events(log, from, limit).await
            }

            async fn log_hashes(
                &self,
                log: &str,
                from: u64,
                limit: u32,
            ) -> Result<Vec<(u64, [u8; 32])>, $crate::storage::StorageError> {
                self.read_log_hashes(log, from, limit).await
            }

            async fn log_hashes_at(
                &self,
                log: &str,
                indexes: &[u64],
            ) -> Result<Vec<(u64, [u8; 32])>, $crate::storage::StorageError> {
                self.read_log_hashes_at(log, indexes).await
            }

            async fn log_checkpoints(
                &self,
                log: &str,
                latest_only: bool,
            ) -> Result<Vec<$crate::storage::audit_log::StoredCheckpoint>, $crate::storage::StorageError> {
                self.read_log_checkpoints(log, latest_only).await
            }

            async fn search_log(
                &self,
                q: &$crate::storage::audit_log::LogSearch,
            ) -> Result<Vec<$crate::storage::audit_log::LogEntry>, $crate::storage::StorageError> {
                self.read_log_search(q).await
            }

            async fn count_log(
                &self,
                q: &$crate::storage::audit_log::LogSearch,
            ) -> Result<u64, $crate::storage::StorageError> {
                self.read_log_count(q).await
            }

            async fn kek_versions(&self) -> Result<Vec<$crate::storage::KekVersion>, $crate::storage::StorageError> {
                self.lc_kek_versions().await
            }

            async fn add_kek_calls(
                &self,
                calls: &[$crate::storage::KekCalls],
            ) -> Result<(), $crate::storage::StorageError> {
                self.lc_add_kek_calls(calls).await
            }

            async fn kek_destroyed(
                &self,
                tenant: &$crate::ids::TenantId,
                version: u32,
            ) -> Result<(), $crate::storage::StorageError> {
                self.lc_kek_destroyed(tenant, version).await
            }

            async fn keys_under(
                &self,
                tenant: &$crate::ids::TenantId,
                version: u32,
                after: &str,
                limit: u32,
            ) -> Result<Vec<(String, $crate::crypto::WrappedKey)>, $crate::storage::StorageError> {
                self.lc_keys_under(tenant, version, after, limit).await
            }

            async fn count_under(
                &self,
                tenant: &$crate::ids::TenantId,
                version: u32,
            ) -> Result<u64, $crate::storage::StorageError> {
                self.lc_count_under(tenant, version).await
            }

            async fn rewrap_tenant_key(
                &self,
                tenant: &$crate::ids::TenantId,
                key_ref: &str,
                old: &$crate::crypto::WrappedKey,
                new: &$crate::crypto::WrappedKey,
            ) -> Result<bool, $crate::storage::StorageError> {
                self.lc_rewrap(tenant, key_ref, old, new).await
            }

            async fn patient_status(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
            ) -> Result<$crate::storage::PatientStatus, $crate::storage::StorageError> {
                self.lc_patient_status(tenant, patient).await
            }

            async fn compartment_activity(
                &self,
                tenant: &$crate::ids::TenantId,
                compartment: &str,
            ) -> Result<Vec<(String, $crate::time::Timestamp)>, $crate::storage::StorageError> {
                self.lc_compartment_activity(tenant, compartment).await
            }

            async fn schedule_erasure(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
                requested_by: &str,
                due_at: $crate::time::Timestamp,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                self.lc_schedule_erasure(tenant, patient, requested_by, due_at, audit).await
            }

            async fn cancel_erasure(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                self.lc_cancel_erasure(tenant, patient, audit).await
            }

            async fn set_legal_hold(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
                hold: Option<&$crate::storage::LegalHold>,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                self.lc_set_legal_hold(tenant, patient, hold, audit).await
            }

            async fn erase(
                &self,
                tenant: &$crate::ids::TenantId,
                patient: &str,
                audit: &$crate::audit::AuditRecord,
            ) -> Result<bool, $crate::storage::StorageError> {
                self.lc_erase(tenant, patient, audit).await
            }

            async fn due_erasures(
                &self,
                now: $crate::time::Timestamp,
                limit: u32,
            ) -> Result<Vec<(String, String)>, $crate::storage::StorageError> {
                self.lc_due_erasures(now, limit).await
            }

            async fn knows_object(&self, key: &str) -> Result<bool, $crate::storage::StorageError> {
                let mut conn = self.leases.get().await?;
                let count: i64 =
                    sqlx::query_scalar($crate::storage::sql::OBJECT_KNOWN).bind(key).fetch_one(&mut *conn).await?;
                conn.done();
                Ok(count > 0)
            }
        }
    };
}

pub(super) use impl_index;
