//! A release's purge configuration, read from the cluster the way `helm get` reads it, so that
//! `cleanslate plan <release>` answers "what would the next deploy purge?" without anyone retyping
//! the Job's variables.
//!
//! Helm 3 and 4 keep each revision in a Secret `sh.helm.release.v1.<release>.v<N>` labelled
//! `owner=helm,name=<release>,status=…,version=N` (the default `secret` storage driver); its
//! `release` key is base64 of gzipped JSON whose `hooks` hold every rendered hook manifest. The
//! purge Job among them (the hook Job whose container runs `purge`) carries exactly the environment
//! the release's Job gets: literal values, `secretKeyRef`s (read here with the caller's own rights,
//! as `kubectl` would) and files under Secret volume mounts (TLS material, copied to a private
//! temporary directory that lives as long as the [`Resolved`] value).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar, KeyToPath, PodSpec, Secret};
use serde::Deserialize;

use crate::error::{Kind, classified};
use crate::kube::KubeClient;
use crate::kube_error::KubeError;

/// Variables of the Job that describe the pod it runs in, not the purge: left out of a plan.
const POD_ONLY: &[&str] = &[
    "CLEANSLATE_TERMINATION_MESSAGE_PATH",
    "CLEANSLATE_POD_NAME",
    "CLEANSLATE_POD_UID",
    "CLEANSLATE_JOB_NAME",
    "CLEANSLATE_JOB_ATTEMPTS",
    "CLEANSLATE_EVENTS",
    "CLEANSLATE_LOG_FORMAT",
];

/// The purge configuration of one release revision.
pub struct Resolved {
    /// `CLEANSLATE_*` variables as the Job's container gets them.
    pub vars: Vec<(String, String)>,
    /// The revision whose record was read.
    pub revision: u64,
    /// Where the TLS files were copied; removed when this value is dropped.
    _files: Option<tempfile::TempDir>,
}

/// The part of Helm's release record read here.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    hooks: Vec<Hook>,
}

#[derive(Deserialize)]
struct Hook {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    manifest: String,
}

/// Whether to read the Secrets the Job's variables and files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// Credentials and TLS files too: what `plan` needs to reach RabbitMQ and etcd.
    Read,
    /// Literal values only: `status` needs the marker and the workloads, never a credential.
    Skip,
}

/// The configuration the release `release` in `namespace` purges with: its last deployed revision
/// (or, when none is deployed, its latest one).
pub async fn resolve(kube: &KubeClient, namespace: &str, release: &str, secrets: Secrets) -> Result<Resolved> {
    let selector = format!("owner=helm,name={release}");
    let records = kube.list_secrets(namespace, &selector).await.map_err(|err| {
        reading_error(err, &format!("listing Secrets labelled {selector} in namespace {namespace:?}"))
    })?;
    let (revision, secret) = latest(records).ok_or_else(|| {
        classified(
            Kind::Config,
            format!(
                "no Helm release {release:?} in namespace {namespace:?} (looked for Secrets labelled {selector}, \
                 Helm's default storage; pass -n for another namespace)"
            ),
        )
    })?;
    let record =
        decode(&secret).with_context(|| format!("reading Helm's record of {release:?} revision {revision}"))?;
    let (job_name, job) = purge_job(&record)
        .map_err(|message| classified(Kind::Config, format!("release {release:?} revision {revision}: {message}")))?;
    let spec = job.spec.and_then(|s| s.template.spec).unwrap_or_default();
    let container = spec.containers.iter().find(|c| runs_purge(c)).cloned().ok_or_else(|| {
        classified(Kind::Config, format!("release {release:?}: Job {job_name:?} runs no purge container"))
    })?;
    let mut files = None;
    let mut vars = Vec::new();
    for var in container.env.clone().unwrap_or_default() {
        if !var.name.starts_with("CLEANSLATE_") || POD_ONLY.contains(&var.name.as_str()) {
            continue;
        }
        if secrets == Secrets::Skip && (var.value.is_none() || mounted_in(&container, var.value.as_deref())) {
            continue;
        }
        let Some(value) = value_of(kube, namespace, &record, &var).await? else { continue };
        let value = match mounted(kube, namespace, &record, &spec, &container, &value, &mut files).await? {
            Some(local) => local,
            None => value,
        };
        vars.push((var.name, value));
    }
    Ok(Resolved { vars, revision, _files: files })
}

/// A failed read, with what the caller's identity needs.
fn reading_error(err: KubeError, what: &str) -> anyhow::Error {
    match err.code() {
        Some(401 | 403) => classified(
            Kind::Denied,
            format!("{what}: {err}; your kubeconfig user needs get/list on Secrets there, as helm itself does"),
        ),
        _ if err.is_transient() => classified(Kind::Unreachable, format!("{what}: {err}")),
        _ => anyhow!("{what}: {err}"),
    }
}

