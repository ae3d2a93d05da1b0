//! An unmanaged `oz agent run` registering its run (`POST /agent/runs/local` with an API key), so
//! that the run is tracked, watched, steered and cancelled like a managed one; from then on the
//! runner uses the run's workload token, as in a sandbox, and says every [`HEARTBEAT_EVERY`] that it
//! is alive (no worker renews its run's lease).

use std::time::Duration;

use oz_core::runner::{HarnessKind, env};
use oz_core::sharing::SessionSharing;
use oz_core::wire::api::{AgentConfig, LocalRunCreated, LocalRunRequest};
use oz_core::wire::worker::HarnessConfig;

use crate::args::RunArgs;
use crate::run::Context;

/// How often a registered run's runner says it is alive (well within the server's lease, 90 s by
/// default).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);

/// The request a run of `args` registers with: its prompt, source, environment, model, harness and
/// sharing. An error says what is missing or malformed.
pub(crate) fn request(args: &RunArgs, ctx: &Context) -> Result<LocalRunRequest, String> {
    let prompt = args
        .prompt
        .clone()
        .or_else(|| ctx.var(env::PROMPT))
        .filter(|p| !p.trim().is_empty())
        .ok_or("an unmanaged run that registers with the control plane needs --prompt (or OZ_PROMPT)")?;
    let mut sharing: Option<SessionSharing> = None;
    for share in &args.share {
        let into = sharing.get_or_insert_with(Default::default);
        if share.trim_start().starts_with('{') {
            let given: SessionSharing =
                serde_json::from_str(share).map_err(|e| format!("--share {share}: not session sharing JSON: {e}"))?;
            into.public_access = given.public_access.or(into.public_access);
            into.share.extend(given.share);
        } else {
            into.share.push(share.clone());
        }
    }
    let harness = match args.harness.parse::<HarnessKind>() {
        Ok(HarnessKind::Oz) | Err(_) => None,
        Ok(kind) => Some(HarnessConfig { kind: Some(kind), ..Default::default() }),
    };
    // GitHub sets GITHUB_ACTIONS=true in every step of a workflow.
    let in_actions = ctx.var("GITHUB_ACTIONS").is_some_and(|v| v == "true");
    let title = in_actions.then(|| {
        let workflow = ctx.var("GITHUB_WORKFLOW").unwrap_or_default();
        let repository = ctx.var("GITHUB_REPOSITORY").unwrap_or_default();
        format!("{workflow} ({repository})").chars().take(200).collect()
    });
    Ok(LocalRunRequest {
        prompt,
        title,
        source: Some(if in_actions { "GITHUB_ACTION" } else { "CLI" }.into()),
        config: Some(AgentConfig {
            environment_id: args.environment.clone(),
            model_id: args.model.clone(),
            harness,
            session_sharing: sharing,
            ..Default::default()
        }),
    })
}

/// Registers the run with the control plane at `server_root_url` (the API under `/api/v1`).
pub(crate) async fn register(
    server_root_url: &str,
    api_key: &str,
    args: &RunArgs,
    ctx: &Context,
) -> Result<LocalRunCreated, String> {
    let request = request(args, ctx)?;
    let client = oz_sdk::Client::builder()
        .base_url(format!("{}/api/v1", server_root_url.trim_end_matches('/')))
        .api_key(api_key)
        .user_agent(concat!("oz-agent-runner/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| oz_core::error::error_chain(&e))?;
    client.runs().register_local(&request).await.map_err(|e| match e {
        // A body that did not read as the answer could hold the run's workload token: never shown.
        oz_sdk::Error::Decode { .. } => {
            "the control plane's answer could not be read (not shown: it may hold a token)".to_owned()
        }
        e => oz_core::error::error_chain(&e),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx(env: &[(&str, &str)]) -> Context {
        let (_, cancel) = tokio::sync::watch::channel(false);
        Context {
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            control: None,
            oz_binary: "oz".into(),
            cancel,
        }
    }

    #[test]
    fn a_registration_says_where_it_comes_from_and_who_may_watch() {
        let args = RunArgs {
            prompt: Some("fix it".into()),
            harness: "command".into(),
            share: vec!["team".into(), "ann:edit".into(), r#"{"public_access":"VIEWER"}"#.into()],
            ..Default::default()
        };
        let req = request(&args, &ctx(&[])).unwrap();
        assert_eq!(req.source.as_deref(), Some("CLI"));
        let config = req.config.unwrap();
        let sharing = config.session_sharing.unwrap();
        assert_eq!(sharing.share, ["team", "ann:edit"]);
        assert_eq!(sharing.public_access, Some(oz_core::sharing::PublicAccess::Viewer));
        assert_eq!(config.harness.unwrap().kind, Some(HarnessKind::Command));

        let actions = ctx(&[("GITHUB_ACTIONS", "true"), ("GITHUB_WORKFLOW", "ci"), ("GITHUB_REPOSITORY", "acme/app")]);
        let req = request(&RunArgs { prompt: Some("p".into()), harness: "oz".into(), ..Default::default() }, &actions)
            .unwrap();
        assert_eq!(req.source.as_deref(), Some("GITHUB_ACTION"));
        assert_eq!(req.title.as_deref(), Some("ci (acme/app)"));
        assert!(req.config.unwrap().harness.is_none());
        assert!(request(&RunArgs::default(), &ctx(&[])).unwrap_err().contains("--prompt"));
    }
}
