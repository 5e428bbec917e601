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
use support::helm::*;
use support::*;

/// A fresh install, an upgrade and `helm test`, with the default hooks (post-install, pre-upgrade).
#[tokio::test]
async fn install_upgrade_and_helm_test() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;

    // A marker left over from an uninstalled release (hooks survive `helm uninstall`), from a time
    // when the revisions went up to 7: it must not let revision 1's pods through.
    put_leftover_marker(&cluster);

    // helm install (revision 1): pre-install hooks (the marker reset), then the release resources,
    // so the gates start and wait.
    let install = world.render(&[]);
    let pre_install: Vec<&str> = hooks_for(&install, "pre-install").into_iter().map(kind).collect();
    assert_eq!(pre_install, ["ConfigMap"], "only the marker reset runs before the release resources");
    install_resources(&mut cluster, &install).await;
    let pods_at_install: Vec<Value> =
        ["shop-producer", "shop-consumer"].iter().flat_map(|d| cluster.api.pods_of(NAMESPACE, d)).collect();
    assert_eq!(pods_at_install.len(), 2, "one pod each");
    for pod in &pods_at_install {
        assert_eq!(pod["status"]["phase"], json!("Pending"), "waiting in its gate: {pod}");
    }
    let mut gates = start_gates(&cluster, &install, "rs1-a");
    assert_eq!(gates.len(), 2, "producer and consumer are gated");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for gate in &mut gates {
        assert!(gate.child.try_wait().expect("status").is_none(), "{} waits for the marker", gate.deployment);
    }
    // The gates are watching before the Job runs (the RBAC check at the end counts on it).
    let gate_token = FakeCluster::token_of("shop-cleanslate-gate");
    let watching = ("configmaps".to_string(), "watch".to_string());
    for _ in 0..100 {
        if cluster.api.used(&gate_token).contains(&watching) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.api.used(&gate_token).contains(&watching), "the gates watch the marker");
    let runs = run_hooks(&mut cluster, &install, "post-install").await;
    all_succeeded(&runs, "install");
    let ran: Vec<&str> = runs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(ran, ["shop-cleanslate-purge", "shop-cleanslate-resume"], "the purge Job, then the resume Job");
    let resume = job_run(&runs, "shop-cleanslate-resume");
    assert!(resume.stdout.contains("resume finished resumed= "), "nothing to resume: {}", resume.stdout);
    assert!(
        !cluster.has_rights("shop-cleanslate-purge"),
        "no standing rights: Helm deleted the Job's identity once its hooks succeeded"
    );
    let job = job_run(&runs, "shop-cleanslate-purge");
    // First install: the apps' pods wait in their gates, so they have written nothing and are
    // neither stopped nor restarted; the purge still ran before any main container started.
    assert!(job.stdout.contains("every pod still waits in its gate"), "said why: {}", job.stdout);
    let scale_writes =
        cluster.api.requests().iter().filter(|r| r.method == "PUT" && r.path.ends_with("/scale")).count();
    assert_eq!(scale_writes, 0, "nothing stopped");
    for pod in &pods_at_install {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let deployment = if name.starts_with("shop-producer") { "shop-producer" } else { "shop-consumer" };
        let now = cluster.api.pods_of(NAMESPACE, deployment);
        assert_eq!(now.len(), 1, "{deployment}: one pod");
        assert_eq!(now[0]["metadata"]["name"], json!(name), "{deployment}: the same pod, not restarted");
        assert_eq!(now[0]["status"]["phase"], json!("Pending"), "{deployment}: still in its gate after the purge");
    }
    let written = Instant::now();
    for gate in gates {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: gate passes after the Job: {}", gate.deployment, run.all_output());
        run.assert_no_secret(&secrets().iter().map(String::as_str).collect::<Vec<_>>());
    }
    eprintln!("gates released {:?} after the Job ended", written.elapsed());
    for deployment in ["shop-producer", "shop-consumer"] {
        // The kubelet starts the main containers once the gates exited 0.
        cluster.api.pass_gates(NAMESPACE, deployment);
    }
    world.assert_clean("after install").await;
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: at its count, never stopped");
    }
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
    let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
    all_succeeded(&runs, "upgrade");
    assert!(!cluster.has_rights("shop-cleanslate-purge"), "the upgrade's identity is gone once its hooks succeeded");
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
    let runs = run_hooks(&mut cluster, &upgrade, "test").await;
    all_succeeded(&runs, "helm test");
    world.assert_clean("after helm test").await;
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: helm test started it again");
    }
    assert_eq!(marker(&cluster)["revision"], json!("2"), "helm test rewrites the same revision");
    assert_eq!(marker(&cluster)["job"], json!("shop-cleanslate-test-purge-x7k2p"), "written by the test Pod");
    // The gate's Role grants exactly what the gates used: a read, and a watch while they waited.
    assert_eq!(cluster.api.granted(&gate_token), cluster.api.used(&gate_token), "the gate: granted = used");
    world.cleanup().await;
}

