//! RabbitMQ behaviour of `cleanslate purge`, against the real broker started by `hack/services.sh`.
//! Each test works in its own vhost and deletes it afterwards; survivors are checked every time.

mod support;

use serde_json::json;
use support::proxy::Proxy;
use support::*;

/// Variables for a purge of `vhost` with `extra` settings, RabbitMQ only.
fn purge_vars(vhost: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let base = with(service_vars(), &[("CLEANSLATE_TARGETS", "rabbitmq"), ("CLEANSLATE_RABBITMQ_VHOST", vhost)]);
    with(base, extra)
}

/// [`purge_vars`] with the opt-in that takes dead-letter queues a route proves (`exact`).
fn exact_vars(vhost: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    with(purge_vars(vhost, extra), &[("CLEANSLATE_RABBITMQ_DEAD_LETTERS", "exact")])
}

async fn fresh_vhost(rabbit: &Rabbit, name: &str) -> String {
    let vhost = unique(name);
    rabbit.create_vhost(&vhost).await;
    vhost
}

/// Named queues are emptied; queues not named keep every message, including a name that merely
/// contains the target's name.
#[tokio::test]
async fn named_queues_are_purged_and_others_survive() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "named").await;
    for queue in ["monorepo", "monorepo-keep", "other"] {
        rabbit.declare(&vhost, queue, json!({})).await;
        rabbit.publish(&vhost, queue, 5).await;
    }
    rabbit.wait_for_stats(&vhost, "monorepo", 5).await;

    let run = cleanslate(&["purge"], &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "monorepo")])).await;

    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(rabbit.count(&vhost, "monorepo").await, 0, "named queue emptied");
    assert_eq!(rabbit.count(&vhost, "monorepo-keep").await, 5, "similar name survives");
    assert_eq!(rabbit.count(&vhost, "other").await, 5, "other queue survives");
    assert!(run.stdout.contains(r#""message":"purged queue""#), "one event per queue: {}", run.stdout);
    assert!(run.stdout.contains(r#""approx_messages":5"#), "approximate count reported: {}", run.stdout);
    assert!(run.stdout.contains(r#""queues_purged":1"#), "summary counts one queue: {}", run.stdout);
    run.assert_no_secret(&[&rabbit_password()]);
    rabbit.delete_vhost(&vhost).await;
}

/// The pattern selects whole names only, case-sensitively, unlike RabbitMQ's own name filter.
#[tokio::test]
async fn pattern_matches_whole_names_exactly() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "pattern").await;
    for queue in ["orders", "orders-dlq", "preorders", "Orders", "orders-dlq-old"] {
        rabbit.declare(&vhost, queue, json!({})).await;
        rabbit.publish(&vhost, queue, 2).await;
    }

    let run =
        cleanslate(&["purge"], &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUE_PATTERN", "orders(-dlq)?")])).await;

    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(rabbit.count(&vhost, "orders").await, 0, "orders matched");
    assert_eq!(rabbit.count(&vhost, "orders-dlq").await, 0, "orders-dlq matched");
    for survivor in ["preorders", "Orders", "orders-dlq-old"] {
        assert_eq!(rabbit.count(&vhost, survivor).await, 2, "{survivor} is not a whole-name match");
    }
    rabbit.delete_vhost(&vhost).await;
}

/// Listing is paginated: a queue beyond the first 500 is still found by the pattern.
#[tokio::test]
async fn pagination_reaches_queues_past_the_first_page() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "pages").await;
    for i in 0..520 {
        rabbit.declare(&vhost, &format!("filler-{i:04}"), json!({})).await;
    }
    rabbit.declare(&vhost, "zz-target", json!({})).await;
    rabbit.publish(&vhost, "zz-target", 3).await;
    rabbit.publish(&vhost, "filler-0519", 3).await;

    let run = cleanslate(&["purge"], &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUE_PATTERN", "zz-.*")])).await;

    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(rabbit.count(&vhost, "zz-target").await, 0, "queue on page two purged");
    assert_eq!(rabbit.count(&vhost, "filler-0519").await, 3, "non-matching queue survives");
    rabbit.delete_vhost(&vhost).await;
}

/// Dead-letter queues are found from queue arguments (a direct exchange with a routing key, and
/// the default exchange) and from policies. By default they are reported, each with the queue that
/// feeds it and the value to add, and keep every message; `exact` (the opt-in) purges them, and a
/// queue bound with another routing key survives either way.
#[tokio::test]
async fn dead_letter_queues_are_reported_by_default_and_taken_on_opt_in() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "dlx").await;
    rabbit.declare_exchange(&vhost, "dlx", "direct").await;
    for queue in ["work-dlq", "unrelated-dlq", "default-dlq", "policy-dlq", "bystander"] {
        rabbit.declare(&vhost, queue, json!({})).await;
    }
    rabbit.bind(&vhost, "dlx", "work-dlq", "work").await;
    rabbit.bind(&vhost, "dlx", "unrelated-dlq", "unrelated").await;
    rabbit.declare(&vhost, "work", json!({"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "work"})).await;
    rabbit
        .declare(&vhost, "plain", json!({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "default-dlq"}))
        .await;
    rabbit
        .set_policy(
            &vhost,
            "dl",
            "^ruled$",
            json!({"dead-letter-exchange": "", "dead-letter-routing-key": "policy-dlq"}),
        )
        .await;
    rabbit.declare(&vhost, "ruled", json!({})).await;
    for queue in ["work", "plain", "ruled", "work-dlq", "unrelated-dlq", "default-dlq", "policy-dlq", "bystander"] {
        rabbit.publish(&vhost, queue, 2).await;
    }
    rabbit.wait_for_policy(&vhost, "ruled", "dl").await;
    let named = [("CLEANSLATE_RABBITMQ_QUEUES", "work,plain,ruled")];

    let plan = cleanslate(&["plan"], &purge_vars(&vhost, &named)).await;
    assert_eq!(plan.code, 0, "plan succeeds: {}", plan.all_output());
    for (queue, source) in [("work-dlq", "work"), ("default-dlq", "plain"), ("policy-dlq", "ruled")] {
        let advice =
            format!("`{queue}` receives dead letters of `{source}`; not purged: add it to `cleanup.rabbitmq.queues`");
        assert!(plan.stdout.contains(&advice), "the plan names {queue} with the value to add: {}", plan.stdout);
    }
    assert!(!plan.stdout.contains("unrelated-dlq"), "another key's queue is not even reported: {}", plan.stdout);

    let run = cleanslate(&["purge"], &purge_vars(&vhost, &named)).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for queue in ["work", "plain", "ruled"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} purged");
    }
    for queue in ["work-dlq", "default-dlq", "policy-dlq", "unrelated-dlq", "bystander"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 2, "{queue} keeps its messages by default");
    }
    assert!(
        run.stdout.contains(
            r#""dead_letter_queues_not_purged":"default-dlq (dead letters of plain), policy-dlq (dead letters of ruled), work-dlq (dead letters of work)""#
        ),
        "the summary names each with its source: {}",
        run.stdout
    );

    let run = cleanslate(&["purge"], &exact_vars(&vhost, &named)).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for queue in ["work-dlq", "default-dlq", "policy-dlq"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} purged on the opt-in");
    }
    assert_eq!(rabbit.count(&vhost, "unrelated-dlq").await, 2, "other routing key on the DLX survives");
    assert_eq!(rabbit.count(&vhost, "bystander").await, 2, "unrelated queue survives");
    assert!(run.stdout.contains("dead letters of work"), "reason logged: {}", run.stdout);

    rabbit.publish(&vhost, "work-dlq", 2).await;
    let run = cleanslate(
        &["purge"],
        &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "work"), ("CLEANSLATE_RABBITMQ_DEAD_LETTERS", "false")]),
    )
    .await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(rabbit.count(&vhost, "work-dlq").await, 2, "dead letters kept when turned off");
    assert!(!run.stdout.contains("work-dlq"), "and not looked for: {}", run.stdout);
    rabbit.delete_policy(&vhost, "dl").await;
    rabbit.delete_vhost(&vhost).await;
}

