//! Which policy applies to a queue, resolved the way RabbitMQ resolves it, for listings that do not
//! say: with `management.disable_stats = true` (what RabbitMQ recommends alongside Prometheus) the
//! queue listing has no `effective_policy_definition`, and dead-letter exchanges set by policy would
//! otherwise be invisible, both for a selected queue (its dead-letter queue is not found) and for an
//! unselected one (it is not seen dead-lettering into a queue we would purge).
//!
//! RabbitMQ's rules (`rabbit_policy`, <https://www.rabbitmq.com/docs/policies>): a policy's
//! `pattern` is a regular expression searched anywhere in the name (not anchored); `apply-to` limits
//! it to `queues` (any type), `classic_queues`, `quorum_queues`, `streams`, `exchanges` or `all`; of
//! the matching policies the one with the highest `priority` applies (ties are not specified: here
//! the first by name). Operator policies are merged on top, but they may not set dead-lettering keys,
//! so for this purpose they only add keys the user policy lacks.
//!
//! Pure functions over what `/api/policies/{vhost}` and `/api/operator-policies/{vhost}` list.

use regex::Regex;
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
        let compile = |info: PolicyInfo| Compiled { pattern: Regex::new(&info.pattern).ok(), info };
        Policies {
            user: user.into_iter().map(compile).collect(),
            operator: operator.into_iter().map(compile).collect(),
        }
    }

    /// The definition that applies to queue `name` of `queue_type` (`classic`, `quorum`, `stream`).
    /// `named` is the policy the listing says applies, when it says so.
    pub fn effective(&self, name: &str, queue_type: &str, named: Option<&str>) -> Result<Map<String, Value>, Unknown> {
        let user = match named.filter(|n| !n.is_empty()) {
            Some(policy) => self.user.iter().find(|p| p.info.name == policy).map(|p| &p.info),
            None => pick(&self.user, name, queue_type)?,
        };
        let mut definition = user.and_then(|p| p.definition.as_object().cloned()).unwrap_or_default();
        if let Some(operator) = pick(&self.operator, name, queue_type)?
            && let Some(extra) = operator.definition.as_object()
        {
            for (key, value) in extra {
                definition.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        Ok(definition)
    }
}

/// The highest-priority policy among `policies` that applies to the queue.
fn pick<'a>(policies: &'a [Compiled], name: &str, queue_type: &str) -> Result<Option<&'a PolicyInfo>, Unknown> {
    let mut best: Option<&PolicyInfo> = None;
    for policy in policies.iter().filter(|p| applies_to(&p.info.apply_to, queue_type)) {
        let matches = match &policy.pattern {
            Some(pattern) => pattern.is_match(name),
            None => {
                return Err(Unknown(format!(
                    "policy {:?} has a pattern this tool cannot evaluate ({:?})",
                    policy.info.name, policy.info.pattern
                )));
            }
        };
        if matches && best.is_none_or(|b| policy.info.priority > b.priority) {
            best = Some(&policy.info);
        }
    }
    Ok(best)
}

fn applies_to(apply_to: &str, queue_type: &str) -> bool {
    match apply_to {
        "all" | "queues" => true,
        "classic_queues" => queue_type == "classic",
        "quorum_queues" => queue_type == "quorum",
        "streams" => queue_type == "stream",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
                policy("quorum", "orders", "quorum_queues", 7, json!({"dead-letter-exchange": "q-dlx"})),
            ],
            vec![],
        );
        let dlx =
            |name: &str, kind: &str| policies.effective(name, kind, None).unwrap().get("dead-letter-exchange").cloned();
        assert_eq!(dlx("orders", "classic"), Some(json!("high-dlx")), "priority wins");
        assert_eq!(dlx("preorders-v2", "classic"), Some(json!("low-dlx")), "pattern not anchored");
        assert_eq!(dlx("orders", "quorum"), Some(json!("q-dlx")), "apply-to by queue type");
        assert_eq!(dlx("billing", "classic"), None, "no policy applies");
        assert_eq!(
            policies.effective("orders", "classic", Some("low")).unwrap().get("dead-letter-exchange"),
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
        let effective = policies.effective("q", "classic", None).unwrap();
        assert_eq!(effective.get("dead-letter-exchange"), Some(&json!("dlx")), "user policy kept");
        assert_eq!(effective.get("max-length"), Some(&json!(10)), "operator key added");
        let odd = Policies::new(vec![policy("pcre", "(?<=x)y", "queues", 0, json!({}))], vec![]);
        assert!(odd.effective("q", "classic", None).is_err(), "lookbehind is PCRE only: unknown");
    }
}
