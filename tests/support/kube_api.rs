//! A stand-in for the Kubernetes API server, for ConfigMaps, Deployments and StatefulSets (with
//! their `scale` subresource) and the pods of those workloads, honest where cleanslate depends on
//! the real one:
//! - HTTPS on 127.0.0.1:0 with a certificate from a CA the test makes;
//! - bearer tokens: an unknown token gets 401, a token without the verb, the resource (a
//!   subresource such as `deployments/scale` is its own resource) or the name gets 403
//!   (`resourceNames` rules allow list/watch only with `fieldSelector=metadata.name=…`, and never
//!   allow create, as in RBAC);
//! - get, create (409 AlreadyExists), update (PUT; 409 Conflict on a stale `resourceVersion`, 404
//!   when missing), merge patch, delete; one global, increasing `resourceVersion`;
//! - lists paged with `limit` and `continue`, carrying the `resourceVersion` to watch from;
//! - watch streams of JSON lines (ADDED/MODIFIED/DELETED) from a `resourceVersion` or, without one,
//!   starting with the current object as ADDED; BOOKMARK events with `allowWatchBookmarks=true`;
//!   `timeoutSeconds` ends the stream; a `resourceVersion` older than the last compaction gets an
//!   ERROR event with a 410 `Status`;
//! - the real `Status` objects for errors;
//! - workloads and pods (see `apps`): the API server defaults `spec.replicas` to 1, the `scale`
//!   subresource shares the workload's `resourceVersion`, and a controller-and-kubelet stand-in
//!   keeps one pod per replica: new pods on a scale-up, and on a scale-down pods that terminate
//!   (`deletionTimestamp`) and are gone after a grace delay, unless a test holds them.
//!
//! Switches let a test make it answer 410, close open streams, or fail the next requests with 5xx.
//! It does nothing the real API server does not do.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::TestCa;

mod apps;
mod discovery;
pub mod ownership;

#[allow(unused_imports)]
pub use ownership::replicas_owners;

/// What a token may do on one resource (`configmaps`, `deployments/scale`, `pods`): verbs, and
/// optionally only on these names.
#[derive(Clone, Debug)]
pub struct Grant {
    pub resource: String,
    pub verbs: Vec<String>,
    pub names: Option<Vec<String>>,
}

/// One request, as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub token: String,
    /// The RBAC resource and verb the request was authorised as (`deployments/scale`, `update`), as
    /// the API server's authorizer derives them from the method, path and `watch` parameter
    /// (<https://kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb>):
    /// recorded by `admit`, which makes that decision; the tests compare it with the Roles' rules.
    pub resource: String,
    pub verb: String,
}

#[derive(Clone, Debug)]
struct Event {
    resource_version: u64,
    kind: &'static str,
    resource: &'static str,
    namespace: String,
    name: String,
    object: Value,
}

