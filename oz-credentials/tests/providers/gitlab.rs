//! `GitLabProvider` against the fake GitLab.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use oz_credentials::{
    Access, Action, ActsAs, CredentialError, CredentialRequest, CredentialScope, GitCredentialProvider,
    GitLabAccessLevel, GitLabProvider, ProviderKind, Revocation,
};
use secrecy::SecretString;
use serde_json::json;

use crate::fake_gitlab::FakeGitLab;
use crate::support::{assert_no_secret, quick_http, repo, run_id, shown};

const ADMIN_TOKEN: &str = "glpat-admin-0123456789abcdef";

async fn fake() -> FakeGitLab {
    FakeGitLab::start(ADMIN_TOKEN, &[(12, "acme/api"), (13, "acme/web")]).await
}

fn provider(fake: &FakeGitLab) -> GitLabProvider {
    GitLabProvider::builder(&fake.url, SecretString::from(ADMIN_TOKEN)).http(quick_http()).build().unwrap()
}

fn request(repos: &[&str], access: Access) -> CredentialRequest {
    CredentialRequest::new(run_id(), repos.iter().map(|r| repo(r)), access)
}

fn utc_date(at: Timestamp) -> Date {
    at.to_zoned(TimeZone::UTC).date()
}

#[tokio::test]
async fn creates_then_revokes_a_project_access_token() {
    let fake = fake().await;
    let gitlab = provider(&fake);
    let before = Timestamp::now();
    let issued = gitlab.issue(&request(&["acme/api"], Access::Read)).await.unwrap();

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].line(), "POST /api/v4/projects/acme%2Fapi/access_tokens", "the path travels URL-encoded");
    assert_eq!(requests[0].header("private-token"), Some(ADMIN_TOKEN));
    let body = requests[0].body.clone().unwrap();
    let expires = body["expires_at"].as_str().unwrap().parse::<Date>().unwrap();
    // Tomorrow, or the day after when midnight UTC is within the hour.
    let earliest = utc_date(before.checked_add(Duration::from_secs(3600)).unwrap()).tomorrow().unwrap();
    let latest = utc_date(Timestamp::now().checked_add(Duration::from_secs(3600)).unwrap()).tomorrow().unwrap();
    assert!(expires == earliest || expires == latest, "{expires}");
    assert_eq!(
        body,
        json!({"name": "oz-run-run-42", "scopes": ["read_repository"], "access_level": 20, "expires_at": expires.to_string()})
    );

    let tokens = fake.tokens();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].project, "acme/api");
    assert_eq!(issued.expose_token(), tokens[0].token);
    assert_eq!(issued.provider, ProviderKind::GitLab);
    assert_eq!(issued.username, "oauth2");
    assert_eq!(issued.host, fake.url.trim_start_matches("http://"));
    assert_eq!(issued.scope, CredentialScope::Repositories { repos: vec![repo("acme/api")], access: Access::Read });
    assert_eq!(issued.acts_as, ActsAs::GitLabProjectBot { user_id: Some(9000 + tokens[0].id) });
    assert_eq!(
        issued.revocation,
        Revocation::GitLabProjectToken { project: "acme/api".into(), token_id: tokens[0].id }
    );
    let midnight = expires.to_zoned(TimeZone::UTC).unwrap().timestamp();
    assert_eq!(issued.expires_at, Some(midnight), "a token stops at midnight UTC starting its date");
    assert!(midnight.duration_since(before) >= jiff::SignedDuration::from_hours(1));

    gitlab.revoke(&issued).await.unwrap();
    let delete = fake.requests().pop().unwrap();
    assert_eq!(delete.line(), format!("DELETE /api/v4/projects/acme%2Fapi/access_tokens/{}", tokens[0].id));
    assert_eq!(delete.header("private-token"), Some(ADMIN_TOKEN));
    assert!(fake.tokens()[0].revoked);
}

