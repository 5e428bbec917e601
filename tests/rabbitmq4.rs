//! RabbitMQ 4 as users run it, against the servers `hack/services.sh up next` starts: a node with
//! statistics off (`management.disable_stats`, what RabbitMQ recommends with Prometheus) and a
//! three-node cluster with a node down. Only the second-generation run of `hack/test.sh` has them,
//! so the tests are `#[ignore]`d (shown as ignored, never as passed) in the first and run there with
//! `--include-ignored`; without the servers every test here fails with how to start them.

mod support;

use serde_json::json;
use support::marker_api::MarkerApi;
use support::*;

const START_NEXT: &str = "start them with `hack/services.sh up next` and `eval \"$(hack/services.sh env next)\"`";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; {START_NEXT}"))
}

/// Statistics off: the listing has no policy or consumer columns. Dead-letter queues set by policy
/// are still found (from the policies) and reported; with `exact` they are taken, an unselected queue that dead-letters there by policy still
/// keeps that queue out, and consumer counts are unknown, never 0.
#[tokio::test]
#[ignore = "needs hack/services.sh up next (hack/test.sh runs it)"]
async fn policy_dead_lettering_with_statistics_off() {
    let url = required_env("CSTEST_RABBITMQ_NOSTATS_URL");
    let rabbit = Rabbit::at(&url);
    let vhost = unique("nostats");
    rabbit.create_vhost(&vhost).await;
    rabbit.declare_exchange(&vhost, "dlx", "direct").await;
    for queue in ["orders", "orders-dlq", "billing"] {
        rabbit.declare(&vhost, queue, json!({})).await;
    }
    rabbit.bind(&vhost, "dlx", "orders-dlq", "orders").await;
    rabbit
        .set_policy(
            &vhost,
            "orders-dl",
            "^orders$",
            json!({"dead-letter-exchange": "dlx", "dead-letter-routing-key": "orders"}),
        )
        .await;
    rabbit.wait_for_policy(&vhost, "orders", "orders-dl").await;
    for queue in ["orders", "orders-dlq", "billing"] {
        rabbit.publish(&vhost, queue, 2).await;
    }
    let reported = rabbit_purge_vars(&url, &vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "orders")]);
    // By default the named queue is read on its own and its policy resolved from the policies:
    // the dead-letter queue is reported, not purged.
    let plan = cleanslate(&["plan"], &reported).await;
    assert_eq!(plan.code, 0, "plan succeeds: {}", plan.all_output());
    assert!(
        plan.stdout.contains("`orders-dlq` receives dead letters of `orders`; not purged"),
        "the policy's dead-letter queue is reported: {}",
        plan.stdout
    );
    assert!(!plan.stdout.contains(r#""queue":"orders-dlq","reason""#), "and not planned for purging: {}", plan.stdout);
    let vars = with(reported, &[("CLEANSLATE_RABBITMQ_DEAD_LETTERS", "exact")]);

    let plan = cleanslate(&["plan"], &vars).await;
    assert_eq!(plan.code, 0, "plan succeeds: {}", plan.all_output());
    let dlq_line =
        plan.stdout.lines().find(|l| l.contains("would purge queue") && l.contains(r#""queue":"orders-dlq""#));
    let dlq_line = dlq_line.unwrap_or_else(|| panic!("the policy's dead-letter queue is found: {}", plan.stdout));
    assert!(dlq_line.contains(r#""reason":"dead letters of orders""#), "and why: {dlq_line}");
    assert!(dlq_line.contains(r#""consumers":"unknown""#), "consumers unknown, not 0: {dlq_line}");

    let run = cleanslate(&["purge"], &vars).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for queue in ["orders", "orders-dlq"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} purged");
    }
    assert_eq!(rabbit.count(&vhost, "billing").await, 2, "an unselected queue survives");

    // billing now dead-letters into the same queue by policy: orders-dlq is shared, not ours.
    rabbit
        .set_policy(
            &vhost,
            "billing-dl",
            "^billing$",
            json!({"dead-letter-exchange": "dlx", "dead-letter-routing-key": "orders"}),
        )
        .await;
    rabbit.wait_for_policy(&vhost, "billing", "billing-dl").await;
    for queue in ["orders", "orders-dlq"] {
        rabbit.publish(&vhost, queue, 2).await;
    }
    let run = cleanslate(&["purge"], &vars).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(rabbit.count(&vhost, "orders").await, 0, "orders purged");
    assert_eq!(rabbit.count(&vhost, "orders-dlq").await, 2, "a queue billing feeds by policy is left alone");
    assert!(
        run.stdout.contains(r#""dead_letter_queues_not_purged":"orders-dlq (dead letters of orders)""#),
        "and named: {}",
        run.stdout
    );
    rabbit.delete_vhost(&vhost).await;
}

/// A classic queue whose node is down answers 404 to a purge, like a deleted one. It is not
/// "vanished": the run fails (exit 1), the marker says failed and names it, and its messages are
/// there again when the node is back. The queue on a live node is purged and counted.
#[tokio::test]
#[ignore = "needs hack/services.sh up next (hack/test.sh runs it)"]
async fn a_queue_on_a_stopped_node_is_not_reported_as_purged() {
    let _cluster = CLUSTER.lock().await;
    let urls: Vec<String> = required_env("CSTEST_RABBITMQ_CLUSTER_URLS").split(',').map(String::from).collect();
    let nodes: Vec<String> = required_env("CSTEST_RABBITMQ_CLUSTER_NODES").split(',').map(String::from).collect();
    let (first, second) = (Rabbit::at(&urls[0]), Rabbit::at(&urls[1]));
    let vhost = unique("node-down");
    first.create_vhost(&vhost).await;
    first.declare(&vhost, "on-a", json!({"x-queue-type": "classic"})).await;
    // Declared through the second node's API, the classic queue lives on the second node.
    second.declare(&vhost, "on-b", json!({"x-queue-type": "classic"})).await;
    first.publish_persistent(&vhost, "on-a", 2).await;
    second.publish_persistent(&vhost, "on-b", 3).await;
    let home = reqwest::Client::new()
        .get(format!("{}/api/queues/{}/on-b", urls[0], seg(&vhost)))
        .basic_auth(rabbit_user(), Some(rabbit_password()))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(home["node"], json!(nodes[1]), "on-b lives on the second node: {home}");

    cluster(&["stop", "2"]).await;
    let api = MarkerApi::start().await;
    let mut vars = rabbit_purge_vars(
        &urls[0],
        &vhost,
        &[
            ("CLEANSLATE_RABBITMQ_QUEUES", "on-a,on-b"),
            ("CLEANSLATE_RETRY_ATTEMPTS", "2"),
            ("CLEANSLATE_RETRY_BACKOFF", "200ms"),
        ],
    );
    vars.extend(api.vars(4));
    let run = cleanslate(&["purge"], &vars).await;
    cluster(&["start", "2"]).await;

    assert_eq!(run.code, 1, "an unavailable queue fails the run: {}", run.all_output());
    assert!(run.stderr.contains("not purged: on-b"), "names it: {}", run.stderr);
    assert!(
        run.stderr.contains("unavailable") || run.stderr.contains("is stopped") || run.stderr.contains("is down"),
        "says why: {}",
        run.stderr
    );
    assert!(run.stderr.contains("its messages are still there"), "and that nothing was lost: {}", run.stderr);
    let marker = api.marker();
    assert_eq!(marker["status"], json!("failed"), "the marker says failed: {marker:?}");
    assert_eq!(marker["queuesPurged"], json!("1"), "only on-a counts as purged: {marker:?}");
    assert!(marker["message"].as_str().unwrap_or("").contains("on-b"), "and names on-b: {marker:?}");
    assert_eq!(first.count(&vhost, "on-a").await, 0, "the live node's queue is purged");
    assert_eq!(first.count(&vhost, "on-b").await, 3, "on-b's messages are still there");
    first.delete_vhost(&vhost).await;
}

/// A node killed with SIGKILL (a crash) under one named queue: that queue fails at once, without
/// holding its purge slot until the deadline, and the other named queues, a dead-letter queue of a
/// queue on a healthy node among them, are purged within seconds, not at the 30 s deadline.
#[tokio::test]
#[ignore = "needs hack/services.sh up next (hack/test.sh runs it)"]
async fn a_crashed_node_does_not_hold_up_the_other_queues() {
    let _cluster = CLUSTER.lock().await;
    let urls: Vec<String> = required_env("CSTEST_RABBITMQ_CLUSTER_URLS").split(',').map(String::from).collect();
    let (first, second) = (Rabbit::at(&urls[0]), Rabbit::at(&urls[1]));
    let vhost = unique("node-crash");
    first.create_vhost(&vhost).await;
    first.declare_exchange(&vhost, "orders.dlx", "fanout").await;
    first.declare(&vhost, "orders-dlq", json!({"x-queue-type": "classic"})).await;
    first.bind(&vhost, "orders.dlx", "orders-dlq", "").await;
    first.declare(&vhost, "orders", json!({"x-queue-type": "classic", "x-dead-letter-exchange": "orders.dlx"})).await;
    second.declare(&vhost, "on-b", json!({"x-queue-type": "classic"})).await;
    for (queue, count) in [("orders", 2), ("orders-dlq", 2)] {
        first.publish_persistent(&vhost, queue, count).await;
    }
    second.publish_persistent(&vhost, "on-b", 3).await;

    cluster(&["kill", "2"]).await;
    // The crashed node's queue first, with one purge at a time: it must not hold the only slot.
    let vars = rabbit_purge_vars(
        &urls[0],
        &vhost,
        &[("CLEANSLATE_RABBITMQ_QUEUES", "on-b,orders,orders-dlq"), ("CLEANSLATE_CONCURRENCY", "1")],
    );
    let started = std::time::Instant::now();
    let run = cleanslate(&["purge"], &vars).await;
    let took = started.elapsed();
    cluster(&["start", "2"]).await;

    assert_eq!(run.code, 1, "the crashed node's queue fails the run: {}", run.all_output());
    assert!(
        took < std::time::Duration::from_secs(10),
        "within seconds, not the 30 s deadline: {took:?}: {}",
        run.all_output()
    );
    assert!(run.stderr.contains("not purged: on-b"), "names it: {}", run.stderr);
    for queue in ["orders", "orders-dlq"] {
        assert_eq!(first.count(&vhost, queue).await, 0, "{queue}, on a healthy node, is purged");
    }
    assert_eq!(first.count(&vhost, "on-b").await, 3, "on-b's messages are still there");
    first.delete_vhost(&vhost).await;
}

/// The cluster tests stop, kill and start the same node: one at a time, whatever the test threads.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `hack/services.sh cluster ARGS`, which returns once the node is down or back.
async fn cluster(args: &[&str]) {
    let output = tokio::process::Command::new(repo_root().join("hack/services.sh"))
        .arg("cluster")
        .args(args)
        .output()
        .await
        .expect("hack/services.sh runs");
    assert!(output.status.success(), "cluster {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}
