//! Quiesce and resume through the built binary: the purge stops the listed workloads through the
//! Kubernetes API stand-in (which keeps their pods, as the controllers and kubelet would) before it
//! purges the real RabbitMQ and etcd, puts them back when anything fails or a signal arrives, and
//! `cleanslate resume` starts what is still stopped.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::kube_api::{KubeApi, PodCredentials, ownership};
use support::*;

const NS: &str = "dev";
const MARKER: &str = "shop-cleanslate-marker";
const TOKEN: &str = "purge-token-Secret-33";

fn deployment(name: &str, replicas: Option<i64>) -> Value {
    deployment_manifest(name, replicas)
}

/// Test data in its own vhost and etcd prefix, and a stand-in API with the chart's purge Role for
/// the named workloads.
struct Env {
    api: KubeApi,
    credentials: PodCredentials,
    rabbit: Rabbit,
    etcd: etcd_client::Client,
    vhost: String,
    prefix: String,
}

impl Env {
    async fn start(workloads: &[&str]) -> Env {
        let rabbit = Rabbit::connect().await;
        let vhost = unique("quiesce");
        rabbit.create_vhost(&vhost).await;
        rabbit.declare(&vhost, "monorepo", json!({})).await;
        let api = KubeApi::start().await;
        api.grant(TOKEN, &["get", "update"], Some(&[MARKER]));
        for resource in ["deployments", "deployments/scale", "statefulsets", "statefulsets/scale"] {
            api.grant_on(TOKEN, resource, &["get", "patch", "update"], Some(workloads));
        }
        api.grant_on(TOKEN, "pods", &["list", "watch"], None);
        // The chart creates the marker as a hook before the Job runs.
        api.put(NS, MARKER, Default::default());
        let credentials = api.credentials();
        Env { api, credentials, rabbit, etcd: etcd().await, vhost, prefix: format!("{}/monorepo/", unique("/quiesce")) }
    }

    /// The environment of the purge Job's pod: service-link and in-cluster variables included.
    fn vars(&self, quiesce: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let port = self.api.url.rsplit(':').next().unwrap().to_string();
        let mut vars = service_vars();
        vars.extend(self.credentials.marker_vars(TOKEN, NS, MARKER, 4));
        let base = with(
            vars,
            &[
                ("CLEANSLATE_RABBITMQ_VHOST", &self.vhost),
                ("CLEANSLATE_RABBITMQ_QUEUES", "monorepo"),
                ("CLEANSLATE_ETCD_PREFIXES", &self.prefix),
                ("CLEANSLATE_QUIESCE", quiesce),
                ("CLEANSLATE_QUIESCE_TIMEOUT", "10s"),
                ("CLEANSLATE_POD_NAME", "shop-cleanslate-purge-q7x2k"),
                ("HOSTNAME", "shop-cleanslate-purge-q7x2k"),
                ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                ("KUBERNETES_SERVICE_PORT", &port),
                ("RABBITMQ_SERVICE_HOST", "10.96.0.12"),
                ("RABBITMQ_PORT_15672_TCP", "tcp://10.96.0.12:15672"),
            ],
        );
        with(base, extra)
    }

    /// The resume Job's environment.
    fn resume_vars(&self, quiesce: &str) -> Vec<(String, String)> {
        let token_file = self.credentials.token_file(TOKEN);
        vars(&[
            ("CLEANSLATE_QUIESCE", quiesce),
            ("CLEANSLATE_NAMESPACE", NS),
            ("CLEANSLATE_KUBE_API", &self.api.url),
            ("CLEANSLATE_KUBE_TOKEN_FILE", &token_file),
            ("CLEANSLATE_KUBE_CA_FILE", &self.credentials.ca_file()),
            ("CLEANSLATE_TIMEOUT", "10s"),
            ("HOSTNAME", "shop-cleanslate-resume-r2d2"),
        ])
    }

    async fn seed(&mut self) {
        self.rabbit.publish(&self.vhost, "monorepo", 3).await;
        put_keys(&mut self.etcd, &self.prefix, 5).await;
    }

    fn marker(&self) -> serde_json::Map<String, Value> {
        self.api.object(NS, MARKER).expect("marker")["data"].as_object().cloned().unwrap_or_default()
    }

    fn state(&self, name: &str) -> (i64, Option<String>) {
        self.api.replicas_and_annotation(NS, "deployments", name)
    }

    fn scale_writes(&self, name: &str) -> usize {
        self.api.requests().iter().filter(|r| r.method == "PUT" && r.path.ends_with(&format!("/{name}/scale"))).count()
    }

    async fn cleanup(self) {
        self.rabbit.delete_vhost(&self.vhost).await;
    }
}

/// The old writer of `deployment` next to a purge with `vars` that starts once the writer runs.
async fn purge_while_writing(env: &Env, deployment: &str, vars: &[(String, String)]) -> (usize, Run) {
    let cues = support::WriterCues::default();
    let writer = support::old_writer(&env.api, NS, deployment, &env.rabbit, &env.vhost, "monorepo", &env.prefix, &cues);
    let purge = async {
        cues.running.notified().await;
        let run = cleanslate(&["purge"], vars).await;
        cues.run_ended.store(true, std::sync::atomic::Ordering::SeqCst);
        run
    };
    tokio::join!(writer, purge)
}

