//! Fresh state the way teams reset environments (issue 22), through the real chart and binary
//! against the API stand-in and the real RabbitMQ and etcd: an etcd baseline written after the
//! delete and before the marker.

mod support;

use serde_json::{Value, json};
use support::chart::*;
use support::helm::*;
use support::*;

/// `--set-json cleanup.etcd.seed=…` for `keys` under the world's prefix.
fn seed_values(world: &World, keys: &[(&str, &str)]) -> Vec<String> {
    let map: serde_json::Map<String, Value> =
        keys.iter().map(|(k, v)| (format!("{}{k}", world.prefix), Value::from(*v))).collect();
    vec!["--set-json".into(), format!("cleanup.etcd.seed={}", Value::Object(map))]
}

async fn value_of(world: &mut World, key: &str) -> Option<String> {
    let full = format!("{}{key}", world.prefix);
    let answer = world.etcd.get(full, None).await.expect("etcd get");
    answer.kvs().first().map(|kv| kv.value_str().unwrap().to_string())
}

/// The seed is present before a gated pod's main container starts: on install (the gates pass only
/// after the marker, which comes after the seed), on upgrade (a changed value), and after
/// `helm test`; everything else under the prefix is gone, and the marker and the Job say how many
/// keys were seeded. After a rollback, `helm test` reseeds the rolled-back revision's baseline.
#[tokio::test]
async fn the_baseline_is_there_before_the_apps_start() {
    let mut world = World::new().await;
    world.seed().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let install = world.render(&seed_values(&world, &[("lobby", "open"), ("flags/beta", "true")]));
    install_resources(&mut cluster, &install).await;
    let gates = start_gates(&cluster, &install, "rs1");
    let runs = run_hooks(&mut cluster, &install, "post-install").await;
    all_succeeded(&runs, "install");
    for gate in gates {
        let run = finish(gate.child).await;
        assert_eq!(run.code, 0, "{}: passes: {}", gate.deployment, run.all_output());
    }
    // What a main container would read first.
    assert_eq!(value_of(&mut world, "lobby").await.as_deref(), Some("open"), "seeded before the apps start");
    assert_eq!(value_of(&mut world, "flags/beta").await.as_deref(), Some("true"));
    let prefix = world.prefix.clone();
    assert_eq!(count_keys(&mut world.etcd, &prefix).await, 2, "only the baseline under the prefix");
    assert_eq!(marker(&cluster)["keysSeeded"], json!("2"), "the marker counts them");
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert!(job.stdout.contains("seeded 2 keys") || job.stdout.contains("keys_seeded=2"), "{}", job.stdout);
    for deployment in ["shop-producer", "shop-consumer"] {
        cluster.api.pass_gates(NAMESPACE, deployment);
    }

    // An upgrade changes the baseline; stale keys written meanwhile go.
    world.seed().await;
    let mut extra = seed_values(&world, &[("lobby", "closed"), ("flags/beta", "true")]);
    extra.extend(["--is-upgrade".to_string(), "--set".into(), "cleanup.revision=2".into()]);
    let upgrade = world.render(&extra);
    all_succeeded(&run_hooks(&mut cluster, &upgrade, "pre-upgrade").await, "upgrade");
    assert_eq!(value_of(&mut world, "lobby").await.as_deref(), Some("closed"), "the new baseline");
    assert_eq!(count_keys(&mut world.etcd, &prefix).await, 2, "only the baseline after the upgrade");

    // helm test resets to the baseline again.
    world.seed().await;
    put_keys(&mut world.etcd, &format!("{prefix}lobby-extra/"), 3).await;
    all_succeeded(&run_hooks(&mut cluster, &upgrade, "test").await, "helm test");
    assert_eq!(count_keys(&mut world.etcd, &prefix).await, 2, "helm test seeds again");
    assert_eq!(value_of(&mut world, "lobby").await.as_deref(), Some("closed"));

    // helm rollback shop 1: Helm runs the target revision's stored hooks (pkg/action/rollback.go),
    // so its pre-rollback seed ConfigMap brings back revision 1's baseline, and its `helm test`
    // resets to that, not to the newer revision's.
    all_succeeded(&run_hooks(&mut cluster, &install, "pre-rollback").await, "pre-rollback");
    all_succeeded(&run_hooks(&mut cluster, &install, "test").await, "helm test after the rollback");
    assert_eq!(value_of(&mut world, "lobby").await.as_deref(), Some("open"), "the rolled-back revision's baseline");
    world.cleanup().await;
}

