//! Reading the broker: one queue, one exchange and its bindings (what a run that names its queues
//! needs, at a cost that does not depend on the vhost's size), and the whole vhost's queues,
//! exchanges, bindings and policies (for a pattern or an opt-in discovery).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, anyhow};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;

use super::QueueInfo;
use super::client::Management;
use crate::config::RetryPolicy;
use crate::dead_letters::{BindingInfo, ExchangeInfo};
use crate::error::{Kind, classified};
use crate::policies::{Policies, PolicyInfo};
use crate::retry::{self, Attempt};

/// The columns the listing asks for: what selection, dead-letter routing and the counts need, so
/// that tens of thousands of queues stay a few megabytes (the Job has 128Mi).
const QUEUE_COLUMNS: &str = "name,type,exclusive,state,policy,messages_ready,messages_unacknowledged,consumers,arguments,effective_policy_definition";

/// Names per filtered page: RabbitMQ's largest page (`?MAX_PAGE_SIZE`).
const STATE_PAGE: usize = 500;
/// Bytes of encoded filter per page: the request line must stay well under Cowboy's default
/// `max_request_line_length` (8000), or the broker answers 414.
const STATE_FILTER_BYTES: usize = 3000;

/// `names` in pages that fit both limits; a name longer than a page gets a page of its own.
fn state_pages<'a>(names: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut pages: Vec<Vec<&str>> = Vec::new();
    let mut bytes = 0;
    for name in names {
        let cost = super::client::encode_segment(&regex_literal(name)).len() + 3;
        match pages.last_mut() {
            Some(page) if page.len() < STATE_PAGE && bytes + cost <= STATE_FILTER_BYTES => {
                page.push(name);
                bytes += cost;
            }
            _ => {
                pages.push(vec![name]);
                bytes = cost;
            }
        }
    }
    pages
}

/// `text` as a PCRE literal: every ASCII character that is not a letter or digit escaped (a
/// backslash before any such character is a literal in PCRE, RabbitMQ's regex engine).
fn regex_literal(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            literal.push('\\');
        }
        literal.push(c);
    }
    literal
}

impl Management {
    /// Every queue in the vhost, in one request: pages would shift under queues created or
    /// deleted meanwhile (skipping some, or answering 400 past a shrunken end).
    ///
    /// A queue the statistics have not sampled yet (declared seconds ago) is listed without its
    /// policy and counts, and finding its dead-letter policy would mean resolving every policy by
    /// pattern. The policy's name is filled in from a second listing without statistics
    /// (`disable_stats=true&enable_queue_totals=true`, which answers from the queue records), so the
    /// policy that RabbitMQ really applied is used, and a queue without one needs none. Only when
    /// `every_policy` is asked for (an opt-in that takes dead-letter queues judges every queue of the
    /// vhost as a possible feeder); to report, the selected queues' policies are resolved from the
    /// policies themselves, and the broker is spared a second listing of the whole vhost.
    pub(super) async fn list_queues(
        &self,
        policy: &RetryPolicy,
        deadline: Instant,
        every_policy: bool,
    ) -> Result<Vec<QueueInfo>> {
        let mut queues = self.list_queues_with(policy, deadline, "").await?;
        if every_policy && queues.iter().any(QueueInfo::unsampled) {
            // Only an aid: when it fails, those queues stay as listed, which makes their policy
            // unknown or resolved by pattern, never guessed.
            let records: BTreeMap<String, QueueInfo> = match self
                .list_queues_with(policy, deadline, "disable_stats=true&enable_queue_totals=true&")
                .await
            {
                Ok(records) => records.into_iter().map(|q| (q.name.clone(), q)).collect(),
                Err(err) => {
                    warn!(vhost = %self.vhost, error = %format!("{err:#}"), "the queue records could not be listed; queues not sampled yet stay as listed");
                    BTreeMap::new()
                }
            };
            for queue in queues.iter_mut().filter(|q| q.unsampled()) {
                if let Some(record) = records.get(&queue.name) {
                    queue.fill_from(record);
                }
            }
        }
        Ok(queues)
    }

    async fn list_queues_with(&self, policy: &RetryPolicy, deadline: Instant, options: &str) -> Result<Vec<QueueInfo>> {
        let vhost = self.vhost.clone();
        let url = self.url(&["queues", &vhost], &format!("{options}columns={QUEUE_COLUMNS}"));
        let what = format!("listing queues of vhost {vhost:?}");
        // One request for the whole vhost may take longer than the per-request timeout (tens of
        // thousands of queues on 3.x): it may use what is left of the deadline.
        let queues: Option<Vec<QueueInfo>> = retry::run(policy, deadline, &what, || {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
            self.get_json_within(url.clone(), &what, Some(left))
        })
        .await?;
        queues.ok_or_else(|| anyhow!("{what}: vhost {vhost:?} does not exist (404)"))
    }

