//! Deployments and StatefulSets (`apps/v1`), their `scale` subresource, and their pods, as the API
//! server and the controllers behind it behave for what cleanslate's quiesce does:
//! - get, update (PUT; 409 on a stale `resourceVersion`), JSON merge patch and server-side apply
//!   (`application/apply-patch+yaml` with `fieldManager`, `force`); 415 for other patch types; a
//!   `metadata.resourceVersion` in a patch is a precondition, 409 when stale; `spec.replicas`
//!   defaults to 1 when a manifest leaves it out;
//! - field ownership of `spec.replicas`, annotations and labels (see `ownership`), for every write
//!   including the `scale` subresource's;
//! - `scale` (`autoscaling/v1` `Scale`): GET, and PUT whose `resourceVersion` is the workload's
//!   (409 when stale, 422 for a negative count); `status.selector` is the workload's selector;
//! - RBAC: `deployments/scale` is a resource of its own, so `patch deployments` does not allow a
//!   scale, and `resourceNames` limit both;
//! - pods: one per replica, labelled from the pod template, Pending while init containers (a gate)
//!   run until a test lets them pass, Running and Ready otherwise; listed and watched with a
//!   `labelSelector` (equality-based requirements; others answer 400). A scale-down sets
//!   `deletionTimestamp` (MODIFIED) and removes the pod after a grace delay (DELETED), as the
//!   kubelet does once the containers exit; a held workload's pods never finish terminating until
//!   the test releases them (a finalizer, or an app that ignores SIGTERM). A new pod template
//!   replaces every pod (a rollout, without surge).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ownership;
use super::{
    KubeApi, Shared, Store, admit, commit, key, list_response, merge, name_field_selector, status_response,
    watch_response,
};

/// How long a terminating pod takes to go away unless told otherwise.
const DEFAULT_TERMINATION: Duration = Duration::from_millis(200);

#[derive(Default)]
pub(super) struct AppsState {
    /// Pod (namespace, name) → its workload.
    owners: HashMap<(String, String), Owner>,
    /// Workloads (namespace, name) whose pods do not finish terminating until released.
    held: HashSet<(String, String)>,
    termination: Option<Duration>,
    counter: u64,
    race_scales: usize,
}

#[derive(Clone)]
struct Owner {
    resource: &'static str,
    workload: String,
    template: String,
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/apis/apps/v1/namespaces/{namespace}/{resource}/{name}",
            axum::routing::get(workload).put(workload).patch(workload),
        )
        .route("/apis/apps/v1/namespaces/{namespace}/{resource}", axum::routing::get(workloads))
        .route("/apis/apps/v1/namespaces/{namespace}/{resource}/{name}/scale", axum::routing::get(scale).put(scale))
        .route("/api/v1/namespaces/{namespace}/pods", axum::routing::get(pods))
        .route("/api/v1/namespaces/{namespace}/pods/{name}", axum::routing::delete(delete_pod))
}

fn resource_of(plural: &str) -> Option<&'static str> {
    match plural {
        "deployments" => Some("deployments"),
        "statefulsets" => Some("statefulsets"),
        _ => None,
    }
}

fn not_found(resource: &str, name: &str) -> Response {
    status_response(404, "NotFound", format!("{resource}.apps \"{name}\" not found"))
}

