//! `plan`, `resume` and `status` from an operator's machine: no pod, no service account, no
//! `CLEANSLATE_KUBE_*`; only a kubeconfig, as kubectl uses it (`KUBECONFIG`, or `~/.kube/config`),
//! with a bearer-token user and a client-certificate user, against the API stand-in.

mod support;

use base64::Engine;
use serde_json::{Value, json};
use support::kube_api::KubeApi;
use support::*;

const NS: &str = "preview-42";
const MARKER: &str = "shop-cleanslate-marker";
const TOKEN: &str = "oidc-id-token-Secret-77";

/// A kubeconfig with one cluster (the stand-in, its CA inline) and `user`, in namespace `NS`.
fn kubeconfig(api: &KubeApi, user: Value) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "preview", "cluster": {"server": api.url, "certificate-authority-data": b64(&api.ca_pem)}}],
        "users": [{"name": "operator", "user": user}],
        "contexts": [{"name": "preview", "context": {"cluster": "preview", "user": "operator", "namespace": NS}}],
        "current-context": "preview",
    });
    serde_yaml::to_string(&config).expect("YAML")
}

/// A release whose last upgrade purged, then failed to apply: its producer is still stopped.
async fn stopped_release() -> KubeApi {
    let api = KubeApi::start().await;
    let mut producer = deployment_manifest("shop-producer", Some(0));
    producer["metadata"]["annotations"] = json!({"cleanslate.io/quiesced-replicas": "2"});
    producer["metadata"]["labels"]["app.kubernetes.io/instance"] = json!("shop");
    api.apply_workload(NS, &producer);
    // Another release's workload, stopped too: not this release's business.
    let mut other = deployment_manifest("blog-writer", Some(0));
    other["metadata"]["annotations"] = json!({"cleanslate.io/quiesced-replicas": "1"});
    other["metadata"]["labels"]["app.kubernetes.io/instance"] = json!("blog");
    api.apply_workload(NS, &other);
    api.apply_workload(NS, &deployment_manifest("shop-web", Some(1)));
    let data = json!({"revision": "7", "status": "succeeded", "dryRun": "false", "durationMs": "840",
                      "queuesPurged": "3", "messagesPurged": "120", "keysDeleted": "45", "attempt": "1",
                      "final": "false", "lastSucceededRevision": "7", "finishedAt": "2026-11-23T10:00:00Z",
                      "lastSucceededAt": "2026-11-23T10:00:00Z", "job": "shop-cleanslate-purge-x1", "message": ""});
    api.put_object(
        NS,
        MARKER,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": MARKER, "namespace": NS,
                            "labels": {"app.kubernetes.io/instance": "shop", "app.kubernetes.io/component": "marker"}},
               "data": data}),
    );
    // An operator's rights in the namespace.
    for who in [TOKEN, "cert:ops-admin"] {
        api.grant(who, &["get", "list"], None);
        for resource in ["deployments", "statefulsets"] {
            api.grant_on(who, resource, &["get", "list", "patch"], None);
        }
        api.grant_on(who, "deployments/scale", &["get", "update"], None);
    }
    api
}

