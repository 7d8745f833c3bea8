//! The development token issuer: an Ed25519 key in the data directory signs JWTs for
//! `fhirvault token`; the server trusts it only when `auth.insecure_dev_issuer` is on.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{AuthError, Principal, Role, Scopes, Verified, now_seconds, token_tail};
use crate::ids::{CountryCode, ResourceId, TenantId};

/// The `iss` of development tokens.
pub const ISSUER: &str = "urn:fhirvault:dev-issuer";

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("development issuer key `{path}`: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot sign the token: {0}")]
    Sign(String),
    #[error("{0}")]
    Request(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    tenant: String,
    role: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jurisdiction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purpose_of_use: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    grants: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    organization: Option<String>,
}

/// What `fhirvault token` asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub tenant: TenantId,
    pub role: Role,
    pub subject: Option<String>,
    pub jurisdiction: Option<CountryCode>,
    pub scope: Option<String>,
    pub patient: Option<ResourceId>,
    pub purpose: Option<String>,
    /// Sensitivity labels the token is cleared for (`PSY`, `HIV`...).
    pub grants: Vec<String>,
    /// The requesting organization (`Organization/123`).
    pub organization: Option<String>,
    pub ttl: Duration,
}

impl TokenRequest {
    /// A token for `role` on `tenant`, valid for `ttl`, stating nothing else (default subject,
    /// scopes of the role, no country, purpose, grants or organization).
    pub fn new(tenant: TenantId, role: Role, ttl: Duration) -> Self {
        Self {
            tenant,
            role,
            subject: None,
            jurisdiction: None,
            scope: None,
            patient: None,
            purpose: None,
            grants: Vec::new(),
            organization: None,
            ttl,
        }
    }
}

pub struct DevIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    audience: String,
    leeway: u64,
    /// The jurisdiction of tokens that state none.
    default_jurisdiction: Option<CountryCode>,
}

