//! Exit codes and the mapping from errors to them.
//!
//! The codes follow BSD `sysexits.h` (as linkerd-await does), so that a Job's or an init container's
//! exit status tells an operator which kind of problem to look at without reading the log:
//! <https://man.freebsd.org/cgi/man.cgi?query=sysexits>. The README's "Exit codes" table lists them.
//!
//! Code deep inside the binary never exits: it returns an error, tagged with a [`Kind`] where the
//! exit status depends on it, and `main` turns the first tag found in the error chain into the code.

use std::fmt;

/// What the process reports to Kubernetes. The discriminants are the exit statuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
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

    /// The most telling of several outcomes: a refusal or a configuration error explains everything
    /// after it, unreachability explains a timeout, and a timeout explains unfinished work.
    pub fn worst(self, other: Exit) -> Exit {
        fn rank(exit: Exit) -> u8 {
            match exit {
                Exit::Success => 0,
                Exit::Failed => 1,
                Exit::Deadline => 2,
                Exit::Unavailable => 3,
                Exit::Usage => 4,
                Exit::Config => 5,
                Exit::Refused => 6,
                Exit::Interrupted | Exit::Terminated => 7,
            }
        }
        if rank(other) > rank(self) { other } else { self }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// The classes of failure whose exit status differs. Attach one with [`Classified`] where the
/// failure is first understood; context added above it does not hide it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A missing or malformed variable.
    Config,
    /// A safety guard said no.
    Refused,
    /// A dependency could not be reached (connection refused, DNS, TLS handshake, timeouts on connect).
    Unreachable,
    /// The run's deadline passed with work left.
    Deadline,
    /// Anything else that went wrong after retries: bad credentials, a queue that cannot be purged.
    Failed,
    /// A usage error on the command line.
    Usage,
}

impl Kind {
    /// The exit status for this class.
    pub fn exit(self) -> Exit {
        match self {
            Kind::Config => Exit::Config,
            Kind::Refused => Exit::Refused,
            Kind::Unreachable => Exit::Unavailable,
            Kind::Deadline => Exit::Deadline,
            Kind::Failed => Exit::Failed,
            Kind::Usage => Exit::Usage,
        }
    }

    /// The class whose exit status is `exit` (the inverse of [`Kind::exit`]; success has none).
    pub fn for_exit(exit: Exit) -> Kind {
        match exit {
            Exit::Config => Kind::Config,
            Exit::Refused => Kind::Refused,
            Exit::Unavailable => Kind::Unreachable,
            Exit::Deadline => Kind::Deadline,
            Exit::Usage => Kind::Usage,
            Exit::Success | Exit::Failed | Exit::Interrupted | Exit::Terminated => Kind::Failed,
        }
    }
}

/// An error message tagged with the [`Kind`] that decides the exit status.
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

/// The exit status for an error: the first [`Kind`] found in its chain, outermost first, or
/// [`Exit::Failed`] for an error nobody classified.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    // anyhow's own downcast walks `.context(Classified)` layers, outermost first; `chain()` then
    // finds a Classified that is the source of some other error.
    err.downcast_ref::<Classified>()
        .or_else(|| err.chain().find_map(|cause| cause.downcast_ref::<Classified>()))
        .map_or(Exit::Failed, |c| c.kind.exit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// The codes are the ones the README promises; changing one breaks every chart and script.
    #[test]
    fn codes_match_the_design() {
        let expected = [
            (Exit::Success, 0),
            (Exit::Failed, 1),
            (Exit::Usage, 64),
            (Exit::Unavailable, 69),
            (Exit::Deadline, 75),
            (Exit::Refused, 77),
            (Exit::Config, 78),
            (Exit::Interrupted, 130),
            (Exit::Terminated, 143),
        ];
        for (exit, code) in expected {
            assert_eq!(exit.code(), code, "{exit:?} must exit with {code}");
        }
    }

    /// Context added on the way up keeps the class found at the bottom.
    #[test]
    fn classification_survives_context() {
        let err = Err::<(), _>(classified(Kind::Refused, "empty prefix"))
            .context("planning etcd ranges")
            .context("purge")
            .unwrap_err();
        assert_eq!(exit_for(&err), Exit::Refused, "context must not hide the kind");
        let layered = anyhow::anyhow!("connection refused")
            .context(Classified::new(Kind::Unreachable, "etcd not reachable"))
            .context("gave up after 3 attempts");
        assert_eq!(exit_for(&layered), Exit::Unavailable, "a Classified context layer is found");
        let plain = anyhow::anyhow!("something odd");
        assert_eq!(exit_for(&plain), Exit::Failed, "unclassified errors are plain failures");
    }

    /// A refusal outranks everything; unreachability outranks a timeout; a timeout outranks a failure.
    #[test]
    fn worst_prefers_the_more_telling_outcome() {
        assert_eq!(Exit::Failed.worst(Exit::Unavailable), Exit::Unavailable, "69 over 1");
        assert_eq!(Exit::Deadline.worst(Exit::Failed), Exit::Deadline, "75 over 1");
        assert_eq!(Exit::Unavailable.worst(Exit::Refused), Exit::Refused, "77 over 69");
        assert_eq!(Exit::Success.worst(Exit::Success), Exit::Success, "0 stays 0");
    }
}
