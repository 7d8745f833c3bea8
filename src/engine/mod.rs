//! The interactions, composed from `fhir`, `policy`, `crypto`, `keys`, `storage` and `audit`.
//!
//! **Architecture Invariant:** no HTTP here (the `api` module translates); no SQL or object
//! store calls except through `storage`. Every interaction leaves its audit record (a listing:
//! one per patient it returned): in the same transaction as a change, appended before a read
//! answers, appended for every refusal. If the audit record cannot be written, it fails.

mod audit_events;
mod audit_log;
mod bundle;
mod conditional;
mod erasure;
mod everything;
mod history;
mod include;
mod paging;
mod read;
mod search;
mod write;

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Agent, AuditAction, AuditRecord, RequestMeta, Target};
use crate::auth::Principal;
use crate::crypto::{CryptoError, ObjectIdentity, Sealed, envelope};
use crate::fhir::model::Model;
use crate::fhir::outcome::{IssueType, OutcomeIssue};
use crate::fhir::search_params::SearchParams;
use crate::fhir::validate::IssueKind;
use crate::fhir::{Compartment, ResourceError};
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
use crate::keys::{KeyError, KeyService};
use crate::policy::{Action, Deny, Permit, Policies};
use crate::storage::{Committer, Index, Locations, Lookups, ObjectStorage, StorageError, VersionRow};
use crate::time::Timestamp;

pub use audit_events::AuditSearchRequest;
pub use audit_log::{LogAnswer, LogQuery};
pub use conditional::Precondition;
pub use erasure::{ErasureAnswer, ErasurePolicy, delay_of_days};
pub use everything::EverythingRequest;
pub use history::HistoryRequest;
pub use include::Include;
pub use paging::PagingError;
pub use search::{SearchRequest, parse_count};
pub use write::Written;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{rt}/{id} is not known")]
    NotFound { rt: ResourceType, id: ResourceId },
    #[error("version {version} of {rt}/{id} is not known")]
    VersionNotFound { rt: ResourceType, id: ResourceId, version: VersionId },
    #[error("{rt}/{id} was deleted (version {version})")]
    Gone { rt: ResourceType, id: ResourceId, version: VersionId, last_updated: Timestamp },
    #[error("{}", .0.reason)]
    Forbidden(Deny),
    #[error("`If-Match` expected version {expected} but the current version is {current}")]
    PreconditionFailed { expected: VersionId, current: String },
    #[error("a concurrent change won; retry with the current version")]
    Conflict,
    /// A condition (`If-None-Exist`, a conditional update, delete or reference) did not single
    /// out the one resource it must.
    #[error("{0}")]
    Condition(String),
    /// `If-None-Match: *` on an update of a resource that exists.
    #[error("`If-None-Match: *` but {rt}/{id} exists")]
    Exists { rt: ResourceType, id: ResourceId },
    /// A PATCH that does not apply (a failed `test`, a path that is not there).
    #[error("the patch does not apply: {0}")]
    Unprocessable(String),
    /// A request beyond a configured limit; the message names the setting.
    #[error("{0}")]
    TooLarge(String),
    /// The audit log has no checkpoint, or no tree of the size asked for, yet.
    #[error("{0}")]
    NoSuchTree(String),
    /// One entry of a transaction failed, so the transaction did.
    #[error("entry {index}: {source}")]
    Entry { index: usize, source: Box<EngineError> },
    #[error(transparent)]
    Paging(#[from] PagingError),
    #[error("the stored object failed its integrity check")]
    Integrity(#[source] CryptoError),
    #[error("storage failure")]
    Storage(#[from] StorageError),
    #[error("key management failure")]
    Keys(KeyError),
    /// The patient's data was erased (crypto-shredding): nothing of it opens again.
    #[error("the data of {compartment} was erased at the patient's request{}; it cannot be read or changed", .at.map(|t| format!(" on {}", t.to_fhir())).unwrap_or_default())]
    Erased { compartment: String, at: Option<Timestamp> },
    /// An erasure refused or not possible now (a legal hold, a retention rule, one already
    /// scheduled or due); the message says which.
    #[error("{0}")]
    Retained(String),
}

impl From<KeyError> for EngineError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Erased(compartment) => Self::Erased { compartment, at: None },
            other => Self::Keys(other),
        }
    }
}

