//! Recording a run where gates and operators read it: the marker ConfigMap (optimistic
//! concurrency, never a lower revision) and the attempt number from the run's own Job.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{MARKER_BUDGET, TRIGGER_BUDGET};
use crate::config::{MarkerConfig, RetryPolicy};
use crate::error::{Classified, Kind, classified};
use k8s_openapi::api::core::v1::ConfigMap;

use crate::kube::{JobProgress, KubeClient, KubeError, data_of, new_config_map};
use crate::marker::{self, Marker, RunStatus};
use crate::quiesce;
use crate::retry::{self, Attempt};

/// The marker and its last successful revision, read before the quiesce (retried briefly). A
/// marker that cannot be read fails the run before anything is stopped: without it quiesce cannot
/// tell pods that wait in their gates from pods that ran, and the marker write would fail too.
pub(super) async fn last_cleaned(kube: &KubeClient, settings: &MarkerConfig) -> Result<quiesce::CleanedUpTo> {
    let deadline = Instant::now() + MARKER_BUDGET;
    let what = format!("reading marker {}/{} before the quiesce", settings.namespace, settings.name);
    let policy = RetryPolicy { attempts: 5, backoff: Duration::from_millis(200) };
    let found = retry::run(&policy, deadline, &what, || async {
        kube.get(&settings.namespace, &settings.name).await.map_err(|err| kube_attempt(err, settings))
    })
    .await?;
    Ok(quiesce::CleanedUpTo {
        marker: settings.name.clone(),
        revision: found.and_then(|cm| Marker::from_data(&data_of(&cm))).and_then(|m| m.last_succeeded_revision),
    })
}

/// This pod's Job, when it is named (`CLEANSLATE_JOB_NAME`) and readable within a few seconds.
pub(super) async fn read_job(kube: &KubeClient, settings: &MarkerConfig) -> Option<JobProgress> {
    let job = settings.job_name.as_ref()?;
    match tokio::time::timeout(Duration::from_secs(5), kube.job_progress(&settings.namespace, job)).await {
        Ok(Ok(Some(progress))) => Some(progress),
        Ok(Ok(None)) => {
            warn!(job = %job, namespace = %settings.namespace, "the Job was not found in namespace {}; counting attempts in the marker", settings.namespace);
            None
        }
        Ok(Err(err)) => {
            warn!(job = %job, error = %err, "the Job's status is not readable (the purge Role needs get on it); counting attempts in the marker");
            None
        }
        Err(_) => {
            warn!(job = %job, "the Job's status did not come in time; counting attempts in the marker");
            None
        }
    }
}

/// The record with this pod's attempt number from its Job (read when the run started), and how
/// many attempts the Job makes; a Job that has meanwhile been marked failed (its deadline passed)
/// makes none after this one. Without the Job: the record as it is and `CLEANSLATE_JOB_ATTEMPTS`.
/// Counting only in the marker misses an attempt killed before it wrote (OOM, node loss), and then
/// the last attempt's failure would not be taken as final.
async fn with_job_progress(
    kube: &KubeClient,
    settings: &MarkerConfig,
    record: &Marker,
    at_start: Option<JobProgress>,
) -> (Marker, u32) {
    let mut record = record.clone();
    let Some(start) = at_start else { return (record, settings.job_attempts) };
    record.attempt = start.attempt();
    let mut attempts = start.attempts();
    if record.status == RunStatus::Failed && read_job(kube, settings).await.is_some_and(|now| now.failing) {
        attempts = start.attempt();
    }
    info!(attempt = start.attempt(), attempts, "attempt from the Job's status");
    (record, attempts)
}

