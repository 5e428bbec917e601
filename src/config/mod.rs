//! Configuration: `CLEANSLATE_*` variables read with envy, then validated into typed structs.
//!
//! Everything is parsed and checked here, before any network call, so that a typo costs a Job
//! restart and never a half-done purge. Every error names the variable and what was expected, and
//! never echoes a value that could be a secret (passwords, tokens, URLs that might carry userinfo).
//! This module does not decide whether a run is *safe* (production, system prefixes): that is
//! [`crate::purge`]'s and [`crate::etcd`]'s job, because it needs the planned ranges.

//!
//! Layout: [`env`] holds the raw environment (what is set, service links told apart from typos);
//! `parse` turns one variable's text into a value; this file owns the validated structs and how
//! each subcommand's configuration is put together.

mod env;
mod parse;
pub mod seed;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use regex::Regex;
use reqwest::Url;

pub use env::Env;
use env::RawEnv;
pub use parse::is_dot_segment;
use parse::{
    ca_bundle, config_error, entries, existing_file, http_url, parse_bool, parse_choice, parse_count, parse_duration,
    password, present, required, split_list,
};

/// Where Kubernetes mounts the pod's service-account credentials.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A value that must never reach a log line, an error message or the marker.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The value, for the one place that sends it to a server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Output format of the logs on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: what log collectors parse without configuration.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// What to do about a named queue that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingQueue {
    /// Warn and go on: a fresh environment may not have declared its queues yet.
    Ignore,
    /// Fail the run: for environments where a missing queue means a wrong configuration.
    Fail,
}

/// What is done about the dead-letter queues of the selected queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetters {
    /// Not looked for: only the named and pattern-matched queues.
    Off,
    /// Found and reported, with the queue that feeds each and the value to add, never purged (the
    /// default): no route the management API shows proves that a queue is ours.
    Report,
    /// Those reached by a route that proves where dead letters go: a literal binding key equal to
    /// the dead-letter routing key, the default exchange naming the queue, or a fanout exchange.
    Exact,
    /// Also those reached through wildcard topic bindings (`*`, `#`): for users whose dead-letter
    /// exchanges are dedicated, which the API cannot tell from an application's topic exchange.
    Reachable,
}

impl DeadLetters {
    /// Whether discovered dead-letter queues are purged (an explicit opt-in).
    pub fn takes_queues(self) -> bool {
        matches!(self, DeadLetters::Exact | DeadLetters::Reachable)
    }
}

/// What the gate does when its deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    /// Exit 75 and keep the pod from starting.
    Fail,
    /// Exit 0 with a warning: the documented bypass when a stuck cleanup must not block a deploy.
    Proceed,
}

/// Retry settings for transient failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included.
    pub attempts: u32,
    /// The first pause; it doubles on each attempt, with jitter.
    pub backoff: Duration,
}

/// The RabbitMQ management API and what to purge there.
#[derive(Clone, Debug)]
pub struct RabbitConfig {
    /// Management API base, e.g. `http://rabbitmq:15672`; a path prefix is kept.
    pub url: Url,
    pub username: String,
    pub password: Secret,
    pub vhost: String,
    /// Queues named exactly.
    pub queues: Vec<String>,
    /// Queues whose whole name matches; anchored here so `orders` never matches `preorders`.
    pub pattern: Option<Regex>,
    pub dead_letters: DeadLetters,
    pub missing: MissingQueue,
    pub ca_file: Option<PathBuf>,
}

/// etcd endpoints, credentials and the prefixes to delete.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Taken literally; empty entries are kept so the safety check can refuse them by name.
    pub prefixes: Vec<String>,
    pub protected_prefixes: Vec<String>,
    pub auth: Option<(String, Secret)>,
    pub tls: Option<EtcdTls>,
    /// Operations per transaction: the server's `--max-txn-ops` (128 unless an operator lowered it).
    pub max_txn_ops: usize,
    /// The baseline written after the delete (`CLEANSLATE_ETCD_SEED_FILE`), key → value, checked.
    pub seed: Vec<(String, String)>,
}

/// Files for etcd over TLS; a client certificate makes it mutual TLS.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How to reach the Kubernetes API, and how long one watch request lasts.
#[derive(Clone, Debug)]
pub struct KubeConfig {
    pub access: KubeAccess,
    /// The longest one watch request lasts (`timeoutSeconds`); a watch that stays silent five
    /// seconds longer is taken for a dead connection and re-established (kube-rs's watcher).
    pub watch_timeout: Duration,
    pub events: EventsConfig,
}

/// Kubernetes Events: whether to publish them, and about which pod and revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventsConfig {
    /// `CLEANSLATE_EVENTS` (the chart turns it on, with the RBAC to create and patch Events).
    pub enabled: bool,
    /// This pod: `CLEANSLATE_POD_NAME`, else `HOSTNAME`.
    pub pod_name: Option<String>,
    /// This pod's uid (`CLEANSLATE_POD_UID`, from the downward API): what `kubectl describe pod`
    /// matches Events on.
    pub pod_uid: Option<String>,
    /// The release revision, for notes.
    pub revision: Option<u64>,
}

/// Where the API server and the credentials come from.
#[derive(Clone, Debug, PartialEq)]
pub enum KubeAccess {
    /// An API URL, a bearer-token file (re-read as it rotates) and the CA that signed the API
    /// server's certificate: `CLEANSLATE_KUBE_API`, or in a pod the in-cluster variables; the files
    /// default to the pod's service-account mount.
    Direct { api: Url, token_file: PathBuf, ca_file: PathBuf },
    /// Outside a pod: the user's kubeconfig (`KUBECONFIG`, else `~/.kube/config`), its current
    /// context, with whatever credentials it names (client certificates, tokens, exec plugins).
    Kubeconfig,
}

/// The marker ConfigMap a purge writes and a gate waits for.
#[derive(Clone, Debug)]
pub struct MarkerConfig {
    pub name: String,
    pub namespace: String,
    /// The Helm release revision this run or gate belongs to.
    pub revision: u64,
    /// The release name, for the `app.kubernetes.io/instance` label.
    pub release: Option<String>,
    /// The pod that ran the purge, recorded in the marker.
    pub pod_name: Option<String>,
    /// How many times the Job runs the purge for one revision (`backoffLimit + 1`): a failure is
    /// final, and fails gates at once, only on the last of them.
    pub job_attempts: u32,
    /// The Job this pod belongs to (`CLEANSLATE_JOB_NAME`): its status says which attempt this is,
    /// counting attempts killed without a word (OOM, node loss), and its `backoffLimit` how many.
    pub job_name: Option<String>,
    pub kube: KubeConfig,
}

