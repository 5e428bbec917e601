//! Static checks of the chart, through the real `helm`: schema, refusals, RBAC least privilege,
//! security contexts, hook annotations, the disabled case, and a parent chart that includes the gate.
//! (`hack/lint.sh` adds `helm lint --strict` and `kubernetes-validate` for every values file.)

mod support;

use serde_json::{Value, json};
use support::chart::*;
use support::repo_root;

/// Example targets for a render that turns cleanup on without values-dev.yaml (the chart has none).
const TARGETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/targets.yaml");

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
    assert!(err.contains("timeout"), "names the key: {err}");
    // Helm 4's schema validator quotes the value; Helm 3's only names the key and the pattern.
    if helm_major() >= 4 {
        assert!(err.contains("30seconds"), "names the value: {err}");
    }
    let err = try_render("shop", "dev", &["--set", "gate.onTimeout=maybe"]).expect_err("bad enum rejected");
    assert!(err.contains("onTimeout"), "names the key: {err}");
    assert!(try_render("shop", "dev", &["--set", "cleanup.timeout=1m30s"]).is_ok(), "a valid duration renders");
}

/// Production with cleanup on is refused at render time unless allowProduction is set.
#[test]
fn production_is_refused_at_render_time() {
    let prod = values_file("values-prod.yaml");
    let err = try_render("shop", "prod", &["-f", &prod, "--set", "cleanup.enabled=true", "-f", TARGETS])
        .expect_err("refused");
    assert!(err.contains("allowProduction"), "says how to allow it: {err}");
    let err = try_render(
        "shop",
        "prod",
        &["--set", "cleanup.enabled=true", "-f", TARGETS, "--set", "cleanup.environment=PROD"],
    )
    .expect_err("any case");
    assert!(err.contains("PROD"), "names the environment: {err}");
    let allowed = render(
        "shop",
        "prod",
        &["-f", &prod, "--set", "cleanup.enabled=true", "-f", TARGETS, "--set", "cleanup.allowProduction=true"],
    );
    let job = find(&allowed, "Job", "shop-cleanslate-purge");
    let env = &pod_spec(job)["containers"][0]["env"];
    assert!(
        env.as_array().unwrap().iter().any(|e| e["name"] == "CLEANSLATE_ALLOW_PRODUCTION" && e["value"] == "true"),
        "permission reaches the binary"
    );
}

/// RBAC without quiesce: no wildcards; the Job may only get/update the marker and get its own Job;
/// the gate may only read the marker.
#[test]
fn rbac_is_least_privilege() {
    let docs = dev(&["--set", "cleanup.quiesce.enabled=false"]);
    for role in docs.iter().filter(|d| kind(d) == "Role" || kind(d) == "ClusterRole") {
        assert_eq!(kind(role), "Role", "namespaced roles only");
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(!rule[field].to_string().contains('*'), "{}: no wildcard in {field}", name(role));
            }
            let own_job =
                rule["resources"] == json!(["jobs"]) && rule["resourceNames"] == json!(["shop-cleanslate-purge"]);
            if own_job {
                assert_eq!(rule["verbs"], json!(["get"]), "{}: only reads its own Job", name(role));
                continue;
            }
            if rule["apiGroups"] == json!(["events.k8s.io"]) {
                assert_eq!(rule["verbs"], json!(["create"]), "{}: Events are only created", name(role));
                continue;
            }
            // The marker when it is missing (RBAC cannot limit create to a name).
            if rule["resources"] == json!(["configmaps"]) && rule["resourceNames"].is_null() {
                assert_eq!(rule["verbs"], json!(["create"]), "{}: unnamed ConfigMaps are only created", name(role));
                continue;
            }
            // The resume identity, for a rollback: the namespace's workloads (see resume-rbac.yaml).
            if name(role) == "shop-cleanslate-resume" {
                assert_eq!(rule["apiGroups"], json!(["apps"]), "resume: workloads only");
                continue;
            }
            let named = rule["resourceNames"].as_array().cloned().unwrap_or_default();
            let purge_identity = matches!(name(role), "shop-cleanslate-purge" | "shop-cleanslate-test");
            let expected = if purge_identity {
                json!(["shop-cleanslate-marker", "shop-cleanslate-trigger"])
            } else {
                json!(["shop-cleanslate-marker"])
            };
            assert_eq!(Value::Array(named), expected, "{}: only the marker (and the trigger record)", name(role));
        }
    }
    // Only what src/kube.rs sends: the Job GETs and PUTs the marker, the gate GETs and watches it.
    let job_role = find(&docs, "Role", "shop-cleanslate-purge");
    assert_eq!(job_role["rules"][0]["verbs"], json!(["get", "update"]), "Job: no create, patch or delete");
    let gate_role = find(&docs, "Role", "shop-cleanslate-gate");
    assert_eq!(gate_role["rules"][0]["verbs"], json!(["list", "watch"]), "gate: read-only, by name");
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
            ["post-install", "pre-upgrade", "post-delete"],
            "{kind_} on every event of the Job, and post-delete (an uninstall deletes what a failed Helm 3 event left)"
        );
        assert_eq!(
            annotation(doc, "helm.sh/hook-delete-policy"),
            Some("before-hook-creation,hook-succeeded"),
            "{kind_}: exists only while the Job's hooks run"
        );
    }
    let marker = find(&docs, "ConfigMap", "shop-cleanslate-marker");
    assert!(hook_weight(marker) < job_weight, "marker reset before the Job");
    assert_eq!(
        hook_events(marker),
        ["pre-install", "pre-upgrade"],
        "reset before any release resource, not by helm test"
    );
    let test = find(&docs, "Pod", "shop-cleanslate-test-purge");
    assert_eq!(hook_events(test), ["test"], "test hook");
    let tests: Vec<String> = hooks_for(&docs, "test").iter().map(|d| format!("{} {}", kind(d), name(d))).collect();
    assert_eq!(
        tests,
        ["Pod shop-cleanslate-test-purge"],
        "Helm lists every test-hook resource as a test: only the Pod"
    );
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

/// Renders tests/fixtures/parent-chart (cleanslate as a dependency, under `alias` when given) with
/// `helm dependency update` and `helm template`; returns the manifest text.
fn render_parent(alias: Option<&str>) -> String {
    render_parent_with(alias, &[])
}