/// A Job that fails (wrong password): the waiting gates fail fast with its message.
#[tokio::test]
async fn failing_job_fails_the_gates_fast() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let docs = world.render(&["--set-string".into(), "cleanup.rabbitmq.password=Wrong-E2e-Pw".into()]);
    install_resources(&mut cluster, &docs).await;
    let gates = start_gates(&cluster, &docs, "rs1-b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = run_hooks(&mut cluster, &docs, "post-install").await;
    assert_eq!(runs.len(), 1, "Helm stops at the failed Job: the resume Job does not run");
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert_eq!(job.code, 79, "the Job fails on rejected credentials: {}", job.all_output());
    assert!(!job.stdout.contains("attempt=2"), "and ends at once (podFailurePolicy): {}", job.stdout);
    // What Helm prints of the failed hook (hook-output-log-policy): the pod's log, one line per
    // event with its time first, in order, plain text rather than escaped JSON.
    let lines: Vec<&str> = job.stdout.lines().collect();
    assert!(lines.len() >= 3 && lines.iter().all(|l| !l.starts_with('{')), "plain lines: {}", job.stdout);
    let times: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap_or_default()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order: {}", job.stdout);
    assert!(job.stdout.contains("ERROR purge failed"), "the failure as a sentence: {}", job.stdout);
    // What `kubectl describe pod` and Helm's hook-failure output show.
    let message = cluster.termination_message("shop-cleanslate-purge-x7k2p", "purge").expect("a termination message");
    assert!(
        message.starts_with("cleanslate purge failed (exit 79)") && message.contains("rejected the login"),
        "the termination message names the failure: {message}"
    );
    assert!(!message.contains("Wrong-E2e-Pw"), "and no secret: {message}");
    // The failed event's identity: gone at once with Helm 4, left by Helm 3 until the uninstall,
    // whose post-delete hooks re-create and delete it.
    assert_eq!(cluster.has_rights("shop-cleanslate-purge"), helm_major() < 4, "the identity after a failed event");
    let uninstall = run_hooks(&mut cluster, &docs, "post-delete").await;
    assert!(uninstall.is_empty(), "no Job on uninstall");
    assert!(!cluster.has_rights("shop-cleanslate-purge"), "nothing with rights outlives helm uninstall");
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
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: put back after the failure");
    }
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
    let post_install: Vec<&str> =
        hooks_for(&docs, "post-install").into_iter().filter(|d| kind(d) == "Job").map(name).collect();
    assert_eq!(post_install, ["shop-cleanslate-resume"], "only the resume Job is left for post-install");
    let runs = run_hooks(&mut cluster, &docs, "pre-install").await;
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert_eq!(job.code, 0, "Job succeeds before the release resources exist: {}", job.all_output());
    assert!(job.stdout.contains("workload not found"), "first install: nothing to stop, and said so: {}", job.stdout);
    world.assert_clean("after pre-install").await;
    for resource in release_resources(&docs) {
        cluster.apply(resource);
    }
    for gate in start_gates(&cluster, &docs, "rs1-c") {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: passes: {}", gate.deployment, run.all_output());
    }
    let runs = run_hooks(&mut cluster, &docs, "post-install").await;
    all_succeeded(&runs, "post-install");
    assert!(
        job_run(&runs, "shop-cleanslate-resume").stdout.contains("resume finished resumed= "),
        "the resume Job starts nothing"
    );
    assert_eq!(replicas(&cluster, "shop-producer"), (1, None), "the apps run as the chart says");
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
    let mut args = service_values(&vhost);
    args.extend(["-f".into(), preview.to_str().unwrap().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    for (done, namespace) in namespaces.iter().enumerate() {
        let mut cluster = FakeCluster::start(namespace).await;
        let docs = render(RELEASE, namespace, &args);
        all_succeeded(&run_hooks(&mut cluster, &docs, "pre-install").await, "pre-install");
        let runs = run_hooks(&mut cluster, &docs, "post-install").await;
        let job = job_run(&runs, "shop-cleanslate-purge");
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
    install_resources(&mut cluster, &docs).await;
    let gates = start_gates(&cluster, &docs, "rs1-d");
    let runs = run_hooks(&mut cluster, &docs, "post-install").await;
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert_eq!(job.code, 0, "Job succeeds: {}", job.all_output());
    for gate in gates {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: gate passes with its pod's ServiceAccount: {}", gate.deployment, run.all_output());
    }
}

/// An upgrade with quiesce (values-dev): the previous revision's writer, publishing and writing
/// keys in a loop, is stopped before the pre-upgrade purge; nothing it wrote is left after the
/// upgrade; the replica counts end where the chart says, and an HPA-style Deployment of a parent
/// chart (no `replicas` in its manifest, listed in cleanup.quiesce.workloads) is brought back to
/// its count by the resume Job.
#[tokio::test]
async fn upgrade_stops_the_old_writer_and_leaves_nothing_it_wrote() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let api_workload = ["--set-json".to_string(), r#"cleanup.quiesce.workloads=["deployment/api"]"#.to_string()];
    // The parent chart's HPA-managed Deployment, scaled out to 3 by its HPA.
    cluster.api.apply_workload(NAMESPACE, &deployment_manifest("api", None));
    cluster.api.apply_workload(NAMESPACE, &deployment_manifest("api", Some(3)));
    install(&world, &mut cluster, &api_workload).await;
    assert_eq!(replicas(&cluster, "api"), (3, None), "install stopped and resumed the api at 3");
    world.seed().await;

    // helm upgrade (revision 2): pre-upgrade hooks, with the old producer writing meanwhile.
    let mut extra = api_workload.to_vec();
    extra.extend(["--is-upgrade".into(), "--set".into(), "cleanup.revision=2".into()]);
    let upgrade = world.render(&extra);
    // The Job starts while the old writer is running; Helm deletes the hook-succeeded hooks after.
    let (written, job) =
        pre_upgrade_with_old_writer(&mut cluster, &world, &upgrade, "shop-producer", "shop-cleanslate-purge-u2k9")
            .await;
    assert_eq!(job.code, 0, "upgrade Job succeeds: {}", job.all_output());
    assert!(written > 1, "the old writer was running ({written} writes)");
    world.assert_clean("after the pre-upgrade purge").await;
    assert_eq!(replicas(&cluster, "shop-producer"), (0, Some("1".into())), "producer stopped, count recorded");
    assert_eq!(replicas(&cluster, "api"), (0, Some("3".into())), "api stopped, count recorded");

    // Helm updates the release resources (manifests with replicas: 1), and the parent chart's
    // api manifest without replicas, then runs post-upgrade hooks.
    for resource in release_resources(&upgrade) {
        cluster.apply(resource);
    }
    cluster.api.apply_workload(NAMESPACE, &deployment_manifest("api", None));
    assert_eq!(replicas(&cluster, "shop-producer").0, 1, "Helm restores a manifest's replicas by itself");
    assert_eq!(replicas(&cluster, "api").0, 0, "but not a count the manifest leaves out");
    let runs = run_hooks(&mut cluster, &upgrade, "post-upgrade").await;
    all_succeeded(&runs, "post-upgrade");
    let resume = job_run(&runs, "shop-cleanslate-resume");
    assert!(resume.stdout.contains("already running again"), "the apps needed no resume: {}", resume.stdout);
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: at the chart's count, no record");
    }
    assert_eq!(replicas(&cluster, "api"), (3, None), "the HPA-style api is back at 3 thanks to the resume Job");
    assert_eq!(cluster.api.pods_of(NAMESPACE, "shop-producer").len(), 1, "one new producer pod");
    world.assert_clean("after the upgrade").await;
    assert_eq!(marker(&cluster)["revision"], json!("2"), "marker at revision 2");
    // The rendered Roles grant exactly what the Jobs used: nothing missing (they succeeded) and
    // nothing unused (a verb the code does not call is a grant nobody needs).
    // Reading a scale happens only when an earlier run left a workload stopped (quiesce.rs), a
    // path this flow does not take.
    // Creating the marker happens only when it is missing; the resume identity may act on any
    // Deployment or StatefulSet (a rollback's), and this flow has no StatefulSet.
    let rare = |pair: &(String, String)| {
        matches!((pair.0.as_str(), pair.1.as_str()), ("deployments/scale", "get") | ("configmaps", "create"))
            || pair.0.starts_with("statefulsets")
    };
    for account in ["shop-cleanslate-purge", "shop-cleanslate-resume"] {
        let token = FakeCluster::token_of(account);
        let mut used = cluster.api.used(&token);
        used.extend(cluster.api.ever_granted(&token).into_iter().filter(rare));
        assert_eq!(cluster.api.ever_granted(&token), used, "{account}: granted = used");
        assert!(cluster.api.granted(&token).is_empty(), "{account}: no rights left once its hooks succeeded");
    }
    world.cleanup().await;
}

/// An upgrade whose purge succeeds but whose apply then fails (an immutable field, a webhook): no
/// post-upgrade hook runs and the stopped workloads stay at 0 with their records, and the Job's log
/// says how to recover. The next good upgrade finds them stopped by the earlier run, keeps their
/// records through its purge, and ends with every workload at its count (the HPA-style one too).
#[tokio::test]
async fn a_failed_apply_after_the_purge_is_mended_by_the_next_upgrade() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let api_workload = ["--set-json".to_string(), r#"cleanup.quiesce.workloads=["deployment/api"]"#.to_string()];
    cluster.api.apply_workload(NAMESPACE, &deployment_manifest("api", Some(3)));
    install(&world, &mut cluster, &api_workload).await;
    world.seed().await;

    // Revision 2: the pre-upgrade purge succeeds, then Helm's apply fails: nothing else runs.
    let mut second = api_workload.to_vec();
    second.extend(["--is-upgrade".into(), "--set".into(), "cleanup.revision=2".into()]);
    let failed_upgrade = world.render(&second);
    let runs = run_hooks(&mut cluster, &failed_upgrade, "pre-upgrade").await;
    all_succeeded(&runs, "the purge before the failed apply");
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert!(
        job.stdout.contains("if the apply fails") && job.stdout.contains("cleanslate resume"),
        "the Job's log says how to recover: {}",
        job.stdout
    );
    for (deployment, count) in [("shop-producer", "1"), ("shop-consumer", "1"), ("api", "3")] {
        assert_eq!(replicas(&cluster, deployment), (0, Some(count.into())), "{deployment}: stopped, recorded");
    }

    // Revision 3 applies fine.
    let mut third = api_workload.to_vec();
    third.extend(["--is-upgrade".into(), "--set".into(), "cleanup.revision=3".into()]);
    let good_upgrade = world.render(&third);
    let runs = run_hooks(&mut cluster, &good_upgrade, "pre-upgrade").await;
    all_succeeded(&runs, "the next upgrade's purge");
    for (deployment, count) in [("shop-producer", "1"), ("api", "3")] {
        assert_eq!(replicas(&cluster, deployment), (0, Some(count.into())), "{deployment}: the record survives");
    }
    for resource in release_resources(&good_upgrade) {
        cluster.apply(resource);
    }
    cluster.api.apply_workload(NAMESPACE, &deployment_manifest("api", None));
    let runs = run_hooks(&mut cluster, &good_upgrade, "post-upgrade").await;
    all_succeeded(&runs, "post-upgrade");
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: at the chart's count, no record");
    }
    assert_eq!(replicas(&cluster, "api"), (3, None), "the api is back at its recorded 3");
    world.assert_clean("after the mended upgrade").await;
    world.cleanup().await;
}

