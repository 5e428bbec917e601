//! `cleanslate status`: what a person needs after a deploy, from the marker and the workloads:
//! the last run (revision, outcome, counts, duration), the last successful revision, the workloads
//! a quiesce left stopped with their recorded counts, and what to run next. A table for people,
//! JSON for scripts; exit 0 only when the release is clean and running.

use anyhow::Result;
use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use crate::config::{Output, StatusConfig};
use crate::error::{Kind, classified};
use crate::kube::{KubeClient, KubeError, data_of};
use crate::marker::{self, Marker, RunStatus};
use crate::quiesce::ANNOTATION;

/// The whole answer, as `--json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub release: Option<String>,
    pub marker: Option<String>,
    pub last_run: Option<LastRun>,
    pub stopped_workloads: Vec<Stopped>,
    /// The last run succeeded (not a dry run) and nothing is left stopped.
    pub clean: bool,
    pub next: String,
}

/// The marker's record of the last run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    pub revision: u64,
    pub status: String,
    pub dry_run: bool,
    pub attempt: u32,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub queues_purged: u64,
    /// A count, or "unknown" (the broker's statistics were off).
    pub messages_purged: String,
    pub keys_deleted: u64,
    pub message: String,
    pub job: String,
    pub last_succeeded_revision: Option<u64>,
    pub last_succeeded_at: String,
}

/// A workload stopped by a quiesce and not started again.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stopped {
    pub workload: String,
    pub recorded_replicas: String,
    pub replicas: i32,
}

/// Prints the status; an error of kind Failed (exit 1) when the release is not clean and running.
pub async fn run(config: &StatusConfig) -> Result<()> {
    let kube = KubeClient::new(&config.kube).await?;
    let report = gather(&kube, config).await?;
    match config.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report).expect("a report encodes")),
        Output::Table => print!("{}", table(&report)),
    }
    if report.clean { Ok(()) } else { Err(classified(Kind::Failed, format!("not clean: {}", report.next))) }
}

fn reading(err: KubeError, what: &str, namespace: &str) -> anyhow::Error {
    let hint = match err.code() {
        Some(401) | Some(403) => "; status needs get/list on configmaps, deployments and statefulsets",
        _ => "",
    };
    let kind = if matches!(err, KubeError::Transport(_)) { Kind::Unreachable } else { Kind::Failed };
    classified(kind, format!("reading {what} in namespace {namespace:?}: {err}{hint}"))
}

async fn find_marker(kube: &KubeClient, config: &StatusConfig) -> Result<Option<ConfigMap>> {
    let namespace = &config.namespace;
    if let Some(name) = &config.marker {
        return kube.get(namespace, name).await.map_err(|err| reading(err, &format!("marker {name}"), namespace));
    }
    let release = config.release.as_deref().unwrap_or_default();
    let selector = format!("{}={release},app.kubernetes.io/component=marker", marker::INSTANCE_LABEL);
    let mut found =
        kube.list_config_maps(namespace, &selector).await.map_err(|err| reading(err, "markers", namespace))?;
    if found.len() > 1 {
        let names: Vec<String> = found.iter().filter_map(|cm| cm.metadata.name.clone()).collect();
        return Err(classified(
            Kind::Config,
            format!("release {release:?} has several markers ({}); name one with CLEANSLATE_MARKER", names.join(", ")),
        ));
    }
    Ok(found.pop())
}

async fn gather(kube: &KubeClient, config: &StatusConfig) -> Result<Report> {
    let namespace = &config.namespace;
    let marker_object = find_marker(kube, config).await?;
    let record = marker_object.as_ref().and_then(|cm| Marker::from_data(&data_of(cm)));
    let last_run = record.as_ref().map(last_run);
    let workloads = kube.list_workloads(namespace).await.map_err(|err| reading(err, "workloads", namespace))?;
    // The release's own workloads (its instance label), those named in CLEANSLATE_QUIESCE, and with
    // only a marker name every one: another release's stopped workloads are not this one's business.
    let ours = |reference: &crate::config::WorkloadRef, workload: &crate::kube::Workload| {
        let instance = workload.metadata.labels.as_ref().and_then(|l| l.get(marker::INSTANCE_LABEL));
        match &config.release {
            Some(release) => instance == Some(release) || config.workloads.contains(reference),
            None => true,
        }
    };
    let stopped: Vec<Stopped> = workloads
        .iter()
        .filter(|(reference, workload)| ours(reference, workload))
        .filter_map(|(reference, workload)| {
            let recorded = workload.annotation(ANNOTATION)?;
            Some(Stopped {
                workload: reference.to_string(),
                recorded_replicas: recorded.to_string(),
                replicas: workload.replicas.unwrap_or(1),
            })
        })
        .collect();
    let clean = record.as_ref().is_some_and(|m| m.status == RunStatus::Succeeded && !m.dry_run) && stopped.is_empty();
    let marker_name = marker_object.as_ref().and_then(|cm| cm.metadata.name.clone());
    let next = next_step(config, marker_name.as_deref(), record.as_ref(), &stopped);
    Ok(Report {
        namespace: namespace.clone(),
        release: config.release.clone(),
        marker: marker_name,
        last_run,
        stopped_workloads: stopped,
        clean,
        next,
    })
}

