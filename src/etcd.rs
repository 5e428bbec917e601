//! etcd: key ranges from prefixes, protected-prefix subtraction, and the delete transaction.
//!
//! A prefix `p` is the key range `[p, prefix_end(p))`, as `etcdctl del --prefix` sends it. Target
//! ranges are merged, protected ranges are cut out, and what remains is deleted by `DeleteRange`
//! operations in one transaction (etcd's `--max-txn-ops` limits operations, not keys: etcd PR #7976),
//! so a purge costs the same few round trips for ten keys or a million. More ranges than the server's
//! `--max-txn-ops` (128 unless lowered: `CLEANSLATE_ETCD_MAX_TXN_OPS`) take one transaction per that
//! many: each is atomic, the whole is not, and the
//! keys deleted by transactions that committed are reported even when a later one fails. `prev_kv` stays off: it
//! would send every deleted key back and can overflow the gRPC message limit on large prefixes.
//!
//! The safety rules live here because they need the final ranges: an empty prefix (the whole
//! keyspace; `etcdctl del "" --prefix`) is refused, and so is any range that still reaches the
//! system prefixes `/registry/` (Kubernetes) or `/coreos.com/` after protected prefixes are cut out.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::Duration;

use anyhow::{Result, anyhow};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp, TxnOpResponse,
};
use tokio::time::Instant;

use crate::config::{EtcdConfig, RetryPolicy};
use crate::error::{Classified, Kind, classified};
use crate::retry::{self, Attempt};
use crate::tally::Tally;

/// Keys no cleanup may reach unless an operator protects them explicitly.
pub const SYSTEM_PREFIXES: &[&str] = &["/registry/", "/coreos.com/"];

pub use crate::config::DEFAULT_ETCD_MAX_TXN_OPS as MAX_TXN_OPS;

/// Connecting to etcd on the cluster network takes milliseconds; five seconds means it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A half-open key range `[start, end)`; `end == None` runs to the end of the keyspace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange { start: prefix.to_vec(), end: prefix_end(prefix) }
    }

    /// The `range_end` etcd expects: `"\0"` means "to the end of the keyspace".
    pub fn end_bytes(&self) -> Vec<u8> {
        self.end.clone().unwrap_or_else(|| vec![0])
    }

    fn ends_before(&self, key: &[u8]) -> bool {
        self.end.as_deref().is_some_and(|end| end <= key)
    }

    /// True when some key lies in both ranges.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        !self.ends_before(&other.start) && !other.ends_before(&self.start)
    }

    /// What is left of `self` after removing `cut`: zero, one or two ranges.
    pub fn minus(&self, cut: &KeyRange) -> Vec<KeyRange> {
        if !self.overlaps(cut) {
            return vec![self.clone()];
        }
        let mut left_over = Vec::new();
        if self.start < cut.start {
            left_over.push(KeyRange { start: self.start.clone(), end: Some(cut.start.clone()) });
        }
        if let Some(cut_end) = &cut.end
            && !self.ends_before(cut_end)
            && self.end.as_ref() != Some(cut_end)
        {
            left_over.push(KeyRange { start: cut_end.clone(), end: self.end.clone() });
        }
        left_over
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match &self.end {
            Some(end) => format!("{:?}", String::from_utf8_lossy(end)),
            None => "end of keyspace".to_string(),
        };
        write!(f, "[{:?}, {end})", String::from_utf8_lossy(&self.start))
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's `GetPrefixRangeEnd`):
/// drop trailing `0xff` bytes and increment the last; `None` when nothing is left.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("non-empty") += 1;
            return Some(end);
        }
        end.pop();
    }
    None
}

