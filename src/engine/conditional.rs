//! Conditional create (`If-None-Exist`), update (`PUT [type]?search`) and delete
//! (`DELETE [type]?search`), and PATCH with a JSON Patch document.
//!
//! A condition is a search: it must name at least one parameter this server understands, and
//! every parameter it names (strict handling: an unknown one is a 400, never ignored, since
//! ignoring it would widen what the condition matches).

use crate::audit::{AuditAction, Target};
use crate::auth::Principal;
use crate::fhir;
use crate::ids::{ResourceId, ResourceType, VersionId};
use crate::policy::Action;
use crate::search::{self, Blind};
use crate::storage::{SearchQuery, StorageError, VersionRow};

use super::{Engine, EngineError, RequestContext, SEARCH_KEY, Written};

/// Parameters that shape a search's answer, not what it matches: meaningless in a condition.
const CONTROL: &[&str] =
    &["_count", "_sort", "_total", "_summary", "_elements", "_include", "_revinclude", "_cursor", "_contained"];

/// What an update must find (or not) before it writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Precondition {
    /// `If-Match`: this version must be current.
    pub if_match: Option<VersionId>,
    /// `If-None-Match: *`: the resource must not exist (a create with the client's id, never
    /// an overwrite).
    pub if_none_match_any: bool,
}

impl Engine {
    /// The current versions of `rt` that `condition` (a query string) matches, at most `limit`.
    pub(super) async fn matching(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        condition: &str,
        limit: u32,
    ) -> Result<Vec<VersionRow>, EngineError> {
        self.policies.authorize(principal, Action::Search, &self.policy_target(ctx, rt, None))?;
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(condition.as_bytes()).into_owned().collect();
        if let Some((name, _)) = pairs.iter().find(|(name, _)| CONTROL.contains(&name.as_str())) {
            return Err(EngineError::BadRequest(format!("`{name}` has no meaning in a condition")));
        }
        let search_key = self.keys.mac_key(&ctx.tenant, SEARCH_KEY).await?;
        let blind_index = search_key.blind_index();
        let blind = Blind::new(&blind_index, rt.as_str());
        let parsed =
            search::parse(self.search_params, &blind, &pairs, &ctx.base_url, self.limits.string_indexing, false)
                .map_err(|e| EngineError::BadRequest(e.to_string()))?;
        if parsed.filters.is_empty() {
            return Err(EngineError::BadRequest("a condition needs at least one search parameter with a value".into()));
        }
        let query = SearchQuery {
            tenant: ctx.tenant.clone(),
            resource_type: rt,
            filters: parsed.filters,
            after: None,
            order: crate::storage::Order::default(),
            limit,
        };
        Ok(self.index.search(&query).await?)
    }

    /// The one resource `condition` matches, or `None`; several are a 412.
    pub(super) async fn single_match(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        condition: &str,
    ) -> Result<Option<VersionRow>, EngineError> {
        let mut rows = self.matching(ctx, principal, rt, condition, 2).await?;
        if rows.len() > 1 {
            return Err(EngineError::Condition(format!("the condition matches more than one {rt}")));
        }
        Ok(rows.pop())
    }

    /// `POST /{type}` with `If-None-Exist`: creates only if nothing matches; one match is
    /// answered as it is (`created: false`), several are a 412.
    pub async fn create_if_none_exist(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        body: &[u8],
        condition: &str,
    ) -> Result<Written, EngineError> {
        let target = Target { resource_type: Some(rt), ..Target::default() };
        let result = async {
            match self.single_match(ctx, principal, rt, condition).await? {
                None => self.create_inner(ctx, principal, rt, body).await,
                Some(row) => self.existing(ctx, principal, row).await,
            }
        }
        .await;
        self.audited(ctx, principal, AuditAction::Create, target, result).await
    }

    /// A conditional create's match, read back (and audited) as the answer.
    pub(super) async fn existing(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        row: VersionRow,
    ) -> Result<Written, EngineError> {
        let id = row.id.clone();
        let read = self.read_row(ctx, principal, row, AuditAction::Read).await?;
        Ok(Written { id, version: read.version, last_updated: read.last_updated, created: false, body: read.body })
    }

    /// `PUT /{type}?search`: updates the one match; with none, creates (under the body's id if
    /// it has one); several are a 412.
    pub async fn update_where(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        condition: &str,
        body: &[u8],
    ) -> Result<Written, EngineError> {
        let target = Target { resource_type: Some(rt), ..Target::default() };
        let result = async {
            let mut resource = fhir::resource::parse(self.model, body, rt)?;
            let id = match self.single_match(ctx, principal, rt, condition).await? {
                Some(row) => row.id,
                None => match resource.body_id() {
                    Some(id) => ResourceId::parse(id)
                        .map_err(|_| EngineError::BadRequest(format!("the resource id `{id}` is not valid")))?,
                    None => return self.create_resource(ctx, principal, rt, &resource).await,
                },
            };
            match resource.body_id() {
                None => resource.set_id(&id),
                Some(found) if found != id.as_str() => {
                    return Err(fhir::ResourceError::IdMismatch { expected: id, found: found.to_owned() }.into());
                }
                Some(_) => {}
            }
            self.update_resource(ctx, principal, rt, &id, &resource, Precondition::default()).await
        }
        .await;
        self.audited(ctx, principal, AuditAction::Update, target, result).await
    }

