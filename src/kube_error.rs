//! A failed Kubernetes API call, sorted the way callers branch on it (which code, whether trying
//! again can help). Its own module so that [`crate::events`] and [`crate::kube`] both use it
//! without depending on each other.

use std::fmt;

/// The API server's error object (`kind: Status`), as far as callers branch on it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

/// A failed API call.
#[derive(Debug)]
pub enum KubeError {
    /// The API answered with an error status.
    Api(Status),
    /// No answer: connection refused, TLS failure, timeout, a stream cut short.
    Transport(String),
    /// The answer was not what the API sends.
    Decode(String),
}

impl KubeError {
    /// The HTTP status code, when the API answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api(status) => Some(status.code),
            _ => None,
        }
    }

    /// Whether trying again later can help: no answer, 429, or 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Transport(_) | KubeError::Decode(_) => true,
            KubeError::Api(status) => status.code == 429 || status.code >= 500,
        }
    }
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::Api(s) => write!(f, "Kubernetes API answered {} {}: {}", s.code, s.reason, s.message),
            KubeError::Transport(err) => write!(f, "Kubernetes API not reachable: {err}"),
            KubeError::Decode(err) => write!(f, "unexpected answer from the Kubernetes API: {err}"),
        }
    }
}

impl std::error::Error for KubeError {}

impl From<kube::Error> for KubeError {
    fn from(err: kube::Error) -> KubeError {
        match err {
            // kube-client reads any JSON error body as a Status; one without a code came from
            // something in front of the API server (a proxy, a gateway), not from it.
            kube::Error::Api(status) if status.code == 0 => {
                KubeError::Transport(format!("an answer that is not the API server's: {}", status.message))
            }
            kube::Error::Api(status) => KubeError::Api(Status {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            }),
            kube::Error::SerdeError(err) => KubeError::Decode(err.to_string()),
            kube::Error::Auth(err) => KubeError::Transport(format!("getting credentials: {err}")),
            // hyper, TLS, a service error (a timeout): no usable answer.
            other => KubeError::Transport(other.to_string()),
        }
    }
}
