//! RabbitMQ through the management HTTP API: list queues, find dead-letter queues, purge.
//!
//! Six endpoints are all this needs, so they are written here over reqwest rather than through the
//! `rabbitmq_http_client` crate: that crate would bring a second reqwest major (0.13, with aws-lc)
//! and its own error type, while the exit code depends on the exact status (401/403 at once,
//! 429/5xx retried, 400 reported with RabbitMQ's reason).
//!
//! What the API does that surprises (rabbitmq-server `deps/rabbitmq_management`):
//! - every path segment must be percent-encoded, the default vhost `/` included (`%2F`);
//! - the list endpoint's `name` filter is a case-insensitive substring or regex, so exact and
//!   whole-name matching is done here; pages hold at most 500 items (`MAX_PAGE_SIZE`);
//! - a purge answers 204 with no count, so counts come from the listing and are approximate
//!   (message counts are sampled statistics);
//! - streams cannot be purged (400 `not_implemented`), nor exclusive queues of another connection;
//! - messages held unacknowledged by live consumers survive a purge.
//!
//! This module does not decide what the run's exit code is; it reports per-queue outcomes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::stream::{self, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{MissingQueue, RabbitConfig, RetryPolicy};
pub use crate::dead_letters::Candidate;
use crate::dead_letters::{BindingInfo, ExchangeInfo, Topology, select_dead_letter_queues};
use crate::error::{Classified, Kind, classified};
use crate::retry::{self, Attempt};

/// RFC 3986 unreserved characters stay; everything else in a segment is encoded, `/` above all.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The management API's own maximum page size (`rabbit_mgmt_util`, `MAX_PAGE_SIZE`).
const PAGE_SIZE: usize = 500;

/// Connecting to a broker on the cluster network takes milliseconds; five seconds means it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a name is `.` or `..`, which URL normalisation removes from a path whatever its encoding.
pub fn is_dot_segment(name: &str) -> bool {
    matches!(name, "." | "..")
}

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
    /// Sampled by the broker's statistics; absent until the first sample.
    #[serde(default)]
    pub messages: Option<u64>,
    #[serde(default)]
    pub consumers: Option<u64>,
    #[serde(default)]
    pub arguments: Value,
    /// An object, or `[]` when no policy applies (an empty Erlang proplist).
    #[serde(default)]
    pub effective_policy_definition: Value,
}

impl QueueInfo {
    /// The dead-letter exchange and routing key, from queue arguments first, then the policy
    /// (arguments win over policies in RabbitMQ: <https://www.rabbitmq.com/docs/dlx>).
    pub fn dead_letter_target(&self) -> Option<(String, Option<String>)> {
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        let exchange = text(&self.arguments, "x-dead-letter-exchange")
            .or_else(|| text(&self.effective_policy_definition, "dead-letter-exchange"))?;
        let routing_key = text(&self.arguments, "x-dead-letter-routing-key")
            .or_else(|| text(&self.effective_policy_definition, "dead-letter-routing-key"));
        Some((exchange, routing_key))
    }
}

#[derive(Deserialize)]
struct Page {
    items: Vec<QueueInfo>,
    #[serde(default)]
    page_count: usize,
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
}