/// Everything `purge` and `plan` need.
#[derive(Clone, Debug)]
pub struct PurgeConfig {
    /// Required for `purge`; `plan` accepts it unset.
    pub environment: Option<String>,
    pub allow_production: bool,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub concurrency: usize,
    pub dry_run: bool,
    pub rabbitmq: Option<RabbitConfig>,
    pub etcd: Option<EtcdConfig>,
    pub marker: Option<MarkerConfig>,
    /// Workloads to stop before the purge; `None` when `CLEANSLATE_QUIESCE` is unset or empty.
    pub quiesce: Option<QuiesceConfig>,
    /// `CLEANSLATE_TRIGGER`: clean only when this differs from the value recorded with the last
    /// success (a build's image tag, a build number); unset, every run cleans.
    pub trigger: Option<String>,
    /// `CLEANSLATE_TRIGGER_RECORD`: the ConfigMap that records it (the chart's
    /// `<fullname>-trigger`); unset, no trigger is recorded or cleared.
    pub trigger_record: Option<String>,
    /// `CLEANSLATE_RUN=scheduled`: a scheduled reset (the chart's CronJob), refused in production
    /// whatever `CLEANSLATE_ALLOW_PRODUCTION` says.
    pub scheduled: bool,
}

/// The kind of a workload that quiesce can stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    /// The API resource (group `apps`, version `v1`).
    pub fn resource(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
        }
    }

    fn word(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
        }
    }
}

/// One workload named in `CLEANSLATE_QUIESCE`, e.g. `deployment/api`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub name: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.word(), self.name)
    }
}

/// Stopping workloads before a purge and starting them again (`purge` with quiesce, `resume`).
#[derive(Clone, Debug)]
pub struct QuiesceConfig {
    /// In the order given, duplicates dropped.
    pub workloads: Vec<WorkloadRef>,
    /// How long stopping may take, the wait for the pods to go away included.
    pub timeout: Duration,
    /// Start the workloads again right after a successful purge: a full reset in one run, for the
    /// `helm test` Pod (the chart sets it there only; the hook Job leaves it to the resume Job).
    pub resume_after_purge: bool,
    /// The marker this release's gates read (`CLEANSLATE_MARKER`): a purge with `gated` also stops
    /// the live workloads whose pods' gate reads it, and `resume` also starts every workload whose
    /// quiesce record names it, whatever the list says (a rollback runs an older revision's list).
    pub marker: Option<String>,
    /// `CLEANSLATE_QUIESCE_GATED`: stop the live workloads gated on the marker too.
    pub gated: bool,
    /// This run, as recorded on what it stops (`quiesce::RUN_ANNOTATION`; see `run_identity`).
    pub run: Option<String>,
    pub namespace: String,
    pub kube: KubeConfig,
}

impl QuiesceConfig {
    /// Which records a restore of this run may act on: what it holds, and with `orphans` also what
    /// runs that have ended hold (the last attempt's clean-up: earlier attempts, a killed reset).
    pub fn holder(&self, orphans: bool) -> crate::quiesce::Holder<'_> {
        use crate::quiesce::Holder;
        match self.run.as_deref() {
            Some(run) if orphans => Holder::Orphans(run),
            Some(run) => Holder::Run(run),
            None => Holder::Any,
        }
    }
}

/// Everything `resume` needs.
#[derive(Clone, Debug)]
pub struct ResumeConfig {
    pub quiesce: QuiesceConfig,
    /// Deadline of the whole run.
    pub timeout: Duration,
}

/// Everything `gate` needs.
#[derive(Clone, Debug)]
pub struct GateConfig {
    pub marker: MarkerConfig,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
}

/// Everything `status` needs.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    pub namespace: String,
    /// The release whose marker to find (by its labels), when no marker name is given.
    pub release: Option<String>,
    /// The marker's name (`CLEANSLATE_MARKER`).
    pub marker: Option<String>,
    /// Workloads to report on besides the release's own (`CLEANSLATE_QUIESCE`, optional).
    pub workloads: Vec<WorkloadRef>,
    pub output: Output,
    pub kube: KubeConfig,
}

/// How `status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// What `cleanslate status` was given on its command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusArgs {
    pub release: Option<String>,
    pub namespace: Option<String>,
    pub json: bool,
}

/// Which subcommand the purge configuration is for: `plan` changes nothing, so it needs less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Purge,
    Plan,
}

/// The production rule of [`PurgeConfig::is_production`], for one environment name.
pub fn is_production_name(environment: &str) -> bool {
    environment.split(|c: char| !c.is_ascii_alphanumeric()).any(|word| {
        let stem = word.trim_end_matches(|c: char| c.is_ascii_digit());
        ["prod", "prd", "production"].iter().any(|p| stem.eq_ignore_ascii_case(p))
    })
}

/// The log format to use when the configuration itself cannot be read, so that even that error
/// reaches the log in the format the operator asked for (JSON unless `CLEANSLATE_LOG_FORMAT` says
/// `text`).
pub fn fallback_log_format() -> LogFormat {
    match std::env::var_os("CLEANSLATE_LOG_FORMAT").and_then(|v| v.into_string().ok()) {
        Some(v) if v.trim().eq_ignore_ascii_case("text") => LogFormat::Text,
        _ => LogFormat::Json,
    }
}

/// The logging format, read first so that every later error is logged the way the operator asked.
pub fn log_format(env: &Env) -> Result<LogFormat> {
    parse_choice(
        "CLEANSLATE_LOG_FORMAT",
        &env.raw.log_format,
        LogFormat::Json,
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
    )
}

impl PurgeConfig {
    /// Validates everything `purge` (or `plan`) will use.
    pub fn from_env(env: &Env, mode: Mode) -> Result<PurgeConfig> {
        let raw = &env.raw;
        let environment = match mode {
            Mode::Purge => Some(
                required(
                    "CLEANSLATE_ENVIRONMENT",
                    &raw.environment,
                    "the environment name, e.g. dev, staging or production",
                )?
                .to_string(),
            ),
            Mode::Plan => present(&raw.environment).map(str::to_string),
        };
        let (rabbitmq_on, etcd_on) = targets(&raw.targets)?;
        let timeout = parse_duration("CLEANSLATE_TIMEOUT", &raw.timeout, DEFAULT_TIMEOUT)?;
        let retry = RetryPolicy {
            attempts: parse_count("CLEANSLATE_RETRY_ATTEMPTS", &raw.retry_attempts, DEFAULT_ATTEMPTS, 100)? as u32,
            backoff: parse_duration("CLEANSLATE_RETRY_BACKOFF", &raw.retry_backoff, DEFAULT_BACKOFF)?,
        };
        Ok(PurgeConfig {
            environment,
            allow_production: parse_bool("CLEANSLATE_ALLOW_PRODUCTION", &raw.allow_production, false)?,
            timeout,
            retry,
            concurrency: parse_count("CLEANSLATE_CONCURRENCY", &raw.concurrency, DEFAULT_CONCURRENCY, 256)? as usize,
            dry_run: parse_bool("CLEANSLATE_DRY_RUN", &raw.dry_run, false)?,
            rabbitmq: if rabbitmq_on { Some(rabbit_config(raw)?) } else { None },
            etcd: if etcd_on { Some(etcd_config(raw)?) } else { None },
            marker: marker_config(env, false)?,
            quiesce: quiesce_config(env, false)?,
            trigger: present(&raw.trigger).map(str::to_string),
            trigger_record: present(&raw.trigger_record).map(str::to_string),
            scheduled: parse_choice("CLEANSLATE_RUN", &raw.run, false, &[("scheduled", true), ("deploy", false)])?,
        })
    }

