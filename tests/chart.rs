//! Static checks of the chart, through the real `helm`: schema, refusals, RBAC least privilege,
//! security contexts, hook annotations, the disabled case, and a parent chart that includes the gate.
//! (`hack/lint.sh` adds `helm lint --strict` and `kubernetes-validate` for every values file.)

mod support;

use serde_json::{Value, json};
use support::chart::*;
use support::repo_root;

fn values_file(name: &str) -> String {
    repo_root().join("chart").join(name).to_str().unwrap().to_string()
}

fn dev(extra: &[&str]) -> Vec<Value> {
    let file = values_file("values-dev.yaml");
    let mut args = vec!["-f", &file];
    args.extend_from_slice(extra);
    render("shop", "dev", &args)
}

/// The schema rejects a misspelt key and a malformed duration, naming them.
#[test]
fn schema_rejects_typos_and_bad_durations() {
    let err = try_render("shop", "dev", &["--set", "cleanup.enabeld=true"]).expect_err("typo rejected");
    assert!(err.contains("enabeld"), "names the key: {err}");
    let err = try_render("shop", "dev", &["--set", "cleanup.timeout=30seconds"]).expect_err("bad duration rejected");
    assert!(err.contains("30seconds"), "names the value: {err}");
    let err = try_render("shop", "dev", &["--set", "gate.onTimeout=maybe"]).expect_err("bad enum rejected");
    assert!(err.contains("onTimeout"), "names the key: {err}");
    assert!(try_render("shop", "dev", &["--set", "cleanup.timeout=1m30s"]).is_ok(), "a valid duration renders");
}

/// Production with cleanup on is refused at render time unless allowProduction is set.
#[test]
fn production_is_refused_at_render_time() {
    let prod = values_file("values-prod.yaml");
    let err = try_render("shop", "prod", &["-f", &prod, "--set", "cleanup.enabled=true"]).expect_err("refused");
    assert!(err.contains("allowProduction"), "says how to allow it: {err}");
    let err = try_render("shop", "prod", &["--set", "cleanup.enabled=true", "--set", "cleanup.environment=PROD"])
        .expect_err("any case");
    assert!(err.contains("PROD"), "names the environment: {err}");
    let allowed = render(
        "shop",
        "prod",
        &["-f", &prod, "--set", "cleanup.enabled=true", "--set", "cleanup.allowProduction=true"],
    );
    let job = find(&allowed, "Job", "shop-cleanslate-purge");
    let env = &pod_spec(job)["containers"][0]["env"];
    assert!(
        env.as_array().unwrap().iter().any(|e| e["name"] == "CLEANSLATE_ALLOW_PRODUCTION" && e["value"] == "true"),
        "permission reaches the binary"
    );
}

/// RBAC without quiesce: no wildcards; the Job may only get/update/patch the marker; the gate may
/// only read it.
#[test]
fn rbac_is_least_privilege() {
    let docs = dev(&["--set", "cleanup.quiesce.enabled=false"]);
    for role in docs.iter().filter(|d| kind(d) == "Role" || kind(d) == "ClusterRole") {
        assert_eq!(kind(role), "Role", "namespaced roles only");
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(!rule[field].to_string().contains('*'), "{}: no wildcard in {field}", name(role));
            }
            assert_eq!(rule["resourceNames"], json!(["shop-cleanslate-marker"]), "{}: only the marker", name(role));
        }
    }
    let job_role = find(&docs, "Role", "shop-cleanslate-purge");
    assert_eq!(job_role["rules"][0]["verbs"], json!(["get", "update", "patch"]), "Job: no create, no delete");
    let gate_role = find(&docs, "Role", "shop-cleanslate-gate");
    assert_eq!(gate_role["rules"][0]["verbs"], json!(["get", "list", "watch"]), "gate: read-only");
    let binding = find(&docs, "RoleBinding", "shop-cleanslate-gate");
    let deployment = find(&docs, "Deployment", "shop-producer");
    assert_eq!(
        binding["subjects"][0]["name"],
        pod_spec(deployment)["serviceAccountName"],
        "gate bound to the pods' ServiceAccount"
    );
}

fn assert_hardened(container: &Value, what: &str) {
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{what}: read-only root");
    assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{what}: no privilege escalation");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}: all capabilities dropped");
    assert_eq!(sc["runAsNonRoot"], json!(true), "{what}: non-root");
    assert_eq!(sc["seccompProfile"]["type"], json!("RuntimeDefault"), "{what}: seccomp");
}

