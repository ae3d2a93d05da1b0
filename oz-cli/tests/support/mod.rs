//! Shared by the `oz` tests: running git with a fixed identity, and a smart-HTTP git server on loopback.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A smart-HTTP git server on loopback: `git http-backend` behind a small CGI bridge that requires
/// Basic auth with `user`/`password`. Returns the base URL (`http://127.0.0.1:PORT/git`).
pub async fn git_http_server(project_root: PathBuf, user: &'static str, password: &'static str) -> String {
    use axum::body::Bytes;
    use axum::extract::{Path as UrlPath, RawQuery};
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::{IntoResponse, Response};
    use base64::Engine;

    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    let handler = move |method: Method,
                        UrlPath(path): UrlPath<String>,
                        RawQuery(query): RawQuery,
                        headers: HeaderMap,
                        body: Bytes| {
        let root = project_root.clone();
        let expected = expected.clone();
        async move {
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
                return (StatusCode::UNAUTHORIZED, [("www-authenticate", "Basic realm=\"git\"")], "auth required")
                    .into_response();
            }
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let mut child = tokio::process::Command::new("git")
                .arg("http-backend")
                .env_clear()
                .env("GIT_PROJECT_ROOT", &root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("REQUEST_METHOD", method.as_str())
                .env("PATH_INFO", format!("/{path}"))
                .env("QUERY_STRING", query.unwrap_or_default())
                .env("CONTENT_TYPE", header("content-type"))
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
                .env("GIT_PROTOCOL", header("git-protocol"))
                .env("REMOTE_USER", user)
                .env("REMOTE_ADDR", "127.0.0.1")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", &root)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stdin, &body).await.unwrap();
            drop(stdin);
            let out = child.wait_with_output().await.unwrap();
            let split = out
                .stdout
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, 4))
                .or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
                .unwrap();
            let (head, rest) =
                (String::from_utf8_lossy(&out.stdout[..split.0]).to_string(), out.stdout[split.0 + split.1..].to_vec());
            let mut response = Response::new(axum::body::Body::from(rest));
            for line in head.lines() {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("status") {
                    *response.status_mut() = StatusCode::from_u16(v[..3].parse().unwrap()).unwrap();
                } else if let (Ok(name), Ok(value)) =
                    (axum::http::HeaderName::try_from(k), axum::http::HeaderValue::try_from(v))
                {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
    };
    let app = axum::Router::new().route("/git/{*path}", axum::routing::any(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/git")
}

/// Runs git in `dir`, asserting it succeeds.
pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git").args(args).current_dir(dir).envs(git_identity()).status().unwrap();
    assert!(status.success(), "git {args:?}");
}

/// A fixed identity and no user or system git configuration.
pub fn git_identity() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GIT_AUTHOR_NAME", "Test"),
        ("GIT_AUTHOR_EMAIL", "test@example.com"),
        ("GIT_COMMITTER_NAME", "Test"),
        ("GIT_COMMITTER_EMAIL", "test@example.com"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
    ]
}
