//! `GitHubAppProvider` against the fake GitHub.

use jiff::Timestamp;
use oz_credentials::{
    Access, Action, ActsAs, AppIssuer, CredentialError, CredentialRequest, CredentialScope, CredentialStrategy,
    GitCredentialProvider, GitHubAppProvider, GitHubAppProviderBuilder, ProviderKind, Revocation, RunIdentity, RunUser,
};
use oz_provider_fakes::Failure;
use oz_provider_fakes::github::FakeGitHub;
use secrecy::SecretString;
use serde_json::json;

use crate::support::{
    APP_PRIVATE_PEM, APP_PUBLIC_PEM, OTHER_PRIVATE_PEM, assert_no_secret, quick_http, repo, run_id, shown,
};

const APP_ID: u64 = 4242;
const CLIENT_ID: &str = "Iv23liFakeClientId01";

/// A fake where the App (app id 4242) is installed on `acme` (installation 77) for three repos.
async fn fake() -> FakeGitHub {
    let fake = FakeGitHub::start(APP_ID, APP_PUBLIC_PEM).await;
    install(&fake, 77, "acme", &["api", "web", "secret-infra"]);
    install(&fake, 88, "octo", &["tools"]);
    fake
}

/// Installs the App on `account` for `repos`, with `contents: write` (and `metadata: read`).
fn install(fake: &FakeGitHub, id: u64, account: &str, repos: &[&str]) {
    fake.add_installation(id, account, repos, &[("contents", "write"), ("metadata", "read")]);
}

/// The App 4242 with the key `pem`, at `api_base`, with quick retries.
fn builder(api_base: &str, pem: &str) -> GitHubAppProviderBuilder {
    GitHubAppProvider::builder(AppIssuer::AppId(APP_ID), SecretString::from(pem)).api_base(api_base).http(quick_http())
}

fn provider(fake: &FakeGitHub, pem: &str) -> GitHubAppProvider {
    builder(&fake.base_url(), pem).build().unwrap()
}

/// Always the installation `id`, without a lookup.
fn fixed(fake: &FakeGitHub, pem: &str, id: u64) -> GitHubAppProvider {
    builder(&fake.base_url(), pem).installation_id(id).build().unwrap()
}

fn request(repos: &[&str], access: Access) -> CredentialRequest {
    CredentialRequest::new(run_id(), repos.iter().map(|r| repo(r)), access)
}

