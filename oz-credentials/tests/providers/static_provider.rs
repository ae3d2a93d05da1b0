//! `StaticProvider`, and the providers behind one trait object.

use oz_credentials::{
    Access, ActsAs, AppIssuer, CredentialError, CredentialRequest, CredentialScope, CredentialStrategy,
    GitCredentialProvider, GitHubAppProvider, GitLabProvider, ProviderKind, Revocation, RunIdentity, RunUser,
    StaticProvider,
};
use secrecy::SecretString;

use crate::support::{APP_PRIVATE_PEM, assert_no_secret, repo, run_id};

const TEAM: &str = "ghp_team_secret_000000000000";
const ALICE: &str = "ghp_alice_secret_11111111111";

fn request(identity: RunIdentity) -> CredentialRequest {
    CredentialRequest::new(run_id(), [repo("acme/api")], Access::ReadWrite).with_identity(identity)
}

fn identity(strategy: CredentialStrategy, creator: &str, executor: &str) -> RunIdentity {
    RunIdentity { strategy, creator: Some(RunUser::new(creator)), executor: Some(RunUser::new(executor)) }
}

#[tokio::test]
async fn the_team_secret_is_handed_out_unscoped_and_never_revoked() {
    let provider = StaticProvider::new("github.com", "x-access-token").with_team_token(SecretString::from(TEAM));
    let issued = provider.issue(&request(RunIdentity::default())).await.unwrap();
    assert_eq!(issued.provider, ProviderKind::Static);
    assert_eq!(
        (issued.host.as_str(), issued.username.as_str(), issued.expose_token()),
        ("github.com", "x-access-token", TEAM)
    );
    assert_eq!(issued.scope, CredentialScope::Unscoped);
    assert_eq!(issued.expires_at, None);
    assert_eq!(issued.acts_as, ActsAs::TeamSecret);
    assert_eq!(issued.revocation, Revocation::NotRevocable);
    provider.revoke(&issued).await.unwrap();
    assert_no_secret(&format!("{provider:?} {issued:?}"), &[TEAM]);
}

#[tokio::test]
async fn the_acting_user_s_own_secret_wins_over_the_team_s() {
    let provider = StaticProvider::new("github.com", "x-access-token")
        .with_team_token(SecretString::from(TEAM))
        .with_user_token("u-alice", SecretString::from(ALICE));

    let by_executor =
        provider.issue(&request(identity(CredentialStrategy::Executor, "u-bob", "u-alice"))).await.unwrap();
    assert_eq!(by_executor.expose_token(), ALICE);
    assert_eq!(by_executor.acts_as, ActsAs::UserSecret { user_id: "u-alice".into() });

    // The creator (bob) has no secret of his own: the team's.
    let by_creator = provider.issue(&request(identity(CredentialStrategy::Creator, "u-bob", "u-alice"))).await.unwrap();
    assert_eq!(by_creator.expose_token(), TEAM);
    assert_eq!(by_creator.acts_as, ActsAs::TeamSecret);
    assert_no_secret(&format!("{provider:?} {by_executor:?} {by_creator:?}"), &[TEAM, ALICE]);
}

#[tokio::test]
async fn without_a_secret_for_the_run_there_is_a_clear_error() {
    let provider =
        StaticProvider::new("github.com", "x-access-token").with_user_token("u-alice", SecretString::from(ALICE));
    let err = provider.issue(&request(identity(CredentialStrategy::Creator, "u-bob", "u-alice"))).await.unwrap_err();
    assert!(matches!(&err, CredentialError::NoSecret { user, .. } if user == "u-bob"), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no secret is configured for github.com: neither the team's nor one of the acting user (u-bob)"
    );
    let err = provider.issue(&request(RunIdentity::default())).await.unwrap_err();
    assert!(err.to_string().ends_with("(none)"), "{err}");
    assert_no_secret(&format!("{err:?}"), &[ALICE]);
}

#[tokio::test]
async fn a_provider_refuses_to_revoke_what_another_issued() {
    let static_provider = StaticProvider::new("github.com", "x-access-token").with_team_token(SecretString::from(TEAM));
    let github = GitHubAppProvider::builder(AppIssuer::AppId(1), SecretString::from(APP_PRIVATE_PEM)).build().unwrap();
    let gitlab = GitLabProvider::builder("https://gitlab.example.com", SecretString::from("glpat-x")).build().unwrap();
    let providers: Vec<Box<dyn GitCredentialProvider>> = vec![Box::new(github), Box::new(gitlab)];
    let issued = static_provider.issue(&request(RunIdentity::default())).await.unwrap();
    for provider in &providers {
        let err = provider.revoke(&issued).await.unwrap_err();
        assert!(
            matches!(err, CredentialError::WrongProvider { provider: p, issued_by: ProviderKind::Static } if p == provider.kind()),
            "{err:?}"
        );
    }
}
