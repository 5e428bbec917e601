//! Which queues the dead letters of a selected queue can reach: routing rules as pure functions
//! over what the management API lists (queues with arguments and policies, exchanges, bindings),
//! so they are unit-tested without a broker. [`crate::rabbitmq`] fetches; this module decides.
//!
//! A dead letter is republished to the queue's dead-letter exchange with the dead-letter routing
//! key when one is set, else with the message's original routing keys
//! (<https://www.rabbitmq.com/docs/dlx#routing>). The rule errs only towards not purging:
//! - **proven** routes are purged: a `direct` or `topic` binding whose literal key equals the
//!   dead-letter key, the default exchange naming the queue, every binding of a `fanout` exchange
//!   (the usual dedicated `x.dlx` → `x.dlq`), exchange-to-exchange bindings followed with the same key;
//! - a queue reached only through a **wildcard** topic binding (`*`, `#`) is a candidate: topic
//!   exchanges with wildcard bindings are how applications publish and subscribe, and the API cannot
//!   tell a shared application exchange that doubles as a dead-letter exchange from a dedicated one.
//!   `CLEANSLATE_RABBITMQ_DEAD_LETTERS=reachable` ([`Topology::wildcard_routes_proven`]) takes them;
//! - without a dead-letter key, the original keys are the queue's name (the default exchange) and
//!   the keys of the queue's own literal bindings; a queue also bound through `fanout`, `headers` or a
//!   wildcard topic binding can receive messages with any key, so routes beyond those keys are unproven;
//! - `headers` exchanges (and plugin exchange types) route on what the message carries, which is
//!   not known here.
//!
//! What a route cannot prove is never purged: it is returned as a candidate, named in the plan and
//! the summary, because a shared dead-letter exchange often has other teams' queues behind it. And a
//! proven target is still left alone when any queue *outside* the selection may also dead-letter
//! into it ([`select_dead_letter_queues`]). Alternate exchanges of a dead-letter exchange are not
//! followed (messages reach them only when nothing else matched), so their queues are not selected.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// An exchange as the list endpoint describes it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ExchangeInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub exchange_type: String,
}

/// A binding as the list endpoint describes it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct BindingInfo {
    pub source: String,
    pub destination: String,
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
}

/// What one vhost routes: its exchanges and bindings.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Exchange name → type.
    pub exchanges: BTreeMap<String, String>,
    pub bindings: Vec<BindingInfo>,
    /// Exchange name → its alternate exchange (argument or policy), which receives what the
    /// exchange routes nowhere: whatever is behind it is reachable, never proven.
    pub alternates: BTreeMap<String, String>,
    /// Exchanges that also carry the ordinary traffic of selected queues (a selected queue that is
    /// no dead-letter target is bound to them): application exchanges, not dedicated dead-letter
    /// exchanges, so nothing routed through them is proven (a retry loop that dead-letters back
    /// into the exchange its queue consumes from reaches every other subscriber of that key).
    pub application: BTreeMap<String, String>,
    /// Whether a wildcard topic binding (`*`, `#`) that matches the dead-letter key proves a route
    /// (`CLEANSLATE_RABBITMQ_DEAD_LETTERS=reachable`). By default it does not: an application's
    /// topic exchange that doubles as a dead-letter exchange has other teams' queues bound with
    /// `orders.#` or `#`, and the API cannot tell such an exchange from a dedicated one.
    pub wildcard_routes_proven: bool,
    /// Indexes into `bindings` by source exchange and by destination queue, so routing one key
    /// and finding a queue's own keys cost what those bindings number, not the whole vhost's.
    by_source: BTreeMap<String, Vec<usize>>,
    by_destination_queue: BTreeMap<String, Vec<usize>>,
}

/// Where one queue's dead letters go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Queues a dead letter of the source certainly can reach.
    pub reached: BTreeSet<String>,
    /// Queues bound behind the dead-letter exchange that no provable route reaches: not purged.
    pub candidates: BTreeSet<String>,
    /// Why candidates exist, for the plan and the summary.
    pub unproven_because: Option<String>,
    /// The dead letters may reach any queue of the vhost (the default exchange with keys that are
    /// not known): for the outside-feeder check.
    pub any_queue: bool,
}

/// The routing keys a dead letter can carry.
enum Keys {
    /// Exactly these.
    Known(BTreeSet<String>),
    /// At least these, and possibly any other.
    Open(BTreeSet<String>, String),
}

