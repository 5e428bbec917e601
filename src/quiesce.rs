//! Quiesce: stop the listed Deployments and StatefulSets before a purge, wait until their pods are
//! gone, and put them back (`resume`, and the purge's own restore on failure or a signal).
//!
//! The replica count to come back to is recorded **on the workload** (annotation [`ANNOTATION`])
//! before it is scaled to 0, so any later process (the resume hook Job, a rerun, an operator) can
//! restore it, whichever pod or run stopped it. Scaling goes through the `scale` subresource, the
//! way `kubectl scale` and the HPA do, with the workload's `resourceVersion` as a precondition:
//! a concurrent writer makes us read again instead of overwriting it.
//!
//! Waiting is kube-rs's watcher on the pods matching the workload's selector (the selector the
//! `scale` subresource reports): a list, then a watch from the list's version, so the purge starts
//! the moment the last old pod is gone. Pods are gone when they no longer exist, not when they
//! are terminating: a terminating pod may still be writing during its grace period.
//!
//! This module does not decide *when* to stop or restore (that is [`crate::purge`]), and it never
//! touches a workload that is not listed, nor one that is already at 0 without our annotation.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{QuiesceConfig, ResumeConfig, RetryPolicy, WorkloadKind, WorkloadRef};
use crate::error::{Classified, Kind, classified, kind_of};
use futures_util::StreamExt;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::events::Reason;
use crate::kube::{Change, KubeClient, KubeError, Workload};
use crate::retry::{self, Attempt};

/// The annotation that records the replica count a stopped workload goes back to.
pub const ANNOTATION: &str = "cleanslate.io/quiesced-replicas";

/// The annotation that names the marker whose cleanup stopped a workload: `resume` starts every
/// workload stopped for its marker, whatever its own list says (a rollback runs the hooks of an
/// older revision, whose list may not name what a newer one stopped).
pub const OWNER_ANNOTATION: &str = "cleanslate.io/quiesced-for";

/// The annotation that names the run holding a stopped workload (`<job>/<pod>`, or the pod alone):
/// a run that finds a workload stopped by another (an earlier attempt of its Job, a scheduled reset,
/// a pod still terminating while the Job's replacement already runs: Kubernetes before 1.29) takes
/// it over by writing its own name, and a run restores only what it still holds, so the one whose
/// purge is under way never sees it started by another.
pub const RUN_ANNOTATION: &str = "cleanslate.io/quiesced-by";

/// Which quiesce records a restore may act on.
#[derive(Clone, Copy, Debug)]
pub enum Holder<'a> {
    /// Every record (the resume Job, `cleanslate resume`: they run when no purge does).
    Any,
    /// Only what this run holds (its [`RUN_ANNOTATION`] value); a record without one counts.
    Run(&'a str),
    /// What this run holds, and orphans: records whose holder's pod is gone or finished (an
    /// earlier attempt of its Job, a reset killed mid-run). The Job's last word, when no attempt
    /// follows.
    Orphans(&'a str),
}

impl Holder<'_> {
    /// Whether `recorded` (a [`RUN_ANNOTATION`] value) is this holder's without asking whether
    /// its pod still runs.
    fn holds(&self, recorded: &str) -> bool {
        match self {
            Holder::Any => true,
            Holder::Run(run) | Holder::Orphans(run) => recorded == *run,
        }
    }
}

/// How often a run waiting for another cleanup that holds a workload looks again.
const HOLDER_POLL: Duration = Duration::from_secs(1);

/// Whether `a` and `b` are attempts of one Job (`<job>/<pod>…`): a later attempt takes over what an
/// earlier one left at once, since the Job runs one attempt's purge at a time (a pod it replaces
/// was signalled and purges no more).
fn same_job(a: &str, b: &str) -> bool {
    match (a.split_once('/'), b.split_once('/')) {
        (Some((job_a, _)), Some((job_b, _))) => job_a == job_b,
        _ => false,
    }
}

