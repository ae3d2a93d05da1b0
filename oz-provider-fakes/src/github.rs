//! A fake of the parts of GitHub's REST API a GitHub App uses (installation tokens, issue and pull
//! request comments), checking each request as GitHub documents it and answering as GitHub does:
//!
//! - every request: `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28`, a
//!   `User-Agent` (GitHub refuses requests without one: 403);
//! - the App's endpoints (`GET /app`, `GET /repos/{owner}/{repo}/installation`,
//!   `POST /app/installations/{id}/access_tokens`): `Authorization: Bearer <JWT>`, an RS256 JWT
//!   whose signature is verified against the App's public key (with the `rsa` crate), whose `iss` is
//!   the App's id (number or string) or, for a fake started with
//!   [`FakeGitHub::start_with_client_id`], its client id (a string), `iat` not in the future and
//!   `exp` in the future, at most 10 minutes away; 401 otherwise;
//! - `POST /app/installations/{id}/access_tokens`: only the documented keys (`repositories`,
//!   `repository_ids`, `permissions`); 404 for an unknown installation, 422 for a repository or a
//!   permission (any name, `issues`, `pull_requests`, `contents`...) the installation lacks; 201
//!   with a `ghs_` token, an hour's expiry, the permissions asked plus `metadata: read`, the
//!   repositories (one more than asked after [`FakeGitHub::grant_extra_repo`]);
//! - `DELETE /installation/token` with the installation token as bearer: 204, or 401;
//! - `POST /repos/{owner}/{repo}/issues/{number}/comments` and
//!   `PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}` with `Authorization: Bearer <token>`
//!   minted here: 401 `Bad credentials` for an unknown, revoked or expired token, 403 `Resource not
//!   accessible by integration` when it does not cover the repository or has neither `issues: write`
//!   nor `pull_requests: write`; a JSON body with a string `body` (422 otherwise); 404 for an
//!   unknown comment (or, once issues are seeded for a repository, an unknown issue number);
//! - `GET /repos/{owner}/{repo}/issues/{number}` (a seeded issue, else 404) and
//!   `GET /repos/{owner}/{repo}/issues/{number}/comments` (the comments made here) with such a token
//!   with `issues` or `pull_requests` at least `read`.
//!
//! Every request is recorded; every one answered with an error (but an injected [`Failure`] and the
//! 404s of `GET /repos/{owner}/{repo}/installation` and `GET .../issues/{number}`) is also a
//! violation. Injected failures: rate
//! limited is HTTP 429 with `Retry-After` and `{"message":"API rate limit exceeded"}`, a server
//! error HTTP 502 `{"message":"Server Error"}`, any other status that status with
//! `{"message":"fake: an injected failure"}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use serde_json::{Value, json};

use crate::common::{self, Core, Failure, Recorded};

const DOCS: &str = "https://docs.github.com/rest";

/// The fake App's slug: its comments are by `oz-fake-app[bot]`.
pub const APP_SLUG: &str = "oz-fake-app";

/// A test-only RSA key (PKCS#1, as GitHub hands App keys out), registered nowhere.
pub const TEST_APP_PRIVATE_PEM: &str = include_str!("../keys/app-private-pkcs1.pem");
/// The public half of [`TEST_APP_PRIVATE_PEM`], for [`FakeGitHub::start`].
pub const TEST_APP_PUBLIC_PEM: &str = include_str!("../keys/app-public.pem");
/// Another test-only RSA key (PKCS#8), whose JWTs a fake started with [`TEST_APP_PUBLIC_PEM`] refuses.
pub const TEST_OTHER_PRIVATE_PEM: &str = include_str!("../keys/other-private-pkcs8.pem");

/// An installation of the App.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installation {
    /// The installation id.
    pub id: u64,
    /// The account (user or organization) it is installed on.
    pub account: String,
    /// The repositories (names, without the owner) it reaches.
    pub repos: Vec<String>,
    /// What the App was granted on this installation (`issues` → `write`...).
    pub permissions: BTreeMap<String, String>,
}