    /// True when the environment name says production: any of its words (split on everything
    /// that is not a letter or digit) is `prod`, `prd` or `production`, optionally numbered, in any
    /// case. So `production-eu`, `eu-prod`, `PRD`, `prod2` and `prd01` are production; `preprod` and
    /// `product` are not.
    /// The chart's render-time guard applies the same rule.
    pub fn is_production(&self) -> bool {
        self.environment.as_deref().is_some_and(is_production_name)
    }
}

impl GateConfig {
    /// Validates everything `gate` will use; the marker is required.
    pub fn from_env(env: &Env) -> Result<GateConfig> {
        let raw = &env.raw;
        Ok(GateConfig {
            marker: marker_config(env, true)?.expect("required marker is present"),
            timeout: parse_duration("CLEANSLATE_GATE_TIMEOUT", &raw.gate_timeout, DEFAULT_GATE_TIMEOUT)?,
            on_timeout: parse_choice(
                "CLEANSLATE_GATE_ON_TIMEOUT",
                &raw.gate_on_timeout,
                OnTimeout::Fail,
                &[("fail", OnTimeout::Fail), ("proceed", OnTimeout::Proceed)],
            )?,
        })
    }
}

impl ResumeConfig {
    /// Validates everything `resume` will use; `CLEANSLATE_QUIESCE` is required.
    pub fn from_env(env: &Env) -> Result<ResumeConfig> {
        Ok(ResumeConfig {
            quiesce: quiesce_config(env, true)?.expect("a workload list or a marker is present"),
            timeout: parse_duration("CLEANSLATE_TIMEOUT", &env.raw.timeout, DEFAULT_TIMEOUT)?,
        })
    }
}

impl StatusConfig {
    /// The release (argument, else `CLEANSLATE_RELEASE`) or the marker (`CLEANSLATE_MARKER`) to
    /// report on; the namespace from `--namespace`, else as for the other commands.
    pub fn from_env(env: &Env, args: &StatusArgs) -> Result<StatusConfig> {
        let raw = &env.raw;
        let release = args.release.clone().or_else(|| present(&raw.release).map(str::to_string));
        let marker = present(&raw.marker).map(str::to_string);
        if release.is_none() && marker.is_none() {
            return Err(config_error(
                "name the release (cleanslate status <release>, or CLEANSLATE_RELEASE) or its marker (CLEANSLATE_MARKER)",
            ));
        }
        let output = parse_choice(
            "CLEANSLATE_OUTPUT",
            &raw.output,
            Output::Table,
            &[("table", Output::Table), ("text", Output::Table), ("json", Output::Json)],
        )?;
        let mut workloads = Vec::new();
        let listed = match present(&raw.quiesce) {
            Some(text) => entries("CLEANSLATE_QUIESCE", text)?,
            None => Vec::new(),
        };
        for item in listed {
            workloads.push(parse_workload(&item)?);
        }
        let (namespace, kube) = kube_target(env)?;
        Ok(StatusConfig {
            namespace: args.namespace.clone().unwrap_or(namespace),
            release,
            marker,
            workloads,
            output: if args.json { Output::Json } else { output },
            kube,
        })
    }
}

/// Thirty seconds: a typical dev cleanup takes well under a second, so thirty leave room for
/// retries through a broker restart while a stuck run still holds a deploy only briefly.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// etcd's own default `--max-txn-ops` (operations per transaction): `CLEANSLATE_ETCD_MAX_TXN_OPS`
/// follows a server whose operator lowered it.
pub const DEFAULT_ETCD_MAX_TXN_OPS: usize = 128;
/// Three attempts: enough to ride out a broker restart, few enough to fail within the deadline.
const DEFAULT_ATTEMPTS: u64 = 3;
/// Five seconds: long enough for a restarting broker to come back; it doubles, and never runs past
/// the deadline.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);
/// Eight purges in flight: the broker serialises per queue, and eight keeps a 20-queue run short
/// without a burst of connections on a small dev broker.
const DEFAULT_CONCURRENCY: u64 = 8;
/// One: outside a Job with retries (a local run, the `helm test` Pod) every failure is final.
const DEFAULT_JOB_ATTEMPTS: u64 = 1;
/// Ten minutes: long enough for a slow image pull of the hook Job, short enough to notice.
const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_secs(600);
/// Forty-five seconds: Kubernetes' default grace period (30 s) for the old pods to shut down, plus
/// time for the controllers to notice the new replica count and the kubelet to report the end.
const DEFAULT_QUIESCE_TIMEOUT: Duration = Duration::from_secs(45);
/// One minute: the API server sends a bookmark about once a minute to watches that ask for them, so a
/// healthy watch is rarely silent longer, and a connection a load balancer dropped without a word is
/// noticed within 65 s instead of client-go's five minutes.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// `deployment/NAME` or `statefulset/NAME`; NAME a DNS subdomain, as Kubernetes requires.
fn parse_workload(item: &str) -> Result<WorkloadRef> {
    let expected = "expected deployment/NAME or statefulset/NAME";
    let (kind, name) = item
        .split_once('/')
        .ok_or_else(|| config_error(format!("CLEANSLATE_QUIESCE: {item:?} is not a workload ({expected})")))?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "deployment" => WorkloadKind::Deployment,
        "statefulset" => WorkloadKind::StatefulSet,
        _ => {
            return Err(config_error(format!(
                "CLEANSLATE_QUIESCE: {item:?} names the kind {kind:?}; only Deployments and StatefulSets can be stopped ({expected})"
            )));
        }
    };
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid_name {
        return Err(config_error(format!(
            "CLEANSLATE_QUIESCE: {name:?} in {item:?} is not a valid Kubernetes object name (lowercase letters, digits, '-' and '.')"
        )));
    }
    Ok(WorkloadRef { kind, name: name.to_string() })
}

