//! What integration tests share: where the real services are, unique names, helpers that seed and
//! inspect RabbitMQ and etcd independently of the code under test, the built binary, throwaway
//! etcd servers (auth, TLS), a test CA, and the Kubernetes API stand-in (`kube_api`).
//!
//! A test that needs RabbitMQ or etcd and cannot reach it panics with the command that starts
//! them: it never passes silently.

#![allow(dead_code)]

pub mod chart;
pub mod helm;
pub mod kube_api;
pub mod marker_api;
pub mod proxy;
pub mod pss;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use serde_json::{Value, json};

/// The password of the test RabbitMQ admin: asserted absent from every output.
pub fn rabbit_password() -> String {
    std::env::var("CSTEST_RABBITMQ_PASSWORD").unwrap_or_else(|_| "rmq-Test-Secret-7f3a".into())
}

pub fn rabbit_user() -> String {
    std::env::var("CSTEST_RABBITMQ_USERNAME").unwrap_or_else(|_| "cleanslate-admin".into())
}

pub fn rabbit_url() -> String {
    std::env::var("CSTEST_RABBITMQ_URL").unwrap_or_else(|_| "http://127.0.0.1:15682".into())
}

pub fn rabbit_tls_url() -> String {
    std::env::var("CSTEST_RABBITMQ_TLS_URL").unwrap_or_else(|_| "https://localhost:15683".into())
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn rabbit_ca_file() -> PathBuf {
    std::env::var("CSTEST_RABBITMQ_CA_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".scratch/rabbitmq/tls/ca.pem"))
}

pub fn etcd_endpoint() -> String {
    std::env::var("CSTEST_ETCD_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:22379".into())
}

const START_HINT: &str = "start the local services with `hack/services.sh up` (the README's test command does it)";

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{}-{nanos:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A free loopback port (bound, then released; good enough for a test server started right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().unwrap().port()
}

/// Percent-encodes one path segment for the test's own management API calls.
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A management API client for seeding and checking, written independently of `src/rabbitmq.rs`.
pub struct Rabbit {
    http: reqwest::Client,
    url: String,
    user: String,
    password: String,
}

impl Rabbit {
    /// Connects as the test admin; panics with how to start RabbitMQ when it is not there.
    pub async fn connect() -> Rabbit {
        let rabbit = Rabbit::as_user(&rabbit_user(), &rabbit_password());
        let overview = rabbit
            .http
            .get(format!("{}/api/overview", rabbit.url))
            .basic_auth(&rabbit.user, Some(&rabbit.password))
            .send()
            .await;
        match overview {
            Ok(r) if r.status().is_success() => rabbit,
            Ok(r) => panic!("RabbitMQ at {} answered {} to the test admin; {START_HINT}", rabbit.url, r.status()),
            Err(err) => panic!("RabbitMQ management API not reachable at {}: {err}; {START_HINT}", rabbit.url),
        }
    }

    pub fn as_user(user: &str, password: &str) -> Rabbit {
        Rabbit { http: reqwest::Client::new(), url: rabbit_url(), user: user.into(), password: password.into() }
    }

    /// The test admin on another node (the statistics-off node, a cluster member).
    pub fn at(url: &str) -> Rabbit {
        Rabbit { url: url.trim_end_matches('/').into(), ..Rabbit::as_user(&rabbit_user(), &rabbit_password()) }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/api/{path}", self.url))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|err| panic!("{method} {path}: {err}; {START_HINT}"));
        assert!(
            response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            response.status()
        );
        response
    }

    pub async fn create_vhost(&self, vhost: &str) {
        self.call(reqwest::Method::PUT, &format!("vhosts/{}", seg(vhost)), Some(json!({}))).await;
        let perms = json!({"configure": ".*", "write": ".*", "read": ".*"});
        self.call(reqwest::Method::PUT, &format!("permissions/{}/{}", seg(vhost), seg(&self.user)), Some(perms)).await;
    }

    pub async fn delete_vhost(&self, vhost: &str) {
        self.call(reqwest::Method::DELETE, &format!("vhosts/{}", seg(vhost)), None).await;
    }

    pub async fn declare(&self, vhost: &str, queue: &str, arguments: Value) {
        let body = json!({"durable": true, "auto_delete": false, "arguments": arguments});
        self.call(reqwest::Method::PUT, &format!("queues/{}/{}", seg(vhost), seg(queue)), Some(body)).await;
    }

    pub async fn delete_queue(&self, vhost: &str, queue: &str) {
        self.call(reqwest::Method::DELETE, &format!("queues/{}/{}", seg(vhost), seg(queue)), None).await;
    }

    pub async fn declare_exchange(&self, vhost: &str, exchange: &str, kind: &str) {
        let body = json!({"type": kind, "durable": true});
        self.call(reqwest::Method::PUT, &format!("exchanges/{}/{}", seg(vhost), seg(exchange)), Some(body)).await;
    }

    pub async fn bind(&self, vhost: &str, exchange: &str, queue: &str, routing_key: &str) {
        let path = format!("bindings/{}/e/{}/q/{}", seg(vhost), seg(exchange), seg(queue));
        self.call(reqwest::Method::POST, &path, Some(json!({"routing_key": routing_key}))).await;
    }

    pub async fn set_policy(&self, vhost: &str, name: &str, pattern: &str, definition: Value) {
        let body = json!({"pattern": pattern, "definition": definition, "apply-to": "queues", "priority": 10});
        self.call(reqwest::Method::PUT, &format!("policies/{}/{}", seg(vhost), seg(name)), Some(body)).await;
    }

    pub async fn delete_policy(&self, vhost: &str, name: &str) {
        self.call(reqwest::Method::DELETE, &format!("policies/{}/{}", seg(vhost), seg(name)), None).await;
    }

    /// Publishes `count` messages to `queue` through the default exchange.
    pub async fn publish(&self, vhost: &str, queue: &str, count: usize) {
        self.publish_with(vhost, queue, count, json!({})).await;
    }

    /// Publishes `count` persistent messages: they survive their node's restart.
    pub async fn publish_persistent(&self, vhost: &str, queue: &str, count: usize) {
        self.publish_with(vhost, queue, count, json!({"delivery_mode": 2})).await;
    }

    async fn publish_with(&self, vhost: &str, queue: &str, count: usize, properties: Value) {
        for i in 0..count {
            let body = json!({"properties": properties, "routing_key": queue, "payload": format!("m{i}"), "payload_encoding": "string"});
            let response = self
                .call(reqwest::Method::POST, &format!("exchanges/{}/amq.default/publish", seg(vhost)), Some(body))
                .await;
            let routed: Value = response.json().await.expect("publish answer");
            assert_eq!(routed["routed"], json!(true), "message to {queue} was routed");
        }
    }

    /// The exact number of ready messages, read by fetching them with requeue (not the sampled
    /// statistics the code under test relies on).
    pub async fn count(&self, vhost: &str, queue: &str) -> usize {
        let body = json!({"count": 100000, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 1});
        let response =
            self.call(reqwest::Method::POST, &format!("queues/{}/{}/get", seg(vhost), seg(queue)), Some(body)).await;
        assert!(response.status().is_success(), "queue {vhost}/{queue} exists");
        response.json::<Vec<Value>>().await.expect("get answer").len()
    }

    /// Waits until the broker's sampled statistics show `expected` messages in `queue`, so that a
    /// purge's approximate counts are meaningful.
    pub async fn wait_for_stats(&self, vhost: &str, queue: &str, expected: u64) {
        for _ in 0..100 {
            let response =
                self.call(reqwest::Method::GET, &format!("queues/{}/{}", seg(vhost), seg(queue)), None).await;
            let info: Value = response.json().await.expect("queue info");
            if info["messages"].as_u64() == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("statistics for {vhost}/{queue} never showed {expected} messages");
    }

    /// Waits until RabbitMQ applies policy `policy` to `queue` (policies apply asynchronously).
    pub async fn wait_for_policy(&self, vhost: &str, queue: &str, policy: &str) {
        for _ in 0..100 {
            let response =
                self.call(reqwest::Method::GET, &format!("queues/{}/{}", seg(vhost), seg(queue)), None).await;
            let info: Value = response.json().await.expect("queue info");
            if info["policy"] == json!(policy) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("policy {policy} never applied to {vhost}/{queue}");
    }

    pub async fn create_user(&self, user: &str, password: &str, tags: &str, vhost: &str, read: &str) {
        self.call(
            reqwest::Method::PUT,
            &format!("users/{}", seg(user)),
            Some(json!({"password": password, "tags": tags})),
        )
        .await;
        let perms = json!({"configure": "", "write": "", "read": read});
        self.call(reqwest::Method::PUT, &format!("permissions/{}/{}", seg(vhost), seg(user)), Some(perms)).await;
    }

    pub async fn delete_user(&self, user: &str) {
        self.call(reqwest::Method::DELETE, &format!("users/{}", seg(user)), None).await;
    }
}

/// Connects to the shared etcd, or panics with how to start it.
pub async fn etcd() -> Client {
    etcd_at(&[etcd_endpoint()]).await
}

pub async fn etcd_at(endpoints: &[String]) -> Client {
    let mut client = Client::connect(endpoints, None)
        .await
        .unwrap_or_else(|err| panic!("etcd at {endpoints:?}: {err}; {START_HINT}"));
    client
        .get("probe", None)
        .await
        .unwrap_or_else(|err| panic!("etcd at {endpoints:?} not answering: {err}; {START_HINT}"));
    client
}

pub async fn put_keys(client: &mut Client, prefix: &str, count: usize) {
    for i in 0..count {
        client.put(format!("{prefix}{i:05}"), "v", None).await.expect("put");
    }
}

/// Keys under `prefix`, counted by the server.
pub async fn count_keys(client: &mut Client, prefix: &str) -> i64 {
    client.get(prefix, Some(GetOptions::new().with_prefix().with_count_only())).await.expect("count").count()
}

/// The outcome of one run of the built binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Both streams, for assertions about everything the user sees.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts that none of `secrets` appears anywhere in the output.
    pub fn assert_no_secret(&self, secrets: &[&str]) {
        for secret in secrets {
            assert!(!self.all_output().contains(secret), "a secret appears in the output:\n{}", self.all_output());
        }
    }

    pub fn first_stderr_line(&self) -> &str {
        self.stderr.lines().next().unwrap_or("")
    }
}

/// The binary under test: this build's, or `CSTEST_BINARY` (to show that a new test fails
/// against an older build).
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| std::env::var("CSTEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cleanslate").into()))
}

/// The variables the kubelet injects for a Service named `service` (with `enableServiceLinks`, the
/// default): `{NAME}_SERVICE_HOST`, `{NAME}_SERVICE_PORT`, `{NAME}_SERVICE_PORT_HTTP`, `{NAME}_PORT`
/// and the `{NAME}_PORT_80_TCP*` family, as `pkg/kubelet/envvars/envvars.go` builds them.
pub fn service_link_vars(service: &str, ip: &str) -> Vec<(String, String)> {
    let name = service.to_uppercase().replace('-', "_");
    let url = if ip.contains(':') { format!("tcp://[{ip}]:80") } else { format!("tcp://{ip}:80") };
    vars(&[
        (&format!("{name}_SERVICE_HOST"), ip),
        (&format!("{name}_SERVICE_PORT"), "80"),
        (&format!("{name}_SERVICE_PORT_HTTP"), "80"),
        (&format!("{name}_PORT"), &url),
        (&format!("{name}_PORT_80_TCP"), &url),
        (&format!("{name}_PORT_80_TCP_PROTO"), "tcp"),
        (&format!("{name}_PORT_80_TCP_PORT"), "80"),
        (&format!("{name}_PORT_80_TCP_ADDR"), ip),
    ])
}

/// What every container in a real pod has besides its own `env`: `HOSTNAME`, `HOME` and `PATH`
/// from the runtime, the `KUBERNETES_*` variables, and service links for the Services of the
/// namespace, among them ones named like this product (a release called `cleanslate` has them).
/// The in-cluster API address points at a closed loopback port: tests that talk to the API stand-in
/// name it with `CLEANSLATE_KUBE_API`.
pub fn pod_env(hostname: &str) -> Vec<(String, String)> {
    let mut env = vars(&[
        ("HOSTNAME", hostname),
        ("HOME", "/"),
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", "9"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "9"),
        ("KUBERNETES_PORT", "tcp://127.0.0.1:9"),
        ("KUBERNETES_PORT_443_TCP", "tcp://127.0.0.1:9"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_443_TCP_PORT", "9"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "127.0.0.1"),
    ]);
    for (service, ip) in [
        ("cleanslate", "10.96.0.20"),
        ("cleanslate-web", "10.96.0.21"),
        ("cleanslate-web-service", "fd00::24"),
        ("rabbitmq", "10.96.0.22"),
        ("etcd", "10.96.0.23"),
    ] {
        env.extend(service_link_vars(service, ip));
    }
    env
}

/// Runs the built binary with `vars` on top of a real pod's environment ([`pod_env`]), failing
/// the test instead of hanging if it runs longer than a minute.
pub async fn cleanslate(args: &[&str], vars: &[(String, String)]) -> Run {
    let mut command = tokio::process::Command::new(binary());
    command.env_clear().envs(pod_env("cleanslate-test-7d9f8-abcde"));
    run_to_end(command, args, vars).await
}

/// Runs the binary as on an operator's laptop: no pod variables, no service account, only a home,
/// a PATH and `vars` (a KUBECONFIG, say).
pub async fn cleanslate_on_laptop(args: &[&str], home: &Path, vars: &[(String, String)]) -> Run {
    let mut command = tokio::process::Command::new(binary());
    command.env_clear().env("HOME", home).env("PATH", "/usr/local/bin:/usr/bin:/bin").env("USER", "operator");
    run_to_end(command, args, vars).await
}

/// Runs `command` with `args` and `vars` on top of the environment it was given, to the end,
/// within a minute.
async fn run_to_end(mut command: tokio::process::Command, args: &[&str], vars: &[(String, String)]) -> Run {
    let child = command
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("cleanslate finished within 60 s")
        .expect("cleanslate runs");
    Run::from_output(output)
}

/// Starts the built binary with `vars` on top of a real pod's environment ([`pod_env`]), output
/// piped (collect it with [`finish`]), killed if the test drops it.
pub fn spawn(args: &[&str], vars: &[(String, String)]) -> tokio::process::Child {
    tokio::process::Command::new(binary())
        .args(args)
        .env_clear()
        .envs(pod_env("cleanslate-test-7d9f8-abcde"))
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cleanslate starts")
}

/// Waits for a spawned binary (with piped output) and collects its outcome, failing the test
/// instead of hanging after a minute.
pub async fn finish(child: tokio::process::Child) -> Run {
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("process ended within 60 s")
        .expect("output collected");
    Run::from_output(output)
}

/// Key/value pairs from string slices.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The variables that point the binary at the shared RabbitMQ and etcd, with short retries.
pub fn service_vars() -> Vec<(String, String)> {
    vars(&[
        ("CLEANSLATE_ENVIRONMENT", "dev"),
        ("CLEANSLATE_RABBITMQ_URL", &rabbit_url()),
        ("CLEANSLATE_RABBITMQ_USERNAME", &rabbit_user()),
        ("CLEANSLATE_RABBITMQ_PASSWORD", &rabbit_password()),
        ("CLEANSLATE_ETCD_ENDPOINTS", &etcd_endpoint()),
        ("CLEANSLATE_RETRY_BACKOFF", "200ms"),
        ("CLEANSLATE_TIMEOUT", "15s"),
    ])
}

/// Replaces or adds variables.
pub fn with(mut base: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        base.retain(|(name, _)| name != k);
        base.push((k.to_string(), v.to_string()));
    }
    base
}

/// Variables for a RabbitMQ-only purge of `vhost` through the management API at `url`.
pub fn rabbit_purge_vars(url: &str, vhost: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let base = with(
        service_vars(),
        &[("CLEANSLATE_TARGETS", "rabbitmq"), ("CLEANSLATE_RABBITMQ_URL", url), ("CLEANSLATE_RABBITMQ_VHOST", vhost)],
    );
    with(base, extra)
}

pub fn without(mut base: Vec<(String, String)>, names: &[&str]) -> Vec<(String, String)> {
    base.retain(|(name, _)| !names.contains(&name.as_str()));
    base
}

/// A Deployment manifest whose pods are labelled `app: NAME`; `replicas: None` leaves the field
/// out, as an HPA-managed chart does.
pub fn deployment_manifest(name: &str, replicas: Option<i64>) -> Value {
    let mut manifest = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]}}}
    });
    if let Some(replicas) = replicas {
        manifest["spec"]["replicas"] = json!(replicas);
    }
    manifest
}

