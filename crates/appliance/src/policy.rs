//! Interception policy: ordered `[[policy]]` rules decide, per connection,
//! to intercept, to bypass (the bytes pass untouched and the client sees the
//! real certificate) or to block (reset). Rules match on destination and
//! source prefixes, destination port, SNI (exact or `*.` wildcard), the
//! absence of SNI, and — with `when` — on first bytes that are not TLS or
//! offer only unsupported TLS versions. The first matching rule wins;
//! without one, TLS is intercepted and what cannot be intercepted is
//! blocked. A client that keeps rejecting the forged certificate for a name
//! (certificate pinning) gets that name bypassed: fail-open.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use ipnet::IpNet;
use mitm::Rejection;
use serde::Deserialize;
use wire::FlowTuple;

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Intercept,
    Bypass,
    Block,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Intercept => "intercept",
            Action::Bypass => "bypass",
            Action::Block => "block",
        }
    }
}

/// What happens to UDP to and from the intercepted ports (QUIC, which the
/// appliance cannot intercept): `intercept.udp`, or a rule's `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UdpPolicy {
    /// Dropped and counted: clients fall back to TCP, which is intercepted.
    #[default]
    Block,
    /// Bridged uninspected.
    Bypass,
}

/// The failure a `when` rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The client's first bytes are not TLS.
    NonTls,
    /// The client offers only TLS versions below 1.2.
    UnsupportedTls,
}

/// One `[[policy]]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

/// Fail-open for clients that pin certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailOpen {
    /// Rejections of the forged certificate for one name ...
    pub after: usize,
    /// ... within this many seconds bypass that name from then on (0: never).
    pub window_secs: u64,
}

/// The rules, and the names fail-open has bypassed.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    fail_open: Option<FailOpen>,
    rejections: HashMap<String, VecDeque<u64>>,
    /// Names bypassed from now on, and why (fail-open, client certificates).
    bypassed_names: HashMap<String, String>,
    /// Whether a server that asks for a client certificate is bypassed
    /// from then on (`tls.client_auth = "bypass"`).
    bypass_client_auth: bool,
}