/// Sorts and merges overlapping or touching ranges.
fn union(mut ranges: Vec<KeyRange>) -> Vec<KeyRange> {
    ranges.sort();
    let mut merged: Vec<KeyRange> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if !last.ends_before(&range.start) || last.end.as_ref() == Some(&range.start) => {
                if last.end.is_some() && (range.end.is_none() || range.end > last.end) {
                    last.end = range.end;
                }
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// What a purge will delete and what it keeps, decided before any connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangePlan {
    /// Disjoint ranges to delete, in key order.
    pub ranges: Vec<KeyRange>,
    /// Protected prefixes that fall inside a target prefix: their keys are kept.
    pub protected: Vec<String>,
}

fn refused(message: String) -> anyhow::Error {
    classified(Kind::Refused, message)
}

/// Turns prefixes into disjoint ranges, or refuses a plan that could reach what it must not.
pub fn plan_ranges(prefixes: &[String], protected: &[String]) -> Result<RangePlan> {
    if prefixes.iter().any(|p| p.is_empty()) || prefixes.is_empty() {
        return Err(refused(
            "CLEANSLATE_ETCD_PREFIXES contains an empty prefix, which would delete the whole etcd keyspace".into(),
        ));
    }
    let targets = union(prefixes.iter().map(|p| KeyRange::prefix(p.as_bytes())).collect());
    let mut ranges = targets.clone();
    for cut in protected {
        let cut = KeyRange::prefix(cut.as_bytes());
        ranges = ranges.iter().flat_map(|r| r.minus(&cut)).collect();
    }
    for system in SYSTEM_PREFIXES {
        let system_range = KeyRange::prefix(system.as_bytes());
        if let Some(range) = ranges.iter().find(|r| r.overlaps(&system_range)) {
            let prefix =
                prefixes.iter().find(|p| KeyRange::prefix(p.as_bytes()).overlaps(range)).cloned().unwrap_or_default();
            return Err(refused(format!(
                "etcd prefix {prefix:?} would delete system keys under {system:?}; \
                 list {system:?} in CLEANSLATE_ETCD_PROTECTED_PREFIXES if the rest of the prefix really must go"
            )));
        }
    }
    let protected = protected
        .iter()
        .filter(|p| targets.iter().any(|t| t.overlaps(&KeyRange::prefix(p.as_bytes()))))
        .cloned()
        .collect();
    Ok(RangePlan { ranges, protected })
}

/// Connects to one endpoint, authenticates if configured, verifies the server with the given CA,
/// and reads one key of the first target prefix (count only, linearizable, leader required), so
/// that a dead member or one cut off from its leader is found here rather than by the first delete.
///
/// The probe is a read a user with `readwrite` on its own prefix may make: the maintenance
/// `Status` call needs the `root` role since etcd 3.5.28 (CVE-2026-33413) and in 3.6
/// (etcd-io/etcd#14663), and least-privilege users must work on every etcd.
async fn connect_one(
    config: &EtcdConfig,
    endpoint: &str,
    request_timeout: Duration,
    probe_key: &[u8],
) -> Result<Client, Attempt> {
    // require_leader: a member cut off from the leader fails the request at once instead of
    // waiting out the timeout; auto token refresh: an auth token that expired between requests
    // (the simple token's TTL, a restarted member) is renewed and the request sent again, as
    // etcdctl does, instead of being reported as a wrong password.
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(request_timeout)
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    if let Some((user, password)) = &config.auth {
        options = options.with_user(user.clone(), password.expose().to_string());
    }
    if let Some(tls) = &config.tls {
        let read = |path: &std::path::Path, name: &str| {
            std::fs::read(path).map_err(|err| {
                Attempt::Permanent(classified(Kind::Config, format!("{name}: cannot read {}: {err}", path.display())))
            })
        };
        let mut tls_options =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca_file, "CLEANSLATE_ETCD_CA_FILE")?));
        if let Some((cert, key)) = &tls.client {
            tls_options = tls_options.identity(Identity::from_pem(
                read(cert, "CLEANSLATE_ETCD_CERT_FILE")?,
                read(key, "CLEANSLATE_ETCD_KEY_FILE")?,
            ));
        }
        options = options.with_tls(tls_options);
    }
    let what = format!("connecting to etcd at {endpoint}");
    let mut client = Client::connect([endpoint], Some(options)).await.map_err(|err| sort_error(err, &what))?;
    let probe = client.get(probe_key, Some(GetOptions::new().with_count_only()));
    match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(err)) => Err(sort_error(err, &what)),
        Err(_) => Err(Attempt::Transient(classified(Kind::Unreachable, format!("{what}: no answer")))),
    }
}

