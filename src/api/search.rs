//! `GET /fhir/{tenant}/{type}?...` and `POST /fhir/{tenant}/{type}/_search`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{Authenticated, Ctx, Params, rejected};
use super::negotiate::read_form;
use super::response::{self, parse_type};
use crate::audit::{AuditAction, Target};
use crate::engine::SearchRequest;

pub async fn search_get(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    search(&state, ctx, params, principal, &path.into_inner().1, Vec::new()).await
}

/// A search posted as a form: its parameters join those of the URL.
pub async fn search_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let form = match read_form(req.headers(), payload, state.body_limit).await {
        Ok(form) => form,
        Err(e) => {
            return Err(rejected(&state, &ctx, &principal, AuditAction::SearchType, &Target::default(), e).await);
        }
    };
    search(&state, ctx, params, principal, &path.into_inner().1, form).await
}

async fn search(
    state: &AppState,
    ctx: crate::engine::RequestContext,
    mut params: Params,
    principal: crate::auth::Principal,
    resource_type: &str,
    form: Vec<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let prepared = (|| {
        let resource_type = parse_type(resource_type)?;
        let mut pairs = params.take_rest();
        pairs.extend(form);
        SearchRequest::from_pairs(resource_type, pairs, params.lenient).map_err(ApiError::from)
    })();
    let request = match prepared {
        Ok(request) => request,
        Err(e) => {
            let target = Target::default();
            return Err(rejected(state, &ctx, &principal, AuditAction::SearchType, &target, e).await);
        }
    };
    let bundle = state.engine.search(&ctx, &principal, &request).await?;
    Ok(response::json(StatusCode::OK, &params, bundle))
}
