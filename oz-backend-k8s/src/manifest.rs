//! The Job of a task: one per execution, pure (no API calls), so its exact shape is tested.
//!
//! - `backoffLimit: 0`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished` (when cleanup is on);
//! - labels identifying worker, task and execution on the Job and its Pod, plus the extra ones;
//! - volumes: `/workspace` (an emptyDir with an optional size limit) and the sidecar at `/agent`, copied
//!   by a root init container from the sidecar image into an emptyDir, or an image volume;
//! - `setup_command` as the init container `setup`, `teardown_command` as the task's preStop hook;
//! - `instance_shape` as requests equal to limits;
//! - the configured `pod_template` merged under the generated spec: our init containers first, our
//!   env wins on the task container.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use oz_core::task::{TaskSpec, labels};
use serde_json::{Value, json};

use crate::config::KubernetesConfig;
use crate::error::KubernetesError;

/// The task container's name.
pub const TASK_CONTAINER: &str = "task";
/// The sidecar copy init container's name.
pub const SIDECAR_INIT: &str = "oz-sidecar";
/// The setup init container's name.
pub const SETUP_INIT: &str = "setup";
/// The volume of the package caches claim (a task mounts its environment's folder of it).
pub const CACHE_VOLUME: &str = "oz-package-cache";
/// The volume of the git mirrors claim (read-only).
pub const MIRRORS_VOLUME: &str = "oz-git-mirrors";
/// Where the task's secret input is mounted (a Secret volume: in memory on the node).
pub const SECRET_INPUT_DIR: &str = "/var/run/oz/secret-input";
/// The secret input's file in [`SECRET_INPUT_DIR`].
pub const SECRET_INPUT_KEY: &str = "value";

