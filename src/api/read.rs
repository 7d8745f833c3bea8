//! `GET /fhir/{tenant}/{type}/{id}` and `GET .../{id}/_history/{vid}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{Authenticated, Ctx, Params, Prefer, rejected};
use super::response::{self, VersionHeaders, parse_id, parse_type, parse_version};
use crate::audit::{AuditAction, Target};
use crate::ids::ResourceType;

pub async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (_, rt, id) = path.into_inner();
    let (rt, id) = match (|| Ok((parse_type(&rt)?, parse_id(&id)?, params.finish()?)))() {
        Ok((rt, id, ())) => (rt, id),
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Read, &Target::default(), e).await),
    };
    let prefer = Prefer::of(&req).return_;
    let read = if rt == ResourceType::AUDIT_EVENT {
        state.engine.read_audit_event(&ctx, &principal, &id).await?
    } else {
        state.engine.read(&ctx, &principal, rt, &id).await?
    };
    let version = VersionHeaders { version: read.version, last_updated: read.last_updated };
    Ok(response::resource(StatusCode::OK, &params, prefer, read.body, version, None, || {
        format!("read {rt}/{id} version {}", read.version)
    }))
}

pub async fn vread(
    state: web::Data<AppState>,
    req: HttpRequest,
    Ctx(ctx): Ctx,
    params: Params,
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (_, rt, id, vid) = path.into_inner();
    let parsed = (|| Ok((parse_type(&rt)?, parse_id(&id)?, parse_version(&vid)?, params.finish()?)))();
    let (rt, id, vid) = match parsed {
        Ok((rt, id, vid, ())) => (rt, id, vid),
        Err(e) => return Err(rejected(&state, &ctx, &principal, AuditAction::Vread, &Target::default(), e).await),
    };
    let prefer = Prefer::of(&req).return_;
    let read = state.engine.vread(&ctx, &principal, rt, &id, vid).await?;
    let version = VersionHeaders { version: read.version, last_updated: read.last_updated };
    Ok(response::resource(StatusCode::OK, &params, prefer, read.body, version, None, || {
        format!("read {rt}/{id} version {vid}")
    }))
}
