//! The purge run (`purge` and `plan`), in phases: guard, preflight, stop the listed workloads
//! (quiesce), clean RabbitMQ and etcd side by side, summarise, put the workloads back when the run
//! failed, write the marker.
//!
//! Everything that can refuse the run (production, dangerous prefixes, configuration) is decided
//! before the first connection; everything that can fail on a backend's side (unreachable, wrong
//! credentials, missing permission, a missing queue with `MISSING=fail`) is found by the
//! [`preflight`] before anything is stopped or deleted. RabbitMQ and etcd are cleaned concurrently under one deadline,
//! because the run's length is the deploy's delay. A failure on one side does not stop the other:
//! both are idempotent, and the summary and the marker say exactly what was and was not done.
//!
//! With quiesce, a failed purge, a quiesce timeout or a signal restores the stopped workloads
//! before the marker is written (the previous version keeps running, as if the upgrade had not
//! started), and the marker's message names them. On success the workloads stay stopped for the
//! upgrade: the resume hook Job (or Helm itself) starts the new version, except in the `helm test`
//! Pod (`CLEANSLATE_QUIESCE_RESUME=true`), which resumes them itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{MarkerConfig, Mode, PurgeConfig, QuiesceConfig};
use crate::error::{Kind, classified, kind_of};
use crate::etcd;
use crate::events::Reason;
use crate::kube::KubeClient;
use crate::marker::{Marker, RunStatus};
use crate::quiesce;
use crate::rabbitmq::Management;
use crate::shutdown::{Shutdown, Signal};

mod preflight;
mod record;
mod summary;

pub use record::kube_attempt;
use record::{check_writable, last_cleaned, read_job, write_marker};
pub use summary::Summary;
use summary::{EtcdReport, RabbitReport};

/// Time allowed for writing the marker after the run, on top of `CLEANSLATE_TIMEOUT`: a run that
/// used its whole deadline must still tell the gates how it ended.
const MARKER_BUDGET: Duration = Duration::from_secs(15);
/// Time allowed for putting stopped workloads back after a failure: a few API calls each.
const RESTORE_BUDGET: Duration = Duration::from_secs(15);
/// After SIGTERM the pod has its grace period (30 s by default) before SIGKILL: restoring and the
/// marker get a few seconds each, so both fit well inside it.
const SIGNAL_RESTORE_BUDGET: Duration = Duration::from_secs(10);
const SIGNAL_MARKER_BUDGET: Duration = Duration::from_secs(5);
/// Time allowed for the trigger record after a run: best effort, so short.
const TRIGGER_BUDGET: Duration = Duration::from_secs(3);
/// The outcome Event (each Event gets `events::PUBLISH_TIMEOUT`; one is published after the purge).
const EVENT_BUDGET: Duration = Duration::from_secs(2);
/// Everything that may still run after the purge's own `CLEANSLATE_TIMEOUT`: the outcome Event,
/// the trigger record, the marker, and putting the workloads back. A quiesced run must end inside
/// the Job's `activeDeadlineSeconds` with all of it done: on Kubernetes before 1.31 a Job whose
/// deadline passed is marked Failed while its pod still terminates, and Helm 4 then deletes the
/// hook's identity (the event failed), so a restore left for the pod's grace period would be
/// refused and the apps would stay at 0.
const AFTER_PURGE_BUDGET: Duration = Duration::from_secs(
    EVENT_BUDGET.as_secs() + TRIGGER_BUDGET.as_secs() + MARKER_BUDGET.as_secs() + RESTORE_BUDGET.as_secs(),
);

/// How a purge run ended when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to the end.
    Done,
    /// A signal stopped it; what it stopped was restored and a failed attempt recorded.
    Stopped(Signal),
}

/// Runs `purge` (or `plan`); a failure comes back as an error whose [`Kind`] says what went wrong,
/// and refusals, configuration problems and failed preflights do so before anything is touched. On
/// a signal from `shutdown` the run stops its work, restores what it stopped, records a failed
/// attempt, and returns [`Outcome::Stopped`].
pub async fn run(config: &PurgeConfig, mode: Mode, shutdown: Shutdown) -> Result<Outcome> {
    let put_back_done = AtomicBool::new(false);
    match run_phases(config, mode, shutdown, &put_back_done).await {
        // A failure before the put-back phase (the marker or the trigger record unreadable, the
        // API unreachable) on the Job's last attempt: what earlier attempts left stopped for it goes
        // back, or the apps stay at 0 once Helm gives up.
        Err(err) if mode == Mode::Purge && !config.dry_run && !put_back_done.load(Ordering::Relaxed) => {
            Err(restore_leftovers(config, err).await)
        }
        other => other,
    }
}

