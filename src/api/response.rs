//! Building FHIR answers: content type, `ETag`, `Last-Modified`, `Location`, `Prefer: return`.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;

use super::error::ApiError;
use super::extract::{Params, Return};
use crate::fhir::outcome::{self, OutcomeIssue};
use crate::ids::{ResourceId, ResourceType, VersionId};
use crate::time::Timestamp;

/// What identifies the version an answer is about.
#[derive(Debug, Clone, Copy)]
pub struct VersionHeaders {
    pub version: VersionId,
    pub last_updated: Timestamp,
}

pub fn etag(version: VersionId) -> String {
    format!("W/\"{version}\"")
}

/// A JSON body in the negotiated format, pretty-printed on `_pretty=true`.
pub fn json(status: StatusCode, params: &Params, body: Vec<u8>) -> HttpResponse {
    let body = if params.pretty { prettify(body) } else { body };
    HttpResponse::build(status).insert_header((header::CONTENT_TYPE, params.format.content_type())).body(body)
}

fn prettify(body: Vec<u8>) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) => serde_json::to_vec_pretty(&value).unwrap_or(body),
        Err(_) => body,
    }
}

/// The answer to a read or a write, shaped by `Prefer: return`.
pub fn resource(
    status: StatusCode,
    params: &Params,
    prefer: Return,
    body: Vec<u8>,
    version: VersionHeaders,
    location: Option<String>,
    summary: impl FnOnce() -> String,
) -> HttpResponse {
    let mut response = match prefer {
        Return::Representation => json(status, params, body),
        Return::Minimal => HttpResponse::build(status).finish(),
        Return::OperationOutcome => json(status, params, outcome::to_json(&[OutcomeIssue::information(summary())])),
    };
    let headers = response.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&etag(version.version)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = header::HeaderValue::from_str(&version.last_updated.to_http_date()) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if let Some(v) = location.and_then(|l| header::HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, v);
    }
    response
}

/// `{base}/{type}/{id}/_history/{vid}`
pub fn location(base_url: &str, rt: ResourceType, id: &ResourceId, version: VersionId) -> String {
    format!("{base_url}/{rt}/{id}/_history/{version}")
}

pub fn parse_type(raw: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(raw).map_err(|e| ApiError::not_found(e.to_string()))
}

pub fn parse_id(raw: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub fn parse_version(raw: &str) -> Result<VersionId, ApiError> {
    VersionId::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}