/// An etcd connection that fails over between endpoints.
///
/// etcd-client balances requests over all endpoints through tonic, which keeps sending requests
/// to a dead member (its lazy connection looks ready), so a retry could hit the same dead endpoint
/// every time. Here a transient failure drops the connection, and the next attempt connects to the
/// next endpoint that answers a probe read, as etcd's own clients fail over.
pub struct Session<'a> {
    config: &'a EtcdConfig,
    request_timeout: Duration,
    client: RefCell<Option<Client>>,
    next_endpoint: Cell<usize>,
}

impl<'a> Session<'a> {
    pub fn new(config: &'a EtcdConfig, request_timeout: Duration) -> Session<'a> {
        Session { config, request_timeout, client: RefCell::new(None), next_endpoint: Cell::new(0) }
    }

    /// The current connection, or a new one to the first endpoint that answers, starting after the
    /// one that failed last. A refused login ends the search at once.
    async fn client(&self) -> Result<Client, Attempt> {
        if let Some(client) = self.client.borrow().clone() {
            return Ok(client);
        }
        let endpoints = &self.config.endpoints;
        let mut last = None;
        for offset in 0..endpoints.len() {
            let index = (self.next_endpoint.get() + offset) % endpoints.len();
            let probe_key = self.config.prefixes.first().map(String::as_bytes).unwrap_or_default();
            match connect_one(self.config, &endpoints[index], self.request_timeout, probe_key).await {
                Ok(client) => {
                    self.next_endpoint.set(index);
                    *self.client.borrow_mut() = Some(client.clone());
                    return Ok(client);
                }
                Err(permanent @ Attempt::Permanent(_)) => return Err(permanent),
                Err(transient) => last = Some(transient),
            }
        }
        Err(last.unwrap_or_else(|| Attempt::Permanent(anyhow!("no etcd endpoints configured"))))
    }

    /// Forgets a connection that failed, so the next attempt tries the next endpoint.
    fn failed(&self) {
        *self.client.borrow_mut() = None;
        self.next_endpoint.set(self.next_endpoint.get() + 1);
    }

    /// Connects (retrying under the deadline) without sending anything else: for a fail-fast check
    /// before work starts.
    pub async fn connect(&self, policy: &RetryPolicy, deadline: Instant) -> Result<()> {
        retry::run(policy, deadline, "connecting to etcd", || async { self.client().await.map(|_| ()) }).await
    }
}

/// Transport failures and "unavailable" are transient; a refused login or permission is not.
fn sort_error(err: etcd_client::Error, what: &str) -> Attempt {
    use etcd_client::Error as E;
    use tonic::Code;
    let transient_unreachable = |err: E| {
        Attempt::Transient(
            anyhow::Error::new(err).context(Classified::new(Kind::Unreachable, format!("{what}: etcd not reachable"))),
        )
    };
    match err {
        E::TransportError(_) | E::IoError(_) => transient_unreachable(err),
        E::GRpcStatus(ref status) => match status.code() {
            // tonic reports its own request timeout as Cancelled "Timeout expired" (tonic `Status::from_error`):
            // the member took the connection but did not answer in time, like DeadlineExceeded below.
            Code::Cancelled if status.message().contains("Timeout expired") => Attempt::Transient(
                anyhow::Error::new(err)
                    .context(Classified::new(Kind::Deadline, format!("{what}: etcd did not answer in time"))),
            ),
            Code::Unavailable | Code::Cancelled => transient_unreachable(err),
            // The member answered the connection but not the request in time: slow, not gone.
            Code::DeadlineExceeded => Attempt::Transient(
                anyhow::Error::new(err)
                    .context(Classified::new(Kind::Deadline, format!("{what}: etcd did not answer in time"))),
            ),
            Code::ResourceExhausted | Code::Aborted | Code::Internal | Code::Unknown => {
                Attempt::Transient(anyhow!("{what}: etcd answered {}: {}", code_name(status.code()), status.message()))
            }
            // An expired or revoked token (its TTL passed, the member restarted), or a token older
            // than the auth store (a user or role changed meanwhile): etcd-client renews an expired
            // one by itself; otherwise a fresh connection authenticates again, as etcd's own client does.
            Code::InvalidArgument | Code::Unauthenticated | Code::FailedPrecondition
                if status.message().contains("invalid auth token")
                    || status.message().contains("revision of auth store is old") =>
            {
                Attempt::Transient(anyhow!("{what}: etcd answered {}: {}", code_name(status.code()), status.message()))
            }
            Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied
                if status.message().contains("user name is empty") =>
            {
                Attempt::Permanent(classified(
                    Kind::Denied,
                    format!(
                        "{what}: etcd requires authentication ({}): set CLEANSLATE_ETCD_USERNAME and the password",
                        status.message()
                    ),
                ))
            }
            Code::PermissionDenied | Code::InvalidArgument | Code::Unauthenticated
                if status.message().contains("permission denied") =>
            {
                Attempt::Permanent(classified(
                    Kind::Denied,
                    format!(
                        "{what}: etcd refused the permission ({}): the user needs readwrite on every prefix in \
                     CLEANSLATE_ETCD_PREFIXES (etcdctl role grant-permission ROLE readwrite PREFIX --prefix)",
                        status.message()
                    ),
                ))
            }
            Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied
                if status.message().contains("auth") || status.message().contains("permission") =>
            {
                Attempt::Permanent(classified(
                    Kind::Denied,
                    format!(
                        "{what}: etcd refused the credentials ({}); check CLEANSLATE_ETCD_USERNAME and the password",
                        status.message()
                    ),
                ))
            }
            code => Attempt::Permanent(anyhow!("{what}: etcd answered {}: {}", code_name(code), status.message())),
        },
        other => Attempt::Permanent(anyhow!("{what}: {other}")),
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

impl Session<'_> {
    /// Runs `ops` in transactions of at most `max_txn_ops` operations (the server's
    /// `--max-txn-ops`, [`MAX_TXN_OPS`] unless configured) and returns the responses of
    /// the transactions that committed, in order, and the error that stopped the rest, if any. Each
    /// transaction is retried on its own (they are idempotent), so a retry never redoes, or loses
    /// the counts of, a transaction that already succeeded. Only each transaction is atomic: when
    /// one fails after others committed, what those deleted stays deleted and is reported.
    async fn in_transactions(
        &self,
        ops: Vec<TxnOp>,
        what: &str,
        policy: &RetryPolicy,
        deadline: Instant,
        tally: Option<&Tally>,
    ) -> (Vec<TxnOpResponse>, Option<anyhow::Error>) {
        let mut responses = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(self.config.max_txn_ops.max(1)) {
            let response = retry::run(policy, deadline, what, || async {
                let mut kv = self.client().await?.kv_client();
                kv.txn(Txn::new().and_then(chunk.to_vec())).await.map_err(|err| {
                    let attempt = sort_error(err, what);
                    if matches!(attempt, Attempt::Transient(_)) {
                        self.failed();
                    }
                    attempt
                })
            })
            .await;
            match response {
                Ok(response) => {
                    let committed = response.op_responses();
                    if let Some(tally) = tally {
                        tally.keys_deleted(committed.iter().map(deleted_keys).sum());
                    }
                    responses.extend(committed);
                }
                Err(err) => return (responses, Some(err)),
            }
        }
        (responses, None)
    }

    /// Counts keys per range in one read transaction: what a purge would delete.
    pub async fn count(&self, ranges: &[KeyRange], policy: &RetryPolicy, deadline: Instant) -> Result<Vec<u64>> {
        let ops = ranges
            .iter()
            .map(|r| TxnOp::get(r.start.clone(), Some(GetOptions::new().with_range(r.end_bytes()).with_count_only())))
            .collect();
        let (responses, failure) = self.in_transactions(ops, "counting etcd keys", policy, deadline, None).await;
        if let Some(err) = failure {
            return Err(err);
        }
        Ok(responses
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(get) => get.count().max(0) as u64,
                _ => 0,
            })
            .collect())
    }

