//! The process environment as it is given: the `CLEANSLATE_*` variables read with envy into
//! [`RawEnv`] (unknown names refused, so a typo cannot fall back to a default), the kubelet's
//! service-link variables told apart from typos, and the few other variables the binary reads.
//! Nothing here judges a value; [`super`] parses and validates.

use std::collections::HashMap;

use anyhow::Result;
use regex::Regex;
use serde::Deserialize;

use super::parse::config_error;
use crate::error::{Kind, classified};

/// The variables exactly as the environment gives them. Unknown `CLEANSLATE_*` names are rejected,
/// because a misspelt variable silently falling back to a default is how a prefix gets ignored.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnv {
    pub(super) environment: Option<String>,
    pub(super) allow_production: Option<String>,
    pub(super) targets: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) retry_attempts: Option<String>,
    pub(super) retry_backoff: Option<String>,
    pub(super) concurrency: Option<String>,
    pub(super) dry_run: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) rabbitmq_url: Option<String>,
    pub(super) rabbitmq_username: Option<String>,
    pub(super) rabbitmq_password: Option<String>,
    pub(super) rabbitmq_password_file: Option<String>,
    pub(super) rabbitmq_vhost: Option<String>,
    pub(super) rabbitmq_queues: Option<String>,
    pub(super) rabbitmq_queue_pattern: Option<String>,
    pub(super) rabbitmq_dead_letters: Option<String>,
    pub(super) rabbitmq_missing: Option<String>,
    pub(super) rabbitmq_ca_file: Option<String>,
    pub(super) etcd_endpoints: Option<String>,
    pub(super) etcd_prefixes: Option<String>,
    pub(super) etcd_protected_prefixes: Option<String>,
    pub(super) etcd_username: Option<String>,
    pub(super) etcd_password: Option<String>,
    pub(super) etcd_password_file: Option<String>,
    pub(super) etcd_ca_file: Option<String>,
    pub(super) etcd_cert_file: Option<String>,
    pub(super) etcd_key_file: Option<String>,
    pub(super) etcd_max_txn_ops: Option<String>,
    pub(super) etcd_seed_file: Option<String>,
    pub(super) marker: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) revision: Option<String>,
    pub(super) release: Option<String>,
    pub(super) pod_name: Option<String>,
    pub(super) job_attempts: Option<String>,
    pub(super) job_name: Option<String>,
    pub(super) kube_api: Option<String>,
    pub(super) kube_token_file: Option<String>,
    pub(super) kube_ca_file: Option<String>,
    pub(super) kube_watch_timeout: Option<String>,
    pub(super) output: Option<String>,
    pub(super) events: Option<String>,
    pub(super) pod_uid: Option<String>,
    /// Read by `termination` straight from the process (it must work when the rest is malformed).
    #[allow(dead_code)]
    pub(super) termination_message_path: Option<String>,
    pub(super) gate_timeout: Option<String>,
    pub(super) gate_on_timeout: Option<String>,
    pub(super) quiesce: Option<String>,
    pub(super) quiesce_timeout: Option<String>,
    pub(super) quiesce_resume: Option<String>,
    pub(super) quiesce_gated: Option<String>,
    pub(super) trigger: Option<String>,
    pub(super) trigger_record: Option<String>,
    pub(super) run: Option<String>,
}

/// The process environment, captured once. Tests build it from key/value lists instead of mutating
/// the real environment.
pub struct Env {
    pub(super) raw: RawEnv,
    others: HashMap<String, String>,
}

impl Env {
    /// Reads the real process environment. A `CLEANSLATE_*` value that is not UTF-8 is a
    /// configuration error naming it; any other variable that is not UTF-8 is none of ours and is
    /// skipped (`std::env::vars` would panic on it).
    pub fn from_process() -> Result<Env> {
        Env::from_pairs(Env::process_pairs()?)
    }

    /// `base` (a release's Job variables, see `release`) under the process environment, and `top`
    /// (what the command line says: `-n`) over it: a variable set in the process wins over the
    /// release's, a flag over both, as explicit settings should.
    pub fn layered(base: Vec<(String, String)>, top: Vec<(String, String)>) -> Result<Env> {
        let mut all: std::collections::BTreeMap<String, String> = base.into_iter().collect();
        all.extend(Env::process_pairs()?);
        all.extend(top);
        Env::from_pairs(all)
    }

