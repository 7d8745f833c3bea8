//! `GET /fhir/{tenant}/metadata`: the CapabilityStatement (no token needed, as FHIR expects).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{Ctx, Params};
use super::response;
use crate::fhir::capability;
use crate::time::Timestamp;

pub async fn capabilities(
    state: web::Data<AppState>,
    Ctx(ctx): Ctx,
    mut params: Params,
) -> Result<HttpResponse, ApiError> {
    // `mode=full|normal|terminology` is accepted; only `full` exists here.
    let _ = params.take("mode");
    params.finish()?;
    let statement = capability::statement(
        &ctx.tenant,
        &ctx.base_url,
        state.engine.search_params(),
        state.engine.limits().conditional_delete_multiple,
        Timestamp::now(),
    );
    let body = serde_json::to_vec(&statement).map_err(ApiError::internal)?;
    Ok(response::json(StatusCode::OK, &params, body))
}