/// The phases of [`run`]; `put_back_done` is set once the put-back phase ran (it restores what
/// it must by itself from there on).
async fn run_phases(
    config: &PurgeConfig,
    mode: Mode,
    mut shutdown: Shutdown,
    put_back_done: &AtomicBool,
) -> Result<Outcome> {
    let dry_run = mode == Mode::Plan || config.dry_run;
    refuse_production(config, mode)?;
    let etcd_plan = match &config.etcd {
        Some(etcd) => Some(etcd::plan_ranges(&etcd.prefixes, &etcd.protected_prefixes)?),
        None => None,
    };
    // Half the run per request leaves room for a retry when one request hangs.
    let request_timeout = (config.timeout / 2).max(Duration::from_secs(1));
    let rabbit = match &config.rabbitmq {
        Some(rabbit) => Some((Management::new(rabbit, request_timeout)?, rabbit)),
        None => None,
    };
    let marker_target = match (&config.marker, mode) {
        (Some(marker), Mode::Purge) => Some((KubeClient::new(&marker.kube).await?, marker)),
        _ => None,
    };
    // Which attempt this is, read before anything else: once this pod is being deleted (an
    // eviction, the deadline) the Job controller already counts it as failed.
    let job_at_start = match &marker_target {
        Some((kube, marker)) => read_job(kube, marker).await,
        None => None,
    };
    // The Job's deadline is measured from here (its `deadline_left` was read just now).
    let job_read_at = Instant::now();
    // A run that could not record its outcome would leave restarting gated pods waiting: checked
    // before anything is stopped or deleted.
    if let Some((kube, marker)) = &marker_target {
        check_writable(kube, marker).await?;
        // The build did not change since the last cleaning: nothing to reset (Argo CD and Flux
        // sync on drift and on values changes, not only on new builds).
        if let (Some(trigger), Some(record_name)) = (config.trigger.as_deref(), config.trigger_record.as_deref())
            && record::trigger_unchanged(kube, marker, record_name, trigger).await?
        {
            return unchanged(kube, marker, config, trigger, job_at_start).await;
        }
    }
    info!(
        environment = config.environment.as_deref().unwrap_or(""),
        dry_run,
        rabbitmq = config.rabbitmq.is_some(),
        etcd = config.etcd.is_some(),
        quiesce = config.quiesce.is_some(),
        timeout_ms = config.timeout.as_millis() as u64,
        "{}",
        if mode == Mode::Plan { "planning" } else { "purge started" }
    );
    let mut would_stop = Vec::new();
    let quiesce_target = match &config.quiesce {
        Some(settings) if !dry_run => Some((KubeClient::new(&settings.kube).await?, settings)),
        Some(settings) => {
            would_stop = quiesce::preview(&KubeClient::new(&settings.kube).await?, settings).await?;
            None
        }
        None => None,
    };

    if let Some((kube, settings)) = &marker_target {
        let note =
            format!("cleanup of revision {} started{}", settings.revision, if dry_run { " (dry run)" } else { "" });
        kube.events().on_own_pod(&settings.namespace, Reason::CleanupStarted, note).await;
    }
    let started_at = SystemTime::now();
    let clock = Instant::now();

    // Preflight: every backend reached, authenticated and its selection resolved, before anything
    // is stopped or deleted. CLEANSLATE_TIMEOUT bounds the preflight and the purge together; the
    // quiesce between them has its own timeout.
    let mut summary = Summary::default();
    let mut interrupted: Option<Signal> = None;
    let deadline = Instant::now() + config.timeout;
    let preflight = preflight::run(
        rabbit.as_ref().map(|(client, settings)| (client, *settings)),
        config.etcd.as_ref().zip(etcd_plan),
        &config.retry,
        request_timeout,
        dry_run,
        deadline,
    );
    let prepared = tokio::select! {
        prepared = preflight => match prepared {
            Ok(prepared) => Some(prepared),
            Err(err) => {
                summary.fail(kind_of(&err), format!("{err:#}; nothing was stopped or deleted"));
                None
            }
        },
        signal = shutdown.recv() => {
            interrupted = Some(signal);
            None
        }
    };
    let preflight_took = clock.elapsed();

    // Quiesce: nothing is purged while the previous version's writers may still run.
    let progress = quiesce::Progress::default();
    let mut quiesce_failure = None;
    let mut writers_not_stopped = Vec::new();
    if let (Some(_), Some(target)) = (&prepared, &quiesce_target) {
        // The purge and the marker write come after the quiesce, inside the Job's deadline.
        let after_quiesce = config.timeout + AFTER_PURGE_BUDGET + job_read_at.elapsed();
        let stopped = stop_writers(target, marker_target.as_ref(), job_at_start, after_quiesce, &progress);
        tokio::select! {
            stopped = stopped => match stopped {
                Ok(not_permitted) => writers_not_stopped = not_permitted,
                Err(err) => quiesce_failure = Some(err),
            },
            signal = shutdown.recv() => interrupted = Some(signal),
        }
    }
    if let Some(err) = quiesce_failure {
        summary.fail(kind_of(&err), format!("{err:#}; nothing was purged"));
    }

    // Execute what the preflight resolved, in what is left of the deadline.
    if let Some(prepared) = prepared.filter(|_| summary.failures.is_empty() && interrupted.is_none()) {
        if dry_run {
            let etcd_counts = prepared.etcd.as_ref().map(|e| e.counts.clone()).unwrap_or_default();
            summary = Summary {
                workloads_to_stop: would_stop,
                keys_seeded: config.etcd.as_ref().map_or(0, |e| e.seed.len() as u64),
                ..Summary::of_plan(prepared.rabbit.as_ref(), &etcd_counts)
            };
        } else {
            let deadline = Instant::now() + config.timeout.saturating_sub(preflight_took).max(Duration::from_secs(1));
            let tally = crate::tally::Tally::default();
            tokio::select! {
                executed = execute(config, rabbit.as_ref().map(|(client, _)| client), prepared, deadline, &tally) => summary = executed,
                signal = shutdown.recv() => {
                    interrupted = Some(signal);
                    // What committed before the signal stays committed: the marker says so.
                    let counts = tally.counts();
                    summary = Summary {
                        queues_purged: counts.queues_purged,
                        messages_purged: counts.messages_purged,
                        queues_with_unknown_counts: counts.queues_with_unknown_counts,
                        keys_deleted: counts.keys_deleted,
                        ..Summary::default()
                    };
                }
            }
        }
    }
    summary.writers_not_stopped = writers_not_stopped;
    if let Some(signal) = interrupted {
        // Whatever finished before the signal is not known for sure: the marker says failed.
        summary.fail(Kind::Failed, format!("stopped by {} before the purge finished", signal.name()));
    }

    // Put the workloads back: after a failure the previous version keeps running; in the helm
    // test Pod the reset is complete only when they run again.
    // A next attempt asks of the deadline what this one's quiesce did (or the configured timeout).
    let quiesce_wait = progress.wait().or(config.quiesce.as_ref().map(|q| q.timeout)).unwrap_or_default();
    let attempt_follows = retry_follows_attempt(job_at_start, job_read_at.elapsed(), config.timeout, quiesce_wait);
    let retry_follows = retry_follows(&summary, interrupted.is_some(), attempt_follows);
    put_back_done.store(true, Ordering::Relaxed);
    let resume_failures = match &quiesce_target {
        Some(target) => put_back(target, &progress, &mut summary, interrupted.is_some(), retry_follows).await,
        None => Vec::new(),
    };

    let duration_ms = clock.elapsed().as_millis() as u64;
    let mut kind = summary.kind;
    summary::log_outcome(&summary, dry_run, duration_ms, config.marker.as_ref().map(|m| m.revision));

    // Not on the signal path: the pod's grace period is for the restore and the marker.
    if let Some((kube, settings)) = marker_target.as_ref().filter(|_| interrupted.is_none()) {
        publish_outcome(kube, settings, &summary).await;
    }
    if let Some(target) = &marker_target {
        let record = marker_record(target.1, &summary, dry_run, started_at, duration_ms);
        let recorded = record_run(target, &record, job_at_start, interrupted.is_some()).await;
        if let Some(name) = config.trigger_record.as_deref().filter(|_| !dry_run) {
            // A cleaning run records its trigger once its marker says so; any failed run clears it
            // (a partial reset must not let the next deploy of the same build skip the cleaning).
            match (summary.failures.is_empty() && recorded.is_ok(), config.trigger.as_deref()) {
                (true, Some(trigger)) => record::write_trigger(&target.0, target.1, name, Some(trigger)).await,
                (false, _) => record::write_trigger(&target.0, target.1, name, None).await,
                (true, None) => {}
            }
        }
        if let Err(err) = recorded {
            kind = kind.worst(kind_of(&err));
            if summary.failures.is_empty() && interrupted.is_none() {
                // The run fails after all: put back what it stopped (unless the helm test run
                // already did), or the apps stay at 0 while the Job retries and Helm gives up.
                let retried = !kind_of(&err).is_final()
                    && retry_follows_attempt(job_at_start, job_read_at.elapsed(), config.timeout, quiesce_wait);
                return Err(match &quiesce_target {
                    Some(target) if !target.1.resume_after_purge && !retried => {
                        restore_after(target, &progress, err).await
                    }
                    _ => err,
                });
            }
        }
    }
    if let Some(signal) = interrupted {
        error!(signal = signal.name(), failures = %summary.failures.join("; "), "stopped by signal");
        return Ok(Outcome::Stopped(signal));
    }
    if !resume_failures.is_empty() {
        return Err(classified(kind, resume_failures.join("; ")));
    }
    if summary.failures.is_empty() {
        Ok(Outcome::Done)
    } else {
        // Reported once more by main on stderr, so the first line of a failed Job's output says
        // what failed, whatever the log format.
        Err(classified(kind, summary.failures.join("; ")))
    }
}

