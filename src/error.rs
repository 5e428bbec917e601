//! The one typed error: what kind of failure it was, where something branches on that (the exit
//! status, "is the deadline to blame?"), carried through `anyhow` so that context added on the way up
//! keeps it.
//!
//! A layer tags a failure with its [`Kind`] where it is first understood (a refused login, a prefix
//! reaching system keys, a connection that never opened) and otherwise adds plain context. The
//! stores (RabbitMQ, etcd, the Kubernetes API, quiesce) only say what kind of failure they saw;
//! which process exit status a kind becomes is `main`'s business ([`crate::exit`]).

use std::fmt;

/// The kinds of failure whose handling differs, from least to most telling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Anything else that went wrong after retries: a queue that cannot be purged, a write refused.
    #[default]
    Failed,
    /// The deadline passed with work left, or a server that was reached did not answer in time.
    Deadline,
    /// A dependency could not be reached (connection refused, DNS, TLS handshake).
    Unreachable,
    /// The workloads did not stop within the quiesce timeout: they were started again, and a retry
    /// would only stop them again (another outage).
    QuiesceTimeout,
    /// RabbitMQ or etcd rejected the credentials or lacks a permission: a retry with the same
    /// configuration gets the same answer.
    Denied,
    /// A missing or malformed variable; nothing was touched.
    Config,
    /// A safety guard said no; nothing was touched.
    Refused,
}

impl Kind {
    /// A failure the same input repeats on every attempt (a refusal, a configuration error, rejected
    /// credentials), or one a retry would make worse (a quiesce that timed out). The chart's Jobs fail at once on their exit codes (`podFailurePolicy`), so such
    /// a failure is the last attempt whatever the attempt number.
    pub fn is_final(self) -> bool {
        matches!(self, Kind::QuiesceTimeout | Kind::Denied | Kind::Config | Kind::Refused)
    }

    /// A stable name, for the marker (`failureKind`) and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Deadline => "deadline",
            Kind::Unreachable => "unreachable",
            Kind::QuiesceTimeout => "quiesce-timeout",
            Kind::Denied => "denied",
            Kind::Config => "configuration",
            Kind::Refused => "refused",
        }
    }

    /// The more telling of two: a refusal or a configuration error explains everything after it,
    /// unreachability explains a timeout, and a timeout explains unfinished work.
    pub fn worst(self, other: Kind) -> Kind {
        self.max(other)
    }
}

/// An error message tagged with its [`Kind`].
#[derive(Debug)]
pub struct Classified {
    pub kind: Kind,
    pub message: String,
}

impl Classified {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Classified { kind, message: message.into() }
    }
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Classified {}

/// Shorthand for an `anyhow::Error` carrying a [`Kind`].
pub fn classified(kind: Kind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Classified::new(kind, message))
}

/// The kind of an error: the first [`Kind`] found in its chain, outermost first, or
/// [`Kind::Failed`] for an error nobody classified.
pub fn kind_of(err: &anyhow::Error) -> Kind {
    // anyhow's own downcast walks `.context(Classified)` layers, outermost first; `chain()` then
    // finds a Classified that is the source of some other error.
    err.downcast_ref::<Classified>()
        .or_else(|| err.chain().find_map(|cause| cause.downcast_ref::<Classified>()))
        .map_or(Kind::Failed, |c| c.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// Context added on the way up keeps the kind found at the bottom.
    #[test]
    fn kind_survives_context() {
        let err = Err::<(), _>(classified(Kind::Refused, "empty prefix"))
            .context("planning etcd ranges")
            .context("purge")
            .unwrap_err();
        assert_eq!(kind_of(&err), Kind::Refused, "context must not hide the kind");
        let layered = anyhow::anyhow!("connection refused")
            .context(Classified::new(Kind::Unreachable, "etcd not reachable"))
            .context("gave up after 3 attempts");
        assert_eq!(kind_of(&layered), Kind::Unreachable, "a Classified context layer is found");
        assert_eq!(kind_of(&anyhow::anyhow!("something odd")), Kind::Failed, "unclassified is a plain failure");
    }

    /// A refusal outranks everything; unreachability outranks a timeout; a timeout outranks a failure.
    #[test]
    fn worst_prefers_the_more_telling_kind() {
        assert_eq!(Kind::Failed.worst(Kind::Unreachable), Kind::Unreachable, "unreachable over failed");
        assert_eq!(Kind::Deadline.worst(Kind::Failed), Kind::Deadline, "deadline over failed");
        assert_eq!(Kind::Unreachable.worst(Kind::Refused), Kind::Refused, "refused over unreachable");
        assert_eq!(Kind::Config.worst(Kind::Unreachable), Kind::Config, "config over unreachable");
    }
}