/// A running writer is stopped (pods gone) before the purge, nothing it wrote survives, the count
/// is recorded on the Deployment; `resume` restores it and removes the record, and is idempotent.
#[tokio::test]
async fn stops_the_writer_before_purging_then_resume_restores() {
    let mut env = Env::start(&["shop-producer", "shop-consumer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.api.apply_workload(NS, &deployment("shop-consumer", Some(1)));
    env.seed().await;
    // A concurrent writer (an HPA, kubectl) changes the Deployment once between our writes.
    env.api.race_next_scales(1);
    let quiesce = "deployment/shop-producer,deployment/shop-consumer";
    env.api.grant_on(TOKEN, "events", &["create"], None);
    let purge_vars = env.vars(quiesce, &[("CLEANSLATE_EVENTS", "true")]);
    let (written, run) = purge_while_writing(&env, "shop-producer", &purge_vars).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert!(written > 1, "the writer was running during the run ({written} writes)");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 0, "no message of the old writer is left");
    assert_eq!(count_keys(&mut env.etcd, &env.prefix).await, 0, "no key of the old writer is left");
    assert_eq!(env.state("shop-producer"), (0, Some("2".into())), "producer stopped, count recorded");
    assert_eq!(env.state("shop-consumer"), (0, Some("1".into())), "consumer stopped, count recorded");
    assert!(env.api.pods_of(NS, "shop-producer").is_empty(), "its pods are gone");
    assert_eq!(env.marker()["status"], json!("succeeded"), "marker: {:?}", env.marker());
    let watches = env.api.requests().iter().filter(|r| r.path.ends_with("/pods") && r.query.contains("watch")).count();
    assert!(watches >= 1, "the wait watches the pods instead of polling");
    run.assert_no_secret(&[&rabbit_password(), TOKEN]);

    let resume = cleanslate(&["resume"], &with(env.resume_vars(quiesce), &[("CLEANSLATE_EVENTS", "true")])).await;
    assert_eq!(resume.code, 0, "resume succeeds: {}", resume.all_output());
    assert_eq!(env.state("shop-producer"), (2, None), "producer back at 2, record removed");
    // What `kubectl describe` shows: the purge on its pod, the stop and the start on each workload.
    assert_eq!(
        env.api.event_reasons("Pod", "shop-cleanslate-purge-q7x2k"),
        ["CleanupStarted", "CleanupSucceeded"],
        "the purge's Events on its pod"
    );
    assert_eq!(
        env.api.event_reasons("Deployment", "shop-producer"),
        ["StoppedForCleanup", "StartedAfterCleanup"],
        "the producer's Events"
    );
    let events = env.api.events();
    let notes: Vec<&str> = events.iter().filter_map(|e| e["note"].as_str()).collect();
    assert!(notes.iter().any(|n| n.contains("stopped for the cleanup of revision 4: 2 → 0 replicas")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("started again after the cleanup: 0 → 2 replicas")), "{notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("cleanslate purge: purged 1 queues")), "{notes:?}");
    for event in &events {
        assert_eq!(event["reportingController"], json!("cleanslate"), "{event}");
        let text = event.to_string();
        for secret in [rabbit_password().as_str(), TOKEN] {
            assert!(!text.contains(secret), "no secret in an Event: {text}");
        }
    }
    assert_eq!(env.state("shop-consumer"), (1, None), "consumer back at 1, record removed");
    assert_eq!(env.api.pods_of(NS, "shop-producer").len(), 2, "two producer pods again");
    let again = cleanslate(&["resume"], &env.resume_vars(quiesce)).await;
    assert_eq!(again.code, 0, "a second resume has nothing to do: {}", again.all_output());
    assert!(again.stdout.contains("nothing to do"), "says so: {}", again.stdout);
    assert_eq!(env.state("shop-producer"), (2, None), "unchanged by the second resume");
    env.cleanup().await;
}

/// A purge that fails after the quiesce (the broker answers the purge 503): the stopped workloads go back to their counts, the record is removed,
/// the run exits non-zero and the marker says failed, naming what was restored.
#[tokio::test]
async fn failed_purge_restores_the_workloads() {
    let mut env = Env::start(&["shop-producer", "shop-consumer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.api.apply_workload(NS, &deployment("shop-consumer", Some(1)));
    env.seed().await;
    // The preflight's reads go through; the purge itself is answered 503 (a proxy whose upstream
    // timed out), after the quiesce.
    let proxy = support::proxy::Proxy::for_url(&rabbit_url());
    proxy.forward_failing(&["DELETE "]);
    env.api.grant_on(TOKEN, "events", &["create"], None);
    let vars = env.vars(
        "deployment/shop-producer,deployment/shop-consumer",
        &[("CLEANSLATE_RABBITMQ_URL", &proxy.url()), ("CLEANSLATE_RETRY_ATTEMPTS", "1"), ("CLEANSLATE_EVENTS", "true")],
    );
    let run = cleanslate(&["purge"], &vars).await;
    assert_eq!(run.code, 1, "the purge fails: {}", run.all_output());
    let failed: Vec<Value> = env
        .api
        .events()
        .into_iter()
        .filter(|e| {
            e["regarding"]["name"] == json!("shop-cleanslate-purge-q7x2k") && e["reason"] == json!("CleanupFailed")
        })
        .collect();
    assert_eq!(failed.len(), 1, "one CleanupFailed Event on the purge pod: {:?}", env.api.events());
    assert_eq!(failed[0]["type"], json!("Warning"), "a warning");
    let note = failed[0]["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("503") && note.contains("restored deployment/shop-producer"),
        "why, and what was restored: {note}"
    );
    assert_eq!(
        env.api.event_reasons("Deployment", "shop-producer"),
        ["StoppedForCleanup", "StartedAfterCleanup"],
        "stopped, then started again by the restore"
    );
    assert_eq!(env.state("shop-producer"), (2, None), "producer restored, record removed");
    assert_eq!(env.state("shop-consumer"), (1, None), "consumer restored, record removed");
    assert_eq!(env.api.pods_of(NS, "shop-producer").len(), 2, "the previous version runs again");
    let marker = env.marker();
    assert_eq!(marker["status"], json!("failed"), "marker failed: {marker:?}");
    let message = marker["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("restored deployment/shop-producer (2 replicas), deployment/shop-consumer (1 replica)"),
        "marker names the restored workloads: {message}"
    );
    assert!(run.stderr.contains("restored deployment/shop-producer"), "so does the error: {}", run.stderr);
    env.cleanup().await;
}

/// A backend that fails the preflight (a wrong RabbitMQ password, an unreachable management API, a
/// named queue that can never be purged)
/// stops nothing and deletes nothing on the other backend: the apps are not bounced for a
/// configuration error, and the etcd prefix is not half-erased under the running version.
#[tokio::test]
async fn a_failing_preflight_stops_and_deletes_nothing() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.seed().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    env.rabbit.declare(&env.vhost, "audit-stream", json!({"x-queue-type": "stream"})).await;
    for (case, setting) in [
        ("wrong password", ("CLEANSLATE_RABBITMQ_PASSWORD", "not-the-password")),
        ("unreachable broker", ("CLEANSLATE_RABBITMQ_URL", dead.as_str())),
        ("a named stream", ("CLEANSLATE_RABBITMQ_QUEUES", "monorepo,audit-stream")),
    ] {
        let run =
            cleanslate(&["purge"], &env.vars("deployment/shop-producer", &[setting, ("CLEANSLATE_TIMEOUT", "3s")]))
                .await;
        assert_ne!(run.code, 0, "{case}: the run fails: {}", run.all_output());
        assert!(run.stderr.contains("nothing was stopped or deleted"), "{case}: says so: {}", run.stderr);
        assert_eq!(env.scale_writes("shop-producer"), 0, "{case}: no scale written");
        assert_eq!(env.state("shop-producer"), (2, None), "{case}: the app keeps running");
        assert_eq!(count_keys(&mut env.etcd, &env.prefix).await, 5, "{case}: the etcd prefix is untouched");
        assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 3, "{case}: nothing purged");
        let marker = env.marker();
        assert_eq!(marker["status"], json!("failed"), "{case}: the gates learn it failed: {marker:?}");
        run.assert_no_secret(&["not-the-password", TOKEN]);
    }
    env.cleanup().await;
}

/// Pods that never go away: the quiesce times out, everything is restored, nothing is purged, and
/// the error and the marker name the pods, all of them although the API lists one per page.
#[tokio::test]
async fn quiesce_timeout_restores_and_names_the_pod() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(3)));
    env.seed().await;
    env.api.hold_pods(NS, "shop-producer");
    env.api.cap_pages(1);
    let pods: Vec<String> = env
        .api
        .pods_of(NS, "shop-producer")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pods.len(), 3, "three pods");
    let stuck = pods[2].clone();
    let run =
        cleanslate(&["purge"], &env.vars("deployment/shop-producer", &[("CLEANSLATE_QUIESCE_TIMEOUT", "3s")])).await;
    assert_eq!(run.code, 80, "a quiesce timeout is final (a retry would stop them again): {}", run.all_output());
    for pod in &pods {
        assert!(run.first_stderr_line().contains(pod), "the error names the pod {pod}: {}", run.stderr);
    }
    assert!(run.stderr.contains("CLEANSLATE_QUIESCE_TIMEOUT"), "and the setting: {}", run.stderr);
    assert_eq!(env.state("shop-producer"), (3, None), "restored, record removed");
    let marker = env.marker();
    assert_eq!(marker["status"], json!("failed"), "marker failed");
    let message = marker["message"].as_str().unwrap_or_default();
    assert!(message.contains(&stuck) && message.contains("restored deployment/shop-producer"), "{message}");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 3, "nothing purged");
    assert_eq!(count_keys(&mut env.etcd, &env.prefix).await, 5, "no key deleted");
    env.api.release_pods(NS, "shop-producer");
    env.cleanup().await;
}

