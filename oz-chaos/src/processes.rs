//! The real programs under test, as child processes that can be killed with SIGKILL, frozen and
//! started again: `oz-server` on a fixed port (so its URL survives restarts) and `oz-agent-worker`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the programs are: next to this one (cargo builds them all into one folder).
pub(crate) fn bin_dir(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = match given {
        Some(dir) => dir,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's folder: {e}"))?
            .parent()
            .ok_or("this program has no folder")?
            .to_path_buf(),
    };
    for program in ["oz-server", "oz-agent-worker", "oz"] {
        if !dir.join(program).is_file() {
            return Err(format!(
                "{} is missing: build the workspace first (cargo build --workspace)",
                dir.join(program).display()
            ));
        }
    }
    Ok(dir)
}

/// A free loopback port.
pub(crate) fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

/// The control plane.
pub(crate) struct Server {
    bin: PathBuf,
    data_dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// The admin key printed at the first start.
    pub(crate) admin_key: String,
}

impl Server {
    /// Starts it on a fresh database in `data_dir`.
    pub(crate) fn start(bin_dir: &Path, data_dir: &Path) -> Result<Self, String> {
        let mut server = Self {
            bin: bin_dir.join("oz-server"),
            data_dir: data_dir.to_path_buf(),
            port: free_port()?,
            child: None,
            admin_key: String::new(),
        };
        let lines = server.spawn()?;
        server.admin_key = lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("oz_").map(|rest| format!("oz_{rest}")))
            .ok_or("the server showed no admin key at its first start")?;
        Ok(server)
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until it listens; the lines it printed until then.
    fn spawn(&mut self) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.data_dir.display()))?;
        let log = std::fs::File::create(self.data_dir.join(format!("server-{}.log", fastrand::u32(..))))
            .map_err(|e| format!("cannot create the server's log: {e}"))?;
        let mut child = Command::new(&self.bin)
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--data-dir"])
            .arg(&self.data_dir)
            // Offers that die with a process come back quickly; a frozen worker keeps its runs.
            .args(["--offer-timeout-secs", "3", "--lease-timeout-secs", "60"])
            .args(["--runs-per-key-per-minute", "0", "--unfinished-runs-per-team", "0"])
            .env("OZ_LOG", log_level())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let stdout = child.stdout.take().ok_or("the server has no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut ready = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.push(line.clone());
                if line.starts_with("oz-server listening on ")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(std::mem::take(&mut seen));
                }
            }
        });
        self.child = Some(child);
        rx.recv_timeout(Duration::from_secs(30)).map_err(|_| "the server did not start listening within 30 s".into())
    }

    /// Kills it with SIGKILL (nothing is flushed, nothing is said goodbye).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGSTOP (`true`) or SIGCONT (`false`): a control plane that stops answering (a
    /// partition, as its clients see it), then comes back.
    pub(crate) fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
        }
    }

    /// Starts it again on the same database and port.
    pub(crate) fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn().map(drop)
    }

    /// Mints a worker credential for `worker_id` (`oz-server admin`, on the database directly).
    pub(crate) fn worker_credential(&self, worker_id: &str) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["admin", "key", "create", "--team", "default", "--worker-id", worker_id, "--name", worker_id])
            .env("OZ_LOG", "warn")
            .output()
            .map_err(|e| format!("cannot run oz-server admin: {e}"))?;
        if !out.status.success() {
            return Err(format!("oz-server admin key create failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("oz_").map(|rest| format!("oz_{rest}")))
            .ok_or_else(|| "oz-server admin showed no key".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The worker.
pub(crate) struct Worker {
    bin: PathBuf,
    config: PathBuf,
    server_url: String,
    credential: String,
    log_dir: PathBuf,
    child: Option<Child>,
}

impl Worker {
    /// Starts `oz-agent-worker` with the configuration file `config`.
    pub(crate) fn start(
        bin_dir: &Path,
        config: &Path,
        server_url: &str,
        credential: &str,
        log_dir: &Path,
    ) -> Result<Self, String> {
        let mut worker = Self {
            bin: bin_dir.join("oz-agent-worker"),
            config: config.to_path_buf(),
            server_url: server_url.to_owned(),
            credential: credential.to_owned(),
            log_dir: log_dir.to_path_buf(),
            child: None,
        };
        worker.spawn()?;
        Ok(worker)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.log_dir.join(format!("worker-{}.log", fastrand::u32(..))))
            .map_err(|e| format!("cannot create the worker's log: {e}"))?;
        let child = Command::new(&self.bin)
            .arg("--config-file")
            .arg(&self.config)
            .args(["--server-root-url", &self.server_url, "--log-level", &log_level()])
            .arg("--outbox-file")
            .arg(self.log_dir.join("worker.outbox"))
            .env("WARP_API_KEY", &self.credential)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills it with SIGKILL; its tasks live on.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again.
    pub(crate) fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// Sends SIGSTOP (`true`) or SIGCONT (`false`): a worker that stops answering, then comes back.
    pub(crate) fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
        }
    }

    /// Stops it the way an operator would (SIGTERM), waiting for it to leave.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The log level of the servers and workers the soak starts: `OZ_CHAOS_LOG` (`warn` unless set;
/// `info` or `debug` to read what happened to one run in the kept logs).
fn log_level() -> String {
    std::env::var("OZ_CHAOS_LOG").unwrap_or_else(|_| "warn".into())
}
