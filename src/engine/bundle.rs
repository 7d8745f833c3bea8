//! Transaction and batch Bundles (`POST /fhir/{tenant}`).
//!
//! A transaction is all or nothing. Its entries are planned in the order FHIR prescribes
//! (DELETE, POST, PUT/PATCH, GET): new ids are chosen, conditions searched, `urn:uuid:` full
//! URLs and conditional references resolved and rewritten; then every write is decided, sealed
//! and its object written; then ONE index transaction commits every version with its search
//! rows and audit record (`Index::commit_atomic`). A failure anywhere before that commit leaves
//! only orphan objects, which the sweeper removes. Reads (GET entries) run after the commit and
//! see its writes; a read that fails is reported in its entry and does not undo the writes.
//!
//! A batch runs each entry as the interaction it names, on its own, in the Bundle's order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{Map, Value};

use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::Principal;
use crate::crypto::{CompartmentKey, WrappedKey};
use crate::fhir::transaction::{self as tx, BundleKind, EntryMethod, EntryRequest, EntryUrl};
use crate::fhir::{self, Compartment, bundle, outcome};
use crate::ids::{ResourceId, ResourceType, VersionId};
use crate::policy::{Action, Permit};
use crate::storage::{Method, StorageError, VersionCommit, VersionRow};
use crate::time::Timestamp;

use super::conditional::{Precondition, parse_patch};
use super::write::{KeySource, VersionSpec};
use super::{Engine, EngineError, RequestContext, SearchRequest, Written};

/// Objects of one transaction sealed and written at once.
const PREPARE_CONCURRENCY: usize = 16;

/// What one entry does, once planned.
enum Plan {
    /// POST: a new resource under a server-chosen id.
    Create {
        rt: ResourceType,
        id: ResourceId,
        resource: Map<String, Value>,
    },
    /// POST with `ifNoneExist` that matched: nothing is written.
    Matched(VersionRow),
    /// PUT (also a conditional update, once its condition is resolved to an id).
    Put {
        rt: ResourceType,
        id: ResourceId,
        resource: Map<String, Value>,
        precondition: Precondition,
        conditional: bool,
    },
    Patch {
        rt: ResourceType,
        id: ResourceId,
        patch: json_patch::Patch,
        if_match: Option<VersionId>,
    },
    /// DELETE (also a conditional delete: the ids it matched, maybe none).
    Delete {
        rt: ResourceType,
        ids: Vec<ResourceId>,
    },
    Get(EntryUrl),
}

impl Plan {
    /// The resource this entry gives an identity to (for its `fullUrl`).
    fn identity(&self) -> Option<(ResourceType, &ResourceId)> {
        match self {
            Self::Create { rt, id, .. } | Self::Put { rt, id, .. } | Self::Patch { rt, id, .. } => Some((*rt, id)),
            Self::Matched(row) => Some((row.resource_type, &row.id)),
            Self::Delete { .. } | Self::Get(_) => None,
        }
    }

    /// The resources this entry changes.
    fn changes(&self) -> Vec<(ResourceType, &ResourceId)> {
        match self {
            Self::Create { rt, id, .. } | Self::Put { rt, id, .. } | Self::Patch { rt, id, .. } => vec![(*rt, id)],
            Self::Delete { rt, ids } => ids.iter().map(|id| (*rt, id)).collect(),
            Self::Matched(_) | Self::Get(_) => Vec::new(),
        }
    }

    fn resource_mut(&mut self) -> Option<&mut Map<String, Value>> {
        match self {
            Self::Create { resource, .. } | Self::Put { resource, .. } => Some(resource),
            _ => None,
        }
    }
}

/// An entry and its plan.
struct Planned {
    entry: usize,
    full_url: Option<String>,
    plan: Plan,
}

/// A write of a transaction, decided.
struct Decided {
    entry: usize,
    permit: Permit,
    spec: VersionSpec,
    resource: Option<fhir::Resource>,
    /// The client gave `If-Match`: losing a race is then its failed precondition.
    if_match: bool,
    /// The wrapped key of the compartment this version creates.
    new_key: Option<WrappedKey>,
}