    /// `DELETE /{type}?search`: deletes the one match (nothing when none). Several are a 412
    /// unless the configuration allows deleting several, up to its limit.
    pub async fn delete_where(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        condition: &str,
    ) -> Result<Vec<Written>, EngineError> {
        let target = Target { resource_type: Some(rt), ..Target::default() };
        let result = async {
            let ids = self.deletion_targets(ctx, principal, rt, condition).await?;
            let mut deleted = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(written) = self.delete_inner(ctx, principal, rt, &id, None).await? {
                    deleted.push(written);
                }
            }
            Ok(deleted)
        }
        .await;
        self.audited(ctx, principal, AuditAction::Delete, target, result).await
    }

    /// The resources a conditional delete removes.
    pub(super) async fn deletion_targets(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        condition: &str,
    ) -> Result<Vec<ResourceId>, EngineError> {
        let (multiple, max) = (self.limits.conditional_delete_multiple, self.limits.conditional_delete_max);
        let limit = if multiple { max.saturating_add(1) } else { 2 };
        let rows = self.matching(ctx, principal, rt, condition, limit).await?;
        if rows.len() > 1 && !multiple {
            return Err(EngineError::Condition(format!(
                "the condition matches more than one {rt}, and deleting several is not enabled \
                 (`writes.conditional_delete_multiple`)"
            )));
        }
        if rows.len() > max as usize {
            return Err(EngineError::Condition(format!(
                "the condition matches more than {max} resources (`writes.conditional_delete_max`)"
            )));
        }
        Ok(rows.into_iter().map(|row| row.id).collect())
    }

    /// `PATCH /{type}/{id}` with a JSON Patch (RFC 6902) document.
    pub async fn patch(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
        patch: &[u8],
        if_match: Option<VersionId>,
    ) -> Result<Written, EngineError> {
        let target = Target { resource_type: Some(rt), resource_id: Some(id.clone()), ..Target::default() };
        let result = async {
            let patch = parse_patch(patch)?;
            let (current, resource) = self.patched(ctx, principal, rt, id, &patch, if_match).await?;
            let precondition = Precondition { if_match: Some(current.version), if_none_match_any: false };
            match self.update_resource(ctx, principal, rt, id, &resource, precondition).await {
                // The version we patched is no longer current: without `If-Match` that is a
                // conflict to retry, not a failed precondition of the client's.
                Err(EngineError::PreconditionFailed { .. }) if if_match.is_none() => Err(EngineError::Conflict),
                other => other,
            }
        }
        .await;
        self.audited(ctx, principal, AuditAction::Update, target, result).await
    }

    /// The current version of `rt/id` with `patch` applied and validated, and the version row
    /// it was applied to.
    pub(super) async fn patched(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
        patch: &json_patch::Patch,
        if_match: Option<VersionId>,
    ) -> Result<(VersionRow, fhir::Resource), EngineError> {
        let row = self.index.current(&ctx.tenant, rt, id).await?;
        let row = row.ok_or_else(|| EngineError::NotFound { rt, id: id.clone() })?;
        super::write::check_if_match(if_match, Some(&row))?;
        let (permit, _) = self.authorize_row(ctx, principal, Action::Read, &row)?;
        if row.is_deletion() {
            return Err(EngineError::Gone { rt, id: id.clone(), version: row.version, last_updated: row.last_updated });
        }
        let stored = self.open_row(&permit, &row).await?;
        self.screen(ctx, principal, &row, &stored)?;
        let mut document: serde_json::Value = serde_json::from_slice(&stored)
            .map_err(|_| StorageError::Corrupt("a stored resource is not JSON".into()))?;
        json_patch::patch(&mut document, patch).map_err(|e| EngineError::Unprocessable(e.to_string()))?;
        let serde_json::Value::Object(body) = document else {
            return Err(EngineError::Unprocessable("the patched document is not a resource".into()));
        };
        let resource = fhir::resource::from_object(self.model, body, rt)?;
        resource.check_id(id)?;
        Ok((row, resource))
    }
}

/// A JSON Patch document (an array of operations).
pub(super) fn parse_patch(bytes: &[u8]) -> Result<json_patch::Patch, EngineError> {
    serde_json::from_slice(bytes)
        .map_err(|e| EngineError::BadRequest(format!("the body is not a JSON Patch document (RFC 6902): {e}")))
}
