//! A fake of the parts of GitHub's REST API that App installation tokens use, checking each request
//! as GitHub documents it and answering as GitHub does:
//!
//! - every request: `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28`, a
//!   `User-Agent` (GitHub refuses requests without one);
//! - the App's endpoints: `Authorization: Bearer <JWT>`, an RS256 JWT whose signature is verified
//!   against the App's public key (with the `rsa` crate, not the library that signed it), whose
//!   `iss` is the App's, `iat` not in the future and `exp` in the future, at most 10 minutes away;
//! - `GET /repos/{owner}/{repo}/installation`: the installation, or 404;
//! - `POST /app/installations/{id}/access_tokens`: only the documented keys; 404 for an unknown
//!   installation, 422 for a repository or permission the installation lacks; 201 with a `ghs_`
//!   token, an hour's expiry, the permissions asked plus `metadata: read`, the repositories;
//! - `DELETE /installation/token` with the installation token as bearer: 204, or 401.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::signature::Verifier;
use serde_json::{Value, json};

use crate::support::{Recorded, serve};

const DOCS: &str = "https://docs.github.com/rest";

#[derive(Clone, Debug)]
pub struct Installation {
    pub id: u64,
    pub account: String,
    pub repos: Vec<String>,
    /// What the App was granted on this installation.
    pub permissions: BTreeMap<String, String>,
}

/// A token the fake minted.
#[derive(Clone, Debug)]
pub struct Minted {
    pub token: String,
    pub installation_id: u64,
    pub repos: Vec<String>,
    pub permissions: BTreeMap<String, String>,
    pub revoked: bool,
}

struct Inner {
    app_iss: Value,
    app_key: VerifyingKey<Sha256>,
    installations: Vec<Installation>,
    minted: Vec<Minted>,
    requests: Vec<Recorded>,
    jwt_claims: Vec<Value>,
    jwts: Vec<String>,
    fail_next: VecDeque<u16>,
    grant_extra_repo: bool,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake.
pub struct FakeGitHub {
    pub url: String,
    state: Shared,
}

impl FakeGitHub {
    /// A fake GitHub where the App `app_iss` (a JSON number or string, as its JWTs must say) has
    /// the public key `public_pem` and no installation yet.
    pub async fn start(app_iss: Value, public_pem: &str) -> Self {
        let key = rsa::PublicKey::from_public_key_pem(public_pem).unwrap();
        let state = Arc::new(Mutex::new(Inner {
            app_iss,
            app_key: VerifyingKey::new(key),
            installations: Vec::new(),
            minted: Vec::new(),
            requests: Vec::new(),
            jwt_claims: Vec::new(),
            jwts: Vec::new(),
            fail_next: VecDeque::new(),
            grant_extra_repo: false,
        }));
        let url = serve(Router::new().fallback(handle).with_state(state.clone())).await;
        Self { url, state }
    }

