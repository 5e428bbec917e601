//! The image as users run it: the OCI archive `hack/image.sh` builds (`target/image/cleanslate.tar`),
//! checked against the Dockerfile's final stage, unpacked, and run from its own root filesystem as
//! user 65532 (`chroot --userspec`), with an `/etc/hosts` and `/etc/resolv.conf` like a kubelet
//! mounts, resolving RabbitMQ and etcd by host name, against the real servers.
//!
//! Needs the archive (`hack/image.sh`; `hack/test.sh` builds it first) and root (for `chroot`, and
//! for the stand-in cluster DNS server on port 53): without them the tests fail with that hint.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::*;

const BUILD_HINT: &str = "build the image with `hack/image.sh` (hack/test.sh does it before the tests)";

fn archive() -> PathBuf {
    let path = repo_root().join("target/image/cleanslate.tar");
    assert!(path.exists(), "{} is missing: {BUILD_HINT}", path.display());
    path
}

/// The unpacked archive: the image config and its root filesystem.
struct Image {
    _dir: tempfile::TempDir,
    config: Value,
    rootfs: PathBuf,
    files: Vec<String>,
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display())))
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|err| panic!("{command:?} runs: {err}"));
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Unpacks the OCI archive as a container runtime would: index → manifest → config and layers,
/// the layers extracted in order into one root filesystem.
fn unpack() -> Image {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("oci");
    std::fs::create_dir_all(&layout).unwrap();
    run_ok(Command::new("tar").arg("-xf").arg(archive()).arg("-C").arg(&layout));
    let blob =
        |digest: &Value| layout.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"));
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1), "one image in the archive: {index}");
    let manifest = read_json(&blob(&index["manifests"][0]["digest"]));
    let config = read_json(&blob(&manifest["config"]["digest"]));
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let mut files = Vec::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let path = blob(&layer["digest"]);
        // GNU tar detects the compression itself.
        let listing = run_ok(Command::new("tar").arg("-tf").arg(&path));
        files.extend(listing.lines().map(|l| format!("/{}", l.trim_start_matches("./"))).filter(|l| l != "/"));
        run_ok(Command::new("tar").arg("-xpf").arg(&path).arg("-C").arg(&rootfs));
    }
    Image { _dir: dir, config, rootfs, files }
}

/// The Dockerfile's final stage: its instructions with continuation lines joined.
fn final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (op.to_uppercase(), rest.trim().to_string())
        })
        .collect();
    let start = instructions.iter().rposition(|(op, _)| op == "FROM").expect("a FROM");
    assert_eq!(instructions[start].1, "scratch", "the final stage starts from scratch");
    instructions[start + 1..].to_vec()
}

/// `key="value" key2=value2` → pairs, quotes removed.
fn label_pairs(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').expect("closing quote");
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(char::is_whitespace).unwrap_or((after, ""))
        };
        pairs.push((key.trim().to_string(), value.to_string()));
        rest = next.trim();
    }
    pairs
}

fn cargo_version() -> String {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')))
        .expect("package version")
        .to_string()
}