/// `status` through a token user: names the stopped workload and its count, says to resume,
/// exits non-zero; `--json` says the same for scripts.
#[tokio::test]
async fn status_reports_what_is_stopped_through_a_token_kubeconfig() {
    let api = stopped_release().await;
    let home = tempfile::tempdir().expect("home");
    let path = write_file(home.path(), "config", &kubeconfig(&api, json!({"token": TOKEN})));
    let env = vars(&[("KUBECONFIG", &path)]);
    let run = cleanslate_on_laptop(&["status", "shop"], home.path(), &env).await;
    assert_eq!(run.code, 1, "not clean: {}", run.all_output());
    assert!(run.stdout.contains("deployment/shop-producer (at 0, recorded 2)"), "names it: {}", run.stdout);
    assert!(run.stdout.contains("revision 7 succeeded"), "the last run: {}", run.stdout);
    assert!(run.stdout.contains("cleanslate resume"), "what to run: {}", run.stdout);
    assert!(!run.stdout.contains("shop-web"), "a running workload is not listed: {}", run.stdout);
    assert!(!run.stdout.contains("blog-writer"), "another release's is not listed: {}", run.stdout);
    let json_run = cleanslate_on_laptop(&["status", "shop", "--json"], home.path(), &env).await;
    assert_eq!(json_run.code, 1, "{}", json_run.all_output());
    let report: Value = serde_json::from_str(&json_run.stdout).expect("JSON on stdout");
    assert_eq!(report["clean"], json!(false));
    assert_eq!(report["namespace"], json!(NS), "the context's namespace");
    assert_eq!(report["stoppedWorkloads"][0]["workload"], json!("deployment/shop-producer"));
    assert_eq!(report["lastRun"]["keysDeleted"], json!(45));
    run.assert_no_secret(&[TOKEN]);
    json_run.assert_no_secret(&[TOKEN]);

    // In a CI runner's pod (in-cluster variables, an unreachable in-cluster API) KUBECONFIG still
    // names the cluster to talk to, as in kubectl.
    let in_pod = vars(&[
        ("KUBECONFIG", &path),
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", "9"),
        ("HOSTNAME", "ci-runner-7f9c"),
    ]);
    let from_pod = cleanslate_on_laptop(&["status", "shop", "--json"], home.path(), &in_pod).await;
    assert_eq!(from_pod.code, 1, "same answer from a pod: {}", from_pod.all_output());
    let report: Value = serde_json::from_str(&from_pod.stdout).expect("JSON on stdout");
    assert_eq!(report["namespace"], json!(NS), "the kubeconfig's cluster and namespace");
    let used: Vec<String> = api.requests().iter().map(|r| r.token.clone()).collect();
    assert!(used.iter().all(|t| t == TOKEN), "every request carried the kubeconfig's token: {used:?}");
}

/// `resume` and then `status` through a client-certificate user found at `~/.kube/config`: the
/// producer is back at its recorded count and the release reads clean (exit 0).
#[tokio::test]
async fn resume_then_status_through_a_client_certificate_kubeconfig() {
    let api = stopped_release().await;
    let issued = api.client_certificate("ops-admin");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = json!({"client-certificate-data": b64(&issued.cert_pem), "client-key-data": b64(&issued.key_pem)});
    let home = tempfile::tempdir().expect("home");
    std::fs::create_dir(home.path().join(".kube")).expect(".kube");
    write_file(&home.path().join(".kube"), "config", &kubeconfig(&api, user));
    let resume =
        cleanslate_on_laptop(&["resume"], home.path(), &vars(&[("CLEANSLATE_QUIESCE", "deployment/shop-producer")]))
            .await;
    assert_eq!(resume.code, 0, "resume through the kubeconfig: {}", resume.all_output());
    assert_eq!(api.replicas_and_annotation(NS, "deployments", "shop-producer"), (2, None), "back at 2");
    let status = cleanslate_on_laptop(&["status", "shop"], home.path(), &[]).await;
    assert_eq!(status.code, 0, "clean and running: {}", status.all_output());
    assert!(status.stdout.contains("nothing to do"), "{}", status.stdout);
    assert!(api.requests().iter().all(|r| r.token == "cert:ops-admin"), "authenticated by the certificate");
}

