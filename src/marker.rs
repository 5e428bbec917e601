//! The marker: what a purge run records in its ConfigMap, and the rules that read it.
//!
//! Pure data and decisions, no I/O, so every rule is unit-tested. The marker's `data` holds only
//! strings (a ConfigMap's data is `map[string]string`), and never a secret: `message` is built from
//! error summaries that name users, queues and prefixes, never passwords or tokens.
//!
//! The marker keeps two things apart (README, "Reading the marker"):
//! - the **latest attempt** (`revision`, `status`, counts, `message`, `attempt`, `final`), which says
//!   how the most recent run went;
//! - the **last success** (`lastSucceededRevision`, `lastSucceededAt`), which only ever moves up.
//!
//! The rules:
//! - a gate passes when a success at `revision >= expected` is recorded: a rollback renders an older
//!   revision and must start against the last cleaned state, and a failed `helm test` or a failed
//!   attempt that the Job will retry must not block pods of a revision that was already cleaned;
//! - a gate fails at once only on a *final* failure of *its* revision (the Job will not retry);
//! - a writer never lowers the revision: an old run finishing late leaves a newer marker alone;
//! - a failure is final on the Job's last attempt (`CLEANSLATE_JOB_ATTEMPTS`, the chart sets it to
//!   `backoffLimit + 1`); attempts are counted here, per revision, because a pod cannot see its Job's
//!   retry count.

use std::collections::BTreeMap;

/// The labels every marker carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "cleanslate");
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// The label that says which part of the release an object is; the marker's is `marker`.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }
}

/// One run's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub revision: u64,
    pub status: RunStatus,
    pub dry_run: bool,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    pub duration_ms: u64,
    pub queues_purged: u64,
    /// Approximate: RabbitMQ's message counts are sampled statistics; only queues whose count the
    /// broker gave.
    pub messages_purged: u64,
    /// Purged queues whose count the broker did not give (statistics off): `messagesPurged` says
    /// "unknown" when no purged queue had a count.
    pub queues_with_unknown_counts: u64,
    pub keys_deleted: u64,
    /// Seed keys written after the delete (`CLEANSLATE_ETCD_SEED_FILE`).
    pub keys_seeded: u64,
    /// The error summary of a failed run; empty on success.
    pub message: String,
    /// What kind of failure it was (`Kind::as_str`: `configuration`, `denied`, `unreachable`, …);
    /// empty on success. `status` picks the next step from it.
    pub failure_kind: String,
    /// The dead-letter queues of the selected queues that were reported, not purged, each with the
    /// queue that feeds it (or why where dead letters go is unknown); empty when there are none.
    pub dead_letters: String,
    /// Live workloads gated on this marker that the run could not stop (its Role did not name
    /// them), comma-separated: they may have written through the purge. Empty when none.
    pub writers_not_stopped: String,
    /// The pod that ran the purge.
    pub job: String,
    /// Which attempt at `revision` this record is (1 for the first run of a revision); set by [`merge`].
    pub attempt: u32,
    /// For a failed run: no further attempt will come (the Job's last attempt, or a one-shot run).
    pub is_final: bool,
    /// The highest revision whose run succeeded, kept across later failed attempts; set by [`merge`].
    pub last_succeeded_revision: Option<u64>,
    /// RFC 3339 end of that successful run; empty when there is none.
    pub last_succeeded_at: String,
    /// The run found the trigger unchanged since the last cleaning: it stopped and purged nothing.
    pub unchanged: bool,
}

/// The longest `message` written: a ConfigMap holds up to 1 MiB, but a marker is read by people.
const MAX_MESSAGE: usize = 2000;