/// What happened to one queue.
#[derive(Clone, Debug)]
pub enum QueueOutcome {
    /// Purged; the count is the broker's last sample before the purge.
    Purged { approx_messages: u64 },
    /// It vanished between listing and purging.
    Vanished,
    /// It could not be purged; RabbitMQ's reason, or the last error after retries.
    Failed(String),
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
    /// Builds the client; an unreadable CA file is a configuration error.
    pub fn new(config: &RabbitConfig, request_timeout: Duration) -> Result<Management> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(request_timeout)
            .user_agent(concat!("cleanslate/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|err| classified(Kind::Config, format!("CLEANSLATE_RABBITMQ_CA_FILE: {err}")))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|err| {
                classified(Kind::Config, format!("CLEANSLATE_RABBITMQ_CA_FILE is not a PEM certificate: {err}"))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Management {
            http: builder.build().context("building the RabbitMQ HTTP client")?,
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

    /// Sends one request and sorts failures into transient and permanent.
    /// Returns `None` for 404, which callers interpret.
    async fn send(&self, method: Method, url: Url, what: &str) -> Result<Option<reqwest::Response>, Attempt> {
        let response = self
            .http
            .request(method, url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .send()
            .await
            .map_err(|err| transport_error(err, what))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Some(response));
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let reason = response_reason(response).await;
        Err(match status {
            // RabbitMQ answers 401 both for a failed login ("Login failed") and for a user without
            // access to the vhost or queue ("not authorised to access virtual host", "Access
            // refused."), so the reason decides which hint is right.
            StatusCode::UNAUTHORIZED if reason.contains("Login failed") => Attempt::Permanent(anyhow!(
                "{what}: RabbitMQ rejected the login of user {:?} (401{reason}); check CLEANSLATE_RABBITMQ_USERNAME and the password",
                self.username
            )),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Attempt::Permanent(anyhow!(
                "{what}: user {:?} lacks permission ({}{reason}); it needs the management tag, access to vhost {:?} and read permission on the queues",
                self.username,
                status.as_u16(),
                self.vhost
            )),
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                Attempt::Transient(anyhow!("{what}: RabbitMQ answered {s}{reason}"))
            }
            s => Attempt::Permanent(anyhow!("{what}: RabbitMQ answered {s}{reason}")),
        })
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, url: Url, what: &str) -> Result<Option<T>, Attempt> {
        match self.send(Method::GET, url, what).await? {
            None => Ok(None),
            Some(response) => response
                .json::<T>()
                .await
                .map(Some)
                .map_err(|err| Attempt::Transient(anyhow!("{what}: reading the answer: {err}"))),
        }
    }

    /// Every queue in the vhost, page by page.
    pub async fn list_queues(&self, policy: &RetryPolicy, deadline: Instant) -> Result<Vec<QueueInfo>> {
        let vhost = self.vhost.clone();
        let mut queues = Vec::new();
        let mut page = 1;
        loop {
            let query = format!(
                "page={page}&page_size={PAGE_SIZE}&columns=name,type,messages,consumers,arguments,effective_policy_definition"
            );
            let url = self.url(&["queues", &vhost], &query);
            let what = format!("listing queues of vhost {vhost:?}");
            let result: Option<Page> =
                retry::run(policy, deadline, &what, || self.get_json(url.clone(), &what)).await?;
            let Some(result) = result else {
                return Err(anyhow!("{what}: vhost {vhost:?} does not exist (404)"));
            };
            queues.extend(result.items);
            if page >= result.page_count {
                return Ok(queues);
            }
            page += 1;
        }
    }

    /// The exchanges and bindings of the vhost: what dead-letter routing is decided on.
    async fn topology(&self, policy: &RetryPolicy, deadline: Instant) -> Result<Topology> {
        let vhost = &self.vhost;
        let what = format!("listing exchanges and bindings of vhost {vhost:?}");
        let exchanges_url = self.url(&["exchanges", vhost], "columns=name,type");
        // Only the columns routing needs: a shared vhost can have many bindings, and the Job has 128Mi.
        let bindings_url = self.url(&["bindings", vhost], "columns=source,destination,destination_type,routing_key");
        let exchanges: Vec<ExchangeInfo> =
            retry::run(policy, deadline, &what, || self.get_json(exchanges_url.clone(), &what))
                .await?
                .unwrap_or_default();
        let bindings: Vec<BindingInfo> =
            retry::run(policy, deadline, &what, || self.get_json(bindings_url.clone(), &what))
                .await?
                .unwrap_or_default();
        Ok(Topology::new(exchanges, bindings))
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
        if config.dead_letters && selection.queues.iter().any(|q| q.info.dead_letter_target().is_some()) {
            let topology = self.topology(policy, deadline).await?;
            add_dead_letter_queues(&mut selection, &all, &topology, &mut chosen);
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

    /// Purges one queue, retrying transient failures.
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
        let what = format!("purging queue {:?} in vhost {:?}", name, self.vhost);
        let url = self.url(&["queues", &self.vhost, name, "contents"], "");
        let started = std::time::Instant::now();
        let result = retry::run(policy, deadline, &what, || async {
            self.send(Method::DELETE, url.clone(), &what).await.map(|r| r.is_some())
        })
        .await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let consumers = queue.info.consumers.unwrap_or(0);
        match result {
            Ok(true) => {
                let approx_messages = queue.info.messages.unwrap_or(0);
                info!(vhost = %self.vhost, queue = %name, reason = %queue.reason, approx_messages, consumers, duration_ms, "purged queue");
                if consumers > 0 {
                    warn!(vhost = %self.vhost, queue = %name, consumers, "queue has consumers: messages they hold unacknowledged survive the purge");
                }
                QueueOutcome::Purged { approx_messages }
            }
            Ok(false) => {
                warn!(vhost = %self.vhost, queue = %name, "queue vanished before it was purged");
                QueueOutcome::Vanished
            }
            Err(err) => {
                let message = format!("{err:#}");
                warn!(vhost = %self.vhost, queue = %name, error = %message, duration_ms, "queue not purged");
                QueueOutcome::Failed(message)
            }
        }
    }

    /// Purges every selected queue, at most `concurrency` at a time, in selection order of results.
    pub async fn purge_all(
        &self,
        queues: &[Selected],
        concurrency: usize,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Vec<QueueOutcome> {
        let mut indexed: Vec<(usize, QueueOutcome)> = stream::iter(queues.iter().enumerate())
            .map(|(i, q)| async move { (i, self.purge_one(q, policy, deadline).await) })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        indexed.sort_by_key(|(i, _)| *i);
        indexed.into_iter().map(|(_, outcome)| outcome).collect()
    }
}

/// Adds the dead-letter queues that only selected queues' dead letters reach, transitively, and
/// records the others as candidates (see [`crate::dead_letters::select_dead_letter_queues`]).
fn add_dead_letter_queues(
    selection: &mut Selection,
    all: &BTreeMap<String, QueueInfo>,
    topology: &Topology,
    chosen: &mut BTreeSet<String>,
) {
    let mut targets = BTreeMap::new();
    for (name, info) in all {
        let Some(target) = info.dead_letter_target() else { continue };
        if chosen.contains(name) && !topology.has_exchange(&target.0) {
            warn!(queue = %name, exchange = %target.0, "dead-letter exchange does not exist");
        }
        targets.insert(name.clone(), target);
    }
    let (taken, candidates) = select_dead_letter_queues(chosen, &targets, topology);
    for (queue, source) in taken {
        if let Some(info) = all.get(&queue)
            && chosen.insert(queue.clone())
        {
            selection.queues.push(Selected { info: info.clone(), reason: Reason::DeadLetterOf(source) });
        }
    }
    selection.dead_letter_candidates = candidates.into_iter().filter(|c| all.contains_key(&c.queue)).collect();
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
            dead_letters: true,
            missing: MissingQueue::Ignore,
            ca_file: None,
        };
        let mgmt = Management::new(&config, Duration::from_secs(1)).expect("client");
        let url = mgmt.url(&["queues", "/", "a/b c", "contents"], "");
        assert_eq!(url.as_str(), "https://mq.example/rabbit/api/queues/%2F/a%2Fb%20c/contents", "encoded URL");
    }

    /// Dead-letter settings come from arguments first, then from the policy; `[]` means no policy.
    #[test]
    fn dead_letter_target_prefers_arguments() {
        let info = |arguments: Value, policy: Value| QueueInfo {
            name: "q".into(),
            queue_type: None,
            messages: None,
            consumers: None,
            arguments,
            effective_policy_definition: policy,
        };
        let both = info(
            json!({"x-dead-letter-exchange": "dlx-arg"}),
            json!({"dead-letter-exchange": "dlx-pol", "dead-letter-routing-key": "rk"}),
        );
        assert_eq!(both.dead_letter_target(), Some(("dlx-arg".into(), Some("rk".into()))), "argument wins");
        let none = info(json!({}), json!([]));
        assert_eq!(none.dead_letter_target(), None, "no dead-lettering");
        let default_exchange =
            info(json!({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q-dlq"}), json!([]));
        assert_eq!(default_exchange.dead_letter_target(), Some(("".into(), Some("q-dlq".into()))), "default exchange");
    }
}