/// Every cleanslate container is hardened, with the documented resources.
#[test]
fn security_contexts_and_resources() {
    let docs = dev(&[]);
    let job = find(&docs, "Job", "shop-cleanslate-purge");
    assert_eq!(pod_spec(job)["securityContext"]["runAsNonRoot"], json!(true), "Job pod non-root");
    assert_eq!(pod_spec(job)["securityContext"]["seccompProfile"]["type"], json!("RuntimeDefault"), "Job pod seccomp");
    let container = &pod_spec(job)["containers"][0];
    assert_hardened(container, "Job");
    assert_eq!(container["resources"]["requests"], json!({"memory": "64Mi", "cpu": "50m"}), "requests");
    assert_eq!(container["resources"]["limits"], json!({"memory": "128Mi", "cpu": "100m"}), "limits");
    assert_hardened(&pod_spec(find(&docs, "Pod", "shop-cleanslate-test-purge"))["containers"][0], "test Pod");
    for deployment in docs.iter().filter(|d| kind(d) == "Deployment") {
        let gate = &pod_spec(deployment)["initContainers"][0];
        assert_eq!(gate["name"], json!("cleanslate-gate"), "{}: gated", name(deployment));
        assert_hardened(gate, name(deployment));
    }
}

/// Hooks: the Job's events and policies; RBAC, Secret and marker before it on every event it uses.
#[test]
fn hook_annotations_follow_the_design() {
    let docs = dev(&["--set-json", r#"cleanup.hook.deletePolicy=["hook-succeeded"]"#]);
    let job = find(&docs, "Job", "shop-cleanslate-purge");
    let annotations = &job["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/hook"], json!("post-install,pre-upgrade"), "default events");
    assert_eq!(
        annotations["helm.sh/hook-delete-policy"],
        json!("before-hook-creation,hook-succeeded"),
        "before-hook-creation kept"
    );
    assert_eq!(annotations["helm.sh/hook-output-log-policy"], json!("hook-failed"), "Job log in Helm's output");
    assert!(job["spec"].get("ttlSecondsAfterFinished").is_none(), "no TTL by default");
    assert!(job["spec"]["activeDeadlineSeconds"].as_i64().unwrap() > 45, "above the 30 s run plus the marker budget");
    let job_weight = hook_weight(job);
    for (kind_, name_) in [
        ("ServiceAccount", "shop-cleanslate-purge"),
        ("Role", "shop-cleanslate-purge"),
        ("RoleBinding", "shop-cleanslate-purge"),
        ("Secret", "shop-cleanslate-credentials"),
    ] {
        let doc = find(&docs, kind_, name_);
        assert!(hook_weight(doc) < job_weight, "{kind_} before the Job");
        assert_eq!(
            hook_events(doc),
            ["post-install", "pre-upgrade", "test"],
            "{kind_} on every event of the Job and the test"
        );
        assert!(
            doc["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
                .as_str()
                .unwrap()
                .contains("before-hook-creation"),
            "{kind_} policy"
        );
    }
    let marker = find(&docs, "ConfigMap", "shop-cleanslate-marker");
    assert!(hook_weight(marker) < job_weight, "marker reset before the Job");
    assert_eq!(hook_events(marker), ["post-install", "pre-upgrade"], "marker not reset by helm test");
    let test = find(&docs, "Pod", "shop-cleanslate-test-purge");
    assert_eq!(hook_events(test), ["test"], "test hook");
    let order: Vec<&str> = hooks_for(&docs, "post-install").iter().map(|d| kind(d)).collect();
    assert_eq!(order.last(), Some(&"Job"), "the Job runs last: {order:?}");
}

/// The gated pod template changes on every deploy (the revision in the gate's env), so pods are
/// replaced and pass a gate after each cleanup.
#[test]
fn gated_pod_templates_change_every_deploy() {
    let first = dev(&[]);
    let second = dev(&["--set", "cleanup.revision=2"]);
    let template = |docs: &[Value]| find(docs, "Deployment", "shop-consumer")["spec"]["template"].clone();
    assert_ne!(template(&first), template(&second), "pod template differs between revisions");
}

/// With cleanup disabled (the default and values-prod): no cleanslate resource, and the apps are
/// plain Deployments that do not change between revisions (no forced rollouts).
#[test]
fn disabled_renders_only_unchanged_apps() {
    let prod = values_file("values-prod.yaml");
    for args in [vec![], vec!["-f", prod.as_str()]] {
        let docs = render("shop", "dev", &args);
        let kinds: Vec<&str> = docs.iter().map(kind).collect();
        assert_eq!(kinds, ["Deployment", "Deployment"], "only the apps ({args:?})");
        for deployment in &docs {
            let spec = pod_spec(deployment);
            assert!(spec.get("initContainers").is_none(), "no gate");
            assert!(spec.get("serviceAccountName").is_none(), "no ServiceAccount change");
            let mut without_chart_label = deployment.clone();
            without_chart_label["metadata"]["labels"].as_object_mut().unwrap().remove("helm.sh/chart");
            assert!(
                !without_chart_label.to_string().contains("cleanslate"),
                "nothing of cleanslate in {}",
                name(deployment)
            );
        }
        let mut later = args.clone();
        later.extend(["--set", "cleanup.revision=9"]);
        assert_eq!(docs, render("shop", "dev", &later), "apps identical across revisions when disabled");
    }
}

/// A parent chart with cleanslate as a dependency includes the gate; the gate names the marker the
/// subchart renders, and the manifests validate against the Kubernetes schemas.
#[test]
fn parent_chart_includes_the_gate() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let parent = scratch.path().join("tests/fixtures/parent-chart");
    std::fs::create_dir_all(parent.join("templates")).unwrap();
    for file in ["Chart.yaml", "values.yaml", "templates/api.yaml"] {
        std::fs::copy(repo_root().join("tests/fixtures/parent-chart").join(file), parent.join(file)).unwrap();
    }
    std::os::unix::fs::symlink(repo_root().join("chart"), scratch.path().join("chart")).unwrap();
    let update =
        std::process::Command::new(helm()).args(["dependency", "update"]).arg(&parent).output().expect("helm runs");
    assert!(update.status.success(), "dependency update: {}", String::from_utf8_lossy(&update.stderr));
    let output = std::process::Command::new(helm())
        .args(["template", "shop"])
        .arg(&parent)
        .args(["--namespace", "dev"])
        .output()
        .expect("helm runs");
    assert!(output.status.success(), "parent renders: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let docs = parse_documents(&text);
    let api = find(&docs, "Deployment", "shop-api");
    let gate = &pod_spec(api)["initContainers"][0];
    assert_eq!(gate["name"], json!("cleanslate-gate"), "gate included");
    let marker_env = gate["env"].as_array().unwrap().iter().find(|e| e["name"] == "CLEANSLATE_MARKER").unwrap();
    let marker = find(&docs, "ConfigMap", "shop-cleanslate-marker");
    assert_eq!(marker_env["value"], json!(name(marker)), "the gate waits for the subchart's marker");
    let binding = find(&docs, "RoleBinding", "shop-cleanslate-gate");
    assert_eq!(binding["subjects"][0]["name"], json!("shop-api"), "gate Role bound to the parent's ServiceAccount");

    let manifest = scratch.path().join("parent.yaml");
    std::fs::write(&manifest, &text).unwrap();
    let validator = repo_root().join(".tools/bin/kubernetes-validate");
    let validate =
        std::process::Command::new(if validator.exists() { validator } else { "kubernetes-validate".into() })
            .args(["--strict", "--quiet"])
            .arg(&manifest)
            .output()
            .expect("kubernetes-validate runs (hack/setup.sh installs it)");
    assert!(
        validate.status.success(),
        "parent manifests validate: {}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
}

fn env_value(container: &Value, name_: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name_)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// Quiesce RBAC: the purge Role and the resume Role name exactly the gated apps and the listed
/// workloads (and their scale subresource); only the purge Role may list/watch pods; no wildcard.
#[test]
fn quiesce_rbac_names_exactly_the_workloads() {
    let docs = dev(&[
        "--set-json",
        r#"cleanup.quiesce.workloads=["deployment/api","statefulset/worker"]"#,
        "--set",
        "apps.consumer.gated=false",
    ]);
    let deployments = json!({"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"],
                             "resourceNames": ["shop-producer", "api"], "verbs": ["get", "patch", "update"]});
    let statefulsets = json!({"apiGroups": ["apps"], "resources": ["statefulsets", "statefulsets/scale"],
                              "resourceNames": ["worker"], "verbs": ["get", "patch", "update"]});
    let marker = json!({"apiGroups": [""], "resources": ["configmaps"],
                        "resourceNames": ["shop-cleanslate-marker"], "verbs": ["get", "update", "patch"]});
    let pods = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]});
    assert_eq!(
        find(&docs, "Role", "shop-cleanslate-purge")["rules"],
        json!([marker, deployments, statefulsets, pods]),
        "purge Role: the marker, exactly the named workloads and their scale, read-only pods"
    );
    assert_eq!(
        find(&docs, "Role", "shop-cleanslate-resume")["rules"],
        json!([deployments, statefulsets]),
        "resume Role: the same named workload rights and nothing else"
    );
    let job = find(&docs, "Job", "shop-cleanslate-purge");
    let container = &pod_spec(job)["containers"][0];
    assert_eq!(
        env_value(container, "CLEANSLATE_QUIESCE").as_deref(),
        Some("deployment/shop-producer,deployment/api,statefulset/worker"),
        "the gated apps (not the ungated consumer) and the listed workloads"
    );
    assert_eq!(env_value(container, "CLEANSLATE_QUIESCE_TIMEOUT").as_deref(), Some("45s"), "default timeout");
    assert_eq!(
        env_value(container, "CLEANSLATE_QUIESCE_RESUME"),
        None,
        "the hook Job leaves resuming to the resume Job"
    );
    let test_pod = &pod_spec(find(&docs, "Pod", "shop-cleanslate-test-purge"))["containers"][0];
    assert_eq!(env_value(test_pod, "CLEANSLATE_QUIESCE_RESUME").as_deref(), Some("true"), "helm test resumes itself");
}