/// How an old writer and the run beside it signal each other.
#[derive(Default)]
pub struct WriterCues {
    /// Notified after the writer's first write: the run starts then.
    pub running: tokio::sync::Notify,
    /// Set by the run when it has ended: a writer the run never stopped writes once more (after
    /// the run, so its data is stale) and stops, so a run that fails to stop it fails its test
    /// instead of hanging it.
    pub run_ended: std::sync::atomic::AtomicBool,
}

/// The previous revision's app in the pod of `deployment`: it publishes a message to `queue` and
/// writes a key under `prefix` every 10 ms while its pod runs; once the pod is terminating
/// (SIGTERM) it flushes one last write during its grace period, and only then does the pod go
/// away. Returns how many writes it made.
#[allow(clippy::too_many_arguments)]
pub async fn old_writer(
    api: &kube_api::KubeApi,
    namespace: &str,
    deployment: &str,
    rabbit: &Rabbit,
    vhost: &str,
    queue: &str,
    prefix: &str,
    cues: &WriterCues,
) -> usize {
    api.hold_pods(namespace, deployment);
    let mut etcd = etcd().await;
    let mut written = 0;
    loop {
        // Read before the write: a writer the ended run never stopped writes once more after it.
        let run_ended = cues.run_ended.load(std::sync::atomic::Ordering::SeqCst);
        let pods = api.pods_of(namespace, deployment);
        assert!(!pods.is_empty(), "the writer runs in a pod of {deployment}");
        let terminating = pods.iter().all(|p| !p["metadata"]["deletionTimestamp"].is_null());
        if terminating {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        rabbit.publish(vhost, queue, 1).await;
        etcd.put(format!("{prefix}old-{written:05}"), "stale", None).await.expect("put");
        written += 1;
        if written == 1 {
            cues.running.notify_one();
        }
        if terminating || run_ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    api.release_pods(namespace, deployment);
    written
}

/// A certificate authority made for one test, with server and client certificates it signs.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

/// A certificate and its key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "cleanslate test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate for 127.0.0.1 and localhost, usable by servers and clients.
    pub fn issue(&self, common_name: &str) -> Issued {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("leaf params");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().to_vec() }
    }
}

