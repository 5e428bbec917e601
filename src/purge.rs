//! The purge run (`purge` and `plan`): guard, plan, stop the listed workloads (quiesce), clean
//! RabbitMQ and etcd side by side, summarise, put the workloads back when the run failed, write the
//! marker.
//!
//! Everything that can refuse the run (production, dangerous prefixes, configuration) is decided
//! before the first connection. RabbitMQ and etcd are cleaned concurrently under one deadline,
//! because the run's length is the deploy's delay. A failure on one side does not stop the other:
//! both are idempotent, and the summary and the marker say exactly what was and was not done.
//!
//! With quiesce, a failed purge, a quiesce timeout or a signal restores the stopped workloads
//! before the marker is written (the previous version keeps running, as if the upgrade had not
//! started), and the marker's message names them. On success the workloads stay stopped for the
//! upgrade: the resume hook Job (or Helm itself) starts the new version, except in the `helm test`
//! Pod (`CLEANSLATE_QUIESCE_RESUME=true`), which resumes them itself.

use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{MarkerConfig, MissingQueue, Mode, PurgeConfig, RabbitConfig, RetryPolicy};
use crate::error::{Classified, Kind, classified, kind_of};
use crate::etcd::{self, KeyRange, RangePlan};
use crate::events::Reason;
use crate::kube::{JobProgress, KubeClient, KubeError, data_of, new_config_map};
use crate::marker::{self, Marker, RunStatus};
use crate::quiesce;
use crate::rabbitmq::{Management, QueueOutcome, Selection};
use crate::retry::{self, Attempt};
use crate::shutdown::{Shutdown, Signal};

/// Time allowed for writing the marker after the run, on top of `CLEANSLATE_TIMEOUT`: a run that
/// used its whole deadline must still tell the gates how it ended.
const MARKER_BUDGET: Duration = Duration::from_secs(15);
/// Time allowed for putting stopped workloads back after a failure: a few API calls each.
const RESTORE_BUDGET: Duration = Duration::from_secs(15);
/// After SIGTERM the pod has its grace period (30 s by default) before SIGKILL: restoring and the
/// marker get a few seconds each, so both fit well inside it.
const SIGNAL_RESTORE_BUDGET: Duration = Duration::from_secs(10);
const SIGNAL_MARKER_BUDGET: Duration = Duration::from_secs(5);

/// The RabbitMQ side's result.
struct RabbitReport {
    selection: Selection,
    /// One per selected queue, in order; empty in a dry run.
    outcomes: Vec<QueueOutcome>,
}

/// The etcd side's result.
struct EtcdReport {
    plan: RangePlan,
    /// Keys deleted per committed range, or keys that would be deleted in a dry run.
    counts: Vec<u64>,
    /// What stopped the ranges after `counts` from being deleted.
    failure: Option<anyhow::Error>,
}

/// Totals and failures of a whole run: what the summary line and the marker say.
#[derive(Debug, Default)]
pub struct Summary {
    pub queues_purged: u64,
    pub queues_failed: u64,
    /// Ready messages of the purged queues whose count the broker gave (sampled statistics).
    pub messages_purged: u64,
    /// Purged queues whose count the broker did not give (statistics off): unknown, never 0.
    pub queues_with_unknown_counts: u64,
    pub keys_deleted: u64,
    /// Purged queues that had consumers: messages those hold unacknowledged survive the purge.
    pub queues_with_consumers: Vec<String>,
    /// Discovered queues (pattern, dead letters) that cannot be purged (streams, exclusive
    /// queues): warned about and named, not a failure.
    pub queues_skipped: Vec<String>,
    /// Queues dead letters might reach through an unproven route: left alone, named here.
    pub dead_letter_candidates: Vec<String>,
    pub failures: Vec<String>,
    /// The most telling kind among the failures (meaningless while there are none).
    pub kind: Kind,
}

impl Summary {
    fn fail(&mut self, kind: Kind, message: String) {
        self.kind = self.kind.worst(kind);
        self.failures.push(message);
    }
}

/// How a purge run ended when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to the end.
    Done,
    /// A signal stopped it; what it stopped was restored and a failed attempt recorded.
    Stopped(Signal),
}

