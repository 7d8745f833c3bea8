//! Content negotiation and request bodies: JSON only (`application/fhir+json`,
//! `application/json`, `_format=json`); XML is answered 415 saying so.

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::web::{self, Bytes, BytesMut};
use futures::StreamExt as _;

use super::error::ApiError;
use crate::fhir::outcome::IssueType;

const ONLY_JSON: &str = "only JSON is served: use `application/fhir+json` or `application/json`";

/// The media type of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    FhirJson,
    /// The client asked for plain `application/json` only.
    Json,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::FhirJson => super::error::FHIR_JSON,
            Self::Json => "application/json; charset=utf-8",
        }
    }
}

enum Media {
    FhirJson,
    Json,
    Any,
    Xml,
    Other,
}

fn classify(essence: &str) -> Media {
    match essence.trim().to_ascii_lowercase().as_str() {
        "application/fhir+json" | "application/json+fhir" | "json" => Media::FhirJson,
        "application/json" => Media::Json,
        "*/*" | "application/*" => Media::Any,
        "application/fhir+xml" | "application/xml+fhir" | "application/xml" | "text/xml" | "xml" => Media::Xml,
        _ => Media::Other,
    }
}

/// FHIR R4 is 4.0; R4B (4.3) shares its JSON for everything we serve, and some clients only
/// speak it. Anything else is a version we do not serve (406).
fn check_fhir_version(params: &str) -> Result<(), ApiError> {
    for param in params.split(';') {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("fhirVersion")
        {
            let v = value.trim().trim_matches('"');
            if !(v == "4.0" || v.starts_with("4.0.") || v == "4.3" || v.starts_with("4.3.")) {
                return Err(ApiError::new(
                    StatusCode::NOT_ACCEPTABLE,
                    IssueType::NotSupported,
                    format!("FHIR version `{v}` is not served; this server speaks FHIR R4 (4.0)"),
                ));
            }
        }
    }
    Ok(())
}

/// Decide the answer's format from `_format` and `Accept`.
pub fn negotiate(req: &HttpRequest, format_param: Option<&str>) -> Result<Format, ApiError> {
    if let Some(format) = format_param {
        let (essence, params) = format.split_once(';').unwrap_or((format, ""));
        check_fhir_version(params)?;
        return match classify(essence) {
            Media::FhirJson | Media::Any => Ok(Format::FhirJson),
            Media::Json => Ok(Format::Json),
            Media::Xml | Media::Other => Err(ApiError::unsupported_media_type(ONLY_JSON)),
        };
    }
    let Some(accept) = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Format::FhirJson);
    };
    let mut saw_xml = false;
    let mut plain_json = false;
    for range in accept.split(',') {
        let (essence, params) = range.split_once(';').unwrap_or((range, ""));
        match classify(essence) {
            Media::FhirJson | Media::Any => {
                check_fhir_version(params)?;
                return Ok(Format::FhirJson);
            }
            Media::Json => {
                check_fhir_version(params)?;
                plain_json = true;
            }
            Media::Xml => saw_xml = true,
            Media::Other => {}
        }
    }
    if plain_json {
        Ok(Format::Json)
    } else if saw_xml {
        Err(ApiError::unsupported_media_type(ONLY_JSON))
    } else {
        Err(ApiError::new(StatusCode::NOT_ACCEPTABLE, IssueType::NotSupported, ONLY_JSON))
    }
}

/// The most bytes a request body may have, and the setting that says so (named in the 413).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub bytes: usize,
    pub setting: &'static str,
}

/// Check `Content-Type`, then read the body up to `limit` bytes (413 beyond).
pub async fn read_body(headers: &HeaderMap, payload: web::Payload, limit: BodyLimit) -> Result<Bytes, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (essence, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    match classify(essence) {
        Media::FhirJson | Media::Json if !essence.trim().eq_ignore_ascii_case("json") => check_fhir_version(params)?,
        Media::Xml => return Err(ApiError::unsupported_media_type(ONLY_JSON)),
        _ if essence.trim().is_empty() => {
            return Err(ApiError::unsupported_media_type(format!("a `Content-Type` is required; {ONLY_JSON}")));
        }
        _ => {
            return Err(ApiError::unsupported_media_type(format!(
                "`Content-Type: {}` is not accepted; {ONLY_JSON}",
                essence.trim()
            )));
        }
    }
    let body = read_limited(headers, payload, limit).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; a FHIR resource is expected"));
    }
    Ok(body)
}

/// A JSON Patch body (`PATCH`), which must be `application/json-patch+json`.
pub async fn read_patch(headers: &HeaderMap, payload: web::Payload, limit: BodyLimit) -> Result<Bytes, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split_once(';').map_or(content_type, |(essence, _)| essence).trim();
    if !essence.eq_ignore_ascii_case("application/json-patch+json") {
        return Err(ApiError::unsupported_media_type(format!(
            "`Content-Type: {}` is not accepted; PATCH takes a JSON Patch as `application/json-patch+json`",
            essence.chars().take(64).collect::<String>()
        )));
    }
    let body = read_limited(headers, payload, limit).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; a JSON Patch document is expected"));
    }
    Ok(body)
}

/// The parameters of a form body (`POST [type]/_search`), which must be
/// `application/x-www-form-urlencoded`; an empty body has none.
pub async fn read_form(
    headers: &HeaderMap,
    payload: web::Payload,
    limit: BodyLimit,
) -> Result<Vec<(String, String)>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split_once(';').map_or(content_type, |(essence, _)| essence).trim();
    let body = read_limited(headers, payload, limit).await?;
    if body.is_empty() && essence.is_empty() {
        return Ok(Vec::new());
    }
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ApiError::unsupported_media_type(format!(
            "`Content-Type: {essence}` is not accepted; a search is posted as `application/x-www-form-urlencoded`"
        )));
    }
    Ok(url::form_urlencoded::parse(&body).into_owned().collect())
}

/// The body, up to `limit` bytes (413 beyond).
async fn read_limited(headers: &HeaderMap, mut payload: web::Payload, limit: BodyLimit) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            format!("the request body is larger than the {}-byte limit (`{}`)", limit.bytes, limit.setting),
        )
    };
    let limit = limit.bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the request body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