/// [`render_parent`] with extra `helm template` arguments.
fn render_parent_with(alias: Option<&str>, extra: &[&str]) -> String {
    let (_scratch, parent) = parent_chart(alias);
    let output = std::process::Command::new(helm())
        .args(["template", "shop"])
        .arg(&parent)
        .args(["--namespace", "dev"])
        .args(extra)
        .output()
        .expect("helm runs");
    assert!(output.status.success(), "parent renders: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Helm shows no dependency's NOTES: a parent that includes `cleanslate.notes` in its own shows
/// what cleanslate's would have said (what is purged, the Job's name, the --wait warning), also
/// under an alias; with the dependency switched off it shows nothing of it.
#[test]
fn a_parent_shows_cleanslates_notes() {
    let helm4 = if helm_major() >= 4 { helm() } else { repo_root().join(".tools/bin/helm") };
    for alias in [None, Some("cleanup")] {
        let (_scratch, parent) = parent_chart(alias);
        let notes = |extra: &[&str]| {
            let output = std::process::Command::new(&helm4)
                .args(["install", "shop"])
                .arg(&parent)
                .args(["--dry-run=client", "-n", "dev"])
                .args(extra)
                .output()
                .expect("helm runs");
            assert!(output.status.success(), "{alias:?}: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8_lossy(&output.stdout).split("NOTES:").nth(1).unwrap_or_default().to_string()
        };
        let on = notes(&[]);
        assert!(on.contains("shop is deployed."), "the parent's own notes: {on}");
        assert!(
            on.contains("cleanslate is ON for shop")
                && on.contains("purges RabbitMQ queues shop-orders, shop-orders-dlq")
                && on.contains("WARNING: the Job runs post-install"),
            "{alias:?}: cleanslate's notes in the parent's: {on}"
        );
        let docs = parse_documents(&render_parent(alias));
        let job = docs.iter().find(|d| kind(d) == "Job" && name(d).ends_with("-purge")).expect("the subchart's Job");
        assert!(on.contains(&format!("logs job/{}", name(job))), "{alias:?}: names the Job the subchart renders: {on}");
        let key = alias.unwrap_or("cleanslate");
        let off = notes(&["--set", &format!("{key}.enabled=false")]);
        assert!(!off.contains("cleanslate is"), "{alias:?}: switched off, nothing of it: {off}");
    }
}

/// A parent chart with cleanslate as a dependency (also under an alias) includes the gate; the gate
/// runs cleanslate's own image (not the parent's appVersion), names the marker the subchart renders,
/// the parent gets no demo apps, and the manifests validate against the Kubernetes schemas.
#[test]
fn parent_chart_includes_the_gate() {
    for alias in [None, Some("cleanup")] {
        let text = render_parent(alias);
        let docs = parse_documents(&text);
        let api = find(&docs, "Deployment", "shop-api");
        let gate = &pod_spec(api)["initContainers"][0];
        assert_eq!(gate["name"], json!("cleanslate-gate"), "gate included ({alias:?})");
        assert_eq!(
            gate["image"],
            json!("ghcr.io/cleanslate/cleanslate:0.1.0"),
            "cleanslate's own version, not the parent's 1.0.0 ({alias:?})"
        );
        let marker_env = gate["env"].as_array().unwrap().iter().find(|e| e["name"] == "CLEANSLATE_MARKER").unwrap();
        let marker = find(&docs, "ConfigMap", "shop-cleanslate-marker");
        assert_eq!(marker_env["value"], json!(name(marker)), "the gate waits for the subchart's marker ({alias:?})");
        let binding = find(&docs, "RoleBinding", "shop-cleanslate-gate");
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "shop-api", "namespace": "dev"}]),
            "gate Role bound to the parent's ServiceAccount ({alias:?})"
        );
        let deployments: Vec<&str> = docs.iter().filter(|d| kind(d) == "Deployment").map(name).collect();
        assert_eq!(deployments, ["shop-api"], "only the parent's own Deployment, no demo apps ({alias:?})");
        let job = find(&docs, "Job", "shop-cleanslate-purge");
        assert_eq!(pod_spec(job)["containers"][0]["image"], gate["image"], "Job and gate run the same image");
        assert_eq!(
            env_value(&pod_spec(job)["containers"][0], "CLEANSLATE_QUIESCE"),
            None,
            "no list: not the demo apps it does not render, and `helm template` looks nothing up ({alias:?})"
        );
        assert_eq!(
            env_value(&pod_spec(job)["containers"][0], "CLEANSLATE_QUIESCE_GATED").as_deref(),
            Some("true"),
            "the Job stops the live workloads gated on the marker ({alias:?})"
        );
        let role = find(&docs, "Role", "shop-cleanslate-purge");
        assert!(
            !role.to_string().contains("shop-producer") && !role.to_string().contains("shop-consumer"),
            "no rights on demo apps that do not exist ({alias:?}): {role}"
        );

        let scratch = tempfile::tempdir().expect("tempdir");
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
}

/// A values file holding a CI build number (YAML reads it as a float) renders an integer revision
/// in the Job, the test Pod and every gate, not `2.0261122e+07`.
#[test]
fn large_revisions_render_as_integers() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let values = scratch.path().join("ci.yaml");
    std::fs::write(&values, "cleanup:\n  revision: 20261122\n").unwrap();
    let docs = dev(&["-f", values.to_str().unwrap()]);
    let mut seen = 0;
    for doc in &docs {
        let Some(spec) = support::pss::pod_spec_of(doc) else { continue };
        for container in spec["initContainers"].as_array().into_iter().chain(spec["containers"].as_array()).flatten() {
            for var in container["env"].as_array().into_iter().flatten() {
                if var["name"] == "CLEANSLATE_REVISION" {
                    assert_eq!(var["value"], json!("20261122"), "{} {}", kind(doc), name(doc));
                    seen += 1;
                }
            }
        }
    }
    assert_eq!(seen, 4, "Job, test Pod and two gates carry the revision");
}

/// The production guard is a token match: any token prod, prd or production, in any case, is
/// refused unless allowProduction; names that merely contain the letters are not.
#[test]
fn production_guard_matches_tokens() {
    for environment in ["prod", "PROD", "prd", "production-eu", "eu-prod", "eu_Prd_2", "Production", "prod2", "prd01"] {
        let set = format!("cleanup.environment={environment}");
        let err = try_render("shop", "dev", &["--set", "cleanup.enabled=true", "-f", TARGETS, "--set", &set])
            .expect_err(&format!("{environment} refused"));
        assert!(err.contains("allowProduction") && err.contains(environment), "{environment}: {err}");
        assert!(
            try_render(
                "shop",
                "dev",
                &[
                    "--set",
                    "cleanup.enabled=true",
                    "-f",
                    TARGETS,
                    "--set",
                    &set,
                    "--set",
                    "cleanup.allowProduction=true"
                ]
            )
            .is_ok(),
            "{environment} allowed with allowProduction"
        );
    }
    for environment in ["dev", "staging", "preprod", "product-demo", "reproduction"] {
        let set = format!("cleanup.environment={environment}");
        assert!(
            try_render("shop", "dev", &["--set", "cleanup.enabled=true", "-f", TARGETS, "--set", &set]).is_ok(),
            "{environment} renders"
        );
    }
}

fn job_deadline(docs: &[Value]) -> i64 {
    find(docs, "Job", "shop-cleanslate-purge")["spec"]["activeDeadlineSeconds"].as_i64().expect("an integer deadline")
}

