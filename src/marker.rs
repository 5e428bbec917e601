//! The marker: what a purge run records in its ConfigMap, and the rules that read it.
//!
//! Pure data and decisions, no I/O, so every rule is unit-tested. The marker's `data` holds only
//! strings (a ConfigMap's data is `map[string]string`), and never a secret: `message` is built from
//! error summaries that name users, queues and prefixes, never passwords or tokens.
//!
//! The rules (DESIGN.md, "Marker" and "Gate"):
//! - a gate passes when `revision >= expected` and the run succeeded (a rollback renders an older
//!   revision and must start against the last cleaned state);
//! - a gate fails at once when the marker of *its* revision says the run failed;
//! - a writer never lowers the revision: an old run finishing late leaves a newer marker alone.

use std::collections::BTreeMap;

/// The labels every marker carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "cleanslate");
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

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
    /// Approximate: RabbitMQ's message counts are sampled statistics.
    pub messages_purged: u64,
    pub keys_deleted: u64,
    /// The error summary of a failed run; empty on success.
    pub message: String,
    /// The pod that ran the purge.
    pub job: String,
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
            ("messagesPurged", self.messages_purged.to_string()),
            ("keysDeleted", self.keys_deleted.to_string()),
            ("message", message),
            ("job", self.job.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads a marker back; `None` for the chart's empty placeholder or anything without a valid
    /// revision and status (a gate then keeps waiting rather than guessing).
    pub fn from_data(data: &BTreeMap<String, String>) -> Option<Marker> {
        let number = |key: &str| data.get(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let text = |key: &str| data.get(key).cloned().unwrap_or_default();
        let revision = data.get("revision")?.parse::<u64>().ok()?;
        let status = match data.get("status")?.as_str() {
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            _ => return None,
        };
        Some(Marker {
            revision,
            status,
            dry_run: data.get("dryRun").is_some_and(|v| v == "true"),
            started_at: text("startedAt"),
            finished_at: text("finishedAt"),
            duration_ms: number("durationMs"),
            queues_purged: number("queuesPurged"),
            messages_purged: number("messagesPurged"),
            keys_deleted: number("keysDeleted"),
            message: text("message"),
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
        Some(m) if m.revision >= expected_revision && m.status == RunStatus::Succeeded => Verdict::Pass,
        // Only this revision's failure is decisive: a newer revision's failed run (an upgrade that
        // failed while this pod's release still runs) leaves this pod waiting, not crash-looping.
        Some(m) if m.revision == expected_revision && m.status == RunStatus::Failed => {
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

/// Short human description of a marker, for logs and timeout messages.
pub fn describe(marker: Option<&Marker>) -> String {
    match marker {
        None => "no marker written yet".to_string(),
        Some(m) => format!("revision {} {}", m.revision, m.status.as_str()),
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
            keys_deleted: 10,
            message: String::new(),
            job: "cleanslate-purge-abc".into(),
        }
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
                "dryRun",
                "durationMs",
                "finishedAt",
                "job",
                "keysDeleted",
                "message",
                "messagesPurged",
                "queuesPurged",
                "revision",
                "startedAt",
                "status"
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
}