impl Engine {
    /// `POST /fhir/{tenant}` with a transaction or batch Bundle: the response Bundle.
    /// `representation`: entries carry the resources written (`Prefer: return=representation`).
    pub async fn bundle(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        body: &[u8],
        representation: bool,
    ) -> Result<Vec<u8>, EngineError> {
        let max = self.limits.max_bundle_entries;
        let parsed = match tx::parse(body, max) {
            Ok(parsed) => Ok(parsed),
            Err(Ok(count)) => Err(EngineError::TooLarge(format!(
                "the Bundle has {count} entries; at most {max} are accepted (`writes.bundle_max_entries`)"
            ))),
            Err(Err(e)) => Err(EngineError::BadRequest(e.to_string())),
        };
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(e) => return self.audited(ctx, principal, AuditAction::Transaction, Target::default(), Err(e)).await,
        };
        match parsed.kind {
            BundleKind::Transaction => {
                let result = self.transaction(ctx, principal, parsed.entries, representation).await;
                self.audited(ctx, principal, AuditAction::Transaction, Target::default(), result).await
            }
            BundleKind::Batch => self.batch(ctx, principal, parsed.entries, representation).await,
        }
    }

    async fn transaction(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        entries: Vec<EntryRequest>,
        representation: bool,
    ) -> Result<Vec<u8>, EngineError> {
        let count = entries.len();
        let full_urls: Vec<Option<String>> = entries.iter().map(|e| e.full_url.clone()).collect();
        let mut plans = self.plan(ctx, principal, entries).await?;
        self.resolve_references(ctx, principal, &mut plans).await?;

        // Keys for the compartments this transaction creates (its new Patients), made first:
        // their resources may come before them in the Bundle.
        let mut fresh: HashMap<String, (Arc<CompartmentKey>, WrappedKey)> = HashMap::new();
        for planned in &plans {
            if let Plan::Create { rt: ResourceType::PATIENT, id, .. } = &planned.plan {
                let key_ref = Compartment::Patient(id.clone()).key_ref();
                let made = self.keys.new_compartment_key(&ctx.tenant, &key_ref).await?;
                fresh.insert(key_ref, made);
            }
        }

        let mut outcomes: Vec<Option<bundle::ResponseEntry>> = (0..count).map(|_| None).collect();
        let mut decided = Vec::new();
        let mut reads = Vec::new();
        let mut audits = Vec::new();
        for Planned { entry, plan, .. } in plans {
            let at = |e| EngineError::Entry { index: entry, source: Box::new(e) };
            match plan {
                Plan::Get(url) => reads.push((entry, url)),
                Plan::Matched(row) => {
                    let row_type = row.resource_type;
                    let (written, record) = self.matched(ctx, principal, row, representation).await.map_err(at)?;
                    audits.push(record);
                    set(&mut outcomes, entry, written_entry(ctx, row_type, &written, 200, representation));
                }
                Plan::Delete { rt, ids } => {
                    let (writes, records) = self.decide_deletes(ctx, principal, entry, rt, ids).await.map_err(at)?;
                    decided.extend(writes);
                    audits.extend(records);
                    set(&mut outcomes, entry, status_entry(204));
                }
                plan => {
                    let mut write = self.decide_write(ctx, principal, entry, plan).await.map_err(at)?;
                    let key_ref = write.spec.compartment.key_ref();
                    if let Some((key, wrapped)) = fresh.get(&key_ref) {
                        write.spec.key = KeySource::Given(Arc::clone(key));
                        if write.spec.compartment.is_patient(&write.spec.id) {
                            write.new_key = Some(wrapped.clone());
                        }
                    }
                    decided.push(write);
                }
            }
        }

        let prepared: Vec<_> = futures::stream::iter(decided.iter())
            .map(|d| async move {
                self.prepare_version(ctx, principal, &d.permit, &d.spec, d.resource.as_ref())
                    .await
                    .map_err(|e| EngineError::Entry { index: d.entry, source: Box::new(e) })
            })
            .buffered(PREPARE_CONCURRENCY)
            .try_collect()
            .await?;
        let mut commits = Vec::with_capacity(prepared.len());
        let mut written = Vec::with_capacity(prepared.len());
        for (d, p) in decided.iter().zip(prepared) {
            commits.push(VersionCommit { new_key: d.new_key.clone().or(p.commit.new_key), ..p.commit });
            written.push((d.entry, d.spec.rt, d.spec.method, p.written));
        }
        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::Transaction)
            .outcome(200, Some(format!("{count} entries, {} versions", commits.len())));
        audits.push(record);
        match self.index.commit_atomic(&commits, &audits).await? {
            Ok(seqs) => {
                for (c, seq) in commits.iter().zip(seqs) {
                    self.remember_written(&c.version, seq);
                }
            }
            Err((k, StorageError::Conflict { .. } | StorageError::KeyExists(_))) => {
                let d =
                    decided.get(k).ok_or_else(|| StorageError::Corrupt("a commit outside the transaction".into()))?;
                let source = match d.if_match {
                    true => EngineError::PreconditionFailed { expected: d.spec.version, current: "newer".into() },
                    false => EngineError::Conflict,
                };
                return Err(EngineError::Entry { index: d.entry, source: Box::new(source) });
            }
            Err((_, e)) => return Err(e.into()),
        }
        for (key_ref, (key, _)) in fresh {
            self.keys.remember_compartment_key(&ctx.tenant, &key_ref, key).await;
        }
        for (entry, rt, method, w) in written {
            if method != Method::Delete {
                let status = if w.created { 201 } else { 200 };
                set(&mut outcomes, entry, written_entry(ctx, rt, &w, status, representation));
            }
        }
        for (entry, url) in reads {
            let outcome = match self.get_entry(ctx, principal, url).await {
                Ok(outcome) => outcome,
                Err(e) => error_entry(&e),
            };
            set(&mut outcomes, entry, outcome);
        }
        let entries: Vec<bundle::ResponseEntry> = outcomes
            .into_iter()
            .zip(full_urls)
            .map(|(outcome, full_url)| {
                let mut outcome = outcome.unwrap_or_else(|| status_entry(500));
                if outcome.full_url.is_none() && outcome.location.is_none() {
                    outcome.full_url = full_url;
                }
                outcome
            })
            .collect();
        Ok(bundle::response(BundleKind::Transaction.response_type(), &entries))
    }

    /// Plan every entry, in processing order.
    async fn plan(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        entries: Vec<EntryRequest>,
    ) -> Result<Vec<Planned>, EngineError> {
        let mut order: Vec<(usize, EntryRequest)> = entries.into_iter().enumerate().collect();
        order.sort_by_key(|(_, e)| e.method);
        let mut plans = Vec::with_capacity(order.len());
        let mut changed = HashSet::new();
        let mut named = HashSet::new();
        for (index, entry) in order {
            let at = |e| EngineError::Entry { index, source: Box::new(e) };
            let full_url = entry.full_url.clone();
            let plan = self.plan_entry(ctx, principal, entry).await.map_err(at)?;
            for (rt, id) in plan.changes() {
                if !changed.insert((rt, id.clone())) {
                    return Err(at(EngineError::BadRequest(format!(
                        "{rt}/{id} is changed by another entry of this transaction too"
                    ))));
                }
            }
            if let Some(full_url) = &full_url
                && plan.identity().is_some()
                && !named.insert(full_url.clone())
            {
                return Err(at(EngineError::BadRequest(format!(
                    "the fullUrl `{}` is used by another entry too",
                    short(full_url)
                ))));
            }
            plans.push(Planned { entry: index, full_url, plan });
        }
        Ok(plans)
    }

    async fn plan_entry(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        entry: EntryRequest,
    ) -> Result<Plan, EngineError> {
        let url = EntryUrl::parse(&entry.url, &ctx.base_url).map_err(EngineError::BadRequest)?;
        let precondition = precondition(&entry)?;
        // Each arm takes the resource at most once: moved, not copied (an ingest's hot path).
        let mut resource = entry.resource;
        let mut body = || resource.take().ok_or_else(|| EngineError::BadRequest("the entry has no resource".into()));
        Ok(match (entry.method, url) {
            (EntryMethod::Post, EntryUrl::Type(rt)) => match &entry.if_none_exist {
                Some(condition) => match self.single_match(ctx, principal, rt, condition).await? {
                    Some(row) => Plan::Matched(row),
                    None => Plan::Create { rt, id: ResourceId::generate(), resource: body()? },
                },
                None => Plan::Create { rt, id: ResourceId::generate(), resource: body()? },
            },
            (EntryMethod::Put, EntryUrl::Instance(rt, id)) => {
                Plan::Put { rt, id, resource: body()?, precondition, conditional: false }
            }
            (EntryMethod::Put, EntryUrl::Search(rt, condition)) => {
                let resource = body()?;
                let id = match self.single_match(ctx, principal, rt, &condition).await? {
                    Some(row) => row.id,
                    None => match resource.get("id").and_then(Value::as_str) {
                        Some(id) => ResourceId::parse(id).map_err(|_| {
                            EngineError::BadRequest(format!("the resource id `{}` is not valid", short(id)))
                        })?,
                        None => ResourceId::generate(),
                    },
                };
                Plan::Put { rt, id, resource, precondition, conditional: true }
            }
            (EntryMethod::Patch, EntryUrl::Instance(rt, id)) => {
                let patch = parse_patch(&patch_document(&body()?)?)?;
                Plan::Patch { rt, id, patch, if_match: precondition.if_match }
            }
            (EntryMethod::Delete, EntryUrl::Instance(rt, id)) => Plan::Delete { rt, ids: vec![id] },
            (EntryMethod::Delete, EntryUrl::Search(rt, condition)) => {
                Plan::Delete { rt, ids: self.deletion_targets(ctx, principal, rt, &condition).await? }
            }
            (
                EntryMethod::Get,
                url @ (EntryUrl::Instance(..) | EntryUrl::Version(..) | EntryUrl::Search(..) | EntryUrl::Type(_)),
            ) => Plan::Get(url),
            (method, _) => {
                return Err(EngineError::BadRequest(format!(
                    "a {} entry cannot name the URL `{}`",
                    method.as_str(),
                    short(&entry.url)
                )));
            }
        })
    }

    /// Resolve the references of every resource written: `fullUrl`s of other entries become
    /// `Type/id`, conditional references the one resource they match. A `urn:uuid:` that names
    /// no entry is an error (it would dangle forever).
    async fn resolve_references(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        plans: &mut [Planned],
    ) -> Result<(), EngineError> {
        let mut resolved: HashMap<String, String> = HashMap::new();
        for planned in plans.iter() {
            if let (Some(full_url), Some((rt, id))) = (&planned.full_url, planned.plan.identity()) {
                resolved.insert(full_url.clone(), format!("{rt}/{id}"));
            }
        }
        for Planned { entry, plan, .. } in plans.iter_mut() {
            let at = |e| EngineError::Entry { index: *entry, source: Box::new(e) };
            let Some(resource) = plan.resource_mut() else { continue };
            for reference in tx::references(resource) {
                if resolved.contains_key(&reference) {
                    continue;
                }
                if tx::is_placeholder(&reference) {
                    return Err(at(EngineError::BadRequest(format!(
                        "the reference `{}` names no entry of this Bundle",
                        short(&reference)
                    ))));
                }
                if let Some((rt, condition)) = tx::conditional_reference(&reference) {
                    let row = self.single_match(ctx, principal, rt, condition).await.map_err(at)?;
                    let row = row.ok_or_else(|| {
                        at(EngineError::Condition(format!(
                            "the conditional reference `{}` matches no {rt}",
                            short(&reference)
                        )))
                    })?;
                    resolved.insert(reference, format!("{rt}/{}", row.id));
                }
            }
            tx::rewrite_references(resource, &|r| resolved.get(r).cloned());
        }
        Ok(())
    }
}