impl Marker {
    /// The ConfigMap `data` for this marker.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut message = self.message.clone();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …");
        }
        [
            ("revision", self.revision.to_string()),
            ("status", self.status.as_str().to_string()),
            ("dryRun", self.dry_run.to_string()),
            ("startedAt", self.started_at.clone()),
            ("finishedAt", self.finished_at.clone()),
            ("durationMs", self.duration_ms.to_string()),
            ("queuesPurged", self.queues_purged.to_string()),
            ("messagesPurged", self.messages_text()),
            ("queuesWithUnknownCounts", self.queues_with_unknown_counts.to_string()),
            ("keysDeleted", self.keys_deleted.to_string()),
            ("keysSeeded", self.keys_seeded.to_string()),
            ("message", message),
            ("failureKind", self.failure_kind.clone()),
            ("deadLettersNotPurged", crate::text::fit_bytes(self.dead_letters.clone(), MAX_MESSAGE)),
            ("writersNotStopped", self.writers_not_stopped.clone()),
            ("job", self.job.clone()),
            ("attempt", self.attempt.to_string()),
            ("final", self.is_final.to_string()),
            ("lastSucceededRevision", self.last_succeeded_revision.map(|r| r.to_string()).unwrap_or_default()),
            ("lastSucceededAt", self.last_succeeded_at.clone()),
            ("unchanged", self.unchanged.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `messagesPurged` as written: a count, or "unknown" when every purged queue's count was.
    fn messages_text(&self) -> String {
        crate::tally::known_messages(self.queues_purged, self.messages_purged, self.queues_with_unknown_counts)
            .map_or_else(|| "unknown".to_string(), |count| count.to_string())
    }

    /// Reads a marker back; `None` for the chart's empty placeholder or anything without a valid
    /// revision and status (a gate then keeps waiting rather than guessing). A marker written before
    /// the last-success keys existed reads as its own last success (when it succeeded) and as a final
    /// failure (when it failed), which is what it meant then.
    pub fn from_data(data: &BTreeMap<String, String>) -> Option<Marker> {
        let number = |key: &str| data.get(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let text = |key: &str| data.get(key).cloned().unwrap_or_default();
        let revision = data.get("revision")?.parse::<u64>().ok()?;
        let status = match data.get("status")?.as_str() {
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            _ => return None,
        };
        let last_succeeded_revision = match data.get("lastSucceededRevision").map(|v| v.trim()) {
            Some("") => None,
            Some(text) => Some(text.parse::<u64>().ok()?),
            None => (status == RunStatus::Succeeded).then_some(revision),
        };
        Some(Marker {
            revision,
            status,
            attempt: data.get("attempt").and_then(|v| v.parse().ok()).unwrap_or(1),
            is_final: data.get("final").is_none_or(|v| v != "false"),
            last_succeeded_revision,
            last_succeeded_at: text("lastSucceededAt"),
            dry_run: data.get("dryRun").is_some_and(|v| v == "true"),
            started_at: text("startedAt"),
            finished_at: text("finishedAt"),
            duration_ms: number("durationMs"),
            queues_purged: number("queuesPurged"),
            messages_purged: number("messagesPurged"),
            queues_with_unknown_counts: number("queuesWithUnknownCounts"),
            keys_deleted: number("keysDeleted"),
            keys_seeded: number("keysSeeded"),
            message: text("message"),
            failure_kind: text("failureKind"),
            unchanged: data.get("unchanged").is_some_and(|v| v == "true"),
            dead_letters: text("deadLettersNotPurged"),
            writers_not_stopped: text("writersNotStopped"),
            job: text("job"),
        })
    }
}

/// What a gate does with what it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Start the pod.
    Pass,
    /// The cleanup for this revision failed: fail now with its message.
    Failed(String),
    /// Nothing decisive yet: keep watching.
    Wait,
}

/// The gate's rule for a marker (or its absence) and the revision the pod belongs to.
pub fn verdict(marker: Option<&Marker>, expected_revision: u64) -> Verdict {
    match marker {
        Some(m) if m.last_succeeded_revision.is_some_and(|r| r >= expected_revision) => Verdict::Pass,
        // Only this revision's final failure is decisive: a newer revision's failed run (an upgrade
        // that failed while this pod's release still runs) leaves this pod waiting, not
        // crash-looping, and a failed attempt the Job will retry may still be followed by success.
        Some(m) if m.revision == expected_revision && m.status == RunStatus::Failed && m.is_final => {
            Verdict::Failed(if m.message.is_empty() {
                format!("cleanup for revision {} failed (job {})", m.revision, m.job)
            } else {
                format!("cleanup for revision {} failed (job {}): {}", m.revision, m.job, m.message)
            })
        }
        _ => Verdict::Wait,
    }
}

/// Whether a run of `new_revision` may overwrite `existing`: never backwards.
pub fn may_replace(existing: Option<&Marker>, new_revision: u64) -> bool {
    existing.is_none_or(|m| m.revision <= new_revision)
}

/// The marker to write for `run` over `existing`, or `None` when a newer revision is recorded.
///
/// `run` carries what this run did; its `attempt`, `is_final` and last-success fields are filled in
/// here: the attempt number counts runs of the same revision, a failure is final from attempt
/// `job_attempts` on (or at once when `run` says no retry can change it), and the last success is the higher of the recorded one and this run's.
pub fn merge(existing: Option<&Marker>, run: &Marker, job_attempts: u32) -> Option<Marker> {
    if !may_replace(existing, run.revision) {
        return older_success(existing?, run);
    }
    let mut next = run.clone();
    let counted = match existing {
        Some(m) if m.revision == run.revision => m.attempt.saturating_add(1),
        _ => 1,
    };
    // The Job's own count (set on `run` by the caller when known) also knows attempts that never
    // wrote, and is not pushed up by other runs of the revision (`helm test`, by hand).
    next.attempt = if run.attempt > 0 { run.attempt } else { counted };
    next.is_final = run.status == RunStatus::Failed && (run.is_final || next.attempt >= job_attempts.max(1));
    let recorded = existing.and_then(|m| m.last_succeeded_revision.map(|r| (r, m.last_succeeded_at.clone())));
    let this_run = (run.status == RunStatus::Succeeded).then(|| (run.revision, run.finished_at.clone()));
    match recorded.into_iter().chain(this_run).max_by_key(|(revision, _)| *revision) {
        Some((revision, at)) => {
            next.last_succeeded_revision = Some(revision);
            next.last_succeeded_at = at;
        }
        None => {
            next.last_succeeded_revision = None;
            next.last_succeeded_at = String::new();
        }
    }
    Some(next)
}

/// A successful run of a revision older than the marker's: `helm test` after `helm rollback` runs
/// the test Pod of the manifest rolled back to, with its old revision. The newer run's record
/// stays, but the success is kept as the last one when it is higher than the recorded one, so the
/// rolled-back pods' gates pass; `None` when it adds nothing.
fn older_success(existing: &Marker, run: &Marker) -> Option<Marker> {
    let higher = existing.last_succeeded_revision.is_none_or(|r| r < run.revision);
    if run.status != RunStatus::Succeeded || run.dry_run || !higher {
        return None;
    }
    let mut next = existing.clone();
    next.last_succeeded_revision = Some(run.revision);
    next.last_succeeded_at = run.finished_at.clone();
    Some(next)
}

/// Short human description of a marker, for logs and timeout messages.
pub fn describe(marker: Option<&Marker>) -> String {
    match marker {
        None => "no marker written yet".to_string(),
        Some(m) => {
            let last = match m.last_succeeded_revision {
                Some(r) if r == m.revision && m.status == RunStatus::Succeeded => String::new(),
                Some(r) => format!(", last success at revision {r}"),
                None => ", no success recorded".to_string(),
            };
            let retry = if m.status == RunStatus::Failed && !m.is_final { ", will be retried" } else { "" };
            format!("revision {} {} (attempt {}{retry}){last}", m.revision, m.status.as_str(), m.attempt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(revision: u64, status: RunStatus) -> Marker {
        Marker {
            revision,
            status,
            dry_run: false,
            started_at: "2026-11-22T10:00:00Z".into(),
            finished_at: "2026-11-22T10:00:01Z".into(),
            duration_ms: 1000,
            queues_purged: 2,
            messages_purged: 40,
            queues_with_unknown_counts: 0,
            keys_deleted: 10,
            keys_seeded: 0,
            message: String::new(),
            failure_kind: String::new(),
            dead_letters: String::new(),
            writers_not_stopped: String::new(),
            job: "cleanslate-purge-abc".into(),
            attempt: 1,
            is_final: true,
            last_succeeded_revision: (status == RunStatus::Succeeded).then_some(revision),
            last_succeeded_at: String::new(),
            unchanged: false,
        }
    }

    /// Counts the broker did not give are written as unknown, never as 0.
    #[test]
    fn unknown_message_counts_say_so() {
        let mut m = marker(7, RunStatus::Succeeded);
        m.queues_purged = 2;
        m.messages_purged = 0;
        m.queues_with_unknown_counts = 2;
        assert_eq!(m.to_data()["messagesPurged"], "unknown", "no count known");
        m.messages_purged = 5;
        m.queues_with_unknown_counts = 1;
        let data = m.to_data();
        assert_eq!(
            (data["messagesPurged"].as_str(), data["queuesWithUnknownCounts"].as_str()),
            ("5", "1"),
            "partly known"
        );
    }

    /// The data has exactly the documented keys, all strings, and reads back to the same marker.
    #[test]
    fn data_shape_round_trips() {
        let m = marker(7, RunStatus::Succeeded);
        let data = m.to_data();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "attempt",
                "deadLettersNotPurged",
                "dryRun",
                "durationMs",
                "failureKind",
                "final",
                "finishedAt",
                "job",
                "keysDeleted",
                "keysSeeded",
                "lastSucceededAt",
                "lastSucceededRevision",
                "message",
                "messagesPurged",
                "queuesPurged",
                "queuesWithUnknownCounts",
                "revision",
                "startedAt",
                "status",
                "unchanged",
                "writersNotStopped"
            ],
            "documented keys only"
        );
        assert_eq!(data["status"], "succeeded", "status string");
        assert_eq!(Marker::from_data(&data), Some(m), "round trip");
        assert_eq!(Marker::from_data(&BTreeMap::new()), None, "empty placeholder is no marker");
    }

    /// The gate passes on this or a newer successful revision, fails on this revision's failure,
    /// and waits otherwise.
    #[test]
    fn gate_verdicts() {
        assert_eq!(verdict(None, 3), Verdict::Wait, "nothing yet");
        assert_eq!(verdict(Some(&marker(3, RunStatus::Succeeded)), 3), Verdict::Pass, "this revision");
        assert_eq!(verdict(Some(&marker(4, RunStatus::Succeeded)), 3), Verdict::Pass, "newer (rollback)");
        assert_eq!(verdict(Some(&marker(2, RunStatus::Succeeded)), 3), Verdict::Wait, "older");
        assert_eq!(verdict(Some(&marker(4, RunStatus::Failed)), 3), Verdict::Wait, "newer failure is not ours");
        let mut failed = marker(3, RunStatus::Failed);
        failed.message = "queue q: 400".into();
        match verdict(Some(&failed), 3) {
            Verdict::Failed(message) => assert!(message.contains("queue q: 400"), "carries the Job's message"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// A failed attempt the Job will retry does not fail gates; the last attempt's failure does;
    /// a success survives later failures of the same or a newer revision.
    #[test]
    fn only_final_failures_fail_gates_and_successes_stick() {
        let run = |revision, status| {
            let mut m = marker(revision, status);
            m.last_succeeded_revision = None;
            m.attempt = 0;
            m.is_final = false;
            m
        };
        // Revision 3: first attempt fails, the Job retries (backoffLimit 1 → 2 attempts).
        let first = merge(None, &run(3, RunStatus::Failed), 2).expect("written");
        assert_eq!((first.attempt, first.is_final), (1, false), "first of two attempts is not final");
        assert_eq!(verdict(Some(&first), 3), Verdict::Wait, "a retry may still succeed");
        let second = merge(Some(&first), &run(3, RunStatus::Failed), 2).expect("written");
        assert_eq!((second.attempt, second.is_final), (2, true), "the last attempt is final");
        assert!(matches!(verdict(Some(&second), 3), Verdict::Failed(_)), "final failure fails the gate");
        // Rejected credentials on the first of three attempts: the Job ends on its exit code.
        let mut denied = run(4, RunStatus::Failed);
        denied.is_final = true;
        let denied = merge(Some(&second), &denied, 3).expect("written");
        assert_eq!((denied.attempt, denied.is_final), (1, true), "a failure no retry changes is final at once");
        // A success at 3, then a failing `helm test` (a one-shot run) at 3: pods of 3 still start.
        let ok = merge(Some(&second), &run(3, RunStatus::Succeeded), 2).expect("written");
        assert_eq!(ok.last_succeeded_revision, Some(3), "success recorded");
        let test_failed = merge(Some(&ok), &run(3, RunStatus::Failed), 1).expect("written");
        assert_eq!(test_failed.status, RunStatus::Failed, "latest attempt is the failure");
        assert_eq!(verdict(Some(&test_failed), 3), Verdict::Pass, "an earlier success still lets pods of 3 start");
        // Upgrade to 4 fails for good: pods of 3 (the running version) still pass; pods of 4 fail.
        let upgrade_failed = merge(Some(&test_failed), &run(4, RunStatus::Failed), 1).expect("written");
        assert_eq!(upgrade_failed.last_succeeded_revision, Some(3), "last success carried forward");
        assert_eq!(verdict(Some(&upgrade_failed), 3), Verdict::Pass, "restarted pods of 3 pass");
        assert!(matches!(verdict(Some(&upgrade_failed), 4), Verdict::Failed(_)), "pods of 4 fail fast");
        let back = Marker::from_data(&upgrade_failed.to_data()).expect("reads back");
        assert_eq!(back, upgrade_failed, "new keys round-trip");
    }

    /// A marker written before the last-success keys existed keeps its old meaning.
    #[test]
    fn older_markers_read_as_before() {
        let mut data = marker(5, RunStatus::Failed).to_data();
        for key in ["attempt", "final", "lastSucceededRevision", "lastSucceededAt"] {
            data.remove(key);
        }
        let old = Marker::from_data(&data).expect("reads");
        assert!(old.is_final && old.last_succeeded_revision.is_none(), "old failure is final, no success");
        data.insert("status".into(), "succeeded".into());
        let old = Marker::from_data(&data).expect("reads");
        assert_eq!(old.last_succeeded_revision, Some(5), "old success is its own last success");
    }

    /// A writer never lowers the revision.
    #[test]
    fn revision_never_goes_backwards() {
        assert!(may_replace(None, 1), "create");
        assert!(may_replace(Some(&marker(3, RunStatus::Succeeded)), 3), "same revision rewrites (helm test)");
        assert!(may_replace(Some(&marker(3, RunStatus::Succeeded)), 4), "newer");
        assert!(!may_replace(Some(&marker(5, RunStatus::Succeeded)), 4), "older run finishing late");
    }

    /// Long messages are cut at a character boundary.
    #[test]
    fn long_messages_are_truncated() {
        let mut m = marker(1, RunStatus::Failed);
        m.message = "é".repeat(3000);
        let data = m.to_data();
        assert!(data["message"].len() <= MAX_MESSAGE + 4, "bounded");
        assert!(data["message"].ends_with('…'), "marked as cut");
    }

    /// After a rollback, `helm test` runs the older revision: its success becomes the last success
    /// (so that revision's gates pass) without overwriting the newer revision's record; a failure
    /// or an older success than the recorded one changes nothing.
    #[test]
    fn an_older_revisions_success_is_kept_as_the_last_success() {
        let mut failed = marker(4, RunStatus::Failed);
        failed.last_succeeded_revision = Some(2);
        let older = marker(3, RunStatus::Succeeded);
        let merged = merge(Some(&failed), &older, 1).expect("recorded");
        assert_eq!((merged.revision, merged.status), (4, RunStatus::Failed), "the newer run's record stays");
        assert_eq!(merged.last_succeeded_revision, Some(3), "the rollback's success is the last success");
        assert_eq!(verdict(Some(&merged), 3), Verdict::Pass, "the rolled-back pods pass");
        assert!(merge(Some(&failed), &marker(3, RunStatus::Failed), 1).is_none(), "an older failure: nothing");
        assert!(merge(Some(&failed), &marker(1, RunStatus::Succeeded), 1).is_none(), "not higher: nothing");
    }
}