/// Records the run in the marker ConfigMap with optimistic concurrency, never lowering the revision,
/// retrying API hiccups within [`MARKER_BUDGET`].
pub(super) async fn write_marker(
    kube: &KubeClient,
    settings: &MarkerConfig,
    record: &Marker,
    job_at_start: Option<JobProgress>,
) -> Result<()> {
    let (record, job_attempts) = &with_job_progress(kube, settings, record, job_at_start).await;
    let job_attempts = *job_attempts;
    let policy = RetryPolicy { attempts: 8, backoff: Duration::from_millis(200) };
    let deadline = Instant::now() + MARKER_BUDGET;
    let what = format!("writing marker {}/{}", settings.namespace, settings.name);
    let newer = std::cell::Cell::new(None);
    let written = retry::run(&policy, deadline, &what, || {
        let newer = &newer;
        async move {
            kube.upsert(&settings.namespace, &settings.name, |current| {
                let existing = current.as_ref().and_then(|cm| Marker::from_data(&data_of(cm)));
                let Some(merged) = marker::merge(existing.as_ref(), record, job_attempts) else {
                    newer.set(existing.map(|m| m.revision));
                    return None;
                };
                let mut object =
                    labelled(current.unwrap_or_else(|| new_config_map(&settings.name, &settings.namespace)), settings);
                object.data = Some(merged.to_data());
                Some(object)
            })
            .await
            .map_err(|err| kube_attempt(err, settings))
        }
    })
    .await?;
    match written {
        Some(_) => {
            info!(marker = %settings.name, namespace = %settings.namespace, revision = record.revision, status = ?record.status, "marker written")
        }
        None => warn!(
            marker = %settings.name,
            revision = record.revision,
            newer_revision = newer.get().unwrap_or_default(),
            "marker holds a newer revision; left unchanged"
        ),
    }
    Ok(())
}

/// The trigger record: a ConfigMap of its own (`CLEANSLATE_TRIGGER_RECORD`), which the chart renders as a
/// plain release resource without data. Helm's three-way merge and server-side apply, and Argo CD's
/// apply, leave the data this binary writes alone, and `helm uninstall` deletes it with the release;
/// the marker cannot hold it, since it is reset on install, and on every Argo CD sync (no `lookup`).
/// Whether `trigger` is the one recorded by the last cleaning of this release, for the revision
/// just before this one or this one: the next deploy of the same build. A rollback in between
/// (whose revision ran an older build without a purge) breaks the chain, and so does a failed run,
/// which clears the record.
pub(super) async fn trigger_unchanged(
    kube: &KubeClient,
    settings: &MarkerConfig,
    name: &str,
    trigger: &str,
) -> Result<bool> {
    let found = kube.get(&settings.namespace, name).await.map_err(|err| {
        anyhow::Error::new(err).context(format!("reading the trigger record {}/{name}", settings.namespace))
    })?;
    let data = found.as_ref().map(data_of).unwrap_or_default();
    let recorded_revision = data.get("revision").and_then(|r| r.parse::<u64>().ok());
    let same_build = data.get("trigger").is_some_and(|t| t == trigger);
    let next_revision = recorded_revision.is_some_and(|r| r == settings.revision || r + 1 == settings.revision);
    if same_build && !next_revision {
        info!(
            trigger,
            recorded_revision = recorded_revision.unwrap_or_default(),
            revision = settings.revision,
            "the trigger was recorded before another revision ran (a rollback): cleaning"
        );
    }
    Ok(same_build && next_revision)
}

/// Records `trigger` for this revision (a cleaning or unchanged run), or clears the record (a failed
/// run). Best effort: a record that cannot be written means the next deploy cleans, which is safe.
pub(super) async fn write_trigger(kube: &KubeClient, settings: &MarkerConfig, name: &str, trigger: Option<&str>) {
    let data: BTreeMap<String, String> = match trigger {
        Some(trigger) => {
            [("trigger".to_string(), trigger.to_string()), ("revision".to_string(), settings.revision.to_string())]
                .into()
        }
        None => BTreeMap::new(),
    };
    // Only updated, never created: the chart creates it with the release, and an object this
    // binary created first (a pre-install Job runs before the release's resources) would make Helm's
    // own create fail. Missing (that first pre-install), the next deploy cleans.
    let write = async {
        match kube.get(&settings.namespace, name).await {
            Ok(Some(mut object)) => {
                object.data = Some(data);
                kube.replace(&settings.namespace, &object).await.map(drop)
            }
            Ok(None) => {
                info!(record = %name, "no trigger record yet (the chart creates it with the release): the next deploy cleans");
                Ok(())
            }
            Err(err) => Err(err),
        }
    };
    // Bounded: the run must end inside the Job's deadline (`AFTER_PURGE_BUDGET`).
    match tokio::time::timeout(TRIGGER_BUDGET, write).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            warn!(record = %name, error = %err, "the trigger record was not written: the next deploy cleans")
        }
        Err(_) => warn!(record = %name, "the trigger record was not written in time: the next deploy cleans"),
    }
}

