//! Session sharing, as Oz defines it: who may watch a run (view: its item, events, transcript and
//! live terminal) and who may steer it (edit: follow-ups, interrupt, cancel). A run made with no
//! sharing is its team's (every member may steer it, a viewer may watch), as today; one made with
//! `share` targets is only its creator's, its team's admins' and those targets'. `public_access`
//! opens it, through its link, to anyone signed in to the server, of any team.
//!
//! Whatever a share grants, a caller never gets more than its role allows: a `viewer` only views.
//!
//! ```
//! use oz_core::sharing::{Access, Asker, RunSharing, Share};
//! use oz_core::wire::admin::Role;
//!
//! let shares: Vec<Share> = ["team:view", "alice:edit"].iter().map(|s| s.parse().unwrap()).collect();
//! let sharing = RunSharing::resolve(&shares, None, |name| (name == "alice").then(|| "u-alice".to_owned())).unwrap();
//! let member = |user: &'static str| Asker { team_id: "t1", user_id: Some(user), role: Role::Member };
//! assert_eq!(sharing.access_of("t1", Some("u-bob"), &member("u-alice")), Some(Access::Edit));
//! assert_eq!(sharing.access_of("t1", Some("u-bob"), &member("u-carol")), Some(Access::View));
//! let stranger = Asker { team_id: "t2", user_id: Some("u-dan"), role: Role::Admin };
//! assert_eq!(sharing.access_of("t1", Some("u-bob"), &stranger), None);
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::wire::admin::Role;

/// What a share grants. Ordered: edit includes view.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Watch: the run, its events, its transcript, its live terminal.
    View,
    /// And steer: follow-ups, interrupt, cancel.
    Edit,
}

impl Access {
    /// The wire (and stored) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::View => "view",
            Access::Edit => "edit",
        }
    }

    /// The stored name back; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "view" => Some(Access::View),
            "edit" => Some(Access::Edit),
            _ => None,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `session_sharing.public_access`: what anyone signed in to the server who has the run's link may
/// do.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PublicAccess {
    /// Watch.
    Viewer,
    /// Watch and steer.
    Editor,
}

impl PublicAccess {
    /// What it grants.
    pub fn access(self) -> Access {
        match self {
            PublicAccess::Viewer => Access::View,
            PublicAccess::Editor => Access::Edit,
        }
    }
}

/// A run config's `session_sharing`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSharing {
    /// Anyone signed in to this server who has the run's link, of any team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_access: Option<PublicAccess>,
    /// Our extension: the `--share` targets (`self`, `team`, `team:view`, `team:edit`, a user's name
    /// or id, `USER:edit`). Given, the run is only its creator's, its team's admins' and theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub share: Vec<String>,
}

impl SessionSharing {
    /// Its `share` targets, parsed.
    pub fn shares(&self) -> Result<Vec<Share>, ShareError> {
        self.share.iter().map(|s| s.parse()).collect()
    }
}

/// Who a share names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareTarget {
    /// The run's creator (`--share` alone, or `self`): nobody else but the team's admins.
    Creator,
    /// Every member of the run's team.
    Team,
    /// One user of the run's team, by name or id.
    User(String),
}

/// One `--share` target and what it grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// Who.
    pub target: ShareTarget,
    /// What.
    pub access: Access,
}

/// A share target that does not parse, or names nobody.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// Not `self`, `team[:view|:edit]` or `USER[:view|:edit]`.
    #[error("share target {0:?} is not self, team, team:view, team:edit, a user, or USER:view / USER:edit")]
    Malformed(String),
    /// A user the run's team does not have.
    #[error("share target {0:?}: the team has no such user")]
    UnknownUser(String),
    /// More targets than a run may have.
    #[error("a run may be shared with at most {max} targets, got {got}")]
    TooMany {
        /// The limit.
        max: usize,
        /// How many were given.
        got: usize,
    },
}

/// The most share targets a run may have.
pub const MAX_SHARES: usize = 50;

