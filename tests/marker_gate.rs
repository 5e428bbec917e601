//! The marker written by `purge` and the `gate` that waits for it, through the built binary,
//! against the Kubernetes API stand-in (and the real RabbitMQ and etcd where a purge runs).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::kube_api::{KubeApi, PodCredentials};
use support::*;

const NAMESPACE: &str = "dev";
const MARKER: &str = "cleanslate-marker";
/// Known token values: asserted absent from every output and from the marker.
const JOB_TOKEN: &str = "job-token-Secret-11";
const GATE_TOKEN: &str = "gate-token-Secret-22";

/// A stand-in API with the chart's RBAC: the Job may get/update the marker (and, outside
/// Helm, create ConfigMaps); the gate may get/watch only the marker.
struct Cluster {
    api: KubeApi,
    credentials: PodCredentials,
}

impl Cluster {
    async fn start() -> Cluster {
        let api = KubeApi::start().await;
        api.grant(JOB_TOKEN, &["get", "update"], Some(&[MARKER]));
        api.grant(&format!("{JOB_TOKEN}-create"), &["create", "get", "update"], None);
        api.grant(GATE_TOKEN, &["list", "watch"], Some(&[MARKER]));
        let credentials = api.credentials();
        Cluster { api, credentials }
    }

    /// The variables a pod with `token` would have, for `revision`.
    fn vars(&self, token: &str, revision: u64) -> Vec<(String, String)> {
        with(
            self.credentials.marker_vars(token, NAMESPACE, MARKER, revision),
            &[("CLEANSLATE_RELEASE", "demo"), ("CLEANSLATE_POD_NAME", "demo-cleanslate-purge-x1")],
        )
    }

    fn gate_vars(&self, revision: u64, timeout: &str) -> Vec<(String, String)> {
        with(self.vars(GATE_TOKEN, revision), &[("CLEANSLATE_GATE_TIMEOUT", timeout)])
    }