/// Whether the run recorded as `recorded` (`[<job>/]<pod>[@<uid>]`, or `cli:…` for a run outside
/// a pod) still runs; in doubt (a run outside a pod, the pods unreadable) it does, and what it holds
/// is left to it (the resume Job or `cleanslate resume` restore it).
async fn holder_running(kube: &KubeClient, namespace: &str, recorded: &str) -> bool {
    if let Some(rest) = recorded.strip_prefix(crate::config::CLI_RUN_PREFIX) {
        // `cli:<host>:<pid>:<started, unix seconds>`: nothing can see that process; a run by hand
        // that started over `CLI_RUN_LIFETIME` ago has ended.
        let started = rest.rsplit(':').next().and_then(|t| t.parse::<u64>().ok());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        return started.is_none_or(|started| now < started.saturating_add(crate::config::CLI_RUN_LIFETIME.as_secs()));
    }
    let (name, uid) = match recorded.split_once('@') {
        Some((name, uid)) => (name, Some(uid)),
        None => (recorded, None),
    };
    let pod = name.rsplit('/').next().unwrap_or(name);
    let mut last = None;
    for _ in 0..3 {
        match kube.pod_running(namespace, pod, uid).await {
            Ok(running) => return running,
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let err = last.map(|e| e.to_string()).unwrap_or_default();
    warn!(holder = recorded, error = %err, "could not tell whether the run holding it still runs: left to it");
    true
}

/// Time a workload's pods get beyond their own grace period to be gone (the kubelet's kill, the
/// API's deletion): the quiesce waits at least grace period + this.
pub const GRACE_MARGIN: Duration = Duration::from_secs(15);

/// The writers a purge stops, as found in the cluster before it stops any.
#[derive(Clone, Debug)]
pub struct Writers {
    /// The listed workloads, then the live ones gated on the marker that this identity may stop.
    pub config: QuiesceConfig,
    /// Live workloads gated on the marker that this identity may not stop (its Role does not name
    /// them: rendered by a tool without Helm's `lookup`): reported, not stopped.
    pub not_permitted: Vec<WorkloadRef>,
    /// The longest time the workloads to stop may take (`stop_time`: their grace period, one per
    /// replica for an `OrderedReady` StatefulSet).
    pub longest_grace: Option<Duration>,
}

/// The workloads to stop: the listed ones, and with `gated` every Deployment and StatefulSet whose
/// pod template has a gate reading this release's marker: the release's live writers, including an
/// app the new revision removed or renamed (it runs until Helm deletes it after the apply) and a
/// parent chart's own gated Deployment. A gated workload this identity may not read is reported, not
/// stopped. Without the right to list workloads (a Role from before this was added), the listed
/// ones only.
pub async fn writers(kube: &KubeClient, config: &QuiesceConfig) -> Result<Writers> {
    let mut writers = Writers { config: config.clone(), not_permitted: Vec::new(), longest_grace: None };
    let all = match kube.list_workloads(&config.namespace).await {
        Ok(all) => all,
        Err(err) if matches!(err.code(), Some(401 | 403)) => {
            if config.gated {
                warn!(
                    namespace = %config.namespace,
                    error = %err,
                    "cannot list the workloads: only the listed ones are stopped (the Role needs list on deployments and statefulsets)"
                );
            }
            return Ok(writers);
        }
        Err(err) => return Err(anyhow!("listing the workloads in namespace {:?}: {err}", config.namespace)),
    };
    if let Some(marker) = config.marker.as_deref().filter(|_| config.gated) {
        for (reference, workload) in &all {
            let gated_here = workload.gate.as_ref().is_some_and(|g| g.marker == marker);
            if !gated_here || writers.config.workloads.contains(reference) {
                continue;
            }
            match kube.get_workload(&config.namespace, reference).await {
                Err(err) if matches!(err.code(), Some(401 | 403)) => {
                    warn!(
                        workload = %reference,
                        marker,
                        "gated on this release's marker but not named in this Job's Role: not stopped, it may write \
                         through the purge; add it to cleanup.quiesce.workloads (a tool that renders without Helm's \
                         lookup, such as Argo CD, cannot find it for the Role)"
                    );
                    writers.not_permitted.push(reference.clone());
                }
                _ => {
                    info!(workload = %reference, "gated on this release's marker: stopped with the listed workloads");
                    writers.config.workloads.push(reference.clone());
                }
            }
        }
    }
    writers.longest_grace = all
        .iter()
        .filter(|(reference, _)| writers.config.workloads.contains(reference))
        .map(|(reference, workload)| stop_time(reference, workload))
        .max();
    Ok(writers)
}

/// How long a workload's pods may take to stop: their grace period (Kubernetes' default, 30 s, when
/// unset), and for an `OrderedReady` StatefulSet one grace period per replica, since its controller
/// stops them one at a time.
fn stop_time(reference: &WorkloadRef, workload: &Workload) -> Duration {
    let grace = Duration::from_secs(workload.grace_period_seconds.unwrap_or(30).max(0) as u64);
    let ordered = reference.kind == WorkloadKind::StatefulSet
        && workload.pod_management_policy.as_deref().unwrap_or("OrderedReady") == "OrderedReady";
    if ordered { grace * workload.replicas.unwrap_or(1).max(1) as u32 } else { grace }
}

/// API calls are retried briefly: the API server restarts, the run's deadline bounds the rest.
const API_RETRY: RetryPolicy = RetryPolicy { attempts: 5, backoff: Duration::from_millis(200) };
/// Pause after a failed list or watch before trying again.
const WATCH_PAUSE: Duration = Duration::from_millis(200);

/// The marker a purge writes and the last revision it records as cleaned (`None`: none yet).
#[derive(Clone, Debug)]
pub struct CleanedUpTo {
    pub marker: String,
    pub revision: Option<u64>,
}

/// What a stop has done so far, kept outside the stopping future so that a timeout or a signal,
/// which drop that future, still knows what to restore and which pods were left.
#[derive(Default)]
pub struct Progress {
    inner: RefCell<ProgressInner>,
}

#[derive(Default)]
struct ProgressInner {
    /// Workloads this run may have scaled down, with the count recorded for them, in order.
    stopped: Vec<(WorkloadRef, i32)>,
    /// Pods still present, per workload being waited for.
    remaining: BTreeMap<WorkloadRef, BTreeSet<String>>,
    /// How long this run's quiesce may wait (its grace periods, within the deadline), once known.
    wait: Option<Duration>,
}

impl Progress {
    /// Records how long the quiesce may wait; a next attempt asks as much of the Job's deadline.
    pub fn set_wait(&self, wait: Duration) {
        self.inner.borrow_mut().wait = Some(wait);
    }

    /// How long the quiesce may wait, once known.
    pub fn wait(&self) -> Option<Duration> {
        self.inner.borrow().wait
    }

    fn mark_stopped(&self, workload: &WorkloadRef, replicas: i32) {
        let mut inner = self.inner.borrow_mut();
        if !inner.stopped.iter().any(|(w, _)| w == workload) {
            inner.stopped.push((workload.clone(), replicas));
        }
    }

    fn set_remaining(&self, workload: &WorkloadRef, pods: &BTreeSet<String>) {
        self.inner.borrow_mut().remaining.insert(workload.clone(), pods.clone());
    }

    /// The workloads this run may have stopped, in the order it stopped them.
    pub fn stopped(&self) -> Vec<WorkloadRef> {
        self.inner.borrow().stopped.iter().map(|(w, _)| w.clone()).collect()
    }

    /// The error for a stop that ran out of time, naming the pods that were still there.
    pub fn timeout_error(&self, timeout: Duration) -> anyhow::Error {
        let inner = self.inner.borrow();
        let left: Vec<String> = inner
            .remaining
            .iter()
            .filter(|(_, pods)| !pods.is_empty())
            .map(|(workload, pods)| format!("{workload}: {}", pods.iter().cloned().collect::<Vec<_>>().join(", ")))
            .collect();
        let what = if left.is_empty() {
            "the workloads were not scaled down in time".to_string()
        } else {
            format!("pods still present: {}", left.join("; "))
        };
        classified(
            Kind::QuiesceTimeout,
            format!(
                "quiesce did not finish within {} (CLEANSLATE_QUIESCE_TIMEOUT, at least the workloads' grace period \
                 plus 15 s): {what}; not retried, a retry would stop them again",
                humantime::format_duration(timeout)
            ),
        )
    }
}

/// Stops every listed workload and waits until their pods are gone. Unbounded on its own: the
/// caller applies the quiesce timeout and, when it fires, reads [`Progress`].
///
/// `cleaned_up_to`: this run's marker and its last successful revision, when there is a marker: a
/// workload whose every pod still waits in a gate on that marker for a later revision is not
/// stopped, because it has run nothing and cannot until this purge has written the marker (a first
/// install with post-install hooks: the Deployments exist, their pods wait in their gates).
pub async fn stop(
    kube: &KubeClient,
    config: &QuiesceConfig,
    cleaned_up_to: Option<CleanedUpTo>,
    progress: &Progress,
) -> Result<()> {
    // The retry budget of one call; the caller's timeout is the real bound.
    let deadline = Instant::now() + config.timeout;
    refuse_volume_loss(kube, config, deadline).await?;
    let mut waits = Vec::new();
    for workload in &config.workloads {
        if let Some((selector, ordered)) =
            stop_one(kube, config, workload, cleaned_up_to.as_ref(), deadline, progress).await?
        {
            waits.push(wait_gone(kube, &config.namespace, workload, selector, ordered, progress));
        }
    }
    // Every workload is scaled down before waiting, so their pods shut down side by side.
    futures_util::future::try_join_all(waits).await?;
    Ok(())
}

/// ` of revision N` when the revision is known, for Event notes.
fn of_revision(revision: Option<u64>) -> String {
    revision.map(|r| format!(" of revision {r}")).unwrap_or_default()
}

/// Hands `spec.replicas` back when a scale write of ours made us its owner (see
/// [`KubeClient::give_up_replicas`]): `true` when it wrote (or met a conflict), so the caller reads
/// again before going on. Checked on every read, so a hand-back lost to a retry, a timeout or a
/// signal is made up for by the next pass, the next run, or `resume`.
async fn give_up_replicas(
    kube: &KubeClient,
    namespace: &str,
    workload: &WorkloadRef,
    current: &Workload,
    deadline: Instant,
) -> Result<bool> {
    if !current.replicas_owned_by_us() {
        return Ok(false);
    }
    let what = format!("giving up ownership of spec.replicas of {workload}");
    call(&what, workload, deadline, || kube.give_up_replicas(namespace, workload, current)).await?;
    Ok(true)
}

/// What a stop would do, for `plan` and dry runs: reads each workload (nothing is written) and says
/// which would be stopped from how many replicas, which are missing or already at 0. A StatefulSet
/// that a quiesce would refuse is refused here too. Returns those it would stop, with their counts.
pub async fn preview(kube: &KubeClient, config: &QuiesceConfig) -> Result<Vec<String>> {
    let deadline = Instant::now() + config.timeout;
    let writers = writers(kube, config).await?;
    let config = &writers.config;
    refuse_volume_loss(kube, config, deadline).await?;
    let mut would_stop = Vec::new();
    for workload in &config.workloads {
        let what = format!("reading {workload}");
        let current = call(&what, workload, deadline, || kube.get_workload(&config.namespace, workload)).await?;
        match current.flatten() {
            None => info!(
                workload = %workload,
                namespace = %config.namespace,
                "would skip: not found in namespace {}",
                config.namespace
            ),
            Some(current) => match (current.replicas.unwrap_or(1), current.annotation(ANNOTATION)) {
                (0, Some(recorded)) => {
                    info!(workload = %workload, recorded_replicas = recorded, "already stopped by an earlier run; would wait for its pods")
                }
                (0, None) => info!(workload = %workload, "would skip: already at 0 replicas"),
                (replicas, _) => {
                    info!(workload = %workload, replicas, "would stop before purging (quiesce)");
                    would_stop.push(format!("{workload} ({replicas})"));
                }
            },
        }
    }
    Ok(would_stop)
}

/// Refuses, before anything is stopped, a StatefulSet whose claims a scale-down deletes
/// (`persistentVolumeClaimRetentionPolicy.whenScaled: Delete`,
/// <https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/#persistentvolumeclaim-retention>):
/// every quiesce would delete its volumes, which is not a cleanup anyone asked for.
async fn refuse_volume_loss(kube: &KubeClient, config: &QuiesceConfig, deadline: Instant) -> Result<()> {
    for workload in config.workloads.iter().filter(|w| w.kind == WorkloadKind::StatefulSet) {
        let what = format!("reading {workload}");
        let Some(Some(current)) =
            call(&what, workload, deadline, || kube.get_workload(&config.namespace, workload)).await?
        else {
            continue;
        };
        if current.pvc_when_scaled.as_deref() == Some("Delete") {
            return Err(classified(
                Kind::Refused,
                format!(
                    "{workload} has spec.persistentVolumeClaimRetentionPolicy.whenScaled: Delete, so scaling it to 0 \
                     would delete its PersistentVolumeClaims and their data; nothing was stopped or purged. Set \
                     whenScaled: Retain, or leave it out of CLEANSLATE_QUIESCE (cleanup.quiesce)"
                ),
            ));
        }
    }
    Ok(())
}

/// Records the count and scales one workload to 0; returns its pod selector, or `None` when it was
/// skipped (missing, or already at 0 without our annotation).
async fn stop_one(
    kube: &KubeClient,
    config: &QuiesceConfig,
    workload: &WorkloadRef,
    cleaned_up_to: Option<&CleanedUpTo>,
    deadline: Instant,
    progress: &Progress,
) -> Result<Option<(String, bool)>> {
    let namespace = config.namespace.as_str();
    loop {
        let what = format!("reading {workload}");
        let Some(current) = call(&what, workload, deadline, || kube.get_workload(namespace, workload)).await? else {
            info!(workload = %workload, namespace, "workload not found in namespace {namespace}, nothing to stop (first install, or not deployed yet)");
            return Ok(None);
        };
        let current = current.ok_or_else(|| anyhow!("{what}: conflict on a read"))?;
        if give_up_replicas(kube, namespace, workload, &current, deadline).await? {
            continue;
        }
        let replicas = current.replicas.unwrap_or(1);
        let ordered = workload.kind == WorkloadKind::StatefulSet
            && current.pod_management_policy.as_deref().unwrap_or("OrderedReady") == "OrderedReady";
        let resource_version = current.metadata.resource_version.clone().unwrap_or_default();
        let recorded = current.annotation(ANNOTATION).map(str::to_string);
        if replicas == 0 {
            let Some(text) = recorded else {
                info!(workload = %workload, "workload already at 0 replicas, skipped");
                return Ok(None);
            };
            // Stopped by an earlier run that did not get to restore it: its record is the truth.
            let count = parse_recorded(workload, &text)?;
            if let (Some(ours), Some(theirs)) = (config.marker.as_deref(), current.annotation(OWNER_ANNOTATION))
                && ours != theirs
            {
                // Another release's cleanup stopped it: its run or resume starts it, not this one.
                info!(workload = %workload, stopped_for = theirs, "stopped for another release's cleanup: left to it");
                return Ok(None);
            }
            let holder = current.annotation(RUN_ANNOTATION).map(str::to_string);
            if let (Some(run), Some(other)) = (config.run.as_deref(), holder.as_deref())
                && other != run
                && !same_job(run, other)
                && holder_running(kube, namespace, other).await
            {
                // Another cleanup (a scheduled reset, `helm test`, another deploy) holds it and may
                // be purging now: taking it over would let that run start it again when it ends,
                // in the middle of this run's purge. Wait for it to end, then read again.
                if Instant::now() + HOLDER_POLL + Duration::from_secs(2) >= deadline {
                    return Err(classified(
                        Kind::Failed,
                        format!(
                            "{workload} is held by {other}, a cleanup still under way (a scheduled reset, helm test, \
                             another deploy); nothing was purged, and a retry waits for it again"
                        ),
                    ));
                }
                info!(workload = %workload, held_by = other, "held by a cleanup still under way: waiting for it to end");
                tokio::time::sleep(HOLDER_POLL).await;
                continue;
            }
            if let Some(run) = config.run.as_deref()
                && holder.as_deref() != Some(run)
            {
                // Taken over: the run that stopped it (if still alive) leaves it to this one.
                let claim = [(RUN_ANNOTATION, Some(run))];
                let claimed = call(&format!("taking over {workload}"), workload, deadline, || {
                    kube.annotate_workload(namespace, workload, &claim, &resource_version)
                })
                .await?;
                if !matches!(claimed, Some(Some(_))) {
                    continue;
                }
            }
            progress.mark_stopped(workload, count);
            if holder.is_none() || holder != config.run {
                info!(
                    workload = %workload,
                    recorded_replicas = count,
                    stopped_by = holder.as_deref().unwrap_or("an earlier run"),
                    "workload already stopped by an earlier run: taken over"
                );
            }
            let scale = call(&format!("reading the scale of {workload}"), workload, deadline, || {
                kube.get_scale(namespace, workload)
            })
            .await?
            .flatten();
            let Some(scale) = scale else { return Ok(None) };
            return selector_of(workload, &scale).map(|selector| Some((selector, ordered)));
        }
        if let Some(cleaned_up_to) = cleaned_up_to
            && waits_in_its_gates(kube, namespace, workload, &current, cleaned_up_to, deadline).await?
        {
            info!(
                workload = %workload,
                gate_revision = current.gate.as_ref().map(|g| g.revision).unwrap_or_default(),
                "every pod still waits in its gate for this cleanup: nothing ran, nothing to stop"
            );
            return Ok(None);
        }
        // Recorded before the write: if this run is stopped mid-way, restore looks at it.
        progress.mark_stopped(workload, replicas);
        let value = replicas.to_string();
        let mut record = vec![(ANNOTATION, Some(value.as_str()))];
        if let Some(marker) = config.marker.as_deref() {
            record.push((OWNER_ANNOTATION, Some(marker)));
        }
        if let Some(run) = config.run.as_deref() {
            record.push((RUN_ANNOTATION, Some(run)));
        }
        let annotated = call(&format!("recording the replicas of {workload}"), workload, deadline, || {
            kube.annotate_workload(namespace, workload, &record, &resource_version)
        })
        .await?;
        let Some(Some(annotated)) = annotated else {
            // Someone changed the workload since it was read (or it was deleted): read again.
            continue;
        };
        let scale = scale_to(namespace, workload, 0, annotated.metadata.resource_version.clone());
        let scaled = call(&format!("scaling {workload} to 0"), workload, deadline, || {
            kube.replace_scale(namespace, workload, &scale)
        })
        .await?;
        match scaled {
            Some(Some(scaled)) => {
                info!(workload = %workload, recorded_replicas = replicas, "scaled to 0 replicas");
                let events = kube.events();
                let note =
                    format!("stopped for the cleanup{}: {replicas} → 0 replicas", of_revision(events.revision()));
                events
                    .on_workload(namespace, workload, current.metadata.uid.clone(), Reason::StoppedForCleanup, note)
                    .await;
                return selector_of(workload, &scaled).map(|selector| Some((selector, ordered)));
            }
            // Changed between our two writes: read again; the annotation we wrote is seen then.
            _ => continue,
        }
    }
}

/// The `Scale` to PUT for `replicas`, conditional on `resource_version`: a concurrent change gets 409.
fn scale_to(namespace: &str, workload: &WorkloadRef, replicas: i32, resource_version: Option<String>) -> Scale {
    Scale {
        metadata: ObjectMeta {
            name: Some(workload.name.clone()),
            namespace: Some(namespace.to_string()),
            resource_version,
            ..Default::default()
        },
        spec: Some(ScaleSpec { replicas: Some(replicas) }),
        status: None,
    }
}

fn selector_of(workload: &WorkloadRef, scale: &Scale) -> Result<String> {
    let selector = scale.status.as_ref().and_then(|s| s.selector.as_deref()).unwrap_or_default().trim().to_string();
    // An empty selector would match every pod in the namespace, this Job's own included.
    if selector.is_empty() {
        return Err(anyhow!(
            "{workload}: its scale subresource reports no pod selector; cannot tell which pods are its own"
        ));
    }
    Ok(selector)
}

fn parse_recorded(workload: &WorkloadRef, text: &str) -> Result<i32> {
    text.trim().parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        anyhow!(
            "{workload} carries {ANNOTATION}={text:?}, which is not a replica count; scale it by hand and remove the annotation"
        )
    })
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Whether `pod` is one the workload runs and that has not finished: only those go away when the
/// workload is scaled to 0. A pod that succeeded or failed (evicted, OOM-killed, a completed Job pod
/// with the same labels) stays until garbage-collected, possibly for ever; a pod owned by something
/// else (a Job, another ReplicaSet, our own purge pod matching a broad selector) is not stopped by
/// this scale. Terminating pods (with a `deletionTimestamp`) still run their shutdown: they count.
/// A Deployment's pods are owned by its ReplicaSets, named `<deployment>-<pod-template-hash>`.
pub fn holds(pod: &Pod, workload: &WorkloadRef) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    pod.metadata.owner_references.iter().flatten().any(|owner| {
        let name = owner.name.as_str();
        match (workload.kind, owner.kind.as_str()) {
            (WorkloadKind::StatefulSet, "StatefulSet") => name == workload.name,
            (WorkloadKind::Deployment, "ReplicaSet") => name
                .strip_prefix(workload.name.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|hash| !hash.is_empty() && hash.chars().all(|c| c.is_ascii_alphanumeric())),
            _ => false,
        }
    })
}