impl FromStr for Share {
    type Err = ShareError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || ShareError::Malformed(text.chars().take(200).collect());
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "self" {
            return Ok(Share { target: ShareTarget::Creator, access: Access::Edit });
        }
        let (who, access) = match trimmed.rsplit_once(':') {
            Some((who, "view")) => (who, Access::View),
            Some((who, "edit")) => (who, Access::Edit),
            Some(_) => return Err(malformed()),
            None => (trimmed, Access::View),
        };
        if who.is_empty() || who.len() > 200 || who.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed());
        }
        let target = if who == "team" { ShareTarget::Team } else { ShareTarget::User(who.to_owned()) };
        Ok(Share { target, access })
    }
}

/// A run's sharing, its users resolved to ids: what each kind of caller may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSharing {
    /// Its team's members (within their role); `None`: only the creator, admins and `users`.
    pub team: Option<Access>,
    /// Users of its team, by id.
    pub users: Vec<(String, Access)>,
    /// Anyone signed in to the server who has the run's link.
    pub public: Option<Access>,
}

impl Default for RunSharing {
    /// A run with no sharing: its team's.
    fn default() -> Self {
        Self { team: Some(Access::Edit), users: Vec::new(), public: None }
    }
}

/// Who asks about a run.
#[derive(Clone, Copy, Debug)]
pub struct Asker<'a> {
    /// The caller's team.
    pub team_id: &'a str,
    /// The user its key acts as.
    pub user_id: Option<&'a str>,
    /// Its role in its team.
    pub role: Role,
}

impl RunSharing {
    /// The sharing of a run made with `shares` and `public_access`; `user_id` finds a user of the
    /// run's team by name or id.
    pub fn resolve(
        shares: &[Share],
        public_access: Option<PublicAccess>,
        mut user_id: impl FnMut(&str) -> Option<String>,
    ) -> Result<Self, ShareError> {
        if shares.len() > MAX_SHARES {
            return Err(ShareError::TooMany { max: MAX_SHARES, got: shares.len() });
        }
        let public = public_access.map(PublicAccess::access);
        if shares.is_empty() {
            return Ok(Self { public, ..Self::default() });
        }
        let mut sharing = Self { team: None, users: Vec::new(), public };
        for share in shares {
            match &share.target {
                ShareTarget::Creator => {}
                ShareTarget::Team => sharing.team = sharing.team.max(Some(share.access)),
                ShareTarget::User(who) => {
                    let id = user_id(who).ok_or_else(|| ShareError::UnknownUser(who.clone()))?;
                    match sharing.users.iter_mut().find(|(u, _)| *u == id) {
                        Some((_, access)) => *access = (*access).max(share.access),
                        None => sharing.users.push((id, share.access)),
                    }
                }
            }
        }
        Ok(sharing)
    }

    /// What `asker` may do with a run of `run_team` made by `creator_id`; `None`: the run is not
    /// theirs to see (not found, to them).
    pub fn access_of(&self, run_team: &str, creator_id: Option<&str>, asker: &Asker<'_>) -> Option<Access> {
        let ceiling = if asker.role >= Role::Member { Access::Edit } else { Access::View };
        let mut best = self.public;
        if asker.team_id == run_team {
            if asker.role == Role::Admin {
                return Some(Access::Edit);
            }
            best = best.max(self.team);
            if let Some(me) = asker.user_id {
                if creator_id == Some(me) {
                    best = Some(Access::Edit);
                }
                for (user, access) in &self.users {
                    if user == me {
                        best = best.max(Some(*access));
                    }
                }
            }
        }
        best.map(|access| access.min(ceiling))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Share, ShareError> {
        text.parse()
    }

    #[test]
    fn share_targets_parse_as_oz_spells_them() {
        assert_eq!(parse("").unwrap(), Share { target: ShareTarget::Creator, access: Access::Edit });
        assert_eq!(parse("self").unwrap().target, ShareTarget::Creator);
        assert_eq!(parse("team").unwrap(), Share { target: ShareTarget::Team, access: Access::View });
        assert_eq!(parse("team:view").unwrap().access, Access::View);
        assert_eq!(parse("team:edit").unwrap(), Share { target: ShareTarget::Team, access: Access::Edit });
        assert_eq!(
            parse("ann@example.com:edit").unwrap(),
            Share { target: ShareTarget::User("ann@example.com".into()), access: Access::Edit }
        );
        assert_eq!(parse("ann").unwrap().access, Access::View);
        for bad in ["team:admin", "ann:", ":edit", "two words", "a\u{7}b"] {
            assert!(matches!(parse(bad), Err(ShareError::Malformed(_))), "{bad}");
        }
    }

    fn asker(team: &'static str, user: &'static str, role: Role) -> Asker<'static> {
        Asker { team_id: team, user_id: Some(user), role }
    }

