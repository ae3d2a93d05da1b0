//! Warm pools: per environment, sandboxes prepared before their tasks (the environment's repos
//! cloned, its setup commands run, a runner waiting; see `oz_core::warm`), each handed one task and
//! never reused. Backend-agnostic: it calls [`Backend::prepare`], [`Backend::launch_prepared`] and
//! [`Backend::discard`].
//!
//! A fill loop keeps each pool at its `size`: it prepares one sandbox at a time across all pools
//! (so warming never starves the tasks that run), backs off after a failed preparation (1 s
//! doubling to 5 min, the error kept for the status), and retires a ready sandbox older than its
//! `max_age` once its replacement is ready. The environment's configuration is fetched from the
//! control plane for every preparation, so a changed environment is prepared as it is now.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oz_core::backend::{Backend, PreparedSandbox};
use oz_core::runner::CommandOptions;
use oz_core::task::SandboxSpec;
use oz_core::warm::WarmSpec;
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::error::WorkerError;
use crate::metrics::WorkerMetrics;

/// A client for the control plane with the worker's credential (it reads environments by id).
pub(crate) fn control_plane_client(
    options: &CommandOptions,
    api_key: &oz_core::credentials::ApiKey,
) -> Option<oz_sdk::Client> {
    oz_sdk::Client::builder()
        .base_url(options.server_root_url.clone())
        .api_key(api_key.expose())
        .user_agent(concat!("oz-agent-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()
}

/// One entry of `warm_pools:` in the worker's YAML file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WarmPoolConfig {
    /// The environment's id on the control plane.
    pub environment: String,
    /// How many ready sandboxes to keep (default 1).
    #[serde(default = "default_size")]
    pub size: usize,
    /// Up to how many the pool grows after misses (default: `size`, no growth). Each miss adds one
    /// to its target; each `idle_secs` without a task takes one away, down to `size`.
    #[serde(default)]
    pub max_size: Option<usize>,
    /// How long without a task before the pool shrinks by one toward `size` (default 600).
    #[serde(default = "default_idle")]
    pub idle_secs: u64,
    /// How often the worker asks the repos' remotes for their HEAD (`git ls-remote`, without
    /// credentials); a ready sandbox prepared at another HEAD is replaced (default 60; 0 = only
    /// when the control plane says the repos were pushed to, `POST /repos/pushed`, and once a day).
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// A ready sandbox older than this many seconds is replaced (default 3600).
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    /// A preparation that takes longer than this many seconds fails (default 1800).
    #[serde(default = "default_ready_within")]
    pub ready_within_secs: u64,
    /// The most memory, in MiB, the pool's ready sandboxes may use together (each measured by the
    /// backend once ready: Docker and Direct). The pool prepares no more once one more like them
    /// would pass it; it always keeps one. Default: no cap.
    #[serde(default)]
    pub max_memory_mb: Option<u64>,
}

fn default_size() -> usize {
    1
}
impl WarmPoolConfig {
    /// Between two HEAD checks: `refresh_secs`, at most a day (also what 0 means).
    fn check_interval(&self) -> Duration {
        match self.refresh_secs {
            0 => Duration::from_secs(86_400),
            secs => Duration::from_secs(secs.min(86_400)),
        }
    }
}

fn default_refresh() -> u64 {
    60
}
fn default_idle() -> u64 {
    600
}
fn default_max_age() -> u64 {
    3600
}
fn default_ready_within() -> u64 {
    1800
}

/// The first and the longest delay after a failed preparation.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
/// How often the fill loop looks at the pools when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);

/// A pool's state, as the worker reports it to the control plane (`GET /workers`).
pub use oz_core::wire::worker::WarmPoolState as PoolStatus;

struct Ready {
    prepared: PreparedSandbox,
    since: Instant,
    /// The remotes' HEADs just before it was prepared (`None`: unknown), in the environment's order.
    heads: Vec<Option<String>>,
    /// What the backend made it from beyond its spec (its image's id), just before it was prepared.
    revision: Option<String>,
    /// A remote has moved since: it is replaced once a fresh one is ready.
    stale: bool,
    /// The memory it used once ready, in bytes (`None`: the backend cannot tell).
    memory: Option<u64>,
}

impl Pool {
    /// Ready sandboxes neither stale nor past their age.
    fn fresh(&self) -> usize {
        let max_age = Duration::from_secs(self.config.max_age_secs);
        self.ready.iter().filter(|r| !r.retirable(max_age)).count()
    }

    /// The memory the ready sandboxes used once ready, together (`None`: none measured).
    fn memory(&self) -> Option<u64> {
        self.ready.iter().filter_map(|r| r.memory).reduce(|a, b| a.saturating_add(b))
    }

    /// Whether one more sandbox, using what the fresh ones use on average, stays within
    /// `max_memory_mb` (always, without a cap or without a measured fresh one). Old sandboxes are
    /// not counted: their replacements are prepared before they go.
    fn memory_allows_one_more(&self) -> bool {
        let Some(cap) = self.config.max_memory_mb.map(|mb| mb.saturating_mul(1024 * 1024)) else { return true };
        let max_age = Duration::from_secs(self.config.max_age_secs);
        let fresh: Vec<u64> = self.ready.iter().filter(|r| !r.retirable(max_age)).filter_map(|r| r.memory).collect();
        if fresh.is_empty() {
            return true;
        }
        let used: u64 = fresh.iter().sum();
        used.saturating_add(used / fresh.len() as u64) <= cap
    }
}

impl Ready {
    fn retirable(&self, max_age: Duration) -> bool {
        self.stale || self.since.elapsed() >= max_age
    }
}

struct Pool {
    config: WarmPoolConfig,
    ready: VecDeque<Ready>,
    warming: usize,
    /// How many ready sandboxes to keep now (`size` to `max_size`).
    target: usize,
    /// The last task of the environment, or the last shrink: idleness counts from here.
    last_demand: Instant,
    /// The environment as last fetched for a preparation (what the HEAD checks look at).
    environment: Option<oz_core::environment::EnvironmentConfig>,
    /// The sandbox the last preparation was for (what a task must ask for to be served).
    prepares: Option<SandboxSpec>,
    /// When the remotes' HEADs are checked next.
    next_check: Instant,
    hits: u64,
    misses: u64,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    /// `None` without pools.
    control_plane: Option<oz_sdk::Client>,
    /// Refreshed before each preparation, so a warm clone borrows from a current mirror.
    mirrors: Option<Arc<crate::mirror::GitMirrors>>,
    /// What the HEAD checks may reach.
    access: crate::git::GitAccess,
    options: CommandOptions,
    metrics: WorkerMetrics,
    pools: Mutex<HashMap<String, Pool>>,
    wake: Notify,
    /// Notified when a pool's state changes (the worker then reports it).
    changed: Notify,
    stopped: std::sync::atomic::AtomicBool,
}

/// The worker's warm pools. Cheap to clone.
#[derive(Clone)]
pub struct WarmPools {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WarmPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPools").field("pools", &self.status()).finish()
    }
}

