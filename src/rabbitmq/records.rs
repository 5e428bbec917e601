//! The management API's queue records, parsed into compact values: of a queue's arguments and of
//! its effective policy only the two dead-letter keys are kept, so a listing of tens of thousands
//! of queues costs a few bytes per queue beyond its name, not a JSON tree per queue (the Job has 128Mi).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Where a queue's dead letters go, as one arguments table or one policy definition says it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterKeys {
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
}

impl DeadLetterKeys {
    /// The keys of a policy definition resolved from the vhost's policies.
    pub fn from_policy(definition: &Map<String, Value>) -> DeadLetterKeys {
        let key = |name: &str| definition.get(name).and_then(Value::as_str).map(str::to_string);
        DeadLetterKeys { exchange: key("dead-letter-exchange"), routing_key: key("dead-letter-routing-key") }
    }
}

/// Reads a JSON object (or `[]`, RabbitMQ's empty Erlang proplist, or `null`) keeping only the
/// string values of `{prefix}dead-letter-exchange` and `{prefix}dead-letter-routing-key`.
struct KeysVisitor {
    prefix: &'static str,
}

impl<'de> Visitor<'de> for KeysVisitor {
    type Value = Option<DeadLetterKeys>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object, an empty list or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Some(DeadLetterKeys::default()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = DeadLetterKeys::default();
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let slot = match name.strip_prefix(self.prefix) {
                Some("dead-letter-exchange") => &mut keys.exchange,
                Some("dead-letter-routing-key") => &mut keys.routing_key,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            // A non-string value (a number someone set by hand) is not a usable setting.
            *slot = match map.next_value::<Value>()? {
                Value::String(text) => Some(text),
                _ => None,
            };
        }
        Ok(Some(keys))
    }
}

/// `arguments`: `x-dead-letter-exchange` and `x-dead-letter-routing-key`.
pub fn argument_keys<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DeadLetterKeys>, D::Error> {
    deserializer.deserialize_option(KeysVisitor { prefix: "x-" })
}

/// `effective_policy_definition`: `dead-letter-exchange` and `dead-letter-routing-key`.
pub fn policy_keys<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DeadLetterKeys>, D::Error> {
    deserializer.deserialize_option(KeysVisitor { prefix: "" })
}

/// A policy name: a string (`""` when none applies); anything else says nothing.
pub fn policy_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(name) => Some(name),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Both {
        #[serde(default, deserialize_with = "argument_keys")]
        arguments: Option<DeadLetterKeys>,
        #[serde(default, deserialize_with = "policy_keys")]
        effective_policy_definition: Option<DeadLetterKeys>,
    }

    /// Only the dead-letter keys are kept; `[]` is an empty definition, `null` and absence say nothing.
    #[test]
    fn only_the_dead_letter_keys_are_kept() {
        let both: Both = serde_json::from_str(
            r#"{"arguments": {"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx", "x-max-length": 5,
                "x-dead-letter-routing-key": "rk", "nested": {"a": [1, 2]}},
               "effective_policy_definition": []}"#,
        )
        .unwrap();
        let keys = DeadLetterKeys { exchange: Some("dlx".into()), routing_key: Some("rk".into()) };
        assert_eq!(both.arguments, Some(keys), "the two keys, the rest skipped");
        assert_eq!(both.effective_policy_definition, Some(DeadLetterKeys::default()), "[] is no policy");
        let absent: Both = serde_json::from_str(r#"{"arguments": null}"#).unwrap();
        assert_eq!((absent.arguments, absent.effective_policy_definition), (None, None), "unknown");
        let policy: Both =
            serde_json::from_str(r#"{"effective_policy_definition": {"dead-letter-exchange": "", "max-length": 1}}"#)
                .unwrap();
        assert_eq!(policy.effective_policy_definition.unwrap().exchange, Some(String::new()), "default exchange");
    }
}