/// The Job's name: `oz-<task>[-<execution>]`, made a valid DNS label (at most 63 characters).
pub fn job_name(spec: &TaskSpec) -> String {
    let raw = match &spec.execution_id {
        Some(e) => format!("oz-{}-{e}", spec.task_id),
        None => format!("oz-{}", spec.task_id),
    };
    let mut name: String =
        raw.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// The labels of a task's Job and Pod.
pub fn job_labels(spec: &TaskSpec, config: &KubernetesConfig) -> BTreeMap<String, String> {
    let mut labels = config.extra_labels.clone();
    labels.extend(spec.labels(&config.worker_id));
    labels
}

/// The label selector of every Job this worker made.
pub fn worker_selector(worker_id: &str) -> String {
    format!("{}={},{}={worker_id}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE, labels::WORKER_ID)
}

fn resources(spec: &TaskSpec) -> Option<Value> {
    let r = &spec.sandbox.resources;
    let mut quantities = serde_json::Map::new();
    if let Some(cpus) = r.vcpus {
        quantities.insert("cpu".into(), json!(format!("{}m", (cpus * 1000.0).round() as i64)));
    }
    if let Some(memory) = r.memory_bytes {
        quantities.insert("memory".into(), json!(memory.to_string()));
    }
    (!quantities.is_empty()).then(|| json!({"requests": quantities.clone(), "limits": quantities}))
}

/// A task's variables: its own, then the configuration's `environment` (which wins).
pub fn task_env(spec: &TaskSpec, config: &KubernetesConfig) -> Result<Vec<(String, String)>, KubernetesError> {
    let mut task_env = spec.effective_env();
    for entry in &config.environment {
        let value = entry.value.clone().ok_or_else(|| {
            KubernetesError::Config(format!(
                "environment {}: no value (KubernetesConfig::validate_and_resolve gives inherited variables theirs)",
                entry.name
            ))
        })?;
        task_env.retain(|(n, _)| *n != entry.name);
        task_env.push((entry.name.clone(), value));
    }
    Ok(task_env)
}

/// The Pod annotation holding a warm sandbox's environment (JSON), which its runner reads as the
/// file [`WARM_ENVIRONMENT_FILE`] of a downwardAPI volume: settings only, never a secret.
pub const WARM_ENVIRONMENT_ANNOTATION: &str = "oz.dev/warm-environment";
/// Where a warm sandbox's environment file is mounted.
pub const WARM_DIR: &str = "/oz-warm";
/// The environment file of a warm sandbox.
pub const WARM_ENVIRONMENT_FILE: &str = "/oz-warm/environment.json";
/// The largest environment a warm Pod's annotation carries (the API server takes 256 KiB of
/// annotations in all).
pub const MAX_WARM_ENVIRONMENT_BYTES: usize = 128 * 1024;

/// The Job of a warm sandbox: `spec`'s (`spec.task_id` is the warm id), labelled with
/// [`labels::WARM_ID`]; its task container keeps stdin open for one attach (`stdinOnce`), which
/// brings the task and its token; its environment is an annotation, mounted as a file.
pub fn warm_job(spec: &TaskSpec, config: &KubernetesConfig, environment: &str) -> Result<Job, KubernetesError> {
    if environment.len() > MAX_WARM_ENVIRONMENT_BYTES {
        return Err(KubernetesError::Manifest(format!(
            "the environment is too large for a warm Pod ({} bytes, at most {MAX_WARM_ENVIRONMENT_BYTES})",
            environment.len()
        )));
    }
    let mut job = serde_json::to_value(job(spec, config)?).map_err(KubernetesError::ManifestShape)?;
    job["metadata"]["labels"][labels::WARM_ID] = json!(spec.task_id);
    let template = &mut job["spec"]["template"];
    template["metadata"]["labels"][labels::WARM_ID] = json!(spec.task_id);
    if !template["metadata"]["annotations"].is_object() {
        template["metadata"]["annotations"] = json!({});
    }
    template["metadata"]["annotations"][WARM_ENVIRONMENT_ANNOTATION] = json!(environment);
    let pod = &mut template["spec"];
    if let Some(volumes) = pod["volumes"].as_array_mut() {
        volumes.push(json!({
            "name": "oz-warm",
            "downwardAPI": {"items": [{
                "path": "environment.json",
                "fieldRef": {"fieldPath": format!("metadata.annotations['{WARM_ENVIRONMENT_ANNOTATION}']")},
            }]},
        }));
    }
    if let Some(task) =
        pod["containers"].as_array_mut().and_then(|c| c.iter_mut().find(|c| c["name"] == TASK_CONTAINER))
    {
        task["stdin"] = json!(true);
        task["stdinOnce"] = json!(true);
        if let Some(mounts) = task["volumeMounts"].as_array_mut() {
            mounts.push(json!({"name": "oz-warm", "mountPath": WARM_DIR, "readOnly": true}));
        }
    }
    serde_json::from_value(job).map_err(KubernetesError::ManifestShape)
}

/// The merge patch that hands a warm sandbox's Job to a task: its labels name the task (the warm
/// id stays); its `activeDeadlineSeconds` (mutable) becomes `deadline`, the seconds since the Job
/// started at which the task's own time runs out; a task that keeps what it leaves (`keep`) has
/// its `ttlSecondsAfterFinished` removed.
pub fn claim_job_patch(spec: &TaskSpec, deadline: i64, keep: bool) -> Value {
    let mut patch = json!({"metadata": {"labels": claim_labels(spec)}, "spec": {"activeDeadlineSeconds": deadline}});
    if keep {
        patch["spec"]["ttlSecondsAfterFinished"] = Value::Null;
    }
    patch
}

/// The merge patch that hands a warm sandbox's Pod to a task: the task's labels, and the receipt
/// its runner will print once it took the task (in `annotation`).
pub fn claim_pod_patch(spec: &TaskSpec, annotation: &str, receipt: &str) -> Value {
    json!({"metadata": {"labels": claim_labels(spec), "annotations": {annotation: receipt}}})
}

fn claim_labels(spec: &TaskSpec) -> Value {
    let mut labels = json!({labels::TASK_ID: spec.task_id});
    if let Some(execution) = &spec.execution_id {
        labels[labels::EXECUTION_ID] = json!(execution);
    }
    labels
}

/// The task container's working directory: `/workspace`, or the sandbox's `workdir` in it.
pub fn workdir(spec: &TaskSpec) -> String {
    oz_core::task::container_workdir(&spec.sandbox)
}

/// The Job for `spec`.
pub fn job(spec: &TaskSpec, config: &KubernetesConfig) -> Result<Job, KubernetesError> {
    let labels = job_labels(spec, config);
    let image = spec
        .sandbox
        .image
        .as_ref()
        .map(|i| i.to_string())
        .or_else(|| config.default_image.as_ref().map(ToString::to_string))
        .unwrap_or_else(|| oz_core::image::DEFAULT_IMAGE.to_owned());
    let mut env: Vec<Value> =
        task_env(spec, config)?.into_iter().map(|(name, value)| json!({"name": name, "value": value})).collect();
    let cache = spec.sandbox.cache.as_ref().zip(config.package_cache_claim.as_ref());
    if let Some((key, _)) = cache {
        // A subPath: one folder name, never a path (the worker's keys are checked; this is the last stop).
        oz_core::run::validate_id("cache", key).map_err(KubernetesError::Invalid)?;
        // The backend's, as on Docker and Direct: a setting of the same name cannot point it elsewhere.
        env.retain(|v| v["name"] != oz_core::runner::env::CACHE_DIR);
        env.push(json!({"name": oz_core::runner::env::CACHE_DIR, "value": oz_core::task::SANDBOX_CACHE_DIR}));
    }
    // The secret input reaches the task container only, as a file of a Secret volume named here by
    // its Secret's name: the Pod spec never holds the value.
    let mut task_only_env = env.clone();
    if spec.secret_input.is_some() {
        task_only_env.push(json!({
            "name": oz_core::runner::env::SECRET_INPUT,
            "value": format!("{SECRET_INPUT_DIR}/{SECRET_INPUT_KEY}"),
        }));
    }
    let workdir = workdir(spec);
    // The task container's and the setup init container's.
    let mut mounts = vec![
        json!({"name": "workspace", "mountPath": "/workspace"}),
        json!({"name": "agent", "mountPath": "/agent", "readOnly": true}),
    ];
    if let Some((key, _)) = cache {
        mounts.push(json!({"name": CACHE_VOLUME, "mountPath": oz_core::task::SANDBOX_CACHE_DIR, "subPath": key}));
    }
    if config.git_mirror_claim.is_some() {
        // Its environment's mirrors only, each a subPath of the claim: another environment's
        // (private) repo is not readable from this Pod.
        let inside = std::path::Path::new(oz_core::task::SANDBOX_GIT_MIRRORS);
        // The worker's check word (not a secret), which the preflight Job reads back through the
        // claim to see it is the worker's folder.
        mounts.push(json!({
            "name": MIRRORS_VOLUME,
            "mountPath": inside.join(crate::config::MIRROR_CHECK_DIR).display().to_string(),
            "subPath": crate::config::MIRROR_CHECK_DIR,
            "readOnly": true,
        }));
        for repo in &spec.sandbox.git_mirrors {
            let sub = oz_core::runner::mirror_of(std::path::Path::new(""), repo);
            mounts.push(json!({
                "name": MIRRORS_VOLUME,
                "mountPath": oz_core::runner::mirror_of(inside, repo).display().to_string(),
                "subPath": sub.display().to_string(),
                "readOnly": true,
            }));
        }
    }
    let mut task_mounts = mounts.clone();
    if spec.secret_input.is_some() {
        task_mounts.push(json!({"name": "secret-input", "mountPath": SECRET_INPUT_DIR, "readOnly": true}));
    }
    let (mounts, task_mounts) = (Value::Array(mounts), Value::Array(task_mounts));
    let mut task = json!({
        "name": TASK_CONTAINER,
        "image": image,
        "imagePullPolicy": config.image_pull_policy.as_kubernetes(),
        "command": spec.argv,
        "env": task_only_env,
        "workingDir": workdir,
        "volumeMounts": task_mounts,
        "securityContext": {"allowPrivilegeEscalation": false},
    });
    if let Some(r) = resources(spec) {
        task["resources"] = r;
    }
    if let Some(teardown) = &config.teardown_command {
        task["lifecycle"] = json!({"preStop": {"exec": {"command": ["/bin/sh", "-c", teardown]}}});
    }
    let mut init = Vec::new();
    let agent_volume = if config.use_image_volumes {
        json!({"name": "agent", "image": {"reference": config.sidecar_image, "pullPolicy": config.image_pull_policy.as_kubernetes()}})
    } else {
        init.push(json!({
            "name": SIDECAR_INIT,
            "image": config.sidecar_image,
            "imagePullPolicy": config.image_pull_policy.as_kubernetes(),
            "command": ["/bin/sh", "-c", "cp -a /agent/. /sidecar/"],
            "volumeMounts": [{"name": "agent", "mountPath": "/sidecar"}],
            "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": false},
        }));
        json!({"name": "agent", "emptyDir": {}})
    };
    if let Some(setup) = &config.setup_command {
        init.push(json!({
            "name": SETUP_INIT,
            "image": image,
            "imagePullPolicy": config.image_pull_policy.as_kubernetes(),
            "command": ["/bin/sh", "-c", setup],
            "env": env,
            "workingDir": "/workspace",
            "volumeMounts": mounts,
        }));
    }
    let mut workspace = json!({"name": "workspace", "emptyDir": {}});
    if let Some(limit) = &config.workspace_size_limit {
        workspace["emptyDir"]["sizeLimit"] = json!(limit);
    }
    let mut volumes = vec![workspace, agent_volume];
    if let Some((_, claim)) = cache {
        volumes.push(json!({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}));
    }
    if let Some(claim) = &config.git_mirror_claim {
        volumes.push(json!({"name": MIRRORS_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}));
    }
    if spec.secret_input.is_some() {
        // Readable by any user: the files of a Secret volume belong to root (without an fsGroup),
        // and the image may run as anyone. Only the task container mounts it, and everything in it
        // (the runner, its harness) runs as one user anyway, so a narrower mode would protect nothing.
        volumes.push(json!({
            "name": "secret-input",
            "secret": {"secretName": job_name(spec), "defaultMode": 0o444, "items": [{"key": SECRET_INPUT_KEY, "path": SECRET_INPUT_KEY}]},
        }));
    }
    let generated = json!({
        "restartPolicy": "Never",
        "initContainers": init,
        "containers": [task],
        "volumes": volumes,
    });
    let mut pod_spec = match &config.pod_template {
        Some(template) => merge_pod_spec(template, generated)?,
        None => generated,
    };
    // No credential the task was not given: the namespace's service account token is not mounted,
    // and no Service's address is put in the environment, unless the pod_template asks for them.
    for (field, default) in [("automountServiceAccountToken", false), ("enableServiceLinks", false)] {
        if pod_spec.get(field).is_none() {
            pod_spec[field] = json!(default);
        }
    }
    let mut job_spec = json!({
        "backoffLimit": 0,
        "activeDeadlineSeconds": spec.timeout.map_or(config.active_deadline_seconds, |t| t.as_secs().max(1) as i64),
        "template": {
            "metadata": {"labels": labels, "annotations": config.extra_annotations},
            "spec": pod_spec,
        },
    });
    if spec.cleanup && config.cleanup {
        job_spec["ttlSecondsAfterFinished"] = json!(config.ttl_seconds_after_finished);
    }
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec),
            "namespace": config.namespace,
            "labels": labels,
            "annotations": config.extra_annotations,
        },
        "spec": job_spec,
    });
    serde_json::from_value(job).map_err(KubernetesError::ManifestShape)
}

