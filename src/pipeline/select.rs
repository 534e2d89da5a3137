//! Metric selectors: a family name regex plus label matchers.

use std::collections::BTreeMap;

use crate::config::Pattern;
use crate::model::Labels;

/// True when `family` matches `metric` and every matcher matches the label
/// of that name (an absent label matches as the empty string).
pub fn matches(
    metric: &Pattern,
    matchers: &BTreeMap<String, Pattern>,
    family: &str,
    labels: &Labels,
) -> bool {
    if !metric.is_match(family) {
        return false;
    }
    if matchers.is_empty() {
        return true;
    }
    let pairs = labels.pairs();
    matchers.iter().all(|(name, re)| {
        let v = pairs
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str());
        re.is_match(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_label_matchers_must_all_match() {
        let metric = Pattern::new("vitals_cpu_.*").unwrap();
        let mut m = BTreeMap::new();
        m.insert("cpu".to_string(), Pattern::new("0|1").unwrap());
        let l0 = Labels::from_pairs(&[("cpu", "0")]);
        let l7 = Labels::from_pairs(&[("cpu", "7")]);
        assert!(matches(&metric, &m, "vitals_cpu_usage_ratio", &l0));
        assert!(!matches(&metric, &m, "vitals_cpu_usage_ratio", &l7));
        assert!(!matches(&metric, &m, "vitals_memory_bytes", &l0));
        assert!(!matches(
            &metric,
            &m,
            "vitals_cpu_usage_ratio",
            &Labels::empty()
        ));
    }
}
