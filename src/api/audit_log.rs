//! `/audit/{tenant}/...`: the audit log's latest signed checkpoint and its proofs, for auditors
//! who hold checkpoints and want to check them (RFC 6962 inclusion and consistency proofs).

use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{Authenticated, Ctx, rejected};
use crate::audit::{AuditAction, Target};
use crate::engine::{LogAnswer, LogQuery};

/// `GET /audit/{tenant}/checkpoint`: the latest signed checkpoint, as a signed note.
pub async fn checkpoint(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    Authenticated(principal): Authenticated,
) -> Result<HttpResponse, ApiError> {
    if let Err(e) = numbers(&req, []) {
        return Err(rejected(&state, &ctx, &principal, AuditAction::AuditLog, &target(), e).await);
    }
    answer(state.engine.audit_log(&ctx, &principal, LogQuery::Checkpoint).await?)
}

/// `GET /audit/{tenant}/proof/inclusion?index=&size=`
pub async fn inclusion(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    Authenticated(principal): Authenticated,
) -> Result<HttpResponse, ApiError> {
    let [index, size] = match numbers(&req, ["index", "size"]) {
        Ok(n) => n,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::AuditLog, &target(), e).await),
    };
    answer(state.engine.audit_log(&ctx, &principal, LogQuery::Inclusion { index, size }).await?)
}

/// `GET /audit/{tenant}/proof/consistency?from=&to=`
pub async fn consistency(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    Authenticated(principal): Authenticated,
) -> Result<HttpResponse, ApiError> {
    let [from, to] = match numbers(&req, ["from", "to"]) {
        Ok(n) => n,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::AuditLog, &target(), e).await),
    };
    answer(state.engine.audit_log(&ctx, &principal, LogQuery::Consistency { from, to }).await?)
}

/// `GET /audit/{tenant}/export[?from=&to=]`: an offline evidence package (NDJSON).
pub async fn export(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    Authenticated(principal): Authenticated,
) -> Result<HttpResponse, ApiError> {
    let [from, to] = match optional_numbers(&req, ["from", "to"]) {
        Ok(n) => n,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::AuditLog, &target(), e).await),
    };
    answer(state.engine.audit_log(&ctx, &principal, LogQuery::Export { from, to }).await?)
}

fn target() -> Target {
    Target { resource_type: Some(crate::ids::ResourceType::AUDIT_EVENT), ..Target::default() }
}

fn answer(answer: LogAnswer) -> Result<HttpResponse, ApiError> {
    Ok(match answer {
        LogAnswer::Note(note) => HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(note),
        LogAnswer::Proof(proof) => HttpResponse::Ok().json(proof),
        LogAnswer::Package(package) => HttpResponse::Ok().content_type("application/x-ndjson").body(package),
    })
}

/// The query's parameters `names`, each exactly once and a whole number; nothing else.
fn numbers<const N: usize>(req: &HttpRequest, names: [&str; N]) -> Result<[u64; N], ApiError> {
    let values = optional_numbers(req, names)?;
    let mut out = [0; N];
    for ((slot, value), name) in out.iter_mut().zip(values).zip(names) {
        *slot = value.ok_or_else(|| ApiError::bad_request(format!("parameter `{name}` is required")))?;
    }
    Ok(out)
}

/// The query's parameters `names`, each at most once and a whole number; nothing else.
fn optional_numbers<const N: usize>(req: &HttpRequest, names: [&str; N]) -> Result<[Option<u64>; N], ApiError> {
    let mut values: [Option<u64>; N] = [None; N];
    for (name, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        let Some(at) = names.iter().position(|n| *n == name) else {
            return Err(ApiError::bad_request(format!(
                "parameter `{}` is not supported here",
                name.chars().take(64).collect::<String>()
            )));
        };
        let slot = values.get_mut(at).ok_or_else(|| ApiError::bad_request("parameter"))?;
        if slot.is_some() {
            return Err(ApiError::bad_request(format!("parameter `{name}` is given twice")));
        }
        let n = value
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("parameter `{name}` must be a whole number")))?;
        *slot = Some(n);
    }
    Ok(values)
}
