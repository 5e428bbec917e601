//! RabbitMQ through the management HTTP API: list queues, find dead-letter queues, purge.
//!
//! Eight endpoints are all this needs, so they are written here over reqwest rather than through the
//! `rabbitmq_http_client` crate: that crate would bring a second reqwest major (0.13, with aws-lc)
//! and its own error type, while the exit code depends on the exact status (401/403 at once,
//! 429/5xx retried, 400 reported with RabbitMQ's reason).
//!
//! What the API does that surprises (rabbitmq-server `deps/rabbitmq_management`; REFERENCES §6.3):
//! - every path segment must be percent-encoded, the default vhost `/` included (`%2F`);
//! - the list endpoint's `name` filter is a case-insensitive substring or regex, so exact and
//!   whole-name matching is done here; and its pages shift while queues come and go (a page past
//!   the end answers 400), so the listing is one unpaginated request: one consistent snapshot;
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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Result, anyhow};
use futures_util::stream::{self, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{DeadLetters, MissingQueue, RabbitConfig, RetryPolicy, is_dot_segment};
pub use crate::dead_letters::Candidate;
use crate::dead_letters::{BindingInfo, ExchangeInfo, Topology, reached_by_one_another, select_dead_letter_queues};
use crate::error::{Classified, Kind, classified};
use crate::policies::{Policies, PolicyInfo};
use crate::retry::{self, Attempt};
use crate::tally::Tally;

/// RFC 3986 unreserved characters stay; everything else in a segment is encoded, `/` above all.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The columns the listing asks for: what selection, dead-letter routing and the counts need, so
/// that tens of thousands of queues stay a few megabytes (the Job has 128Mi).
const QUEUE_COLUMNS: &str =
    "name,type,exclusive,policy,messages_ready,messages_unacknowledged,consumers,arguments,effective_policy_definition";

/// Connecting to a broker on the cluster network takes milliseconds; five seconds means it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Percent-encodes one path segment.
pub fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// A queue as the list endpoint describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    #[serde(rename = "type", default)]
    pub queue_type: Option<String>,
    #[serde(default)]
    pub exclusive: Option<bool>,
    /// The name of the policy that applies (a string, or empty/absent).
    #[serde(default)]
    pub policy: Option<Value>,
    /// Sampled by the broker's statistics; absent until the first sample, or with statistics off.
    #[serde(default)]
    pub messages_ready: Option<u64>,
    #[serde(default)]
    pub messages_unacknowledged: Option<u64>,
    /// Absent with statistics off.
    #[serde(default)]
    pub consumers: Option<u64>,
    #[serde(default)]
    pub arguments: Value,
    /// An object, or `[]` when no policy applies (an empty Erlang proplist); absent (`None`) with
    /// statistics off.
    #[serde(default)]
    pub effective_policy_definition: Option<Value>,
}

impl QueueInfo {
    /// `classic`, `quorum` or `stream`.
    pub fn kind(&self) -> &str {
        self.queue_type.as_deref().unwrap_or("classic")
    }

    /// Why a purge of this queue cannot work, from the listing alone.
    fn unpurgeable(&self) -> Option<&'static str> {
        if self.kind() == "stream" {
            Some("a stream cannot be purged (RabbitMQ answers 400 not_implemented)")
        } else if self.exclusive == Some(true) {
            Some("an exclusive queue belongs to one AMQP connection and cannot be purged by another")
        } else {
            None
        }
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
    pub fn dead_letter_target(&self, policy: &Map<String, Value>) -> Option<(String, Option<String>)> {
        let argument = |key: &str| self.arguments.get(key).and_then(Value::as_str).map(str::to_string);
        let policy_key = |key: &str| policy.get(key).and_then(Value::as_str).map(str::to_string);
        let exchange = argument("x-dead-letter-exchange").or_else(|| policy_key("dead-letter-exchange"))?;
        let routing_key = argument("x-dead-letter-routing-key").or_else(|| policy_key("dead-letter-routing-key"));
        Some((exchange, routing_key))
    }