    /// Checks, deleting nothing, that every range may be deleted: each transaction the delete will
    /// send is sent with a comparison that never holds (a key's version below zero), so only its
    /// empty failure branch runs, while etcd checks the permissions of the comparisons and of both
    /// branches before it evaluates anything (`checkTxnAuth`: `etcdserver/apply_auth.go` in 3.4,
    /// `server/etcdserver/apply_auth.go` in 3.5, `CheckTxnAuth` in `server/etcdserver/txn/txn.go`
    /// in 3.6). A missing permission is then refused before the workloads are stopped or anything
    /// is deleted; the transaction changes nothing (no revision, no watch event).
    pub async fn check_delete(&self, ranges: &[KeyRange], policy: &RetryPolicy, deadline: Instant) -> Result<()> {
        let what = "checking permission to delete the etcd ranges and write the seed";
        let (ops, _) = delete_and_seed_ops(ranges, &self.config.seed);
        for chunk in ops.chunks(self.config.max_txn_ops.max(1)) {
            let Some(first) = ranges
                .first()
                .map(|r| r.start.clone())
                .or_else(|| self.config.seed.first().map(|(k, _)| k.clone().into_bytes()))
            else {
                continue;
            };
            let deletes: Vec<TxnOp> = chunk.to_vec();
            let never = Compare::version(first, CompareOp::Less, 0);
            let answer = retry::run(policy, deadline, what, || async {
                let mut kv = self.client().await?.kv_client();
                kv.txn(Txn::new().when([never.clone()]).and_then(deletes.clone())).await.map_err(|err| {
                    let attempt = sort_error(err, what);
                    if matches!(attempt, Attempt::Transient(_)) {
                        self.failed();
                    }
                    attempt
                })
            })
            .await?;
            if answer.succeeded() {
                // Cannot happen (a version is never negative); if a server ever said so, the
                // ranges were deleted already: say it loudly rather than report nothing.
                return Err(anyhow!("{what}: etcd ran the never-true branch; the ranges may have been deleted"));
            }
        }
        Ok(())
    }