impl DevIssuer {
    /// Create the issuer key (PKCS#8, mode 0600) unless it exists.
    pub fn ensure_key(path: &Path) -> Result<(), DevIssuerError> {
        let fail = |reason: String| DevIssuerError::Key { path: path.display().to_string(), reason };
        if path.exists() {
            return Ok(());
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| fail("key generation failed".into()))?;
        let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(fail(e.to_string())),
        };
        file.write_all(pkcs8.as_ref()).map_err(|e| fail(e.to_string()))?;
        file.sync_all().map_err(|e| fail(e.to_string()))
    }

    pub fn load(path: &Path, audience: &str, leeway_seconds: u64) -> Result<Self, DevIssuerError> {
        let fail = |reason: String| DevIssuerError::Key { path: path.display().to_string(), reason };
        let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(fail("other users can read it; run `chmod 600` on it".into()));
        }
        let pkcs8 = Zeroizing::new(fs::read(path).map_err(|e| fail(e.to_string()))?);
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| fail("not an Ed25519 PKCS#8 key".into()))?;
        super::install_jwt_provider();
        Ok(Self {
            encoding: EncodingKey::from_ed_der(&pkcs8),
            decoding: DecodingKey::from_ed_der(pair.public_key().as_ref()),
            audience: audience.to_owned(),
            leeway: leeway_seconds,
            default_jurisdiction: None,
        })
    }

    /// Tokens minted without `--jurisdiction` speak for an organization operating from
    /// `country` (the server's own site, for the development issuer).
    #[must_use]
    pub fn with_default_jurisdiction(self, country: CountryCode) -> Self {
        Self { default_jurisdiction: Some(country), ..self }
    }

    /// Sign a token for `req`.
    pub fn issue(&self, req: &TokenRequest) -> Result<String, DevIssuerError> {
        if (req.role == Role::Patient) != req.patient.is_some() {
            return Err(DevIssuerError::Request("`--patient ID` is required for, and only for, role `patient`".into()));
        }
        let now = now_seconds();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: req.subject.clone().unwrap_or_else(|| format!("dev-{}", req.role)),
            aud: self.audience.clone(),
            exp: now.saturating_add(req.ttl.as_secs()),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            tenant: req.tenant.to_string(),
            role: req.role.as_str().to_owned(),
            scope: req.scope.clone().unwrap_or_else(|| req.role.default_scopes().to_owned()),
            jurisdiction: req.jurisdiction.map(|c| c.as_str().to_owned()),
            patient: req.patient.as_ref().map(ToString::to_string),
            purpose_of_use: req.purpose.clone(),
            grants: req.grants.clone(),
            organization: req.organization.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .map_err(|e| DevIssuerError::Sign(e.to_string()))
    }

    /// Verify signature, issuer, audience and times, then build the principal.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_token(token).map(|verified| verified.principal)
    }

    /// Verify, and say until when the answer holds (`exp` and `nbf`, leeway included).
    pub fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|e| super::jwt_error(&e))?;
        let c = data.claims;
        let invalid = |what: &str| AuthError::Invalid(format!("claim `{what}` is invalid"));
        let role = Role::parse(&c.role).ok_or_else(|| invalid("role"))?;
        let patient = c.patient.as_deref().map(ResourceId::parse).transpose().map_err(|_| invalid("patient"))?;
        if (role == Role::Patient) != patient.is_some() {
            return Err(invalid("patient"));
        }
        let principal = Principal {
            tenant: TenantId::parse(&c.tenant).map_err(|_| invalid("tenant"))?,
            subject: c.sub,
            issuer: c.iss,
            role,
            jurisdiction: c
                .jurisdiction
                .as_deref()
                .map(CountryCode::parse)
                .transpose()
                .map_err(|_| invalid("jurisdiction"))?
                .or(self.default_jurisdiction),
            purpose: c.purpose_of_use,
            scopes: Scopes::parse(&c.scope),
            patient,
            fhir_user: None,
            organization: c.organization,
            grants: c.grants,
            token_id: Some(if c.jti.is_empty() { token_tail(token) } else { c.jti }),
        };
        Ok(Verified {
            principal,
            valid_from: c.nbf.saturating_sub(self.leeway),
            valid_until: c.exp.saturating_add(self.leeway),
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn issuer(dir: &Path) -> DevIssuer {
        let path = dir.join("k.pk8");
        DevIssuer::ensure_key(&path).unwrap();
        DevIssuer::load(&path, "fhirvault", 0).unwrap()
    }

    fn request(role: Role) -> TokenRequest {
        TokenRequest {
            jurisdiction: Some(CountryCode::parse("FR").unwrap()),
            purpose: Some("TREAT".into()),
            ..TokenRequest::new(TenantId::parse("demo").unwrap(), role, Duration::from_secs(60))
        }
    }

    #[test]
    fn issued_tokens_verify_into_principals() {
        let dir = tempfile::tempdir().unwrap();
        let dev = issuer(dir.path());
        let token = dev.issue(&request(Role::Practitioner)).unwrap();
        let p = dev.verify(&token).unwrap();
        assert_eq!(p.tenant().as_str(), "demo");
        assert_eq!(p.role(), Role::Practitioner);
        assert_eq!(p.jurisdiction().unwrap().as_str(), "FR");
        assert_eq!(p.purpose(), Some("TREAT"));
        assert!(p.token_id().is_some());
    }

    #[test]
    fn forged_and_stale_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dev = issuer(dir.path());
        let other_dir = tempfile::tempdir().unwrap();
        let other = issuer(other_dir.path());
        let good = dev.issue(&request(Role::Service)).unwrap();

        let by_other_key = other.issue(&request(Role::Service)).unwrap();
        assert!(matches!(dev.verify(&by_other_key), Err(AuthError::Invalid(_))));

        let parts: Vec<&str> = good.split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(dev.verify(&format!("{none_header}.{}.", parts[1])).is_err(), "alg none");
        let hs_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        assert!(dev.verify(&format!("{hs_header}.{}.{}", parts[1], parts[2])).is_err(), "alg HS256");

        let mut claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["role"] = "admin".into();
        let tampered = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert!(dev.verify(&format!("{}.{tampered}.{}", parts[0], parts[2])).is_err(), "tampered");

        let expired = TokenRequest { ttl: Duration::ZERO, ..request(Role::Service) };
        let token = dev.issue(&expired).unwrap();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        claims["exp"] = 1.into();
        let stale = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &dev.encoding).unwrap();
        assert_eq!(dev.verify(&stale).err(), Some(AuthError::Expired));

        let wrong_aud = DevIssuer { audience: "someone-else".into(), ..issuer(dir.path()) };
        assert!(dev.verify(&wrong_aud.issue(&request(Role::Service)).unwrap()).is_err());
    }

    #[test]
    fn patient_tokens_need_a_patient() {
        let dir = tempfile::tempdir().unwrap();
        let dev = issuer(dir.path());
        assert!(dev.issue(&request(Role::Patient)).is_err());
        let req = TokenRequest { patient: Some(ResourceId::parse("p1").unwrap()), ..request(Role::Patient) };
        let p = dev.verify(&dev.issue(&req).unwrap()).unwrap();
        assert_eq!(p.patient().unwrap().as_str(), "p1");
    }
}