/// A seed key outside every target prefix, or under a protected one, is a configuration error
/// (78) naming it, and nothing is touched: no queue purged, no key deleted.
#[tokio::test]
async fn seed_keys_outside_the_targets_are_refused() {
    let mut world = World::new().await;
    world.seed().await;
    let prefix = world.prefix.clone();
    for (case, extra) in [
        ("outside", vec!["--set-json".to_string(), r#"cleanup.etcd.seed={"elsewhere/lobby":"open"}"#.to_string()]),
        (
            "protected",
            vec![
                "--set-json".to_string(),
                format!(r#"cleanup.etcd.seed={{"{prefix}locks/a":"1"}}"#),
                "--set-json".to_string(),
                format!(r#"cleanup.etcd.protectedPrefixes=["{prefix}locks/"]"#),
            ],
        ),
    ] {
        let mut cluster = FakeCluster::start(NAMESPACE).await;
        let docs = world.render(&extra);
        install_resources(&mut cluster, &docs).await;
        let runs = run_hooks(&mut cluster, &docs, "post-install").await;
        let job = job_run(&runs, "shop-cleanslate-purge");
        assert_eq!(job.code, 78, "{case}: refused: {}", job.all_output());
        assert!(
            job.stderr.contains("CLEANSLATE_ETCD_SEED_FILE") && job.stderr.contains("nothing was touched"),
            "{case}: names the problem: {}",
            job.stderr
        );
        assert_eq!(count_keys(&mut world.etcd, &prefix).await, 10, "{case}: no key deleted");
        assert_eq!(world.rabbit.count(&world.vhost, "monorepo").await, 3, "{case}: no queue purged");
    }
    world.cleanup().await;
}

/// A trigger ties the cleaning to the build: two upgrades with the same trigger clean once (the
/// second stops and purges nothing and marks its revision unchanged, so its gates pass at once), a
/// changed trigger cleans again.
#[tokio::test]
async fn a_trigger_cleans_only_when_the_build_changes() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let build = |tag: &str, revision: u64| -> Vec<String> {
        let mut args = vec!["--set-string".to_string(), format!("cleanup.trigger=build-{tag}")];
        if revision > 1 {
            args.extend(["--is-upgrade".to_string(), "--set".into(), format!("cleanup.revision={revision}")]);
        }
        args
    };
    install(&world, &mut cluster, &build("41", 1)).await;
    let recorded = |cluster: &FakeCluster| {
        let record = cluster.api.object(NAMESPACE, "shop-cleanslate-trigger").expect("the chart's trigger record");
        (record["data"]["trigger"].clone(), record["data"]["revision"].clone())
    };
    assert_eq!(recorded(&cluster), (json!("build-41"), json!("1")), "recorded with the cleaning");

    world.seed().await;
    let same = world.render(&build("41", 2));
    let runs = run_hooks(&mut cluster, &same, "pre-upgrade").await;
    all_succeeded(&runs, "the same build");
    let job = job_run(&runs, "shop-cleanslate-purge");
    assert!(job.stdout.contains("unchanged"), "says so: {}", job.stdout);
    assert_eq!(world.rabbit.count(&world.vhost, "monorepo").await, 3, "nothing purged");
    for deployment in ["shop-producer", "shop-consumer"] {
        assert_eq!(replicas(&cluster, deployment), (1, None), "{deployment}: never stopped");
    }
    let data = marker(&cluster);
    assert_eq!((data["revision"].clone(), data["unchanged"].clone()), (json!("2"), json!("true")), "{data:?}");
    for resource in release_resources(&same) {
        cluster.apply(resource);
    }
    for gate in start_gates(&cluster, &same, "rs2") {
        let run = finish(gate.child).await;
        assert_eq!(
            run.code,
            0,
            "{}: the unchanged revision's pods start at once: {}",
            gate.deployment,
            run.all_output()
        );
    }

    let status = cleanslate(&["status", RELEASE], &cluster.operator_vars()).await;
    assert!(status.stdout.contains("unchanged"), "status says so: {}", status.stdout);

    let changed = world.render(&build("42", 3));
    all_succeeded(&run_hooks(&mut cluster, &changed, "pre-upgrade").await, "a new build");
    world.assert_clean("after a new build").await;
    assert_eq!(marker(&cluster)["unchanged"], json!("false"));
    assert_eq!(recorded(&cluster), (json!("build-42"), json!("3")), "the new build recorded");

    // A failed run (here a helm test that cannot reach RabbitMQ) clears the record: the next deploy
    // of the same build cleans, whatever the partial reset left.
    world.seed().await;
    let broken = world.render(&[
        "--set-string".into(),
        "cleanup.trigger=build-42".into(),
        "--is-upgrade".into(),
        "--set".into(),
        "cleanup.revision=3".into(),
        "--set".into(),
        "cleanup.rabbitmq.url=http://127.0.0.1:9".into(),
        "--set".into(),
        "cleanup.retry.attempts=1".into(),
        "--set".into(),
        "cleanup.timeout=3s".into(),
    ]);
    let runs = run_hooks(&mut cluster, &broken, "test").await;
    assert_ne!(job_run(&runs, "shop-cleanslate-test-purge").code, 0, "the test run fails");
    assert_eq!(recorded(&cluster).0, Value::Null, "the record is cleared");
    let again = world.render(&build("42", 4));
    all_succeeded(&run_hooks(&mut cluster, &again, "pre-upgrade").await, "the same build after a failure");
    world.assert_clean("the same build cleans after a failed reset").await;
    world.cleanup().await;
}

/// A scheduled reset (`cleanup.schedule`): the CronJob's rendered Job, run through the stand-in as
/// its controller would start it, stops the gated workloads, purges, seeds, writes the marker for
/// the current revision and starts them again; in a production environment it is refused, by the
/// chart and by the binary.
#[tokio::test]
async fn a_scheduled_reset_does_what_helm_test_does() {
    let mut world = World::new().await;
    let mut cluster = FakeCluster::start(NAMESPACE).await;
    let mut extra = seed_values(&world, &[("lobby", "open")]);
    extra.extend(["--set".to_string(), "cleanup.schedule=0 3 * * *".into()]);
    let docs = install(&world, &mut cluster, &extra).await;
    world.seed().await;
    let cron = find(&docs, "CronJob", "shop-cleanslate-reset");
    assert_eq!(cron["spec"]["concurrencyPolicy"], json!("Forbid"), "never two resets at once");
    assert!(cron["spec"]["startingDeadlineSeconds"].as_i64().is_some(), "a missed reset is skipped, not run late");
    let spec = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], json!("shop-cleanslate-test"), "the helm test identity, no other");
    let before = cluster.api.requests().len();
    let run = finish(cluster.spawn(spec, &spec["containers"][0], "shop-cleanslate-reset-29431800-x4k2p")).await;
    assert_eq!(run.code, 0, "the reset succeeds: {}", run.all_output());
    let stops = cluster.api.requests()[before..]
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("shop-producer/scale"))
        .count();
    assert_eq!(stops, 2, "stopped and started again");
    assert_eq!(replicas(&cluster, "shop-producer"), (1, None), "running again");
    assert_eq!(world.rabbit.count(&world.vhost, "monorepo").await, 0, "purged");
    let prefix = world.prefix.clone();
    assert_eq!(count_keys(&mut world.etcd, &prefix).await, 1, "only the seed");
    let data = marker(&cluster);
    assert_eq!(data["job"], json!("shop-cleanslate-reset-29431800-x4k2p"), "the reset wrote the marker: {data:?}");
    assert_eq!(data["revision"], json!("1"), "for the current revision");
    let status = cleanslate(&["status", RELEASE], &cluster.operator_vars()).await;
    assert!(status.stdout.contains("by the scheduled reset"), "status tells a scheduled run: {}", status.stdout);

    let in_production = with(
        cluster.container_env(spec, &spec["containers"][0], "shop-cleanslate-reset-2"),
        &[("CLEANSLATE_ENVIRONMENT", "production"), ("CLEANSLATE_ALLOW_PRODUCTION", "true")],
    );
    let refused = cleanslate(&["purge"], &in_production).await;
    assert_eq!(refused.code, 77, "refused by the binary, allowProduction or not: {}", refused.all_output());
    let render = try_render(
        "shop",
        "prod",
        &[
            "--set",
            "cleanup.enabled=true",
            "--set",
            "cleanup.environment=production",
            "--set",
            "cleanup.schedule=0 3 * * *",
        ],
    );
    assert!(render.is_err_and(|err| err.contains("allowProduction")), "and by the chart");
    world.cleanup().await;
}
