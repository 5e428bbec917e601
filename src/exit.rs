//! Exit codes: what the process reports to Kubernetes, and the one place a failure's
//! [`Kind`](crate::error::Kind) or a signal becomes one.
//!
//! The codes follow BSD `sysexits.h` (as linkerd-await does), so that a Job's or an init container's
//! exit status tells an operator which kind of problem to look at without reading the log:
//! <https://man.freebsd.org/cgi/man.cgi?query=sysexits>. The README's "Exit codes" table lists them.
//! Only `main` uses this module.

use crate::error::{Kind, kind_of};
use crate::shutdown::Signal;

/// What the process reports to Kubernetes. The discriminants are the exit statuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done; for the gate, the marker allows this revision.
    #[default]
    Success = 0,
    /// An operation failed after its retries, or the marker says the run failed.
    Failed = 1,
    /// Unknown subcommand or flag (`EX_USAGE`).
    Usage = 64,
    /// RabbitMQ, etcd or the Kubernetes API could not be reached within the deadline (`EX_UNAVAILABLE`).
    Unavailable = 69,
    /// The deadline passed while waiting or with work unfinished (`EX_TEMPFAIL`).
    Deadline = 75,
    /// A safety guard refused the run; nothing was touched (`EX_NOPERM`).
    Refused = 77,
    /// A variable is missing or malformed; nothing was touched (`EX_CONFIG`).
    Config = 78,
    /// RabbitMQ or etcd rejected the credentials or a permission is missing: final, like 77 and
    /// 78, so the Job does not retry it (one past sysexits' range, which has no code for it).
    Denied = 79,
    /// The workloads did not stop within the quiesce timeout; they were started again. Final: a
    /// retry would stop them again, a second outage in one deploy.
    QuiesceTimeout = 80,
    /// Stopped by SIGINT (128 + 2: Ctrl-C in a terminal).
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15, the shell convention Kubernetes users recognise).
    Terminated = 143,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Kind> for Exit {
    fn from(kind: Kind) -> Exit {
        match kind {
            Kind::Failed => Exit::Failed,
            Kind::Deadline => Exit::Deadline,
            Kind::Unreachable => Exit::Unavailable,
            Kind::Config => Exit::Config,
            Kind::Refused => Exit::Refused,
            Kind::Denied => Exit::Denied,
            Kind::QuiesceTimeout => Exit::QuiesceTimeout,
        }
    }
}

impl From<Signal> for Exit {
    /// 128 + the signal's number.
    fn from(signal: Signal) -> Exit {
        match signal {
            Signal::Term => Exit::Terminated,
            Signal::Int => Exit::Interrupted,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// The exit status for an error: its [`Kind`]'s.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    kind_of(err).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::classified;

    /// The codes are the ones the README promises; changing one breaks every chart and script.
    #[test]
    fn codes_match_the_readme() {
        let expected = [
            (Exit::Success, 0),
            (Exit::Failed, 1),
            (Exit::Usage, 64),
            (Exit::Unavailable, 69),
            (Exit::Deadline, 75),
            (Exit::Refused, 77),
            (Exit::Config, 78),
            (Exit::Denied, 79),
            (Exit::QuiesceTimeout, 80),
            (Exit::Interrupted, 130),
            (Exit::Terminated, 143),
        ];
        for (exit, code) in expected {
            assert_eq!(exit.code(), code, "{exit:?} must exit with {code}");
        }
    }

    /// Every kind has its own status, and the kind under any context decides it.
    #[test]
    fn kinds_and_signals_map_to_their_codes() {
        let cases = [
            (Kind::Failed, 1),
            (Kind::Deadline, 75),
            (Kind::Unreachable, 69),
            (Kind::Config, 78),
            (Kind::Refused, 77),
            (Kind::Denied, 79),
        ];
        for (kind, code) in cases {
            let err = classified(kind, "x").context("doing something");
            assert_eq!(exit_for(&err).code(), code, "{kind:?}");
        }
        assert_eq!(Exit::from(Signal::Term).code(), 143, "SIGTERM");
        assert_eq!(Exit::from(Signal::Int).code(), 130, "SIGINT");
        assert_eq!(exit_for(&anyhow::anyhow!("plain")), Exit::Failed, "unclassified");
    }
}
