//! Extractors: the request context (tenant, base URL, request id), the authenticated principal,
//! query parameters, and the `Prefer` / `If-Match` headers.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpMessage as _, HttpRequest, web};

use super::AppState;
use super::error::ApiError;
use super::negotiate::{self, Format};
use crate::audit::RequestMeta;
use crate::auth::Principal;
use crate::engine::RequestContext;
use crate::fhir::outcome::IssueType;
use crate::ids::{TenantId, VersionId};

/// The request id (echoed from `X-Request-Id` when sane, generated otherwise).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn of(req: &HttpRequest) -> String {
        req.extensions().get::<Self>().map_or_else(|| "unknown".to_owned(), |r| r.0.clone())
    }
}

fn state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("application state is not configured"))
}

/// The header in which a practitioner states why they break the glass.
pub const BREAK_GLASS_HEADER: &str = "x-break-glass-reason";
const BREAK_GLASS_MAX_CHARS: usize = 500;

fn meta(req: &HttpRequest) -> RequestMeta {
    RequestMeta {
        request_id: RequestId::of(req),
        source_ip: req.peer_addr().map(|a| a.ip().to_string()),
        break_glass: break_glass(req).ok().flatten(),
    }
}

/// The stated break-glass reason: printable, trimmed, at most 500 characters. A header that
/// states nothing is an error, never a silent "no".
fn break_glass(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(BREAK_GLASS_HEADER) else { return Ok(None) };
    let reason = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
    if reason.is_empty() || reason.chars().count() > BREAK_GLASS_MAX_CHARS || reason.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            IssueType::Required,
            format!(
                "`X-Break-Glass-Reason` must state why the glass is broken, in 1 to {BREAK_GLASS_MAX_CHARS} \
                 printable characters"
            ),
        ));
    }
    Ok(Some(reason))
}

/// The tenant in the path, checked against the configuration (404 if unknown).
fn tenant(req: &HttpRequest, state: &AppState) -> Result<TenantId, ApiError> {
    let raw = req.match_info().get("tenant").unwrap_or_default();
    TenantId::parse(raw).ok().filter(|t| state.tenants.contains(t)).ok_or_else(|| {
        ApiError::not_found(format!("there is no tenant `{}`", raw.chars().take(64).collect::<String>()))
    })
}

/// `{public base}/fhir/{tenant}`.
pub fn tenant_base(req: &HttpRequest, state: &AppState, tenant: &TenantId) -> String {
    let base = match &state.public_base_url {
        Some(base) => base.clone(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    };
    format!("{base}/fhir/{tenant}")
}

/// The engine's view of this request.
pub struct Ctx(pub RequestContext);

impl FromRequest for Ctx {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready((|| {
            let state = state(req)?;
            let tenant = tenant(req, &state)?;
            break_glass(req)?;
            let base_url = tenant_base(req, &state, &tenant);
            Ok(Self(RequestContext { meta: meta(req), tenant, base_url }))
        })())
    }
}

/// A principal from a verified bearer token. A refusal is audited before the 401 goes out.
pub struct Authenticated(pub Principal);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = state(&req)?;
            let authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("\u{0}"));
            match state.auth.authenticate(authorization).await {
                Ok(principal) => Ok(Self(principal)),
                Err(e) => {
                    let tenant = tenant(&req, &state).ok();
                    state
                        .engine
                        .audit_refusal(&meta(&req), tenant.as_ref(), None, 401, &e.to_string())
                        .await
                        .map_err(ApiError::from)?;
                    Err(e.into())
                }
            }
        })
    }
}

/// The query string, with the parameters every FHIR endpoint accepts taken out.
pub struct Params {
    pub format: Format,
    pub pretty: bool,
    pub lenient: bool,
    rest: Vec<(String, String)>,
}

impl FromRequest for Params {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready((|| {
            let mut format = None;
            let mut pretty = false;
            let mut rest = Vec::new();
            for (name, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
                match name.as_ref() {
                    "_format" => format = Some(value.into_owned()),
                    "_pretty" => pretty = value == "true",
                    _ => rest.push((name.into_owned(), value.into_owned())),
                }
            }
            let format = negotiate::negotiate(req, format.as_deref())?;
            let lenient = Prefer::of(req).handling_lenient;
            Ok(Self { format, pretty, lenient, rest })
        })())
    }
}