/// `plan` through the kubeconfig reads the workloads it would stop (and writes nothing).
#[tokio::test]
async fn plan_reads_the_workloads_through_the_kubeconfig() {
    let api = stopped_release().await;
    api.apply_workload(NS, &deployment_manifest("shop-consumer", Some(3)));
    let home = tempfile::tempdir().expect("home");
    let path = write_file(home.path(), "config", &kubeconfig(&api, json!({"token": TOKEN})));
    let plan_vars = vars(&[
        ("KUBECONFIG", &path),
        ("CLEANSLATE_TARGETS", "etcd"),
        ("CLEANSLATE_ETCD_ENDPOINTS", &etcd_endpoint()),
        ("CLEANSLATE_ETCD_PREFIXES", &format!("{}/plan/", unique("/kubeconfig"))),
        ("CLEANSLATE_QUIESCE", "deployment/shop-consumer,deployment/not-there"),
    ]);
    let run = cleanslate_on_laptop(&["plan"], home.path(), &plan_vars).await;
    assert_eq!(run.code, 0, "plan: {}", run.all_output());
    assert!(
        run.stdout.contains("would stop before purging") && run.stdout.contains("\"replicas\":3"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("deployment/not-there"), "names the missing one: {}", run.stdout);
    assert!(api.requests().iter().all(|r| r.method == "GET"), "plan writes nothing");
    assert_eq!(api.replicas_and_annotation(NS, "deployments", "shop-consumer"), (3, None), "untouched");
}

/// Without a pod, `CLEANSLATE_KUBE_API` or a kubeconfig, the commands say what is missing (78).
#[tokio::test]
async fn no_kubeconfig_is_a_configuration_error() {
    let home = tempfile::tempdir().expect("home");
    let run = cleanslate_on_laptop(&["status", "shop"], home.path(), &[]).await;
    assert_eq!(run.code, 78, "configuration error: {}", run.all_output());
    assert!(run.first_stderr_line().contains("kubeconfig"), "{}", run.stderr);
}

/// Helm's record of `release` revision `version` (deployed), as Helm 3 and 4 store it: a Secret
/// `sh.helm.release.v1.<release>.v<version>` labelled owner/name/status/version, whose `release`
/// key is base64 of gzipped JSON with every rendered hook manifest.
fn put_helm_record(api: &KubeApi, release: &str, version: u64, docs: &[Value]) {
    use std::io::Write;
    let hooks: Vec<Value> = docs
        .iter()
        .filter(|d| d["metadata"]["annotations"].get("helm.sh/hook").is_some())
        .map(|d| {
            json!({"name": d["metadata"]["name"], "kind": d["kind"], "path": "cleanslate/templates/x.yaml",
                   "manifest": serde_yaml::to_string(d).expect("YAML"),
                   "events": support::chart::hook_events(d)})
        })
        .collect();
    let record = json!({"name": release, "namespace": NS, "version": version,
                        "info": {"status": "deployed"}, "hooks": hooks, "manifest": ""});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(record.to_string().as_bytes()).expect("gzip");
    let text = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
    let labels = json!({"owner": "helm", "name": release, "status": "deployed", "version": version.to_string()});
    api.put_secret(NS, &format!("sh.helm.release.v1.{release}.v{version}"), labels, &[("release", text.as_bytes())]);
}

/// "What would the next deploy purge?" in one command: `plan shop` and `status shop` with no
/// `CLEANSLATE_*` set read the release's configuration from its Helm record through the kubeconfig
/// (the dev credentials from the recorded hook Secret, since Helm deleted it after the hooks),
/// and the plan sums up what it would purge and stop. A variable set by hand still wins.
#[tokio::test]
async fn plan_and_status_read_the_release_from_the_cluster() {
    let api = stopped_release().await;
    api.apply_workload(NS, &deployment_manifest("shop-consumer", Some(1)));
    api.grant_on(TOKEN, "secrets", &["get", "list"], None);
    let rabbit = Rabbit::connect().await;
    let vhost = unique("plan-release");
    rabbit.create_vhost(&vhost).await;
    for queue in ["monorepo", "monorepo-dlq"] {
        rabbit.declare(&vhost, queue, json!({})).await;
        rabbit.publish(&vhost, queue, 3).await;
    }
    let mut etcd = etcd().await;
    let prefix = format!("{}/monorepo/", unique("/plan-release"));
    put_keys(&mut etcd, &prefix, 4).await;
    let values = repo_root().join("chart/values-dev.yaml");
    let docs = support::chart::render(
        "shop",
        NS,
        &[
            "-f",
            values.to_str().unwrap(),
            "--set",
            &format!("cleanup.rabbitmq.url={}", rabbit_url()),
            "--set-string",
            &format!("cleanup.rabbitmq.vhost={vhost}"),
            "--set-string",
            &format!("cleanup.rabbitmq.username={}", rabbit_user()),
            "--set-string",
            &format!("cleanup.rabbitmq.password={}", rabbit_password()),
            "--set-json",
            &format!("cleanup.etcd.endpoints=[\"{}\"]", etcd_endpoint()),
            "--set-json",
            &format!("cleanup.etcd.prefixes=[\"{prefix}\"]"),
            "--set-json",
            &format!("cleanup.etcd.seed={{\"{prefix}lobby\":\"open\"}}"),
        ],
    );
    put_helm_record(&api, "shop", 6, &docs);
    // The seed ConfigMap, a hook kept between deploys: plan reads it as the Job's volume would.
    let seed = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "shop-cleanslate-seed");
    let seed = seed.expect("the rendered seed ConfigMap").clone();
    api.put_object(NS, "shop-cleanslate-seed", seed);
    let home = tempfile::tempdir().expect("home");
    let path = write_file(home.path(), "config", &kubeconfig(&api, json!({"token": TOKEN})));
    let env = vars(&[("KUBECONFIG", &path)]);

    let plan = cleanslate_on_laptop(&["plan", "shop"], home.path(), &env).await;
    assert_eq!(plan.code, 0, "plan shop: {}", plan.all_output());
    assert!(plan.stdout.contains(r#""revision":6"#), "says which revision it read: {}", plan.stdout);
    assert!(
        plan.stdout.contains("would purge 2 queues") && plan.stdout.contains("would delete 4 etcd keys"),
        "sums up what it would purge: {}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("would stop deployment/shop-consumer (1)"),
        "names what it would stop: {}",
        plan.stdout
    );
    assert!(plan.stdout.contains(r#""keys_to_delete":4"#), "in the plan's own words: {}", plan.stdout);
    assert!(plan.stdout.contains(r#""keys_to_seed":1"#), "the seed, from its ConfigMap: {}", plan.stdout);
    plan.assert_no_secret(&[&rabbit_password(), TOKEN]);
    assert_eq!(rabbit.count(&vhost, "monorepo").await, 3, "a plan purges nothing");
    assert_eq!(count_keys(&mut etcd, &prefix).await, 4, "a plan deletes nothing");

    let narrowed = with(env.clone(), &[("CLEANSLATE_TARGETS", "etcd")]);
    let plan = cleanslate_on_laptop(&["plan", "shop", "-n", NS], home.path(), &narrowed).await;
    assert_eq!(plan.code, 0, "{}", plan.all_output());
    assert!(!plan.stdout.contains("would purge 2 queues"), "the variable set by hand wins: {}", plan.stdout);

    let status = cleanslate_on_laptop(&["status", "shop"], home.path(), &env).await;
    assert_eq!(status.code, 1, "the producer is still stopped: {}", status.all_output());
    assert!(status.stdout.contains("deployment/shop-producer"), "{}", status.stdout);
    assert!(api.requests().iter().all(|r| r.method == "GET"), "plan and status write nothing");

    let missing = cleanslate_on_laptop(&["plan", "blog"], home.path(), &env).await;
    assert_eq!(missing.code, 78, "{}", missing.all_output());
    assert!(
        missing.stderr.contains("no Helm release \"blog\"") && missing.stderr.contains(NS),
        "names where it looked: {}",
        missing.stderr
    );
    rabbit.delete_vhost(&vhost).await;
}
