//! Event rules: per-event conditions such as
//! `amount > 100000 and currency == "INR"` evaluated on every event a
//! business source reads (a webhook event, a log line). A hit increments
//! `vitals_rule_hits_total{source,rule}` and publishes an [`Event`] of kind
//! `rule` on the [`EventBus`].
//!
//! The condition language is deliberately tiny:
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | field op literal | field
//! op      := == | != | > | >= | < | <= | =~
//! literal := number | "string" | 'string' | true | false
//! ```
//!
//! A bare `field` is true when the field is present. Numeric comparisons
//! are false when the field is absent or not a number; `=~` matches a
//! regex (unanchored) against the field's text.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use super::record::{FieldPath, Record, Value};
use crate::events::{Event, EventBus, Severity};
use crate::model::{FamilyMeta, Labels, MetricKind, Sample};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Match,
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone)]
pub enum Literal {
    Num(f64),
    Str(String),
    Bool(bool),
    Regex(regex::Regex),
}

/// A parsed condition.
#[derive(Debug, Clone)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Exists(FieldPath),
    Cmp(FieldPath, Op, Literal),
}

/// Why a condition did not parse; the message names the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at character {at}")]
pub struct ParseError {
    pub message: String,
    pub at: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Str(String),
    Op(Op),
    And,
    Or,
    Not,
    True,
    False,
    LParen,
    RParen,
}

fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let err = |message: &str, at: usize| ParseError {
        message: message.into(),
        at,
    };
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                out.push((Tok::LParen, i));
                i += 1;
            }
            b')' => {
                out.push((Tok::RParen, i));
                i += 1;
            }
            b'"' | b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(err("unterminated string", start)),
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let next = src[i + 1..].chars().next();
                            match next {
                                Some(ch) => {
                                    s.push(ch);
                                    i += 1 + ch.len_utf8();
                                }
                                None => return Err(err("unterminated string", start)),
                            }
                        }
                        Some(_) => {
                            let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                            s.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push((Tok::Str(s), start));
            }
            b'=' | b'!' | b'<' | b'>' | b'&' | b'|' => {
                let two = src.get(i..i + 2).unwrap_or("");
                let (tok, len) = match two {
                    "==" => (Tok::Op(Op::Eq), 2),
                    "!=" => (Tok::Op(Op::Ne), 2),
                    ">=" => (Tok::Op(Op::Ge), 2),
                    "<=" => (Tok::Op(Op::Le), 2),
                    "=~" => (Tok::Op(Op::Match), 2),
                    "&&" => (Tok::And, 2),
                    "||" => (Tok::Or, 2),
                    _ => match c {
                        b'>' => (Tok::Op(Op::Gt), 1),
                        b'<' => (Tok::Op(Op::Lt), 1),
                        b'!' => (Tok::Not, 1),
                        _ => return Err(err("unknown operator", start)),
                    },
                };
                out.push((tok, start));
                i += len;
            }
            b'0'..=b'9' | b'-' | b'+' => {
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_digit()
                        || b[i] == b'.'
                        || b[i] == b'_'
                        || b[i] == b'e'
                        || b[i] == b'E'
                        || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                let text: String = src[start..i].chars().filter(|&c| c != '_').collect();
                let n = text
                    .parse::<f64>()
                    .map_err(|_| err("invalid number", start))?;
                out.push((Tok::Num(n), start));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.')
                {
                    i += 1;
                }
                let word = &src[start..i];
                let tok = match word {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    "true" => Tok::True,
                    "false" => Tok::False,
                    _ => Tok::Ident(word.to_string()),
                };
                out.push((tok, start));
            }
            _ => return Err(err("unexpected character", start)),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(_, a)| *a)
    }

    fn err(&self, message: &str) -> ParseError {
        ParseError {
            message: message.into(),
            at: self.at(),
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(self.err("expected `)`"));
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Ident(name)) => {
                let field = FieldPath::new(&name).map_err(|m| self.err(&m))?;
                self.pos += 1;
                let op = match self.peek() {
                    Some(Tok::Op(op)) => *op,
                    _ => return Ok(Expr::Exists(field)),
                };
                self.pos += 1;
                let lit = match self.peek().cloned() {
                    Some(Tok::Num(n)) => Literal::Num(n),
                    Some(Tok::Str(s)) if op == Op::Match => Literal::Regex(
                        regex::Regex::new(&s).map_err(|_| self.err("invalid regex"))?,
                    ),
                    Some(Tok::Str(s)) => Literal::Str(s),
                    Some(Tok::True) => Literal::Bool(true),
                    Some(Tok::False) => Literal::Bool(false),
                    _ => return Err(self.err("expected a number, a string, true or false")),
                };
                match (&lit, op) {
                    (Literal::Regex(_), _) | (Literal::Num(_), _) => {}
                    (_, Op::Match) => return Err(self.err("`=~` needs a string regex")),
                    (_, Op::Eq | Op::Ne) => {}
                    _ => return Err(self.err("`<`, `<=`, `>` and `>=` need a number")),
                }
                self.pos += 1;
                Ok(Expr::Cmp(field, op, lit))
            }
            _ => Err(self.err("expected a field name, `not` or `(`")),
        }
    }
}

