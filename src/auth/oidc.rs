//! Access tokens of OpenID providers (JWT, RFC 9068): discovery, the provider's signing keys,
//! and the checks a token passes before it speaks for anyone.
//!
//! **Architecture Invariant:** only public-key signatures are accepted (RSA, RSA-PSS, ECDSA,
//! Ed25519), and only with a key the issuer itself publishes: `alg: none`, HMAC algorithms and
//! symmetric (`oct`) keys are refused whatever the token says. The key set is fetched again
//! when a token names an unknown `kid`, at most once per `jwks_min_refresh_seconds`, so a flood
//! of made-up key ids costs the provider one request per interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr as _;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{AdditionalProviderMetadata, HttpRequest, HttpResponse, IssuerUrl, ProviderMetadata};
use serde_json::Value;

use super::{AuthError, Principal, Role, Scopes, Verified, jwt_error, token_tail};
use crate::config::{IssuerSettings, ResolvedClaims};
use crate::ids::{CountryCode, ResourceId, TenantId};

/// The signature algorithms accepted from an OpenID provider: public-key ones only.
pub const ACCEPTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A discovery document or key set larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a provider's discovery document or key set could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("the response is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Refused(String),
}

/// Discovery metadata beyond OpenID Connect Core that SMART clients need (RFC 8414, RFC 7636).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
struct OAuthMetadata {
    #[serde(default)]
    code_challenge_methods_supported: Vec<String>,
}

impl AdditionalProviderMetadata for OAuthMetadata {}

type Metadata = ProviderMetadata<
    OAuthMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// One signing key of the provider.
struct SigningKey {
    decoding: DecodingKey,
    /// The `alg` the key is published for, when the provider says.
    alg: Option<Algorithm>,
}

/// The provider's keys as last fetched.
#[derive(Default)]
struct KeySet {
    jwks_uri: Option<url::Url>,
    by_kid: HashMap<String, Arc<SigningKey>>,
    /// Keys published without a `kid`.
    unnamed: Vec<Arc<SigningKey>>,
    fetched_at: Option<Instant>,
    /// The provider's endpoints, from discovery, for SMART clients.
    endpoints: Option<Arc<Endpoints>>,
}

/// What SMART clients need from the provider's discovery document.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub authorization_endpoint: String,
    pub token_endpoint: Option<String>,
    pub jwks_uri: String,
    pub grant_types_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
}