impl Policy {
    /// Checks and compiles the rules; an error names the rule and the field.
    /// `bypass_client_auth`: a server asking for a client certificate is
    /// bypassed from then on.
    pub fn new(
        rules: &[RuleConfig],
        fail_open: Option<FailOpen>,
        bypass_client_auth: bool,
    ) -> Result<Policy, (String, String)> {
        let compiled = rules
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
                if rule.when.is_some() && (!names.is_empty() || rule.no_sni.is_some()) {
                    return Err((
                        key("when"),
                        "a `when` rule cannot also match on SNI (there is none to read)".into(),
                    ));
                }
                if rule.udp.is_some() && (!names.is_empty() || rule.no_sni.is_some() || rule.when.is_some()) {
                    return Err((
                        key("udp"),
                        "a rule with `udp` matches on addresses and ports only (a datagram has no SNI or first bytes to read)"
                            .into(),
                    ));
                }
                if rule.when.is_some() && rule.action == Action::Intercept {
                    return Err((
                        key("action"),
                        "what cannot be intercepted can only be bypassed or blocked".into(),
                    ));
                }
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
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            rules: compiled,
            fail_open: fail_open.filter(|f| f.after > 0 && f.window_secs > 0),
            bypass_client_auth,
            ..Policy::default()
        })
    }

    /// At the client's SYN: a verdict if the first rule that can apply
    /// needs no more than addresses and ports; `None`: decide at the
    /// ClientHello (the connection is opened).
    pub fn at_syn(&self, tuple: &FlowTuple) -> Option<Verdict> {
        for rule in self.rules.iter().filter(|rule| rule.when.is_none()) {
            if !rule.addresses_match(tuple) {
                continue;
            }
            if rule.needs_hello() {
                return None;
            }
            return Some(rule.verdict("addresses and port"));
        }
        None
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

    /// At the ClientHello.
    pub fn at_hello(&self, tuple: &FlowTuple, sni: Option<&str>) -> Verdict {
        if let Some(reason) = sni.and_then(|name| self.bypassed_names.get(name)) {
            return Verdict {
                action: Action::Bypass,
                reason: reason.clone(),
            };
        }
        self.rules
            .iter()
            .filter(|rule| rule.when.is_none())
            .find(|rule| rule.addresses_match(tuple) && rule.hello_matches(sni))
            .map(|rule| {
                rule.verdict(if sni.is_some() {
                    "the SNI"
                } else {
                    "a hello without SNI"
                })
            })
            .unwrap_or_else(|| Verdict {
                action: Action::Intercept,
                reason: "default: intercept TLS".into(),
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

    /// Records that a client rejected the forged certificate for `name` at
    /// `now_secs`; returns true when this makes fail-open bypass the name.
    pub fn record_rejection(&mut self, name: &str, now_secs: u64) -> bool {
        let Some(fail_open) = self.fail_open else { return false };
        if self.bypassed_names.contains_key(name) {
            return false;
        }
        let times = self.rejections.entry(name.to_owned()).or_default();
        times.push_back(now_secs);
        while times.front().is_some_and(|&at| at + fail_open.window_secs < now_secs) {
            times.pop_front();
        }
        if times.len() >= fail_open.after {
            self.rejections.remove(name);
            self.bypass_name(
                name,
                format!("fail-open: clients kept rejecting the forged certificate for {name}"),
            );
            return true;
        }
        false
    }

    /// Records that the server for `name` asked for a client certificate;
    /// returns true when this makes the policy bypass the name.
    pub fn record_client_cert_request(&mut self, name: &str) -> bool {
        self.bypass_client_auth
            && self.bypass_name(
                name,
                format!("{name} asks for a client certificate, which the appliance cannot present"),
            )
    }

    /// Bypasses `name` from now on, for `reason`; false if it already was.
    pub fn bypass_name(&mut self, name: &str, reason: String) -> bool {
        if self.bypassed_names.contains_key(name) {
            return false;
        }
        self.bypassed_names.insert(name.to_owned(), reason);
        true
    }
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
        }
    }

    #[test]
    fn udp_follows_the_first_rule_that_sets_it() {
        let policy = Policy::new(
            &[
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
            ],
            None,
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
        let policy = Policy::new(&rules, None, false).unwrap();
        assert_eq!(
            policy.at_syn(&tuple("198.18.9.7", 443)).map(|v| v.action),
            Some(Action::Block)
        );
        // Rule 2 needs the hello: no decision at the SYN for other addresses.
        assert_eq!(policy.at_syn(&tuple("198.18.0.2", 443)), None);
        let at = |sni: Option<&str>| policy.at_hello(&tuple("198.18.0.2", 443), sni).action;
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
            .at_hello(&tuple("198.18.0.2", 443), Some("x.bank.test"))
            .reason
            .contains("rule 2"));
        assert_eq!(
            policy.at_hello(&tuple("2001:2::2", 8443), Some("origin.test")).action,
            Action::Bypass
        );
    }

    #[test]
    fn what_cannot_be_intercepted_is_blocked_unless_a_rule_bypasses_it() {
        let policy = Policy::new(
            &[RuleConfig {
                when: Some(Condition::NonTls),
                ..rule(Action::Bypass)
            }],
            None,
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
                    sni: vec!["bank.test".into()],
                    udp: Some(UdpPolicy::Bypass),
                    ..rule(Action::Bypass)
                },
                "policy[1].udp",
            ),
        ];
        for (config, key) in bad {
            let (named, reason) = Policy::new(&[config], None, false).unwrap_err();
            assert_eq!(named, key, "{reason}");
        }
    }

    #[test]
    fn fail_open_after_repeated_rejections_within_the_window() {
        let mut policy = Policy::new(
            &[],
            Some(FailOpen {
                after: 3,
                window_secs: 60,
            }),
            false,
        )
        .unwrap();
        let t = tuple("198.18.0.2", 443);
        assert!(!policy.record_rejection("pinned.test", 0));
        assert!(
            !policy.record_rejection("pinned.test", 100),
            "the first one left the window"
        );
        assert!(!policy.record_rejection("pinned.test", 110));
        assert_eq!(policy.at_hello(&t, Some("pinned.test")).action, Action::Intercept);
        assert!(policy.record_rejection("pinned.test", 120));
        let verdict = policy.at_hello(&t, Some("pinned.test"));
        assert_eq!(verdict.action, Action::Bypass);
        assert!(verdict.reason.contains("fail-open"));
        assert_eq!(policy.at_hello(&t, Some("other.test")).action, Action::Intercept);
        let mut off = Policy::new(&[], None, false).unwrap();
        assert!(!(0..10).any(|i| off.record_rejection("x", i)));
    }

    #[test]
    fn a_bypassed_name_is_bypassed_with_its_reason() {
        let mut policy = Policy::new(&[], None, true).unwrap();
        let t = tuple("198.18.0.2", 443);
        assert!(policy.bypass_name("mtls.test", "asks for a client certificate".into()));
        assert!(!policy.bypass_name("mtls.test", "again".into()));
        let verdict = policy.at_hello(&t, Some("mtls.test"));
        assert_eq!(verdict.action, Action::Bypass);
        assert_eq!(verdict.reason, "asks for a client certificate");
        assert_eq!(policy.at_hello(&t, Some("other.test")).action, Action::Intercept);
        assert!(policy.record_client_cert_request("other.test"));
        assert_eq!(policy.at_hello(&t, Some("other.test")).action, Action::Bypass);
        let mut blocking = Policy::new(&[], None, false).unwrap();
        assert!(
            !blocking.record_client_cert_request("other.test"),
            "tls.client_auth = block"
        );
        assert_eq!(blocking.at_hello(&t, Some("other.test")).action, Action::Intercept);
    }
}