fn conflict(resource: &str, name: &str) -> Response {
    status_response(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {resource}.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

/// The API server's defaulting: a manifest without `replicas` gets 1.
fn default_replicas(object: &mut Value) {
    if object["spec"]["replicas"].is_null() {
        object["spec"]["replicas"] = json!(1);
    }
}

async fn workload(
    State(shared): State<Arc<Shared>>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(resource) = resource_of(&plural) else {
        return status_response(404, "NotFound", "the server could not find the requested resource".into());
    };
    let verb = match method {
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        _ => return status_response(405, "MethodNotAllowed", "method not allowed".into()),
    };
    let path = format!("/apis/apps/v1/namespaces/{namespace}/{resource}/{name}");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", resource, verb, Some(&name)) {
        return *response;
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let applying = verb == "patch" && content_type == "application/apply-patch+yaml";
    let existing = store.objects.get(&key(resource, &namespace, &name)).cloned();
    let created = existing.is_none();
    let current = match existing {
        Some(current) => current,
        // An apply creates what does not exist yet, and needs a fieldManager
        // (<https://kubernetes.io/docs/reference/using-api/server-side-apply/>).
        None if applying => json!({"metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")}}),
        None => return not_found(resource, &name),
    };
    let current_rv = current["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok());
    let manager = ownership::manager_of(query.get("fieldManager"), user_agent);
    let mut object = match verb {
        "get" => return axum::Json(current).into_response(),
        "patch" if applying => {
            if query.get("fieldManager").is_none_or(String::is_empty) {
                return status_response(400, "BadRequest", "fieldManager is required for apply requests".into());
            }
            let Ok(applied) = serde_yaml::from_slice::<Value>(&body) else {
                return status_response(400, "BadRequest", "invalid apply patch".into());
            };
            let force = query.get("force").is_some_and(|f| f == "true");
            match ownership::apply(&current, &applied, &manager, force) {
                Ok(object) => object,
                Err(message) => return status_response(409, "Conflict", message),
            }
        }
        "update" => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status_response(400, "BadRequest", "invalid body".into());
            };
            if object["metadata"]["resourceVersion"].as_str().is_some_and(|rv| rv != current_rv) {
                return conflict(resource, &name);
            }
            if object["metadata"]["name"] != json!(name) {
                return status_response(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name on the URL".into(),
                );
            }
            let base = ownership::base_for_update(&current, &object);
            let mut object = object;
            ownership::record_update(&current, &mut object, base, &manager, None);
            object
        }
        _ => {
            if content_type != "application/merge-patch+json" {
                // The real server also takes strategic-merge and JSON patches: not modeled.
                return status_response(
                    415,
                    "UnsupportedMediaType",
                    format!("the stand-in only models merge and apply patches, not {content_type:?}"),
                );
            }
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status_response(400, "BadRequest", "invalid patch".into());
            };
            if patch["metadata"]["resourceVersion"].as_str().is_some_and(|rv| rv != current_rv) {
                return conflict(resource, &name);
            }
            let mut object = current.clone();
            merge(&mut object, &patch);
            let base = ownership::base_for_update(&current, &object);
            ownership::record_update(&current, &mut object, base, &manager, None);
            object
        }
    };
    object["metadata"]["uid"] = current["metadata"]["uid"].clone();
    default_replicas(&mut object);
    let event = if created { "ADDED" } else { "MODIFIED" };
    let committed = commit(&shared, &mut store, event, resource, &namespace, &name, object);
    reconcile(&shared, &mut store, resource, &namespace, &name);
    axum::Json(committed).into_response()
}

/// A list of the namespace's Deployments or StatefulSets (watches are not modelled).
async fn workloads(
    State(shared): State<Arc<Shared>>,
    Path((namespace, plural)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(resource) = resource_of(&plural) else {
        return status_response(404, "NotFound", "the server could not find the requested resource".into());
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return status_response(405, "MethodNotAllowed", "watches of workloads are not modelled".into());
    }
    let path = format!("/apis/apps/v1/namespaces/{namespace}/{resource}");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", resource, "list", None) {
        return *response;
    }
    let requirements = match parse_selector(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
        Ok(requirements) => requirements,
        Err(message) => return status_response(400, "BadRequest", message),
    };
    let kind = if resource == "deployments" { "DeploymentList" } else { "StatefulSetList" };
    list_response(&store, resource, kind, &query, &move |ns: &str, _: &str, object: &Value| {
        ns == namespace && matches(&requirements, object)
    })
}

/// The workload's selector in label-selector syntax (`matchLabels` only, keys sorted).
fn selector_of(workload: &Value) -> String {
    let labels: BTreeMap<String, String> =
        serde_json::from_value(workload["spec"]["selector"]["matchLabels"].clone()).unwrap_or_default();
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn scale_of(store: &Store, resource: &'static str, namespace: &str, workload: &Value) -> Value {
    let name = workload["metadata"]["name"].as_str().unwrap_or_default();
    let running = live_pods(store, resource, namespace, name).len();
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": name, "namespace": namespace,
                     "resourceVersion": workload["metadata"]["resourceVersion"],
                     "uid": workload["metadata"]["uid"]},
        "spec": {"replicas": workload["spec"]["replicas"]},
        "status": {"replicas": running, "selector": selector_of(workload)}
    })
}

