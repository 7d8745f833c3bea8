//! Authentication: a bearer token becomes a `Principal`, or the request is refused (401).
//!
//! Two kinds of issuer are trusted: OpenID providers named in `auth.issuers` (access tokens,
//! RFC 9068, checked against the provider's published keys), and the development issuer
//! (`fhirvault token`), on by default in the embedded profile only. Both produce the same
//! `Principal`. A token is routed to its issuer by its (not yet verified) `iss`; the chosen
//! issuer then checks the signature and `iss` itself.

pub mod dev_issuer;
pub mod oidc;
pub mod scopes;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::ids::{CountryCode, ResourceId, TenantId};

pub use dev_issuer::{DevIssuer, TokenRequest};
pub use oidc::{Audiences, OidcIssuer};
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
    fhir_user: Option<String>,
    organization: Option<String>,
    /// Sensitivity labels (`PSY`, `HIV`, `R`...) the principal is cleared to see.
    grants: Vec<String>,
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
    /// The user's own FHIR resource (`Practitioner/123`), when the token says.
    pub fn fhir_user(&self) -> Option<&str> {
        self.fhir_user.as_deref()
    }
    /// The requesting organization, when the token says.
    pub fn organization(&self) -> Option<&str> {
        self.organization.as_deref()
    }
    /// Sensitivity and confidentiality labels the principal is cleared for.
    pub fn grants(&self) -> &[String] {
        &self.grants
    }
    /// The token's `jti` (or its last 32 characters): what the audit log keeps.
    pub fn token_id(&self) -> Option<&str> {
        self.token_id.as_deref()
    }
}

/// A token whose signature and claims were checked: who it speaks for, and the window (seconds
/// since the epoch, leeway included) in which that answer holds.
#[derive(Debug, Clone)]
pub struct Verified {
    pub principal: Principal,
    pub valid_from: u64,
    pub valid_until: u64,
}

impl Verified {
    fn holds_at(&self, now: u64) -> bool {
        self.valid_from <= now && now <= self.valid_until
    }
}

/// How many verified tokens are remembered, and for how long at most.
const VERIFIED_CAPACITY: u64 = 10_000;
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// Turns `Authorization` headers into principals.
///
/// A signature is checked once per token, not once per request: a verified token is remembered
/// by its SHA-256 for at most five minutes and never outside its own `nbf`..`exp` window. Only
/// successes are remembered, so a forged token is verified (and refused) every time.
pub struct Authenticator {
    dev: Option<DevIssuer>,
    issuers: oidc::Issuers,
    verified: moka::sync::Cache<[u8; 32], Arc<Verified>>,
}

impl Authenticator {
    pub fn new(dev: Option<DevIssuer>, issuers: impl IntoIterator<Item = OidcIssuer>) -> Self {
        install_jwt_provider();
        let verified = moka::sync::Cache::builder().max_capacity(VERIFIED_CAPACITY).time_to_live(VERIFIED_TTL).build();
        let issuers = issuers.into_iter().map(|i| (i.issuer().to_owned(), Arc::new(i))).collect();
        Self { dev, issuers, verified }
    }

    /// The trusted OpenID providers.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<OidcIssuer>> {
        self.issuers.values()
    }

    /// Verify a bearer token from any trusted issuer.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
            _ => return Err(AuthError::NotBearer),
        };
        let key = token_digest(token);
        let now = now_seconds();
        if let Some(known) = self.verified.get(&key) {
            if known.holds_at(now) {
                return Ok(known.principal.clone());
            }
            self.verified.invalidate(&key);
        }
        let verified = self.verify(token).await?;
        let principal = verified.principal.clone();
        if verified.holds_at(now) {
            self.verified.insert(key, Arc::new(verified));
        }
        Ok(principal)
    }

    async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        if self.dev.is_none() && self.issuers.is_empty() {
            return Err(AuthError::NoIssuer);
        }
        let header = unverified_part(token, 0)?;
        if header.get("alg").and_then(serde_json::Value::as_str).is_some_and(|alg| alg.eq_ignore_ascii_case("none")) {
            return Err(AuthError::Invalid("unsigned tokens (`alg: none`) are not accepted".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| jwt_error(&e))?;
        let claims = unverified_part(token, 1)?;
        let iss = claims.get("iss").and_then(serde_json::Value::as_str).unwrap_or_default();
        if let Some(issuer) = self.issuers.get(iss) {
            return issuer.verify(token, &header).await;
        }
        match &self.dev {
            Some(dev) if iss == dev_issuer::ISSUER => dev.verify_token(token),
            _ => Err(AuthError::Invalid("untrusted issuer".into())),
        }
    }
}