/// The routes that purged another team's data: the dead-letter exchange is a shared direct
/// exchange where another team's queue is bound with the same literal key and gets ordinary
/// publishes, and the default exchange names a platform queue other services publish to. No route
/// proves a queue is ours: with the default configuration both keep every message and are named.
#[tokio::test]
async fn shared_direct_and_default_exchange_queues_keep_their_messages() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "shared-direct").await;
    rabbit.declare_exchange(&vhost, "events", "direct").await;
    for queue in ["alerts", "errors"] {
        rabbit.declare(&vhost, queue, json!({})).await;
    }
    rabbit.bind(&vhost, "events", "alerts", "orders.failed").await;
    rabbit
        .declare(
            &vhost,
            "orders",
            json!({"x-dead-letter-exchange": "events", "x-dead-letter-routing-key": "orders.failed"}),
        )
        .await;
    rabbit
        .declare(&vhost, "checkout", json!({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "errors"}))
        .await;
    for (queue, count) in [("orders", 3), ("checkout", 3), ("alerts", 5), ("errors", 4)] {
        rabbit.publish(&vhost, queue, count).await;
    }
    let vars = purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "orders,checkout")]);
    let plan = cleanslate(&["plan"], &vars).await;
    assert_eq!(plan.code, 0, "plan succeeds: {}", plan.all_output());
    for (queue, source) in [("alerts", "orders"), ("errors", "checkout")] {
        assert!(
            plan.stdout.contains(&format!("`{queue}` receives dead letters of `{source}`; not purged")),
            "the plan names {queue}: {}",
            plan.stdout
        );
    }
    let run = cleanslate(&["purge"], &vars).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(rabbit.count(&vhost, "orders").await, 0, "orders purged");
    assert_eq!(rabbit.count(&vhost, "checkout").await, 0, "checkout purged");
    assert_eq!(
        rabbit.count(&vhost, "alerts").await,
        5,
        "the other team's queue on the shared direct exchange keeps all"
    );
    assert_eq!(rabbit.count(&vhost, "errors").await, 4, "the platform queue behind the default exchange keeps all");
    rabbit.delete_vhost(&vhost).await;
}