/// An object's key: resource, namespace, name.
type Key = (&'static str, String, String);

fn key(resource: &'static str, namespace: &str, name: &str) -> Key {
    (resource, namespace.to_string(), name.to_string())
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    history: Vec<Event>,
    compacted_at: u64,
    tokens: HashMap<String, Vec<Grant>>,
    /// Grants taken away (a hook RoleBinding Helm deleted), kept so a test can still compare what
    /// a Role granted with what its pods used.
    revoked: HashMap<String, Vec<Grant>>,
    fail_next: Vec<u16>,
    conflicts: usize,
    gone_next_watch: bool,
    gone_every_watch: bool,
    cut_every_watch: bool,
    page_cap: Option<usize>,
    certificate_users: HashMap<Vec<u8>, String>,
    requests: Vec<Seen>,
    apps: apps::AppsState,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Option<Event>>,
}

/// A running stand-in. Dropping it stops the server.
pub struct KubeApi {
    pub url: String,
    pub ca_pem: String,
    ca: Arc<TestCa>,
    shared: Arc<Shared>,
    handle: axum_server::Handle<std::net::SocketAddr>,
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn status_response(code: u16, reason: &str, message: String) -> Response {
    (StatusCode::from_u16(code).unwrap(), axum::Json(status(code, reason, message))).into_response()
}

/// The name a `fieldSelector=metadata.name=…` selects, which every resource supports
/// (<https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/>). Any other
/// field selector is refused with 400 rather than ignored: the real server filters on the fields it
/// supports, and a stand-in that returned everything would let a test pass on a filter it skipped.
fn name_field_selector(query: &HashMap<String, String>) -> Result<Option<String>, Box<Response>> {
    let Some(selector) = query.get("fieldSelector") else { return Ok(None) };
    match selector.strip_prefix("metadata.name=") {
        Some(name) if !name.contains(',') => Ok(Some(name.to_string())),
        _ => Err(Box::new(status_response(
            400,
            "BadRequest",
            format!("field selector {selector:?}: the stand-in models metadata.name=<name> only"),
        ))),
    }
}

/// The header that carries the user a verified client certificate belongs to, from the TLS layer
/// to the authorizer; a client cannot set it (any incoming one is removed).
const CERT_USER_HEADER: &str = "x-stand-in-certificate-user";

/// TLS as the API server offers it: its serving certificate, and client certificates signed by the
/// cluster CA accepted but not required (kubeconfig users with `client-certificate-data`;
/// <https://kubernetes.io/docs/reference/access-authn-authz/authentication/#x509-client-certificates>).
fn tls_config(ca: &TestCa, issued: &super::Issued) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("CA PEM")).expect("CA root");
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(issued.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key PEM"),
        )
        .expect("server TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Authentication by client certificate: the user a verified certificate was issued to (by
/// [`KubeApi::client_certificate`]) goes to the authorizer in [`CERT_USER_HEADER`].
async fn authenticate_certificate(
    State(shared): State<Arc<Shared>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request.headers_mut().remove(CERT_USER_HEADER);
    let presented = request
        .extensions()
        .get::<Arc<axum_server::tls::TlsInfo>>()
        .and_then(|info| info.peer_certificates.first().cloned());
    if let Some(der) = presented {
        let user = shared.store.lock().unwrap().certificate_users.get(&der).cloned();
        if let Some(user) = user {
            request.headers_mut().insert(CERT_USER_HEADER, user.parse().expect("a header value"));
        }
    }
    next.run(request).await
}

impl KubeApi {
    /// A client certificate for `user`, signed by the cluster CA; requests that present it are
    /// authorised as `cert:<user>` (grant to that name).
    pub fn client_certificate(&self, user: &str) -> super::Issued {
        let issued = self.ca.issue(user);
        self.store().certificate_users.insert(issued.cert_der.clone(), format!("cert:{user}"));
        issued
    }

    /// Starts the stand-in on a free loopback port with a fresh CA.
    pub async fn start() -> KubeApi {
        KubeApi::start_on(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"), Arc::new(TestCa::new())).await
    }

    async fn start_on(listener: std::net::TcpListener, ca: Arc<TestCa>) -> KubeApi {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let issued = ca.issue("kubernetes");
        let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls_config(&ca, &issued)));
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared { store: Mutex::new(Store::default()), events });
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/configmaps/{name}",
                axum::routing::get(one).put(one).patch(one).delete(one),
            )
            .route("/api/v1/namespaces/{namespace}/configmaps", axum::routing::get(collection).post(collection))
            .route("/apis/batch/v1/namespaces/{namespace}/jobs/{name}", axum::routing::get(job))
            .route("/api/v1/namespaces/{namespace}/secrets", axum::routing::get(secrets))
            .route("/api/v1/namespaces/{namespace}/secrets/{name}", axum::routing::get(secret))
            .route("/apis/events.k8s.io/v1/namespaces/{namespace}/events", axum::routing::post(create_event))
            .route("/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}", axum::routing::patch(patch_event))
            .merge(apps::routes())
            .merge(discovery::routes())
            .layer(axum::middleware::from_fn_with_state(shared.clone(), authenticate_certificate))
            .with_state(shared.clone());
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, config).expect("server").handle(handle.clone());
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        handle.listening().await.expect("listening");
        KubeApi { url: format!("https://127.0.0.1:{}", addr.port()), ca_pem: ca.pem.clone(), ca, shared, handle }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap()
    }

    /// Lets `token` use `verbs` on ConfigMaps, on `names` only when given.
    pub fn grant(&self, token: &str, verbs: &[&str], names: Option<&[&str]>) {
        self.grant_on(token, "configmaps", verbs, names);
    }

    /// Adds a rule for `token`: `verbs` on `resource` (`deployments`, `deployments/scale`,
    /// `statefulsets`, `statefulsets/scale`, `pods`, `configmaps`), on `names` only when given.
    pub fn grant_on(&self, token: &str, resource: &str, verbs: &[&str], names: Option<&[&str]>) {
        let grant = Grant {
            resource: resource.to_string(),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
        };
        self.store().tokens.entry(token.to_string()).or_default().push(grant);
    }

    /// Stores a Secret as the API server holds it (`data` base64-encoded), with `labels`.
    pub fn put_secret(&self, namespace: &str, name: &str, labels: Value, data: &[(&str, &[u8])]) {
        use base64::Engine;
        let encoded: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(base64::engine::general_purpose::STANDARD.encode(v))))
            .collect();
        let object = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                            "metadata": {"name": name, "namespace": namespace, "labels": labels},
                            "data": encoded});
        let mut store = self.store();
        store.resource_version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
        store.objects.insert(key("secrets", namespace, name), object);
    }

    /// The token stays valid but is bound to nothing (its RoleBinding gone): every request is 403,
    /// as for an authenticated ServiceAccount without rights.
    pub fn unbind(&self, token: &str) {
        self.revoke(token);
        self.store().tokens.insert(token.to_string(), Vec::new());
    }

    pub fn revoke(&self, token: &str) {
        let mut store = self.store();
        if let Some(grants) = store.tokens.remove(token) {
            store.revoked.entry(token.to_string()).or_default().extend(grants);
        }
    }

    /// The next `count` requests answer `code` (e.g. 500, 503) with a Status.
    pub fn fail_next(&self, count: usize, code: u16) {
        self.store().fail_next.extend(std::iter::repeat_n(code, count));
    }

    /// The next `count` updates race another writer: the object changes just before each is
    /// applied, so its resourceVersion is stale and it gets 409 Conflict.
    pub fn race_next_updates(&self, count: usize) {
        self.store().conflicts += count;
    }

    /// The next watch answers with an ERROR event carrying 410 Gone.
    pub fn gone_next_watch(&self) {
        self.store().gone_next_watch = true;
    }

    /// Every watch answers with an ERROR event carrying 410 Gone (a watch cache that keeps expiring).
    pub fn gone_every_watch(&self) {
        self.store().gone_every_watch = true;
    }

    /// Every watch stream ends right after its initial events, as a proxy with a tiny idle timeout
    /// in front of the API server does.
    pub fn cut_every_watch(&self) {
        self.store().cut_every_watch = true;
    }

    /// A Job with `backoff_limit` and, in its status, `failed` pods so far: what the Job controller
    /// records (a pod killed by the OOM killer or with its node counts as failed).
    pub fn put_job(&self, namespace: &str, name: &str, backoff_limit: u32, failed: u32) {
        let object = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
            "spec": {"backoffLimit": backoff_limit, "template": {"spec": {"containers": []}}},
            "status": if failed > 0 { json!({"failed": failed, "active": 1}) } else { json!({"active": 1}) }});
        let mut store = self.store();
        let kind = if store.objects.contains_key(&key("jobs", namespace, name)) { "MODIFIED" } else { "ADDED" };
        commit(&self.shared, &mut store, kind, "jobs", namespace, name, object);
    }

    /// Every Event stored (`events.k8s.io/v1`), oldest first.
    pub fn events(&self) -> Vec<Value> {
        let store = self.store();
        let mut events: Vec<Value> =
            store.objects.iter().filter(|((r, _, _), _)| *r == "events").map(|(_, o)| o.clone()).collect();
        events.sort_by_key(|e| e["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok()));
        events
    }

    /// The reasons of the Events about `kind`/`name`, oldest first.
    pub fn event_reasons(&self, kind: &str, name: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["regarding"]["kind"] == json!(kind) && e["regarding"]["name"] == json!(name))
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Lists answer at most `items` per page (with a `continue` token), whatever `limit` asked:
    /// clients must follow `continue` rather than count on one page.
    pub fn cap_pages(&self, items: usize) {
        self.store().page_cap = Some(items);
    }

    /// Forgets history: watches from any earlier resourceVersion get 410 Gone, as after etcd compaction.
    pub fn compact(&self) {
        let mut store = self.store();
        store.compacted_at = store.resource_version;
        store.history.clear();
    }

    /// Ends every open watch stream, as an API server restart or a load balancer would.
    pub fn close_watches(&self) {
        let _ = self.shared.events.send(None);
    }

    /// Every (resource, verb) `token` is granted now.
    pub fn granted(&self, token: &str) -> std::collections::BTreeSet<(String, String)> {
        let store = self.store();
        let grants = store.tokens.get(token).cloned().unwrap_or_default();
        grants.iter().flat_map(|g| g.verbs.iter().map(move |v| (g.resource.clone(), v.clone()))).collect()
    }

    /// Every (resource, verb) `token` was ever granted, revoked grants included.
    pub fn ever_granted(&self, token: &str) -> std::collections::BTreeSet<(String, String)> {
        let mut all = self.granted(token);
        let store = self.store();
        let revoked = store.revoked.get(token).cloned().unwrap_or_default();
        all.extend(revoked.iter().flat_map(|g| g.verbs.iter().map(move |v| (g.resource.clone(), v.clone()))));
        all
    }

    /// Every (resource, verb) `token` used so far.
    pub fn used(&self, token: &str) -> std::collections::BTreeSet<(String, String)> {
        self.store()
            .requests
            .iter()
            .filter(|r| r.token == token)
            .map(|r| (r.resource.clone(), r.verb.clone()))
            .collect()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.store().requests.clone()
    }

    /// The stored ConfigMap, as the API would return it.
    pub fn object(&self, namespace: &str, name: &str) -> Option<Value> {
        self.store().objects.get(&key("configmaps", namespace, name)).cloned()
    }

    /// Writes a ConfigMap directly (what another client, e.g. Helm or the Job, would do).
    pub fn put(&self, namespace: &str, name: &str, data: BTreeMap<String, String>) {
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": name, "namespace": namespace}, "data": data});
        self.put_object(namespace, name, object);
    }

    /// Writes a whole object directly, metadata included (as Helm creates a hook resource).
    pub fn put_object(&self, namespace: &str, name: &str, object: Value) {
        let mut store = self.store();
        let exists = store.objects.contains_key(&key("configmaps", namespace, name));
        let kind = if exists { "MODIFIED" } else { "ADDED" };
        commit(&self.shared, &mut store, kind, "configmaps", namespace, name, object);
    }

    /// Deletes a ConfigMap directly (what Helm's before-hook-creation policy does).
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut store = self.store();
        if let Some(object) = store.objects.get(&key("configmaps", namespace, name)).cloned() {
            commit(&self.shared, &mut store, "DELETED", "configmaps", namespace, name, object);
        }
    }

    /// Stops the server (open streams are cut) and starts a new one on the same port with the same
    /// state and CA, as an API server restart does.
    pub async fn restart(self, down_for: Duration) -> KubeApi {
        self.handle.shutdown();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        tokio::time::sleep(down_for).await;
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let store = std::mem::take(&mut *self.store());
        let restarted = KubeApi::start_on(listener, self.ca.clone()).await;
        *restarted.store() = store;
        restarted
    }
}

