//! Dashboard sign-ins. A browser signs in with an API key and is given a cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` behind HTTPS) naming a stored sign-in; from then on the cookie acts as
//! that key wherever an API key would, read endpoints and the session WebSocket included, and the key
//! is checked on every request as if it had been sent.
//!
//! Cross-site requests: the cookie is `SameSite=Strict`, so another site's pages do not send it;
//! beyond that, a request that changes something must carry the sign-in's CSRF token in the
//! [`CSRF_HEADER`] header (or the [`CSRF_FIELD`] form field), and any request carrying an `Origin`
//! must come from this server's own origin (a WebSocket upgrade is a GET, so this is what guards it).
//! The CSRF token is derived from the cookie's secret, so nothing more is stored and a page script
//! cannot compute it: the server writes it into the pages it serves.

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::auth::{Caller, caller_of, caller_of_key, credential_from};
use crate::error::ApiError;
use crate::secrets;
use crate::state::AppState;
use crate::store::SignInRecord;

/// The cookie's name over plain HTTP (a server on loopback or a private network).
pub const COOKIE: &str = "oz_sign_in";
/// The cookie's name over HTTPS: the `__Host-` prefix makes the browser refuse it unless it is
/// `Secure`, `Path=/` and has no `Domain`, so a sibling subdomain cannot plant one ("cookie tossing").
pub const SECURE_COOKIE: &str = "__Host-oz_sign_in";
/// The header a signed-in browser sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field a signed-in browser's forms send the CSRF token in.
pub const CSRF_FIELD: &str = "csrf";
/// How long a sign-in lasts at most (less if its key expires sooner).
pub const LIFETIME: SignedDuration = SignedDuration::from_hours(12);

/// A browser signed in: who it acts as, and what it must send to change anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIn {
    /// The caller, exactly as its API key would be.
    pub caller: Caller,
    /// The sign-in's public id.
    pub id: String,
    /// The token its pages send with every change.
    pub csrf: String,
}

/// A new sign-in: the cookie's value (shown to the browser only) and who it acts as.
pub struct Started {
    /// The value of the [`COOKIE`] cookie.
    pub cookie: String,
    /// Who it acts as.
    pub signed_in: SignedIn,
    /// When it stops working by itself.
    pub expires_at: Timestamp,
}

/// Signs in with an API key (not a worker credential or a workload token).
pub async fn start(state: &AppState, api_key: &str) -> Result<Started, ApiError> {
    let api_key = api_key.trim();
    if !api_key.starts_with(secrets::API_KEY_PREFIX) {
        return Err(ApiError::unauthenticated("sign in with an API key (it starts with oz_)"));
    }
    let found = credential_from(state, api_key).await?;
    let key_expiry = found.key.expires_at;
    let caller = caller_of(found)?;
    let now = Timestamp::now();
    let mut expires_at = now.saturating_add(LIFETIME).unwrap_or(now);
    if let Some(key_expiry) = key_expiry {
        expires_at = expires_at.min(key_expiry);
    }
    let minted = secrets::mint(secrets::SIGN_IN_PREFIX);
    let record = SignInRecord {
        id: minted.id.clone(),
        key_id: caller.key_id.clone(),
        secret_hash: minted.hash,
        created_at: now,
        expires_at,
    };
    state.store.create_sign_in(&record).await?;
    let csrf = csrf_of(&minted.text);
    Ok(Started { cookie: minted.text, signed_in: SignedIn { caller, id: record.id, csrf }, expires_at })
}

/// The sign-in a cookie value names, if it is valid now (its key included).
pub async fn resolve(state: &AppState, cookie: &str) -> Result<SignedIn, ApiError> {
    let invalid = || ApiError::unauthenticated("the sign-in is not valid; sign in again");
    let (id, secret) = secrets::parse(secrets::SIGN_IN_PREFIX, cookie).ok_or_else(invalid)?;
    let record = state.store.sign_in(id).await?.ok_or_else(invalid)?;
    if !secrets::verify(secret, &record.secret_hash) {
        return Err(invalid());
    }
    if Timestamp::now() >= record.expires_at {
        return Err(ApiError::unauthenticated("the sign-in has expired; sign in again"));
    }
    let mut caller = caller_of_key(state, &record.key_id).await?;
    caller.sign_in_id = Some(record.id.clone());
    Ok(SignedIn { caller, id: record.id, csrf: csrf_of(cookie) })
}

/// Whether sign-in `id` is still good (not signed out, not expired): what open streams check.
pub(crate) async fn still_signed_in(state: &AppState, id: &str) -> Result<(), ApiError> {
    let record = state
        .store
        .sign_in(id)
        .await?
        .ok_or_else(|| ApiError::unauthenticated("the dashboard's sign-in ended; sign in again"))?;
    if Timestamp::now() >= record.expires_at {
        return Err(ApiError::unauthenticated("the sign-in has expired; sign in again"));
    }
    Ok(())
}

/// Signs out: the sign-in is forgotten, so its cookie no longer works anywhere.
pub async fn end(state: &AppState, signed_in: &SignedIn) -> Result<(), ApiError> {
    Ok(state.store.end_sign_in(&signed_in.id).await?)
}