fn last_run(m: &Marker) -> LastRun {
    let data = m.to_data();
    LastRun {
        revision: m.revision,
        status: data["status"].clone(),
        dry_run: m.dry_run,
        attempt: m.attempt,
        is_final: m.is_final,
        started_at: m.started_at.clone(),
        finished_at: m.finished_at.clone(),
        duration_ms: m.duration_ms,
        queues_purged: m.queues_purged,
        messages_purged: data["messagesPurged"].clone(),
        keys_deleted: m.keys_deleted,
        message: m.message.clone(),
        job: m.job.clone(),
        last_succeeded_revision: m.last_succeeded_revision,
        last_succeeded_at: m.last_succeeded_at.clone(),
    }
}

/// What to run next, in one sentence.
fn next_step(config: &StatusConfig, marker: Option<&str>, record: Option<&Marker>, stopped: &[Stopped]) -> String {
    let who = match (&config.release, &config.marker) {
        (Some(release), _) => format!("release {release:?}"),
        (None, Some(name)) => format!("marker {name:?}"),
        (None, None) => "this release".into(),
    };
    if !stopped.is_empty() {
        let list: Vec<&str> = stopped.iter().map(|s| s.workload.as_str()).collect();
        return format!(
            "start the stopped workloads again: CLEANSLATE_NAMESPACE={} CLEANSLATE_QUIESCE={} cleanslate resume \
             (the next successful helm upgrade also restores them)",
            config.namespace,
            list.join(",")
        );
    }
    let Some(record) = record else {
        return match marker {
            Some(name) => format!("marker {name} has no run recorded yet: the cleanup Job has not finished a run"),
            None => format!(
                "no marker found for {who} in namespace {:?}: cleanup is off there, or the release was not installed \
                 with cleanup on",
                config.namespace
            ),
        };
    };
    match (record.status, record.dry_run) {
        (RunStatus::Failed, _) => format!(
            "the cleanup of revision {} failed ({}); fix that, then run helm upgrade again or helm test (which reruns the \
             cleanup); pods of revision {} still start",
            record.revision,
            if record.message.is_empty() { "no message" } else { &record.message },
            record.last_succeeded_revision.map_or_else(|| "none".to_string(), |r| r.to_string()),
        ),
        (RunStatus::Succeeded, true) => {
            format!("the last run (revision {}) was a dry run: nothing was purged", record.revision)
        }
        (RunStatus::Succeeded, false) => "nothing to do: clean and running".to_string(),
    }
}

/// The report as aligned lines for a terminal.
fn table(report: &Report) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("namespace", report.namespace.clone()),
        ("release", report.release.clone().unwrap_or_else(|| "-".into())),
        ("marker", report.marker.clone().unwrap_or_else(|| "not found".into())),
    ];
    match &report.last_run {
        None => rows.push(("last run", "none recorded".into())),
        Some(run) => {
            let dry = if run.dry_run { " (dry run)" } else { "" };
            rows.push((
                "last run",
                format!(
                    "revision {} {}{dry}, attempt {}, finished {} in {} ms",
                    run.revision, run.status, run.attempt, run.finished_at, run.duration_ms
                ),
            ));
            rows.push((
                "purged",
                format!(
                    "{} queues, {} messages (broker's sampled count), {} etcd keys",
                    run.queues_purged, run.messages_purged, run.keys_deleted
                ),
            ));
            if !run.message.is_empty() {
                rows.push(("message", run.message.clone()));
            }
            let last = match run.last_succeeded_revision {
                Some(revision) => format!("revision {revision} at {}", run.last_succeeded_at),
                None => "none".into(),
            };
            rows.push(("last success", last));
        }
    }
    let stopped = if report.stopped_workloads.is_empty() {
        "none".to_string()
    } else {
        let items: Vec<String> = report
            .stopped_workloads
            .iter()
            .map(|s| format!("{} (at {}, recorded {})", s.workload, s.replicas, s.recorded_replicas))
            .collect();
        items.join(", ")
    };
    rows.push(("stopped", stopped));
    rows.push(("next", report.next.clone()));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}