/// What a run outside a pod records as its name (`cli:<host>:<pid>:<started>`): nothing can see
/// that process, so it counts as running for [`CLI_RUN_LIFETIME`] after it started.
pub const CLI_RUN_PREFIX: &str = "cli:";

/// How long a run outside a pod counts as running after it started: far beyond any purge
/// (`CLEANSLATE_TIMEOUT` and the quiesce are minutes at most).
pub const CLI_RUN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// This run's name on what it stops (`quiesce::RUN_ANNOTATION`): in a pod (the chart sets
/// `CLEANSLATE_POD_NAME` from the downward API) `[<job>/]<pod>[@<uid>]`, the uid telling a pod
/// from a later one of the same name (the `helm test` Pod's); elsewhere `cli:<host>:<pid>:<started>`.
fn run_identity(env: &Env) -> String {
    let raw = &env.raw;
    let Some(pod) = present(&raw.pod_name) else {
        let host = env.other("HOSTNAME").unwrap_or("local");
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        return format!("{CLI_RUN_PREFIX}{host}:{}:{started}", std::process::id());
    };
    let mut run = match present(&raw.job_name) {
        Some(job) => format!("{job}/{pod}"),
        None => pod.to_string(),
    };
    if let Some(uid) = present(&raw.pod_uid) {
        run = format!("{run}@{uid}");
    }
    run
}

/// The quiesce settings, or `None` when `CLEANSLATE_QUIESCE` lists nothing (unless `required`).
fn quiesce_config(env: &Env, required_by_resume: bool) -> Result<Option<QuiesceConfig>> {
    let raw = &env.raw;
    let mut workloads: Vec<WorkloadRef> = Vec::new();
    let listed = match present(&raw.quiesce) {
        Some(text) => entries("CLEANSLATE_QUIESCE", text)?,
        None => Vec::new(),
    };
    for item in listed {
        let workload = parse_workload(&item)?;
        if !workloads.contains(&workload) {
            workloads.push(workload);
        }
    }
    let timeout = parse_duration("CLEANSLATE_QUIESCE_TIMEOUT", &raw.quiesce_timeout, DEFAULT_QUIESCE_TIMEOUT)?;
    let resume_after_purge = parse_bool("CLEANSLATE_QUIESCE_RESUME", &raw.quiesce_resume, false)?;
    let marker = present(&raw.marker).map(str::to_string);
    let gated = parse_bool("CLEANSLATE_QUIESCE_GATED", &raw.quiesce_gated, false)?;
    if gated && marker.is_none() {
        return Err(config_error(
            "CLEANSLATE_QUIESCE_GATED needs CLEANSLATE_MARKER: the gated workloads are those whose gate reads it",
        ));
    }
    // Resume with a marker finds what was stopped for it by itself; a purge stops the listed
    // workloads, or the gated ones.
    let finds_its_own = if required_by_resume { marker.is_some() } else { gated };
    if workloads.is_empty() && !finds_its_own {
        if required_by_resume {
            return Err(config_error(
                "CLEANSLATE_QUIESCE is required without CLEANSLATE_MARKER: the workloads to resume, e.g. \
                 deployment/api,statefulset/worker",
            ));
        }
        return Ok(None);
    }
    let (namespace, kube) = kube_target(env)?;
    let run = Some(run_identity(env));
    Ok(Some(QuiesceConfig { workloads, timeout, resume_after_purge, marker, gated, run, namespace, kube }))
}

fn targets(value: &Option<String>) -> Result<(bool, bool)> {
    let text = match value.as_deref() {
        None => return Ok((true, true)),
        Some(text) if text.trim().is_empty() => {
            return Err(config_error(
                "CLEANSLATE_TARGETS is set but empty: unset it for both, or name rabbitmq, etcd or both",
            ));
        }
        Some(text) => text,
    };
    let (mut rabbitmq, mut etcd) = (false, false);
    for item in entries("CLEANSLATE_TARGETS", text)? {
        match item.to_ascii_lowercase().as_str() {
            "rabbitmq" => rabbitmq = true,
            "etcd" => etcd = true,
            _ => {
                return Err(config_error(format!("CLEANSLATE_TARGETS may list rabbitmq and etcd, not {item:?}")));
            }
        }
    }
    if !rabbitmq && !etcd {
        return Err(config_error("CLEANSLATE_TARGETS names no target; use rabbitmq, etcd or both"));
    }
    Ok((rabbitmq, etcd))
}

fn rabbit_config(raw: &RawEnv) -> Result<RabbitConfig> {
    let url_text =
        required("CLEANSLATE_RABBITMQ_URL", &raw.rabbitmq_url, "the management API base, e.g. http://rabbitmq:15672")?;
    let mut url = http_url("CLEANSLATE_RABBITMQ_URL", url_text)?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let username = required("CLEANSLATE_RABBITMQ_USERNAME", &raw.rabbitmq_username, "the management API user")?;
    let password = password("CLEANSLATE_RABBITMQ_PASSWORD", &raw.rabbitmq_password, &raw.rabbitmq_password_file)?
        .ok_or_else(|| config_error("CLEANSLATE_RABBITMQ_PASSWORD or CLEANSLATE_RABBITMQ_PASSWORD_FILE is required"))?;
    // Unset or empty: no names (a pattern may select); an empty entry among names is an error.
    let queues = match present(&raw.rabbitmq_queues) {
        Some(text) => entries("CLEANSLATE_RABBITMQ_QUEUES", text)?,
        None => Vec::new(),
    };
    let pattern =
        match present(&raw.rabbitmq_queue_pattern) {
            None => None,
            Some(text) => Some(Regex::new(&format!("^(?:{text})$")).map_err(|err| {
                config_error(format!("CLEANSLATE_RABBITMQ_QUEUE_PATTERN is not a valid regex: {err}"))
            })?),
        };
    if queues.is_empty() && pattern.is_none() {
        return Err(config_error(
            "CLEANSLATE_RABBITMQ_QUEUES or CLEANSLATE_RABBITMQ_QUEUE_PATTERN is required to select queues",
        ));
    }
    // Unset means the default vhost; set but empty is a template that rendered empty, and must not
    // send the purge of these names to `/`, where another team's queues may have them.
    let vhost = match raw.rabbitmq_vhost.as_deref() {
        None => "/".to_string(),
        Some(text) if text.trim().is_empty() => {
            return Err(config_error(
                "CLEANSLATE_RABBITMQ_VHOST is set but empty: unset it for the default vhost `/`, or name the vhost",
            ));
        }
        // Not trimmed: a vhost name is taken as it is.
        Some(text) => text.to_string(),
    };
    if is_dot_segment(&vhost) {
        // `api/queues/.` would be normalised to `api/queues`, the queues of every vhost.
        return Err(config_error(format!(
            "CLEANSLATE_RABBITMQ_VHOST {vhost:?} cannot be addressed through the management HTTP API (URL dot segment)"
        )));
    }
    Ok(RabbitConfig {
        url,
        username: username.to_string(),
        password,
        vhost,
        queues,
        pattern,
        dead_letters: parse_choice(
            "CLEANSLATE_RABBITMQ_DEAD_LETTERS",
            &raw.rabbitmq_dead_letters,
            DeadLetters::Report,
            &[
                ("report", DeadLetters::Report),
                ("true", DeadLetters::Exact),
                ("exact", DeadLetters::Exact),
                ("false", DeadLetters::Off),
                ("reachable", DeadLetters::Reachable),
            ],
        )?,
        missing: parse_choice(
            "CLEANSLATE_RABBITMQ_MISSING",
            &raw.rabbitmq_missing,
            MissingQueue::Ignore,
            &[("ignore", MissingQueue::Ignore), ("fail", MissingQueue::Fail)],
        )?,
        ca_file: ca_bundle("CLEANSLATE_RABBITMQ_CA_FILE", &raw.rabbitmq_ca_file)?,
    })
}

