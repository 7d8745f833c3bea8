//! create, update (and create-on-update), delete.
//!
//! Order of a write: validate, decide, seal, PUT the object under a fresh key, then commit the
//! version row, the current pointer and the audit record in one transaction.

use std::sync::Arc;

use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::Principal;
use crate::crypto::{CompartmentKey, ObjectIdentity, envelope};
use crate::fhir::{self, Compartment, Resource};
use crate::ids::{ResourceId, ResourceType, VersionId};
use crate::policy::{self, Action, Permit};
use crate::search;
use crate::storage::{Method, NewVersion, ObjectKey, SearchRows, StorageError, VersionCommit, VersionRow};
use crate::time::Timestamp;

use super::conditional::Precondition;
use super::{Engine, EngineError, RequestContext, SEARCH_KEY};

/// How many times an update without `If-Match` retries after losing a race.
const MAX_ATTEMPTS: usize = 3;

/// The outcome of a successful write.
#[derive(Debug)]
pub struct Written {
    pub id: ResourceId,
    pub version: VersionId,
    pub last_updated: Timestamp,
    /// `true` when the write created the resource (201), `false` for an update (200).
    pub created: bool,
    /// The stored JSON (what a later read returns); empty for a deletion.
    pub body: Vec<u8>,
}

/// What `write_version` commits.
pub(super) struct VersionSpec {
    pub(super) rt: ResourceType,
    pub(super) id: ResourceId,
    pub(super) version: VersionId,
    pub(super) method: Method,
    pub(super) compartment: Compartment,
    pub(super) expected_current: Option<VersionId>,
    pub(super) last_updated: Timestamp,
    pub(super) key: KeySource,
}

/// Which key seals a version.
pub(super) enum KeySource {
    /// The compartment's stored key, created and stored first if the compartment has none (a
    /// client-chosen id may already have a compartment: resources that referred to it before
    /// it existed).
    Stored,
    /// The compartment is this resource's own and new (a Patient under an id the server just
    /// chose): its key is created here and committed with this version.
    New,
    /// A key made by another entry of the same transaction, for the compartment it creates.
    Given(Arc<CompartmentKey>),
}

/// A version sealed and its object written, ready to commit.
pub(super) struct Prepared {
    pub(super) commit: VersionCommit,
    pub(super) written: Written,
    /// The key of the compartment this version creates: cached once the commit is durable.
    pub(super) fresh_key: Option<(String, Arc<CompartmentKey>)>,
}

impl Engine {
    /// `POST /{type}`: the server assigns the id.
    pub async fn create(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        body: &[u8],
    ) -> Result<Written, EngineError> {
        let target = Target { resource_type: Some(rt), ..Target::default() };
        let result = self.create_inner(ctx, principal, rt, body).await;
        self.audited(ctx, principal, AuditAction::Create, target, result).await
    }

    pub(super) async fn create_inner(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        body: &[u8],
    ) -> Result<Written, EngineError> {
        let resource = fhir::resource::parse(self.model, body, rt)?;
        self.create_resource(ctx, principal, rt, &resource).await
    }

    /// Create `resource` under a new server-assigned id (any id in its body is ignored).
    pub(super) async fn create_resource(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        resource: &Resource,
    ) -> Result<Written, EngineError> {
        let id = ResourceId::generate();
        let compartment = resource.compartment(&id);
        let permit =
            self.policies.authorize(principal, Action::Create, &self.policy_target(ctx, rt, Some(&compartment)))?;
        let spec = VersionSpec {
            rt,
            id: id.clone(),
            version: VersionId::FIRST,
            method: Method::Create,
            compartment: compartment.clone(),
            expected_current: None,
            last_updated: Timestamp::now(),
            key: if compartment.is_patient(&id) { KeySource::New } else { KeySource::Stored },
        };
        self.write_version(ctx, principal, &permit, &spec, Some(resource)).await
    }

