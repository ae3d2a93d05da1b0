//! Git credentials for the run, handed to git through a credential helper: never in a clone URL,
//! argv, `.git/config` or the environment of the agent.
//!
//! The runner keeps the credentials in memory and serves them on a Unix socket in a private folder
//! (mode 0700). Git is configured through `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`
//! (environment, not files) to call `oz agent git-credential`, which asks the socket. The socket
//! disappears with the runner: the credentials die with the run.

use std::io::{BufRead, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;
use oz_core::credentials::GitCredential;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tracing::warn;

use oz_core::runner::env;

/// A credential as it arrives in `OZ_GIT_CREDENTIALS`.
#[derive(Deserialize)]
struct CredentialJson {
    host: String,
    #[serde(default = "default_username")]
    username: String,
    token: String,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

fn default_username() -> String {
    "x-access-token".to_owned()
}

/// Reads the run's git credentials from `OZ_GIT_CREDENTIALS` (a JSON array of
/// `{host, username?, token, expires_at?}`), falling back to `GITHUB_TOKEN`/`GH_TOKEN` for github.com.
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Vec<GitCredential>, String> {
    let mut out = Vec::new();
    if let Some(json) = get(env::GIT_CREDENTIALS).filter(|s| !s.trim().is_empty()) {
        // The parse error must not echo the JSON (it holds tokens): report only where it failed.
        let parsed: Vec<CredentialJson> = serde_json::from_str(&json).map_err(|e| {
            format!(
                "{} is not a JSON array of {{host, username, token, expires_at}} (line {}, column {})",
                env::GIT_CREDENTIALS,
                e.line(),
                e.column()
            )
        })?;
        for c in parsed {
            out.push(GitCredential::new(c.host.to_ascii_lowercase(), c.username, c.token, c.expires_at));
        }
    }
    if !out.iter().any(|c| c.host == "github.com")
        && let Some(token) = get("GITHUB_TOKEN").or_else(|| get("GH_TOKEN")).filter(|t| !t.is_empty())
    {
        out.push(GitCredential::new("github.com", "x-access-token", token, None));
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct Ask {
    host: String,
    protocol: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Answer {
    username: Option<String>,
    password: Option<String>,
}

/// Serves the run's credentials on a private socket while it lives.
pub struct CredentialServer {
    dir: PathBuf,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl CredentialServer {
    /// Binds the socket in a new 0700 folder under `tmp` and starts serving.
    pub fn start(credentials: Vec<GitCredential>, tmp: &Path) -> std::io::Result<Self> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = tmp.join(format!("oz-cred-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let socket = dir.join("git.sock");
        let listener = UnixListener::bind(&socket)?;
        let credentials = Arc::new(credentials);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let credentials = credentials.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    if BufReader::new(read).take(4096).read_line(&mut line).await.is_err() {
                        return;
                    }
                    let answer = match serde_json::from_str::<Ask>(&line) {
                        Ok(ask) => answer(&credentials, &ask),
                        Err(_) => Answer::default(),
                    };
                    if let Ok(json) = serde_json::to_string(&answer) {
                        let _ = write.write_all(json.as_bytes()).await;
                        let _ = write.write_all(b"\n").await;
                    }
                });
            }
        });
        Ok(Self { dir, socket, task })
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The variables that make git (and anything the agent runs) use the helper: earlier helpers are
    /// reset, then `!'<oz>' agent git-credential` is added.
    pub fn git_env(&self, oz_binary: &Path) -> Vec<(String, String)> {
        let quoted = format!("'{}'", oz_binary.display().to_string().replace('\'', "'\\''"));
        vec![
            (env::GIT_CREDENTIAL_SOCKET.into(), self.socket.display().to_string()),
            ("GIT_CONFIG_COUNT".into(), "2".into()),
            ("GIT_CONFIG_KEY_0".into(), "credential.helper".into()),
            ("GIT_CONFIG_VALUE_0".into(), String::new()),
            ("GIT_CONFIG_KEY_1".into(), "credential.helper".into()),
            ("GIT_CONFIG_VALUE_1".into(), format!("!{quoted} agent git-credential")),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ]
    }
}

impl CredentialServer {
    /// With a github.com credential and a `gh` on `path`: a `gh` in this server's private folder that
    /// asks the helper for the token and runs the real `gh` with it, so `gh` works without `GH_TOKEN`
    /// in anyone's environment. Returns the `PATH` with that folder first, or `None` (no wrapper).
    pub fn gh_wrapper(
        &self,
        credentials: &[GitCredential],
        oz_binary: &Path,
        path: Option<&str>,
    ) -> std::io::Result<Option<String>> {
        if !credentials.iter().any(|c| c.host == "github.com") {
            return Ok(None);
        }
        let Some(path) = path else { return Ok(None) };
        let Some(real) = path.split(':').map(|dir| Path::new(dir).join("gh")).find(|p| p.is_file()) else {
            return Ok(None);
        };
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let bin = self.dir.join("bin");
        std::fs::DirBuilder::new().mode(0o700).create(&bin)?;
        let script = format!(
            "#!/bin/sh\n# gh with the run's token, from the runner's credential helper (never in the environment).\nGH_TOKEN=\"$({} agent git-credential token github.com)\" || exit 1\nexport GH_TOKEN\nexec {} \"$@\"\n",
            quote(oz_binary),
            quote(&real)
        );
        let wrapper = bin.join("gh");
        std::fs::write(&wrapper, script)?;
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Some(format!("{}:{path}", bin.display())))
    }
}

impl Drop for CredentialServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The credential for `host` (as git names it: `github.com`, `127.0.0.1:8080`) over `protocol`, if
/// one may be handed out: only over https, or http to a loopback host (local servers), never to a
/// plain-text remote; never once expired. Returns `(username, token)`.
pub fn lookup<'a>(credentials: &'a [GitCredential], protocol: &str, host: &str) -> Option<(&'a str, &'a str)> {
    if !oz_core::credentials::may_send_git_credential(protocol, host) {
        return None;
    }
    let host = host.to_ascii_lowercase();
    let c = credentials.iter().find(|c| c.host == host)?;
    if c.expires_at.is_some_and(|e| Timestamp::now() >= e) {
        warn!(host = %c.host, "the git credential for this host has expired; not using it");
        return None;
    }
    Some((c.username.as_str(), c.expose()))
}

fn answer(credentials: &[GitCredential], ask: &Ask) -> Answer {
    match lookup(credentials, &ask.protocol, &ask.host) {
        Some((username, password)) => {
            Answer { username: Some(username.to_owned()), password: Some(password.to_owned()) }
        }
        None => Answer::default(),
    }
}

/// `oz agent git-credential <get|store|erase>`: git's credential-helper protocol. `get` asks the
/// runner's socket; `store` and `erase` do nothing (the runner owns the credentials).
/// `oz agent git-credential token <host>` prints the https token for `host` (the `gh` wrapper's).
pub fn helper_main(operation: &str, host: Option<&str>) -> i32 {
    if operation == "token" {
        let Some(host) = host else {
            eprintln!("oz agent git-credential token: name the host (github.com)");
            return 2;
        };
        return match ask_socket(Ask { host: host.to_owned(), protocol: "https".into() }) {
            Some(Answer { password: Some(p), .. }) => {
                let _ = writeln!(std::io::stdout().lock(), "{p}");
                0
            }
            _ => {
                eprintln!("oz agent git-credential token: the runner has no credential for {host}");
                1
            }
        };
    }
    if operation != "get" {
        return 0;
    }
    let mut protocol = String::new();
    let mut host = String::new();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k {
                "protocol" => protocol = v.to_owned(),
                "host" => host = v.to_owned(),
                _ => {}
            }
        }
    }
    if let Some(Answer { username: Some(u), password: Some(p) }) = ask_socket(Ask { host, protocol }) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "username={u}\npassword={p}\n");
    }
    0
}

