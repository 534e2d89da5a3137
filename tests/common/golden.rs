//! Golden `/metrics` fixtures: the families a source kind renders, compared
//! with a file in `tests/fixtures/`.
//!
//! A fixture has the *shape* of the selected families (name, TYPE, HELP
//! and the label names of their samples; no values) and, for the families
//! whose values follow from the test's input, the sample lines themselves
//! (sorted, without timestamps). After an intended change of the output,
//! regenerate the fixtures and review the diff:
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test --test golden
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Set to `1` to write the fixtures instead of comparing with them (not
/// `VITALS_*`: vitals reads those as configuration overrides).
pub const UPDATE_VAR: &str = "UPDATE_GOLDEN";

#[derive(Default)]
struct Family {
    kind: String,
    help: String,
    labels: BTreeSet<String>,
    samples: BTreeSet<String>,
}

/// One sample line split into (series name, label names, series text
/// without the value and timestamp, value).
fn split_sample(line: &str) -> Option<(String, Vec<String>, String, String)> {
    let (series, rest) = match line.find('{') {
        Some(open) if line[..open].chars().all(|c| !c.is_whitespace()) => {
            let close = line.rfind('}')?;
            (&line[..=close], &line[close + 1..])
        }
        _ => line.split_at(line.find(' ')?),
    };
    let value = rest.split_whitespace().next()?.to_string();
    let name = series.split('{').next()?.to_string();
    let mut labels = Vec::new();
    if let Some(inner) = series
        .strip_prefix(&name)
        .and_then(|s| s.strip_prefix('{'))
        .and_then(|s| s.strip_suffix('}'))
    {
        // Label values are quoted; a name runs to the `=` before a quote.
        let mut in_value = false;
        let mut escaped = false;
        let mut current = String::new();
        for c in inner.chars() {
            if in_value {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_value = false,
                    _ => {}
                }
            } else if c == '"' {
                in_value = true;
            } else if c == '=' {
                labels.push(current.trim().trim_start_matches(',').to_string());
                current.clear();
            } else {
                current.push(c);
            }
        }
    }
    Some((name, labels, series.to_string(), value))
}

/// The family a sample belongs to: its name, or the name without a
/// histogram/summary suffix.
fn family_of<'a>(families: &'a BTreeMap<String, Family>, name: &str) -> Option<&'a str> {
    if let Some((k, _)) = families.get_key_value(name) {
        return Some(k);
    }
    ["_bucket", "_sum", "_count", "_created"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find_map(|base| families.get_key_value(base).map(|(k, _)| k.as_str()))
}

fn parse(exposition: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_string()).or_default().help = help.to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_string()).or_default().kind = kind.to_string();
        }
    }
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels, series, value)) = split_sample(line) else {
            continue;
        };
        let family = family_of(&families, &name).unwrap_or(&name).to_string();
        let f = families.entry(family).or_default();
        f.labels.extend(labels);
        f.samples.insert(format!("{series} {value}"));
    }
    families
}

/// The fixture text of `exposition`: the shape of every family `shape`
/// selects, then the samples of every family `values` selects.
pub fn render(
    exposition: &str,
    shape: impl Fn(&str) -> bool,
    values: impl Fn(&str) -> bool,
) -> String {
    let families = parse(exposition);
    let mut out = String::from("# shape: family, TYPE, label names; HELP\n");
    for (name, f) in families.iter().filter(|(n, _)| shape(n)) {
        let labels: Vec<&str> = f.labels.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "{name} {} {{{}}}\n    {}\n",
            f.kind,
            labels.join(","),
            f.help
        ));
    }
    out.push_str("# samples (sorted, no timestamps)\n");
    for (_, f) in families.iter().filter(|(n, _)| values(n)) {
        for s in &f.samples {
            out.push_str(s);
            out.push('\n');
        }
    }
    out
}

/// The names of the families that have a sample with every one of `parts`
/// in its series text (e.g. `source="orders"`).
pub fn families_with(exposition: &str, parts: &[&str]) -> BTreeSet<String> {
    parse(exposition)
        .into_iter()
        .filter(|(_, f)| {
            f.samples
                .iter()
                .any(|s| parts.iter().all(|p| s.contains(p)))
        })
        .map(|(n, _)| n)
        .collect()
}

/// Path of fixture `name` in `tests/fixtures/`.
pub fn fixture_path(name: &str) -> PathBuf {
    super::process::root().join("tests/fixtures").join(name)
}

/// Compare `actual` with fixture `name`, or write it when
/// `UPDATE_GOLDEN=1`.
pub fn assert_golden(name: &str, actual: &str) {
    let path = fixture_path(name);
    if std::env::var(UPDATE_VAR).as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; write it with {UPDATE_VAR}=1 cargo test --test golden",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = diff_lines(&expected, actual);
        panic!(
            "/metrics differs from {} ({UPDATE_VAR}=1 rewrites it after an intended change):\n{}",
            path.display(),
            diff.join("\n")
        );
    }
}

/// Lines only in `expected` (`-`) or only in `actual` (`+`).
fn diff_lines(expected: &str, actual: &str) -> Vec<String> {
    let e: BTreeSet<&str> = expected.lines().collect();
    let a: BTreeSet<&str> = actual.lines().collect();
    e.difference(&a)
        .map(|l| format!("- {l}"))
        .chain(a.difference(&e).map(|l| format!("+ {l}")))
        .collect()
}

/// The families of a fixture text written by [`render`]: name → (the
/// `name TYPE {labels}` line, the HELP line).
fn fixture_families(text: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().filter(|l| !l.starts_with('#')).peekable();
    while let Some(line) = lines.next() {
        if line.starts_with(' ') {
            continue;
        }
        let help = lines
            .next_if(|l| l.starts_with(' '))
            .unwrap_or("")
            .to_string();
        let name = line.split(' ').next().unwrap_or("").to_string();
        out.insert(name, (line.to_string(), help));
    }
    out
}

/// Like [`assert_golden`] for a host-dependent shape (no samples part):
/// every family in `actual` must be in the fixture with the same TYPE,
/// HELP and label names; fixture families this host does not render (no
/// such hardware) are allowed, and a family without samples here passes
/// with any label names.
pub fn assert_golden_shape_on_host(name: &str, actual: &str) {
    let path = fixture_path(name);
    if std::env::var(UPDATE_VAR).as_deref() == Ok("1") {
        return assert_golden(name, actual);
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; write it with {UPDATE_VAR}=1 cargo test --test golden",
            path.display()
        )
    });
    let expected = fixture_families(&expected);
    let mut wrong = Vec::new();
    for (family, (line, help)) in fixture_families(actual) {
        match expected.get(&family) {
            None => wrong.push(format!("+ {line} (not in the fixture)")),
            Some((e_line, e_help)) => {
                let no_samples = line.ends_with(" {}");
                let same_type = e_line.split(' ').nth(1) == line.split(' ').nth(1);
                if (e_line != &line && !(no_samples && same_type)) || e_help != &help {
                    wrong.push(format!("- {e_line}\n    {e_help}\n+ {line}\n    {help}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "/metrics differs from {} ({UPDATE_VAR}=1 rewrites it after an intended change):\n{}",
        path.display(),
        wrong.join("\n")
    );
}

/// The names of every family in `exposition` (with or without samples).
pub fn families(exposition: &str) -> BTreeSet<String> {
    parse(exposition).into_keys().collect()
}