/// An installation token the fake minted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minted {
    /// The `ghs_` token.
    pub token: String,
    /// Its installation.
    pub installation_id: u64,
    /// The repositories (names, without the owner) it reaches.
    pub repos: Vec<String>,
    /// Its permissions, `metadata: read` included.
    pub permissions: BTreeMap<String, String>,
    /// Whether `DELETE /installation/token` revoked it.
    pub revoked: bool,
    /// When it expires, in unix seconds.
    pub expires_at: i64,
}

/// A comment on an issue or a pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHubComment {
    /// The comment id.
    pub id: u64,
    /// `owner/repo`, as the path spelled it.
    pub repo: String,
    /// The issue or pull request number.
    pub number: u64,
    /// The body, as last written.
    pub body: String,
    /// The body of each later update, in order.
    pub updates: Vec<String>,
}

/// A seeded issue.
#[derive(Clone, Debug)]
struct Issue {
    repo: String,
    number: u64,
    title: String,
    body: String,
}

struct Inner {
    core: Core,
    app_id: u64,
    client_id: Option<String>,
    app_key: VerifyingKey<Sha256>,
    installations: Vec<Installation>,
    minted: Vec<Minted>,
    jwt_claims: Vec<Value>,
    jwts: Vec<String>,
    grant_extra_repo: bool,
    issues: Vec<Issue>,
    comments: Vec<(GitHubComment, i64, i64)>,
    next_comment_id: u64,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake GitHub; clones share it.
#[derive(Clone)]
pub struct FakeGitHub {
    url: String,
    state: Shared,
}

impl FakeGitHub {
    /// Starts a fake GitHub on a loopback port of the current tokio runtime, where the App
    /// `app_id` has the public key `app_public_key_pem` (SPKI PEM, `BEGIN PUBLIC KEY`) and no
    /// installation yet.
    pub async fn start(app_id: u64, app_public_key_pem: &str) -> Self {
        Self::start_app(app_id, None, app_public_key_pem).await
    }

    /// Like [`FakeGitHub::start`], for an App that also has the client id `client_id`
    /// (`Iv23li...`), which App JWTs may name as their `iss` (a string) instead of the app id.
    pub async fn start_with_client_id(app_id: u64, client_id: &str, app_public_key_pem: &str) -> Self {
        Self::start_app(app_id, Some(client_id.to_owned()), app_public_key_pem).await
    }

    async fn start_app(app_id: u64, client_id: Option<String>, app_public_key_pem: &str) -> Self {
        let key = rsa::PublicKey::from_public_key_pem(app_public_key_pem).expect("an RSA public key in PEM");
        let state = Arc::new(Mutex::new(Inner {
            core: Core::default(),
            app_id,
            client_id,
            app_key: VerifyingKey::new(key),
            installations: Vec::new(),
            minted: Vec::new(),
            jwt_claims: Vec::new(),
            jwts: Vec::new(),
            grant_extra_repo: false,
            issues: Vec::new(),
            comments: Vec::new(),
            next_comment_id: 1_000_001,
        }));
        let url = common::serve(Router::new().fallback(handle).with_state(state.clone())).await;
        Self { url, state }
    }

    /// `http://127.0.0.1:PORT`, in place of `https://api.github.com`.
    pub fn base_url(&self) -> String {
        self.url.clone()
    }

    /// Installs the App on `account` for `repos` (names without the owner) with `permissions`
    /// (`[("issues", "write"), ("contents", "read")]`); `metadata: read` is always added.
    pub fn add_installation(&self, id: u64, account: &str, repos: &[&str], permissions: &[(&str, &str)]) {
        let mut granted: BTreeMap<String, String> =
            permissions.iter().map(|(n, l)| ((*n).to_owned(), (*l).to_owned())).collect();
        granted.entry("metadata".into()).or_insert_with(|| "read".into());
        self.lock().installations.push(Installation {
            id,
            account: account.to_owned(),
            repos: repos.iter().map(|r| (*r).to_owned()).collect(),
            permissions: granted,
        });
    }

