//! Topic patterns: MQTT topic filters whose `+name` / `#name` levels capture labels.

use crate::payload::mapping::valid_label_name;

/// One segment of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    /// `+`, capturing into label slot `Some(i)`.
    Plus(Option<usize>),
    /// `#` (last only), capturing the rest into label slot `Some(i)`.
    Hash(Option<usize>),
}

/// A parsed topic filter with label captures.
#[derive(Debug, Clone)]
pub(super) struct TopicPattern {
    segs: Vec<Seg>,
    /// Captured label names, by slot.
    pub(super) labels: Vec<String>,
    /// What is sent to the broker (captures stripped, `$share/` kept).
    pub(super) filter: String,
}

impl TopicPattern {
    pub(super) fn parse(text: &str) -> Result<TopicPattern, String> {
        let (share, rest) = match text.strip_prefix("$share/") {
            Some(r) => match r.split_once('/') {
                Some((group, rest)) if !group.is_empty() && !group.contains(['+', '#']) => {
                    (Some(group), rest)
                }
                _ => return Err(format!("{text:?}: expected $share/<group>/<filter>")),
            },
            None => (None, text),
        };
        if rest.is_empty() {
            return Err("topic filter must not be empty".into());
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut labels = Vec::new();
        let mut filter = String::new();
        if let Some(g) = share {
            filter.push_str("$share/");
            filter.push_str(g);
            filter.push('/');
        }
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                filter.push('/');
            }
            let capture = |name: &str, labels: &mut Vec<String>| -> Result<Option<usize>, String> {
                if name.is_empty() {
                    return Ok(None);
                }
                if !valid_label_name(name) {
                    return Err(format!("{text:?}: {name:?} is not a valid label name"));
                }
                if labels.iter().any(|l| l == name) {
                    return Err(format!("{text:?}: label {name:?} is captured twice"));
                }
                labels.push(name.to_string());
                Ok(Some(labels.len() - 1))
            };
            if let Some(name) = p.strip_prefix('+') {
                segs.push(Seg::Plus(capture(name, &mut labels)?));
                filter.push('+');
            } else if let Some(name) = p.strip_prefix('#') {
                if i + 1 != parts.len() {
                    return Err(format!("{text:?}: `#` must be the last level"));
                }
                segs.push(Seg::Hash(capture(name, &mut labels)?));
                filter.push('#');
            } else if p.contains(['+', '#']) {
                return Err(format!(
                    "{text:?}: `+` and `#` must start a level (`+name` captures a label)"
                ));
            } else {
                segs.push(Seg::Lit((*p).into()));
                filter.push_str(p);
            }
        }
        Ok(TopicPattern {
            segs,
            labels,
            filter,
        })
    }

    /// Match `topic`; on success call `capture(slot, value)` for captures.
    pub(super) fn matches(&self, topic: &str, mut capture: impl FnMut(usize, &str)) -> bool {
        let mut rest = Some(topic);
        for seg in &self.segs {
            if let Seg::Hash(slot) = seg {
                // `#` also matches the parent level (`a/#` matches `a`).
                if let (Some(slot), Some(r)) = (slot, rest) {
                    capture(*slot, r);
                }
                return true;
            }
            let Some(r) = rest else { return false };
            let (level, next) = match r.find('/') {
                Some(i) => (&r[..i], Some(&r[i + 1..])),
                None => (r, None),
            };
            match seg {
                Seg::Lit(l) if l.as_ref() == level => {}
                Seg::Lit(_) => return false,
                Seg::Plus(slot) => {
                    if let Some(slot) = slot {
                        capture(*slot, level);
                    }
                }
                // Handled before splitting the level.
                Seg::Hash(_) => return true,
            }
            rest = next;
        }
        rest.is_none()
    }
}

/// Match `topic` against a subscription's `topic` pattern as the source
/// does: `Ok(Some(labels))` with the captured labels when it matches,
/// `Ok(None)` when not, `Err` when the pattern is invalid. Used by the fuzz
/// targets and the corpus replay test.
pub fn match_topic(pattern: &str, topic: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let p = TopicPattern::parse(pattern)?;
    let mut values = vec![String::new(); p.labels.len()];
    if !p.matches(topic, |slot, v| values[slot] = v.to_string()) {
        return Ok(None);
    }
    Ok(Some(p.labels.iter().cloned().zip(values).collect()))
}