    #[test]
    fn a_run_with_no_sharing_is_its_teams_within_each_role() {
        let sharing = RunSharing::resolve(&[], None, |_| None).unwrap();
        assert_eq!(sharing.access_of("t", None, &asker("t", "m", Role::Member)), Some(Access::Edit));
        assert_eq!(sharing.access_of("t", None, &asker("t", "v", Role::Viewer)), Some(Access::View));
        assert_eq!(sharing.access_of("t", None, &asker("other", "a", Role::Admin)), None);
    }

    #[test]
    fn shared_runs_are_their_creators_admins_and_targets_only() {
        let shares = [parse("self").unwrap()];
        let sharing = RunSharing::resolve(&shares, None, |_| None).unwrap();
        assert_eq!(sharing.access_of("t", Some("me"), &asker("t", "me", Role::Member)), Some(Access::Edit));
        assert_eq!(sharing.access_of("t", Some("me"), &asker("t", "you", Role::Member)), None);
        assert_eq!(sharing.access_of("t", Some("me"), &asker("t", "boss", Role::Admin)), Some(Access::Edit));
        // A viewer who made a run (before a demotion) still only views it.
        assert_eq!(sharing.access_of("t", Some("me"), &asker("t", "me", Role::Viewer)), Some(Access::View));

        let shares = [parse("team").unwrap(), parse("ann:edit").unwrap(), parse("ann").unwrap()];
        let sharing = RunSharing::resolve(&shares, None, |n| Some(format!("id-{n}"))).unwrap();
        assert_eq!(sharing.users, vec![("id-ann".to_owned(), Access::Edit)], "the widest share of a user holds");
        assert_eq!(sharing.access_of("t", Some("me"), &asker("t", "id-ann", Role::Member)), Some(Access::Edit));
        assert_eq!(sharing.access_of("t", Some("me"), &asker("t", "id-ann", Role::Viewer)), Some(Access::View));
        assert_eq!(sharing.access_of("t", Some("me"), &asker("t", "bob", Role::Member)), Some(Access::View));
        assert_eq!(sharing.access_of("t", Some("me"), &asker("u", "id-ann", Role::Member)), None, "ids are per team");
        assert_eq!(
            RunSharing::resolve(&[parse("nobody").unwrap()], None, |_| None),
            Err(ShareError::UnknownUser("nobody".into()))
        );
    }

    #[test]
    fn public_access_opens_a_run_to_any_team_within_the_callers_role() {
        let sharing = RunSharing::resolve(&[parse("self").unwrap()], Some(PublicAccess::Editor), |_| None).unwrap();
        assert_eq!(sharing.access_of("t", Some("me"), &asker("u", "x", Role::Member)), Some(Access::Edit));
        assert_eq!(sharing.access_of("t", Some("me"), &asker("u", "x", Role::Viewer)), Some(Access::View));
        let viewers = RunSharing::resolve(&[], Some(PublicAccess::Viewer), |_| None).unwrap();
        assert_eq!(viewers.access_of("t", None, &asker("u", "x", Role::Admin)), Some(Access::View));
        assert_eq!(
            viewers.access_of("t", None, &asker("t", "m", Role::Member)),
            Some(Access::Edit),
            "its team's still"
        );
    }

    #[test]
    fn session_sharing_reads_oz_config_and_our_share_list() {
        let parsed: SessionSharing =
            serde_json::from_str(r#"{"public_access": "VIEWER", "share": ["team:edit"]}"#).unwrap();
        assert_eq!(parsed.public_access, Some(PublicAccess::Viewer));
        assert_eq!(parsed.shares().unwrap(), vec![Share { target: ShareTarget::Team, access: Access::Edit }]);
        assert!(serde_json::from_str::<SessionSharing>(r#"{"public_access": "OWNER"}"#).is_err());
    }
}
