//! Which servers we federate with: mode `open` | `allowlist` plus `allow`/`deny` rules.
//!
//! [`decide`] is pure and applies, in order:
//! 1. an IP literal is refused unless an `allow` rule other than `*` names it;
//! 2. a matching `deny` rule refuses;
//! 3. mode `open` allows;
//! 4. a matching `allow` rule allows;
//! 5. anything else is refused (not on the allowlist).
//!
//! The same decision guards inbound requests (before any key fetch), key fetches and
//! outbound traffic. Patterns: `*` (anything), `example.org` (exactly), `*.example.org`
//! (any name under it, not itself), `*` as a whole label elsewhere (one label); a pattern
//! with a port matches that port only (`127.0.0.2:8448`, `*.example.org:*`), one without
//! matches every port. Matching ignores ASCII case.

use serde::{Deserialize, Serialize};

use crate::ids::ServerName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Federate with anyone not denied.
    #[default]
    Open,
    /// Federate only with servers an `allow` rule names.
    Allowlist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

/// A server-name pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern(String);

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server pattern {0:?}: use `*`, `name`, `*.name`, optionally `:port` or `:*`")]
pub struct PatternError(String);

impl Pattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn split(&self) -> (&str, Option<&str>) {
        split_port(&self.0)
    }

    /// True when this pattern matches `name`.
    pub fn matches(&self, name: &ServerName) -> bool {
        if self.0 == "*" {
            return true;
        }
        let (host_pat, port_pat) = self.split();
        if let Some(port_pat) = port_pat {
            let port = name.port().map(|p| p.to_string());
            if port_pat != "*" && port.as_deref() != Some(port_pat) {
                return false;
            }
        }
        let host = name.host().to_ascii_lowercase();
        let host_pat = host_pat.to_ascii_lowercase();
        let h: Vec<&str> = host.split('.').collect();
        if let Some(suffix) = host_pat.strip_prefix("*.") {
            // One or more labels, then the suffix.
            let p: Vec<&str> = suffix.split('.').collect();
            return h.len() > p.len() && labels_match(&p, &h[h.len() - p.len()..]);
        }
        let p: Vec<&str> = host_pat.split('.').collect();
        p.len() == h.len() && labels_match(&p, &h)
    }

    fn is_catch_all(&self) -> bool {
        self.0 == "*"
    }
}

fn labels_match(pattern: &[&str], host: &[&str]) -> bool {
    pattern.iter().zip(host).all(|(p, h)| *p == "*" || p == h)
}

fn split_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        if let Some(end) = s.find(']') {
            return (&s[..=end], s[end + 1..].strip_prefix(':'));
        }
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

impl TryFrom<String> for Pattern {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, PatternError> {
        let bad = || PatternError(s.clone());
        if s == "*" {
            return Ok(Self(s));
        }
        if s.is_empty() || s.len() > 255 {
            return Err(bad());
        }
        let (host, port) = split_port(&s);
        if let Some(port) = port
            && port != "*"
            && !port.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return Err(bad());
        }
        if host.starts_with('[') {
            // An IPv6 literal: must be a valid server name as written.
            ServerName::try_from(host).map_err(|_| bad())?;
            return Ok(Self(s));
        }
        let body = host.strip_prefix("*.").unwrap_or(host);
        let ok = !body.is_empty()
            && body.split('.').all(|label| {
                label == "*"
                    || (!label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            });
        if ok { Ok(Self(s)) } else { Err(bad()) }
    }
}

impl TryFrom<&str> for Pattern {
    type Error = PatternError;
    fn try_from(s: &str) -> Result<Self, PatternError> {
        Self::try_from(s.to_owned())
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.0
    }
}

/// One rule: a pattern, allow or deny, and why (shown to admins and in 403 messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub pattern: Pattern,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Rule {
    pub fn allow(pattern: &str) -> Result<Self, PatternError> {
        Ok(Self {
            pattern: Pattern::try_from(pattern)?,
            action: Action::Allow,
            reason: None,
        })
    }

    pub fn deny(pattern: &str, reason: Option<&str>) -> Result<Self, PatternError> {
        Ok(Self {
            pattern: Pattern::try_from(pattern)?,
            action: Action::Deny,
            reason: reason.map(str::to_owned),
        })
    }
}

/// A snapshot of the federation policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
}

/// Why [`decide`] decided as it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// An IP literal that no specific allow rule names.
    IpLiteral,
    /// A deny rule matched (its pattern and reason).
    Denied {
        pattern: String,
        reason: Option<String>,
    },
    /// Mode `open`.
    Open,
    /// An allow rule matched.
    Allowed { pattern: String },
    /// Mode `allowlist` and no allow rule matched.
    NotAllowlisted,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::IpLiteral => f.write_str("IP literals are not allowed unless allowlisted"),
            Reason::Denied {
                pattern,
                reason: Some(r),
            } => write!(f, "denied by rule {pattern}: {r}"),
            Reason::Denied {
                pattern,
                reason: None,
            } => write!(f, "denied by rule {pattern}"),
            Reason::Open => f.write_str("federation is open"),
            Reason::Allowed { pattern } => write!(f, "allowed by rule {pattern}"),
            Reason::NotAllowlisted => f.write_str("not on the allowlist"),
        }
    }
}