/// Whether every pod of `workload` waits in a cleanslate gate that cannot pass before this purge
/// writes the marker: its template's gate reads this marker (`cleaned_up_to.marker`), waits for a
/// revision above the last cleaned one and does not proceed on a timeout; each of its pods has such
/// a gate, still running, and has never started a main container. Anything else is stopped as usual.
async fn waits_in_its_gates(
    kube: &KubeClient,
    namespace: &str,
    workload: &WorkloadRef,
    current: &Workload,
    cleaned_up_to: &CleanedUpTo,
    deadline: Instant,
) -> Result<bool> {
    let blocked = |gate: Option<&crate::kube::Gate>| {
        gate.is_some_and(|g| {
            g.marker == cleaned_up_to.marker
                && !g.proceeds_on_timeout
                && cleaned_up_to.revision.is_none_or(|done| g.revision > done)
        })
    };
    if !blocked(current.gate.as_ref()) {
        return Ok(false);
    }
    let Some(scale) =
        call(&format!("reading the scale of {workload}"), workload, deadline, || kube.get_scale(namespace, workload))
            .await?
            .flatten()
    else {
        return Ok(false);
    };
    let selector = selector_of(workload, &scale)?;
    let pods = call(&format!("listing the pods of {workload}"), workload, deadline, || async {
        kube.list_pods(namespace, &selector).await.map(Some)
    })
    .await?
    .flatten()
    .unwrap_or_default();
    Ok(pods.iter().filter(|pod| holds(pod, workload)).all(|pod| {
        let gate = pod.spec.as_ref().and_then(crate::kube::gate_of);
        blocked(gate.as_ref()) && gate.is_some_and(|g| !gate_finished(pod, &g.container)) && !has_run(pod)
    }))
}