    /// Installs the App on `account` for `repos`, with `contents: write` and `metadata: read`.
    pub fn install(&self, id: u64, account: &str, repos: &[&str]) {
        let permissions = BTreeMap::from([("contents".into(), "write".into()), ("metadata".into(), "read".into())]);
        self.state.lock().unwrap().installations.push(Installation {
            id,
            account: account.into(),
            repos: repos.iter().map(|r| r.to_string()).collect(),
            permissions,
        });
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn minted(&self) -> Vec<Minted> {
        self.state.lock().unwrap().minted.clone()
    }

    /// The claims of every JWT whose signature verified.
    pub fn jwt_claims(&self) -> Vec<Value> {
        self.state.lock().unwrap().jwt_claims.clone()
    }

    /// Every JWT received, verified or not.
    pub fn jwts(&self) -> Vec<String> {
        self.state.lock().unwrap().jwts.clone()
    }

    /// The next request is answered with `status` and nothing else happens.
    pub fn fail_next(&self, status: u16) {
        self.state.lock().unwrap().fail_next.push_back(status);
    }

    /// From now on, tokens also reach one more of the installation's repositories than asked (a
    /// misbehaving GitHub, to test that the provider checks the answer).
    pub fn grant_extra_repo(&self) {
        self.state.lock().unwrap().grant_extra_repo = true;
    }
}

fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, axum::Json(json!({"message": message, "documentation_url": DOCS, "status": status.as_str()})))
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn handle(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    state.requests.push(Recorded::new(&method, &uri, &headers, &body));
    if let Some(status) = state.fail_next.pop_front() {
        return error(status, "fake: a scripted failure");
    }
    if headers.get("user-agent").is_none() {
        return error(
            403,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        );
    }
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("application/vnd.github+json") {
        return error(415, "fake: Accept must be application/vnd.github+json");
    }
    if headers.get("x-github-api-version").and_then(|v| v.to_str().ok()) != Some("2022-11-28") {
        return error(400, "Unsupported 'X-GitHub-Api-Version' header");
    }
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["repos", owner, repo, "installation"]) => state.find_installation(&headers, owner, repo),
        (&Method::POST, ["app", "installations", id, "access_tokens"]) => state.mint(&headers, id, &body),
        (&Method::DELETE, ["installation", "token"]) => state.revoke(&headers),
        _ => error(404, "Not Found"),
    }
}

impl Inner {
    /// Checks the App's JWT as GitHub does; the message of GitHub's 401 if it fails.
    fn verify_jwt(&mut self, headers: &HeaderMap) -> Result<(), &'static str> {
        const UNDECODABLE: &str = "A JSON web token could not be decoded";
        let jwt = bearer(headers).ok_or(UNDECODABLE)?.to_owned();
        self.jwts.push(jwt.clone());
        let [head, claims, signature] = jwt.split('.').collect::<Vec<_>>()[..] else {
            return Err(UNDECODABLE);
        };
        let part = |p: &str| -> Option<Value> { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok() };
        if part(head).ok_or(UNDECODABLE)?["alg"] != "RS256" {
            return Err(UNDECODABLE);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok().and_then(|s| Signature::try_from(s.as_slice()).ok());
        let signing_input = &jwt[..jwt.rfind('.').ok_or(UNDECODABLE)?];
        match signature {
            Some(sig) if self.app_key.verify(signing_input.as_bytes(), &sig).is_ok() => {}
            _ => return Err(UNDECODABLE),
        }
        let claims = part(claims).ok_or(UNDECODABLE)?;
        self.jwt_claims.push(claims.clone());
        if claims["iss"] != self.app_iss {
            return Err("'Issuer' claim ('iss') must be the client ID or app ID of a GitHub App");
        }
        let now = Timestamp::now().as_second();
        if claims["iat"].as_i64().is_none_or(|iat| iat > now) {
            return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past.");
        }
        match claims["exp"].as_i64() {
            Some(exp) if exp > now + 600 => Err("'Expiration time' claim ('exp') is too far in the future"),
            Some(exp) if exp > now => Ok(()),
            _ => Err(
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires.",
            ),
        }
    }

    fn find_installation(&mut self, headers: &HeaderMap, owner: &str, repo: &str) -> Response {
        if let Err(message) = self.verify_jwt(headers) {
            return error(401, message);
        }
        let found = self
            .installations
            .iter()
            .find(|i| i.account.eq_ignore_ascii_case(owner) && i.repos.iter().any(|r| r.eq_ignore_ascii_case(repo)));
        match found {
            Some(i) => axum::Json(json!({
                "id": i.id,
                "account": {"login": i.account, "type": "Organization"},
                "app_id": 4242,
                "target_type": "Organization",
                "repository_selection": "selected",
                "permissions": i.permissions,
            }))
            .into_response(),
            None => error(404, "Not Found"),
        }
    }