async fn scale(
    State(shared): State<Arc<Shared>>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(resource) = resource_of(&plural) else {
        return status_response(404, "NotFound", "the server could not find the requested resource".into());
    };
    let verb = match method {
        Method::GET => "get",
        Method::PUT => "update",
        _ => return status_response(405, "MethodNotAllowed", "method not modeled by the stand-in".into()),
    };
    let subresource = format!("{resource}/scale");
    let path = format!("/apis/apps/v1/namespaces/{namespace}/{resource}/{name}/scale");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", &subresource, verb, Some(&name)) {
        return *response;
    }
    let Some(mut current) = store.objects.get(&key(resource, &namespace, &name)).cloned() else {
        return not_found(resource, &name);
    };
    if verb == "get" {
        return axum::Json(scale_of(&store, resource, &namespace, &current)).into_response();
    }
    let Ok(requested) = serde_json::from_slice::<Value>(&body) else {
        return status_response(400, "BadRequest", "invalid body".into());
    };
    if store.apps.race_scales > 0 {
        store.apps.race_scales -= 1;
        let mut other = current.clone();
        other["metadata"]["annotations"]["raced"] = json!(store.resource_version.to_string());
        commit(&shared, &mut store, "MODIFIED", resource, &namespace, &name, other);
        return conflict(resource, &name);
    }
    let current_rv = current["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
    if requested["metadata"]["resourceVersion"].as_str().is_some_and(|rv| !rv.is_empty() && rv != current_rv) {
        return conflict(resource, &name);
    }
    if requested["metadata"]["name"] != json!(name) {
        return status_response(400, "BadRequest", "the name of the object does not match the name on the URL".into());
    }
    let Some(replicas) = requested["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
        return status_response(
            422,
            "Invalid",
            format!(
                "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: must be greater than or equal to 0"
            ),
        );
    };
    let before = current.clone();
    current["spec"]["replicas"] = json!(replicas);
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok());
    let manager = ownership::manager_of(query.get("fieldManager"), user_agent);
    let base = ownership::base_for_update(&before, &json!({}));
    ownership::record_update(&before, &mut current, base, &manager, Some("scale"));
    let committed = commit(&shared, &mut store, "MODIFIED", resource, &namespace, &name, current);
    reconcile(&shared, &mut store, resource, &namespace, &name);
    axum::Json(scale_of(&store, resource, &namespace, &committed)).into_response()
}

/// Equality-based label selector requirements: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
pub(super) fn parse_selector(text: &str) -> Result<Vec<(String, &'static str, String)>, String> {
    let mut requirements = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains('(') || part.contains(' ') {
            return Err(format!("set-based requirement {part:?} is not modeled by the stand-in"));
        }
        let requirement = if let Some((k, v)) = part.split_once("!=") {
            (k.to_string(), "!=", v.to_string())
        } else if let Some((k, v)) = part.split_once("==") {
            (k.to_string(), "=", v.to_string())
        } else if let Some((k, v)) = part.split_once('=') {
            (k.to_string(), "=", v.to_string())
        } else if let Some(k) = part.strip_prefix('!') {
            (k.to_string(), "!", String::new())
        } else {
            (part.to_string(), "exists", String::new())
        };
        if requirement.0.is_empty() {
            return Err(format!("unable to parse requirement {part:?}"));
        }
        requirements.push(requirement);
    }
    Ok(requirements)
}

pub(super) fn matches(requirements: &[(String, &'static str, String)], object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    requirements.iter().all(|(k, op, v)| {
        let value = labels[k.as_str()].as_str();
        match *op {
            "=" => value == Some(v.as_str()),
            "!=" => value != Some(v.as_str()),
            "!" => value.is_none(),
            _ => value.is_some(),
        }
    })
}

async fn pods(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v1/namespaces/{namespace}/pods");
    let query_text: String = {
        let mut pairs: Vec<_> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        pairs.join("&")
    };
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = if watching { "watch" } else { "list" };
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, &query_text, "pods", verb, None) {
        return *response;
    }
    let requirements = match parse_selector(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
        Ok(requirements) => requirements,
        Err(message) => return status_response(400, "BadRequest", message),
    };
    let selected = match name_field_selector(&query) {
        Ok(selected) => selected,
        Err(response) => return *response,
    };
    let filter = Arc::new(move |ns: &str, name: &str, object: &Value| {
        ns == namespace && selected.as_deref().is_none_or(|s| s == name) && matches(&requirements, object)
    });
    if !watching {
        return list_response(&store, "pods", "PodList", &query, &*filter);
    }
    watch_response(&shared, store, "pods", &query, filter)
}

/// Pods of a workload that are not terminating, with their template.
fn live_pods(store: &Store, resource: &str, namespace: &str, workload: &str) -> Vec<(String, String)> {
    let mut pods: Vec<(String, String)> = store
        .apps
        .owners
        .iter()
        .filter(|((ns, _), owner)| ns == namespace && owner.resource == resource && owner.workload == workload)
        .filter(|((ns, pod), _)| {
            store.objects.get(&key("pods", ns, pod)).is_some_and(|p| p["metadata"]["deletionTimestamp"].is_null())
        })
        .map(|((_, pod), owner)| (pod.clone(), owner.template.clone()))
        .collect();
    // By ordinal for a StatefulSet (`db-10` after `db-9`), by name otherwise.
    let ordinal = |pod: &str| pod.rsplit_once('-').and_then(|(_, n)| n.parse::<u64>().ok());
    pods.sort_by(|(a, _), (b, _)| ordinal(a).cmp(&ordinal(b)).then_with(|| a.cmp(b)));
    pods
}