/// What the kubelet gives a pod to reach this API: a token file (one per token used) and the CA.
pub struct PodCredentials {
    dir: tempfile::TempDir,
    api_url: String,
}

impl KubeApi {
    /// Credential files for pods talking to this stand-in.
    pub fn credentials(&self) -> PodCredentials {
        let dir = tempfile::tempdir().expect("tempdir");
        super::write_file(dir.path(), "ca.crt", &self.ca_pem);
        PodCredentials { dir, api_url: self.url.clone() }
    }
}

impl PodCredentials {
    /// Writes `token` to its own file and returns the path.
    pub fn token_file(&self, token: &str) -> String {
        super::write_file(self.dir.path(), &format!("token-{token}"), token)
    }

    /// The CA file's path.
    pub fn ca_file(&self) -> String {
        self.dir.path().join("ca.crt").to_str().unwrap().to_string()
    }

    /// The variables that point the binary at `marker` in `namespace` through the stand-in, as a pod
    /// of `revision` holding `token`.
    pub fn marker_vars(&self, token: &str, namespace: &str, marker: &str, revision: u64) -> Vec<(String, String)> {
        super::vars(&[
            ("CLEANSLATE_MARKER", marker),
            ("CLEANSLATE_NAMESPACE", namespace),
            ("CLEANSLATE_REVISION", &revision.to_string()),
            ("CLEANSLATE_KUBE_API", &self.api_url),
            ("CLEANSLATE_KUBE_TOKEN_FILE", &self.token_file(token)),
            ("CLEANSLATE_KUBE_CA_FILE", &self.ca_file()),
        ])
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Stores a change under a new resourceVersion and tells open watches.
fn commit(
    shared: &Shared,
    store: &mut Store,
    kind: &'static str,
    resource: &'static str,
    namespace: &str,
    name: &str,
    mut object: Value,
) -> Value {
    store.resource_version += 1;
    let rv = store.resource_version;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object["metadata"]["namespace"] = json!(namespace);
    let key = key(resource, namespace, name);
    if kind == "DELETED" {
        store.objects.remove(&key);
    } else {
        store.objects.insert(key, object.clone());
    }
    let event = Event {
        resource_version: rv,
        kind,
        resource,
        namespace: namespace.into(),
        name: name.into(),
        object: object.clone(),
    };
    store.history.push(event.clone());
    let _ = shared.events.send(Some(event));
    object
}

/// Authenticates and authorises one request; also records it and applies injected failures.
/// `resource` is the RBAC resource (`configmaps`, `deployments/scale`, `pods`).
#[allow(clippy::too_many_arguments)]
fn admit(
    store: &mut Store,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    query: &str,
    resource: &str,
    verb: &str,
    name: Option<&str>,
) -> Result<(), Box<Response>> {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let certificate_user = headers.get(CERT_USER_HEADER).and_then(|v| v.to_str().ok());
    let token = bearer.or(certificate_user).unwrap_or("").to_string();
    store.requests.push(Seen {
        method: method.to_string(),
        path: path.into(),
        query: query.into(),
        token: token.clone(),
        resource: resource.into(),
        verb: verb.into(),
    });
    if !store.fail_next.is_empty() {
        let code = store.fail_next.remove(0);
        return Err(Box::new(status_response(code, "InternalError", "injected failure".into())));
    }
    let Some(grants) = store.tokens.get(&token) else {
        return Err(Box::new(status_response(401, "Unauthorized", "Unauthorized".into())));
    };
    let allowed = grants.iter().any(|grant| {
        let name_ok = match (&grant.names, name) {
            (None, _) => true,
            (Some(names), Some(name)) => verb != "create" && names.iter().any(|n| n == name),
            (Some(_), None) => false,
        };
        grant.resource == resource && grant.verbs.iter().any(|v| v == verb) && name_ok
    });
    if allowed {
        return Ok(());
    }
    // The real message: `deployments.apps "api" is forbidden: User "…" cannot update resource
    // "deployments/scale" in API group "apps" in the namespace "dev"`.
    let plural = resource.split('/').next().unwrap_or(resource);
    let group = if matches!(plural, "deployments" | "statefulsets") { "apps" } else { "" };
    let qualified = if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") };
    let target = name.map(|n| format!(" \"{n}\"")).unwrap_or_default();
    let in_group = if group.is_empty() { String::new() } else { format!(" in API group \"{group}\"") };
    Err(Box::new(status_response(
        403,
        "Forbidden",
        format!(
            "{qualified}{target} is forbidden: User \"system:serviceaccount:test\" cannot {verb} resource \"{resource}\"{in_group}"
        ),
    )))
}

/// `GET` a Secret by name (read only: Secrets are what Helm and users create, never cleanslate).
async fn secret(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", "secrets", "get", Some(&name)) {
        return *response;
    }
    match store.objects.get(&key("secrets", &namespace, &name)) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => status_response(404, "NotFound", format!("secrets \"{name}\" not found")),
    }
}

