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
use crate::quiesce::{ANNOTATION, OWNER_ANNOTATION};

/// The whole answer, as `--json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub release: Option<String>,
    pub marker: Option<String>,
    pub last_run: Option<LastRun>,
    pub stopped_workloads: Vec<Stopped>,
    /// Gated workloads of the release that do not have their desired ready replicas, with why.
    pub unready_workloads: Vec<Unready>,
    /// Cleanup is on for the release (its purge Job, or workloads gated on its marker, say so)
    /// but its marker is missing.
    pub marker_missing: bool,
    /// The last run succeeded (not a dry run), nothing is left stopped, and every gated workload
    /// has its desired ready replicas.
    pub clean: bool,
    pub next: String,
}

/// A gated workload short of its desired ready replicas.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unready {
    pub workload: String,
    pub desired: i32,
    pub ready: i32,
    /// What its pods are doing: waiting in the gate (since when), the gate's own failure message,
    /// or not ready for a reason of the app's.
    pub why: String,
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
    /// The run found its trigger unchanged since the last cleaning and did nothing.
    pub unchanged: bool,
    pub keys_seeded: u64,
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
        Some(401) | Some(403) => "; status needs get/list on configmaps, deployments, statefulsets and pods",
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
    let instance_ours = |reference: &crate::config::WorkloadRef, workload: &crate::kube::Workload| {
        let instance = workload.metadata.labels.as_ref().and_then(|l| l.get(marker::INSTANCE_LABEL));
        match &config.release {
            Some(release) => instance == Some(release) || config.workloads.contains(reference),
            None => true,
        }
    };
    let marker_name = marker_object.as_ref().and_then(|cm| cm.metadata.name.clone());
    // The marker the release's gates read: the one found, the one configured, or the one its
    // workloads' gates name (when the marker itself is missing).
    let expected_marker = marker_name.clone().or_else(|| config.marker.clone()).or_else(|| {
        workloads
            .iter()
            .filter(|(reference, workload)| instance_ours(reference, workload))
            .find_map(|(_, workload)| workload.gate.as_ref().map(|g| g.marker.clone()))
    });
    // A workload whose quiesce record names that marker is this release's business too.
    let ours = |reference: &crate::config::WorkloadRef, workload: &crate::kube::Workload| {
        instance_ours(reference, workload)
            || (expected_marker.is_some() && workload.annotation(OWNER_ANNOTATION) == expected_marker.as_deref())
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
    let marker_missing = marker_object.is_none() && expected_marker.is_some();
    let mut unready = Vec::new();
    if let Some(expected) = expected_marker.as_deref() {
        for (reference, workload) in &workloads {
            let gated = workload.gate.as_ref().is_some_and(|g| g.marker == expected);
            let desired = workload.replicas.unwrap_or(1);
            let ready = workload.ready_replicas.unwrap_or(0);
            if gated && !workload.rolled_out() {
                let why = why_unready(kube, namespace, reference, workload).await;
                unready.push(Unready { workload: reference.to_string(), desired, ready, why });
            }
        }
    }
    let clean = record
        .as_ref()
        .is_some_and(|m| m.status == RunStatus::Succeeded && !m.dry_run && m.writers_not_stopped.is_empty())
        && stopped.is_empty()
        && unready.is_empty();
    let facts = Facts {
        marker: marker_name.as_deref(),
        expected_marker: expected_marker.as_deref(),
        record: record.as_ref(),
        stopped: &stopped,
        unready: &unready,
    };
    let next = next_step(config, &facts);
    Ok(Report {
        namespace: namespace.clone(),
        release: config.release.clone(),
        marker: marker_name,
        last_run,
        stopped_workloads: stopped,
        unready_workloads: unready,
        marker_missing,
        clean,
        next,
    })
}

/// Why a gated workload's pods are not ready: the first pod whose gate still waits (and since when),
/// or whose gate failed (with the gate's own message, its termination message), else the app's.
async fn why_unready(
    kube: &KubeClient,
    namespace: &str,
    reference: &crate::config::WorkloadRef,
    workload: &crate::kube::Workload,
) -> String {
    let gate = workload.gate.as_ref().map(|g| g.container.clone()).unwrap_or_default();
    // The scale subresource's selector covers matchExpressions too; an empty one would match every
    // pod of the namespace, other releases' included.
    let selector = match kube.get_scale(namespace, reference).await {
        Ok(Some(scale)) => scale.status.and_then(|s| s.selector).unwrap_or_default(),
        _ => workload.selector.clone(),
    };
    if selector.trim().is_empty() {
        return "its pods cannot be told apart (no selector)".into();
    }
    let pods = match kube.list_pods(namespace, &selector).await {
        Ok(pods) => pods,
        Err(err) => return format!("its pods could not be read ({err})"),
    };
    if pods.is_empty() {
        return "no pod yet".into();
    }
    for pod in &pods {
        let statuses = pod.status.as_ref().and_then(|s| s.init_container_statuses.as_ref());
        let Some(status) = statuses.into_iter().flatten().find(|s| s.name == gate) else { continue };
        let terminated = status
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| status.last_state.as_ref().and_then(|s| s.terminated.as_ref()));
        if let Some(done) = terminated.filter(|t| t.exit_code != 0) {
            let message = done.message.clone().unwrap_or_default();
            return format!(
                "its gate failed (exit {}){}",
                done.exit_code,
                if message.is_empty() { String::new() } else { format!(": {}", message.trim()) }
            );
        }
        if let Some(running) = status.state.as_ref().and_then(|s| s.running.as_ref()) {
            let since = running.started_at.as_ref().map(|t| format!(" since {}", t.0)).unwrap_or_default();
            return format!("waiting in its gate{since} for the marker");
        }
    }
    "its gates passed: not ready for a reason of the app's (kubectl describe)".into()
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
        unchanged: m.unchanged,
        keys_seeded: m.keys_seeded,
    }
}