    /// The process environment's pairs (see [`Env::from_process`]).
    fn process_pairs() -> Result<Vec<(String, String)>> {
        let mut pairs = Vec::new();
        for (name, value) in std::env::vars_os() {
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => pairs.push((name, value)),
                (Ok(name), Err(_)) if name.starts_with("CLEANSLATE_") => {
                    return Err(config_error(format!("{name} is not valid UTF-8")));
                }
                _ => {}
            }
        }
        Ok(pairs)
    }

    /// Builds the environment from pairs; `CLEANSLATE_*` names must be known.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Env>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let all: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let ours = all.iter().filter(|(k, v)| !is_service_link(k, v)).cloned();
        let raw = envy::prefixed("CLEANSLATE_").from_iter::<_, RawEnv>(ours).map_err(|err| {
            // envy reports names in lowercase without the prefix; give the operator the real name.
            let text = err.to_string();
            let text = match text.split('`').nth(1) {
                Some(field) if text.starts_with("unknown field") => format!(
                    "unknown variable CLEANSLATE_{} (a typo? see the README's table of variables)",
                    field.to_uppercase()
                ),
                _ => text,
            };
            classified(Kind::Config, format!("reading CLEANSLATE_* variables: {text}"))
        })?;
        let others = all.into_iter().filter(|(k, _)| !k.starts_with("CLEANSLATE_")).collect();
        Ok(Env { raw, others })
    }

    /// A variable that is not one of ours (`HOSTNAME`, `KUBERNETES_SERVICE_HOST`), when set and not empty.
    pub(super) fn other(&self, name: &str) -> Option<&str> {
        self.others.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Whether a variable is one the kubelet injects for a Service in the pod's namespace
/// (`enableServiceLinks`, on by default): a Service named `cleanslate-web` gives every pod
/// `CLEANSLATE_WEB_SERVICE_HOST`, `CLEANSLATE_WEB_PORT_80_TCP_ADDR` and so on, which must not be
/// taken for misspelt settings. Names and values must both have the kubelet's shapes
/// (kubernetes `pkg/kubelet/envvars/envvars.go`; <https://kubernetes.io/docs/concepts/services-networking/service/#environment-variables>),
/// so a real typo such as `CLEANSLATE_ETCD_PREFIX` is still refused.
fn is_service_link(name: &str, value: &str) -> bool {
    /// The name shapes, each with the value shape the kubelet gives it.
    enum Value {
        Ip,
        Port,
        Proto,
        Url,
    }
    static SHAPES: std::sync::LazyLock<Vec<(Regex, Value)>> = std::sync::LazyLock::new(|| {
        [
            (r"_SERVICE_HOST$", Value::Ip),
            (r"_SERVICE_PORT(?:_[A-Z0-9_]+)?$", Value::Port),
            (r"_PORT$", Value::Url),
            (r"_PORT_[0-9]+_(?:TCP|UDP|SCTP)$", Value::Url),
            (r"_PORT_[0-9]+_(?:TCP|UDP|SCTP)_PROTO$", Value::Proto),
            (r"_PORT_[0-9]+_(?:TCP|UDP|SCTP)_PORT$", Value::Port),
            (r"_PORT_[0-9]+_(?:TCP|UDP|SCTP)_ADDR$", Value::Ip),
        ]
        .into_iter()
        .map(|(suffix, value)| (Regex::new(&format!("^[A-Z0-9_]+{suffix}")).expect("valid shape"), value))
        .collect()
    });
    let is_ip = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let is_port = |v: &str| v.parse::<u16>().is_ok();
    let is_proto = |v: &str| matches!(v, "tcp" | "udp" | "sctp");
    // `tcp://10.0.0.11:6379` or `tcp://[fd00::b]:6379`
    let is_url = |v: &str| {
        v.split_once("://").is_some_and(|(proto, rest)| {
            is_proto(proto)
                && rest.rsplit_once(':').is_some_and(|(host, port)| {
                    is_port(port) && is_ip(host.trim_start_matches('[').trim_end_matches(']'))
                })
        })
    };
    // A name can fit several shapes (a Service named `web-service` gives `WEB_SERVICE_PORT`, which
    // is also `{WEB}_SERVICE_PORT`): it is a service link when any shape it fits has the value's shape.
    SHAPES.iter().filter(|(shape, _)| shape.is_match(name)).any(|(_, expected)| match expected {
        Value::Ip => is_ip(value),
        Value::Port => is_port(value),
        Value::Proto => is_proto(value),
        Value::Url => is_url(value),
    })
}
