//! Kubernetes Events, where operators already look: `kubectl describe pod|deploy`, `kubectl get
//! events`, and every event exporter. The purge reports on its own pod, quiesce and resume on each
//! workload they stop or start, the gate on its pod. Reasons are stable CamelCase words to filter on
//! ([`Reason`]); notes are built from the same summaries and errors the logs print, which never
//! carry a secret.
//!
//! Publishing goes through kube-rs's `Recorder` (`events.k8s.io/v1`; a repeat within its cache
//! window becomes a series, a PATCH). An Event that cannot be published (no RBAC, a slow API) is a
//! warning, never a failure: the run itself decides the exit code.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::config::{EventsConfig, WorkloadKind, WorkloadRef};

/// One Event may take this long; the run does not wait longer for it.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// The API server refuses a longer note (events.k8s.io/v1 `Event.note`: "Maximal length of the
/// note is 1kB").
const MAX_NOTE: usize = 1024;
/// The reporting controller every Event names.
const CONTROLLER: &str = "cleanslate";

/// The reasons, stable across releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    CleanupStarted,
    CleanupSucceeded,
    CleanupFailed,
    StoppedForCleanup,
    StartedAfterCleanup,
    WaitingForCleanup,
    CleanupPassed,
    GateTimedOut,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::CleanupStarted => "CleanupStarted",
            Reason::CleanupSucceeded => "CleanupSucceeded",
            Reason::CleanupFailed => "CleanupFailed",
            Reason::StoppedForCleanup => "StoppedForCleanup",
            Reason::StartedAfterCleanup => "StartedAfterCleanup",
            Reason::WaitingForCleanup => "WaitingForCleanup",
            Reason::CleanupPassed => "CleanupPassed",
            Reason::GateTimedOut => "GateTimedOut",
        }
    }

    fn is_warning(self) -> bool {
        matches!(self, Reason::CleanupFailed | Reason::GateTimedOut)
    }

    /// The Event's `action`: what cleanslate did or was doing.
    fn action(self) -> &'static str {
        match self {
            Reason::CleanupStarted | Reason::CleanupSucceeded | Reason::CleanupFailed => "Purge",
            Reason::StoppedForCleanup => "Quiesce",
            Reason::StartedAfterCleanup => "Resume",
            Reason::WaitingForCleanup | Reason::CleanupPassed | Reason::GateTimedOut => "Gate",
        }
    }
}

/// Publishes Events, or does nothing when they are off.
#[derive(Clone)]
pub struct Events {
    recorder: Option<Recorder>,
    config: EventsConfig,
}

impl Events {
    pub fn new(client: &kube::Client, config: &EventsConfig) -> Events {
        let recorder = config.enabled.then(|| {
            Recorder::new(client.clone(), Reporter { controller: CONTROLLER.into(), instance: config.pod_name.clone() })
        });
        Events { recorder, config: config.clone() }
    }

    /// The revision this run belongs to, for notes.
    pub fn revision(&self) -> Option<u64> {
        self.config.revision
    }

    /// An Event on this run's own pod (the purge's, the gate's), when its name is known.
    pub async fn on_own_pod(&self, namespace: &str, reason: Reason, note: String) {
        let Some(name) = self.config.pod_name.clone() else { return };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(namespace.into()),
            uid: self.config.pod_uid.clone(),
            ..Default::default()
        };
        self.publish(reference, reason, note).await;
    }

    /// An Event on a Deployment or StatefulSet.
    pub async fn on_workload(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        uid: Option<String>,
        reason: Reason,
        note: String,
    ) {
        let kind = match workload.kind {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        };
        let reference = ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(kind.into()),
            name: Some(workload.name.clone()),
            namespace: Some(namespace.into()),
            uid,
            ..Default::default()
        };
        self.publish(reference, reason, note).await;
    }

    async fn publish(&self, reference: ObjectReference, reason: Reason, note: String) {
        let Some(recorder) = &self.recorder else { return };
        let event = Event {
            type_: if reason.is_warning() { EventType::Warning } else { EventType::Normal },
            reason: reason.as_str().into(),
            note: Some(crate::text::fit_bytes(note, MAX_NOTE)),
            action: reason.action().into(),
            secondary: None,
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(
                reason = reason.as_str(),
                error = %crate::kube_error::KubeError::from(err),
                "could not publish an Event (the Role needs create on events.k8s.io events)"
            ),
            Err(_) => tracing::warn!(reason = reason.as_str(), "an Event was not accepted in time; going on"),
        }
    }
}
