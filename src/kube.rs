//! The Kubernetes API, through kube-rs: the marker ConfigMap (get, create, replace, watch), and for
//! quiesce a Deployment's or StatefulSet's annotations (get, merge patch), its `scale` subresource
//! (get, replace) and its pods (watch by label selector).
//!
//! What kube-rs does for us: configuration like every Kubernetes tool (the service account in a
//! pod, with its rotating token and CA re-read about once a minute; elsewhere the kubeconfig with
//! client certificates, tokens and exec plugins), typed objects, and `kube::runtime::watcher` (a
//! list, then a watch from the list's `resourceVersion` with bookmarks, a relist on 410 Gone, a
//! reconnect when a watch stays silent past its timeout). What this module adds:
//! - one error type whose HTTP code the callers branch on ([`KubeError`]);
//! - a bound on every single request ([`REQUEST_TIMEOUT`]); watches are bounded by the watcher;
//! - watch requests that keep ending at once are paced ([`pacing`]), as client-go's reflector does;
//! - no field ownership left behind by a scale write ([`KubeClient::replace_scale`]).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::config::{KubeAccess, KubeConfig, WorkloadKind, WorkloadRef};
use crate::error::{Kind, classified};

mod pacing;

pub use crate::kube_error::{KubeError, Status};

/// A request to the API server that takes longer than this is stuck, not slow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to the API server from a pod takes milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The field manager named on every write, so the API server can tell our writes from others'.
pub const FIELD_MANAGER: &str = "cleanslate";

impl From<watcher::Error> for KubeError {
    fn from(err: watcher::Error) -> KubeError {
        match err {
            watcher::Error::InitialListFailed(err)
            | watcher::Error::WatchStartFailed(err)
            | watcher::Error::WatchFailed(err) => KubeError::from(err),
            watcher::Error::WatchError(status) => {
                KubeError::Api(Status { code: status.code, reason: status.reason, message: status.message })
            }
            other => KubeError::Decode(other.to_string()),
        }
    }
}

/// One request with [`REQUEST_TIMEOUT`]; a request that hangs becomes a transport error.
async fn bounded<T>(request: impl Future<Output = Result<T, kube::Error>>) -> Result<T, KubeError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(answer) => answer.map_err(KubeError::from),
        Err(_) => Err(KubeError::Transport(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))),
    }
}

/// `Ok(None)` for 404, the object otherwise.
fn found<T>(answer: Result<T, KubeError>) -> Result<Option<T>, KubeError> {
    match answer {
        Ok(object) => Ok(Some(object)),
        Err(err) if err.code() == Some(404) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A new, empty ConfigMap with the given name and namespace.
pub fn new_config_map(name: &str, namespace: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..Default::default() },
        ..Default::default()
    }
}

/// A change to the watched objects, as [`KubeClient::watch_config_map`] and
/// [`KubeClient::watch_pods`] report them.
#[derive(Debug)]
pub enum Change<K> {
    /// A fresh list: every object that exists now (after the first list, and after a relist).
    Listed(Vec<K>),
    /// Created or changed.
    Applied(K),
    /// Deleted.
    Deleted(K),
}

/// A Job's progress, as its status and spec tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobProgress {
    /// Pods of the Job that failed so far (killed ones included: the Job controller counts them).
    pub failed: u32,
    /// Failed pods the Job tolerates before it gives up: it runs at most `backoffLimit + 1` pods.
    pub backoff_limit: u32,
    /// The Job has been marked failed (`Failed` or `FailureTarget` condition: its deadline passed,
    /// its backoff limit was reached): no pod comes after the running ones.
    pub failing: bool,
    /// What was left of the Job's `activeDeadlineSeconds` when it was read (from its
    /// `status.startTime`), when it has one.
    pub deadline_left: Option<Duration>,
}

impl JobProgress {
    /// Which attempt the running pod is (pods run one after another).
    pub fn attempt(&self) -> u32 {
        self.failed.saturating_add(1)
    }

    /// How many attempts the Job makes at most.
    pub fn attempts(&self) -> u32 {
        self.backoff_limit.saturating_add(1)
    }
}

