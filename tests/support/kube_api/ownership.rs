//! Field ownership (`metadata.managedFields`) of a workload's `spec.replicas`, annotations and
//! labels, as server-side apply tracks it
//! (<https://kubernetes.io/docs/reference/using-api/server-side-apply/>):
//! - every write has a manager: the `fieldManager` parameter, else the user agent up to its first
//!   `/`; entries are keyed by manager, operation (`Apply` or `Update`) and subresource;
//! - an update (PUT, merge patch, a `scale` write) makes its manager the owner of every field it
//!   changed, taking it from everyone else; a `scale` write to 0 claims nothing, because
//!   `autoscaling/v1` `Scale` omits `replicas: 0` (REFERENCES §6), but still changes the field and
//!   so strips the other owners; a scale write is recorded with `subresource: scale`;
//! - an apply (`application/apply-patch+yaml`) owns exactly the fields it sets; setting a field to
//!   a value other than the live one while another manager owns it is a conflict (409) unless
//!   `force=true`, which takes it; the same value is shared;
//! - a non-apply write that carries `metadata.managedFields` replaces them (`[{}]` resets, `[]` is
//!   ignored), as the documentation's "clearing managedFields" describes; entries left without
//!   fields are dropped.
//!
//! Only these fields are modelled; `spec.template` and the rest of `spec` are owned by whoever set
//! them last, without conflicts.

use serde_json::{Map, Value, json};

/// A field path in `fieldsV1` form.
type FieldPath = Vec<String>;

fn replicas_path() -> FieldPath {
    vec!["f:spec".into(), "f:replicas".into()]
}

fn meta_path(map: &str, key: &str) -> FieldPath {
    vec!["f:metadata".into(), format!("f:{map}"), format!("f:{key}")]
}

/// The manager of a request: `fieldManager`, else the user agent's product name (the API server's
/// `prefixFromUserAgent`).
pub fn manager_of(field_manager: Option<&String>, user_agent: Option<&str>) -> String {
    match field_manager {
        Some(manager) if !manager.is_empty() => manager.clone(),
        _ => user_agent.unwrap_or("unknown").split('/').next().unwrap_or("unknown").to_string(),
    }
}

fn entries(object: &Value) -> Vec<Value> {
    object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default()
}

fn owns(entry: &Value, path: &FieldPath) -> bool {
    let mut node = &entry["fieldsV1"];
    for part in path {
        node = &node[part.as_str()];
        if node.is_null() {
            return false;
        }
    }
    true
}