/// activeDeadlineSeconds holds every attempt: derived from backoffLimit, timeout, the marker budget
/// and the Job's back-off when unset; a set value that is too short fails the render, naming it.
#[test]
fn active_deadline_fits_every_attempt() {
    // values-dev and values-staging: 2 attempts × (30 s + 15 s marker + 40 s quiesce + 30 s start) +
    // 10 s back-off, inside Helm's and Flux's default 5 minutes with room for the resume hook.
    for file in ["values-dev.yaml", "values-staging.yaml"] {
        let path = values_file(file);
        let docs = render("shop", "dev", &["-f", &path]);
        assert_eq!(job_deadline(&docs), 240, "{file}: the purge Job's deadline");
        let resume = find(&docs, "Job", "shop-cleanslate-resume");
        let resume_deadline = resume["spec"]["activeDeadlineSeconds"].as_i64().unwrap();
        assert_eq!(resume_deadline, 130, "{file}: the resume Job's own: 2 × (30 s + 30 s) + 10 s");
        assert!(job_deadline(&docs) + 60 <= 300, "{file}: a minute left of Helm's 5 for the resume hook");
    }
    assert_eq!(
        job_deadline(&dev(&["--set", "cleanup.quiesce.enabled=false"])),
        160,
        "2 × (30 + 15 + 30) + 10 without quiesce"
    );
    assert_eq!(
        job_deadline(&render("shop", "dev", &["--set", "cleanup.enabled=true", "-f", TARGETS])),
        255,
        "the chart's defaults: 3 × (30 + 15 + 30) + 10 + 20"
    );
    // 2 attempts × (120 + 45) + 10.
    assert_eq!(
        job_deadline(&dev(&[
            "--set",
            "cleanup.quiesce.enabled=false",
            "--set",
            "cleanup.timeout=2m",
            "--set",
            "cleanup.hook.backoffLimit=1"
        ])),
        340
    );
    // 1 attempt of 90.5 s rounded up: 91 + 45.
    assert_eq!(
        job_deadline(&dev(&[
            "--set",
            "cleanup.quiesce.enabled=false",
            "--set",
            "cleanup.timeout=1m30s500ms",
            "--set",
            "cleanup.hook.backoffLimit=0"
        ])),
        136
    );
    let test_pod = find(&dev(&[]), "Pod", "shop-cleanslate-test-purge").clone();
    assert_eq!(test_pod["spec"]["activeDeadlineSeconds"], json!(115), "the test Pod is one attempt, quiesce included");
    let err = try_render(
        "shop",
        "dev",
        &["--set", "cleanup.enabled=true", "-f", TARGETS, "--set", "cleanup.hook.activeDeadlineSeconds=120"],
    )
    .expect_err("120 s cannot hold three attempts");
    assert!(err.contains("activeDeadlineSeconds 120") && err.contains("at least 255"), "says what is needed: {err}");
    assert_eq!(
        job_deadline(&dev(&["--set", "cleanup.hook.activeDeadlineSeconds=400"])),
        400,
        "a long enough value is kept"
    );
}

/// A native sidecar (an init container with `restartPolicy: Always`) before the gate needs
/// Kubernetes 1.29: before that the field is dropped, the sidecar never exits, and the gate and the
/// pod wait in Init for good (https://kubernetes.io/docs/concepts/workloads/pods/sidecar-containers/).
/// The render refuses it there, naming the app and the container, and keeps it from 1.29 on.
#[test]
fn a_native_sidecar_needs_kubernetes_1_29() {
    let sidecar = r#"apps.producer.initContainers=[{"name":"proxy","image":"envoy","restartPolicy":"Always"}]"#;
    let file = values_file("values-dev.yaml");
    let err = try_render("shop", "dev", &["-f", &file, "--set-json", sidecar, "--kube-version", "1.28.3"])
        .expect_err("1.28 has no native sidecars");
    assert!(
        err.contains("apps.producer.initContainers: proxy has restartPolicy Always") && err.contains("1.29"),
        "names the app, the container and the version needed: {err}"
    );
    let docs = render("shop", "dev", &["-f", &file, "--set-json", sidecar, "--kube-version", "1.29.0"]);
    let producer = find(&docs, "Deployment", "shop-producer");
    let init = &pod_spec(producer)["initContainers"];
    assert_eq!(init[0]["name"], json!("proxy"), "the sidecar first");
    assert_eq!(init[1]["name"], json!("cleanslate-gate"), "the gate after it");
}

/// Queue names, the pattern, the vhost, prefixes and protected prefixes are templates, so one values
/// file serves every namespace.
#[test]
fn selection_values_are_templates() {
    let docs = render(
        "shop",
        "pr-42",
        &[
            "-f",
            &values_file("values-dev.yaml"),
            "--set-json",
            r#"cleanup.rabbitmq.queues=["{{ .Release.Namespace }}.events","{{ .Release.Name }}-dlq"]"#,
            "--set-json",
            r#"cleanup.rabbitmq.queuePattern="{{ .Release.Namespace }}\\.work\\..*""#,
            "--set-json",
            r#"cleanup.rabbitmq.vhost="{{ .Release.Namespace }}""#,
            "--set-json",
            r#"cleanup.etcd.prefixes=["{{ .Release.Namespace }}/","shared/{{ .Release.Namespace }}/"]"#,
            "--set-json",
            r#"cleanup.etcd.protectedPrefixes=["{{ .Release.Namespace }}/locks/"]"#,
        ],
    );
    let job = find(&docs, "Job", "shop-cleanslate-purge");
    let env: std::collections::BTreeMap<&str, &str> = pod_spec(job)["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert_eq!(env["CLEANSLATE_RABBITMQ_QUEUES"], "pr-42.events,shop-dlq", "queues");
    assert_eq!(env["CLEANSLATE_RABBITMQ_QUEUE_PATTERN"], "pr-42\\.work\\..*", "pattern");
    assert_eq!(env["CLEANSLATE_RABBITMQ_VHOST"], "pr-42", "vhost");
    assert_eq!(env["CLEANSLATE_ETCD_PREFIXES"], "pr-42/,shared/pr-42/", "prefixes");
    assert_eq!(env["CLEANSLATE_ETCD_PROTECTED_PREFIXES"], "pr-42/locks/", "protected prefixes");
}

fn annotation<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    doc["metadata"]["annotations"][key].as_str()
}

