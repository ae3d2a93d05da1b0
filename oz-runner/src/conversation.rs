//! A run's conversation across its executions. A follow-up to a run that ended continues it in a
//! new execution, in a new sandbox: what the agent kept of its conversation in the execution before
//! is carried over, so it goes on where it was rather than from nothing.
//!
//! What is kept: the folder `OZ_CONVERSATION_DIR` (any harness may keep what it wants there), and
//! for the presets the files their own resume reads (`claude --continue`, `codex exec resume
//! --last`, `gemini --resume latest`), where each CLI keeps them. At the end of an execution the
//! runner packs them (a gzipped tar, at most [`MAX_CONVERSATION_BYTES`]) and the control plane
//! keeps the archive sealed; the next execution's runner unpacks it before the harness starts.
//! Only regular files and folders are packed and unpacked, each under its own root: no link, no
//! absolute path, no `..`, no preset entry but the ones listed here.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use oz_core::wire::callbacks::MAX_CONVERSATION_BYTES;

use crate::harness::Harness;

/// The archive's folder of `OZ_CONVERSATION_DIR`.
const OWN: &str = "conversation";
/// The archive's folder of a preset's session files (relative to where the CLI keeps its state).
const PRESET: &str = "harness";
/// The most an archive may unpack to (an archive is made by a runner, but the files in it by the
/// agent: a bound, not a trust).
const MAX_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;
/// The most files and folders an archive may unpack.
const MAX_ENTRIES: usize = 100_000;

/// Why a conversation could not be packed or unpacked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConversationError {
    /// Reading or writing the files.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// More than the control plane keeps.
    #[error(
        "the conversation packs to more than {limit} bytes: it is not kept, and a follow-up after the run ends starts without it"
    )]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// An archive that is not one this runner makes.
    #[error("the kept conversation cannot be unpacked: {0}")]
    Malformed(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ConversationError + 'a {
    move |source| ConversationError::Io { what, path: path.display().to_string(), source }
}

/// Where a run's conversation lives in this execution.
#[derive(Debug)]
pub struct Conversation {
    /// `OZ_CONVERSATION_DIR`.
    dir: PathBuf,
    /// Where the preset keeps its state, and the entries of it that hold its sessions.
    preset: Option<(PathBuf, &'static [&'static str])>,
}

