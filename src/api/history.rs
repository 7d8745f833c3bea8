//! `GET /fhir/{tenant}/{type}/_history` and `GET .../{type}/{id}/_history`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{Authenticated, Ctx, Params, rejected};
use super::response::{self, parse_id, parse_type};
use crate::audit::{AuditAction, Target};
use crate::engine::HistoryRequest;
use crate::ids::{ResourceId, ResourceType};
use crate::time::Timestamp;

pub async fn type_history(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let rt = match parse_type(&path.into_inner().1) {
        Ok(rt) => rt,
        Err(e) => {
            return Err(rejected(&state, &ctx, &principal, AuditAction::HistoryType, &Target::default(), e).await);
        }
    };
    history(&state, ctx, params, principal, rt, None).await
}

pub async fn instance_history(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (_, rt, id) = path.into_inner();
    let (rt, id) = match (|| Ok((parse_type(&rt)?, parse_id(&id)?)))() {
        Ok(parsed) => parsed,
        Err(e) => {
            let action = AuditAction::HistoryInstance;
            return Err(rejected(&state, &ctx, &principal, action, &Target::default(), e).await);
        }
    };
    history(&state, ctx, params, principal, rt, Some(id)).await
}

async fn history(
    state: &AppState,
    ctx: crate::engine::RequestContext,
    mut params: Params,
    principal: crate::auth::Principal,
    resource_type: ResourceType,
    id: Option<ResourceId>,
) -> Result<HttpResponse, ApiError> {
    let action = if id.is_some() { AuditAction::HistoryInstance } else { AuditAction::HistoryType };
    let target = Target { resource_type: Some(resource_type), resource_id: id.clone(), ..Target::default() };
    let (count, since, cursor) = match parse_history_params(&mut params) {
        Ok(parsed) => parsed,
        Err(e) => return Err(rejected(state, &ctx, &principal, action, &target, e).await),
    };
    let request = HistoryRequest { resource_type, id, count, since, cursor };
    let bundle = state.engine.history(&ctx, &principal, &request).await?;
    Ok(response::json(StatusCode::OK, &params, bundle))
}

type HistoryParams = (Option<u32>, Option<Timestamp>, Option<String>);

fn parse_history_params(params: &mut Params) -> Result<HistoryParams, ApiError> {
    let count = params.take("_count").map(|c| crate::engine::parse_count(&c)).transpose()?;
    let since = params
        .take("_since")
        .map(|s| Timestamp::parse_fhir(&s).map_err(|e| ApiError::bad_request(format!("`_since`: {e}"))))
        .transpose()?;
    let cursor = params.take("_cursor");
    params.finish()?;
    Ok((count, since, cursor))
}
