//! Small validation helpers shared by every domain type: lengths, control characters, paths, env names.

use std::path::{Component, Path};

use crate::error::Error;

/// Refuses strings longer than `max` bytes or containing NUL or other control characters (tab excepted
/// only where `allow_newlines` is set, together with `\n` and `\r`).
pub fn text(field: &str, value: &str, max: usize, allow_newlines: bool) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::invalid(field, format!("is {} bytes long; the limit is {max}", value.len())));
    }
    let bad = value.chars().find(|c| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t')));
    if let Some(c) = bad {
        return Err(Error::invalid(field, format!("contains the control character {:?}", c)));
    }
    Ok(())
}

/// A path inside a sandbox: relative, no `..`, no NUL or control characters, at most 4096 bytes.
pub fn relative_path(field: &str, value: &str) -> Result<(), Error> {
    path_common(field, value)?;
    let path = Path::new(value);
    if path.is_absolute() {
        return Err(Error::invalid(field, format!("{value:?} must be a relative path")));
    }
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::invalid(field, format!("{value:?} must not contain '..'")));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::invalid(field, format!("{value:?} must be a relative path")));
            }
        }
    }
    Ok(())
}

/// A mount point inside a sandbox: absolute, no `..`, not `/` itself, no NUL or control characters.
pub fn absolute_path(field: &str, value: &str) -> Result<(), Error> {
    path_common(field, value)?;
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(Error::invalid(field, format!("{value:?} must be an absolute path")));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::invalid(field, format!("{value:?} must not contain '..'")));
    }
    if path.components().count() < 2 {
        return Err(Error::invalid(field, "must not be the root directory"));
    }
    Ok(())
}

fn path_common(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    text(field, value, 4096, false)
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes.
pub fn env_name(field: &str, name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 256 {
        return Err(Error::invalid(
            field,
            format!(
                "{name:?} is not a valid variable name (letters, digits and '_', not starting with a digit, at most 256 bytes)"
            ),
        ));
    }
    Ok(())
}

/// An environment variable value: no NUL (the one byte a process environment cannot carry), at most 128 KiB.
pub fn env_value(field: &str, value: &str) -> Result<(), Error> {
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain a NUL byte"));
    }
    if value.len() > 128 * 1024 {
        return Err(Error::invalid(field, format!("is {} bytes long; the limit is 131072", value.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        for ok in ["a", "a/b", "./a", "a/./b", "repo.git"] {
            relative_path("p", ok).unwrap();
        }
        for bad in ["", "/etc", "../x", "a/../../b", "a\0b", "a\nb", &"a".repeat(5000)] {
            assert!(relative_path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn absolute_paths() {
        absolute_path("m", "/agent").unwrap();
        absolute_path("m", "/opt/tools").unwrap();
        for bad in ["", "/", "agent", "/a/../etc", "/a\u{7}"] {
            assert!(absolute_path("m", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_names_and_values() {
        env_name("e", "PATH").unwrap();
        env_name("e", "_x1").unwrap();
        for bad in ["", "1A", "A-B", "A=B", "A B", "É"] {
            assert!(env_name("e", bad).is_err(), "{bad:?}");
        }
        env_value("v", "anything = goes\n").unwrap();
        assert!(env_value("v", "a\0").is_err());
    }
}
