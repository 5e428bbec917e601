//! Just enough of the Kubernetes API: one ConfigMap (get, create, replace, watch), and for quiesce a
//! Deployment's or StatefulSet's annotations (get, merge patch), its `scale` subresource (get,
//! replace) and its pods (list, watch by label selector).
//!
//! Written over reqwest instead of kube-rs because a handful of calls do not earn a client
//! generator, a config loader and their compile time. What it keeps from a real client:
//! - certificate verification is always on, against the service-account CA only;
//! - the bearer token is read from its file on every request (bound tokens rotate hourly:
//!   <https://kubernetes.io/docs/concepts/security/service-accounts/#bound-service-account-tokens>);
//! - writes carry `resourceVersion`, so a concurrent writer gets 409 Conflict instead of a lost update;
//! - errors keep the API's `Status` (code, reason, message), because the callers branch on them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use percent_encoding::utf8_percent_encode;
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{KubeConfig, WorkloadRef};
use crate::error::{Kind, classified};

/// A request to the API server that takes longer than this is stuck, not slow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to the API server from a pod takes milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Object metadata; fields this binary does not model (annotations, owner references, managed
/// fields) are carried through untouched so that a replace does not strip what Helm put there.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A ConfigMap with string data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

impl ConfigMap {
    /// A new ConfigMap with the given name and namespace.
    pub fn new(name: &str, namespace: &str) -> ConfigMap {
        ConfigMap {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: ObjectMeta { name: name.into(), namespace: Some(namespace.into()), ..Default::default() },
            data: BTreeMap::new(),
        }
    }
}

/// The API server's error object (`kind: Status`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// A failed API call.
#[derive(Debug)]
pub enum KubeError {
    /// The API answered with an error status.
    Api(Status),
    /// No answer: connection refused, TLS failure, timeout, a stream cut short.
    Transport(reqwest::Error),
    /// The service-account token could not be read.
    Token(String),
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
            KubeError::Token(_) => false,
        }
    }
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::Api(s) => write!(f, "Kubernetes API answered {} {}: {}", s.code, s.reason, s.message),
            KubeError::Transport(err) => write!(f, "Kubernetes API not reachable: {err}"),
            KubeError::Token(err) => write!(f, "reading the service-account token: {err}"),
            KubeError::Decode(err) => write!(f, "unexpected answer from the Kubernetes API: {err}"),
        }
    }
}

impl std::error::Error for KubeError {}

/// One event of a watch stream.
#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub object: Value,
}

/// An open watch: JSON lines, one event each, until the server ends the stream.
pub struct Watch {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next event, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, KubeError> {
        loop {
            if let Some(newline) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=newline).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map(Some).map_err(|err| KubeError::Decode(err.to_string()));
            }
            match self.response.chunk().await.map_err(|err| KubeError::Transport(err.without_url()))? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                // A last event without a trailing newline is still an event.
                None if !self.buffer.iter().all(u8::is_ascii_whitespace) => {
                    let line = std::mem::take(&mut self.buffer);
                    return serde_json::from_slice(&line).map(Some).map_err(|err| KubeError::Decode(err.to_string()));
                }
                None => return Ok(None),
            }
        }
    }
}

/// A client for ConfigMaps in one API server.
pub struct KubeClient {
    http: reqwest::Client,
    api: Url,
    token_file: PathBuf,
}

impl KubeClient {
    /// Builds a client that trusts only the cluster CA; an unreadable CA is a configuration error.
    pub fn new(config: &KubeConfig) -> Result<KubeClient> {
        let pem = std::fs::read(&config.ca_file).map_err(|err| {
            classified(Kind::Config, format!("reading the Kubernetes CA {}: {err}", config.ca_file.display()))
        })?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|err| {
            classified(Kind::Config, format!("the Kubernetes CA {} is not PEM: {err}", config.ca_file.display()))
        })?;
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("cleanslate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| classified(Kind::Config, format!("building the Kubernetes client: {err}")))?;
        let mut api = config.api.clone();
        if !api.path().ends_with('/') {
            api.set_path(&format!("{}/", api.path()));
        }
        Ok(KubeClient { http, api, token_file: config.token_file.clone() })
    }

