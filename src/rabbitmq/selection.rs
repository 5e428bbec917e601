//! What a run purges: the named queues and the pattern's matches, nothing else by default. Where
//! their dead letters go is read and **reported** (each queue with the one that feeds it and the
//! value to add), because no route the management API shows proves that a queue is ours: a shared
//! direct exchange, the default exchange and any exchange can carry other teams' traffic. Taking
//! dead-letter queues automatically is an explicit opt-in (`exact`, `reachable`).
//!
//! Cost: with names only (and no opt-in) each named queue, the policies when a queue's answer does
//! not say which applies, and the dead-letter exchanges with their own bindings are read one by one,
//! so the run does not grow with the vhost. A pattern or an opt-in lists the whole vhost, into
//! compact records. Failing to read what only informs the report (exchanges, bindings, policies)
//! is a warning: the selected queues are purged and the dead letters are said to be unknown.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anyhow::{Result, anyhow};
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;
use tracing::warn;

use super::client::Management;
use super::reads::ExchangeRecord;
use super::{DeadLetterKeys, QueueInfo, Reason, Selected, Selection};
use crate::config::{DeadLetters, MissingQueue, RabbitConfig, RetryPolicy};
use crate::dead_letters::{BindingInfo, Candidate, Topology, reached_by_one_another, select_dead_letter_queues};
use crate::policies::Policies;

/// The policy keys that decide where a queue's dead letters go.
const DEAD_LETTER_KEYS: &[&str] = &["dead-letter-exchange", "dead-letter-routing-key"];

/// Exchanges followed behind the named queues' dead-letter exchanges (exchange-to-exchange
/// bindings, alternate exchanges): a real chain is a few long; past this, the report says the dead
/// letters are unknown instead of reading a whole vhost one exchange at a time.
const MAX_EXCHANGES_FOLLOWED: usize = 64;

/// The least time discovery gets: a few requests on a healthy broker take milliseconds.
const DISCOVERY_MIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What reading where dead letters go may spend: one attempt per read, and a quarter of what is
/// left of the deadline (at least [`DISCOVERY_MIN`], never past the deadline). It only informs the
/// report or an opt-in, so a hanging or failing read ends as "unknown", never as a run that ran
/// out of time before purging the selected queues.
fn discovery_budget(policy: &RetryPolicy, deadline: Instant) -> (RetryPolicy, Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let budget = (left / 4).max(DISCOVERY_MIN);
    (RetryPolicy { attempts: 1, backoff: policy.backoff }, deadline.min(Instant::now() + budget))
}

/// How long reading the named queues' states may take before the run goes on without them.
const STATE_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Named queues read at once.
const READS_IN_FLIGHT: usize = 8;

/// Where the selected queues' dead letters go, as far as it could be read.
#[derive(Default)]
struct DeadLetterSettings {
    /// Queue → its dead-letter exchange and routing key.
    targets: BTreeMap<String, (String, Option<String>)>,
    /// The vhost's policies, once they were needed: or why they cannot be read.
    policies: Option<Result<Policies, String>>,
    /// Set when some queue's settings come from policies that cannot be read or evaluated.
    unknown: Option<String>,
}

impl Management {
    /// Named queues ∪ whole-name pattern matches, with what is known of their dead letters:
    /// reported (the default), or, with an explicit opt-in, taken.
    pub async fn select(&self, config: &RabbitConfig, policy: &RetryPolicy, deadline: Instant) -> Result<Selection> {
        let selection = if config.pattern.is_some() || config.dead_letters.takes_queues() {
            self.select_from_listing(config, policy, deadline).await?
        } else {
            self.select_named(config, policy, deadline).await?
        };
        for name in &selection.missing {
            match config.missing {
                MissingQueue::Ignore => {
                    warn!(vhost = %self.vhost, queue = %name, "named queue does not exist in vhost {:?}, skipped", self.vhost)
                }
                MissingQueue::Fail => {
                    warn!(vhost = %self.vhost, queue = %name, "named queue does not exist in vhost {:?}", self.vhost)
                }
            }
        }
        if let Some(why) = &selection.dead_letters_unknown {
            warn!(vhost = %self.vhost, why = %why, "where the selected queues' dead letters go is unknown; only the selected queues are purged");
        }
        // With an opt-in, what is left is what no route proves; by default, every discovery.
        let unproven = if config.dead_letters.takes_queues() { " (the route is not proven)" } else { "" };
        for candidate in &selection.dead_letter_candidates {
            warn!(
                vhost = %self.vhost,
                queue = %candidate.queue,
                dead_letters_of = %candidate.dead_letters_of,
                why = %candidate.why,
                "{}{unproven}",
                candidate.advice()
            );
        }
        Ok(selection)
    }