/// When the exchanges or bindings cannot be read (a 503 from a proxy in front of the management
/// API), the named queues are still purged and the run says the dead letters are unknown.
#[tokio::test]
async fn unreadable_bindings_still_purge_the_named_queues() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "no-bindings").await;
    rabbit.declare_exchange(&vhost, "dlx", "direct").await;
    rabbit.declare(&vhost, "orders-dlq", json!({})).await;
    rabbit.bind(&vhost, "dlx", "orders-dlq", "orders").await;
    rabbit
        .declare(&vhost, "orders", json!({"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "orders"}))
        .await;
    rabbit.declare(&vhost, "parcels", json!({})).await;
    for queue in ["orders", "orders-dlq", "parcels"] {
        rabbit.publish(&vhost, queue, 2).await;
    }
    let proxy = Proxy::for_url(&rabbit_url());
    proxy.forward_failing(&["/bindings"]);
    for mode in ["report", "exact"] {
        let run = cleanslate(
            &["purge"],
            &with(
                purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "orders,parcels")]),
                &[
                    ("CLEANSLATE_RABBITMQ_URL", &proxy.url()),
                    ("CLEANSLATE_RABBITMQ_DEAD_LETTERS", mode),
                    ("CLEANSLATE_RETRY_BACKOFF", "100ms"),
                ],
            ),
        )
        .await;
        assert_eq!(run.code, 0, "{mode}: the named queues are purged all the same: {}", run.all_output());
        assert!(run.stdout.contains("dead letters go is unknown"), "{mode}: and says what is unknown: {}", run.stdout);
        for queue in ["orders", "parcels"] {
            assert_eq!(rabbit.count(&vhost, queue).await, 0, "{mode}: {queue} purged");
        }
        assert_eq!(rabbit.count(&vhost, "orders-dlq").await, 2, "{mode}: an unknown route purges nothing");
        for queue in ["orders", "parcels"] {
            rabbit.publish(&vhost, queue, 2).await;
        }
    }
    // A bindings read that never answers (a slow listing behind a proxy) costs its own small
    // budget, not the run's deadline: the named queues are purged well before the deadline.
    let hanging = Proxy::for_url(&rabbit_url());
    hanging.forward_hanging(&["/bindings"]);
    let vars = with(
        purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "orders,parcels")]),
        &[("CLEANSLATE_RABBITMQ_URL", &hanging.url()), ("CLEANSLATE_TIMEOUT", "30s")],
    );
    let started = std::time::Instant::now();
    let run = cleanslate(&["purge"], &vars).await;
    assert_eq!(run.code, 0, "a hanging discovery read still purges the named queues: {}", run.all_output());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "within the discovery budget: {:?}",
        started.elapsed()
    );
    assert!(run.stdout.contains("dead letters go is unknown"), "and says what is unknown: {}", run.stdout);
    for queue in ["orders", "parcels"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "hanging: {queue} purged");
    }
    rabbit.delete_vhost(&vhost).await;
}

/// A missing named queue warns with `ignore`; with `fail` the run fails and purges nothing.
#[tokio::test]
async fn missing_queues_warn_or_fail() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "missing").await;
    rabbit.declare(&vhost, "present", json!({})).await;
    rabbit.publish(&vhost, "present", 2).await;

    let fail = cleanslate(
        &["purge"],
        &purge_vars(
            &vhost,
            &[("CLEANSLATE_RABBITMQ_QUEUES", "present,absent"), ("CLEANSLATE_RABBITMQ_MISSING", "fail")],
        ),
    )
    .await;
    assert_eq!(fail.code, 1, "missing queue fails the run: {}", fail.all_output());
    assert!(fail.first_stderr_line().contains("absent"), "names the queue: {}", fail.stderr);
    assert_eq!(rabbit.count(&vhost, "present").await, 2, "nothing purged when the selection is wrong");

    let ignore = cleanslate(&["purge"], &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "present,absent")])).await;
    assert_eq!(ignore.code, 0, "missing queue ignored: {}", ignore.all_output());
    assert!(ignore.stdout.contains("named queue does not exist"), "warned: {}", ignore.stdout);
    assert_eq!(rabbit.count(&vhost, "present").await, 0, "present queue purged");
    rabbit.delete_vhost(&vhost).await;
}

/// A named stream can never be purged: the preflight refuses the run as a configuration error (78),
/// naming it, before anything is purged (or any workload stopped, or any key deleted): the same
/// input would fail every attempt of the Job the same way.
#[tokio::test]
async fn named_stream_is_refused_before_anything_is_purged() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "stream").await;
    rabbit.declare(&vhost, "events", json!({"x-queue-type": "stream"})).await;
    rabbit.declare(&vhost, "jobs", json!({})).await;
    rabbit.publish(&vhost, "jobs", 3).await;

    let run = cleanslate(&["purge"], &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "events,jobs")])).await;

    assert_eq!(run.code, 78, "a named queue that can never be purged is a configuration error: {}", run.all_output());
    assert!(
        run.stderr.contains("\"events\"") && run.stderr.contains("stream cannot be purged"),
        "names the stream and why: {}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was stopped or deleted"), "says nothing was touched: {}", run.stderr);
    assert_eq!(rabbit.count(&vhost, "jobs").await, 3, "nothing was purged");
    rabbit.delete_vhost(&vhost).await;
}