/// The Secret holding a task's secret input (the workload token), named and labelled like its Job,
/// `None` without one. The backend makes it before the Job and removes it when the task ends.
pub fn secret_input(
    spec: &TaskSpec,
    config: &KubernetesConfig,
) -> Result<Option<k8s_openapi::api::core::v1::Secret>, KubernetesError> {
    let Some(input) = &spec.secret_input else { return Ok(None) };
    let value = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": job_name(spec), "namespace": config.namespace, "labels": job_labels(spec, config)},
        "stringData": {SECRET_INPUT_KEY: input.expose()},
    });
    serde_json::from_value(value).map(Some).map_err(KubernetesError::ManifestShape)
}

/// The egress NetworkPolicy of a task: its Pod (by task label) may reach DNS and the allowed CIDRs
/// and ports, nothing else. Named like the Job, labelled like it.
///
/// A warm sandbox's policy selects its Pod by [`labels::WARM_ID`] (`warm`), the label that stays
/// when the Pod is handed a task.
pub fn network_policy(
    spec: &TaskSpec,
    config: &KubernetesConfig,
    policy: &crate::config::EgressPolicy,
    warm: bool,
) -> Result<k8s_openapi::api::networking::v1::NetworkPolicy, KubernetesError> {
    let selected_by = if warm { labels::WARM_ID } else { labels::TASK_ID };
    let labels = job_labels(spec, config);
    let ports: Vec<Value> = policy.ports.iter().map(|p| json!({"protocol": "TCP", "port": p})).collect();
    let mut allowed = json!({"to": policy.allowed_cidrs.iter().map(|c| json!({"ipBlock": {"cidr": c.to_string()}})).collect::<Vec<_>>()});
    if !ports.is_empty() {
        allowed["ports"] = json!(ports);
    }
    let value = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": job_name(spec), "namespace": config.namespace, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": {selected_by: spec.task_id, labels::WORKER_ID: config.worker_id}},
            "policyTypes": ["Egress"],
            "egress": [
                {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                allowed,
            ],
        },
    });
    serde_json::from_value(value).map_err(KubernetesError::ManifestShape)
}