    fn token(&self) -> Result<String, KubeError> {
        std::fs::read_to_string(&self.token_file)
            .map(|t| t.trim().to_string())
            .map_err(|err| KubeError::Token(format!("{}: {err}", self.token_file.display())))
    }

    fn url(&self, namespace: &str, name: Option<&str>, query: &str) -> Url {
        let segment = |s: &str| utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut path = format!("api/v1/namespaces/{}/configmaps", segment(namespace));
        if let Some(name) = name {
            path.push('/');
            path.push_str(&segment(name));
        }
        let mut url = self.api.join(&path).expect("encoded path joins the API base");
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        url
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&ConfigMap>,
        timeout: Duration,
    ) -> Result<reqwest::Response, KubeError> {
        let body = body.map(|object| ("application/json", serde_json::to_vec(object).expect("a ConfigMap encodes")));
        self.send_bytes(method, url, body, timeout).await
    }

    /// Sends one request with an optional body and its content type; an error status becomes
    /// [`KubeError::Api`] with the server's `Status`.
    async fn send_bytes(
        &self,
        method: Method,
        url: Url,
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<reqwest::Response, KubeError> {
        let mut request = self.http.request(method, url).bearer_auth(self.token()?).timeout(timeout);
        if let Some((content_type, bytes)) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type).body(bytes);
        }
        let response = request.send().await.map_err(|err| KubeError::Transport(err.without_url()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status();
        let status = response.json::<Status>().await.unwrap_or_default();
        Err(KubeError::Api(Status {
            code: code.as_u16(),
            reason: if status.reason.is_empty() { code.canonical_reason().unwrap_or("").into() } else { status.reason },
            message: status.message,
        }))
    }

    async fn decode(response: reqwest::Response) -> Result<ConfigMap, KubeError> {
        response.json::<ConfigMap>().await.map_err(|err| KubeError::Decode(err.to_string()))
    }

    /// The ConfigMap, or `None` when it does not exist.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, KubeError> {
        match self.send(Method::GET, self.url(namespace, Some(name), ""), None, REQUEST_TIMEOUT).await {
            Ok(response) => Self::decode(response).await.map(Some),
            Err(err) if err.code() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Creates the ConfigMap; 409 when it already exists.
    pub async fn create(&self, namespace: &str, object: &ConfigMap) -> Result<ConfigMap, KubeError> {
        let response = self.send(Method::POST, self.url(namespace, None, ""), Some(object), REQUEST_TIMEOUT).await?;
        Self::decode(response).await
    }

    /// Replaces the ConfigMap; with `metadata.resourceVersion` set, 409 when someone wrote in between.
    pub async fn replace(&self, namespace: &str, object: &ConfigMap) -> Result<ConfigMap, KubeError> {
        let url = self.url(namespace, Some(&object.metadata.name), "");
        let response = self.send(Method::PUT, url, Some(object), REQUEST_TIMEOUT).await?;
        Self::decode(response).await
    }

    /// Watches the one ConfigMap named `name`. From `resource_version` when given; without it the
    /// server first sends the current object as ADDED, so a creation between read and watch is not
    /// missed. `fieldSelector=metadata.name=…` is what lets RBAC `resourceNames` allow the watch.
    pub async fn watch(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        server_timeout: Duration,
    ) -> Result<Watch, KubeError> {
        let selector =
            utf8_percent_encode(&format!("metadata.name={name}"), percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut query =
            format!("watch=true&fieldSelector={selector}&timeoutSeconds={}", server_timeout.as_secs().max(1));
        if let Some(rv) = resource_version {
            query.push_str(&format!("&resourceVersion={rv}"));
        }
        let url = self.url(namespace, None, &query);
        // The server ends the stream after timeoutSeconds; the client bound adds a margin so a
        // silently dead connection cannot outlive it.
        let response = self.send(Method::GET, url, None, server_timeout + REQUEST_TIMEOUT).await?;
        Ok(Watch { response, buffer: Vec::new() })
    }

    /// Read-modify-write with optimistic concurrency: `change` gets the current object (or `None`)
    /// and returns the object to write, or `None` to leave it alone. A 409 (someone wrote between
    /// our read and write, or created it first) starts over from a fresh read.
    pub async fn upsert<F>(&self, namespace: &str, name: &str, mut change: F) -> Result<Option<ConfigMap>, KubeError>
    where
        F: FnMut(Option<ConfigMap>) -> Option<ConfigMap>,
    {
        loop {
            let current = self.get(namespace, name).await?;
            let existed = current.is_some();
            let Some(next) = change(current) else { return Ok(None) };
            let written =
                if existed { self.replace(namespace, &next).await } else { self.create(namespace, &next).await };
            match written {
                Ok(object) => return Ok(Some(object)),
                Err(err) if err.code() == Some(StatusCode::CONFLICT.as_u16()) => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

/// A Deployment or StatefulSet, as far as quiesce reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct Workload {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: WorkloadSpec,
}

/// The part of a workload's spec quiesce reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WorkloadSpec {
    /// Defaulted to 1 by the API server when the manifest leaves it out.
    #[serde(default)]
    pub replicas: Option<i32>,
    /// A StatefulSet's `persistentVolumeClaimRetentionPolicy` (`whenScaled`, `whenDeleted`).
    #[serde(default, rename = "persistentVolumeClaimRetentionPolicy")]
    pub pvc_retention: Option<serde_json::Value>,
}

impl Workload {
    /// The value of one annotation.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.rest.get("annotations")?.get(key)?.as_str()
    }
}

/// The `scale` subresource (`autoscaling/v1` `Scale`). Its `resourceVersion` is the workload's.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ScaleSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ScaleStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScaleSpec {
    #[serde(default)]
    pub replicas: i32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScaleStatus {
    #[serde(default)]
    pub replicas: i32,
    /// The workload's pod selector in label-selector syntax, e.g. `app=api,tier=web`.
    #[serde(default)]
    pub selector: String,
}

/// A list of pods, as the API sends them, and the list's `resourceVersion` to watch from.
#[derive(Clone, Debug, Deserialize)]
pub struct PodList {
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: Option<String>,
}

impl KubeClient {
    fn apps_url(&self, namespace: &str, workload: &WorkloadRef, subresource: Option<&str>) -> Url {
        let segment = |s: &str| utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut path = format!(
            "apis/apps/v1/namespaces/{}/{}/{}",
            segment(namespace),
            workload.kind.resource(),
            segment(&workload.name)
        );
        if let Some(subresource) = subresource {
            path.push('/');
            path.push_str(subresource);
        }
        self.api.join(&path).expect("encoded path joins the API base")
    }

    fn pods_url(&self, namespace: &str, query: &str) -> Url {
        let segment = utf8_percent_encode(namespace, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut url = self.api.join(&format!("api/v1/namespaces/{segment}/pods")).expect("encoded path joins");
        url.set_query(Some(query));
        url
    }

    async fn decode_as<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, KubeError> {
        response.json::<T>().await.map_err(|err| KubeError::Decode(err.to_string()))
    }

    /// The workload, or `None` when it does not exist.
    pub async fn get_workload(&self, namespace: &str, workload: &WorkloadRef) -> Result<Option<Workload>, KubeError> {
        match self.send_bytes(Method::GET, self.apps_url(namespace, workload, None), None, REQUEST_TIMEOUT).await {
            Ok(response) => Self::decode_as(response).await.map(Some),
            Err(err) if err.code() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Sets (`Some`) or removes (`None`) one annotation with a JSON merge patch that carries
    /// `resourceVersion`, so it applies only to the version read (409 Conflict otherwise): the
    /// API server treats a resourceVersion in a patch as a precondition
    /// (<https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply>).
    pub async fn annotate_workload(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        key: &str,
        value: Option<&str>,
        resource_version: &str,
    ) -> Result<Workload, KubeError> {
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": resource_version, "annotations": {key: value}}
        });
        let body = ("application/merge-patch+json", serde_json::to_vec(&patch).expect("a patch encodes"));
        let url = self.apps_url(namespace, workload, None);
        let response = self.send_bytes(Method::PATCH, url, Some(body), REQUEST_TIMEOUT).await?;
        Self::decode_as(response).await
    }

    /// Replaces the `scale` subresource; with `metadata.resourceVersion` set, 409 when the workload
    /// changed since it was read.
    pub async fn replace_scale(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        scale: &Scale,
    ) -> Result<Scale, KubeError> {
        let body = ("application/json", serde_json::to_vec(scale).expect("a Scale encodes"));
        let url = self.apps_url(namespace, workload, Some("scale"));
        let response = self.send_bytes(Method::PUT, url, Some(body), REQUEST_TIMEOUT).await?;
        Self::decode_as(response).await
    }

    /// The `scale` subresource, or `None` when the workload does not exist.
    pub async fn get_scale(&self, namespace: &str, workload: &WorkloadRef) -> Result<Option<Scale>, KubeError> {
        let url = self.apps_url(namespace, workload, Some("scale"));
        match self.send_bytes(Method::GET, url, None, REQUEST_TIMEOUT).await {
            Ok(response) => Self::decode_as(response).await.map(Some),
            Err(err) if err.code() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The pods matching `selector` (label-selector syntax).
    pub async fn list_pods(&self, namespace: &str, selector: &str) -> Result<PodList, KubeError> {
        let query = format!("labelSelector={}", utf8_percent_encode(selector, percent_encoding::NON_ALPHANUMERIC));
        let response = self.send_bytes(Method::GET, self.pods_url(namespace, &query), None, REQUEST_TIMEOUT).await?;
        Self::decode_as(response).await
    }

    /// Watches the pods matching `selector` from `resource_version` (a list's), so that no change
    /// between the list and the watch is missed.
    pub async fn watch_pods(
        &self,
        namespace: &str,
        selector: &str,
        resource_version: &str,
        server_timeout: Duration,
    ) -> Result<Watch, KubeError> {
        let query = format!(
            "watch=true&labelSelector={}&resourceVersion={}&timeoutSeconds={}",
            utf8_percent_encode(selector, percent_encoding::NON_ALPHANUMERIC),
            utf8_percent_encode(resource_version, percent_encoding::NON_ALPHANUMERIC),
            server_timeout.as_secs().max(1)
        );
        let url = self.pods_url(namespace, &query);
        let response = self.send_bytes(Method::GET, url, None, server_timeout + REQUEST_TIMEOUT).await?;
        Ok(Watch { response, buffer: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch_of(body: &'static str) -> Watch {
        Watch { response: reqwest::Response::from(http::Response::new(body)), buffer: Vec::new() }
    }

    /// Every event of a stream is read, the last one too when the stream ends without a newline;
    /// blank keep-alive lines are skipped.
    #[tokio::test]
    async fn watch_reads_a_last_line_without_newline() {
        let mut watch =
            watch_of("{\"type\":\"ADDED\",\"object\":{}}\n\n{\"type\":\"MODIFIED\",\"object\":{\"data\":{}}}");
        let first = watch.next().await.expect("reads").expect("an event");
        assert_eq!(first.event_type, "ADDED", "first event");
        let last = watch.next().await.expect("reads").expect("the unterminated last event");
        assert_eq!(last.event_type, "MODIFIED", "last event without a newline is not dropped");
        assert!(watch.next().await.expect("reads").is_none(), "then the end of the stream");
        let mut blank = watch_of("\n  \n");
        assert!(blank.next().await.expect("reads").is_none(), "whitespace only is no event");
    }

    /// Unknown metadata survives a decode/encode round trip, so a replace keeps Helm's annotations.
    #[test]
    fn unknown_metadata_round_trips() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "m", "namespace": "dev", "resourceVersion": "5",
                         "annotations": {"helm.sh/hook": "pre-upgrade"}, "uid": "abc"},
            "data": {"revision": "3"}
        });
        let cm: ConfigMap = serde_json::from_value(json.clone()).expect("decodes");
        assert_eq!(cm.metadata.resource_version.as_deref(), Some("5"), "resourceVersion read");
        assert_eq!(serde_json::to_value(&cm).expect("encodes"), json, "nothing lost on the way back");
    }
}