/// Every hook resource that runs on a Job event carries Argo CD's own annotations: exactly one
/// phase, a sync wave equal to its Helm weight, and the same delete policies; the test Pod carries
/// none (Argo CD does not run Helm tests). The phase follows the events, or the override.
#[test]
fn argo_cd_runs_each_hook_once_in_one_phase() {
    for (args, phase) in [
        (vec![], "PreSync"),
        // Post-only events run in Sync, beside the manifests: PostSync would wait for the gated apps.
        (vec!["--set-json", r#"cleanup.hook.events=["post-install","post-upgrade"]"#], "Sync"),
        (vec!["--set-json", r#"cleanup.hook.events=["pre-install","pre-upgrade"]"#], "PreSync"),
        (vec!["--set", "cleanup.hook.argocdPhase=Sync"], "Sync"),
    ] {
        let docs = dev(&args);
        let hooks: Vec<&Value> = docs.iter().filter(|d| !hook_events(d).is_empty()).collect();
        assert!(hooks.len() >= 6, "RBAC, Secret, marker, Job and test Pod are hooks");
        for hook in hooks {
            let what = format!("{} {} ({args:?})", kind(hook), name(hook));
            if hook_events(hook) == ["test"] {
                // Argo CD ignores helm.sh/hook once Argo CD hooks are present: Skip keeps it from
                // applying the test Pod (and purging) on every sync.
                assert_eq!(annotation(hook, "argocd.argoproj.io/hook"), Some("Skip"), "{what}: not run by Argo CD");
                continue;
            }
            // The resume Job and its RBAC run after the new pods are healthy, whatever the purge's phase.
            // The marker is reset before the sync, whatever the purge's phase.
            let expected = match name(hook) {
                // After a healthy sync, and after a failed one (a sync that fails after the purge
                // stopped HPA-managed apps would leave them at 0: Argo CD skips PostSync then).
                n if n.ends_with("-resume") => "PostSync,SyncFail",
                n if n.ends_with("-marker") => "PreSync",
                _ => phase,
            };
            assert_eq!(annotation(hook, "argocd.argoproj.io/hook"), Some(expected), "{what}: one phase");
            assert_eq!(
                annotation(hook, "argocd.argoproj.io/sync-wave"),
                Some(hook_weight(hook).to_string().as_str()),
                "{what}: wave = weight"
            );
            let helm_policy = annotation(hook, "helm.sh/hook-delete-policy").expect("policy");
            let argo_policy = annotation(hook, "argocd.argoproj.io/hook-delete-policy").expect("Argo CD policy");
            let mapped: Vec<String> = helm_policy
                .split(',')
                .map(|p| match p {
                    "before-hook-creation" => "BeforeHookCreation".to_string(),
                    "hook-succeeded" => "HookSucceeded".to_string(),
                    "hook-failed" => "HookFailed".to_string(),
                    other => panic!("{what}: unknown policy {other}"),
                })
                .collect();
            assert_eq!(argo_policy, mapped.join(","), "{what}: same delete policy");
        }
        let job = find(&docs, "Job", "shop-cleanslate-purge");
        let waves: Vec<i64> = hooks_for(&docs, &hook_events(job)[0])
            .iter()
            .filter(|d| !name(d).ends_with("-resume"))
            .map(|d| annotation(d, "argocd.argoproj.io/sync-wave").unwrap().parse().unwrap())
            .collect();
        assert!(
            waves.is_sorted() && waves.last() == Some(&0),
            "RBAC and marker in earlier waves than the Job: {waves:?}"
        );
    }
}

/// The gate's RoleBinding names every ServiceAccount a gated pod runs as: apps with their own,
/// the gate's own, and `default` when the chart creates none and none is named.
#[test]
fn gate_binding_names_what_gated_pods_run_as() {
    let cases: [(Vec<&str>, Vec<&str>); 3] = [
        (vec![], vec!["shop-cleanslate-gate"]),
        (vec!["--set", "apps.producer.serviceAccountName=producer-sa"], vec!["shop-cleanslate-gate", "producer-sa"]),
        (vec!["--set", "gate.serviceAccount.create=false"], vec!["default"]),
    ];
    for (args, expected) in cases {
        let docs = dev(&args);
        let binding = find(&docs, "RoleBinding", "shop-cleanslate-gate");
        let subjects: Vec<&str> =
            binding["subjects"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(subjects, expected, "subjects ({args:?})");
        for deployment in docs.iter().filter(|d| kind(d) == "Deployment") {
            let runs_as = pod_spec(deployment)["serviceAccountName"].as_str().unwrap_or("default");
            assert!(subjects.contains(&runs_as), "{} runs as {runs_as}, which is bound ({args:?})", name(deployment));
        }
        let created: Vec<&str> = docs.iter().filter(|d| kind(d) == "ServiceAccount").map(name).collect();
        assert_eq!(
            created.contains(&"shop-cleanslate-gate"),
            expected.contains(&"shop-cleanslate-gate"),
            "the gate ServiceAccount exists exactly when pods use it ({args:?})"
        );
    }
}

/// The restricted checker itself flags what it must (so a clean result means something).
#[test]
fn restricted_checker_flags_violations() {
    let clean = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
    });
    assert!(support::pss::restricted_violations(&clean).is_empty(), "a restricted pod passes");
    let breaks = [
        ("/securityContext/runAsNonRoot", json!(false)),
        ("/securityContext/seccompProfile/type", json!("Unconfined")),
        ("/containers/0/securityContext/allowPrivilegeEscalation", json!(true)),
        ("/containers/0/securityContext/capabilities/drop", json!(["NET_RAW"])),
        ("/containers/0/securityContext/privileged", json!(true)),
        ("/containers/0/securityContext/runAsUser", json!(0)),
        ("/hostNetwork", json!(true)),
    ];
    for (pointer, value) in breaks {
        let mut pod = clean.clone();
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        pod.pointer_mut(parent).unwrap()[field] = value;
        assert!(!support::pss::restricted_violations(&pod).is_empty(), "{pointer} flagged");
    }
    let mut no_pod_level = clean.clone();
    no_pod_level["securityContext"] = json!({});
    let violations = support::pss::restricted_violations(&no_pod_level);
    assert_eq!(violations.len(), 2, "runAsNonRoot and seccomp missing everywhere: {violations:?}");
}

/// Every cleanslate container (the purge Job, the resume Job, the test Pod, the gates) ends with a
/// termination message the kubelet can read: the path the binary is told is the container's
/// `terminationMessagePath`, and the log's tail stands in when the binary could not write it.
#[test]
fn cleanslate_containers_leave_a_termination_message() {
    let docs = dev(&[]);
    let mut seen = 0;
    for doc in docs.iter().filter(|d| matches!(kind(d), "Job" | "Pod" | "Deployment" | "StatefulSet")) {
        let spec = pod_spec(doc);
        let containers = spec["containers"].as_array().into_iter().chain(spec["initContainers"].as_array()).flatten();
        for container in containers.filter(|c| {
            c["args"].as_array().is_some_and(|a| !a.is_empty())
                && c["image"].as_str().unwrap_or("").contains("cleanslate")
        }) {
            let what = format!("{} {}/{}", kind(doc), name(doc), container["name"]);
            assert_eq!(container["terminationMessagePolicy"], json!("FallbackToLogsOnError"), "{what}");
            assert_eq!(container["terminationMessagePath"], json!("/dev/termination-log"), "{what}");
            assert_eq!(
                env_value(container, "CLEANSLATE_TERMINATION_MESSAGE_PATH").as_deref(),
                Some("/dev/termination-log"),
                "{what}: the binary writes where the kubelet reads"
            );
            seen += 1;
        }
    }
    assert!(seen >= 5, "purge Job, resume Job, test Pod and the gates of both apps: {seen}");
}

/// Every pod the chart renders (any Job, Pod, Deployment or StatefulSet, for every values file, with
/// cleanup as the file says and switched on) is admitted under Pod Security "restricted".
#[test]
fn every_rendered_pod_is_restricted() {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("chart"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.starts_with("values") && f.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "values files found: {files:?}");
    let mut pods = 0;
    for file in &files {
        let path = values_file(file);
        for extra in
            [vec![], vec!["--set", "cleanup.enabled=true", "-f", TARGETS, "--set", "cleanup.allowProduction=true"]]
        {
            let mut args = vec!["-f", path.as_str()];
            args.extend(extra.iter().copied());
            for doc in render("shop", "dev", &args) {
                if let Some(spec) = support::pss::pod_spec_of(&doc) {
                    pods += 1;
                    let violations = support::pss::restricted_violations(spec);
                    assert!(violations.is_empty(), "{file} {args:?}: {} {}: {violations:?}", kind(&doc), name(&doc));
                }
            }
        }
    }
    assert!(pods >= 20, "the Job, test Pod and apps were checked: {pods}");
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
    let rule = |resource: &str, names: &[&str], verbs: &[&str]| json!({"apiGroups": ["apps"], "resources": [resource], "resourceNames": names, "verbs": verbs});
    let deployments = [
        rule("deployments", &["shop-producer", "api"], &["get", "patch"]),
        rule("deployments/scale", &["shop-producer", "api"], &["get", "update"]),
    ];
    let statefulsets = [
        rule("statefulsets", &["worker"], &["get", "patch"]),
        rule("statefulsets/scale", &["worker"], &["get", "update"]),
    ];
    let marker = json!({"apiGroups": [""], "resources": ["configmaps"],
                        "resourceNames": ["shop-cleanslate-marker", "shop-cleanslate-trigger"], "verbs": ["get", "update"]});
    let create_marker = json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]});
    let list_workloads =
        json!({"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["list"]});
    let own_job = json!({"apiGroups": ["batch"], "resources": ["jobs"],
                         "resourceNames": ["shop-cleanslate-purge"], "verbs": ["get"]});
    let events = json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]});
    let pods = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]});
    let pod_deletes = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]});
    // helm test's Role: the purge's rights without the Job's.
    let test_rules: Vec<Value> = [marker, create_marker, events.clone(), list_workloads]
        .into_iter()
        .chain(deployments)
        .chain(statefulsets)
        .chain([pods, pod_deletes])
        .collect();
    let purge_rules: Vec<Value> = test_rules.iter().cloned().chain([own_job]).collect();
    assert_eq!(
        find(&docs, "Role", "shop-cleanslate-purge")["rules"],
        json!(purge_rules),
        "purge Role: the marker, exactly the named workloads and their scale, pods to watch, and (with a \
         StatefulSet) to delete"
    );
    assert_eq!(
        find(&docs, "Role", "shop-cleanslate-test")["rules"],
        json!(test_rules),
        "helm test's Role: the purge's rights without the Job's"
    );
    let without_statefulsets = dev(&[]);
    let rules = find(&without_statefulsets, "Role", "shop-cleanslate-purge")["rules"].clone();
    assert!(!rules.to_string().contains("delete"), "no pod deletes without a StatefulSet: {rules}");
    assert_eq!(
        find(&docs, "Role", "shop-cleanslate-resume")["rules"],
        json!([
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["list", "get", "patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments/scale", "statefulsets/scale"], "verbs": ["get", "update"]},
            events
        ]),
        "resume Role: the namespace's workloads and their scale (a rollback runs an older revision's hooks), nothing else"
    );
    let job = find(&docs, "Job", "shop-cleanslate-purge");
    let container = &pod_spec(job)["containers"][0];
    assert_eq!(
        env_value(container, "CLEANSLATE_QUIESCE").as_deref(),
        Some("deployment/shop-producer,deployment/api,statefulset/worker"),
        "the gated apps (not the ungated consumer) and the listed workloads"
    );
    assert_eq!(env_value(container, "CLEANSLATE_QUIESCE_TIMEOUT").as_deref(), Some("40s"), "values-dev's timeout");
    assert_eq!(
        env_value(container, "CLEANSLATE_QUIESCE_RESUME"),
        None,
        "the hook Job leaves resuming to the resume Job"
    );
    let test_pod = &pod_spec(find(&docs, "Pod", "shop-cleanslate-test-purge"))["containers"][0];
    assert_eq!(env_value(test_pod, "CLEANSLATE_QUIESCE_RESUME").as_deref(), Some("true"), "helm test resumes itself");
}