impl Expr {
    /// Parse a condition.
    pub fn parse(src: &str) -> Result<Expr, ParseError> {
        let toks = tokenize(src)?;
        let mut p = Parser {
            toks,
            pos: 0,
            end: src.len(),
        };
        let e = p.or()?;
        if p.pos != p.toks.len() {
            return Err(p.err("unexpected token"));
        }
        Ok(e)
    }

    /// Evaluate on one record.
    pub fn eval(&self, r: &dyn Record) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(r) || b.eval(r),
            Expr::And(a, b) => a.eval(r) && b.eval(r),
            Expr::Not(a) => !a.eval(r),
            Expr::Exists(f) => r.get(f).is_some(),
            Expr::Cmp(f, op, lit) => {
                let Some(v) = r.get(f) else {
                    // An absent field is "not equal" to anything.
                    return *op == Op::Ne;
                };
                compare(&v, *op, lit)
            }
        }
    }
}

fn compare(v: &Value<'_>, op: Op, lit: &Literal) -> bool {
    match lit {
        Literal::Num(n) => {
            let Some(x) = v.as_f64() else {
                return op == Op::Ne;
            };
            match op {
                Op::Eq => x == *n,
                Op::Ne => x != *n,
                Op::Gt => x > *n,
                Op::Ge => x >= *n,
                Op::Lt => x < *n,
                Op::Le => x <= *n,
                Op::Match => false,
            }
        }
        Literal::Str(s) => {
            let eq = match v {
                Value::Str(t) => t == s,
                other => {
                    let mut t = String::new();
                    other.write_str(&mut t);
                    t == *s
                }
            };
            if op == Op::Ne { !eq } else { eq }
        }
        Literal::Bool(b) => {
            let eq = match v {
                Value::Bool(x) => x == b,
                Value::Str(t) => t.as_ref() == if *b { "true" } else { "false" },
                Value::Num(_) => false,
            };
            if op == Op::Ne { !eq } else { eq }
        }
        Literal::Regex(re) => match v {
            Value::Str(t) => re.is_match(t),
            other => {
                let mut t = String::new();
                other.write_str(&mut t);
                re.is_match(&t)
            }
        },
    }
}

/// A condition as written in the configuration, parsed when it is read so
/// a bad one is reported with its key.
#[derive(Clone)]
pub struct Condition {
    source: String,
    expr: Expr,
}

impl Condition {
    pub fn new(source: &str) -> Result<Self, ParseError> {
        Ok(Condition {
            source: source.to_string(),
            expr: Expr::parse(source)?,
        })
    }

    pub fn eval(&self, r: &dyn Record) -> bool {
        self.expr.eval(r)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Condition::new(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid condition {s:?}: {e}")))
    }
}

fn default_severity() -> RuleSeverity {
    RuleSeverity::Warning
}

/// Severity as written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleSeverity {
    Info,
    Warning,
    Critical,
}