/// Pods that will never go away by a scale to 0 do not hold the quiesce up: an evicted pod of the
/// workload (phase Failed, kept until garbage-collected) and a Job's pod with the same labels.
#[tokio::test]
async fn finished_and_foreign_pods_do_not_block_the_quiesce() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(1)));
    env.seed().await;
    let labels = env.api.pods_of(NS, "shop-producer")[0]["metadata"]["labels"].clone();
    let owner =
        env.api.pods_of(NS, "shop-producer")[0]["metadata"]["ownerReferences"][0]["name"].as_str().unwrap().to_string();
    env.api.put_foreign_pod(NS, "shop-producer-evicted", labels.clone(), ("ReplicaSet", &owner), "Failed");
    env.api.put_foreign_pod(NS, "shop-migrate-x1", labels, ("Job", "shop-migrate"), "Running");
    let run =
        cleanslate(&["purge"], &env.vars("deployment/shop-producer", &[("CLEANSLATE_QUIESCE_TIMEOUT", "10s")])).await;
    assert_eq!(run.code, 0, "the quiesce ends when the running pod is gone: {}", run.all_output());
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 0, "purged");
    env.cleanup().await;
}

/// First install: listed workloads that do not exist yet, and one already at 0, are skipped and
/// said so; nothing is scaled; the purge succeeds.
#[tokio::test]
async fn first_install_and_missing_or_idle_workloads_are_skipped() {
    let mut env = Env::start(&["shop-producer", "idle", "not-there"]).await;
    env.seed().await;
    let first = cleanslate(&["purge"], &env.vars("deployment/shop-producer", &[])).await;
    assert_eq!(first.code, 0, "first install, nothing to stop: {}", first.all_output());
    assert!(first.stdout.contains("workload not found"), "says so: {}", first.stdout);
    assert!(first.stdout.contains("deployment/shop-producer"), "names it: {}", first.stdout);
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 0, "purged anyway");

    env.api.apply_workload(NS, &deployment("idle", Some(0)));
    env.api.apply_workload(NS, &deployment("shop-producer", Some(1)));
    let run = cleanslate(
        &["purge"],
        &env.vars("deployment/shop-producer,deployment/idle,statefulset/not-there", &[("CLEANSLATE_REVISION", "5")]),
    )
    .await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert!(run.stdout.contains("already at 0 replicas"), "the idle one is skipped: {}", run.stdout);
    assert!(run.stdout.contains("statefulset/not-there"), "the missing one is named: {}", run.stdout);
    assert_eq!(env.state("idle"), (0, None), "idle left alone, no record");
    assert_eq!(env.scale_writes("idle"), 0, "idle never scaled");
    assert_eq!(env.state("shop-producer"), (0, Some("1".into())), "the running one is stopped");
    env.cleanup().await;
}

/// An HPA-managed Deployment (no `replicas` in its manifest): after the upgrade Helm leaves it at
/// 0, and the resume Job brings it back to the count the HPA had set.
#[tokio::test]
async fn hpa_style_deployment_is_restored_by_resume() {
    let mut env = Env::start(&["api"]).await;
    env.api.apply_workload(NS, &deployment("api", None));
    assert_eq!(env.state("api").0, 1, "the API server defaults replicas to 1");
    // The HPA scaled it out.
    env.api.apply_workload(NS, &deployment("api", Some(3)));
    env.seed().await;
    let run = cleanslate(&["purge"], &env.vars("deployment/api", &[])).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(env.state("api"), (0, Some("3".into())), "stopped with 3 recorded");
    // helm upgrade: the new manifest still has no replicas, so the live count stays 0.
    let mut upgraded = deployment("api", None);
    upgraded["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] = json!("rev2");
    env.api.apply_workload(NS, &upgraded);
    assert_eq!(env.state("api"), (0, Some("3".into())), "Helm does not restore a count it does not set");
    let resume = cleanslate(&["resume"], &env.resume_vars("deployment/api")).await;
    assert_eq!(resume.code, 0, "resume succeeds: {}", resume.all_output());
    assert_eq!(env.state("api"), (3, None), "back to the HPA's 3, record removed");
    assert_eq!(env.api.pods_of(NS, "api").len(), 3, "three pods of the new template");
    env.cleanup().await;
}

/// RBAC by name: a token whose Role names only shop-producer may not scale another Deployment.
/// The stand-in answers 403 as the API server does; the purge stops with an RBAC hint, restores
/// what it had stopped, and purges nothing.
#[tokio::test]
async fn another_deployments_scale_is_forbidden() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(1)));
    env.api.apply_workload(NS, &deployment("billing", Some(2)));
    env.seed().await;

    // Straight at the stand-in: a scale of billing with the producer's token, and a token that may
    // patch Deployments but has no rule for their scale subresource.
    env.api.grant_on("patch-only", "deployments", &["get", "patch", "update"], None);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(env.api.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let body = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                      "metadata": {"name": "billing", "namespace": NS}, "spec": {"replicas": 0}});
    for token in [TOKEN, "patch-only"] {
        let response = http
            .put(format!("{}/apis/apps/v1/namespaces/{NS}/deployments/billing/scale", env.api.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "{token} may not scale billing");
        let status: Value = response.json().await.unwrap();
        assert!(
            status["message"].as_str().unwrap().contains("cannot update resource \"deployments/scale\""),
            "the API server's message: {status}"
        );
    }
    assert_eq!(env.state("billing"), (2, None), "billing untouched");

    let run = cleanslate(&["purge"], &env.vars("deployment/shop-producer,deployment/billing", &[])).await;
    assert_eq!(run.code, 1, "refused: {}", run.all_output());
    assert!(run.stderr.contains("deployment/billing") && run.stderr.contains("403"), "names it: {}", run.stderr);
    assert!(run.stderr.contains("see the chart's Role"), "with an RBAC hint: {}", run.stderr);
    assert_eq!(env.state("shop-producer"), (1, None), "the producer it had stopped is restored");
    assert_eq!(env.state("billing"), (2, None), "billing untouched");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 3, "nothing purged");
    env.cleanup().await;
}