/// A Deployment or StatefulSet, as far as quiesce reads it.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    pub metadata: ObjectMeta,
    /// `spec.replicas`; the API server defaults it to 1 when the manifest leaves it out.
    pub replicas: Option<i32>,
    /// A StatefulSet's `persistentVolumeClaimRetentionPolicy.whenScaled`.
    pub pvc_when_scaled: Option<String>,
    /// A StatefulSet's `podManagementPolicy` (`OrderedReady` when unset).
    pub pod_management_policy: Option<String>,
    /// The pod template's cleanslate gate, when it has one.
    pub gate: Option<Gate>,
    /// The pod template's `terminationGracePeriodSeconds` (Kubernetes' default is 30): how long
    /// its pods may take to stop.
    pub grace_period_seconds: Option<i64>,
    /// `status.readyReplicas` (absent means none).
    pub ready_replicas: Option<i32>,
    /// `status.updatedReplicas`: pods of the current template.
    pub updated_replicas: Option<i32>,
    /// `status.replicas`: every pod, old templates' included (a rolling update keeps old ones).
    pub status_replicas: Option<i32>,
    /// `metadata.generation` and `status.observedGeneration`: the controller has seen the spec.
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    /// `spec.selector.matchLabels`, as a label selector (`app=shop,tier=web`).
    pub selector: String,
}

impl Workload {
    /// The value of one annotation.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// Whether the current template runs with the desired ready replicas and nothing older is left,
    /// as `kubectl rollout status` decides it: the controller saw this spec, every replica is of
    /// the current template, and as many are ready. (`readyReplicas` alone counts an old pod that a
    /// rolling update keeps while the new one waits in its gate.)
    pub fn rolled_out(&self) -> bool {
        let desired = self.replicas.unwrap_or(1);
        let observed = match (self.generation, self.observed_generation) {
            (Some(generation), Some(observed)) => observed >= generation,
            _ => true,
        };
        let updated = self.updated_replicas.unwrap_or(0);
        observed
            && updated >= desired
            && self.ready_replicas.unwrap_or(0) >= desired
            && self.status_replicas.unwrap_or(updated) <= updated
    }

    /// Whether a `managedFields` entry of ours owns `spec.replicas`.
    pub fn replicas_owned_by_us(&self) -> bool {
        self.metadata.managed_fields.iter().flatten().any(owns_replicas_for_us)
    }
}

