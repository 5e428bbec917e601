//! Preflight: before anything is stopped or deleted, every selected backend is reached,
//! authenticated and its selection resolved: the queues read (named ones one by one), the key
//! ranges computed, and what can be checked checked (a missing named queue with
//! `MISSING=fail`, etcd's permission to delete every range). A wrong password, an unreachable
//! endpoint or a missing permission then stops nothing and deletes nothing, and the message names
//! the endpoint and the setting to fix. Both sides run side by side under the run's deadline.

use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;
use tracing::info;

use crate::config::{EtcdConfig, MissingQueue, RabbitConfig, RetryPolicy, is_dot_segment};
use crate::error::{Kind, classified, kind_of};
use crate::etcd::{self, KeyRange, RangePlan};
use crate::rabbitmq::{Management, Reason, Selection};

/// What the preflight resolved: the run executes exactly this.
pub(super) struct Prepared<'a> {
    pub rabbit: Option<Selection>,
    pub etcd: Option<PreparedEtcd<'a>>,
}

/// A connected etcd session, its ranges, and (in a dry run) how many keys each holds.
pub(super) struct PreparedEtcd<'a> {
    pub session: etcd::Session<'a>,
    pub plan: RangePlan,
    /// Keys per range of `plan.ranges`: counted in a dry run only.
    pub counts: Vec<u64>,
}

/// Resolves both sides; any failure of either comes back as one error (the worst kind first),
/// with nothing changed anywhere.
pub(super) async fn run<'a>(
    rabbit: Option<(&Management, &RabbitConfig)>,
    etcd: Option<(&'a EtcdConfig, RangePlan)>,
    policy: &RetryPolicy,
    request_timeout: Duration,
    dry_run: bool,
    deadline: Instant,
) -> Result<Prepared<'a>> {
    let rabbit_side = async {
        match rabbit {
            Some((client, settings)) => Some(select_queues(client, settings, policy, dry_run, deadline).await),
            None => None,
        }
    };
    let etcd_side = async {
        match etcd {
            Some((settings, plan)) => {
                Some(prepare_etcd(settings, plan, policy, request_timeout, dry_run, deadline).await)
            }
            None => None,
        }
    };
    let (rabbit, etcd) = tokio::join!(rabbit_side, etcd_side);
    let mut failures = Vec::new();
    let mut kind = None;
    let mut note = |side: &str, err: anyhow::Error| {
        let err_kind = kind_of(&err);
        kind = Some(kind.map_or(err_kind, |k: Kind| k.worst(err_kind)));
        failures.push(format!("{side}: {err:#}"));
    };
    let rabbit = rabbit.transpose().unwrap_or_else(|err| {
        note("rabbitmq", err);
        None
    });
    let etcd = etcd.transpose().unwrap_or_else(|err| {
        note("etcd", err);
        None
    });
    match kind {
        Some(kind) => Err(classified(kind, format!("preflight: {}", failures.join("; ")))),
        None => Ok(Prepared { rabbit, etcd }),
    }
}