/// Decides whether we federate with `server` under `policy` (see the module docs).
pub fn decide(server: &ServerName, policy: &Policy) -> Decision {
    let allow_rule = |specific_only: bool| {
        policy.rules.iter().find(|r| {
            r.action == Action::Allow
                && !(specific_only && r.pattern.is_catch_all())
                && r.pattern.matches(server)
        })
    };
    if server.is_ip_literal() && allow_rule(true).is_none() {
        return Decision {
            allowed: false,
            reason: Reason::IpLiteral,
        };
    }
    if let Some(rule) = policy
        .rules
        .iter()
        .find(|r| r.action == Action::Deny && r.pattern.matches(server))
    {
        return Decision {
            allowed: false,
            reason: Reason::Denied {
                pattern: rule.pattern.0.clone(),
                reason: rule.reason.clone(),
            },
        };
    }
    if policy.mode == Mode::Open {
        return Decision {
            allowed: true,
            reason: Reason::Open,
        };
    }
    match allow_rule(false) {
        Some(rule) => Decision {
            allowed: true,
            reason: Reason::Allowed {
                pattern: rule.pattern.0.clone(),
            },
        },
        None => Decision {
            allowed: false,
            reason: Reason::NotAllowlisted,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServerName {
        ServerName::try_from(s).unwrap()
    }

    fn pat(s: &str) -> Pattern {
        Pattern::try_from(s).unwrap()
    }

    #[test]
    fn patterns() {
        let cases = [
            ("*", "anything.org", true),
            ("example.org", "example.org", true),
            ("example.org", "EXAMPLE.org:8448", true),
            ("example.org", "chat.example.org", false),
            ("*.example.org", "chat.example.org", true),
            ("*.example.org", "a.b.example.org", true),
            ("*.example.org", "example.org", false),
            ("*.example.org", "badexample.org", false),
            ("*.example.org:8448", "chat.example.org:8448", true),
            ("*.example.org:8448", "chat.example.org", false),
            ("chat.*.org", "chat.x.org", true),
            ("chat.*.org", "chat.x.y.org", false),
            ("127.0.0.2:8448", "127.0.0.2:8448", true),
            ("127.0.0.2:8448", "127.0.0.2:9000", false),
            ("127.0.0.*", "127.0.0.3:9000", true),
            ("[::1]:*", "[::1]:8448", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(pat(p).matches(&name(n)), want, "{p} vs {n}");
        }
        for bad in ["", "a..b", "*.", "x:0", "x:y", "a b", "[::1"] {
            assert!(Pattern::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decision_order() {
        let open = Policy::default();
        assert!(decide(&name("a.org"), &open).allowed);
        // IP literals need a specific allow rule, even in open mode and with `*`.
        let d = decide(&name("127.0.0.2:8448"), &open);
        assert_eq!(d.reason, Reason::IpLiteral);
        let star = Policy {
            mode: Mode::Allowlist,
            rules: vec![Rule::allow("*").unwrap()],
        };
        assert!(!decide(&name("10.0.0.1"), &star).allowed);
        assert!(decide(&name("b.org"), &star).allowed);
        let ips = Policy {
            mode: Mode::Open,
            rules: vec![
                Rule::allow("127.0.0.*").unwrap(),
                Rule::deny("127.0.0.3:*", Some("noisy")).unwrap(),
            ],
        };
        assert!(decide(&name("127.0.0.2:8448"), &ips).allowed);
        // Deny beats allow.
        let d = decide(&name("127.0.0.3:8448"), &ips);
        assert!(!d.allowed);
        assert_eq!(d.reason.to_string(), "denied by rule 127.0.0.3:*: noisy");

        let list = Policy {
            mode: Mode::Allowlist,
            rules: vec![
                Rule::allow("*.friends.org").unwrap(),
                Rule::deny("evil.friends.org", None).unwrap(),
            ],
        };
        assert!(decide(&name("chat.friends.org"), &list).allowed);
        assert!(!decide(&name("evil.friends.org"), &list).allowed);
        assert_eq!(
            decide(&name("stranger.org"), &list).reason,
            Reason::NotAllowlisted
        );
        // Open mode with a deny rule.
        let open_deny = Policy {
            mode: Mode::Open,
            rules: vec![Rule::deny("*.spam.org", Some("spam")).unwrap()],
        };
        assert!(!decide(&name("x.spam.org"), &open_deny).allowed);
        assert!(decide(&name("spam.org"), &open_deny).allowed);
    }

    #[test]
    fn serde_shape() {
        let p: Policy = serde_json::from_str(
            r#"{"mode":"allowlist","rules":[{"pattern":"*.a.org","action":"allow"},
                {"pattern":"b.org","action":"deny","reason":"spam"}]}"#,
        )
        .unwrap();
        assert_eq!(p.rules.len(), 2);
        assert!(serde_json::from_str::<Rule>(r#"{"pattern":"a b","action":"allow"}"#).is_err());
    }
}
