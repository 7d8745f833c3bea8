//! `ApiError`: every failure answered as an OperationOutcome with the right status.
//!
//! A 5xx body says nothing but the request id (the middleware adds it); the cause chain goes
//! to the log, once, with the same request id.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::auth::AuthError;
use crate::engine::EngineError;
use crate::fhir::outcome::{self, IssueType, OutcomeIssue};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    issues: Vec<OutcomeIssue>,
    /// Kept for the log; never shown to the client.
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    www_authenticate: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: IssueType, message: impl Into<String>) -> Self {
        Self { status, issues: vec![OutcomeIssue::error(code, message)], source: None, www_authenticate: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueType::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, IssueType::NotSupported, message)
    }

    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            issues: vec![OutcomeIssue::error(IssueType::Exception, "internal error")],
            source: Some(source.into()),
            www_authenticate: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The cause chain, for the log line of a 5xx.
    pub fn cause_chain(&self) -> String {
        let mut out = String::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = next {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.issues.first().map_or("error", |i| i.diagnostics.as_str());
        write!(f, "{} {first}", self.status.as_u16())
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON)));
        if let Some(challenge) = self.www_authenticate.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            response.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        response.body(outcome::to_json(&self.issues))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let description = e.to_string().replace('"', "'");
        let challenge = match e {
            AuthError::Missing | AuthError::NotBearer => r#"Bearer realm="fhirvault""#.to_owned(),
            _ => format!(r#"Bearer realm="fhirvault", error="invalid_token", error_description="{description}""#),
        };
        let code = if e == AuthError::Expired { IssueType::Expired } else { IssueType::Login };
        Self { www_authenticate: Some(challenge), ..Self::new(StatusCode::UNAUTHORIZED, code, e.to_string()) }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        if e.is_internal() {
            return Self::internal(e);
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { status, issues: e.issues(), source: None, www_authenticate: None }
    }
}