impl EngineError {
    /// The HTTP status FHIR's RESTful API assigns to this outcome (also the audit outcome).
    pub fn status(&self) -> u16 {
        match self {
            Self::Resource(ResourceError::Invalid(_)) => 422,
            Self::Resource(_) | Self::BadRequest(_) => 400,
            Self::Paging(e) => e.status(),
            Self::NotFound { .. } | Self::VersionNotFound { .. } | Self::NoSuchTree(_) => 404,
            Self::Forbidden(deny) if deny.hide_existence => 404,
            Self::Forbidden(_) => 403,
            Self::Gone { .. } | Self::Erased { .. } => 410,
            Self::Retained(_) => 409,
            Self::PreconditionFailed { .. } | Self::Condition(_) | Self::Exists { .. } => 412,
            Self::Conflict => 409,
            Self::Unprocessable(_) => 422,
            Self::TooLarge(_) => 413,
            Self::Entry { source, .. } => source.status(),
            Self::Integrity(_) | Self::Storage(_) | Self::Keys(_) => 500,
        }
    }

    /// The OperationOutcome issues that say what went wrong. A server-side failure says no
    /// more than that (its cause goes to the log, not to the client).
    pub fn issues(&self) -> Vec<OutcomeIssue> {
        let error = |code, message: String| vec![OutcomeIssue::error(code, message)];
        match self {
            Self::Resource(ResourceError::Invalid(issues)) => issues
                .iter()
                .map(|i| {
                    let code = match i.kind {
                        IssueKind::Structure => IssueType::Structure,
                        IssueKind::Required => IssueType::Required,
                        IssueKind::Value => IssueType::Value,
                    };
                    OutcomeIssue::error(code, i.message.clone()).at(i.expression.clone())
                })
                .collect(),
            Self::Resource(ResourceError::Json(json)) => error(IssueType::Structure, json.to_string()),
            Self::Resource(other) => error(IssueType::Invalid, other.to_string()),
            Self::BadRequest(message) => error(IssueType::Invalid, message.clone()),
            Self::Paging(p) if self.status() == 410 => error(IssueType::Expired, p.to_string()),
            Self::Paging(p) => error(IssueType::Invalid, p.to_string()),
            Self::NotFound { .. } | Self::VersionNotFound { .. } | Self::NoSuchTree(_) => {
                error(IssueType::NotFound, self.to_string())
            }
            Self::Forbidden(deny) if deny.hide_existence => {
                error(IssueType::NotFound, "the resource is not known".into())
            }
            Self::Forbidden(deny) => error(IssueType::Forbidden, deny.reason.clone()),
            Self::Gone { .. } | Self::Erased { .. } => error(IssueType::Deleted, self.to_string()),
            Self::Retained(_) => error(IssueType::BusinessRule, self.to_string()),
            Self::PreconditionFailed { .. } | Self::Conflict | Self::Condition(_) | Self::Exists { .. } => {
                error(IssueType::Conflict, self.to_string())
            }
            Self::Unprocessable(_) => error(IssueType::Processing, self.to_string()),
            Self::TooLarge(_) => error(IssueType::TooLong, self.to_string()),
            Self::Entry { index, source } => source
                .issues()
                .into_iter()
                .map(|mut issue| {
                    issue.diagnostics = format!("entry {index}: {}", issue.diagnostics);
                    issue.at(format!("Bundle.entry[{index}]"))
                })
                .collect(),
            Self::Integrity(_) | Self::Storage(_) | Self::Keys(_) => {
                error(IssueType::Exception, "internal error".into())
            }
        }
    }

    /// Whether the server, not the request, is at fault (the cause belongs in the log).
    pub fn is_internal(&self) -> bool {
        match self {
            Self::Entry { source, .. } => source.is_internal(),
            other => other.status() >= 500,
        }
    }

