//! `POST /fhir/{tenant}/Patient/{id}/$erase`, `$erase-cancel` and `$legal-hold`: a patient's
//! erasure (crypto-shredding) and the legal holds that prevent it. Administrators only.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::extract::{Authenticated, Ctx, Params, rejected};
use super::negotiate::read_body;
use super::response::{self, parse_id};
use crate::audit::{AuditAction, Target};
use crate::auth::Principal;
use crate::engine::{ErasureAnswer, RequestContext};
use crate::fhir::outcome::{self, OutcomeIssue};
use crate::ids::ResourceId;

/// `POST /Patient/{id}/$erase` (no body needed).
pub async fn erase(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    without_body(&state, &ctx, &params, &principal, &path.into_inner(), AuditAction::Erase).await
}

/// `POST /Patient/{id}/$erase-cancel`.
pub async fn cancel(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    without_body(&state, &ctx, &params, &principal, &path.into_inner(), AuditAction::EraseCancel).await
}

/// `$erase` (`action` `Erase`) or `$erase-cancel` (`EraseCancel`).
async fn without_body(
    state: &AppState,
    ctx: &RequestContext,
    params: &Params,
    principal: &Principal,
    path: &(String, String, String),
    action: AuditAction,
) -> Result<HttpResponse, ApiError> {
    let operation = if action == AuditAction::Erase { "$erase" } else { "$erase-cancel" };
    let id = match patient_id(path, operation).and_then(|id| params.finish().map(|()| id)) {
        Ok(id) => id,
        Err(e) => return Err(rejected(state, ctx, principal, action, &Target::default(), e).await),
    };
    let answer = if action == AuditAction::Erase {
        state.engine.erase(ctx, principal, &id).await?
    } else {
        state.engine.cancel_erasure(ctx, principal, &id).await?
    };
    Ok(answered(params, &answer))
}

/// `POST /Patient/{id}/$legal-hold` with a `Parameters` body: `hold` (boolean, required) and,
/// to set one, `reason` (string: why the record must be kept, such as a court order's reference).
pub async fn legal_hold(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let prepared = async {
        let id = patient_id(&path.into_inner(), "$legal-hold")?;
        params.finish()?;
        let body = read_body(req.headers(), payload, state.body_limit).await?;
        Ok::<_, ApiError>((id, hold_parameters(&body)?))
    }
    .await;
    let (id, reason) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            return Err(rejected(&state, &ctx, &principal, AuditAction::LegalHold, &Target::default(), e).await);
        }
    };
    let answer = state.engine.legal_hold(&ctx, &principal, &id, reason).await?;
    Ok(answered(&params, &answer))
}

fn patient_id((_, rt, id): &(String, String, String), operation: &str) -> Result<ResourceId, ApiError> {
    if rt != "Patient" {
        return Err(ApiError::not_found(format!("`{operation}` is served on Patient, not on `{rt}`")));
    }
    parse_id(id)
}

/// The hold a `$legal-hold` Parameters body asks for: `Some(reason)` to set, `None` to clear.
fn hold_parameters(body: &[u8]) -> Result<Option<String>, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("`$legal-hold` takes a Parameters resource {why}"));
    let doc: Value = serde_json::from_slice(body).map_err(|_| bad("(the body is not JSON)"))?;
    if doc.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("(the body is not one)"));
    }
    let (mut hold, mut reason) = (None, None);
    for p in doc.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        match p.get("name").and_then(Value::as_str) {
            Some("hold") => hold = p.get("valueBoolean").and_then(Value::as_bool),
            Some("reason") => reason = p.get("valueString").and_then(Value::as_str).map(str::trim).map(str::to_owned),
            Some(other) => return Err(bad(&format!("with `hold` and `reason`, not `{other}`"))),
            None => return Err(bad("whose parameters have names")),
        }
    }
    match (hold, reason) {
        (Some(true), Some(reason)) if !reason.is_empty() && reason.len() <= 1024 => Ok(Some(reason)),
        (Some(true), _) => Err(bad("with a `reason` (valueString, 1 to 1024 characters) to set a hold")),
        (Some(false), _) => Ok(None),
        (None, _) => Err(bad("with `hold` (valueBoolean)")),
    }
}

fn answered(params: &Params, answer: &ErasureAnswer) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    response::json(status, params, outcome::to_json(&[OutcomeIssue::information(answer.message.clone())]))
}
