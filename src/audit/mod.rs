//! Audit records: who did what, to which resource, when, from where, with what outcome.
//!
//! **Architecture Invariant:** a record holds identifiers, roles, outcomes and opaque resource
//! ids, never health data (no names, no codes, no query values). Records are appended; there is
//! no update or delete path, and the database triggers refuse both.
//!
//! Writes carry their record into the same transaction as the change; reads append theirs
//! before answering and fail if they cannot (fail closed). Records land in an inbox; the
//! `sealer` moves them into each tenant's tamper-evident log (`log`: an RFC 6962 Merkle tree
//! with signed checkpoints) as FHIR AuditEvents (`event`), and `verify` checks a log offline.

pub mod event;
pub mod log;
pub mod package;
pub mod sealer;
pub mod verify;

use crate::auth::Principal;
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
use crate::time::Timestamp;

/// The FHIR interaction (or other event) a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Create,
    Read,
    Vread,
    Update,
    Delete,
    HistoryInstance,
    HistoryType,
    /// A search of one resource type.
    SearchType,
    /// `Patient/{id}/$everything`.
    Everything,
    /// A transaction Bundle (its entries have their own records).
    Transaction,
    /// A batch Bundle (its entries have their own records).
    Batch,
    /// A request refused before it reached an interaction (no or bad token).
    Authenticate,
    /// A read of the audit log itself (a checkpoint, a proof).
    AuditLog,
    /// `Patient/{id}/$access-log`: who accessed a patient's data.
    AccessLog,
    /// `Patient/{id}/$erase` (scheduling an erasure), and its execution.
    Erase,
    /// `Patient/{id}/$erase-cancel`.
    EraseCancel,
    /// `Patient/{id}/$legal-hold`: setting or clearing a legal hold.
    LegalHold,
    /// `fhirvault keys rotate`: a tenant's KEK rotation.
    KeyRotation,
}

impl AuditAction {
    pub const ALL: [Self; 18] = [
        Self::Create,
        Self::Read,
        Self::Vread,
        Self::Update,
        Self::Delete,
        Self::HistoryInstance,
        Self::HistoryType,
        Self::SearchType,
        Self::Everything,
        Self::Transaction,
        Self::Batch,
        Self::Authenticate,
        Self::AuditLog,
        Self::AccessLog,
        Self::Erase,
        Self::EraseCancel,
        Self::LegalHold,
        Self::KeyRotation,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Vread => "vread",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::HistoryInstance => "history-instance",
            Self::HistoryType => "history-type",
            Self::SearchType => "search-type",
            Self::Everything => "operation-everything",
            Self::Transaction => "transaction",
            Self::Batch => "batch",
            Self::Authenticate => "authenticate",
            Self::AuditLog => "audit-log",
            Self::AccessLog => "operation-access-log",
            Self::Erase => "operation-erase",
            Self::EraseCancel => "operation-erase-cancel",
            Self::LegalHold => "operation-legal-hold",
            Self::KeyRotation => "key-rotation",
        }
    }
}

/// Who acted. Empty for a request that never authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub role: Option<String>,
    pub jurisdiction: Option<String>,
    pub purpose: Option<String>,
    /// The token's `jti`, or its last 32 characters: never the whole token.
    pub token_id: Option<String>,
}

impl Agent {
    pub fn of(principal: &Principal) -> Self {
        Self {
            subject: Some(principal.subject().to_owned()),
            issuer: Some(principal.issuer().to_owned()),
            role: Some(principal.role().as_str().to_owned()),
            jurisdiction: principal.jurisdiction().map(|c| c.as_str().to_owned()),
            purpose: principal.purpose().map(str::to_owned),
            token_id: principal.token_id().map(str::to_owned),
        }
    }
}

/// One audit record, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub recorded: Timestamp,
    pub request_id: String,
    pub tenant: Option<TenantId>,
    pub agent: Agent,
    pub source_ip: Option<String>,
    pub action: AuditAction,
    pub resource_type: Option<ResourceType>,
    pub resource_id: Option<ResourceId>,
    pub version: Option<VersionId>,
    pub compartment: Option<String>,
    /// The HTTP status of the answer.
    pub outcome: u16,
    /// Why, in a few words, when it failed or was refused (never user input), after the
    /// break-glass flag and its stated reason when the request broke the glass.
    pub detail: Option<String>,
    /// Which policy rule decided.
    pub policy: Option<String>,
}

/// What every record of one request shares.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub source_ip: Option<String>,
    /// The reason a practitioner stated to break the glass (`X-Break-Glass-Reason`); every
    /// record of such a request is flagged with it.
    pub break_glass: Option<String>,
}

/// The resource a record is about, when there is one.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub resource_type: Option<ResourceType>,
    pub resource_id: Option<ResourceId>,
    pub version: Option<VersionId>,
    pub compartment: Option<String>,
}

impl AuditRecord {
    pub fn new(meta: &RequestMeta, tenant: Option<&TenantId>, agent: Agent, action: AuditAction) -> Self {
        Self {
            recorded: Timestamp::now(),
            request_id: meta.request_id.clone(),
            tenant: tenant.cloned(),
            agent,
            source_ip: meta.source_ip.clone(),
            action,
            resource_type: None,
            resource_id: None,
            version: None,
            compartment: None,
            outcome: 200,
            detail: meta.break_glass.as_ref().map(|reason| format!("break-glass: {reason}")),
            policy: None,
        }
    }

    pub fn target(mut self, target: &Target) -> Self {
        self.resource_type = target.resource_type;
        self.resource_id.clone_from(&target.resource_id);
        self.version = target.version;
        self.compartment.clone_from(&target.compartment);
        self
    }

    /// The answer's status and, when it failed or was refused, why. A break-glass flag stays
    /// first in `detail`.
    pub fn outcome(mut self, status: u16, detail: Option<String>) -> Self {
        self.outcome = status;
        self.detail = match (self.detail.take(), detail) {
            (Some(flag), Some(detail)) => Some(format!("{flag}; {detail}")),
            (flag, detail) => flag.or(detail),
        };
        self
    }

    pub fn policy(mut self, policy: Option<&str>) -> Self {
        self.policy = policy.map(str::to_owned);
        self
    }

    /// BALP's rule for a query: one record per patient whose data it returned (so the query
    /// shows in each of their access logs), or this one record when it returned none.
    /// `compartments` are those of the rows returned (`Patient/{id}` or `tenant`).
    pub fn per_patient<'a>(self, compartments: impl Iterator<Item = &'a str>) -> Vec<Self> {
        let patients: std::collections::BTreeSet<&str> = compartments.filter(|c| c.starts_with("Patient/")).collect();
        if patients.is_empty() {
            return vec![self];
        }
        patients.into_iter().map(|p| Self { compartment: Some(p.to_owned()), ..self.clone() }).collect()
    }
}