/// Checks, before anything is stopped or deleted, that this run can record its outcome: a run that
/// purges and cannot write the marker leaves every restarting gated pod waiting for it. The marker
/// is updated in place, or created when it is missing (deleted by hand, by a janitor, by a clean-up
/// of leftovers): both are tried as server-side dry runs, which the API server authorizes like the
/// real write and does not persist. A refusal names the permission and stops the run (exit 79).
pub(super) async fn check_writable(kube: &KubeClient, settings: &MarkerConfig) -> Result<()> {
    let policy = RetryPolicy { attempts: 5, backoff: Duration::from_millis(200) };
    let deadline = Instant::now() + MARKER_BUDGET;
    let what = format!("checking that marker {}/{} can be written", settings.namespace, settings.name);
    let missing = std::cell::Cell::new(false);
    let reading = std::cell::Cell::new(true);
    let checked = retry::run(&policy, deadline, &what, || {
        let (missing, reading) = (&missing, &reading);
        async move {
            reading.set(true);
            let current =
                kube.get(&settings.namespace, &settings.name).await.map_err(|err| kube_attempt(err, settings))?;
            reading.set(false);
            missing.set(current.is_none());
            let object =
                current.unwrap_or_else(|| labelled(new_config_map(&settings.name, &settings.namespace), settings));
            match kube.check_write(&settings.namespace, &object, !missing.get()).await {
                // Authorization comes before the conflict check: a 409 means the write is allowed.
                Err(err) if matches!(err.code(), Some(409)) => Ok(()),
                // Retried for the few seconds the policy allows: a Role the hook created just before
                // this Job can take a moment to apply (the gate does the same).
                Err(err) if matches!(err.code(), Some(401 | 403)) => Err(Attempt::Transient(anyhow::Error::new(err))),
                other => other.map_err(|err| kube_attempt(err, settings)),
            }
        }
    })
    .await;
    match checked {
        Ok(()) => {
            if missing.get() {
                warn!(marker = %settings.name, namespace = %settings.namespace, "the marker is missing: this run creates it");
            }
            Ok(())
        }
        Err(err) if is_forbidden(&err) => {
            let (verb, state) = match (reading.get(), missing.get()) {
                (true, _) => ("get", "cannot be read"),
                (false, true) => ("create", "is missing"),
                (false, false) => ("update", "exists"),
            };
            Err(classified(
                Kind::Denied,
                format!(
                    "the marker ConfigMap {:?} in namespace {:?} {state} and this identity may not {verb} it ({verb} on \
                     configmaps): the run could not record its outcome, so nothing was stopped or deleted; the chart's \
                     purge and test Roles grant it ({err:#})",
                    settings.name, settings.namespace
                ),
            ))
        }
        // The API did not answer in time: the permission could not be checked, which is not a refusal.
        // The run goes on (the marker write retries on its own); a refusal is what this guards.
        Err(err) => {
            warn!(marker = %settings.name, error = %format!("{err:#}"), "could not check that the marker can be written; going on");
            Ok(())
        }
    }
}

fn is_forbidden(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<KubeError>().is_some_and(|e| matches!(e.code(), Some(401 | 403))))
}

/// The marker's labels: cleanslate manages it, for this release, as its marker (what `status` and
/// the chart select it by).
fn labelled(mut object: ConfigMap, settings: &MarkerConfig) -> ConfigMap {
    let labels = object.metadata.labels.get_or_insert_default();
    labels.insert(marker::MANAGED_BY.0.into(), marker::MANAGED_BY.1.into());
    labels.insert(marker::COMPONENT_LABEL.into(), "marker".into());
    if let Some(release) = &settings.release {
        labels.insert(marker::INSTANCE_LABEL.into(), release.clone());
    }
    object
}

/// Sorts a Kubernetes API failure for the retry loop, with an RBAC hint for 401/403.
pub fn kube_attempt(err: KubeError, settings: &MarkerConfig) -> Attempt {
    let code = err.code();
    let transient = err.is_transient();
    let unreachable = matches!(err, KubeError::Transport(_));
    let err = anyhow::Error::new(err);
    match code {
        Some(401) | Some(403) => Attempt::Permanent(err.context(format!(
            "the service account may not read and update ConfigMap {:?} in namespace {:?}: \
             it needs get and update on that name (see the chart's Role)",
            settings.name, settings.namespace
        ))),
        _ if unreachable => {
            Attempt::Transient(err.context(Classified::new(Kind::Unreachable, "Kubernetes API not reachable")))
        }
        _ if transient => Attempt::Transient(err),
        _ => Attempt::Permanent(err),
    }
}
