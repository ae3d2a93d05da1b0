//! The API client commands (feature `api-client`): `oz agent run-cloud`, `oz run`, `oz schedule`,
//! `oz environment`, `oz integration`. Each talks to a control plane through `oz-sdk`.
//!
//! Exit codes: 0 success, 1 an error (one line on stderr: what failed, and the problem's detail),
//! 2 a usage error, 3 a followed run that ended without succeeding.

pub mod environments;
pub mod follow;
pub mod integrations;
pub mod output;
pub mod runs;
pub mod schedules;
pub mod secrets;
pub mod workers;

use std::process::ExitCode;

pub use output::Format;

/// Exit code of a followed run that ended FAILED, ERROR, CANCELLED or BLOCKED.
pub const EXIT_RUN_DID_NOT_SUCCEED: u8 = 3;

/// How to reach the API, and how to print what it answers. Shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiOpts {
    /// The API key (default: `WARP_API_KEY`).
    #[arg(long, env = "WARP_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// The API root, e.g. http://127.0.0.1:8080/api/v1 (default: `OZ_API_BASE_URL`, else Warp's).
    #[arg(long, env = "OZ_API_BASE_URL", global = true)]
    pub api_base_url: Option<String>,
    /// How to print results: `text` for people, `json` for one document, `ndjson` for one object per line.
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    pub output_format: Format,
}

impl ApiOpts {
    /// An SDK client from these options (and the environment).
    pub fn client(&self) -> Result<oz_sdk::Client, CliError> {
        let mut builder = oz_sdk::Client::builder().user_agent(concat!("oz-cli/", env!("CARGO_PKG_VERSION")));
        // An empty value (`WARP_API_KEY=`) counts as unset.
        if let Some(key) = self.api_key.as_ref().filter(|k| !k.trim().is_empty()) {
            builder = builder.api_key(key.trim().to_owned());
        }
        if let Some(url) = self.api_base_url.as_ref().filter(|u| !u.trim().is_empty()) {
            builder = builder.base_url(url.trim().to_owned());
        }
        Ok(builder.build()?)
    }
}

/// What a client command can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The API refused or could not be reached.
    #[error(transparent)]
    Api(#[from] oz_sdk::Error),
    /// The arguments make no sense together, or a file given could not be used.
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("could not write the output: {0}")]
    Output(#[from] std::io::Error),
    /// A live session closed before its run ended (the server went away, say).
    #[error("{0}")]
    SessionClosed(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// The one line printed on stderr.
    pub fn one_line(&self) -> String {
        let text = match self {
            CliError::Api(oz_sdk::Error::Api(problem)) => {
                let detail = problem.detail.trim();
                let what = if problem.title.is_empty() { "request refused" } else { problem.title.as_str() };
                if detail.is_empty() {
                    format!("{what} ({}, HTTP {})", problem.error, problem.status)
                } else {
                    format!("{what} ({}, HTTP {}): {detail}", problem.error, problem.status)
                }
            }
            other => oz_core::error::error_chain(other),
        };
        format!("oz: error: {}", text.replace(['\n', '\r'], " "))
    }
}

/// Runs a client command on a fresh runtime and turns its result into an exit code.
pub fn run_command<F>(command: F) -> ExitCode
where
    F: std::future::Future<Output = Result<ExitCode, CliError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oz: error: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", e.one_line());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Parses `KEY=VALUE`.
pub(crate) fn key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn an_unreachable_api_is_one_line_with_its_cause_and_without_the_key() {
        const KEY: &str = "oz_key_0123456789abcdef";
        let client =
            oz_sdk::Client::builder().base_url("http://127.0.0.1:9").api_key(KEY).max_retries(0).build().unwrap();
        let error = CliError::from(client.runs().get("r").await.unwrap_err());
        let line = error.one_line();
        assert!(line.starts_with("oz: error: could not reach the API: "), "{line}");
        assert!(line.contains("Connection refused"), "the cause is shown: {line}");
        assert!(!line.contains(KEY) && !format!("{error:?}").contains(KEY), "{line}");
        assert_eq!(error.exit_code(), 1);
    }
}