    fn write_marker(&self, revision: u64, status: &str, message: &str) {
        let data: BTreeMap<String, String> = [
            ("revision", revision.to_string()),
            ("status", status.to_string()),
            ("dryRun", "false".to_string()),
            ("message", message.to_string()),
            ("job", "demo-cleanslate-purge-x1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        self.api.put(NAMESPACE, MARKER, data);
    }

    fn marker_data(&self) -> serde_json::Map<String, serde_json::Value> {
        let object = self.api.object(NAMESPACE, MARKER).expect("marker exists");
        object["data"].as_object().expect("data").clone()
    }

    /// Waits until the gate has opened a watch, so a write afterwards exercises the stream.
    async fn wait_for_watches(&self, count: usize) {
        // Re-watching after an early end waits a jittered 0.8–1.6 s (the gate's backoff).
        for _ in 0..1000 {
            if self.api.requests().iter().filter(|r| r.query.contains("watch=true")).count() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the gate never opened watch number {count}: {:?}", self.api.requests());
    }
}

fn spawn_gate(settings: &[(String, String)]) -> tokio::process::Child {
    spawn(&["gate"], settings)
}

/// A marker that already allows this revision lets the gate pass at once.
#[tokio::test]
async fn gate_passes_on_a_current_marker() {
    let cluster = Cluster::start().await;
    cluster.write_marker(3, "succeeded", "");
    let run = cleanslate(&["gate"], &cluster.gate_vars(3, "10s")).await;
    assert_eq!(run.code, 0, "gate passes: {}", run.all_output());
    assert!(run.stdout.contains("marker allows this revision"), "says why: {}", run.stdout);
    run.assert_no_secret(&[GATE_TOKEN]);
}

/// A newer revision's success passes an older pod (rollbacks render the old revision).
#[tokio::test]
async fn gate_passes_on_a_newer_revision() {
    let cluster = Cluster::start().await;
    cluster.write_marker(9, "succeeded", "");
    let run = cleanslate(&["gate"], &cluster.gate_vars(4, "10s")).await;
    assert_eq!(run.code, 0, "newer revision passes: {}", run.all_output());
}

/// The marker created while the gate watches lets it pass, from the watch stream, without polling:
/// one read and one watch request are all it takes.
#[tokio::test]
async fn gate_passes_when_the_marker_appears_while_watching() {
    let cluster = Cluster::start().await;
    let gate = spawn_gate(&cluster.gate_vars(5, "20s"));
    cluster.wait_for_watches(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = Instant::now();
    cluster.write_marker(5, "succeeded", "");
    let run = finish(gate).await;
    let reaction = written.elapsed();
    assert_eq!(run.code, 0, "gate passes: {}", run.all_output());
    let requests = cluster.api.requests();
    assert_eq!(requests.len(), 2, "one get and one watch, no polling: {requests:?}");
    assert!(
        requests[1].query.contains("fieldSelector=metadata.name=cleanslate-marker"),
        "watch selects the one name: {requests:?}"
    );
    eprintln!("gate reaction including process exit: {reaction:?}");
}

/// Older revisions and the chart's empty placeholder keep the gate waiting until the right one.
#[tokio::test]
async fn gate_waits_through_placeholder_and_older_revisions() {
    let cluster = Cluster::start().await;
    cluster.api.put(NAMESPACE, MARKER, BTreeMap::new());
    let gate = spawn_gate(&cluster.gate_vars(7, "20s"));
    cluster.wait_for_watches(1).await;
    cluster.write_marker(6, "succeeded", "");
    cluster.write_marker(6, "failed", "older failure is not ours");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.write_marker(7, "succeeded", "");
    let run = finish(gate).await;
    assert_eq!(run.code, 0, "passes on revision 7 only: {}", run.all_output());
}

/// A failed marker for this revision fails the gate at once with the Job's message, both when it
/// is already there and when it arrives while watching.
#[tokio::test]
async fn gate_fails_fast_on_a_failed_marker() {
    let cluster = Cluster::start().await;
    cluster.write_marker(2, "failed", "queue \"orders\": RabbitMQ answered 400");
    let started = Instant::now();
    let run = cleanslate(&["gate"], &cluster.gate_vars(2, "60s")).await;
    assert_eq!(run.code, 1, "failed marker fails: {}", run.all_output());
    assert!(run.first_stderr_line().contains("RabbitMQ answered 400"), "carries the message: {}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "at once, not after the timeout");

    let gate = spawn_gate(&cluster.gate_vars(3, "60s"));
    cluster.wait_for_watches(1).await;
    cluster.write_marker(3, "failed", "etcd: not reachable");
    let run = finish(gate).await;
    assert_eq!(run.code, 1, "failure seen on the stream: {}", run.all_output());
    assert!(run.stderr.contains("etcd: not reachable"), "carries the message: {}", run.stderr);
}

/// A 410 Gone leads to a fresh list and a new watch; a stream closed by the server to a new watch
/// from the last version seen (kube-rs's watcher), which still sees the marker written afterwards.
#[tokio::test]
async fn gate_recovers_from_closed_streams_and_410() {
    let cluster = Cluster::start().await;
    cluster.api.gone_next_watch();
    let gate = spawn_gate(&cluster.gate_vars(1, "20s"));
    cluster.wait_for_watches(2).await;
    cluster.api.close_watches();
    cluster.wait_for_watches(3).await;
    cluster.api.compact();
    cluster.write_marker(1, "succeeded", "");
    let run = finish(gate).await;
    assert_eq!(run.code, 0, "gate passes after recovering: {}", run.all_output());
    let lists = cluster.api.requests().iter().filter(|r| r.method == "GET" && !r.query.contains("watch")).count();
    assert!(lists >= 2, "listed again after 410: {lists} lists");
}

/// On timeout the gate exits 75, or 0 with a warning under GATE_ON_TIMEOUT=proceed.
#[tokio::test]
async fn gate_timeout_fails_or_proceeds() {
    let cluster = Cluster::start().await;
    cluster.write_marker(1, "succeeded", "");
    let started = Instant::now();
    let run = cleanslate(&["gate"], &cluster.gate_vars(2, "1s")).await;
    assert_eq!(run.code, 75, "timeout fails: {}", run.all_output());
    assert!(
        run.first_stderr_line().contains("did not allow revision 2") && run.stderr.contains("revision 1 succeeded"),
        "says what it saw: {}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(5), "timeout respected");

    let run =
        cleanslate(&["gate"], &with(cluster.gate_vars(2, "1s"), &[("CLEANSLATE_GATE_ON_TIMEOUT", "proceed")])).await;
    assert_eq!(run.code, 0, "proceed bypasses: {}", run.all_output());
    assert!(run.stdout.contains("starting anyway"), "warns: {}", run.stdout);
}

/// 403 is retried for a while (RBAC may not be effective yet), then fails with a hint that names
/// the verbs and the marker; access granted within the grace period lets the gate go on.
#[tokio::test]
async fn gate_retries_403_then_fails_with_an_rbac_hint() {
    let cluster = Cluster::start().await;
    cluster.write_marker(1, "succeeded", "");
    let stranger = "no-rights-token";
    cluster.api.grant(stranger, &["get"], Some(&["another-configmap"]));
    let run = cleanslate(&["gate"], &with(cluster.vars(stranger, 1), &[("CLEANSLATE_GATE_TIMEOUT", "3s")])).await;
    assert_eq!(run.code, 1, "forbidden fails: {}", run.all_output());
    assert!(
        run.first_stderr_line().contains("list and watch") && run.stderr.contains(MARKER),
        "RBAC hint: {}",
        run.stderr
    );
    let attempts = cluster.api.requests().iter().filter(|r| r.token == stranger).count();
    assert!(attempts > 1, "retried before failing: {attempts} attempts");

    let late = "late-binding-token";
    let gate = spawn_gate(&with(cluster.vars(late, 1), &[("CLEANSLATE_GATE_TIMEOUT", "30s")]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.api.grant(late, &["list", "watch"], Some(&[MARKER]));
    let run = finish(gate).await;
    assert_eq!(run.code, 0, "passes once RBAC takes effect: {}", run.all_output());
    run.assert_no_secret(&[late, stranger]);
}

/// Variables of a purge that succeeds on an empty vhost-free etcd prefix (etcd only, fast).
fn purge_vars(cluster: &Cluster, token: &str, revision: u64, prefix: &str) -> Vec<(String, String)> {
    let mut all = with(service_vars(), &[("CLEANSLATE_TARGETS", "etcd"), ("CLEANSLATE_ETCD_PREFIXES", prefix)]);
    all.extend(cluster.vars(token, revision));
    all
}

/// After a successful purge the marker has exactly the documented data, labels, and no secret;
/// Helm's annotations on the chart-made marker survive the replace.
#[tokio::test]
async fn purge_writes_the_marker_after_success() {
    let cluster = Cluster::start().await;
    let mut etcd = etcd().await;
    let prefix = format!("{}/app/", unique("/mk"));
    put_keys(&mut etcd, &prefix, 3).await;
    let run = cleanslate(&["purge"], &purge_vars(&cluster, JOB_TOKEN, 4, &prefix)).await;
    // With the marker missing and a Role that cannot create it, the run stops before deleting
    // anything (it could not record its outcome), naming the permission; final (79).
    assert_eq!(run.code, 79, "marker cannot be created by this Role: {}", run.all_output());
    assert!(
        run.stderr.contains("create on configmaps") && run.stderr.contains("nothing was stopped or deleted"),
        "names the permission: {}",
        run.stderr
    );
    assert_eq!(count_keys(&mut etcd, &prefix).await, 3, "nothing deleted");

    // The chart renders the marker as a hook resource with Helm's annotations and no data.
    let placeholder = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": MARKER, "annotations": {"helm.sh/hook": "post-install,pre-upgrade"}}, "data": {}});
    cluster.api.put_object(NAMESPACE, MARKER, placeholder);
    put_keys(&mut etcd, &prefix, 3).await;
    let run = cleanslate(&["purge"], &purge_vars(&cluster, JOB_TOKEN, 4, &prefix)).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    let data = cluster.marker_data();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "attempt",
            "deadLettersNotPurged",
            "dryRun",
            "durationMs",
            "failureKind",
            "final",
            "finishedAt",
            "job",
            "keysDeleted",
            "keysSeeded",
            "lastSucceededAt",
            "lastSucceededRevision",
            "message",
            "messagesPurged",
            "queuesPurged",
            "queuesWithUnknownCounts",
            "revision",
            "startedAt",
            "status",
            "unchanged",
            "writersNotStopped"
        ],
        "documented keys"
    );
    assert_eq!(data["lastSucceededRevision"], json!("4"), "the success is recorded apart");
    assert_eq!(data["attempt"], json!("1"), "first attempt at revision 4");
    assert_eq!(data["revision"], json!("4"), "revision");
    assert_eq!(data["status"], json!("succeeded"), "status");
    assert_eq!(data["keysDeleted"], json!("3"), "count from etcd");
    assert_eq!(data["dryRun"], json!("false"), "not a dry run");
    assert_eq!(data["job"], json!("demo-cleanslate-purge-x1"), "pod name");
    assert!(data["startedAt"].as_str().unwrap().ends_with('Z'), "RFC 3339 time");
    let object = cluster.api.object(NAMESPACE, MARKER).unwrap();
    assert_eq!(object["metadata"]["labels"]["app.kubernetes.io/managed-by"], json!("cleanslate"), "managed-by label");
    assert_eq!(object["metadata"]["labels"]["app.kubernetes.io/instance"], json!("demo"), "instance label");
    assert_eq!(
        object["metadata"]["annotations"]["helm.sh/hook"],
        json!("post-install,pre-upgrade"),
        "Helm's annotations kept"
    );
    assert!(!object.to_string().contains(JOB_TOKEN), "no token in the marker");
    run.assert_no_secret(&[JOB_TOKEN, &rabbit_password()]);
}

/// A failed purge writes `status: failed` with a message and no secret; a dry run writes
/// `dryRun: "true"`; without CLEANSLATE_MARKER nothing is written at all.
#[tokio::test]
async fn purge_writes_failed_and_dry_run_markers_and_none_without_a_marker() {
    let cluster = Cluster::start().await;
    cluster.api.put(NAMESPACE, MARKER, BTreeMap::new());
    let password = "Wrong-Rmq-Pw-44";
    let mut failing = with(
        service_vars(),
        &[
            ("CLEANSLATE_TARGETS", "rabbitmq"),
            ("CLEANSLATE_RABBITMQ_QUEUES", "q"),
            ("CLEANSLATE_RABBITMQ_PASSWORD", password),
        ],
    );
    failing.extend(cluster.vars(JOB_TOKEN, 5));
    let run = cleanslate(&["purge"], &failing).await;
    assert_eq!(run.code, 79, "purge fails on the refused login: {}", run.all_output());
    let data = cluster.marker_data();
    assert_eq!(data["status"], json!("failed"), "failed status");
    assert_eq!(data["final"], json!("true"), "final at once: the Job does not retry a refused login");
    assert!(data["message"].as_str().unwrap().contains("rejected the login"), "message: {data:?}");
    let marker_text = serde_json::to_string(&data).unwrap();
    assert!(!marker_text.contains(password) && !marker_text.contains(&rabbit_password()), "no secret in the marker");

    let prefix = format!("{}/dry/", unique("/mk"));
    let dry = with(purge_vars(&cluster, JOB_TOKEN, 6, &prefix), &[("CLEANSLATE_DRY_RUN", "true")]);
    let run = cleanslate(&["purge"], &dry).await;
    assert_eq!(run.code, 0, "dry run succeeds: {}", run.all_output());
    assert_eq!(cluster.marker_data()["dryRun"], json!("true"), "dry run recorded");
    assert_eq!(cluster.marker_data()["revision"], json!("6"), "dry run marker lets gates proceed");

    let before = cluster.api.requests().len();
    let local = with(service_vars(), &[("CLEANSLATE_TARGETS", "etcd"), ("CLEANSLATE_ETCD_PREFIXES", &prefix)]);
    let run = cleanslate(&["purge"], &local).await;
    assert_eq!(run.code, 0, "local purge succeeds: {}", run.all_output());
    assert_eq!(cluster.api.requests().len(), before, "no marker, no API call");
}

/// Outside Helm the marker is created when missing (with a Role that may create).
#[tokio::test]
async fn purge_creates_a_missing_marker() {
    let cluster = Cluster::start().await;
    let prefix = format!("{}/new/", unique("/mk"));
    let run = cleanslate(&["purge"], &purge_vars(&cluster, &format!("{JOB_TOKEN}-create"), 1, &prefix)).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(cluster.marker_data()["revision"], json!("1"), "marker created");
}

/// A write that races another writer (409 Conflict) is retried from a fresh read and lands.
#[tokio::test]
async fn marker_write_survives_conflicts() {
    let cluster = Cluster::start().await;
    cluster.api.put(NAMESPACE, MARKER, BTreeMap::new());
    cluster.api.race_next_updates(3);
    let prefix = format!("{}/race/", unique("/mk"));
    let run = cleanslate(&["purge"], &purge_vars(&cluster, JOB_TOKEN, 8, &prefix)).await;
    assert_eq!(run.code, 0, "purge succeeds despite conflicts: {}", run.all_output());
    assert_eq!(cluster.marker_data()["revision"], json!("8"), "written after the conflicts");
    let puts = cluster.api.requests().iter().filter(|r| r.method == "PUT").count();
    assert_eq!(puts, 4, "three conflicts, then success");
}

/// The revision never goes backwards: an older run finishing late leaves a newer marker alone, and
/// two purges racing end with the higher revision.
#[tokio::test]
async fn marker_revision_never_goes_backwards() {
    let cluster = Cluster::start().await;
    cluster.write_marker(7, "succeeded", "");
    let prefix = format!("{}/late/", unique("/mk"));
    let run = cleanslate(&["purge"], &purge_vars(&cluster, JOB_TOKEN, 6, &prefix)).await;
    assert_eq!(run.code, 0, "late run still succeeds: {}", run.all_output());
    assert!(run.stdout.contains("left unchanged"), "says it left the newer marker: {}", run.stdout);
    assert_eq!(cluster.marker_data()["revision"], json!("7"), "revision not lowered");

    // Each round races two revisions above the last round's, so every round must move the marker
    // to its own higher revision (a round cannot pass on what an earlier one wrote).
    for round in 0..3u64 {
        let (high, low) = (11 + 2 * round, 10 + 2 * round);
        let (newer, older) =
            (purge_vars(&cluster, JOB_TOKEN, high, &prefix), purge_vars(&cluster, JOB_TOKEN, low, &prefix));
        let (a, b) = tokio::join!(cleanslate(&["purge"], &newer), cleanslate(&["purge"], &older));
        assert_eq!((a.code, b.code), (0, 0), "both end well: {} {}", a.all_output(), b.all_output());
        assert_eq!(cluster.marker_data()["revision"], json!(high.to_string()), "the higher revision wins");
    }
}

/// Variables of a purge at `revision` that fails in a way a retry may fix (RabbitMQ not reachable:
/// exit 69), as attempt of a Job that runs at most `job_attempts` times. (Rejected credentials would
/// be final at once: exit 79, which the Job does not retry.)
fn failing_purge_vars(cluster: &Cluster, revision: u64, job_attempts: u32) -> Vec<(String, String)> {
    let mut all = with(
        service_vars(),
        &[
            ("CLEANSLATE_TARGETS", "rabbitmq"),
            ("CLEANSLATE_RABBITMQ_QUEUES", "q"),
            ("CLEANSLATE_RABBITMQ_URL", "http://127.0.0.1:9"),
            ("CLEANSLATE_RETRY_ATTEMPTS", "1"),
            ("CLEANSLATE_TIMEOUT", "3s"),
            ("CLEANSLATE_JOB_ATTEMPTS", &job_attempts.to_string()),
        ],
    );
    all.extend(cluster.vars(JOB_TOKEN, revision));
    all
}

/// A success survives later failures: after a failing `helm test` at revision 3 and a failed
/// upgrade to 4, pods of 3 (the running version) still pass their gates, pods of 4 fail at once.
#[tokio::test]
async fn last_success_survives_later_failures() {
    let cluster = Cluster::start().await;
    cluster.api.put(NAMESPACE, MARKER, BTreeMap::new());
    let prefix = format!("{}/ok/", unique("/mk"));
    let run = cleanslate(&["purge"], &purge_vars(&cluster, JOB_TOKEN, 3, &prefix)).await;
    assert_eq!(run.code, 0, "revision 3 cleaned: {}", run.all_output());
    let run = cleanslate(&["purge"], &failing_purge_vars(&cluster, 3, 1)).await;
    assert_eq!(run.code, 69, "the helm test run fails: {}", run.all_output());
    assert_eq!(cluster.marker_data()["status"], json!("failed"), "latest attempt recorded as failed");
    let gate = cleanslate(&["gate"], &cluster.gate_vars(3, "5s")).await;
    assert_eq!(gate.code, 0, "a restarted pod of 3 passes after a failed helm test: {}", gate.all_output());

    let run = cleanslate(&["purge"], &failing_purge_vars(&cluster, 4, 1)).await;
    assert_eq!(run.code, 69, "the upgrade's purge fails: {}", run.all_output());
    assert_eq!(cluster.marker_data()["lastSucceededRevision"], json!("3"), "last success kept");
    let gate = cleanslate(&["gate"], &cluster.gate_vars(3, "5s")).await;
    assert_eq!(gate.code, 0, "the running version's pods still start: {}", gate.all_output());
    let gate = cleanslate(&["gate"], &cluster.gate_vars(4, "30s")).await;
    assert_eq!(gate.code, 1, "pods of the failed revision fail: {}", gate.all_output());
    assert!(gate.first_stderr_line().contains("not reachable"), "with the Job's message: {}", gate.stderr);
}

/// A failed attempt that the Job will retry keeps gates waiting; the last attempt's failure fails
/// them at once, with its message.
#[tokio::test]
async fn only_the_last_attempt_fails_gates() {
    let cluster = Cluster::start().await;
    cluster.api.put(NAMESPACE, MARKER, BTreeMap::new());
    let gate = spawn_gate(&cluster.gate_vars(2, "60s"));
    cluster.wait_for_watches(1).await;
    let run = cleanslate(&["purge"], &failing_purge_vars(&cluster, 2, 2)).await;
    assert_eq!(run.code, 69, "first attempt fails: {}", run.all_output());
    assert_eq!(cluster.marker_data()["final"], json!("false"), "a retry will come");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut gate = gate;
    assert!(gate.try_wait().expect("gate state").is_none(), "the gate still waits for the retry");
    let run = cleanslate(&["purge"], &failing_purge_vars(&cluster, 2, 2)).await;
    assert_eq!(run.code, 69, "second and last attempt fails: {}", run.all_output());
    assert_eq!(cluster.marker_data()["final"], json!("true"), "no retry left");
    let started = Instant::now();
    let run = finish(gate).await;
    assert_eq!(run.code, 1, "the final failure fails the gate: {}", run.all_output());
    assert!(started.elapsed() < Duration::from_secs(10), "at once, not after the gate's timeout");
}

/// Watches that end at once or answer only 410 are retried with a growing pause, not in a tight
/// loop: a few requests in several seconds, where no pause would make hundreds.
#[tokio::test]
async fn gate_backs_off_when_watches_keep_ending() {
    for (name, misbehave) in [("cut", KubeApi::cut_every_watch as fn(&KubeApi)), ("410", KubeApi::gone_every_watch)] {
        let cluster = Cluster::start().await;
        cluster.write_marker(1, "succeeded", "");
        misbehave(&cluster.api);
        let run = cleanslate(&["gate"], &cluster.gate_vars(2, "6s")).await;
        assert_eq!(run.code, 75, "{name}: times out waiting for revision 2: {}", run.all_output());
        let requests = cluster.api.requests().len();
        // 0.8 s doubling with up to 100% jitter: at most 4 pauses fit in 6 s, i.e. at most 10 requests.
        assert!((4..=10).contains(&requests), "{name}: {requests} requests in 6 s, expected a backoff");
    }
}

/// A watch whose connection goes silent (a load balancer forgot the flow: no FIN, no RST, no more
/// bytes) is noticed within the watch timeout plus five seconds, and the gate watches again on a
/// new connection and passes, instead of staying blind until the gate's own timeout.
#[tokio::test]
async fn gate_notices_a_silently_dropped_watch() {
    let cluster = Cluster::start().await;
    let proxy = support::proxy::Proxy::for_url(&cluster.api.url);
    proxy.forward(Duration::ZERO);
    let through_proxy = format!("https://{}", proxy.addr);
    let settings = with(
        cluster.gate_vars(1, "40s"),
        &[("CLEANSLATE_KUBE_API", &through_proxy), ("CLEANSLATE_KUBE_WATCH_TIMEOUT", "2s")],
    );
    let gate = spawn_gate(&settings);
    cluster.wait_for_watches(1).await;
    proxy.silence_open_connections();
    let silenced_at = std::time::Instant::now();
    cluster.write_marker(1, "succeeded", "");
    let run = finish(gate).await;
    let waited = silenced_at.elapsed();
    assert_eq!(run.code, 0, "the gate passes on a new watch: {}", run.all_output());
    // About 7 s on an idle machine (the 2 s watch timeout, 5 s of slack); the bound tells a gate
    // that noticed from one blind until its own 40 s timeout, with room for a loaded CI machine.
    assert!(waited < Duration::from_secs(30), "noticed long before the gate's own timeout, took {waited:?}");
}

/// An attempt killed without running its handler (SIGKILL: the OOM killer, a lost node) writes
/// nothing, but the Job controller counts it. The next attempt, the Job's last (`backoffLimit: 1`),
/// reads its number from the Job's status, so its failure is final and the waiting gate fails at
/// once instead of waiting out its timeout.
#[tokio::test]
async fn a_killed_attempt_counts_and_the_last_failure_fails_gates() {
    const JOB: &str = "demo-cleanslate-purge";
    let cluster = Cluster::start().await;
    cluster.api.put(NAMESPACE, MARKER, BTreeMap::new());
    cluster.api.grant_on(JOB_TOKEN, "jobs", &["get"], Some(&[JOB]));
    cluster.api.put_job(NAMESPACE, JOB, 1, 0);
    let gate = spawn_gate(&cluster.gate_vars(2, "60s"));
    cluster.wait_for_watches(1).await;

    // Attempt 1 waits on an unreachable broker and is killed before it can write anything.
    let stuck = with(
        failing_purge_vars(&cluster, 2, 2),
        &[
            ("CLEANSLATE_JOB_NAME", JOB),
            ("CLEANSLATE_RABBITMQ_URL", "http://127.0.0.1:9"),
            ("CLEANSLATE_RETRY_ATTEMPTS", "3"),
            ("CLEANSLATE_RETRY_BACKOFF", "30s"),
            ("CLEANSLATE_TIMEOUT", "50s"),
        ],
    );
    let mut first = spawn(&["purge"], &stuck);
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.kill().await.expect("SIGKILL");
    assert!(cluster.marker_data().get("revision").is_none(), "the killed attempt wrote nothing");
    cluster.api.put_job(NAMESPACE, JOB, 1, 1);

    // Attempt 2 of 2 fails.
    let last = with(failing_purge_vars(&cluster, 2, 2), &[("CLEANSLATE_JOB_NAME", JOB)]);
    let run = cleanslate(&["purge"], &last).await;
    assert_eq!(run.code, 69, "the last attempt fails: {}", run.all_output());
    let marker = cluster.marker_data();
    assert_eq!(marker["attempt"], json!("2"), "the Job's count, killed attempt included: {marker:?}");
    assert_eq!(marker["final"], json!("true"), "no attempt left: {marker:?}");
    let started = Instant::now();
    let run = finish(gate).await;
    assert_eq!(run.code, 1, "the final failure fails the gate: {}", run.all_output());
    assert!(started.elapsed() < Duration::from_secs(10), "at once, not after the gate's timeout");
}

/// A gate that waits, then passes, says so in Events on its pod (`kubectl describe pod` shows why
/// it waited and when it passed); one that fails says why; no secret in any of them.
#[tokio::test]
async fn gate_events_tell_the_wait_and_the_outcome() {
    let cluster = Cluster::start().await;
    cluster.api.grant_on(GATE_TOKEN, "events", &["create"], None);
    let settings = with(
        cluster.gate_vars(5, "20s"),
        &[("CLEANSLATE_EVENTS", "true"), ("CLEANSLATE_POD_NAME", "shop-producer-7d9f-a1")],
    );
    let gate = spawn_gate(&settings);
    cluster.wait_for_watches(1).await;
    cluster.write_marker(5, "succeeded", "");
    let run = finish(gate).await;
    assert_eq!(run.code, 0, "gate passes: {}", run.all_output());
    assert_eq!(
        cluster.api.event_reasons("Pod", "shop-producer-7d9f-a1"),
        ["WaitingForCleanup", "CleanupPassed"],
        "waited, then passed"
    );
    let notes: Vec<String> =
        cluster.api.events().iter().filter_map(|e| e["note"].as_str().map(str::to_string)).collect();
    assert!(notes[0].starts_with("waiting for revision 5's cleanup"), "{notes:?}");
    assert!(notes[1].starts_with("revision 5's cleanup is done: passed after"), "{notes:?}");

    let settings = with(
        cluster.gate_vars(6, "20s"),
        &[("CLEANSLATE_EVENTS", "true"), ("CLEANSLATE_POD_NAME", "shop-producer-8e0a-b2")],
    );
    let gate = spawn_gate(&settings);
    cluster.wait_for_watches(2).await;
    cluster.write_marker(6, "failed", "RabbitMQ at http://rabbitmq:15672 rejected the login of user \"cleanslate\"");
    let mut data = cluster.marker_data();
    data.insert("final".into(), json!("true"));
    let data: BTreeMap<String, String> =
        data.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string())).collect();
    cluster.api.put(NAMESPACE, MARKER, data);
    let run = finish(gate).await;
    assert_eq!(run.code, 1, "a final failure fails the gate: {}", run.all_output());
    let reasons = cluster.api.event_reasons("Pod", "shop-producer-8e0a-b2");
    assert_eq!(reasons.last().map(String::as_str), Some("CleanupFailed"), "{reasons:?}");
    let text = serde_json::to_string(&cluster.api.events()).unwrap();
    assert!(text.contains("rejected the login"), "the Job's message: {text}");
    assert!(!text.contains(GATE_TOKEN), "no token in any Event");
}