/// Merges the generated PodSpec over `template`: our fields win; init containers are ours then the
/// template's; the template's container named `task` is merged under ours (our env wins by name);
/// other template containers and volumes are kept.
pub fn merge_pod_spec(template: &Value, generated: Value) -> Result<Value, KubernetesError> {
    let Some(template) = template.as_object() else {
        return Err(KubernetesError::Manifest("pod_template must be a PodSpec object".into()));
    };
    let mut merged = template.clone();
    let Value::Object(ours) = generated else {
        return Err(KubernetesError::Manifest("internal: not an object".into()));
    };
    for (key, value) in ours {
        let theirs = merged.remove(&key);
        let combined = match (key.as_str(), theirs) {
            ("initContainers" | "volumes", Some(Value::Array(theirs))) => {
                let mut list = value.as_array().cloned().unwrap_or_default();
                let names: Vec<Value> = list.iter().map(|v| v["name"].clone()).collect();
                list.extend(theirs.into_iter().filter(|v| !names.contains(&v["name"])));
                Value::Array(list)
            }
            ("containers", Some(Value::Array(theirs))) => {
                let mut list = Vec::new();
                for ours in value.as_array().cloned().unwrap_or_default() {
                    let base = theirs.iter().find(|c| c["name"] == ours["name"]).cloned();
                    list.push(match base {
                        Some(base) => merge_container(base, ours),
                        None => ours,
                    });
                }
                let names: Vec<Value> = list.iter().map(|v| v["name"].clone()).collect();
                list.extend(theirs.into_iter().filter(|c| !names.contains(&c["name"])));
                Value::Array(list)
            }
            _ => value,
        };
        merged.insert(key, combined);
    }
    Ok(Value::Object(merged))
}