    /// Seeds the issue `number` of `owner_repo` (`owner/repo`), which
    /// `GET /repos/{owner}/{repo}/issues/{number}` then answers. Once a repository has a seeded
    /// issue, comments on its other numbers are 404.
    pub fn seed_issue(&self, owner_repo: &str, number: u64, title: &str, body: &str) {
        self.lock().issues.push(Issue {
            repo: owner_repo.to_owned(),
            number,
            title: title.to_owned(),
            body: body.to_owned(),
        });
    }

    /// Every request received, in order, including those that failed a check.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().core.requests.clone()
    }

    /// The documented rules requests broke, one message each (`METHOD /path: rule`).
    pub fn violations(&self) -> Vec<String> {
        self.lock().core.violations.clone()
    }

    /// The next `n` requests are answered with `failure` (and recorded, and do nothing else);
    /// [`Failure::Status`] for any other error status GitHub may answer.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.lock().core.fail_next(n, failure);
    }

    /// Every installation token minted, in order.
    pub fn minted(&self) -> Vec<Minted> {
        self.lock().minted.clone()
    }

    /// Mints an installation token directly (no request), for tests of the comment endpoints:
    /// covering `repos` of the installation `installation_id` with `permissions`.
    pub fn mint_token(&self, installation_id: u64, repos: &[&str], permissions: &[(&str, &str)]) -> String {
        let token = new_token();
        let mut permissions: BTreeMap<String, String> =
            permissions.iter().map(|(n, l)| ((*n).to_owned(), (*l).to_owned())).collect();
        permissions.insert("metadata".into(), "read".into());
        self.lock().minted.push(Minted {
            token: token.clone(),
            installation_id,
            repos: repos.iter().map(|r| (*r).to_owned()).collect(),
            permissions,
            revoked: false,
            expires_at: common::now_secs() + 3600,
        });
        token
    }

    /// Makes every token minted so far expired.
    pub fn expire_tokens(&self) {
        let past = common::now_secs() - 1;
        for m in &mut self.lock().minted {
            m.expires_at = past;
        }
    }

    /// The claims of every App JWT whose signature verified.
    pub fn jwt_claims(&self) -> Vec<Value> {
        self.lock().jwt_claims.clone()
    }

    /// Every App JWT received (the bearer of the App's endpoints), verified or not.
    pub fn jwts(&self) -> Vec<String> {
        self.lock().jwts.clone()
    }

    /// From now on, minted tokens also reach one more of the installation's repositories than
    /// asked (a misbehaving GitHub, to test that a client checks the answer).
    pub fn grant_extra_repo(&self) {
        self.lock().grant_extra_repo = true;
    }

    /// Every comment, in the order created.
    pub fn comments(&self) -> Vec<GitHubComment> {
        self.lock().comments.iter().map(|(c, _, _)| c.clone()).collect()
    }

    /// Polls `f` every 20 ms until it answers; panics with `what`, the requests and the
    /// violations after `timeout`.
    pub async fn wait_for<T>(&self, what: &str, timeout: Duration, f: impl Fn(&Self) -> Option<T>) -> T {
        common::wait_for(self, what, timeout, f, Self::requests, Self::violations).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap()
    }
}

/// GitHub's webhook signature of `body` (the `X-Hub-Signature-256` header): `sha256=` and the hex
/// HMAC-SHA256 of the body with the webhook secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", common::hmac_sha256_hex(secret.as_bytes(), body))
}

/// An App JWT as GitHub documents it: RS256 with the App's private key (PKCS#1 or PKCS#8 PEM),
/// `iss` the app id, `iat` a minute ago, `exp` nine minutes ahead.
pub fn app_jwt(app_id: u64, private_key_pem: &str) -> String {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let key = rsa::PrivateKey::from_pkcs1_pem(private_key_pem)
        .or_else(|_| rsa::PrivateKey::from_pkcs8_pem(private_key_pem))
        .expect("an RSA private key in PEM");
    let now = common::now_secs();
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(json!({"iss": app_id, "iat": now - 60, "exp": now + 540}).to_string());
    let input = format!("{head}.{claims}");
    let signature: Signature = SigningKey::<Sha256>::new(key).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_vec()))
}

fn new_token() -> String {
    format!("ghs_{}Xy12", uuid::Uuid::new_v4().simple())
}