impl Engine {
    /// A conditional create that matched: the match (opened if the client wants it back) and
    /// the audit record the transaction commits for it.
    async fn matched(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        row: VersionRow,
        representation: bool,
    ) -> Result<(Written, AuditRecord), EngineError> {
        let (permit, _) = self.authorize_row(ctx, principal, Action::Read, &row)?;
        let body = if representation { self.open_row(&permit, &row).await? } else { Vec::new() };
        let target = Target {
            resource_type: Some(row.resource_type),
            resource_id: Some(row.id.clone()),
            version: Some(row.version),
            compartment: Some(row.compartment.clone()),
        };
        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::Create)
            .target(&target)
            .outcome(200, Some("matched an existing resource".into()))
            .policy(Some(permit.rule()));
        let written =
            Written { id: row.id, version: row.version, last_updated: row.last_updated, created: false, body };
        Ok((written, record))
    }

    /// The deletions of a DELETE entry; what is already gone (or never was) only gets an
    /// audit record.
    async fn decide_deletes(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        entry: usize,
        rt: ResourceType,
        ids: Vec<ResourceId>,
    ) -> Result<(Vec<Decided>, Vec<AuditRecord>), EngineError> {
        let mut decided = Vec::new();
        let mut records = Vec::new();
        for id in ids {
            let current = self.index.current(&ctx.tenant, rt, &id).await?;
            let target = Target { resource_type: Some(rt), resource_id: Some(id.clone()), ..Target::default() };
            let live = current.filter(|row| !row.is_deletion());
            let Some(current) = live else {
                let tenant = Compartment::Tenant;
                let permit =
                    self.policies.authorize(principal, Action::Delete, &self.policy_target(ctx, rt, Some(&tenant)))?;
                let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::Delete)
                    .target(&target)
                    .outcome(204, Some("nothing to delete".into()))
                    .policy(Some(permit.rule()));
                records.push(record);
                continue;
            };
            let (permit, compartment) = self.authorize_row(ctx, principal, Action::Delete, &current)?;
            let spec = VersionSpec {
                rt,
                id,
                version: current.version.next().ok_or(EngineError::Conflict)?,
                method: Method::Delete,
                compartment,
                expected_current: Some(current.version),
                last_updated: Timestamp::now().at_least(current.last_updated),
                key: KeySource::Stored,
            };
            decided.push(Decided { entry, permit, spec, resource: None, if_match: false, new_key: None });
        }
        Ok((decided, records))
    }

    /// Validate and decide a create, update or patch of a transaction.
    async fn decide_write(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        entry: usize,
        plan: Plan,
    ) -> Result<Decided, EngineError> {
        match plan {
            Plan::Create { rt, id, resource } => {
                let resource = fhir::resource::from_object(self.model, resource, rt)?;
                let compartment = resource.compartment(&id);
                let permit = self.policies.authorize(
                    principal,
                    Action::Create,
                    &self.policy_target(ctx, rt, Some(&compartment)),
                )?;
                let spec = VersionSpec {
                    rt,
                    id,
                    version: VersionId::FIRST,
                    method: Method::Create,
                    compartment,
                    expected_current: None,
                    last_updated: Timestamp::now(),
                    key: KeySource::Stored,
                };
                Ok(Decided { entry, permit, spec, resource: Some(resource), if_match: false, new_key: None })
            }
            Plan::Put { rt, id, resource, precondition, conditional } => {
                let mut resource = fhir::resource::from_object(self.model, resource, rt)?;
                if conditional && resource.body_id().is_none() {
                    resource.set_id(&id);
                }
                resource.check_id(&id)?;
                let current = self.index.current(&ctx.tenant, rt, &id).await?;
                let (permit, spec) =
                    self.plan_update(ctx, principal, rt, &id, &resource, precondition, current.as_ref())?;
                let if_match = precondition.if_match.is_some();
                Ok(Decided { entry, permit, spec, resource: Some(resource), if_match, new_key: None })
            }
            Plan::Patch { rt, id, patch, if_match } => {
                let (row, resource) = self.patched(ctx, principal, rt, &id, &patch, if_match).await?;
                let precondition = Precondition { if_match: Some(row.version), if_none_match_any: false };
                let (permit, spec) = self.plan_update(ctx, principal, rt, &id, &resource, precondition, Some(&row))?;
                Ok(Decided {
                    entry,
                    permit,
                    spec,
                    resource: Some(resource),
                    if_match: if_match.is_some(),
                    new_key: None,
                })
            }
            Plan::Matched(_) | Plan::Delete { .. } | Plan::Get(_) => {
                Err(EngineError::BadRequest("this entry writes nothing".into()))
            }
        }
    }

    /// A GET entry: a read, a vread, or a search.
    async fn get_entry(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        url: EntryUrl,
    ) -> Result<bundle::ResponseEntry, EngineError> {
        let (rt, id, read) = match url {
            EntryUrl::Instance(rt, id) => {
                let read = self.read(ctx, principal, rt, &id).await?;
                (rt, id, read)
            }
            EntryUrl::Version(rt, id, version) => {
                let read = self.vread(ctx, principal, rt, &id, version).await?;
                (rt, id, read)
            }
            EntryUrl::Type(rt) => return self.search_entry(ctx, principal, rt, "").await,
            EntryUrl::Search(rt, query) => return self.search_entry(ctx, principal, rt, &query).await,
        };
        Ok(bundle::ResponseEntry {
            full_url: Some(Engine::full_url(ctx, rt, &id)),
            resource: Some(read.body),
            status: status_line(200),
            location: None,
            etag: Some(format!("W/\"{}\"", read.version)),
            last_modified: Some(read.last_updated.to_fhir()),
            outcome: None,
        })
    }

    async fn search_entry(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rt: ResourceType,
        query: &str,
    ) -> Result<bundle::ResponseEntry, EngineError> {
        let pairs = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let request = SearchRequest::from_pairs(rt, pairs, false)?;
        let body = self.search(ctx, principal, &request).await?;
        Ok(bundle::ResponseEntry { resource: Some(body), status: status_line(200), ..bundle::ResponseEntry::default() })
    }

    /// Each entry on its own, in the Bundle's order; a failed entry answers with its outcome.
    async fn batch(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        entries: Vec<EntryRequest>,
        representation: bool,
    ) -> Result<Vec<u8>, EngineError> {
        let count = entries.len();
        let mut outcomes = Vec::with_capacity(count);
        let mut failed = 0;
        for entry in entries {
            let full_url = entry.full_url.clone();
            let outcome = match self.batch_entry(ctx, principal, entry, representation).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    failed += 1;
                    bundle::ResponseEntry { full_url, ..error_entry(&e) }
                }
            };
            outcomes.push(outcome);
        }
        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::Batch)
            .outcome(200, Some(format!("{count} entries, {failed} failed")));
        self.commits.append_audit(record).await?;
        Ok(bundle::response(BundleKind::Batch.response_type(), &outcomes))
    }

    async fn batch_entry(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        entry: EntryRequest,
        representation: bool,
    ) -> Result<bundle::ResponseEntry, EngineError> {
        let url = match EntryUrl::parse(&entry.url, &ctx.base_url) {
            Ok(url) => url,
            Err(reason) => {
                let target = Target::default();
                return self
                    .audited(ctx, principal, AuditAction::Batch, target, Err(EngineError::BadRequest(reason)))
                    .await;
            }
        };
        let precondition = precondition(&entry)?;
        let body = || -> Result<Vec<u8>, EngineError> {
            let resource =
                entry.resource.as_ref().ok_or_else(|| EngineError::BadRequest("the entry has no resource".into()))?;
            serde_json::to_vec(resource).map_err(|e| EngineError::BadRequest(e.to_string()))
        };
        let written = |rt, w: Written| {
            let status = if w.created { 201 } else { 200 };
            written_entry(ctx, rt, &w, status, representation)
        };
        Ok(match (entry.method, url) {
            (EntryMethod::Post, EntryUrl::Type(rt)) => {
                let w = match &entry.if_none_exist {
                    Some(condition) => self.create_if_none_exist(ctx, principal, rt, &body()?, condition).await?,
                    None => self.create(ctx, principal, rt, &body()?).await?,
                };
                written(rt, w)
            }
            (EntryMethod::Put, EntryUrl::Instance(rt, id)) => {
                written(rt, self.update(ctx, principal, rt, &id, &body()?, precondition).await?)
            }
            (EntryMethod::Put, EntryUrl::Search(rt, condition)) => {
                written(rt, self.update_where(ctx, principal, rt, &condition, &body()?).await?)
            }
            (EntryMethod::Patch, EntryUrl::Instance(rt, id)) => {
                let resource = entry
                    .resource
                    .as_ref()
                    .ok_or_else(|| EngineError::BadRequest("the entry has no resource".into()))?;
                let patch = patch_document(resource)?;
                written(rt, self.patch(ctx, principal, rt, &id, &patch, precondition.if_match).await?)
            }
            (EntryMethod::Delete, EntryUrl::Instance(rt, id)) => {
                self.delete(ctx, principal, rt, &id, precondition.if_match).await?;
                status_entry(204)
            }
            (EntryMethod::Delete, EntryUrl::Search(rt, condition)) => {
                self.delete_where(ctx, principal, rt, &condition).await?;
                status_entry(204)
            }
            (EntryMethod::Get, url) => self.get_entry(ctx, principal, url).await?,
            (method, _) => {
                return Err(EngineError::BadRequest(format!(
                    "a {} entry cannot name the URL `{}`",
                    method.as_str(),
                    short(&entry.url)
                )));
            }
        })
    }
}