    /// `PUT /{type}/{id}`: update, or create with the client's id.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
        body: &[u8],
        precondition: Precondition,
    ) -> Result<Written, EngineError> {
        let target = Target { resource_type: Some(rt), resource_id: Some(id.clone()), ..Target::default() };
        let result = async {
            let resource = fhir::resource::parse(self.model, body, rt)?;
            resource.check_id(id)?;
            self.update_resource(ctx, principal, rt, id, &resource, precondition).await
        }
        .await;
        self.audited(ctx, principal, AuditAction::Update, target, result).await
    }

    /// Write `resource` (its id already checked) as the next version of `rt/id`.
    pub(super) async fn update_resource(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
        resource: &Resource,
        precondition: Precondition,
    ) -> Result<Written, EngineError> {
        let if_match = precondition.if_match;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.index.current(&ctx.tenant, rt, id).await?;
            let (permit, spec) = self.plan_update(ctx, principal, rt, id, resource, precondition, current.as_ref())?;
            match self.write_version(ctx, principal, &permit, &spec, Some(resource)).await {
                Err(EngineError::Conflict) if if_match.is_none() && attempt < MAX_ATTEMPTS => continue,
                Err(EngineError::Conflict) if if_match.is_some() => {
                    return Err(EngineError::PreconditionFailed {
                        expected: if_match.unwrap_or(VersionId::FIRST),
                        current: "newer".into(),
                    });
                }
                other => return other,
            }
        }
    }

    /// Decide an update of `rt/id` whose current version is `current`, and what it writes.
    #[expect(clippy::too_many_arguments, reason = "the update's parts, named at the call site")]
    pub(super) fn plan_update(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
        resource: &Resource,
        precondition: Precondition,
        current: Option<&VersionRow>,
    ) -> Result<(Permit, VersionSpec), EngineError> {
        check_if_match(precondition.if_match, current)?;
        let live = current.is_some_and(|r| !r.is_deletion());
        if precondition.if_none_match_any && live {
            return Err(EngineError::Exists { rt, id: id.clone() });
        }
        let compartment = resource.compartment(id);
        // Moving a resource between compartments needs permission on both sides.
        if let Some(row) = current.filter(|r| !r.is_deletion())
            && let Some(old) = Compartment::parse_key_ref(&row.compartment)
            && old != compartment
        {
            self.policies.authorize(principal, Action::Update, &self.policy_target(ctx, rt, Some(&old)))?;
        }
        let action = if live { Action::Update } else { Action::Create };
        let permit = self.policies.authorize(principal, action, &self.policy_target(ctx, rt, Some(&compartment)))?;
        let version = match current {
            Some(row) => row.version.next().ok_or(EngineError::Conflict)?,
            None => VersionId::FIRST,
        };
        let now = Timestamp::now();
        let spec = VersionSpec {
            rt,
            id: id.clone(),
            version,
            method: if live { Method::Update } else { Method::Create },
            compartment,
            expected_current: current.map(|r| r.version),
            last_updated: current.map_or(now, |r| now.at_least(r.last_updated)),
            key: KeySource::Stored,
        };
        Ok((permit, spec))
    }

    /// `DELETE /{type}/{id}`: a logical delete (a new version with no content).
    pub async fn delete(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
        if_match: Option<VersionId>,
    ) -> Result<Option<Written>, EngineError> {
        let target = Target { resource_type: Some(rt), resource_id: Some(id.clone()), ..Target::default() };
        let result = self.delete_inner(ctx, principal, rt, id, if_match).await;
        self.audited(ctx, principal, AuditAction::Delete, target, result).await
    }

    pub(super) async fn delete_inner(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        id: &ResourceId,
        if_match: Option<VersionId>,
    ) -> Result<Option<Written>, EngineError> {
        let current = self.index.current(&ctx.tenant, rt, id).await?;
        check_if_match(if_match, current.as_ref())?;
        let Some(current) = current else {
            // Deleting what never existed changes nothing (FHIR: 200/204). Still decided and audited.
            let permit = self.policies.authorize(
                principal,
                Action::Delete,
                &self.policy_target(ctx, rt, None).with_tenant_compartment(),
            )?;
            self.audit_ok(ctx, principal, AuditAction::Delete, rt, id, None, None, 204, &permit).await?;
            return Ok(None);
        };
        let (permit, compartment) = self.authorize_row(ctx, principal, Action::Delete, &current)?;
        if current.is_deletion() {
            let version = Some(current.version);
            self.audit_ok(
                ctx,
                principal,
                AuditAction::Delete,
                rt,
                id,
                version,
                Some(&current.compartment),
                204,
                &permit,
            )
            .await?;
            return Ok(Some(Written {
                id: id.clone(),
                version: current.version,
                last_updated: current.last_updated,
                created: false,
                body: Vec::new(),
            }));
        }
        let spec = VersionSpec {
            rt,
            id: id.clone(),
            version: current.version.next().ok_or(EngineError::Conflict)?,
            method: Method::Delete,
            compartment: compartment.clone(),
            expected_current: Some(current.version),
            last_updated: Timestamp::now().at_least(current.last_updated),
            key: KeySource::Stored,
        };
        match self.write_version(ctx, principal, &permit, &spec, None).await {
            Err(EngineError::Conflict) if if_match.is_some() => Err(EngineError::PreconditionFailed {
                expected: if_match.unwrap_or(VersionId::FIRST),
                current: "newer".into(),
            }),
            other => other.map(Some),
        }
    }

    /// Seal and PUT the object (if any), then commit row + pointer + audit atomically.
    async fn write_version(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        permit: &Permit,
        spec: &VersionSpec,
        resource: Option<&Resource>,
    ) -> Result<Written, EngineError> {
        let prepared = self.prepare_version(ctx, principal, permit, spec, resource).await?;
        let written_to = self.remembers().then(|| prepared.commit.version.clone());
        match self.commits.commit_version(prepared.commit).await {
            Ok(seq) => {
                if let Some(written) = &written_to {
                    self.remember_written(written, seq);
                }
                if let Some((key_ref, key)) = prepared.fresh_key {
                    self.keys.remember_compartment_key(&ctx.tenant, &key_ref, key).await;
                }
                Ok(prepared.written)
            }
            // The object just written is now an orphan; the sweeper removes it.
            Err(StorageError::Conflict { .. }) => Err(EngineError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Seal and PUT the object (if any); what commits the version (row, pointer, search rows,
    /// audit record, a new compartment's key) is the caller's to send.
    pub(super) async fn prepare_version(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        permit: &Permit,
        spec: &VersionSpec,
        resource: Option<&Resource>,
    ) -> Result<Prepared, EngineError> {
        let key_ref = spec.compartment.key_ref();
        let storage = self.location_of(&ctx.tenant)?;
        let mut body = Vec::new();
        let mut new_key = None;
        let object_key = match resource {
            Some(resource) => {
                body = resource.stored_json(&spec.id, spec.version, spec.last_updated);
                let key = match &spec.key {
                    KeySource::New => {
                        let (key, wrapped) = self.keys.new_compartment_key(&ctx.tenant, &key_ref).await?;
                        new_key = Some((Arc::clone(&key), wrapped));
                        key
                    }
                    KeySource::Given(key) => Arc::clone(key),
                    KeySource::Stored => self.keys.compartment_key_for_write(&ctx.tenant, &key_ref).await?,
                };
                let identity = ObjectIdentity {
                    tenant: &ctx.tenant,
                    location: storage.name(),
                    resource_type: spec.rt,
                    id: &spec.id,
                    version: spec.version,
                    compartment: &key_ref,
                };
                let sealed = envelope::seal(&key, &identity, &body).map_err(EngineError::Integrity)?;
                let object_key = ObjectKey::new_for(&ctx.tenant, spec.rt, &spec.id, spec.version);
                storage.put_new(&object_key, sealed.into_bytes()).await?;
                Some(object_key)
            }
            None => None,
        };
        let created = spec.method == Method::Create;
        let status = match spec.method {
            Method::Create => 201,
            Method::Update => 200,
            Method::Delete => 204,
        };
        let action = match spec.method {
            Method::Create if spec.expected_current.is_none() && resource.is_some() => AuditAction::Create,
            Method::Delete => AuditAction::Delete,
            _ => AuditAction::Update,
        };
        let target = Target {
            resource_type: Some(spec.rt),
            resource_id: Some(spec.id.clone()),
            version: Some(spec.version),
            compartment: Some(key_ref.clone()),
        };
        let audit = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), action)
            .target(&target)
            .outcome(status, None)
            .policy(Some(permit.rule()));
        let version = NewVersion {
            tenant: ctx.tenant.clone(),
            resource_type: spec.rt,
            id: spec.id.clone(),
            version: spec.version,
            method: spec.method,
            object_key,
            location: storage.name().to_owned(),
            compartment: key_ref.clone(),
            last_updated: spec.last_updated,
            expected_current: spec.expected_current,
        };
        let search = match resource {
            Some(resource) => self.search_rows(ctx, spec.rt, resource).await?,
            // A deletion leaves nothing to find.
            None => SearchRows::default(),
        };
        let (key, wrapped) = new_key.unzip();
        Ok(Prepared {
            commit: VersionCommit { version, audit, new_key: wrapped, search: Some(search) },
            written: Written {
                id: spec.id.clone(),
                version: spec.version,
                last_updated: spec.last_updated,
                created,
                body,
            },
            fresh_key: key.map(|key| (key_ref, key)),
        })
    }

    /// What the search index keeps of `resource` (blind tokens under the tenant's search key).
    async fn search_rows(
        &self,
        ctx: &RequestContext,
        rt: ResourceType,
        resource: &Resource,
    ) -> Result<SearchRows, EngineError> {
        let key = self.keys.mac_key(&ctx.tenant, SEARCH_KEY).await?;
        let blind_index = key.blind_index();
        let blind = search::Blind::new(&blind_index, rt.as_str());
        Ok(search::index_rows(self.search_params, &blind, resource.body(), &ctx.base_url, self.limits.string_indexing))
    }

    #[expect(clippy::too_many_arguments, reason = "one audit record's fields, named at the call site")]
    pub(super) async fn audit_ok(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        action: AuditAction,
        rt: ResourceType,
        id: &ResourceId,
        version: Option<VersionId>,
        compartment: Option<&str>,
        status: u16,
        permit: &Permit,
    ) -> Result<(), EngineError> {
        let record = ok_record(ctx, principal, action, rt, id, version, compartment, status, permit);
        self.commits.append_audit(record).await?;
        Ok(())
    }

    pub(super) fn policy_target<'a>(
        &self,
        ctx: &'a RequestContext,
        rt: ResourceType,
        compartment: Option<&'a Compartment>,
    ) -> policy::Resource<'a> {
        policy::Resource {
            tenant: &ctx.tenant,
            resource_type: rt,
            compartment,
            labels: None,
            break_glass: ctx.meta.break_glass.is_some(),
        }
    }
}

