//! Per-channel label matchers in Alertmanager's syntax: `name="value"`,
//! `name!="value"`, `name=~"regex"`, `name!~"regex"` (regexes anchored).

use std::collections::BTreeMap;

use super::payload::Notification;

#[derive(Debug, Clone)]
pub struct Matcher {
    name: String,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Re(regex::Regex),
    NotRe(regex::Regex),
}

impl Matcher {
    pub fn parse(s: &str) -> Result<Matcher, String> {
        let s = s.trim();
        let pos = s
            .find(['=', '!'])
            .ok_or_else(|| format!("matcher {s:?} has no operator (=, !=, =~, !~)"))?;
        let name = s[..pos].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("matcher {s:?} has an invalid label name"));
        }
        let rest = &s[pos..];
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            ("=~", v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            ("!~", v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            ("!=", v)
        } else if let Some(v) = rest.strip_prefix('=') {
            ("=", v)
        } else {
            return Err(format!("matcher {s:?} has an invalid operator"));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .to_string();
        let re = |v: &str| {
            regex::Regex::new(&format!("^(?:{v})$"))
                .map_err(|e| format!("matcher {s:?}: invalid regex: {}", one_line(&e.to_string())))
        };
        let op = match op {
            "=" => Op::Eq(value),
            "!=" => Op::Ne(value),
            "=~" => Op::Re(re(&value)?),
            _ => Op::NotRe(re(&value)?),
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match &self.op {
            Op::Eq(x) => v == x,
            Op::Ne(x) => v != x,
            Op::Re(r) => r.is_match(v),
            Op::NotRe(r) => !r.is_match(v),
        }
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// True when some alert of the group satisfies every matcher (an empty
/// list matches everything).
pub fn matches_all(matchers: &[Matcher], n: &Notification) -> bool {
    matchers.is_empty()
        || n.alerts
            .iter()
            .any(|a| matchers.iter().all(|m| m.matches(&a.labels)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let l = labels(&[("severity", "critical"), ("team", "db")]);
        assert!(Matcher::parse("severity=\"critical\"").unwrap().matches(&l));
        assert!(Matcher::parse("severity = critical").unwrap().matches(&l));
        assert!(
            !Matcher::parse("severity!=\"critical\"")
                .unwrap()
                .matches(&l)
        );
        assert!(Matcher::parse("team=~\"db|ops\"").unwrap().matches(&l));
        assert!(!Matcher::parse("team!~\"d.*\"").unwrap().matches(&l));
        assert!(Matcher::parse("missing=\"\"").unwrap().matches(&l));
        assert!(Matcher::parse("bad").is_err());
        assert!(Matcher::parse("x=~\"(\"").is_err());
    }
}