/// The stand-in filters lists on `metadata.name` as the API server does, and refuses a field
/// selector it does not model instead of ignoring it (a test must not pass on a filter skipped).
#[tokio::test]
async fn the_stand_in_filters_on_the_name_and_refuses_other_field_selectors() {
    let env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.api.grant_on("reader", "pods", &["list"], None);
    env.api.grant_on("reader", "configmaps", &["list"], None);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(env.api.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let list = |resource: &str, selector: String| {
        http.get(format!("{}/api/v1/namespaces/{NS}/{resource}", env.api.url))
            .query(&[("fieldSelector", selector)])
            .bearer_auth("reader")
            .send()
    };
    let pods = env.api.pods_of(NS, "shop-producer");
    assert_eq!(pods.len(), 2, "two pods to tell apart");
    let first = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let response = list("pods", format!("metadata.name={first}")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let found: Value = response.json().await.unwrap();
    let names: Vec<&str> =
        found["items"].as_array().unwrap().iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, [first.as_str()], "only the named pod");
    for resource in ["pods", "configmaps"] {
        let response = list(resource, "status.phase=Running".into()).await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{resource}: a field selector the stand-in does not model");
    }
    env.cleanup().await;
}

/// Runs a purge that waits on a stuck pod, sends `signal` once the workload is at 0, and returns
/// the run.
async fn signalled_during_quiesce(env: &Env, signal: &str) -> Run {
    env.api.hold_pods(NS, "shop-producer");
    let vars = env.vars("deployment/shop-producer", &[("CLEANSLATE_QUIESCE_TIMEOUT", "30s")]);
    let child = spawn(&["purge"], &vars);
    for _ in 0..100 {
        if env.state("shop-producer").0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.state("shop-producer").0, 0, "the purge stopped the Deployment and is waiting");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success(), "signal sent");
    let started = std::time::Instant::now();
    let run = finish(child).await;
    assert!(started.elapsed() < Duration::from_secs(10), "done well within a pod's grace period");
    run
}

/// SIGTERM during the quiesce (what Kubernetes sends at the Job's deadline): the workload is
/// restored, the marker records a failed attempt naming it, and the exit status is 143.
#[tokio::test]
async fn sigterm_during_quiesce_restores_and_records_the_attempt() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.seed().await;
    let run = signalled_during_quiesce(&env, "-TERM").await;
    assert_eq!(run.code, 143, "SIGTERM: {}", run.all_output());
    assert_eq!(env.state("shop-producer"), (2, None), "restored, record removed");
    let marker = env.marker();
    assert_eq!(marker["status"], json!("failed"), "a failed attempt is recorded: {marker:?}");
    let message = marker["message"].as_str().unwrap_or_default();
    assert!(message.contains("SIGTERM") && message.contains("restored deployment/shop-producer"), "{message}");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 3, "nothing purged");
    env.api.release_pods(NS, "shop-producer");
    env.cleanup().await;
}

/// Two runs at once (a retry's pod while the evicted one still terminates, which the Job
/// controller allows before Kubernetes 1.29; a scheduled reset during a deploy): the second finds
/// the workload stopped and takes it over (`cleanslate.io/quiesced-by` names it), and the first,
/// signalled, leaves it stopped instead of starting it in the middle of the second's purge.
#[tokio::test]
async fn a_run_leaves_stopped_what_another_run_took_over() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.seed().await;
    env.api.hold_pods(NS, "shop-producer");
    let first_pod = "shop-cleanslate-purge-q7x2k";
    let second_pod = "shop-cleanslate-purge-z9w8v";
    let job = [("CLEANSLATE_JOB_NAME", "shop-cleanslate-purge"), ("CLEANSLATE_QUIESCE_TIMEOUT", "30s")];
    let first =
        spawn(&["purge"], &env.vars("deployment/shop-producer", &[job[0], job[1], ("CLEANSLATE_POD_NAME", first_pod)]));
    held_by(&env, first_pod).await;
    let second = spawn(
        &["purge"],
        &env.vars("deployment/shop-producer", &[job[0], job[1], ("CLEANSLATE_POD_NAME", second_pod)]),
    );
    held_by(&env, second_pod).await;
    // The second run's pod, running (the restore asks whether the run holding it still runs).
    env.api.put_foreign_pod(
        NS,
        second_pod,
        json!({"batch.kubernetes.io/job-name": "shop-cleanslate-purge"}),
        ("Job", "shop-cleanslate-purge"),
        "Running",
    );

    let pid = first.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success(), "signal sent");
    let first = finish(first).await;
    assert_eq!(first.code, 143, "SIGTERM: {}", first.all_output());
    assert!(first.stdout.contains("taken over by another run"), "says why it left it: {}", first.stdout);
    assert!(
        first.stdout.contains("left stopped for the runs that hold them")
            && first.stdout.contains("held by shop-cleanslate-purge/shop-cleanslate-purge-z9w8v"),
        "and names who holds it: {}",
        first.stdout
    );
    let message = env.marker()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("held by shop-cleanslate-purge/shop-cleanslate-purge-z9w8v"), "in the marker: {message}");
    assert_eq!(env.state("shop-producer"), (0, Some("2".into())), "still stopped, its count recorded");

    env.api.release_pods(NS, "shop-producer");
    let second = finish(second).await;
    assert_eq!(second.code, 0, "the second run purges: {}", second.all_output());
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 0, "purged with the writer stopped");
    assert_eq!(env.state("shop-producer"), (0, Some("2".into())), "left for the apply and the resume Job");
    let resume = cleanslate(&["resume"], &env.resume_vars("deployment/shop-producer")).await;
    assert_eq!(resume.code, 0, "{}", resume.all_output());
    assert_eq!(env.state("shop-producer"), (2, None), "the resume Job starts it, whoever held it");
    assert_eq!(holder(&env), None, "and removes the whole record");
    env.cleanup().await;
}