/// Whether the pod's gate container has finished (exited, passed or not), or the pod's init
/// containers are all done: its main containers may start at any moment.
fn gate_finished(pod: &Pod, container: &str) -> bool {
    let Some(status) = pod.status.as_ref() else { return false };
    let initialized = status.conditions.iter().flatten().any(|c| c.type_ == "Initialized" && c.status == "True");
    let gate_done = status.init_container_statuses.iter().flatten().any(|s| {
        s.name == container
            && (s.state.as_ref().is_some_and(|st| st.terminated.is_some())
                || s.last_state.as_ref().is_some_and(|st| st.terminated.is_some()))
    });
    initialized || gate_done
}

/// Whether a main container of the pod, or a native sidecar, has ever started (running, finished,
/// or restarted). A native sidecar is an init container with `restartPolicy: Always` (Kubernetes
/// 1.29+ by default): the kubelet starts it before the next init container and keeps it running
/// beside them, so one placed before the gate runs, and may write, while the gate still waits
/// (<https://kubernetes.io/docs/concepts/workloads/pods/sidecar-containers/>).
fn has_run(pod: &Pod) -> bool {
    let started = |status: &k8s_openapi::api::core::v1::ContainerStatus| {
        let state = status.state.as_ref();
        status.started == Some(true)
            || status.restart_count > 0
            || state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            || status.last_state.as_ref().is_some_and(|s| s.terminated.is_some() || s.running.is_some())
    };
    let sidecars: BTreeSet<&str> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let status = pod.status.as_ref();
    let main = status.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten();
    let sidecar_statuses = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|s| sidecars.contains(s.name.as_str()));
    main.chain(sidecar_statuses).any(started)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A StatefulSet pod's ordinal: the number after the last `-` of its name.