/// A wrong password fails at once (no retries) with a clear message, and purges nothing.
#[tokio::test]
async fn wrong_password_fails_at_once() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "badpw").await;
    rabbit.declare(&vhost, "q", json!({})).await;
    rabbit.publish(&vhost, "q", 2).await;
    let wrong = "Wrong-Password-91c2";

    let run = cleanslate(
        &["purge"],
        &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "q"), ("CLEANSLATE_RABBITMQ_PASSWORD", wrong)]),
    )
    .await;

    assert_eq!(run.code, 79, "bad credentials fail (79: final): {}", run.all_output());
    assert!(run.first_stderr_line().contains("rejected the login"), "says what is wrong: {}", run.stderr);
    assert!(!run.stdout.contains("retrying"), "no retry storm: {}", run.stdout);
    run.assert_no_secret(&[wrong, &rabbit_password()]);
    assert_eq!(rabbit.count(&vhost, "q").await, 2, "nothing purged");
    rabbit.delete_vhost(&vhost).await;
}

/// A user without read permission fails at once with a hint about permissions.
#[tokio::test]
async fn missing_permission_fails_with_a_hint() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "perm").await;
    rabbit.declare(&vhost, "q", json!({})).await;
    rabbit.publish(&vhost, "q", 2).await;
    let user = unique("reader");
    rabbit.create_user(&user, "Reader-Pw-55", "management", &vhost, "^$").await;

    let run = cleanslate(
        &["purge"],
        &purge_vars(
            &vhost,
            &[
                ("CLEANSLATE_RABBITMQ_QUEUES", "q"),
                ("CLEANSLATE_RABBITMQ_USERNAME", &user),
                ("CLEANSLATE_RABBITMQ_PASSWORD", "Reader-Pw-55"),
            ],
        ),
    )
    .await;

    assert_eq!(run.code, 79, "permission problem fails (79: final): {}", run.all_output());
    assert!(run.stderr.contains("lacks permission"), "permission hint: {}", run.stderr);
    assert!(!run.stdout.contains("retrying"), "not retried: {}", run.stdout);
    run.assert_no_secret(&["Reader-Pw-55"]);
    assert_eq!(rabbit.count(&vhost, "q").await, 2, "nothing purged");
    rabbit.delete_user(&user).await;
    rabbit.delete_vhost(&vhost).await;
}

/// A vhost containing `/` and queue names containing `/`, `.` and a space are encoded correctly,
/// and a queue whose name is a prefix of another is not confused with it.
#[tokio::test]
async fn slashes_dots_and_spaces_are_encoded() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "team/dev").await;
    let odd = ["a/b", "x.y.z", "with space", "100%"];
    for queue in odd.iter().chain(&["a"]) {
        rabbit.declare(&vhost, queue, json!({})).await;
        rabbit.publish(&vhost, queue, 2).await;
    }

    let run = cleanslate(&["purge"], &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", &odd.join(","))])).await;

    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for queue in odd {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue:?} purged");
    }
    assert_eq!(rabbit.count(&vhost, "a").await, 2, "queue 'a' is not 'a/b'");
    rabbit.delete_vhost(&vhost).await;
}

/// https with the CA given in CLEANSLATE_RABBITMQ_CA_FILE works; without it the server is not
/// trusted and nothing is purged.
#[tokio::test]
async fn https_with_an_extra_ca() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "tls").await;
    rabbit.declare(&vhost, "q", json!({})).await;
    rabbit.publish(&vhost, "q", 2).await;
    let tls = [
        ("CLEANSLATE_RABBITMQ_QUEUES", "q"),
        ("CLEANSLATE_RABBITMQ_URL", &rabbit_tls_url() as &str),
        ("CLEANSLATE_TIMEOUT", "3s"),
    ];

    let untrusted = cleanslate(&["purge"], &purge_vars(&vhost, &tls)).await;
    assert_ne!(untrusted.code, 0, "an unknown CA is not trusted: {}", untrusted.all_output());
    assert_eq!(rabbit.count(&vhost, "q").await, 2, "nothing purged over an untrusted connection");

    let ca = rabbit_ca_file();
    let ca = ca.to_str().expect("utf-8 path");
    let trusted = cleanslate(
        &["purge"],
        &purge_vars(
            &vhost,
            &with(vars(&tls), &[("CLEANSLATE_RABBITMQ_CA_FILE", ca)])
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        ),
    )
    .await;
    assert_eq!(trusted.code, 0, "purge over https succeeds: {}", trusted.all_output());
    assert_eq!(rabbit.count(&vhost, "q").await, 0, "purged over https");
    rabbit.delete_vhost(&vhost).await;
}

