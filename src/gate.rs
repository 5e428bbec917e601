//! The gate: wait until the marker allows this revision, then let the pod start.
//!
//! kube-rs's watcher follows that one ConfigMap: a list (by `fieldSelector=metadata.name=…`, which
//! RBAC `resourceNames` allow), then a watch from the list's `resourceVersion` with bookmarks, a
//! relist on 410 Gone, and a reconnect when the watch stays silent past its timeout (a connection a
//! load balancer dropped). Every event is judged as it arrives, so the gate reacts within
//! milliseconds of the write instead of on a polling interval. Failed requests are retried after a
//! jittered pause that grows while they keep failing (client-go's reflector settings).
//!
//! After install, the gate's RoleBinding can take a moment to become effective, so 401/403 are
//! retried for a short grace period before failing with a hint naming what is missing. An API that
//! cannot be reached is retried until the gate's own deadline (the API server restarts too).

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{GateConfig, MarkerConfig, OnTimeout};
use crate::error::{Kind, classified};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;

use crate::events::Reason;
use crate::kube::{Change, KubeClient, KubeError, data_of};
use crate::marker::{self, Marker, Verdict};

/// How long 401/403 are taken for "RBAC not effective yet" before they are taken at their word:
/// twenty seconds, or a third of the gate's timeout when that is shorter.
const FORBIDDEN_GRACE: Duration = Duration::from_secs(20);
/// Pause before re-reading after a watch that ended early or a failed API call: 0.8 s, doubling
/// up to 30 s, each with up to 100% jitter, reset by progress. These are client-go's reflector
/// settings (`NewExponentialBackoffManager(800ms, 30s, 2m, 2.0, 1.0)` in `tools/cache/reflector.go`):
/// every gated pod of a namespace runs this loop, and an API server or proxy that closes watches
/// at once must not be met with a tight GET+WATCH loop from all of them.
const FIRST_PAUSE: Duration = Duration::from_millis(800);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// What the gate last knew, kept outside the waiting future so the timeout message can use it.
#[derive(Default)]
struct Seen {
    reached_api: bool,
    /// The marker did not allow this revision at first: the gate waited (and said so in an Event).
    waited: bool,
    last_marker: Option<Marker>,
    last_error: Option<String>,
}

/// Waits for the marker: `Ok` when it allows this revision (or on timeout with `proceed`), an
/// error of kind Failed for a final failed marker, Deadline or Unreachable on timeout.
pub async fn run(config: &GateConfig) -> Result<()> {
    let settings = &config.marker;
    let kube = KubeClient::new(&settings.kube).await?;
    let deadline = Instant::now() + config.timeout;
    info!(
        marker = %settings.name,
        namespace = %settings.namespace,
        revision = settings.revision,
        timeout_ms = config.timeout.as_millis() as u64,
        "waiting for cleanup marker"
    );
    let started = std::time::Instant::now();
    let mut seen = Seen::default();
    let grace = FORBIDDEN_GRACE.min(config.timeout / 3);
    let outcome = tokio::time::timeout_at(deadline, wait(&kube, settings, grace, &mut seen)).await;
    let waited_ms = started.elapsed().as_millis() as u64;
    let events = kube.events();
    let namespace = settings.namespace.as_str();
    match &outcome {
        Ok(Ok(())) if seen.waited => {
            let note = format!("revision {}'s cleanup is done: passed after {waited_ms} ms", settings.revision);
            events.on_own_pod(namespace, Reason::CleanupPassed, note).await;
        }
        Ok(Ok(())) => {}
        Ok(Err(err)) => events.on_own_pod(namespace, Reason::CleanupFailed, format!("{err:#}")).await,
        Err(_) => {
            let note = format!(
                "revision {}'s cleanup did not finish within {} ({})",
                settings.revision,
                humantime::format_duration(config.timeout),
                marker::describe(seen.last_marker.as_ref())
            );
            events.on_own_pod(namespace, Reason::GateTimedOut, note).await;
        }
    }
    match outcome {
        Ok(Ok(())) => {
            let marker = marker::describe(seen.last_marker.as_ref());
            info!(revision = settings.revision, waited_ms, marker = %marker, "marker allows this revision, starting");
            crate::termination::on_success(format!(
                "passed after {waited_ms} ms: the marker allows revision {} ({marker})",
                settings.revision
            ));
            Ok(())
        }
        Ok(Err(err)) => Err(err),
        Err(_) => {
            let state = match (&seen.last_error, seen.reached_api) {
                (Some(err), false) => format!("the Kubernetes API was never reached ({err})"),
                _ => marker::describe(seen.last_marker.as_ref()),
            };
            let message = format!(
                "marker {}/{} did not allow revision {} within {} ({state})",
                settings.namespace,
                settings.name,
                settings.revision,
                humantime::format_duration(config.timeout)
            );
            match config.on_timeout {
                OnTimeout::Proceed => {
                    warn!(waited_ms, "{message}; starting anyway because CLEANSLATE_GATE_ON_TIMEOUT=proceed");
                    crate::termination::on_success(format!(
                        "{message}; started anyway (CLEANSLATE_GATE_ON_TIMEOUT=proceed)"
                    ));
                    Ok(())
                }
                OnTimeout::Fail => {
                    let kind = if seen.reached_api { Kind::Deadline } else { Kind::Unreachable };
                    error!(waited_ms, "{message}");
                    Err(classified(kind, message))
                }
            }
        }
    }
}