impl Topology {
    pub fn new(exchanges: Vec<ExchangeInfo>, bindings: Vec<BindingInfo>) -> Topology {
        let mut by_source: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut by_destination_queue: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, binding) in bindings.iter().enumerate() {
            by_source.entry(binding.source.clone()).or_default().push(index);
            if binding.destination_type == "queue" {
                by_destination_queue.entry(binding.destination.clone()).or_default().push(index);
            }
        }
        Topology {
            exchanges: exchanges.into_iter().map(|e| (e.name, e.exchange_type)).collect(),
            bindings,
            alternates: BTreeMap::new(),
            application: BTreeMap::new(),
            wildcard_routes_proven: false,
            by_source,
            by_destination_queue,
        }
    }

    /// The same topology, with the alternate exchanges of its exchanges.
    pub fn with_alternates(mut self, alternates: BTreeMap<String, String>) -> Topology {
        self.alternates = alternates;
        self
    }

    /// The same topology, with wildcard topic bindings taken as proof (or not).
    pub fn with_wildcard_routes_proven(mut self, proven: bool) -> Topology {
        self.wildcard_routes_proven = proven;
        self
    }

    fn bindings_from<'a>(&'a self, exchange: &'a str) -> impl Iterator<Item = &'a BindingInfo> + 'a {
        self.by_source.get(exchange).into_iter().flatten().map(|&index| &self.bindings[index])
    }

    fn bindings_to<'a>(&'a self, queue: &'a str) -> impl Iterator<Item = &'a BindingInfo> + 'a {
        self.by_destination_queue.get(queue).into_iter().flatten().map(|&index| &self.bindings[index])
    }

    /// Whether `exchange` exists (the default exchange always does).
    pub fn has_exchange(&self, exchange: &str) -> bool {
        exchange.is_empty() || self.exchanges.contains_key(exchange)
    }

    /// The keys a message that reached `queue` may have been published with.
    fn original_keys(&self, queue: &str) -> Keys {
        let mut keys = BTreeSet::from([queue.to_string()]);
        let mut open = None;
        for binding in self.bindings_to(queue) {
            match self.exchanges.get(&binding.source).map(String::as_str) {
                Some("direct") => {
                    keys.insert(binding.routing_key.clone());
                }
                Some("topic") if !binding.routing_key.split('.').any(|w| w == "*" || w == "#") => {
                    keys.insert(binding.routing_key.clone());
                }
                Some(kind) => {
                    open.get_or_insert_with(|| {
                        format!(
                            "{queue:?} is bound through {kind} exchange {:?}, so its messages may carry any routing key, and no dead-letter routing key is set",
                            binding.source
                        )
                    });
                }
                None => {}
            }
        }
        match open {
            None => Keys::Known(keys),
            Some(why) => Keys::Open(keys, why),
        }
    }

    /// Where dead letters sent to `exchange` with `routing_key` (or, when `None`, the original keys
    /// of `source_queue`) can go.
    pub fn route_dead_letters(&self, source_queue: &str, exchange: &str, routing_key: Option<&str>) -> Route {
        if exchange.is_empty() && routing_key.is_none() {
            // The default exchange routes the original keys to queues of those names: the source
            // itself (a cycle RabbitMQ drops) or other queues that merely share a binding key's name.
            let mut route = Route::default();
            let keys = match self.original_keys(source_queue) {
                Keys::Known(keys) => keys,
                Keys::Open(keys, _) => {
                    route.any_queue = true;
                    keys
                }
            };
            route.candidates = keys.into_iter().filter(|k| k != source_queue).collect();
            if !route.candidates.is_empty() {
                route.unproven_because = Some(format!(
                    "{source_queue:?} dead-letters to the default exchange without a routing key, which sends each message to the queue named by its original routing key"
                ));
            }
            return route;
        }
        let keys = match routing_key {
            Some(key) => Keys::Known(BTreeSet::from([key.to_string()])),
            None => self.original_keys(source_queue),
        };
        let (keys, open_because) = match keys {
            Keys::Known(keys) => (keys, None),
            Keys::Open(keys, why) => (keys, Some(why)),
        };
        let mut route = Route::default();
        for key in &keys {
            self.route(exchange, Some(key), &mut BTreeSet::new(), &mut route);
        }
        if let Some(why) = open_because {
            // Any other key may reach whatever is bound behind the exchange.
            let mut any = Route::default();
            self.route(exchange, None, &mut BTreeSet::new(), &mut any);
            let extra: BTreeSet<String> = any.reached.union(&any.candidates).cloned().collect();
            route.candidates.extend(extra.difference(&route.reached).cloned());
            if !route.candidates.is_empty() && route.unproven_because.is_none() {
                route.unproven_because = Some(why);
            }
        }
        route.candidates.retain(|queue| !route.reached.contains(queue));
        route
    }

    /// Routes one key (or, with `None`, every possible key) through `exchange`, following
    /// exchange-to-exchange bindings.
    fn route(&self, exchange: &str, key: Option<&str>, visited: &mut BTreeSet<String>, route: &mut Route) {
        if !visited.insert(exchange.to_string()) {
            return;
        }
        if exchange.is_empty() {
            // The default exchange: the queue named by the key, which the caller checks exists.
            if let Some(key) = key {
                route.reached.insert(key.to_string());
            }
            return;
        }
        let kind = self.exchanges.get(exchange).map(String::as_str).unwrap_or("");
        for binding in self.bindings_from(exchange) {
            let matched = match (self.binding_match(exchange, kind, binding, key), self.application.get(exchange)) {
                (Match::Proven, Some(queue)) => Match::Unproven(Some(format!(
                    "exchange {exchange:?} also carries the ordinary messages of {queue:?}: an application exchange, not a dedicated dead-letter exchange"
                ))),
                (matched, _) => matched,
            };
            match matched {
                Match::No => {}
                Match::Proven if binding.destination_type == "exchange" => {
                    self.route(&binding.destination, key, visited, route);
                }
                Match::Proven => {
                    route.reached.insert(binding.destination.clone());
                }
                Match::Unproven(why) => {
                    if binding.destination_type == "exchange" {
                        let mut behind = Route::default();
                        self.route(&binding.destination, None, visited, &mut behind);
                        route.candidates.extend(behind.reached.into_iter().chain(behind.candidates));
                        route.any_queue |= behind.any_queue;
                    } else {
                        route.candidates.insert(binding.destination.clone());
                    }
                    if let Some(why) = why {
                        route.unproven_because.get_or_insert(why);
                    }
                }
            }
        }
        if let Some(alternate) = self.alternates.get(exchange) {
            // Only what nothing else matched goes there; taken as possible, never as proof.
            let mut behind = Route::default();
            self.route(alternate, None, visited, &mut behind);
            route.candidates.extend(behind.reached.into_iter().chain(behind.candidates));
            route.any_queue |= behind.any_queue || alternate.is_empty();
            route.unproven_because.get_or_insert_with(|| {
                format!(
                    "exchange {exchange:?} has the alternate exchange {alternate:?}, which gets what it routes nowhere"
                )
            });
        }
    }

    /// Where dead letters of an unselected queue may go, as widely as possible: without a
    /// dead-letter routing key they carry their original keys, including any CC/BCC header keys
    /// (<https://www.rabbitmq.com/docs/dlx#routing>), so any key at all.
    pub fn route_any_key(&self, source_queue: &str, exchange: &str, routing_key: Option<&str>) -> Route {
        if routing_key.is_some() {
            return self.route_dead_letters(source_queue, exchange, routing_key);
        }
        let mut route = Route { any_queue: exchange.is_empty(), ..Route::default() };
        self.route(exchange, None, &mut BTreeSet::new(), &mut route);
        route
    }

    /// Whether a message with `key` (`None`: any key) sent to `exchange` follows `binding`, and
    /// whether that is proven.
    fn binding_match(&self, exchange: &str, kind: &str, binding: &BindingInfo, key: Option<&str>) -> Match {
        let wildcard = binding.routing_key.split('.').any(|word| word == "*" || word == "#");
        match (kind, key) {
            ("fanout", _) => Match::Proven,
            ("direct", Some(key)) if binding.routing_key == key => Match::Proven,
            ("topic", Some(key)) if !wildcard && binding.routing_key == key => Match::Proven,
            ("topic", Some(key)) if wildcard && topic_matches(&binding.routing_key, key) => {
                if self.wildcard_routes_proven {
                    Match::Proven
                } else {
                    Match::Unproven(Some(format!(
                        "topic exchange {exchange:?} reaches it only through the wildcard binding {:?}, which is how \
                         applications subscribe, not proof of a dead-letter queue \
                         (CLEANSLATE_RABBITMQ_DEAD_LETTERS=reachable takes such queues)",
                        binding.routing_key
                    )))
                }
            }
            ("direct" | "topic", Some(_)) => Match::No,
            // Any key at all: whatever is bound may be reached; the caller says why.
            (_, None) => Match::Unproven(None),
            // headers and plugin types route on what the message carries.
            _ => Match::Unproven(Some(format!(
                "{kind} exchange {exchange:?} routes on message contents, which are not known here"
            ))),
        }
    }
}

