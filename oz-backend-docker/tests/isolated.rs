//! The isolated network mode against the real engine: the task reaches an allowed domain through the
//! egress proxy, and nothing else: not another domain, not an address, not loopback, not a direct
//! connection. The "outside" is a network and an HTTP server this test creates; no traffic leaves
//! the machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use oz_backend_docker::{DockerBackend, DockerConfig, PullPolicy};
use oz_core::backend::{Backend, TaskEvent};
use oz_core::image::ImageRef;
use oz_core::task::{NetworkMode, TaskSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_task_reaches_only_its_allowed_domains_through_the_proxy() {
    let Some(sidecar) = support::sidecar() else { return };
    // Probe the engine first with a plain config (skips loudly without one).
    let Some(probe) = support::backend(DockerConfig::new("isolated-probe"), support::BUSYBOX).await else { return };
    let docker = probe.docker().clone();
    let suffix = format!("{}-{}", std::process::id(), rand_suffix());
    // "The world": an internal network of the test's own with an HTTP server on it.
    let world = format!("oz-test-world-{suffix}");
    let mut test_labels = HashMap::new();
    test_labels.insert("oz.dev/test".to_owned(), suffix.clone());
    docker
        .create_network(NetworkCreateRequest {
            name: world.clone(),
            internal: Some(true),
            labels: Some(test_labels.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let server = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&format!("oz-test-upstream-{suffix}")).build()),
            ContainerCreateBody {
                image: Some(support::BUSYBOX.into()),
                cmd: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "mkdir -p /www && echo hello-from-upstream > /www/index.html && exec httpd -f -p 80 -h /www".into(),
                ]),
                labels: Some(test_labels.clone()),
                host_config: Some(HostConfig { network_mode: Some(world.clone()), ..Default::default() }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        world.clone(),
                        EndpointSettings {
                            aliases: Some(vec!["upstream.test".into(), "forbidden.test".into()]),
                            ..Default::default()
                        },
                    )])),
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker.start_container(&server.id, None::<bollard::query_parameters::StartContainerOptions>).await.unwrap();
    let inspect =
        docker.inspect_network(&world, None::<bollard::query_parameters::InspectNetworkOptions>).await.unwrap();
    let subnet = inspect.ipam.unwrap().config.unwrap()[0].subnet.clone().unwrap();
    let server_ip = docker
        .inspect_container(&server.id, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .unwrap()
        .network_settings
        .unwrap()
        .networks
        .unwrap()[&world]
        .ip_address
        .clone()
        .unwrap();

    let mut config = DockerConfig::new("isolated-test");
    config.sidecar_binary = Some(sidecar);
    config.pull_policy = PullPolicy::Never;
    config.egress_network = world.clone();
    // The test's world is a private range: allow it, as an operator would allow their own services.
    config.allowed_ranges = vec![subnet.parse().unwrap()];
    let backend = DockerBackend::connect(config).await.unwrap();
    // bash's /dev/tcp as the client: the images have no curl, and busybox's static wget cannot resolve.
    let script = format!(
        r#"get() {{ # get PROXY_OR_DIRECT URL HOST
  if exec 3<>/dev/tcp/$1/${{4:-80}}; then
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$3" >&3
    timeout 5 cat <&3
    exec 3<&-
  fi
}}
get egress http://upstream.test/ upstream.test 3128 | tee /tmp/a; grep -q hello-from-upstream /tmp/a; echo "allowed=$?"
get egress http://forbidden.test/ forbidden.test 3128 | tee /tmp/b; grep -q hello-from-upstream /tmp/b; echo "other-domain=$?"
get egress http://169.254.169.254/latest/meta-data/ x 3128 | tee /tmp/c; grep -q '200 OK' /tmp/c; echo "metadata=$?"
get egress http://{server_ip}/ x 3128 | tee /tmp/d; grep -q hello-from-upstream /tmp/d; echo "address=$?"
timeout 5 bash -c 'exec 3<>/dev/tcp/{server_ip}/80' 2>/dev/null; echo "direct=$?"
"#
    );
    let mut spec = TaskSpec::new(format!("isolated-{suffix}"), vec!["/bin/bash".into(), "-c".into(), script]);
    spec.sandbox.image = Some(ImageRef::parse(support::DEBIAN_GIT).unwrap());
    spec.sandbox.network = NetworkMode::Isolated { allowed_domains: vec!["upstream.test".into()] };
    spec.cleanup = false;
    let proxy_name = format!("oz-egress-{}", spec.task_id);
    let mut handle = backend.launch(spec.clone()).await.unwrap();
    let mut events = handle.take_events().unwrap();
    let mut out = String::new();
    while let Some(e) = events.recv().await {
        if let TaskEvent::Stdout(b) | TaskEvent::Stderr(b) = e {
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait()).await.unwrap();
    let logs = container_logs(&docker, &proxy_name).await;

    // Clean up before asserting, so a failure leaves nothing behind.
    oz_backend_docker::task::remove_task(&docker, &spec.task_id, &oz_backend_docker::container::container_name(&spec))
        .await;
    oz_backend_docker::task::remove(&docker, &server.id).await;
    docker.remove_network(&world).await.unwrap();

    assert!(outcome.succeeded(), "{outcome:?}\n{out}");
    assert!(
        out.contains("hello-from-upstream") && out.contains("allowed=0"),
        "the allowed domain works:\n{out}\nproxy:\n{logs}"
    );
    for refused in ["other-domain=", "metadata=", "address=", "direct="] {
        let line = out.lines().find(|l| l.starts_with(refused)).unwrap_or_else(|| panic!("{refused} missing:\n{out}"));
        assert_ne!(line, format!("{refused}0"), "{refused} got through:\n{out}");
    }
    assert!(logs.contains("refused GET forbidden.test:80: forbidden.test is not on the allow-list"), "{logs}");
    assert!(logs.contains("refused GET 169.254.169.254:80"), "{logs}");
    assert!(logs.contains("allowed GET upstream.test:80"), "{logs}");
    assert!(support::labelled(&docker, oz_core::task::labels::TASK_ID, &spec.task_id).await.is_empty());
}

fn rand_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos())
}

async fn container_logs(docker: &bollard::Docker, name: &str) -> String {
    use futures::StreamExt;
    let options = bollard::query_parameters::LogsOptionsBuilder::default().stdout(true).stderr(true).build();
    let mut stream = docker.logs(name, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&chunk.to_string());
    }
    text
}