/// What the controllers and the kubelet do after a workload changed: one pod per replica of the
/// current template.
fn reconcile(shared: &Arc<Shared>, store: &mut Store, resource: &'static str, namespace: &str, name: &str) {
    let Some(workload) = store.objects.get(&key(resource, namespace, name)).cloned() else { return };
    let desired = workload["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let template = workload["spec"]["template"].to_string();
    let mut live = live_pods(store, resource, namespace, name);
    let ordered = resource == "statefulsets" && workload["spec"]["podManagementPolicy"].as_str() != Some("Parallel");
    if ordered && live.len() > desired {
        // OrderedReady (`processCondemned` in the StatefulSet controller): from the highest ordinal,
        // one pod at a time, after the previous one is gone; blocked while that pod is not Ready
        // unless it is the lowest-ordinal unhealthy pod (REFERENCES §5.5: two unhealthy pods stall).
        let terminating = store.apps.owners.iter().any(|((ns, pod), owner)| {
            ns == namespace
                && owner.resource == resource
                && owner.workload == name
                && store
                    .objects
                    .get(&key("pods", ns, pod))
                    .is_some_and(|p| !p["metadata"]["deletionTimestamp"].is_null())
        });
        let ready = |pod: &str| store.objects.get(&key("pods", namespace, pod)).is_some_and(is_ready);
        let (target, _) = live.last().cloned().expect("more pods than desired");
        let first_unhealthy = live.iter().map(|(pod, _)| pod.clone()).find(|pod| !ready(pod));
        let blocked = !ready(&target) && first_unhealthy.as_deref() != Some(target.as_str());
        if !terminating && !blocked {
            terminate(shared, store, namespace, &target);
        }
        return;
    }
    for (pod, _) in live.iter().filter(|(_, t)| *t != template) {
        terminate(shared, store, namespace, pod);
    }
    live.retain(|(_, t)| *t == template);
    while live.len() > desired {
        let (pod, _) = live.pop().expect("non-empty");
        terminate(shared, store, namespace, &pod);
    }
    for _ in live.len()..desired {
        store.apps.counter += 1;
        // A StatefulSet's pods are `<name>-<ordinal>`, the lowest free ordinal first
        // (<https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/#ordinal-index>).
        let pod = if resource == "statefulsets" {
            let taken: HashSet<String> = store
                .apps
                .owners
                .iter()
                .filter(|((ns, _), owner)| ns == namespace && owner.workload == name && owner.resource == resource)
                .map(|((_, pod), _)| pod.clone())
                .collect();
            (0..).map(|ordinal| format!("{name}-{ordinal}")).find(|pod| !taken.contains(pod)).expect("a free ordinal")
        } else {
            format!("{name}-{:05x}", store.apps.counter)
        };
        // A Deployment's pods belong to a ReplicaSet named after it and its pod template's hash.
        let (owner_kind, owner_name) = if resource == "deployments" {
            let hash = template.bytes().fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
            ("ReplicaSet", format!("{name}-{hash:x}"))
        } else {
            ("StatefulSet", name.to_string())
        };
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "uid": format!("uid-{pod}"),
                         "labels": workload["spec"]["template"]["metadata"]["labels"],
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner_name}]},
            "spec": workload["spec"]["template"]["spec"],
            "status": initial_pod_status(&workload["spec"]["template"]["spec"])
        });
        store.apps.owners.insert(
            (namespace.to_string(), pod.clone()),
            Owner { resource, workload: name.to_string(), template: template.clone() },
        );
        commit(shared, store, "ADDED", "pods", namespace, &pod, object);
    }
    refresh_ready(store, namespace, name);
}

/// Marks a pod terminating; unless its workload is held, it is gone after the grace delay.
fn terminate(shared: &Arc<Shared>, store: &mut Store, namespace: &str, pod: &str) {
    let Some(mut object) = store.objects.get(&key("pods", namespace, pod)).cloned() else { return };
    object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    commit(shared, store, "MODIFIED", "pods", namespace, pod, object);
    let owner = store.apps.owners.get(&(namespace.to_string(), pod.to_string())).cloned();
    if let Some(owner) = &owner {
        refresh_ready(store, namespace, &owner.workload);
    }
    if owner.is_some_and(|o| store.apps.held.contains(&(namespace.to_string(), o.workload))) {
        return;
    }
    let delay = store.apps.termination.unwrap_or(DEFAULT_TERMINATION);
    let (shared, namespace, pod) = (shared.clone(), namespace.to_string(), pod.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut store = shared.store.lock().unwrap();
        let held = store
            .apps
            .owners
            .get(&(namespace.clone(), pod.clone()))
            .is_some_and(|o| store.apps.held.contains(&(namespace.clone(), o.workload.clone())));
        if !held {
            remove_pod(&shared, &mut store, &namespace, &pod);
        }
    });
}

