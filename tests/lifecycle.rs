//! Every deploy sequence ends with the apps running and nothing of the old revision writing (issue
//! 20), through the real chart and binary against the API stand-in and the real RabbitMQ and etcd:
//! a deleted marker, an app removed by an upgrade, a rollback to a revision that lists nothing, a
//! parent chart's own gated Deployment, `status` when a gate cannot read the marker, a workload that
//! drains slowly, a native sidecar before the gate, and a pod without an automounted token.
//!
//! Renders that Helm makes against a cluster (`helm install`, `helm upgrade`) use
//! `render_live` (`helm template --dry-run=server` against the stand-in), so the chart's `lookup`
//! sees the live objects as it would; `helm template`-based tools see none, which `World::render`
//! shows.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::chart::*;
use support::helm::*;
use support::*;

const MARKER: &str = "shop-cleanslate-marker";

/// The chart's directory.
fn chart() -> std::path::PathBuf {
    repo_root().join("chart")
}

/// `world.values(extra)` as `&str`s, for `render_live`.
fn args(values: &[String]) -> Vec<&str> {
    values.iter().map(String::as_str).collect()
}

/// Applies an upgrade's release resources as Helm does, then deletes what the new revision dropped.
fn apply_upgrade(cluster: &mut FakeCluster, before: &[Value], after: &[Value]) {
    for resource in release_resources(after) {
        cluster.apply(resource);
    }
    delete_dropped(cluster, before, after);
}

/// The marker deleted while the release is installed (by hand, by a janitor): `status` tells it
/// from cleanup being off, `helm test` recreates it, and a gated pod that restarts afterwards starts.
#[tokio::test]
async fn a_deleted_marker_is_recreated_and_gated_pods_start() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let docs = install(&world, &mut cluster, &[]).await;
    cluster.api.delete(NAMESPACE, MARKER);

    let status = cleanslate(&["status", RELEASE], &cluster.operator_vars()).await;
    assert_eq!(status.code, 1, "not clean: {}", status.all_output());
    assert!(
        status.stdout.contains("is missing")
            && status.stdout.contains("helm test")
            && !status.stdout.contains("cleanup is off"),
        "a missing marker is not cleanup being off: {}",
        status.stdout
    );

    world.seed().await;
    let runs = run_hooks(&mut cluster, &docs, "test").await;
    all_succeeded(&runs, "helm test with the marker gone");
    world.assert_clean("after helm test").await;
    let marker = marker(&cluster);
    assert_eq!(marker["status"], json!("succeeded"), "recreated with the run: {marker:?}");
    for gate in start_gates(&cluster, &docs, "restarted") {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: a restarted pod starts: {}", gate.deployment, run.all_output());
    }
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: running again after helm test");
    }
    world.cleanup().await;
}

/// A purge identity that may not write the marker stops nothing and deletes nothing, and says which
/// permission is missing (exit 79, not retried).
#[tokio::test]
async fn a_run_that_cannot_record_its_outcome_stops_nothing() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let docs = install(&world, &mut cluster, &[]).await;
    cluster.api.delete(NAMESPACE, MARKER);
    world.seed().await;
    // The test Pod's Role without `create` (a Role from before it was granted, or edited by hand).
    let test_token = FakeCluster::token_of("shop-cleanslate-test");
    cluster.api.revoke(&test_token);
    cluster.api.grant(&test_token, &["get", "update"], Some(&[MARKER]));
    for resource in ["deployments", "statefulsets"] {
        cluster.api.grant_on(&test_token, resource, &["list"], None);
    }
    let runs = run_hooks(&mut cluster, &docs, "test").await;
    let run = job_run(&runs, "shop-cleanslate-test-purge");
    assert_eq!(run.code, 79, "refused: {}", run.all_output());
    assert!(
        run.stderr.contains("is missing")
            && run.stderr.contains("create on configmaps")
            && run.stderr.contains("nothing was stopped"),
        "names the permission: {}",
        run.stderr
    );
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: never stopped");
    }
    assert_eq!(world.rabbit.count(&world.vhost, "monorepo").await, 3, "nothing purged");
    world.cleanup().await;
}