    /// A short reason for the audit record: never user input, never health data.
    fn audit_detail(&self) -> String {
        match self {
            Self::Resource(ResourceError::Invalid(issues)) => format!("invalid resource ({} issues)", issues.len()),
            Self::Resource(ResourceError::Json(_)) => "malformed JSON".into(),
            Self::Resource(_) => "resource does not match the request".into(),
            Self::BadRequest(_) => "bad request parameters".into(),
            Self::Paging(_) => "paging link refused".into(),
            Self::NotFound { .. } | Self::VersionNotFound { .. } | Self::NoSuchTree(_) => "not found".into(),
            Self::Gone { .. } => "deleted".into(),
            Self::Erased { .. } => "erased".into(),
            Self::Retained(_) => "erasure not possible now".into(),
            Self::Forbidden(deny) => format!("denied by `{}`", deny.rule),
            Self::PreconditionFailed { .. } => "version precondition failed".into(),
            Self::Conflict => "version conflict".into(),
            Self::Condition(_) => "condition not met".into(),
            Self::Exists { .. } => "resource exists".into(),
            Self::Unprocessable(_) => "patch does not apply".into(),
            Self::TooLarge(_) => "over a configured limit".into(),
            Self::Entry { index, source } => format!("entry {index}: {}", source.audit_detail()),
            Self::Integrity(CryptoError::Integrity { stage }) => format!("integrity failure ({stage})"),
            Self::Integrity(_) => "crypto failure".into(),
            Self::Storage(_) => "storage failure".into(),
            Self::Keys(_) => "key management failure".into(),
        }
    }
}

/// The purpose of the tenant MAC key that makes blind-index tokens.
const SEARCH_KEY: &str = "search";

/// Paging and size settings the engine needs.
#[derive(Debug, Clone)]
pub struct Limits {
    pub paging_link_ttl: Duration,
    pub default_page_size: u32,
    pub max_page_size: u32,
    /// How string values are indexed and searched.
    pub string_indexing: crate::search::StringIndexing,
    /// Entries a transaction or batch Bundle may hold.
    pub max_bundle_entries: usize,
    /// Whether a conditional delete may remove several resources.
    pub conditional_delete_multiple: bool,
    /// How many resources one conditional delete may remove.
    pub conditional_delete_max: u32,
    /// The audit log key's verifier key (`<name>+<id>+<key>`), named in evidence packages.
    pub audit_public_key: Option<String>,
    /// Entries one evidence package may hold.
    pub max_export_entries: u64,
}

/// Per-request facts: who is asking is the `Principal`; this is the rest.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub meta: RequestMeta,
    pub tenant: TenantId,
    /// `{public base}/fhir/{tenant}`, for `Location`, `fullUrl` and links.
    pub base_url: String,
}

pub struct Engine {
    index: Arc<dyn Index>,
    /// Every index write goes through the group committer.
    commits: Committer,
    /// Reads by id look up through this where the index batches lookups.
    lookups: Option<Lookups>,
    /// Where lookups are batched, the rows reads found last, checked when their audit record
    /// commits (`read::Remembered`).
    remembered: Option<read::Remembered>,
    locations: Locations,
    keys: KeyService,
    /// The access policies every interaction asks.
    policies: Arc<Policies>,
    model: &'static Model,
    search_params: &'static SearchParams,
    limits: Limits,
    /// How erasures are timed and what prevents them.
    erasure: ErasurePolicy,
}

impl Engine {
    /// Needs a Tokio runtime: it starts the group-commit tasks (and the lookup task).
    pub fn new(
        index: Arc<dyn Index>,
        locations: Locations,
        keys: KeyService,
        policies: Arc<Policies>,
        (model, search_params): (&'static Model, &'static SearchParams),
        limits: Limits,
    ) -> Self {
        let commits = Committer::start(&index);
        let lookups = index.batches_lookups().then(|| Lookups::start(&index));
        let remembered = index.batches_lookups().then(read::Remembered::new);
        let erasure = ErasurePolicy::default();
        Self { index, commits, lookups, remembered, locations, keys, policies, model, search_params, limits, erasure }
    }

    /// Time erasures and refuse them as `erasure` says (default: at once, no retention rule).
    #[must_use]
    pub fn with_erasure(mut self, erasure: ErasurePolicy) -> Self {
        self.erasure = erasure;
        self
    }

    /// The key service (rotation, usage counters).
    pub fn keys(&self) -> &KeyService {
        &self.keys
    }