/// A Kubernetes client with the settings it was made for.
type Target<'a, T> = (KubeClient, &'a T);

/// Stops the listed workloads and waits for their pods, within the quiesce timeout. The marker is
/// read first: without it, pods that wait in their gates cannot be told from pods that ran, so an
/// unreadable marker stops nothing.
///
/// The writers are the listed workloads and, with `CLEANSLATE_QUIESCE_GATED`, the live ones gated on
/// this release's marker (`quiesce::writers`); those this identity may not stop are returned, to be
/// reported. The wait is at least the longest grace period of their pods plus a margin (a consumer
/// that drains for 60 s must not be cut short into a restore and a retry), within what the Job's
/// deadline leaves after the purge and the marker.
async fn stop_writers(
    (kube, settings): &Target<'_, QuiesceConfig>,
    marker: Option<&Target<'_, MarkerConfig>>,
    job_at_start: Option<crate::kube::JobProgress>,
    after_quiesce: Duration,
    progress: &quiesce::Progress,
) -> Result<Vec<String>> {
    let started = Instant::now();
    let cleaned_up_to = match marker {
        Some((marker_kube, marker)) => {
            Some(last_cleaned(marker_kube, marker).await.map_err(|err| err.context("nothing was stopped"))?)
        }
        None => None,
    };
    let writers = quiesce::writers(kube, settings).await.map_err(|err| err.context("nothing was stopped"))?;
    let timeout =
        quiesce_timeout(settings.timeout, writers.longest_grace, job_at_start, after_quiesce + started.elapsed())?;
    progress.set_wait(timeout);
    let not_permitted: Vec<String> = writers.not_permitted.iter().map(ToString::to_string).collect();
    match tokio::time::timeout(timeout, quiesce::stop(kube, &writers.config, cleaned_up_to, progress)).await {
        Ok(Ok(())) => Ok(not_permitted),
        Ok(Err(err)) => Err(err.context("stopping the workloads (quiesce)")),
        Err(_) => Err(progress.timeout_error(timeout)),
    }
}