/// The resume Job: after install and upgrade, after the purge Job and its own RBAC, keeps its last
/// run, hardened like the purge Job; quiesce is off unless turned on (values.yaml, prod).
#[test]
fn resume_job_hooks_and_defaults() {
    let docs = dev(&[]);
    let purge = find(&docs, "Job", "shop-cleanslate-purge");
    let resume = find(&docs, "Job", "shop-cleanslate-resume");
    assert_eq!(hook_events(resume), ["post-install", "post-upgrade"], "after install and upgrade");
    assert!(hook_weight(resume) > hook_weight(purge), "after the purge Job on post-install");
    assert_eq!(
        resume["metadata"]["annotations"]["helm.sh/hook-delete-policy"],
        json!("before-hook-creation"),
        "keeps its last run until the next deploy"
    );
    for kind_ in ["ServiceAccount", "Role", "RoleBinding"] {
        let doc = find(&docs, kind_, "shop-cleanslate-resume");
        assert_eq!(hook_events(doc), ["post-install", "post-upgrade"], "{kind_} on the resume Job's events");
        assert!(hook_weight(doc) < hook_weight(resume), "{kind_} before the resume Job");
        assert!(hook_weight(doc) > hook_weight(purge), "{kind_} after the purge Job (post-install order)");
    }
    assert_eq!(pod_spec(resume)["serviceAccountName"], json!("shop-cleanslate-resume"), "its own identity");
    assert_eq!(pod_spec(resume)["securityContext"], pod_spec(purge)["securityContext"], "same pod security context");
    let container = &pod_spec(resume)["containers"][0];
    assert_eq!(container["args"], json!(["resume"]), "runs cleanslate resume");
    assert_hardened(container, "resume Job");
    assert_eq!(
        env_value(container, "CLEANSLATE_QUIESCE").as_deref(),
        Some("deployment/shop-consumer,deployment/shop-producer"),
        "resumes what the purge stops"
    );
    let staging = render("shop", "staging", &["-f", &values_file("values-staging.yaml")]);
    assert!(staging.iter().any(|d| name(d) == "shop-cleanslate-resume"), "on in staging");
    let plain = render("shop", "dev", &["--set", "cleanup.enabled=true"]);
    assert!(!plain.iter().any(|d| name(d).ends_with("-resume")), "off by default in values.yaml");
    let job = &pod_spec(find(&plain, "Job", "shop-cleanslate-purge"))["containers"][0];
    assert_eq!(env_value(job, "CLEANSLATE_QUIESCE"), None, "no quiesce without cleanup.quiesce.enabled");
    let err = try_render("shop", "dev", &["--set-json", r#"cleanup.quiesce.workloads=["daemonset/agent"]"#])
        .expect_err("only Deployments and StatefulSets");
    assert!(err.contains("daemonset/agent"), "names the entry: {err}");
}
