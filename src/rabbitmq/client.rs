//! The management API client: URLs with every segment percent-encoded, requests with their own
//! bounds, and how an answer is sorted (transient, permanent, a 404 for the caller, a refused login
//! told apart from a missing permission). Every error names the endpoint, never its credentials.

use std::time::Duration;

use anyhow::{Result, anyhow};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::config::{RabbitConfig, is_dot_segment};
use crate::error::{Classified, Kind, classified};
use crate::retry::Attempt;

/// RFC 3986 unreserved characters stay; everything else in a segment is encoded, `/` above all.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Connecting to a broker on the cluster network takes milliseconds; five seconds means it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Percent-encodes one path segment.
pub fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// A non-error answer: the response, or a 404 with RabbitMQ's reason.
pub(super) enum Reply {
    Found(reqwest::Response),
    NotFound(String),
}

/// A management API client for one vhost.
pub struct Management {
    pub(super) http: reqwest::Client,
    pub(super) base: Url,
    pub(super) username: String,
    pub(super) password: crate::config::Secret,
    pub(super) vhost: String,
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

    /// Scheme, host and port of the management API, for messages (the URL never carries
    /// credentials: the configuration refuses userinfo).
    pub(super) fn endpoint(&self) -> String {
        let base = &self.base;
        let host = base.host_str().unwrap_or_default();
        match base.port_or_known_default() {
            Some(port) => format!("{}://{host}:{port}", base.scheme()),
            None => format!("{}://{host}", base.scheme()),
        }
    }

    pub(super) fn url(&self, segments: &[&str], query: &str) -> Url {
        assert!(!segments.iter().any(|s| is_dot_segment(s)), "dot segments are refused before a URL is built");
        let path: Vec<String> = segments.iter().map(|s| encode_segment(s)).collect();
        let mut url = self.base.join(&format!("api/{}", path.join("/"))).expect("encoded path joins a valid base");
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        url
    }

    /// Sends one request; transport failures and redirects are errors, every status is returned.
    pub(super) async fn request(&self, method: Method, url: Url, what: &str) -> Result<reqwest::Response, Attempt> {
        self.request_within(method, url, what, None).await
    }

    /// [`Self::request`] with its own timeout instead of the client's per-request one.
    pub(super) async fn request_within(
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
        let response = request.send().await.map_err(|err| transport_error(err, what, &self.endpoint()))?;
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
    pub(super) async fn send(&self, method: Method, url: Url, what: &str) -> Result<Reply, Attempt> {
        self.send_within(method, url, what, None).await
    }

    pub(super) async fn send_within(
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
            // A node or quorum unavailable: maybe for a moment (a leader moving). The purge checks the
            // queue's state and fails at once when it is down (`purging.rs`).
            StatusCode::BAD_REQUEST if unavailable_bad_request(&reason) => Attempt::Transient(anyhow!(
                "{what}: RabbitMQ answered {status}{reason} (a node or quorum unavailable; its messages are still there)"
            )),
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
            Attempt::Permanent(classified(
                Kind::Denied,
                format!(
                    "{what}: RabbitMQ rejected the login of user {:?} (401{detail}); check CLEANSLATE_RABBITMQ_USERNAME and the password",
                    self.username
                ),
            ))
        };
        match whoami {
            Ok(response) if response.status().is_success() => {
                Attempt::Permanent(self.permission_error(what, StatusCode::UNAUTHORIZED, reason))
            }
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                let whoami_reason = response_reason(response).await;
                if whoami_reason.to_ascii_lowercase().contains("management user") {
                    Attempt::Permanent(classified(
                        Kind::Denied,
                        format!(
                            "{what}: user {:?} may log in but not use the management API (401{whoami_reason}); give it the management tag",
                            self.username
                        ),
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
        classified(
            Kind::Denied,
            format!(
                "{what}: user {:?} lacks permission ({}{reason}); it needs the management tag, access to vhost {:?} and read permission on the queues",
                self.username,
                status.as_u16(),
                self.vhost
            ),
        )
    }

    pub(super) async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        url: Url,
        what: &str,
    ) -> Result<Option<T>, Attempt> {
        self.get_json_within(url, what, None).await
    }

    pub(super) async fn get_json_within<T: for<'de> Deserialize<'de>>(
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
}

/// A 400 that says a node or a quorum is unavailable (the purge goes through an internal AMQP
/// channel, whose errors the management API passes on as 400 with their reason).
fn unavailable_bad_request(reason: &str) -> bool {
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

/// Connection problems are transient and mean "unreachable" if they last; anything else about the
/// transport (a body cut short) is transient too.
fn transport_error(err: reqwest::Error, what: &str, endpoint: &str) -> Attempt {
    let err = err.without_url();
    if err.is_connect() {
        Attempt::Transient(anyhow::Error::new(err).context(Classified::new(
            Kind::Unreachable,
            format!("{what}: RabbitMQ management API not reachable at {endpoint} (CLEANSLATE_RABBITMQ_URL)"),
        )))
    } else if err.is_timeout() {
        // Connected, but no answer in time: the broker is there and slow (a huge purge, an
        // overloaded node), which is unfinished work (75), not an unreachable dependency (69).
        Attempt::Transient(anyhow::Error::new(err).context(Classified::new(
            Kind::Deadline,
            format!("{what}: RabbitMQ at {endpoint} did not answer within the request timeout"),
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
    use crate::config::{DeadLetters, MissingQueue};

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

    /// Only what says a node or a quorum is away marks a queue unavailable; anything else is RabbitMQ's
    /// final word (a stream, an exclusive queue).
    #[test]
    fn unavailable_nodes_are_recognised() {
        assert!(unavailable_bad_request(
            ": NOT_FOUND - home node 'rabbit@b' of durable queue 'q' in vhost '/' is down or inaccessible"
        ));
        assert!(unavailable_bad_request(": {nodedown,'rabbit@b'}"));
        assert!(unavailable_bad_request(": timeout waiting for a quorum majority"));
        assert!(!unavailable_bad_request(": NOT_IMPLEMENTED - queue.purge not supported by stream queues"));
        assert!(!unavailable_bad_request(": RESOURCE_LOCKED - cannot obtain exclusive access to locked queue"));
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
