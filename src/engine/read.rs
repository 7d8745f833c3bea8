//! read and vread.

use crate::audit::{AuditAction, Target};
use crate::auth::Principal;
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
use crate::policy::Action;
use crate::storage::{Lookup, StorageError, VersionRow};
use crate::time::Timestamp;

use super::{Engine, EngineError, RequestContext};

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
        if let Some(lookups) = &self.lookups {
            let lookup = Lookup { tenant: tenant.clone(), resource_type: rt, id: id.clone() };
            lookups.current(lookup).await
        } else {
            self.index.current(tenant, rt, id).await
        }
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