/// Writes `contents` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path.to_str().expect("utf-8 path").to_string()
}

/// A throwaway single-member etcd server with its own data dir and ports, killed on drop.
pub struct EtcdServer {
    pub endpoint: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd with extra flags; `tls` selects https for the client URL (flags supply the files).
    pub async fn start(tls: bool, extra: &[String]) -> EtcdServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let child = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}"), "--log-level", "error"])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("etcd binary: {err}; install it with hack/setup.sh"));
        let server = EtcdServer { endpoint, child, _dir: dir };
        // Up to 30 s: on 2 busy cores (the suite, a build) a fresh etcd can take over 10 s.
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", client_port)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("throwaway etcd did not listen on {}", server.endpoint);
    }

    /// Runs etcdctl against this server with extra flags.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint])
            .args(args)
            .output()
            .expect("etcdctl runs")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway etcd cluster of several members on loopback; members can be stopped and restarted.
pub struct EtcdCluster {
    pub endpoints: Vec<String>,
    members: Vec<Option<std::process::Child>>,
    args: Vec<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
        let mut cluster = EtcdCluster { endpoints: Vec::new(), members: Vec::new(), args: Vec::new(), _dir: dir };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = cluster._dir.path().join(format!("m{i}"));
            cluster.args.push(vec![
                "--name".into(),
                format!("m{i}"),
                "--data-dir".into(),
                data.to_str().unwrap().into(),
                "--listen-client-urls".into(),
                endpoint.clone(),
                "--advertise-client-urls".into(),
                endpoint.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url,
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-state".into(),
                "new".into(),
                "--log-level".into(),
                "error".into(),
            ]);
            cluster.endpoints.push(endpoint);
            cluster.members.push(None);
        }
        for i in 0..size {
            cluster.start_member(i);
        }
        for _ in 0..100 {
            if let Ok(Ok(mut client)) =
                tokio::time::timeout(Duration::from_secs(2), Client::connect(&cluster.endpoints, None)).await
                && client.put("probe", "1", None).await.is_ok()
            {
                return cluster;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd cluster at {:?} never answered", cluster.endpoints);
    }

    pub fn start_member(&mut self, i: usize) {
        let child = std::process::Command::new("etcd")
            .args(&self.args[i])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs");
        self.members[i] = Some(child);
    }

    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}
