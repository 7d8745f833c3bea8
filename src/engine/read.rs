//! read and vread.

use std::sync::Arc;

use crate::audit::{AuditAction, Target};
use crate::auth::Principal;
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
use crate::policy::Action;
use crate::storage::{Lookup, Method, NewVersion, StorageError, VersionRow};
use crate::time::Timestamp;

use super::write::ok_record;
use super::{Engine, EngineError, RequestContext};

/// How many resources' rows `Remembered` keeps (a few hundred bytes each).
const REMEMBERED: u64 = 32_768;

/// The rows that reads by id found last, by resource, where a lookup is a database round trip
/// of its own (`Index::batches_lookups`). A read of a remembered resource skips the lookup and
/// commits its audit record only while the remembered version is still the current one
/// (`Committer::append_audit_if_current`, one statement that checks and writes in the same
/// snapshot): where it no longer is, nothing is written, the row is forgotten and the read
/// starts over with a lookup. A remembered row is therefore never answered stale, whichever
/// server wrote the newer version. This server's own writes remember the versions they
/// commit (and forget deleted resources), so that a read after a write here needs no lookup
/// either.
///
/// **Architecture Invariant:** a remembered row only saves the lookup. Its answer goes out
/// after a record that the database wrote in a snapshot where that version was current.
pub(super) struct Remembered(moka::sync::Cache<(TenantId, ResourceType, ResourceId), Arc<VersionRow>>);

impl Remembered {
    pub(super) fn new() -> Self {
        Self(moka::sync::Cache::new(REMEMBERED))
    }
}

/// A version read back, as stored: the JSON is exactly what the client gets.
#[derive(Debug)]
pub struct ReadResult {
    pub version: VersionId,
    pub last_updated: Timestamp,
    pub body: Vec<u8>,
}

impl Engine {
    /// `GET /{type}/{id}`
    pub async fn read(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
    ) -> Result<ReadResult, EngineError> {
        if let Some(answer) = self.read_remembered(ctx, principal, rt, id).await {
            return Ok(answer);
        }
        // A refused read names the patient too, so that it shows in their access log.
        let mut compartment = None;
        let result = async {
            let row = self.current_for_read(&ctx.tenant, rt, id).await?;
            let row = row.ok_or_else(|| EngineError::NotFound { rt, id: id.clone() })?;
            compartment = Some(row.compartment.clone());
            self.read_row(ctx, principal, row, AuditAction::Read).await
        }
        .await;
        let target = Target { resource_type: Some(rt), resource_id: Some(id.clone()), compartment, version: None };
        self.audited(ctx, principal, AuditAction::Read, target, result).await
    }

    /// A read's lookup: batched with the others in flight where the index asks for it
    /// (`Index::batches_lookups`), else straight from the index.
    async fn current_for_read(
        &self,
        tenant: &TenantId,
        rt: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<VersionRow>, StorageError> {
        let Some(lookups) = &self.lookups else { return self.index.current(tenant, rt, id).await };
        let lookup = Lookup { tenant: tenant.clone(), resource_type: rt, id: id.clone() };
        let row = lookups.current(lookup).await?;
        if let (Some(remembered), Some(row)) = (&self.remembered, &row)
            && !row.is_deletion()
        {
            remembered.0.insert((tenant.clone(), rt, id.clone()), Arc::new(row.clone()));
        }
        Ok(row)
    }

    /// A read answered from its resource's remembered row, with the record the full path
    /// writes; `None` when there is none, when it is no longer current, or when anything else
    /// stops the read (refused, erased, a storage error): the row is forgotten, nothing was
    /// written, and the full path answers and audits whatever happens.
    async fn read_remembered(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
    ) -> Option<ReadResult> {
        let remembered = self.remembered.as_ref()?;
        let key = (ctx.tenant.clone(), rt, id.clone());
        let row = remembered.0.get(&key)?;
        let answer = async {
            let (permit, _) = self.authorize_row(ctx, principal, Action::Read, &row)?;
            let body = self.open_row(&permit, &row).await?;
            self.screen(ctx, principal, &row, &body)?;
            let record = ok_record(
                ctx,
                principal,
                AuditAction::Read,
                rt,
                id,
                Some(row.version),
                Some(&row.compartment),
                200,
                &permit,
            );
            let current = self.commits.append_audit_if_current(record).await?;
            Ok::<_, EngineError>(current.then(|| ReadResult {
                version: row.version,
                last_updated: row.last_updated,
                body,
            }))
        }
        .await;
        match answer {
            Ok(Some(answer)) => Some(answer),
            Ok(None) | Err(_) => {
                remembered.0.invalidate(&key);
                None
            }
        }
    }

    /// Whether reads by id remember rows (`Remembered`), so that writes should tell them.
    pub(super) fn remembers(&self) -> bool {
        self.remembered.is_some()
    }

    /// A version this server just committed (`seq` its commit position): reads of its resource
    /// start from it, or, for a deletion, look the resource up again.
    pub(super) fn remember_written(&self, written: &NewVersion, seq: i64) {
        let Some(remembered) = &self.remembered else { return };
        let key = (written.tenant.clone(), written.resource_type, written.id.clone());
        if written.method == Method::Delete {
            remembered.0.invalidate(&key);
            return;
        }
        remembered.0.insert(key, Arc::new(written.row(seq)));
    }

    /// `GET /{type}/{id}/_history/{vid}`
    pub async fn vread(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<ReadResult, EngineError> {
        let mut compartment = None;
        let result = async {
            let row = self.index.version(&ctx.tenant, rt, id, version).await?;
            let row = match row {
                Some(row) => row,
                // Distinguish "no such version" from "no such resource" only for the permitted.
                None => return Err(EngineError::VersionNotFound { rt, id: id.clone(), version }),
            };
            compartment = Some(row.compartment.clone());
            self.read_row(ctx, principal, row, AuditAction::Vread).await
        }
        .await;
        let target =
            Target { resource_type: Some(rt), resource_id: Some(id.clone()), version: Some(version), compartment };
        self.audited(ctx, principal, AuditAction::Vread, target, result).await
    }

    /// Decide on the row's compartment, refuse deletions (410), open, audit, answer.
    pub(super) async fn read_row(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        row: VersionRow,
        action: AuditAction,
    ) -> Result<ReadResult, EngineError> {
        let (permit, _) = self.authorize_row(ctx, principal, Action::Read, &row)?;
        if row.is_deletion() {
            return Err(EngineError::Gone {
                rt: row.resource_type,
                id: row.id,
                version: row.version,
                last_updated: row.last_updated,
            });
        }
        let body = self.open_row(&permit, &row).await?;
        self.screen(ctx, principal, &row, &body)?;
        self.audit_ok(
            ctx,
            principal,
            action,
            row.resource_type,
            &row.id,
            Some(row.version),
            Some(&row.compartment),
            200,
            &permit,
        )
        .await?;
        Ok(ReadResult { version: row.version, last_updated: row.last_updated, body })
    }
}
