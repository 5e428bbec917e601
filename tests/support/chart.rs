//! The chart as Helm and Kubernetes would use it: render with the real `helm template`, then
//! act out what Helm does with hooks (order by weight, then kind, then name; before-hook-creation),
//! what RBAC allows (grants derived from the rendered Roles and RoleBindings), and what the kubelet
//! gives a container (`value`, `secretKeyRef` against the rendered Secret, `fieldRef`, and the
//! service-account token and CA mounts).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::kube_api::{KubeApi, PodCredentials};
use super::repo_root;

/// The helm binary under test: `CSTEST_HELM` when set (hack/test.sh runs the chart tests once
/// more with `.tools/bin/helm3`), else the Helm 4 that `hack/setup.sh` unpacks.
pub fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("CSTEST_HELM") {
        return PathBuf::from(path);
    }
    let local = repo_root().join(".tools/bin/helm");
    if local.exists() { local } else { PathBuf::from("helm") }
}

/// The major version of `helm()`: 3 or 4.
pub fn helm_major() -> u32 {
    let output = Command::new(helm()).args(["version", "--template", "{{.Version}}"]).output().expect("helm runs");
    let version = String::from_utf8_lossy(&output.stdout);
    version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).expect("helm version")
}

/// Runs `helm template` and returns its documents, or the error text when rendering fails.
pub fn try_render(release: &str, namespace: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let output = Command::new(helm())
        .args(["template", release, repo_root().join("chart").to_str().unwrap(), "--namespace", namespace])
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("helm not runnable ({err}); run hack/setup.sh"));
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(parse_documents(&String::from_utf8_lossy(&output.stdout)))
}

pub fn render(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    try_render(release, namespace, args).unwrap_or_else(|err| panic!("helm template failed: {err}"))
}

pub fn parse_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|doc| {
            let value = Value::deserialize(doc).ok()?;
            (!value.is_null()).then_some(value)
        })
        .collect()
}

pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

pub fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    docs.iter().find(|d| kind(d) == kind_ && name(d) == name_).unwrap_or_else(|| panic!("no {kind_} {name_} rendered"))
}

pub fn hook_events(doc: &Value) -> Vec<String> {
    doc["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .map(|h| h.split(',').map(|e| e.trim().to_string()).collect())
        .unwrap_or_default()
}

pub fn hook_weight(doc: &Value) -> i64 {
    doc["metadata"]["annotations"]["helm.sh/hook-weight"].as_str().and_then(|w| w.parse().ok()).unwrap_or(0)
}

/// Helm's install order of kinds (pkg/release/v1/util/kind_sorter.go, the part we render).
fn kind_rank(kind_: &str) -> usize {
    [
        "Namespace",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "Service",
        "Pod",
        "Deployment",
        "StatefulSet",
        "Job",
    ]
    .iter()
    .position(|k| *k == kind_)
    .unwrap_or(usize::MAX)
}

/// The hooks of `event`, in the order Helm runs them: weight, then kind (stable pre-sort), then name.
pub fn hooks_for<'a>(docs: &'a [Value], event: &str) -> Vec<&'a Value> {
    let mut hooks: Vec<&Value> = docs.iter().filter(|d| hook_events(d).iter().any(|e| e == event)).collect();
    hooks.sort_by_key(|d| kind_rank(kind(d)));
    hooks.sort_by(|a, b| hook_weight(a).cmp(&hook_weight(b)).then_with(|| name(a).cmp(name(b))));
    hooks
}

/// Resources that are part of the release (not hooks).
pub fn release_resources(docs: &[Value]) -> Vec<&Value> {
    docs.iter().filter(|d| hook_events(d).is_empty()).collect()
}

/// A fake cluster: the API stand-in, the Secrets created so far, and one token per ServiceAccount.
pub struct FakeCluster {
    pub api: KubeApi,
    pub namespace: String,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    roles: BTreeMap<String, Value>,
    credentials: PodCredentials,
    /// Where the kubelet would mount each container's termination-message file.
    termination: tempfile::TempDir,
    /// ServiceAccounts created with `automountServiceAccountToken: false`.
    pub automount_off: Vec<String>,
}

