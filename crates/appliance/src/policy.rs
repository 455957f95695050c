//! Interception policy: ordered `[[policy]]` rules decide, per connection,
//! to intercept, to bypass (the bytes pass untouched and the client sees the
//! real certificate) or to block (reset). Rules match on destination and
//! source prefixes, destination port, SNI (exact or `*.` wildcard), the
//! absence of SNI, and — with `when` — on first bytes that are not TLS or
//! offer only unsupported TLS versions, on an origin that speaks only
//! legacy TLS, or on a ClientHello with Encrypted Client Hello. The first
//! matching rule wins; without one, TLS is intercepted, what cannot be
//! intercepted is blocked, and ECH follows `tls.ech`. Rules with action
//! `upgrade` (a plain client, TLS towards the server) or `downgrade` (the
//! client's TLS answered with a forged certificate, plain towards the
//! server) match on addresses and ports only and are decided at the SYN,
//! ahead of every rule that reads the ClientHello. What the appliance
//! learns from traffic (servers that ask for client certificates,
//! fail-open for clients that pin certificates) is kept in the shared
//! [`LearnedStore`] per destination, and applies only where no rule
//! matched.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use mitm::Rejection;
use netstack::Instant;
use serde::{Deserialize, Serialize};
use wire::FlowTuple;

use crate::learned::{Destination, Learned, LearnedEntry, LearnedStore};

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Intercept,
    Bypass,
    Block,
    /// The client speaks plain TCP; the server leg speaks TLS.
    Upgrade,
    /// The client speaks TLS (a forged certificate); the server leg is plain.
    Downgrade,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Intercept => "intercept",
            Action::Bypass => "bypass",
            Action::Block => "block",
            Action::Upgrade => "upgrade",
            Action::Downgrade => "downgrade",
        }
    }

    /// Whether the action converts the connection between plain TCP and
    /// TLS (decided at the SYN).
    pub fn converts(self) -> bool {
        matches!(self, Action::Upgrade | Action::Downgrade)
    }
}

/// What an `upgrade` or `downgrade` rule does to a connection it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// `Upgrade` or `Downgrade`.
    pub action: Action,
    /// The server leg's port (`server_port`); `None`: the client's.
    pub server_port: Option<u16>,
    /// The upgrade's SNI and the name the server's certificate must carry
    /// (`server_name`); `None`: no SNI, and the certificate must carry the
    /// server's address.
    pub server_name: Option<String>,
}

impl Conversion {
    /// The port the server leg connects to, for a client that came to
    /// `port`.
    pub fn server_port(&self, port: u16) -> u16 {
        self.server_port.unwrap_or(port)
    }
}

/// What happens to UDP to and from the intercepted ports (QUIC, which the
/// appliance cannot intercept): `intercept.udp`, or a rule's `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UdpPolicy {
    /// Dropped and counted: clients fall back to TCP, which is intercepted.
    #[default]
    Block,
    /// Bridged uninspected.
    Bypass,
}

/// The failure a `when` rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The client's first bytes are not TLS.
    NonTls,
    /// The client offers only TLS versions below 1.2.
    UnsupportedTls,
    /// The origin speaks only TLS the appliance does not (below 1.2, or
    /// no ECDHE/AEAD suite): decided after its answer, on the SNI too.
    LegacyUpstream,
    /// The ClientHello carries Encrypted Client Hello (its SNI is the
    /// public name): overrides `tls.ech`.
    Ech,
}

impl Condition {
    /// Whether the condition is known with the ClientHello read (so the
    /// rule may match the SNI).
    fn has_hello(self) -> bool {
        matches!(self, Condition::LegacyUpstream | Condition::Ech)
    }
}

/// One `[[policy]]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub action: Action,
    /// Destination prefixes (`198.18.0.0/16`, `2001:2::/48`, or an address).
    #[serde(default)]
    pub dst: Vec<String>,
    /// Source (client) prefixes.
    #[serde(default)]
    pub src: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub port: Vec<u16>,
    /// Server names: exact (`www.example.com`) or wildcard (`*.example.com`:
    /// any name below example.com).
    #[serde(default)]
    pub sni: Vec<String>,
    /// true: only clients that send no SNI; false: only those that do.
    pub no_sni: Option<bool>,
    /// Applies only when the client's bytes cannot be intercepted.
    pub when: Option<Condition>,
    /// What happens to UDP to the intercepted ports matching `dst`, `src`
    /// and `port`; unset: the rule does not apply to UDP.
    pub udp: Option<UdpPolicy>,
    /// `upgrade`/`downgrade`: the port the server leg connects to (e.g.
    /// 80 → 443); unset: the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    /// `upgrade`: the SNI sent and the name the server's certificate is
    /// verified for; unset: no SNI, verified for the server's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    /// `*.example.com` is stored as `.example.com`.
    Below(String),
}