/// `matchLabels` as a label selector.
fn match_labels(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> String {
    let labels = selector.match_labels.iter().flatten();
    labels.map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

impl From<Deployment> for Workload {
    fn from(object: Deployment) -> Workload {
        let spec = object.spec.unwrap_or_default();
        Workload {
            replicas: spec.replicas,
            gate: spec.template.spec.as_ref().and_then(gate_of),
            grace_period_seconds: spec.template.spec.as_ref().and_then(|s| s.termination_grace_period_seconds),
            ready_replicas: object.status.as_ref().and_then(|s| s.ready_replicas),
            updated_replicas: object.status.as_ref().and_then(|s| s.updated_replicas),
            status_replicas: object.status.as_ref().map(|s| s.replicas.unwrap_or(0)),
            observed_generation: object.status.as_ref().and_then(|s| s.observed_generation),
            generation: object.metadata.generation,
            selector: match_labels(&spec.selector),
            metadata: object.metadata,
            ..Default::default()
        }
    }
}

/// What a pod's cleanslate gate (the init container run with `gate`) waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Its container's name, to find its status.
    pub container: String,
    /// The marker it reads (`CLEANSLATE_MARKER`).
    pub marker: String,
    /// The revision it waits for (`CLEANSLATE_REVISION`).
    pub revision: u64,
    /// `CLEANSLATE_GATE_ON_TIMEOUT=proceed`: it lets the pod start anyway when it times out.
    pub proceeds_on_timeout: bool,
}

/// The cleanslate gate of a pod spec, when it has one with a literal marker and revision.
pub fn gate_of(spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<Gate> {
    let gate = spec.init_containers.iter().flatten().find(|c| c.args.as_deref() == Some(&["gate".to_string()][..]))?;
    let value =
        |name: &str| gate.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.as_deref()).map(str::trim);
    Some(Gate {
        container: gate.name.clone(),
        marker: value("CLEANSLATE_MARKER")?.to_string(),
        revision: value("CLEANSLATE_REVISION")?.parse().ok()?,
        proceeds_on_timeout: value("CLEANSLATE_GATE_ON_TIMEOUT").is_some_and(|v| v.eq_ignore_ascii_case("proceed")),
    })
}

impl From<StatefulSet> for Workload {
    fn from(object: StatefulSet) -> Workload {
        let spec = object.spec.unwrap_or_default();
        Workload {
            replicas: spec.replicas,
            pvc_when_scaled: spec.persistent_volume_claim_retention_policy.and_then(|p| p.when_scaled),
            pod_management_policy: spec.pod_management_policy,
            gate: spec.template.spec.as_ref().and_then(gate_of),
            grace_period_seconds: spec.template.spec.as_ref().and_then(|s| s.termination_grace_period_seconds),
            ready_replicas: object.status.as_ref().and_then(|s| s.ready_replicas),
            updated_replicas: object.status.as_ref().and_then(|s| s.updated_replicas),
            status_replicas: object.status.as_ref().map(|s| s.replicas),
            observed_generation: object.status.as_ref().and_then(|s| s.observed_generation),
            generation: object.metadata.generation,
            selector: match_labels(&spec.selector),
            metadata: object.metadata,
        }
    }
}

/// Whether a `managedFields` entry is ours and owns `spec.replicas`.
fn owns_replicas_for_us(entry: &ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(FIELD_MANAGER)
        && entry
            .fields_v1
            .as_ref()
            .is_some_and(|fields| fields.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
}

/// A client for one API server.
#[derive(Clone)]
pub struct KubeClient {
    client: kube::Client,
    watch_timeout: Duration,
    events: crate::events::Events,
}

impl KubeClient {
    /// Builds a client from the configuration: the named API with its token and CA files, or the
    /// kubeconfig. An unreadable CA or kubeconfig is a configuration error.
    pub async fn new(config: &KubeConfig) -> Result<KubeClient> {
        let mut settings = match &config.access {
            KubeAccess::Direct { api, token_file, ca_file } => {
                let pem = std::fs::read(ca_file).map_err(|err| {
                    classified(Kind::Config, format!("reading the Kubernetes CA {}: {err}", ca_file.display()))
                })?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(classified(
                        Kind::Config,
                        format!("the Kubernetes CA {} holds no PEM certificate", ca_file.display()),
                    ));
                }
                let uri: http::Uri = api.as_str().parse().map_err(|err| {
                    classified(Kind::Config, format!("CLEANSLATE_KUBE_API {api} is not a URL: {err}"))
                })?;
                let mut settings = kube::Config::new(uri);
                // Both re-read about once a minute, as they rotate (kube-rs's TokenFile and
                // `root_cert_file`, like client-go's).
                settings.root_cert_file = Some(ca_file.clone());
                settings.auth_info.token_file = Some(token_file.display().to_string());
                settings
            }
            KubeAccess::Kubeconfig => {
                kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions::default()).await.map_err(|err| {
                    classified(
                        Kind::Config,
                        format!(
                            "reading the kubeconfig (KUBECONFIG or ~/.kube/config; or set CLEANSLATE_KUBE_API): {err}"
                        ),
                    )
                })?
            }
        };
        settings.connect_timeout = Some(CONNECT_TIMEOUT);
        // Our callers retry with their own budgets and deadlines; a second layer of retries
        // would hide how long a call really took.
        settings.default_retry = false;
        let builder = kube::client::ClientBuilder::try_from(settings)
            .map_err(|err| classified(Kind::Config, format!("building the Kubernetes client: {err}")))?;
        let client = builder.with_layer(&pacing::WatchPacing::default()).build();
        let events = crate::events::Events::new(&client, &config.events);
        Ok(KubeClient { client, watch_timeout: config.watch_timeout, events })
    }

    /// Where this run's Kubernetes Events go.
    pub fn events(&self) -> &crate::events::Events {
        &self.events
    }

    fn config_maps(&self, namespace: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn post_params() -> PostParams {
        PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
    }

    /// The ConfigMap, or `None` when it does not exist.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, KubeError> {
        found(bounded(self.config_maps(namespace).get(name)).await)
    }

    /// Whether this identity may write the ConfigMap: a server-side dry run of an update (when
    /// `object` exists) or a create, which the API server authorizes and admits like the real write
    /// and does not persist (`dryRun=All`,
    /// <https://kubernetes.io/docs/reference/using-api/api-concepts/#dry-run>).
    pub async fn check_write(&self, namespace: &str, object: &ConfigMap, exists: bool) -> Result<(), KubeError> {
        let params = PostParams { dry_run: true, ..Self::post_params() };
        let name = object.metadata.name.clone().unwrap_or_default();
        let api = self.config_maps(namespace);
        if exists {
            bounded(api.replace(&name, &params, object)).await.map(drop)
        } else {
            bounded(api.create(&params, object)).await.map(drop)
        }
    }

    /// Creates the ConfigMap; 409 when it already exists.
    pub async fn create(&self, namespace: &str, object: &ConfigMap) -> Result<ConfigMap, KubeError> {
        bounded(self.config_maps(namespace).create(&Self::post_params(), object)).await
    }

    /// Replaces the ConfigMap; with `metadata.resourceVersion` set, 409 when someone wrote in between.
    pub async fn replace(&self, namespace: &str, object: &ConfigMap) -> Result<ConfigMap, KubeError> {
        let name = object.metadata.name.clone().unwrap_or_default();
        bounded(self.config_maps(namespace).replace(&name, &Self::post_params(), object)).await
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
                Err(err) if err.code() == Some(409) => continue,
                Err(err) => return Err(err),
            }
        }
    }

    fn watcher_config(&self) -> watcher::Config {
        watcher::Config::default().timeout(self.watch_timeout.as_secs().clamp(1, u64::from(u32::MAX)) as u32)
    }

    /// Watches the one ConfigMap named `name`: first a [`Change::Listed`] with it (or empty), then
    /// its changes. `fieldSelector=metadata.name=…` is what lets RBAC `resourceNames` allow the
    /// list and the watch. Errors are reported and the watch goes on; pausing between them is the
    /// caller's (it polls the stream again when it is ready).
    pub fn watch_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Stream<Item = Result<Change<ConfigMap>, KubeError>> + Send + use<> {
        let config = self.watcher_config().fields(&format!("metadata.name={name}"));
        changes(watcher(self.config_maps(namespace), config))
    }

    /// Watches the pods matching `selector` (label-selector syntax), as [`Self::watch_config_map`].
    pub fn watch_pods(
        &self,
        namespace: &str,
        selector: &str,
    ) -> impl Stream<Item = Result<Change<Pod>, KubeError>> + Send + use<> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        changes(watcher(pods, self.watcher_config().labels(selector)))
    }

    /// The pods matching `selector` (label-selector syntax), every page.
    pub async fn list_pods(&self, namespace: &str, selector: &str) -> Result<Vec<Pod>, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut params = kube::api::ListParams::default().labels(selector).limit(500);
        let mut all = Vec::new();
        loop {
            let page = bounded(pods.list(&params)).await?;
            all.extend(page.items);
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(all),
            }
        }
    }

    /// Whether the pod `name` (with `uid`, when given: a pod recreated under the same name is
    /// another run) exists and has not finished: read with `list` and a `metadata.name` field
    /// selector, which the purge Role's namespace-wide `list` on pods allows. A terminating pod
    /// still runs its clean-up, until a minute past its `deletionTimestamp` (the end of its grace
    /// period): then its node is gone and it runs nothing.
    pub async fn pod_running(&self, namespace: &str, name: &str, uid: Option<&str>) -> Result<bool, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
        let found = bounded(pods.list(&params)).await?.items;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        Ok(found.iter().any(|pod| {
            let same = uid.is_none_or(|uid| pod.metadata.uid.as_deref() == Some(uid));
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            let long_gone =
                pod.metadata.deletion_timestamp.as_ref().is_some_and(|at| now > at.0.as_second().saturating_add(60));
            same && !matches!(phase, Some("Succeeded" | "Failed")) && !long_gone
        }))
    }

    /// Deletes one pod (gracefully, with its own grace period), only if it is still the pod with
    /// `uid`: a pod recreated under the same name in between is left alone. 404 is not an error.
    pub async fn delete_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<(), KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid: Some(uid.into()), resource_version: None }),
            ..Default::default()
        };
        found(bounded(pods.delete(name, &params)).await).map(drop)
    }

    /// The workload, or `None` when it does not exist.
    pub async fn get_workload(&self, namespace: &str, workload: &WorkloadRef) -> Result<Option<Workload>, KubeError> {
        let name = workload.name.as_str();
        match workload.kind {
            WorkloadKind::Deployment => {
                found(bounded(self.api::<Deployment>(namespace).get(name)).await).map(|o| o.map(Workload::from))
            }
            WorkloadKind::StatefulSet => {
                found(bounded(self.api::<StatefulSet>(namespace).get(name)).await).map(|o| o.map(Workload::from))
            }
        }
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// A JSON merge patch of the workload, applied only to the version read when the patch
    /// carries `metadata.resourceVersion` (409 Conflict otherwise): the API server treats a
    /// resourceVersion in a patch as a precondition
    /// (<https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply>).
    async fn merge_patch_workload(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        patch: &serde_json::Value,
    ) -> Result<Workload, KubeError> {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let name = workload.name.as_str();
        match workload.kind {
            WorkloadKind::Deployment => {
                bounded(self.api::<Deployment>(namespace).patch(name, &params, &Patch::Merge(patch)))
                    .await
                    .map(Into::into)
            }
            WorkloadKind::StatefulSet => {
                bounded(self.api::<StatefulSet>(namespace).patch(name, &params, &Patch::Merge(patch)))
                    .await
                    .map(Into::into)
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) one annotation, only on the version read.
    pub async fn annotate_workload(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        annotations: &[(&str, Option<&str>)],
        resource_version: &str,
    ) -> Result<Workload, KubeError> {
        let annotations: serde_json::Map<String, serde_json::Value> =
            annotations.iter().map(|(key, value)| (key.to_string(), json!(value))).collect();
        let patch = json!({"metadata": {"resourceVersion": resource_version, "annotations": annotations}});
        self.merge_patch_workload(namespace, workload, &patch).await
    }

    /// Replaces the `scale` subresource; with `metadata.resourceVersion` set, 409 when the workload
    /// changed since it was read. A non-zero count makes us owner of `spec.replicas`, which the
    /// caller gives up with [`Self::give_up_replicas`] on its next read.
    pub async fn replace_scale(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        scale: &Scale,
    ) -> Result<Scale, KubeError> {
        let name = workload.name.as_str();
        let params = Self::post_params();
        match workload.kind {
            WorkloadKind::Deployment => {
                bounded(self.api::<Deployment>(namespace).replace_scale(name, &params, scale)).await
            }
            WorkloadKind::StatefulSet => {
                bounded(self.api::<StatefulSet>(namespace).replace_scale(name, &params, scale)).await
            }
        }
    }

    /// Gives up the ownership of `spec.replicas` that our scale writes took, keeping every other
    /// `managedFields` entry as it is; conditional on `current`'s version (409 when it changed).
    ///
    /// Why: since Kubernetes 1.22 (kubernetes/kubernetes#98377) a write through `scale` records its
    /// field manager (`subresource: scale`) as owner of `spec.replicas` when it sets a non-zero
    /// count, and Helm 4's next server-side apply then fails with "conflict with \"cleanslate\" with
    /// subresource \"scale\"" (REFERENCES §6). The server-side apply documentation allows a client
    /// to edit `managedFields` through any write other than an apply
    /// (<https://kubernetes.io/docs/reference/using-api/server-side-apply/#clearing-managedfields>):
    /// the list is written back without our entries (a merge patch replaces lists whole), so nobody
    /// owns `spec.replicas` until Helm's next apply takes it. An empty list would be ignored (so
    /// that clients unaware of the field cannot strip it); `[{}]` resets it, which here removes
    /// nothing but our own entries. The server keeps the live list when it cannot decode the one
    /// sent, so the answer is checked.
    pub async fn give_up_replicas(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        current: &Workload,
    ) -> Result<Workload, KubeError> {
        let kept: Vec<&ManagedFieldsEntry> =
            current.metadata.managed_fields.iter().flatten().filter(|e| !owns_replicas_for_us(e)).collect();
        let managed_fields = if kept.is_empty() { json!([{}]) } else { json!(kept) };
        let patch = json!({"metadata": {
            "resourceVersion": current.metadata.resource_version,
            "managedFields": managed_fields,
        }});
        let patched = self.merge_patch_workload(namespace, workload, &patch).await?;
        if patched.replicas_owned_by_us() {
            return Err(KubeError::Decode(format!(
                "the API server kept cleanslate's ownership of spec.replicas of {workload} after the managedFields edit"
            )));
        }
        Ok(patched)
    }

    /// How far a Job has got: its failed pods so far and its `backoffLimit` (6 when unset, the API
    /// server's default); `None` when it does not exist.
    pub async fn job_progress(&self, namespace: &str, name: &str) -> Result<Option<JobProgress>, KubeError> {
        let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(self.client.clone(), namespace);
        let job = found(bounded(jobs.get(name)).await)?;
        Ok(job.map(|job| {
            let status = job.status.unwrap_or_default();
            let failing = status
                .conditions
                .iter()
                .flatten()
                .any(|c| matches!(c.type_.as_str(), "Failed" | "FailureTarget") && c.status == "True");
            let spec = job.spec.unwrap_or_default();
            let deadline_left = match (spec.active_deadline_seconds, status.start_time.as_ref()) {
                (Some(seconds), Some(started)) => {
                    let ends = started.0.as_second().saturating_add(seconds);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    Some(Duration::from_secs(ends.saturating_sub(now).max(0) as u64))
                }
                _ => None,
            };
            // Failed pods the controller has seen but not yet counted (its finalizer-tracked
            // `uncountedTerminatedPods`, Kubernetes 1.26+) are failures too.
            let uncounted =
                status.uncounted_terminated_pods.as_ref().and_then(|u| u.failed.as_ref()).map_or(0, Vec::len);
            JobProgress {
                failed: (status.failed.unwrap_or(0).max(0) as u32).saturating_add(uncounted as u32),
                backoff_limit: spec.backoff_limit.unwrap_or(6).max(0) as u32,
                failing,
                deadline_left,
            }
        }))
    }

    /// The ConfigMaps matching `selector` (label-selector syntax).
    pub async fn list_config_maps(&self, namespace: &str, selector: &str) -> Result<Vec<ConfigMap>, KubeError> {
        let params = kube::api::ListParams::default().labels(selector);
        Ok(bounded(self.config_maps(namespace).list(&params)).await?.items)
    }

    /// The Secrets matching `selector` (Helm's release records: `owner=helm,name=<release>`), read
    /// with the caller's own rights.
    pub async fn list_secrets(&self, namespace: &str, selector: &str) -> Result<Vec<Secret>, KubeError> {
        let params = kube::api::ListParams::default().labels(selector);
        Ok(bounded(self.api::<Secret>(namespace).list(&params)).await?.items)
    }

    /// The Secret, or `None` when it does not exist.
    pub async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, KubeError> {
        found(bounded(self.api::<Secret>(namespace).get(name)).await)
    }

    /// Every Deployment and StatefulSet in the namespace.
    pub async fn list_workloads(&self, namespace: &str) -> Result<Vec<(WorkloadRef, Workload)>, KubeError> {
        let params = kube::api::ListParams::default();
        let named = |kind: WorkloadKind, workload: Workload| {
            (WorkloadRef { kind, name: workload.metadata.name.clone().unwrap_or_default() }, workload)
        };
        let mut all: Vec<(WorkloadRef, Workload)> = Vec::new();
        for object in bounded(self.api::<Deployment>(namespace).list(&params)).await?.items {
            all.push(named(WorkloadKind::Deployment, object.into()));
        }
        for object in bounded(self.api::<StatefulSet>(namespace).list(&params)).await?.items {
            all.push(named(WorkloadKind::StatefulSet, object.into()));
        }
        Ok(all)
    }

    /// The `scale` subresource, or `None` when the workload does not exist.
    pub async fn get_scale(&self, namespace: &str, workload: &WorkloadRef) -> Result<Option<Scale>, KubeError> {
        let name = workload.name.as_str();
        found(match workload.kind {
            WorkloadKind::Deployment => bounded(self.api::<Deployment>(namespace).get_scale(name)).await,
            WorkloadKind::StatefulSet => bounded(self.api::<StatefulSet>(namespace).get_scale(name)).await,
        })
    }
}

/// The watcher's events as [`Change`]s: `Init`, `InitApply`… and `InitDone` become one
/// [`Change::Listed`], so a caller never judges a half-read list.
fn changes<K: Send + 'static>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Change<K>, KubeError>> + Send {
    events
        .scan(Vec::new(), |listing: &mut Vec<K>, event| {
            let out = match event {
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    None
                }
                Ok(watcher::Event::InitApply(object)) => {
                    listing.push(object);
                    None
                }
                Ok(watcher::Event::InitDone) => Some(Ok(Change::Listed(std::mem::take(listing)))),
                Ok(watcher::Event::Apply(object)) => Some(Ok(Change::Applied(object))),
                Ok(watcher::Event::Delete(object)) => Some(Ok(Change::Deleted(object))),
                Err(err) => Some(Err(KubeError::from(err))),
            };
            std::future::ready(Some(out))
        })
        .filter_map(std::future::ready)
}

