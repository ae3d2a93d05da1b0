//! Asking a clone's `origin` which commit its `HEAD` is at, in this process (the built-in git: no
//! `git` process of ours). This is on a warm task's critical path: the handoff must know whether the
//! repo moved since the sandbox was prepared before the agent may start.
//!
//! [`OpenRemote`] does the costly part before the task exists: while a warm sandbox waits, it holds a
//! connection with the protocol-v2 handshake done, so the handoff's question is one `ls-refs` round
//! trip. [`builtin_remote_head`] is the same question on a new connection (with the run's
//! credentials), for a remote that could not be held open.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gix::protocol::transport::Protocol;
use gix::protocol::transport::client::Capabilities;
use gix::protocol::transport::client::blocking_io::{Transport, connect};
use oz_core::credentials::GitCredential;

fn chain(e: &dyn std::error::Error) -> String {
    oz_core::error::error_chain(e)
}

/// The object `HEAD` names among `refs` (the tag's target for an annotated tag), hex.
fn head_in<'a>(refs: impl IntoIterator<Item = &'a gix::protocol::handshake::Ref>) -> Option<String> {
    refs.into_iter().find_map(|r| {
        let (name, target, peeled) = r.unpack();
        (name == "HEAD").then(|| peeled.or(target).map(|id| id.to_hex().to_string())).flatten()
    })
}

/// The commit the `origin` of the clone in `dir` has at its HEAD, asked on a new connection (a
/// handshake and `ls-refs`; a local remote still gets its `git-upload-pack`). `None` when the
/// remote names no HEAD.
pub fn builtin_remote_head(dir: &Path, credentials: Arc<Vec<GitCredential>>) -> Result<Option<String>, String> {
    let repo = gix::open_opts(dir, gix::open::Options::isolated()).map_err(|e| chain(&e))?;
    let remote = repo.find_remote("origin").map_err(|e| chain(&e))?;
    let mut connection = remote.connect(gix::remote::Direction::Fetch).map_err(|e| chain(&e))?;
    connection.set_credentials(crate::clone::credential_answers(credentials));
    let head =
        gix::refspec::parse("HEAD".into(), gix::refspec::parse::Operation::Fetch).map_err(|e| chain(&e))?.to_owned();
    let options = gix::remote::ref_map::Options { extra_refspecs: vec![head], ..Default::default() };
    let (map, _) = connection.ref_map(gix::progress::Discard, options).map_err(|e| format!("{e:#}"))?;
    Ok(map.remote_refs.iter().find_map(|r| head_in([r])))
}

/// A connection to a clone's `origin`, opened while a warm sandbox waits for its task, with the
/// protocol-v2 handshake done: for a local remote its `git-upload-pack` is running; over HTTP(S) the
/// capabilities are fetched (the `GET .../info/refs` round trip is saved; the client's pool drops an
/// idle connection after 90 s, so after a longer wait the `ls-refs` request connects again). Other
/// transports (ssh, git daemon) are not held.
///
/// It holds no credential: a remote that asks for one is not held open (the handoff then asks on a
/// new connection with the run's credentials). Nothing it learns before the handoff can be stale: a
/// v2 handshake carries no refs, and `ls-refs` reads them when it is sent. A v1 server, whose refs
/// come with the handshake, is not held; a local remote replaced by a rename is not asked.
pub struct OpenRemote {
    transport: gix::protocol::SendFlushOnDrop<Box<dyn Transport + Send>>,
    capabilities: Capabilities,
    /// For a local remote, its folder and the (device, inode) it had when connected: its
    /// `git-upload-pack` reads the folder it started in, so a remote replaced by a rename since is
    /// not asked on this connection.
    local: Option<(PathBuf, (u64, u64))>,
}

/// The (device, inode) of `path`.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl std::fmt::Debug for OpenRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRemote").field("url", &self.transport.inner.to_url()).finish_non_exhaustive()
    }
}