fn etcd_config(raw: &RawEnv) -> Result<EtcdConfig> {
    let endpoints_text = required(
        "CLEANSLATE_ETCD_ENDPOINTS",
        &raw.etcd_endpoints,
        "comma-separated endpoints, e.g. http://etcd-0.etcd:2379",
    )?;
    let endpoints = entries("CLEANSLATE_ETCD_ENDPOINTS", endpoints_text)?;
    let mut schemes = Vec::new();
    for endpoint in &endpoints {
        schemes.push(http_url("CLEANSLATE_ETCD_ENDPOINTS", endpoint)?.scheme().to_string());
    }
    let https = schemes.iter().any(|s| s == "https");
    if https && schemes.iter().any(|s| s == "http") {
        return Err(config_error("CLEANSLATE_ETCD_ENDPOINTS mixes http:// and https:// endpoints"));
    }
    // An unset variable is a configuration error (78); a set variable with an empty entry is a
    // dangerous prefix, refused by the etcd planner (77) with its own message.
    let prefixes = raw.etcd_prefixes.as_deref().map(split_list).ok_or_else(|| {
        config_error("CLEANSLATE_ETCD_PREFIXES is required: the key prefixes to delete, e.g. monorepo/")
    })?;
    // Set but empty is what `protectedPrefixes: ["{{ .Values.locksPrefix }}"]` renders when the
    // value is unset: a protection that protects nothing, so it is refused, never dropped.
    let protected_prefixes = match raw.etcd_protected_prefixes.as_deref() {
        None => Vec::new(),
        Some(text) if text.trim().is_empty() => {
            return Err(config_error(
                "CLEANSLATE_ETCD_PROTECTED_PREFIXES is set but empty: a protected prefix that rendered empty protects \
                 nothing; unset the variable or name the prefixes to keep; nothing was touched",
            ));
        }
        Some(text) => entries("CLEANSLATE_ETCD_PROTECTED_PREFIXES", text)?,
    };
    let password = password("CLEANSLATE_ETCD_PASSWORD", &raw.etcd_password, &raw.etcd_password_file)?;
    let auth = match (present(&raw.etcd_username), password) {
        (Some(user), Some(pass)) => Some((user.to_string(), pass)),
        (None, None) => None,
        (Some(_), None) => return Err(config_error("CLEANSLATE_ETCD_USERNAME is set without a password")),
        (None, Some(_)) => return Err(config_error("an etcd password is set without CLEANSLATE_ETCD_USERNAME")),
    };
    let ca_file = ca_bundle("CLEANSLATE_ETCD_CA_FILE", &raw.etcd_ca_file)?;
    let client = match (
        existing_file("CLEANSLATE_ETCD_CERT_FILE", &raw.etcd_cert_file)?,
        existing_file("CLEANSLATE_ETCD_KEY_FILE", &raw.etcd_key_file)?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(config_error("CLEANSLATE_ETCD_CERT_FILE and CLEANSLATE_ETCD_KEY_FILE go together")),
    };
    let tls = match (https, ca_file) {
        (true, Some(ca_file)) => Some(EtcdTls { ca_file, client }),
        (true, None) => {
            return Err(config_error("https etcd endpoints need CLEANSLATE_ETCD_CA_FILE to verify the server"));
        }
        (false, _) if client.is_some() => {
            return Err(config_error("etcd client certificates need https:// endpoints"));
        }
        (false, _) => None,
    };
    let max_txn_ops = parse_count(
        "CLEANSLATE_ETCD_MAX_TXN_OPS",
        &raw.etcd_max_txn_ops,
        DEFAULT_ETCD_MAX_TXN_OPS as u64,
        // etcd refuses more than this many ops whatever its flag says (the gRPC message limit).
        100_000,
    )? as usize;
    let seed = match present(&raw.etcd_seed_file) {
        Some(path) => seed::read_seed(path, &prefixes, &protected_prefixes)?,
        None => Vec::new(),
    };
    Ok(EtcdConfig { endpoints, prefixes, protected_prefixes, auth, tls, max_txn_ops, seed })
}

fn marker_config(env: &Env, required_by_gate: bool) -> Result<Option<MarkerConfig>> {
    let raw = &env.raw;
    let Some(name) = present(&raw.marker) else {
        if required_by_gate {
            return Err(config_error("CLEANSLATE_MARKER is required: the marker ConfigMap to wait for"));
        }
        return Ok(None);
    };
    let revision = match present(&raw.revision) {
        None => return Err(config_error("CLEANSLATE_REVISION is required with a marker: the Helm release revision")),
        Some(text) => text.parse::<u64>().ok().filter(|r| *r > 0).ok_or_else(|| {
            config_error(format!("CLEANSLATE_REVISION must be a positive whole number, not {text:?}"))
        })?,
    };
    let (namespace, kube) = kube_target(env)?;
    Ok(Some(MarkerConfig {
        name: name.to_string(),
        namespace,
        revision,
        release: present(&raw.release).map(str::to_string),
        pod_name: present(&raw.pod_name).or(env.other("HOSTNAME")).map(str::to_string),
        job_attempts: parse_count("CLEANSLATE_JOB_ATTEMPTS", &raw.job_attempts, DEFAULT_JOB_ATTEMPTS, 100)? as u32,
        job_name: present(&raw.job_name).map(str::to_string),
        kube,
    }))
}