/// The queues to purge; a named queue that is missing fails here with `MISSING=fail`, so that
/// nothing is purged when the selection is known to be wrong. A plan says what it would purge.
async fn select_queues(
    client: &Management,
    settings: &RabbitConfig,
    policy: &RetryPolicy,
    dry_run: bool,
    deadline: Instant,
) -> Result<Selection> {
    let selection = client.select(settings, policy, deadline).await?;
    // A named queue that can never be purged fails now, before anything is stopped or deleted: the
    // same input fails the same way on every attempt.
    let unpurgeable: Vec<String> = selection
        .queues
        .iter()
        .filter(|q| q.reason == Reason::Named)
        .filter_map(|q| {
            let why = if is_dot_segment(&q.info.name) {
                Some("its name is a URL dot segment the management API cannot address; purge it with rabbitmqctl purge_queue")
            } else {
                q.info.unpurgeable()
            };
            why.map(|why| format!("{:?}: {why}", q.info.name))
        })
        .collect();
    if !unpurgeable.is_empty() {
        return Err(classified(
            Kind::Config,
            format!(
                "named queues that cannot be purged, in vhost {:?}: {}; remove them from CLEANSLATE_RABBITMQ_QUEUES",
                settings.vhost,
                unpurgeable.join("; ")
            ),
        ));
    }
    if settings.missing == MissingQueue::Fail && !selection.missing.is_empty() {
        return Err(anyhow!(
            "named queues missing in vhost {:?}: {} (CLEANSLATE_RABBITMQ_MISSING=fail); no queue was purged",
            settings.vhost,
            selection.missing.join(", ")
        ));
    }
    if dry_run {
        let unknown = || "unknown".to_string();
        for queue in &selection.queues {
            let info = &queue.info;
            let consumers = info.consumers.map_or_else(unknown, |n| n.to_string());
            let unacknowledged = info.messages_unacknowledged.map_or_else(unknown, |n| n.to_string());
            match info.messages_ready {
                Some(approx_messages) => info!(
                    vhost = %settings.vhost, queue = %info.name, reason = %queue.reason, queue_type = info.kind(),
                    approx_messages, unacknowledged = %unacknowledged, consumers = %consumers, "would purge queue"
                ),
                None => info!(
                    vhost = %settings.vhost, queue = %info.name, reason = %queue.reason, queue_type = info.kind(),
                    approx_messages = "unknown", unacknowledged = %unacknowledged, consumers = %consumers,
                    "would purge queue"
                ),
            }
        }
    }
    Ok(selection)
}

/// Connects (a probe read, no maintenance call), then, to delete, checks the permission on every
/// range without deleting anything; to plan, counts the keys of every range and protected prefix.
async fn prepare_etcd<'a>(
    settings: &'a EtcdConfig,
    plan: RangePlan,
    policy: &RetryPolicy,
    request_timeout: Duration,
    dry_run: bool,
    deadline: Instant,
) -> Result<PreparedEtcd<'a>> {
    let session = etcd::Session::new(settings, request_timeout);
    session.connect(policy, deadline).await?;
    // Side-effect free, so a plan checks it too: a plan that passes is a purge that may delete.
    session.check_delete(&plan.ranges, policy, deadline).await?;
    if !dry_run {
        return Ok(PreparedEtcd { session, plan, counts: Vec::new() });
    }
    for (key, value) in &settings.seed {
        info!(key = %key, bytes = value.len(), "would seed key (CLEANSLATE_ETCD_SEED_FILE)");
    }
    let protected: Vec<KeyRange> = plan.protected.iter().map(|p| KeyRange::prefix(p.as_bytes())).collect();
    let all: Vec<KeyRange> = plan.ranges.iter().chain(&protected).cloned().collect();
    let mut counts = session.count(&all, policy, deadline).await?;
    let protected_counts = counts.split_off(plan.ranges.len());
    // Said in the prefixes the user wrote, not in the ranges they became.
    for prefix in &settings.prefixes {
        let target = KeyRange::prefix(prefix.as_bytes());
        let keys: u64 =
            plan.ranges.iter().zip(&counts).filter(|(range, _)| target.overlaps(range)).map(|(_, n)| n).sum();
        let kept: Vec<&str> = plan
            .protected
            .iter()
            .filter(|p| target.overlaps(&KeyRange::prefix(p.as_bytes())))
            .map(String::as_str)
            .collect();
        info!(prefix = %prefix, keys, protected_kept = %kept.join(","), "would delete keys under prefix");
    }
    for (prefix, keys) in plan.protected.iter().zip(protected_counts) {
        info!(prefix = %prefix, keys, reason = "listed in CLEANSLATE_ETCD_PROTECTED_PREFIXES", "protected keys kept");
    }
    Ok(PreparedEtcd { session, plan, counts })
}