/// How one binding relates to one dead letter.
enum Match {
    /// The dead letter does not follow it.
    No,
    /// It certainly does.
    Proven,
    /// It may, and why that is not proven (when there is more to say than the caller knows).
    Unproven(Option<String>),
}

/// The queues of `sources` that another one's dead letters provably reach (a queue's dead letters
/// back into itself aside).
pub fn reached_by_one_another(
    sources: &BTreeSet<String>,
    dead_letter_targets: &BTreeMap<String, (String, Option<String>)>,
    topology: &Topology,
) -> BTreeSet<String> {
    dead_letter_targets
        .iter()
        .filter(|(queue, (exchange, _))| sources.contains(*queue) && topology.has_exchange(exchange))
        .flat_map(|(queue, (exchange, key))| {
            let reached = topology.route_dead_letters(queue, exchange, key.as_deref()).reached;
            reached.into_iter().filter(move |target| target != queue && sources.contains(target))
        })
        .collect()
}

/// A queue that dead letters might reach but that is not purged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub queue: String,
    /// A selected queue whose dead letters might go there.
    pub dead_letters_of: String,
    pub why: String,
}

impl Candidate {
    /// What the plan, the summary, the marker and the Event say of it: not purged, and the value
    /// that would purge it.
    pub fn advice(&self) -> String {
        format!(
            "`{}` receives dead letters of `{}`; not purged: add it to `cleanup.rabbitmq.queues` (CLEANSLATE_RABBITMQ_QUEUES) to purge it with them",
            self.queue, self.dead_letters_of
        )
    }
}