/// The Job's last attempt puts back what an earlier attempt left stopped for it even when it fails
/// before it took the workloads over (here: the marker went missing and may not be re-created,
/// exit 79): otherwise they stay at 0 once Helm gives up on the hook. What a run that still runs
/// holds (its pod is there) stays with it.
#[tokio::test]
async fn the_last_attempt_puts_back_what_an_earlier_one_left_when_it_fails_early() {
    let mut env = Env::start(&["shop-producer"]).await;
    for resource in ["deployments", "statefulsets"] {
        env.api.grant_on(TOKEN, resource, &["list"], None);
    }
    let mut left = deployment("shop-producer", Some(0));
    left["metadata"]["annotations"] = json!({
        "cleanslate.io/quiesced-replicas": "2",
        "cleanslate.io/quiesced-for": MARKER,
        "cleanslate.io/quiesced-by": "shop-cleanslate-purge/shop-cleanslate-purge-a1b2c",
    });
    env.api.apply_workload(NS, &left);
    // Another stopped workload, held by a scheduled reset whose pod still runs: left to it.
    let mut held = deployment("shop-consumer", Some(0));
    held["metadata"]["annotations"] = json!({
        "cleanslate.io/quiesced-replicas": "1",
        "cleanslate.io/quiesced-for": MARKER,
        "cleanslate.io/quiesced-by": "shop-cleanslate-reset-29001/shop-cleanslate-reset-29001-x8k2p",
    });
    env.api.apply_workload(NS, &held);
    for (resource, verbs) in
        [("deployments", &["get", "patch", "update"][..]), ("deployments/scale", &["get", "update"])]
    {
        env.api.grant_on(TOKEN, resource, verbs, Some(&["shop-consumer"]));
    }
    let labels = json!({"batch.kubernetes.io/job-name": "shop-cleanslate-reset-29001"});
    env.api.put_foreign_pod(
        NS,
        "shop-cleanslate-reset-29001-x8k2p",
        labels,
        ("Job", "shop-cleanslate-reset-29001"),
        "Running",
    );
    env.seed().await;
    env.api.delete(NS, MARKER);
    let job =
        [("CLEANSLATE_JOB_NAME", "shop-cleanslate-purge"), ("CLEANSLATE_POD_NAME", "shop-cleanslate-purge-d3e4f")];
    let run = cleanslate(&["purge"], &env.vars("deployment/shop-producer", &job)).await;
    assert_eq!(run.code, 79, "refused before anything is stopped: {}", run.all_output());
    assert!(run.stderr.contains("restored deployment/shop-producer (2 replicas)"), "says so: {}", run.stderr);
    assert_eq!(env.state("shop-producer"), (2, None), "running again, record removed");
    assert_eq!(env.state("shop-consumer"), (0, Some("1".into())), "what a running reset holds stays with it");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 3, "nothing purged");
    env.cleanup().await;
}

/// A deploy's purge that finds the apps held by another cleanup still under way (a scheduled reset
/// of the same release) waits for it to end instead of taking them over: else the reset, ending,
/// would start them in the middle of the deploy's purge. Then it stops them itself and purges.
#[tokio::test]
async fn a_run_waits_for_another_cleanup_under_way() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.seed().await;
    env.api.hold_pods(NS, "shop-producer");
    let (reset_job, reset_pod) = ("shop-cleanslate-reset-29001", "shop-cleanslate-reset-29001-x8k2p");
    let reset_vars = [
        ("CLEANSLATE_JOB_NAME", reset_job),
        ("CLEANSLATE_POD_NAME", reset_pod),
        ("CLEANSLATE_QUIESCE_RESUME", "true"),
        ("CLEANSLATE_QUIESCE_TIMEOUT", "30s"),
    ];
    let reset = spawn(&["purge"], &env.vars("deployment/shop-producer", &reset_vars));
    let reset_pod_labels = json!({"batch.kubernetes.io/job-name": reset_job});
    env.api.put_foreign_pod(NS, reset_pod, reset_pod_labels.clone(), ("Job", reset_job), "Running");
    held_by_run(&env, &format!("{reset_job}/{reset_pod}")).await;

    let deploy_vars = [
        ("CLEANSLATE_JOB_NAME", "shop-cleanslate-purge"),
        ("CLEANSLATE_POD_NAME", "shop-cleanslate-purge-d3e4f"),
        ("CLEANSLATE_QUIESCE_TIMEOUT", "30s"),
    ];
    let deploy = spawn(&["purge"], &env.vars("deployment/shop-producer", &deploy_vars));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(holder(&env).as_deref(), Some(format!("{reset_job}/{reset_pod}").as_str()), "not taken over");

    // The reset's purge ends: it starts the producer again, and its pod finishes.
    env.api.release_pods(NS, "shop-producer");
    let reset = finish(reset).await;
    assert_eq!(reset.code, 0, "the reset: {}", reset.all_output());
    env.api.put_foreign_pod(NS, reset_pod, reset_pod_labels, ("Job", reset_job), "Succeeded");

    let deploy = finish(deploy).await;
    assert_eq!(deploy.code, 0, "the deploy's purge: {}", deploy.all_output());
    assert!(deploy.stdout.contains("held by a cleanup still under way"), "it waited: {}", deploy.stdout);
    assert_eq!(env.state("shop-producer"), (0, Some("2".into())), "stopped by the deploy for its apply");
    assert_eq!(
        holder(&env).as_deref(),
        Some("shop-cleanslate-purge/shop-cleanslate-purge-d3e4f"),
        "held by the deploy's run"
    );
    env.cleanup().await;
}

/// A listed workload that another release's cleanup stopped (its record names that release's
/// marker) is left to it: not taken over, not started by this run, even in `helm test` mode.
#[tokio::test]
async fn a_workload_another_release_stopped_is_left_to_it() {
    let mut env = Env::start(&["shop-producer"]).await;
    let mut stopped = deployment("shop-producer", Some(0));
    stopped["metadata"]["annotations"] = json!({
        "cleanslate.io/quiesced-replicas": "2",
        "cleanslate.io/quiesced-for": "blog-cleanslate-marker",
        "cleanslate.io/quiesced-by": "blog-cleanslate-test-purge",
    });
    env.api.apply_workload(NS, &stopped);
    env.seed().await;
    let run =
        cleanslate(&["purge"], &env.vars("deployment/shop-producer", &[("CLEANSLATE_QUIESCE_RESUME", "true")])).await;
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(run.stdout.contains("stopped for another release's cleanup"), "says so: {}", run.stdout);
    assert_eq!(env.state("shop-producer"), (0, Some("2".into())), "still stopped for the other release");
    assert_eq!(holder(&env).as_deref(), Some("blog-cleanslate-test-purge"), "still held by its run");
    env.cleanup().await;
}

/// The run recorded as holding the stopped producer.
fn holder(env: &Env) -> Option<String> {
    let workload = env.api.workload(NS, "deployments", "shop-producer").expect("the Deployment");
    workload["metadata"]["annotations"]["cleanslate.io/quiesced-by"].as_str().map(str::to_string)
}

/// Waits until the purge Job's pod `pod` holds the producer, stopped.
async fn held_by(env: &Env, pod: &str) {
    held_by_run(env, &format!("shop-cleanslate-purge/{pod}")).await;
}

