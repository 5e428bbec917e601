//! What a run did, summed up: the totals, what was only reported, the failures and their worst
//! kind; and the one summary line (plus the termination message) that says it.

use anyhow::Result;
use tracing::{error, info, warn};

use crate::error::{Kind, kind_of};
use crate::etcd::RangePlan;
use crate::rabbitmq::{QueueOutcome, Selection};

/// The RabbitMQ side's result.
pub(super) struct RabbitReport {
    pub selection: Selection,
    /// One per selected queue, in order; empty in a dry run.
    pub outcomes: Vec<QueueOutcome>,
}

/// The etcd side's result.
pub(super) struct EtcdReport {
    pub plan: RangePlan,
    /// Keys deleted per committed range.
    pub counts: Vec<u64>,
    /// Seed keys written.
    pub seeded: u64,
    /// What stopped the ranges after `counts` from being deleted.
    pub failure: Option<anyhow::Error>,
}

/// Totals and failures of a whole run: what the summary line and the marker say. In a dry run
/// the counts are what the run *would* purge.
#[derive(Debug, Default)]
pub struct Summary {
    pub queues_purged: u64,
    pub queues_failed: u64,
    /// Ready messages of the purged queues whose count the broker gave (sampled statistics).
    pub messages_purged: u64,
    /// Purged queues whose count the broker did not give (statistics off): unknown, never 0.
    pub queues_with_unknown_counts: u64,
    pub keys_deleted: u64,
    /// Seed keys written after the delete (in a plan: that would be).
    pub keys_seeded: u64,
    /// Purged queues that had consumers: messages those hold unacknowledged survive the purge.
    pub queues_with_consumers: Vec<String>,
    /// Discovered queues (pattern, dead letters) that cannot be purged (streams, exclusive
    /// queues): warned about and named, not a failure.
    pub queues_skipped: Vec<String>,
    /// Dead-letter queues of the selected queues that were reported, not purged: each as
    /// "`queue` receives dead letters of `source`".
    pub dead_letters_reported: Vec<String>,
    /// Why where the dead letters go is unknown, when it is.
    pub dead_letters_unknown: Option<String>,
    pub failures: Vec<String>,
    /// The trigger was the one recorded with the last cleaning: nothing was done.
    pub unchanged: bool,
    /// What a plan or dry run would stop before purging (`deployment/api (2)`).
    pub workloads_to_stop: Vec<String>,
    /// Live workloads gated on this release's marker that this run could not stop (its Role does
    /// not name them): reported, since they may have written through the purge.
    pub writers_not_stopped: Vec<String>,
    /// The most telling kind among the failures (meaningless while there are none).
    pub kind: Kind,
}

impl Summary {
    pub(super) fn fail(&mut self, kind: Kind, message: String) {
        self.kind = self.kind.worst(kind);
        self.failures.push(message);
    }

    /// Takes what the selection reported about dead letters.
    pub(super) fn note_dead_letters(&mut self, selection: &Selection) {
        self.dead_letters_reported = selection
            .dead_letter_candidates
            .iter()
            .map(|c| format!("{} (dead letters of {})", c.queue, c.dead_letters_of))
            .collect();
        self.dead_letters_unknown = selection.dead_letters_unknown.clone();
    }

    /// One line for the marker and the Event about dead letters, or nothing.
    pub fn dead_letters_line(&self) -> Option<String> {
        if !self.dead_letters_reported.is_empty() {
            return Some(format!(
                "dead-letter queues not purged (add them to cleanup.rabbitmq.queues to purge them): {}",
                self.dead_letters_reported.join(", ")
            ));
        }
        self.dead_letters_unknown.as_ref().map(|why| format!("where dead letters go is unknown: {why}"))
    }

    /// What a plan would do: every selected queue and every key counted.
    pub(super) fn of_plan(selection: Option<&Selection>, etcd_counts: &[u64]) -> Summary {
        let mut summary = Summary::default();
        if let Some(selection) = selection {
            summary.note_dead_letters(selection);
            for queue in &selection.queues {
                summary.queues_purged += 1;
                match queue.info.messages_ready {
                    Some(count) => summary.messages_purged += count,
                    None => summary.queues_with_unknown_counts += 1,
                }
            }
        }
        summary.keys_deleted = etcd_counts.iter().sum();
        summary
    }
}