/// A trusted OpenID provider.
pub struct OidcIssuer {
    name: String,
    issuer: String,
    tenants: BTreeSet<TenantId>,
    audiences: Audiences,
    claims: ResolvedClaims,
    /// Where the provider runs: the jurisdiction of tokens that state none.
    jurisdiction: Option<CountryCode>,
    jwks_hosts: Vec<String>,
    leeway: u64,
    min_refresh: Duration,
    max_age: Duration,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Serialises fetches; holds when the last one was attempted.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

/// Which `aud` values a token must carry one of.
#[derive(Debug, Clone)]
pub enum Audiences {
    /// The configured list, whatever the tenant.
    Listed(Vec<String>),
    /// `auth.audience`, and the tenant's FHIR base URL under this public base URL, if any.
    Default { audience: String, public_base_url: Option<String> },
}

impl Audiences {
    fn accepts(&self, aud: &str, tenant: &TenantId) -> bool {
        match self {
            Self::Listed(list) => list.iter().any(|a| a == aud),
            Self::Default { audience, public_base_url } => {
                aud == audience
                    || public_base_url.as_deref().is_some_and(|base| {
                        aud.trim_end_matches('/') == format!("{}/fhir/{tenant}", base.trim_end_matches('/'))
                    })
            }
        }
    }
}

impl OidcIssuer {
    pub fn new(
        name: &str,
        settings: &IssuerSettings,
        audiences: Audiences,
        leeway_seconds: u64,
    ) -> Result<Self, FetchError> {
        let tenants = settings
            .tenants
            .iter()
            .map(|t| TenantId::parse(t).map_err(|e| FetchError::Refused(format!("tenant `{t}`: {e}"))))
            .collect::<Result<_, _>>()?;
        crate::crypto::install_tls_provider();
        // A redirect could lead the key fetch off the declared hosts: none is followed.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()?;
        Ok(Self {
            name: name.to_owned(),
            issuer: settings.issuer.clone(),
            tenants,
            audiences,
            claims: settings.claims.resolved(),
            jurisdiction: CountryCode::parse(&settings.jurisdiction).ok(),
            jwks_hosts: settings.jwks_hosts.clone(),
            leeway: leeway_seconds,
            min_refresh: Duration::from_secs(settings.jwks_min_refresh_seconds),
            max_age: Duration::from_secs(settings.jwks_max_age_seconds),
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.keys.read().map_or_else(|poisoned| poisoned.into_inner().clone(), |keys| keys.clone())
    }

    /// Discover the provider and fetch its keys now (at start; later fetches happen on demand).
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let mut last = self.fetching.lock().await;
        *last = Some(Instant::now());
        self.fetch().await
    }

    async fn fetch(&self) -> Result<(), FetchError> {
        let current = self.snapshot();
        let (jwks_uri, keys, endpoints) = match (&current.jwks_uri, &current.endpoints) {
            (Some(uri), Some(endpoints)) => (uri.clone(), self.fetch_jwks(uri).await?, endpoints.clone()),
            _ => self.discover().await?,
        };
        let mut set = KeySet {
            jwks_uri: Some(jwks_uri),
            fetched_at: Some(Instant::now()),
            endpoints: Some(endpoints),
            ..KeySet::default()
        };
        for key in keys {
            if let Some((kid, key)) = signing_key(&key) {
                match kid {
                    Some(kid) => drop(set.by_kid.insert(kid, Arc::new(key))),
                    None => set.unnamed.push(Arc::new(key)),
                }
            }
        }
        tracing::info!(issuer = %self.name, keys = set.by_kid.len() + set.unnamed.len(), "identity provider keys fetched");
        match self.keys.write() {
            Ok(mut keys) => *keys = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        Ok(())
    }

    /// OpenID discovery: the metadata must name this issuer exactly, and its key set must be
    /// served from the issuer's host (or a host declared in `jwks_hosts`).
    async fn discover(&self) -> Result<(url::Url, Vec<Value>, Arc<Endpoints>), FetchError> {
        let issuer_url = IssuerUrl::new(self.issuer.clone()).map_err(|e| FetchError::Refused(e.to_string()))?;
        let client = |request: HttpRequest| send(&self.http, request);
        let metadata = Metadata::discover_async(issuer_url, &client)
            .await
            .map_err(|e| FetchError::Refused(format!("discovery failed: {}", error_chain(&e))))?;
        let jwks_uri = metadata.jwks_uri().url().clone();
        let issuer_host = url::Url::parse(&self.issuer).ok().and_then(|u| u.host_str().map(str::to_owned));
        let jwks_host = jwks_uri.host_str().map(str::to_owned);
        let declared =
            jwks_host.as_ref().is_some_and(|h| issuer_host.as_ref() == Some(h) || self.jwks_hosts.contains(h));
        if !declared {
            return Err(FetchError::Refused(format!(
                "the key set is served from `{}`, neither the issuer's host nor one declared in `jwks_hosts`",
                jwks_host.unwrap_or_default()
            )));
        }
        if jwks_uri.scheme() != "https" && url::Url::parse(&self.issuer).is_ok_and(|u| u.scheme() == "https") {
            return Err(FetchError::Refused("the key set of an `https` issuer must be served over `https`".into()));
        }
        let keys = metadata.jwks().keys().iter().filter_map(|k| serde_json::to_value(k).ok()).collect();
        let document = serde_json::to_value(&metadata).unwrap_or_default();
        let list = |name: &str| strings(document.get(name)).into_iter().map(str::to_owned).collect::<Vec<_>>();
        let endpoints = Endpoints {
            authorization_endpoint: metadata.authorization_endpoint().url().to_string(),
            token_endpoint: metadata.token_endpoint().map(|t| t.url().to_string()),
            jwks_uri: jwks_uri.to_string(),
            grant_types_supported: list("grant_types_supported"),
            token_endpoint_auth_methods_supported: list("token_endpoint_auth_methods_supported"),
            token_endpoint_auth_signing_alg_values_supported: list("token_endpoint_auth_signing_alg_values_supported"),
            code_challenge_methods_supported: metadata.additional_metadata().code_challenge_methods_supported.clone(),
        };
        Ok((jwks_uri, keys, Arc::new(endpoints)))
    }

    async fn fetch_jwks(&self, uri: &url::Url) -> Result<Vec<Value>, FetchError> {
        let response = self.http.get(uri.clone()).header("accept", "application/json").send().await?;
        if !response.status().is_success() {
            return Err(FetchError::Refused(format!("the key set answered {}", response.status())));
        }
        let body = read_limited(response).await?;
        let set: Value =
            serde_json::from_slice(&body).map_err(|e| FetchError::Refused(format!("the key set is not JSON: {e}")))?;
        match set.get("keys") {
            Some(Value::Array(keys)) => Ok(keys.clone()),
            _ => Err(FetchError::Refused("the key set has no `keys` array".into())),
        }
    }

    /// Whether this issuer vouches for users of `tenant`.
    pub fn serves(&self, tenant: &TenantId) -> bool {
        self.tenants.contains(tenant)
    }

    /// The provider's endpoints, discovering it first if that has not succeeded yet (no more
    /// than once per `jwks_min_refresh_seconds`).
    pub async fn endpoints(&self) -> Option<Arc<Endpoints>> {
        if let Some(endpoints) = self.snapshot().endpoints.clone() {
            return Some(endpoints);
        }
        let mut last = self.fetching.lock().await;
        if self.snapshot().endpoints.is_none() && last.is_none_or(|at| at.elapsed() >= self.min_refresh) {
            *last = Some(Instant::now());
            if let Err(e) = self.fetch().await {
                tracing::warn!(issuer = %self.name, error = %e, "identity provider could not be discovered");
            }
        }
        drop(last);
        self.snapshot().endpoints.clone()
    }

    /// The key a token's header points at, fetching the key set again when it is unknown (or
    /// older than `jwks_max_age_seconds`), no more than once per `jwks_min_refresh_seconds`.
    async fn key_for(&self, kid: Option<&str>) -> Result<Arc<SigningKey>, AuthError> {
        let current = self.snapshot();
        let stale = current.fetched_at.is_none_or(|at| at.elapsed() > self.max_age);
        if let Some(key) = lookup(&current, kid).filter(|_| !stale) {
            return Ok(key);
        }
        let mut last = self.fetching.lock().await;
        let fresh = self.snapshot();
        let fetched_meanwhile = match (fresh.fetched_at, current.fetched_at) {
            (Some(now), Some(before)) => now > before,
            (Some(_), None) => true,
            _ => false,
        };
        let may_fetch = last.is_none_or(|at| at.elapsed() >= self.min_refresh);
        if !fetched_meanwhile && may_fetch {
            *last = Some(Instant::now());
            if let Err(e) = self.fetch().await {
                tracing::warn!(issuer = %self.name, error = %e, "identity provider keys could not be fetched");
            }
        }
        drop(last);
        lookup(&self.snapshot(), kid).ok_or_else(|| match kid {
            Some(kid) => AuthError::Invalid(format!("the issuer publishes no key `{kid}`")),
            None => AuthError::Invalid("the token names no key (`kid`) and the issuer has several".into()),
        })
    }

    /// Verify a token whose (unverified) `iss` named this issuer.
    pub async fn verify(&self, token: &str, header: &Header) -> Result<Verified, AuthError> {
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted; sign with a public key",
                header.alg
            )));
        }
        let key = self.key_for(header.kid.as_deref()).await?;
        if key.alg.is_some_and(|alg| alg != header.alg) {
            return Err(AuthError::Invalid("the algorithm does not match the key's".into()));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).map_err(|e| jwt_error(&e))?;
        let claims = data.claims;
        let principal = self.principal(&claims, token)?;
        let audiences = strings(claim(&claims, "aud"));
        if !audiences.iter().any(|aud| self.audiences.accepts(aud, &principal.tenant)) {
            return Err(AuthError::Invalid("wrong audience".into()));
        }
        let seconds = |name: &str| claim(&claims, name).and_then(Value::as_u64);
        let exp = seconds("exp").ok_or_else(|| AuthError::Invalid("claim `exp` is invalid".into()))?;
        Ok(Verified {
            principal,
            valid_from: seconds("nbf").unwrap_or(0).saturating_sub(self.leeway),
            valid_until: exp.saturating_add(self.leeway),
        })
    }

    /// Map the verified claims to a principal, as `claims` in the configuration says.
    fn principal(&self, claims: &Value, token: &str) -> Result<Principal, AuthError> {
        let map = &self.claims;
        let invalid = |what: &str| AuthError::Invalid(format!("claim `{what}` is missing or invalid"));
        let text = |path: &str| claim(claims, path).and_then(Value::as_str).map(str::to_owned);

        let tenant = match text(&map.tenant) {
            Some(t) => TenantId::parse(&t).map_err(|_| invalid(&map.tenant))?,
            None if self.tenants.len() == 1 => self.tenants.first().cloned().ok_or_else(|| invalid(&map.tenant))?,
            None => return Err(invalid(&map.tenant)),
        };
        if !self.tenants.contains(&tenant) {
            return Err(AuthError::Invalid(format!("the issuer is not trusted for tenant `{tenant}`")));
        }
        let role = strings(claim(claims, &map.role))
            .iter()
            .find_map(|name| Role::parse(map.role_names.get(*name).map_or(name, String::as_str)))
            .ok_or_else(|| AuthError::Invalid(format!("claim `{}` names no fhirvault role", map.role)))?;
        let patient =
            text(&map.patient).map(|p| ResourceId::parse(&p)).transpose().map_err(|_| invalid(&map.patient))?;
        if (role == Role::Patient) != patient.is_some() {
            return Err(invalid(&map.patient));
        }
        let jurisdiction = text(&map.jurisdiction)
            .map(|c| CountryCode::parse(&c))
            .transpose()
            .map_err(|_| invalid(&map.jurisdiction))?
            .or(self.jurisdiction);
        let scope = strings(claim(claims, &map.scope)).join(" ");
        Ok(Principal {
            tenant,
            subject: text(&map.subject).ok_or_else(|| invalid(&map.subject))?,
            issuer: self.issuer.clone(),
            role,
            jurisdiction,
            purpose: text(&map.purpose_of_use),
            scopes: Scopes::parse(&scope),
            patient,
            fhir_user: text(&map.fhir_user),
            organization: text(&map.organization),
            grants: strings(claim(claims, &map.grants)).into_iter().map(str::to_owned).collect(),
            token_id: Some(text("jti").unwrap_or_else(|| token_tail(token))),
        })
    }
}