fn ordinal(pod: &Pod) -> Option<u64> {
    pod.metadata.name.as_deref()?.rsplit_once('-')?.1.parse().ok()
}

/// The pod that stalls an `OrderedReady` StatefulSet's scale-down, if one does. Its controller
/// (`processCondemned` in `pkg/controller/statefulset/stateful_set_control.go`) removes pods from
/// the highest ordinal, one at a time, after the previous one is gone, and blocks while that pod is
/// not Running and Ready unless it is the lowest-ordinal unhealthy pod: one unhealthy pod does not
/// stall it, two do, for ever (REFERENCES §6.5). That blocking pod is the answer.
fn stalling_pod(pods: &BTreeMap<String, Pod>) -> Option<&Pod> {
    if pods.values().any(|pod| pod.metadata.deletion_timestamp.is_some()) {
        return None;
    }
    let mut by_ordinal: Vec<(u64, &Pod)> = pods.values().filter_map(|pod| Some((ordinal(pod)?, pod))).collect();
    by_ordinal.sort_by_key(|(ordinal, _)| *ordinal);
    let (_, target) = *by_ordinal.last()?;
    let (_, first_unhealthy) = *by_ordinal.iter().find(|(_, pod)| !is_ready(pod))?;
    (!is_ready(target) && !std::ptr::eq(target, first_unhealthy)).then_some(target)
}

/// Deletes (gracefully, as the controller would, with its uid as a precondition) the pod that
/// stalls an `OrderedReady` StatefulSet's scale to 0, after checking that the set is still at 0
/// (nothing recreates a pod then). A failed delete is only logged: the wait's timeout names what
/// is left.
async fn unblock(kube: &KubeClient, namespace: &str, workload: &WorkloadRef, pod: &Pod) {
    let at_zero = matches!(kube.get_workload(namespace, workload).await, Ok(Some(w)) if w.replicas == Some(0));
    if !at_zero {
        return;
    }
    let (name, uid) = (pod_name(pod), pod.metadata.uid.clone().unwrap_or_default());
    match kube.delete_pod(namespace, &name, &uid).await {
        Ok(()) => {
            info!(workload = %workload, pod = %name, "deleted an unhealthy pod that stalls the ordered scale-down")
        }
        Err(err) => warn!(workload = %workload, pod = %name, error = %err, "could not delete an unhealthy pod"),
    }
}

/// Watches the pods of one workload until none of its own is left; for an `OrderedReady`
/// StatefulSet (`ordered`), deletes the unhealthy pod that would stall its scale-down for ever.
async fn wait_gone(
    kube: &KubeClient,
    namespace: &str,
    workload: &WorkloadRef,
    selector: String,
    ordered: bool,
    progress: &Progress,
) -> Result<()> {
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    let mut listed = false;
    let mut unblocked: BTreeSet<String> = BTreeSet::new();
    let mut changes = std::pin::pin!(kube.watch_pods(namespace, &selector));
    while let Some(change) = changes.next().await {
        match change {
            Ok(Change::Listed(items)) => {
                listed = true;
                pods = items.into_iter().filter(|pod| holds(pod, workload)).map(|pod| (pod_name(&pod), pod)).collect();
                if !pods.is_empty() {
                    info!(workload = %workload, pods = %pods.keys().cloned().collect::<Vec<_>>().join(", "), "waiting for pods to go away");
                }
            }
            Ok(Change::Applied(pod)) if holds(&pod, workload) => {
                pods.insert(pod_name(&pod), pod);
            }
            // Finished (an evicted or completed pod stays until garbage-collected) or not the
            // workload's own: nothing to wait for.
            Ok(Change::Applied(pod)) => {
                pods.remove(&pod_name(&pod));
            }
            Ok(Change::Deleted(pod)) => {
                let name = pod_name(&pod);
                if pods.remove(&name).is_some() {
                    info!(workload = %workload, pod = %name, "pod gone");
                }
            }
            Err(err) if err.code() == Some(410) => continue,
            Err(err) if !err.is_transient() => return Err(permanent(err, workload, "watching the pods of")),
            Err(err) => {
                warn!(workload = %workload, error = %err, "pods not watchable yet, retrying");
                tokio::time::sleep(WATCH_PAUSE).await;
                continue;
            }
        }
        progress.set_remaining(workload, &pods.keys().cloned().collect());
        if listed && pods.is_empty() {
            info!(workload = %workload, "all pods gone");
            return Ok(());
        }
        if ordered
            && listed
            && let Some(stalling) = stalling_pod(&pods)
            && unblocked.insert(stalling.metadata.uid.clone().unwrap_or_default())
        {
            unblock(kube, namespace, workload, stalling).await;
        }
    }
    Err(anyhow!("the watch of the pods of {workload} ended"))
}

/// One workload's state after a restore or resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// Scaled from 0 back to the recorded count; annotation removed.
    Scaled(i32),
    /// Already running again (Helm restored a manifest's `replicas`); only the annotation removed.
    AlreadyRunning(i32),
    /// Not stopped by cleanslate (no annotation): left alone.
    NotStopped,
    /// Stopped, and held by another run that still runs (the value of its record): left to it.
    HeldBy(String),
    /// The workload does not exist.
    Missing,
}