impl NamePattern {
    fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self {
            NamePattern::Exact(exact) => name == *exact,
            NamePattern::Below(suffix) => name.ends_with(suffix.as_str()) && name.len() > suffix.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    number: usize,
    action: Action,
    dst: Vec<IpNet>,
    src: Vec<IpNet>,
    ports: Vec<u16>,
    names: Vec<NamePattern>,
    no_sni: Option<bool>,
    when: Option<Condition>,
    udp: Option<UdpPolicy>,
    conversion: Option<Conversion>,
}

fn parse_prefix(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or prefix (like 198.18.0.0/15 or 2001:2::/48)"))
}

impl Rule {
    fn addresses_match(&self, tuple: &FlowTuple) -> bool {
        (self.dst.is_empty() || self.dst.iter().any(|net| net.contains(&tuple.dst_ip)))
            && (self.src.is_empty() || self.src.iter().any(|net| net.contains(&tuple.src_ip)))
            && (self.ports.is_empty() || self.ports.contains(&tuple.dst_port))
    }

    fn needs_hello(&self) -> bool {
        !self.names.is_empty() || self.no_sni.is_some()
    }

    fn hello_matches(&self, sni: Option<&str>) -> bool {
        let names = self.names.is_empty() || sni.is_some_and(|sni| self.names.iter().any(|p| p.matches(sni)));
        let no_sni = self.no_sni.is_none_or(|wanted| wanted == sni.is_none());
        names && no_sni
    }

    fn verdict(&self, what: &str) -> Verdict {
        Verdict {
            action: self.action,
            reason: format!("policy rule {} ({}) matched {what}", self.number, self.action.name()),
        }
    }
}

/// The rules, and what was learned from traffic.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Shared by every worker's copy of the policy.
    learned: Arc<LearnedStore>,
    /// Whether a server that asks for a client certificate is bypassed
    /// from then on (`tls.client_auth = "bypass"`).
    bypass_client_auth: bool,
    /// What a ClientHello with Encrypted Client Hello gets when no `when =
    /// "ech"` rule matches (`tls.ech`; intercept on the public name).
    ech: Option<Action>,
}

/// The `[[policy]]` rules as written, compiled once, when they are read:
/// the check at load and every policy made from them use that one
/// compilation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "Vec<RuleConfig>", into = "Vec<RuleConfig>")]
pub struct PolicyRules {
    written: Vec<RuleConfig>,
    /// The rules, or what is wrong with them (the rule and the field).
    compiled: Result<Vec<Rule>, (String, String)>,
}

impl Default for PolicyRules {
    fn default() -> Self {
        PolicyRules::from(Vec::new())
    }
}

impl From<Vec<RuleConfig>> for PolicyRules {
    fn from(written: Vec<RuleConfig>) -> Self {
        let compiled = compile(&written);
        PolicyRules { written, compiled }
    }
}

impl From<PolicyRules> for Vec<RuleConfig> {
    fn from(rules: PolicyRules) -> Self {
        rules.written
    }
}

impl PolicyRules {
    /// Whether the rules compiled; the error names the rule and the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        self.compiled.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The `upgrade` and `downgrade` rules (of rules that compiled): each
    /// one's key prefix (`policy[N]`), ports and conversion.
    pub fn conversions(&self) -> Vec<(String, Vec<u16>, Conversion)> {
        self.compiled
            .iter()
            .flatten()
            .filter_map(|rule| {
                let conversion = rule.conversion.clone()?;
                Some((format!("policy[{}]", rule.number), rule.ports.clone(), conversion))
            })
            .collect()
    }
}