#[tokio::test]
async fn write_access_adds_write_repository_and_the_write_role() {
    let fake = fake().await;
    let gitlab = GitLabProvider::builder(format!("{}/api/v4/", fake.url), SecretString::from(ADMIN_TOKEN))
        .access_levels(GitLabAccessLevel::Reporter, GitLabAccessLevel::Maintainer)
        .min_lifetime(Duration::ZERO)
        .git_host("gitlab.example.com")
        .build()
        .unwrap();
    let before = utc_date(Timestamp::now()).tomorrow().unwrap();
    let issued = gitlab.issue(&request(&["acme/web"], Access::ReadWrite)).await.unwrap();
    let after = utc_date(Timestamp::now()).tomorrow().unwrap();
    let body = fake.requests()[0].body.clone().unwrap();
    assert_eq!(body["scopes"], json!(["read_repository", "write_repository"]));
    assert_eq!(body["access_level"], json!(40));
    let expires = body["expires_at"].as_str().unwrap();
    assert!(expires == before.to_string() || expires == after.to_string(), "tomorrow, not {expires}");
    assert_eq!(issued.host, "gitlab.example.com");
    assert_eq!(fake.tokens()[0].project, "acme/web");
}

#[tokio::test]
async fn gitlab_s_refusals_are_typed_and_keep_the_tokens_out() {
    let fake = fake().await;
    let wrong = GitLabProvider::builder(&fake.url, SecretString::from("glpat-wrong-token-000")).build().unwrap();
    let err = wrong.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err();
    assert!(
        matches!(&err, CredentialError::Refused { provider: ProviderKind::GitLab, action: Action::CreateProjectToken, answer } if answer.status == 401),
        "{err:?}"
    );
    assert_eq!(
        oz_core::error::error_chain(&err),
        "GitLab refused to create a project access token: HTTP 401: 401 Unauthorized"
    );
    assert_no_secret(&shown(&err), &["glpat-wrong-token-000", ADMIN_TOKEN]);

    let gitlab = provider(&fake);
    let err = gitlab.issue(&request(&["acme/nope"], Access::Read)).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(shown(&err).contains("404 Project Not Found"), "{}", shown(&err));
    assert_no_secret(&shown(&err), &[ADMIN_TOKEN]);
    assert!(fake.tokens().is_empty());
}

#[tokio::test]
async fn several_projects_or_none_are_refused_before_asking_gitlab() {
    let fake = fake().await;
    let gitlab = provider(&fake);
    for (repos, expected) in [
        (vec!["acme/api", "acme/web"], "covers one project and the request names 2"),
        (vec![], "names no repositories"),
    ] {
        let err = gitlab.issue(&request(&repos, Access::Read)).await.unwrap_err();
        assert!(matches!(err, CredentialError::Unsupported { provider: ProviderKind::GitLab, .. }), "{err:?}");
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_token_with_other_scopes_is_revoked_and_never_handed_out() {
    let fake = fake().await;
    fake.report_scopes(&["api"]);
    let gitlab = provider(&fake);
    let err = gitlab.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err();
    assert!(matches!(&err, CredentialError::ScopeMismatch { revoke_error: None, .. }), "{err:?}");
    let tokens = fake.tokens();
    assert!(tokens[0].revoked);
    assert_no_secret(&shown(&err), &[&tokens[0].token, ADMIN_TOKEN]);
}

#[tokio::test]
async fn no_debug_output_shows_a_token() {
    let fake = fake().await;
    let builder = GitLabProvider::builder(&fake.url, SecretString::from(ADMIN_TOKEN));
    let gitlab = provider(&fake);
    let issued = gitlab.issue(&request(&["acme/api"], Access::ReadWrite)).await.unwrap();
    let closed = GitLabProvider::builder("http://127.0.0.1:9", SecretString::from(ADMIN_TOKEN))
        .http(quick_http())
        .build()
        .unwrap();
    let err = closed.revoke(&issued).await.unwrap_err();
    assert!(matches!(err, CredentialError::Transport { action: Action::RevokeProjectToken, .. }), "{err:?}");
    let token = fake.tokens()[0].token.clone();
    for output in [format!("{builder:?}"), format!("{gitlab:#?}"), format!("{issued:#?}"), shown(&err)] {
        assert_no_secret(&output, &[&token, ADMIN_TOKEN]);
    }
}