/// The dead-letter queues to purge along with `selected`, each with the selected queue whose dead
/// letters reach it, and the candidates left alone.
///
/// A queue is taken only when dead letters of selected queues provably reach it **and** every queue
/// in the vhost whose dead letters reach it is selected too: a shared dead-letter queue (behind a
/// fanout exchange, or a `#` binding) also holds other services' dead letters, which the user did
/// not select. Transitive: a dead-letter queue taken this way counts as selected for the next round.
/// `dead_letter_targets` gives every queue of the vhost that dead-letters, with its exchange and key.
pub fn select_dead_letter_queues(
    selected: &BTreeSet<String>,
    dead_letter_targets: &BTreeMap<String, (String, Option<String>)>,
    topology: &Topology,
) -> (Vec<(String, String)>, Vec<Candidate>) {
    // Selected queues that no selected queue's dead letters reach take ordinary traffic: the
    // exchanges bound to them are application exchanges.
    let dead_letter_targets_of_selection = reached_by_one_another(selected, dead_letter_targets, topology);
    let mut topology = topology.clone();
    for binding in &topology.bindings {
        if binding.destination_type == "queue"
            && !binding.source.is_empty()
            && selected.contains(&binding.destination)
            && !dead_letter_targets_of_selection.contains(&binding.destination)
        {
            topology.application.entry(binding.source.clone()).or_insert_with(|| binding.destination.clone());
        }
    }
    let topology = &topology;
    let has_exchange = |(_, (exchange, _)): &(&String, &(String, Option<String>))| topology.has_exchange(exchange);
    // Where each queue's dead letters may go at the widest, for telling outsiders from insiders.
    // That depends only on the exchange and the key (any key, without one), so queues that share
    // them (a vhost-wide policy: thousands) share one route.
    let mut shared: std::collections::HashMap<(&str, Option<&str>), std::rc::Rc<Route>> = Default::default();
    let widest: Vec<(&String, std::rc::Rc<Route>)> = dead_letter_targets
        .iter()
        .filter(has_exchange)
        .map(|(queue, (exchange, key))| {
            let route = shared
                .entry((exchange.as_str(), key.as_deref()))
                .or_insert_with(|| std::rc::Rc::new(topology.route_any_key(queue, exchange, key.as_deref())));
            (queue, route.clone())
        })
        .collect();
    // Where the dead letters of a queue that may be ours provably go: only those are routed.
    let route_of = |queue: &String| -> Option<Route> {
        let (exchange, key) = dead_letter_targets.get(queue)?;
        topology.has_exchange(exchange).then(|| topology.route_dead_letters(queue, exchange, key.as_deref()))
    };
    let mut routes: BTreeMap<String, Route> = BTreeMap::new();
    // Every queue whose dead letters may reach `target` (proven or not, any key), itself aside: a
    // DLQ that has the same dead-letter policy as its source (`set_policy DLX ".*"`) routes to itself.
    let feeders = |target: &str| -> Vec<&String> {
        widest
            .iter()
            .filter(|(source, route)| {
                source.as_str() != target
                    && (route.any_queue || route.reached.contains(target) || route.candidates.contains(target))
            })
            .map(|(source, _)| *source)
            .collect()
    };
    // The most that could be ours: everything the selection's dead letters provably reach,
    // transitively, in the order found.
    let mut found: Vec<(String, String)> = Vec::new();
    let mut queue: std::collections::VecDeque<String> = selected.iter().cloned().collect();
    while let Some(source) = queue.pop_front() {
        if !routes.contains_key(&source)
            && let Some(route) = route_of(&source)
        {
            routes.insert(source.clone(), route);
        }
        let Some(route) = routes.get(&source) else { continue };
        for target in &route.reached {
            if !selected.contains(target) && !found.iter().any(|(t, _)| t == target) {
                found.push((target.clone(), source.clone()));
                queue.push_back(target.clone());
            }
        }
    }
    // Then drop, until nothing changes, every queue that a queue neither selected nor kept may also
    // feed: its messages are not all ours. (A greatest fixpoint: cycles among kept queues stay.)
    let mut kept: BTreeSet<String> = found.iter().map(|(t, _)| t.clone()).collect();
    let mut dropped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let outsiders: Vec<(String, Vec<String>)> = kept
            .iter()
            .map(|target| {
                let outside = feeders(target)
                    .into_iter()
                    .filter(|s| !selected.contains(*s) && !kept.contains(*s))
                    .cloned()
                    .collect::<Vec<_>>();
                (target.clone(), outside)
            })
            .filter(|(_, outside)| !outside.is_empty())
            .collect();
        if outsiders.is_empty() {
            break;
        }
        for (target, outside) in outsiders {
            kept.remove(&target);
            dropped.insert(target, outside);
        }
    }
    let taken: Vec<(String, String)> = found.iter().filter(|(t, _)| kept.contains(t)).cloned().collect();
    let mut candidates: BTreeMap<String, Candidate> = BTreeMap::new();
    for (target, source) in found.iter().filter(|(t, _)| dropped.contains_key(t)) {
        candidates.insert(
            target.clone(),
            Candidate {
                queue: target.clone(),
                dead_letters_of: source.clone(),
                why: format!(
                    "it may also receive dead letters of unselected queues: {} (one without a dead-letter routing key \
                     may carry any key: setting one makes its route provable)",
                    named_few(&dropped[target])
                ),
            },
        );
    }
    let ours = |q: &String| selected.contains(q) || kept.contains(q);
    for (source, route) in routes.iter().filter(|(source, _)| ours(source)) {
        for target in route.candidates.iter().filter(|t| !ours(t)) {
            candidates.entry(target.clone()).or_insert_with(|| Candidate {
                queue: target.clone(),
                dead_letters_of: source.clone(),
                why: route.unproven_because.clone().unwrap_or_default(),
            });
        }
    }
    (taken, candidates.into_values().collect())
}