/// Where an operator's command (`plan <release>`, `status <release>`) talks to Kubernetes: as for
/// the other commands (a kubeconfig outside a pod), in `namespace` when given (`-n`).
pub fn operator_kube(env: &Env, namespace: Option<&str>) -> Result<(String, KubeConfig)> {
    let (found, kube) = kube_target(env)?;
    Ok((namespace.map_or(found, str::to_string), kube))
}

/// The namespace to work in and how to reach the Kubernetes API: from the variables, else from
/// the pod's service-account mount and the in-cluster variables, else (on an operator's machine)
/// from the kubeconfig, as kubectl does.
fn kube_target(env: &Env) -> Result<(String, KubeConfig)> {
    let raw = &env.raw;
    let sa = Path::new(SERVICE_ACCOUNT_DIR);
    let watch_timeout =
        parse_duration("CLEANSLATE_KUBE_WATCH_TIMEOUT", &raw.kube_watch_timeout, DEFAULT_WATCH_TIMEOUT)?;
    let api = match present(&raw.kube_api) {
        Some(text) => Some(http_url("CLEANSLATE_KUBE_API", text)?),
        // A kubeconfig named by KUBECONFIG wins over the pod's own service account, as in kubectl
        // and client-go: a CI runner pod that deploys elsewhere means the cluster it names.
        None if env.other("KUBECONFIG").is_some() => None,
        None => match (env.other("KUBERNETES_SERVICE_HOST"), env.other("KUBERNETES_SERVICE_PORT")) {
            (Some(host), Some(port)) => {
                let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
                Some(http_url("KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT", &format!("https://{host}:{port}"))?)
            }
            _ => None,
        },
    };
    let access = match api {
        Some(api) => {
            let file_or_default =
                |value: &Option<String>, file: &str| present(value).map(PathBuf::from).unwrap_or_else(|| sa.join(file));
            KubeAccess::Direct {
                api,
                token_file: file_or_default(&raw.kube_token_file, "token"),
                ca_file: file_or_default(&raw.kube_ca_file, "ca.crt"),
            }
        }
        None => KubeAccess::Kubeconfig,
    };
    let from_service_account = || {
        std::fs::read_to_string(sa.join("namespace")).map(|ns| ns.trim().to_string()).ok().filter(|ns| !ns.is_empty())
    };
    let namespace = match present(&raw.namespace) {
        Some(ns) => ns.to_string(),
        None => match (&access, from_service_account()) {
            (KubeAccess::Kubeconfig, _) => kubeconfig_namespace()?,
            (_, Some(ns)) => ns,
            (KubeAccess::Direct { .. }, None) => {
                return Err(config_error(
                    "CLEANSLATE_NAMESPACE is required outside a pod (no service-account namespace file)",
                ));
            }
        },
    };
    let events = EventsConfig {
        enabled: parse_bool("CLEANSLATE_EVENTS", &raw.events, false)?,
        pod_name: present(&raw.pod_name).or(env.other("HOSTNAME")).map(str::to_string),
        pod_uid: present(&raw.pod_uid).map(str::to_string),
        revision: present(&raw.revision).and_then(|r| r.parse().ok()),
    };
    Ok((namespace, KubeConfig { access, watch_timeout, events }))
}