    /// Deletes every range, one transaction per `max_txn_ops` ranges, and reports keys deleted per
    /// committed range, as the server counted them, even when a later transaction failed (and in
    /// `tally` as each commits, for a run a signal stops). A transaction retried after a lost answer
    /// reports zero for the keys its first attempt already deleted.
    ///
    /// The seed's puts follow the deletes: in the same transaction when all fit in the server's
    /// `--max-txn-ops` (one atomic step: no reader ever sees the prefix empty), else in the
    /// transactions right after the last delete, before the marker is written either way.
    pub async fn delete(
        &self,
        ranges: &[KeyRange],
        policy: &RetryPolicy,
        deadline: Instant,
        tally: &Tally,
    ) -> Deletion {
        let (ops, owners) = delete_and_seed_ops(ranges, &self.config.seed);
        let (responses, failure) =
            self.in_transactions(ops, "deleting etcd ranges and writing the seed", policy, deadline, Some(tally)).await;
        // Keys deleted per range of the plan (a range cut around seed keys is several deletes);
        // only ranges whose every delete committed are reported as done.
        let done = responses.len().min(owners.len());
        let mut committed: Vec<u64> = Vec::new();
        for (owner, response) in owners.iter().zip(&responses).take(done) {
            if committed.len() <= *owner {
                committed.resize(owner + 1, 0);
            }
            committed[*owner] += deleted_keys(response);
        }
        if done < owners.len() && owners.get(done) == owners.get(done.saturating_sub(1)) && done > 0 {
            // The range whose pieces were cut short is not done: its count stays in the tally.
            committed.pop();
        }
        let seeded = responses.iter().filter(|op| matches!(op, TxnOpResponse::Put(_))).count() as u64;
        Deletion { committed, seeded, failure }
    }
}