/// `GET` the Secrets of a namespace, by label selector (how `helm` finds a release's records).
async fn secrets(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v1/namespaces/{namespace}/secrets");
    let query_text = serde_urlencoded_like(&query);
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, &query_text, "secrets", "list", None) {
        return *response;
    }
    let requirements = match apps::parse_selector(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
        Ok(requirements) => requirements,
        Err(message) => return status_response(400, "BadRequest", message),
    };
    let wanted = move |ns: &str, _: &str, object: &Value| ns == namespace && apps::matches(&requirements, object);
    list_response(&store, "secrets", "SecretList", &query, &wanted)
}

fn serde_urlencoded_like(query: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join("&")
}

async fn one(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A server-side dry run is authorized and checked like the write, and not persisted
    // (https://kubernetes.io/docs/reference/using-api/api-concepts/#dry-run).
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    let verb = match method {
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return status_response(405, "MethodNotAllowed", "method not allowed".into()),
    };
    let path = format!("/api/v1/namespaces/{namespace}/configmaps/{name}");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", "configmaps", verb, Some(&name)) {
        return *response;
    }
    let key = key("configmaps", &namespace, &name);
    let not_found = || status_response(404, "NotFound", format!("configmaps \"{name}\" not found"));
    let Some(current) = store.objects.get(&key).cloned() else {
        return not_found();
    };
    let current_rv = current["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
    let conflict = || {
        status_response(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
    };
    match verb {
        "get" => axum::Json(current).into_response(),
        "delete" => {
            commit(&shared, &mut store, "DELETED", "configmaps", &namespace, &name, current);
            axum::Json(status(200, "", String::new())).into_response()
        }
        "update" => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status_response(400, "BadRequest", "invalid body".into());
            };
            if store.conflicts > 0 {
                store.conflicts -= 1;
                let mut other = current.clone();
                other["metadata"]["annotations"]["raced"] = json!(store.resource_version.to_string());
                commit(&shared, &mut store, "MODIFIED", "configmaps", &namespace, &name, other);
                return conflict();
            }
            match object["metadata"]["resourceVersion"].as_str() {
                Some(rv) if rv != current_rv => return conflict(),
                _ => {}
            }
            if object["metadata"]["name"] != json!(name) {
                return status_response(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name on the URL".into(),
                );
            }
            object["metadata"]["uid"] = current["metadata"]["uid"].clone();
            if dry_run {
                return axum::Json(object).into_response();
            }
            axum::Json(commit(&shared, &mut store, "MODIFIED", "configmaps", &namespace, &name, object)).into_response()
        }
        _ => {
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status_response(400, "BadRequest", "invalid patch".into());
            };
            if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                && rv != current_rv
            {
                return conflict();
            }
            let mut object = current;
            merge(&mut object, &patch);
            axum::Json(commit(&shared, &mut store, "MODIFIED", "configmaps", &namespace, &name, object)).into_response()
        }
    }
}

