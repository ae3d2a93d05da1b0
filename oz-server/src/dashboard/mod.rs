//! The web dashboard, served by `oz-server` itself: the pages, their script and style (embedded in
//! the binary), signing in and out. The pages are shells; their script reads and changes everything
//! through the REST API and the session WebSocket, with the sign-in cookie standing in for an API key
//! ([`crate::sign_in`]), so the dashboard can do nothing a key of the same role could not.
//!
//! Every page is sent with a strict Content-Security-Policy (scripts and styles from this server
//! only, no inline script, no framing), `no-store`, and a referrer only to this server (with none, browsers send `Origin: null`, which the
//! origin check refuses).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::Principal;
use crate::sign_in::{self, SignedIn};
use crate::state::AppState;

const PAGE: &str = include_str!("assets/page.html");
const SIGN_IN_PAGE: &str = include_str!("assets/sign_in.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// The content security policy of every dashboard response.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                      form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, at the root of the API port (the API is under `/api/v1`).
pub fn router() -> Router<AppState> {
    let listings = Listing::ALL.into_iter().fold(Router::new(), |router, listing| {
        router.route(listing.names().1, get(move |s: State<AppState>, h: HeaderMap| listing_page(s, h, listing)))
    });
    listings
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", axum::routing::post(sign_out))
        .route("/runs/{id}", get(run_page))
        .route("/sessions/{id}", get(session_page))
        .route("/assets/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/assets/dashboard.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    secured(([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response())
}

fn html(status: StatusCode, body: String) -> Response {
    secured((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
}

fn see_other(to: &str) -> Response {
    secured((StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response())
}

/// Text made safe to put in HTML, in an element or a quoted attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A template with its `{{name}}` slots filled with escaped values, in one pass: a value that
/// itself reads `{{name}}` (a run's title can be anything) is not filled again.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| values.iter().find(|(n, _)| *n == &after[..end]).map(|v| (end, v.1))) {
            Some((end, value)) => {
                out.push_str(&escape(value));
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The browser's sign-in, or where to send it to sign in.
async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<SignedIn, Response> {
    let Ok(Some(cookie)) = sign_in::cookie_in(state, headers) else {
        return Err(see_other("/sign-in"));
    };
    sign_in::resolve(state, &cookie).await.map_err(|_| see_other("/sign-in"))
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers).await {
        Ok(_) => see_other("/runs"),
        Err(to_sign_in) => to_sign_in,
    }
}

fn sign_in_form(status: StatusCode, error: &str, next: &str) -> Response {
    let hidden = if error.is_empty() { "hidden" } else { "" };
    html(status, fill(SIGN_IN_PAGE, &[("error", error), ("error_hidden", hidden), ("next", next)]))
}

/// Where to go after signing in: a page of this dashboard (a session link followed before signing
/// in), never another site.
fn next_page(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n.starts_with("/sessions/") || n.starts_with("/runs/"))
                && !n.contains("//")
                && n.len() < 200
                && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_')) =>
        {
            n
        }
        _ => "/runs",
    }
}

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let next = query.as_deref().and_then(|q| form_field(q.as_bytes(), "next"));
    let next = next_page(next.as_deref());
    match signed_in(&state, &headers).await {
        Ok(_) => see_other(next),
        Err(_) => sign_in_form(StatusCode::OK, "", next),
    }
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

async fn sign_in(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    // A sign-in posted from another site's page would sign this browser in as someone else.
    let next = form_field(&body, "next");
    let next = next_page(next.as_deref());
    if !sign_in::same_origin(&state, &headers) {
        return sign_in_form(StatusCode::FORBIDDEN, "Sign in from this server's own sign-in page.", next);
    }
    let key = form_field(&body, "api_key").unwrap_or_default();
    if key.trim().is_empty() {
        return sign_in_form(StatusCode::BAD_REQUEST, "Paste an API key to sign in.", next);
    }
    match sign_in::start(&state, &key).await {
        Ok(started) => {
            let mut response = see_other(next);
            let cookie = sign_in::set_cookie(&state, &headers, &started.cookie, started.expires_at);
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            tracing::info!(key_id = %started.signed_in.caller.key_id, "signed in to the dashboard");
            response
        }
        Err(e) if e.status.is_server_error() => {
            sign_in_form(StatusCode::SERVICE_UNAVAILABLE, "The server could not sign you in; try again.", next)
        }
        Err(e) => sign_in_form(StatusCode::UNAUTHORIZED, &format!("That key does not sign in: {}", e.detail), next),
    }
}

async fn sign_out(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let mut response = see_other("/sign-in");
    if let Ok(signed_in) = signed_in(&state, &headers).await {
        let presented = form_field(&body, sign_in::CSRF_FIELD).unwrap_or_default();
        if !sign_in::same_origin(&state, &headers) || !sign_in::csrf_matches(&signed_in.csrf, &presented) {
            return html(StatusCode::FORBIDDEN, "<p>Sign out from the dashboard's own pages.</p>".to_owned());
        }
        if sign_in::end(&state, &signed_in).await.is_err() {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                "<p>The server could not sign you out; try again.</p>".to_owned(),
            );
        }
    }
    response.headers_mut().insert(header::SET_COOKIE, sign_in::clear_cookie(&state, &headers));
    response
}

/// The pages that list one kind of thing.
#[derive(Clone, Copy)]
enum Listing {
    Runs,
    Schedules,
    Environments,
    Integrations,
    Workers,
}

impl Listing {
    const ALL: [Listing; 5] =
        [Listing::Runs, Listing::Schedules, Listing::Environments, Listing::Integrations, Listing::Workers];

    /// The page's name (what the script draws), its path and its title.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Listing::Runs => ("runs", "/runs", "Runs"),
            Listing::Schedules => ("schedules", "/schedules", "Schedules"),
            Listing::Environments => ("environments", "/environments", "Environments"),
            Listing::Integrations => ("integrations", "/integrations", "Integrations"),
            Listing::Workers => ("workers", "/workers", "Workers"),
        }
    }
}

