//! Purging the selected queues: bounded concurrency, sources before the dead-letter queues they
//! feed, a bounded second pass, and a 404 told apart from an unavailable queue.

use anyhow::anyhow;
use futures_util::stream::{self, StreamExt};
use reqwest::Method;
use tokio::time::Instant;
use tracing::{info, warn};

use super::client::{Management, Reply};
use super::{QueueOutcome, Reason, Selected, Selection};
use crate::config::{RetryPolicy, is_dot_segment};
use crate::error::{Kind, kind_of};
use crate::retry::{self, Attempt};
use crate::tally::Tally;

/// How long the state read after a failed purge attempt may take.
const STATE_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// Which pass a purge belongs to: the second pass over dead-letter queues counts nothing again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    First,
    Second,
}

impl Management {
    /// Purges one queue, retrying transient failures. A 404 is checked: only a queue that is
    /// really gone has vanished. A queue the broker cannot serve fails at once instead of holding
    /// its slot until the deadline: its listed state says so before the purge, or after a failed
    /// attempt (a 404 for a queue that exists, a 400 that names a node or quorum, no answer).
    async fn purge_in(&self, queue: &Selected, pass: Pass, policy: &RetryPolicy, deadline: Instant) -> QueueOutcome {
        let name = &queue.info.name;
        if is_dot_segment(name) {
            // `api/queues/v/./contents` collapses to `api/queues/v/contents`: a DELETE there would
            // delete the queue named "contents". Percent-encoding does not help (`%2E` is a dot
            // segment too: WHATWG URL, "single-dot path segment").
            let message = format!(
                "a queue named {name:?} cannot be addressed through the management HTTP API (URL dot segment); purge it with rabbitmqctl purge_queue"
            );
            warn!(vhost = %self.vhost, queue = %name, "queue not purged: name is a URL dot segment");
            return QueueOutcome::Failed { kind: Kind::Failed, message };
        }
        if queue.reason != Reason::Named
            && let Some(why) = queue.info.unpurgeable()
        {
            warn!(vhost = %self.vhost, queue = %name, reason = %queue.reason, why, "queue cannot be purged; skipped (name it to make this a failure)");
            return QueueOutcome::Skipped(why.to_string());
        }
        if let Some(state) = queue.info.unavailable() {
            // Its node is down or its process failed: a purge would wait for it until the deadline
            // and hold a slot the other queues need.
            let message = format!(
                "queue {name:?} in vhost {:?} is {state} (the broker cannot serve it now; its node down or its \
                 process failed): not purged, its messages are still there",
                self.vhost
            );
            warn!(vhost = %self.vhost, queue = %name, state, "queue not purged: unavailable");
            return QueueOutcome::Failed { kind: Kind::Failed, message };
        }
        let what = format!("purging queue {:?} in vhost {:?}", name, self.vhost);
        let url = self.url(&["queues", &self.vhost, name, "contents"], "");
        let queue_url = self.url(&["queues", &self.vhost, name], "columns=name");
        let started = std::time::Instant::now();
        let result = retry::run(policy, deadline, &what, || async {
            let reason = match self.send(Method::DELETE, url.clone(), &what).await {
                Ok(Reply::Found(_)) => return Ok(true),
                Ok(Reply::NotFound(reason)) => reason,
                Err(Attempt::Transient(err)) => return Err(self.unless_unavailable(name, err, deadline).await),
                Err(permanent) => return Err(permanent),
            };
            match self.send(Method::GET, queue_url.clone(), &what).await? {
                Reply::NotFound(_) => Ok(false),
                Reply::Found(_) => {
                    let err = anyhow!(
                        "{what}: RabbitMQ answered 404{reason}, but the queue exists: it is unavailable (its node down, \
                         crashed, or its leader moving), and its messages are still there"
                    );
                    Err(self.unless_unavailable(name, err, deadline).await)
                }
            }
        })
        .await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(true) if pass == Pass::Second => {
                // The sampled count was the first pass's: what this one removed is not known.
                info!(vhost = %self.vhost, queue = %name, reason = %queue.reason, duration_ms, "purged queue again (second pass)");
                QueueOutcome::Purged { approx_ready: None }
            }
            Ok(true) => {
                match queue.info.messages_ready {
                    Some(approx_messages) => {
                        info!(vhost = %self.vhost, queue = %name, reason = %queue.reason, approx_messages, duration_ms, "purged queue")
                    }
                    None => {
                        info!(vhost = %self.vhost, queue = %name, reason = %queue.reason, approx_messages = "unknown", duration_ms, "purged queue")
                    }
                }
                if queue.info.unacknowledged_survive() == Some(true) {
                    warn!(
                        vhost = %self.vhost,
                        queue = %name,
                        unacknowledged = queue.info.messages_unacknowledged.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into()),
                        "queue has consumers: messages they hold unacknowledged survive the purge"
                    );
                }
                QueueOutcome::Purged { approx_ready: queue.info.messages_ready }
            }
            Ok(false) => {
                warn!(vhost = %self.vhost, queue = %name, "queue was deleted before it was purged");
                QueueOutcome::Vanished
            }
            Err(err) => {
                let message = format!("{err:#}");
                warn!(vhost = %self.vhost, queue = %name, error = %message, duration_ms, "queue not purged");
                // Refused credentials or permission end the Job at once (exit 79); anything else
                // that survived the retries is a failed operation (exit 1), partial work reported.
                let kind = if kind_of(&err) == Kind::Denied { Kind::Denied } else { Kind::Failed };
                QueueOutcome::Failed { kind, message }
            }
        }
    }

    /// A failed purge attempt, made final when the listing says the queue cannot be served now
    /// (`down`, `crashed`, `stopped`, `minority`: retrying would hold the slot until the deadline),
    /// or left to the retries (a quorum leader moving for a moment, a slow answer). One quick read.
    async fn unless_unavailable(&self, name: &str, err: anyhow::Error, deadline: Instant) -> Attempt {
        let once = RetryPolicy { attempts: 1, backoff: std::time::Duration::from_millis(100) };
        let soon = deadline.min(Instant::now() + STATE_CHECK);
        match self.queue_states(&[name], &once, soon).await {
            Ok(states) => match states.get(name).map(String::as_str) {
                Some(state @ ("down" | "crashed" | "stopped" | "minority")) => Attempt::Permanent(
                    err.context(format!("queue {name:?} is {state}: not purged, its messages are still there")),
                ),
                _ => Attempt::Transient(err),
            },
            Err(_) => Attempt::Transient(err),
        }
    }

    /// Purges every selected queue, at most `concurrency` at a time, results in selection order.
    /// Sources go before the dead-letter queues they feed, and those are purged once more at the
    /// end (a bounded second pass, cycles included): what sources dead-lettered while they were
    /// being purged (rejects, expiries, a retry loop through a TTL queue) is gone too.
    pub async fn purge_all(
        &self,
        selection: &Selection,
        concurrency: usize,
        policy: &RetryPolicy,
        deadline: Instant,
        tally: &Tally,
    ) -> Vec<QueueOutcome> {
        let is_target = |q: &Selected| selection.dead_letter_targets.contains(&q.info.name);
        let mut outcomes: Vec<Option<QueueOutcome>> = vec![None; selection.queues.len()];
        for phase in [false, true] {
            let indexes = (0..selection.queues.len()).filter(|&i| is_target(&selection.queues[i]) == phase);
            for (i, outcome) in
                self.purge_some(selection, indexes.collect(), concurrency, policy, deadline, Some(tally)).await
            {
                outcomes[i] = Some(outcome);
            }
        }
        let again: Vec<usize> = (0..selection.queues.len())
            .filter(|&i| is_target(&selection.queues[i]) && matches!(outcomes[i], Some(QueueOutcome::Purged { .. })))
            .collect();
        if !again.is_empty() {
            info!(vhost = %self.vhost, queues = again.len(), "second pass over dead-letter queues");
        }
        for (i, outcome) in self.purge_some(selection, again, concurrency, policy, deadline, None).await {
            if let QueueOutcome::Failed { message, .. } = outcome {
                // The queue was purged; only what arrived during the run may be left.
                warn!(
                    vhost = %self.vhost,
                    queue = %selection.queues[i].info.name,
                    error = %message,
                    "second pass failed: dead letters that arrived during the run may be left"
                );
            }
        }
        outcomes.into_iter().map(|o| o.expect("every queue has an outcome")).collect()
    }

    /// Purges the queues at `indexes`, counting each in `tally` as it is purged (so a signal that
    /// stops the run loses no count).
    async fn purge_some(
        &self,
        selection: &Selection,
        indexes: Vec<usize>,
        concurrency: usize,
        policy: &RetryPolicy,
        deadline: Instant,
        tally: Option<&Tally>,
    ) -> Vec<(usize, QueueOutcome)> {
        stream::iter(indexes)
            .map(|i| async move {
                let pass = if tally.is_some() { Pass::First } else { Pass::Second };
                let outcome = self.purge_in(&selection.queues[i], pass, policy, deadline).await;
                if let (Some(tally), QueueOutcome::Purged { approx_ready }) = (tally, &outcome) {
                    tally.queue_purged(*approx_ready);
                }
                (i, outcome)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }
}