/// An error answer: status, GitHub's message, and whether it counts as a violation.
struct Refusal {
    status: u16,
    message: String,
    violation: bool,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal { status, message: message.into(), violation: true }
}

fn error_response(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, axum::Json(json!({"message": message, "documentation_url": DOCS, "status": status.as_str()})))
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn handle(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    match state.core.record(Recorded::new(&method, &uri, &headers, &body)) {
        Some(Failure::RateLimited { retry_after_secs }) => {
            let reset = common::now_secs() + i64::try_from(retry_after_secs).unwrap_or(i64::MAX / 2);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("retry-after", retry_after_secs.to_string()),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-reset", reset.to_string()),
                ],
                axum::Json(json!({"message": "API rate limit exceeded", "documentation_url": DOCS})),
            )
                .into_response();
        }
        Some(Failure::ServerError) => {
            return (StatusCode::BAD_GATEWAY, axum::Json(json!({"message": "Server Error"}))).into_response();
        }
        Some(Failure::Status(status)) => return error_response(status, "fake: an injected failure"),
        None => {}
    }
    match state.route(&method, &uri, &headers, &body) {
        Ok(answer) => answer,
        Err(Refusal { status, message, violation }) => {
            if violation {
                state.core.violation(format!("{status} {message}"));
            }
            if status == 404 || status == 401 && message == "Bad credentials" {
                return (
                    StatusCode::from_u16(status).unwrap(),
                    axum::Json(json!({"message": message, "documentation_url": DOCS})),
                )
                    .into_response();
            }
            error_response(status, &message)
        }
    }
}