/// A part of a compact JWS decoded as JSON, before any check: only to choose the issuer.
fn unverified_part(token: &str, index: usize) -> Result<serde_json::Value, AuthError> {
    use base64::Engine as _;
    let malformed = || AuthError::Invalid("malformed token".into());
    let part = token.split('.').nth(index).ok_or_else(malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed())
}

/// What a failed `jsonwebtoken` check means for the client.
fn jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
        ErrorKind::InvalidIssuer => AuthError::Invalid("untrusted issuer".into()),
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
        ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
        ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet".into()),
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Invalid(format!("claim `{claim}` is missing")),
        _ => AuthError::Invalid("malformed token".into()),
    }
}

/// jsonwebtoken selects its crypto backend from crate features; pin the RustCrypto one.
pub(crate) fn install_jwt_provider() {
    let _already_installed =
        jsonwebtoken::crypto::CryptoProvider::install_default(&jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER);
}

fn token_digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().unwrap_or_default()
}

/// Seconds since the epoch, as JWT claims count time.
fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The last 32 characters of a token, for audit when it carries no `jti`.
pub fn token_tail(token: &str) -> String {
    let start = token.len().saturating_sub(32);
    token.get(start..).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(dir: &std::path::Path) -> (Authenticator, String) {
        let path = dir.join("k.pk8");
        DevIssuer::ensure_key(&path).unwrap();
        let dev = DevIssuer::load(&path, "fhirvault", 0).unwrap();
        let request = TokenRequest::new(TenantId::parse("demo").unwrap(), Role::Practitioner, Duration::from_secs(60));
        let token = dev.issue(&request).unwrap();
        (Authenticator::new(Some(dev), []), token)
    }

    fn key_of(token: &str) -> [u8; 32] {
        token_digest(token)
    }

    #[tokio::test]
    async fn a_verified_token_is_remembered_within_its_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, token) = authenticator(dir.path());
        let bearer = format!("Bearer {token}");
        let first = auth.authenticate(Some(&bearer)).await.unwrap();
        assert!(auth.verified.contains_key(&key_of(&token)));
        assert_eq!(auth.authenticate(Some(&bearer)).await.unwrap().subject(), first.subject());

        // A remembered answer whose window has passed is not honoured: the token is verified
        // again (here a forged one, which fails).
        let forged = "eyJhbGciOiJFZERTQSJ9.e30.AAAA";
        let stale = Verified { principal: first, valid_from: 0, valid_until: now_seconds() - 1 };
        auth.verified.insert(key_of(forged), Arc::new(stale));
        let refused = auth.authenticate(Some(&format!("Bearer {forged}"))).await;
        assert!(matches!(refused, Err(AuthError::Invalid(_))), "{refused:?}");
        assert!(!auth.verified.contains_key(&key_of(forged)));
    }

    #[tokio::test]
    async fn refused_tokens_are_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, token) = authenticator(dir.path());
        let tampered = format!("{}x", token);
        assert!(auth.authenticate(Some(&format!("Bearer {tampered}"))).await.is_err());
        assert!(!auth.verified.contains_key(&key_of(&tampered)));
        assert!(auth.authenticate(Some(&format!("Bearer {tampered}"))).await.is_err());
    }
}
