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
use crate::search::Total;

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
    let form = match read_form(req.headers(), payload, state.max_body_bytes).await {
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
        read_request(resource_type, pairs, params.lenient)
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

/// Take the control parameters out of `pairs`; the rest are the search's own.
fn read_request(
    resource_type: crate::ids::ResourceType,
    pairs: Vec<(String, String)>,
    lenient: bool,
) -> Result<SearchRequest, ApiError> {
    let mut request = SearchRequest {
        resource_type,
        params: Vec::new(),
        count: None,
        total: Total::default(),
        summary_count: false,
        cursor: None,
        lenient,
    };
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => {
                let count = value.parse::<u32>().map_err(|_| {
                    ApiError::bad_request(format!("`_count` must be a non-negative integer, not `{value}`"))
                })?;
                request.count = Some(count);
            }
            "_total" => {
                request.total = match value.as_str() {
                    "none" => Total::None,
                    // An estimate costs the same as the exact count here.
                    "accurate" | "estimate" => Total::Accurate,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "`_total` takes `none`, `estimate` or `accurate`, not `{other}`"
                        )));
                    }
                };
            }
            "_summary" if value == "count" => request.summary_count = true,
            "_summary" if value == "false" => {}
            "_cursor" => request.cursor = Some(value),
            "_sort" | "_include" | "_revinclude" | "_elements" | "_summary" | "_has" | "_contained"
            | "_containedType" | "_text" | "_content" | "_list" | "_query" | "_filter" | "_type" => {
                if !lenient {
                    return Err(ApiError::bad_request(format!("the search parameter `{name}` is not supported yet")));
                }
            }
            _ => request.params.push((name, value)),
        }
    }
    Ok(request)
}