/// Checks and compiles the rules; an error names the rule and the field.
fn compile(rules: &[RuleConfig]) -> Result<Vec<Rule>, (String, String)> {
    rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let number = index + 1;
                let key = |field: &str| format!("policy[{number}].{field}");
                let prefixes = |list: &[String], field: &str| {
                    list.iter()
                        .map(|text| parse_prefix(text).map_err(|reason| (key(field), reason)))
                        .collect::<Result<Vec<_>, _>>()
                };
                let names = rule
                    .sni
                    .iter()
                    .map(|name| {
                        let lower = name.trim().to_ascii_lowercase();
                        match lower.strip_prefix("*.") {
                            Some(rest) if !rest.is_empty() && !rest.contains('*') => {
                                Ok(NamePattern::Below(format!(".{rest}")))
                            }
                            None if !lower.is_empty() && !lower.contains('*') => Ok(NamePattern::Exact(lower)),
                            _ => Err((key("sni"), format!("{name:?}: use a name or *.name"))),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let without_hello = rule.when.is_some_and(|when| !when.has_hello());
                if without_hello && (!names.is_empty() || rule.no_sni.is_some()) {
                    return Err((
                        key("when"),
                        "a `non_tls` or `unsupported_tls` rule cannot also match on SNI (there is none to read)".into(),
                    ));
                }
                if rule.udp.is_some() && (!names.is_empty() || rule.no_sni.is_some() || rule.when.is_some()) {
                    return Err((
                        key("udp"),
                        "a rule with `udp` matches on addresses and ports only (a datagram has no SNI or first bytes to read)"
                            .into(),
                    ));
                }
                if rule.when.is_some() && rule.when != Some(Condition::Ech) && rule.action == Action::Intercept {
                    return Err((
                        key("action"),
                        "what cannot be intercepted can only be bypassed or blocked".into(),
                    ));
                }
                let conversion = conversion_of(rule, number, written_before_needing_hello(rules, index))?;
                Ok(Rule {
                    number,
                    action: rule.action,
                    dst: prefixes(&rule.dst, "dst")?,
                    src: prefixes(&rule.src, "src")?,
                    ports: rule.port.clone(),
                    names,
                    no_sni: rule.no_sni,
                    when: rule.when,
                    udp: rule.udp,
                    conversion,
                })
            })
            .collect::<Result<Vec<_>, _>>()
}

/// The number of the first rule before `index` that matches on the
/// ClientHello (SNI), if any.
fn written_before_needing_hello(rules: &[RuleConfig], index: usize) -> Option<usize> {
    rules
        .iter()
        .take(index)
        .position(|rule| rule.when.is_none() && (!rule.sni.is_empty() || rule.no_sni.is_some()))
        .map(|at| at + 1)
}

/// Checks the `upgrade`/`downgrade` keys of rule `number`: what it
/// converts, or `None` for the other actions (which may not set them).
fn conversion_of(
    rule: &RuleConfig,
    number: usize,
    hello_rule_before: Option<usize>,
) -> Result<Option<Conversion>, (String, String)> {
    let key = |field: &str| format!("policy[{number}].{field}");
    if !rule.action.converts() {
        if rule.server_port.is_some() {
            return Err((
                key("server_port"),
                "only an `upgrade` or `downgrade` rule sets the server's port".into(),
            ));
        }
        if rule.server_name.is_some() {
            return Err((key("server_name"), "only an `upgrade` rule sets a server name".into()));
        }
        return Ok(None);
    }
    let action = rule.action.name();
    let decided_at_syn = format!("an `{action}` rule is decided at the SYN: it matches on dst, src and port only");
    for (field, set) in [
        ("sni", !rule.sni.is_empty()),
        ("no_sni", rule.no_sni.is_some()),
        ("when", rule.when.is_some()),
        ("udp", rule.udp.is_some()),
    ] {
        if set {
            return Err((key(field), decided_at_syn));
        }
    }
    if let Some(before) = hello_rule_before {
        return Err((
            key("action"),
            format!(
                "{decided_at_syn}, so it must come before every rule that matches on sni or no_sni (rule {before} does)"
            ),
        ));
    }
    if rule.server_port == Some(0) {
        return Err((key("server_port"), "0 is not a TCP port".into()));
    }
    if let Some(name) = &rule.server_name {
        if rule.action != Action::Upgrade {
            return Err((
                key("server_name"),
                "only an `upgrade` rule sets a server name (a downgrade's certificate is forged for the client's SNI)"
                    .into(),
            ));
        }
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() || name.parse::<IpAddr>().is_ok() {
            return Err((
                key("server_name"),
                format!("{name:?} is not a DNS name (leave it out to verify the server's address)"),
            ));
        }
    }
    Ok(Some(Conversion {
        action: rule.action,
        server_port: rule.server_port,
        server_name: rule.server_name.clone(),
    }))
}

impl Policy {
    /// The policy of `rules` (an error names the rule and the field if they
    /// did not compile). `learned` is shared by the workers;
    /// `bypass_client_auth`: a server asking for a client certificate is
    /// bypassed from then on.
    pub fn new(
        rules: &PolicyRules,
        learned: Arc<LearnedStore>,
        bypass_client_auth: bool,
    ) -> Result<Policy, (String, String)> {
        Ok(Policy {
            rules: rules.compiled.clone()?,
            learned,
            bypass_client_auth,
            ech: None,
        })
    }

    /// At the client's SYN: a verdict if the first rule that can apply
    /// needs no more than addresses and ports; `None`: decide at the
    /// ClientHello (the connection is opened).
    pub fn at_syn(&self, tuple: &FlowTuple) -> Option<Verdict> {
        self.syn_rule(tuple).map(|rule| rule.verdict("addresses and port"))
    }

    /// What the `upgrade` or `downgrade` rule deciding `tuple` at its SYN
    /// does, if one does (see [`Policy::at_syn`]).
    pub fn conversion_at_syn(&self, tuple: &FlowTuple) -> Option<Conversion> {
        self.syn_rule(tuple).and_then(|rule| rule.conversion.clone())
    }

    /// The rule deciding `tuple` at its SYN.
    fn syn_rule(&self, tuple: &FlowTuple) -> Option<&Rule> {
        let rule = self
            .rules
            .iter()
            .filter(|rule| rule.when.is_none())
            .find(|rule| rule.addresses_match(tuple))?;
        (!rule.needs_hello()).then_some(rule)
    }

    /// For a UDP datagram client→server `tuple` to an intercepted port: the
    /// `udp` of the first rule that sets one and matches its addresses and
    /// port, and why; `None`: `intercept.udp` applies.
    pub fn udp(&self, tuple: &FlowTuple) -> Option<(UdpPolicy, usize)> {
        self.rules
            .iter()
            .find(|rule| rule.udp.is_some() && rule.addresses_match(tuple))
            .and_then(|rule| rule.udp.map(|udp| (udp, rule.number)))
    }

    /// At the ClientHello: the first matching rule, else what was learned
    /// about this destination, else intercept.
    pub fn at_hello(&self, tuple: &FlowTuple, sni: Option<&str>, now: Instant) -> Verdict {
        let rule = self
            .rules
            .iter()
            // Conversions were decided at the SYN (they come before every
            // rule reading the hello, so none matched this connection).
            .filter(|rule| rule.when.is_none() && rule.conversion.is_none())
            .find(|rule| rule.addresses_match(tuple) && rule.hello_matches(sni));
        if let Some(rule) = rule {
            return rule.verdict(if sni.is_some() {
                "the SNI"
            } else {
                "a hello without SNI"
            });
        }
        let learned = sni.and_then(|name| self.learned.bypassed(&destination(tuple, name), now));
        match learned {
            Some(reason) => Verdict {
                action: Action::Bypass,
                reason,
            },
            None => Verdict {
                action: Action::Intercept,
                reason: "default: intercept TLS".into(),
            },
        }
    }

    /// What a ClientHello with Encrypted Client Hello gets when no `when =
    /// "ech"` rule matches: `Intercept` (on the outer, public name: the
    /// default), `Block` or `Bypass`.
    pub fn with_ech(mut self, action: Action) -> Policy {
        self.ech = Some(action);
        self
    }

    /// The first `when = condition` rule matching the connection (and the
    /// SNI, for conditions known after the hello).
    fn when_rule(&self, condition: Condition, tuple: &FlowTuple, sni: Option<&str>) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            rule.when == Some(condition)
                && rule.addresses_match(tuple)
                && (!condition.has_hello() || rule.hello_matches(sni))
        })
    }

    /// A ClientHello carrying Encrypted Client Hello that the other rules
    /// would intercept: its SNI is the public name, the real one is
    /// encrypted. Intercepting on the public name makes the client fall
    /// back (ECH's rule for a server without the keys), on its retry
    /// without ECH if it makes one.
    pub fn on_ech(&self, tuple: &FlowTuple, sni: Option<&str>) -> Verdict {
        let what = format!("an Encrypted Client Hello (public name {})", sni.unwrap_or("none"));
        if let Some(rule) = self.when_rule(Condition::Ech, tuple, sni) {
            return rule.verdict(&what);
        }
        let action = self.ech.unwrap_or(Action::Intercept);
        let setting = match action {
            Action::Intercept => "intercept_outer",
            other => other.name(),
        };
        Verdict {
            action,
            reason: format!("tls.ech = {setting}: {what}"),
        }
    }

    /// An origin that speaks only TLS the appliance does not (`cause` says
    /// what it answered): blocked unless a `when = "legacy_upstream"` rule
    /// bypasses it.
    pub fn on_legacy_upstream(&self, tuple: &FlowTuple, sni: Option<&str>, cause: &str) -> Verdict {
        self.when_rule(Condition::LegacyUpstream, tuple, sni)
            .map(|rule| rule.verdict(cause))
            .unwrap_or_else(|| Verdict {
                action: Action::Block,
                reason: format!("default: block {cause}"),
            })
    }

    /// When the client's first bytes cannot be intercepted.
    pub fn on_rejection(&self, tuple: &FlowTuple, rejection: &Rejection) -> Verdict {
        let condition = match rejection {
            Rejection::NotTls(_) => Some(Condition::NonTls),
            Rejection::UnsupportedVersion(_) => Some(Condition::UnsupportedTls),
            Rejection::Other(_) => None,
        };
        let what = match rejection {
            Rejection::NotTls(why) => format!("not TLS ({why})"),
            Rejection::UnsupportedVersion(why) => format!("unsupported TLS version ({why})"),
            Rejection::Other(why) => format!("unusable ClientHello ({why})"),
        };
        self.rules
            .iter()
            .find(|rule| rule.when.is_some() && rule.when == condition && rule.addresses_match(tuple))
            .map(|rule| rule.verdict(&what))
            .unwrap_or_else(|| Verdict {
                action: Action::Block,
                reason: format!("default: block what cannot be intercepted: {what}"),
            })
    }

    /// Records that the client of `tuple` rejected the forged certificate
    /// for `name` (issued because the server's chain verified for it);
    /// returns the entry when this makes fail-open bypass the destination.
    pub fn record_rejection(&self, tuple: &FlowTuple, name: &str, now: Instant) -> Option<LearnedEntry> {
        self.learned
            .record_rejection(destination(tuple, name), tuple.src_ip, now)
    }

    /// Records that the server of `tuple`, whose chain verified for `name`,
    /// asked for a client certificate; returns the entry when this makes
    /// the policy bypass the destination (`tls.client_auth = "bypass"`).
    pub fn record_client_cert_request(&self, tuple: &FlowTuple, name: &str, now: Instant) -> Option<LearnedEntry> {
        if !self.bypass_client_auth {
            return None;
        }
        self.learned.learn(destination(tuple, name), Learned::ClientAuth, now)
    }

    /// The same rules sharing `learned` (a reload keeps what the running
    /// instance learned).
    pub fn with_learned(mut self, learned: Arc<LearnedStore>) -> Policy {
        self.learned = learned;
        self
    }

    /// The learned bypasses, shared by every worker.
    pub fn learned(&self) -> &Arc<LearnedStore> {
        &self.learned
    }
}

