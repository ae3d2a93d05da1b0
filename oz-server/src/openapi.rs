//! The OpenAPI document, generated from the handlers' annotations and the wire types of oz-core;
//! served at `GET /api/v1/openapi.json` and pinned by a snapshot test (`oz-server/openapi.json`).

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::api::{admin, callbacks, environments, events, integrations, runs, schedules, secrets, sessions, workers};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "oz control plane",
        description = "Wire-compatible with the Oz Agent API (runs, schedules, environments), plus our extensions: \
            environment create/update/delete, integrations (signed webhooks; Slack, Linear and GitHub triggers), workers, run events as Server-Sent \
            Events, live sessions (a WebSocket per run), the runner's report callback, and the admin API (users, roles, credentials, teams). Errors are RFC 7807 problem documents with Oz's `error` codes.",
        license(name = "Apache-2.0")
    ),
    servers((url = "/api/v1")),
    paths(
        runs::create, runs::register_local, runs::list, runs::get, runs::cancel, runs::transcript, runs::transcript_content, runs::followup, runs::interrupt,
        events::stream, sessions::watch, sessions::redirect, callbacks::report, callbacks::resolved, callbacks::put_conversation, callbacks::conversation,
        environments::list, environments::create, environments::get, environments::update, environments::delete, environments::for_worker, environments::preparation_credentials,
        schedules::create, schedules::list, schedules::get, schedules::update, schedules::delete, schedules::pause, schedules::resume,
        integrations::create, integrations::list, integrations::get, integrations::update, integrations::delete, integrations::deliver,
        crate::triggers::slack::events, crate::triggers::slack::commands, crate::triggers::slack::interactivity,
        crate::triggers::linear::webhook, crate::triggers::github::webhook,
        workers::list, workers::repos_pushed,
        admin::users, admin::create_user, admin::update_user, admin::keys, admin::create_key, admin::rotate_key,
        admin::revoke_key, admin::create_team, admin::git_providers, admin::put_git_provider, admin::delete_git_provider,
        secrets::list, secrets::put, secrets::delete,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`oz_...`), or a run's workload token (`ozw_...`) where a runner calls",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON (what the snapshot pins).
pub fn document_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
