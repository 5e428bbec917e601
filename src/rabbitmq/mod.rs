//! RabbitMQ through the management HTTP API: read the selected queues, find (and report) their
//! dead-letter queues, purge.
//!
//! A dozen endpoints are all this needs, so they are written here over reqwest rather than through the
//! `rabbitmq_http_client` crate: that crate would bring a second reqwest major (0.13, with aws-lc)
//! and its own error type, while the exit code depends on the exact status (401/403 at once,
//! 429/5xx retried, 400 reported with RabbitMQ's reason).
//!
//! What the API does that surprises (rabbitmq-server `deps/rabbitmq_management`; REFERENCES §6.3):
//! - every path segment must be percent-encoded, the default vhost `/` included (`%2F`);
//! - the list endpoint's `name` filter is a case-insensitive substring or regex, so exact and
//!   whole-name matching is done here; and its pages shift while queues come and go (a page past
//!   the end answers 400), so a whole-vhost listing is one unpaginated request (one consistent
//!   snapshot), and named queues are read one by one (their states from one filtered page);
//! - a purge answers 204 with no count, so counts come from the listing and are approximate
//!   (message counts are sampled statistics), and absent with statistics off: *unknown*, never 0;
//! - a purge answers 404 both for a deleted queue and for one that exists but is unavailable (its
//!   node down, crashed, a quorum leader moving): the queue is read again to tell them apart;
//! - with `management.disable_stats` the listing has no policy or consumer columns: dead-letter
//!   settings then come from the policies themselves ([`crate::policies`]);
//! - 3.12+ answers a failed login with 401 `Not_Authorized`, the same status as a missing
//!   permission: `/api/whoami` tells them apart;
//! - streams cannot be purged (400), nor exclusive queues of another connection; messages held
//!   unacknowledged by live consumers survive a purge.
//!
//! This module does not decide what the run's exit code is; it reports per-queue outcomes.
//!
//! Layout: [`client`] sends requests and sorts answers; [`reads`] reads queues, exchanges,
//! bindings and policies; [`selection`] decides what is purged and what is only reported;
//! [`purging`] purges.

mod client;
mod purging;
mod reads;
mod selection;

mod records;

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::Kind;

pub use crate::dead_letters::Candidate;
pub use client::{Management, encode_segment};
pub use records::DeadLetterKeys;

/// A queue as the list endpoint (or the one-queue endpoint) describes it, compactly.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    #[serde(rename = "type", default)]
    pub queue_type: Option<String>,
    #[serde(default)]
    pub exclusive: Option<bool>,
    /// `running`, or what the broker says of a queue it cannot serve (`down`, `crashed`,
    /// `stopped`, `minority`); absent with statistics off or before the first sample.
    #[serde(default)]
    pub state: Option<String>,
    /// The name of the policy that applies (`""`: none); `None` when the answer does not say.
    #[serde(default, deserialize_with = "records::policy_name")]
    pub policy: Option<String>,
    /// Sampled by the broker's statistics; absent until the first sample, or with statistics off.
    #[serde(default)]
    pub messages_ready: Option<u64>,
    #[serde(default)]
    pub messages_unacknowledged: Option<u64>,
    /// Absent with statistics off.
    #[serde(default)]
    pub consumers: Option<u64>,
    /// The dead-letter keys among the queue's arguments; `None` when the answer has no arguments.
    #[serde(default, deserialize_with = "records::argument_keys")]
    pub arguments: Option<DeadLetterKeys>,
    /// The dead-letter keys of the policy that applies (empty when none does); `None` with
    /// statistics off, where the answer does not give the definition.
    #[serde(default, deserialize_with = "records::policy_keys")]
    pub effective_policy_definition: Option<DeadLetterKeys>,
}

impl QueueInfo {
    /// `classic`, `quorum` or `stream`.
    pub fn kind(&self) -> &str {
        self.queue_type.as_deref().unwrap_or("classic")
    }