/// GET of a Job (`batch/v1`), as the Job controller keeps its status (`status.failed` counts failed
/// pods: <https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-backoff-failure-policy>).
async fn job(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let path = format!("/apis/batch/v1/namespaces/{namespace}/jobs/{name}");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", "jobs", "get", Some(&name)) {
        return *response;
    }
    match store.objects.get(&key("jobs", &namespace, &name)) {
        Some(job) => axum::Json(job.clone()).into_response(),
        None => status_response(404, "NotFound", format!("jobs.batch \"{name}\" not found")),
    }
}

/// POST of an `events.k8s.io/v1` Event: stored as sent (409 when the name is taken); the API server
/// requires a name, a reason and an `eventTime`, and a `note` of at most 1 kB
/// (<https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/>).
async fn create_event(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", "events", "create", None) {
        return *response;
    }
    let Ok(mut event) = serde_json::from_slice::<Value>(&body) else {
        return status_response(400, "BadRequest", "invalid body".into());
    };
    let name = event["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if name.is_empty() || event["reason"].as_str().is_none_or(str::is_empty) || event["eventTime"].is_null() {
        return status_response(422, "Invalid", "Event is invalid: name, reason and eventTime are required".into());
    }
    if event["note"].as_str().is_some_and(|n| n.len() > 1024) {
        return status_response(
            422,
            "Invalid",
            "Event is invalid: note: Too long: may not be more than 1024 bytes".into(),
        );
    }
    if store.objects.contains_key(&key("events", &namespace, &name)) {
        return status_response(409, "AlreadyExists", format!("events.events.k8s.io \"{name}\" already exists"));
    }
    event["metadata"]["namespace"] = json!(namespace);
    let created = commit(&shared, &mut store, "ADDED", "events", &namespace, &name, event);
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

