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