    /// The vhost's policies and operator policies, for listings without policy columns (any
    /// management user with access to the vhost may list them). When they cannot be read, `Err`
    /// with the reason: the dead-letter settings are then unknown.
    pub(super) async fn policies(&self, policy: &RetryPolicy, deadline: Instant) -> Result<Policies, String> {
        let mut lists = Vec::new();
        for path in ["policies", "operator-policies"] {
            let what = format!("listing {path} of vhost {:?}", self.vhost);
            let url = self.url(&[path, &self.vhost], "");
            let listed = retry::run(policy, deadline, &what, || async {
                let response = self.request(Method::GET, url.clone(), &what).await?;
                match response.status() {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(None),
                    s if s.is_success() => response
                        .json::<Vec<PolicyInfo>>()
                        .await
                        .map(Some)
                        .map_err(|err| Attempt::Transient(anyhow!("{what}: reading the answer: {err}"))),
                    s => Err(Attempt::Transient(anyhow!("{what}: RabbitMQ answered {s}"))),
                }
            })
            .await;
            // Policies only inform dead-letter discovery: when they cannot be read, it is unknown,
            // and the run goes on without purging dead-letter queues.
            let listed = match listed {
                Ok(listed) => listed,
                Err(err) => return Err(format!("{err:#}")),
            };
            match listed {
                Some(list) => lists.push(list),
                // Operator policies cannot set dead-letter keys: not reading them loses nothing here.
                None if path == "operator-policies" => lists.push(Vec::new()),
                None => {
                    return Err(format!(
                        "the listing does not say which policies apply (statistics off, or queues not sampled yet) \
                         and user {:?} may not read {path} (it needs access to the vhost)",
                        self.username
                    ));
                }
            }
        }
        let operator = lists.pop().unwrap_or_default();
        let user = lists.pop().unwrap_or_default();
        Ok(Policies::new(user, operator))
    }

    /// Every exchange and binding of the vhost (only the columns routing needs: a shared vhost can
    /// have many bindings, and the Job has 128Mi).
    pub(super) async fn list_routing(
        &self,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<(Vec<ExchangeRecord>, Vec<BindingInfo>)> {
        let vhost = &self.vhost;
        let what = format!("listing exchanges and bindings of vhost {vhost:?}");
        let exchanges_url = self.url(&["exchanges", vhost], "columns=name,type,arguments,policy");
        let bindings_url = self.url(&["bindings", vhost], "columns=source,destination,destination_type,routing_key");
        let exchanges = self.read_list(exchanges_url, &what, policy, deadline).await?;
        let bindings = self.read_list(bindings_url, &what, policy, deadline).await?;
        Ok((exchanges, bindings))
    }

    /// One queue, or `None` when it does not exist. RabbitMQ 3.10 answers a one-queue request
    /// with `columns` as a list of one; later versions as the object.
    pub(super) async fn queue(&self, name: &str, policy: &RetryPolicy, deadline: Instant) -> Result<Option<QueueInfo>> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrList {
            One(Box<QueueInfo>),
            List(Vec<QueueInfo>),
        }
        let what = format!("reading queue {name:?} in vhost {:?}", self.vhost);
        let url = self.url(&["queues", &self.vhost, name], &format!("columns={QUEUE_COLUMNS}"));
        let answer: Option<OneOrList> =
            retry::run(policy, deadline, &what, || self.get_json(url.clone(), &what)).await?;
        Ok(match answer {
            None => None,
            Some(OneOrList::One(info)) => Some(*info),
            Some(OneOrList::List(list)) => list.into_iter().find(|q| q.name == name),
        })
    }

    /// Fails when the vhost is not visible to the user: it does not exist, or the user has no
    /// access to it (RabbitMQ 4 answers 404 to both, 3.x 401 to the latter). Every vhost has
    /// `amq.direct`, which cannot be deleted, so reading it tells.
    pub(super) async fn check_vhost_visible(&self, policy: &RetryPolicy, deadline: Instant) -> Result<()> {
        match self.exchange("amq.direct", policy, deadline).await? {
            Some(_) => Ok(()),
            // Either way final: the same user and vhost get the same answer on every attempt.
            None => Err(classified(
                Kind::Denied,
                format!(
                    "reading vhost {:?}: user {:?} lacks permission on it, or it does not exist (RabbitMQ 4 answers \
                     404 to both): give the user access to the vhost (rabbitmqctl set_permissions -p VHOST USER ...) \
                     or fix CLEANSLATE_RABBITMQ_VHOST",
                    self.vhost, self.username
                ),
            )),
        }
    }