/// How long the quiesce may wait: the configured timeout, raised to the longest grace period of the
/// workloads' pods plus [`quiesce::GRACE_MARGIN`], and lowered to what the Job's deadline leaves
/// once `after` (the purge and the marker write, and what already ran) is set aside: a quiesce the
/// Job's deadline kills leaves nothing to restore the workloads.
fn quiesce_timeout(
    configured: Duration,
    longest_grace: Option<Duration>,
    job: Option<crate::kube::JobProgress>,
    after: Duration,
) -> Result<Duration> {
    let wanted = longest_grace.map_or(configured, |grace| configured.max(grace + quiesce::GRACE_MARGIN));
    if wanted > configured {
        info!(
            configured_ms = configured.as_millis() as u64,
            waits_ms = wanted.as_millis() as u64,
            "the quiesce waits for the workloads' own grace period plus a margin"
        );
    }
    let Some(room) = job.and_then(|j| j.deadline_left).map(|left| left.saturating_sub(after)) else {
        return Ok(wanted);
    };
    if room < wanted {
        // Stopping them now would be an outage that cannot end well: the deadline would cut the
        // wait short into a restore. Refused before anything stops.
        return Err(classified(
            Kind::Config,
            format!(
                "the Job's deadline leaves {} s for the quiesce, and the workloads may take {} s to stop (their grace \
                 period plus {} s): nothing was stopped or purged; raise cleanup.quiesce.timeout (the chart derives \
                 the Job's deadline from it) or set cleanup.hook.activeDeadlineSeconds",
                room.as_secs(),
                wanted.as_secs(),
                quiesce::GRACE_MARGIN.as_secs()
            ),
        ));
    }
    Ok(wanted)
}