/// Many queues with a concurrency limit of 2 are all purged.
#[tokio::test]
async fn bounded_concurrency_purges_everything() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "many").await;
    let names: Vec<String> = (0..20).map(|i| format!("q{i:02}")).collect();
    for name in &names {
        rabbit.declare(&vhost, name, json!({})).await;
        rabbit.publish(&vhost, name, 1).await;
    }
    let run = cleanslate(
        &["purge"],
        &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUE_PATTERN", "q[0-9]+"), ("CLEANSLATE_CONCURRENCY", "2")]),
    )
    .await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for name in &names {
        assert_eq!(rabbit.count(&vhost, name).await, 0, "{name} purged");
    }
    assert!(run.stdout.contains(r#""queues_purged":20"#), "summary counts 20: {}", run.stdout);
    rabbit.delete_vhost(&vhost).await;
}

/// A queue with a live consumer: the summary names it, and the messages the consumer held
/// unacknowledged come back after it goes (they survive a purge, as documented).
#[tokio::test]
async fn consumers_keep_their_unacknowledged_messages() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "consumers").await;
    rabbit.declare(&vhost, "busy", json!({})).await;
    rabbit.publish(&vhost, "busy", 5).await;
    let python = repo_root().join(".tools/venv/bin/python");
    assert!(python.exists(), "pika's venv missing; run hack/setup.sh");
    let port = std::env::var("CSTEST_AMQP_PORT").unwrap_or_else(|_| "5682".into());
    // Takes two messages without acknowledging them, then waits for stdin to close.
    let script = r#"
import sys, pika
user, password, port, vhost = sys.argv[1:5]
params = pika.ConnectionParameters("127.0.0.1", int(port), vhost, pika.PlainCredentials(user, password))
connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.basic_qos(prefetch_count=2)
channel.basic_consume("busy", lambda *args: None, auto_ack=False)
connection.process_data_events(time_limit=1)
print("holding", flush=True)
sys.stdin.read()
connection.close()
"#;
    let mut consumer = tokio::process::Command::new(python)
        .args(["-c", script, &rabbit_user(), &rabbit_password(), &port, &vhost])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("consumer starts");
    let mut line = String::new();
    let stdout = consumer.stdout.take().unwrap();
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line).await.unwrap();
    assert_eq!(line.trim(), "holding", "consumer holds two messages");
    for _ in 0..100 {
        let run = cleanslate(&["plan"], &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "busy")])).await;
        if run.stdout.contains(r#""consumers":1"#) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let run = cleanslate(&["purge"], &purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "busy")])).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert!(run.stdout.contains(r#""queues_with_consumers":"busy""#), "summary names the queue: {}", run.stdout);
    assert!(run.stdout.contains("survived the purge"), "says what survives: {}", run.stdout);
    drop(consumer.stdin.take());
    consumer.wait().await.unwrap();
    assert_eq!(rabbit.count(&vhost, "busy").await, 2, "the two unacknowledged messages came back");
    rabbit.delete_vhost(&vhost).await;
}

/// A shared topic dead-letter exchange purges only the dead-letter queues our dead letters reach
/// (the dead-letter routing key equal to a binding's literal key); behind a direct DLX without a key, a queue fed through a
/// fanout exchange proves only its own name, so another team's queue there is named, not purged.
#[tokio::test]
async fn shared_dead_letter_exchanges_purge_only_what_is_reached() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "shared-dlx").await;
    rabbit.declare_exchange(&vhost, "shared-dlx", "topic").await;
    rabbit.declare_exchange(&vhost, "team-dlx", "direct").await;
    rabbit.declare_exchange(&vhost, "events", "fanout").await;
    for queue in ["orders-dlq", "billing-dlq", "audit-dlq", "other-team-dlq"] {
        rabbit.declare(&vhost, queue, json!({})).await;
    }
    rabbit.bind(&vhost, "shared-dlx", "orders-dlq", "orders.dead").await;
    rabbit.bind(&vhost, "shared-dlx", "billing-dlq", "billing.#").await;
    rabbit.bind(&vhost, "team-dlx", "audit-dlq", "audit").await;
    rabbit.bind(&vhost, "team-dlx", "other-team-dlq", "other").await;
    rabbit
        .declare(
            &vhost,
            "orders",
            json!({"x-dead-letter-exchange": "shared-dlx", "x-dead-letter-routing-key": "orders.dead"}),
        )
        .await;
    rabbit.declare(&vhost, "audit", json!({"x-dead-letter-exchange": "team-dlx"})).await;
    rabbit.bind(&vhost, "events", "audit", "").await;
    for queue in ["orders", "audit", "orders-dlq", "billing-dlq", "audit-dlq", "other-team-dlq"] {
        rabbit.publish(&vhost, queue, 2).await;
    }

    let plan = cleanslate(&["plan"], &exact_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "orders,audit")])).await;
    assert_eq!(plan.code, 0, "plan succeeds: {}", plan.all_output());
    assert!(
        plan.stdout.contains("other-team-dlq") && plan.stdout.contains("not proven"),
        "the plan names the unproven candidate: {}",
        plan.stdout
    );
    let run = cleanslate(&["purge"], &exact_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "orders,audit")])).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for queue in ["orders", "audit", "orders-dlq", "audit-dlq"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} purged");
    }
    assert_eq!(rabbit.count(&vhost, "billing-dlq").await, 2, "another team's queue on the shared DLX survives");
    assert_eq!(rabbit.count(&vhost, "other-team-dlq").await, 2, "an unproven route purges nothing");
    assert!(
        run.stdout.contains(r#""dead_letter_queues_not_purged":"other-team-dlq (dead letters of audit)""#),
        "the summary names the candidate: {}",
        run.stdout
    );
    rabbit.delete_vhost(&vhost).await;
}