impl Conversation {
    /// Makes `OZ_CONVERSATION_DIR` in `run_dir` (the runner's private folder); `lookup` reads the
    /// harness's environment (where a preset keeps its state: `HOME`, or the CLI's own variable).
    pub fn new(
        run_dir: &Path,
        harness: &Harness,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConversationError> {
        let dir = run_dir.join("conversation");
        std::fs::create_dir_all(&dir).map_err(io("could not make", &dir))?;
        Ok(Self { dir, preset: preset_state(harness, lookup) })
    }

    /// `OZ_CONVERSATION_DIR`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Packs what is kept, for the control plane: `None` when there is nothing.
    pub fn pack(&self) -> Result<Option<Vec<u8>>, ConversationError> {
        let bounded = Bounded { out: Vec::new(), limit: MAX_CONVERSATION_BYTES };
        let gz = flate2::write::GzEncoder::new(bounded, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        let mut files = 0;
        files += add_tree(&mut tar, &self.dir, Path::new(OWN))?;
        if let Some((base, entries)) = &self.preset {
            for entry in entries.iter() {
                files += add_tree(&mut tar, &base.join(entry), &Path::new(PRESET).join(entry))?;
            }
        }
        let finish = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::FileTooLarge => ConversationError::TooLarge { limit: MAX_CONVERSATION_BYTES },
            _ => ConversationError::Io { what: "could not pack", path: self.dir.display().to_string(), source: e },
        };
        let gz = tar.into_inner().map_err(finish)?;
        let bounded = gz.finish().map_err(finish)?;
        Ok((files > 0).then_some(bounded.out))
    }

    /// Unpacks what an execution before kept; how many files.
    pub fn unpack(&self, archive: &[u8]) -> Result<usize, ConversationError> {
        let gz = flate2::read::GzDecoder::new(archive);
        let mut tar = tar::Archive::new(gz.take(MAX_UNPACKED_BYTES));
        let malformed = |e: std::io::Error| ConversationError::Malformed(e.to_string());
        let mut files = 0;
        for (n, entry) in tar.entries().map_err(malformed)?.enumerate() {
            if n >= MAX_ENTRIES {
                return Err(ConversationError::Malformed(format!("more than {MAX_ENTRIES} files")));
            }
            let mut entry = entry.map_err(malformed)?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir()) {
                continue;
            }
            let path = entry.path().map_err(malformed)?.into_owned();
            let Some((root, target)) = self.target_of(&path) else {
                return Err(ConversationError::Malformed(format!(
                    "{} is not a place a conversation is kept",
                    path.display()
                )));
            };
            // Nothing is written through a link that was there before (the image's, or a setup
            // command's): no folder on the way is one, and a link in the file's place is replaced.
            if let Some(link) = linked_ancestor(&root, &target) {
                return Err(ConversationError::Malformed(format!("{} is a link", link.display())));
            }
            if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
                std::fs::remove_file(&target).map_err(io("could not replace", &target))?;
            }
            if kind.is_dir() {
                std::fs::create_dir_all(&target).map_err(io("could not make", &target))?;
                continue;
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io("could not make", parent))?;
            }
            // `unpack` keeps the file's time (a CLI may clean up sessions it thinks are old) and
            // mode, and writes no link.
            entry.unpack(&target).map_err(io("could not write", &target))?;
            files += 1;
        }
        Ok(files)
    }

    /// Where an archive's path goes, with the root it goes under: `OZ_CONVERSATION_DIR`, or the
    /// preset's state folder for one of its session entries; `None` for anything else.
    fn target_of(&self, path: &Path) -> Option<(PathBuf, PathBuf)> {
        let mut parts = path.components();
        let root = match parts.next()? {
            Component::Normal(root) => root.to_str()?,
            _ => return None,
        };
        let rest: Vec<&std::ffi::OsStr> = parts
            .map(|c| match c {
                Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let rest: PathBuf = rest.iter().collect();
        match root {
            OWN => Some((self.dir.clone(), self.dir.join(rest))),
            PRESET => {
                let (base, entries) = self.preset.as_ref()?;
                let first = rest.components().next()?.as_os_str().to_str()?;
                entries.contains(&first).then(|| (base.clone(), base.join(&rest)))
            }
            _ => None,
        }
    }
}

/// The first folder between `root` (excluded) and `target` (excluded) that is a link, if any.
fn linked_ancestor(root: &Path, target: &Path) -> Option<PathBuf> {
    let rest = target.strip_prefix(root).ok()?;
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rest.components().collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(at);
        }
    }
    None
}

/// Where a preset keeps its sessions: its state folder and the entries of it its resume reads.
/// Claude Code: `$CLAUDE_CONFIG_DIR` or `~/.claude`, `projects/<the working folder>/<session>.jsonl`.
/// Codex: `$CODEX_HOME` or `~/.codex`, `sessions/YYYY/MM/DD/rollout-*.jsonl` and its index.
/// Gemini CLI: `${GEMINI_CLI_HOME:-$HOME}/.gemini`, `tmp/<project>/chats/` and `projects.json`.
/// Each resumes the latest session of the working folder, which is the same path in every
/// execution of a run on one backend.
fn preset_state(
    harness: &Harness,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<(PathBuf, &'static [&'static str])> {
    let home = || lookup("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let var = |name: &str| lookup(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    match harness {
        Harness::Command(_) => None,
        Harness::Claude => {
            Some((var("CLAUDE_CONFIG_DIR").or_else(|| home().map(|h| h.join(".claude")))?, &["projects"]))
        }
        Harness::Codex => Some((
            var("CODEX_HOME").or_else(|| home().map(|h| h.join(".codex")))?,
            &["sessions", "session_index.jsonl"],
        )),
        Harness::Gemini => Some((var("GEMINI_CLI_HOME").or_else(home)?.join(".gemini"), &["tmp", "projects.json"])),
    }
}

