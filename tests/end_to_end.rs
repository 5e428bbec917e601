//! End to end through the chart: render with the real `helm template`, then run the real binary
//! with exactly the args and environment of each rendered container (see `support::chart`), in
//! Helm's order, against the real RabbitMQ and etcd and the Kubernetes API stand-in.
//!
//! Helm's install: pre-install hooks → release resources (the gated pods start and wait) →
//! post-install hooks by weight. Helm's upgrade: pre-upgrade hooks → release resources → post-upgrade.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::chart::*;
use support::*;

const NAMESPACE: &str = "dev";
const RELEASE: &str = "shop";

/// Test data in its own vhost and etcd namespace: stale data, and data that must survive.
struct World {
    rabbit: Rabbit,
    etcd: etcd_client::Client,
    vhost: String,
    prefix: String,
    keep: String,
}

impl World {
    async fn new() -> World {
        let rabbit = Rabbit::connect().await;
        let vhost = unique("e2e");
        rabbit.create_vhost(&vhost).await;
        for queue in ["monorepo", "monorepo-dlq", "billing"] {
            rabbit.declare(&vhost, queue, json!({})).await;
        }
        let ns = unique("/e2e");
        World {
            rabbit,
            etcd: etcd().await,
            vhost,
            prefix: format!("{ns}/monorepo/"),
            keep: format!("{ns}/monorepo-keep/"),
        }
    }

    async fn seed(&mut self) {
        for queue in ["monorepo", "monorepo-dlq", "billing"] {
            self.rabbit.publish(&self.vhost, queue, 3).await;
        }
        put_keys(&mut self.etcd, &self.prefix, 10).await;
        put_keys(&mut self.etcd, &self.keep, 2).await;
    }

    async fn assert_clean(&mut self, when: &str) {
        assert_eq!(self.rabbit.count(&self.vhost, "monorepo").await, 0, "{when}: monorepo purged");
        assert_eq!(self.rabbit.count(&self.vhost, "monorepo-dlq").await, 0, "{when}: monorepo-dlq purged");
        assert_eq!(count_keys(&mut self.etcd, &self.prefix).await, 0, "{when}: prefix deleted");
        assert!(self.rabbit.count(&self.vhost, "billing").await > 0, "{when}: billing survives");
        assert_eq!(count_keys(&mut self.etcd, &self.keep).await, 2, "{when}: monorepo-keep/ survives");
    }

    /// The release values a user would pass for this environment (on top of values-dev.yaml).
    fn values(&self, extra: &[String]) -> Vec<String> {
        let mut args = vec![
            "-f".to_string(),
            repo_root().join("chart/values-dev.yaml").to_str().unwrap().to_string(),
            "--set".into(),
            format!("cleanup.rabbitmq.url={}", rabbit_url()),
            "--set-string".into(),
            format!("cleanup.rabbitmq.vhost={}", self.vhost),
            "--set-string".into(),
            format!("cleanup.rabbitmq.username={}", rabbit_user()),
            "--set-string".into(),
            format!("cleanup.rabbitmq.password={}", rabbit_password()),
            "--set-json".into(),
            format!("cleanup.etcd.endpoints=[\"{}\"]", etcd_endpoint()),
            "--set-json".into(),
            format!("cleanup.etcd.prefixes=[\"{}\"]", self.prefix),
            "--set".into(),
            "cleanup.retry.backoff=200ms".into(),
        ];
        args.extend(extra.iter().cloned());
        args
    }

