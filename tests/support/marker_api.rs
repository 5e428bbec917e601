//! The Kubernetes API stand-in set up for a purge Job: a marker placeholder, and the Job's rights
//! on it, for tests that check what a run records.

use std::collections::BTreeMap;

use super::kube_api::{KubeApi, PodCredentials};

pub const NAMESPACE: &str = "dev";
pub const MARKER: &str = "faults-marker";
/// The Job's service-account token: asserted absent from every output.
pub const TOKEN: &str = "faults-Token-Secret-99";

pub struct MarkerApi {
    pub api: KubeApi,
    pub credentials: PodCredentials,
}

impl MarkerApi {
    pub async fn start() -> MarkerApi {
        let api = KubeApi::start().await;
        api.grant(TOKEN, &["get", "list", "update", "watch"], Some(&[MARKER]));
        api.put(NAMESPACE, MARKER, BTreeMap::new());
        let credentials = api.credentials();
        MarkerApi { api, credentials }
    }

    /// The variables of a purge Job at `revision` that writes this marker.
    pub fn vars(&self, revision: u64) -> Vec<(String, String)> {
        self.credentials.marker_vars(TOKEN, NAMESPACE, MARKER, revision)
    }

    /// The marker's data as the run left it.
    pub fn marker(&self) -> serde_json::Map<String, serde_json::Value> {
        self.api.object(NAMESPACE, MARKER).expect("marker")["data"].as_object().cloned().unwrap_or_default()
    }
}
