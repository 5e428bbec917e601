//! Pacing of watch requests that keep ending at once.
//!
//! kube-rs's watcher re-establishes a watch the moment its stream ends, which is right after the
//! API server's `timeoutSeconds` and wrong behind a proxy or load balancer that closes every watch
//! immediately: every gated pod of a namespace would then send a tight loop of watch requests.
//! client-go's reflector treats a watch that lasted under a second as a failure and backs off
//! (`NewExponentialBackoffManager(800ms, 30s, 2m, 2.0, 1.0)` in `tools/cache/reflector.go`); this
//! layer does the same for each watched collection and selector: a watch request that follows the
//! previous one within a second waits 0.8 s, doubling up to 30 s, with up to 100% jitter; a watch
//! that lasted longer resets the pause. Other requests pass untouched.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tower::{Layer, Service};

const FIRST_PAUSE: Duration = Duration::from_millis(800);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// A watch request this soon after the previous one for the same collection means that one ended
/// early.
const HEALTHY_WATCH: Duration = Duration::from_secs(1);

/// Per watched collection and selector: when its last watch was sent, and the next pause.
#[derive(Default)]
struct Pacer {
    last: HashMap<String, (Instant, Duration)>,
}

impl Pacer {
    /// The pause before a watch request for `key`, sent now.
    fn pause_for(&mut self, key: String, now: Instant) -> Duration {
        let (pause, next) = match self.last.get(&key) {
            Some((sent, next)) if now.duration_since(*sent) < HEALTHY_WATCH => {
                let base = *next;
                ((base + base.mul_f64(fastrand::f64())).min(MAX_PAUSE), (base * 2).min(MAX_PAUSE))
            }
            _ => (Duration::ZERO, FIRST_PAUSE),
        };
        self.last.insert(key, (now + pause, next));
        pause
    }
}

/// The watch key of a request: its path and selectors, or `None` when it is not a watch.
fn watch_key(uri: &http::Uri) -> Option<String> {
    let query = uri.query().unwrap_or_default();
    let mut is_watch = false;
    let mut selectors = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("watch", "true" | "1")) => is_watch = true,
            Some(("labelSelector" | "fieldSelector", _)) => selectors.push(pair),
            _ => {}
        }
    }
    is_watch.then(|| format!("{}?{}", uri.path(), selectors.join("&")))
}

/// The layer that adds [`WatchPacingService`] to kube-rs's client stack.
#[derive(Clone, Default)]
pub struct WatchPacing {
    pacer: Arc<Mutex<Pacer>>,
}

impl<S> Layer<S> for WatchPacing {
    type Service = WatchPacingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WatchPacingService { inner, pacer: self.pacer.clone() }
    }
}

pub struct WatchPacingService<S> {
    inner: S,
    pacer: Arc<Mutex<Pacer>>,
}

impl<S, B> Service<Request<B>> for WatchPacingService<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let pause = watch_key(request.uri())
            .map(|key| self.pacer.lock().expect("pacer lock").pause_for(key, Instant::now()))
            .unwrap_or_default();
        // The inner future sends nothing until polled, so the request goes out after the pause.
        let answer = self.inner.call(request);
        Box::pin(async move {
            if !pause.is_zero() {
                tracing::info!(
                    retry_in_ms = pause.as_millis() as u64,
                    "watch ended early, watching again after a pause"
                );
                tokio::time::sleep(pause).await;
            }
            answer.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only watches are paced, each collection and selector on its own.
    #[test]
    fn watch_keys() {
        let uri = |s: &str| s.parse::<http::Uri>().expect("a URI");
        let key = watch_key(&uri("/api/v1/namespaces/dev/pods?watch=true&labelSelector=app%3Dapi&resourceVersion=5"));
        assert_eq!(key.as_deref(), Some("/api/v1/namespaces/dev/pods?labelSelector=app%3Dapi"));
        assert!(watch_key(&uri("/api/v1/namespaces/dev/pods?labelSelector=app%3Dapi")).is_none(), "a list");
    }

    /// Watches sent back to back wait longer each time; a healthy one resets the pause.
    #[tokio::test(start_paused = true)]
    async fn early_ends_back_off_and_healthy_watches_reset() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        assert_eq!(pacer.pause_for("k".into(), start), Duration::ZERO, "the first watch goes at once");
        let second = pacer.pause_for("k".into(), start);
        assert!(second >= FIRST_PAUSE && second <= FIRST_PAUSE * 2, "then 0.8–1.6 s: {second:?}");
        let third = pacer.pause_for("k".into(), start + second);
        assert!(third >= FIRST_PAUSE * 2, "then longer: {third:?}");
        assert_eq!(pacer.pause_for("other".into(), start), Duration::ZERO, "another selector is its own");
        let later = start + second + third + Duration::from_secs(60);
        assert_eq!(pacer.pause_for("k".into(), later), Duration::ZERO, "a watch that lasted resets");
    }
}
