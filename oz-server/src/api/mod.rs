//! The REST API under `/api/v1`, one module per area.

pub mod admin;
pub mod callbacks;
pub mod environments;
pub mod events;
pub mod integrations;
pub mod runs;
pub mod schedules;
pub(crate) mod schema;
pub mod secrets;
pub mod sessions;
pub mod workers;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use oz_core::failure::ErrorCode;

use crate::dispatch::ws::worker_socket;
use crate::error::ApiError;
use crate::state::AppState;

/// The whole HTTP surface of the API port (the metrics have their own: [`crate::metrics::router`]).
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let api = Router::new()
        .route("/agent/runs", post(runs::create).get(runs::list))
        .route("/agent/run", post(runs::create))
        .route("/agent/runs/local", post(runs::register_local))
        .route("/agent/runs/{id}", get(runs::get))
        .route("/agent/runs/{id}/cancel", post(runs::cancel))
        .route("/agent/runs/{id}/followups", post(runs::followup))
        .route("/agent/runs/{id}/interrupt", post(runs::interrupt))
        .route("/agent/runs/{id}/transcript", get(runs::transcript))
        .route("/agent/runs/{id}/transcript/content", get(runs::transcript_content))
        .route("/agent/runs/{id}/events", get(events::stream))
        .route("/agent/runs/{id}/session", get(sessions::watch))
        .route("/agent/sessions/{id}/redirect", get(sessions::redirect))
        .route("/agent/runs/{id}/report", post(callbacks::report))
        .route("/agent/runs/{id}/resolved", get(callbacks::resolved))
        .route(
            "/agent/runs/{id}/conversation",
            get(callbacks::conversation)
                .put(callbacks::put_conversation)
                // Its own limit (the largest conversation kept), over the server's for bodies.
                .layer(DefaultBodyLimit::max(oz_core::wire::callbacks::MAX_CONVERSATION_BYTES + 1)),
        )
        .route("/agent/environments", get(environments::list).post(environments::create))
        .route(
            "/agent/environments/{id}",
            get(environments::get).put(environments::update).delete(environments::delete),
        )
        .route("/agent/schedules", post(schedules::create).get(schedules::list))
        .route("/agent/schedules/{id}", get(schedules::get).put(schedules::update).delete(schedules::delete))
        .route("/agent/schedules/{id}/pause", post(schedules::pause))
        .route("/agent/schedules/{id}/resume", post(schedules::resume))
        .route("/integrations", post(integrations::create).get(integrations::list))
        .route("/integrations/{id}", get(integrations::get).put(integrations::update).delete(integrations::delete))
        .route("/integrations/{id}/webhook", post(integrations::deliver))
        .route(
            "/integrations/{id}/slack/events",
            post(crate::triggers::slack::events).layer(DefaultBodyLimit::max(crate::triggers::MAX_BODY)),
        )
        .route(
            "/integrations/{id}/slack/commands",
            post(crate::triggers::slack::commands).layer(DefaultBodyLimit::max(crate::triggers::MAX_BODY)),
        )
        .route(
            "/integrations/{id}/slack/interactivity",
            post(crate::triggers::slack::interactivity).layer(DefaultBodyLimit::max(crate::triggers::MAX_BODY)),
        )
        .route(
            "/integrations/{id}/linear/webhook",
            post(crate::triggers::linear::webhook).layer(DefaultBodyLimit::max(crate::triggers::MAX_BODY)),
        )
        .route(
            "/integrations/{id}/github/webhook",
            post(crate::triggers::github::webhook).layer(DefaultBodyLimit::max(crate::triggers::MAX_BODY)),
        )
        .route("/workers", get(workers::list))
        .route("/repos/pushed", post(workers::repos_pushed))
        .route("/secrets", get(secrets::list))
        .route("/secrets/{name}", axum::routing::put(secrets::put).delete(secrets::delete))
        .route("/admin/users", get(admin::users).post(admin::create_user))
        .route("/admin/users/{id}", axum::routing::put(admin::update_user))
        .route("/admin/keys", get(admin::keys).post(admin::create_key))
        .route("/admin/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/admin/keys/{id}/rotate", post(admin::rotate_key))
        .route("/admin/teams", post(admin::create_team))
        .route("/admin/git-providers", get(admin::git_providers))
        .route(
            "/admin/git-providers/{host}",
            axum::routing::put(admin::put_git_provider).delete(admin::delete_git_provider),
        )
        .route("/selfhosted/worker/ws", get(worker_socket))
        .route("/selfhosted/worker/environments/{id}", get(environments::for_worker))
        .route("/selfhosted/worker/environments/{id}/git-credentials", post(environments::preparation_credentials))
        .route(
            "/openapi.json",
            get(|| async {
                ([(axum::http::header::CONTENT_TYPE, "application/json")], crate::openapi::document_json())
            }),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(method_not_allowed);
    let metrics = state.lifecycle.metrics().clone();
    let api = api.route_layer(axum::middleware::from_fn_with_state(metrics, crate::metrics::track_requests));
    let root =
        Router::new().nest("/api/v1", api).route("/healthz", get(|| async { "ok" })).merge(crate::dashboard::router());
    // The dashboard's pages are GET-only too: a wrong method there gets the same problem document.
    root.fallback(|| async { ApiError::not_found("no such endpoint (the API is under /api/v1)") })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::InvalidRequest,
        "this method is not allowed on this endpoint",
    )
}
