//! `POST /fhir/{tenant}/{type}`, `PUT .../{type}/{id}`, `DELETE .../{type}/{id}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{Authenticated, Ctx, Params, Prefer, Return, if_match, rejected};
use super::negotiate::read_body;
use super::response::{self, VersionHeaders, parse_id, parse_type};
use crate::audit::{AuditAction, Target};
use crate::fhir::outcome::{self, OutcomeIssue};

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
        Ok((rt, read_body(req.headers(), payload, state.max_body_bytes).await?))
    };
    let (rt, body) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Create, &Target::default(), e).await),
    };
    let prefer = Prefer::of(&req).return_;
    let written = state.engine.create(&ctx, &principal, rt, &body).await?;
    let location = response::location(&ctx.base_url, rt, &written.id, written.version);
    let version = VersionHeaders { version: written.version, last_updated: written.last_updated };
    Ok(response::resource(StatusCode::CREATED, &params, prefer, written.body, version, Some(location), || {
        format!("created {rt}/{} version {}", written.id, written.version)
    }))
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
        let expected = if_match(&req)?;
        Ok((rt, id, expected, read_body(req.headers(), payload, state.max_body_bytes).await?))
    };
    let (rt, id, expected, body) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Update, &Target::default(), e).await),
    };
    let prefer = Prefer::of(&req).return_;
    let written = state.engine.update(&ctx, &principal, rt, &id, &body, expected).await?;
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    let location = response::location(&ctx.base_url, rt, &id, written.version);
    let version = VersionHeaders { version: written.version, last_updated: written.last_updated };
    let verb = if written.created { "created" } else { "updated" };
    Ok(response::resource(status, &params, prefer, written.body, version, Some(location), || {
        format!("{verb} {rt}/{id} version {}", written.version)
    }))
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
    let prefer = Prefer::of(&req).return_;
    let deleted = state.engine.delete(&ctx, &principal, rt, &id, expected).await?;
    let message = match &deleted {
        Some(w) => format!("deleted {rt}/{id} (version {})", w.version),
        None => format!("{rt}/{id} does not exist; nothing to delete"),
    };
    let mut response = if prefer == Return::OperationOutcome {
        response::json(StatusCode::OK, &params, outcome::to_json(&[OutcomeIssue::information(message)]))
    } else {
        HttpResponse::NoContent().finish()
    };
    if let Some(w) = deleted
        && let Ok(etag) = actix_web::http::header::HeaderValue::from_str(&response::etag(w.version))
    {
        response.headers_mut().insert(actix_web::http::header::ETAG, etag);
    }
    Ok(response)
}