/// Asks the runner's credential socket (`OZ_GIT_CREDENTIAL_SOCKET`).
fn ask_socket(ask: Ask) -> Option<Answer> {
    let socket = std::env::var_os(env::GIT_CREDENTIAL_SOCKET)?;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let ask = serde_json::to_string(&ask).ok()?;
    stream.write_all(format!("{ask}\n").as_bytes()).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).ok()?;
    serde_json::from_str::<Answer>(&line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_env_and_parse_errors_do_not_echo_tokens() {
        let json = r#"[{"host":"GitHub.com","token":"tok-123456"},{"host":"git.example.com","username":"bot","token":"t2-abcdef","expires_at":"2030-01-01T00:00:00Z"}]"#;
        let creds = from_env(|k| (k == env::GIT_CREDENTIALS).then(|| json.to_owned())).unwrap();
        assert_eq!(creds.len(), 2);
        assert_eq!(creds[0].host, "github.com");
        assert_eq!(creds[0].username, "x-access-token");
        let fallback = from_env(|k| (k == "GH_TOKEN").then(|| "ghs_fallback".to_owned())).unwrap();
        assert_eq!(fallback[0].expose(), "ghs_fallback");
        let err =
            from_env(|k| (k == env::GIT_CREDENTIALS).then(|| r#"[{"host":"h","token":"super-secret-tok""#.to_owned()))
                .err()
                .unwrap();
        assert!(!err.contains("super-secret-tok"), "{err}");
    }

    #[test]
    fn answers_only_https_or_loopback_http_and_only_unexpired() {
        let creds = vec![
            GitCredential::new("github.com", "x-access-token", "tok", None),
            GitCredential::new("127.0.0.1:8080", "u", "local", None),
            GitCredential::new("old.example.com", "u", "expired", Some(Timestamp::from_second(1).unwrap())),
        ];
        let ask =
            |protocol: &str, host: &str| answer(&creds, &Ask { host: host.into(), protocol: protocol.into() }).password;
        assert_eq!(ask("https", "github.com").as_deref(), Some("tok"));
        assert_eq!(ask("https", "GITHUB.COM").as_deref(), Some("tok"));
        assert_eq!(ask("http", "github.com"), None);
        assert_eq!(ask("http", "127.0.0.1:8080").as_deref(), Some("local"));
        assert_eq!(ask("https", "evil.com"), None);
        assert_eq!(ask("https", "old.example.com"), None);
    }
}