impl From<RuleSeverity> for Severity {
    fn from(s: RuleSeverity) -> Self {
        match s {
            RuleSeverity::Info => Severity::Info,
            RuleSeverity::Warning => Severity::Warning,
            RuleSeverity::Critical => Severity::Critical,
        }
    }
}

/// One event rule (`[[sources.rules]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Value of the `rule` label; a bounded, configured set.
    pub name: String,
    /// The condition, e.g. `amount > 100000 and currency == "INR"`.
    pub when: Condition,
    #[serde(default = "default_severity")]
    pub severity: RuleSeverity,
    /// Field whose value the published event carries (e.g. `amount`);
    /// without it the event's value is 1.
    #[serde(default)]
    pub value: Option<FieldPath>,
    /// Fields copied into the published event's labels (e.g. `id`,
    /// `merchant`). Events are not series, so these may be unbounded.
    #[serde(default)]
    pub labels: Vec<FieldPath>,
}

/// Name of the rule hit counter.
pub const RULE_HITS: &str = "vitals_rule_hits_total";

/// The rules of one source, with their hit counts.
pub struct RuleSet {
    source: Arc<str>,
    rules: Vec<RuleState>,
    family: Arc<FamilyMeta>,
}

struct RuleState {
    cfg: RuleConfig,
    labels: Labels,
    hits: u64,
    dirty: bool,
}