/// Scales one workload that carries [`ANNOTATION`] back to its recorded count (if still at 0) and
/// removes the annotation. Idempotent: a second call finds nothing to do.
pub async fn resume_one(
    kube: &KubeClient,
    namespace: &str,
    workload: &WorkloadRef,
    marker: Option<&str>,
    holder: Holder<'_>,
    deadline: Instant,
) -> Result<Resumed> {
    let mut scaled_to = None;
    loop {
        let what = format!("reading {workload}");
        let Some(current) = call(&what, workload, deadline, || kube.get_workload(namespace, workload)).await? else {
            return Ok(Resumed::Missing);
        };
        let current: Workload = current.ok_or_else(|| anyhow!("{what}: conflict on a read"))?;
        if give_up_replicas(kube, namespace, workload, &current, deadline).await? {
            continue;
        }
        let Some(text) = current.annotation(ANNOTATION).map(str::to_string) else {
            return Ok(match scaled_to {
                Some(count) => Resumed::Scaled(count),
                None => Resumed::NotStopped,
            });
        };
        // Stopped for another release's cleanup (its marker): that release's run or resume starts it.
        if let (Some(ours), Some(theirs)) = (marker, current.annotation(OWNER_ANNOTATION))
            && ours != theirs
        {
            info!(workload = %workload, stopped_for = theirs, "stopped for another release's cleanup: left to it");
            return Ok(Resumed::NotStopped);
        }
        // Taken over by another run (a retry, a concurrent reset) whose purge may be under way: the
        // scale below is conditional on this read, so a takeover after it gets 409 and is seen here.
        if let Some(recorded) = current.annotation(RUN_ANNOTATION)
            && !holder.holds(recorded)
        {
            let orphan = matches!(holder, Holder::Orphans(_)) && !holder_running(kube, namespace, recorded).await;
            if !orphan {
                info!(workload = %workload, held_by = recorded, "taken over by another run: left to it");
                return Ok(match scaled_to {
                    Some(count) => Resumed::Scaled(count),
                    None => Resumed::HeldBy(recorded.to_string()),
                });
            }
            info!(workload = %workload, held_by = recorded, "the run holding it has ended: restored");
        }
        let recorded = parse_recorded(workload, &text)?;
        let replicas = current.replicas.unwrap_or(1);
        let resource_version = current.metadata.resource_version.clone();
        if replicas == 0 && recorded > 0 {
            let scale = scale_to(namespace, workload, recorded, resource_version.clone());
            let scaled = call(&format!("scaling {workload} to {recorded}"), workload, deadline, || {
                kube.replace_scale(namespace, workload, &scale)
            })
            .await?;
            if let Some(Some(_)) = scaled {
                scaled_to = Some(recorded);
                let note = format!("started again after the cleanup: 0 → {recorded} replicas");
                kube.events()
                    .on_workload(namespace, workload, current.metadata.uid.clone(), Reason::StartedAfterCleanup, note)
                    .await;
            }
            // Read again: the write made us owner of spec.replicas, which is given up first.
            continue;
        }
        let rv = resource_version.unwrap_or_default();
        let removed = call(&format!("removing {ANNOTATION} from {workload}"), workload, deadline, || {
            kube.annotate_workload(
                namespace,
                workload,
                &[(ANNOTATION, None), (OWNER_ANNOTATION, None), (RUN_ANNOTATION, None)],
                &rv,
            )
        })
        .await?;
        match removed {
            Some(Some(_)) => {
                return Ok(match scaled_to {
                    Some(count) => Resumed::Scaled(count),
                    None => Resumed::AlreadyRunning(replicas),
                });
            }
            _ => continue,
        }
    }
}

/// What a restore did, for the log, the error and the marker.
#[derive(Debug, Default)]
pub struct Restore {
    /// Workloads running again, with their replica count.
    pub restored: Vec<(WorkloadRef, i32)>,
    /// Workloads that could not be restored, with why.
    pub failed: Vec<(WorkloadRef, String)>,
    /// Workloads left stopped for another run that holds them and still runs, with its name.
    pub held: Vec<(WorkloadRef, String)>,
    /// The most telling kind among the failures.
    pub kind: Kind,
}

impl Restore {
    /// `restored deployment/a (2 replicas), statefulset/b (1 replica)`; empty when nothing was.
    pub fn describe_restored(&self) -> String {
        if self.restored.is_empty() {
            return String::new();
        }
        let names: Vec<String> =
            self.restored.iter().map(|(w, n)| format!("{w} ({n} replica{})", if *n == 1 { "" } else { "s" })).collect();
        format!("restored {}", names.join(", "))
    }

    /// `left deployment/a stopped for the run holding it (…), which restores it`; empty when none.
    pub fn describe_held(&self) -> String {
        if self.held.is_empty() {
            return String::new();
        }
        let names: Vec<String> = self.held.iter().map(|(w, run)| format!("{w} (held by {run})")).collect();
        format!(
            "left stopped for the runs that hold them and still run, which restore them (or `cleanslate resume`): {}",
            names.join(", ")
        )
    }

    /// Everything there is to say, one line each: what was restored, what is left to the runs
    /// holding it, what could not be restored.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![self.describe_restored(), self.describe_held()];
        lines.extend(self.describe_failed());
        lines.retain(|line| !line.is_empty());
        lines
    }

    /// One line per workload left stopped, with how to fix it by hand.
    pub fn describe_failed(&self) -> Vec<String> {
        self.failed
            .iter()
            .map(|(w, why)| format!("could not restore {w}: {why} (run `cleanslate resume` or scale it back by hand)"))
            .collect()
    }
}

/// Puts `workloads` back to their recorded counts, each on its own, within `deadline`: those this
/// run holds, and with `orphans` also those held by runs that have ended ([`QuiesceConfig::holder`]).
pub async fn restore(
    kube: &KubeClient,
    settings: &QuiesceConfig,
    workloads: &[WorkloadRef],
    orphans: bool,
    deadline: Instant,
) -> Restore {
    let (namespace, marker, holder) = (&settings.namespace, settings.marker.as_deref(), settings.holder(orphans));
    let mut report = Restore::default();
    for workload in workloads {
        let outcome =
            tokio::time::timeout_at(deadline, resume_one(kube, namespace, workload, marker, holder, deadline)).await;
        match outcome {
            Ok(Ok(Resumed::Scaled(count) | Resumed::AlreadyRunning(count))) => {
                info!(workload = %workload, replicas = count, "workload restored");
                report.restored.push((workload.clone(), count));
            }
            Ok(Ok(Resumed::HeldBy(run))) => report.held.push((workload.clone(), run)),
            Ok(Ok(Resumed::NotStopped | Resumed::Missing)) => {
                info!(workload = %workload, "workload was not stopped, nothing to restore");
            }
            Ok(Err(err)) => {
                error!(workload = %workload, error = %format!("{err:#}"), "workload not restored");
                report.kind = report.kind.worst(kind_of(&err));
                report.failed.push((workload.clone(), format!("{err:#}")));
            }
            Err(_) => {
                error!(workload = %workload, "workload not restored before the deadline");
                report.kind = report.kind.worst(Kind::Deadline);
                report.failed.push((workload.clone(), "deadline reached".into()));
            }
        }
    }
    report
}