/// Waits until the run `expected` holds the producer, stopped.
async fn held_by_run(env: &Env, expected: &str) {
    for _ in 0..200 {
        if holder(env).as_deref() == Some(expected) && env.state("shop-producer").0 == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{expected} never held the Deployment: {:?}", holder(env));
}

/// SIGTERM when no attempt follows (the Job's deadline, a run outside a Job) also puts back what an
/// ended run left stopped for the marker (an earlier attempt, a reset killed mid-run): nobody else
/// would before the next deploy.
#[tokio::test]
async fn sigterm_puts_back_what_an_ended_run_left_stopped() {
    let mut env = Env::start(&["shop-producer", "shop-consumer"]).await;
    for resource in ["deployments", "statefulsets"] {
        env.api.grant_on(TOKEN, resource, &["list"], None);
    }
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    let mut left = deployment("shop-consumer", Some(0));
    left["metadata"]["annotations"] = json!({
        "cleanslate.io/quiesced-replicas": "3",
        "cleanslate.io/quiesced-for": MARKER,
        "cleanslate.io/quiesced-by": "shop-cleanslate-reset-29001/shop-cleanslate-reset-29001-x8k2p",
    });
    env.api.apply_workload(NS, &left);
    env.seed().await;
    let run = signalled_during_quiesce(&env, "-TERM").await;
    assert_eq!(run.code, 143, "SIGTERM: {}", run.all_output());
    assert_eq!(env.state("shop-producer"), (2, None), "what it stopped, restored");
    assert_eq!(env.state("shop-consumer"), (3, None), "and what the ended reset left stopped");
    env.api.release_pods(NS, "shop-producer");
    env.cleanup().await;
}

/// SIGINT (Ctrl-C) does the same and exits 130.
#[tokio::test]
async fn sigint_during_quiesce_restores_and_exits_130() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(1)));
    env.seed().await;
    let run = signalled_during_quiesce(&env, "-INT").await;
    assert_eq!(run.code, 130, "SIGINT: {}", run.all_output());
    assert_eq!(env.state("shop-producer"), (1, None), "restored, record removed");
    assert_eq!(env.marker()["status"], json!("failed"), "a failed attempt is recorded");
    env.api.release_pods(NS, "shop-producer");
    env.cleanup().await;
}

/// The helm test Pod (CLEANSLATE_QUIESCE_RESUME=true): stop, purge, and start again in one run.
#[tokio::test]
async fn helm_test_mode_resumes_in_the_same_run() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.seed().await;
    let purge_vars = env.vars("deployment/shop-producer", &[("CLEANSLATE_QUIESCE_RESUME", "true")]);
    let (written, run) = purge_while_writing(&env, "shop-producer", &purge_vars).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert!(written > 0, "the writer was running");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 0, "purged after the writer stopped");
    assert_eq!(count_keys(&mut env.etcd, &env.prefix).await, 0, "no key left");
    assert_eq!(env.state("shop-producer"), (2, None), "running again at 2, no record left");
    assert_eq!(env.api.pods_of(NS, "shop-producer").len(), 2, "two fresh pods");
    assert_eq!(env.marker()["status"], json!("succeeded"), "marker succeeded");
    env.cleanup().await;
}

/// Bad CLEANSLATE_QUIESCE entries are configuration errors naming the variable; nothing is touched.
#[tokio::test]
async fn malformed_workload_lists_are_refused() {
    let env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(1)));
    for bad in ["shop-producer", "daemonset/agent", "deployment/Shop_Producer", "deployment/"] {
        let run = cleanslate(&["purge"], &env.vars(bad, &[])).await;
        assert_eq!(run.code, 78, "{bad:?} is a configuration error: {}", run.all_output());
        assert!(run.first_stderr_line().contains("CLEANSLATE_QUIESCE"), "{bad:?}: names it: {}", run.stderr);
    }
    let run = cleanslate(&["resume"], &without(env.resume_vars("x"), &["CLEANSLATE_QUIESCE"])).await;
    assert_eq!(run.code, 78, "resume needs the list: {}", run.all_output());
    assert_eq!(env.state("shop-producer"), (1, None), "nothing touched");
    assert_eq!(env.scale_writes("shop-producer"), 0, "never scaled");
    env.cleanup().await;
}

/// SIGTERM while the purge itself hangs (a RabbitMQ that answers the preflight's reads and never
/// answers the purge), after the workload was stopped: it is restored and the attempt recorded as
/// failed before exiting 143.
#[tokio::test]
async fn sigterm_during_the_purge_restores_and_records_the_attempt() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(1)));
    env.seed().await;
    let proxy = support::proxy::Proxy::for_url(&rabbit_url());
    proxy.forward_hanging(&["DELETE "]);
    let silent = proxy.url();
    let vars =
        env.vars("deployment/shop-producer", &[("CLEANSLATE_RABBITMQ_URL", &silent), ("CLEANSLATE_TIMEOUT", "60s")]);
    let child = spawn(&["purge"], &vars);
    for _ in 0..100 {
        if env.state("shop-producer").0 == 0 && env.api.pods_of(NS, "shop-producer").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(env.api.pods_of(NS, "shop-producer").is_empty(), "stopped; the purge is under way");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success(), "signal sent");
    let run = finish(child).await;
    assert_eq!(run.code, 143, "SIGTERM: {}", run.all_output());
    assert_eq!(env.state("shop-producer"), (1, None), "restored, record removed");
    let message = env.marker()["message"].as_str().unwrap_or_default().to_string();
    assert_eq!(env.marker()["status"], json!("failed"), "a failed attempt is recorded");
    assert!(message.contains("restored deployment/shop-producer (1 replica)"), "{message}");
    env.cleanup().await;
}

/// A run that could not write the marker (here: it was deleted and the Role may not create it) finds
/// out before it stops anything: exit 79 naming the permission, the workloads untouched, nothing
/// purged, rather than stopping them, purging, and failing to record it.
#[tokio::test]
async fn a_marker_that_cannot_be_written_stops_nothing() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.seed().await;
    env.api.delete(NS, MARKER);
    let run = cleanslate(&["purge"], &env.vars("deployment/shop-producer", &[])).await;
    assert_eq!(run.code, 79, "refused before anything is stopped: {}", run.all_output());
    assert!(run.stderr.contains("create on configmaps"), "names the permission: {}", run.stderr);
    assert_eq!(env.state("shop-producer"), (2, None), "untouched");
    assert_eq!(env.scale_writes("shop-producer"), 0, "no scale written");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 3, "nothing purged");
    env.cleanup().await;
}