/// An upgrade that removes an app (`apps.producer.enabled=false`): the old producer still runs and
/// writes until Helm deletes it after the apply. The upgrade's render finds it (its gate reads this
/// release's marker), so its Role names it and the purge stops it first: nothing it wrote is left.
#[tokio::test]
async fn an_app_removed_by_the_upgrade_is_stopped_before_the_purge() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let installed = install(&world, &mut cluster, &[]).await;
    world.seed().await;

    let extra: Vec<String> = ["--is-upgrade", "--set", "cleanup.revision=2", "--set", "apps.producer.enabled=false"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let upgrade = render_live(&cluster, &chart(), RELEASE, &args(&world.values(&extra))).await;
    assert!(
        !release_resources(&upgrade).iter().any(|d| name(d) == "shop-producer"),
        "the new revision renders no producer"
    );
    let (written, job) =
        pre_upgrade_with_old_writer(&mut cluster, &world, &upgrade, "shop-producer", "shop-cleanslate-purge-u2").await;
    assert_eq!(job.code, 0, "the upgrade's purge succeeds: {}", job.all_output());
    assert!(written > 1, "the old producer was writing ({written} writes)");
    assert_eq!(replicas(&cluster, "shop-producer").0, 0, "the removed app was stopped before the purge");
    world.assert_clean("after the purge, the removed app stopped").await;

    apply_upgrade(&mut cluster, &installed, &upgrade);
    assert!(cluster.api.workload(NAMESPACE, "deployments", "shop-producer").is_none(), "Helm deleted it");
    let runs = run_hooks(&mut cluster, &upgrade, "post-upgrade").await;
    all_succeeded(&runs, "post-upgrade");
    world.assert_clean("after the upgrade").await;
    world.cleanup().await;
}

/// Revision 1 has cleanup on and quiesce off; revision 2 turns quiesce on for `deployment/api` (a
/// Deployment outside the chart, 2 replicas). Its purge stops api, then its apply fails, and Helm
/// rolls back to revision 1, running revision 1's hooks: its resume Job starts api again, because
/// api carries the record of this release's marker, though revision 1 lists nothing.
#[tokio::test]
async fn a_rollback_starts_what_a_newer_revision_stopped() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    cluster.api.apply_workload(NAMESPACE, &deployment_manifest("api", Some(2)));
    let quiesce_off: Vec<String> = vec!["--set".into(), "cleanup.quiesce.enabled=false".into()];
    let revision1 = install(&world, &mut cluster, &quiesce_off).await;
    world.seed().await;

    let revision2 = world.render(&[
        "--is-upgrade".into(),
        "--set".into(),
        "cleanup.revision=2".into(),
        "--set-json".into(),
        r#"cleanup.quiesce.workloads=["deployment/api"]"#.into(),
    ]);
    let runs = run_hooks(&mut cluster, &revision2, "pre-upgrade").await;
    all_succeeded(&runs, "revision 2's purge");
    assert_eq!(replicas(&cluster, "api"), (0, Some("2".into())), "api stopped by revision 2");
    // The apply fails (an immutable field, a webhook): no release resource changes, no post-upgrade.
    // `--atomic`/`--rollback-on-failure` (or `helm rollback shop 1`) applies revision 1 and runs its
    // post-rollback hooks (pkg/action/rollback.go: the target revision's hooks).
    for resource in release_resources(&revision1) {
        cluster.apply(resource);
    }
    let runs = run_hooks(&mut cluster, &revision1, "post-rollback").await;
    assert_eq!(
        runs.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        ["shop-cleanslate-resume"],
        "revision 1 has a resume Job though it had quiesce off"
    );
    all_succeeded(&runs, "rollback");
    assert_eq!(replicas(&cluster, "api"), (2, None), "api runs again at its count");
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: at its count");
    }
    world.cleanup().await;
}