/// What one look at the marker decided.
enum Step {
    Done(Result<()>),
    Continue,
}

fn judge(object: Option<&ConfigMap>, settings: &MarkerConfig, seen: &mut Seen) -> Step {
    let found = object.and_then(|cm| Marker::from_data(&data_of(cm)));
    let verdict = marker::verdict(found.as_ref(), settings.revision);
    if found != seen.last_marker {
        info!(marker = %marker::describe(found.as_ref()), expected_revision = settings.revision, "marker seen");
    }
    seen.last_marker = found;
    match verdict {
        Verdict::Pass => Step::Done(Ok(())),
        Verdict::Failed(message) => Step::Done(Err(classified(Kind::Failed, message))),
        Verdict::Wait => Step::Continue,
    }
}

/// Exponential backoff with jitter, reset on progress.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: FIRST_PAUSE }
    }

    fn reset(&mut self) {
        self.next = FIRST_PAUSE;
    }

    /// The pause to take now: the current step plus up to as much again at random.
    fn pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_PAUSE);
        (base + base.mul_f64(fastrand::f64())).min(MAX_PAUSE)
    }
}

/// Watches until a decision; never returns on its own otherwise (the caller's deadline ends it).
async fn wait(kube: &KubeClient, settings: &MarkerConfig, forbidden_grace: Duration, seen: &mut Seen) -> Result<()> {
    let (namespace, name) = (settings.namespace.as_str(), settings.name.as_str());
    let mut backoff = Backoff::new();
    let mut forbidden_since: Option<Instant> = None;
    let mut changes = std::pin::pin!(kube.watch_config_map(namespace, name));
    while let Some(change) = changes.next().await {
        let err = match change {
            Ok(change) => {
                seen.reached_api = true;
                forbidden_since = None;
                backoff.reset();
                let step = match change {
                    Change::Listed(objects) => judge(objects.iter().find(|cm| is_named(cm, name)), settings, seen),
                    Change::Applied(object) => judge(Some(&object), settings, seen),
                    // The chart deletes the marker before each install/upgrade (before-hook-creation).
                    Change::Deleted(_) => judge(None, settings, seen),
                };
                if matches!(step, Step::Continue) && !seen.waited {
                    seen.waited = true;
                    let note = format!(
                        "waiting for revision {}'s cleanup ({})",
                        settings.revision,
                        marker::describe(seen.last_marker.as_ref())
                    );
                    kube.events().on_own_pod(namespace, Reason::WaitingForCleanup, note).await;
                }
                match step {
                    Step::Done(result) => return result,
                    Step::Continue => continue,
                }
            }
            Err(err) => err,
        };
        seen.last_error = Some(err.to_string());
        seen.reached_api |= err.code().is_some();
        if err.code() == Some(410) {
            // The watch's resourceVersion is too old; the watcher lists again.
            info!("watch expired (410 Gone), listing again");
            continue;
        }
        if matches!(err.code(), Some(401) | Some(403)) {
            let since = *forbidden_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= forbidden_grace {
                return Err(classified(Kind::Failed, rbac_hint(&err, settings)));
            }
        } else if !err.is_transient() {
            return Err(anyhow::Error::new(err).context(format!("reading marker {namespace}/{name}")));
        }
        let mut pause = backoff.pause();
        if let Some(since) = forbidden_since {
            // Look once more when the grace period ends, so a missing RoleBinding is reported
            // with its hint then, not hidden behind a long pause or the gate's timeout.
            pause = pause.min(forbidden_grace.saturating_sub(since.elapsed()));
        }
        warn!(error = %err, retry_in_ms = pause.as_millis() as u64, "marker not readable yet, retrying");
        tokio::time::sleep(pause).await;
    }
    Err(anyhow::anyhow!("the watch of marker {namespace}/{name} ended"))
}

fn is_named(object: &ConfigMap, name: &str) -> bool {
    object.metadata.name.as_deref() == Some(name)
}

fn rbac_hint(err: &KubeError, settings: &MarkerConfig) -> String {
    format!(
        "{err}; the gate's service account needs list and watch on ConfigMap {:?} in namespace {:?} \
         (the chart's gate Role and RoleBinding must name the ServiceAccount this pod runs as)",
        settings.name, settings.namespace
    )
}
