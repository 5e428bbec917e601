//! What a purge run has done so far, counted as it happens: a signal can stop the run at any
//! moment, and the marker must still say what was committed before it (queues purged, keys deleted
//! by transactions that committed), not zero.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the RabbitMQ and etcd sides of one run.
#[derive(Debug, Default)]
pub struct Tally {
    queues_purged: AtomicU64,
    messages_purged: AtomicU64,
    queues_with_unknown_counts: AtomicU64,
    keys_deleted: AtomicU64,
}

/// A snapshot of a [`Tally`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub queues_purged: u64,
    /// Ready messages, as the broker last sampled them, of the purged queues whose count is known.
    pub messages_purged: u64,
    /// Purged queues whose count the broker did not give (statistics off).
    pub queues_with_unknown_counts: u64,
    pub keys_deleted: u64,
}

/// The purged messages as far as they are known: `None` when no purged queue had a count (the
/// broker's statistics were off), so nobody reads an unknown as 0.
pub fn known_messages(queues_purged: u64, messages_purged: u64, queues_with_unknown_counts: u64) -> Option<u64> {
    (queues_with_unknown_counts == 0 || queues_with_unknown_counts < queues_purged).then_some(messages_purged)
}

impl Tally {
    /// One queue purged, with its ready-message count when known.
    pub fn queue_purged(&self, ready_messages: Option<u64>) {
        self.queues_purged.fetch_add(1, Ordering::Relaxed);
        match ready_messages {
            Some(count) => self.messages_purged.fetch_add(count, Ordering::Relaxed),
            None => self.queues_with_unknown_counts.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// One etcd transaction committed.
    pub fn keys_deleted(&self, keys: u64) {
        self.keys_deleted.fetch_add(keys, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        Counts {
            queues_purged: self.queues_purged.load(Ordering::Relaxed),
            messages_purged: self.messages_purged.load(Ordering::Relaxed),
            queues_with_unknown_counts: self.queues_with_unknown_counts.load(Ordering::Relaxed),
            keys_deleted: self.keys_deleted.load(Ordering::Relaxed),
        }
    }
}