/// The README's embedding example, as written (quiesce on, no workload list): the upgrade stops the
/// parent's own gated Deployment before the purge, and starts it again after.
#[tokio::test]
async fn a_parent_charts_gated_deployment_is_stopped_before_the_purge() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let (_scratch, parent) = parent_chart(None);
    let values = parent.join("values-dev.yaml").to_str().unwrap().to_string();
    let services: Vec<String> = vec![
        "-f".into(),
        values,
        "--set".into(),
        format!("cleanslate.cleanup.rabbitmq.url={}", rabbit_url()),
        "--set-string".into(),
        format!("cleanslate.cleanup.rabbitmq.vhost={}", world.vhost),
        "--set-string".into(),
        format!("cleanslate.cleanup.rabbitmq.username={}", rabbit_user()),
        "--set-string".into(),
        format!("cleanslate.cleanup.rabbitmq.password={}", rabbit_password()),
        "--set-json".into(),
        format!("cleanslate.cleanup.rabbitmq.queues=[\"monorepo\"]"),
        "--set-json".into(),
        format!("cleanslate.cleanup.etcd.endpoints=[\"{}\"]", etcd_endpoint()),
        "--set-json".into(),
        format!("cleanslate.cleanup.etcd.prefixes=[\"{}\"]", world.prefix),
    ];
    let install = render_live(&cluster, &parent, RELEASE, &args(&services)).await;
    install_resources(&mut cluster, &install).await;
    let runs = run_hooks(&mut cluster, &install, "post-install").await;
    all_succeeded(&runs, "install");
    cluster.api.pass_gates(NAMESPACE, "shop-api");
    world.seed().await;

    let mut upgrade_values = services.clone();
    upgrade_values.extend(["--is-upgrade".to_string(), "--set".into(), "cleanslate.cleanup.revision=2".into()]);
    let upgrade = render_live(&cluster, &parent, RELEASE, &args(&upgrade_values)).await;
    let job = upgrade.iter().find(|d| kind(d) == "Job" && name(d).ends_with("-purge")).expect("purge Job");
    let env = &pod_spec(job)["containers"][0]["env"];
    assert!(env.to_string().contains("deployment/shop-api"), "the live gated Deployment is in the list: {env}");
    let (written, job) =
        pre_upgrade_with_old_writer(&mut cluster, &world, &upgrade, "shop-api", "shop-cleanslate-purge-p2").await;
    assert_eq!(job.code, 0, "the purge succeeds: {}", job.all_output());
    assert!(written > 1, "the parent's app was writing");
    assert_eq!(replicas(&cluster, "shop-api"), (0, Some("1".into())), "stopped before the purge, count recorded");
    assert_eq!(world.rabbit.count(&world.vhost, "monorepo").await, 0, "nothing it wrote is left");
    apply_upgrade(&mut cluster, &install, &upgrade);
    let runs = run_hooks(&mut cluster, &upgrade, "post-upgrade").await;
    all_succeeded(&runs, "post-upgrade");
    assert_eq!(replicas(&cluster, "shop-api"), (1, None), "running again after the upgrade");
    world.cleanup().await;
}

/// `status` exits 0 only when every gated workload is ready: a new pod still waiting in its gate is
/// named so, and one stuck there (its ServiceAccount not bound: the gate cannot read the marker) is
/// named with the gate's own message.
#[tokio::test]
async fn status_names_a_pod_stuck_in_its_gate() {
    let world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    install(&world, &mut cluster, &[]).await;
    let status = cleanslate(&["status", RELEASE], &cluster.operator_vars()).await;
    assert_eq!(status.code, 0, "clean and running after the install: {}", status.all_output());

    // The gate's binding is gone (a hand edit, a policy controller): new pods cannot read the marker.
    cluster.api.unbind(&FakeCluster::token_of("shop-cleanslate-gate"));
    // A short gate timeout: the gate retries a 403 for a third of it (RBAC that is not effective yet).
    let upgrade = world.render(&[
        "--is-upgrade".into(),
        "--set".into(),
        "cleanup.revision=2".into(),
        "--set".into(),
        "gate.timeout=6s".into(),
    ]);
    let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
    all_succeeded(&runs, "upgrade");
    for resource in release_resources(&upgrade) {
        if kind(resource) != "RoleBinding" {
            cluster.apply(resource);
        }
    }
    let runs = run_hooks(&mut cluster, &upgrade, "post-upgrade").await;
    all_succeeded(&runs, "post-upgrade");
    // The new pods are Pending, their gates running: the deploy is not done.
    let waiting = cleanslate(&["status", RELEASE], &cluster.operator_vars()).await;
    assert_eq!(waiting.code, 1, "not running yet: {}", waiting.all_output());
    assert!(
        waiting.stdout.split("; ").any(|item| item.contains("shop-producer (") && item.contains("waiting in its gate")),
        "names the workload whose pods wait in their gate: {}",
        waiting.stdout
    );
    for gate in start_gates(&cluster, &upgrade, "rs2") {
        let run = finish(gate.child).await;
        assert_ne!(run.code, 0, "{}: the gate cannot read the marker: {}", gate.deployment, run.all_output());
        let message = run.first_stderr_line().to_string();
        cluster.api.gate_exited(NAMESPACE, &gate.deployment, run.code, &message);
    }
    let status = cleanslate(&["status", RELEASE], &cluster.operator_vars()).await;
    assert_eq!(status.code, 1, "not running: {}", status.all_output());
    assert!(
        status.stdout.contains("shop-producer")
            && status.stdout.contains("its gate failed")
            && status.stdout.contains("403"),
        "names the workload and the gate's own message: {}",
        status.stdout
    );
    assert!(!status.stdout.contains("nothing to do"), "{}", status.stdout);
}