/// Adds the files and folders under `from` (if it exists) to the archive under `to`; how many files.
fn add_tree<W: Write>(tar: &mut tar::Builder<W>, from: &Path, to: &Path) -> Result<usize, ConversationError> {
    let meta = match std::fs::symlink_metadata(from) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("could not read", from)(e)),
    };
    let too_large = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::FileTooLarge => ConversationError::TooLarge { limit: MAX_CONVERSATION_BYTES },
        _ => ConversationError::Io { what: "could not pack", path: from.display().to_string(), source: e },
    };
    if meta.is_file() {
        let mut file = std::fs::File::open(from).map_err(io("could not read", from))?;
        tar.append_file(to, &mut file).map_err(too_large)?;
        return Ok(1);
    }
    if !meta.is_dir() {
        return Ok(0);
    }
    tar.append_dir(to, from).map_err(too_large)?;
    let mut names: Vec<_> = std::fs::read_dir(from)
        .map_err(io("could not read", from))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut files = 0;
    for name in names {
        files += add_tree(tar, &from.join(&name), &to.join(&name))?;
    }
    Ok(files)
}

/// A writer that refuses to grow past `limit` (`FileTooLarge`): packing stops as soon as the
/// archive would be larger than the control plane keeps.
struct Bounded {
    out: Vec<u8>,
    limit: usize,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "the conversation is too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(home: &Path) -> impl Fn(&str) -> Option<String> + '_ {
        move |name| (name == "HOME").then(|| home.display().to_string())
    }

    #[test]
    fn what_one_execution_keeps_the_next_finds_where_it_was() {
        let before = tempfile::tempdir().unwrap();
        let home = before.path().join("home");
        let first = Conversation::new(&before.path().join("run"), &Harness::Claude, env(&home)).unwrap();
        std::fs::write(first.dir().join("notes.md"), "step 1 done").unwrap();
        let project = home.join(".claude/projects/-workspace");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("s1.jsonl"), "{\"turn\":1}\n").unwrap();
        // Not a session of claude's: stays where it is.
        std::fs::write(home.join(".claude/settings.json"), "{}").unwrap();
        let archive = first.pack().unwrap().unwrap();

        let after = tempfile::tempdir().unwrap();
        let home = after.path().join("home");
        let next = Conversation::new(&after.path().join("run"), &Harness::Claude, env(&home)).unwrap();
        assert_eq!(next.unpack(&archive).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(next.dir().join("notes.md")).unwrap(), "step 1 done");
        assert_eq!(
            std::fs::read_to_string(home.join(".claude/projects/-workspace/s1.jsonl")).unwrap(),
            "{\"turn\":1}\n"
        );
        assert!(!home.join(".claude/settings.json").exists());
    }

    #[test]
    fn nothing_kept_packs_to_nothing_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let c = Conversation::new(dir.path(), &Harness::Command(vec!["x".into()]), |_| None).unwrap();
        assert!(c.pack().unwrap().is_none());
        std::fs::write(dir.path().join("secret"), "not for the archive").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), c.dir().join("link")).unwrap();
        assert!(c.pack().unwrap().is_none(), "a link is not packed, nor what it points to");
    }

    #[test]
    fn an_archive_cannot_write_outside_the_kept_places() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let c = Conversation::new(&dir.path().join("run"), &Harness::Claude, env(&home)).unwrap();
        for path in ["harness/settings.json", "elsewhere/x", "harness/../../x"] {
            let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o600);
            header.set_entry_type(tar::EntryType::Regular);
            // Written raw: the tar crate's own setters refuse `..`, which a hostile archive need not.
            let name = path.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            tar.append(&header, &b"x"[..]).unwrap();
            let archive = tar.into_inner().unwrap().finish().unwrap();
            let error = c.unpack(&archive).unwrap_err();
            assert!(matches!(error, ConversationError::Malformed(_)), "{path}: {error}");
        }
        assert!(!home.join(".claude/settings.json").exists());
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn nothing_is_written_through_a_link_found_in_the_sandbox() {
        let before = tempfile::tempdir().unwrap();
        let home = before.path().join("home");
        let first = Conversation::new(&before.path().join("run"), &Harness::Claude, env(&home)).unwrap();
        std::fs::create_dir_all(home.join(".claude/projects/p")).unwrap();
        std::fs::write(home.join(".claude/projects/p/s.jsonl"), "kept").unwrap();
        std::fs::write(first.dir().join("notes"), "kept").unwrap();
        let archive = first.pack().unwrap().unwrap();

        let after = tempfile::tempdir().unwrap();
        let outside = after.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let home = after.path().join("home");
        std::fs::create_dir_all(home.join(".claude")).unwrap();
        // A folder of the archive is a link out here: the link is replaced by a folder.
        std::os::unix::fs::symlink(&outside, home.join(".claude/projects")).unwrap();
        let next = Conversation::new(&after.path().join("run"), &Harness::Claude, env(&home)).unwrap();
        next.unpack(&archive).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing went through the link");
        assert!(std::fs::symlink_metadata(home.join(".claude/projects")).unwrap().is_dir());
        // A folder on the way that is a link, and not in the archive as such: refused.
        let (base, entries) = next.preset.clone().unwrap();
        let only_file = Conversation { dir: next.dir.clone(), preset: Some((base, entries)) };
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o600);
        tar.append_data(&mut header, "harness/projects/q/s.jsonl", &b"x"[..]).unwrap();
        let crafted = tar.into_inner().unwrap().finish().unwrap();
        std::os::unix::fs::symlink(&outside, home.join(".claude/projects/q")).unwrap();
        let refused = only_file.unpack(&crafted).unwrap_err();
        assert!(matches!(&refused, ConversationError::Malformed(m) if m.contains("is a link")), "{refused}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing went through the link");
        // A link in a file's place is replaced, not written through.
        std::fs::remove_dir_all(home.join(".claude/projects")).unwrap();
        std::fs::create_dir_all(home.join(".claude/projects/p")).unwrap();
        std::fs::write(outside.join("victim"), "untouched").unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), home.join(".claude/projects/p/s.jsonl")).unwrap();
        next.unpack(&archive).unwrap();
        assert_eq!(std::fs::read_to_string(outside.join("victim")).unwrap(), "untouched");
        assert_eq!(std::fs::read_to_string(home.join(".claude/projects/p/s.jsonl")).unwrap(), "kept");
    }

    #[test]
    fn a_conversation_larger_than_kept_is_refused_while_packing() {
        let dir = tempfile::tempdir().unwrap();
        let c = Conversation::new(dir.path(), &Harness::Command(vec!["x".into()]), |_| None).unwrap();
        // Random bytes do not compress.
        let mut big = vec![0u8; MAX_CONVERSATION_BYTES + 1024];
        getrandom_fill(&mut big);
        std::fs::write(c.dir().join("big"), &big).unwrap();
        assert!(matches!(c.pack().unwrap_err(), ConversationError::TooLarge { .. }));
    }

    fn getrandom_fill(buf: &mut [u8]) {
        // xorshift: incompressible enough for gzip, no dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }

    #[test]
    fn presets_keep_their_sessions_where_their_cli_does() {
        let home = Path::new("/h");
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let of = |h: &Harness, vars| preset_state(h, lookup(vars)).map(|(p, e)| (p, e.to_vec()));
        let just_home: &'static [(&str, &str)] = &[("HOME", "/h")];
        assert_eq!(of(&Harness::Claude, just_home), Some((home.join(".claude"), vec!["projects"])));
        assert_eq!(of(&Harness::Claude, &[("HOME", "/h"), ("CLAUDE_CONFIG_DIR", "/c")]).unwrap().0, Path::new("/c"));
        assert_eq!(
            of(&Harness::Codex, just_home),
            Some((home.join(".codex"), vec!["sessions", "session_index.jsonl"]))
        );
        assert_eq!(
            of(&Harness::Gemini, &[("HOME", "/h"), ("GEMINI_CLI_HOME", "/g")]).unwrap().0,
            Path::new("/g/.gemini")
        );
        assert_eq!(of(&Harness::Command(vec!["x".into()]), just_home), None);
        assert_eq!(of(&Harness::Claude, &[]), None);
    }
}