fn claim(entry: &mut Value, path: &FieldPath) {
    let mut node = &mut entry["fieldsV1"];
    for part in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node.as_object_mut().unwrap().entry(part.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
}

fn release(entry: &mut Value, path: &FieldPath) {
    fn remove(node: &mut Value, path: &[String]) {
        let Some(map) = node.as_object_mut() else { return };
        match path {
            [] => {}
            [last] => {
                map.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = map.get_mut(first) {
                    remove(child, rest);
                    if child.as_object().is_some_and(Map::is_empty) {
                        map.remove(first);
                    }
                }
            }
        }
    }
    remove(&mut entry["fieldsV1"], path);
}

fn is_empty(entry: &Value) -> bool {
    entry["fieldsV1"].as_object().is_none_or(Map::is_empty)
}

fn same_entry(entry: &Value, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
    entry["manager"] == json!(manager)
        && entry["operation"] == json!(operation)
        && entry["subresource"].as_str() == subresource
}

fn entry_for<'a>(list: &'a mut Vec<Value>, manager: &str, operation: &str, subresource: Option<&str>) -> &'a mut Value {
    if let Some(index) = list.iter().position(|e| same_entry(e, manager, operation, subresource)) {
        return &mut list[index];
    }
    let mut entry = json!({"manager": manager, "operation": operation, "apiVersion": "apps/v1",
                           "time": "2026-11-23T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {}});
    if let Some(subresource) = subresource {
        entry["subresource"] = json!(subresource);
    }
    list.push(entry);
    list.last_mut().unwrap()
}

/// The modelled fields an object sets, with their values.
fn fields(object: &Value) -> Vec<(FieldPath, Value)> {
    let mut out = Vec::new();
    if !object["spec"]["replicas"].is_null() {
        out.push((replicas_path(), object["spec"]["replicas"].clone()));
    }
    for map in ["annotations", "labels"] {
        for (key, value) in object["metadata"][map].as_object().into_iter().flatten() {
            out.push((meta_path(map, key), value.clone()));
        }
    }
    out
}

fn value_at(object: &Value, path: &FieldPath) -> Value {
    match path.as_slice() {
        [spec, replicas] if spec == "f:spec" && replicas == "f:replicas" => object["spec"]["replicas"].clone(),
        [_, map, key] => object["metadata"][map.trim_start_matches("f:")][key.trim_start_matches("f:")].clone(),
        _ => Value::Null,
    }
}

/// The managedFields an update starts from: the request's when it carries a non-empty list
/// (`[{}]` resets them), else the live object's.
pub fn base_for_update(live: &Value, requested: &Value) -> Vec<Value> {
    match requested["metadata"]["managedFields"].as_array() {
        Some(list) if list.len() == 1 && list[0].as_object().is_some_and(Map::is_empty) => Vec::new(),
        Some(list) if !list.is_empty() => list.clone(),
        _ => entries(live),
    }
}

/// Records an update by `manager` that turned `before` into `after`, starting from `base`.
pub fn record_update(before: &Value, after: &mut Value, base: Vec<Value>, manager: &str, subresource: Option<&str>) {
    let mut list = base;
    let mut paths: Vec<FieldPath> = fields(before).into_iter().chain(fields(after)).map(|(p, _)| p).collect();
    paths.dedup();
    for path in paths {
        let (old, new) = (value_at(before, &path), value_at(after, &path));
        if old == new {
            continue;
        }
        for entry in list.iter_mut() {
            release(entry, &path);
        }
        let scaled_to_zero = subresource == Some("scale") && new == json!(0);
        if !new.is_null() && !scaled_to_zero {
            claim(entry_for(&mut list, manager, "Update", subresource), &path);
        }
    }
    list.retain(|e| !is_empty(e));
    after["metadata"]["managedFields"] = json!(list);
}

/// A server-side apply of `applied` by `manager` to `live`: the new object, or the conflict message.
pub fn apply(live: &Value, applied: &Value, manager: &str, force: bool) -> Result<Value, String> {
    let mut list = entries(live);
    let set = fields(applied);
    let mut conflicts = Vec::new();
    for (path, value) in &set {
        if value_at(live, path) == *value {
            continue;
        }
        for entry in list.iter().filter(|e| !same_entry(e, manager, "Apply", None) && owns(e, path)) {
            let subresource =
                entry["subresource"].as_str().map(|s| format!(" with subresource \"{s}\"")).unwrap_or_default();
            let field = if path == &replicas_path() { ".spec.replicas".to_string() } else { format!("{path:?}") };
            conflicts.push(format!(
                "conflict with \"{}\"{subresource} using apps/v1: {field}",
                entry["manager"].as_str().unwrap_or("")
            ));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            conflicts.join("\n")
        ));
    }
    let mut object = live.clone();
    for (path, value) in &set {
        if value_at(live, path) != *value {
            for entry in list.iter_mut() {
                release(entry, path);
            }
        }
    }
    // The applier owns exactly what it set this time.
    list.retain(|e| !same_entry(e, manager, "Apply", None));
    let mut mine = json!({"manager": manager, "operation": "Apply", "apiVersion": "apps/v1",
                          "time": "2026-11-23T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {}});
    for (path, _) in &set {
        claim(&mut mine, path);
    }
    list.push(mine);
    list.retain(|e| !is_empty(e));
    for map in ["labels", "annotations"] {
        for (key, value) in applied["metadata"][map].as_object().into_iter().flatten() {
            object["metadata"][map][key] = value.clone();
        }
    }
    for (key, value) in applied["spec"].as_object().into_iter().flatten() {
        object["spec"][key] = value.clone();
    }
    object["metadata"]["managedFields"] = json!(list);
    Ok(object)
}

/// The managers that own `spec.replicas` in `object`, with their subresource.
pub fn replicas_owners(object: &Value) -> Vec<(String, Option<String>)> {
    entries(object)
        .iter()
        .filter(|e| owns(e, &replicas_path()))
        .map(|e| (e["manager"].as_str().unwrap_or("").to_string(), e["subresource"].as_str().map(str::to_string)))
        .collect()
}
