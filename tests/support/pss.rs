//! Pod Security Standards, `restricted` profile (which includes `baseline`), evaluated on a pod spec
//! the way the PodSecurity admission controller does, from the rules table of
//! https://kubernetes.io/docs/concepts/security/pod-security-standards/ (Kubernetes 1.25+).
//! Only what a manifest can show is checked (AppArmor annotations are not used by the chart).

use serde_json::Value;

/// Kinds whose manifests carry a pod template, and where it is.
pub fn pod_spec_of(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(&doc["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some(&doc["spec"]["template"]["spec"]),
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn containers(spec: &Value) -> Vec<(&'static str, &Value)> {
    let mut all = Vec::new();
    for (field, what) in [
        ("initContainers", "init container"),
        ("containers", "container"),
        ("ephemeralContainers", "ephemeral container"),
    ] {
        for container in spec[field].as_array().into_iter().flatten() {
            all.push((what, container));
        }
    }
    all
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const RESTRICTED_VOLUMES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// Every violation of the restricted profile in `spec`, each naming the rule and the container.
pub fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let pod = &spec["securityContext"];
    let truthy = |v: &Value| v.as_bool() == Some(true);

    // Baseline: host namespaces, privileged, capabilities, host paths and ports, SELinux, /proc, sysctls.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if truthy(&spec[field]) {
            out.push(format!("host namespaces: {field} is true"));
        }
    }
    if truthy(&pod["windowsOptions"]["hostProcess"]) {
        out.push("HostProcess: pod windowsOptions.hostProcess".into());
    }
    for sysctl in pod["sysctls"].as_array().into_iter().flatten() {
        let name = sysctl["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&name) {
            out.push(format!("sysctls: {name} is not a safe sysctl"));
        }
    }
    let selinux_ok = |se: &Value| {
        se["type"]
            .as_str()
            .is_none_or(|t| ["container_t", "container_init_t", "container_kvm_t", "container_engine_t"].contains(&t))
            && se.get("user").is_none_or(Value::is_null)
            && se.get("role").is_none_or(Value::is_null)
    };
    if !selinux_ok(&pod["seLinuxOptions"]) {
        out.push("SELinux: pod seLinuxOptions".into());
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or("?");
        if volume.get("hostPath").is_some() {
            out.push(format!("HostPath volumes: {name}"));
        }
        let source = volume.as_object().and_then(|m| m.keys().find(|k| *k != "name").cloned()).unwrap_or_default();
        if !RESTRICTED_VOLUMES.contains(&source.as_str()) {
            out.push(format!("volume types: {name} is {source}"));
        }
    }

    // Restricted at pod level.
    let pod_non_root = truthy(&pod["runAsNonRoot"]);
    let pod_seccomp = pod["seccompProfile"]["type"].as_str();
    if pod["runAsUser"].as_i64() == Some(0) {
        out.push("running as non-root user: pod runAsUser is 0".into());
    }
    if pod.get("runAsNonRoot").is_some_and(|v| v.as_bool() == Some(false)) {
        out.push("running as non-root: pod runAsNonRoot is false".into());
    }
    if let Some(kind) = pod_seccomp
        && kind != "RuntimeDefault"
        && kind != "Localhost"
    {
        out.push(format!("seccomp: pod seccompProfile {kind}"));
    }

    for (what, container) in containers(spec) {
        let name = format!("{what} {}", container["name"].as_str().unwrap_or("?"));
        let sc = &container["securityContext"];
        if truthy(&sc["privileged"]) {
            out.push(format!("privileged: {name}"));
        }
        if truthy(&sc["windowsOptions"]["hostProcess"]) {
            out.push(format!("HostProcess: {name}"));
        }
        if !selinux_ok(&sc["seLinuxOptions"]) {
            out.push(format!("SELinux: {name}"));
        }
        if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
            out.push(format!("/proc mount type: {name}"));
        }
        for port in container["ports"].as_array().into_iter().flatten() {
            if port["hostPort"].as_i64().unwrap_or(0) != 0 {
                out.push(format!("host ports: {name}"));
            }
        }
        let added: Vec<&str> =
            sc["capabilities"]["add"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        for cap in &added {
            if !BASELINE_CAPABILITIES.contains(cap) {
                out.push(format!("capabilities (baseline): {name} adds {cap}"));
            }
            if *cap != "NET_BIND_SERVICE" {
                out.push(format!("capabilities: {name} adds {cap}; only NET_BIND_SERVICE may be added"));
            }
        }
        let dropped: Vec<&str> =
            sc["capabilities"]["drop"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !dropped.contains(&"ALL") {
            out.push(format!("capabilities: {name} must drop ALL"));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            out.push(format!("privilege escalation: {name} must set allowPrivilegeEscalation false"));
        }
        match sc.get("runAsNonRoot").and_then(Value::as_bool) {
            Some(false) => out.push(format!("running as non-root: {name} sets runAsNonRoot false")),
            None if !pod_non_root => {
                out.push(format!("running as non-root: neither the pod nor {name} sets runAsNonRoot"))
            }
            _ => {}
        }
        if sc["runAsUser"].as_i64() == Some(0) {
            out.push(format!("running as non-root user: {name} runAsUser is 0"));
        }
        match sc["seccompProfile"]["type"].as_str() {
            Some("RuntimeDefault" | "Localhost") => {}
            Some(other) => out.push(format!("seccomp: {name} seccompProfile {other}")),
            None if pod_seccomp.is_none() => {
                out.push(format!("seccomp: neither the pod nor {name} sets seccompProfile"))
            }
            None => {}
        }
    }
    out
}
