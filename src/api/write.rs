//! `POST /fhir/{tenant}/{type}` (with `If-None-Exist`), `PUT .../{type}/{id}` and
//! `PUT .../{type}?search`, `PATCH .../{type}/{id}`, `DELETE .../{type}/{id}` and
//! `DELETE .../{type}?search`, and transaction or batch Bundles posted to the base.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{Authenticated, Ctx, Params, Prefer, Return, condition, if_match, precondition, rejected};
use super::negotiate::{read_body, read_patch};
use super::response::{self, VersionHeaders, parse_id, parse_type};
use crate::audit::{AuditAction, Target};
use crate::engine::{RequestContext, Written};
use crate::fhir::outcome::{self, OutcomeIssue};
use crate::ids::ResourceType;

pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let prepared = async {
        let rt = parse_type(&path.into_inner().1)?;
        params.finish()?;
        let if_none_exist = match req.headers().get("if-none-exist") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| ApiError::bad_request("`If-None-Exist` must be a query string"))?
                    .trim_start_matches('?')
                    .to_owned(),
            ),
        };
        Ok((rt, if_none_exist, read_body(req.headers(), payload, state.body_limit).await?))
    };
    let (rt, if_none_exist, body) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Create, &Target::default(), e).await),
    };
    let written = match if_none_exist {
        Some(condition) => state.engine.create_if_none_exist(&ctx, &principal, rt, &body, &condition).await?,
        None => state.engine.create(&ctx, &principal, rt, &body).await?,
    };
    Ok(written_response(&req, &ctx, &params, rt, written))
}

pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (_, rt, id) = path.into_inner();
    let prepared = async {
        let (rt, id) = (parse_type(&rt)?, parse_id(&id)?);
        params.finish()?;
        let precondition = precondition(&req)?;
        Ok((rt, id, precondition, read_body(req.headers(), payload, state.body_limit).await?))
    };
    let (rt, id, precondition, body) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Update, &Target::default(), e).await),
    };
    let written = state.engine.update(&ctx, &principal, rt, &id, &body, precondition).await?;
    Ok(written_response(&req, &ctx, &params, rt, written))
}

/// `PUT /{type}?search`
pub async fn update_where(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    mut params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let prepared = async {
        let rt = parse_type(&path.into_inner().1)?;
        let condition = condition(&mut params).ok_or_else(|| {
            ApiError::bad_request("a conditional update needs search parameters (`PUT [type]?search`)")
        })?;
        Ok((rt, condition, read_body(req.headers(), payload, state.body_limit).await?))
    };
    let (rt, condition, body) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Update, &Target::default(), e).await),
    };
    let written = state.engine.update_where(&ctx, &principal, rt, &condition, &body).await?;
    Ok(written_response(&req, &ctx, &params, rt, written))
}

pub async fn patch(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (_, rt, id) = path.into_inner();
    let prepared = async {
        let (rt, id) = (parse_type(&rt)?, parse_id(&id)?);
        params.finish()?;
        let expected = if_match(&req)?;
        Ok((rt, id, expected, read_patch(req.headers(), payload, state.body_limit).await?))
    };
    let (rt, id, expected, patch) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Update, &Target::default(), e).await),
    };
    let written = state.engine.patch(&ctx, &principal, rt, &id, &patch, expected).await?;
    Ok(written_response(&req, &ctx, &params, rt, written))
}

/// 201 for a create, 200 for an update (or a conditional create's match), shaped by `Prefer`.
fn written_response(
    req: &HttpRequest,
    ctx: &RequestContext,
    params: &Params,
    rt: ResourceType,
    written: Written,
) -> HttpResponse {
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    let location = response::location(&ctx.base_url, rt, &written.id, written.version);
    let version = VersionHeaders { version: written.version, last_updated: written.last_updated };
    let verb = if written.created { "created" } else { "updated" };
    let prefer = Prefer::of(req).return_;
    let (id, v) = (written.id, written.version);
    response::resource(status, params, prefer, written.body, version, Some(location), || {
        format!("{verb} {rt}/{id} version {v}")
    })
}

pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (_, rt, id) = path.into_inner();
    let prepared = (|| {
        let (rt, id) = (parse_type(&rt)?, parse_id(&id)?);
        params.finish()?;
        Ok((rt, id, if_match(&req)?))
    })();
    let (rt, id, expected) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Delete, &Target::default(), e).await),
    };
    let deleted = state.engine.delete(&ctx, &principal, rt, &id, expected).await?;
    let message = match &deleted {
        Some(w) => format!("deleted {rt}/{id} (version {})", w.version),
        None => format!("{rt}/{id} does not exist; nothing to delete"),
    };
    let mut response = deleted_response(&req, &params, message);
    if let Some(w) = deleted
        && let Ok(etag) = actix_web::http::header::HeaderValue::from_str(&response::etag(w.version))
    {
        response.headers_mut().insert(actix_web::http::header::ETAG, etag);
    }
    Ok(response)
}

/// `DELETE /{type}?search`
pub async fn delete_where(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    mut params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let prepared = (|| {
        let rt = parse_type(&path.into_inner().1)?;
        let condition = condition(&mut params).ok_or_else(|| {
            ApiError::bad_request("a conditional delete needs search parameters (`DELETE [type]?search`)")
        })?;
        Ok((rt, condition))
    })();
    let (rt, condition) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Delete, &Target::default(), e).await),
    };
    let deleted = state.engine.delete_where(&ctx, &principal, rt, &condition).await?;
    let message = match deleted.as_slice() {
        [] => format!("no {rt} matches; nothing to delete"),
        [one] => format!("deleted {rt}/{} (version {})", one.id, one.version),
        many => format!("deleted {} resources of type {rt}", many.len()),
    };
    Ok(deleted_response(&req, &params, message))
}

fn deleted_response(req: &HttpRequest, params: &Params, message: String) -> HttpResponse {
    if Prefer::of(req).return_ == Return::OperationOutcome {
        response::json(StatusCode::OK, params, outcome::to_json(&[OutcomeIssue::information(message)]))
    } else {
        HttpResponse::NoContent().finish()
    }
}

/// `POST /fhir/{tenant}` with a transaction or batch Bundle.
pub async fn bundle(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let prepared = async {
        params.finish()?;
        read_body(req.headers(), payload, state.bundle_limit).await
    };
    let body = match prepared.await {
        Ok(body) => body,
        Err(e) => {
            return Err(rejected(&state, &ctx, &principal, AuditAction::Transaction, &Target::default(), e).await);
        }
    };
    let prefer = Prefer::of(&req);
    let representation = prefer.return_given && prefer.return_ == Return::Representation;
    let response = state.engine.bundle(&ctx, &principal, &body, representation).await?;
    Ok(response::json(StatusCode::OK, &params, response))
}
