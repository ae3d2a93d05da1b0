//! Team secrets (`/secrets`, our extension): names and times only. A value goes in through
//! [`SecretWrite`] and never comes back out of the API; runs get theirs through their workload token.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A secret as the API shows it: never its value.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretItem {
    /// Its name (what environments and agent configs refer to it by).
    pub name: String,
    /// When it was first set.
    pub created_at: Timestamp,
    /// When its value last changed.
    pub updated_at: Timestamp,
    /// Who set it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// `{"secrets": [...]}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretList {
    /// The team's secrets, by name.
    pub secrets: Vec<SecretItem>,
}

/// `PUT /secrets/{name}`: the value (write-only).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretWrite {
    /// The value.
    pub value: String,
}

impl fmt::Debug for SecretWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretWrite { value: [REDACTED] }")
    }
}

/// Checks a secret's name: 1-128 of letters, digits, `_`, `-`, `.`, starting with a letter or digit.
pub fn validate_secret_name(field: &str, name: &str) -> Result<(), crate::Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(crate::Error::invalid(
            field,
            format!("{name:?}: 1-128 of letters, digits, _ - . (starting with a letter or digit)"),
        ))
    }
}
