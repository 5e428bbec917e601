//! Helm acted out against the stand-in and the real services, for the end-to-end tests: a
//! release's test data (`World`), the hooks of an event run in Helm's order with Helm's delete
//! policies and the Job controller's retries (`run_hooks`), an install's release resources, and the
//! gates of the pods they start.

use serde_json::{Value, json};

use super::chart::*;
use super::*;

pub const NAMESPACE: &str = "dev";
pub const RELEASE: &str = "shop";

/// Test data in its own vhost and etcd namespace: stale data, and data that must survive.
pub struct World {
    pub rabbit: Rabbit,
    pub etcd: etcd_client::Client,
    pub vhost: String,
    pub prefix: String,
    pub keep: String,
}

impl World {
    pub async fn new() -> World {
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

    pub async fn seed(&mut self) {
        for queue in ["monorepo", "monorepo-dlq", "billing"] {
            self.rabbit.publish(&self.vhost, queue, 3).await;
        }
        put_keys(&mut self.etcd, &self.prefix, 10).await;
        put_keys(&mut self.etcd, &self.keep, 2).await;
    }

    pub async fn assert_clean(&mut self, when: &str) {
        assert_eq!(self.rabbit.count(&self.vhost, "monorepo").await, 0, "{when}: monorepo purged");
        assert_eq!(self.rabbit.count(&self.vhost, "monorepo-dlq").await, 0, "{when}: monorepo-dlq purged");
        assert_eq!(count_keys(&mut self.etcd, &self.prefix).await, 0, "{when}: prefix deleted");
        assert!(self.rabbit.count(&self.vhost, "billing").await > 0, "{when}: billing survives");
        assert_eq!(count_keys(&mut self.etcd, &self.keep).await, 2, "{when}: monorepo-keep/ survives");
    }

    /// The release values a user would pass for this environment (on top of values-dev.yaml).
    pub fn values(&self, extra: &[String]) -> Vec<String> {
        let mut args = service_values(&self.vhost);
        args.extend(["--set-json".into(), format!("cleanup.etcd.prefixes=[\"{}\"]", self.prefix)]);
        args.extend(extra.iter().cloned());
        args
    }

    pub fn render(&self, extra: &[String]) -> Vec<Value> {
        let args = self.values(extra);
        render(RELEASE, NAMESPACE, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub async fn cleanup(self) {
        self.rabbit.delete_vhost(&self.vhost).await;
    }
}

/// A started gate init container of one pod of a gated Deployment.
pub struct GatePod {
    pub deployment: String,
    pub child: tokio::process::Child,
}

/// values-dev.yaml plus what points the release at the test's RabbitMQ (vhost `vhost`) and etcd,
/// with short retries.
pub fn service_values(vhost: &str) -> Vec<String> {
    vec![
        "-f".to_string(),
        repo_root().join("chart/values-dev.yaml").to_str().unwrap().to_string(),
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
    ]
}

pub fn start_gates(cluster: &FakeCluster, docs: &[Value], suffix: &str) -> Vec<GatePod> {
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

/// Runs the hooks of `event` in Helm's order, stopping after the first Job or Pod that fails (Helm
/// then skips the remaining hooks and fails the release); returns each Job's or Pod's last run by
/// name. A Job is run as its controller would: a failed pod is replaced until `backoffLimit`
/// retries are used up.
pub async fn run_hooks(cluster: &mut FakeCluster, docs: &[Value], event: &str) -> Vec<(String, Run)> {
    let mut runs = Vec::new();
    let mut succeeded_hooks = Vec::new();
    for hook in hooks_for(docs, event) {
        succeeded_hooks.push(hook);
        match kind(hook) {
            "Job" | "Pod" => {
                let spec = pod_spec(hook);
                let container = &spec["containers"][0];
                let attempts = match kind(hook) {
                    "Job" => hook["spec"]["backoffLimit"].as_u64().unwrap_or(6) + 1,
                    _ => 1,
                };
                let mut last = None;
                for attempt in 1..=attempts {
                    if kind(hook) == "Job" {
                        // The Job controller's count of failed pods, which the purge reads.
                        let namespace = cluster.namespace.clone();
                        cluster.api.put_job(&namespace, name(hook), attempts as u32 - 1, attempt as u32 - 1);
                    }
                    let pod = if attempt == 1 {
                        format!("{}-x7k2p", name(hook))
                    } else {
                        format!("{}-r{attempt}", name(hook))
                    };
                    let run = finish(cluster.spawn(spec, container, &pod)).await;
                    let done = run.code == 0 || fails_the_job_at_once(hook, run.code);
                    last = Some(run);
                    if done {
                        break;
                    }
                }
                let run = last.expect("at least one attempt");
                let failed = run.code != 0;
                runs.push((name(hook).to_string(), run));
                if failed {
                    succeeded_hooks.pop();
                    // Helm 4 deletes the event's hooks that had succeeded (execHookWithDelayedShutdown);
                    // Helm 3 applies only hook-failed, to the failed hook (pkg/action/hooks.go).
                    if helm_major() < 4 {
                        succeeded_hooks.clear();
                    }
                    break;
                }
            }
            // The template renders the marker on upgrade only when `lookup` finds none, or finds
            // one ahead of this revision (a leftover); `helm template` cannot look it up, so the
            // harness does what a real `helm upgrade` would.
            "ConfigMap"
                if event.ends_with("-upgrade") && name(hook).ends_with("-marker") && {
                    let revision = rendered_revision(docs);
                    cluster.api.object(&cluster.namespace, name(hook)).is_some_and(|found| {
                        let number = |key: &str| found["data"][key].as_str().and_then(|v| v.parse::<u64>().ok());
                        number("revision").unwrap_or(0) <= revision
                            && number("lastSucceededRevision").unwrap_or(0) <= revision
                    })
                } => {}
            _ => cluster.apply(hook),
        }
    }
    cluster.delete_succeeded_hooks(&succeeded_hooks);
    runs
}

/// The Job controller's `podFailurePolicy`: a `FailJob` rule whose `onExitCodes` (operator `In`)
/// holds the container's exit code fails the Job without another pod
/// (https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy).
pub fn fails_the_job_at_once(job: &Value, code: i32) -> bool {
    let rules = job["spec"]["podFailurePolicy"]["rules"].as_array().cloned().unwrap_or_default();
    rules.iter().any(|rule| {
        rule["action"] == "FailJob"
            && rule["onExitCodes"]["operator"] == "In"
            && rule["onExitCodes"]["values"]
                .as_array()
                .is_some_and(|v| v.iter().any(|c| c.as_i64() == Some(code.into())))
    })
}

/// What `helm install` does before the post-install hooks: the pre-install hooks (the marker is
/// reset there), then the release resources.
pub async fn install_resources(cluster: &mut FakeCluster, docs: &[Value]) {
    let runs = run_hooks(cluster, docs, "pre-install").await;
    all_succeeded(&runs, "pre-install");
    for resource in release_resources(docs) {
        cluster.apply(resource);
    }
}

/// A marker left over from an uninstalled installation whose revisions went up to 7 (hooks survive
/// `helm uninstall`).
pub fn put_leftover_marker(cluster: &FakeCluster) {
    let leftover = [("revision", "7"), ("status", "succeeded"), ("lastSucceededRevision", "7")];
    cluster.api.put(
        NAMESPACE,
        "shop-cleanslate-marker",
        leftover.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    );
}

/// The release revision the rendered gates and Job carry.
pub fn rendered_revision(docs: &[Value]) -> u64 {
    let job = docs.iter().find(|d| kind(d) == "Job" && name(d).ends_with("-purge")).expect("a purge Job");
    pod_spec(job)["containers"][0]["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "CLEANSLATE_REVISION"))
        .and_then(|e| e["value"].as_str()?.parse().ok())
        .expect("CLEANSLATE_REVISION")
}

/// The run of the Job or Pod `job` among `runs`.
pub fn job_run<'a>(runs: &'a [(String, Run)], job: &str) -> &'a Run {
    let names: Vec<&str> = runs.iter().map(|(n, _)| n.as_str()).collect();
    runs.iter().find(|(n, _)| n == job).map(|(_, run)| run).unwrap_or_else(|| panic!("{job} did not run: {names:?}"))
}

/// Asserts that every Job or Pod in `runs` succeeded.
pub fn all_succeeded(runs: &[(String, Run)], when: &str) {
    for (name, run) in runs {
        assert_eq!(run.code, 0, "{when}: {name} succeeds: {}", run.all_output());
    }
}

/// `spec.replicas` and the quiesce record of a Deployment in the fake cluster.
pub fn replicas(cluster: &FakeCluster, deployment: &str) -> (i64, Option<String>) {
    cluster.api.replicas_and_annotation(NAMESPACE, "deployments", deployment)
}

pub fn marker(cluster: &FakeCluster) -> serde_json::Map<String, Value> {
    let object = cluster.api.object(NAMESPACE, "shop-cleanslate-marker").expect("marker exists");
    object["data"].as_object().cloned().unwrap_or_default()
}

pub fn secrets() -> Vec<String> {
    vec![
        rabbit_password(),
        FakeCluster::token_of("shop-cleanslate-purge"),
        FakeCluster::token_of("shop-cleanslate-gate"),
    ]
}

/// Installs the release (post-install Job and resume Job) with `extra` values; returns the docs.
pub async fn install(world: &World, cluster: &mut FakeCluster, extra: &[String]) -> Vec<Value> {
    let docs = world.render(extra);
    install_resources(cluster, &docs).await;
    let runs = run_hooks(cluster, &docs, "post-install").await;
    all_succeeded(&runs, "install");
    let resume_on_install =
        hooks_for(&docs, "post-install").iter().any(|d| kind(d) == "Job" && name(d).ends_with("-resume"));
    assert_eq!(runs.len(), 1 + usize::from(resume_on_install), "purge Job, then the resume Job where rendered");
    for deployment in ["shop-producer", "shop-consumer"] {
        cluster.api.pass_gates(&cluster.namespace.clone(), deployment);
    }
    docs
}

/// The pre-upgrade hooks of `upgrade` while the previous revision's app in `deployment` keeps
/// writing (`old_writer`): the hooks before the Job are applied, the Job starts once the writer has
/// written, both run side by side, and Helm's `hook-succeeded` deletions follow. Returns how many
/// writes the old app made and the Job's run.
pub async fn pre_upgrade_with_old_writer(
    cluster: &mut FakeCluster,
    world: &World,
    upgrade: &[Value],
    deployment: &str,
    pod: &str,
) -> (usize, Run) {
    let hooks = hooks_for(upgrade, "pre-upgrade");
    let (job_doc, resources) = hooks.split_last().expect("pre-upgrade hooks");
    assert_eq!(kind(job_doc), "Job", "the purge Job is the last pre-upgrade hook");
    for resource in resources {
        cluster.apply(resource);
    }
    let spec = pod_spec(job_doc);
    let cues = WriterCues::default();
    let writer =
        old_writer(&cluster.api, NAMESPACE, deployment, &world.rabbit, &world.vhost, "monorepo", &world.prefix, &cues);
    let job = async {
        cues.running.notified().await;
        let run = finish(cluster.spawn(spec, &spec["containers"][0], pod)).await;
        cues.run_ended.store(true, std::sync::atomic::Ordering::SeqCst);
        run
    };
    let (written, job) = tokio::join!(writer, job);
    if job.code == 0 {
        cluster.delete_succeeded_hooks(&hooks);
    }
    (written, job)
}