/// An upgrade whose purge fails after the quiesce (the broker answers it 503): Helm stops at the pre-upgrade Job, and the
/// old workloads are already back at their counts, without the record; the marker says failed and
/// names them.
#[tokio::test]
async fn failed_upgrade_restores_the_old_workloads() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    install(&world, &mut cluster, &[]).await;
    world.seed().await;
    // The preflight's reads go through; the purge itself is answered 503 after the quiesce.
    let proxy = support::proxy::Proxy::for_url(&rabbit_url());
    proxy.forward_failing(&["DELETE "]);
    let upgrade = world.render(&[
        "--is-upgrade".into(),
        "--set".into(),
        "cleanup.revision=2".into(),
        "--set".into(),
        format!("cleanup.rabbitmq.url={}", proxy.url()),
        "--set".into(),
        "cleanup.retry.attempts=1".into(),
    ]);
    let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert_eq!(job.code, 1, "the purge fails: {}", job.all_output());
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: restored, record removed");
        assert_eq!(cluster.api.pods_of(NAMESPACE, deployment).len(), 1, "{deployment}: running again");
        // values-dev's Job makes two attempts: the first leaves the workload stopped for the second,
        // which takes it over and, failing too as the last, puts it back. One stop, one start.
        let scale_writes = cluster
            .api
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.ends_with(&format!("/{deployment}/scale")))
            .count();
        assert_eq!(scale_writes, 2, "{deployment}: stopped once for the whole deploy, not once per attempt");
    }
    let data = marker(&cluster);
    assert_eq!(data["status"], json!("failed"), "marker failed: {data:?}");
    let message = data["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("restored deployment/shop-consumer (1 replica), deployment/shop-producer (1 replica)"),
        "names the restored workloads: {message}"
    );
    // The restored pods belong to revision 1, which was cleaned: their gates pass (the marker kept
    // the last success through this upgrade), while a pod of the failed revision 2 fails at once.
    let install = world.render(&[]);
    for gate in start_gates(&cluster, &install, "rs1-restored") {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: a restored pod of revision 1 starts: {}", gate.deployment, run.all_output());
    }
    for gate in start_gates(&cluster, &upgrade, "rs2-failed") {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 1, "{}: a pod of the failed revision 2 fails: {}", gate.deployment, run.all_output());
    }
    world.cleanup().await;
}