/// A StatefulSet whose claims a scale-down deletes (`whenScaled: Delete`) is refused before
/// anything is stopped or purged: exit 77 naming it and the field; the marker says why.
#[tokio::test]
async fn statefulsets_that_delete_their_volumes_on_scale_are_refused() {
    let mut env = Env::start(&["shop-producer", "db"]).await;
    env.seed().await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(1)));
    let mut db = deployment("db", Some(2));
    db["kind"] = json!("StatefulSet");
    db["spec"]["persistentVolumeClaimRetentionPolicy"] = json!({"whenDeleted": "Retain", "whenScaled": "Delete"});
    env.api.apply_workload(NS, &db);
    let run = cleanslate(&["purge"], &env.vars("deployment/shop-producer,statefulset/db", &[])).await;
    assert_eq!(run.code, 77, "refused: {}", run.all_output());
    assert!(
        run.first_stderr_line().contains("statefulset/db")
            && run.stderr.contains("persistentVolumeClaimRetentionPolicy.whenScaled: Delete"),
        "names it and the field: {}",
        run.stderr
    );
    assert_eq!(env.state("shop-producer"), (1, None), "nothing stopped");
    assert_eq!(env.scale_writes("shop-producer") + env.scale_writes("db"), 0, "no scale written");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 3, "nothing purged");
    assert_eq!(count_keys(&mut env.etcd, &env.prefix).await, 5, "no key deleted");
    let marker = env.marker();
    assert_eq!(marker["status"], json!("failed"), "the marker says failed: {marker:?}");
    assert!(marker["message"].as_str().unwrap_or("").contains("whenScaled"), "and why: {marker:?}");

    db["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] = json!("Retain");
    env.api.apply_workload(NS, &db);
    let run = cleanslate(&["purge"], &env.vars("deployment/shop-producer,statefulset/db", &[])).await;
    assert_eq!(run.code, 0, "Retain is fine: {}", run.all_output());
    assert_eq!(env.api.replicas_and_annotation(NS, "statefulsets", "db"), (0, Some("2".into())), "db stopped");
    env.cleanup().await;
}

/// Helm 4 applies server-side as manager `helm`. After a quiesce, a resume and a `helm test`-style
/// purge that resumes in the same run, cleanslate owns no `spec.replicas`, so three more applies
/// in a row (with changing counts) meet no conflict; a foreign `kubectl scale`-style owner still
/// makes the next apply conflict, unless forced: the stand-in's model is not lenient.
#[tokio::test]
async fn scale_writes_leave_no_field_ownership_for_helm_4_to_conflict_with() {
    const HELM: &str = "helm-release-token";
    let env = Env::start(&["shop-producer"]).await;
    env.api.grant_on(HELM, "deployments", &["patch"], None);
    let apply = |replicas: i64, force: bool| {
        let manifest = deployment("shop-producer", Some(replicas));
        let api = &env.api;
        async move { api.server_side_apply(HELM, NS, &manifest, "helm", force).await }
    };
    let owners =
        || support::kube_api::replicas_owners(&env.api.workload(NS, "deployments", "shop-producer").expect("exists"));
    let helm_only = vec![("helm".to_string(), None)];
    apply(2, false).await.expect("install");
    assert_eq!(owners(), helm_only, "installed by Helm 4");

    let quiesce = "deployment/shop-producer";
    let purge = cleanslate(&["purge"], &env.vars(quiesce, &[])).await;
    assert_eq!(purge.code, 0, "purge with quiesce: {}", purge.all_output());
    assert_eq!(env.state("shop-producer"), (0, Some("2".into())), "stopped");
    let resume = cleanslate(&["resume"], &env.resume_vars(quiesce)).await;
    assert_eq!(resume.code, 0, "resume: {}", resume.all_output());
    assert_eq!(env.state("shop-producer"), (2, None), "running again");
    let test_run = cleanslate(&["purge"], &env.vars(quiesce, &[("CLEANSLATE_QUIESCE_RESUME", "true")])).await;
    assert_eq!(test_run.code, 0, "helm-test-style purge that resumes: {}", test_run.all_output());
    assert_eq!(env.state("shop-producer"), (2, None), "running again after the test run");
    let ours: Vec<_> = owners().into_iter().filter(|(manager, _)| manager == "cleanslate").collect();
    assert!(ours.is_empty(), "cleanslate owns no spec.replicas after its scale writes: {ours:?}");

    for (step, replicas) in [3, 2, 4].into_iter().enumerate() {
        let applied = apply(replicas, false).await;
        assert!(applied.is_ok(), "Helm 4 apply {} after cleanslate's writes: {applied:?}", step + 1);
    }
    assert_eq!(owners(), helm_only, "Helm owns spec.replicas again");

    // `kubectl scale --replicas=5` (an update through the scale subresource by manager kubectl).
    env.api.grant_on("kubectl-token", "deployments/scale", &["update"], None);
    let scaled = env.api.scale_as("kubectl-token", NS, "shop-producer", 5, "kubectl").await;
    assert_eq!(scaled, 200, "kubectl scale");
    let err = apply(4, false).await.expect_err("a foreign scale owner conflicts");
    assert_eq!(err.0, 409, "conflict status: {err:?}");
    assert!(
        err.1.contains("conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"),
        "the real message: {}",
        err.1
    );
    apply(4, true).await.expect("--force-conflicts takes it");
    env.cleanup().await;
}

/// The stand-in's ownership model keeps the documented rules on its own, apart from cleanslate.
#[test]
fn apply_conflicts_with_a_scale_owner_unless_forced() {
    let live = json!({"metadata": {}, "spec": {"replicas": 1}});
    let applied = json!({"metadata": {}, "spec": {"replicas": 2}});
    let mut object = ownership::apply(&live, &applied, "helm", false).expect("nobody owns it yet");
    assert_eq!(ownership::replicas_owners(&object), vec![("helm".into(), None)]);
    let before = object.clone();
    object["spec"]["replicas"] = json!(5);
    ownership::record_update(
        &before,
        &mut object,
        ownership::base_for_update(&before, &json!({})),
        "kubectl",
        Some("scale"),
    );
    assert_eq!(
        ownership::replicas_owners(&object),
        vec![("kubectl".into(), Some("scale".into()))],
        "the scale took it"
    );
    let err = ownership::apply(&object, &applied, "helm", false).expect_err("conflict");
    assert!(
        err.contains("conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"),
        "{err}"
    );
    assert!(
        ownership::apply(&object, &json!({"spec": {"replicas": 5}}), "helm", false).is_ok(),
        "same value is shared"
    );
    assert!(ownership::apply(&object, &applied, "helm", true).is_ok(), "force takes it");
    let before = object.clone();
    object["spec"]["replicas"] = json!(0);
    ownership::record_update(
        &before,
        &mut object,
        ownership::base_for_update(&before, &json!({})),
        "kubectl",
        Some("scale"),
    );
    assert!(ownership::replicas_owners(&object).is_empty(), "a scale to 0 claims nothing and strips the others");
}