/// The data of a ConfigMap (empty when it has none).
pub fn data_of(object: &ConfigMap) -> BTreeMap<String, String> {
    object.data.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only our own entries that own `spec.replicas` are taken for ours: Helm's apply entry and our
    /// annotation entry are not.
    #[test]
    fn only_our_replicas_entries_are_ours() {
        let entry = |manager: &str, fields: serde_json::Value| -> ManagedFieldsEntry {
            serde_json::from_value(json!({"manager": manager, "operation": "Update", "fieldsType": "FieldsV1",
                                          "fieldsV1": fields}))
            .expect("an entry")
        };
        let replicas = json!({"f:spec": {"f:replicas": {}}});
        assert!(owns_replicas_for_us(&entry(FIELD_MANAGER, replicas.clone())), "ours, with replicas");
        assert!(!owns_replicas_for_us(&entry("helm", replicas)), "Helm's");
        let annotation = json!({"f:metadata": {"f:annotations": {"f:cleanslate.io/quiesced-replicas": {}}}});
        assert!(!owns_replicas_for_us(&entry(FIELD_MANAGER, annotation)), "our annotation only");
    }

    /// A rolling update that keeps an old Ready pod while the new one waits in its gate is not
    /// rolled out, though `readyReplicas` says 1 of 1.
    #[test]
    fn an_old_ready_pod_does_not_make_a_rollout() {
        let workload = |ready, updated, replicas| Workload {
            replicas: Some(1),
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            status_replicas: Some(replicas),
            ..Default::default()
        };
        assert!(workload(1, 1, 1).rolled_out(), "done");
        assert!(!workload(1, 1, 2).rolled_out(), "the old pod is the ready one");
        assert!(!workload(0, 1, 1).rolled_out(), "the new pod is not ready");
        let stale = Workload { generation: Some(3), observed_generation: Some(2), ..workload(1, 1, 1) };
        assert!(!stale.rolled_out(), "the controller has not seen the spec");
    }
}
