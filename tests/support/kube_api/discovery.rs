//! The API server's version and discovery documents, for the resources the stand-in serves: what
//! `helm template --dry-run=server` (and `helm install`) read before its `lookup` function lists
//! objects (client-go's discovery client and REST mapper,
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#discovery-api>). Served as the legacy
//! (unaggregated) documents with `Content-Type: application/json`, which clients fall back to when
//! the aggregated form is not offered. Discovery is readable without RBAC grants (the
//! `system:discovery` ClusterRole is bound to every authenticated and unauthenticated user).

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;

/// (group, version, [(resource, kind, namespaced, verbs)]).
type Resources = (&'static str, &'static str, &'static [(&'static str, &'static str, bool, &'static str)]);

const GROUPS: &[Resources] = &[
    (
        "",
        "v1",
        &[
            ("configmaps", "ConfigMap", true, "create,delete,get,list,patch,update,watch"),
            ("secrets", "Secret", true, "create,delete,get,list,patch,update,watch"),
            ("pods", "Pod", true, "create,delete,get,list,patch,update,watch"),
            ("serviceaccounts", "ServiceAccount", true, "create,delete,get,list,patch,update,watch"),
            ("namespaces", "Namespace", false, "create,delete,get,list,patch,update,watch"),
        ],
    ),
    (
        "apps",
        "v1",
        &[
            ("deployments", "Deployment", true, "create,delete,get,list,patch,update,watch"),
            ("deployments/scale", "Scale", true, "get,patch,update"),
            ("statefulsets", "StatefulSet", true, "create,delete,get,list,patch,update,watch"),
            ("statefulsets/scale", "Scale", true, "get,patch,update"),
        ],
    ),
    ("batch", "v1", &[("jobs", "Job", true, "create,delete,get,list,patch,update,watch")]),
    (
        "rbac.authorization.k8s.io",
        "v1",
        &[
            ("roles", "Role", true, "create,delete,get,list,patch,update,watch"),
            ("rolebindings", "RoleBinding", true, "create,delete,get,list,patch,update,watch"),
        ],
    ),
    ("events.k8s.io", "v1", &[("events", "Event", true, "create,delete,get,list,patch,update,watch")]),
];

pub(super) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new()
        .route("/version", axum::routing::get(version))
        .route("/api", axum::routing::get(core_versions))
        .route("/apis", axum::routing::get(groups));
    // One static route per group version: they share their first segments with the resource routes.
    for (group, version, _) in GROUPS {
        let path = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        router = router.route(&path, axum::routing::get(move || async move { resource_list(group, version) }));
    }
    router
}

fn json_response(value: Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

async fn version() -> Response {
    json_response(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64",
                         "goVersion": "go1.24.0", "compiler": "gc"}))
}

async fn core_versions() -> Response {
    json_response(json!({"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}))
}

async fn groups() -> Response {
    let groups: Vec<Value> = GROUPS
        .iter()
        .filter(|(group, _, _)| !group.is_empty())
        .map(|(group, version, _)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json_response(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

fn resource_list(group: &str, version: &str) -> Response {
    let Some((_, _, resources)) = GROUPS.iter().find(|(g, v, _)| *g == group && *v == version) else {
        return super::status_response(404, "NotFound", "the server could not find the requested resource".into());
    };
    let list: Vec<Value> = resources
        .iter()
        .map(|(name, kind, namespaced, verbs)| {
            json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
                   "verbs": verbs.split(',').collect::<Vec<_>>()})
        })
        .collect();
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json_response(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}),
    )
}