/// A claim by name, or by a dotted path into nested objects (`realm_access.roles`).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.').try_fold(claims, |value, part| value.get(part))
}

/// A claim that is a string, a space-separated string, or a list of strings.
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn lookup(set: &KeySet, kid: Option<&str>) -> Option<Arc<SigningKey>> {
    match kid {
        Some(kid) => set.by_kid.get(kid).cloned(),
        None => match (set.by_kid.len() + set.unnamed.len(), set.unnamed.first(), set.by_kid.values().next()) {
            (1, Some(key), _) | (1, None, Some(key)) => Some(key.clone()),
            _ => None,
        },
    }
}

/// A published key usable for signatures: public, not for encryption, with a known algorithm.
fn signing_key(value: &Value) -> Option<(Option<String>, SigningKey)> {
    let field = |name: &str| value.get(name).and_then(Value::as_str);
    if !matches!(field("kty"), Some("RSA" | "EC" | "OKP")) || field("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match field("alg") {
        Some(alg) => Some(Algorithm::from_str(alg).ok().filter(|a| ACCEPTED_ALGORITHMS.contains(a))?),
        None => None,
    };
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some((field("kid").map(str::to_owned), SigningKey { decoding, alg }))
}

/// One HTTP exchange for openidconnect's discovery, over our own client.
async fn send(http: &reqwest::Client, request: HttpRequest) -> Result<HttpResponse, FetchError> {
    let (parts, body) = request.into_parts();
    let response = http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_limited(response).await?;
    let mut answer = openidconnect::http::Response::new(body);
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Ok(answer)
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Trusted issuers by their `iss`.
pub type Issuers = BTreeMap<String, Arc<OidcIssuer>>;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use actix_web::{App, HttpResponse as Answer, HttpServer, web};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::EncodingKey;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;
    use crate::config::{ClaimSettings, OperatorSettings};

    /// A provider that serves discovery and a key set we change, counting key-set fetches.
    struct FakeProvider {
        issuer: String,
        jwks: Arc<Mutex<Vec<Value>>>,
        fetches: Arc<AtomicUsize>,
        handle: actix_web::dev::ServerHandle,
    }

    impl FakeProvider {
        async fn start() -> Self {
            let jwks = Arc::new(Mutex::new(Vec::new()));
            let fetches = Arc::new(AtomicUsize::new(0));
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let issuer = format!("http://{}", listener.local_addr().unwrap());
            let (keys, count, iss) = (jwks.clone(), fetches.clone(), issuer.clone());
            let server = HttpServer::new(move || {
                let (keys, count, iss) = (keys.clone(), count.clone(), iss.clone());
                App::new()
                    .route(
                        "/.well-known/openid-configuration",
                        web::get().to(move || {
                            let iss = iss.clone();
                            async move {
                                Answer::Ok().json(json!({
                                    "issuer": iss,
                                    "authorization_endpoint": format!("{iss}/auth"),
                                    "token_endpoint": format!("{iss}/token"),
                                    "jwks_uri": format!("{iss}/jwks"),
                                    "response_types_supported": ["code"],
                                    "subject_types_supported": ["public"],
                                    "id_token_signing_alg_values_supported": ["ES256"],
                                }))
                            }
                        }),
                    )
                    .route(
                        "/jwks",
                        web::get().to(move || {
                            let (keys, count) = (keys.clone(), count.clone());
                            async move {
                                count.fetch_add(1, Ordering::SeqCst);
                                let keys = keys.lock().unwrap().clone();
                                Answer::Ok().json(json!({ "keys": keys }))
                            }
                        }),
                    )
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run();
            let handle = server.handle();
            tokio::spawn(server);
            Self { issuer, jwks, fetches, handle }
        }

        fn publish(&self, key: &TestKey) {
            self.jwks.lock().unwrap().push(key.jwk.clone());
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        fn issuer(&self, min_refresh_seconds: u64) -> OidcIssuer {
            let settings = IssuerSettings {
                issuer: self.issuer.clone(),
                tenants: vec!["demo".to_owned()],
                jurisdiction: "FR".to_owned(),
                operator: OperatorSettings { name: None, country: "FR".to_owned(), extraterritorial_laws: Vec::new() },
                audience: Vec::new(),
                jwks_hosts: Vec::new(),
                jwks_min_refresh_seconds: min_refresh_seconds,
                jwks_max_age_seconds: 3600,
                claims: ClaimSettings::default(),
            };
            let audiences = Audiences::Default { audience: "fhirvault".to_owned(), public_base_url: None };
            OidcIssuer::new("fake", &settings, audiences, 0).unwrap()
        }
    }

    struct TestKey {
        kid: String,
        pkcs8: Vec<u8>,
        jwk: Value,
    }

    impl TestKey {
        fn new(kid: &str) -> Self {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap().as_ref().to_vec();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).unwrap();
            let point = pair.public_key().as_ref();
            let jwk = json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            });
            Self { kid: kid.to_owned(), pkcs8, jwk }
        }

        fn sign(&self, issuer: &str) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.kid.clone());
            let now = super::super::now_seconds();
            let claims = json!({
                "iss": issuer, "sub": "svc-1", "aud": "fhirvault", "exp": now + 60, "iat": now,
                "tenant": "demo", "role": "service", "scope": "system/*.rs",
            });
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&self.pkcs8)).unwrap()
        }
    }

    async fn verify(issuer: &OidcIssuer, token: &str) -> Result<Verified, AuthError> {
        issuer.verify(token, &jsonwebtoken::decode_header(token).unwrap()).await
    }

    #[tokio::test]
    async fn an_unknown_kid_fetches_the_keys_again_at_most_once_per_interval() {
        super::super::install_jwt_provider();
        let provider = FakeProvider::start().await;
        let first = TestKey::new("k1");
        provider.publish(&first);

        // A long interval: after the fetch at start, unknown key ids fetch nothing.
        let patient = provider.issuer(3600);
        patient.refresh().await.unwrap();
        assert_eq!(provider.fetches(), 1, "discovery fetches the key set once");
        let verified = verify(&patient, &first.sign(&provider.issuer)).await.unwrap();
        assert_eq!(verified.principal.subject(), "svc-1");

        let rotated = TestKey::new("k2");
        provider.publish(&rotated);
        for i in 0..20 {
            let made_up = TestKey::new(&format!("made-up-{i}"));
            let refused = verify(&patient, &made_up.sign(&provider.issuer)).await.unwrap_err();
            assert_eq!(refused, AuthError::Invalid(format!("the issuer publishes no key `made-up-{i}`")));
        }
        assert!(verify(&patient, &rotated.sign(&provider.issuer)).await.is_err(), "not fetched yet");
        assert_eq!(provider.fetches(), 1, "a flood of unknown key ids fetched nothing");

        // No interval: an unknown kid fetches the set again, and the rotated key is found.
        let eager = provider.issuer(0);
        eager.refresh().await.unwrap();
        let third = TestKey::new("k3");
        provider.publish(&third);
        let before = provider.fetches();
        verify(&eager, &third.sign(&provider.issuer)).await.unwrap();
        assert_eq!(provider.fetches(), before + 1);
        verify(&eager, &third.sign(&provider.issuer)).await.unwrap();
        assert_eq!(provider.fetches(), before + 1, "a known key fetches nothing");
        provider.handle.stop(false).await;
    }

    #[tokio::test]
    async fn keys_that_cannot_sign_are_not_used() {
        let rsa_for_encryption = json!({"kty": "RSA", "use": "enc", "kid": "e", "n": "AQAB", "e": "AQAB"});
        let hmac = json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"});
        let hmac_alg = json!({"kty": "EC", "kid": "x", "alg": "HS256", "crv": "P-256", "x": "AA", "y": "AA"});
        assert!(signing_key(&rsa_for_encryption).is_none());
        assert!(signing_key(&hmac).is_none());
        assert!(signing_key(&hmac_alg).is_none());
        let (kid, key) = signing_key(&TestKey::new("k").jwk).unwrap();
        assert_eq!(kid.as_deref(), Some("k"));
        assert_eq!(key.alg, Some(Algorithm::ES256));
    }

    #[test]
    fn claims_are_read_by_name_or_dotted_path() {
        let claims = json!({"realm_access": {"roles": ["offline", "practitioner"]}, "scope": "a b", "x.y": 1});
        assert_eq!(strings(claim(&claims, "realm_access.roles")), vec!["offline", "practitioner"]);
        assert_eq!(strings(claim(&claims, "scope")), vec!["a", "b"]);
        assert_eq!(claim(&claims, "x.y"), Some(&json!(1)));
        assert_eq!(claim(&claims, "realm_access.missing"), None);
    }
}