fn remove_pod(shared: &Arc<Shared>, store: &mut Store, namespace: &str, pod: &str) {
    if let Some(object) = store.objects.get(&key("pods", namespace, pod)).cloned() {
        commit(shared, store, "DELETED", "pods", namespace, pod, object);
    }
    if let Some(owner) = store.apps.owners.get(&(namespace.to_string(), pod.to_string())).cloned() {
        store.apps.owners.remove(&(namespace.to_string(), pod.to_string()));
        refresh_ready(store, namespace, &owner.workload);
        store.apps.owners.insert((namespace.to_string(), pod.to_string()), owner);
    }
    // The StatefulSet controller goes on with the next pod once one is gone.
    if let Some(owner) = store.apps.owners.remove(&(namespace.to_string(), pod.to_string()))
        && owner.resource == "statefulsets"
    {
        reconcile(shared, store, owner.resource, namespace, &owner.workload);
    }
}

/// A new pod's status as the kubelet reports it: a pod with init containers is Pending while they
/// run (a cleanslate gate waits there), its main containers waiting in `PodInitializing`, its
/// `Initialized` condition false; a pod without them runs at once
/// (<https://kubernetes.io/docs/concepts/workloads/pods/init-containers/>,
/// <https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-conditions>).
fn initial_pod_status(spec: &Value) -> Value {
    let names = |list: &Value| -> Vec<String> {
        list.as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(str::to_string)).collect()
    };
    let (init, main) = (names(&spec["initContainers"]), names(&spec["containers"]));
    if init.is_empty() {
        let statuses: Vec<Value> = main
            .iter()
            .map(|n| json!({"name": n, "ready": true, "started": true, "restartCount": 0, "state": {"running": {}}}))
            .collect();
        return json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                      "containerStatuses": statuses});
    }
    let init_statuses = init_container_statuses(&spec["initContainers"]);
    let statuses: Vec<Value> = main
        .iter()
        .map(|n| {
            json!({"name": n, "ready": false, "started": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "PodInitializing"}}})
        })
        .collect();
    json!({"phase": "Pending", "conditions": [{"type": "Initialized", "status": "False"}, {"type": "Ready", "status": "False"}],
           "initContainerStatuses": init_statuses, "containerStatuses": statuses})
}

/// The init containers' statuses of a pod still initializing. The kubelet runs init containers one at
/// a time, in order; a native sidecar (an init container with `restartPolicy: Always`) is started, and
/// keeps running beside the others, before the next one starts
/// (<https://kubernetes.io/docs/concepts/workloads/pods/init-containers/>,
/// <https://kubernetes.io/docs/concepts/workloads/pods/sidecar-containers/>). Here the gate (or, with
/// none, the first regular init container) is the one still running: the regular ones before it have
/// completed, the sidecars before it run (`started: true`), everything after it waits.
fn init_container_statuses(init: &Value) -> Vec<Value> {
    let containers: Vec<&Value> = init.as_array().into_iter().flatten().collect();
    let sidecar = |c: &Value| c["restartPolicy"] == "Always";
    let blocking = containers
        .iter()
        .position(|c| c["name"] == "cleanslate-gate")
        .or_else(|| containers.iter().position(|c| !sidecar(c)));
    containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = &c["name"];
            match blocking {
                Some(b) if i < b && sidecar(c) => {
                    json!({"name": name, "ready": true, "started": true, "restartCount": 0, "state": {"running": {}}})
                }
                Some(b) if i < b => json!({"name": name, "ready": true, "restartCount": 0,
                                           "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}),
                Some(b) if i == b => json!({"name": name, "ready": false, "restartCount": 0, "state": {"running": {}}}),
                _ => json!({"name": name, "ready": false, "restartCount": 0,
                            "state": {"waiting": {"reason": "PodInitializing"}}}),
            }
        })
        .collect()
}

