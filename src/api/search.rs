//! `GET /fhir/{tenant}/{type}?...`, `POST /fhir/{tenant}/{type}/_search`, compartment search
//! (`GET /fhir/{tenant}/Patient/{id}/Observation?...`) and `GET .../Patient/{id}/$everything`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{Authenticated, Ctx, Params, rejected};
use super::negotiate::read_form;
use super::response::{self, parse_id, parse_type};
use crate::audit::{AuditAction, Target};
use crate::engine::{AuditSearchRequest, EverythingRequest, SearchRequest, parse_count};
use crate::ids::ResourceType;

pub async fn search_get(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    search(&state, ctx, params, principal, &path.into_inner().1, Vec::new(), None).await
}

/// `GET /{compartment type}/{id}/{type}?...`: a search within a compartment.
pub async fn compartment_search(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (_, ctype, cid, rt) = path.into_inner();
    search(&state, ctx, params, principal, &rt, Vec::new(), Some((ctype, cid))).await
}

/// `GET /Patient/{id}/$everything[?_count=&_type=]`.
pub async fn everything(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    mut params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (_, ctype, id) = path.into_inner();
    let prepared = (|| {
        if ctype != "Patient" {
            return Err(ApiError::not_found(format!("`$everything` is served on Patient, not on `{ctype}`")));
        }
        let mut request = EverythingRequest { id: parse_id(&id)?, count: None, types: Vec::new(), cursor: None };
        for (name, value) in params.take_rest() {
            match name.as_str() {
                "_count" => request.count = Some(parse_count(&value)?),
                "_type" => {
                    for t in value.split(',').filter(|t| !t.is_empty()) {
                        let rt = ResourceType::parse(t).map_err(|e| ApiError::bad_request(e.to_string()))?;
                        request.types.push(rt);
                    }
                }
                "_cursor" => request.cursor = Some(value),
                _ if params.lenient => {}
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "`$everything` takes `_count` and `_type`, not `{name}`"
                    )));
                }
            }
        }
        Ok(request)
    })();
    let request = match prepared {
        Ok(request) => request,
        Err(e) => {
            let target = Target::default();
            return Err(rejected(&state, &ctx, &principal, AuditAction::Everything, &target, e).await);
        }
    };
    let bundle = state.engine.everything(&ctx, &principal, &request).await?;
    Ok(response::json(StatusCode::OK, &params, bundle))
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
    search(&state, ctx, params, principal, &path.into_inner().1, form, None).await
}

/// `GET /Patient/{id}/$access-log`: who accessed this patient's data, when and why.
pub async fn access_log(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (_, ctype, id) = path.into_inner();
    search_audit_log(&state, ctx, params, principal, Vec::new(), Some((ctype, id)), true).await
}

/// A search of AuditEvents is a search of the sealed audit log (see `Engine::search_audit_events`);
/// `$access-log` is one confined to a patient.
async fn search_audit_log(
    state: &AppState,
    ctx: crate::engine::RequestContext,
    mut params: Params,
    principal: crate::auth::Principal,
    form: Vec<(String, String)>,
    compartment: Option<(String, String)>,
    access_log: bool,
) -> Result<HttpResponse, ApiError> {
    let prepared = (|| {
        let mut pairs = params.take_rest();
        pairs.extend(form);
        let mut request = AuditSearchRequest::from_pairs(pairs, params.lenient)?;
        if let Some((ctype, cid)) = compartment {
            if ctype != "Patient" {
                return Err(if access_log {
                    ApiError::not_found(format!("`$access-log` is served on Patient, not on `{ctype}`"))
                } else {
                    ApiError::bad_request(format!("AuditEvent is searched by patient, not by `{ctype}`"))
                });
            }
            request.patient = Some(parse_id(&cid)?);
        }
        Ok(request)
    })();
    let action = if access_log { AuditAction::AccessLog } else { AuditAction::SearchType };
    let request = match prepared {
        Ok(request) => request,
        Err(e) => {
            let target = Target { resource_type: Some(ResourceType::AUDIT_EVENT), ..Target::default() };
            return Err(rejected(state, &ctx, &principal, action, &target, e).await);
        }
    };
    let bundle = state.engine.search_audit_events(&ctx, &principal, &request, access_log).await?;
    Ok(response::json(StatusCode::OK, &params, bundle))
}

async fn search(
    state: &AppState,
    ctx: crate::engine::RequestContext,
    mut params: Params,
    principal: crate::auth::Principal,
    resource_type: &str,
    form: Vec<(String, String)>,
    compartment: Option<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    if resource_type == ResourceType::AUDIT_EVENT.as_str() {
        return search_audit_log(state, ctx, params, principal, form, compartment, false).await;
    }
    let prepared = (|| {
        let resource_type = parse_type(resource_type)?;
        let mut pairs = params.take_rest();
        pairs.extend(form);
        let mut request = SearchRequest::from_pairs(resource_type, pairs, params.lenient).map_err(ApiError::from)?;
        if let Some((ctype, cid)) = compartment {
            request.compartment = Some((parse_type(&ctype)?, parse_id(&cid)?));
        }
        Ok(request)
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
