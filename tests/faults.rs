//! Faults injected into real servers (through a TCP proxy, throwaway etcd members, and the API
//! stand-in's switches): retries where they help, a clear failure where they cannot, the right
//! exit code, a marker that tells the truth, nothing deleted that was not selected, and no secret
//! in any output. Every scenario runs with known password and token values.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use support::proxy::Proxy;
use support::*;
use tokio::io::AsyncBufReadExt;

use support::marker_api::{MARKER, MarkerApi as Api, NAMESPACE, TOKEN};

fn secrets() -> Vec<String> {
    vec![rabbit_password(), TOKEN.to_string()]
}

fn assert_no_secrets(run: &Run, api: &Api) {
    run.assert_no_secret(&secrets().iter().map(String::as_str).collect::<Vec<_>>());
    let marker = serde_json::to_string(&api.marker()).unwrap();
    for secret in secrets() {
        assert!(!marker.contains(&secret), "no secret in the marker: {marker}");
    }
}

/// A vhost with `count` queues of 2 messages each.
async fn queues(rabbit: &Rabbit, count: usize) -> (String, Vec<String>) {
    let vhost = unique("faults");
    rabbit.create_vhost(&vhost).await;
    let names: Vec<String> = (0..count).map(|i| format!("q{i:02}")).collect();
    for name in &names {
        rabbit.declare(&vhost, name, json!({})).await;
        rabbit.publish(&vhost, name, 2).await;
    }
    (vhost, names)
}

fn rabbit_vars(url: &str, vhost: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    with(rabbit_purge_vars(url, vhost, &[("CLEANSLATE_RABBITMQ_QUEUE_PATTERN", "q[0-9]+")]), extra)
}