/// PATCH (merge) of an Event: how a client counts a repeat (`series`, same reference as above).
async fn patch_event(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", "events", "patch", Some(&name)) {
        return *response;
    }
    let Some(mut event) = store.objects.get(&key("events", &namespace, &name)).cloned() else {
        return status_response(404, "NotFound", format!("events.events.k8s.io \"{name}\" not found"));
    };
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status_response(400, "BadRequest", "invalid patch".into());
    };
    merge(&mut event, &patch);
    axum::Json(commit(&shared, &mut store, "MODIFIED", "events", &namespace, &name, event)).into_response()
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

async fn collection(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/api/v1/namespaces/{namespace}/configmaps");
    let query_text: String = {
        let mut pairs: Vec<_> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        pairs.join("&")
    };
    if method == Method::POST {
        let mut store = shared.store.lock().unwrap();
        let Ok(object) = serde_json::from_slice::<Value>(&body) else {
            return status_response(400, "BadRequest", "invalid body".into());
        };
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_string();
        if let Err(response) = admit(&mut store, &headers, &method, &path, &query_text, "configmaps", "create", None) {
            return *response;
        }
        if store.objects.contains_key(&key("configmaps", &namespace, &name)) {
            return status_response(409, "AlreadyExists", format!("configmaps \"{name}\" already exists"));
        }
        let mut object = object;
        object["metadata"]["uid"] = json!(format!("uid-{name}"));
        if query.get("dryRun").is_some_and(|v| v == "All") {
            // Authorized and checked like the create, not persisted.
            return (StatusCode::CREATED, axum::Json(object)).into_response();
        }
        let created = commit(&shared, &mut store, "ADDED", "configmaps", &namespace, &name, object);
        return (StatusCode::CREATED, axum::Json(created)).into_response();
    }
    let selected = match name_field_selector(&query) {
        Ok(selected) => selected,
        Err(response) => return *response,
    };
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = if watching { "watch" } else { "list" };
    let mut store = shared.store.lock().unwrap();
    if let Err(response) =
        admit(&mut store, &headers, &method, &path, &query_text, "configmaps", verb, selected.as_deref())
    {
        return *response;
    }
    let requirements = match apps::parse_selector(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
        Ok(requirements) => requirements,
        Err(message) => return status_response(400, "BadRequest", message),
    };
    let wanted = Arc::new(move |ns: &str, name: &str, object: &Value| {
        ns == namespace && selected.as_deref().is_none_or(|s| s == name) && apps::matches(&requirements, object)
    });
    if !watching {
        return list_response(&store, "configmaps", "ConfigMapList", &query, &*wanted);
    }
    watch_response(&shared, store, "configmaps", &query, wanted)
}

