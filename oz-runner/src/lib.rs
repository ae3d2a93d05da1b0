//! What runs inside every sandbox, from the static sidecar `oz`: `oz agent run` (clone the
//! environment's repos, run the setup commands, start the harness, report to the control plane),
//! git's credential helper, and the egress proxy of isolated Docker networks. It also runs
//! unmanaged on any machine, with no control plane.
//!
//! The `oz` binary (crate `oz-cli`) parses the command line and hands over to [`run_main`],
//! [`egress_proxy_main`] and [`credentials::helper_main`].
//!
//! ```
//! use oz_runner::harness::Harness;
//! // The argv of a preset harness for a prompt.
//! let argv = Harness::Codex.argv("fix the flaky test", None);
//! assert_eq!(argv[0], "codex");
//! ```

pub mod args;
pub mod clone;
pub mod control;
pub mod conversation;
pub mod credentials;
pub mod egress_proxy;
pub mod exec;
pub mod handover;
pub mod harness;
pub mod log;
pub mod register;
pub mod remote_head;
pub mod run;
pub mod warm;

/// Installs the process's rustls crypto provider (ring), once, before any HTTP client is built (ours
/// and the built-in git's). Installing it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Makes this process non-dumpable: its `/proc/<pid>/fd`, `mem` and `environ` are then out of
/// reach of the processes it starts (which run as the same user), so none can read its stdin (a
/// warm runner's handoff, a cold one's token) or the secrets in its memory. Children get the normal
/// attribute back when they exec.
pub fn guard_from_children() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("oz: could not make the runner non-dumpable ({e}); its children could read its memory");
    }
}

/// `oz agent run <raw...>` as a process: parses the flags leniently, runs the agent with SIGTERM and
/// SIGINT as cancellation, and returns the exit status (see [`run`]).
pub fn run_main(raw: Vec<String>) -> i32 {
    guard_from_children();
    if raw.iter().take_while(|a| *a != "--").any(|a| a == "--help" || a == "-h") {
        args::print_help();
        return 0;
    }
    let (parsed, warnings) = match args::parse_lenient(raw) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            return run::EXIT_USAGE;
        }
    };
    // The run's secrets live in memory only: out of this process's environment, before anything runs.
    if let Err(e) = handover::reexec_without_secrets() {
        eprintln!("oz: {e}");
        return if e.is_missing_token() { oz_core::runner::EXIT_NO_SECRET_INPUT } else { run::EXIT_USAGE };
    }
    let held = match handover::take() {
        Ok(held) => held,
        Err(e) if e.is_missing_token() => {
            eprintln!("oz: {e}");
            return oz_core::runner::EXIT_NO_SECRET_INPUT;
        }
        Err(e) => {
            eprintln!("oz: {e}");
            return run::EXIT_USAGE;
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oz: could not start the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let cancel_rx = cancel_on_signals();
        let oz_binary = std::env::current_exe().unwrap_or_else(|_| "oz".into());
        let mut env: Vec<(String, String)> = std::env::vars().collect();
        env.extend(held);
        let ctx = run::Context { env, control: None, oz_binary, cancel: cancel_rx };
        run::run(parsed, warnings, ctx).await
    })
}

/// A cancellation that SIGTERM or SIGINT sets (the runner's, in `oz agent run` and `oz agent warm`).
/// Must be called inside a Tokio runtime.
pub(crate) fn cancel_on_signals() -> tokio::sync::watch::Receiver<bool> {
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        let _ = cancel_tx.send(true);
    });
    cancel_rx
}

/// `oz agent egress-proxy` as a process: serves `policy` on `listen` until killed; returns the exit
/// status.
pub fn egress_proxy_main(listen: std::net::SocketAddr, policy: oz_core::egress::EgressPolicy) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oz: could not start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(egress_proxy::serve(listen, policy)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("oz egress-proxy: {e}");
            1
        }
    }
}

/// Logs to stderr, filtered by `OZ_LOG` (default `warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