impl FakeCluster {
    pub async fn start(namespace: &str) -> FakeCluster {
        let api = KubeApi::start().await;
        let credentials = api.credentials();
        FakeCluster {
            api,
            namespace: namespace.into(),
            secrets: BTreeMap::new(),
            roles: BTreeMap::new(),
            credentials,
            termination: tempfile::tempdir().expect("tempdir"),
            automount_off: Vec::new(),
        }
    }

    /// The bearer token of a ServiceAccount's pods (a known value, checked absent from output).
    pub fn token_of(service_account: &str) -> String {
        format!("sa-token-{service_account}")
    }

    /// Applies one rendered resource the way the API server would take it.
    pub fn apply(&mut self, doc: &Value) {
        match kind(doc) {
            "Secret" => {
                let mut data = BTreeMap::new();
                if let Some(map) = doc["stringData"].as_object() {
                    for (k, v) in map {
                        data.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                    }
                }
                if let Some(map) = doc["data"].as_object() {
                    for (k, v) in map {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(v.as_str().unwrap_or_default())
                            .expect("base64");
                        data.insert(k.clone(), String::from_utf8(bytes).expect("utf-8 secret"));
                    }
                }
                self.secrets.insert(name(doc).to_string(), data);
            }
            "Role" => {
                self.roles.insert(name(doc).to_string(), doc.clone());
            }
            "ServiceAccount" if doc["automountServiceAccountToken"] == Value::Bool(false) => {
                self.automount_off.push(name(doc).to_string());
            }
            "RoleBinding" => {
                let role = &self.roles[doc["roleRef"]["name"].as_str().expect("roleRef")];
                for subject in doc["subjects"].as_array().expect("subjects") {
                    assert_eq!(subject["kind"], "ServiceAccount", "binds a ServiceAccount");
                    let token = Self::token_of(subject["name"].as_str().unwrap());
                    for rule in role["rules"].as_array().expect("rules") {
                        let groups: Vec<&str> =
                            rule["apiGroups"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                        let resources: Vec<&str> =
                            rule["resources"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                        let verbs: Vec<&str> =
                            rule["verbs"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                        let names: Option<Vec<&str>> =
                            rule["resourceNames"].as_array().map(|n| n.iter().filter_map(Value::as_str).collect());
                        for resource in resources {
                            // The stand-in serves these resources in these groups, nothing else.
                            let group = match resource.split('/').next().unwrap() {
                                "configmaps" | "pods" => "",
                                "deployments" | "statefulsets" => "apps",
                                "jobs" => "batch",
                                "events" => "events.k8s.io",
                                other => panic!("rule for {other}, a resource the stand-in does not serve"),
                            };
                            assert!(groups.contains(&group), "{resource} is in API group {group:?}: {rule}");
                            self.api.grant_on(&token, resource, &verbs, names.as_deref());
                        }
                    }
                }
            }
            "ConfigMap" => {
                // before-hook-creation: Helm deletes the previous one, then creates this one.
                self.api.delete(&self.namespace, name(doc));
                let mut object = doc.clone();
                object["metadata"]["namespace"] = Value::from(self.namespace.clone());
                self.api.put_object(&self.namespace, name(doc), object);
            }
            "Deployment" | "StatefulSet" => self.api.apply_workload(&self.namespace, doc),
            // The Job controller's view: no pod has failed yet.
            "Job" => {
                let backoff_limit = doc["spec"]["backoffLimit"].as_u64().unwrap_or(6) as u32;
                self.api.put_job(&self.namespace, name(doc), backoff_limit, 0);
            }
            _ => {}
        }
    }

    /// A Secret the user created before the release (an `existingSecret`): name → key → value.
    pub fn add_secret(&mut self, name: &str, data: &[(&str, &str)]) {
        self.secrets.insert(name.into(), data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }

    /// What Helm does with an event's hooks that carry `hook-succeeded` once every hook of the event
    /// succeeded, and with those that already succeeded when a later one failed (pkg/action/hooks.go;
    /// REFERENCES 1.3): it deletes them. A deleted RoleBinding or ServiceAccount takes its grants with
    /// it; a deleted Secret can no longer be read.
    pub fn delete_succeeded_hooks(&mut self, hooks: &[&Value]) {
        for hook in hooks {
            let policy = hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"].as_str().unwrap_or_default();
            if !policy.split(',').any(|p| p.trim() == "hook-succeeded") {
                continue;
            }
            match kind(hook) {
                "RoleBinding" => {
                    for subject in hook["subjects"].as_array().expect("subjects") {
                        self.api.revoke(&Self::token_of(subject["name"].as_str().unwrap()));
                    }
                }
                "ServiceAccount" => self.api.revoke(&Self::token_of(name(hook))),
                "Secret" => {
                    self.secrets.remove(name(hook));
                }
                _ => {}
            }
        }
    }

    /// Whether the ServiceAccount `service_account`'s pods may still do anything.
    pub fn has_rights(&self, service_account: &str) -> bool {
        !self.api.granted(&Self::token_of(service_account)).is_empty()
    }

    /// What an operator's machine has for `cleanslate status` or a `resume` by hand: the API, a token
    /// of someone who administers the namespace (reads everything there, scales workloads), the CA.
    pub fn operator_vars(&self) -> Vec<(String, String)> {
        const OPERATOR: &str = "operator-token";
        self.api.grant(OPERATOR, &["get", "list"], None);
        for resource in ["deployments", "statefulsets"] {
            self.api.grant_on(OPERATOR, resource, &["get", "list", "patch"], None);
        }
        for resource in ["deployments/scale", "statefulsets/scale"] {
            self.api.grant_on(OPERATOR, resource, &["get", "update"], None);
        }
        for resource in ["pods", "secrets"] {
            self.api.grant_on(OPERATOR, resource, &["get", "list"], None);
        }
        vec![
            ("CLEANSLATE_KUBE_API".into(), self.api.url.clone()),
            ("CLEANSLATE_KUBE_TOKEN_FILE".into(), self.credentials.token_file(OPERATOR)),
            ("CLEANSLATE_KUBE_CA_FILE".into(), self.credentials.ca_file()),
            ("CLEANSLATE_NAMESPACE".into(), self.namespace.clone()),
        ]
    }

    /// The termination message the container `container` of pod `pod_name` left, as
    /// `kubectl describe pod` shows it.
    pub fn termination_message(&self, pod_name: &str, container: &str) -> Option<String> {
        std::fs::read_to_string(self.termination.path().join(format!("{pod_name}.{container}"))).ok()
    }

    /// The environment the kubelet gives `container` of a pod named `pod_name` running `pod_spec`:
    /// its env resolved, plus the in-cluster API variables and the token and CA files of the pod's
    /// ServiceAccount (the mount the kubelet provides, given here by path).
    pub fn container_env(&self, pod_spec: &Value, container: &Value, pod_name: &str) -> Vec<(String, String)> {
        let service_account = pod_spec["serviceAccountName"].as_str().unwrap_or("default");
        let token_file = self.credentials.token_file(&Self::token_of(service_account));
        let port = self.api.url.rsplit(':').next().unwrap().to_string();
        let mut env: Vec<(String, String)> = super::pod_env(pod_name)
            .into_iter()
            .filter(|(k, _)| {
                // Service links are off where the pod spec says so; the API address is the stand-in's.
                let links_off = pod_spec["enableServiceLinks"] == Value::Bool(false);
                let runtime = matches!(k.as_str(), "HOSTNAME" | "HOME" | "PATH");
                !k.starts_with("KUBERNETES_") && (runtime || !links_off)
            })
            .collect();
        env.extend([
            ("KUBERNETES_SERVICE_HOST".to_string(), "127.0.0.1".to_string()),
            ("KUBERNETES_SERVICE_PORT".to_string(), port.clone()),
            ("KUBERNETES_PORT".to_string(), format!("tcp://127.0.0.1:{port}")),
        ]);
        // The kubelet mounts the ServiceAccount's token only when the pod (or else its ServiceAccount)
        // does not turn automounting off
        // (https://kubernetes.io/docs/tasks/configure-pod-container/configure-service-account/#opt-out-of-api-credential-automounting);
        // the harness gives the mount's files by path, and without the mount the binary's default
        // paths, which do not exist here, as they would not in such a pod.
        let automount = pod_spec["automountServiceAccountToken"]
            .as_bool()
            .unwrap_or_else(|| self.automount_off.iter().all(|account| account != service_account));
        let (token_file, ca_file) = if automount {
            (token_file, self.credentials.ca_file())
        } else {
            let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
            (format!("{dir}/token"), format!("{dir}/ca.crt"))
        };
        env.extend([
            ("CLEANSLATE_KUBE_TOKEN_FILE".to_string(), token_file),
            ("CLEANSLATE_KUBE_CA_FILE".to_string(), ca_file),
        ]);
        for var in container["env"].as_array().cloned().unwrap_or_default() {
            let key = var["name"].as_str().expect("env name").to_string();
            let value = if let Some(value) = var.get("value") {
                value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string())
            } else if let Some(secret) = var["valueFrom"].get("secretKeyRef") {
                let (secret_name, secret_key) = (secret["name"].as_str().unwrap(), secret["key"].as_str().unwrap());
                let data = self
                    .secrets
                    .get(secret_name)
                    .unwrap_or_else(|| panic!("Secret {secret_name} does not exist yet for {key}"));
                data.get(secret_key).unwrap_or_else(|| panic!("Secret {secret_name} has no key {secret_key}")).clone()
            } else if let Some(field) = var["valueFrom"].get("fieldRef") {
                match field["fieldPath"].as_str().unwrap() {
                    "metadata.name" => pod_name.to_string(),
                    "metadata.namespace" => self.namespace.clone(),
                    "metadata.uid" => format!("uid-{pod_name}"),
                    other => panic!("fieldRef {other} not emulated"),
                }
            } else {
                panic!("env {key} has a source the harness does not resolve: {var}");
            };
            let value = match self.mounted_path(pod_spec, container, pod_name, &value) {
                Some(local) => local,
                None => value,
            };
            let value = if key == "CLEANSLATE_TERMINATION_MESSAGE_PATH" {
                // The kubelet mounts a file at the container's terminationMessagePath: the binary
                // must be told that same path, which the harness then maps to a file of its own.
                assert_eq!(
                    container["terminationMessagePath"].as_str(),
                    Some(value.as_str()),
                    "{key} is the container's terminationMessagePath"
                );
                let name = container["name"].as_str().expect("container name");
                self.termination.path().join(format!("{pod_name}.{name}")).display().to_string()
            } else {
                value
            };
            env.push((key, value));
        }
        env
    }

    /// A path inside one of the container's Secret volume mounts, as the kubelet would give it: the
    /// Secret's `items` (only the keys named, each at its `path`; a missing key fails the pod, as
    /// "couldn't find key" does) written under a directory of the harness's, and the path mapped there.
    fn mounted_path(&self, pod_spec: &Value, container: &Value, pod_name: &str, value: &str) -> Option<String> {
        let mounts = container["volumeMounts"].as_array()?;
        let mount = mounts.iter().find(|m| {
            let at = m["mountPath"].as_str().unwrap_or_default();
            !at.is_empty() && value.starts_with(&format!("{at}/"))
        })?;
        assert_eq!(mount["readOnly"], Value::Bool(true), "Secret mounts are read-only: {mount}");
        let volume_name = mount["name"].as_str().expect("mount name");
        let volume = pod_spec["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == volume_name))
            .unwrap_or_else(|| panic!("mount {volume_name} has no volume"));
        let dir = self.termination.path().join(format!("{pod_name}.volumes")).join(volume_name);
        std::fs::create_dir_all(&dir).expect("volume dir");
        if let Some(sources) = volume["projected"]["sources"].as_array() {
            // A projected volume like the kubelet's own kube-api-access one: the ServiceAccount's
            // token, the cluster CA from the kube-root-ca.crt ConfigMap, the namespace
            // (https://kubernetes.io/docs/concepts/storage/projected-volumes/).
            let account = pod_spec["serviceAccountName"].as_str().unwrap_or("default");
            for source in sources {
                if let Some(token) = source.get("serviceAccountToken") {
                    std::fs::write(dir.join(token["path"].as_str().unwrap()), Self::token_of(account)).unwrap();
                } else if source["configMap"]["name"] == "kube-root-ca.crt" {
                    let ca = std::fs::read_to_string(self.credentials.ca_file()).unwrap();
                    for item in source["configMap"]["items"].as_array().expect("items") {
                        std::fs::write(dir.join(item["path"].as_str().unwrap()), &ca).unwrap();
                    }
                } else if let Some(items) = source["downwardAPI"]["items"].as_array() {
                    for item in items {
                        assert_eq!(item["fieldRef"]["fieldPath"], "metadata.namespace", "downwardAPI field: {item}");
                        std::fs::write(dir.join(item["path"].as_str().unwrap()), &self.namespace).unwrap();
                    }
                } else {
                    panic!("projected source the harness does not give: {source}");
                }
            }
        } else if let Some(config_map) = volume.get("configMap") {
            let config_name = config_map["name"].as_str().expect("a ConfigMap's name");
            let object = self
                .api
                .object(&self.namespace, config_name)
                .unwrap_or_else(|| panic!("ConfigMap {config_name} does not exist: pod not started"));
            for item in config_map["items"].as_array().expect("the chart names the keys it mounts") {
                let key = item["key"].as_str().unwrap();
                let content = object["data"][key]
                    .as_str()
                    .unwrap_or_else(|| panic!("couldn't find key {key} in ConfigMap {config_name}: pod not started"));
                std::fs::write(dir.join(item["path"].as_str().unwrap()), content).expect("write volume file");
            }
        } else {
            let secret_name = volume["secret"]["secretName"].as_str().expect("a Secret, ConfigMap or projected volume");
            let data = self.secrets.get(secret_name).unwrap_or_else(|| panic!("Secret {secret_name} does not exist"));
            for item in volume["secret"]["items"].as_array().expect("the chart names the keys it mounts") {
                let key = item["key"].as_str().unwrap();
                let content = data
                    .get(key)
                    .unwrap_or_else(|| panic!("couldn't find key {key} in Secret {secret_name}: pod not started"));
                std::fs::write(dir.join(item["path"].as_str().unwrap()), content).expect("write volume file");
            }
        }
        let relative = &value[mount["mountPath"].as_str().unwrap().len() + 1..];
        Some(dir.join(relative).display().to_string())
    }

    /// Starts `container` (the cleanslate image: ENTRYPOINT /cleanslate, args from the manifest).
    pub fn spawn(&self, pod_spec: &Value, container: &Value, pod_name: &str) -> tokio::process::Child {
        assert!(container.get("command").is_none(), "the image's entrypoint is used");
        let args: Vec<String> =
            container["args"].as_array().expect("args").iter().map(|a| a.as_str().unwrap().to_string()).collect();
        tokio::process::Command::new(super::binary())
            .args(&args)
            .env_clear()
            .envs(self.container_env(pod_spec, container, pod_name))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("container starts")
    }
}

/// Renders as `helm install`/`helm upgrade` do against a cluster: `helm template --dry-run=server`
/// with a kubeconfig for the stand-in, so the chart's `lookup` sees the live objects (plain
/// `helm template` sees none). Helm 3's `template` reaches the cluster only with `--validate`
/// (its OpenAPI validation left off: the stand-in serves no schemas).
pub async fn render_live(cluster: &FakeCluster, chart: &std::path::Path, release: &str, args: &[&str]) -> Vec<Value> {
    use base64::Engine;
    const HELM_USER: &str = "helm-operator-token";
    for resource in ["deployments", "statefulsets", "configmaps", "secrets", "pods", "jobs"] {
        cluster.api.grant_on(HELM_USER, resource, &["get", "list"], None);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "stand-in",
                      "cluster": {"server": cluster.api.url, "certificate-authority-data": b64(&cluster.api.ca_pem)}}],
        "users": [{"name": "helm", "user": {"token": HELM_USER}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "helm", "namespace": cluster.namespace}}],
        "current-context": "stand-in",
    });
    let kubeconfig = dir.path().join("config");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&config).unwrap()).unwrap();
    // Asynchronously: the stand-in serves Helm's requests on this test's runtime.
    let output = tokio::process::Command::new(helm())
        .args(["template", release])
        .arg(chart)
        .args(["--namespace", &cluster.namespace, "--dry-run=server"])
        .args(if helm_major() < 4 {
            &["--validate", "--disable-openapi-validation"][..]
        } else {
            &["--disable-openapi-validation"][..]
        })
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .output()
        .await
        .expect("helm runs");
    assert!(output.status.success(), "helm template --dry-run=server: {}", String::from_utf8_lossy(&output.stderr));
    parse_documents(&String::from_utf8_lossy(&output.stdout))
}