/// The built image is the Dockerfile's final stage: same user, entrypoint, labels and files, and
/// nothing else in it.
#[test]
fn image_matches_the_dockerfile_final_stage() {
    let image = unpack();
    let config = &image.config["config"];
    let mut image_labels: BTreeMap<String, String> = config["Labels"]
        .as_object()
        .expect("labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    // buildah stamps its own version; the Dockerfile cannot say it, and it is not ours.
    image_labels.remove("io.buildah.version");
    let revision = image_labels.get("org.opencontainers.image.revision").cloned().unwrap_or_default();
    assert!(
        revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "revision label is a commit: {revision:?}"
    );

    let mut args = BTreeMap::new();
    let mut files = Vec::new();
    let mut labels = BTreeMap::new();
    for (op, rest) in final_stage() {
        match op.as_str() {
            "ARG" => {
                let (name, default) = rest.split_once('=').unwrap_or((rest.as_str(), ""));
                if name == "VERSION" {
                    assert_eq!(default, cargo_version(), "a plain `docker build` labels the crate's version");
                }
                // What hack/image.sh passes for each build argument.
                let value = match name {
                    "VERSION" => cargo_version(),
                    "REVISION" => revision.clone(),
                    other => panic!("build argument {other} has no counterpart in hack/image.sh"),
                };
                args.insert(format!("${{{name}}}"), value);
            }
            "COPY" => files.push(rest.split_whitespace().last().unwrap().to_string()),
            "LABEL" => {
                for (key, value) in label_pairs(&rest) {
                    let value = args.iter().fold(value, |v, (placeholder, arg)| v.replace(placeholder, arg));
                    labels.insert(key, value);
                }
            }
            "USER" => assert_eq!(config["User"], json!(rest), "USER"),
            "ENTRYPOINT" => {
                let entrypoint: Value = serde_json::from_str(&rest).expect("exec-form ENTRYPOINT");
                assert_eq!(config["Entrypoint"], entrypoint, "ENTRYPOINT");
            }
            other => panic!("instruction {other} in the final stage has no counterpart in hack/image.sh"),
        }
    }
    assert_eq!(config["User"], json!("65532:65532"), "runs as 65532");
    assert_eq!(config["Entrypoint"], json!(["/cleanslate"]), "entrypoint");
    assert!(config.get("Cmd").is_none_or(Value::is_null), "no CMD: the chart passes the subcommand: {config}");
    assert_eq!(image_labels, labels, "labels of the image and the Dockerfile");
    for key in ["source", "version", "revision", "licenses"] {
        assert!(labels.contains_key(&format!("org.opencontainers.image.{key}")), "OCI label {key}");
    }
    assert_eq!(labels["org.opencontainers.image.version"], cargo_version(), "version label");

    assert_eq!(image.files, files, "the image holds exactly what the Dockerfile copies");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(image.rootfs.join("cleanslate")).expect("binary").permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "binary executable by 65532");
}