/// Starts the stopped workloads again after a failure (the previous version keeps running) or in
/// the helm test Pod; otherwise says how to recover if the release's apply fails. Returns the
/// resume failures of a successful run (a failed run's go into `summary`).
async fn put_back(
    (kube, settings): &Target<'_, QuiesceConfig>,
    progress: &quiesce::Progress,
    summary: &mut Summary,
    signalled: bool,
    retry_follows: bool,
) -> Vec<String> {
    let mut stopped = progress.stopped();
    let failed = !summary.failures.is_empty();
    // The deploy's last word (no attempt follows, a signal included: the Job's deadline): what
    // earlier attempts or ended runs left stopped goes back too. What a run that still runs holds
    // (the Job's replacement pod after an eviction, before Kubernetes 1.29 already running) stays
    // with it, and each scale is conditional on the read that found it an orphan.
    let last_word = failed && !retry_follows;
    if last_word {
        // The deploy's last word: what an earlier attempt of it left stopped for the next one goes
        // back too, though this attempt failed before it took them over.
        let budget = if signalled { Duration::from_secs(3) } else { RESTORE_BUDGET };
        match tokio::time::timeout(budget, quiesce::stopped_for(kube, settings))
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within {budget:?}")))
        {
            Ok(left) => {
                for workload in left {
                    if !stopped.contains(&workload) {
                        stopped.push(workload);
                    }
                }
            }
            Err(err) => warn!(
                error = %format!("{err:#}"),
                "could not look for workloads earlier attempts left stopped: run `cleanslate status` to see them"
            ),
        }
    }
    if stopped.is_empty() {
        return Vec::new();
    }
    if failed && retry_follows {
        // The Job starts another attempt, which takes these over (at 0 with their record) instead
        // of stopping them a second time: one outage per deploy. The last attempt, a signal and a
        // final failure put them back.
        let list: Vec<String> = stopped.iter().map(ToString::to_string).collect();
        warn!(
            workloads = %list.join(","),
            "left stopped for the Job's next attempt, which takes them over; the last attempt puts them back if it fails too"
        );
        summary.failures.push(format!("left stopped for the Job's next attempt: {}", list.join(", ")));
        return Vec::new();
    }
    if !failed && !settings.resume_after_purge {
        // Stopped until the release's apply and the resume Job start them again. If Helm's apply
        // fails after this purge (an immutable field, a webhook), no post-upgrade hook runs: say
        // how to recover where the operator will look, in this Job's log.
        let list: Vec<String> = stopped.iter().map(ToString::to_string).collect();
        let how = match &settings.marker {
            Some(marker) => format!("CLEANSLATE_NAMESPACE={} CLEANSLATE_MARKER={marker}", settings.namespace),
            None => format!("CLEANSLATE_NAMESPACE={} CLEANSLATE_QUIESCE={}", settings.namespace, list.join(",")),
        };
        info!(
            workloads = %list.join(","),
            "workloads stay stopped until this release's apply and its resume Job start them; if the apply fails, \
             run `{how} cleanslate resume`, roll back (the rollback's resume Job starts them) or upgrade again; \
             `cleanslate status` shows what is stopped"
        );
        return Vec::new();
    }
    let budget = if signalled { SIGNAL_RESTORE_BUDGET } else { RESTORE_BUDGET };
    let report = quiesce::restore(kube, settings, &stopped, last_word, Instant::now() + budget).await;
    let restored = report.describe_restored();
    if failed {
        for line in [restored, report.describe_held()] {
            if !line.is_empty() {
                summary.failures.push(line);
            }
        }
        for line in report.describe_failed() {
            summary.fail(report.kind, line);
        }
        return Vec::new();
    }
    if !restored.is_empty() {
        info!(workloads = %restored, "workloads resumed after the purge (CLEANSLATE_QUIESCE_RESUME)");
    }
    let resume_failures = report.describe_failed();
    if !resume_failures.is_empty() {
        summary.kind = summary.kind.worst(report.kind);
    }
    resume_failures
}

/// The run's Event on its own pod: what it did (and the dead letters it only reported), or why it
/// failed.
async fn publish_outcome(kube: &KubeClient, settings: &MarkerConfig, summary: &Summary) {
    let (reason, note) = if summary.failures.is_empty() {
        let line = crate::termination::success_line("purge");
        (Reason::CleanupSucceeded, summary.dead_letters_line().map_or(line.clone(), |dl| format!("{line}; {dl}")))
    } else {
        (
            Reason::CleanupFailed,
            format!("cleanup of revision {} failed: {}", settings.revision, summary.failures.join("; ")),
        )
    };
    kube.events().on_own_pod(&settings.namespace, reason, note).await;
}