    /// The named queues, read one by one, and (to report) where their dead letters go.
    async fn select_named(&self, config: &RabbitConfig, policy: &RetryPolicy, deadline: Instant) -> Result<Selection> {
        let mut names: Vec<&String> = Vec::new();
        for name in &config.queues {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let answers: Vec<Result<Option<QueueInfo>>> = stream::iter(&names)
            .map(|name| self.queue(name, policy, deadline))
            .buffered(READS_IN_FLIGHT)
            .collect()
            .await;
        let mut selection = Selection::default();
        for (name, answer) in names.into_iter().zip(answers) {
            match answer? {
                Some(info) => selection.queues.push(Selected { info, reason: Reason::Named }),
                None => selection.missing.push(name.clone()),
            }
        }
        let found: Vec<&str> = selection.queues.iter().map(|q| q.info.name.as_str()).collect();
        if !found.is_empty() {
            // Only an aid (without the states, an unavailable queue fails by its purge's answer),
            // so one attempt within [`STATE_BUDGET`]: the broker filters the whole vhost for it,
            // milliseconds on most, seconds on one of 50,000 queues.
            let once = RetryPolicy { attempts: 1, backoff: policy.backoff };
            let soon = deadline.min(Instant::now() + STATE_BUDGET);
            match self.queue_states(&found, &once, soon).await {
                Ok(states) => {
                    for queue in &mut selection.queues {
                        if let Some(state) = states.get(&queue.info.name) {
                            queue.info.state = Some(state.clone());
                        }
                    }
                }
                Err(err) => {
                    warn!(vhost = %self.vhost, error = %format!("{err:#}"), "the queues' states could not be listed; an unavailable queue fails at its purge")
                }
            }
        }
        if !selection.missing.is_empty() {
            // RabbitMQ 4 answers 404 for a queue of a vhost the user may not see: a missing queue is
            // only missing when the vhost is visible.
            self.check_vhost_visible(policy, deadline).await?;
        }
        if config.dead_letters == DeadLetters::Report && !selection.queues.is_empty() {
            let (policy, deadline) = &discovery_budget(policy, deadline);
            let deadline = *deadline;
            match self.routes_of(&selection, policy, deadline).await {
                Ok((targets, topology)) => {
                    report_dead_letters(&mut selection, &targets, &topology);
                    let reported = std::mem::take(&mut selection.dead_letter_candidates);
                    // Bindings only exist to queues that exist; the default exchange names a queue
                    // that may not.
                    let mut existing = Vec::new();
                    for candidate in reported {
                        let bound = topology.bindings.iter().any(|b| b.destination == candidate.queue);
                        // A read that fails keeps it in the report: better named once too often.
                        if bound || !matches!(self.queue(&candidate.queue, policy, deadline).await, Ok(None)) {
                            existing.push(candidate);
                        }
                    }
                    selection.dead_letter_candidates = existing;
                }
                Err(why) => selection.dead_letters_unknown = Some(why),
            }
        }
        Ok(selection)
    }

    /// The selected queues' dead-letter targets and the part of the vhost's routing they reach,
    /// read exchange by exchange. `Err` says why it cannot be known.
    async fn routes_of(
        &self,
        selection: &Selection,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<(BTreeMap<String, (String, Option<String>)>, Topology), String> {
        let describe = |err: anyhow::Error| format!("{err:#}");
        let mut settings = DeadLetterSettings::default();
        for selected in &selection.queues {
            let info = &selected.info;
            let keys = self.dead_letter_keys(info, &mut settings, policy, deadline).await;
            if let Some(why) = settings.unknown.take() {
                return Err(why);
            }
            if let Some(target) = info.dead_letter_target(&keys) {
                settings.targets.insert(info.name.clone(), target);
            }
        }
        let mut exchanges: Vec<ExchangeRecord> = Vec::new();
        let mut bindings: Vec<BindingInfo> = Vec::new();
        // A source without a dead-letter routing key dead-letters with its messages' own keys:
        // those of its bindings, through exchanges whose types say whether the keys are known.
        let mut types_only: BTreeSet<String> = BTreeSet::new();
        for (queue, (_, key)) in &settings.targets {
            if key.is_none() {
                for binding in self.bindings_to(queue, policy, deadline).await.map_err(describe)? {
                    types_only.insert(binding.source.clone());
                    bindings.push(binding);
                }
            }
        }
        let mut to_read: VecDeque<String> =
            settings.targets.values().map(|(exchange, _)| exchange.clone()).filter(|e| !e.is_empty()).collect();
        let mut followed: BTreeSet<String> = BTreeSet::new();
        let mut alternates = BTreeMap::new();
        while let Some(name) = to_read.pop_front() {
            if !followed.insert(name.clone()) {
                continue;
            }
            if followed.len() > MAX_EXCHANGES_FOLLOWED {
                return Err(format!(
                    "the dead-letter exchanges route through more than {MAX_EXCHANGES_FOLLOWED} exchanges"
                ));
            }
            let Some(exchange) = self.exchange(&name, policy, deadline).await.map_err(describe)? else {
                continue; // it does not exist: the report says so
            };
            if let Some(alternate) = self.alternate_of(&exchange, &mut settings, policy, deadline).await {
                to_read.push_back(alternate.clone());
                alternates.insert(name.clone(), alternate);
            }
            for binding in self.bindings_from(&name, policy, deadline).await.map_err(describe)? {
                if binding.destination_type == "exchange" {
                    to_read.push_back(binding.destination.clone());
                }
                bindings.push(binding);
            }
            exchanges.push(exchange);
        }
        if let Some(why) = settings.unknown.take() {
            return Err(why);
        }
        for name in types_only.iter().filter(|name| !name.is_empty() && !followed.contains(*name)) {
            if let Some(exchange) = self.exchange(name, policy, deadline).await.map_err(describe)? {
                exchanges.push(exchange);
            }
        }
        let mut seen = BTreeSet::new();
        bindings.retain(|b| {
            seen.insert((b.source.clone(), b.destination.clone(), b.destination_type.clone(), b.routing_key.clone()))
        });
        let topology = Topology::new(exchanges.iter().map(ExchangeRecord::info).collect(), bindings)
            .with_alternates(alternates)
            .with_wildcard_routes_proven(true);
        Ok((settings.targets, topology))
    }

    /// Named queues ∪ whole-name pattern matches from one listing of the vhost, and their dead
    /// letters: reported, or with `exact`/`reachable`, taken where a route proves it.
    async fn select_from_listing(
        &self,
        config: &RabbitConfig,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<Selection> {
        let all: BTreeMap<String, QueueInfo> = self
            .list_queues(policy, deadline, config.dead_letters.takes_queues())
            .await?
            .into_iter()
            .map(|q| (q.name.clone(), q))
            .collect();
        let mut selection = Selection::default();
        let mut chosen = BTreeSet::new();
        for name in &config.queues {
            match all.get(name) {
                Some(info) if chosen.insert(name.clone()) => {
                    selection.queues.push(Selected { info: info.clone(), reason: Reason::Named })
                }
                Some(_) => {}
                None => selection.missing.push(name.clone()),
            }
        }
        if let Some(pattern) = &config.pattern {
            for (name, info) in &all {
                if pattern.is_match(name) && chosen.insert(name.clone()) {
                    selection.queues.push(Selected { info: info.clone(), reason: Reason::Pattern });
                }
            }
        }
        if config.dead_letters == DeadLetters::Off || selection.queues.is_empty() {
            return Ok(selection);
        }
        // To report, only the selected queues' settings matter; to take, every queue's (an
        // unselected one that feeds the same dead-letter queue makes it shared, not ours).
        let taking = config.dead_letters.takes_queues();
        let (policy, deadline) = &discovery_budget(policy, deadline);
        let deadline = *deadline;
        let mut settings = DeadLetterSettings::default();
        for (name, info) in all.iter().filter(|(name, _)| taking || chosen.contains(*name)) {
            let keys = self.dead_letter_keys(info, &mut settings, policy, deadline).await;
            if let Some(target) = info.dead_letter_target(&keys) {
                settings.targets.insert(name.clone(), target);
            }
        }
        if !chosen.iter().any(|name| settings.targets.contains_key(name)) {
            return Ok(selection);
        }
        let topology = match self.list_routing(policy, deadline).await {
            Ok((exchanges, bindings)) => {
                let mut alternates = BTreeMap::new();
                for exchange in &exchanges {
                    if let Some(alternate) = self.alternate_of(exchange, &mut settings, policy, deadline).await {
                        alternates.insert(exchange.name.clone(), alternate);
                    }
                }
                Topology::new(exchanges.iter().map(ExchangeRecord::info).collect(), bindings)
                    .with_alternates(alternates)
                    .with_wildcard_routes_proven(config.dead_letters != DeadLetters::Exact)
            }
            Err(err) => {
                selection.dead_letters_unknown = Some(format!("{err:#}"));
                return Ok(selection);
            }
        };
        if let Some(why) = &settings.unknown {
            // Some queue may dead-letter anywhere: nothing about dead letters is known for sure.
            selection.dead_letters_unknown = Some(why.clone());
        }
        if !taking {
            report_dead_letters(&mut selection, &settings.targets, &topology);
            selection.dead_letter_candidates.retain(|c| all.contains_key(&c.queue));
            return Ok(selection);
        }
        take_dead_letter_queues(&mut selection, all, settings, topology, chosen, deadline).await?;
        Ok(selection)
    }

    /// A queue's dead-letter keys from its policy: as its answer gives them, or (statistics off,
    /// not sampled yet) resolved from the vhost's policies, read once. What cannot be resolved is
    /// recorded in `settings.unknown`.
    async fn dead_letter_keys(
        &self,
        info: &QueueInfo,
        settings: &mut DeadLetterSettings,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> DeadLetterKeys {
        if let Some(listed) = info.listed_policy() {
            return listed;
        }
        if info.policy_name() == Some("") {
            return DeadLetterKeys::default();
        }
        let subject = (info.name.as_str(), info.kind(), info.policy_name());
        let definition = self.effective_policy(subject, DEAD_LETTER_KEYS, settings, policy, deadline).await;
        DeadLetterKeys::from_policy(&definition.unwrap_or_default())
    }

    /// An exchange's alternate exchange: its argument, else its policy's (policies read once).
    async fn alternate_of(
        &self,
        exchange: &ExchangeRecord,
        settings: &mut DeadLetterSettings,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Option<String> {
        if let Some(alternate) = exchange.alternate_argument() {
            return Some(alternate.to_string());
        }
        let subject = (exchange.name.as_str(), "exchange", Some(exchange.policy_name()?));
        let definition = self.effective_policy(subject, &["alternate-exchange"], settings, policy, deadline).await?;
        definition.get("alternate-exchange").and_then(|v| v.as_str()).map(str::to_string)
    }

    /// The definition (as far as `keys` go) of the policy that applies to `subject` (name, kind,
    /// the policy the answer names), from the vhost's policies, read once per run. `None` when it
    /// cannot be known; the reason is recorded in `settings.unknown`.
    async fn effective_policy(
        &self,
        (name, kind, named): (&str, &str, Option<&str>),
        keys: &[&str],
        settings: &mut DeadLetterSettings,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        if settings.policies.is_none() {
            settings.policies = Some(self.policies(policy, deadline).await);
        }
        let resolved = match settings.policies.as_ref().expect("read above") {
            Ok(policies) => policies.effective(name, kind, named, keys).map_err(|unknown| unknown.0),
            Err(why) => Err(why.clone()),
        };
        resolved.map_err(|why| settings.unknown.get_or_insert(why).clone()).ok()
    }
}

/// Names every queue the selected queues' dead letters can reach (wildcard routes and unproven
/// ones included) that is not selected itself, with the queue that feeds it; and notes which
/// selected queues other selected queues dead-letter into (purged after them, and once more).
fn report_dead_letters(
    selection: &mut Selection,
    targets: &BTreeMap<String, (String, Option<String>)>,
    topology: &Topology,
) {
    let chosen: BTreeSet<String> = selection.queues.iter().map(|q| q.info.name.clone()).collect();
    let mut reported: BTreeMap<String, Candidate> = BTreeMap::new();
    for (source, (exchange, key)) in targets.iter().filter(|(queue, _)| chosen.contains(*queue)) {
        if !topology.has_exchange(exchange) {
            warn!(queue = %source, exchange = %exchange, "dead-letter exchange does not exist");
            continue;
        }
        let route = topology.route_dead_letters(source, exchange, key.as_deref());
        if route.any_queue {
            warn!(queue = %source, "dead letters of this queue may reach any queue (the default exchange with the messages' own keys)");
        }
        for queue in route.reached.iter().chain(&route.candidates) {
            if queue == source || chosen.contains(queue) {
                continue;
            }
            reported.entry(queue.clone()).or_insert_with(|| Candidate {
                queue: queue.clone(),
                dead_letters_of: source.clone(),
                why: "discovered dead-letter queues are reported, not purged (CLEANSLATE_RABBITMQ_DEAD_LETTERS=report)"
                    .into(),
            });
        }
    }
    selection.dead_letter_targets = reached_by_one_another(&chosen, targets, topology);
    selection.dead_letter_candidates = reported.into_values().collect();
}

/// Adds the dead-letter queues that only selected queues' dead letters provably reach,
/// transitively, and records the others as candidates (see
/// [`crate::dead_letters::select_dead_letter_queues`]); then notes which selected queues other
/// selected queues dead-letter into (for the second pass). The routing analysis is CPU-bound on a
/// big vhost: it runs on a blocking thread, so the deadline and signals still act meanwhile.
async fn take_dead_letter_queues(
    selection: &mut Selection,
    all: BTreeMap<String, QueueInfo>,
    settings: DeadLetterSettings,
    topology: Topology,
    mut chosen: BTreeSet<String>,
    deadline: Instant,
) -> Result<()> {
    for (name, target) in &settings.targets {
        if chosen.contains(name) && !topology.has_exchange(&target.0) {
            warn!(queue = %name, exchange = %target.0, "dead-letter exchange does not exist");
        }
    }
    let unknown = settings.unknown.clone();
    let targets = settings.targets;
    let analysed = tokio::task::spawn_blocking(move || {
        let (taken, candidates) = select_dead_letter_queues(&chosen, &targets, &topology);
        let mut added = Vec::new();
        let mut candidates = candidates;
        for (queue, source) in taken {
            match &unknown {
                // Some queue's dead-letter settings are unknown: it may feed this one too.
                Some(why) => candidates.push(Candidate { queue, dead_letters_of: source, why: why.clone() }),
                None => {
                    if let Some(info) = all.get(&queue)
                        && chosen.insert(queue.clone())
                    {
                        added.push(Selected { info: info.clone(), reason: Reason::DeadLetterOf(source) });
                    }
                }
            }
        }
        candidates.sort_by(|a, b| a.queue.cmp(&b.queue));
        candidates.retain(|c| all.contains_key(&c.queue));
        let second_pass = reached_by_one_another(&chosen, &targets, &topology);
        (added, candidates, second_pass)
    });
    let analysed = match tokio::time::timeout_at(deadline, analysed).await {
        Ok(joined) => joined.map_err(|err| anyhow!("analysing dead-letter routes: {err}"))?,
        Err(_) => {
            // Nothing discovered is taken: the selected queues are purged all the same.
            selection.dead_letters_unknown = Some("the dead-letter routing analysis did not finish in time".into());
            return Ok(());
        }
    };
    let (added, candidates, second_pass) = analysed;
    selection.queues.extend(added);
    selection.dead_letter_candidates = candidates;
    selection.dead_letter_targets = second_pass;
    Ok(())
}