trait TenantCompartment {
    fn with_tenant_compartment(self) -> Self;
}

impl TenantCompartment for policy::Resource<'_> {
    /// A resource that does not exist belongs to no patient: decide as for the tenant compartment.
    fn with_tenant_compartment(mut self) -> Self {
        static TENANT: Compartment = Compartment::Tenant;
        self.compartment = Some(&TENANT);
        self
    }
}

pub(super) fn check_if_match(if_match: Option<VersionId>, current: Option<&VersionRow>) -> Result<(), EngineError> {
    let Some(expected) = if_match else { return Ok(()) };
    match current {
        Some(row) if row.version == expected && !row.is_deletion() => Ok(()),
        Some(row) => Err(EngineError::PreconditionFailed { expected, current: row.version.to_string() }),
        None => Err(EngineError::PreconditionFailed { expected, current: "none (the resource does not exist)".into() }),
    }
}

/// The record of an interaction that succeeded, as `Engine::audit_ok` appends it.
#[expect(clippy::too_many_arguments, reason = "one audit record's fields, named at the call site")]
pub(super) fn ok_record(
    ctx: &RequestContext,
    principal: &Principal,
    action: AuditAction,
    rt: ResourceType,
    id: &ResourceId,
    version: Option<VersionId>,
    compartment: Option<&str>,
    status: u16,
    permit: &Permit,
) -> AuditRecord {
    let target = Target {
        resource_type: Some(rt),
        resource_id: Some(id.clone()),
        version,
        compartment: compartment.map(str::to_owned),
    };
    AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), action)
        .target(&target)
        .outcome(status, None)
        .policy(Some(permit.rule()))
}
