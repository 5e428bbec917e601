//! Gate reaction benchmark: how long after the marker is written does `cleanslate gate` exit?
//! Runs the real binary against the Kubernetes API stand-in from `tests/support`, and compares it
//! with a 2-second polling loop (what wait-for tools commonly do). Prints a Markdown table.
//!
//! `CSBENCH_GATE_RUNS` (default 100) gates and `CSBENCH_POLL_RUNS` (default 10) polling runs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::kube_api::KubeApi;

const MARKER: &str = "bench-marker";
const TOKEN: &str = "bench-gate-token";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn marker(revision: u64) -> BTreeMap<String, String> {
    [("revision", revision.to_string()), ("status", "succeeded".to_string())]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn runs(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let gate_runs = runs("CSBENCH_GATE_RUNS", 100);
    let poll_runs = runs("CSBENCH_POLL_RUNS", 10);
    let api = KubeApi::start().await;
    api.grant(TOKEN, &["get", "list", "watch"], Some(&[MARKER]));
    let dir = tempfile::tempdir().unwrap();
    let token = support::write_file(dir.path(), "token", TOKEN);
    let ca = support::write_file(dir.path(), "ca.crt", &api.ca_pem);

    let mut gate = Vec::with_capacity(gate_runs);
    for revision in 1..=gate_runs as u64 {
        let watches_before = api.requests().iter().filter(|r| r.query.contains("watch")).count();
        let mut child = tokio::process::Command::new(support::binary())
            .arg("gate")
            .env_clear()
            .envs([
                ("CLEANSLATE_MARKER", MARKER),
                ("CLEANSLATE_NAMESPACE", "bench"),
                ("CLEANSLATE_REVISION", &revision.to_string()),
                ("CLEANSLATE_KUBE_API", &api.url),
                ("CLEANSLATE_KUBE_TOKEN_FILE", &token),
                ("CLEANSLATE_KUBE_CA_FILE", &ca),
                ("CLEANSLATE_GATE_TIMEOUT", "30s"),
                ("RUST_LOG", "warn"),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("gate starts");
        while api.requests().iter().filter(|r| r.query.contains("watch")).count() == watches_before {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The watch request has arrived; give the stream a moment to be set up on both ends.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let written = Instant::now();
        api.put("bench", MARKER, marker(revision));
        let status = child.wait().await.expect("gate exits");
        gate.push(written.elapsed());
        assert!(status.success(), "gate {revision} passed");
    }
    gate.sort();

    // A 2 s polling loop, started at a random phase relative to the write.
    let mut polling = Vec::with_capacity(poll_runs);
    for run in 0..poll_runs as u64 {
        api.delete("bench", MARKER);
        let revision = 1_000 + run;
        let poller = {
            let poll = async {
                loop {
                    let current = api.object("bench", MARKER);
                    if current.is_some_and(|o| o["data"]["revision"].as_str() == Some(revision.to_string().as_str())) {
                        return Instant::now();
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            };
            let write_after = Duration::from_millis(fastrand::u64(0..2000));
            let write = async {
                tokio::time::sleep(write_after).await;
                api.put("bench", MARKER, marker(revision));
                Instant::now()
            };
            let (seen, written) = tokio::join!(poll, write);
            seen.saturating_duration_since(written)
        };
        polling.push(poller);
    }
    polling.sort();
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len().max(1) as u32;

    println!("| waiter | runs | p50 | p99 | mean | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| `cleanslate gate` (watch), write → process exit | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        gate.len(),
        percentile(&gate, 0.5).as_secs_f64() * 1e3,
        percentile(&gate, 0.99).as_secs_f64() * 1e3,
        mean(&gate).as_secs_f64() * 1e3,
        gate.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "| 2 s polling loop, write → noticed | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        polling.len(),
        percentile(&polling, 0.5).as_secs_f64() * 1e3,
        percentile(&polling, 0.99).as_secs_f64() * 1e3,
        mean(&polling).as_secs_f64() * 1e3,
        polling.last().unwrap().as_secs_f64() * 1e3
    );
}
