//! Which policy applies to a queue, resolved the way RabbitMQ resolves it, for listings that do not
//! say: with `management.disable_stats = true` (what RabbitMQ recommends alongside Prometheus) the
//! queue listing has no `effective_policy_definition`, and dead-letter exchanges set by policy would
//! otherwise be invisible, both for a selected queue (its dead-letter queue is not found) and for an
//! unselected one (it is not seen dead-lettering into a queue we would purge).
//!
//! RabbitMQ's rules (`rabbit_policy`, <https://www.rabbitmq.com/docs/policies>): a policy's
//! `pattern` is a regular expression searched anywhere in the name (not anchored); `apply-to` limits
//! it to `queues` (any type), `classic_queues`, `quorum_queues`, `streams`, `exchanges` or `all`; of
//! the matching policies the one with the highest `priority` applies. Ties are not specified (and
//! priority 0 everywhere is common): when tied policies disagree on the keys asked about, the answer
//! is *unknown*, never a guess. Operator policies are merged on top, but they may not set
//! dead-lettering keys, so for this purpose they only add keys the user policy lacks. Patterns are
//! compiled without Unicode classes, as Erlang's `re` reads them without its `unicode` option; one
//! this dialect cannot read makes the answer unknown.
//!
//! Pure functions over what `/api/policies/{vhost}` and `/api/operator-policies/{vhost}` list.

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A policy as the list endpoint describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct PolicyInfo {
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default = "all")]
    pub apply_to: String,
    #[serde(default)]
    pub definition: Value,
    #[serde(default)]
    pub priority: i64,
}

fn all() -> String {
    "all".into()
}

/// A policy with its pattern compiled; `None` when RabbitMQ's regex dialect (PCRE) says something
/// this one cannot read.
struct Compiled {
    info: PolicyInfo,
    pattern: Option<Regex>,
}

/// The policies of one vhost.
#[derive(Default)]
pub struct Policies {
    user: Vec<Compiled>,
    operator: Vec<Compiled>,
}

/// Why a queue's effective policy cannot be known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown(pub String);

impl Policies {
    pub fn new(mut user: Vec<PolicyInfo>, mut operator: Vec<PolicyInfo>) -> Policies {
        user.sort_by(|a, b| a.name.cmp(&b.name));
        operator.sort_by(|a, b| a.name.cmp(&b.name));
        let compile =
            |info: PolicyInfo| Compiled { pattern: RegexBuilder::new(&info.pattern).unicode(false).build().ok(), info };
        Policies {
            user: user.into_iter().map(compile).collect(),
            operator: operator.into_iter().map(compile).collect(),
        }
    }