impl RuleSet {
    pub fn new(source: &str, rules: &[RuleConfig]) -> Self {
        RuleSet {
            source: source.into(),
            rules: rules
                .iter()
                .map(|cfg| RuleState {
                    labels: Labels::from_pairs(&[("source", source), ("rule", cfg.name.as_str())]),
                    cfg: cfg.clone(),
                    hits: 0,
                    dirty: false,
                })
                .collect(),
            family: FamilyMeta::new(
                RULE_HITS,
                MetricKind::Counter,
                "Events that matched an event rule, by source and rule.",
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluate every rule on `record`; hits are counted and their events
    /// appended to `events` (publish them with [`publish`]).
    pub fn eval(&mut self, record: &dyn Record, timestamp_ms: i64, events: &mut Vec<Event>) {
        for rule in &mut self.rules {
            if !rule.cfg.when.eval(record) {
                continue;
            }
            rule.hits += 1;
            rule.dirty = true;
            let value = rule
                .cfg
                .value
                .as_ref()
                .and_then(|f| record.get(f))
                .and_then(|v| v.as_f64())
                .unwrap_or(1.0);
            let mut pairs: Vec<(String, String)> = Vec::with_capacity(rule.cfg.labels.len());
            for f in &rule.cfg.labels {
                if let Some(v) = record.get(f) {
                    let mut s = String::new();
                    v.write_str(&mut s);
                    pairs.push((f.as_str().replace('.', "_"), s));
                }
            }
            events.push(Event {
                kind: "rule",
                severity: rule.cfg.severity.into(),
                timestamp_ms,
                source: self.source.to_string(),
                metric: RULE_HITS.to_string(),
                labels: Labels::from_pairs(&pairs).as_str().to_string(),
                value,
                expected: None,
                lower: None,
                upper: None,
                score: 1.0,
                reason: rule.cfg.name.clone(),
            });
        }
    }

    /// Samples of the hit counters that changed since the last call.
    pub fn flush(&mut self, timestamp_ms: i64, out: &mut Vec<Sample>) {
        for rule in &mut self.rules {
            if rule.dirty {
                rule.dirty = false;
                out.push(Sample {
                    family: self.family.clone(),
                    labels: rule.labels.clone(),
                    value: rule.hits as f64,
                    timestamp_ms,
                });
            }
        }
    }

    /// Current hit counts of every rule, for start-up (so each rule's
    /// counter exists at 0 before its first hit).
    pub fn all(&self, timestamp_ms: i64, out: &mut Vec<Sample>) {
        for rule in &self.rules {
            out.push(Sample {
                family: self.family.clone(),
                labels: rule.labels.clone(),
                value: rule.hits as f64,
                timestamp_ms,
            });
        }
    }
}

/// Publish rule events on the bus and log them (rate-limited per source).
pub fn publish(
    events: Vec<Event>,
    bus: &EventBus,
    telemetry: &crate::telemetry::Telemetry,
    source: &str,
) {
    for event in events {
        if let Some(suppressed) = telemetry.should_log(source, "rule_hit") {
            tracing::info!(
                source,
                rule = %event.reason,
                severity = ?event.severity,
                value = event.value,
                labels = %event.labels,
                suppressed,
                "Event rule matched."
            );
        }
        bus.publish(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::record::JsonRecord;

    fn eval(expr: &str, json: &str) -> bool {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        Expr::parse(expr).unwrap().eval(&JsonRecord(&v))
    }

    #[test]
    fn fraud_condition_matches_only_large_inr_amounts() {
        let e = r#"amount > 100000 and currency == "INR""#;
        assert!(eval(e, r#"{"amount":125000,"currency":"INR"}"#));
        assert!(!eval(e, r#"{"amount":100000,"currency":"INR"}"#));
        assert!(!eval(e, r#"{"amount":125000,"currency":"USD"}"#));
        assert!(!eval(e, r#"{"currency":"INR"}"#));
        assert!(!eval(e, r#"{"amount":"1_25_000"}"#));
        assert!(eval(e, r#"{"amount":"125000.5","currency":"INR"}"#));
    }

    #[test]
    fn precedence_parentheses_not_and_regex() {
        let j = r#"{"status":"failed","amount":5,"merchant":"m-9","flag":true}"#;
        assert!(eval(
            r#"status == "ok" or status == "failed" and amount < 10"#,
            j
        ));
        assert!(!eval(
            r#"(status == "ok" or status == "failed") and amount > 10"#,
            j
        ));
        assert!(eval(r#"not status == "ok""#, j));
        assert!(eval(r#"merchant =~ "^m-[0-9]+$" && flag == true"#, j));
        assert!(eval(r#"missing != "x""#, j));
        assert!(!eval(r#"missing == "x""#, j));
        assert!(eval("status", j));
        assert!(!eval("missing", j));
        assert!(eval("amount >= 1e0 and amount <= 5", j));
    }

    #[test]
    fn bad_conditions_name_the_position() {
        for (src, at) in [
            ("amount >", 8),
            ("amount > \"x\"", 9),
            ("(a == 1", 7),
            ("a == 1 b", 7),
            ("a === 1", 4),
            ("a =~ \"(\"", 5),
            ("\"x", 0),
        ] {
            let err = Expr::parse(src).unwrap_err();
            assert_eq!(err.at, at, "{src}: {err}");
        }
    }

    #[test]
    fn rule_hits_count_and_publish_events() {
        let cfg: RuleConfig = serde_json::from_value(serde_json::json!({
            "name": "potential_fraud",
            "when": "amount > 100000 and currency == \"INR\"",
            "severity": "critical",
            "value": "amount",
            "labels": ["id", "merchant"],
        }))
        .unwrap();
        let mut rules = RuleSet::new("payments", &[cfg]);
        let mut events = Vec::new();
        for json in [
            r#"{"id":"t-1","amount":125000,"currency":"INR","merchant":"m-9"}"#,
            r#"{"id":"t-2","amount":10,"currency":"INR","merchant":"m-9"}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            rules.eval(&JsonRecord(&v), 7, &mut events);
        }
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.kind, e.severity, e.value),
            ("rule", Severity::Critical, 125000.0)
        );
        assert_eq!(e.labels, r#"{id="t-1",merchant="m-9"}"#);
        assert_eq!(e.reason, "potential_fraud");
        let mut samples = Vec::new();
        rules.flush(7, &mut samples);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(
            samples[0].labels.as_str(),
            r#"{rule="potential_fraud",source="payments"}"#
        );
        samples.clear();
        rules.flush(8, &mut samples);
        assert!(samples.is_empty());
    }
}