/// After a configuration error, `status`'s next step is a fixed upgrade, not `helm test` (which
/// would re-run the same configuration).
#[tokio::test]
async fn status_after_a_configuration_error_says_to_fix_and_upgrade() {
    let world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    install(&world, &mut cluster, &[]).await;
    // A stream cannot be purged: naming one is a configuration error the preflight finds.
    world.rabbit.declare(&world.vhost, "audit", json!({"x-queue-type": "stream"})).await;
    let upgrade = world.render(&[
        "--is-upgrade".into(),
        "--set".into(),
        "cleanup.revision=2".into(),
        "--set-json".into(),
        r#"cleanup.rabbitmq.queues=["monorepo","audit"]"#.into(),
    ]);
    let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
    assert_eq!(job_run(&runs, "shop-cleanslate-purge").code, 78, "a configuration error");
    let status = cleanslate(&["status", RELEASE], &cluster.operator_vars()).await;
    assert_eq!(status.code, 1, "{}", status.all_output());
    assert!(
        status.stdout.contains("helm upgrade")
            && status.stdout.contains("fix the values")
            && !status.stdout.contains("run helm test"),
        "the next step fits the failure: {}",
        status.stdout
    );
}

/// A workload whose pods take longer to stop than the configured quiesce timeout, within their own
/// grace period: the quiesce waits for the grace period plus a margin, the purge succeeds on its
/// first attempt, and the apps are stopped once, not again by a retry.
#[tokio::test]
async fn a_slowly_draining_workload_is_waited_for() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let slow: Vec<String> = vec![
        "--set".into(),
        "apps.consumer.terminationGracePeriodSeconds=8".into(),
        "--set".into(),
        "cleanup.quiesce.timeout=2s".into(),
    ];
    install(&world, &mut cluster, &slow).await;
    world.seed().await;
    // The consumer drains for 4 s after SIGTERM: twice the configured timeout, half its grace.
    cluster.api.set_termination_delay(Duration::from_secs(4));
    let mut extra = slow.clone();
    extra.extend(["--is-upgrade".to_string(), "--set".into(), "cleanup.revision=2".into()]);
    let upgrade = world.render(&extra);
    let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert_eq!(job.code, 0, "the purge succeeds on its first attempt: {}", job.all_output());
    assert!(job.stdout.contains("grace period"), "says why it waits longer: {}", job.stdout);
    let stops =
        cluster.api.requests().iter().filter(|r| r.method == "PUT" && r.path.ends_with("shop-consumer/scale")).count();
    assert_eq!(stops, 1, "stopped once");
    world.assert_clean("after the slow drain").await;
    world.cleanup().await;
}

/// A quiesce that times out (a pod that never goes away) restores the workloads and exits 80, which
/// the Job's podFailurePolicy does not retry: one outage, not three.
#[tokio::test]
async fn a_quiesce_that_times_out_is_not_retried() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    install(&world, &mut cluster, &[]).await;
    world.seed().await;
    cluster.api.hold_pods(NAMESPACE, "shop-producer");
    let upgrade = world.render(&[
        "--is-upgrade".into(),
        "--set".into(),
        "cleanup.revision=2".into(),
        "--set".into(),
        "apps.producer.terminationGracePeriodSeconds=0".into(),
        "--set".into(),
        "cleanup.quiesce.timeout=1s".into(),
    ]);
    let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert_eq!(job.code, 80, "the quiesce timed out: {}", job.all_output());
    let stops =
        cluster.api.requests().iter().filter(|r| r.method == "PUT" && r.path.ends_with("shop-producer/scale")).count();
    assert_eq!(stops, 2, "stopped once and put back once, no retry: {stops} scale writes");
    assert_eq!(replicas(&cluster, "shop-producer"), (1, None), "put back");
    assert_eq!(world.rabbit.count(&world.vhost, "monorepo").await, 3, "nothing purged");
    assert_eq!(marker(&cluster)["final"], json!("true"), "the gates learn it is final");
    world.cleanup().await;
}