    /// The definition that applies to `name`, a queue of `kind` (`classic`, `quorum`, `stream`) or
    /// an exchange (`exchange`), as far as `keys` go. `named` is what the listing says applies:
    /// `Some("")` is no user policy, `Some(name)` that policy, `None` not said.
    pub fn effective(
        &self,
        name: &str,
        kind: &str,
        named: Option<&str>,
        keys: &[&str],
    ) -> Result<Map<String, Value>, Unknown> {
        let user = match named {
            Some("") => None,
            Some(policy) => match self.user.iter().find(|p| p.info.name == policy) {
                Some(found) => Some(&found.info),
                None => return Err(Unknown(format!("policy {policy:?} applies to {name:?} but is not listed"))),
            },
            None => pick(&self.user, name, kind, keys)?,
        };
        let mut definition = user.and_then(|p| p.definition.as_object().cloned()).unwrap_or_default();
        // Operator policies may not set these keys (RabbitMQ refuses them there): only one that
        // somehow does is looked at, so an operator policy RabbitMQ's own docs write with a
        // lookahead (`^(?!amq\.).*`) does not make every answer unknown.
        let relevant: Vec<&Compiled> =
            self.operator.iter().filter(|p| keys.iter().any(|k| p.info.definition.get(*k).is_some())).collect();
        if let Some(operator) = pick(&relevant, name, kind, keys)?
            && let Some(extra) = operator.definition.as_object()
        {
            for (key, value) in extra {
                definition.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        Ok(definition)
    }
}

/// The highest-priority policy among `policies` that applies to `name`; unknown when tied ones
/// disagree on `keys`.
fn pick<'a, P: std::borrow::Borrow<Compiled>>(
    policies: &'a [P],
    name: &str,
    kind: &str,
    keys: &[&str],
) -> Result<Option<&'a PolicyInfo>, Unknown> {
    let mut best: Vec<&PolicyInfo> = Vec::new();
    let mut all: Vec<&PolicyInfo> = Vec::new();
    for policy in policies.iter().map(std::borrow::Borrow::borrow) {
        let applies = applies_to(&policy.info.apply_to, kind).ok_or_else(|| {
            Unknown(format!(
                "policy {:?} applies to {:?}, which this tool does not know",
                policy.info.name, policy.info.apply_to
            ))
        })?;
        if !applies {
            continue;
        }
        let matches = match &policy.pattern {
            Some(pattern) => pattern.is_match(name.as_bytes()),
            None => {
                return Err(Unknown(format!(
                    "policy {:?} has a pattern this tool cannot evaluate ({:?})",
                    policy.info.name, policy.info.pattern
                )));
            }
        };
        if !matches {
            continue;
        }
        all.push(&policy.info);
        match best.first() {
            Some(top) if policy.info.priority < top.priority => {}
            Some(top) if policy.info.priority == top.priority => best.push(&policy.info),
            _ => best = vec![&policy.info],
        }
    }
    let value = |p: &PolicyInfo, key: &str| p.definition.get(key).cloned();
    // A quorum queue or a stream skips a policy whose keys its type cannot use
    // (`rabbit_policy:matches` → `is_applicable`), so a lower priority may apply: any
    // disagreement among the matching policies makes the answer unknown for those types.
    let contenders = if matches!(kind, "classic" | "exchange") { &best } else { &all };
    if let Some((first, rest)) = contenders.split_first()
        && let Some(other) = rest.iter().find(|p| keys.iter().any(|k| value(p, k) != value(first, k)))
    {
        return Err(Unknown(format!(
            "policies {:?} and {:?} both match {name:?} ({kind}) and disagree on {}: RabbitMQ may apply either",
            first.name,
            other.name,
            keys.join(", ")
        )));
    }
    Ok(best.first().copied())
}

