//! The one middleware: request id in and out, one structured log line per request (route
//! pattern, never the path or query, which may carry identifiers), opaque 5xx bodies, and an
//! OperationOutcome for any error actix produced on its own.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, HttpResponse};

use super::error::{ApiError, FHIR_JSON};
use super::extract::RequestId;
use crate::fhir::outcome::{self, IssueType, OutcomeIssue};

const REQUEST_ID: &str = "x-request-id";

/// Accept a client's request id if it is short and printable; otherwise make one.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = request_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let started = Instant::now();

    // Handlers and extractors turn their errors into responses, so `Err` here only comes from
    // actix itself; it renders those. (The request cannot be cloned before routing.)
    let mut res = next.call(req).await?.map_into_boxed_body();
    let status = res.status();
    let route = res.request().match_pattern().unwrap_or_else(|| "<unmatched>".to_owned());

    if status.is_server_error() {
        let cause = res
            .response()
            .error()
            .map(|e| e.as_error::<ApiError>().map_or_else(|| e.to_string(), ApiError::cause_chain))
            .unwrap_or_default();
        tracing::error!(request_id = %id, %method, %route, status = status.as_u16(), cause = %cause, "request failed");
        res = replace_body(res, status, IssueType::Exception, &format!("internal error (request id {id})"));
    } else if status.is_client_error() && !is_fhir_json(&res) {
        // An error actix answered itself (unmatched route, unknown method): say it in FHIR.
        let message = status.canonical_reason().unwrap_or("request refused").to_lowercase();
        let code = if status == StatusCode::NOT_FOUND { IssueType::NotFound } else { IssueType::Invalid };
        res = replace_body(res, status, code, &message);
    }

    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(header::HeaderName::from_static(REQUEST_ID), v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));

    tracing::info!(
        request_id = %id,
        %method,
        %route,
        status = status.as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    Ok(res)
}

fn is_fhir_json(res: &ServiceResponse<BoxBody>) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/fhir+json"))
}

fn replace_body(
    res: ServiceResponse<BoxBody>,
    status: StatusCode,
    code: IssueType,
    message: &str,
) -> ServiceResponse<BoxBody> {
    let (req, old) = res.into_parts();
    let mut fresh = HttpResponse::build(status);
    fresh.insert_header((header::CONTENT_TYPE, FHIR_JSON));
    for (name, value) in old.headers() {
        if name == header::ALLOW || name == header::WWW_AUTHENTICATE {
            fresh.insert_header((name.clone(), value.clone()));
        }
    }
    let body = outcome::to_json(&[OutcomeIssue::error(code, message)]);
    ServiceResponse::new(req, fresh.body(body))
}