/// The destination a connection's `tuple` and server name make.
fn destination(tuple: &FlowTuple, name: &str) -> Destination {
    Destination::new(name, tuple.dst_ip, tuple.dst_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(dst: &str, port: u16) -> FlowTuple {
        FlowTuple {
            src_ip: "198.18.0.1".parse().unwrap(),
            dst_ip: dst.parse().unwrap(),
            src_port: 40_000,
            dst_port: port,
        }
    }

    fn rules_of(rules: &[RuleConfig]) -> PolicyRules {
        PolicyRules::from(rules.to_vec())
    }

    fn rule(action: Action) -> RuleConfig {
        RuleConfig {
            action,
            dst: vec![],
            src: vec![],
            port: vec![],
            sni: vec![],
            no_sni: None,
            when: None,
            udp: None,
            server_port: None,
            server_name: None,
        }
    }

    #[test]
    fn rules_are_compiled_as_they_are_read_and_written_back_as_they_were() {
        #[derive(Deserialize)]
        struct File {
            policy: PolicyRules,
        }
        let read = |text: &str| toml::from_str::<File>(text).unwrap().policy;
        let good = read("[[policy]]\naction = \"bypass\"\nsni = [\"*.Bank.test\"]\n");
        assert_eq!(good.check(), Ok(()));
        let policy = Policy::new(&good, Arc::default(), false).unwrap();
        assert_eq!(
            policy
                .at_hello(&tuple("198.18.0.2", 443), Some("www.bank.test"), Instant::ZERO)
                .action,
            Action::Bypass
        );
        // As written (what a reload compares), not as compiled.
        let written = serde_json::to_value(&good).unwrap();
        assert_eq!(written[0]["sni"], serde_json::json!(["*.Bank.test"]));
        // A rule that does not compile is named by the check, and no policy
        // is made of it.
        let bad = read("[[policy]]\naction = \"bypass\"\n[[policy]]\naction = \"block\"\ndst = [\"nowhere\"]\n");
        let (key, reason) = bad.check().unwrap_err();
        assert_eq!(key, "policy[2].dst");
        assert!(reason.contains("nowhere"), "{reason}");
        assert_eq!(Policy::new(&bad, Arc::default(), false).unwrap_err().0, "policy[2].dst");
    }

    #[test]
    fn udp_follows_the_first_rule_that_sets_it() {
        let policy = Policy::new(
            &rules_of(&[
                RuleConfig {
                    dst: vec!["198.18.0.9".into()],
                    ..rule(Action::Bypass)
                },
                RuleConfig {
                    dst: vec!["198.18.0.0/24".into()],
                    port: vec![443],
                    udp: Some(UdpPolicy::Bypass),
                    ..rule(Action::Intercept)
                },
            ]),
            Arc::default(),
            false,
        )
        .unwrap();
        assert_eq!(policy.udp(&tuple("198.18.0.9", 443)), Some((UdpPolicy::Bypass, 2)));
        assert_eq!(policy.udp(&tuple("198.18.0.9", 8443)), None);
        assert_eq!(policy.udp(&tuple("198.18.1.9", 443)), None);
    }

    #[test]
    fn first_matching_rule_wins_at_the_earliest_point_it_can() {
        let rules = vec![
            RuleConfig {
                dst: vec!["198.18.9.0/24".into()],
                ..rule(Action::Block)
            },
            RuleConfig {
                sni: vec!["*.bank.test".into(), "pinned.test".into()],
                ..rule(Action::Bypass)
            },
            RuleConfig {
                no_sni: Some(true),
                ..rule(Action::Bypass)
            },
            RuleConfig {
                dst: vec!["2001:2::/48".into()],
                port: vec![8443],
                ..rule(Action::Bypass)
            },
        ];
        let policy = Policy::new(&rules_of(&rules), Arc::default(), false).unwrap();
        assert_eq!(
            policy.at_syn(&tuple("198.18.9.7", 443)).map(|v| v.action),
            Some(Action::Block)
        );
        // Rule 2 needs the hello: no decision at the SYN for other addresses.
        assert_eq!(policy.at_syn(&tuple("198.18.0.2", 443)), None);
        let at = |sni: Option<&str>| policy.at_hello(&tuple("198.18.0.2", 443), sni, Instant::ZERO).action;
        assert_eq!(at(Some("www.bank.test")), Action::Bypass);
        assert_eq!(at(Some("WWW.Bank.Test")), Action::Bypass);
        assert_eq!(
            at(Some("bank.test")),
            Action::Intercept,
            "*.bank.test is only below bank.test"
        );
        assert_eq!(at(Some("pinned.test")), Action::Bypass);
        assert_eq!(at(Some("origin.test")), Action::Intercept);
        assert_eq!(at(None), Action::Bypass);
        assert!(policy
            .at_hello(&tuple("198.18.0.2", 443), Some("x.bank.test"), Instant::ZERO)
            .reason
            .contains("rule 2"));
        assert_eq!(
            policy
                .at_hello(&tuple("2001:2::2", 8443), Some("origin.test"), Instant::ZERO)
                .action,
            Action::Bypass
        );
    }

    #[test]
    fn what_cannot_be_intercepted_is_blocked_unless_a_rule_bypasses_it() {
        let policy = Policy::new(
            &rules_of(&[RuleConfig {
                when: Some(Condition::NonTls),
                ..rule(Action::Bypass)
            }]),
            Arc::default(),
            false,
        )
        .unwrap();
        let t = tuple("198.18.0.2", 443);
        assert_eq!(
            policy.on_rejection(&t, &Rejection::NotTls("x".into())).action,
            Action::Bypass
        );
        let old = policy.on_rejection(&t, &Rejection::UnsupportedVersion("x".into()));
        assert_eq!(old.action, Action::Block);
        assert!(old.reason.starts_with("default"), "{}", old.reason);
        assert_eq!(policy.at_syn(&t), None, "`when` rules never decide at the SYN");
    }

    #[test]
    fn bad_rules_are_named() {
        let bad = [
            (
                RuleConfig {
                    dst: vec!["198.18.0.0/99".into()],
                    ..rule(Action::Block)
                },
                "policy[1].dst",
            ),
            (
                RuleConfig {
                    sni: vec!["a.*.test".into()],
                    ..rule(Action::Bypass)
                },
                "policy[1].sni",
            ),
            (
                RuleConfig {
                    when: Some(Condition::NonTls),
                    ..rule(Action::Intercept)
                },
                "policy[1].action",
            ),
            (
                RuleConfig {
                    when: Some(Condition::NonTls),
                    no_sni: Some(true),
                    ..rule(Action::Bypass)
                },
                "policy[1].when",
            ),
            (
                RuleConfig {
                    when: Some(Condition::LegacyUpstream),
                    ..rule(Action::Intercept)
                },
                "policy[1].action",
            ),
            (
                RuleConfig {
                    sni: vec!["bank.test".into()],
                    udp: Some(UdpPolicy::Bypass),
                    ..rule(Action::Bypass)
                },
                "policy[1].udp",
            ),
        ];
        for (config, key) in bad {
            let (named, reason) = Policy::new(&rules_of(&[config]), Arc::default(), false).unwrap_err();
            assert_eq!(named, key, "{reason}");
        }
    }

    #[test]
    fn legacy_origins_are_blocked_unless_a_rule_bypasses_them() {
        let policy = Policy::new(
            &rules_of(&[RuleConfig {
                when: Some(Condition::LegacyUpstream),
                sni: vec!["old.test".into()],
                port: vec![443],
                ..rule(Action::Bypass)
            }]),
            Arc::default(),
            false,
        )
        .unwrap();
        let t = tuple("198.18.0.2", 443);
        let cause = "origin speaks only legacy TLS: its ServerHello chose TLSv1_0";
        let bypassed = policy.on_legacy_upstream(&t, Some("old.test"), cause);
        assert_eq!(bypassed.action, Action::Bypass);
        assert!(bypassed.reason.contains("rule 1") && bypassed.reason.contains(cause));
        let blocked = policy.on_legacy_upstream(&t, Some("other.test"), cause);
        assert_eq!(blocked.action, Action::Block);
        assert_eq!(blocked.reason, format!("default: block {cause}"));
        assert_eq!(
            policy
                .on_legacy_upstream(&tuple("198.18.0.2", 8443), Some("old.test"), cause)
                .action,
            Action::Block
        );
        // The rule never decides anything else.
        assert_eq!(
            policy.at_hello(&t, Some("old.test"), Instant::ZERO).action,
            Action::Intercept
        );
        assert_eq!(policy.at_syn(&t), None);
        assert_eq!(
            policy
                .on_rejection(&t, &Rejection::UnsupportedVersion("x".into()))
                .action,
            Action::Block
        );
    }

    #[test]
    fn ech_follows_tls_ech_unless_a_rule_says_otherwise() {
        let t = tuple("198.18.0.2", 443);
        let default = Policy::new(&rules_of(&[]), Arc::default(), false).unwrap();
        let verdict = default.on_ech(&t, Some("public.test"));
        assert_eq!(verdict.action, Action::Intercept);
        assert_eq!(
            verdict.reason,
            "tls.ech = intercept_outer: an Encrypted Client Hello (public name public.test)"
        );
        let rules = [RuleConfig {
            when: Some(Condition::Ech),
            sni: vec!["public.test".into()],
            ..rule(Action::Intercept)
        }];
        let blocking = Policy::new(&rules_of(&rules), Arc::default(), false)
            .unwrap()
            .with_ech(Action::Block);
        assert_eq!(blocking.on_ech(&t, Some("other.test")).action, Action::Block);
        let overridden = blocking.on_ech(&t, Some("public.test"));
        assert_eq!(overridden.action, Action::Intercept);
        assert!(overridden.reason.contains("rule 1"), "{}", overridden.reason);
        let bypassing = Policy::new(&rules_of(&[]), Arc::default(), false)
            .unwrap()
            .with_ech(Action::Bypass);
        assert_eq!(bypassing.on_ech(&t, None).action, Action::Bypass);
    }

    #[test]
    fn what_was_learned_applies_to_its_destination_where_no_rule_matched() {
        let rules = [RuleConfig {
            sni: vec!["blocked.test".into()],
            ..rule(Action::Block)
        }];
        let learned = Arc::new(LearnedStore::default());
        let policy = Policy::new(&rules_of(&rules), Arc::clone(&learned), true).unwrap();
        // Every worker has its own copy of the policy; they share what is learned.
        let other_worker = policy.clone();
        let at = Instant::ZERO;
        let t = tuple("198.18.0.2", 443);
        for name in ["mtls.test", "blocked.test"] {
            assert!(policy.record_client_cert_request(&t, name, at).is_some());
        }
        let verdict = policy.at_hello(&t, Some("MTLS.test"), at);
        assert_eq!(verdict.action, Action::Bypass);
        assert!(
            verdict.reason.contains("mtls.test at 198.18.0.2:443"),
            "{}",
            verdict.reason
        );
        assert_eq!(other_worker.at_hello(&t, Some("mtls.test"), at).action, Action::Bypass);
        assert_eq!(
            policy.at_hello(&t, Some("blocked.test"), at).action,
            Action::Block,
            "rules first"
        );
        for other in [tuple("198.18.0.9", 443), tuple("198.18.0.2", 8443)] {
            assert_eq!(policy.at_hello(&other, Some("mtls.test"), at).action, Action::Intercept);
        }
        assert_eq!(policy.at_hello(&t, None, at).action, Action::Intercept);
        // Fail-open: three distinct clients.
        let client = |last: u8| FlowTuple {
            src_ip: std::net::IpAddr::from([198, 18, 0, last]),
            ..t
        };
        assert!(policy.record_rejection(&client(1), "pinned.test", at).is_none());
        assert!(policy.record_rejection(&client(1), "pinned.test", at).is_none());
        assert!(policy.record_rejection(&client(3), "pinned.test", at).is_none());
        assert_eq!(policy.at_hello(&t, Some("pinned.test"), at).action, Action::Intercept);
        assert!(policy.record_rejection(&client(4), "pinned.test", at).is_some());
        assert_eq!(policy.at_hello(&t, Some("pinned.test"), at).action, Action::Bypass);
        let blocking = Policy::new(&rules_of(&[]), Arc::clone(&learned), false).unwrap();
        assert!(
            blocking.record_client_cert_request(&t, "other.test", at).is_none(),
            "tls.client_auth = block"
        );
        assert_eq!(blocking.at_hello(&t, Some("other.test"), at).action, Action::Intercept);
    }

    #[test]
    fn upgrade_and_downgrade_rules_are_decided_at_the_syn_and_refuse_keys_they_cannot_use() {
        let upgrade = RuleConfig {
            dst: vec!["198.18.0.2".into()],
            port: vec![80],
            server_port: Some(443),
            server_name: Some("www.lab.test".into()),
            ..rule(Action::Upgrade)
        };
        let downgrade = RuleConfig {
            port: vec![443],
            server_port: Some(80),
            ..rule(Action::Downgrade)
        };
        let rules = rules_of(&[upgrade.clone(), downgrade.clone()]);
        let policy = Policy::new(&rules, Arc::default(), false).unwrap();
        let verdict = policy.at_syn(&tuple("198.18.0.2", 80)).unwrap();
        assert_eq!((verdict.action, verdict.action.name()), (Action::Upgrade, "upgrade"));
        let conversion = policy.conversion_at_syn(&tuple("198.18.0.2", 80)).unwrap();
        assert_eq!(conversion.server_port(80), 443);
        assert_eq!(conversion.server_name.as_deref(), Some("www.lab.test"));
        let down = policy.conversion_at_syn(&tuple("198.18.0.9", 443)).unwrap();
        assert_eq!((down.action, down.server_port(443)), (Action::Downgrade, 80));
        assert_eq!(policy.conversion_at_syn(&tuple("198.18.0.9", 80)), None);
        // Never at the hello: a conversion matched at the SYN or not at all.
        assert_eq!(
            policy.at_hello(&tuple("198.18.0.9", 443), None, Instant::ZERO).action,
            Action::Intercept
        );
        assert_eq!(rules.conversions().len(), 2);

        let refused = |rules: &[RuleConfig]| rules_of(rules).check().unwrap_err();
        let with_sni = RuleConfig {
            sni: vec!["a.test".into()],
            ..downgrade.clone()
        };
        assert_eq!(refused(&[with_sni]).0, "policy[1].sni");
        let hello_first = RuleConfig {
            sni: vec!["a.test".into()],
            ..rule(Action::Bypass)
        };
        let (key, reason) = refused(&[hello_first, upgrade.clone()]);
        assert_eq!(key, "policy[2].action");
        assert!(reason.contains("rule 1"), "{reason}");
        let named_downgrade = RuleConfig {
            server_name: Some("a.test".into()),
            ..downgrade.clone()
        };
        assert_eq!(refused(&[named_downgrade]).0, "policy[1].server_name");
        let moved_bypass = RuleConfig {
            server_port: Some(443),
            ..rule(Action::Bypass)
        };
        assert_eq!(refused(&[moved_bypass]).0, "policy[1].server_port");
        for name in ["198.18.0.2", "not a name"] {
            let bad_name = RuleConfig {
                server_name: Some(name.into()),
                ..upgrade.clone()
            };
            assert_eq!(refused(&[bad_name]).0, "policy[1].server_name");
        }
        let port_zero = RuleConfig {
            server_port: Some(0),
            ..upgrade
        };
        assert_eq!(refused(&[port_zero]).0, "policy[1].server_port");
    }
}