async fn who(state: &AppState, signed_in: &SignedIn) -> String {
    let caller = &signed_in.caller;
    let user = match &caller.user_id {
        Some(id) => state.store.user(&caller.team_id, id).await.ok().flatten().map(|u| u.name),
        None => None,
    };
    let team = state.store.team(&caller.team_id).await.ok().flatten().map(|t| t.name);
    match (user, team) {
        (Some(user), Some(team)) => format!("{user} ({team})"),
        (Some(user), None) => user,
        (None, Some(team)) => team,
        (None, None) => caller.key_id.clone(),
    }
}

/// A page; `access` is what the signed-in caller may do with the page's run (`view` or `edit`: the
/// page offers steering only for `edit`, and the server checks every request anyway).
async fn shell(state: &AppState, signed_in: &SignedIn, page: &str, title: &str, run_id: &str, access: &str) -> String {
    let who = who(state, signed_in).await;
    fill(
        PAGE,
        &[
            ("page", page),
            ("title", title),
            ("role", signed_in.caller.role.as_str()),
            ("access", access),
            ("csrf", &signed_in.csrf),
            ("run_id", run_id),
            ("who", &who),
        ],
    )
}

async fn listing_page(State(state): State<AppState>, headers: HeaderMap, listing: Listing) -> Response {
    let (page, _, title) = listing.names();
    match signed_in(&state, &headers).await {
        Ok(signed_in) => {
            let access = if signed_in.caller.role >= oz_core::wire::admin::Role::Member { "edit" } else { "view" };
            html(StatusCode::OK, shell(&state, &signed_in, page, title, "", access).await)
        }
        Err(to_sign_in) => to_sign_in,
    }
}

async fn run_page(State(state): State<AppState>, headers: HeaderMap, Path(run_id): Path<String>) -> Response {
    let signed_in = match signed_in(&state, &headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    // Another team's run, or none: the same answer as the API's, with no hint which.
    let principal = Principal::Key(signed_in.caller.clone());
    match crate::sharing::run_access(&state, &principal, &run_id).await {
        Ok((run, access)) => {
            html(StatusCode::OK, shell(&state, &signed_in, "run", &run.title, &run.id, access.as_str()).await)
        }
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            html(StatusCode::NOT_FOUND, shell(&state, &signed_in, "missing", "No such run", "", "view").await)
        }
        Err(_) => {
            html(StatusCode::SERVICE_UNAVAILABLE, shell(&state, &signed_in, "missing", "Unavailable", "", "view").await)
        }
    }
}

/// A session link: to its run's page for whoever may see the run, the sign-in page (and back) for a
/// browser not signed in, and "no such run" for anyone else.
async fn session_page(State(state): State<AppState>, headers: HeaderMap, Path(session_id): Path<String>) -> Response {
    let signed_in = match signed_in(&state, &headers).await {
        Ok(s) => s,
        Err(to_sign_in) => {
            let safe = session_id.chars().all(|c| c.is_ascii_alphanumeric()) && session_id.len() <= 64;
            return if safe { see_other(&format!("/sign-in?next=/sessions/{session_id}")) } else { to_sign_in };
        }
    };
    match crate::sharing::session_run(&state, &signed_in.caller, &session_id).await {
        Ok(run) => see_other(&format!("/runs/{}", run.id)),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            html(StatusCode::NOT_FOUND, shell(&state, &signed_in, "missing", "No such run", "", "view").await)
        }
        Err(_) => {
            html(StatusCode::SERVICE_UNAVAILABLE, shell(&state, &signed_in, "missing", "Unavailable", "", "view").await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_signing_in_a_browser_goes_only_to_this_dashboards_runs_and_sessions() {
        assert_eq!(next_page(Some("/sessions/0123abcd")), "/sessions/0123abcd");
        assert_eq!(next_page(Some("/runs/6f1e-22")), "/runs/6f1e-22");
        for elsewhere in [
            "//evil.example/runs/x",
            "https://evil.example",
            "/runs/\\evil.example",
            "/runs/x\r\nSet-Cookie: a=b",
            "/admin",
            "",
        ] {
            assert_eq!(next_page(Some(elsewhere)), "/runs", "{elsewhere:?}");
        }
        assert_eq!(next_page(None), "/runs");
    }

    #[test]
    fn filled_values_are_escaped() {
        let filled = fill("<p title=\"{{a}}\">{{a}}</p>", &[("a", "<script>\"x\"&'y'")]);
        assert_eq!(
            filled,
            "<p title=\"&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;\">&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;</p>"
        );
    }
}