impl WarmPools {
    /// Pools for `configs` on `backend`, fetching environments from the control plane with
    /// `api_key`. Refused if the backend has no warm sandboxes, or an environment is listed twice
    /// (see [`WarmPools::add`]).
    pub fn new(
        backend: Arc<dyn Backend>,
        configs: Vec<WarmPoolConfig>,
        options: CommandOptions,
        api_key: &oz_core::credentials::ApiKey,
        metrics: WorkerMetrics,
        mirrors: Option<Arc<crate::mirror::GitMirrors>>,
        access: crate::git::GitAccess,
    ) -> Result<Self, WorkerError> {
        // Needed only once there are pools: `add` refuses a pool without it.
        let control_plane = control_plane_client(&options, api_key);
        let pools = Self {
            inner: Arc::new(Inner {
                backend,
                control_plane,
                mirrors,
                access,
                options,
                metrics,
                pools: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                changed: Notify::new(),
                stopped: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        for config in configs {
            pools.add(config)?;
        }
        Ok(pools)
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pool>> {
        self.inner.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a pool (at start, or while the worker runs: `oz local quickstart --warm`). Refused if the
    /// backend has no warm sandboxes, the entry names no environment, or its environment has a pool.
    pub fn add(&self, config: WarmPoolConfig) -> Result<(), WorkerError> {
        if !self.inner.backend.warm_sandboxes() {
            return Err(WorkerError::Config(format!(
                "warm_pools: the {} backend has no warm sandboxes",
                self.inner.backend.name()
            )));
        }
        if self.inner.control_plane.is_none() {
            return Err(WorkerError::Config("warm_pools: no client for the control plane".into()));
        }
        if config.environment.trim().is_empty() {
            return Err(WorkerError::Config("warm_pools: an entry has no environment".into()));
        }
        let day = 86_400 * 365;
        if config.max_age_secs > day || config.idle_secs > day || config.ready_within_secs > day {
            return Err(WorkerError::Config(format!(
                "warm_pools: environment {:?}: max_age_secs, idle_secs and ready_within_secs are at most a year",
                config.environment
            )));
        }
        if config.max_memory_mb == Some(0) {
            return Err(WorkerError::Config(format!(
                "warm_pools: environment {:?}: max_memory_mb must be more than 0",
                config.environment
            )));
        }
        if config.max_size.is_some_and(|max| max < config.size) {
            return Err(WorkerError::Config(format!(
                "warm_pools: environment {:?}: max_size is below size",
                config.environment
            )));
        }
        let environment = config.environment.clone();
        let pool = Pool {
            target: config.size,
            last_demand: Instant::now(),
            environment: None,
            prepares: None,
            next_check: Instant::now() + config.check_interval(),
            config,
            ready: VecDeque::new(),
            warming: 0,
            hits: 0,
            misses: 0,
            failures: 0,
            retry_at: None,
            last_error: None,
        };
        if self.pools().insert(environment.clone(), pool).is_some() {
            return Err(WorkerError::Config(format!("warm_pools: environment {environment:?} is listed twice")));
        }
        self.inner.wake.notify_one();
        self.inner.changed.notify_one();
        Ok(())
    }

    /// Whether `environment` has a pool.
    pub fn has(&self, environment: &str) -> bool {
        self.pools().contains_key(environment)
    }

    /// The oldest ready sandbox of `environment` that [serves](SandboxSpec::serves) `sandbox`,
    /// which leaves the pool for good; `None` (a miss, counted) if there is none. Wakes the fill loop to replace it.
    pub fn take(&self, environment: &str, sandbox: &SandboxSpec) -> Option<PreparedSandbox> {
        let mut pools = self.pools();
        let pool = pools.get_mut(environment)?;
        // A fresh one first; a stale one still serves (the runner catches its repos up).
        let position = pool
            .ready
            .iter()
            .position(|r| r.prepared.spec.serves(sandbox) && !r.stale)
            .or_else(|| pool.ready.iter().position(|r| r.prepared.spec.serves(sandbox)));
        let taken = position.and_then(|p| pool.ready.remove(p));
        // Demand the pool can serve: a task asking for another sandbox (another image, resources)
        // would miss whatever the pool prepared, so it neither grows the pool nor keeps it large.
        let servable = pool.prepares.as_ref().is_none_or(|s| s.serves(sandbox));
        if servable {
            pool.last_demand = Instant::now();
        }
        match &taken {
            Some(_) => pool.hits += 1,
            None => {
                pool.misses += 1;
                self.inner.metrics.warm_miss(environment);
                let max = pool.config.max_size.unwrap_or(pool.config.size);
                if servable && pool.target < max {
                    pool.target += 1;
                    info!(environment, target = pool.target, "a miss: the warm pool grows");
                }
            }
        }
        self.inner.metrics.set_warm(environment, pool.ready.len(), pool.warming, pool.memory());
        drop(pools);
        self.inner.wake.notify_one();
        self.inner.changed.notify_one();
        taken.map(|r| r.prepared)
    }

    /// Repos were pushed to (`repos_moved`): the pools of environments with any of them check their
    /// remotes' HEADs now, whatever their `refresh_secs`.
    pub fn repos_moved(&self, repos: &[oz_core::environment::RepoRef]) {
        let now = Instant::now();
        let mut due = 0;
        for pool in self.pools().values_mut() {
            // GitHub's names are case-insensitive.
            let same = |a: &oz_core::environment::RepoRef, b: &oz_core::environment::RepoRef| {
                a.owner.eq_ignore_ascii_case(&b.owner) && a.repo.eq_ignore_ascii_case(&b.repo)
            };
            let affected = pool
                .environment
                .as_ref()
                .is_some_and(|e| e.github_repos.iter().any(|r| repos.iter().any(|m| same(r, m))));
            if affected {
                pool.next_check = now;
                due += 1;
            }
        }
        if due > 0 {
            info!(pools = due, "repos were pushed to: checking the warm pools built from them");
            self.inner.wake.notify_one();
        }
    }

    /// Records a handoff that worked, `took` after the assignment.
    pub fn handed_over(&self, environment: &str, took: Duration) {
        self.inner.metrics.warm_hit(environment, took);
    }

    /// Returns once a pool's state changed since the last call.
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    /// Whether there are pools at all.
    pub fn is_empty(&self) -> bool {
        self.pools().is_empty()
    }

    /// Every pool's state.
    pub fn status(&self) -> Vec<PoolStatus> {
        let mut status: Vec<PoolStatus> = self
            .pools()
            .values()
            .map(|p| PoolStatus {
                environment: p.config.environment.clone(),
                ready: p.ready.len(),
                warming: p.warming,
                target: p.target,
                oldest_ready_secs: p.ready.front().map(|r| r.since.elapsed().as_secs()),
                hits: p.hits,
                misses: p.misses,
                last_error: p.last_error.clone(),
                memory_bytes: p.memory(),
            })
            .collect();
        status.sort_by(|a, b| a.environment.cmp(&b.environment));
        status
    }

    /// Keeps the pools filled until [`WarmPools::stop`]. One preparation at a time.
    pub async fn run(self) {
        while !self.inner.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            self.check_heads().await;
            self.retire_aged().await;
            self.shrink_idle().await;
            match self.next_to_warm() {
                Some(environment) => self.warm_one(&environment).await,
                None => {
                    let _ = tokio::time::timeout(TICK, self.inner.wake.notified()).await;
                }
            }
        }
    }

    /// Stops filling and discards every ready sandbox (a worker shutting down). A preparation under
    /// way is waited for (up to 30 s; it discards its sandbox itself once it sees the stop).
    pub async fn stop(&self) {
        self.inner.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.wake.notify_one();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.pools().values().any(|p| p.warming > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready: Vec<PreparedSandbox> =
            self.pools().values_mut().flat_map(|p| p.ready.drain(..).map(|r| r.prepared)).collect();
        for prepared in ready {
            if let Err(e) = self.inner.backend.discard(prepared).await {
                warn!("could not discard a warm sandbox: {e}");
            }
        }
    }

    /// The pool most short of sandboxes that may warm now.
    fn next_to_warm(&self) -> Option<String> {
        let now = Instant::now();
        let pools = self.pools();
        if pools.values().any(|p| p.warming > 0) {
            return None;
        }
        pools
            .values()
            .filter(|p| p.retry_at.is_none_or(|at| at <= now))
            .filter(|p| p.fresh() + p.warming < p.target)
            .filter(|p| p.memory_allows_one_more())
            .min_by_key(|p| (p.fresh() + p.warming, p.config.environment.clone()))
            .map(|p| p.config.environment.clone())
    }

    /// Replaces ready sandboxes past their age or whose repos or image moved: a replacement is
    /// prepared first (the fill loop counts only fresh ones), then one old one goes for each ready
    /// sandbox beyond the target.
    async fn retire_aged(&self) {
        let mut retired = Vec::new();
        for pool in self.pools().values_mut() {
            let max_age = Duration::from_secs(pool.config.max_age_secs);
            // One old sandbox goes for each fresh one beyond the target's need, oldest first: until
            // its replacement is ready, an old one still serves a task.
            let fresh = pool.fresh();
            let old = pool.ready.len() - fresh;
            let mut to_retire = (fresh + old).saturating_sub(pool.target.max(fresh));
            while to_retire > 0 {
                let Some(position) = pool.ready.iter().position(|r| r.retirable(max_age)) else { break };
                if let Some(r) = pool.ready.remove(position) {
                    retired.push(r);
                }
                to_retire -= 1;
            }
        }
        for r in retired {
            let why = if r.stale { "its repos or image moved" } else { "past its max_age" };
            info!(id = %r.prepared.id, "retiring a warm sandbox: {why}");
            let _ = self.inner.backend.discard(r.prepared).await;
        }
    }

    /// Asks the remotes of each pool due for a check for their HEADs, and the backend for its
    /// sandboxes' revision (the image's id), and marks the ready sandboxes prepared at another one
    /// stale (the fill loop then prepares their replacements).
    async fn check_heads(&self) {
        let due: Vec<(String, oz_core::environment::EnvironmentConfig)> = {
            let now = Instant::now();
            let mut pools = self.pools();
            pools
                .values_mut()
                .filter(|p| p.next_check <= now && !p.ready.is_empty())
                .filter_map(|p| {
                    p.next_check = now + p.config.check_interval();
                    Some((p.config.environment.clone(), p.environment.clone()?))
                })
                .collect()
        };
        for (environment, config) in due {
            let heads = self.inner.access.remote_heads(&environment, &config).await;
            let sandboxes: Vec<SandboxSpec> = {
                let pools = self.pools();
                let mut specs: Vec<SandboxSpec> = Vec::new();
                for r in pools.get(&environment).map(|p| p.ready.iter()).into_iter().flatten() {
                    if !specs.contains(&r.prepared.spec) {
                        specs.push(r.prepared.spec.clone());
                    }
                }
                specs
            };
            let mut revisions = Vec::new();
            for sandbox in sandboxes {
                let revision = self.inner.backend.sandbox_revision(&sandbox).await;
                revisions.push((sandbox, revision));
            }
            let mut pools = self.pools();
            let Some(pool) = pools.get_mut(&environment) else { continue };
            let differs = |was: &Option<String>, is: &Option<String>| matches!((was, is), (Some(a), Some(b)) if a != b);
            let mut moved = 0;
            for ready in pool.ready.iter_mut().filter(|r| !r.stale) {
                let repos_moved = ready.heads.iter().zip(&heads).any(|(was, is)| differs(was, is));
                let image_moved = revisions
                    .iter()
                    .find(|(sandbox, _)| *sandbox == ready.prepared.spec)
                    .is_some_and(|(_, is)| differs(&ready.revision, is));
                if repos_moved || image_moved {
                    ready.stale = true;
                    moved += 1;
                }
            }
            if moved > 0 {
                // Their replacements clone from the mirrors: fetched first, whenever they last were.
                if let Some(mirrors) = &self.inner.mirrors {
                    mirrors.expire(&config.github_repos);
                }
                info!(environment, moved, "the environment's repos or image moved: replacing its warm sandboxes");
                self.inner.wake.notify_one();
                self.inner.changed.notify_one();
            }
        }
    }

    /// Takes one from the target of each pool idle for its `idle_secs` (down to its `size`), and
    /// discards the ready sandboxes beyond it, oldest first.
    async fn shrink_idle(&self) {
        let mut surplus = Vec::new();
        let mut shrunk = false;
        for pool in self.pools().values_mut() {
            if pool.target > pool.config.size
                && pool.last_demand.elapsed() >= Duration::from_secs(pool.config.idle_secs)
            {
                pool.target -= 1;
                pool.last_demand = Instant::now();
                shrunk = true;
                info!(environment = %pool.config.environment, target = pool.target, "idle: the warm pool shrinks");
            }
            while pool.ready.len() > pool.target {
                if let Some(r) = pool.ready.pop_front() {
                    surplus.push(r.prepared);
                }
            }
            self.inner.metrics.set_warm(&pool.config.environment, pool.ready.len(), pool.warming, pool.memory());
        }
        if shrunk {
            self.inner.changed.notify_one();
        }
        for prepared in surplus {
            let _ = self.inner.backend.discard(prepared).await;
        }
    }

    async fn warm_one(&self, environment: &str) {
        let ready_within = {
            let mut pools = self.pools();
            let Some(pool) = pools.get_mut(environment) else { return };
            pool.warming += 1;
            self.inner.metrics.set_warm(environment, pool.ready.len(), pool.warming, pool.memory());
            Duration::from_secs(pool.config.ready_within_secs)
        };
        let started = Instant::now();
        let mut heads = Vec::new();
        let mut revision = None;
        let mut prepared_environment = None;
        let result = match self.warm_spec(environment, ready_within).await {
            Ok(spec) => {
                prepared_environment = Some(spec.environment.clone());
                // Before the clone: a push during the preparation makes the sandbox stale, not missed.
                heads = self.inner.access.remote_heads(environment, &spec.environment).await;
                // A repo cloned from the worker's mirror is at the mirror's HEAD, which may lag the
                // remote's (refreshed at most every 30 s): recorded as that, so a lag shows as stale.
                if let Some(mirrors) = &self.inner.mirrors {
                    for (head, repo) in heads.iter_mut().zip(&spec.environment.github_repos) {
                        if spec.sandbox.git_mirrors.contains(repo) {
                            *head = mirrors.head_of(repo).await.or(head.take());
                        }
                    }
                }
                revision = self.inner.backend.sandbox_revision(&spec.sandbox).await;
                if let Some(pool) = self.pools().get_mut(environment) {
                    pool.environment = Some(spec.environment.clone());
                    pool.prepares = Some(spec.sandbox.clone());
                }
                self.inner.backend.prepare(spec).await.map_err(|e| e.message)
            }
            Err(e) => Err(e),
        };
        let memory = match &result {
            Ok(prepared) => self.inner.backend.sandbox_memory(prepared).await,
            Err(_) => None,
        };
        // A warm sandbox holds no credential: a private repo can only come from the worker's mirror.
        let private_clone = match (&result, &prepared_environment) {
            (Err(message), Some(config)) if self.inner.mirrors.is_none() && message.contains("clone") => {
                !self.inner.access.credentials_for(environment, config).await.is_empty()
            }
            _ => false,
        };
        let result = match result {
            Err(message) if private_clone => Err(format!(
                "{message} (the team has a git provider for this environment's repos: a private repo is warmed only from the worker's git mirrors, `git_mirrors:` in its YAML file)"
            )),
            other => other,
        };
        let mut leftover = None;
        {
            let mut pools = self.pools();
            let Some(pool) = pools.get_mut(environment) else { return };
            match result {
                Ok(prepared) if !self.inner.stopped.load(std::sync::atomic::Ordering::SeqCst) => {
                    info!(environment, id = %prepared.id, millis = started.elapsed().as_millis() as u64, "warm sandbox ready");
                    self.inner.metrics.warm_prepared(environment, Some(started.elapsed()));
                    pool.ready.push_back(Ready {
                        prepared,
                        since: Instant::now(),
                        heads,
                        revision,
                        stale: false,
                        memory,
                    });
                    pool.failures = 0;
                    pool.retry_at = None;
                    pool.last_error = None;
                }
                Ok(prepared) => leftover = Some(prepared),
                Err(message) => {
                    self.inner.metrics.warm_prepared(environment, None);
                    let delay = BACKOFF.0.saturating_mul(2u32.saturating_pow(pool.failures.min(16))).min(BACKOFF.1);
                    pool.failures += 1;
                    pool.retry_at = Some(Instant::now() + delay);
                    warn!(
                        environment,
                        "a warm sandbox could not be prepared ({message}); trying again in {}s",
                        delay.as_secs()
                    );
                    pool.last_error = Some(message);
                }
            }
        }
        if let Some(prepared) = leftover {
            let _ = self.inner.backend.discard(prepared).await;
        }
        if let Some(pool) = self.pools().get_mut(environment) {
            pool.warming -= 1;
            self.inner.metrics.set_warm(environment, pool.ready.len(), pool.warming, pool.memory());
        }
        self.inner.changed.notify_one();
    }

    /// What to prepare for `environment`: its configuration as the control plane has it now, in the
    /// sandbox a task of it will ask for, with the runner's sandbox-wide variables (no task's).
    async fn warm_spec(&self, environment: &str, ready_within: Duration) -> Result<WarmSpec, String> {
        let client = self.inner.control_plane.as_ref().ok_or("no control plane client")?;
        let found = client
            .environments()
            .get_for_worker(environment)
            .await
            .map_err(|e| format!("could not fetch environment {environment:?}: {e}"))?;
        let config = found.config;
        let git_mirrors = match &self.inner.mirrors {
            Some(mirrors) => {
                mirrors.refresh(environment, &config).await;
                mirrors.for_environment(environment)
            }
            None => Vec::new(),
        };
        let image = oz_core::image::ImageRef::parse_optional(config.docker_image.as_deref())
            .map_err(|e| format!("environment {environment:?}: {e}"))?;
        let options = &self.inner.options;
        // As `runner::task_spec` makes a task's sandbox, so that the task finds this one.
        let cache = oz_core::runner::cache_key(options, Some(environment));
        let sandbox = SandboxSpec { image, cache, git_mirrors, ..SandboxSpec::default() };
        // As the control plane puts them in a task's assignment: the environment's settings.
        let vars = oz_core::runner::sandbox_env(options, &config.env_vars);
        Ok(WarmSpec {
            sandbox,
            entrypoint: options.entrypoint.clone(),
            environment: config,
            git_base_url: None,
            env: vars,
            ready_within,
        })
    }
}