    /// The search parameters this server supports (for the CapabilityStatement).
    pub fn search_params(&self) -> &'static SearchParams {
        self.search_params
    }

    /// The limits and settings this engine runs with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Readiness: index, object store and key provider all answer.
    pub async fn ready(&self) -> Result<(), EngineError> {
        self.index.ping().await?;
        for location in self.locations.iter() {
            location.ping().await?;
        }
        self.keys.provider().check().await?;
        Ok(())
    }

    /// Record a request refused before any interaction (no token, bad token, wrong tenant).
    pub async fn audit_refusal(
        &self,
        meta: &RequestMeta,
        tenant: Option<&TenantId>,
        principal: Option<&Principal>,
        status: u16,
        detail: &str,
    ) -> Result<(), EngineError> {
        let agent = principal.map(Agent::of).unwrap_or_default();
        let record =
            AuditRecord::new(meta, tenant, agent, AuditAction::Authenticate).outcome(status, Some(detail.to_owned()));
        self.commits.append_audit(record).await?;
        Ok(())
    }

    /// Record an interaction the API refused before it reached the engine (bad parameters,
    /// unsupported media type, body too large...). `detail` must not contain user input.
    pub async fn audit_rejection(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        action: AuditAction,
        target: &Target,
        status: u16,
        detail: &str,
    ) -> Result<(), EngineError> {
        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), action)
            .target(target)
            .outcome(status, Some(detail.to_owned()));
        self.commits.append_audit(record).await?;
        Ok(())
    }

    /// Append the audit record of a failed interaction; if even that fails, the audit failure
    /// is what the client sees (fail closed).
    async fn audited<T>(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        action: AuditAction,
        target: Target,
        result: Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let Err(error) = result else { return result };
        let policy = match &error {
            EngineError::Forbidden(deny) => Some(deny.rule.as_str()),
            _ => None,
        };
        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), action)
            .target(&target)
            .outcome(error.status(), Some(error.audit_detail()))
            .policy(policy);
        self.commits.append_audit(record).await?;
        Err(error)
    }

    /// Decide `action` on a stored row, in its own compartment. The outer error is the
    /// storage's (a row whose compartment does not parse), the inner one the policy's refusal.
    fn decide_row(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        action: Action,
        row: &VersionRow,
    ) -> Result<Result<(Permit, Compartment), Deny>, StorageError> {
        let compartment = compartment_of(row)?;
        let decision =
            self.policies.authorize(principal, action, &self.policy_target(ctx, row.resource_type, Some(&compartment)));
        Ok(decision.map(|permit| (permit, compartment)))
    }

    /// `decide_row`, a refusal as the request's error.
    fn authorize_row(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        action: Action,
        row: &VersionRow,
    ) -> Result<(Permit, Compartment), EngineError> {
        Ok(self.decide_row(ctx, principal, action, row)??)
    }

    /// The second decision on an opened record: its security labels are inside the sealed
    /// object (the index never shows which records are sensitive), so the policies see them
    /// only now. A record without labels needs nothing more.
    fn screen(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        row: &VersionRow,
        body: &[u8],
    ) -> Result<(), EngineError> {
        let labels = security_labels(body)?;
        if labels.is_empty() {
            return Ok(());
        }
        let compartment = compartment_of(row)?;
        let resource = crate::policy::Resource {
            labels: Some(&labels),
            ..self.policy_target(ctx, row.resource_type, Some(&compartment))
        };
        self.policies.authorize(principal, Action::Read, &resource)?;
        Ok(())
    }

    /// Which entries of an opened listing pass `screen` (a listing leaves the others out, as
    /// it leaves out what the first decision refused). Entries without a body (deletions) pass.
    fn screened<'b>(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        entries: impl Iterator<Item = (&'b VersionRow, Option<&'b [u8]>)>,
    ) -> Result<Vec<bool>, EngineError> {
        entries
            .map(|(row, body)| match body.map(|body| self.screen(ctx, principal, row, body)) {
                None | Some(Ok(())) => Ok(true),
                Some(Err(EngineError::Forbidden(_))) => Ok(false),
                Some(Err(other)) => Err(other),
            })
            .collect()
    }

    /// An opened listing's rows and bodies, without those `screen` refuses.
    fn screen_listing(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rows: Vec<(Permit, VersionRow)>,
        bodies: Vec<Vec<u8>>,
    ) -> Result<Opened, EngineError> {
        let keep =
            self.screened(ctx, principal, rows.iter().map(|(_, r)| r).zip(bodies.iter().map(|b| Some(&b[..]))))?;
        Ok((kept(rows, &keep), kept(bodies, &keep)))
    }

    /// The rows of a listing (history, search) that `principal` may read, each decided on its
    /// own compartment, with their permits; what is refused is left out.
    fn readable(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        rows: Vec<VersionRow>,
    ) -> Result<Vec<(Permit, VersionRow)>, EngineError> {
        let mut decisions = self.policies.decisions(principal, Action::Read);
        let mut permitted = Vec::with_capacity(rows.len());
        for row in rows {
            let compartment = compartment_of(&row)?;
            if let Ok(permit) = decisions.authorize(&self.policy_target(ctx, row.resource_type, Some(&compartment))) {
                permitted.push((permit, row));
            }
        }
        Ok(permitted)
    }

    /// Fetch and open the object of a version row. Needs a `Permit` for that row.
    async fn open_row(&self, _permit: &Permit, row: &VersionRow) -> Result<Vec<u8>, EngineError> {
        let Some(object_key) = &row.object_key else {
            return Err(EngineError::Storage(StorageError::Corrupt("a deletion has no object".into())));
        };
        let Some(storage) = self.locations.get(&row.location) else {
            return Err(EngineError::Storage(StorageError::Corrupt(format!(
                "version stored in location `{}`, which is not configured",
                row.location
            ))));
        };
        let (key, bytes) = tokio::try_join!(self.keys.compartment_key(&row.tenant, &row.compartment), async {
            storage.get(object_key).await.map_err(KeyError::from)
        })?;
        let identity = ObjectIdentity {
            tenant: &row.tenant,
            location: &row.location,
            resource_type: row.resource_type,
            id: &row.id,
            version: row.version,
            compartment: &row.compartment,
        };
        let opened = envelope::open(&key, &identity, &Sealed::from_bytes(bytes)).map_err(EngineError::Integrity)?;
        Ok(opened.into_bytes())
    }

    /// The storage location a tenant writes to.
    fn location_of(&self, tenant: &TenantId) -> Result<&ObjectStorage, EngineError> {
        self.locations.for_tenant(tenant).ok_or_else(|| {
            EngineError::Storage(StorageError::Corrupt(format!("tenant `{tenant}` has no storage location")))
        })
    }

    fn full_url(ctx: &RequestContext, rt: ResourceType, id: &ResourceId) -> String {
        format!("{}/{rt}/{id}", ctx.base_url)
    }
}