/// Put `entry` at `index`.
fn set(outcomes: &mut [Option<bundle::ResponseEntry>], index: usize, entry: bundle::ResponseEntry) {
    if let Some(slot) = outcomes.get_mut(index) {
        *slot = Some(entry);
    }
}

/// `If-Match` and `If-None-Match` of an entry.
fn precondition(entry: &EntryRequest) -> Result<Precondition, EngineError> {
    let if_match =
        match &entry.if_match {
            None => None,
            Some(raw) => {
                let tag = raw.trim().strip_prefix("W/").unwrap_or(raw.trim()).trim_matches('"');
                Some(VersionId::parse(tag).map_err(|_| {
                    EngineError::BadRequest("`request.ifMatch` must be an ETag such as `W/\"3\"`".into())
                })?)
            }
        };
    let if_none_match_any = match entry.if_none_match.as_deref().map(str::trim) {
        None => false,
        Some("*") => true,
        Some(_) => return Err(EngineError::BadRequest("`request.ifNoneMatch` supports only `*`".into())),
    };
    Ok(Precondition { if_match, if_none_match_any })
}

/// The JSON Patch a PATCH entry carries: a Binary of `application/json-patch+json`.
fn patch_document(resource: &Map<String, Value>) -> Result<Vec<u8>, EngineError> {
    let bad = |m: &str| EngineError::BadRequest(m.to_owned());
    if resource.get("resourceType").and_then(Value::as_str) != Some("Binary") {
        return Err(bad("a PATCH entry carries its JSON Patch as a Binary (FHIRPath Patch is not supported)"));
    }
    if resource.get("contentType").and_then(Value::as_str) != Some("application/json-patch+json") {
        return Err(bad("the Binary of a PATCH entry must have `contentType` `application/json-patch+json`"));
    }
    let data = resource.get("data").and_then(Value::as_str).ok_or_else(|| bad("the Binary has no `data`"))?;
    base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| bad("the Binary's `data` is not base64"))
}