/// What `next_step` decides from.
struct Facts<'a> {
    marker: Option<&'a str>,
    expected_marker: Option<&'a str>,
    record: Option<&'a Marker>,
    stopped: &'a [Stopped],
    unready: &'a [Unready],
}

/// What to run next, in one sentence, for the most pressing problem: something left stopped, a
/// missing marker, a failed run (a configuration, refusal or credentials failure needs a fixed
/// upgrade; `helm test` would only repeat it), a gated workload that does not come up.
fn next_step(config: &StatusConfig, facts: &Facts) -> String {
    let who = match (&config.release, &config.marker) {
        (Some(release), _) => format!("release {release:?}"),
        (None, Some(name)) => format!("marker {name:?}"),
        (None, None) => "this release".into(),
    };
    let release = config.release.as_deref().unwrap_or("<release>");
    if !facts.stopped.is_empty() {
        let list: Vec<&str> = facts.stopped.iter().map(|s| s.workload.as_str()).collect();
        return format!(
            "start the stopped workloads again: CLEANSLATE_NAMESPACE={} CLEANSLATE_QUIESCE={} cleanslate resume \
             (the next successful helm upgrade also restores them)",
            config.namespace,
            list.join(",")
        );
    }
    if let (None, Some(expected)) = (facts.marker, facts.expected_marker) {
        return format!(
            "the marker ConfigMap {expected} is missing (deleted?), so gated pods that start wait for it: \
             `helm test {release} -n {}` recreates it (or the next helm upgrade does)",
            config.namespace
        );
    }
    let Some(record) = facts.record else {
        return match facts.marker {
            Some(name) => format!("marker {name} has no run recorded yet: the cleanup Job has not finished a run"),
            None => format!(
                "no marker found for {who} in namespace {:?}, and nothing gated on one: cleanup is off there",
                config.namespace
            ),
        };
    };
    if record.status == RunStatus::Failed {
        let message = if record.message.is_empty() { "no message" } else { &record.message };
        let still = record.last_succeeded_revision.map_or_else(|| "none".to_string(), |r| r.to_string());
        return match record.failure_kind.as_str() {
            "configuration" | "refused" | "denied" => format!(
                "the cleanup of revision {} failed in a way no retry changes ({message}): fix the values, the \
                 credentials or the permissions and run helm upgrade (helm test would re-run the same \
                 configuration); pods of revision {still} still start",
                record.revision
            ),
            "quiesce-timeout" => format!(
                "the workloads of revision {} did not stop within the quiesce timeout ({message}): raise \
                 cleanup.quiesce.timeout and upgrade (helm test would time out the same way); they were started again",
                record.revision
            ),
            _ => format!(
                "the cleanup of revision {} failed ({message}); when the cause is gone, run helm test {release} \
                 (it reruns the cleanup) or helm upgrade; pods of revision {still} still start",
                record.revision
            ),
        };
    }
    if !record.writers_not_stopped.is_empty() {
        return format!(
            "the last cleanup (revision {}) could not stop {}, gated on this release's marker (its Role did not name \
             them: rendered without Helm's lookup, or created since): they may have written through the purge; add them \
             to cleanup.quiesce.workloads and upgrade, or run helm test {release} once the next upgrade has named them",
            record.revision, record.writers_not_stopped
        );
    }
    if let Some(first) = facts.unready.first() {
        return format!(
            "{} has {} of {} ready: {}",
            first.workload,
            first.ready,
            first.desired,
            if first.why.contains("failed") || first.why.contains("waiting") {
                format!(
                    "{}; if the gate cannot read the marker, bind its ServiceAccount (gate.serviceAccount)",
                    first.why
                )
            } else {
                first.why.clone()
            }
        );
    }
    if record.dry_run {
        return format!("the last run (revision {}) was a dry run: nothing was purged", record.revision);
    }
    "nothing to do: clean and running".to_string()
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
            let dry = if run.dry_run {
                " (dry run)"
            } else if run.unchanged {
                " (unchanged: the trigger is the last cleaning's, nothing was done)"
            } else {
                ""
            };
            // A scheduled reset's pod is named after its CronJob (`<fullname>-reset-<time>-<id>`).
            let by = if run.job.contains("-reset-") {
                format!(", by the scheduled reset {}", run.job)
            } else if run.job.is_empty() {
                String::new()
            } else {
                format!(", by {}", run.job)
            };
            rows.push((
                "last run",
                format!(
                    "revision {} {}{dry}, attempt {}, finished {} in {} ms{by}",
                    run.revision, run.status, run.attempt, run.finished_at, run.duration_ms
                ),
            ));
            rows.push((
                "purged",
                format!(
                    "{} queues, {} messages (broker's sampled count), {} etcd keys{}",
                    run.queues_purged,
                    run.messages_purged,
                    run.keys_deleted,
                    if run.keys_seeded > 0 { format!(", {} seeded", run.keys_seeded) } else { String::new() }
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
    if !report.unready_workloads.is_empty() {
        let items: Vec<String> = report
            .unready_workloads
            .iter()
            .map(|u| format!("{} ({} of {} ready: {})", u.workload, u.ready, u.desired, u.why))
            .collect();
        rows.push(("not ready", items.join("; ")));
    }
    rows.push(("next", report.next.clone()));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}
