//! `GET /fhir/{tenant}/.well-known/smart-configuration`: how SMART apps get a token for this
//! tenant (SMART App Launch 2.x discovery; no token needed). The endpoints are the tenant's
//! OpenID provider's own, from its discovery document.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::Ctx;
use crate::auth::scopes::SUPPORTED_FORMS;
use crate::fhir::outcome::IssueType;

/// What the server does with SMART tokens (the `capabilities` of SMART App Launch 2.x).
const CAPABILITIES: [&str; 9] = [
    "launch-standalone",
    "client-public",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "sso-openid-connect",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
];

pub async fn configuration(state: web::Data<AppState>, Ctx(ctx): Ctx) -> Result<HttpResponse, ApiError> {
    let Some(issuer) = state.auth.issuers().find(|i| i.serves(&ctx.tenant)) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!(
                "tenant `{}` has no OpenID provider (configure one under `auth.issuers`); development tokens \
                 come from `fhirvault token`",
                ctx.tenant
            ),
        ));
    };
    let Some(endpoints) = issuer.endpoints().await else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueType::Exception,
            format!("the OpenID provider `{}` of this tenant cannot be reached; try again later", issuer.name()),
        ));
    };
    let mut scopes = vec!["openid", "fhirUser", "launch/patient"];
    scopes.extend(SUPPORTED_FORMS);
    let body = json!({
        "issuer": issuer.issuer(),
        "jwks_uri": endpoints.jwks_uri,
        "authorization_endpoint": endpoints.authorization_endpoint,
        "token_endpoint": endpoints.token_endpoint,
        "grant_types_supported": endpoints.grant_types_supported,
        "token_endpoint_auth_methods_supported": endpoints.token_endpoint_auth_methods_supported,
        "token_endpoint_auth_signing_alg_values_supported": endpoints.token_endpoint_auth_signing_alg_values_supported,
        "code_challenge_methods_supported": endpoints.code_challenge_methods_supported,
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "capabilities": CAPABILITIES,
    });
    Ok(HttpResponse::Ok().content_type("application/json").body(body.to_string()))
}