/// A run whose trigger is the one recorded with the last cleaning: it stops and purges nothing and
/// writes this revision's marker as succeeded and `unchanged`, so this revision's gates pass at once.
async fn unchanged(
    kube: &KubeClient,
    settings: &MarkerConfig,
    config: &PurgeConfig,
    trigger: &str,
    job_at_start: Option<crate::kube::JobProgress>,
) -> Result<Outcome> {
    let started_at = SystemTime::now();
    info!(
        trigger,
        revision = settings.revision,
        "unchanged: the trigger is the one recorded with the last cleaning; nothing was stopped or purged"
    );
    let summary = Summary { unchanged: true, ..Summary::default() };
    let line = format!(
        "unchanged: trigger {trigger:?} as at the last cleaning; nothing stopped or purged (revision {})",
        settings.revision
    );
    crate::termination::on_success(line.clone());
    kube.events().on_own_pod(&settings.namespace, Reason::CleanupSucceeded, line).await;
    let record = marker_record(settings, &summary, config.dry_run, started_at, 0);
    record_run(&(kube.clone(), settings), &record, job_at_start, false).await?;
    // Recorded at this revision too: the next deploy of the same build is the next revision.
    if let Some(name) = config.trigger_record.as_deref() {
        record::write_trigger(kube, settings, name, Some(trigger)).await;
    }
    Ok(Outcome::Done)
}

/// The marker's record of this run.
fn marker_record(
    settings: &MarkerConfig,
    summary: &Summary,
    dry_run: bool,
    started_at: SystemTime,
    duration_ms: u64,
) -> Marker {
    Marker {
        revision: settings.revision,
        status: if summary.failures.is_empty() { RunStatus::Succeeded } else { RunStatus::Failed },
        dry_run,
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        finished_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        duration_ms,
        queues_purged: summary.queues_purged,
        messages_purged: summary.messages_purged,
        queues_with_unknown_counts: summary.queues_with_unknown_counts,
        keys_deleted: summary.keys_deleted,
        keys_seeded: summary.keys_seeded,
        message: summary.failures.join("; "),
        failure_kind: if summary.failures.is_empty() { String::new() } else { summary.kind.as_str().to_string() },
        dead_letters: summary.dead_letters_line().unwrap_or_default(),
        writers_not_stopped: summary.writers_not_stopped.join(", "),
        job: settings.pod_name.clone().unwrap_or_default(),
        // Filled in from the marker already there, by `marker::merge`; a failure that no retry
        // changes is final now (the Job's podFailurePolicy ends it on this exit code).
        attempt: 0,
        is_final: !summary.failures.is_empty() && summary.kind.is_final(),
        last_succeeded_revision: None,
        last_succeeded_at: String::new(),
        unchanged: summary.unchanged,
    }
}

/// Writes the record to the marker; after a signal, best effort within the pod's grace period.
async fn record_run(
    (kube, settings): &Target<'_, MarkerConfig>,
    record: &Marker,
    job_at_start: Option<crate::kube::JobProgress>,
    signalled: bool,
) -> Result<()> {
    let written = if signalled {
        tokio::time::timeout(SIGNAL_MARKER_BUDGET, write_marker(kube, settings, record, job_at_start))
            .await
            .unwrap_or_else(|_| Err(anyhow!("writing the marker: no answer within {SIGNAL_MARKER_BUDGET:?}")))
    } else {
        write_marker(kube, settings, record, job_at_start).await
    };
    if let Err(err) = &written {
        error!(marker = %settings.name, namespace = %settings.namespace, error = %format!("{err:#}"), "marker not written");
    }
    written
}

/// `err`, with what was put back (or could not be) when the stopped workloads are restored
/// because the run fails after a successful purge.
async fn restore_after(
    (kube, settings): &Target<'_, QuiesceConfig>,
    progress: &quiesce::Progress,
    err: anyhow::Error,
) -> anyhow::Error {
    let stopped = progress.stopped();
    if stopped.is_empty() {
        return err;
    }
    let report = quiesce::restore(kube, settings, &stopped, false, Instant::now() + RESTORE_BUDGET).await;
    with_restore_report(err, &report)
}

/// Whether the Job will run another attempt after this one fails: one follows
/// ([`retry_follows_attempt`]) and the failure is not one its `podFailurePolicy` ends at once.
/// Then the stopped workloads stay stopped for that attempt. Without a Job (`helm test`'s Pod, a
/// run by hand) nothing follows.
fn retry_follows(summary: &Summary, signalled: bool, attempt_follows: bool) -> bool {
    !signalled && !summary.failures.is_empty() && !summary.kind.is_final() && attempt_follows
}

/// The pod's start before an attempt runs (the chart allows as much per attempt).
const POD_START: Duration = Duration::from_secs(30);