/// The current context's namespace, or `default` when it names none (kubectl's rule).
fn kubeconfig_namespace() -> Result<String> {
    let kubeconfig = kube::config::Kubeconfig::read().map_err(|err| {
        config_error(format!(
            "no Kubernetes API to talk to: not in a pod, CLEANSLATE_KUBE_API unset, and no usable kubeconfig ({err})"
        ))
    })?;
    let current = kubeconfig.current_context.as_deref().unwrap_or_default();
    let namespace = kubeconfig
        .contexts
        .iter()
        .find(|named| named.name == current)
        .and_then(|named| named.context.as_ref())
        .and_then(|context| context.namespace.clone())
        .filter(|ns| !ns.is_empty());
    Ok(namespace.unwrap_or_else(|| "default".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Kind as ErrorKind, kind_of};

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).expect("env builds")
    }

    const BASE: &[(&str, &str)] = &[
        ("CLEANSLATE_ENVIRONMENT", "dev"),
        ("CLEANSLATE_RABBITMQ_URL", "http://rabbitmq:15672"),
        ("CLEANSLATE_RABBITMQ_USERNAME", "guest"),
        ("CLEANSLATE_RABBITMQ_PASSWORD", "s3cret-pw"),
        ("CLEANSLATE_RABBITMQ_QUEUES", "monorepo, monorepo-dlq"),
        ("CLEANSLATE_ETCD_ENDPOINTS", "http://etcd:2379"),
        ("CLEANSLATE_ETCD_PREFIXES", "monorepo/"),
    ];

    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut pairs: Vec<_> = BASE.iter().filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)).copied().collect();
        pairs.extend_from_slice(extra);
        pairs
    }

    fn error_of(pairs: &[(&str, &str)]) -> anyhow::Error {
        match Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))) {
            Err(err) => err,
            Ok(env) => PurgeConfig::from_env(&env, Mode::Purge).expect_err("config must be rejected"),
        }
    }

    /// The documented defaults are the ones in force.
    #[test]
    fn defaults_match_the_readme() {
        let config = PurgeConfig::from_env(&env(BASE), Mode::Purge).expect("valid config");
        assert_eq!(config.timeout, Duration::from_secs(30), "timeout default");
        assert_eq!(config.retry, RetryPolicy { attempts: 3, backoff: Duration::from_secs(5) }, "retry defaults");
        assert_eq!(config.concurrency, 8, "concurrency default");
        assert!(!config.dry_run && !config.allow_production, "dry run and production off by default");
        let rabbit = config.rabbitmq.expect("rabbitmq on by default");
        assert_eq!(rabbit.vhost, "/", "vhost default");
        assert_eq!(rabbit.queues, vec!["monorepo", "monorepo-dlq"], "queues trimmed");
        assert_eq!(rabbit.dead_letters, DeadLetters::Report, "dead-letter queues reported, not purged, by default");
        assert_eq!(rabbit.missing, MissingQueue::Ignore, "missing queues ignored by default");
        let etcd = config.etcd.expect("etcd on by default");
        assert_eq!(etcd.max_txn_ops, 128, "etcd's own default --max-txn-ops");
        assert!(config.marker.is_none(), "no marker without CLEANSLATE_MARKER");
    }

    /// The dead-letter modes, and the etcd transaction size a lowered server needs.
    #[test]
    fn dead_letter_modes_and_transaction_size() {
        for (text, mode) in [
            ("report", DeadLetters::Report),
            ("true", DeadLetters::Exact),
            ("exact", DeadLetters::Exact),
            ("false", DeadLetters::Off),
            ("Reachable", DeadLetters::Reachable),
        ] {
            let config = PurgeConfig::from_env(&env(&with(&[("CLEANSLATE_RABBITMQ_DEAD_LETTERS", text)])), Mode::Purge)
                .expect("valid config");
            assert_eq!(config.rabbitmq.expect("rabbitmq").dead_letters, mode, "{text}");
        }
        let config =
            PurgeConfig::from_env(&env(&with(&[("CLEANSLATE_ETCD_MAX_TXN_OPS", "16")])), Mode::Purge).expect("valid");
        assert_eq!(config.etcd.expect("etcd").max_txn_ops, 16, "configured");
    }

    /// Each malformed variable is a configuration error that names it.
    #[test]
    fn malformed_values_name_their_variable() {
        let cases: &[(&str, &str)] = &[
            ("CLEANSLATE_TIMEOUT", "soon"),
            ("CLEANSLATE_TIMEOUT", "0s"),
            ("CLEANSLATE_RETRY_ATTEMPTS", "-1"),
            ("CLEANSLATE_RETRY_BACKOFF", "5 parsecs"),
            ("CLEANSLATE_CONCURRENCY", "0"),
            ("CLEANSLATE_DRY_RUN", "yes"),
            ("CLEANSLATE_ALLOW_PRODUCTION", "maybe"),
            ("CLEANSLATE_TARGETS", "redis"),
            ("CLEANSLATE_RABBITMQ_URL", "rabbitmq:15672"),
            ("CLEANSLATE_RABBITMQ_QUEUE_PATTERN", "monorepo-(dlq"),
            ("CLEANSLATE_RABBITMQ_MISSING", "skip"),
            ("CLEANSLATE_RABBITMQ_DEAD_LETTERS", "1"),
            ("CLEANSLATE_RABBITMQ_CA_FILE", "/nonexistent/ca.pem"),
            ("CLEANSLATE_RABBITMQ_CA_FILE", "/etc/hostname"),
            ("CLEANSLATE_ETCD_MAX_TXN_OPS", "0"),
            ("CLEANSLATE_ETCD_ENDPOINTS", "etcd:2379"),
            ("CLEANSLATE_RABBITMQ_VHOST", "."),
            ("CLEANSLATE_RABBITMQ_VHOST", ".."),
        ];
        for (name, value) in cases {
            let err = error_of(&with(&[(name, value)]));
            assert_eq!(kind_of(&err), ErrorKind::Config, "{name}={value} must be a configuration error");
            assert!(format!("{err:#}").contains(name), "{name}={value}: message must name it: {err:#}");
        }
    }

    /// A missing required variable is named; an unknown CLEANSLATE_ variable is a typo, named too.
    #[test]
    fn missing_and_unknown_variables_are_named() {
        let without = |name: &str| BASE.iter().filter(|(k, _)| *k != name).copied().collect::<Vec<_>>();
        for name in ["CLEANSLATE_ENVIRONMENT", "CLEANSLATE_RABBITMQ_URL", "CLEANSLATE_ETCD_PREFIXES"] {
            let err = error_of(&without(name));
            assert_eq!(kind_of(&err), ErrorKind::Config, "missing {name} is a configuration error");
            assert!(format!("{err:#}").contains(name), "message names {name}: {err:#}");
        }
        let err = error_of(&with(&[("CLEANSLATE_ETCD_PREFIX", "monorepo/")]));
        assert!(format!("{err:#}").contains("CLEANSLATE_ETCD_PREFIX "), "typo named: {err:#}");
    }

    /// Neither a password nor a URL with userinfo appears in any error or in Debug output.
    #[test]
    fn secrets_never_leak() {
        let config = PurgeConfig::from_env(&env(BASE), Mode::Purge).expect("valid config");
        assert!(!format!("{config:?}").contains("s3cret-pw"), "Debug must redact the password");
        let err = error_of(&with(&[("CLEANSLATE_RABBITMQ_URL", "http://guest:s3cret-pw@rabbitmq:15672")]));
        let text = format!("{err:#}");
        assert!(!text.contains("s3cret-pw"), "URL userinfo must not be echoed: {text}");
        assert!(text.contains("must not contain credentials"), "says why: {text}");
    }

    /// Password files lose only their trailing newline; both forms at once are refused.
    #[test]
    fn password_file_is_read_and_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from file\n").expect("write");
        let path = file.to_str().expect("utf-8 path");
        let pairs: Vec<(&str, &str)> = BASE
            .iter()
            .filter(|(k, _)| *k != "CLEANSLATE_RABBITMQ_PASSWORD")
            .copied()
            .chain([("CLEANSLATE_RABBITMQ_PASSWORD_FILE", path)])
            .collect();
        let config = PurgeConfig::from_env(&env(&pairs), Mode::Purge).expect("valid");
        assert_eq!(config.rabbitmq.expect("rabbit").password.expose(), "from file", "newline dropped");
        let err = error_of(&with(&[("CLEANSLATE_RABBITMQ_PASSWORD_FILE", path)]));
        assert!(format!("{err:#}").contains("not both"), "both forms refused: {err:#}");
    }

    /// The vhost "/" is kept as is; production is recognised in any case; the pattern is anchored.
    #[test]
    fn vhost_production_and_pattern() {
        let config = PurgeConfig::from_env(
            &env(&with(&[("CLEANSLATE_ENVIRONMENT", "PROD"), ("CLEANSLATE_RABBITMQ_QUEUE_PATTERN", "orders")])),
            Mode::Purge,
        )
        .expect("valid");
        assert!(config.is_production(), "PROD is production");
        let pattern = config.rabbitmq.expect("rabbit").pattern.expect("pattern");
        assert!(pattern.is_match("orders") && !pattern.is_match("preorders-dlq"), "whole-name match only");
    }

    /// Service-link variables of a Service named like the chart are the kubelet's, not typos;
    /// look-alikes with other value shapes are still refused.
    #[test]
    fn service_links_are_not_typos() {
        let links: &[(&str, &str)] = &[
            ("CLEANSLATE_SERVICE_HOST", "10.96.0.12"),
            ("CLEANSLATE_SERVICE_PORT", "8080"),
            ("CLEANSLATE_SERVICE_PORT_HTTP", "8080"),
            ("CLEANSLATE_PORT", "tcp://10.96.0.12:8080"),
            ("CLEANSLATE_WEB_SERVICE_HOST", "fd00::12"),
            ("CLEANSLATE_WEB_PORT_8080_TCP", "tcp://[fd00::12]:8080"),
            ("CLEANSLATE_WEB_PORT_8080_TCP_PROTO", "tcp"),
            ("CLEANSLATE_WEB_PORT_8080_TCP_PORT", "8080"),
            ("CLEANSLATE_WEB_PORT_8080_TCP_ADDR", "10.96.0.13"),
            ("CLEANSLATE_DNS_PORT_53_UDP", "udp://10.96.0.10:53"),
            // A Service named `cleanslate-web-service`: every one of these also fits `_SERVICE_PORT_*`.
            ("CLEANSLATE_WEB_SERVICE_SERVICE_HOST", "10.96.0.30"),
            ("CLEANSLATE_WEB_SERVICE_SERVICE_PORT", "80"),
            ("CLEANSLATE_WEB_SERVICE_PORT", "tcp://10.96.0.30:80"),
            ("CLEANSLATE_WEB_SERVICE_PORT_80_TCP", "tcp://10.96.0.30:80"),
            ("CLEANSLATE_WEB_SERVICE_PORT_80_TCP_PROTO", "tcp"),
            ("CLEANSLATE_WEB_SERVICE_PORT_80_TCP_PORT", "80"),
            ("CLEANSLATE_WEB_SERVICE_PORT_80_TCP_ADDR", "10.96.0.30"),
        ];
        let config = PurgeConfig::from_env(&env(&with(links)), Mode::Purge).expect("service links are accepted");
        assert!(config.rabbitmq.is_some(), "the rest of the configuration is read as usual");
        for (name, value) in [("CLEANSLATE_SERVICE_HOST", "rabbitmq"), ("CLEANSLATE_ETCD_PORT", "2379")] {
            let err = error_of(&with(&[(name, value)]));
            assert_eq!(kind_of(&err), ErrorKind::Config, "{name}={value} is not a service link");
        }
    }

    /// The production guard matches words of the environment name, not the whole name.
    #[test]
    fn production_is_a_word_match() {
        for name in [
            "prod",
            "PROD",
            "prd",
            "production",
            "production-eu",
            "eu-prod",
            "eu_PRD_2",
            "Production.west",
            "prod2",
            "prd01",
        ] {
            assert!(is_production_name(name), "{name} is production");
        }
        for name in ["dev", "staging", "preprod", "product-demo", "prodigy", ""] {
            assert!(!is_production_name(name), "{name} is not production");
        }
    }

    /// An empty prefix list is kept for the safety check rather than dropped silently.
    #[test]
    fn empty_prefix_entries_are_kept_for_refusal() {
        let config =
            PurgeConfig::from_env(&env(&with(&[("CLEANSLATE_ETCD_PREFIXES", "a/,,b/")])), Mode::Purge).expect("parses");
        assert_eq!(config.etcd.expect("etcd").prefixes, vec!["a/", "", "b/"], "empty entry kept");
    }

    /// A marker needs a revision and a namespace; the API comes from the in-cluster variables.
    #[test]
    fn marker_needs_revision_and_builds_the_api_url() {
        let err = error_of(&with(&[("CLEANSLATE_MARKER", "m"), ("CLEANSLATE_NAMESPACE", "dev")]));
        assert!(format!("{err:#}").contains("CLEANSLATE_REVISION"), "{err:#}");
        let config = PurgeConfig::from_env(
            &env(&with(&[
                ("CLEANSLATE_MARKER", "m"),
                ("CLEANSLATE_NAMESPACE", "dev"),
                ("CLEANSLATE_REVISION", "7"),
                ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
            ])),
            Mode::Purge,
        )
        .expect("valid");
        let marker = config.marker.expect("marker");
        let KubeAccess::Direct { api, .. } = &marker.kube.access else { panic!("in-cluster access expected") };
        assert_eq!(api.as_str(), "https://10.0.0.1/", "in-cluster API URL");
        assert_eq!(marker.revision, 7, "revision parsed");
    }

    /// The quiesce list parses into workloads (duplicates dropped) with the default timeout;
    /// without it there is no quiesce.
    #[test]
    fn quiesce_list_and_defaults() {
        let pod = [
            ("CLEANSLATE_NAMESPACE", "dev"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let mut pairs = with(&pod);
        pairs.push(("CLEANSLATE_QUIESCE", "deployment/api, StatefulSet/worker,deployment/api"));
        let config = PurgeConfig::from_env(&env(&pairs), Mode::Purge).expect("valid");
        let quiesce = config.quiesce.expect("quiesce on");
        let names: Vec<String> = quiesce.workloads.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["deployment/api", "statefulset/worker"], "parsed, kind case-insensitive, no duplicate");
        assert_eq!(quiesce.timeout, Duration::from_secs(45), "quiesce timeout default");
        assert!(!quiesce.resume_after_purge, "resuming is the resume Job's, unless asked");
        assert_eq!(quiesce.namespace, "dev", "the marker's namespace");
        assert!(PurgeConfig::from_env(&env(&with(&pod)), Mode::Purge).expect("valid").quiesce.is_none(), "off");
    }

    /// Malformed quiesce settings are configuration errors naming their variable.
    #[test]
    fn malformed_quiesce_settings_are_named() {
        let cases: &[(&str, &str)] = &[
            ("CLEANSLATE_QUIESCE", "api"),
            ("CLEANSLATE_QUIESCE", "daemonset/agent"),
            ("CLEANSLATE_QUIESCE", "deployment/API"),
            ("CLEANSLATE_QUIESCE", "deployment/-api"),
            ("CLEANSLATE_QUIESCE_TIMEOUT", "forever"),
            ("CLEANSLATE_QUIESCE_RESUME", "yes"),
        ];
        for (name, value) in cases {
            let mut pairs =
                with(&[(name, value), ("CLEANSLATE_NAMESPACE", "dev"), ("CLEANSLATE_KUBE_API", "https://k:6443")]);
            if *name != "CLEANSLATE_QUIESCE" {
                pairs.push(("CLEANSLATE_QUIESCE", "deployment/api"));
            }
            let err = error_of(&pairs);
            assert_eq!(kind_of(&err), ErrorKind::Config, "{name}={value} is a configuration error");
            assert!(format!("{err:#}").contains(name), "{name}={value}: names it: {err:#}");
        }
        let err = ResumeConfig::from_env(&env(&[("CLEANSLATE_NAMESPACE", "dev")])).expect_err("list required");
        assert!(format!("{err:#}").contains("CLEANSLATE_QUIESCE is required"), "{err:#}");
    }
}