    /// The `state` the vhost's listing gives each of `names` (`running`, `down`, `crashed`, …):
    /// the one-queue answer keeps saying `running` for a queue whose node crashed, while the
    /// listing says `down`. One filtered page per [`STATE_PAGE`] names (the broker filters; the
    /// answer holds only these queues), matched exactly here (RabbitMQ's filter ignores case).
    pub(super) async fn queue_states(
        &self,
        names: &[&str],
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<BTreeMap<String, String>> {
        #[derive(Deserialize)]
        struct Page {
            items: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            name: String,
            #[serde(default)]
            state: Option<String>,
        }
        let mut states = BTreeMap::new();
        for chunk in state_pages(names) {
            let alternatives: Vec<String> = chunk.iter().map(|name| regex_literal(name)).collect();
            let filter = format!("^({})$", alternatives.join("|"));
            let query = format!(
                "page=1&page_size={STATE_PAGE}&use_regex=true&columns=name,state&name={}",
                super::client::encode_segment(&filter)
            );
            let what = format!("reading the state of {} queues in vhost {:?}", chunk.len(), self.vhost);
            let url = self.url(&["queues", &self.vhost], &query);
            let page: Option<Page> = retry::run(policy, deadline, &what, || self.get_json(url.clone(), &what)).await?;
            for item in page.map(|p| p.items).unwrap_or_default() {
                if chunk.contains(&item.name.as_str())
                    && let Some(state) = item.state
                {
                    states.insert(item.name, state);
                }
            }
        }
        Ok(states)
    }

    /// One exchange, or `None` when it does not exist.
    pub(super) async fn exchange(
        &self,
        name: &str,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<Option<ExchangeRecord>> {
        let what = format!("reading exchange {name:?} in vhost {:?}", self.vhost);
        let url = self.url(&["exchanges", &self.vhost, name], "");
        retry::run(policy, deadline, &what, || self.get_json(url.clone(), &what)).await
    }

    /// The bindings whose source is `exchange`: where it routes.
    pub(super) async fn bindings_from(
        &self,
        exchange: &str,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<Vec<BindingInfo>> {
        let what = format!("reading the bindings of exchange {exchange:?} in vhost {:?}", self.vhost);
        let url = self.url(&["exchanges", &self.vhost, exchange, "bindings", "source"], "");
        self.read_list(url, &what, policy, deadline).await
    }

    /// The bindings whose destination is `queue`: which keys its messages may carry.
    pub(super) async fn bindings_to(
        &self,
        queue: &str,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<Vec<BindingInfo>> {
        let what = format!("reading the bindings of queue {queue:?} in vhost {:?}", self.vhost);
        let url = self.url(&["queues", &self.vhost, queue, "bindings"], "");
        self.read_list(url, &what, policy, deadline).await
    }

    /// A list, retried; a 404 (what it lists is gone) is an empty list.
    async fn read_list<T: for<'de> Deserialize<'de>>(
        &self,
        url: Url,
        what: &str,
        policy: &RetryPolicy,
        deadline: Instant,
    ) -> Result<Vec<T>> {
        Ok(retry::run(policy, deadline, what, || self.get_json(url.clone(), what)).await?.unwrap_or_default())
    }
}

/// An exchange: its type, and what may give it an alternate exchange.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct ExchangeRecord {
    pub name: String,
    #[serde(rename = "type")]
    pub exchange_type: String,
    #[serde(default)]
    pub arguments: Value,
    /// The name of the policy that applies, when the answer says.
    #[serde(default)]
    pub policy: Option<Value>,
}

impl ExchangeRecord {
    /// The alternate exchange set by an argument (which wins over a policy, as for queues).
    pub fn alternate_argument(&self) -> Option<&str> {
        self.arguments.get("alternate-exchange").and_then(Value::as_str)
    }

    /// The name of the policy that applies, when one does.
    pub fn policy_name(&self) -> Option<&str> {
        self.policy.as_ref().and_then(Value::as_str).filter(|name| !name.is_empty())
    }

    pub fn info(&self) -> ExchangeInfo {
        ExchangeInfo { name: self.name.clone(), exchange_type: self.exchange_type.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages hold at most 500 names and about 3 kB of encoded filter.
    #[test]
    fn state_pages_fit_the_request_line() {
        let short: Vec<String> = (0..1200).map(|i| format!("q{i}")).collect();
        let short: Vec<&str> = short.iter().map(String::as_str).collect();
        assert!(state_pages(&short).iter().all(|page| page.len() <= 500), "500 at most");
        let long: Vec<String> = (0..200).map(|i| format!("team.orders.dead-letters.{i}")).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let pages = state_pages(&long);
        assert!(pages.len() > 1, "long names take several pages");
        assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), 200, "every name once");
    }

    /// Names with regex characters match only themselves.
    #[test]
    fn names_become_regex_literals() {
        assert_eq!(regex_literal("orders.dlq"), r"orders\.dlq");
        assert_eq!(regex_literal("a|b (c)*"), r"a\|b\ \(c\)\*");
        assert_eq!(regex_literal("ordres-é"), r"ordres\-é", "non-ASCII stays as it is");
    }
}