/// A stand-in for the cluster DNS: answers every query NXDOMAIN (as CoreDNS does for a name it does
/// not know) and records the names asked, so a test sees which names went to DNS at all.
struct ClusterDns {
    address: Ipv4Addr,
    asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterDns {
    async fn start() -> ClusterDns {
        // A loopback address of our own: resolv.conf cannot name a port, so it must be 53.
        let address = Ipv4Addr::new(127, 53, (std::process::id() % 250) as u8, 1);
        let socket = tokio::net::UdpSocket::bind((address, 53))
            .await
            .unwrap_or_else(|err| panic!("bind {address}:53 for the stand-in DNS ({err}); run the tests as root"));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let task = tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            while let Ok((len, peer)) = socket.recv_from(&mut buffer).await {
                if len < 12 {
                    continue;
                }
                let query = &buffer[..len];
                let mut labels = Vec::new();
                let mut at = 12;
                while at < len && query[at] != 0 {
                    let n = query[at] as usize;
                    labels.push(String::from_utf8_lossy(&query[at + 1..(at + 1 + n).min(len)]).into_owned());
                    at += 1 + n;
                }
                seen.lock().unwrap().push(labels.join("."));
                // Same id and question; QR, RD, RA set; RCODE 3 (NXDOMAIN); no answers.
                let mut answer = query.to_vec();
                answer[2] = 0x81;
                answer[3] = 0x83;
                answer[6..12].fill(0);
                let _ = socket.send_to(&answer, peer).await;
            }
        });
        ClusterDns { address, asked, task }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the image's entrypoint from its own root as 65532:65532, with exactly `env`.
async fn run_in_image(rootfs: &Path, args: &[&str], env: &[(String, String)]) -> Run {
    // coreutils' chroot lives in /usr/sbin, which a user's PATH may lack.
    let chroot =
        ["/usr/sbin/chroot", "/usr/bin/chroot"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("chroot");
    let child = tokio::process::Command::new(chroot)
        .arg("--userspec=65532:65532")
        .arg(rootfs)
        .arg("/cleanslate")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chroot runs (needs root)");
    finish(child).await
}

/// The image's binary, run from the image's root as 65532 with a kubelet-style /etc/hosts and
/// /etc/resolv.conf, reaches RabbitMQ and etcd by host name (the hosts file first, even though
/// the cluster DNS says NXDOMAIN) and purges unique names; a name the hosts file lacks goes to the
/// DNS named in the image's resolv.conf.
#[tokio::test]
async fn image_runs_as_65532_resolving_services_by_host_name() {
    let image = unpack();
    let dns = ClusterDns::start().await;
    let namespace = "preview";
    let etc = image.rootfs.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    // What the kubelet mounts: its hosts file (with hostAliases entries) and the pod's resolv.conf.
    std::fs::write(
        etc.join("hosts"),
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         10.244.1.17\tshop-cleanslate-purge-x7k2p\n\n# Entries added by HostAliases.\n\
         127.0.0.1\trabbitmq.preview.svc.cluster.local\trabbitmq\n127.0.0.1\tetcd-0.etcd.preview.svc.cluster.local\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("resolv.conf"),
        format!(
            "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {}\noptions ndots:5\n",
            dns.address
        ),
    )
    .unwrap();

    let rabbit = Rabbit::connect().await;
    let vhost = unique("image");
    rabbit.create_vhost(&vhost).await;
    rabbit.declare(&vhost, "events", json!({})).await;
    rabbit.declare(&vhost, "billing", json!({})).await;
    rabbit.publish(&vhost, "events", 4).await;
    rabbit.publish(&vhost, "billing", 2).await;
    let mut etcd = etcd().await;
    let prefix = format!("{}/", unique("/image"));
    put_keys(&mut etcd, &prefix, 5).await;

    let rabbit_port = rabbit_url().rsplit(':').next().unwrap().to_string();
    let etcd_port = etcd_endpoint().rsplit(':').next().unwrap().to_string();
    // A pod's environment: the chart's variables plus what Kubernetes adds on its own.
    let env = vars(&[
        ("HOSTNAME", "shop-cleanslate-purge-x7k2p"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ("RABBITMQ_SERVICE_HOST", "10.96.12.7"),
        ("RABBITMQ_SERVICE_PORT", "15672"),
        ("CLEANSLATE_ENVIRONMENT", "preview"),
        ("CLEANSLATE_LOG_FORMAT", "text"),
        ("CLEANSLATE_TIMEOUT", "20s"),
        ("CLEANSLATE_RETRY_BACKOFF", "200ms"),
        ("CLEANSLATE_RABBITMQ_URL", &format!("http://rabbitmq:{rabbit_port}")),
        ("CLEANSLATE_RABBITMQ_USERNAME", &rabbit_user()),
        ("CLEANSLATE_RABBITMQ_PASSWORD", &rabbit_password()),
        ("CLEANSLATE_RABBITMQ_VHOST", &vhost),
        ("CLEANSLATE_RABBITMQ_QUEUES", "events"),
        ("CLEANSLATE_ETCD_ENDPOINTS", &format!("http://etcd-0.etcd.preview.svc.cluster.local:{etcd_port}")),
        ("CLEANSLATE_ETCD_PREFIXES", &prefix),
    ]);

    let run = run_in_image(&image.rootfs, &["purge"], &env).await;
    assert_eq!(run.code, 0, "purge from the image succeeds: {}", run.all_output());
    run.assert_no_secret(&[&rabbit_password()]);
    assert_eq!(rabbit.count(&vhost, "events").await, 0, "events purged through rabbitmq:{rabbit_port}");
    assert_eq!(rabbit.count(&vhost, "billing").await, 2, "billing untouched");
    assert_eq!(count_keys(&mut etcd, &prefix).await, 0, "keys deleted through the etcd host name");
    let asked = dns.asked();
    assert!(
        !asked.iter().any(|name| name.starts_with("rabbitmq") || name.starts_with("etcd-0")),
        "names in the hosts file never went to DNS: {asked:?}"
    );

    // A name the hosts file lacks is asked of the image's resolver (search list applied) and fails.
    let missing = with(
        env.clone(),
        &[
            ("CLEANSLATE_TARGETS", "rabbitmq"),
            ("CLEANSLATE_RABBITMQ_URL", "http://rabbitmq-gone:15672"),
            ("CLEANSLATE_RETRY_ATTEMPTS", "1"),
            ("CLEANSLATE_TIMEOUT", "5s"),
        ],
    );
    let run = run_in_image(&image.rootfs, &["plan"], &missing).await;
    assert_eq!(run.code, 69, "an unknown host is unreachable: {}", run.all_output());
    let asked = dns.asked();
    assert!(
        asked.iter().any(|name| name == "rabbitmq-gone.preview.svc.cluster.local"),
        "the lookup used the image's resolv.conf and its search list: {asked:?}"
    );
    rabbit.delete_vhost(&vhost).await;
}