/// The first few names and how many more: a shared dead-letter queue may have thousands of feeders.
fn named_few(names: &[String]) -> String {
    const SHOWN: usize = 5;
    match names.len() {
        n if n <= SHOWN => names.join(", "),
        n => format!("{} and {} more", names[..SHOWN].join(", "), n - SHOWN),
    }
}

/// AMQP topic matching: words separated by `.`; `*` matches exactly one word, `#` zero or more.
pub fn topic_matches<'a>(pattern: &'a str, key: &'a str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
            Some((&word, rest)) => {
                key.split_first().is_some_and(|(&first, tail)| (word == "*" || word == first) && matches(rest, tail))
            }
        }
    }
    // An empty key or pattern has no words, as RabbitMQ splits them (`rabbit_exchange_type_topic`):
    // the binding key "" matches the routing key "", and so does "#", but "*" does not.
    let words =
        |text: &'a str| -> Vec<&'a str> { if text.is_empty() { Vec::new() } else { text.split('.').collect() } };
    let (pattern, key) = (words(pattern), words(key));
    matches(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(name: &str, kind: &str) -> ExchangeInfo {
        ExchangeInfo { name: name.into(), exchange_type: kind.into() }
    }

    fn bind(source: &str, destination: &str, key: &str) -> BindingInfo {
        BindingInfo {
            source: source.into(),
            destination: destination.into(),
            destination_type: "queue".into(),
            routing_key: key.into(),
        }
    }

    fn bind_exchange(source: &str, destination: &str, key: &str) -> BindingInfo {
        BindingInfo { destination_type: "exchange".into(), ..bind(source, destination, key) }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// `*` is one word, `#` any number of words, including none.
    #[test]
    fn topic_patterns() {
        assert!(topic_matches("orders.*", "orders.created"), "star is one word");
        assert!(!topic_matches("orders.*", "orders.created.eu"), "star is not two words");
        assert!(topic_matches("orders.#", "orders"), "hash may be no word");
        assert!(topic_matches("#", "anything.at.all"), "hash alone matches all");
        assert!(topic_matches("#.dlq", "a.b.dlq"), "hash then word");
        assert!(!topic_matches("billing.#", "orders.created"), "other prefix");
        assert!(topic_matches("orders", "orders"), "plain word");
        assert!(topic_matches("", ""), "empty binding key matches the empty routing key");
        assert!(topic_matches("#", ""), "hash matches the empty routing key");
        assert!(!topic_matches("*", ""), "star needs a word");
    }

    fn targets(list: &[(&str, &str, Option<&str>)]) -> BTreeMap<String, (String, Option<String>)> {
        list.iter().map(|(q, x, k)| (q.to_string(), (x.to_string(), k.map(str::to_string)))).collect()
    }

    /// A dead-letter queue shared with unselected queues (a fanout DLX) is a candidate, not purged;
    /// one that only selected queues feed is purged, transitively.
    #[test]
    fn shared_dead_letter_queues_are_not_taken() {
        let topology = Topology::new(
            vec![exchange("shared", "fanout"), exchange("own", "direct")],
            vec![bind("shared", "all-dead", ""), bind("own", "orders-dlq", "orders"), bind("own", "dlq-of-dlq", "x")],
        );
        let dead_letters = targets(&[
            ("orders", "own", Some("orders")),
            ("orders-dlq", "own", Some("x")),
            ("billing", "shared", None),
            ("payments", "shared", None),
        ]);
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders", "billing"]), &dead_letters, &topology);
        let taken: Vec<&str> = taken.iter().map(|(q, _)| q.as_str()).collect();
        assert_eq!(taken, ["orders-dlq", "dlq-of-dlq"], "only-ours dead-letter queues, transitively");
        assert_eq!(candidates.len(), 1, "one candidate: {candidates:?}");
        assert_eq!(candidates[0].queue, "all-dead", "the shared sink is left alone");
        assert!(candidates[0].why.contains("payments"), "names the unselected feeder: {candidates:?}");
        let (taken, _) = select_dead_letter_queues(&set(&["billing", "payments"]), &dead_letters, &topology);
        assert_eq!(taken, [("all-dead".to_string(), "billing".to_string())], "taken once every feeder is selected");
    }

    /// A dead-letter queue that carries the same dead-letter policy as its source (RabbitMQ's own
    /// `set_policy DLX ".*"` example) routes to itself; that does not make it shared.
    #[test]
    fn a_dead_letter_queue_feeding_itself_is_still_ours() {
        let topology = Topology::new(vec![exchange("my-dlx", "direct")], vec![bind("my-dlx", "orders-dlq", "orders")]);
        let dead_letters = targets(&[("orders", "my-dlx", None), ("orders-dlq", "my-dlx", None)]);
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
        assert_eq!(taken, [("orders-dlq".to_string(), "orders".to_string())], "purged: {candidates:?}");
    }

    /// An unselected queue that might dead-letter into a queue (an open key set, a headers DLX)
    /// keeps that queue from being purged.
    #[test]
    fn a_possible_outside_feeder_keeps_a_queue_out() {
        let topology = Topology::new(
            vec![exchange("events", "fanout"), exchange("dlx", "direct")],
            vec![bind("events", "billing", ""), bind("dlx", "orders-dlq", "orders")],
        );
        let dead_letters = targets(&[("orders", "dlx", Some("orders")), ("billing", "dlx", None)]);
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
        assert!(taken.is_empty(), "billing may dead-letter there with any key: {taken:?}");
        assert_eq!(candidates.len(), 1, "named instead: {candidates:?}");
        assert!(candidates[0].why.contains("billing"), "names the feeder: {candidates:?}");
    }

    /// Dead-lettering to the default exchange without a key sends messages to queues named by their
    /// original keys: other queues of those names are only candidates.
    #[test]
    fn default_exchange_without_key_is_unproven() {
        let topology = Topology::new(vec![exchange("work", "direct")], vec![bind("work", "orders", "billing")]);
        let route = topology.route_dead_letters("orders", "", None);
        assert!(route.reached.is_empty(), "nothing proven: {route:?}");
        assert_eq!(route.candidates, set(&["billing"]), "the queue named like the binding key");
    }

    /// A topic dead-letter exchange with wildcard bindings proves nothing by default; with
    /// `reachable` it reaches only the matching queues, and other teams' queues stay out.
    #[test]
    fn wildcard_topic_bindings_are_candidates_unless_reachable() {
        let topology = Topology::new(
            vec![exchange("dlx", "topic")],
            vec![bind("dlx", "orders-dlq", "orders.#"), bind("dlx", "billing-dlq", "billing.#")],
        );
        let route = topology.route_dead_letters("orders", "dlx", Some("orders.dead"));
        assert!(route.reached.is_empty(), "a wildcard binding proves nothing: {route:?}");
        assert_eq!(route.candidates, set(&["orders-dlq"]), "named instead");
        assert!(route.unproven_because.as_deref().is_some_and(|w| w.contains("wildcard")), "says why: {route:?}");
        let route = topology.with_wildcard_routes_proven(true).route_dead_letters("orders", "dlx", Some("orders.dead"));
        assert_eq!(route.reached, set(&["orders-dlq"]), "reachable: only the matching queue");
        assert!(route.candidates.is_empty(), "billing-dlq is not reached: {route:?}");
    }

    /// The case that lost another team's data: a shared application topic exchange (everybody
    /// publishes there, subscribers bind `orders.#` and `#`) that is also the dead-letter exchange
    /// of a selected queue, with a dead-letter routing key. Only the queue bound with that literal
    /// key is purged; every subscriber's queue keeps its messages and is named.
    #[test]
    fn shared_application_exchange_doubling_as_dead_letter_exchange() {
        let topology = Topology::new(
            vec![exchange("app.events", "topic"), exchange("amq.topic", "topic")],
            vec![
                bind("app.events", "orders-dlq", "orders.dead"),
                bind("app.events", "audit", "#"),
                bind("app.events", "order-history", "orders.#"),
                bind("app.events", "order-notifier", "orders.*"),
                bind("app.events", "billing", "billing.#"),
            ],
        );
        let dead_letters = targets(&[("orders", "app.events", Some("orders.dead"))]);
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
        assert_eq!(taken, [("orders-dlq".to_string(), "orders".to_string())], "the literal route only");
        let named: Vec<&str> = candidates.iter().map(|c| c.queue.as_str()).collect();
        assert_eq!(named, ["audit", "order-history", "order-notifier"], "subscribers named, not purged");
        assert!(candidates.iter().all(|c| c.why.contains("wildcard")), "says why: {candidates:?}");
        // Without the literal binding nothing at all is taken.
        let topology = Topology::new(
            topology.exchanges.iter().map(|(n, t)| exchange(n, t)).collect(),
            topology.bindings.iter().filter(|b| b.destination != "orders-dlq").cloned().collect(),
        );
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
        assert!(taken.is_empty(), "no proven route, nothing purged: {taken:?}");
        assert_eq!(candidates.len(), 3, "all named: {candidates:?}");
        // An operator who knows the exchange is dedicated opts in, and the fixpoint still keeps out
        // a queue that an unselected queue dead-letters into.
        let topology = topology.with_wildcard_routes_proven(true);
        let dead_letters =
            targets(&[("orders", "app.events", Some("orders.dead")), ("billing", "app.events", Some("x"))]);
        let (taken, _) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
        let taken: Vec<&str> = taken.iter().map(|(q, _)| q.as_str()).collect();
        assert_eq!(
            taken,
            ["order-history", "order-notifier"],
            "reachable takes wildcard routes; audit also gets billing's: {taken:?}"
        );
    }

    /// Without a dead-letter key, a queue fed only by the default exchange keeps its own name as
    /// the key: a direct DLX routes that name, and other bindings are not reached.
    #[test]
    fn original_key_of_a_plain_queue_is_its_name() {
        let topology = Topology::new(
            vec![exchange("dlx", "direct")],
            vec![bind("dlx", "orders-dlq", "orders"), bind("dlx", "billing-dlq", "billing")],
        );
        let route = topology.route_dead_letters("orders", "dlx", None);
        assert_eq!(route.reached, set(&["orders-dlq"]), "routed by the queue's name");
        assert!(route.candidates.is_empty(), "closed set of keys: {route:?}");
    }

    /// A queue bound through a fanout exchange may hold messages with any key: without a
    /// dead-letter key, queues behind a direct or topic DLX are only candidates.
    #[test]
    fn open_original_keys_make_candidates() {
        let topology = Topology::new(
            vec![exchange("events", "fanout"), exchange("dlx", "topic")],
            vec![bind("events", "orders", ""), bind("dlx", "orders-dlq", "orders"), bind("dlx", "team-b-dlq", "#")],
        );
        let route = topology.route_dead_letters("orders", "dlx", None);
        assert_eq!(route.reached, set(&["orders-dlq"]), "what the known key provably reaches");
        assert_eq!(route.candidates, set(&["team-b-dlq"]), "a # binding and any other key: unproven");
        let topology = Topology::new(
            vec![exchange("events", "fanout"), exchange("dlx", "direct")],
            vec![bind("events", "orders", ""), bind("dlx", "orders-dlq", "orders"), bind("dlx", "team-b-dlq", "b")],
        );
        let route = topology.route_dead_letters("orders", "dlx", None);
        assert_eq!(route.reached, set(&["orders-dlq"]), "the queue's own name is a provable key");
        assert_eq!(route.candidates, set(&["team-b-dlq"]), "any other key might reach this one");
        assert!(route.unproven_because.as_deref().is_some_and(|w| w.contains("fanout")), "says why: {route:?}");
    }

    /// Headers exchanges route on message headers: nothing behind them is proven.
    #[test]
    fn headers_exchange_is_never_proven() {
        let topology = Topology::new(vec![exchange("dlx", "headers")], vec![bind("dlx", "orders-dlq", "")]);
        let route = topology.route_dead_letters("orders", "dlx", Some("orders"));
        assert!(route.reached.is_empty(), "nothing proven");
        assert_eq!(route.candidates, set(&["orders-dlq"]), "named as a candidate");
    }

    /// Fanout reaches every binding whatever the key; exchange-to-exchange bindings are followed
    /// with the same key, and loops end.
    #[test]
    fn fanout_and_exchange_to_exchange() {
        let topology = Topology::new(
            vec![exchange("dlx", "fanout"), exchange("inner", "direct")],
            vec![
                bind("dlx", "all-dlq", ""),
                bind_exchange("dlx", "inner", ""),
                bind("inner", "orders-dlq", "orders"),
                bind("inner", "other-dlq", "other"),
                bind_exchange("inner", "dlx", "orders"),
            ],
        );
        let route = topology.route_dead_letters("orders", "dlx", Some("orders"));
        assert_eq!(route.reached, set(&["all-dlq", "orders-dlq"]), "fanout, then direct by key");
        assert!(route.candidates.is_empty(), "other-dlq is not reachable with this key: {route:?}");
    }

    /// The default exchange as DLX routes to the queue named by the key.
    #[test]
    fn default_exchange_routes_by_name() {
        let topology = Topology::default();
        let route = topology.route_dead_letters("orders", "", Some("orders-dlq"));
        assert_eq!(route.reached, set(&["orders-dlq"]), "queue named by the key");
    }

    /// An unselected queue without a dead-letter routing key dead-letters with its messages'
    /// original keys, CC/BCC header keys included: any key. It may feed every queue behind its
    /// dead-letter exchange, so those are not ours; a key of its own makes the route provable.
    #[test]
    fn unselected_queues_without_a_key_may_carry_any_key() {
        let topology = Topology::new(
            vec![exchange("dlx", "direct")],
            vec![bind("dlx", "orders-dlq", "orders"), bind("dlx", "billing-dlq", "billing")],
        );
        let keyless = targets(&[("orders", "dlx", None), ("billing", "dlx", None)]);
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &keyless, &topology);
        assert!(taken.is_empty(), "billing's CC keys may reach orders-dlq: {taken:?}");
        assert!(
            candidates.iter().any(|c| c.queue == "orders-dlq" && c.why.contains("billing")),
            "named: {candidates:?}"
        );
        let keyed = targets(&[("orders", "dlx", None), ("billing", "dlx", Some("billing"))]);
        let (taken, _) = select_dead_letter_queues(&set(&["orders"]), &keyed, &topology);
        assert_eq!(taken, [("orders-dlq".to_string(), "orders".to_string())], "billing's own key proves it elsewhere");
    }

    /// What an exchange routes nowhere goes to its alternate exchange: an unselected queue's dead
    /// letters may arrive that way, and queues behind it are never proven.
    #[test]
    fn alternate_exchanges_are_possible_routes() {
        let topology = Topology::new(
            vec![exchange("dlx", "direct"), exchange("billing-dlx", "direct")],
            vec![bind("dlx", "orders-dlq", "orders"), bind("billing-dlx", "billing-dlq", "billing")],
        )
        .with_alternates(BTreeMap::from([("billing-dlx".to_string(), "dlx".to_string())]));
        let dead_letters = targets(&[("orders", "dlx", Some("orders")), ("billing", "billing-dlx", Some("orders"))]);
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
        assert!(taken.is_empty(), "billing's unrouted dead letters fall through to orders-dlq: {taken:?}");
        assert!(candidates.iter().any(|c| c.queue == "orders-dlq"), "named: {candidates:?}");
        let route = topology.route_dead_letters("billing", "billing-dlx", Some("billing"));
        assert_eq!(route.reached, set(&["billing-dlq"]), "the bound route is proven");
        assert_eq!(route.candidates, set(&["orders-dlq"]), "the alternate one is not");
    }

    /// An unselected queue fed with any key that dead-letters to the default exchange without a
    /// key may reach any queue of the vhost: nothing is provably ours.
    #[test]
    fn the_default_exchange_with_unknown_keys_may_reach_any_queue() {
        let topology = Topology::new(
            vec![exchange("events", "fanout"), exchange("dlx", "fanout")],
            vec![bind("events", "subscriber", ""), bind("dlx", "orders-dlq", "")],
        );
        let dead_letters = targets(&[("orders", "dlx", None), ("subscriber", "", None)]);
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
        assert!(taken.is_empty(), "subscriber may dead-letter into any queue: {taken:?}");
        assert!(candidates.iter().any(|c| c.why.contains("subscriber")), "named: {candidates:?}");
    }

    /// A retry loop that dead-letters back into the application exchange its queue consumes from
    /// (no dead-letter routing key: the original key) reaches every other subscriber of that key:
    /// the exchange carries ordinary traffic, so nothing behind it is proven, topic or fanout.
    #[test]
    fn dead_letters_back_into_an_application_exchange_prove_nothing() {
        for kind in ["topic", "fanout"] {
            let topology = Topology::new(
                vec![exchange("app.events", kind), exchange("orders.retry", "direct")],
                vec![
                    bind("app.events", "orders", "orders.created"),
                    bind("app.events", "notifier", "orders.created"),
                    bind("orders.retry", "orders.wait", "orders.created"),
                ],
            );
            let dead_letters =
                targets(&[("orders", "orders.retry", Some("orders.created")), ("orders.wait", "app.events", None)]);
            let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
            assert_eq!(taken, [("orders.wait".to_string(), "orders".to_string())], "{kind}: the dedicated retry queue");
            assert!(
                candidates.iter().any(|c| c.queue == "notifier" && c.why.contains("application exchange")),
                "{kind}: the other subscriber is named, not purged: {candidates:?}"
            );
        }
    }

    /// The dedicated setups stay provable: a fanout dead-letter exchange per queue, with keyless
    /// unselected neighbours on their own fanouts; and a shared direct exchange where every queue
    /// sets its own dead-letter routing key.
    #[test]
    fn dedicated_dead_letter_exchanges_stay_provable() {
        let topology = Topology::new(
            vec![exchange("orders.dlx", "fanout"), exchange("billing.dlx", "fanout"), exchange("app", "topic")],
            vec![
                bind("app", "orders", "orders.*"),
                bind("app", "billing", "billing.*"),
                bind("orders.dlx", "orders-dlq", ""),
                bind("billing.dlx", "billing-dlq", ""),
            ],
        );
        let dead_letters = targets(&[("orders", "orders.dlx", None), ("billing", "billing.dlx", None)]);
        let (taken, candidates) = select_dead_letter_queues(&set(&["orders"]), &dead_letters, &topology);
        assert_eq!(taken, [("orders-dlq".to_string(), "orders".to_string())], "ours: {candidates:?}");
        assert!(candidates.is_empty(), "nothing unproven: {candidates:?}");
    }
}