/// The workload controller's `status.readyReplicas`, `updatedReplicas` and `replicas` over its own
/// pods that are not terminating
/// (<https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#deployment-status>). Written in place, without a new `resourceVersion` (the real controller's status
/// writes bump it; quiesce's conditional scale writes would then race them, which the tests of
/// conflicts exercise on purpose elsewhere).
fn refresh_ready(store: &mut Store, namespace: &str, name: &str) {
    let owned: Vec<(String, String)> = store
        .apps
        .owners
        .iter()
        .filter(|((ns, _), owner)| ns == namespace && owner.workload == name)
        .map(|((_, pod), owner)| (pod.clone(), owner.template.clone()))
        .collect();
    let live: Vec<(Value, String)> = owned
        .iter()
        .filter_map(|(pod, template)| {
            store.objects.get(&key("pods", namespace, pod)).map(|p| (p.clone(), template.clone()))
        })
        .filter(|(pod, _)| pod["metadata"]["deletionTimestamp"].is_null())
        .collect();
    for resource in ["deployments", "statefulsets"] {
        if let Some(object) = store.objects.get_mut(&key(resource, namespace, name)) {
            let current = object["spec"]["template"].to_string();
            let updated: Vec<&Value> = live.iter().filter(|(_, t)| *t == current).map(|(p, _)| p).collect();
            // Every Ready pod counts, an old template's too (a rolling update keeps old pods).
            object["status"]["readyReplicas"] = json!(live.iter().filter(|(p, _)| is_ready(p)).count());
            object["status"]["updatedReplicas"] = json!(updated.len());
            object["status"]["replicas"] = json!(live.len());
        }
    }
}

/// A pod's Ready condition.
fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// DELETE of one pod: graceful (it terminates as on a scale-down); a `preconditions.uid` that is
/// not the pod's is 409, as the API server answers
/// (<https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/delete-options/>).
async fn delete_pod(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
    let mut store = shared.store.lock().unwrap();
    if let Err(response) = admit(&mut store, &headers, &method, &path, "", "pods", "delete", Some(&name)) {
        return *response;
    }
    let Some(pod) = store.objects.get(&key("pods", &namespace, &name)).cloned() else {
        return status_response(404, "NotFound", format!("pods \"{name}\" not found"));
    };
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(uid) = options["preconditions"]["uid"].as_str()
        && pod["metadata"]["uid"].as_str() != Some(uid)
    {
        return status_response(
            409,
            "Conflict",
            format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", pod["metadata"]["uid"]),
        );
    }
    if pod["metadata"]["deletionTimestamp"].is_null() {
        terminate(&shared, &mut store, &namespace, &name);
    }
    let current = store.objects.get(&key("pods", &namespace, &name)).cloned().unwrap_or(pod);
    axum::Json(current).into_response()
}