impl OpenRemote {
    /// Connects to the `origin` of the clone in `dir` and shakes hands, without credentials.
    /// Blocking.
    pub fn connect(dir: &Path) -> Result<Self, String> {
        let repo = gix::open_opts(dir, gix::open::Options::isolated()).map_err(|e| chain(&e))?;
        let remote = repo.find_remote("origin").map_err(|e| chain(&e))?;
        let (url, _) = remote.sanitized_url_and_version(gix::remote::Direction::Fetch).map_err(|e| format!("{e:#}"))?;
        // A local process or a request that fails fast only: an ssh or git-daemon connection idle
        // for hours may be dropped silently on the way (NAT), and asking on it would then hang
        // in TCP retransmissions instead of failing.
        let local = match url.scheme {
            gix::url::Scheme::File => {
                let folder = gix::path::from_bstring(url.path.clone()).map_err(|e| format!("{e:#}"))?;
                let id = identity(&folder).ok_or_else(|| format!("{} cannot be read", folder.display()))?;
                Some((folder, id))
            }
            gix::url::Scheme::Http | gix::url::Scheme::Https => None,
            other => return Err(format!("a {other} remote is not held open")),
        };
        let options = connect::Options { version: Protocol::V2, ..Default::default() };
        let mut transport = connect::connect(url.clone(), options).map_err(|e| format!("{e:#}"))?;
        let url_text = url.to_bstring();
        if let Some(config) = repo
            .transport_options(url_text.as_slice(), remote.name().map(|n| n.as_bstr()))
            .map_err(|e| format!("{e:#}"))?
        {
            transport.configure(&*config).map_err(|e| format!("{e:#}"))?;
        }
        let mut transport = gix::protocol::SendFlushOnDrop::new(transport, false);
        let handshake = gix::protocol::handshake(
            &mut transport.inner,
            gix::protocol::transport::Service::UploadPack,
            |_| Ok(None),
            Vec::new(),
            &mut gix::progress::Discard,
        )
        .map_err(|e| format!("{e:#}"))?;
        if handshake.server_protocol_version != Protocol::V2 {
            return Err(format!(
                "the remote speaks protocol {:?}: its refs come with the handshake and would be stale at the handoff",
                handshake.server_protocol_version
            ));
        }
        Ok(Self { transport, capabilities: handshake.capabilities, local })
    }

    /// The commit the remote's HEAD is at now: one `ls-refs`. Blocking; the connection is closed
    /// after it (one question is all a warm sandbox asks).
    pub fn remote_head(mut self) -> Result<Option<String>, String> {
        if let Some((folder, id)) = &self.local
            && identity(folder) != Some(*id)
        {
            return Err(format!("{} was replaced since the connection was opened", folder.display()));
        }
        let mut prefixes = gix::protocol::ls_refs::RefPrefixes::new();
        prefixes.extend(["HEAD".into()]);
        let agent = ("agent", Some(gix::protocol::agent(concat!("oz/", env!("CARGO_PKG_VERSION")))));
        let refs = gix::protocol::LsRefsCommand::new(Some(prefixes), &self.capabilities, agent)
            .invoke_blocking(&mut self.transport.inner, &mut gix::progress::Discard, false)
            .map_err(|e| format!("{e:#}"))?;
        Ok(head_in(&refs))
    }
}

/// How long opening the held connections may delay a warm sandbox's readiness, and how long the
/// handoff waits for an answer on one before asking on a new connection.
pub const HELD_CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// An [`OpenRemote`] for each of `dirs` that could be opened within [`HELD_CONNECTION_DEADLINE`],
/// in parallel. One that comes later is dropped (its connection closed). Blocking.
pub fn open_all(dirs: Vec<PathBuf>) -> Vec<(PathBuf, OpenRemote)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let count = dirs.len();
    for dir in dirs {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let opened = OpenRemote::connect(&dir);
            let _ = tx.send((dir, opened));
        });
    }
    drop(tx);
    let deadline = std::time::Instant::now() + HELD_CONNECTION_DEADLINE;
    let mut open = Vec::with_capacity(count);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((dir, Ok(remote))) => open.push((dir, remote)),
            Ok((dir, Err(e))) => tracing::debug!("not holding a connection to the remote of {}: {e}", dir.display()),
            Err(_) => break,
        }
    }
    open
}