/// Uninstall, reinstall with cleanup off, then an upgrade that turns it on: the marker left over from
/// the first installation (revision 7) is found on upgrade, but it is ahead of revision 2, so it is
/// reset and the gates wait for this upgrade's Job instead of passing on the leftover.
#[tokio::test]
async fn a_leftover_marker_ahead_of_the_release_is_reset_on_upgrade() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    put_leftover_marker(&cluster);
    let upgrade = world.render(&["--is-upgrade".into(), "--set".into(), "cleanup.revision=2".into()]);
    let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
    all_succeeded(&runs, "upgrade");
    let data = marker(&cluster);
    assert_eq!(data["revision"], json!("2"), "the leftover was replaced and this run recorded: {data:?}");
    assert_eq!(data["lastSucceededRevision"], json!("2"), "no success carried over from the leftover");
    world.assert_clean("after the upgrade's purge").await;
    world.cleanup().await;
}

/// The hooks' own time on install and on upgrade, through the rendered chart with the real binary
/// against the API stand-in and the real RabbitMQ and etcd (pods go away 200 ms after a scale to
/// 0, the stand-in's stand-in for a graceful shutdown). Measured, not asserted: `hack/bench.sh`
/// runs it with the release binary and BENCHMARKS.md has the numbers.
#[tokio::test]
#[ignore = "a measurement, run by hack/bench.sh"]
async fn hook_time_on_install_and_upgrade() {
    let mut install_ms = Vec::new();
    let mut upgrade_ms = Vec::new();
    for _ in 0..5 {
        let mut world = World::new().await;
        let mut cluster = FakeCluster::start(NAMESPACE).await;
        world.seed().await;
        let docs = world.render(&[]);
        install_resources(&mut cluster, &docs).await;
        let started = Instant::now();
        let runs = run_hooks(&mut cluster, &docs, "post-install").await;
        install_ms.push(started.elapsed().as_millis());
        all_succeeded(&runs, "install");
        for deployment in ["shop-producer", "shop-consumer"] {
            cluster.api.pass_gates(NAMESPACE, deployment);
        }
        world.seed().await;
        let upgrade = world.render(&["--is-upgrade".into(), "--set".into(), "cleanup.revision=2".into()]);
        let started = Instant::now();
        let runs = run_hooks(&mut cluster, &upgrade, "pre-upgrade").await;
        all_succeeded(&runs, "pre-upgrade");
        for resource in release_resources(&upgrade) {
            cluster.apply(resource);
        }
        let runs = run_hooks(&mut cluster, &upgrade, "post-upgrade").await;
        upgrade_ms.push(started.elapsed().as_millis());
        all_succeeded(&runs, "post-upgrade");
        world.cleanup().await;
    }
    install_ms.sort();
    upgrade_ms.sort();
    println!(
        "hook time: install median {} ms (min {}, max {}); upgrade median {} ms (min {}, max {})",
        install_ms[2], install_ms[0], install_ms[4], upgrade_ms[2], upgrade_ms[0], upgrade_ms[4]
    );
}