impl KubeApi {
    /// Deletes a Deployment or StatefulSet as Helm does for a resource the new revision dropped
    /// (background propagation, the default: the object goes at once, and the garbage collector
    /// deletes its pods, which terminate gracefully).
    pub fn delete_workload(&self, namespace: &str, resource: &str, name: &str) {
        let resource: &'static str = match resource {
            "deployments" => "deployments",
            "statefulsets" => "statefulsets",
            other => panic!("not a workload resource: {other}"),
        };
        let mut store = self.store();
        let Some(object) = store.objects.get(&key(resource, namespace, name)).cloned() else { return };
        commit(&self.shared, &mut store, "DELETED", resource, namespace, name, object);
        let pods: Vec<String> = store
            .apps
            .owners
            .iter()
            .filter(|((ns, _), owner)| ns == namespace && owner.workload == name)
            .map(|((_, pod), _)| pod.clone())
            .collect();
        for pod in pods {
            terminate(&self.shared, &mut store, namespace, &pod);
        }
    }

    /// Creates or updates a Deployment or StatefulSet the way `helm install/upgrade` leaves it: a
    /// new object gets the API server's defaults; an existing one takes the manifest's labels,
    /// annotations and `spec` fields, and keeps what the manifest does not set (a `replicas` left
    /// out stays as it is, as with Helm's three-way merge and with server-side apply).
    pub fn apply_workload(&self, namespace: &str, manifest: &Value) {
        let resource = match manifest["kind"].as_str() {
            Some("Deployment") => "deployments",
            Some("StatefulSet") => "statefulsets",
            other => panic!("not a workload: {other:?}"),
        };
        let name = manifest["metadata"]["name"].as_str().expect("name").to_string();
        let mut store = self.store();
        let existing = store.objects.get(&key(resource, namespace, &name)).cloned();
        let (kind, object) = match existing {
            None => {
                let mut object = manifest.clone();
                object["metadata"]["uid"] = json!(format!("uid-{name}"));
                default_replicas(&mut object);
                ownership::record_update(&json!({}), &mut object, Vec::new(), "helm", None);
                ("ADDED", object)
            }
            Some(mut live) => {
                let before = live.clone();
                for field in ["labels", "annotations"] {
                    if let Some(map) = manifest["metadata"][field].as_object() {
                        for (k, v) in map {
                            live["metadata"][field][k] = v.clone();
                        }
                    }
                }
                if let Some(spec) = manifest["spec"].as_object() {
                    for (k, v) in spec {
                        live["spec"][k] = v.clone();
                    }
                }
                // Helm 3 writes with a three-way merge patch: an update by "helm".
                let base = ownership::base_for_update(&before, &json!({}));
                ownership::record_update(&before, &mut live, base, "helm", None);
                ("MODIFIED", live)
            }
        };
        commit(&self.shared, &mut store, kind, resource, namespace, &name, object);
        reconcile(&self.shared, &mut store, resource, namespace, &name);
    }

    /// An HTTP client that trusts the stand-in's CA, for requests a test makes as another client.
    fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA"))
            .build()
            .expect("client")
    }

    /// A server-side apply of `manifest` over HTTP, as Helm 4 sends it (`application/apply-patch+yaml`,
    /// `fieldManager`, `force`): the stored object, or the status code and message.
    pub async fn server_side_apply(
        &self,
        token: &str,
        namespace: &str,
        manifest: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, (u16, String)> {
        let resource = match manifest["kind"].as_str() {
            Some("Deployment") => "deployments",
            Some("StatefulSet") => "statefulsets",
            other => panic!("not a workload: {other:?}"),
        };
        let name = manifest["metadata"]["name"].as_str().expect("name");
        let client = self.http_client();
        let url = format!("{}/apis/apps/v1/namespaces/{namespace}/{resource}/{name}", self.url.trim_end_matches('/'));
        let response = client
            .patch(url)
            .query(&[("fieldManager", manager), ("force", if force { "true" } else { "false" })])
            .bearer_auth(token)
            .header("content-type", "application/apply-patch+yaml")
            .body(serde_yaml::to_string(manifest).expect("YAML"))
            .send()
            .await
            .expect("stand-in answers");
        let code = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON");
        if code == 200 { Ok(body) } else { Err((code, body["message"].as_str().unwrap_or_default().to_string())) }
    }

    /// A PUT of a Deployment's `scale` over HTTP by `manager` (as `kubectl scale` sends it): the status.
    pub async fn scale_as(&self, token: &str, namespace: &str, name: &str, replicas: i64, manager: &str) -> u16 {
        let client = self.http_client();
        let url =
            format!("{}/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale", self.url.trim_end_matches('/'));
        let body = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                          "metadata": {"name": name, "namespace": namespace}, "spec": {"replicas": replicas}});
        let response = client
            .put(url)
            .query(&[("fieldManager", manager)])
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("answers");
        response.status().as_u16()
    }

    /// A Deployment (`deployments`) or StatefulSet (`statefulsets`) as the API returns it.
    pub fn workload(&self, namespace: &str, resource: &str, name: &str) -> Option<Value> {
        let resource = resource_of(resource).expect("deployments or statefulsets");
        self.store().objects.get(&key(resource, namespace, name)).cloned()
    }

    /// A workload's `spec.replicas` and its cleanslate annotation, if any.
    pub fn replicas_and_annotation(&self, namespace: &str, resource: &str, name: &str) -> (i64, Option<String>) {
        let object = self.workload(namespace, resource, name).unwrap_or_else(|| panic!("{resource}/{name} exists"));
        let annotation =
            object["metadata"]["annotations"]["cleanslate.io/quiesced-replicas"].as_str().map(str::to_string);
        (object["spec"]["replicas"].as_i64().unwrap_or(-1), annotation)
    }

    /// Every pod of a workload, terminating ones included.
    pub fn pods_of(&self, namespace: &str, name: &str) -> Vec<Value> {
        let store = self.store();
        let mut pods: Vec<Value> = store
            .apps
            .owners
            .iter()
            .filter(|((ns, _), owner)| ns == namespace && owner.workload == name)
            .filter_map(|((ns, pod), _)| store.objects.get(&key("pods", ns, pod)).cloned())
            .collect();
        pods.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string());
        pods
    }

    /// Adds a pod the workload controllers do not manage: a finished (`Failed`, evicted) pod that
    /// stays until garbage-collected, or another owner's pod (a Job) whose labels match a selector.
    pub fn put_foreign_pod(&self, namespace: &str, name: &str, labels: Value, owner: (&str, &str), phase: &str) {
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels,
                         "ownerReferences": [{"apiVersion": "v1", "kind": owner.0, "name": owner.1}]},
            "status": {"phase": phase}
        });
        let mut store = self.store();
        commit(&self.shared, &mut store, "ADDED", "pods", namespace, name, object);
    }

    /// Every pod of workload `name` finishes its init containers (their gates passed) and runs.
    pub fn pass_gates(&self, namespace: &str, name: &str) {
        let mut store = self.store();
        let pods: Vec<String> = store
            .apps
            .owners
            .iter()
            .filter(|((ns, _), owner)| ns == namespace && owner.workload == name)
            .map(|((_, pod), _)| pod.clone())
            .collect();
        for pod in pods {
            let Some(mut object) = store.objects.get(&key("pods", namespace, &pod)).cloned() else { continue };
            if object["status"]["phase"] != "Pending" {
                continue;
            }
            let mut spec = object["spec"].clone();
            let init = spec["initContainers"].take();
            let mut status = initial_pod_status(&spec);
            // The kubelet keeps the finished init containers' statuses; native sidecars keep running.
            status["initContainerStatuses"] = json!(
                init.as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| if c["restartPolicy"] == "Always" {
                        json!({"name": c["name"], "ready": true, "started": true, "restartCount": 0, "state": {"running": {}}})
                    } else {
                        json!({"name": c["name"], "ready": true, "restartCount": 0,
                               "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}})
                    })
                    .collect::<Vec<_>>()
            );
            status["conditions"] =
                json!([{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}]);
            object["status"] = status;
            commit(&self.shared, &mut store, "MODIFIED", "pods", namespace, &pod, object);
        }
        refresh_ready(&mut store, namespace, name);
    }

    /// The gate init container of every pod of workload `name` exited with `code`, leaving
    /// `message` as its termination message, as the kubelet reports it: the container terminated,
    /// the pod still Pending (a failed init container is restarted with back-off under
    /// `restartPolicy: Always`, `CrashLoopBackOff`, keeping the last termination:
    /// <https://kubernetes.io/docs/concepts/workloads/pods/init-containers/#detailed-behavior>,
    /// <https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#container-restarts>; the
    /// message is the container's termination message,
    /// <https://kubernetes.io/docs/tasks/debug/debug-application/determine-reason-pod-failure/>).
    pub fn gate_exited(&self, namespace: &str, name: &str, code: i32, message: &str) {
        let mut store = self.store();
        let pods: Vec<String> = store
            .apps
            .owners
            .iter()
            .filter(|((ns, _), owner)| ns == namespace && owner.workload == name)
            .map(|((_, pod), _)| pod.clone())
            .collect();
        for pod in pods {
            let Some(mut object) = store.objects.get(&key("pods", namespace, &pod)).cloned() else { continue };
            let statuses = object["status"]["initContainerStatuses"].as_array_mut().cloned().unwrap_or_default();
            let updated: Vec<Value> = statuses
                .into_iter()
                .map(|mut status| {
                    if status["name"] == "cleanslate-gate" {
                        status["state"] = json!({"waiting": {"reason": "CrashLoopBackOff"}});
                        status["lastState"] =
                            json!({"terminated": {"exitCode": code, "reason": "Error", "message": message}});
                        status["restartCount"] = json!(1);
                    }
                    status
                })
                .collect();
            object["status"]["initContainerStatuses"] = json!(updated);
            commit(&self.shared, &mut store, "MODIFIED", "pods", namespace, &pod, object);
        }
    }

    /// The pod stops being healthy: Running, but not Ready (a crash loop, a failing probe).
    pub fn make_unhealthy(&self, namespace: &str, pod: &str) {
        let mut store = self.store();
        let mut object = store.objects.get(&key("pods", namespace, pod)).cloned().expect("the pod exists");
        object["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}]);
        object["status"]["containerStatuses"] =
            json!([{"name": "app", "ready": false, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]);
        commit(&self.shared, &mut store, "MODIFIED", "pods", namespace, pod, object);
        if let Some(owner) = store.apps.owners.get(&(namespace.to_string(), pod.to_string())).cloned() {
            refresh_ready(&mut store, namespace, &owner.workload);
        }
    }

    /// From now on the pods of workload `name` stay (terminating) until [`KubeApi::release_pods`].
    pub fn hold_pods(&self, namespace: &str, name: &str) {
        self.store().apps.held.insert((namespace.to_string(), name.to_string()));
    }

    /// Lets the held pods of workload `name` finish terminating now.
    pub fn release_pods(&self, namespace: &str, name: &str) {
        let mut store = self.store();
        store.apps.held.remove(&(namespace.to_string(), name.to_string()));
        let terminating: Vec<String> = store
            .apps
            .owners
            .iter()
            .filter(|((ns, _), owner)| ns == namespace && owner.workload == name)
            .filter(|((ns, pod), _)| {
                store.objects.get(&key("pods", ns, pod)).is_some_and(|p| !p["metadata"]["deletionTimestamp"].is_null())
            })
            .map(|((_, pod), _)| pod.clone())
            .collect();
        for pod in terminating {
            remove_pod(&self.shared, &mut store, namespace, &pod);
        }
    }

    /// How long a terminating pod takes to go away (200 ms unless set).
    pub fn set_termination_delay(&self, delay: Duration) {
        self.store().apps.termination = Some(delay);
    }

    /// The next `count` scale updates race another writer of the workload and get 409 Conflict.
    pub fn race_next_scales(&self, count: usize) {
        self.store().apps.race_scales += count;
    }
}