/// Whether the Job has another attempt after this one, with time for it: attempts left, not
/// already failing, and (with `activeDeadlineSeconds`) what the deadline leaves `since_read` after
/// the Job was read holds the rest of this attempt (its Event, trigger record and marker), the
/// controller's back-off before the next pod (10 s, doubling with each failure, at most 6 min), its
/// start, and what that attempt asks of the deadline before it stops anything (`quiesce_timeout`:
/// the quiesce, a run of `run` and what follows a purge). Workloads left stopped for an attempt
/// the deadline kills, or that refuses for want of time, would stay at 0 or be stopped twice.
fn retry_follows_attempt(
    job: Option<crate::kube::JobProgress>,
    since_read: Duration,
    run: Duration,
    quiesce: Duration,
) -> bool {
    job.is_some_and(|job| {
        let backoff = Duration::from_secs((10u64 << job.failed.min(6)).min(360));
        let this_attempt = AFTER_PURGE_BUDGET - RESTORE_BUDGET;
        let needs = this_attempt + backoff + POD_START + quiesce + run + AFTER_PURGE_BUDGET;
        !job.failing
            && job.attempt() < job.attempts()
            && job.deadline_left.is_none_or(|left| left.saturating_sub(since_read) >= needs)
    })
}

/// `err`, after what earlier attempts of this Job left stopped for this one went back, when no
/// attempt follows it (see [`run`]); `err` as it is otherwise.
async fn restore_leftovers(config: &PurgeConfig, err: anyhow::Error) -> anyhow::Error {
    let (Some(settings), Some(marker)) = (&config.quiesce, &config.marker) else { return err };
    // A refusal comes before any connection, and before anything could have been stopped.
    if settings.marker.is_none() || kind_of(&err) == Kind::Refused {
        return err;
    }
    // One deadline for all of it: the Job's read, the list and the restore.
    let deadline = Instant::now() + RESTORE_BUDGET;
    let kube = match KubeClient::new(&settings.kube).await {
        Ok(kube) => kube,
        Err(err_kube) => {
            warn!(error = %format!("{err_kube:#}"), "could not look for workloads earlier attempts left stopped");
            return err;
        }
    };
    if !kind_of(&err).is_final()
        && retry_follows_attempt(read_job(&kube, marker).await, Duration::ZERO, config.timeout, settings.timeout)
    {
        return err;
    }
    let left = match tokio::time::timeout_at(deadline, quiesce::stopped_for(&kube, settings)).await {
        Ok(Ok(left)) => left,
        Ok(Err(list_err)) => {
            warn!(error = %format!("{list_err:#}"), "could not look for workloads earlier attempts left stopped");
            return err;
        }
        Err(_) => {
            warn!("could not look for workloads earlier attempts left stopped in time");
            return err;
        }
    };
    if left.is_empty() {
        return err;
    }
    // Orphans only besides its own: a run that still holds them (the Job's replacement pod after an
    // eviction) keeps them.
    let report = quiesce::restore(&kube, settings, &left, true, deadline).await;
    with_restore_report(err, &report)
}

/// `err`, with what a restore after it did (and could not do) as its context.
fn with_restore_report(err: anyhow::Error, report: &quiesce::Restore) -> anyhow::Error {
    let lines = report.describe();
    if lines.is_empty() { err } else { err.context(lines.join("; ")) }
}