/// The deletes of every range, then the seed's puts, and for each delete the index of the range it
/// belongs to. etcd refuses a transaction whose put lies inside one of its delete ranges ("duplicate
/// key given in txn request": `checkIntervals`), so each seed key is cut out of the ranges (its put
/// replaces the old value anyway): deletes and puts never overlap and can share a transaction.
fn delete_and_seed_ops(ranges: &[KeyRange], seed: &[(String, String)]) -> (Vec<TxnOp>, Vec<usize>) {
    // Sorted once; each range then takes the keys inside it in one pass: n log n, not n × pieces.
    let mut keys: Vec<&[u8]> = seed.iter().map(|(key, _)| key.as_bytes()).collect();
    keys.sort_unstable();
    let mut ops = Vec::new();
    let mut owners = Vec::new();
    for (index, range) in ranges.iter().enumerate() {
        let first = keys.partition_point(|key| *key < range.start.as_slice());
        let mut start = range.start.clone();
        for key in keys[first..].iter().take_while(|key| !range.ends_before(key)) {
            if start.as_slice() < *key {
                ops.push(TxnOp::delete(start.clone(), Some(DeleteOptions::new().with_range(key.to_vec()))));
                owners.push(index);
            }
            // The key itself is left to its put; the next piece starts right after it.
            start = key.to_vec();
            start.push(0);
        }
        let rest = KeyRange { start, end: range.end.clone() };
        if rest.end.as_deref().is_none_or(|end| rest.start.as_slice() < end) {
            ops.push(TxnOp::delete(rest.start.clone(), Some(DeleteOptions::new().with_range(rest.end_bytes()))));
            owners.push(index);
        }
    }
    ops.extend(seed.iter().map(|(key, value)| TxnOp::put(key.as_bytes(), value.as_bytes(), None)));
    (ops, owners)
}

/// Keys a delete operation removed (0 for anything else).
fn deleted_keys(op: &TxnOpResponse) -> u64 {
    match op {
        TxnOpResponse::Delete(del) => del.deleted().max(0) as u64,
        _ => 0,
    }
}

/// What a delete run did: counts for the ranges whose transaction committed (the first ones, in
/// order), and the error that stopped the rest.
#[derive(Debug)]
pub struct Deletion {
    pub committed: Vec<u64>,
    /// Seed keys written (their transactions committed).
    pub seeded: u64,
    pub failure: Option<anyhow::Error>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::kind_of;

