//! Retries with exponential backoff and jitter, bounded by attempts and by the run's deadline.
//!
//! Only failures a retry can fix are retried: the caller says which by returning
//! [`Attempt::Transient`]. Everything else (bad credentials, a queue that cannot be purged) fails at
//! once, so a wrong password never turns into a retry storm against the broker.

use std::future::Future;
use std::time::Duration;

use anyhow::{Error, Result};
use tokio::time::Instant;
use tracing::warn;

use crate::config::RetryPolicy;
use crate::error::{Classified, Kind, classified, kind_of};

/// One attempt's failure, sorted by whether trying again can help.
#[derive(Debug)]
pub enum Attempt {
    /// Connection errors, timeouts, 5xx, 429: the next attempt may succeed.
    Transient(Error),
    /// Anything else: fail now.
    Permanent(Error),
}

impl Attempt {
    fn into_error(self) -> Error {
        match self {
            Attempt::Transient(err) | Attempt::Permanent(err) => err,
        }
    }
}

/// The pause before attempt `n + 1` (n counts from 1): `backoff * 2^(n-1)`, with "equal jitter"
/// (half fixed, half random) so that many Jobs restarted together do not retry in lockstep.
pub fn backoff_after(policy: &RetryPolicy, attempt: u32) -> Duration {
    let base = policy.backoff.saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16));
    let half = base / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Runs `operation` until it succeeds, fails permanently, runs out of attempts, or the deadline
/// passes. A pause that would end past the deadline is not taken: the last error is returned
/// instead, so the caller still has time to report it.
pub async fn run<T, F, Fut>(policy: &RetryPolicy, deadline: Instant, what: &str, mut operation: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Attempt>>,
{
    let mut attempt = 1;
    loop {
        let outcome = match tokio::time::timeout_at(deadline, operation()).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(past_deadline(None, what)),
        };
        let err = match outcome {
            Ok(value) => return Ok(value),
            Err(Attempt::Permanent(err)) => return Err(err),
            Err(transient @ Attempt::Transient(_)) => transient.into_error(),
        };
        if attempt >= policy.attempts {
            return Err(err.context(format!("gave up after {attempt} attempts")));
        }
        let pause = backoff_after(policy, attempt);
        if Instant::now() + pause >= deadline {
            return Err(past_deadline(Some(err), what));
        }
        warn!(operation = what, attempt, retry_in_ms = pause.as_millis() as u64, error = %format!("{err:#}"), "transient failure, retrying");
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// The error for a deadline that cut retries short: unreachable stays unreachable (69), anything
/// else is unfinished work (75).
fn past_deadline(last: Option<Error>, what: &str) -> Error {
    match last {
        Some(err) if kind_of(&err) == Kind::Unreachable => err.context("not reachable before the deadline"),
        Some(err) => err.context(Classified::new(Kind::Deadline, "deadline reached before it succeeded")),
        None => classified(Kind::Deadline, format!("{what}: deadline reached while it was running")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(attempts: u32, backoff_ms: u64) -> RetryPolicy {
        RetryPolicy { attempts, backoff: Duration::from_millis(backoff_ms) }
    }

    /// Backoff doubles per attempt and stays within [half, full] of the doubled base.
    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let p = policy(5, 1000);
        for attempt in 1..=4u32 {
            let full = Duration::from_millis(1000 * 2u64.pow(attempt - 1));
            for _ in 0..50 {
                let pause = backoff_after(&p, attempt);
                assert!(
                    pause >= full / 2 && pause <= full,
                    "attempt {attempt}: {pause:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    /// Transient failures are retried until success, within the attempt budget.
    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let value = run(&policy(3, 100), deadline, "test op", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(Attempt::Transient(anyhow::anyhow!("flaky")))
            } else {
                Ok(42)
            }
        })
        .await
        .expect("third attempt succeeds");
        assert_eq!(value, 42, "value of the successful attempt");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "exactly three attempts");
    }

    /// A permanent failure is not retried.
    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let err = run(&policy(5, 100), deadline, "test op", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Attempt::Permanent(anyhow::anyhow!("401 unauthorized")))
        })
        .await
        .expect_err("fails");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt only");
        assert!(format!("{err:#}").contains("401"), "original error kept: {err:#}");
    }

    /// Retries stop before a pause would cross the deadline; unreachability keeps its exit code.
    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_retries_and_keeps_unreachable() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let err = run(&policy(100, 1000), deadline, "connect", || async {
            Err::<(), _>(Attempt::Transient(classified(Kind::Unreachable, "connection refused")))
        })
        .await
        .expect_err("never succeeds");
        assert!(Instant::now() <= deadline, "stopped before the deadline");
        assert_eq!(kind_of(&err), Kind::Unreachable, "still 69: {err:#}");
    }

    /// An attempt still running at the deadline is cut off with exit 75.
    #[tokio::test(start_paused = true)]
    async fn hung_attempt_is_cut_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_secs(2);
        let err = run(&policy(3, 100), deadline, "slow op", || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), Attempt>(())
        })
        .await
        .expect_err("cut off");
        assert_eq!(kind_of(&err), Kind::Deadline, "75 for unfinished work: {err:#}");
    }
}