/// A StatefulSet with the default `OrderedReady` policy and two unhealthy pods: its controller
/// removes one pod at a time from the top and blocks on an unhealthy pod that is not the lowest
/// unhealthy one, so a scale to 0 alone never finishes. Quiesce deletes exactly that blocking pod
/// once the set is at 0 (nothing recreates it) and the purge goes on; the controller removes the
/// rest in order. With one unhealthy pod nothing is deleted: the controller copes.
#[tokio::test]
async fn ordered_statefulset_with_unhealthy_pods_is_stopped() {
    let mut env = Env::start(&["db"]).await;
    env.api.grant_on(TOKEN, "pods", &["delete"], None);
    env.seed().await;
    let mut db = deployment("db", Some(3));
    db["kind"] = json!("StatefulSet");
    env.api.apply_workload(NS, &db);
    let pods: Vec<String> =
        env.api.pods_of(NS, "db").iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(pods.len(), 3, "three pods");
    env.api.make_unhealthy(NS, &pods[0]);
    env.api.make_unhealthy(NS, &pods[1]);
    let run = cleanslate(&["purge"], &env.vars("statefulset/db", &[("CLEANSLATE_QUIESCE_TIMEOUT", "8s")])).await;
    assert_eq!(run.code, 0, "the quiesce finishes: {}", run.all_output());
    assert!(env.api.pods_of(NS, "db").is_empty(), "every pod gone");
    assert_eq!(env.api.replicas_and_annotation(NS, "statefulsets", "db"), (0, Some("3".into())), "recorded");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 0, "purged");
    let deletes = |api: &KubeApi| -> Vec<String> {
        api.requests().iter().filter(|r| r.method == "DELETE").map(|r| r.path.clone()).collect()
    };
    let deleted = deletes(&env.api);
    assert_eq!(deleted.len(), 1, "only the blocking pod was deleted: {deleted:?}");
    assert!(deleted[0].ends_with(&format!("/{}", pods[1])), "the higher unhealthy pod: {deleted:?}");

    // One unhealthy pod: the controller removes it in its turn; nothing is deleted.
    let resume = cleanslate(&["resume"], &env.resume_vars("statefulset/db")).await;
    assert_eq!(resume.code, 0, "resume: {}", resume.all_output());
    let pods: Vec<String> =
        env.api.pods_of(NS, "db").iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(pods, ["db-0", "db-1", "db-2"], "ordinal names");
    env.api.make_unhealthy(NS, "db-0");
    let before = deletes(&env.api).len();
    let run = cleanslate(&["purge"], &env.vars("statefulset/db", &[("CLEANSLATE_QUIESCE_TIMEOUT", "8s")])).await;
    assert_eq!(run.code, 0, "the quiesce finishes: {}", run.all_output());
    assert!(env.api.pods_of(NS, "db").is_empty(), "every pod gone");
    assert_eq!(deletes(&env.api).len(), before, "no pod deleted");
    env.cleanup().await;
}

/// A marker that cannot be read before the quiesce (the API failing) fails the run before anything
/// is stopped: without it quiesce cannot tell pods that wait in their gates from pods that ran.
#[tokio::test]
async fn an_unreadable_marker_stops_nothing() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(2)));
    env.seed().await;
    env.api.fail_next(40, 503);
    let run = cleanslate(&["purge"], &env.vars("deployment/shop-producer", &[])).await;
    assert_ne!(run.code, 0, "the run fails: {}", run.all_output());
    assert!(run.stderr.contains("nothing was stopped"), "says so: {}", run.stderr);
    assert_eq!(env.state("shop-producer"), (2, None), "untouched");
    assert_eq!(env.scale_writes("shop-producer"), 0, "no scale written");
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo").await, 3, "nothing purged");
    env.cleanup().await;
}

/// The dead-letter queues a run only reports reach where operators look after the deploy: the
/// marker (`deadLettersNotPurged`) and the `CleanupSucceeded` Event name each with its source and
/// the value to add, and the queue keeps its messages.
#[tokio::test]
async fn reported_dead_letters_reach_the_marker_and_the_event() {
    let mut env = Env::start(&["shop-producer"]).await;
    env.api.apply_workload(NS, &deployment("shop-producer", Some(1)));
    env.seed().await;
    env.rabbit.declare(&env.vhost, "monorepo-dlq", json!({})).await;
    env.rabbit
        .declare(
            &env.vhost,
            "orders",
            json!({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "monorepo-dlq"}),
        )
        .await;
    env.rabbit.publish(&env.vhost, "monorepo-dlq", 2).await;
    env.api.grant_on(TOKEN, "events", &["create"], None);
    let vars = env.vars(
        "deployment/shop-producer",
        &[("CLEANSLATE_RABBITMQ_QUEUES", "monorepo,orders"), ("CLEANSLATE_EVENTS", "true")],
    );
    let run = cleanslate(&["purge"], &vars).await;
    assert_eq!(run.code, 0, "the purge succeeds: {}", run.all_output());
    assert_eq!(env.rabbit.count(&env.vhost, "monorepo-dlq").await, 2, "the reported queue keeps its messages");
    let marker = env.marker();
    let reported = marker["deadLettersNotPurged"].as_str().unwrap_or_default();
    assert!(
        reported.contains("monorepo-dlq (dead letters of orders)") && reported.contains("cleanup.rabbitmq.queues"),
        "the marker names it with the value to add: {marker:?}"
    );
    let succeeded: Vec<Value> =
        env.api.events().into_iter().filter(|e| e["reason"] == json!("CleanupSucceeded")).collect();
    assert_eq!(succeeded.len(), 1, "one CleanupSucceeded Event: {:?}", env.api.events());
    let note = succeeded[0]["note"].as_str().unwrap_or_default();
    assert!(note.contains("monorepo-dlq (dead letters of orders)"), "the Event names it: {note}");
    env.cleanup().await;
}

/// `resume` with the release's marker starts what was stopped for that marker, listed or not, and
/// leaves alone a listed workload stopped for another release's marker (that release's run or
/// resume starts it).
#[tokio::test]
async fn resume_starts_what_its_marker_stopped_and_nothing_of_another_release() {
    let env = Env::start(&["ours", "theirs", "outside"]).await;
    for resource in ["deployments", "statefulsets"] {
        env.api.grant_on(TOKEN, resource, &["list"], None);
    }
    for (name, owner) in [("ours", MARKER), ("theirs", "blog-cleanslate-marker"), ("outside", MARKER)] {
        let mut manifest = deployment(name, Some(0));
        manifest["metadata"]["annotations"] =
            json!({"cleanslate.io/quiesced-replicas": "2", "cleanslate.io/quiesced-for": owner});
        env.api.apply_workload(NS, &manifest);
    }
    let run = cleanslate(
        &["resume"],
        &with(env.resume_vars("deployment/ours,deployment/theirs"), &[("CLEANSLATE_MARKER", MARKER)]),
    )
    .await;
    assert_eq!(run.code, 0, "resume succeeds: {}", run.all_output());
    assert_eq!(env.state("ours"), (2, None), "listed and stopped for this marker: started");
    assert_eq!(env.state("outside"), (2, None), "not listed, stopped for this marker (a rollback's case): started");
    assert_eq!(env.state("theirs").0, 0, "stopped for another release's marker: left to it");
    env.cleanup().await;
}