    fn range(start: &str, end: Option<&str>) -> KeyRange {
        KeyRange { start: start.as_bytes().to_vec(), end: end.map(|e| e.as_bytes().to_vec()) }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Seed keys are cut out of the ranges (etcd refuses a put inside a range the same transaction
    /// deletes): a key at the start, in the middle, twice in a row, outside every range.
    #[test]
    fn seed_keys_are_cut_out_of_the_deleted_ranges() {
        let ranges = vec![KeyRange::prefix(b"app/"), KeyRange::prefix(b"web/")];
        let seed: Vec<(String, String)> =
            ["app/", "app/m", "app/m\0", "web/z"].iter().map(|k| (k.to_string(), "v".to_string())).collect();
        let (ops, owners) = delete_and_seed_ops(&ranges, &seed);
        assert_eq!(ops.len(), 4 + seed.len(), "app/ in two pieces plus one after the last key, web/ in two");
        assert_eq!(owners, vec![0, 0, 1, 1], "each piece belongs to its range");
        let many: Vec<(String, String)> = (0..20_000).map(|i| (format!("app/k{i:05}"), "v".into())).collect();
        let (ops, _) = delete_and_seed_ops(&ranges, &many);
        assert_eq!(ops.len(), 20_001 + 1 + 20_000, "one delete between each two keys, and web/ whole");
    }

    /// prefix_end increments the last byte, skipping trailing 0xff, as etcd does.
    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"monorepo/"), Some(b"monorepo0".to_vec()), "'/' + 1 = '0'");
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()), "trailing 0xff dropped");
        assert_eq!(prefix_end(b"\xff\xff"), None, "all 0xff runs to the end");
        assert_eq!(prefix_end(b""), None, "empty prefix is everything");
    }

    /// A literal prefix without a slash also covers its longer siblings; with the slash it does not.
    #[test]
    fn literal_prefixes_cover_siblings() {
        let bare = KeyRange::prefix(b"monorepo");
        let slash = KeyRange::prefix(b"monorepo/");
        let keep = KeyRange::prefix(b"monorepo-keep/");
        assert!(bare.overlaps(&keep), "monorepo reaches monorepo-keep/");
        assert!(!slash.overlaps(&keep), "monorepo/ does not reach monorepo-keep/");
    }

    /// Subtracting a protected prefix leaves the two outer parts.
    #[test]
    fn protected_prefix_splits_a_range() {
        let plan = plan_ranges(&strings(&["app/"]), &strings(&["app/keep/"])).expect("plan");
        assert_eq!(plan.ranges, vec![range("app/", Some("app/keep/")), range("app/keep0", Some("app0"))], "split");
        assert_eq!(plan.protected, strings(&["app/keep/"]), "protected inside target reported");
        let whole = plan_ranges(&strings(&["app/"]), &strings(&["app/"])).expect("plan");
        assert!(whole.ranges.is_empty(), "protecting the whole prefix leaves nothing");
        let outside = plan_ranges(&strings(&["app/"]), &strings(&["other/"])).expect("plan");
        assert!(outside.protected.is_empty(), "protected prefixes outside targets are not reported");
    }

    /// Overlapping and nested prefixes merge into disjoint ranges.
    #[test]
    fn overlapping_prefixes_merge() {
        let plan = plan_ranges(&strings(&["a/b/", "a/", "c/"]), &[]).expect("plan");
        assert_eq!(plan.ranges, vec![range("a/", Some("a0")), range("c/", Some("c0"))], "merged and sorted");
    }

    /// Empty prefixes and ranges reaching system keys are refused with 77, naming the prefix.
    #[test]
    fn dangerous_plans_are_refused() {
        for (prefixes, needle) in [
            (strings(&[""]), "empty prefix"),
            (strings(&["ok/", ""]), "empty prefix"),
            (strings(&["/"]), "/registry/"),
            (strings(&["/reg"]), "/registry/"),
            (strings(&["/registry/pods/"]), "/registry/"),
            (strings(&["/coreos.com"]), "/coreos.com/"),
        ] {
            let err = plan_ranges(&prefixes, &[]).expect_err("refused");
            assert_eq!(kind_of(&err), Kind::Refused, "{prefixes:?} refused with 77");
            assert!(err.to_string().contains(needle), "{prefixes:?}: message names {needle}: {err}");
        }
    }

    /// Protecting the system prefixes makes a broad prefix acceptable, and keeps them out of range.
    #[test]
    fn protected_system_prefixes_allow_a_broad_prefix() {
        let plan = plan_ranges(&strings(&["/"]), &strings(&["/registry/", "/coreos.com/"])).expect("allowed");
        let registry = KeyRange::prefix(b"/registry/");
        assert!(plan.ranges.iter().all(|r| !r.overlaps(&registry)), "no range reaches /registry/");
        assert_eq!(plan.ranges.len(), 3, "three pieces around two holes: {:?}", plan.ranges);
    }

    /// A range to the end of the keyspace is sent as "\0".
    #[test]
    fn unbounded_end_is_nul() {
        assert_eq!(KeyRange::prefix(b"\xff").end_bytes(), vec![0], "etcd's 'to the end' marker");
    }

    /// An expired token is retried (a new connection authenticates again); a wrong password is not.
    #[test]
    fn expired_tokens_are_transient_and_bad_passwords_are_not() {
        let status = |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        let expired = sort_error(status(tonic::Code::Unauthenticated, "etcdserver: invalid auth token"), "deleting");
        assert!(matches!(expired, Attempt::Transient(_)), "expired token: {expired:?}");
        let old =
            sort_error(status(tonic::Code::InvalidArgument, "etcdserver: revision of auth store is old"), "deleting");
        assert!(matches!(old, Attempt::Transient(_)), "stale auth revision: {old:?}");
        let refused = sort_error(
            status(tonic::Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password"),
            "connecting",
        );
        assert!(matches!(refused, Attempt::Permanent(_)), "wrong password: {refused:?}");
    }
}