fn merge_container(base: Value, ours: Value) -> Value {
    let (Value::Object(mut base), Value::Object(ours)) = (base, ours) else { return Value::Null };
    for (key, value) in ours {
        if key == "env" {
            let mut env: Vec<Value> = base.remove("env").and_then(|e| e.as_array().cloned()).unwrap_or_default();
            for var in value.as_array().cloned().unwrap_or_default() {
                env.retain(|e| e["name"] != var["name"]);
                env.push(var);
            }
            base.insert(key, Value::Array(env));
        } else if key == "volumeMounts" {
            let mut list = value.as_array().cloned().unwrap_or_default();
            let paths: Vec<Value> = list.iter().map(|m| m["mountPath"].clone()).collect();
            let theirs = base.remove("volumeMounts").and_then(|m| m.as_array().cloned()).unwrap_or_default();
            list.extend(theirs.into_iter().filter(|m| !paths.contains(&m["mountPath"])));
            base.insert(key, Value::Array(list));
        } else {
            base.insert(key, value);
        }
    }
    Value::Object(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_core::task::EnvEntry;
    use std::time::Duration;

    fn spec() -> TaskSpec {
        let mut spec = TaskSpec::new("run-1", vec!["/agent/entrypoint.sh".into(), "agent".into(), "run".into()])
            .env("TASK_ID", "run-1")
            .env("A", "1");
        spec.execution_id = Some("exec-1".into());
        spec.sandbox.image = Some(oz_core::image::ImageRef::parse("debian:bookworm").unwrap());
        spec.sandbox.resources.vcpus = Some(2.0);
        spec.sandbox.resources.memory_bytes = Some(4 << 30);
        spec
    }

    #[test]
    fn the_job_has_oz_shape() {
        let mut config = KubernetesConfig::new("w1", "ghcr.io/acme/oz-sidecar:1");
        config.namespace = "agents".into();
        config.setup_command = Some("./prepare.sh".into());
        config.teardown_command = Some("./cleanup.sh".into());
        config.workspace_size_limit = Some("10Gi".into());
        config.extra_labels.insert("team".into(), "infra".into());
        let job = serde_json::to_value(job(&spec(), &config).unwrap()).unwrap();
        assert_eq!(job["metadata"]["name"], "oz-run-1-exec-1");
        assert_eq!(job["metadata"]["namespace"], "agents");
        for (k, v) in [
            ("oz.dev/worker-id", "w1"),
            ("oz.dev/task-id", "run-1"),
            ("oz.dev/execution-id", "exec-1"),
            ("oz.dev/managed-by", "oz"),
            ("team", "infra"),
        ] {
            assert_eq!(job["metadata"]["labels"][k], v, "{k}");
            assert_eq!(job["spec"]["template"]["metadata"]["labels"][k], v, "pod {k}");
        }
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 28_800);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 86_400);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["initContainers"][0]["name"], SIDECAR_INIT);
        assert_eq!(pod["initContainers"][0]["image"], "ghcr.io/acme/oz-sidecar:1");
        assert_eq!(pod["initContainers"][0]["securityContext"]["runAsUser"], 0);
        assert_eq!(pod["initContainers"][1]["name"], SETUP_INIT);
        assert_eq!(pod["initContainers"][1]["command"][2], "./prepare.sh");
        let task = &pod["containers"][0];
        assert_eq!(task["name"], TASK_CONTAINER);
        assert_eq!(task["image"], "debian:bookworm");
        assert_eq!(task["command"], json!(["/agent/entrypoint.sh", "agent", "run"]));
        assert_eq!(task["workingDir"], "/workspace");
        assert_eq!(task["resources"]["requests"], json!({"cpu": "2000m", "memory": "4294967296"}));
        assert_eq!(task["resources"]["limits"], task["resources"]["requests"], "requests equal limits");
        assert_eq!(task["lifecycle"]["preStop"]["exec"]["command"][2], "./cleanup.sh");
        assert_eq!(task["volumeMounts"][1], json!({"name": "agent", "mountPath": "/agent", "readOnly": true}));
        assert_eq!(pod["volumes"][0], json!({"name": "workspace", "emptyDir": {"sizeLimit": "10Gi"}}));
        assert_eq!(pod["volumes"][1], json!({"name": "agent", "emptyDir": {}}));
    }

    /// `backend.kubernetes.environment` reaches the task and its setup, over the task's own values.
    #[test]
    fn the_configured_environment_reaches_the_task_and_setup() {
        let mut config = KubernetesConfig::new("w1", "acme/sidecar:2");
        config.setup_command = Some("./prepare.sh".into());
        config.environment = vec![EnvEntry::new("FROM_CONFIG", "cfg"), EnvEntry::new("A", "configured")];
        let job = serde_json::to_value(job(&spec(), &config).unwrap()).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        for container in [&pod["containers"][0], &pod["initContainers"][1]] {
            let env = container["env"].as_array().unwrap();
            assert!(env.contains(&json!({"name": "FROM_CONFIG", "value": "cfg"})), "{env:?}");
            assert!(env.contains(&json!({"name": "A", "value": "configured"})), "{env:?}");
            assert!(!env.contains(&json!({"name": "A", "value": "1"})), "{env:?}");
        }
        config.environment = vec![EnvEntry { name: "UNRESOLVED".into(), value: None }];
        assert!(super::job(&spec(), &config).unwrap_err().to_string().contains("UNRESOLVED"));
    }

    #[test]
    fn image_volumes_timeouts_and_no_cleanup() {
        let mut config = KubernetesConfig::new("w1", "acme/sidecar:2");
        config.use_image_volumes = true;
        let mut s = spec().timeout(Duration::from_secs(600)).cleanup(false);
        s.execution_id = None;
        let job = serde_json::to_value(job(&s, &config).unwrap()).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["initContainers"], json!([]), "no copy with an image volume");
        assert_eq!(
            pod["volumes"][1],
            json!({"name": "agent", "image": {"reference": "acme/sidecar:2", "pullPolicy": "IfNotPresent"}})
        );
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 600);
        assert!(job["spec"].get("ttlSecondsAfterFinished").is_none());
        assert_eq!(job["metadata"]["name"], "oz-run-1");
    }

    #[test]
    fn the_pod_template_merges_under_ours() {
        let mut config = KubernetesConfig::new("w1", "acme/sidecar:2");
        config.pod_template = Some(json!({
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"pool": "agents"},
            "restartPolicy": "Always",
            "initContainers": [{"name": "warm-cache", "image": "busybox"}],
            "containers": [
                {"name": "task", "env": [{"name": "A", "value": "from-template"}, {"name": "B", "value": "2"}],
                 "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
                {"name": "proxy", "image": "envoy"}
            ],
            "volumes": [{"name": "cache", "emptyDir": {}}]
        }));
        let job = serde_json::to_value(job(&spec(), &config).unwrap()).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["imagePullSecrets"][0]["name"], "regcred");
        assert_eq!(pod["nodeSelector"]["pool"], "agents");
        assert_eq!(pod["restartPolicy"], "Never", "ours wins");
        assert_eq!(pod["initContainers"][0]["name"], SIDECAR_INIT, "our init containers first");
        assert_eq!(pod["initContainers"][1]["name"], "warm-cache");
        let task = &pod["containers"][0];
        let env = task["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "A", "value": "1"})), "our env wins: {env:?}");
        assert!(!env.contains(&json!({"name": "A", "value": "from-template"})));
        assert!(env.contains(&json!({"name": "B", "value": "2"})), "theirs is kept");
        assert!(task["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == "/cache"));
        assert_eq!(pod["containers"][1]["name"], "proxy");
        assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "cache"));
        assert!(merge_pod_spec(&json!([1]), json!({})).is_err());
    }

    #[test]
    fn the_egress_policy_allows_dns_and_the_listed_ranges_only() {
        let config = KubernetesConfig::new("w1", "acme/sidecar:2");
        let policy =
            crate::config::EgressPolicy { allowed_cidrs: vec!["140.82.112.0/20".parse().unwrap()], ports: vec![443] };
        let np = serde_json::to_value(network_policy(&spec(), &config, &policy, false).unwrap()).unwrap();
        assert_eq!(np["metadata"]["name"], "oz-run-1-exec-1");
        assert_eq!(np["spec"]["podSelector"]["matchLabels"]["oz.dev/task-id"], "run-1");
        assert_eq!(np["spec"]["policyTypes"], json!(["Egress"]));
        assert_eq!(np["spec"]["egress"][0]["ports"][0], json!({"protocol": "UDP", "port": 53}));
        assert_eq!(np["spec"]["egress"][1]["to"], json!([{"ipBlock": {"cidr": "140.82.112.0/20"}}]));
        assert_eq!(np["spec"]["egress"][1]["ports"], json!([{"protocol": "TCP", "port": 443}]));
    }

    #[test]
    fn a_warm_job_takes_stdin_once_reads_its_environment_from_an_annotation_and_is_claimed_by_label() {
        let config = KubernetesConfig::new("w1", "acme/sidecar:2");
        let mut warm = spec();
        warm.task_id = "warm-abc".into();
        warm.execution_id = None;
        let job = serde_json::to_value(warm_job(&warm, &config, r#"{"name":"app"}"#).unwrap()).unwrap();
        assert_eq!(job["metadata"]["labels"]["oz.dev/warm-id"], "warm-abc");
        assert_eq!(job["metadata"]["labels"]["oz.dev/task-id"], "warm-abc");
        let template = &job["spec"]["template"];
        assert_eq!(template["metadata"]["labels"]["oz.dev/warm-id"], "warm-abc");
        assert_eq!(template["metadata"]["annotations"][WARM_ENVIRONMENT_ANNOTATION], r#"{"name":"app"}"#);
        let task = &template["spec"]["containers"][0];
        assert_eq!((task["stdin"].clone(), task["stdinOnce"].clone()), (json!(true), json!(true)));
        assert!(
            task["volumeMounts"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "oz-warm", "mountPath": "/oz-warm", "readOnly": true}))
        );
        let volume = template["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "oz-warm").unwrap();
        assert_eq!(
            volume["downwardAPI"]["items"][0],
            json!({"path": "environment.json", "fieldRef": {"fieldPath": "metadata.annotations['oz.dev/warm-environment']"}})
        );
        assert!(!template.to_string().contains("secret-input"), "no secret input: the token comes on stdin");
        let huge = "x".repeat(MAX_WARM_ENVIRONMENT_BYTES + 1);
        assert!(warm_job(&warm, &config, &huge).unwrap_err().to_string().contains("too large"));

        // The egress policy of a warm Pod selects it by the label that stays when it is claimed.
        let policy = crate::config::EgressPolicy { allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()], ports: vec![] };
        let np = serde_json::to_value(network_policy(&warm, &config, &policy, true).unwrap()).unwrap();
        assert_eq!(
            np["spec"]["podSelector"]["matchLabels"],
            json!({"oz.dev/warm-id": "warm-abc", "oz.dev/worker-id": "w1"})
        );

        // Claimed: the task's labels (the warm id untouched), its deadline, its receipt.
        assert_eq!(
            claim_job_patch(&spec(), 90, false),
            json!({"metadata": {"labels": {"oz.dev/task-id": "run-1", "oz.dev/execution-id": "exec-1"}},
                   "spec": {"activeDeadlineSeconds": 90}})
        );
        assert_eq!(claim_job_patch(&spec(), 90, true)["spec"]["ttlSecondsAfterFinished"], Value::Null);
        assert!(
            claim_job_patch(&spec(), 90, true)["spec"].as_object().unwrap().contains_key("ttlSecondsAfterFinished")
        );
        assert_eq!(
            claim_pod_patch(&spec(), "oz.dev/warm-receipt", "r1"),
            json!({"metadata": {"labels": {"oz.dev/task-id": "run-1", "oz.dev/execution-id": "exec-1"},
                                "annotations": {"oz.dev/warm-receipt": "r1"}}})
        );
    }

    #[test]
    fn no_service_account_token_or_service_links_unless_the_template_asks() {
        let mut config = KubernetesConfig::new("w1", "acme/sidecar:2");
        let made = serde_json::to_value(job(&spec(), &config).unwrap()).unwrap();
        let pod = &made["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], json!(false));
        assert_eq!(pod["enableServiceLinks"], json!(false));
        config.pod_template =
            Some(json!({"serviceAccountName": "agent-identity", "automountServiceAccountToken": true}));
        let made = serde_json::to_value(job(&spec(), &config).unwrap()).unwrap();
        let pod = &made["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], json!(true), "the operator's choice");
        assert_eq!(pod["enableServiceLinks"], json!(false));
    }

    #[test]
    fn the_package_cache_and_the_git_mirrors_are_claims_the_task_mounts() {
        let mut config = KubernetesConfig::new("w1", "acme/sidecar:2");
        config.package_cache_claim = Some("oz-caches".into());
        config.git_mirror_claim = Some("oz-mirrors".into());
        let mut cached = spec();
        cached.sandbox.cache = Some("env_1".into());
        cached.sandbox.git_mirrors = vec![oz_core::environment::RepoRef::new("acme", "app").unwrap()];
        let made = serde_json::to_value(job(&cached, &config).unwrap()).unwrap();
        let pod = &made["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_array().unwrap();
        assert!(
            volumes.contains(&json!({"name": "oz-package-cache", "persistentVolumeClaim": {"claimName": "oz-caches"}}))
        );
        assert!(volumes.contains(
            &json!({"name": "oz-git-mirrors", "persistentVolumeClaim": {"claimName": "oz-mirrors", "readOnly": true}})
        ));
        let task = &pod["containers"][0];
        let mounts = task["volumeMounts"].as_array().unwrap();
        assert!(
            mounts.contains(&json!({"name": "oz-package-cache", "mountPath": "/oz-cache/env", "subPath": "env_1"}))
        );
        let mirrors: Vec<&Value> = mounts.iter().filter(|m| m["name"] == "oz-git-mirrors").collect();
        assert_eq!(
            mirrors,
            [
                &json!({"name": "oz-git-mirrors", "mountPath": "/oz-cache/git/.oz-check", "subPath": ".oz-check", "readOnly": true}),
                &json!({"name": "oz-git-mirrors", "mountPath": "/oz-cache/git/acme/app.git", "subPath": "acme/app.git", "readOnly": true}),
            ],
            "only the environment's own mirrors (and the check word), never the whole claim"
        );
        assert!(task["env"].as_array().unwrap().contains(&json!({"name": "OZ_CACHE_DIR", "value": "/oz-cache/env"})));
        // A task without a cache key mounts no cache (the mirrors still).
        let plain = serde_json::to_value(job(&spec(), &config).unwrap()).unwrap();
        let text = plain["spec"]["template"]["spec"].to_string();
        assert!(!text.contains("oz-package-cache") && !text.contains("OZ_CACHE_DIR"), "{text}");
        assert!(
            !plain["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].to_string().contains(".git\""),
            "no mirror of another environment"
        );
    }

    #[test]
    fn job_names_are_dns_labels() {
        let mut s = TaskSpec::new("Run_With.Odd", vec!["x".into()]);
        s.execution_id = Some("e".repeat(80));
        let name = job_name(&s);
        assert!(name.len() <= 63);
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name}");
        assert!(name.starts_with("oz-run-with-odd-"));
    }
}