/// TLS through the chart: an etcd that takes only mutual TLS and RabbitMQ's management API over
/// https with a private CA, each reached through the Secret the values name (`tls.existingSecret`,
/// mounted as the kubelet would), by the install's Job and by `helm test`'s Pod. The etcd CA and
/// certificates are made here; the broker's https listener uses the CA `hack/services.sh` made.
#[tokio::test]
async fn the_chart_purges_over_mutual_tls_and_https() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ca.issue("etcd");
    let client = ca.issue("cleanslate");
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem);
    let etcd = EtcdServer::start(
        true,
        &[
            "--cert-file".into(),
            write_file(dir.path(), "server.pem", &server.cert_pem),
            "--key-file".into(),
            write_file(dir.path(), "server.key", &server.key_pem),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            ca_file.clone(),
        ],
    )
    .await;
    let client_crt = write_file(dir.path(), "client.pem", &client.cert_pem);
    let client_key = write_file(dir.path(), "client.key", &client.key_pem);
    let etcdctl = |args: &[&str]| {
        let mut all = vec!["--cacert", &ca_file as &str, "--cert", &client_crt, "--key", &client_key];
        all.extend(args);
        let out = etcd.etcdctl(&all);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let keys =
        |prefix: &str| etcdctl(&["get", "--prefix", "--keys-only", prefix]).lines().filter(|l| !l.is_empty()).count();
    let seed = || {
        for key in ["tls/monorepo/a", "tls/monorepo/b", "tls/monorepo-keep/c"] {
            etcdctl(&["put", key, "v"]);
        }
    };

    let rabbit = Rabbit::connect().await;
    let vhost = unique("e2e-tls");
    rabbit.create_vhost(&vhost).await;
    for queue in ["monorepo", "monorepo-dlq"] {
        rabbit.declare(&vhost, queue, json!({})).await;
        rabbit.publish(&vhost, queue, 2).await;
    }
    seed();

    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let rabbit_ca = std::fs::read_to_string(rabbit_ca_file()).expect("the broker's CA (hack/services.sh)");
    cluster.add_secret("rabbitmq-ca", &[("ca.crt", &rabbit_ca)]);
    cluster
        .add_secret("etcd-client", &[("ca.crt", &ca.pem), ("tls.crt", &client.cert_pem), ("tls.key", &client.key_pem)]);
    let mut args = service_values(&vhost);
    args.extend([
        "--set".to_string(),
        format!("cleanup.rabbitmq.url={}", rabbit_tls_url()),
        "--set".into(),
        "cleanup.rabbitmq.tls.existingSecret=rabbitmq-ca".into(),
        "--set-json".into(),
        format!("cleanup.etcd.endpoints=[\"{}\"]", etcd.endpoint),
        "--set-json".into(),
        r#"cleanup.etcd.prefixes=["tls/monorepo/"]"#.into(),
        "--set".into(),
        "cleanup.etcd.tls.existingSecret=etcd-client".into(),
    ]);
    let docs = render(RELEASE, NAMESPACE, &args.iter().map(String::as_str).collect::<Vec<_>>());

    install_resources(&mut cluster, &docs).await;
    let runs = run_hooks(&mut cluster, &docs, "post-install").await;
    all_succeeded(&runs, "install over TLS");
    assert_eq!(rabbit.count(&vhost, "monorepo").await, 0, "purged over https");
    assert_eq!(keys("tls/monorepo/"), 0, "deleted over mutual TLS");
    assert_eq!(keys("tls/monorepo-keep/"), 1, "the sibling prefix survives");

    rabbit.publish(&vhost, "monorepo", 2).await;
    seed();
    let runs = run_hooks(&mut cluster, &docs, "test").await;
    all_succeeded(&runs, "helm test over TLS");
    assert_eq!(rabbit.count(&vhost, "monorepo").await, 0, "helm test purged over https");
    assert_eq!(keys("tls/monorepo/"), 0, "helm test deleted over mutual TLS");
    for (_, run) in &runs {
        run.assert_no_secret(&[&client.key_pem[40..80], &rabbit_password()]);
    }
    rabbit.delete_vhost(&vhost).await;
}