/// First install, with a native sidecar (an init container with restartPolicy Always, Kubernetes
/// 1.29+) before the gate: the sidecar runs, and may write, while the gate waits, so the pod counts
/// as running and is stopped for the purge (not skipped as "never ran"), then started again.
#[tokio::test]
async fn a_native_sidecar_before_the_gate_counts_as_running() {
    let world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let sidecar = r#"apps.producer.initContainers=[{"name":"log-shipper","image":"registry.example.com/shipper:1","restartPolicy":"Always"}]"#;
    let docs = world.render(&["--set-json".into(), sidecar.into()]);
    install_resources(&mut cluster, &docs).await;
    let pod = &cluster.api.pods_of(NAMESPACE, "shop-producer")[0];
    let sidecar_status = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(sidecar_status["started"], json!(true), "the sidecar runs while the gate waits: {pod}");
    let runs = run_hooks(&mut cluster, &docs, "post-install").await;
    all_succeeded(&runs, "install");
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert!(job.stdout.contains("shop-producer") && job.stdout.contains("scaled to 0"), "stopped: {}", job.stdout);
    assert_eq!(replicas(&cluster, "shop-producer"), (1, None), "started again by the resume Job");
    world.cleanup().await;
}

/// A pod that turns token automounting off (common hardening): its gate reads the marker with the
/// projected token the chart mounts for it, and passes.
#[tokio::test]
async fn the_gate_works_without_an_automounted_token() {
    let world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let docs = world.render(&["--set".into(), "apps.producer.automountServiceAccountToken=false".into()]);
    install_resources(&mut cluster, &docs).await;
    let gates = start_gates(&cluster, &docs, "rs1");
    let runs = run_hooks(&mut cluster, &docs, "post-install").await;
    all_succeeded(&runs, "install");
    for gate in gates {
        let run = finish(gate.child).await;
        assert_eq!(
            run.code,
            0,
            "{}: the gate passes without the automounted token: {}",
            gate.deployment,
            run.all_output()
        );
    }
    world.cleanup().await;
}

/// Rendered without Helm's `lookup` (`helm template`, as Argo CD does), the Job's Role does not name
/// a parent chart's gated Deployment: the Job finds it, cannot stop it, and says so; the marker records
/// it, and `status` is not clean and says what to add.
#[tokio::test]
async fn a_gated_writer_the_role_does_not_name_is_reported() {
    let world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let (_scratch, parent) = parent_chart(None);
    let render = |extra: &[&str]| {
        let mut command = std::process::Command::new(helm());
        command.args(["template", RELEASE]).arg(&parent).args(["--namespace", NAMESPACE]);
        command.args(["--set", &format!("cleanslate.cleanup.rabbitmq.url={}", rabbit_url())]);
        command.args(["--set-string", &format!("cleanslate.cleanup.rabbitmq.vhost={}", world.vhost)]);
        command.args(["--set-string", &format!("cleanslate.cleanup.rabbitmq.username={}", rabbit_user())]);
        command.args(["--set-string", &format!("cleanslate.cleanup.rabbitmq.password={}", rabbit_password())]);
        command.args(["--set-json", "cleanslate.cleanup.rabbitmq.queues=[\"monorepo\"]"]);
        command.args(["--set-json", &format!("cleanslate.cleanup.etcd.endpoints=[\"{}\"]", etcd_endpoint())]);
        command.args(["--set-json", &format!("cleanslate.cleanup.etcd.prefixes=[\"{}\"]", world.prefix)]);
        command.args(extra);
        let output = command.output().expect("helm runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        parse_documents(&String::from_utf8_lossy(&output.stdout))
    };
    let install = render(&[]);
    install_resources(&mut cluster, &install).await;
    all_succeeded(&run_hooks(&mut cluster, &install, "post-install").await, "install");
    cluster.api.pass_gates(NAMESPACE, "shop-api");

    let upgrade = render(&["--is-upgrade", "--set", "cleanslate.cleanup.revision=2"]);
    let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert_eq!(job.code, 0, "the purge goes on: {}", job.all_output());
    assert!(
        job.stdout.contains("deployment/shop-api") && job.stdout.contains("not stopped"),
        "says which writer it could not stop: {}",
        job.stdout
    );
    assert_eq!(replicas(&cluster, "shop-api"), (1, None), "left running: its Role does not name it");
    assert_eq!(marker(&cluster)["writersNotStopped"], json!("deployment/shop-api"), "the marker records it");
    let status = cleanslate(&["status", RELEASE], &cluster.operator_vars()).await;
    assert_eq!(status.code, 1, "not clean: {}", status.all_output());
    assert!(status.stdout.contains("cleanup.quiesce.workloads"), "says what to add: {}", status.stdout);
    world.cleanup().await;
}