/// The case that lost another team's data: the dead-letter exchange of a selected queue is the
/// shared application topic exchange everybody publishes to, with a dead-letter routing key. The
/// subscribers' queues bound with `#` and `orders.#` keep every message and are named; only the
/// queue bound with the literal key is purged. `CLEANSLATE_RABBITMQ_DEAD_LETTERS=reachable` is the
/// opt-in for exchanges known to be dedicated.
#[tokio::test]
async fn shared_application_exchange_keeps_other_teams_queues() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "app-exchange").await;
    rabbit.declare_exchange(&vhost, "app.events", "topic").await;
    for (queue, key) in [("orders-dlq", "orders.dead"), ("audit", "#"), ("order-history", "orders.#")] {
        rabbit.declare(&vhost, queue, json!({})).await;
        rabbit.bind(&vhost, "app.events", queue, key).await;
    }
    rabbit
        .declare(
            &vhost,
            "orders",
            json!({"x-dead-letter-exchange": "app.events", "x-dead-letter-routing-key": "orders.dead"}),
        )
        .await;
    for queue in ["orders", "orders-dlq", "audit", "order-history"] {
        rabbit.publish(&vhost, queue, 3).await;
    }
    let vars = exact_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "orders")]);
    let run = cleanslate(&["purge"], &vars).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for queue in ["orders", "orders-dlq"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} purged");
    }
    for queue in ["audit", "order-history"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 3, "{queue}, another team's, keeps every message");
    }
    assert!(
        run.stdout.contains(r#""dead_letter_queues_not_purged":"audit (dead letters of orders), order-history (dead letters of orders)""#),
        "the summary names both: {}",
        run.stdout
    );
    assert!(run.stdout.contains("wildcard binding"), "and says why: {}", run.stdout);

    let opted_in = with(vars, &[("CLEANSLATE_RABBITMQ_DEAD_LETTERS", "reachable")]);
    let run = cleanslate(&["purge"], &opted_in).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for queue in ["audit", "order-history"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} purged once the user opted in");
    }
    rabbit.delete_vhost(&vhost).await;
}

/// Streams found by the pattern or as a dead-letter queue (a stream archiving a queue's dead
/// letters is a supported setup) cannot be purged: warned about and named, and the run succeeds.
#[tokio::test]
async fn discovered_streams_are_skipped_and_named() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "found-stream").await;
    rabbit.declare_exchange(&vhost, "archive", "fanout").await;
    rabbit.declare(&vhost, "orders-archive", json!({"x-queue-type": "stream"})).await;
    rabbit.bind(&vhost, "archive", "orders-archive", "").await;
    rabbit.declare(&vhost, "orders", json!({"x-dead-letter-exchange": "archive"})).await;
    rabbit.declare(&vhost, "ev-stream", json!({"x-queue-type": "stream"})).await;
    rabbit.declare(&vhost, "ev-jobs", json!({})).await;
    for queue in ["orders", "ev-jobs"] {
        rabbit.publish(&vhost, queue, 2).await;
    }

    let run = cleanslate(
        &["purge"],
        &exact_vars(
            &vhost,
            &[("CLEANSLATE_RABBITMQ_QUEUES", "orders"), ("CLEANSLATE_RABBITMQ_QUEUE_PATTERN", "ev-.*")],
        ),
    )
    .await;

    assert_eq!(run.code, 0, "queues nobody named do not fail the run: {}", run.all_output());
    for queue in ["orders", "ev-jobs"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} purged");
    }
    let summary = run.stdout.lines().find(|l| l.contains(r#""message":"purge finished""#)).expect("summary line");
    assert!(
        summary.contains("ev-stream (a stream cannot be purged") && summary.contains("orders-archive (a stream"),
        "the summary names both streams: {summary}"
    );
    rabbit.delete_vhost(&vhost).await;
}

/// A management URL that redirects (an ingress's ssl-redirect, a moved path) is a configuration
/// error naming where it points, without the credentials the Location might carry; nothing is
/// purged and nothing is retried.
#[tokio::test]
async fn redirects_are_refused_naming_the_target() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "redirect").await;
    rabbit.declare(&vhost, "q", json!({})).await;
    rabbit.publish(&vhost, "q", 2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = "HTTP/1.1 301 Moved Permanently\r\nLocation: https://ingress-user:Ingress-Pw-3@mq.example/rabbit/api/queues\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    let run = cleanslate(
        &["purge"],
        &purge_vars(
            &vhost,
            &[("CLEANSLATE_RABBITMQ_QUEUES", "q"), ("CLEANSLATE_RABBITMQ_URL", &format!("http://127.0.0.1:{port}"))],
        ),
    )
    .await;
    assert_eq!(run.code, 78, "a URL that redirects is a configuration error: {}", run.all_output());
    assert!(
        run.first_stderr_line().contains("redirecting to https://mq.example/rabbit/api/queues"),
        "names where it points: {}",
        run.stderr
    );
    assert!(run.stderr.contains("CLEANSLATE_RABBITMQ_URL"), "and what to change: {}", run.stderr);
    run.assert_no_secret(&["Ingress-Pw-3", "ingress-user", &rabbit_password()]);
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1, "asked once, not retried");
    assert_eq!(rabbit.count(&vhost, "q").await, 2, "nothing purged");
    rabbit.delete_vhost(&vhost).await;
}