    /// Whether the listing lacks what the queue record has (not sampled by the statistics yet).
    fn unsampled(&self) -> bool {
        self.arguments.is_null() || (self.effective_policy_definition.is_none() && self.policy.is_none())
    }

    /// Fills what an unsampled queue's listing lacks from its record.
    fn fill_from(&mut self, record: &QueueInfo) {
        if self.arguments.is_null() {
            self.arguments = record.arguments.clone();
        }
        self.queue_type = self.queue_type.take().or_else(|| record.queue_type.clone());
        self.exclusive = self.exclusive.or(record.exclusive);
        self.policy = self.policy.take().or_else(|| record.policy.clone());
        self.messages_ready = self.messages_ready.or(record.messages_ready);
        self.messages_unacknowledged = self.messages_unacknowledged.or(record.messages_unacknowledged);
    }

    /// The name of the policy the listing says applies (`""`: none), when it says.
    pub fn policy_name(&self) -> Option<&str> {
        self.policy.as_ref().and_then(Value::as_str)
    }

    /// The policy definition the listing gives, or `None` when it does not say (statistics off).
    fn listed_policy(&self) -> Option<Map<String, Value>> {
        self.effective_policy_definition.as_ref().map(|v| v.as_object().cloned().unwrap_or_default())
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
    /// Queues behind a dead-letter exchange that no provable route reaches: named, never purged.
    pub dead_letter_candidates: Vec<Candidate>,
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
    /// It could not be purged; RabbitMQ's reason, or the last error after retries.
    Failed(String),
}

/// A non-error answer: the response, or a 404 with RabbitMQ's reason.
enum Reply {
    Found(reqwest::Response),
    NotFound(String),
}

/// A management API client for one vhost.
pub struct Management {
    http: reqwest::Client,
    base: Url,
    username: String,
    password: crate::config::Secret,
    vhost: String,
}

impl Management {
    /// Builds the client (the CA file was checked with the configuration).
    pub fn new(config: &RabbitConfig, request_timeout: Duration) -> Result<Management> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(request_timeout)
            // A redirect (an ingress's ssl-redirect, a moved path) would turn a DELETE into a GET
            // or drop the credentials; it is reported instead, naming where it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cleanslate/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|err| classified(Kind::Config, format!("CLEANSLATE_RABBITMQ_CA_FILE: {err}")))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
                classified(Kind::Config, format!("CLEANSLATE_RABBITMQ_CA_FILE is not a PEM certificate: {err}"))
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Management {
            http: builder.build().map_err(|err| {
                classified(
                    Kind::Config,
                    format!("building the RabbitMQ HTTP client (CLEANSLATE_RABBITMQ_CA_FILE?): {err}"),
                )
            })?,
            base: config.url.clone(),
            username: config.username.clone(),
            password: config.password.clone(),
            vhost: config.vhost.clone(),
        })
    }

    fn url(&self, segments: &[&str], query: &str) -> Url {
        assert!(!segments.iter().any(|s| is_dot_segment(s)), "dot segments are refused before a URL is built");
        let path: Vec<String> = segments.iter().map(|s| encode_segment(s)).collect();
        let mut url = self.base.join(&format!("api/{}", path.join("/"))).expect("encoded path joins a valid base");
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        url
    }

    /// Sends one request; transport failures and redirects are errors, every status is returned.
    async fn request(&self, method: Method, url: Url, what: &str) -> Result<reqwest::Response, Attempt> {
        self.request_within(method, url, what, None).await
    }

    /// [`Self::request`] with its own timeout instead of the client's per-request one.
    async fn request_within(
        &self,
        method: Method,
        url: Url,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, Attempt> {
        let mut request = self.http.request(method, url).basic_auth(&self.username, Some(self.password.expose()));
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|err| transport_error(err, what))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|location| shown_location(response.url(), location))
                .unwrap_or_else(|| "nowhere (no Location header)".into());
            return Err(Attempt::Permanent(classified(
                Kind::Config,
                format!(
                    "{what}: the management API answered {status} redirecting to {location}; redirects are not \
                     followed (a DELETE would not survive one): set CLEANSLATE_RABBITMQ_URL to where it points"
                ),
            )));
        }
        Ok(response)
    }

    /// Sends one request and sorts failures into transient and permanent; a 404 is returned with
    /// its reason for the caller to interpret.
    async fn send(&self, method: Method, url: Url, what: &str) -> Result<Reply, Attempt> {
        self.send_within(method, url, what, None).await
    }

    async fn send_within(
        &self,
        method: Method,
        url: Url,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<Reply, Attempt> {
        let response = self.request_within(method, url, what, timeout).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(Reply::Found(response));
        }
        let reason = response_reason(response).await;
        Err(match status {
            StatusCode::NOT_FOUND => return Ok(Reply::NotFound(reason)),
            // RabbitMQ answers 401 both for a failed login ("Login failed" up to 3.11,
            // "Not_Authorized" since 3.12) and for a user without access to the vhost or queue:
            // whether the same credentials may ask who they are tells which.
            StatusCode::UNAUTHORIZED => self.unauthorized(what, &reason).await,
            StatusCode::FORBIDDEN => Attempt::Permanent(self.permission_error(what, status, &reason)),
            StatusCode::BAD_REQUEST if transient_bad_request(&reason) => {
                Attempt::Transient(anyhow!("{what}: RabbitMQ answered {status}{reason} (a node or quorum unavailable)"))
            }
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                Attempt::Transient(anyhow!("{what}: RabbitMQ answered {s}{reason}"))
            }
            s => Attempt::Permanent(anyhow!("{what}: RabbitMQ answered {s}{reason}")),
        })
    }

    /// Tells a refused login from a missing permission after a 401, by asking `/api/whoami`.
    async fn unauthorized(&self, what: &str, reason: &str) -> Attempt {
        let whoami = self.request(Method::GET, self.url(&["whoami"], ""), what).await;
        let login_error = |detail: &str| {
            Attempt::Permanent(anyhow!(
                "{what}: RabbitMQ rejected the login of user {:?} (401{detail}); check CLEANSLATE_RABBITMQ_USERNAME and the password",
                self.username
            ))
        };
        match whoami {
            Ok(response) if response.status().is_success() => {
                Attempt::Permanent(self.permission_error(what, StatusCode::UNAUTHORIZED, reason))
            }
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                let whoami_reason = response_reason(response).await;
                if whoami_reason.to_ascii_lowercase().contains("management user") {
                    Attempt::Permanent(anyhow!(
                        "{what}: user {:?} may log in but not use the management API (401{whoami_reason}); give it the management tag",
                        self.username
                    ))
                } else {
                    login_error(if reason.is_empty() { &whoami_reason } else { reason })
                }
            }
            Ok(response) => Attempt::Permanent(anyhow!(
                "{what}: RabbitMQ answered 401{reason}: a bad login or a missing permission, and /api/whoami could not tell ({}); \
                 check CLEANSLATE_RABBITMQ_USERNAME, the password, and the user's access to vhost {:?}",
                response.status(),
                self.vhost
            )),
            Err(err) => Attempt::Permanent(anyhow!(
                "{what}: RabbitMQ answered 401{reason}: a bad login or a missing permission, and /api/whoami could not tell ({:#}); \
                 check CLEANSLATE_RABBITMQ_USERNAME, the password, and the user's access to vhost {:?}",
                match err {
                    Attempt::Transient(e) | Attempt::Permanent(e) => e,
                },
                self.vhost
            )),
        }
    }

    fn permission_error(&self, what: &str, status: StatusCode, reason: &str) -> anyhow::Error {
        anyhow!(
            "{what}: user {:?} lacks permission ({}{reason}); it needs the management tag, access to vhost {:?} and read permission on the queues",
            self.username,
            status.as_u16(),
            self.vhost
        )
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, url: Url, what: &str) -> Result<Option<T>, Attempt> {
        self.get_json_within(url, what, None).await
    }

    async fn get_json_within<T: for<'de> Deserialize<'de>>(
        &self,
        url: Url,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<T>, Attempt> {
        match self.send_within(Method::GET, url, what, timeout).await? {
            Reply::NotFound(_) => Ok(None),
            Reply::Found(response) => response
                .json::<T>()
                .await
                .map(Some)
                .map_err(|err| Attempt::Transient(anyhow!("{what}: reading the answer: {err}"))),
        }
    }

    /// Every queue in the vhost, in one request: pages would shift under queues created or
    /// deleted meanwhile (skipping some, or answering 400 past a shrunken end).
    ///
    /// A queue the statistics have not sampled yet (declared seconds ago) is listed without its
    /// policy and counts, and finding its dead-letter policy would mean resolving every policy by
    /// pattern. The policy's name is filled in from a second listing without statistics
    /// (`disable_stats=true&enable_queue_totals=true`, which answers from the queue records), so the
    /// policy that RabbitMQ really applied is used, and a queue without one needs none.
    pub async fn list_queues(&self, policy: &RetryPolicy, deadline: Instant) -> Result<Vec<QueueInfo>> {
        let mut queues = self.list_queues_with(policy, deadline, "").await?;
        if queues.iter().any(QueueInfo::unsampled) {
            // Only an aid: when it fails, those queues stay as listed, which makes their policy
            // unknown or resolved by pattern, never guessed.
            let records: BTreeMap<String, QueueInfo> = match self
                .list_queues_with(policy, deadline, "disable_stats=true&enable_queue_totals=true&")
                .await
            {
                Ok(records) => records.into_iter().map(|q| (q.name.clone(), q)).collect(),
                Err(err) => {
                    warn!(vhost = %self.vhost, error = %format!("{err:#}"), "the queue records could not be listed; queues not sampled yet stay as listed");
                    BTreeMap::new()
                }
            };
            for queue in queues.iter_mut().filter(|q| q.unsampled()) {
                if let Some(record) = records.get(&queue.name) {
                    queue.fill_from(record);
                }
            }
        }
        Ok(queues)
    }

    async fn list_queues_with(&self, policy: &RetryPolicy, deadline: Instant, options: &str) -> Result<Vec<QueueInfo>> {
        let vhost = self.vhost.clone();
        let url = self.url(&["queues", &vhost], &format!("{options}columns={QUEUE_COLUMNS}"));
        let what = format!("listing queues of vhost {vhost:?}");
        // One request for the whole vhost may take longer than the per-request timeout (tens of
        // thousands of queues on 3.x): it may use what is left of the deadline.
        let queues: Option<Vec<QueueInfo>> = retry::run(policy, deadline, &what, || {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
            self.get_json_within(url.clone(), &what, Some(left))
        })
        .await?;
        queues.ok_or_else(|| anyhow!("{what}: vhost {vhost:?} does not exist (404)"))
    }

    /// The vhost's policies and operator policies, for listings without policy columns (any
    /// management user with access to the vhost may list them). When they cannot be read, `Err`
    /// with the reason: the dead-letter settings are then unknown.
    async fn policies(&self, policy: &RetryPolicy, deadline: Instant) -> Result<Result<Policies, String>> {
        let mut lists = Vec::new();
        for path in ["policies", "operator-policies"] {
            let what = format!("listing {path} of vhost {:?}", self.vhost);
            let url = self.url(&[path, &self.vhost], "");
            let listed = retry::run(policy, deadline, &what, || async {
                let response = self.request(Method::GET, url.clone(), &what).await?;
                match response.status() {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(None),
                    s if s.is_success() => response
                        .json::<Vec<PolicyInfo>>()
                        .await
                        .map(Some)
                        .map_err(|err| Attempt::Transient(anyhow!("{what}: reading the answer: {err}"))),
                    s => Err(Attempt::Transient(anyhow!("{what}: RabbitMQ answered {s}"))),
                }
            })
            .await;
            // Policies only inform dead-letter discovery: when they cannot be read, it is unknown,
            // and the run goes on without purging dead-letter queues.
            let listed = match listed {
                Ok(listed) => listed,
                Err(err) => return Ok(Err(format!("{err:#}"))),
            };
            match listed {
                Some(list) => lists.push(list),
                // Operator policies cannot set dead-letter keys: not reading them loses nothing here.
                None if path == "operator-policies" => lists.push(Vec::new()),
                None => {
                    return Ok(Err(format!(
                        "the listing does not say which policies apply (statistics off, or queues not sampled yet) \
                         and user {:?} may not read {path} (it needs access to the vhost)",
                        self.username
                    )));
                }
            }
        }
        let operator = lists.pop().unwrap_or_default();
        let user = lists.pop().unwrap_or_default();
        Ok(Ok(Policies::new(user, operator)))
    }

    /// The exchanges, their alternate exchanges and the bindings of the vhost: what dead-letter
    /// routing is decided on. An alternate exchange set by a policy needs the policies; when they
    /// cannot be read, `settings.unknown` says so.
    async fn topology(
        &self,
        policy: &RetryPolicy,
        deadline: Instant,
        settings: &mut DeadLetterSettings,
    ) -> Result<Topology> {
        #[derive(Deserialize)]
        struct Listed {
            name: String,
            #[serde(rename = "type")]
            exchange_type: String,
            #[serde(default)]
            arguments: Value,
            #[serde(default)]
            policy: Option<Value>,
        }
        let vhost = &self.vhost;
        let what = format!("listing exchanges and bindings of vhost {vhost:?}");
        let exchanges_url = self.url(&["exchanges", vhost], "columns=name,type,arguments,policy");
        // Only the columns routing needs: a shared vhost can have many bindings, and the Job has 128Mi.
        let bindings_url = self.url(&["bindings", vhost], "columns=source,destination,destination_type,routing_key");
        let listed: Vec<Listed> = retry::run(policy, deadline, &what, || self.get_json(exchanges_url.clone(), &what))
            .await?
            .unwrap_or_default();
        let bindings: Vec<BindingInfo> =
            retry::run(policy, deadline, &what, || self.get_json(bindings_url.clone(), &what))
                .await?
                .unwrap_or_default();
        let mut alternates = BTreeMap::new();
        for exchange in &listed {
            // An argument wins over a policy, as for queues.
            if let Some(alternate) = exchange.arguments.get("alternate-exchange").and_then(Value::as_str) {
                alternates.insert(exchange.name.clone(), alternate.to_string());
                continue;
            }
            let Some(named) = exchange.policy.as_ref().and_then(Value::as_str).filter(|n| !n.is_empty()) else {
                continue;
            };
            if settings.policies.is_none() {
                settings.policies = Some(self.policies(policy, deadline).await?);
            }
            let resolved = match settings.policies.as_ref().expect("fetched above") {
                Ok(policies) => policies
                    .effective(&exchange.name, "exchange", Some(named), &["alternate-exchange"])
                    .map_err(|unknown| unknown.0),
                Err(why) => Err(why.clone()),
            };
            match resolved {
                Ok(definition) => {
                    if let Some(alternate) = definition.get("alternate-exchange").and_then(Value::as_str) {
                        alternates.insert(exchange.name.clone(), alternate.to_string());
                    }
                }
                Err(why) => {
                    settings.unknown.get_or_insert(why);
                }
            }
        }
        let exchanges =
            listed.into_iter().map(|e| ExchangeInfo { name: e.name, exchange_type: e.exchange_type }).collect();
        Ok(Topology::new(exchanges, bindings).with_alternates(alternates))
    }

    /// Named queues ∪ whole-name pattern matches ∪ (optionally) their dead-letter queues.
    pub async fn select(&self, config: &RabbitConfig, policy: &RetryPolicy, deadline: Instant) -> Result<Selection> {
        let all: BTreeMap<String, QueueInfo> =
            self.list_queues(policy, deadline).await?.into_iter().map(|q| (q.name.clone(), q)).collect();
        let mut selection = Selection::default();
        let mut chosen = BTreeSet::new();
        for name in &config.queues {
            match all.get(name) {
                Some(info) if chosen.insert(name.clone()) => {
                    selection.queues.push(Selected { info: info.clone(), reason: Reason::Named })
                }
                Some(_) => {}
                None => selection.missing.push(name.clone()),
            }
        }
        if let Some(pattern) = &config.pattern {
            for (name, info) in &all {
                if pattern.is_match(name) && chosen.insert(name.clone()) {
                    selection.queues.push(Selected { info: info.clone(), reason: Reason::Pattern });
                }
            }
        }
        if config.dead_letters != DeadLetters::Off {
            let mut settings = self.dead_letter_settings(&all, policy, deadline).await?;
            if chosen.iter().any(|name| settings.targets.contains_key(name)) {
                let topology = self
                    .topology(policy, deadline, &mut settings)
                    .await?
                    .with_wildcard_routes_proven(config.dead_letters == DeadLetters::Reachable);
                if let Some(why) = &settings.unknown {
                    warn!(vhost = %self.vhost, why = %why, "where dead letters go cannot be known; no dead-letter queue is purged");
                }
                add_dead_letter_queues(&mut selection, &all, &settings, &topology, &mut chosen);
                for candidate in &selection.dead_letter_candidates {
                    warn!(
                        vhost = %self.vhost,
                        queue = %candidate.queue,
                        dead_letters_of = %candidate.dead_letters_of,
                        why = %candidate.why,
                        "dead letters might reach this queue but the route is not proven; not purged"
                    );
                }
            }
        }
        for name in &selection.missing {
            match config.missing {
                MissingQueue::Ignore => {
                    warn!(vhost = %self.vhost, queue = %name, "named queue does not exist, skipped")
                }
                MissingQueue::Fail => warn!(vhost = %self.vhost, queue = %name, "named queue does not exist"),
            }
        }
        Ok(selection)
    }

    /// Every queue's dead-letter exchange and key: from the listing, or, when it has no policy
    /// columns (statistics off), from arguments and the policies resolved here.
    async fn dead_letter_settings(
        &self,
        all: &BTreeMap<String, QueueInfo>,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<DeadLetterSettings> {
        let mut settings = DeadLetterSettings::default();
        // Statistics off, or queues not sampled yet: the listing does not give the definition.
        // Only a queue that has a policy (or does not say) needs the policies themselves.
        if all.values().any(|q| q.effective_policy_definition.is_none() && q.policy_name() != Some("")) {
            settings.policies = Some(self.policies(policy, deadline).await?);
        }
        for (name, info) in all {
            let definition = match (info.listed_policy(), &settings.policies) {
                (Some(listed), _) => listed,
                (None, _) if info.policy_name() == Some("") => Map::new(),
                (None, Some(Ok(policies))) => {
                    let named = info.policy_name();
                    match policies.effective(name, info.kind(), named, DEAD_LETTER_KEYS) {
                        Ok(definition) => definition,
                        Err(unknown) => {
                            settings.unknown.get_or_insert(unknown.0);
                            Map::new()
                        }
                    }
                }
                (None, Some(Err(why))) => {
                    settings.unknown.get_or_insert(why.clone());
                    Map::new()
                }
                (None, None) => Map::new(),
            };
            if let Some(target) = info.dead_letter_target(&definition) {
                settings.targets.insert(name.clone(), target);
            }
        }
        Ok(settings)
    }

    /// Purges one queue, retrying transient failures. A 404 is checked: only a queue that is
    /// really gone has vanished; one that still exists is unavailable, and that is a failure.
    pub async fn purge_one(&self, queue: &Selected, policy: &RetryPolicy, deadline: Instant) -> QueueOutcome {
        let name = &queue.info.name;
        if is_dot_segment(name) {
            // `api/queues/v/./contents` collapses to `api/queues/v/contents`: a DELETE there would
            // delete the queue named "contents". Percent-encoding does not help (`%2E` is a dot
            // segment too: WHATWG URL, "single-dot path segment").
            let message = format!(
                "a queue named {name:?} cannot be addressed through the management HTTP API (URL dot segment); purge it with rabbitmqctl purge_queue"
            );
            warn!(vhost = %self.vhost, queue = %name, "queue not purged: name is a URL dot segment");
            return QueueOutcome::Failed(message);
        }
        if queue.reason != Reason::Named
            && let Some(why) = queue.info.unpurgeable()
        {
            warn!(vhost = %self.vhost, queue = %name, reason = %queue.reason, why, "queue cannot be purged; skipped (name it to make this a failure)");
            return QueueOutcome::Skipped(why.to_string());
        }
        let what = format!("purging queue {:?} in vhost {:?}", name, self.vhost);
        let url = self.url(&["queues", &self.vhost, name, "contents"], "");
        let queue_url = self.url(&["queues", &self.vhost, name], "columns=name");
        let started = std::time::Instant::now();
        let result = retry::run(policy, deadline, &what, || async {
            let reason = match self.send(Method::DELETE, url.clone(), &what).await? {
                Reply::Found(_) => return Ok(true),
                Reply::NotFound(reason) => reason,
            };
            match self.send(Method::GET, queue_url.clone(), &what).await? {
                Reply::NotFound(_) => Ok(false),
                Reply::Found(_) => Err(Attempt::Transient(anyhow!(
                    "{what}: RabbitMQ answered 404{reason}, but the queue exists: it is unavailable (its node down, \
                     crashed, or its leader moving), and its messages are still there"
                ))),
            }
        })
        .await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
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
                QueueOutcome::Failed(message)
            }
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
            if let QueueOutcome::Failed(message) = outcome {
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
                let outcome = self.purge_one(&selection.queues[i], policy, deadline).await;
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

/// The policy keys that decide where a queue's dead letters go.
const DEAD_LETTER_KEYS: &[&str] = &["dead-letter-exchange", "dead-letter-routing-key"];

/// Every queue's dead-letter target, and why some cannot be known.
#[derive(Default)]
struct DeadLetterSettings {
    targets: BTreeMap<String, (String, Option<String>)>,
    /// The vhost's policies, once they were needed: or why they cannot be read.
    policies: Option<Result<Policies, String>>,
    /// Set when some queue's settings come from policies that cannot be read or evaluated: any
    /// queue may then dead-letter anywhere, so no dead-letter queue is provably ours.
    unknown: Option<String>,
}

/// A 400 that says a node or a quorum is unavailable for now (the purge goes through an internal
/// AMQP channel, whose errors the management API passes on as 400 with their reason).
fn transient_bad_request(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    ["nodedown", "could not be contacted", "down or inaccessible", "timeout", "noproc", "majority", "unavailable"]
        .iter()
        .any(|word| reason.contains(word))
}

/// A Location header as it may be shown: resolved against the request (relative and
/// scheme-relative ones too), without userinfo or query (an SSO redirect may carry a token).
fn shown_location(request: &Url, location: &str) -> String {
    match request.join(location) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "a Location that is not a URL".to_string(),
    }
}

/// Adds the dead-letter queues that only selected queues' dead letters reach, transitively, and
/// records the others as candidates (see [`crate::dead_letters::select_dead_letter_queues`]); then
/// notes which selected queues other selected queues dead-letter into (for the second pass).
fn add_dead_letter_queues(
    selection: &mut Selection,
    all: &BTreeMap<String, QueueInfo>,
    settings: &DeadLetterSettings,
    topology: &Topology,
    chosen: &mut BTreeSet<String>,
) {
    for (name, target) in &settings.targets {
        if chosen.contains(name) && !topology.has_exchange(&target.0) {
            warn!(queue = %name, exchange = %target.0, "dead-letter exchange does not exist");
        }
    }
    let (taken, mut candidates) = select_dead_letter_queues(chosen, &settings.targets, topology);
    for (queue, source) in taken {
        match &settings.unknown {
            // Some queue's dead-letter settings are unknown: it may feed this one too.
            Some(why) => candidates.push(Candidate { queue, dead_letters_of: source, why: why.clone() }),
            None => {
                if let Some(info) = all.get(&queue)
                    && chosen.insert(queue.clone())
                {
                    selection.queues.push(Selected { info: info.clone(), reason: Reason::DeadLetterOf(source) });
                }
            }
        }
    }
    candidates.sort_by(|a, b| a.queue.cmp(&b.queue));
    selection.dead_letter_candidates = candidates.into_iter().filter(|c| all.contains_key(&c.queue)).collect();
    selection.dead_letter_targets = reached_by_one_another(chosen, &settings.targets, topology);
}

/// Connection problems are transient and mean "unreachable" if they last; anything else about the
/// transport (a body cut short) is transient too.
fn transport_error(err: reqwest::Error, what: &str) -> Attempt {
    let err = err.without_url();
    if err.is_connect() {
        Attempt::Transient(
            anyhow::Error::new(err)
                .context(Classified::new(Kind::Unreachable, format!("{what}: RabbitMQ management API not reachable"))),
        )
    } else if err.is_timeout() {
        // Connected, but no answer in time: the broker is there and slow (a huge purge, an
        // overloaded node), which is unfinished work (75), not an unreachable dependency (69).
        Attempt::Transient(anyhow::Error::new(err).context(Classified::new(
            Kind::Deadline,
            format!("{what}: RabbitMQ did not answer within the request timeout"),
        )))
    } else {
        Attempt::Transient(anyhow::Error::new(err).context(what.to_string()))
    }
}

/// RabbitMQ's `reason` from an error body, as ": reason", or nothing.
async fn response_reason(response: reqwest::Response) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        error: String,
        #[serde(default)]
        reason: String,
    }
    match response.json::<ErrorBody>().await {
        Ok(body) if !body.reason.is_empty() => format!(": {}", body.reason),
        Ok(body) if !body.error.is_empty() => format!(": {}", body.error),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `/`, spaces, dots and percent signs are encoded so each name stays one path segment.
    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("/"), "%2F", "default vhost");
        assert_eq!(encode_segment("team/a b.c"), "team%2Fa%20b.c", "slash and space");
        assert_eq!(encode_segment("100%"), "100%25", "percent sign");
        assert_eq!(encode_segment("a-b_c~d"), "a-b_c~d", "unreserved characters stay");
    }

    /// URLs keep the base's path prefix and encode every segment.
    #[test]
    fn urls_keep_the_path_prefix() {
        let config = RabbitConfig {
            url: Url::parse("https://mq.example/rabbit/").unwrap(),
            username: "u".into(),
            password: crate::config::Secret::new("p"),
            vhost: "/".into(),
            queues: vec![],
            pattern: None,
            dead_letters: DeadLetters::Exact,
            missing: MissingQueue::Ignore,
            ca_file: None,
        };
        let mgmt = Management::new(&config, Duration::from_secs(1)).expect("client");
        let url = mgmt.url(&["queues", "/", "a/b c", "contents"], "");
        assert_eq!(url.as_str(), "https://mq.example/rabbit/api/queues/%2F/a%2Fb%20c/contents", "encoded URL");
    }

    fn queue(arguments: Value, policy: Option<Value>) -> QueueInfo {
        QueueInfo {
            name: "q".into(),
            queue_type: None,
            exclusive: None,
            policy: None,
            messages_ready: None,
            messages_unacknowledged: None,
            consumers: None,
            arguments,
            effective_policy_definition: policy,
        }
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

    /// Only what says a node or a quorum is away is worth retrying; anything else is RabbitMQ's
    /// final word (a stream, an exclusive queue).
    #[test]
    fn unavailable_nodes_are_transient() {
        assert!(transient_bad_request(
            ": NOT_FOUND - home node 'rabbit@b' of durable queue 'q' in vhost '/' is down or inaccessible"
        ));
        assert!(transient_bad_request(": {nodedown,'rabbit@b'}"));
        assert!(transient_bad_request(": timeout waiting for a quorum majority"));
        assert!(!transient_bad_request(": NOT_IMPLEMENTED - queue.purge not supported by stream queues"));
        assert!(!transient_bad_request(": RESOURCE_LOCKED - cannot obtain exclusive access to locked queue"));
    }

    /// A redirect's target is named without the credentials or tokens it might carry.
    #[test]
    fn redirect_targets_lose_their_secrets() {
        let request = Url::parse("http://rabbitmq:15672/api/queues/%2F").unwrap();
        let shown = |location| shown_location(&request, location);
        assert_eq!(shown("https://user:pw@mq.example/api/?token=t"), "https://mq.example/api/", "absolute");
        assert_eq!(shown("//user:pw@other/x"), "http://other/x", "scheme-relative");
        assert_eq!(shown("/moved/api/"), "http://rabbitmq:15672/moved/api/", "relative, resolved");
    }
}
