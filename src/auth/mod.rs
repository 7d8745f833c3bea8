//! Authentication: a bearer token becomes a `Principal`, or the request is refused (401).
//!
//! Today the only trusted issuer is the development issuer (`fhirvault token`), enabled by
//! default in the embedded profile only. OpenID providers plug in behind the same
//! `Authenticator::authenticate`, producing the same `Principal`.

pub mod dev_issuer;
pub mod scopes;

use std::fmt;

use crate::ids::{CountryCode, ResourceId, TenantId};

pub use dev_issuer::{DevIssuer, TokenRequest};
pub use scopes::{Permission, ScopeContext, Scopes};

/// Why a request could not be authenticated. Every variant is a 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a bearer token is required (`Authorization: Bearer <token>`)")]
    Missing,
    #[error("the `Authorization` header must be `Bearer <token>`")]
    NotBearer,
    #[error("the bearer token is invalid: {0}")]
    Invalid(String),
    #[error("the bearer token has expired")]
    Expired,
    #[error("no trusted issuer is configured for bearer tokens")]
    NoIssuer,
}

/// The roles of the platform's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A clinician or hospital staff member acting through an EHR.
    Practitioner,
    /// A system integration (interface engine, EHR back end).
    Service,
    /// A researcher: pseudonymized bulk export only.
    Researcher,
    /// An auditor: the audit log, not clinical data.
    Auditor,
    /// A patient: their own compartment.
    Patient,
    /// A tenant administrator.
    Admin,
}

impl Role {
    pub const ALL: [Self; 6] =
        [Self::Practitioner, Self::Service, Self::Researcher, Self::Auditor, Self::Patient, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Practitioner => "practitioner",
            Self::Service => "service",
            Self::Researcher => "researcher",
            Self::Auditor => "auditor",
            Self::Patient => "patient",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The scopes a development token gets when none are asked for.
    pub fn default_scopes(self) -> &'static str {
        match self {
            Self::Practitioner | Self::Admin => "user/*.cruds",
            Self::Service => "system/*.cruds",
            Self::Patient => "patient/*.rs",
            Self::Researcher => "system/*.rs",
            Self::Auditor => "user/AuditEvent.rs",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is asking: built only by an `Authenticator` from a verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    tenant: TenantId,
    subject: String,
    issuer: String,
    role: Role,
    jurisdiction: Option<CountryCode>,
    purpose: Option<String>,
    scopes: Scopes,
    patient: Option<ResourceId>,
    token_id: Option<String>,
}

impl Principal {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    pub fn subject(&self) -> &str {
        &self.subject
    }
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    pub fn role(&self) -> Role {
        self.role
    }
    /// The country the requesting organization operates from.
    pub fn jurisdiction(&self) -> Option<CountryCode> {
        self.jurisdiction
    }
    /// Purpose of use (e.g. `TREAT`), when the token says.
    pub fn purpose(&self) -> Option<&str> {
        self.purpose.as_deref()
    }
    pub fn scopes(&self) -> &Scopes {
        &self.scopes
    }
    /// For a patient, their own Patient id.
    pub fn patient(&self) -> Option<&ResourceId> {
        self.patient.as_ref()
    }
    /// The token's `jti` (or its last 32 characters): what the audit log keeps.
    pub fn token_id(&self) -> Option<&str> {
        self.token_id.as_deref()
    }
}

/// Turns `Authorization` headers into principals.
pub struct Authenticator {
    dev: Option<DevIssuer>,
}

impl Authenticator {
    pub fn new(dev: Option<DevIssuer>) -> Self {
        Self { dev }
    }

    /// Verify a bearer token from any trusted issuer.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
            _ => return Err(AuthError::NotBearer),
        };
        match &self.dev {
            Some(dev) => dev.verify(token),
            None => Err(AuthError::NoIssuer),
        }
    }
}

/// The last 32 characters of a token, for audit when it carries no `jti`.
pub fn token_tail(token: &str) -> String {
    let start = token.len().saturating_sub(32);
    token.get(start..).unwrap_or_default().to_owned()
}