/// `cleanslate resume`: every listed workload still at 0 with the annotation goes back to its
/// recorded count, and the annotation is removed. Exit 0 when there is nothing to do.
pub async fn run(config: &ResumeConfig) -> Result<()> {
    let settings = &config.quiesce;
    let kube = KubeClient::new(&settings.kube).await?;
    let deadline = Instant::now() + config.timeout;
    let started = std::time::Instant::now();
    let workloads = stopped_for(&kube, settings).await?;
    info!(namespace = %settings.namespace, workloads = workloads.len(), "resume started");
    let mut resumed = Vec::new();
    let mut failures = Vec::new();
    let mut kind = Kind::Failed;
    for workload in &workloads {
        let outcome = tokio::time::timeout_at(
            deadline,
            resume_one(&kube, &settings.namespace, workload, settings.marker.as_deref(), Holder::Any, deadline),
        )
        .await;
        match outcome {
            Ok(Ok(Resumed::Scaled(count))) => {
                info!(workload = %workload, replicas = count, "scaled back to the recorded count");
                resumed.push(workload.to_string());
            }
            Ok(Ok(Resumed::AlreadyRunning(count))) => {
                info!(workload = %workload, replicas = count, "already running again; annotation removed");
            }
            Ok(Ok(Resumed::NotStopped | Resumed::HeldBy(_))) => {
                info!(workload = %workload, "not stopped by cleanslate, nothing to do")
            }
            Ok(Ok(Resumed::Missing)) => info!(
                workload = %workload,
                namespace = %settings.namespace,
                "workload not found in namespace {}, nothing to do",
                settings.namespace
            ),
            Ok(Err(err)) => {
                kind = kind.worst(kind_of(&err));
                failures.push(format!("{workload}: {err:#}"));
            }
            Err(_) => {
                kind = kind.worst(Kind::Deadline);
                failures.push(format!("{workload}: deadline reached (CLEANSLATE_TIMEOUT)"));
            }
        }
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    if failures.is_empty() {
        info!(resumed = %resumed.join(", "), duration_ms, "resume finished");
        crate::termination::on_success(if resumed.is_empty() {
            "nothing was stopped; nothing to do".to_string()
        } else {
            format!("started again: {}", resumed.join(", "))
        });
        Ok(())
    } else {
        error!(resumed = %resumed.join(", "), failures = %failures.join("; "), duration_ms, "resume failed");
        Err(classified(kind, failures.join("; ")))
    }
}

/// The workloads to resume: the listed ones, then, with a marker, every workload in the namespace
/// whose quiesce record names that marker, whatever the list says: a rollback runs the target
/// revision's resume Job, whose list may not name what a newer revision stopped, and a workload that
/// leaves `replicas` out (HPA-managed) is not brought back by Helm's apply.
pub async fn stopped_for(kube: &KubeClient, settings: &QuiesceConfig) -> Result<Vec<WorkloadRef>> {
    let mut workloads = settings.workloads.clone();
    let Some(marker) = settings.marker.as_deref() else { return Ok(workloads) };
    let all = kube.list_workloads(&settings.namespace).await.map_err(|err| {
        anyhow!(
            "listing the workloads in namespace {:?} to find those stopped for {marker}: {err} (the resume Role needs \
             list on deployments and statefulsets)",
            settings.namespace
        )
    })?;
    for (reference, workload) in all {
        let ours = workload.annotation(OWNER_ANNOTATION) == Some(marker) && workload.annotation(ANNOTATION).is_some();
        if ours && !workloads.contains(&reference) {
            info!(workload = %reference, marker, "stopped for this release's cleanup: resumed whatever the list says");
            workloads.push(reference);
        }
    }
    Ok(workloads)
}

/// One API call with retries for transient failures. `Ok(None)`: the object does not exist (404
/// from a write, or `None` from a read); `Ok(Some(None))`: 409 Conflict, read again.
async fn call<T, F, Fut>(
    what: &str,
    workload: &WorkloadRef,
    deadline: Instant,
    mut op: F,
) -> Result<Option<Option<T::Inner>>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KubeError>>,
    T: IntoOption,
{
    retry::run(&API_RETRY, deadline, what, || {
        let attempt = op();
        async move {
            match attempt.await {
                Ok(value) => Ok(value.into_option().map(Some)),
                Err(err) if err.code() == Some(409) => {
                    // The workload changed under us; controllers write its status on every pod
                    // change, so pause a little (jittered) before the caller reads it again.
                    tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(0..200))).await;
                    Ok(Some(None))
                }
                Err(err) if err.code() == Some(404) => Ok(None),
                Err(err) => Err(sort(err, workload)),
            }
        }
    })
    .await
    .map_err(|err| err.context(what.to_string()))
}

/// Reads answer `Option<T>` (404 → `None`), writes answer `T`; [`call`] takes both.
trait IntoOption: Sized {
    type Inner;
    fn into_option(self) -> Option<Self::Inner>;
}

impl<T> IntoOption for Option<T> {
    type Inner = T;
    fn into_option(self) -> Option<T> {
        self
    }
}

impl IntoOption for Workload {
    type Inner = Workload;
    fn into_option(self) -> Option<Workload> {
        Some(self)
    }
}

impl IntoOption for Scale {
    type Inner = Scale;
    fn into_option(self) -> Option<Scale> {
        Some(self)
    }
}

/// Sorts an API failure for the retry loop, with an RBAC hint for 401/403.
fn sort(err: KubeError, workload: &WorkloadRef) -> Attempt {
    let transient = err.is_transient();
    let unreachable = matches!(err, KubeError::Transport(_));
    if matches!(err.code(), Some(401) | Some(403)) {
        return Attempt::Permanent(permanent(err, workload, "changing"));
    }
    let err = anyhow::Error::new(err);
    if unreachable {
        Attempt::Transient(err.context(Classified::new(Kind::Unreachable, "Kubernetes API not reachable")))
    } else if transient {
        Attempt::Transient(err)
    } else {
        Attempt::Permanent(err)
    }
}