impl Params {
    /// Take the interaction's own parameters; anything left over is refused (400), or ignored
    /// under `Prefer: handling=lenient`.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let pos = self.rest.iter().position(|(n, _)| n == name)?;
        Some(self.rest.remove(pos).1)
    }

    /// Take every parameter left (a search's own parameters), in the client's order.
    pub fn take_rest(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.rest)
    }

    pub fn finish(&self) -> Result<(), ApiError> {
        match self.rest.first() {
            Some((name, _)) if !self.lenient => Err(ApiError::bad_request(format!(
                "parameter `{}` is not supported here (send `Prefer: handling=lenient` to ignore unknown parameters)",
                name.chars().take(64).collect::<String>()
            ))),
            _ => Ok(()),
        }
    }
}

/// `Prefer: return=minimal|representation|OperationOutcome`, `handling=strict|lenient`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Prefer {
    pub return_: Return,
    /// The client named a `return` preference (bundles answer minimally unless asked).
    pub return_given: bool,
    pub handling_lenient: bool,
}

impl Prefer {
    pub fn of(req: &HttpRequest) -> Self {
        let mut prefer = Self::default();
        for value in req.headers().get_all("prefer").filter_map(|v| v.to_str().ok()) {
            for token in value.split([',', ';']) {
                match token.trim().split_once('=').map(|(k, v)| (k.trim(), v.trim().trim_matches('"'))) {
                    Some(("return", "minimal")) => prefer.set_return(Return::Minimal),
                    Some(("return", "representation")) => prefer.set_return(Return::Representation),
                    Some(("return", "OperationOutcome")) => prefer.set_return(Return::OperationOutcome),
                    Some(("handling", "lenient")) => prefer.handling_lenient = true,
                    Some(("handling", "strict")) => prefer.handling_lenient = false,
                    _ => {}
                }
            }
        }
        prefer
    }

    fn set_return(&mut self, value: Return) {
        self.return_ = value;
        self.return_given = true;
    }
}

/// `If-Match: W/"3"` (or `"3"`).
pub fn if_match(req: &HttpRequest) -> Result<Option<VersionId>, ApiError> {
    let Some(value) = req.headers().get(header::IF_MATCH) else { return Ok(None) };
    let raw = value.to_str().unwrap_or("").trim();
    let tag = raw.strip_prefix("W/").unwrap_or(raw).trim_matches('"');
    VersionId::parse(tag).map(Some).map_err(|_| ApiError::bad_request("`If-Match` must be an ETag such as `W/\"3\"`"))
}

/// `If-Match` and `If-None-Match: *` (`If-None-Match` with a version is for reads, which
/// do not take it yet: refused rather than ignored).
pub fn precondition(req: &HttpRequest) -> Result<crate::engine::Precondition, ApiError> {
    let if_none_match_any = match req.headers().get(header::IF_NONE_MATCH).map(|v| v.to_str().unwrap_or("").trim()) {
        None => false,
        Some("*") => true,
        Some(_) => return Err(ApiError::bad_request("`If-None-Match` on a write supports only `*`")),
    };
    Ok(crate::engine::Precondition { if_match: if_match(req)?, if_none_match_any })
}

/// The condition of a conditional interaction: the query string, without `_format` and
/// `_pretty` (taken out by `Params`).
pub fn condition(params: &mut Params) -> Option<String> {
    let pairs = params.take_rest();
    if pairs.is_empty() {
        return None;
    }
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in &pairs {
        query.append_pair(name, value);
    }
    Some(query.finish())
}

/// Audit a request refused by the API layer after authentication, then return its error.
/// If the audit record cannot be written, that failure is what the client sees (fail closed).
pub async fn rejected(
    state: &AppState,
    ctx: &RequestContext,
    principal: &Principal,
    action: crate::audit::AuditAction,
    target: &crate::audit::Target,
    error: ApiError,
) -> ApiError {
    let status = error.status();
    let detail = format!("refused by the API: {}", status.canonical_reason().unwrap_or("error").to_lowercase());
    match state.engine.audit_rejection(ctx, principal, action, target, status.as_u16(), &detail).await {
        Ok(()) => error,
        Err(e) => e.into(),
    }
}