/// A list of `resource` as the API server pages it: `limit` items at most, then a `continue` token
/// (and `remainingItemCount`) for the rest; the list's `resourceVersion` is the store's (a first
/// page) or the token's (a later page). A token older than the last compaction is 410 Gone, as for
/// an expired continue token (<https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks>).
/// Simplification: a later page shows the objects as they are now, not as they were at the token's
/// version.
fn list_response(
    store: &Store,
    resource: &'static str,
    kind: &str,
    query: &HashMap<String, String>,
    wanted: &(dyn Fn(&str, &str, &Value) -> bool + Send + Sync),
) -> Response {
    let (version, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (store.resource_version, None),
        Some(token) => {
            let parsed = token.split_once('/').and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key.to_string())));
            match parsed {
                Some((rv, _)) if rv < store.compacted_at => {
                    return status_response(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result.".into(),
                    );
                }
                Some((rv, key)) => (rv, Some(key)),
                None => return status_response(400, "BadRequest", "invalid continue token".into()),
            }
        }
    };
    let matching: Vec<(String, Value)> = store
        .objects
        .iter()
        .filter(|((r, ns, name), object)| *r == resource && wanted(ns, name, object))
        .map(|((_, ns, name), object)| (format!("{ns}/{name}"), object.clone()))
        .filter(|(key, _)| after.as_ref().is_none_or(|after| key > after))
        .collect();
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let limit = limit.min(store.page_cap.unwrap_or(usize::MAX));
    let page: Vec<&(String, Value)> = matching.iter().take(limit).collect();
    let mut metadata = json!({"resourceVersion": version.to_string()});
    if matching.len() > page.len() {
        let last = &page.last().expect("a page of at least one").0;
        metadata["continue"] = json!(format!("{version}/{last}"));
        metadata["remainingItemCount"] = json!(matching.len() - page.len());
    }
    let items: Vec<Value> = page.into_iter().map(|(_, o)| o.clone()).collect();
    let api_version = if matches!(resource, "deployments" | "statefulsets") { "apps/v1" } else { "v1" };
    axum::Json(json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items})).into_response()
}