/// Refuses a production environment unless explicitly allowed, before any connection.
fn refuse_production(config: &PurgeConfig, mode: Mode) -> Result<()> {
    if mode == Mode::Purge && config.scheduled && config.is_production() {
        return Err(classified(
            Kind::Refused,
            format!(
                "CLEANSLATE_ENVIRONMENT is {:?}: a scheduled reset (CLEANSLATE_RUN=scheduled) never runs in production, \
                 CLEANSLATE_ALLOW_PRODUCTION or not; nothing was touched",
                config.environment.as_deref().unwrap_or_default()
            ),
        ));
    }
    if mode == Mode::Purge && config.is_production() && !config.allow_production {
        return Err(classified(
            Kind::Refused,
            format!(
                "CLEANSLATE_ENVIRONMENT is {:?}: purging production is refused unless CLEANSLATE_ALLOW_PRODUCTION=true; nothing was touched",
                config.environment.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

/// Purges the prepared queues and deletes the prepared ranges side by side; a failure on one side
/// does not stop the other (both are idempotent, and the summary says what was done).
async fn execute(
    config: &PurgeConfig,
    client: Option<&Management>,
    prepared: preflight::Prepared<'_>,
    deadline: Instant,
    tally: &crate::tally::Tally,
) -> Summary {
    let rabbit_side = async {
        let (selection, client) = (prepared.rabbit?, client?);
        let outcomes = client.purge_all(&selection, config.concurrency, &config.retry, deadline, tally).await;
        Some(Ok::<_, anyhow::Error>(RabbitReport { selection, outcomes }))
    };
    let etcd_side = async {
        let prepared = prepared.etcd?;
        let started = std::time::Instant::now();
        let plan = prepared.plan;
        let deletion = prepared.session.delete(&plan.ranges, &config.retry, deadline, tally).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let prefixes = config.etcd.as_ref().map(|e| e.prefixes.join(",")).unwrap_or_default();
        let deleted: u64 = deletion.committed.iter().sum();
        if deletion.committed.len() == plan.ranges.len() {
            info!(prefixes = %prefixes, keys_deleted = deleted, duration_ms, "deleted the keys under the prefixes");
        } else {
            warn!(
                prefixes = %prefixes,
                keys_deleted = deleted,
                transactions_committed = deletion.committed.len(),
                ranges = plan.ranges.len(),
                "not every key range was deleted"
            );
        }
        for prefix in &plan.protected {
            info!(prefix = %prefix, reason = "listed in CLEANSLATE_ETCD_PROTECTED_PREFIXES", "protected keys kept");
        }
        if deletion.seeded > 0 {
            info!(keys_seeded = deletion.seeded, "wrote the seed (CLEANSLATE_ETCD_SEED_FILE)");
        }
        Some(Ok::<_, anyhow::Error>(EtcdReport {
            plan,
            counts: deletion.committed,
            seeded: deletion.seeded,
            failure: deletion.failure,
        }))
    };
    let (rabbit, etcd) = tokio::join!(rabbit_side, etcd_side);
    summary::summarize(rabbit, etcd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::JobProgress;

    fn job(failed: u32, backoff_limit: u32, left: Option<u64>) -> JobProgress {
        JobProgress { failed, backoff_limit, failing: false, deadline_left: left.map(Duration::from_secs) }
    }

    /// The wait is the workloads' grace period plus the margin when that is longer, and a deadline
    /// that cannot hold it is refused before anything stops.
    #[test]
    fn the_quiesce_waits_for_the_grace_period_within_the_deadline() {
        let configured = Duration::from_secs(10);
        let grace = Some(Duration::from_secs(60));
        assert_eq!(quiesce_timeout(configured, None, None, Duration::ZERO).unwrap(), configured);
        assert_eq!(quiesce_timeout(configured, grace, None, Duration::ZERO).unwrap(), Duration::from_secs(75));
        assert_eq!(
            quiesce_timeout(configured, grace, Some(job(0, 1, Some(200))), Duration::from_secs(60)).unwrap(),
            Duration::from_secs(75),
            "room enough"
        );
        let refused = quiesce_timeout(configured, grace, Some(job(0, 1, Some(100))), Duration::from_secs(60))
            .expect_err("40 s left for a 75 s wait");
        assert_eq!(kind_of(&refused), Kind::Config);
        assert!(format!("{refused:#}").contains("nothing was stopped"), "{refused:#}");
    }

    /// A failed attempt leaves the workloads stopped only when the Job runs another one.
    #[test]
    fn only_a_retry_to_come_keeps_the_workloads_stopped() {
        let failed = |kind| {
            let mut summary = Summary::default();
            summary.fail(kind, "x".into());
            summary
        };
        let (run, quiesce) = (Duration::from_secs(30), Duration::from_secs(40));
        let follows = |job: Option<JobProgress>, kind, signalled| {
            retry_follows(&failed(kind), signalled, retry_follows_attempt(job, Duration::ZERO, run, quiesce))
        };
        assert!(follows(Some(job(0, 1, None)), Kind::Unreachable, false), "attempt 1 of 2");
        assert!(!follows(Some(job(1, 1, None)), Kind::Unreachable, false), "the last attempt");
        assert!(!follows(Some(job(0, 1, None)), Kind::Denied, false), "a final failure");
        assert!(!follows(Some(job(0, 1, None)), Kind::Unreachable, true), "a signal");
        assert!(!follows(None, Kind::Unreachable, false), "no Job (helm test, by hand)");
        assert!(!retry_follows(&Summary::default(), false, true), "nothing failed");
        // This attempt's marker, Event and trigger (20 s), the 10 s back-off, 30 s to start, and
        // what the next attempt asks before it stops anything: its 40 s quiesce, the 30 s run and
        // 35 s after it: 165 s.
        assert!(follows(Some(job(0, 1, Some(170))), Kind::Unreachable, false), "room for attempt 2");
        assert!(!follows(Some(job(0, 1, Some(160))), Kind::Unreachable, false), "attempt 2 could not run");
        assert!(
            !retry_follows_attempt(Some(job(0, 1, Some(170))), Duration::from_secs(40), run, quiesce),
            "measured from when the Job was read"
        );
        assert!(follows(Some(job(0, 3, Some(170))), Kind::Unreachable, false), "after a first failure, 10 s");
        assert!(!follows(Some(job(2, 3, Some(170))), Kind::Unreachable, false), "after a third, 40 s");
    }
}