/// A CA file with no certificate, or one that does not parse, is a configuration error naming the
/// variable (78), before anything is touched.
#[tokio::test]
async fn bad_ca_files_are_configuration_errors() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "bad-ca").await;
    rabbit.declare(&vhost, "q", json!({})).await;
    rabbit.publish(&vhost, "q", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let not_base64 = "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n-----END CERTIFICATE-----\n";
    let not_a_certificate = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    for (name, contents) in [
        ("empty.pem", ""),
        ("key-only.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        ("not-base64.pem", not_base64),
        ("not-a-certificate.pem", not_a_certificate),
    ] {
        let path = write_file(dir.path(), name, contents);
        let run = cleanslate(
            &["purge"],
            &purge_vars(
                &vhost,
                &[
                    ("CLEANSLATE_RABBITMQ_QUEUES", "q"),
                    ("CLEANSLATE_RABBITMQ_URL", &rabbit_tls_url()),
                    ("CLEANSLATE_RABBITMQ_CA_FILE", &path),
                ],
            ),
        )
        .await;
        assert_eq!(run.code, 78, "{name}: a configuration error: {}", run.all_output());
        assert!(run.first_stderr_line().contains("CLEANSLATE_RABBITMQ_CA_FILE"), "{name}: names it: {}", run.stderr);
    }
    assert_eq!(rabbit.count(&vhost, "q").await, 2, "nothing purged");
    rabbit.delete_vhost(&vhost).await;
}

/// A wrong password on RabbitMQ 3.12+ (`Not_Authorized`, the same 401 as a missing permission)
/// gets the login hint; a user that logs in but may not use the vhost gets the permission hint.
#[tokio::test]
async fn login_and_permission_are_told_apart() {
    let rabbit = Rabbit::connect().await;
    let vhost = unique("who");
    rabbit.create_vhost(&vhost).await;
    rabbit.declare(&vhost, "q", json!({})).await;
    rabbit.publish(&vhost, "q", 2).await;
    let base = purge_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "q")]);

    let wrong = cleanslate(&["purge"], &with(base.clone(), &[("CLEANSLATE_RABBITMQ_PASSWORD", "Wrong-Pw-4x")])).await;
    assert_eq!(wrong.code, 79, "fails: {}", wrong.all_output());
    assert!(wrong.first_stderr_line().contains("rejected the login"), "login hint: {}", wrong.stderr);
    assert!(!wrong.stderr.contains("lacks permission"), "not the permission hint: {}", wrong.stderr);

    let user = unique("outsider");
    // A management user with access to another vhost only.
    rabbit.create_user(&user, "Outsider-Pw-8", "management", "/", ".*").await;
    let outsider = cleanslate(
        &["purge"],
        &with(base, &[("CLEANSLATE_RABBITMQ_USERNAME", &user), ("CLEANSLATE_RABBITMQ_PASSWORD", "Outsider-Pw-8")]),
    )
    .await;
    assert_eq!(outsider.code, 79, "fails: {}", outsider.all_output());
    assert!(outsider.stderr.contains("lacks permission"), "permission hint: {}", outsider.stderr);
    outsider.assert_no_secret(&["Outsider-Pw-8", "Wrong-Pw-4x", &rabbit_password()]);
    assert_eq!(rabbit.count(&vhost, "q").await, 2, "nothing purged");
    rabbit.delete_user(&user).await;
    rabbit.delete_vhost(&vhost).await;
}