/// Which objects of a resource a watch follows: namespace, name, object.
type Filter = Arc<dyn Fn(&str, &str, &Value) -> bool + Send + Sync>;

/// How often a watch that asked for bookmarks (`allowWatchBookmarks=true`) gets one: about once a
/// minute, as the API server's watch cache sends them, and once more as the watch times out
/// (<https://kubernetes.io/docs/reference/using-api/api-concepts/#watch-bookmarks>; the cacher's
/// `bookmarkFrequency` is a minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// A watch stream of JSON lines for `resource`: from `resourceVersion` (history replayed), or
/// without one starting with the current objects as ADDED; 410 for a compacted version; BOOKMARK
/// events when asked for; ends after `timeoutSeconds` or when a test closes the streams.
fn watch_response(
    shared: &Arc<Shared>,
    mut store: std::sync::MutexGuard<'_, Store>,
    resource: &'static str,
    query: &HashMap<String, String>,
    wanted: Filter,
) -> Response {
    let from: Option<u64> = query.get("resourceVersion").and_then(|v| v.parse().ok()).filter(|v| *v > 0);
    let timeout = Duration::from_secs(query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(1800));
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let kind = match resource {
        "configmaps" => "ConfigMap",
        "pods" => "Pod",
        other => panic!("no watch of {other} is modelled"),
    };
    let line =
        |event_type: &str, object: &Value| Bytes::from(format!("{}\n", json!({"type": event_type, "object": object})));
    let mut initial: Vec<Bytes> = Vec::new();
    let gone = std::mem::take(&mut store.gone_next_watch)
        || store.gone_every_watch
        || from.is_some_and(|rv| rv < store.compacted_at);
    if gone {
        let gone_status = status(410, "Expired", "too old resource version".into());
        initial.push(line("ERROR", &gone_status));
        let stream = futures_util::stream::iter(initial.into_iter().map(Ok::<_, Infallible>));
        return Body::from_stream(stream).into_response();
    }
    let mut last = store.resource_version;
    match from {
        Some(rv) => {
            for event in store.history.iter().filter(|e| {
                e.resource == resource && e.resource_version > rv && wanted(&e.namespace, &e.name, &e.object)
            }) {
                initial.push(line(event.kind, &event.object));
            }
        }
        None => {
            for ((r, ns, name), object) in &store.objects {
                if *r == resource && wanted(ns, name, object) {
                    initial.push(line("ADDED", object));
                }
            }
        }
    }
    if let Some(rv) = from {
        last = last.max(rv);
    }
    if store.cut_every_watch {
        let stream = futures_util::stream::iter(initial.into_iter().map(Ok::<_, Infallible>));
        return Body::from_stream(stream).into_response();
    }
    let mut receiver = shared.events.subscribe();
    drop(store);
    let (sender, body_receiver) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        for chunk in initial {
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // Processed up to here: what a bookmark reports, whether or not the events matched.
        let mut processed = last;
        let mut next_bookmark = tokio::time::Instant::now() + BOOKMARK_EVERY;
        let bookmark = |rv: u64| {
            let object = json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}});
            Bytes::from(format!("{}\n", json!({"type": "BOOKMARK", "object": object})))
        };
        loop {
            let wake = if bookmarks { next_bookmark.min(deadline) } else { deadline };
            let next = tokio::time::timeout_at(wake, receiver.recv()).await;
            let event = match next {
                Ok(Ok(Some(event))) => event,
                // A bookmark is due (periodically, and as the watch reaches its timeout).
                Err(_) if bookmarks => {
                    if sender.send(Ok(bookmark(processed))).await.is_err() || wake >= deadline {
                        return;
                    }
                    next_bookmark = tokio::time::Instant::now() + BOOKMARK_EVERY;
                    continue;
                }
                // Closed by a switch, lagged, or timeoutSeconds passed: end the stream.
                _ => return,
            };
            processed = processed.max(event.resource_version);
            let is_wanted = event.resource_version > last
                && event.resource == resource
                && wanted(&event.namespace, &event.name, &event.object);
            if is_wanted {
                last = event.resource_version;
                let chunk = Bytes::from(format!("{}\n", json!({"type": event.kind, "object": event.object})));
                if sender.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream =
        futures_util::stream::unfold(body_receiver, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
}