    fn render(&self, extra: &[String]) -> Vec<Value> {
        let args = self.values(extra);
        render(RELEASE, NAMESPACE, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    async fn cleanup(self) {
        self.rabbit.delete_vhost(&self.vhost).await;
    }
}

/// A started gate init container of one pod of a gated Deployment.
struct GatePod {
    deployment: String,
    child: tokio::process::Child,
}

fn start_gates(cluster: &FakeCluster, docs: &[Value], suffix: &str) -> Vec<GatePod> {
    release_resources(docs)
        .into_iter()
        .filter(|d| kind(d) == "Deployment")
        .map(|deployment| {
            let spec = pod_spec(deployment);
            let init = spec["initContainers"].as_array().expect("gated Deployment has init containers");
            let gate = init.iter().find(|c| c["name"] == "cleanslate-gate").expect("gate container");
            let pod_name = format!("{}-{suffix}", name(deployment));
            GatePod { deployment: name(deployment).to_string(), child: cluster.spawn(spec, gate, &pod_name) }
        })
        .collect()
}

/// Runs the hooks of `event` in Helm's order; returns the Job's (last) run, if there was a Job. A Job
/// is run as its controller would: a failed pod is replaced until `backoffLimit` retries are used up.
async fn run_hooks(cluster: &mut FakeCluster, docs: &[Value], event: &str) -> Option<Run> {
    let mut job_run = None;
    for hook in hooks_for(docs, event) {
        match kind(hook) {
            "Job" | "Pod" => {
                let spec = pod_spec(hook);
                let container = &spec["containers"][0];
                let attempts = match kind(hook) {
                    "Job" => hook["spec"]["backoffLimit"].as_u64().unwrap_or(6) + 1,
                    _ => 1,
                };
                for attempt in 1..=attempts {
                    let pod = if attempt == 1 {
                        format!("{}-x7k2p", name(hook))
                    } else {
                        format!("{}-r{attempt}", name(hook))
                    };
                    let run = finish(cluster.spawn(spec, container, &pod)).await;
                    let succeeded = run.code == 0;
                    job_run = Some(run);
                    if succeeded {
                        break;
                    }
                }
            }
            _ => cluster.apply(hook),
        }
    }
    job_run
}

fn marker(cluster: &FakeCluster) -> serde_json::Map<String, Value> {
    let object = cluster.api.object(NAMESPACE, "shop-cleanslate-marker").expect("marker exists");
    object["data"].as_object().cloned().unwrap_or_default()
}

fn secrets() -> Vec<String> {
    vec![
        rabbit_password(),
        FakeCluster::token_of("shop-cleanslate-purge"),
        FakeCluster::token_of("shop-cleanslate-gate"),
    ]
}

/// A fresh install, an upgrade and `helm test`, with the default hooks (post-install, pre-upgrade).
#[tokio::test]
async fn install_upgrade_and_helm_test() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;

    // helm install (revision 1): release resources first, so the gates start and wait.
    let install = world.render(&[]);
    assert!(hooks_for(&install, "pre-install").is_empty(), "no pre-install hooks by default");
    for resource in release_resources(&install) {
        cluster.apply(resource);
    }
    let mut gates = start_gates(&cluster, &install, "rs1-a");
    assert_eq!(gates.len(), 2, "producer and consumer are gated");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for gate in &mut gates {
        assert!(gate.child.try_wait().expect("status").is_none(), "{} waits for the marker", gate.deployment);
    }
    let job = run_hooks(&mut cluster, &install, "post-install").await.expect("post-install Job ran");
    assert_eq!(job.code, 0, "install Job succeeds: {}", job.all_output());
    let written = Instant::now();
    for gate in gates {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: gate passes after the Job: {}", gate.deployment, run.all_output());
        run.assert_no_secret(&secrets().iter().map(String::as_str).collect::<Vec<_>>());
    }
    eprintln!("gates released {:?} after the Job ended", written.elapsed());
    world.assert_clean("after install").await;
    let data = marker(&cluster);
    assert_eq!(
        (data["revision"].as_str(), data["status"].as_str()),
        (Some("1"), Some("succeeded")),
        "marker: {data:?}"
    );
    assert_eq!(data["job"], json!("shop-cleanslate-purge-x7k2p"), "pod name from the fieldRef");
    job.assert_no_secret(&secrets().iter().map(String::as_str).collect::<Vec<_>>());

    // helm upgrade (revision 2): the pre-upgrade Job runs before the Deployments change.
    world.seed().await;
    let upgrade = world.render(&["--is-upgrade".into(), "--set".into(), "cleanup.revision=2".into()]);
    let job = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await.expect("pre-upgrade Job ran");
    assert_eq!(job.code, 0, "upgrade Job succeeds: {}", job.all_output());
    world.assert_clean("after upgrade").await;
    assert_eq!(marker(&cluster)["revision"], json!("2"), "marker at revision 2");
    for resource in release_resources(&upgrade) {
        cluster.apply(resource);
    }
    let before = cluster.api.requests().len();
    for gate in start_gates(&cluster, &upgrade, "rs2-a") {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: new pod passes at once: {}", gate.deployment, run.all_output());
    }
    let watches = cluster.api.requests()[before..].iter().filter(|r| r.query.contains("watch")).count();
    assert_eq!(watches, 0, "the new pods' gates passed on their first read");

    // helm test: the test Pod purges again with the same configuration.
    world.seed().await;
    let test = run_hooks(&mut cluster, &upgrade, "test").await.expect("test Pod ran");
    assert_eq!(test.code, 0, "helm test purge succeeds: {}", test.all_output());
    world.assert_clean("after helm test").await;
    assert_eq!(marker(&cluster)["revision"], json!("2"), "helm test rewrites the same revision");
    assert_eq!(marker(&cluster)["job"], json!("shop-cleanslate-test-purge-x7k2p"), "written by the test Pod");
    world.cleanup().await;
}

/// A Job that fails (wrong password): the waiting gates fail fast with its message.
#[tokio::test]
async fn failing_job_fails_the_gates_fast() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let docs = world.render(&["--set-string".into(), "cleanup.rabbitmq.password=Wrong-E2e-Pw".into()]);
    for resource in release_resources(&docs) {
        cluster.apply(resource);
    }
    let gates = start_gates(&cluster, &docs, "rs1-b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = run_hooks(&mut cluster, &docs, "post-install").await.expect("Job ran");
    assert_eq!(job.code, 1, "the Job fails: {}", job.all_output());
    let failed_at = Instant::now();
    for gate in gates {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 1, "{}: gate fails: {}", gate.deployment, run.all_output());
        assert!(
            run.first_stderr_line().contains("rejected the login"),
            "{}: Job's message: {}",
            gate.deployment,
            run.stderr
        );
        run.assert_no_secret(&["Wrong-E2e-Pw", &rabbit_password()]);
    }
    assert!(failed_at.elapsed() < Duration::from_secs(5), "fast, not at the gate timeout");
    assert_eq!(marker(&cluster)["status"], json!("failed"), "marker says failed");
    assert_eq!(world.rabbit.count(&world.vhost, "monorepo").await, 3, "nothing purged with a wrong password");
    world.cleanup().await;
}