fn permanent(err: KubeError, workload: &WorkloadRef, doing: &str) -> anyhow::Error {
    let hint = match err.code() {
        Some(401) | Some(403) => format!(
            "; the service account needs get, patch and update on {workload} and its scale subresource, and list \
             and watch on pods (see the chart's Role; extra workloads go in cleanup.quiesce.workloads)"
        ),
        _ => String::new(),
    };
    anyhow!("{doing} {workload}: {err}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only running pods the workload owns are waited for: finished pods and pods of other owners
    /// (a Job with the same labels, a Deployment whose name is a prefix) are not.
    #[test]
    fn only_the_workloads_running_pods_count() {
        let pod = |owner_kind: &str, owner: &str, phase: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": owner_kind, "name": owner, "uid": "u"}]},
                "status": {"phase": phase}}))
            .expect("a pod")
        };
        let api = WorkloadRef { kind: WorkloadKind::Deployment, name: "api".into() };
        let db = WorkloadRef { kind: WorkloadKind::StatefulSet, name: "db".into() };
        assert!(holds(&pod("ReplicaSet", "api-5d8f7c9b6", "Running"), &api), "its ReplicaSet's pod");
        assert!(holds(&pod("ReplicaSet", "api-5d8f7c9b6", "Pending"), &api), "a pending pod will start");
        assert!(!holds(&pod("ReplicaSet", "api-5d8f7c9b6", "Failed"), &api), "an evicted pod never goes away");
        assert!(!holds(&pod("ReplicaSet", "api-5d8f7c9b6", "Succeeded"), &api), "a completed pod is done");
        assert!(!holds(&pod("ReplicaSet", "api-gateway-5d8f7c9b6", "Running"), &api), "another Deployment's");
        assert!(!holds(&pod("Job", "shop-cleanslate-purge", "Running"), &api), "a Job's pod");
        assert!(holds(&pod("StatefulSet", "db", "Running"), &db), "the StatefulSet's pod");
        assert!(!holds(&pod("StatefulSet", "db-replica", "Running"), &db), "another StatefulSet's");
        let bare: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "bare"}})).expect("a pod");
        assert!(!holds(&bare, &api), "a bare pod is not scaled");
    }
    use crate::config::WorkloadKind;

    fn deployment(name: &str) -> WorkloadRef {
        WorkloadRef { kind: WorkloadKind::Deployment, name: name.into() }
    }

    /// The timeout message names every pod that was still there, per workload.
    #[test]
    fn timeout_names_the_remaining_pods() {
        let progress = Progress::default();
        progress.set_remaining(&deployment("api"), &BTreeSet::from(["api-7d9f-x".to_string()]));
        progress.set_remaining(&deployment("web"), &BTreeSet::new());
        let err = progress.timeout_error(Duration::from_secs(45));
        let text = format!("{err:#}");
        assert!(text.contains("deployment/api: api-7d9f-x"), "names the pod: {text}");
        assert!(!text.contains("deployment/web"), "a workload without pods is not named: {text}");
        assert_eq!(
            kind_of(&err),
            Kind::QuiesceTimeout,
            "a quiesce timeout is final (80): a retry would stop them again"
        );
    }

    /// An OrderedReady StatefulSet stops one pod at a time: its stop time is one grace period per
    /// replica; a Deployment's pods stop together.
    #[test]
    fn ordered_statefulsets_take_a_grace_period_per_replica() {
        let workload = |replicas, policy: Option<&str>| Workload {
            replicas: Some(replicas),
            grace_period_seconds: Some(60),
            pod_management_policy: policy.map(str::to_string),
            ..Default::default()
        };
        let set = WorkloadRef { kind: WorkloadKind::StatefulSet, name: "db".into() };
        assert_eq!(stop_time(&set, &workload(3, None)), Duration::from_secs(180), "OrderedReady by default");
        assert_eq!(stop_time(&set, &workload(3, Some("Parallel"))), Duration::from_secs(60), "Parallel");
        assert_eq!(stop_time(&deployment("api"), &workload(3, None)), Duration::from_secs(60), "a Deployment");
        let unset = Workload { replicas: Some(2), ..Default::default() };
        assert_eq!(stop_time(&deployment("api"), &unset), Duration::from_secs(30), "Kubernetes' default");
    }

    /// A workload is remembered once, in the order it was stopped.
    #[test]
    fn stopped_workloads_keep_their_order() {
        let progress = Progress::default();
        progress.mark_stopped(&deployment("b"), 2);
        progress.mark_stopped(&deployment("a"), 1);
        progress.mark_stopped(&deployment("b"), 2);
        assert_eq!(progress.stopped(), vec![deployment("b"), deployment("a")], "order kept, no duplicate");
    }

    /// The restore summary names each workload with its count, in singular or plural.
    /// A later attempt of one Job takes over what an earlier one left at once; another Job's run
    /// (a reset, a deploy) or a run outside a Job is waited for.
    #[test]
    fn attempts_of_one_job_are_told_from_other_runs() {
        assert!(same_job(
            "shop-cleanslate-purge/shop-cleanslate-purge-a1@u1",
            "shop-cleanslate-purge/shop-cleanslate-purge-b2@u2"
        ));
        assert!(!same_job("shop-cleanslate-purge/p@u", "shop-cleanslate-reset-29001/r@u"));
        assert!(!same_job("shop-cleanslate-test-purge@u", "shop-cleanslate-test-purge@v"), "no Job: not attempts");
        assert!(!same_job("cli:laptop:42:1700000000", "shop-cleanslate-purge/p@u"));
    }

    #[test]
    fn restore_is_described_by_name() {
        let report = Restore {
            restored: vec![
                (deployment("a"), 1),
                (WorkloadRef { kind: WorkloadKind::StatefulSet, name: "b".into() }, 3),
            ],
            ..Default::default()
        };
        assert_eq!(report.describe_restored(), "restored deployment/a (1 replica), statefulset/b (3 replicas)");
        assert_eq!(Restore::default().describe_restored(), "", "nothing restored, nothing said");
    }

    /// A recorded count that is not a number is refused with how to fix it.
    #[test]
    fn bad_annotation_is_named() {
        let err = parse_recorded(&deployment("api"), "three").expect_err("not a count");
        assert!(format!("{err}").contains("three") && format!("{err}").contains(ANNOTATION), "{err}");
        assert_eq!(parse_recorded(&deployment("api"), "3").expect("a count"), 3, "parsed");
    }

    /// The ordered scale-down stalls only on an unhealthy highest pod that is not the lowest
    /// unhealthy one, as the StatefulSet controller decides; a terminating pod means "wait".
    #[test]
    fn only_a_real_ordered_stall_is_unblocked() {
        let pod = |name: &str, ready: bool, terminating: bool| -> (String, Pod) {
            let mut value = serde_json::json!({"metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
            if terminating {
                value["metadata"]["deletionTimestamp"] = serde_json::json!("2026-11-23T00:00:00Z");
            }
            (name.to_string(), serde_json::from_value(value).expect("a pod"))
        };
        let set = |pods: &[(&str, bool, bool)]| -> BTreeMap<String, Pod> {
            pods.iter().map(|(n, r, t)| pod(n, *r, *t)).collect()
        };
        let stalled = |pods: &[(&str, bool, bool)]| stalling_pod(&set(pods)).and_then(|p| p.metadata.name.clone());
        assert_eq!(
            stalled(&[("db-0", false, false), ("db-1", true, false), ("db-2", true, false)]),
            None,
            "one unhealthy, top healthy"
        );
        assert_eq!(
            stalled(&[("db-0", true, false), ("db-1", true, false), ("db-2", false, false)]),
            None,
            "the only unhealthy is the top"
        );
        assert_eq!(
            stalled(&[("db-0", false, false), ("db-1", false, false)]),
            Some("db-1".into()),
            "two unhealthy: the top one blocks"
        );
        assert_eq!(
            stalled(&[("db-0", false, false), ("db-1", false, false), ("db-10", true, true)]),
            None,
            "one terminating: wait"
        );
        assert_eq!(
            stalled(&[("db-2", false, false), ("db-10", false, false)]),
            Some("db-10".into()),
            "ordinals, not names, order them"
        );
    }
}