/// The resume Job: after upgrade and rollback, and after install only when workloads outside the
/// chart are quiesced (the chart's gated apps have run nothing on install and are not stopped);
/// after the purge Job and its own RBAC, keeps its last run, hardened like the purge Job; quiesce
/// is off unless turned on (values.yaml, prod).
#[test]
fn resume_job_hooks_and_defaults() {
    let docs = dev(&["--set", "cleanup.quiesce.enabled=false"]);
    let purge = find(&docs, "Job", "shop-cleanslate-purge");
    let resume = find(&docs, "Job", "shop-cleanslate-resume");
    assert_eq!(
        hook_events(resume),
        ["post-upgrade", "post-rollback"],
        "after every upgrade and rollback, with quiesce off too: a rollback runs this revision's hooks, and a \
         newer revision may have stopped workloads"
    );
    for doc in docs.iter().filter(|d| name(d) == "shop-cleanslate-resume" && kind(d) != "Job") {
        assert_eq!(
            hook_events(doc),
            ["post-upgrade", "post-rollback", "post-delete"],
            "{} {}: the Job's events, and the uninstall's",
            kind(doc),
            name(doc)
        );
    }
    let quiescing = dev(&[]);
    assert_eq!(
        hook_events(find(&quiescing, "Job", "shop-cleanslate-resume")),
        ["post-install", "post-upgrade", "post-rollback"],
        "with quiesce on, after the install too (a native sidecar or a workload outside the chart may have run)"
    );
    assert!(hook_weight(resume) > hook_weight(purge), "after the purge Job on post-install");
    assert_eq!(
        resume["metadata"]["annotations"]["helm.sh/hook-delete-policy"],
        json!("before-hook-creation"),
        "keeps its last run until the next deploy"
    );
    for kind_ in ["ServiceAccount", "Role", "RoleBinding"] {
        let doc = find(&docs, kind_, "shop-cleanslate-resume");
        assert_eq!(
            hook_events(doc),
            ["post-upgrade", "post-rollback", "post-delete"],
            "{kind_} on the resume Job's events"
        );
        assert_eq!(
            annotation(doc, "helm.sh/hook-delete-policy"),
            Some("before-hook-creation,hook-succeeded"),
            "{kind_}: exists only while the resume hooks run"
        );
        assert!(hook_weight(doc) < hook_weight(resume), "{kind_} before the resume Job");
        assert!(hook_weight(doc) > hook_weight(purge), "{kind_} after the purge Job (post-install order)");
    }
    assert_eq!(pod_spec(resume)["serviceAccountName"], json!("shop-cleanslate-resume"), "its own identity");
    assert_eq!(pod_spec(resume)["securityContext"], pod_spec(purge)["securityContext"], "same pod security context");
    let container = &pod_spec(resume)["containers"][0];
    assert_eq!(container["args"], json!(["resume"]), "runs cleanslate resume");
    assert_hardened(container, "resume Job");
    let quiescing_container = &pod_spec(find(&quiescing, "Job", "shop-cleanslate-resume"))["containers"][0];
    assert_eq!(
        env_value(quiescing_container, "CLEANSLATE_QUIESCE").as_deref(),
        Some("deployment/shop-consumer,deployment/shop-producer"),
        "resumes what the purge stops"
    );
    assert_eq!(
        env_value(container, "CLEANSLATE_MARKER").as_deref(),
        Some("shop-cleanslate-marker"),
        "and whatever its quiesce record names this marker for"
    );
    let staging = render("shop", "staging", &["-f", &values_file("values-staging.yaml")]);
    assert!(staging.iter().any(|d| name(d) == "shop-cleanslate-resume"), "on in staging");
    let plain = render("shop", "dev", &["--set", "cleanup.enabled=true", "-f", TARGETS]);
    assert!(plain.iter().any(|d| name(d).ends_with("-resume")), "whenever cleanup is on (rollbacks)");
    let job = &pod_spec(find(&plain, "Job", "shop-cleanslate-purge"))["containers"][0];
    assert_eq!(env_value(job, "CLEANSLATE_QUIESCE"), None, "no quiesce without cleanup.quiesce.enabled");
    let err = try_render("shop", "dev", &["--set-json", r#"cleanup.quiesce.workloads=["daemonset/agent"]"#])
        .expect_err("only Deployments and StatefulSets");
    // Helm 4 quotes the value; Helm 3 names the entry by its position.
    assert!(err.contains("daemonset/agent") || err.contains("cleanup.quiesce.workloads.0"), "names the entry: {err}");
}

/// Whole-number image tags from a values file render as integers (Helm reads them as floats), and a
/// fractional one (`1.10`, read as 1.1) is refused by the schema instead of pulling the wrong tag.
#[test]
fn numeric_image_tags_render_as_written() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let values = scratch.path().join("tags.yaml");
    std::fs::write(&values, "image:\n  tag: 20261122\napps:\n  producer:\n    image:\n      tag: 42\n").unwrap();
    let docs = dev(&["-f", values.to_str().unwrap()]);
    let job = find(&docs, "Job", "shop-cleanslate-purge");
    assert_eq!(pod_spec(job)["containers"][0]["image"], json!("ghcr.io/cleanslate/cleanslate:20261122"), "image tag");
    let producer = find(&docs, "Deployment", "shop-producer");
    let app = pod_spec(producer)["containers"][0]["image"].as_str().unwrap();
    assert!(app.ends_with(":42"), "app tag: {app}");
    std::fs::write(&values, "image:\n  tag: 1.10\n").unwrap();
    let err = try_render("shop", "dev", &["-f", values.to_str().unwrap()]).expect_err("1.10 is ambiguous");
    // Helm 4 writes `/image/tag`, Helm 3 `image.tag`.
    assert!(err.contains("/image/tag") || err.contains("image.tag"), "the schema names the value: {err}");
}

/// `cleanup.rabbitmq.deadLetters` takes the binary's modes: `report` (the default), a boolean,
/// `exact` or `reachable` (the opt-ins that purge discovered queues), and nothing else.
#[test]
fn dead_letter_modes_reach_the_job() {
    let job_mode = |docs: &[Value]| {
        let env =
            pod_spec(find(docs, "Job", "shop-cleanslate-purge"))["containers"][0]["env"].as_array().unwrap().clone();
        env.iter().find(|e| e["name"] == "CLEANSLATE_RABBITMQ_DEAD_LETTERS").expect("set")["value"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(job_mode(&dev(&[])).as_deref(), Some("report"), "reported, not purged, by default");
    for (value, expected) in
        [("true", "true"), ("false", "false"), ("reachable", "reachable"), ("exact", "exact"), ("report", "report")]
    {
        let docs = dev(&["--set", &format!("cleanup.rabbitmq.deadLetters={value}")]);
        let job = find(&docs, "Job", "shop-cleanslate-purge");
        let env = pod_spec(job)["containers"][0]["env"].as_array().unwrap();
        let mode = env.iter().find(|e| e["name"] == "CLEANSLATE_RABBITMQ_DEAD_LETTERS").expect("set");
        assert_eq!(mode["value"].as_str(), Some(expected), "{value}");
    }
    let err = try_render(
        "shop",
        "dev",
        &["-f", &values_file("values-dev.yaml"), "--set", "cleanup.rabbitmq.deadLetters=all"],
    )
    .expect_err("unknown mode rejected");
    assert!(err.contains("deadLetters"), "names the key: {err}");
}

/// Every rendered name fits its limit for the longest release name Helm accepts (53 characters):
/// 63 for anything that becomes a label value or a DNS label (a Job's name becomes its pods'
/// `job-name` label, so the API server refuses a longer one). Names stay distinct per kind, and
/// the names the binary is given (marker, quiesced workloads) are the rendered ones.
#[test]
fn names_fit_for_the_longest_release_name() {
    let release = "feature-jira-12345-make-the-checkout-faster-for-users";
    assert_eq!(release.len(), 53, "Helm's limit");
    for values in ["values-dev.yaml", "values-staging.yaml"] {
        let docs = render(release, "dev", &["-f", &values_file(values)]);
        let mut seen = std::collections::BTreeSet::new();
        for doc in &docs {
            let name = name(doc);
            assert!(name.len() <= 63, "{values}: {} {name} is {} characters", kind(doc), name.len());
            assert!(seen.insert((kind(doc).to_string(), name.to_string())), "{values}: {} {name} twice", kind(doc));
            for labels in [&doc["metadata"]["labels"], &doc["spec"]["template"]["metadata"]["labels"]] {
                for (key, value) in labels.as_object().into_iter().flatten() {
                    let value = value.as_str().unwrap_or_default();
                    assert!(value.len() <= 63, "{values}: {name}: label {key}={value} is too long");
                }
            }
        }
        let marker = docs.iter().find(|d| kind(d) == "ConfigMap" && name(d).ends_with("-marker")).expect("marker");
        let job = docs.iter().find(|d| kind(d) == "Job" && name(d).ends_with("-purge")).expect("purge Job");
        let env = pod_spec(job)["containers"][0]["env"].as_array().unwrap();
        let value = |variable: &str| env.iter().find(|e| e["name"] == variable).and_then(|e| e["value"].as_str());
        assert_eq!(value("CLEANSLATE_MARKER"), Some(name(marker)), "{values}: the Job writes the rendered marker");
        for workload in value("CLEANSLATE_QUIESCE").unwrap_or_default().split(',').filter(|w| !w.is_empty()) {
            let deployment = workload.strip_prefix("deployment/").expect("deployments");
            assert!(
                docs.iter().any(|d| kind(d) == "Deployment" && name(d) == deployment),
                "{values}: quiesced {deployment} is rendered"
            );
        }
    }
}

/// NOTES.txt warns about Helm's wait for `post-upgrade` exactly as for `post-install`: a gated pod
/// never becomes ready before a post-* Job, so `--wait` deadlocks either way.
#[test]
fn notes_warn_about_waiting_on_post_hooks() {
    // Helm 3's `install --dry-run` asks a cluster for its version; NOTES.txt renders the same in
    // both majors, so this reads it with Helm 4 (hack/setup.sh installs both).
    let helm4 = if helm_major() >= 4 { helm() } else { repo_root().join(".tools/bin/helm") };
    let notes = |events: &str| {
        let output = std::process::Command::new(&helm4)
            .args(["install", "shop", repo_root().join("chart").to_str().unwrap(), "--dry-run=client", "-n", "dev"])
            .args(["-f", &values_file("values-dev.yaml"), "--set", &format!("cleanup.hook.events={{{events}}}")])
            .output()
            .expect("helm runs");
        assert!(output.status.success(), "{events}: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.split("NOTES:").nth(1).unwrap_or_default().to_string()
    };
    let upgrade = notes("pre-install,post-upgrade");
    assert!(upgrade.contains("WARNING: the Job runs post-upgrade") && upgrade.contains("--wait"), "{upgrade}");
    let both = notes("post-install,post-upgrade");
    assert!(both.contains("runs post-install and post-upgrade. Do not install or upgrade with --wait"), "{both}");
    assert!(!notes("pre-install,pre-upgrade").contains("WARNING: the Job runs"), "no warning for pre-* hooks");
}

/// A list entry that renders empty (`protectedPrefixes: ["{{ .Values.locksPrefix }}"]` with the
/// value unset) fails the render naming the key: dropped, it would protect nothing.
#[test]
fn entries_that_render_empty_are_refused() {
    for (key, value) in [
        ("cleanup.etcd.protectedPrefixes", "{{ .Values.nothing }}"),
        ("cleanup.etcd.prefixes", " "),
        ("cleanup.rabbitmq.queues", "{{ .Release.Namespace | trimPrefix .Release.Namespace }}"),
    ] {
        let err = try_render(
            "shop",
            "dev",
            &["-f", &values_file("values-dev.yaml"), "--set-json", &format!("{key}=[{value:?}]")],
        )
        .expect_err("an empty entry is refused");
        assert!(err.contains(key) && err.contains("renders empty"), "{key}: names the key and why: {err}");
    }
    let err = try_render(
        "shop",
        "dev",
        &["-f", &values_file("values-dev.yaml"), "--set-json", r#"cleanup.rabbitmq.vhost="{{ .Values.nothing }}""#],
    )
    .expect_err("an empty vhost is refused");
    assert!(err.contains("cleanup.rabbitmq.vhost renders empty"), "the vhost: names it: {err}");
}

/// The umbrella-chart convention: a parent's `condition: cleanslate.enabled` (and under an alias,
/// `<alias>.enabled`) switches the dependency off and on; the strict schema accepts the key.
#[test]
fn a_parent_switches_the_dependency_with_its_condition() {
    for alias in [None, Some("cleanup-hooks")] {
        let key = format!("{}.enabled", alias.unwrap_or("cleanslate"));
        let on = render_parent_with(alias, &[]);
        assert!(on.contains("kind: Job"), "{key}=true: the purge Job is rendered");
        let off = render_parent_with(alias, &["--set", &format!("{key}=false")]);
        assert!(!off.contains("kind: Job") && !off.contains("cleanslate"), "{key}=false: nothing of cleanslate: {off}");
        assert!(off.contains("name: shop-api"), "{key}=false: the parent's own Deployment stays");
    }
    assert!(try_render("shop", "dev", &["--set", "enabled=true"]).is_ok(), "the chart itself accepts `enabled`");
}

/// Hook events without an install event or an upgrade event would leave every gate of that
/// deploy waiting for a Job that never runs: the render fails saying which is missing.
#[test]
fn hook_events_must_cover_install_and_upgrade() {
    for (events, missing) in [
        ("{post-install}", "no upgrade event"),
        ("{pre-install}", "no upgrade event"),
        ("{pre-upgrade}", "no install event"),
        ("{post-upgrade,pre-upgrade}", "no install event"),
    ] {
        let err = try_render(
            "shop",
            "dev",
            &["-f", &values_file("values-dev.yaml"), "--set", &format!("cleanup.hook.events={events}")],
        )
        .expect_err("refused");
        assert!(err.contains("cleanup.hook.events") && err.contains(missing), "{events}: says why: {err}");
    }
    for events in ["{post-install,pre-upgrade}", "{pre-install,pre-upgrade}", "{pre-install,post-upgrade}"] {
        assert!(
            try_render(
                "shop",
                "dev",
                &["-f", &values_file("values-dev.yaml"), "--set", &format!("cleanup.hook.events={events}")]
            )
            .is_ok(),
            "{events} renders"
        );
    }
}

/// Pod annotations, labels, node selector, tolerations, affinity and priority class reach every
/// cleanslate pod: the purge Job's, the test Pod and the resume Job's (a mesh opted out of, a
/// tainted node pool, cost labels), and the chart's own labels and hook annotations win.
#[test]
fn pod_knobs_reach_every_cleanslate_pod() {
    let docs = dev(&[
        "--set-string",
        "cleanup.podAnnotations.sidecar\\.istio\\.io/inject=false",
        "--set",
        "cleanup.podLabels.team=platform",
        "--set",
        "cleanup.podLabels.app\\.kubernetes\\.io/component=mine",
        "--set",
        "cleanup.nodeSelector.pool=ci",
        "--set-json",
        r#"cleanup.tolerations=[{"key":"pool","operator":"Equal","value":"ci","effect":"NoSchedule"}]"#,
        "--set-json",
        r#"cleanup.affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"pool","operator":"In","values":["ci"]}]}]}}}"#,
        "--set",
        "cleanup.priorityClassName=batch-low",
        "--set-json",
        "cleanup.quiesce.workloads=[\"deployment/api\"]",
    ]);
    let pods = [
        ("purge Job", &find(&docs, "Job", "shop-cleanslate-purge")["spec"]["template"]),
        ("resume Job", &find(&docs, "Job", "shop-cleanslate-resume")["spec"]["template"]),
        ("test Pod", find(&docs, "Pod", "shop-cleanslate-test-purge")),
    ];
    for (what, pod) in pods {
        let (metadata, spec) = (&pod["metadata"], &pod["spec"]);
        assert_eq!(metadata["annotations"]["sidecar.istio.io/inject"], json!("false"), "{what}: annotation");
        assert_eq!(metadata["labels"]["team"], json!("platform"), "{what}: label");
        assert_ne!(metadata["labels"]["app.kubernetes.io/component"], json!("mine"), "{what}: the chart's label wins");
        assert_eq!(spec["nodeSelector"]["pool"], json!("ci"), "{what}: node selector");
        assert_eq!(spec["tolerations"][0]["key"], json!("pool"), "{what}: toleration");
        assert!(spec["affinity"]["nodeAffinity"].is_object(), "{what}: affinity");
        assert_eq!(spec["priorityClassName"], json!("batch-low"), "{what}: priority class");
    }
    let test_pod = find(&docs, "Pod", "shop-cleanslate-test-purge");
    assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], json!("test"), "the hook annotation stays");
}

/// A refusal (77) or a configuration error (78) fails the purge and resume Jobs at once through
/// their pod failure policy (restartPolicy Never), instead of being retried backoffLimit times; the
/// rules are written so Kubernetes 1.26's schema (which requires `onPodConditions` and a condition's
/// `status`) accepts them.
#[test]
fn refusals_and_configuration_errors_are_not_retried() {
    let docs = dev(&["--set-json", "cleanup.quiesce.workloads=[\"deployment/api\"]"]);
    for (job, container) in [("shop-cleanslate-purge", "purge"), ("shop-cleanslate-resume", "resume")] {
        let spec = &find(&docs, "Job", job)["spec"];
        let disruption = &spec["podFailurePolicy"]["rules"][0];
        assert_eq!(
            disruption,
            &json!({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}),
            "{job}: an eviction or preemption does not use up a retry"
        );
        let rule = &spec["podFailurePolicy"]["rules"][1];
        assert_eq!(rule["action"], json!("FailJob"), "{job}: fails the Job");
        // Kubernetes 1.26's schema requires onPodConditions on every rule; the server refuses it
        // only non-empty beside onExitCodes. hack/lint.sh validates against 1.26 too.
        assert_eq!(rule["onPodConditions"], json!([]), "{job}: present and empty, for 1.26");
        assert_eq!(rule["onExitCodes"]["containerName"], json!(container), "{job}: its container");
        assert_eq!(rule["onExitCodes"]["operator"], json!("In"), "{job}: operator");
        assert_eq!(rule["onExitCodes"]["values"], json!([77, 78, 79, 80]), "{job}: the final exit codes");
        assert_eq!(spec["template"]["spec"]["restartPolicy"], json!("Never"), "{job}: required by the policy");
    }
}

/// No default targets: turning cleanup on without naming a queue, a prefix, the broker or etcd
/// fails the render saying what to set, rather than planning to purge example names on a shared
/// broker; values-dev.yaml carries the requirements document's example.
#[test]
fn enabling_cleanup_without_targets_is_refused() {
    for (args, says) in [
        (vec!["--set", "cleanup.enabled=true"], "cleanup.rabbitmq.url"),
        (
            vec!["--set", "cleanup.enabled=true", "--set", "cleanup.rabbitmq.url=http://mq:15672"],
            "cleanup.rabbitmq.queues",
        ),
        (
            vec![
                "--set",
                "cleanup.enabled=true",
                "--set",
                "cleanup.targets.queue=false",
                "--set",
                "cleanup.etcd.endpoints={http://etcd:2379}",
            ],
            "cleanup.etcd.prefixes",
        ),
        (vec!["--set", "cleanup.enabled=true", "--set", "cleanup.targets.queue=false"], "cleanup.etcd.endpoints"),
    ] {
        let err = try_render("shop", "dev", &args).expect_err("refused");
        assert!(err.contains(says), "{args:?}: names {says}: {err}");
    }
    let pattern_only = [
        "--set",
        "cleanup.enabled=true",
        "--set",
        "cleanup.targets.database=false",
        "--set",
        "cleanup.rabbitmq.url=http://mq:15672",
        "--set",
        "cleanup.rabbitmq.queuePattern=shop-.*",
    ];
    assert!(try_render("shop", "dev", &pattern_only).is_ok(), "a pattern alone names the queues");
    assert!(try_render("shop", "dev", &[]).is_ok(), "cleanup off needs no targets");
}

/// TLS from Secrets in cert-manager's shape: each Secret mounted read-only on the purge Job and the
/// test Pod, only the keys named, and the variables pointing at the mounted files; the client
/// certificate is optional; an https etcd without a CA is refused at render time.
#[test]
fn tls_secrets_are_mounted_and_passed() {
    let docs = dev(&[
        "--set",
        "cleanup.rabbitmq.tls.existingSecret=mq-ca",
        "--set",
        "cleanup.etcd.tls.existingSecret=etcd-client",
        "--set",
        "cleanup.etcd.tls.caKey=root.pem",
        "--set-json",
        r#"cleanup.etcd.endpoints=["https://etcd-0.etcd:2379"]"#,
    ]);
    let job = find(&docs, "Job", "shop-cleanslate-purge");
    let test = find(&docs, "Pod", "shop-cleanslate-test-purge");
    for (what, pod) in [("Job", pod_spec(job)), ("test Pod", pod_spec(test))] {
        let container = &pod["containers"][0];
        for (var, path) in [
            ("CLEANSLATE_RABBITMQ_CA_FILE", "/etc/cleanslate/rabbitmq-tls/ca.crt"),
            ("CLEANSLATE_ETCD_CA_FILE", "/etc/cleanslate/etcd-tls/root.pem"),
            ("CLEANSLATE_ETCD_CERT_FILE", "/etc/cleanslate/etcd-tls/tls.crt"),
            ("CLEANSLATE_ETCD_KEY_FILE", "/etc/cleanslate/etcd-tls/tls.key"),
        ] {
            assert_eq!(env_value(container, var).as_deref(), Some(path), "{what}: {var}");
        }
        assert_eq!(
            container["volumeMounts"],
            json!([
                {"name": "rabbitmq-tls", "mountPath": "/etc/cleanslate/rabbitmq-tls", "readOnly": true},
                {"name": "etcd-tls", "mountPath": "/etc/cleanslate/etcd-tls", "readOnly": true}
            ]),
            "{what}: read-only mounts"
        );
        assert_eq!(
            pod["volumes"],
            json!([
                {"name": "rabbitmq-tls", "secret": {"secretName": "mq-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"name": "etcd-tls", "secret": {"secretName": "etcd-client", "items": [
                    {"key": "root.pem", "path": "root.pem"},
                    {"key": "tls.crt", "path": "tls.crt"},
                    {"key": "tls.key", "path": "tls.key"}
                ]}}
            ]),
            "{what}: the Secrets' named keys"
        );
    }

    let ca_only = dev(&[
        "--set",
        "cleanup.etcd.tls.existingSecret=etcd-ca",
        "--set",
        "cleanup.etcd.tls.certKey=",
        "--set",
        "cleanup.etcd.tls.keyKey=",
    ]);
    let container = &pod_spec(find(&ca_only, "Job", "shop-cleanslate-purge"))["containers"][0];
    assert_eq!(env_value(container, "CLEANSLATE_ETCD_CA_FILE").as_deref(), Some("/etc/cleanslate/etcd-tls/ca.crt"));
    assert_eq!(env_value(container, "CLEANSLATE_ETCD_CERT_FILE"), None, "no client certificate");
    assert_eq!(env_value(container, "CLEANSLATE_RABBITMQ_CA_FILE"), None, "RabbitMQ without a Secret: system roots");

    let plain = dev(&[]);
    let job = pod_spec(find(&plain, "Job", "shop-cleanslate-purge"));
    assert!(job.get("volumes").is_none() && job["containers"][0].get("volumeMounts").is_none(), "no TLS, no mounts");

    let file = values_file("values-dev.yaml");
    for (args, says) in [
        (vec!["--set-json", r#"cleanup.etcd.endpoints=["https://etcd:2379"]"#], "cleanup.etcd.tls.existingSecret"),
        (
            vec!["--set", "cleanup.etcd.tls.existingSecret=etcd-client", "--set", "cleanup.etcd.tls.keyKey="],
            "certKey and keyKey go together",
        ),
    ] {
        let mut all = vec!["-f", file.as_str()];
        all.extend(args.iter().copied());
        let err = try_render("shop", "dev", &all).expect_err("refused");
        assert!(err.contains(says), "{args:?}: says {says}: {err}");
    }
}

/// The README's embedding example is the fixture's `values-dev.yaml`, word for word, and with it the
/// parent renders the purge Job with those targets and the gate in its own Deployment; the chart's
/// own `values-dev.yaml` passed to the parent changes nothing (its keys are not under `cleanslate:`).
#[test]
fn the_readmes_embedding_example_works() {
    let example = std::fs::read_to_string(repo_root().join("tests/fixtures/parent-chart/values-dev.yaml")).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```yaml\n{example}```")),
        "the README shows the fixture's values-dev.yaml as it is"
    );
    let (_scratch, parent) = parent_chart(None);
    let render = |values: &str| {
        let output = std::process::Command::new(helm())
            .args(["template", "shop"])
            .arg(&parent)
            .args(["--namespace", "dev", "-f", values])
            .output()
            .expect("helm runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        parse_documents(&String::from_utf8_lossy(&output.stdout))
    };
    let docs = render(parent.join("values-dev.yaml").to_str().unwrap());
    let job = find(&docs, "Job", "shop-cleanslate-purge");
    let container = &pod_spec(job)["containers"][0];
    assert_eq!(env_value(container, "CLEANSLATE_RABBITMQ_QUEUES").as_deref(), Some("shop-orders"));
    assert_eq!(env_value(container, "CLEANSLATE_QUIESCE"), None, "no list: helm template looks up nothing");
    assert_eq!(env_value(container, "CLEANSLATE_QUIESCE_GATED").as_deref(), Some("true"), "the Job finds them");
    let api = find(&docs, "Deployment", "shop-api");
    assert_eq!(pod_spec(api)["initContainers"][0]["name"], json!("cleanslate-gate"), "the parent's pods are gated");
    let ignored = render(&values_file("values-dev.yaml"));
    let job = find(&ignored, "Job", "shop-cleanslate-purge");
    assert_eq!(
        env_value(&pod_spec(job)["containers"][0], "CLEANSLATE_RABBITMQ_QUEUES").as_deref(),
        Some("shop-orders,shop-orders-dlq"),
        "the chart's own values-dev.yaml does not reach a dependency: the parent's values.yaml still rules"
    );
}