#[tokio::test]
async fn mints_a_token_for_exactly_the_environments_repositories() {
    let fake = fake().await;
    let github = provider(&fake, APP_PRIVATE_PEM);
    let identity = RunIdentity {
        strategy: CredentialStrategy::Executor,
        creator: Some(RunUser::new("u-1")),
        executor: Some(RunUser::new("u-2").with_login("octocat")),
    };
    let request = request(&["acme/api", "acme/web"], Access::Read).with_identity(identity.clone());
    let before = Timestamp::now();
    let issued = github.issue(&request).await.unwrap();

    // What GitHub was asked, in order, exactly.
    let requests = fake.requests();
    let lines: Vec<String> = requests.iter().map(|r| r.line()).collect();
    assert_eq!(lines, ["GET /repos/acme/api/installation", "POST /app/installations/77/access_tokens"]);
    assert_eq!(requests[1].json(), json!({"repositories": ["api", "web"], "permissions": {"contents": "read"}}));
    for r in &requests {
        assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        assert!(r.header("user-agent").unwrap().starts_with("oz-credentials/"));
    }

    // The App's JWTs: RS256 (verified by the fake against the public key), iss, iat a minute ago,
    // exp at most 10 minutes after iat.
    let claims = fake.jwt_claims();
    assert_eq!(claims.len(), 2);
    for c in &claims {
        assert_eq!(c["iss"], json!(APP_ID));
        let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
        let age = before.as_second() - iat;
        assert!((55..=65).contains(&age), "iat is {age} s in the past");
        assert!(exp - iat <= 600, "the JWT lives {} s", exp - iat);
        assert!(exp > Timestamp::now().as_second());
    }

    // The token GitHub minted reaches api and web, not secret-infra, with contents: read.
    let minted = fake.minted();
    assert_eq!(minted.len(), 1);
    assert_eq!(minted[0].repos, ["api", "web"]);
    assert_eq!(minted[0].installation_id, 77);
    assert_eq!(minted[0].permissions.get("contents").map(String::as_str), Some("read"));
    assert_eq!(issued.expose_token(), minted[0].token);

    assert_eq!(issued.provider, ProviderKind::GitHubApp);
    assert_eq!(issued.username, "x-access-token");
    assert_eq!(issued.host, fake.base_url().trim_start_matches("http://"));
    assert_eq!(issued.scope, CredentialScope::Repositories { repos: request.repos.clone(), access: Access::Read });
    assert_eq!(issued.acts_as, ActsAs::GitHubInstallation { installation_id: 77 });
    assert_eq!(issued.revocation, Revocation::GitHubInstallationToken);
    assert_eq!(issued.identity, identity, "the identity is recorded as asked");
    assert_eq!(issued.run_id, run_id());
    let expires = issued.expires_at.unwrap();
    assert!((3590..=3610).contains(&(expires.as_second() - before.as_second())), "{expires}");
    let git = issued.git_credential();
    assert_eq!((git.username.as_str(), git.expose()), ("x-access-token", minted[0].token.as_str()));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn write_access_asks_for_contents_write_of_a_fixed_installation() {
    let fake = FakeGitHub::start_with_client_id(APP_ID, CLIENT_ID, APP_PUBLIC_PEM).await;
    install(&fake, 77, "acme", &["api", "web"]);
    let github = GitHubAppProvider::builder(AppIssuer::parse(CLIENT_ID), SecretString::from(APP_PRIVATE_PEM))
        .api_base(format!("{}/", fake.base_url()))
        .installation_id(77)
        .git_host("github.com")
        .build()
        .unwrap();
    let issued = github.issue(&request(&["acme/web"], Access::ReadWrite)).await.unwrap();
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "no lookup with a fixed installation");
    assert_eq!(requests[0].line(), "POST /app/installations/77/access_tokens");
    assert_eq!(requests[0].json(), json!({"repositories": ["web"], "permissions": {"contents": "write"}}));
    assert_eq!(fake.jwt_claims()[0]["iss"], json!(CLIENT_ID), "a client id travels as a string");
    assert_eq!(issued.host, "github.com");
    assert_eq!(
        issued.scope,
        CredentialScope::Repositories { repos: vec![repo("acme/web")], access: Access::ReadWrite }
    );
    let minted = fake.minted();
    assert_eq!(minted[0].permissions.get("contents").map(String::as_str), Some("write"));
    assert_eq!(minted[0].permissions.get("metadata").map(String::as_str), Some("read"), "GitHub adds it");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn a_jwt_signed_with_another_key_is_refused() {
    let fake = fake().await;
    let github = provider(&fake, OTHER_PRIVATE_PEM);
    let err = github.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err();
    assert!(
        matches!(&err, CredentialError::Refused { provider: ProviderKind::GitHubApp, action: Action::FindInstallation, answer } if answer.status == 401),
        "{err:?}"
    );
    assert_eq!(
        oz_core::error::error_chain(&err),
        "GitHub refused to find the App's installation: HTTP 401: A JSON web token could not be decoded"
    );
    assert!(fake.jwt_claims().is_empty(), "no JWT verified");
    assert!(fake.minted().is_empty());

    // Also when minting with a fixed installation.
    let fixed = fixed(&fake, OTHER_PRIVATE_PEM, 77);
    let err = fixed.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(matches!(err, CredentialError::Refused { action: Action::MintInstallationToken, .. }));
    assert!(fake.minted().is_empty());
}

#[tokio::test]
async fn a_jwt_of_another_app_is_refused() {
    let fake = fake().await;
    let github = GitHubAppProvider::builder(AppIssuer::AppId(1), SecretString::from(APP_PRIVATE_PEM))
        .api_base(fake.base_url())
        .build()
        .unwrap();
    let err = github.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(shown(&err).contains("'iss'"), "{}", shown(&err));
}

#[tokio::test]
async fn unknown_installations_and_repositories_are_github_s_errors() {
    let fake = fake().await;
    let github = provider(&fake, APP_PRIVATE_PEM);

    // The App is not installed for this repository: the lookup answers 404.
    let err = github.issue(&request(&["acme/nope"], Access::Read)).await.unwrap_err();
    assert!(matches!(&err, CredentialError::Refused { action: Action::FindInstallation, .. }), "{err:?}");
    assert_eq!(err.status(), Some(404));

    // An unknown installation: 404 from the mint.
    let unknown = fixed(&fake, APP_PRIVATE_PEM, 999);
    let err = unknown.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err();
    assert!(matches!(&err, CredentialError::Refused { action: Action::MintInstallationToken, .. }), "{err:?}");
    assert_eq!(err.status(), Some(404));

    // A repository the installation does not have: 422 from the mint.
    let fixed = fixed(&fake, APP_PRIVATE_PEM, 77);
    let err = fixed.issue(&request(&["acme/api", "acme/nope"], Access::Read)).await.unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(shown(&err).contains("not accessible to the parent installation"), "{}", shown(&err));
    assert!(fake.minted().is_empty());
}

#[tokio::test]
async fn requests_it_cannot_scope_are_refused_before_asking_github() {
    let fake = fake().await;
    let github = provider(&fake, APP_PRIVATE_PEM);
    for (repos, expected) in [
        (vec!["acme/api", "octo/tools"], "2 owners (acme, octo)"),
        (vec![], "names no repositories"),
        (vec!["acme/api", "ACME/API"], "named twice"),
    ] {
        let err = github.issue(&request(&repos, Access::Read)).await.unwrap_err();
        assert!(matches!(err, CredentialError::Unsupported { provider: ProviderKind::GitHubApp, .. }), "{err:?}");
        assert!(err.to_string().contains(expected), "{err}");
    }
    // Same owner in another case is one owner.
    github.issue(&request(&["acme/api", "Acme/web"], Access::Read)).await.unwrap();
    assert_eq!(fake.requests().len(), 2, "only the last request reached GitHub");
}

#[tokio::test]
async fn revoke_deletes_the_installation_token_with_itself() {
    let fake = fake().await;
    let github = provider(&fake, APP_PRIVATE_PEM);
    let issued = github.issue(&request(&["acme/api"], Access::ReadWrite)).await.unwrap();
    github.revoke(&issued).await.unwrap();

    let requests = fake.requests();
    let delete = requests.last().unwrap();
    assert_eq!(delete.line(), "DELETE /installation/token");
    assert_eq!(delete.header("authorization"), Some(format!("Bearer {}", issued.expose_token()).as_str()));
    assert_eq!(delete.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(delete.header("x-github-api-version"), Some("2022-11-28"));
    assert!(fake.minted()[0].revoked);

    // Revoking again: GitHub no longer takes the token (401), which is what revoking is for.
    github.revoke(&issued).await.unwrap();
    assert_eq!(fake.requests().len(), requests.len() + 1);
}

#[tokio::test]
async fn a_token_wider_than_asked_is_revoked_and_never_handed_out() {
    let fake = fake().await;
    fake.grant_extra_repo();
    let github = provider(&fake, APP_PRIVATE_PEM);
    let err = github.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err();
    match &err {
        CredentialError::ScopeMismatch { provider: ProviderKind::GitHubApp, detail, revoke_error: None } => {
            assert!(detail.contains("\"web\""), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let minted = fake.minted();
    assert_eq!(minted.len(), 1);
    assert!(minted[0].revoked, "the over-wide token was revoked");
    assert_eq!(fake.requests().last().unwrap().line(), "DELETE /installation/token");
    assert_no_secret(&shown(&err), &[&minted[0].token]);
}

#[tokio::test]
async fn a_mint_is_not_retried_after_a_server_error_but_a_revoke_is() {
    let fake = fake().await;
    let github = fixed(&fake, APP_PRIVATE_PEM, 77);

    fake.fail_next(1, Failure::Status(502));
    let err = github.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    assert_eq!(fake.requests().len(), 1, "GitHub may have minted a token: no second one");

    fake.fail_next(1, Failure::Status(429));
    let issued = github.issue(&request(&["acme/api"], Access::Read)).await.unwrap();
    assert_eq!(fake.requests().len(), 3, "a 429 was not acted on: tried again");

    fake.fail_next(1, Failure::Status(503));
    github.revoke(&issued).await.unwrap();
    let lines: Vec<String> = fake.requests().iter().skip(3).map(|r| r.line()).collect();
    assert_eq!(lines, ["DELETE /installation/token", "DELETE /installation/token"]);
    assert!(fake.minted()[0].revoked);
}

#[tokio::test]
async fn no_error_or_debug_output_shows_a_token_a_jwt_or_the_key() {
    let fake = fake().await;
    let github = provider(&fake, APP_PRIVATE_PEM);
    let unbuilt = builder(&fake.base_url(), APP_PRIVATE_PEM);
    let issued = github.issue(&request(&["acme/api"], Access::Read)).await.unwrap();

    let mut outputs = vec![
        format!("{unbuilt:?}"),
        format!("{github:?}"),
        format!("{github:#?}"),
        format!("{issued:?}"),
        format!("{issued:#?}"),
        format!("{:?}", issued.git_credential()),
    ];
    let other = provider(&fake, OTHER_PRIVATE_PEM);
    outputs.push(format!("{other:?}"));
    let fixed = fixed(&fake, APP_PRIVATE_PEM, 77);
    let closed = builder("http://127.0.0.1:9", APP_PRIVATE_PEM).build().unwrap();
    let errors = [
        other.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err(),
        fixed.issue(&request(&["acme/nope"], Access::Read)).await.unwrap_err(),
        github.issue(&request(&["acme/nope"], Access::Read)).await.unwrap_err(),
        github.issue(&request(&["acme/api", "octo/tools"], Access::Read)).await.unwrap_err(),
        closed.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err(),
        closed.revoke(&issued).await.unwrap_err(),
        builder(&fake.base_url(), APP_PUBLIC_PEM).build().unwrap_err(),
        builder(&fake.base_url(), &APP_PRIVATE_PEM[..800]).build().unwrap_err(),
    ];
    assert!(matches!(errors[4], CredentialError::Transport { .. }), "{:?}", errors[4]);
    assert!(matches!(errors[6], CredentialError::PrivateKey(_)), "{:?}", errors[6]);
    assert!(matches!(errors[7], CredentialError::PrivateKey(_)), "{:?}", errors[7]);
    outputs.extend(errors.iter().map(shown));
    fake.grant_extra_repo();
    outputs.push(shown(&github.issue(&request(&["acme/api"], Access::Read)).await.unwrap_err()));

    let tokens: Vec<String> = fake.minted().into_iter().map(|m| m.token).collect();
    let jwts = fake.jwts();
    assert!(tokens.len() == 2 && jwts.len() >= 6, "{} tokens, {} JWTs", tokens.len(), jwts.len());
    let secrets: Vec<&str> = tokens.iter().chain(&jwts).map(String::as_str).collect();
    for output in &outputs {
        assert_no_secret(output, &secrets);
    }
}