/// The last deployed revision's record, else the latest one's.
fn latest(records: Vec<Secret>) -> Option<(u64, Secret)> {
    let label = |secret: &Secret, key: &str| {
        secret.metadata.labels.as_ref().and_then(|labels| labels.get(key)).cloned().unwrap_or_default()
    };
    let mut numbered: Vec<(bool, u64, Secret)> = records
        .into_iter()
        .filter_map(|secret| {
            let version = label(&secret, "version").parse().ok()?;
            Some((label(&secret, "status") == "deployed", version, secret))
        })
        .collect();
    numbered.sort_by_key(|(deployed, version, _)| (*deployed, *version));
    numbered.pop().map(|(_, version, secret)| (version, secret))
}

/// Helm's encoding: the Secret's `release` key holds base64 text of gzipped JSON (plain JSON in
/// records written without compression).
fn decode(secret: &Secret) -> Result<Record> {
    let data = secret.data.as_ref().and_then(|d| d.get("release")).ok_or_else(|| anyhow!("no `release` key"))?;
    let text = String::from_utf8_lossy(&data.0);
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).context("the record is not base64")?;
    let json = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice()).read_to_end(&mut out).context("the record is not gzip")?;
        out
    } else {
        bytes
    };
    serde_json::from_slice(&json).context("the record is not Helm's JSON")
}

fn runs_purge(container: &Container) -> bool {
    container.args.as_deref().is_some_and(|args| args.first().map(String::as_str) == Some("purge"))
}