/// RabbitMQ not up when the purge starts, but up within the retry window: the purge succeeds.
#[tokio::test]
async fn rabbitmq_coming_up_late_is_waited_for() {
    let rabbit = Rabbit::connect().await;
    let (vhost, names) = queues(&rabbit, 3).await;
    let api = Api::start().await;
    let proxy = Proxy::for_url(&rabbit_url());
    let mut settings =
        rabbit_vars(&proxy.url(), &vhost, &[("CLEANSLATE_RETRY_ATTEMPTS", "6"), ("CLEANSLATE_RETRY_BACKOFF", "300ms")]);
    settings.extend(api.vars(1));
    let purge = tokio::spawn(async move { cleanslate(&["purge"], &settings).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.forward(Duration::ZERO);
    let run = purge.await.unwrap();
    assert_eq!(run.code, 0, "succeeds once RabbitMQ answers: {}", run.all_output());
    assert!(run.stdout.contains("retrying"), "it retried: {}", run.stdout);
    for name in &names {
        assert_eq!(rabbit.count(&vhost, name).await, 0, "{name} purged");
    }
    assert_eq!(api.marker()["status"], json!("succeeded"), "marker succeeded");
    assert_no_secrets(&run, &api);
    rabbit.delete_vhost(&vhost).await;
}

/// RabbitMQ never up: 69 within the deadline, and a failed marker that says so.
#[tokio::test]
async fn rabbitmq_never_up_exits_69_with_a_failed_marker() {
    let api = Api::start().await;
    let proxy = Proxy::for_url(&rabbit_url());
    let mut settings =
        rabbit_vars(&proxy.url(), "/", &[("CLEANSLATE_TIMEOUT", "3s"), ("CLEANSLATE_RETRY_ATTEMPTS", "10")]);
    settings.extend(api.vars(2));
    let started = Instant::now();
    let run = cleanslate(&["purge"], &settings).await;
    assert_eq!(run.code, 69, "unreachable: {}", run.all_output());
    assert!(started.elapsed() < Duration::from_millis(3300), "within the deadline: {:?}", started.elapsed());
    let marker = api.marker();
    assert_eq!(
        (marker["revision"].as_str(), marker["status"].as_str()),
        (Some("2"), Some("failed")),
        "failed marker: {marker:?}"
    );
    assert!(marker["message"].as_str().unwrap().contains("not reachable"), "says why: {marker:?}");
    assert_no_secrets(&run, &api);
}

/// RabbitMQ going away in the middle of purging many queues: the summary and the marker say which
/// queues were not purged, the exit is 1, and the next run completes the job.
#[tokio::test]
async fn rabbitmq_stopping_mid_run_is_reported_and_the_next_run_finishes() {
    let rabbit = Rabbit::connect().await;
    let (vhost, names) = queues(&rabbit, 40).await;
    let api = Api::start().await;
    let proxy = Proxy::for_url(&rabbit_url());
    proxy.forward(Duration::from_millis(50));
    let mut settings = rabbit_vars(
        &proxy.url(),
        &vhost,
        &[("CLEANSLATE_CONCURRENCY", "1"), ("CLEANSLATE_RETRY_ATTEMPTS", "2"), ("CLEANSLATE_RETRY_BACKOFF", "100ms")],
    );
    settings.extend(api.vars(3));
    let mut child = spawn(&["purge"], &settings);
    // Queues are purged one at a time in name order, each through the delaying proxy: the broker
    // goes away right after the purge's own log says the third one is done, with most still to come.
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let third = format!(r#""message":"purged queue","vhost":"{vhost}","queue":"{}""#, names[2]);
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), stdout.next_line()).await.unwrap().unwrap() {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(&third) {
            break;
        }
    }
    proxy.down();
    while let Some(line) = stdout.next_line().await.unwrap() {
        seen.push_str(&line);
        seen.push('\n');
    }
    let mut run = finish(child).await;
    run.stdout = seen;
    assert_eq!(run.code, 1, "partial work fails the run: {}", run.all_output());
    let marker = api.marker();
    let message = marker["message"].as_str().unwrap().to_string();
    let not_purged_list =
        message.split("not purged: ").nth(1).expect("names what was not purged").split(';').next().unwrap();
    let reported: Vec<&str> = not_purged_list.split(", ").collect();
    let mut emptied = 0;
    for name in &names {
        if rabbit.count(&vhost, name).await == 0 {
            emptied += 1;
        } else {
            assert!(
                reported.contains(&name.as_str()),
                "{name} still has messages and is reported as not purged: {message}"
            );
        }
    }
    assert!(emptied > 0 && emptied < names.len(), "some purged, some not: {emptied}");
    assert_eq!(marker["status"], json!("failed"), "marker failed");
    // A purge the broker did but whose answer was cut is reported as not purged, never the reverse.
    let claimed: usize = marker["queuesPurged"].as_str().unwrap().parse().unwrap();
    assert!(
        claimed <= emptied && claimed + reported.len() == names.len(),
        "claims only what happened: {claimed} claimed, {emptied} emptied"
    );
    assert!(run.stderr.contains("not purged: q"), "so does stderr: {}", run.stderr);
    assert_no_secrets(&run, &api);

    let rerun = cleanslate(&["purge"], &rabbit_vars(&rabbit_url(), &vhost, &[])).await;
    assert_eq!(rerun.code, 0, "next run completes: {}", rerun.all_output());
    for name in &names {
        assert_eq!(rabbit.count(&vhost, name).await, 0, "{name} purged by the next run");
    }
    rabbit.delete_vhost(&vhost).await;
}

/// A slow broker (delays) still succeeds; a silent one (accepts, never answers) is cut by the
/// per-request timeouts and the overall deadline holds within 10%.
#[tokio::test]
async fn slow_and_silent_servers() {
    let rabbit = Rabbit::connect().await;
    let (vhost, names) = queues(&rabbit, 2).await;
    let slow = Proxy::for_url(&rabbit_url());
    slow.forward(Duration::from_millis(150));
    let run = cleanslate(&["purge"], &rabbit_vars(&slow.url(), &vhost, &[])).await;
    assert_eq!(run.code, 0, "a slow broker is fine: {}", run.all_output());
    assert_eq!(rabbit.count(&vhost, &names[0]).await, 0, "purged through the slow link");

    let silent = Proxy::for_url(&rabbit_url());
    silent.black_hole();
    let started = Instant::now();
    let run = cleanslate(&["purge"], &rabbit_vars(&silent.url(), &vhost, &[("CLEANSLATE_TIMEOUT", "4s")])).await;
    let elapsed = started.elapsed();
    // Reachable (the TCP connection is accepted) but silent: unfinished work, not unreachable.
    assert_eq!(run.code, 75, "a silent broker is a deadline, not unreachable: {}", run.all_output());
    assert!(elapsed < Duration::from_millis(4400), "deadline held within 10%: {elapsed:?}");
    assert!(elapsed > Duration::from_millis(1900), "per-request timeout (half the deadline) fired first: {elapsed:?}");
    run.assert_no_secret(&[&rabbit_password()]);

    let api = Api::start().await;
    let silent_api = Proxy::for_url(&api.api.url.replace("https://", "http://"));
    silent_api.black_hole();
    let mut gate = with(api.vars(1), &[("CLEANSLATE_GATE_TIMEOUT", "2s")]);
    gate = with(gate, &[("CLEANSLATE_KUBE_API", &silent_api.url().replace("http://", "https://"))]);
    let started = Instant::now();
    let run = cleanslate(&["gate"], &gate).await;
    // The TLS handshake never completes, so the API was never reached.
    assert_eq!(run.code, 69, "gate against a silent API never reached it: {}", run.all_output());
    assert!(started.elapsed() < Duration::from_millis(2200), "gate deadline within 10%: {:?}", started.elapsed());
    rabbit.delete_vhost(&vhost).await;
}

/// etcd: one dead member of three is tolerated; all dead is 69.
#[tokio::test]
async fn etcd_cluster_with_dead_members() {
    let mut cluster = EtcdCluster::start(3).await;
    let mut client = etcd_at(&cluster.endpoints).await;
    put_keys(&mut client, "app/", 5).await;
    put_keys(&mut client, "keep/", 2).await;
    cluster.stop_member(0);
    let endpoints = cluster.endpoints.join(",");
    let settings = |timeout: &str| {
        with(
            service_vars(),
            &[
                ("CLEANSLATE_TARGETS", "etcd"),
                ("CLEANSLATE_ETCD_ENDPOINTS", &endpoints),
                ("CLEANSLATE_ETCD_PREFIXES", "app/"),
                ("CLEANSLATE_TIMEOUT", timeout),
            ],
        )
    };
    let run = cleanslate(&["purge"], &settings("10s")).await;
    assert_eq!(run.code, 0, "two of three members are enough: {}", run.all_output());
    let mut live = etcd_at(&cluster.endpoints[1..]).await;
    assert_eq!(count_keys(&mut live, "app/").await, 0, "deleted");
    assert_eq!(count_keys(&mut live, "keep/").await, 2, "survivors kept");

    cluster.stop_member(1);
    cluster.stop_member(2);
    let started = Instant::now();
    let run = cleanslate(&["purge"], &settings("3s")).await;
    assert_eq!(run.code, 69, "no member reachable: {}", run.all_output());
    assert!(started.elapsed() < Duration::from_millis(3300), "within the deadline");
}

/// etcd restarted while a purge runs: the purge retries and finishes.
#[tokio::test]
async fn etcd_restart_during_a_purge_is_retried() {
    let mut cluster = EtcdCluster::start(1).await;
    let mut client = etcd_at(&cluster.endpoints).await;
    put_keys(&mut client, "app/", 5).await;
    cluster.stop_member(0);
    let settings = with(
        service_vars(),
        &[
            ("CLEANSLATE_TARGETS", "etcd"),
            ("CLEANSLATE_ETCD_ENDPOINTS", &cluster.endpoints[0]),
            ("CLEANSLATE_ETCD_PREFIXES", "app/"),
            ("CLEANSLATE_RETRY_ATTEMPTS", "8"),
            ("CLEANSLATE_RETRY_BACKOFF", "300ms"),
        ],
    );
    let purge = tokio::spawn(async move { cleanslate(&["purge"], &settings).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.start_member(0);
    let run = purge.await.unwrap();
    assert_eq!(run.code, 0, "retried until etcd was back: {}", run.all_output());
    assert!(run.stdout.contains("retrying"), "it retried: {}", run.stdout);
    let mut client = etcd_at(&cluster.endpoints).await;
    assert_eq!(count_keys(&mut client, "app/").await, 0, "deleted after the restart");
}

/// The API answering 5xx and racing writers during the marker write: retried and resolved.
#[tokio::test]
async fn marker_write_survives_5xx_and_conflicts() {
    let api = Api::start().await;
    api.api.fail_next(2, 503);
    api.api.race_next_updates(2);
    let mut settings = with(
        service_vars(),
        &[("CLEANSLATE_TARGETS", "etcd"), ("CLEANSLATE_ETCD_PREFIXES", &format!("{}/x/", unique("/f")))],
    );
    settings.extend(api.vars(4));
    let run = cleanslate(&["purge"], &settings).await;
    assert_eq!(run.code, 0, "marker written in the end: {}", run.all_output());
    assert_eq!(api.marker()["revision"], json!("4"), "revision 4 recorded");
    assert_no_secrets(&run, &api);
}

/// The gate keeps waiting across an API server restart and passes once the marker is written.
#[tokio::test]
async fn gate_waits_across_an_api_restart() {
    let api = Api::start().await;
    let settings = with(api.vars(5), &[("CLEANSLATE_GATE_TIMEOUT", "30s")]);
    let mut gate = spawn(&["gate"], &settings);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Api { api: server, credentials } = api;
    let server = server.restart(Duration::from_millis(1500)).await;
    let api = Api { api: server, credentials };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gate.try_wait().unwrap().is_none(), "gate still waiting after the restart");
    let data: BTreeMap<String, String> =
        [("revision", "5"), ("status", "succeeded")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    api.api.put(NAMESPACE, MARKER, data);
    let output = tokio::time::timeout(Duration::from_secs(15), gate.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(output.status.code(), Some(0), "passes after the restart: {}", String::from_utf8_lossy(&output.stderr));
    assert!(!String::from_utf8_lossy(&output.stdout).contains(TOKEN), "no token in the output");
}

/// SIGTERM mid-run: 143, and a failed attempt recorded with the reason, so gates do not wait out
/// their timeout (a one-shot run: the failure is final).
#[tokio::test]
async fn sigterm_records_a_final_failed_attempt() {
    let api = Api::start().await;
    let silent = Proxy::for_url(&rabbit_url());
    silent.black_hole();
    let mut settings = rabbit_vars(&silent.url(), "/", &[]);
    settings.extend(api.vars(6));
    let mut child = spawn(&["purge"], &settings);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success(), "signal sent");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(143), "143 on SIGTERM");
    let marker = api.marker();
    assert_eq!(marker["status"], json!("failed"), "the stopped attempt is recorded as failed: {marker:?}");
    assert_eq!(marker["final"], json!("true"), "and final, so gates fail at once: {marker:?}");
    assert!(marker["message"].as_str().unwrap_or("").contains("stopped by SIGTERM"), "says why: {marker:?}");
}

/// Two purges at once on both backends: both end well, the state is clean, the marker holds the
/// higher revision.
#[tokio::test]
async fn two_purges_at_once() {
    let rabbit = Rabbit::connect().await;
    let (vhost, names) = queues(&rabbit, 6).await;
    let mut etcd = etcd().await;
    let prefix = format!("{}/both/", unique("/f"));
    put_keys(&mut etcd, &prefix, 50).await;
    let api = Api::start().await;
    let mut a = with(
        rabbit_vars(&rabbit_url(), &vhost, &[]),
        &[("CLEANSLATE_TARGETS", "rabbitmq,etcd"), ("CLEANSLATE_ETCD_PREFIXES", &prefix)],
    );
    let mut b = a.clone();
    a.extend(api.vars(7));
    b.extend(api.vars(8));
    let (first, second) = tokio::join!(cleanslate(&["purge"], &a), cleanslate(&["purge"], &b));
    assert_eq!((first.code, second.code), (0, 0), "both succeed: {} {}", first.all_output(), second.all_output());
    for name in &names {
        assert_eq!(rabbit.count(&vhost, name).await, 0, "{name} clean");
    }
    assert_eq!(count_keys(&mut etcd, &prefix).await, 0, "keys clean");
    assert_eq!(api.marker()["revision"], json!("8"), "the higher revision wins");
    assert_no_secrets(&first, &api);
    assert_no_secrets(&second, &api);
    rabbit.delete_vhost(&vhost).await;
}

/// SIGTERM after etcd's transaction committed and some queues were purged, while the other queues
/// still wait on a slow broker: the marker records the keys and queues that are really gone, not 0.
#[tokio::test]
async fn sigterm_keeps_the_counts_committed_before_it() {
    let api = Api::start().await;
    let rabbit = Rabbit::connect().await;
    let (vhost, names) = queues(&rabbit, 6).await;
    let slow = Proxy::for_url(&rabbit_url());
    slow.forward(Duration::from_millis(300));
    let mut etcd = etcd().await;
    let prefix = format!("{}/term/", unique("/f"));
    put_keys(&mut etcd, &prefix, 7).await;
    let mut settings = with(
        rabbit_vars(&slow.url(), &vhost, &[("CLEANSLATE_CONCURRENCY", "1")]),
        &[("CLEANSLATE_TARGETS", "rabbitmq,etcd"), ("CLEANSLATE_ETCD_PREFIXES", &prefix)],
    );
    settings.extend(api.vars(9));
    let mut child = spawn(&["purge"], &settings);
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut keys_done, mut queues_done) = (false, 0);
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), stdout.next_line()).await.unwrap().unwrap() {
        keys_done |= line.contains("deleted the keys under the prefixes");
        queues_done += usize::from(line.contains(r#""message":"purged queue""#));
        if keys_done && queues_done > 0 {
            break;
        }
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success(), "signal sent");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(143), "143 on SIGTERM");
    assert_eq!(count_keys(&mut etcd, &prefix).await, 0, "etcd's side was done");
    let marker = api.marker();
    assert_eq!(marker["status"], json!("failed"), "a stopped run failed: {marker:?}");
    assert_eq!(marker["keysDeleted"], json!("7"), "the committed deletion is recorded: {marker:?}");
    let recorded: usize = marker["queuesPurged"].as_str().unwrap().parse().unwrap();
    let mut emptied = 0;
    for name in &names {
        emptied += usize::from(rabbit.count(&vhost, name).await == 0);
    }
    assert!(
        recorded >= queues_done && recorded <= emptied && emptied < names.len(),
        "purged queues are recorded: {recorded} recorded, {queues_done} logged, {emptied} of {} empty",
        names.len()
    );
    rabbit.delete_vhost(&vhost).await;
}