fn csrf_of(cookie: &str) -> String {
    let digest = Sha256::new().chain_update(b"oz dashboard csrf\0").chain_update(cookie.as_bytes()).finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Whether `presented` is `expected`, compared in constant time.
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    secrets::verify(presented, &secrets::hash(expected))
}

/// The sign-in cookie's value in a request's `Cookie` headers (over HTTPS, only the
/// [`SECURE_COOKIE`]); more than one is refused (another one was planted beside the browser's own).
pub fn cookie_in(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let name = cookie_name(state, headers);
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == name);
    let Some(first) = found.next() else { return Ok(None) };
    if found.next().is_some() {
        return Err(ApiError::unauthenticated(format!(
            "the request carries more than one {name} cookie; sign out, clear this site's cookies, and sign in again"
        )));
    }
    Ok(Some(first.value().to_owned()))
}

fn cookie_name(state: &AppState, headers: &HeaderMap) -> &'static str {
    if over_https(state, headers) { SECURE_COOKIE } else { COOKIE }
}

/// Whether the request came over HTTPS (directly or, as a proxy in front says, to the proxy), or
/// the server's public URL is HTTPS: then the cookie is `Secure`.
/// (`X-Forwarded-Proto` may list one protocol per proxy, the client's first.)
fn over_https(state: &AppState, headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    forwarded || state.public_url.starts_with("https://")
}

/// The `Set-Cookie` value that stores a new sign-in's cookie in the browser.
pub fn set_cookie(state: &AppState, headers: &HeaderMap, value: &str, expires_at: Timestamp) -> HeaderValue {
    let max_age = expires_at.duration_since(Timestamp::now()).as_secs().max(0);
    cookie_header(state, headers, value, max_age)
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(state: &AppState, headers: &HeaderMap) -> HeaderValue {
    cookie_header(state, headers, "", 0)
}

fn cookie_header(state: &AppState, headers: &HeaderMap, value: &str, max_age_secs: i64) -> HeaderValue {
    let built = cookie::Cookie::build((cookie_name(state, headers), value.to_owned()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(over_https(state, headers))
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build();
    HeaderValue::from_str(&built.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a browser request comes from this server's own pages: its `Origin`, if it has one, is
/// its `Host` under the scheme it was served by (https when the public URL is, or a proxy said
/// so in `X-Forwarded-Proto`), or the origin of the server's public URL (behind a proxy that
/// rewrites `Host`); and its `Sec-Fetch-Site`, if it has one, says same-origin (or none: typed in).
/// The cookie is bound to this host, so a page of another origin that reaches it (DNS rebinding)
/// has no cookie to send.
pub fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    let fetched_from = headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or("cross-site"));
    if fetched_from.is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else { return false };
    // The scheme counts: a page served over http on this host is another origin than our https
    // pages (a network attacker can write it).
    let scheme = if over_https(state, headers) { "https://" } else { "http://" };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let own_host = host.is_some_and(|host| {
        origin.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme))
            && origin.get(scheme.len()..).is_some_and(|o| o.eq_ignore_ascii_case(host))
    });
    own_host || public_origin(&state.public_url).is_some_and(|own| own.eq_ignore_ascii_case(origin))
}

/// `scheme://host[:port]` of a URL, as a browser writes it in `Origin`.
fn public_origin(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// The caller a request's sign-in cookie acts as, with the cross-site checks: `None` when it has no
/// such cookie.
pub async fn caller_of_request(state: &AppState, parts: &Parts) -> Option<Result<Caller, ApiError>> {
    let cookie = match cookie_in(state, &parts.headers) {
        Ok(cookie) => cookie?,
        Err(e) => return Some(Err(e)),
    };
    Some(checked(state, parts, &cookie).await.map(|s| s.caller))
}

async fn checked(state: &AppState, parts: &Parts, cookie: &str) -> Result<SignedIn, ApiError> {
    if !same_origin(state, &parts.headers) {
        return Err(ApiError::forbidden("a signed-in request must come from the dashboard's own origin"));
    }
    let signed_in = resolve(state, cookie).await?;
    if changes_something(&parts.method) {
        let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !csrf_matches(&signed_in.csrf, presented) {
            return Err(ApiError::forbidden(format!(
                "a signed-in request that changes something must send the page's CSRF token in {CSRF_HEADER}"
            )));
        }
    }
    Ok(signed_in)
}

fn changes_something(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_comes_from_the_cookie_and_is_checked_exactly() {
        let a = csrf_of("ozs_0123456789abcdef.aa");
        assert_eq!(a, csrf_of("ozs_0123456789abcdef.aa"));
        assert_ne!(a, csrf_of("ozs_0123456789abcdef.ab"));
        assert!(csrf_matches(&a, &a));
        assert!(!csrf_matches(&a, ""));
        assert!(!csrf_matches(&a, &a[1..]));
    }

    #[test]
    fn a_public_url_names_the_origin_a_browser_sends() {
        assert_eq!(public_origin("https://oz.example.com/base/").as_deref(), Some("https://oz.example.com"));
        assert_eq!(public_origin("http://10.0.0.5:8080").as_deref(), Some("http://10.0.0.5:8080"));
        assert_eq!(public_origin("not a url"), None);
    }
}