/// The release's one purge hook Job.
fn purge_job(record: &Record) -> Result<(String, Job), String> {
    let mut found = Vec::new();
    for hook in record.hooks.iter().filter(|h| h.kind == "Job") {
        let job = match serde_yaml::from_str::<Job>(&hook.manifest) {
            Ok(job) => job,
            Err(err) => return Err(format!("its hook Job {:?} could not be read ({err})", hook.name)),
        };
        let runs = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .is_some_and(|s| s.containers.iter().any(runs_purge));
        if runs {
            found.push((hook.name.clone(), job));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err("it has no cleanslate purge Job: cleanup is off in it (cleanup.enabled)".into()),
        _ => Err(format!(
            "it has several purge Jobs ({}): set the CLEANSLATE_* variables of the one you mean",
            found.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// A variable's value as the kubelet would give it; `None` for what only a pod has.
async fn value_of(kube: &KubeClient, namespace: &str, record: &Record, var: &EnvVar) -> Result<Option<String>> {
    if let Some(value) = &var.value {
        return Ok(Some(value.clone()));
    }
    let Some(from) = &var.value_from else { return Ok(Some(String::new())) };
    if let Some(field) = &from.field_ref {
        return Ok((field.field_path == "metadata.namespace").then(|| namespace.to_string()));
    }
    if let Some(key) = &from.secret_key_ref {
        let bytes = secret_key(kube, namespace, record, &key.name, &key.key, &var.name).await?;
        return String::from_utf8(bytes).map(Some).map_err(|_| {
            classified(Kind::Config, format!("{}: key {:?} of Secret {:?} is not UTF-8", var.name, key.key, key.name))
        });
    }
    Err(classified(Kind::Config, format!("{}: a value source cleanslate does not read ({from:?})", var.name)))
}

/// One key of a Secret, read with the caller's rights; never shown. A Secret the chart renders as
/// a hook (dev credentials) is deleted once its hooks succeeded: its values are then those Helm
/// recorded with the release, which the caller could read already.
async fn secret_key(
    kube: &KubeClient,
    namespace: &str,
    record: &Record,
    name: &str,
    key: &str,
    for_what: &str,
) -> Result<Vec<u8>> {
    let found = kube.get_secret(namespace, name).await.map_err(|err| {
        reading_error(err, &format!("{for_what}: reading Secret {name:?} in namespace {namespace:?}"))
    })?;
    let data = match found {
        Some(secret) => secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect(),
        None => hook_secret(record, name).ok_or_else(|| {
            classified(Kind::Config, format!("{for_what}: Secret {name:?} not found in namespace {namespace:?}"))
        })?,
    };
    data.get(key)
        .cloned()
        .ok_or_else(|| classified(Kind::Config, format!("{for_what}: Secret {name:?} has no key {key:?}")))
}

/// The data of a Secret the release renders as a hook, from its recorded manifest.
fn hook_secret(record: &Record, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let hook = record.hooks.iter().find(|h| h.kind == "Secret" && h.name == name)?;
    let secret: Secret = serde_yaml::from_str(&hook.manifest).ok()?;
    let mut data: BTreeMap<String, Vec<u8>> =
        secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    data.extend(secret.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
    Some(data)
}

/// Whether `value` is a path under one of the container's volume mounts.
fn mounted_in(container: &Container, value: Option<&str>) -> bool {
    let Some(value) = value else { return false };
    container.volume_mounts.iter().flatten().any(|m| value.starts_with(&format!("{}/", m.mount_path)))
}

/// A path under one of the container's Secret or ConfigMap volume mounts, copied to a private
/// directory: the file the kubelet would have mounted there.
async fn mounted(
    kube: &KubeClient,
    namespace: &str,
    record: &Record,
    spec: &PodSpec,
    container: &Container,
    value: &str,
    files: &mut Option<tempfile::TempDir>,
) -> Result<Option<String>> {
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let Some(mount) = mounts.iter().find(|m| value.starts_with(&format!("{}/", m.mount_path))) else {
        return Ok(None);
    };
    let relative = &value[mount.mount_path.len() + 1..];
    let volume = spec.volumes.as_deref().unwrap_or_default().iter().find(|v| v.name == mount.name);
    let bytes = if let Some(config_map) = volume.and_then(|v| v.config_map.as_ref()) {
        // The etcd seed (`CLEANSLATE_ETCD_SEED_FILE`): data, read with the caller's rights.
        let key = mounted_key(config_map.items.as_deref(), relative);
        config_map_key(kube, namespace, &config_map.name, &key, &mount.mount_path, value).await?
    } else if let Some(secret) = volume.and_then(|v| v.secret.as_ref()) {
        let key = mounted_key(secret.items.as_deref(), relative);
        secret_key(kube, namespace, record, secret.secret_name.as_deref().unwrap_or_default(), &key, value).await?
    } else {
        return Ok(None);
    };
    if files.is_none() {
        *files = Some(private_dir()?);
    }
    let path = write_private(files.as_ref().expect("just made").path(), &mount.name, relative, &bytes)?;
    Ok(Some(path.display().to_string()))
}

/// The key of a Secret or ConfigMap volume that the kubelet writes at `relative`: the item
/// projecting it there, else the key of that name (no `items`: every key, at its own name).
fn mounted_key(items: Option<&[KeyToPath]>, relative: &str) -> String {
    items
        .unwrap_or_default()
        .iter()
        .find(|item| item.path == relative)
        .map_or(relative.to_string(), |item| item.key.clone())
}

/// `key` of ConfigMap `name`, read with the caller's rights; `mount_path` and `value` say where the
/// Job would have found it.
async fn config_map_key(
    kube: &KubeClient,
    namespace: &str,
    name: &str,
    key: &str,
    mount_path: &str,
    value: &str,
) -> Result<Vec<u8>> {
    let found = kube.get(namespace, name).await.map_err(|err| {
        let what = format!("reading ConfigMap {namespace}/{name} (mounted at {mount_path} for {value})");
        match err.code() {
            Some(401 | 403) => classified(Kind::Denied, format!("{what}: {err}; your kubeconfig user needs get on it")),
            _ if err.is_transient() => classified(Kind::Unreachable, format!("{what}: {err}")),
            _ => anyhow!("{what}: {err}"),
        }
    })?;
    Ok(found
        .and_then(|c| c.data.and_then(|mut d| d.remove(key)))
        .ok_or_else(|| anyhow!("ConfigMap {namespace}/{name} has no key {key:?} (mounted at {value})"))?
        .into_bytes())
}

/// A temporary directory only this user may enter (the files are TLS keys; a shared CI runner or
/// jump host has other users). It goes when the `Resolved` holding it is dropped.
fn private_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("cleanslate-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("a temporary directory")
}

/// Writes `bytes` as `volume/relative` under `dir`, readable by this user only.
fn write_private(dir: &std::path::Path, volume: &str, relative: &str, bytes: &[u8]) -> Result<std::path::PathBuf> {
    let dir = dir.join(volume);
    std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&dir).context("a temporary directory")?;
    let path = dir.join(relative.replace('/', "_"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record_secret(version: &str, status: &str, json: &str) -> Secret {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json.as_bytes()).unwrap();
        let text = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let mut secret = Secret::default();
        secret.metadata.labels = Some(
            [("version", version), ("status", status)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        );
        secret.data = Some([("release".to_string(), k8s_openapi::ByteString(text.into_bytes()))].into());
        secret
    }

    /// TLS material copied from Secrets is readable by this user only, whatever the umask.
    #[test]
    fn copied_files_are_private() {
        let dir = private_dir().expect("dir");
        let path = write_private(dir.path(), "etcd-tls", "tls.key", b"key").expect("written");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700, "the directory");
        assert_eq!(mode(path.parent().unwrap()), 0o700, "the volume's directory");
        assert_eq!(mode(&path), 0o600, "the key");
    }

    /// The last deployed revision wins over a later failed one; the record decodes.
    #[test]
    fn picks_the_deployed_revision_and_decodes_it() {
        let hooks = r#"{"hooks":[{"kind":"Job","name":"x","manifest":"kind: Job"}]}"#;
        let records = vec![
            record_secret("3", "superseded", hooks),
            record_secret("4", "deployed", hooks),
            record_secret("5", "failed", hooks),
        ];
        let (version, secret) = latest(records).expect("one");
        assert_eq!(version, 4, "the deployed one");
        assert_eq!(decode(&secret).expect("decodes").hooks[0].name, "x");
        let (version, _) =
            latest(vec![record_secret("2", "failed", hooks), record_secret("1", "failed", hooks)]).expect("one");
        assert_eq!(version, 2, "none deployed: the latest");
    }
}
