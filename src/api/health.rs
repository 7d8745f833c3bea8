//! `GET /healthz` (the process answers) and `GET /readyz` (index, object store and key provider
//! answer: ready to serve).

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use super::extract::RequestId;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "alive" }))
}

pub async fn readyz(state: web::Data<AppState>, req: actix_web::HttpRequest) -> HttpResponse {
    match state.engine.ready().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(e) => {
            tracing::warn!(request_id = %RequestId::of(&req), error = %e, "not ready");
            HttpResponse::ServiceUnavailable().json(json!({ "status": "not ready" }))
        }
    }
}
