//! The FHIR REST API over HTTP (actix-web).
//!
//! **Architecture Invariant:** only `api` (and later `viewer`) knows actix-web. Handlers parse
//! the request, call one `Engine` interaction and shape the answer; they hold no business rules.
//!
//! **API Boundary:** everything under `/fhir/{tenant}` is FHIR R4 REST as published in the
//! CapabilityStatement; `/audit/{tenant}/...` serves auditors the audit log's signed
//! checkpoints and proofs; `/healthz` and `/readyz` are for operators.

mod audit_log;
mod erasure;
mod error;
mod extract;
mod health;
mod history;
mod metadata;
mod middleware;
mod negotiate;
mod read;
mod response;
mod search;
mod smart;
mod write;

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use crate::auth::Authenticator;
use crate::engine::Engine;
use crate::fhir::outcome::IssueType;
use crate::ids::TenantId;

pub use error::ApiError;
pub use middleware::request_context;
pub use negotiate::BodyLimit;

/// What every handler shares.
pub struct AppState {
    pub engine: Engine,
    pub auth: Authenticator,
    pub tenants: BTreeSet<TenantId>,
    pub public_base_url: Option<String>,
    /// Request bodies, and transaction or batch Bundles (larger).
    pub body_limit: BodyLimit,
    pub bundle_limit: BodyLimit,
}

/// All routes. Each resource path answers 405 (with `Allow`) to methods it does not serve.
///
/// Routes are tried in order, each a whole-path match (a regex) whose segments never hold a
/// `/`. So the order only matters among paths with as many segments: the two-segment
/// `_search` and `_history` come before `/{type}/{id}`, which would take them. Within that
/// rule, the paths of every read and write come first: each route tried before the one that
/// answers costs a regex match (a tenth of a read's CPU when reads came last).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").route(web::get().to(health::healthz)).default_service(not_allowed("GET")))
        .service(web::resource("/readyz").route(web::get().to(health::readyz)).default_service(not_allowed("GET")))
        .service(
            web::scope("/audit/{tenant}")
                .service(
                    web::resource("/checkpoint")
                        .route(web::get().to(audit_log::checkpoint))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/proof/inclusion")
                        .route(web::get().to(audit_log::inclusion))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/proof/consistency")
                        .route(web::get().to(audit_log::consistency))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/export")
                        .route(web::get().to(audit_log::export))
                        .default_service(not_allowed("GET")),
                ),
        )
        .service(
            web::scope("/fhir/{tenant}")
                .service(
                    web::resource("/.well-known/smart-configuration")
                        .route(web::get().to(smart::configuration))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/metadata")
                        .route(web::get().to(metadata::capabilities))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/{type}/_search")
                        .route(web::post().to(search::search_post))
                        .default_service(not_allowed("POST")),
                )
                .service(
                    web::resource("/{type}/_history")
                        .route(web::get().to(history::type_history))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/{type}/{id}")
                        .route(web::get().to(read::read))
                        .route(web::put().to(write::update))
                        .route(web::delete().to(write::delete))
                        .route(web::patch().to(write::patch))
                        .default_service(not_allowed("GET, PUT, PATCH, DELETE")),
                )
                .service(
                    web::resource("/{type}")
                        .route(web::get().to(search::search_get))
                        .route(web::post().to(write::create))
                        .route(web::put().to(write::update_where))
                        .route(web::delete().to(write::delete_where))
                        .default_service(not_allowed("GET, POST, PUT, DELETE")),
                )
                .service(
                    web::resource("/{type}/{id}/_history")
                        .route(web::get().to(history::instance_history))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/{type}/{id}/_history/{vid}")
                        .route(web::get().to(read::vread))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/{type}/{id}/$everything")
                        .route(web::get().to(search::everything))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/{type}/{id}/$erase")
                        .route(web::post().to(erasure::erase))
                        .default_service(not_allowed("POST")),
                )
                .service(
                    web::resource("/{type}/{id}/$erase-cancel")
                        .route(web::post().to(erasure::cancel))
                        .default_service(not_allowed("POST")),
                )
                .service(
                    web::resource("/{type}/{id}/$legal-hold")
                        .route(web::post().to(erasure::legal_hold))
                        .default_service(not_allowed("POST")),
                )
                .service(
                    web::resource("/{type}/{id}/$access-log")
                        .route(web::get().to(search::access_log))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource("/{compartment}/{id}/{type}")
                        .route(web::get().to(search::compartment_search))
                        .default_service(not_allowed("GET")),
                )
                .service(
                    web::resource(["", "/"]).route(web::post().to(write::bundle)).default_service(not_allowed("POST")),
                ),
        )
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::not_found("there is no such endpoint; FHIR bases are at /fhir/{tenant}"))
        }));
}

fn not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move { method_not_allowed(allow, "this method is not supported on this endpoint") })
}

fn method_not_allowed(allow: &'static str, message: &str) -> Result<HttpResponse, ApiError> {
    let error =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, format!("{message} (allowed: {allow})"));
    let mut response = actix_web::ResponseError::error_response(&error);
    response
        .headers_mut()
        .insert(actix_web::http::header::ALLOW, actix_web::http::header::HeaderValue::from_static(allow));
    Ok(response)
}