/// The compartment a stored row belongs to.
/// The rows of an opened listing with their permits, and their bodies, in the same order.
type Opened = (Vec<(Permit, VersionRow)>, Vec<Vec<u8>>);

/// An opened body, or `None` when the row's patient was erased.
fn unless_erased(opened: Result<Vec<u8>, EngineError>) -> Result<Option<Vec<u8>>, EngineError> {
    match opened {
        Ok(body) => Ok(Some(body)),
        Err(EngineError::Erased { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The items whose `keep` flag is set.
fn kept<T>(items: Vec<T>, keep: &[bool]) -> Vec<T> {
    items.into_iter().zip(keep).filter(|(_, keep)| **keep).map(|(item, _)| item).collect()
}

/// The codes of a stored resource's security labels (`meta.security[].code`). Most records
/// have none, which a byte search tells before any parsing. A body that cannot be read is
/// corrupt: refused, never taken as unlabelled.
fn security_labels(body: &[u8]) -> Result<Vec<String>, StorageError> {
    const NEEDLE: &[u8] = b"\"security\"";
    #[derive(serde::Deserialize)]
    struct Doc {
        meta: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        security: Vec<Coding>,
    }
    #[derive(serde::Deserialize)]
    struct Coding {
        code: Option<String>,
    }
    if !body.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return Ok(Vec::new());
    }
    let doc: Doc =
        serde_json::from_slice(body).map_err(|_| StorageError::Corrupt("a stored resource is not JSON".into()))?;
    Ok(doc.meta.map(|m| m.security.into_iter().filter_map(|c| c.code).collect()).unwrap_or_default())
}

fn compartment_of(row: &VersionRow) -> Result<Compartment, StorageError> {
    Compartment::parse_key_ref(&row.compartment).ok_or_else(|| StorageError::Corrupt("compartment".into()))
}

impl From<Deny> for EngineError {
    fn from(deny: Deny) -> Self {
        Self::Forbidden(deny)
    }
}
