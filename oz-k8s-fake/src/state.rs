//! The fake cluster's state: objects, the resourceVersion counter, and the event history watches
//! resume from.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

/// The kinds the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchKind {
    /// `batch/v1` Job.
    Job,
    /// `v1` Pod.
    Pod,
    /// `v1` Event.
    Event,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `v1` Secret (stored as the API server stores it: `stringData` folded into base64 `data`).
    Secret,
}

impl WatchKind {
    pub(crate) fn api_version(self) -> &'static str {
        match self {
            WatchKind::Job => "batch/v1",
            WatchKind::Pod | WatchKind::Event | WatchKind::Secret => "v1",
            WatchKind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }
    pub(crate) fn kind(self) -> &'static str {
        match self {
            WatchKind::Job => "Job",
            WatchKind::Pod => "Pod",
            WatchKind::Event => "Event",
            WatchKind::NetworkPolicy => "NetworkPolicy",
            WatchKind::Secret => "Secret",
        }
    }
}

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) kind: WatchKind,
    pub(crate) namespace: String,
    pub(crate) event_type: &'static str,
    pub(crate) object: Value,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) rv: u64,
    pub(crate) objects: BTreeMap<(WatchKind, String, String), Value>,
    pub(crate) history: VecDeque<Change>,
    /// Versions at or below this are gone from the history: resuming from them is 410.
    pub(crate) compacted_through: u64,
    pub(crate) logs: BTreeMap<(String, String), String>,
    /// Pods whose log is a file the fake kubelet writes.
    pub(crate) log_files: BTreeMap<(String, String), std::path::PathBuf>,
    /// Process groups the fake kubelet runs, by Pod.
    pub(crate) groups: BTreeMap<(String, String), i32>,
    /// The open stdin of a Pod's task container (`stdin: true`), until an attach takes it.
    pub(crate) stdins: BTreeMap<(String, String), tokio::process::ChildStdin>,
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, kind: WatchKind, namespace: &str, event_type: &'static str, object: Value) {
        let rv = self.rv;
        self.history.push_back(Change { rv, kind, namespace: namespace.to_owned(), event_type, object });
    }

    /// Stores a new object; fills in metadata like the API server does.
    pub(crate) fn create(
        &mut self,
        kind: WatchKind,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, (u16, String)> {
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if name.is_empty() {
            return Err((422, "metadata.name is required".into()));
        }
        let key = (kind, namespace.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err((409, format!("{} {name:?} already exists", kind.kind().to_ascii_lowercase())));
        }
        let rv = self.next_rv();
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.kind());
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["creationTimestamp"] = json!("2026-11-22T00:00:00Z");
        self.objects.insert(key, object.clone());
        self.record(kind, namespace, "ADDED", object.clone());
        Ok(object)
    }

    /// Changes an object with `f`; a new resourceVersion and a MODIFIED event.
    pub(crate) fn modify(
        &mut self,
        kind: WatchKind,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let rv = self.next_rv();
        let key = (kind, namespace.to_owned(), name.to_owned());
        let object = self.objects.get_mut(&key)?;
        f(object);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let object = object.clone();
        self.record(kind, namespace, "MODIFIED", object.clone());
        Some(object)
    }

    /// Removes an object; a DELETED event.
    pub(crate) fn delete(&mut self, kind: WatchKind, namespace: &str, name: &str) -> Option<Value> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        let mut object = self.objects.remove(&key)?;
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(kind, namespace, "DELETED", object.clone());
        Some(object)
    }

    /// Objects of a kind in a namespace matching a selector, in name order.
    pub(crate) fn list(&self, kind: WatchKind, namespace: &str, selector: &Selector) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, ns, _), o)| *k == kind && ns == namespace && selector.matches(o))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Forgets the history: watches resuming from any version before now get 410 Gone.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted_through = self.rv;
    }
}

/// An equality-based label selector (`a=b,c=d`; `a==b` and `a!=b` too), with optional field terms
/// (`involvedObject.name=x`, `metadata.name=y`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Selector(Vec<(String, String, bool)>, Vec<(String, String, bool)>);

impl Selector {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let mut terms = Vec::new();
        for term in raw.unwrap_or("").split(',').filter(|t| !t.trim().is_empty()) {
            if let Some((k, v)) = term.split_once("!=") {
                terms.push((k.trim().to_owned(), v.trim().to_owned(), false));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                terms.push((k.trim().to_owned(), v.trim().to_owned(), true));
            }
        }
        Self(terms, Vec::new())
    }

    /// Adds the terms of a field selector.
    pub(crate) fn with_fields(mut self, raw: Option<&str>) -> Self {
        self.1 = Self::parse(raw).0;
        self
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let field = |path: &str| path.split('.').fold(object, |o, k| &o[k]).as_str().map(str::to_owned);
        self.0.iter().all(|(k, v, eq)| (labels[k.as_str()].as_str() == Some(v.as_str())) == *eq)
            && self.1.iter().all(|(k, v, eq)| (field(k).as_deref() == Some(v.as_str())) == *eq)
    }
}