/// What Helm does after an upgrade's apply (and a rollback's): it deletes the release resources of
/// the previous revision that the new one no longer renders (`kube.Client.Update`: "Deleting
/// resources no longer in the release").
pub fn delete_dropped(cluster: &mut FakeCluster, before: &[Value], after: &[Value]) {
    let kept: Vec<(String, String)> =
        release_resources(after).iter().map(|d| (kind(d).to_string(), name(d).to_string())).collect();
    let namespace = cluster.namespace.clone();
    for doc in release_resources(before) {
        if kept.contains(&(kind(doc).to_string(), name(doc).to_string())) {
            continue;
        }
        match kind(doc) {
            "Deployment" => cluster.api.delete_workload(&namespace, "deployments", name(doc)),
            "StatefulSet" => cluster.api.delete_workload(&namespace, "statefulsets", name(doc)),
            _ => {}
        }
    }
}

/// The parent chart fixture (cleanslate under `alias` when given) in a scratch directory, with
/// `helm dependency update` run as the README says.
pub fn parent_chart(alias: Option<&str>) -> (tempfile::TempDir, std::path::PathBuf) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let parent = scratch.path().join("tests/fixtures/parent-chart");
    std::fs::create_dir_all(parent.join("templates")).unwrap();
    for file in ["Chart.yaml", "values.yaml", "values-dev.yaml", "templates/api.yaml", "templates/NOTES.txt"] {
        let mut text = std::fs::read_to_string(repo_root().join("tests/fixtures/parent-chart").join(file)).unwrap();
        if let Some(alias) = alias {
            text = match file {
                "Chart.yaml" => text
                    .replace("    repository: file://", &format!("    alias: {alias}\n    repository: file://"))
                    .replace("condition: cleanslate.enabled", &format!("condition: {alias}.enabled")),
                "values.yaml" | "values-dev.yaml" => text.replace("cleanslate:\n", &format!("{alias}:\n")),
                _ => text.replace(r#"(index .Values "cleanslate")"#, &format!(r#"(index .Values "{alias}")"#)),
            };
        }
        std::fs::write(parent.join(file), text).unwrap();
    }
    std::os::unix::fs::symlink(repo_root().join("chart"), scratch.path().join("chart")).unwrap();
    let update =
        std::process::Command::new(helm()).args(["dependency", "update"]).arg(&parent).output().expect("helm runs");
    assert!(update.status.success(), "dependency update: {}", String::from_utf8_lossy(&update.stderr));
    (scratch, parent)
}

/// The pod spec of a Deployment, Job or Pod.
pub fn pod_spec(doc: &Value) -> &Value {
    match kind(doc) {
        "Pod" => &doc["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}