/// Runs `purge` (or `plan`); a failure comes back as an error whose [`Kind`] says what went wrong,
/// and refusals and configuration problems do so before anything is touched. On a signal from
/// `shutdown` the run stops its work, restores what it stopped, records a failed attempt, and
/// returns [`Outcome::Stopped`].
pub async fn run(config: &PurgeConfig, mode: Mode, mut shutdown: Shutdown) -> Result<Outcome> {
    let dry_run = mode == Mode::Plan || config.dry_run;
    if mode == Mode::Purge && config.is_production() && !config.allow_production {
        return Err(classified(
            Kind::Refused,
            format!(
                "CLEANSLATE_ENVIRONMENT is {:?}: purging production is refused unless CLEANSLATE_ALLOW_PRODUCTION=true; nothing was touched",
                config.environment.as_deref().unwrap_or_default()
            ),
        ));
    }
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
    let quiesce_target = match &config.quiesce {
        Some(settings) if !dry_run => Some((KubeClient::new(&settings.kube).await?, settings)),
        Some(settings) => {
            quiesce::preview(&KubeClient::new(&settings.kube).await?, settings).await?;
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
    info!(
        environment = config.environment.as_deref().unwrap_or(""),
        dry_run,
        rabbitmq = config.rabbitmq.is_some(),
        etcd = config.etcd.is_some(),
        quiesce = quiesce_target.is_some(),
        timeout_ms = config.timeout.as_millis() as u64,
        "{}",
        if mode == Mode::Plan { "planning" } else { "purge started" }
    );

    // Quiesce first: nothing is purged while the previous version's writers may still run.
    let progress = quiesce::Progress::default();
    let mut interrupted: Option<Signal> = None;
    let mut quiesce_failure = None;
    let cleaned_up_to = match (&quiesce_target, &marker_target) {
        (Some(_), Some((marker_kube, marker))) => match last_cleaned(marker_kube, marker).await {
            Ok(cleaned) => Some(cleaned),
            Err(err) => {
                quiesce_failure = Some(err.context("nothing was stopped"));
                None
            }
        },
        _ => None,
    };
    if let Some((kube, settings)) = quiesce_target.as_ref().filter(|_| quiesce_failure.is_none()) {
        let stopping = tokio::time::timeout(settings.timeout, quiesce::stop(kube, settings, cleaned_up_to, &progress));
        tokio::select! {
            stopped = stopping => match stopped {
                Ok(Ok(())) => {}
                Ok(Err(err)) => quiesce_failure = Some(err.context("stopping the workloads (quiesce)")),
                Err(_) => quiesce_failure = Some(progress.timeout_error(settings.timeout)),
            },
            signal = shutdown.recv() => interrupted = Some(signal),
        }
    }
    let tally = crate::tally::Tally::default();

    // CLEANSLATE_TIMEOUT bounds the purge itself; the quiesce has its own timeout.
    let deadline = Instant::now() + config.timeout;

    let rabbit_side = async {
        match &rabbit {
            Some((client, settings)) => Some(clean_rabbitmq(client, settings, config, dry_run, deadline, &tally).await),
            None => None,
        }
    };
    let etcd_side = async {
        match (&config.etcd, etcd_plan) {
            (Some(settings), Some(plan)) => {
                Some(clean_etcd(settings, plan, &config.retry, request_timeout, dry_run, deadline, &tally).await)
            }
            _ => None,
        }
    };

    let mut summary = match (&quiesce_failure, interrupted) {
        (None, None) => {
            let purging = async { tokio::join!(rabbit_side, etcd_side) };
            tokio::select! {
                (rabbit_result, etcd_result) = purging => summarize(rabbit_result, etcd_result, dry_run),
                signal = shutdown.recv() => {
                    interrupted = Some(signal);
                    // What committed before the signal stays committed: the marker says so.
                    let counts = tally.counts();
                    Summary {
                        queues_purged: counts.queues_purged,
                        messages_purged: counts.messages_purged,
                        queues_with_unknown_counts: counts.queues_with_unknown_counts,
                        keys_deleted: counts.keys_deleted,
                        ..Summary::default()
                    }
                }
            }
        }
        _ => Summary::default(),
    };
    if let Some(err) = quiesce_failure {
        summary.fail(kind_of(&err), format!("{err:#}; nothing was purged"));
    }
    if let Some(signal) = interrupted {
        // Whatever finished before the signal is not known for sure: the marker says failed.
        summary.fail(Kind::Failed, format!("stopped by {} before the purge finished", signal.name()));
    }

    // Put the workloads back: after a failure the previous version keeps running; in the helm
    // test Pod the reset is complete only when they run again.
    let mut resume_failures = Vec::new();
    if let Some((kube, settings)) = &quiesce_target {
        let stopped = progress.stopped();
        let failed = !summary.failures.is_empty();
        if !stopped.is_empty() && (failed || settings.resume_after_purge) {
            let budget = if interrupted.is_some() { SIGNAL_RESTORE_BUDGET } else { RESTORE_BUDGET };
            let report = quiesce::restore(kube, &settings.namespace, &stopped, Instant::now() + budget).await;
            let restored = report.describe_restored();
            if failed {
                if !restored.is_empty() {
                    summary.failures.push(restored);
                }
                for line in report.describe_failed() {
                    summary.fail(report.kind, line);
                }
            } else {
                if !restored.is_empty() {
                    info!(workloads = %restored, "workloads resumed after the purge (CLEANSLATE_QUIESCE_RESUME)");
                }
                resume_failures = report.describe_failed();
                if !resume_failures.is_empty() {
                    summary.kind = summary.kind.worst(report.kind);
                }
            }
        } else if !stopped.is_empty() {
            // Stopped until the release's apply and the resume Job start them again. If Helm's
            // apply fails after this purge (an immutable field, a webhook), no post-upgrade hook
            // runs: say how to recover where the operator will look, in this Job's log.
            let list: Vec<String> = stopped.iter().map(ToString::to_string).collect();
            info!(
                workloads = %list.join(","),
                "workloads stay stopped until this release's apply and its resume Job start them; if the apply fails, \
                 run `CLEANSLATE_NAMESPACE={} CLEANSLATE_QUIESCE={} cleanslate resume` or upgrade again (the next \
                 successful upgrade restores the recorded counts); `cleanslate status` shows what is stopped",
                settings.namespace,
                list.join(",")
            );
        }
    }

    let duration_ms = clock.elapsed().as_millis() as u64;
    let mut kind = summary.kind;
    let with_consumers = summary.queues_with_consumers.join(", ");
    let candidates = summary.dead_letter_candidates.join(", ");
    let skipped = summary.queues_skipped.join("; ");
    // Left out of the log line when no purged queue had a count: unknown, never 0.
    let messages_known = crate::tally::known_messages(
        summary.queues_purged,
        summary.messages_purged,
        summary.queues_with_unknown_counts,
    );
    if summary.failures.is_empty() {
        info!(
            status = "succeeded",
            dry_run,
            queues_purged = summary.queues_purged,
            messages_purged_approx = messages_known,
            queues_with_unknown_counts = summary.queues_with_unknown_counts,
            keys_deleted = summary.keys_deleted,
            queues_with_consumers = %with_consumers,
            dead_letter_candidates_not_purged = %candidates,
            queues_skipped = %skipped,
            duration_ms,
            "{}",
            if dry_run { "plan finished, nothing changed" } else { "purge finished" }
        );
        let messages = messages_known.map_or_else(|| "unknown".to_string(), |n| format!("~{n}"));
        crate::termination::on_success(format!(
            "{} {} queues ({messages} messages, the broker's sampled count), {} etcd keys in {duration_ms} ms{}",
            if dry_run { "would purge" } else { "purged" },
            summary.queues_purged,
            summary.keys_deleted,
            config.marker.as_ref().map(|m| format!(" (revision {})", m.revision)).unwrap_or_default()
        ));
    } else {
        error!(
            status = "failed",
            failure_kind = ?kind,
            dry_run,
            queues_purged = summary.queues_purged,
            queues_failed = summary.queues_failed,
            messages_purged_approx = messages_known,
            queues_with_unknown_counts = summary.queues_with_unknown_counts,
            keys_deleted = summary.keys_deleted,
            queues_with_consumers = %with_consumers,
            dead_letter_candidates_not_purged = %candidates,
            queues_skipped = %skipped,
            duration_ms,
            failures = %summary.failures.join("; "),
            "purge failed"
        );
    }

    if !with_consumers.is_empty() {
        warn!(queues = %with_consumers, "these queues had consumers: messages they hold unacknowledged survived the purge");
    }
    if !skipped.is_empty() {
        warn!(queues = %skipped, "these queues were found by the pattern or as dead-letter queues but cannot be purged; not a failure");
    }

    // Not on the signal path: the pod's grace period is for the restore and the marker.
    if let Some((kube, settings)) = marker_target.as_ref().filter(|_| interrupted.is_none()) {
        let (reason, note) = if summary.failures.is_empty() {
            (Reason::CleanupSucceeded, crate::termination::success_line("purge"))
        } else {
            (
                Reason::CleanupFailed,
                format!("cleanup of revision {} failed: {}", settings.revision, summary.failures.join("; ")),
            )
        };
        kube.events().on_own_pod(&settings.namespace, reason, note).await;
    }
    if let Some((kube, settings)) = marker_target {
        let record = Marker {
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
            message: summary.failures.join("; "),
            job: settings.pod_name.clone().unwrap_or_default(),
            // Filled in from the marker already there, by `marker::merge`.
            attempt: 0,
            is_final: false,
            last_succeeded_revision: None,
            last_succeeded_at: String::new(),
        };
        let written = match interrupted {
            // Best effort within the pod's grace period.
            Some(_) => tokio::time::timeout(SIGNAL_MARKER_BUDGET, write_marker(&kube, settings, &record, job_at_start))
                .await
                .unwrap_or_else(|_| Err(anyhow!("writing the marker: no answer within {SIGNAL_MARKER_BUDGET:?}"))),
            None => write_marker(&kube, settings, &record, job_at_start).await,
        };
        if let Err(err) = written {
            error!(marker = %settings.name, namespace = %settings.namespace, error = %format!("{err:#}"), "marker not written");
            kind = kind.worst(kind_of(&err));
            if summary.failures.is_empty() && interrupted.is_none() {
                // The run fails after all: put back what it stopped (unless the helm test run
                // already did), or the apps stay at 0 while the Job retries and Helm gives up.
                if let Some((kube, quiesce)) = &quiesce_target
                    && !quiesce.resume_after_purge
                    && !progress.stopped().is_empty()
                {
                    let report = quiesce::restore(
                        kube,
                        &quiesce.namespace,
                        &progress.stopped(),
                        Instant::now() + RESTORE_BUDGET,
                    )
                    .await;
                    let mut lines = vec![report.describe_restored()];
                    lines.extend(report.describe_failed());
                    lines.retain(|line| !line.is_empty());
                    if !lines.is_empty() {
                        return Err(err.context(lines.join("; ")));
                    }
                }
                return Err(err);
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

async fn clean_rabbitmq(
    client: &Management,
    settings: &RabbitConfig,
    config: &PurgeConfig,
    dry_run: bool,
    deadline: Instant,
    tally: &crate::tally::Tally,
) -> Result<RabbitReport> {
    let selection = client.select(settings, &config.retry, deadline).await?;
    if dry_run {
        let unknown = || "unknown".to_string();
        for queue in &selection.queues {
            let info = &queue.info;
            let consumers = info.consumers.map_or_else(unknown, |n| n.to_string());
            let unacknowledged = info.messages_unacknowledged.map_or_else(unknown, |n| n.to_string());
            match info.messages_ready {
                Some(approx_messages) => info!(
                    vhost = %settings.vhost, queue = %info.name, reason = %queue.reason, queue_type = info.kind(),
                    approx_messages, unacknowledged = %unacknowledged, consumers = %consumers, "would purge queue"
                ),
                None => info!(
                    vhost = %settings.vhost, queue = %info.name, reason = %queue.reason, queue_type = info.kind(),
                    approx_messages = "unknown", unacknowledged = %unacknowledged, consumers = %consumers,
                    "would purge queue"
                ),
            }
        }
    }
    if settings.missing == MissingQueue::Fail && !selection.missing.is_empty() {
        // Nothing is purged when the selection is known to be wrong.
        return Err(anyhow!(
            "named queues missing in vhost {:?}: {} (CLEANSLATE_RABBITMQ_MISSING=fail); no queue was purged",
            settings.vhost,
            selection.missing.join(", ")
        ));
    }
    if dry_run {
        return Ok(RabbitReport { selection, outcomes: Vec::new() });
    }
    let outcomes = client.purge_all(&selection, config.concurrency, &config.retry, deadline, tally).await;
    Ok(RabbitReport { selection, outcomes })
}

async fn clean_etcd(
    settings: &crate::config::EtcdConfig,
    plan: RangePlan,
    policy: &RetryPolicy,
    request_timeout: Duration,
    dry_run: bool,
    deadline: Instant,
    tally: &crate::tally::Tally,
) -> Result<EtcdReport> {
    let started = std::time::Instant::now();
    let session = etcd::Session::new(settings, request_timeout);
    session.connect(policy, deadline).await?;
    if dry_run {
        let protected: Vec<KeyRange> = plan.protected.iter().map(|p| KeyRange::prefix(p.as_bytes())).collect();
        let all: Vec<KeyRange> = plan.ranges.iter().chain(&protected).cloned().collect();
        let mut counts = session.count(&all, policy, deadline).await?;
        let protected_counts = counts.split_off(plan.ranges.len());
        for (range, keys) in plan.ranges.iter().zip(&counts) {
            info!(range = %range, keys, "would delete key range");
        }
        for (prefix, keys) in plan.protected.iter().zip(protected_counts) {
            info!(prefix = %prefix, keys, reason = "listed in CLEANSLATE_ETCD_PROTECTED_PREFIXES", "protected keys kept");
        }
        return Ok(EtcdReport { plan, counts, failure: None });
    }
    let deletion = session.delete(&plan.ranges, policy, deadline, tally).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    for (range, keys) in plan.ranges.iter().zip(&deletion.committed) {
        info!(range = %range, keys_deleted = keys, duration_ms, "deleted key range");
    }
    for range in plan.ranges.iter().skip(deletion.committed.len()) {
        warn!(range = %range, "key range not deleted");
    }
    for prefix in &plan.protected {
        info!(prefix = %prefix, reason = "listed in CLEANSLATE_ETCD_PROTECTED_PREFIXES", "protected keys kept");
    }
    Ok(EtcdReport { plan, counts: deletion.committed, failure: deletion.failure })
}

fn summarize(rabbit: Option<Result<RabbitReport>>, etcd: Option<Result<EtcdReport>>, dry_run: bool) -> Summary {
    let mut summary = Summary::default();
    match rabbit {
        None => {}
        Some(Err(err)) => summary.fail(kind_of(&err), format!("rabbitmq: {err:#}")),
        Some(Ok(report)) => {
            summary.dead_letter_candidates =
                report.selection.dead_letter_candidates.iter().map(|c| c.queue.clone()).collect();
            let mut not_purged = Vec::new();
            for (queue, outcome) in report.selection.queues.iter().zip(&report.outcomes) {
                match outcome {
                    QueueOutcome::Purged { approx_ready } => {
                        summary.queues_purged += 1;
                        match approx_ready {
                            Some(count) => summary.messages_purged += count,
                            None => summary.queues_with_unknown_counts += 1,
                        }
                        if queue.info.unacknowledged_survive() == Some(true) {
                            summary.queues_with_consumers.push(queue.info.name.clone());
                        }
                    }
                    QueueOutcome::Vanished => {}
                    QueueOutcome::Skipped(why) => summary.queues_skipped.push(format!("{} ({why})", queue.info.name)),
                    QueueOutcome::Failed(message) => {
                        summary.queues_failed += 1;
                        not_purged.push(queue.info.name.as_str());
                        summary.fail(Kind::Failed, format!("queue {:?}: {message}", queue.info.name));
                    }
                }
            }
            if !not_purged.is_empty() {
                // First in the failure summary: what an operator needs to finish by hand, if anything.
                let line = format!(
                    "purged {} of {} queues; not purged: {}",
                    summary.queues_purged,
                    report.selection.queues.len(),
                    not_purged.join(", ")
                );
                warn!(queues = %not_purged.join(", "), "queues not purged");
                summary.failures.insert(0, line);
            }
        }
    }
    match etcd {
        None => {}
        Some(Err(err)) => summary.fail(kind_of(&err), format!("etcd: {err:#}")),
        Some(Ok(report)) if !dry_run => {
            // Committed transactions stay committed: their keys are reported even on failure.
            summary.keys_deleted = report.counts.iter().take(report.plan.ranges.len()).sum();
            if let Some(err) = report.failure {
                let line = format!(
                    "etcd: deleted {} of {} key ranges ({} keys) before: {err:#}",
                    report.counts.len(),
                    report.plan.ranges.len(),
                    summary.keys_deleted
                );
                summary.fail(kind_of(&err), line);
            }
        }
        Some(Ok(_)) => {}
    }
    summary
}

/// The marker and its last successful revision, read before the quiesce (retried briefly). A
/// marker that cannot be read fails the run before anything is stopped: without it quiesce cannot
/// tell pods that wait in their gates from pods that ran, and the marker write would fail too.
async fn last_cleaned(kube: &KubeClient, settings: &MarkerConfig) -> Result<quiesce::CleanedUpTo> {
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
async fn read_job(kube: &KubeClient, settings: &MarkerConfig) -> Option<JobProgress> {
    let job = settings.job_name.as_ref()?;
    match tokio::time::timeout(Duration::from_secs(5), kube.job_progress(&settings.namespace, job)).await {
        Ok(Ok(Some(progress))) => Some(progress),
        Ok(Ok(None)) => {
            warn!(job = %job, "the Job was not found; counting attempts in the marker");
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
async fn write_marker(
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
                let mut object = current.unwrap_or_else(|| new_config_map(&settings.name, &settings.namespace));
                let labels = object.metadata.labels.get_or_insert_default();
                labels.insert(marker::MANAGED_BY.0.into(), marker::MANAGED_BY.1.into());
                if let Some(release) = &settings.release {
                    labels.insert(marker::INSTANCE_LABEL.into(), release.clone());
                }
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