/// [`OpenRemote::remote_head`] within [`HELD_CONNECTION_DEADLINE`]; an error after it (the
/// question is left to finish on its own thread, its answer dropped).
pub async fn ask_held(open: OpenRemote) -> Result<Option<String>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(open.remote_head());
    });
    match tokio::time::timeout(HELD_CONNECTION_DEADLINE, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err("the question on the held connection stopped".into()),
        Err(_) => Err(format!("no answer on the held connection within {HELD_CONNECTION_DEADLINE:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_sync(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A source repo, its bare remote, and a clone of the remote: (src, bare, clone).
    fn remote_and_clone(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        git_sync(&src, &["init", "-q", "-b", "main"]);
        git_sync(&src, &["commit", "-q", "--allow-empty", "-m", "one"]);
        let bare = dir.join("remote.git");
        git_sync(dir, &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
        let url = format!("file://{}", bare.display());
        git_sync(dir, &["clone", "-q", &url, "clone"]);
        (src, bare, dir.join("clone"))
    }

    fn push_a_commit(src: &Path, bare: &Path) -> String {
        git_sync(src, &["commit", "-q", "--allow-empty", "-m", "another"]);
        git_sync(src, &["push", "-q", bare.to_str().unwrap(), "HEAD:main"]);
        git_sync(src, &["rev-parse", "HEAD"])
    }

    #[test]
    fn the_built_in_git_reads_the_remotes_head_without_a_git_process_of_ours() {
        let dir = tempfile::tempdir().unwrap();
        let (src, bare, clone) = remote_and_clone(dir.path());
        let no_credentials = Arc::new(Vec::new());
        let first = git_sync(&src, &["rev-parse", "HEAD"]);
        assert_eq!(builtin_remote_head(&clone, no_credentials.clone()).unwrap(), Some(first.clone()));
        // A push the clone has not fetched: seen at once.
        let second = push_a_commit(&src, &bare);
        assert_ne!(first, second);
        assert_eq!(builtin_remote_head(&clone, no_credentials).unwrap(), Some(second));
    }

    #[test]
    fn a_connection_opened_before_a_push_answers_with_the_commit_pushed_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (src, bare, clone) = remote_and_clone(dir.path());
        let first = git_sync(&src, &["rev-parse", "HEAD"]);
        let unmoved = OpenRemote::connect(&clone).unwrap();
        assert_eq!(unmoved.remote_head().unwrap(), Some(first.clone()));

        // Held open across a push (as a warm sandbox holds it while it waits): the answer is the
        // remote's HEAD when asked, not when connected.
        let open = OpenRemote::connect(&clone).unwrap();
        let second = push_a_commit(&src, &bare);
        assert_ne!(first, second);
        assert_eq!(open.remote_head().unwrap(), Some(second));
    }

    #[test]
    fn a_remote_that_is_gone_when_asked_is_an_error_not_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (_src, bare, clone) = remote_and_clone(dir.path());
        let open = OpenRemote::connect(&clone).unwrap();
        std::fs::remove_dir_all(&bare).unwrap();
        // The running upload-pack cannot read refs that are gone: no HEAD, or an error; never the
        // old commit.
        match open.remote_head() {
            Ok(None) | Err(_) => {}
            Ok(Some(head)) => panic!("a removed remote answered {head}"),
        }
        assert!(OpenRemote::connect(&clone).is_err(), "a missing remote cannot be connected to");
    }

    #[test]
    fn a_local_remote_replaced_by_a_rename_is_not_asked_on_the_old_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (src, bare, clone) = remote_and_clone(dir.path());
        let open = OpenRemote::connect(&clone).unwrap();
        // A new copy of the remote, one commit ahead, renamed over the old one: the running
        // upload-pack would still read the old folder.
        let newer = dir.path().join("newer.git");
        git_sync(dir.path(), &["clone", "-q", "--bare", bare.to_str().unwrap(), newer.to_str().unwrap()]);
        git_sync(&src, &["commit", "-q", "--allow-empty", "-m", "moved"]);
        git_sync(&src, &["push", "-q", newer.to_str().unwrap(), "HEAD:main"]);
        let moved = git_sync(&src, &["rev-parse", "HEAD"]);
        std::fs::rename(&bare, dir.path().join("old.git")).unwrap();
        std::fs::rename(&newer, &bare).unwrap();
        let answer = open.remote_head();
        assert!(answer.as_ref().is_err_and(|e| e.contains("replaced")), "{answer:?}");
        // Asked afresh, the new remote's HEAD.
        assert_eq!(builtin_remote_head(&clone, Arc::new(Vec::new())).unwrap(), Some(moved));
    }

    #[tokio::test]
    async fn the_handoff_asks_on_the_held_connection_and_a_new_one_only_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let (src, _bare, clone) = remote_and_clone(dir.path());
        let head = git_sync(&src, &["rev-parse", "HEAD"]);
        let held = open_all(vec![clone.clone()]).pop().map(|(_, open)| open).expect("a local remote is held");
        // From now on a new connection cannot reach the remote: only the held one can answer.
        git_sync(&clone, &["remote", "set-url", "origin", dir.path().join("nowhere.git").to_str().unwrap()]);
        let git = crate::clone::find_git(std::env::var("PATH").ok().as_deref()).unwrap();
        let env: Vec<(String, String)> = std::env::vars().collect();
        let credentials = Arc::new(Vec::new());
        let unmoved =
            crate::clone::reset_to_remote_head(&git, &clone, Some(&head), &env, &credentials, Some(held)).await;
        assert_eq!(unmoved, Ok(None), "the held connection answered: HEAD has not moved");
        let without = crate::clone::reset_to_remote_head(&git, &clone, Some(&head), &env, &credentials, None).await;
        assert!(without.is_err(), "without the held connection the remote is unreachable: {without:?}");
    }
}