/// Whether `apply-to` covers `kind`; `None` for a value this tool does not know.
fn applies_to(apply_to: &str, kind: &str) -> Option<bool> {
    Some(match apply_to {
        "all" => true,
        "queues" => kind != "exchange",
        "classic_queues" => kind == "classic",
        "quorum_queues" => kind == "quorum",
        "streams" => kind == "stream",
        "exchanges" => kind == "exchange",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEYS: &[&str] = &["dead-letter-exchange", "dead-letter-routing-key"];

    fn policy(name: &str, pattern: &str, apply_to: &str, priority: i64, definition: Value) -> PolicyInfo {
        PolicyInfo { name: name.into(), pattern: pattern.into(), apply_to: apply_to.into(), definition, priority }
    }

    /// Patterns are searched, not anchored; the highest priority wins; `apply-to` is honoured.
    #[test]
    fn highest_priority_matching_policy_applies() {
        let policies = Policies::new(
            vec![
                policy("low", "orders", "queues", 0, json!({"dead-letter-exchange": "low-dlx"})),
                policy("high", "^orders$", "queues", 5, json!({"dead-letter-exchange": "high-dlx"})),
                policy("exchanges-only", ".*", "exchanges", 9, json!({"alternate-exchange": "ae"})),
                policy("quorum", "^qq", "quorum_queues", 7, json!({"dead-letter-exchange": "q-dlx"})),
            ],
            vec![],
        );
        let dlx = |name: &str, kind: &str| {
            policies.effective(name, kind, None, KEYS).unwrap().get("dead-letter-exchange").cloned()
        };
        assert_eq!(dlx("orders", "classic"), Some(json!("high-dlx")), "priority wins");
        assert_eq!(dlx("preorders-v2", "classic"), Some(json!("low-dlx")), "pattern not anchored");
        assert_eq!(dlx("qq1", "quorum"), Some(json!("q-dlx")), "apply-to by queue type");
        assert_eq!(dlx("qq1", "classic"), None, "not for classic queues");
        assert!(policies.effective("orders", "quorum", None, KEYS).is_err(), "disagreeing matches: unknown for quorum");
        assert_eq!(dlx("billing", "classic"), None, "no policy applies");
        assert_eq!(
            policies.effective("orders", "classic", Some("low"), KEYS).unwrap().get("dead-letter-exchange"),
            Some(&json!("low-dlx")),
            "the listing's own policy name wins"
        );
    }

    /// Operator policies add keys, never replace the user policy's; an unreadable pattern makes
    /// the answer unknown rather than wrong.
    #[test]
    fn operator_policies_and_unknown_patterns() {
        let policies = Policies::new(
            vec![policy("dlx", ".", "all", 0, json!({"dead-letter-exchange": "dlx"}))],
            vec![policy("limits", ".", "queues", 0, json!({"max-length": 10, "dead-letter-exchange": "op"}))],
        );
        let effective = policies.effective("q", "classic", None, KEYS).unwrap();
        assert_eq!(effective.get("dead-letter-exchange"), Some(&json!("dlx")), "user policy kept");
        assert_eq!(effective.get("max-length"), Some(&json!(10)), "operator key added");
        let odd = Policies::new(vec![policy("pcre", "(?<=x)y", "queues", 0, json!({}))], vec![]);
        assert!(odd.effective("q", "classic", None, KEYS).is_err(), "lookbehind is PCRE only: unknown");
    }

    /// Tied priorities that disagree are unknown; the listing's "no policy" and a policy that is
    /// not listed any more are taken as they are.
    #[test]
    fn ties_and_named_policies() {
        let policies = Policies::new(
            vec![
                policy("a-limits", "^orders-b", "queues", 0, json!({"max-length": 5})),
                policy("orders-dl", "^orders", "queues", 0, json!({"dead-letter-exchange": "dlx"})),
                policy("same-a", "^same", "queues", 0, json!({"dead-letter-exchange": "x", "max-length": 1})),
                policy("same-b", "^same", "queues", 0, json!({"dead-letter-exchange": "x"})),
            ],
            vec![],
        );
        let tie = policies.effective("orders-billing", "classic", None, KEYS).expect_err("tie");
        assert!(tie.0.contains("disagree"), "says why: {tie:?}");
        assert!(policies.effective("same-q", "classic", None, KEYS).is_ok(), "ties that agree on the keys are fine");
        assert!(policies.effective("orders", "classic", Some(""), KEYS).unwrap().is_empty(), "no policy applies");
        assert!(policies.effective("orders", "classic", Some("gone"), KEYS).is_err(), "unlisted policy: unknown");
        let exchange =
            Policies::new(vec![policy("ae", "^app$", "exchanges", 0, json!({"alternate-exchange": "ae"}))], vec![]);
        assert_eq!(
            exchange.effective("app", "exchange", None, &["alternate-exchange"]).unwrap().get("alternate-exchange"),
            Some(&json!("ae")),
            "exchanges too"
        );
        assert!(exchange.effective("app", "classic", None, KEYS).unwrap().is_empty(), "not to queues");
        let layered = Policies::new(
            vec![
                policy("ha", "^q", "queues", 5, json!({"ha-mode": "all"})),
                policy("dl", "^q", "queues", 0, json!({"dead-letter-exchange": "dlx"})),
            ],
            vec![policy("lookahead", "^(?!amq\\.).*", "queues", 0, json!({"max-length": 10}))],
        );
        assert!(
            layered.effective("q", "classic", None, KEYS).unwrap().get("dead-letter-exchange").is_none(),
            "ha wins"
        );
        assert!(layered.effective("q", "quorum", None, KEYS).is_err(), "a quorum queue may skip ha: unknown");
    }
}