/// Sources are purged before the dead-letter queues they feed, and those (a retry loop through a
/// TTL queue included) get a second pass at the end, so what was dead-lettered during the run is
/// gone too.
#[tokio::test]
async fn dead_letter_queues_go_after_their_sources_and_twice() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "order").await;
    rabbit.declare_exchange(&vhost, "orders.dlx", "fanout").await;
    // A retry loop: orders dead-letters to orders-retry, whose expired messages go back to orders.
    rabbit
        .declare(
            &vhost,
            "orders-retry",
            json!({"x-message-ttl": 600000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "orders"}),
        )
        .await;
    rabbit.bind(&vhost, "orders.dlx", "orders-retry", "").await;
    rabbit.declare(&vhost, "orders", json!({"x-dead-letter-exchange": "orders.dlx"})).await;
    rabbit.declare(&vhost, "audit", json!({"x-dead-letter-exchange": "orders.dlx"})).await;
    rabbit.declare(&vhost, "parcels", json!({})).await;
    for queue in ["orders", "orders-retry", "audit", "parcels"] {
        rabbit.publish(&vhost, queue, 2).await;
    }
    let run = cleanslate(
        &["purge"],
        &purge_vars(
            &vhost,
            &[("CLEANSLATE_RABBITMQ_QUEUES", "audit,parcels,orders,orders-retry"), ("CLEANSLATE_CONCURRENCY", "1")],
        ),
    )
    .await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    let purged: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains(r#""message":"purged queue""#) || l.contains(r#""message":"purged queue again"#))
        .map(|l| l.split(r#""queue":""#).nth(1).unwrap().split('"').next().unwrap())
        .collect();
    // audit and parcels feed nothing selected but orders-retry's loop; orders and orders-retry
    // feed each other, so both come after the plain sources, and both come again at the end.
    assert_eq!(purged.len(), 6, "four queues, two of them twice: {purged:?}");
    let (sources, loop_queues) = purged.split_at(2);
    assert_eq!(sources, ["audit", "parcels"], "sources first: {purged:?}");
    for queue in ["orders", "orders-retry"] {
        assert_eq!(loop_queues.iter().filter(|q| **q == queue).count(), 2, "{queue} purged twice: {purged:?}");
    }
    assert!(run.stdout.contains("second pass over dead-letter queues"), "says so: {}", run.stdout);
    let again: Vec<&str> = run.stdout.lines().filter(|l| l.contains("purged queue again (second pass)")).collect();
    assert_eq!(again.len(), 2, "the second pass says it is one: {again:?}");
    assert!(again.iter().all(|l| !l.contains("approx_messages")), "and repeats no stale count: {again:?}");
    for queue in ["orders", "orders-retry", "audit", "parcels"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} empty");
    }
    let summary = run.stdout.lines().find(|l| l.contains(r#""message":"purge finished""#)).expect("summary");
    assert!(summary.contains(r#""queues_purged":4"#), "each queue counted once: {summary}");
    rabbit.delete_vhost(&vhost).await;
}

/// A queue declared a moment ago is listed by name only until the statistics sample it: its
/// dead-letter arguments still count. An unselected queue declared just before the run that
/// dead-letters into our dead-letter exchange keeps the dead-letter queue from being purged.
#[tokio::test]
async fn queues_not_sampled_yet_still_count_as_feeders() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "young").await;
    rabbit.declare_exchange(&vhost, "dlx", "fanout").await;
    rabbit.declare(&vhost, "orders-dlq", json!({})).await;
    rabbit.bind(&vhost, "dlx", "orders-dlq", "").await;
    rabbit.declare(&vhost, "orders", json!({"x-dead-letter-exchange": "dlx"})).await;
    rabbit.publish(&vhost, "orders-dlq", 2).await;
    rabbit.declare(&vhost, "billing", json!({"x-dead-letter-exchange": "dlx"})).await;
    let run = cleanslate(&["purge"], &exact_vars(&vhost, &[("CLEANSLATE_RABBITMQ_QUEUES", "orders")])).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(rabbit.count(&vhost, "orders-dlq").await, 2, "billing's dead letters may be there too");
    assert!(
        run.stdout.contains(r#""dead_letter_queues_not_purged":"orders-dlq (dead letters of orders)""#),
        "named instead: {}",
        run.stdout
    );
    rabbit.delete_vhost(&vhost).await;
}

/// A user with only the management tag (it may not list policies) still finds the dead-letter
/// queues of queues declared a moment ago, which the statistics have not sampled yet: their
/// policy (none) comes from the queue records, so the policies are not needed.
#[tokio::test]
async fn a_management_user_finds_dead_letter_queues_of_new_queues() {
    let rabbit = Rabbit::connect().await;
    let vhost = fresh_vhost(&rabbit, "mgmt-user").await;
    let user = unique("mgmt");
    rabbit.create_user(&user, "Mgmt-Pw-21", "management", &vhost, ".*").await;
    rabbit.declare_exchange(&vhost, "dlx", "fanout").await;
    rabbit.declare(&vhost, "orders-dlq", json!({})).await;
    rabbit.bind(&vhost, "dlx", "orders-dlq", "").await;
    rabbit.declare(&vhost, "orders", json!({"x-dead-letter-exchange": "dlx"})).await;
    for queue in ["orders", "orders-dlq"] {
        rabbit.publish(&vhost, queue, 2).await;
    }
    let run = cleanslate(
        &["purge"],
        &exact_vars(
            &vhost,
            &[
                ("CLEANSLATE_RABBITMQ_QUEUES", "orders"),
                ("CLEANSLATE_RABBITMQ_USERNAME", &user),
                ("CLEANSLATE_RABBITMQ_PASSWORD", "Mgmt-Pw-21"),
            ],
        ),
    )
    .await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    for queue in ["orders", "orders-dlq"] {
        assert_eq!(rabbit.count(&vhost, queue).await, 0, "{queue} purged");
    }
    run.assert_no_secret(&["Mgmt-Pw-21"]);
    rabbit.delete_user(&user).await;
    rabbit.delete_vhost(&vhost).await;
}