/// An entry answered with a status and nothing else.
fn status_entry(status: u16) -> bundle::ResponseEntry {
    bundle::ResponseEntry { status: status_line(status), ..bundle::ResponseEntry::default() }
}

/// An entry that failed (batch entries, and reads after a transaction's commit).
fn error_entry(e: &EngineError) -> bundle::ResponseEntry {
    if e.is_internal() {
        tracing::error!(error = %e, "bundle entry failed");
    }
    bundle::ResponseEntry {
        status: status_line(e.status()),
        outcome: Some(outcome::to_json(&e.issues())),
        ..bundle::ResponseEntry::default()
    }
}

/// An entry that wrote (or matched) a version.
fn written_entry(
    ctx: &RequestContext,
    rt: ResourceType,
    w: &Written,
    status: u16,
    representation: bool,
) -> bundle::ResponseEntry {
    bundle::ResponseEntry {
        full_url: Some(Engine::full_url(ctx, rt, &w.id)),
        resource: representation.then(|| w.body.clone()).filter(|b| !b.is_empty()),
        status: status_line(status),
        location: Some(format!("{rt}/{}/_history/{}", w.id, w.version)),
        etag: Some(format!("W/\"{}\"", w.version)),
        last_modified: Some(w.last_updated.to_fhir()),
        outcome: None,
    }
}

/// `201 Created`: a status code with its reason phrase, as `Bundle.entry.response.status` has it.
fn status_line(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        _ => "Internal Server Error",
    };
    format!("{status} {reason}")
}

/// At most 64 characters of client input, for messages.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}