/// Logs the run's summary line and writes the termination message of a success.
pub(super) fn log_outcome(summary: &Summary, dry_run: bool, duration_ms: u64, revision: Option<u64>) {
    let with_consumers = summary.queues_with_consumers.join(", ");
    let reported = summary.dead_letters_reported.join(", ");
    let skipped = summary.queues_skipped.join("; ");
    // Left out of the log line when no purged queue had a count: unknown, never 0.
    let messages_known = crate::tally::known_messages(
        summary.queues_purged,
        summary.messages_purged,
        summary.queues_with_unknown_counts,
    );
    let verb = if dry_run { "would purge" } else { "purged" };
    if summary.failures.is_empty() && dry_run {
        // What it would do, in the plan's own words: nothing was purged, deleted or stopped.
        let stop = summary.workloads_to_stop.join(", ");
        info!(
            status = "planned",
            queues_to_purge = summary.queues_purged,
            messages_to_purge_approx = messages_known,
            keys_to_delete = summary.keys_deleted,
            keys_to_seed = summary.keys_seeded,
            workloads_to_stop = %stop,
            dead_letter_queues_not_purged = %reported,
            queues_skipped = %skipped,
            duration_ms,
            "plan finished, nothing changed: would purge {} queues ({} messages), would delete {} etcd keys and seed {}, would stop {}",
            summary.queues_purged,
            messages_known.map_or_else(|| "unknown".to_string(), |n| format!("~{n}")),
            summary.keys_deleted,
            summary.keys_seeded,
            if stop.is_empty() { "nothing".to_string() } else { stop.clone() }
        );
        crate::termination::on_success(format!(
            "would purge {} queues, {} etcd keys{}",
            summary.queues_purged,
            summary.keys_deleted,
            revision.map(|r| format!(" (revision {r}, dry run)")).unwrap_or_default()
        ));
    } else if summary.failures.is_empty() {
        info!(
            status = "succeeded",
            dry_run,
            queues_purged = summary.queues_purged,
            messages_purged_approx = messages_known,
            queues_with_unknown_counts = summary.queues_with_unknown_counts,
            keys_deleted = summary.keys_deleted,
            keys_seeded = summary.keys_seeded,
            queues_with_consumers = %with_consumers,
            dead_letter_queues_not_purged = %reported,
            queues_skipped = %skipped,
            duration_ms,
            "purge finished"
        );
        let messages = messages_known.map_or_else(|| "unknown".to_string(), |n| format!("~{n}"));
        let seeded =
            if summary.keys_seeded > 0 { format!(", seeded {} keys", summary.keys_seeded) } else { String::new() };
        crate::termination::on_success(format!(
            "{verb} {} queues ({messages} messages, the broker's sampled count), {} etcd keys{seeded} in {duration_ms} ms{}",
            summary.queues_purged,
            summary.keys_deleted,
            revision.map(|r| format!(" (revision {r})")).unwrap_or_default()
        ));
    } else {
        error!(
            status = "failed",
            failure_kind = ?summary.kind,
            dry_run,
            queues_purged = summary.queues_purged,
            queues_failed = summary.queues_failed,
            messages_purged_approx = messages_known,
            queues_with_unknown_counts = summary.queues_with_unknown_counts,
            keys_deleted = summary.keys_deleted,
            queues_with_consumers = %with_consumers,
            dead_letter_queues_not_purged = %reported,
            queues_skipped = %skipped,
            duration_ms,
            failures = %summary.failures.join("; "),
            "purge failed"
        );
    }
    if !summary.writers_not_stopped.is_empty() {
        warn!(
            workloads = %summary.writers_not_stopped.join(", "),
            "gated on this release's marker but not stopped (this Job's Role does not name them): they may have \
             written through the purge; add them to cleanup.quiesce.workloads"
        );
    }
    if !with_consumers.is_empty() {
        warn!(queues = %with_consumers, "these queues had consumers: messages they hold unacknowledged survived the purge");
    }
    if !skipped.is_empty() {
        warn!(queues = %skipped, "these queues were found by the pattern or as dead-letter queues but cannot be purged; not a failure");
    }
}

/// Totals and failures of an executed run, from each side's report.
pub(super) fn summarize(rabbit: Option<Result<RabbitReport>>, etcd: Option<Result<EtcdReport>>) -> Summary {
    let mut summary = Summary::default();
    match rabbit {
        None => {}
        Some(Err(err)) => summary.fail(kind_of(&err), format!("rabbitmq: {err:#}")),
        Some(Ok(report)) => {
            summary.note_dead_letters(&report.selection);
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
                    QueueOutcome::Failed { kind, message } => {
                        summary.queues_failed += 1;
                        not_purged.push(queue.info.name.as_str());
                        summary.fail(*kind, format!("queue {:?}: {message}", queue.info.name));
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
        Some(Ok(report)) => {
            // Committed transactions stay committed: their keys are reported even on failure.
            summary.keys_deleted = report.counts.iter().take(report.plan.ranges.len()).sum();
            summary.keys_seeded = report.seeded;
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
    }
    summary
}