impl Inner {
    fn route(&mut self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Result<Response, Refusal> {
        if headers.get("user-agent").is_none() {
            return Err(refuse(
                403,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
            ));
        }
        if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("application/vnd.github+json") {
            return Err(refuse(415, "fake: Accept must be application/vnd.github+json"));
        }
        if headers.get("x-github-api-version").and_then(|v| v.to_str().ok()) != Some("2022-11-28") {
            return Err(refuse(400, "Unsupported 'X-GitHub-Api-Version' header"));
        }
        let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["app"]) => self.app(headers),
            (&Method::GET, ["repos", owner, repo, "installation"]) => self.find_installation(headers, owner, repo),
            (&Method::POST, ["app", "installations", id, "access_tokens"]) => self.mint(headers, id, body),
            (&Method::DELETE, ["installation", "token"]) => self.revoke(headers),
            (&Method::GET, ["repos", owner, repo, "issues", number]) => self.get_issue(headers, owner, repo, number),
            (&Method::GET, ["repos", owner, repo, "issues", number, "comments"]) => {
                self.list_comments(headers, owner, repo, number)
            }
            (&Method::POST, ["repos", owner, repo, "issues", number, "comments"]) => {
                self.create_comment(headers, owner, repo, number, body)
            }
            (&Method::PATCH, ["repos", owner, repo, "issues", "comments", id]) => {
                self.update_comment(headers, owner, repo, id, body)
            }
            _ => Err(refuse(404, "Not Found")),
        }
    }

    /// Checks the App's JWT as GitHub does; GitHub's 401 if it fails.
    fn verify_jwt(&mut self, headers: &HeaderMap) -> Result<(), Refusal> {
        const UNDECODABLE: &str = "A JSON web token could not be decoded";
        let fail = |m: &str| refuse(401, m);
        let jwt = bearer(headers).ok_or_else(|| fail(UNDECODABLE))?.to_owned();
        self.jwts.push(jwt.clone());
        let [head, claims, signature] = jwt.split('.').collect::<Vec<_>>()[..] else {
            return Err(fail(UNDECODABLE));
        };
        let part = |p: &str| -> Option<Value> { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok() };
        if part(head).ok_or_else(|| fail(UNDECODABLE))?["alg"] != "RS256" {
            return Err(fail(UNDECODABLE));
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok().and_then(|s| Signature::try_from(s.as_slice()).ok());
        let signing_input = &jwt[..jwt.rfind('.').unwrap_or(0)];
        match signature {
            Some(sig) if self.app_key.verify(signing_input.as_bytes(), &sig).is_ok() => {}
            _ => return Err(fail(UNDECODABLE)),
        }
        let claims = part(claims).ok_or_else(|| fail(UNDECODABLE))?;
        self.jwt_claims.push(claims.clone());
        let iss = &claims["iss"];
        let client_id = self.client_id.as_deref().is_some_and(|id| iss.as_str() == Some(id));
        if *iss != json!(self.app_id) && *iss != json!(self.app_id.to_string()) && !client_id {
            return Err(fail("'Issuer' claim ('iss') must be the client ID or app ID of a GitHub App"));
        }
        let now = common::now_secs();
        if claims["iat"].as_i64().is_none_or(|iat| iat > now) {
            return Err(fail("'Issued at' claim ('iat') must be an Integer representing a time in the past."));
        }
        match claims["exp"].as_i64() {
            Some(exp) if exp > now + 600 => Err(fail("'Expiration time' claim ('exp') is too far in the future")),
            Some(exp) if exp > now => Ok(()),
            _ => Err(fail(
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires.",
            )),
        }
    }

    fn app(&mut self, headers: &HeaderMap) -> Result<Response, Refusal> {
        self.verify_jwt(headers)?;
        Ok(axum::Json(json!({
            "id": self.app_id,
            "slug": APP_SLUG,
            "node_id": "A_kwFake",
            "name": "Oz (fake)",
            "owner": {"login": "oz", "type": "Organization"},
            "permissions": {"issues": "write", "pull_requests": "write", "contents": "write", "metadata": "read"},
        }))
        .into_response())
    }

    fn find_installation(&mut self, headers: &HeaderMap, owner: &str, repo: &str) -> Result<Response, Refusal> {
        self.verify_jwt(headers)?;
        let found = self
            .installations
            .iter()
            .find(|i| i.account.eq_ignore_ascii_case(owner) && i.repos.iter().any(|r| r.eq_ignore_ascii_case(repo)));
        match found {
            Some(i) => Ok(axum::Json(json!({
                "id": i.id,
                "account": {"login": i.account, "type": "Organization"},
                "app_id": self.app_id,
                "app_slug": APP_SLUG,
                "target_type": "Organization",
                "repository_selection": "selected",
                "permissions": i.permissions,
            }))
            .into_response()),
            None => Err(Refusal { status: 404, message: "Not Found".into(), violation: false }),
        }
    }

    fn mint(&mut self, headers: &HeaderMap, id: &str, body: &Bytes) -> Result<Response, Refusal> {
        self.verify_jwt(headers)?;
        let Some(installation) = id.parse::<u64>().ok().and_then(|id| self.installations.iter().find(|i| i.id == id))
        else {
            return Err(refuse(404, "Not Found"));
        };
        let installation = installation.clone();
        let request: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body).map_err(|_| refuse(400, "Problems parsing JSON"))?
        };
        let Some(fields) = request.as_object() else {
            return Err(refuse(400, "Problems parsing JSON"));
        };
        if let Some(key) =
            fields.keys().find(|k| !["repositories", "repository_ids", "permissions"].contains(&k.as_str()))
        {
            return Err(refuse(422, format!("Invalid request.\n\n\"{key}\" is not a permitted key.")));
        }
        let selected = fields.contains_key("repositories") || fields.contains_key("repository_ids");
        let repos: Vec<String> = match fields.get("repositories") {
            None => installation.repos.clone(),
            Some(Value::Array(names)) => {
                let names: Option<Vec<String>> = names.iter().map(|n| n.as_str().map(str::to_owned)).collect();
                names.ok_or_else(|| refuse(422, "Invalid request.\n\nFor 'items', value is not a string."))?
            }
            Some(_) => {
                return Err(refuse(422, "Invalid request.\n\nFor 'properties/repositories', value is not an array."));
            }
        };
        if repos.iter().any(|name| !installation.repos.iter().any(|r| r.eq_ignore_ascii_case(name))) {
            return Err(refuse(
                422,
                "There is at least one repository that does not exist or is not accessible to the parent installation.",
            ));
        }
        let rank = |l: &str| match l {
            "read" => 1,
            "write" => 2,
            "admin" => 3,
            _ => 0,
        };
        let mut permissions: BTreeMap<String, String> = match fields.get("permissions") {
            None => installation.permissions.clone(),
            Some(Value::Object(asked)) => {
                let mut granted = BTreeMap::new();
                for (name, level) in asked {
                    let level = level.as_str().unwrap_or_default();
                    let has = installation.permissions.get(name).map_or(0, |l| rank(l));
                    if rank(level) == 0 || rank(level) > has {
                        return Err(refuse(422, "The permissions requested are not granted to this installation."));
                    }
                    granted.insert(name.clone(), level.to_owned());
                }
                granted
            }
            Some(_) => {
                return Err(refuse(422, "Invalid request.\n\nFor 'properties/permissions', value is not an object."));
            }
        };
        permissions.insert("metadata".into(), "read".into());
        let mut granted = repos;
        if let Some(extra) = installation.repos.iter().find(|r| self.grant_extra_repo && !granted.contains(r)) {
            granted.push(extra.clone());
        }
        let token = new_token();
        let expires_at = common::now_secs() + 3600;
        self.minted.push(Minted {
            token: token.clone(),
            installation_id: installation.id,
            repos: granted.clone(),
            permissions: permissions.clone(),
            revoked: false,
            expires_at,
        });
        let repositories: Vec<Value> = granted
            .iter()
            .enumerate()
            .map(|(i, name)| {
                json!({"id": 1000 + i, "name": name, "full_name": format!("{}/{name}", installation.account), "private": true})
            })
            .collect();
        let answer = json!({
            "token": token,
            "expires_at": common::rfc3339(expires_at),
            "permissions": permissions,
            "repository_selection": if selected { "selected" } else { "all" },
            "repositories": repositories,
        });
        Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
    }

    fn revoke(&mut self, headers: &HeaderMap) -> Result<Response, Refusal> {
        let live = bearer(headers).and_then(|token| self.minted.iter_mut().find(|m| m.token == token && !m.revoked));
        match live {
            Some(minted) => {
                minted.revoked = true;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            None => Err(refuse(401, "Bad credentials")),
        }
    }

    /// Checks an installation token may write comments on `owner/repo`.
    fn check_comment_token(&self, headers: &HeaderMap, owner: &str, repo: &str) -> Result<(), Refusal> {
        self.check_token(headers, owner, repo, true)
    }

    /// Checks an installation token reaches `owner/repo` with `issues` or `pull_requests` (at
    /// least `write` when `write`).
    fn check_token(&self, headers: &HeaderMap, owner: &str, repo: &str, write: bool) -> Result<(), Refusal> {
        let now = common::now_secs();
        let Some(minted) =
            bearer(headers).and_then(|t| self.minted.iter().find(|m| m.token == t && !m.revoked && m.expires_at > now))
        else {
            return Err(refuse(401, "Bad credentials"));
        };
        let account = self.installations.iter().find(|i| i.id == minted.installation_id).map(|i| i.account.as_str());
        let covers = account.is_some_and(|a| a.eq_ignore_ascii_case(owner))
            && minted.repos.iter().any(|r| r.eq_ignore_ascii_case(repo));
        let writes = ["issues", "pull_requests"]
            .iter()
            .any(|p| minted.permissions.get(*p).is_some_and(|l| l == "write" || l == "admin" || !write && l == "read"));
        if !covers || !writes {
            return Err(refuse(403, "Resource not accessible by integration"));
        }
        Ok(())
    }

    fn comment_body(body: &Bytes) -> Result<String, Refusal> {
        let request: Value = serde_json::from_slice(body).map_err(|_| refuse(400, "Problems parsing JSON"))?;
        match request.get("body") {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(refuse(422, "Invalid request.\n\nFor 'properties/body', value is not a string.")),
            None => Err(refuse(422, "Invalid request.\n\n\"body\" wasn't supplied.")),
        }
    }

    fn comment_json(comment: &GitHubComment, created: i64, updated: i64) -> Value {
        json!({
            "id": comment.id,
            "node_id": format!("IC_kwDO{}", STANDARD.encode(comment.id.to_string()).trim_end_matches('=')),
            "url": format!("https://api.github.com/repos/{}/issues/comments/{}", comment.repo, comment.id),
            "html_url": format!("https://github.com/{}/issues/{}#issuecomment-{}", comment.repo, comment.number, comment.id),
            "issue_url": format!("https://api.github.com/repos/{}/issues/{}", comment.repo, comment.number),
            "body": comment.body,
            "user": {"login": format!("{APP_SLUG}[bot]"), "type": "Bot"},
            "author_association": "NONE",
            "created_at": common::rfc3339(created),
            "updated_at": common::rfc3339(updated),
        })
    }

    fn get_issue(&mut self, headers: &HeaderMap, owner: &str, repo: &str, number: &str) -> Result<Response, Refusal> {
        self.check_token(headers, owner, repo, false)?;
        let full = format!("{owner}/{repo}");
        let found = number
            .parse::<u64>()
            .ok()
            .and_then(|n| self.issues.iter().find(|i| i.repo.eq_ignore_ascii_case(&full) && i.number == n));
        let Some(issue) = found else {
            return Err(Refusal { status: 404, message: "Not Found".into(), violation: false });
        };
        let comments = self
            .comments
            .iter()
            .filter(|(c, _, _)| c.repo.eq_ignore_ascii_case(&full) && c.number == issue.number)
            .count();
        Ok(axum::Json(json!({
            "number": issue.number,
            "title": issue.title,
            "body": issue.body,
            "state": "open",
            "comments": comments,
            "html_url": format!("https://github.com/{}/issues/{}", issue.repo, issue.number),
            "user": {"login": "octocat", "type": "User"},
        }))
        .into_response())
    }

    fn list_comments(
        &mut self,
        headers: &HeaderMap,
        owner: &str,
        repo: &str,
        number: &str,
    ) -> Result<Response, Refusal> {
        self.check_token(headers, owner, repo, false)?;
        let full = format!("{owner}/{repo}");
        let number = number.parse::<u64>().map_err(|_| refuse(404, "Not Found"))?;
        let comments: Vec<Value> = self
            .comments
            .iter()
            .filter(|(c, _, _)| c.repo.eq_ignore_ascii_case(&full) && c.number == number)
            .map(|(c, created, updated)| Self::comment_json(c, *created, *updated))
            .collect();
        Ok(axum::Json(comments).into_response())
    }

    fn create_comment(
        &mut self,
        headers: &HeaderMap,
        owner: &str,
        repo: &str,
        number: &str,
        body: &Bytes,
    ) -> Result<Response, Refusal> {
        self.check_comment_token(headers, owner, repo)?;
        let full = format!("{owner}/{repo}");
        let Ok(number) = number.parse::<u64>() else {
            return Err(refuse(404, "Not Found"));
        };
        let seeded: Vec<&Issue> = self.issues.iter().filter(|i| i.repo.eq_ignore_ascii_case(&full)).collect();
        if !seeded.is_empty() && !seeded.iter().any(|i| i.number == number) {
            return Err(refuse(404, "Not Found"));
        }
        let text = Self::comment_body(body)?;
        let id = self.next_comment_id;
        self.next_comment_id += 1;
        let now = common::now_secs();
        let comment = GitHubComment { id, repo: full, number, body: text, updates: Vec::new() };
        let answer = Self::comment_json(&comment, now, now);
        self.comments.push((comment, now, now));
        Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
    }

    fn update_comment(
        &mut self,
        headers: &HeaderMap,
        owner: &str,
        repo: &str,
        id: &str,
        body: &Bytes,
    ) -> Result<Response, Refusal> {
        self.check_comment_token(headers, owner, repo)?;
        let full = format!("{owner}/{repo}");
        let found = id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.comments.iter().position(|(c, _, _)| c.id == id && c.repo.eq_ignore_ascii_case(&full)));
        let Some(index) = found else {
            return Err(refuse(404, "Not Found"));
        };
        let text = Self::comment_body(body)?;
        let now = common::now_secs();
        let (comment, created, updated) = &mut self.comments[index];
        comment.body = text.clone();
        comment.updates.push(text);
        *updated = now;
        Ok(axum::Json(Self::comment_json(comment, *created, *updated)).into_response())
    }
}