    fn mint(&mut self, headers: &HeaderMap, id: &str, body: &Bytes) -> Response {
        if let Err(message) = self.verify_jwt(headers) {
            return error(401, message);
        }
        let Some(installation) = id.parse::<u64>().ok().and_then(|id| self.installations.iter().find(|i| i.id == id))
        else {
            return error(404, "Not Found");
        };
        let installation = installation.clone();
        let request: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return error(400, "Problems parsing JSON"),
            }
        };
        let Some(fields) = request.as_object() else {
            return error(400, "Problems parsing JSON");
        };
        if let Some(key) =
            fields.keys().find(|k| !["repositories", "repository_ids", "permissions"].contains(&k.as_str()))
        {
            return error(422, &format!("Invalid request.\n\n\"{key}\" is not a permitted key."));
        }
        let selected = fields.contains_key("repositories");
        let repos: Vec<String> = match fields.get("repositories") {
            None => installation.repos.clone(),
            Some(Value::Array(names)) => {
                let names: Option<Vec<String>> = names.iter().map(|n| n.as_str().map(str::to_owned)).collect();
                match names {
                    Some(names) => names,
                    None => return error(422, "Invalid request.\n\nFor 'items', value is not a string."),
                }
            }
            Some(_) => return error(422, "Invalid request.\n\nFor 'properties/repositories', value is not an array."),
        };
        if repos.iter().any(|name| !installation.repos.iter().any(|r| r.eq_ignore_ascii_case(name))) {
            return error(
                422,
                "There is at least one repository that does not exist or is not accessible to the parent installation.",
            );
        }
        let mut permissions: BTreeMap<String, String> = match fields.get("permissions") {
            None => installation.permissions.clone(),
            Some(Value::Object(asked)) => {
                let mut granted = BTreeMap::new();
                for (name, level) in asked {
                    let rank = |l: &str| match l {
                        "read" => 1,
                        "write" => 2,
                        "admin" => 3,
                        _ => 0,
                    };
                    let level = level.as_str().unwrap_or_default();
                    let has = installation.permissions.get(name).map_or(0, |l| rank(l));
                    if rank(level) == 0 || rank(level) > has {
                        return error(422, "The permissions requested are not granted to this installation.");
                    }
                    granted.insert(name.clone(), level.to_owned());
                }
                granted
            }
            Some(_) => return error(422, "Invalid request.\n\nFor 'properties/permissions', value is not an object."),
        };
        permissions.insert("metadata".into(), "read".into());
        let mut granted = repos.clone();
        if let Some(extra) = installation.repos.iter().find(|r| self.grant_extra_repo && !repos.contains(r)) {
            granted.push(extra.clone());
        }
        let token = format!("ghs_{}{}", uuid::Uuid::new_v4().simple(), "Xy12");
        self.minted.push(Minted {
            token: token.clone(),
            installation_id: installation.id,
            repos: granted.clone(),
            permissions: permissions.clone(),
            revoked: false,
        });
        let expires_at = Timestamp::from_second(Timestamp::now().as_second() + 3600).unwrap();
        let repositories: Vec<Value> = granted
            .iter()
            .enumerate()
            .map(|(i, name)| {
                json!({"id": 1000 + i, "name": name, "full_name": format!("{}/{name}", installation.account), "private": true})
            })
            .collect();
        let answer = json!({
            "token": token,
            "expires_at": expires_at.to_string(),
            "permissions": permissions,
            "repository_selection": if selected { "selected" } else { "all" },
            "repositories": repositories,
        });
        (StatusCode::CREATED, axum::Json(answer)).into_response()
    }

    fn revoke(&mut self, headers: &HeaderMap) -> Response {
        let live = bearer(headers).and_then(|token| self.minted.iter_mut().find(|m| m.token == token && !m.revoked));
        match live {
            Some(minted) => {
                minted.revoked = true;
                StatusCode::NO_CONTENT.into_response()
            }
            None => error(401, "Bad credentials"),
        }
    }
}