    /// Why a purge of this queue cannot work, from the listing alone.
    pub fn unpurgeable(&self) -> Option<&'static str> {
        if self.kind() == "stream" {
            Some("a stream cannot be purged (RabbitMQ answers 400 not_implemented)")
        } else if self.exclusive == Some(true) {
            Some("an exclusive queue belongs to one AMQP connection and cannot be purged by another")
        } else {
            None
        }
    }

    /// Why the broker cannot serve this queue now, when its state says so: a queue whose node is
    /// down (`down`), whose process failed (`crashed`, `stopped`) or a quorum queue without a
    /// majority (`minority`). A purge would wait for it until the deadline.
    pub fn unavailable(&self) -> Option<&str> {
        self.state.as_deref().filter(|state| matches!(*state, "down" | "crashed" | "stopped" | "minority"))
    }

    /// Whether messages held unacknowledged by consumers may survive the purge: some were
    /// unacknowledged, or the queue has consumers; `None` when neither is known.
    pub fn unacknowledged_survive(&self) -> Option<bool> {
        match (self.messages_unacknowledged, self.consumers) {
            (None, None) => None,
            // Consumers count even with no unacknowledged message sampled: prefetch refills.
            (unacknowledged, consumers) => Some(unacknowledged.unwrap_or(0) > 0 || consumers.unwrap_or(0) > 0),
        }
    }

    /// The dead-letter exchange and routing key, from queue arguments first, then the policy
    /// (arguments win over policies in RabbitMQ: <https://www.rabbitmq.com/docs/dlx>).
    pub fn dead_letter_target(&self, policy: &DeadLetterKeys) -> Option<(String, Option<String>)> {
        let arguments = self.arguments.as_ref();
        let exchange = arguments.and_then(|a| a.exchange.as_ref()).or(policy.exchange.as_ref())?;
        let routing_key = arguments.and_then(|a| a.routing_key.as_ref()).or(policy.routing_key.as_ref());
        Some((exchange.clone(), routing_key.cloned()))
    }

    /// Whether the listing lacks what the queue record has (not sampled by the statistics yet).
    fn unsampled(&self) -> bool {
        self.arguments.is_none() || (self.effective_policy_definition.is_none() && self.policy.is_none())
    }

    /// Fills what an unsampled queue's listing lacks from its record.
    fn fill_from(&mut self, record: &QueueInfo) {
        self.arguments = self.arguments.take().or_else(|| record.arguments.clone());
        self.queue_type = self.queue_type.take().or_else(|| record.queue_type.clone());
        self.exclusive = self.exclusive.or(record.exclusive);
        self.state = self.state.take().or_else(|| record.state.clone());
        self.policy = self.policy.take().or_else(|| record.policy.clone());
        self.messages_ready = self.messages_ready.or(record.messages_ready);
        self.messages_unacknowledged = self.messages_unacknowledged.or(record.messages_unacknowledged);
    }

    /// The name of the policy the listing says applies (`""`: none), when it says.
    pub fn policy_name(&self) -> Option<&str> {
        self.policy.as_deref()
    }

    /// The policy definition the listing gives, or `None` when it does not say (statistics off).
    fn listed_policy(&self) -> Option<DeadLetterKeys> {
        self.effective_policy_definition.clone()
    }
}

/// Why a queue was selected; shown in plans and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Named,
    Pattern,
    DeadLetterOf(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Named => f.write_str("named"),
            Reason::Pattern => f.write_str("pattern"),
            Reason::DeadLetterOf(q) => write!(f, "dead letters of {q}"),
        }
    }
}

/// A queue chosen for purging.
#[derive(Clone, Debug)]
pub struct Selected {
    pub info: QueueInfo,
    pub reason: Reason,
}

/// The queues a run will purge, and the named ones that do not exist.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub queues: Vec<Selected>,
    pub missing: Vec<String>,
    /// Queues the selected queues' dead letters can reach that are not selected: reported with
    /// the value to add, never purged.
    pub dead_letter_candidates: Vec<Candidate>,
    /// Why where the dead letters go could not be read (exchanges, bindings or policies): a
    /// warning, never a reason not to purge the selected queues.
    pub dead_letters_unknown: Option<String>,
    /// Selected queues that dead letters of other selected queues reach: purged after their
    /// sources and once more at the end, so what those dead-lettered meanwhile is gone too.
    pub dead_letter_targets: BTreeSet<String>,
}

/// What happened to one queue.
#[derive(Clone, Debug)]
pub enum QueueOutcome {
    /// Purged; the count is the broker's last sample of ready messages, when it gave one.
    Purged { approx_ready: Option<u64> },
    /// It was deleted between listing and purging.
    Vanished,
    /// Found by a pattern or as a dead-letter queue, but of a kind that cannot be purged: warned
    /// about and named, not a failure (a *named* one is).
    Skipped(String),
    /// It could not be purged: RabbitMQ's reason, or the last error after retries, and its kind
    /// (a purge the user is refused fails the run as [`Kind::Denied`], a retry would not help).
    Failed { kind: Kind, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A queue as the broker would answer with these arguments and effective policy.
    fn queue(arguments: serde_json::Value, policy: Option<serde_json::Value>) -> QueueInfo {
        let mut record = json!({"name": "q", "arguments": arguments});
        if let Some(policy) = policy {
            record["effective_policy_definition"] = policy;
        }
        serde_json::from_value(record).expect("a queue record")
    }

    /// Dead-letter settings come from arguments first, then from the policy; `[]` means no policy.
    #[test]
    fn dead_letter_target_prefers_arguments() {
        let target = |info: QueueInfo| info.dead_letter_target(&info.listed_policy().unwrap_or_default());
        let both = queue(
            json!({"x-dead-letter-exchange": "dlx-arg"}),
            Some(json!({"dead-letter-exchange": "dlx-pol", "dead-letter-routing-key": "rk"})),
        );
        assert_eq!(target(both), Some(("dlx-arg".into(), Some("rk".into()))), "argument wins");
        assert_eq!(target(queue(json!({}), Some(json!([])))), None, "no dead-lettering");
        let default_exchange =
            queue(json!({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q-dlq"}), Some(json!([])));
        assert_eq!(target(default_exchange), Some(("".into(), Some("q-dlq".into()))), "default exchange");
        assert!(queue(json!({}), None).listed_policy().is_none(), "statistics off: the listing does not say");
    }
}