/// With pre-install hooks (services that exist before the release), the Job runs before any pod
/// and the gates pass on their first read.
#[tokio::test]
async fn pre_install_hook_cleans_before_pods_start() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let docs = world.render(&["--set-json".into(), r#"cleanup.hook.events=["pre-install","pre-upgrade"]"#.into()]);
    assert!(hooks_for(&docs, "post-install").is_empty(), "nothing left for post-install");
    let job = run_hooks(&mut cluster, &docs, "pre-install").await.expect("pre-install Job ran");
    assert_eq!(job.code, 0, "Job succeeds before the release resources exist: {}", job.all_output());
    world.assert_clean("after pre-install").await;
    for resource in release_resources(&docs) {
        cluster.apply(resource);
    }
    for gate in start_gates(&cluster, &docs, "rs1-c") {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: passes: {}", gate.deployment, run.all_output());
    }
    world.cleanup().await;
}

/// With cleanup disabled nothing of cleanslate is rendered or run, and the data stays.
#[tokio::test]
async fn disabled_cleanup_renders_and_runs_nothing() {
    let mut world = World::new().await;
    world.seed().await;
    let mut args = world.values(&[]);
    args.extend(["-f".to_string(), repo_root().join("chart/values-prod.yaml").to_str().unwrap().to_string()]);
    let docs = render(RELEASE, NAMESPACE, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        docs.iter().all(|d| kind(d) == "Deployment"),
        "only the apps: {:?}",
        docs.iter().map(kind).collect::<Vec<_>>()
    );
    for deployment in &docs {
        assert!(pod_spec(deployment).get("initContainers").is_none(), "{}: no gate", name(deployment));
    }
    assert_eq!(world.rabbit.count(&world.vhost, "monorepo").await, 3, "nothing purged");
    world.cleanup().await;
}

/// Two preview releases in two namespaces share one RabbitMQ vhost and one etcd, with ONE values
/// file whose names are templates: each release's Job (rendered chart, real binary) purges only its
/// own queue and prefix, and what belongs to neither survives.
#[tokio::test]
async fn preview_environments_clean_only_their_own() {
    let rabbit = Rabbit::connect().await;
    let vhost = unique("preview");
    rabbit.create_vhost(&vhost).await;
    let mut etcd = etcd().await;
    let root = unique("/preview");
    let namespaces = ["pr-101", "pr-102"];
    for namespace in namespaces {
        rabbit.declare(&vhost, &format!("{namespace}.events"), json!({})).await;
        rabbit.publish(&vhost, &format!("{namespace}.events"), 3).await;
        put_keys(&mut etcd, &format!("{root}/{namespace}/"), 4).await;
    }
    rabbit.declare(&vhost, "billing", json!({})).await;
    rabbit.publish(&vhost, "billing", 2).await;
    put_keys(&mut etcd, &format!("{root}/shared/"), 2).await;

    // The one values file every preview environment uses.
    let scratch = tempfile::tempdir().expect("tempdir");
    let preview = scratch.path().join("values-preview.yaml");
    std::fs::write(
        &preview,
        format!(
            "cleanup:\n  environment: preview\n  rabbitmq:\n    queues: [\"{{{{ .Release.Namespace }}}}.events\"]\n  \
             etcd:\n    prefixes: [\"{root}/{{{{ .Release.Namespace }}}}/\"]\n"
        ),
    )
    .unwrap();
    let args = [
        "-f".to_string(),
        repo_root().join("chart/values-dev.yaml").to_str().unwrap().to_string(),
        "-f".into(),
        preview.to_str().unwrap().to_string(),
        "--set".into(),
        format!("cleanup.rabbitmq.url={}", rabbit_url()),
        "--set-string".into(),
        format!("cleanup.rabbitmq.vhost={vhost}"),
        "--set-string".into(),
        format!("cleanup.rabbitmq.username={}", rabbit_user()),
        "--set-string".into(),
        format!("cleanup.rabbitmq.password={}", rabbit_password()),
        "--set-json".into(),
        format!("cleanup.etcd.endpoints=[\"{}\"]", etcd_endpoint()),
        "--set".into(),
        "cleanup.retry.backoff=200ms".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    for (done, namespace) in namespaces.iter().enumerate() {
        let mut cluster = FakeCluster::start(namespace).await;
        let docs = render(RELEASE, namespace, &args);
        let job = run_hooks(&mut cluster, &docs, "post-install").await.expect("post-install Job ran");
        assert_eq!(job.code, 0, "{namespace}: Job succeeds: {}", job.all_output());
        let marker = cluster.api.object(namespace, "shop-cleanslate-marker").expect("marker in its namespace");
        assert_eq!(marker["data"]["status"], json!("succeeded"), "{namespace}: marker");
        for (i, other) in namespaces.iter().enumerate() {
            let (queue, prefix) = (format!("{other}.events"), format!("{root}/{other}/"));
            let cleaned = i <= done;
            assert_eq!(
                rabbit.count(&vhost, &queue).await,
                if cleaned { 0 } else { 3 },
                "after {namespace}'s Job: {queue} {}",
                if cleaned { "purged" } else { "untouched" }
            );
            assert_eq!(
                count_keys(&mut etcd, &prefix).await,
                if cleaned { 0 } else { 4 },
                "after {namespace}'s Job: {prefix} {}",
                if cleaned { "deleted" } else { "untouched" }
            );
        }
    }
    assert_eq!(rabbit.count(&vhost, "billing").await, 2, "a queue of neither environment survives");
    assert_eq!(count_keys(&mut etcd, &format!("{root}/shared/")).await, 2, "a prefix of neither survives");
    rabbit.delete_vhost(&vhost).await;
}

/// An app with its own ServiceAccount (and the others on the gate's) is bound to the gate's Role:
/// every gate passes through the API stand-in's RBAC instead of failing with 403.
#[tokio::test]
async fn apps_with_their_own_service_account_pass_the_gate() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let docs = world.render(&["--set".into(), "apps.producer.serviceAccountName=producer-sa".into()]);
    let producer = find(&docs, "Deployment", "shop-producer");
    assert_eq!(pod_spec(producer)["serviceAccountName"], json!("producer-sa"), "the producer runs as its own");
    for resource in release_resources(&docs) {
        cluster.apply(resource);
    }
    let gates = start_gates(&cluster, &docs, "rs1-d");
    let job = run_hooks(&mut cluster, &docs, "post-install").await.expect("Job ran");
    assert_eq!(job.code, 0, "Job succeeds: {}", job.all_output());
    for gate in gates {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: gate passes with its pod's ServiceAccount: {}", gate.deployment, run.all_output());
    }
    world.cleanup().await;
}
