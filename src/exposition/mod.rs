//! The one writer of `/metrics`, in the two formats chosen per scrape from
//! the `Accept` header: the Prometheus text format 0.0.4 and OpenMetrics 1.0.
//!
//! The other parts hand it typed state and write no text themselves: the
//! store its families and series ([`crate::store::Store::families`]), the
//! detector state kept beside each series
//! ([`crate::detect::live::SeriesDetector::anomaly`]), the self-telemetry
//! its registry's values ([`crate::telemetry::Telemetry::gather`]).
//! [`write_scrape`] writes one scrape from them: the store's families
//! ([`families`]), the anomaly families, then the self-metrics ([`own`]);
//! [`text`] holds the value and label escapes every line is made of.
//!
//! Every part writes through one [`Writer`], which owns the differences
//! between the formats and makes sure no family is written twice:
//!
//! | | text 0.0.4 | OpenMetrics 1.0 |
//! |---|---|---|
//! | counter family name | `x_total` | `x` (samples stay `x_total`) |
//! | `# UNIT` | — | from the name's base-unit suffix (`_seconds`, `_bytes`, …) |
//! | `x_created` | — | where the start of the count is known (self-metrics) |
//! | HELP escapes | `\\`, `\n` | `\\`, `\n`, `\"` |
//! | end | — | `# EOF` |
//!
//! A counter whose name does not end in `_total` is written as `unknown`
//! in OpenMetrics, so its series keep their name in both formats.

pub mod families;
pub mod own;
pub mod text;

use parking_lot::RwLock;
use prometheus::proto::MetricFamily;
use rustc_hash::FxHashMap;

use crate::store::Store;

pub use families::write_store;

/// Content type of the Prometheus text exposition format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics 1.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition format of one scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics when it ranks
    /// `application/openmetrics-text` (version 1.0.0, 0.0.1 or none) above
    /// every media type the text format answers (`text/plain`, `text/*`,
    /// `*/*`); text otherwise, including ties and a missing header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut om = 0.0f32;
        let mut text = 0.0f32;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version: Option<String> = None;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0f32).clamp(0.0, 1.0),
                    "version" => version = Some(v.to_string()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if matches!(version.as_deref(), None | Some("1.0.0") | Some("0.0.1")) =>
                {
                    om = om.max(q)
                }
                "text/plain" if matches!(version.as_deref(), None | Some("0.0.4")) => {
                    text = text.max(q)
                }
                "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om > text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Type of a family as the exposition writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
    Summary,
    Untyped,
}

impl From<crate::model::MetricKind> for Kind {
    fn from(k: crate::model::MetricKind) -> Self {
        match k {
            crate::model::MetricKind::Gauge => Kind::Gauge,
            crate::model::MetricKind::Counter => Kind::Counter,
            crate::model::MetricKind::Histogram => Kind::Histogram,
        }
    }
}

/// Base units a name may end with (Prometheus' naming conventions); the
/// OpenMetrics `# UNIT` line is written for these only.
const UNITS: [&str; 12] = [
    "seconds", "bytes", "celsius", "ratio", "volts", "amperes", "joules", "grams", "meters",
    "hertz", "watts", "kelvin",
];

/// The base unit a family name ends with, if any.
pub fn unit_of(name: &str) -> Option<&'static str> {
    UNITS.iter().copied().find(|u| {
        name.len() > u.len() + 1
            && name.ends_with(u)
            && name.as_bytes()[name.len() - u.len() - 1] == b'_'
    })
}

/// Writes one exposition into a string, in one format, each family once.
pub struct Writer<'a> {
    out: &'a mut String,
    format: Format,
    /// Family names (as written in HELP/TYPE) already written, with their
    /// type.
    written: FxHashMap<Box<str>, Kind>,
    /// Family names a later part writes (the self-metrics); an earlier part
    /// that has a family of the same name leaves it out.
    reserved: FxHashMap<Box<str>, Kind>,
    /// Families left out because their name was taken, in order.
    skipped: Vec<String>,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut String, format: Format) -> Self {
        Writer {
            out,
            format,
            written: FxHashMap::default(),
            reserved: FxHashMap::default(),
            skipped: Vec::new(),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Reserve a family (named as its samples are, e.g. `x_total`) for a
    /// later [`Writer::family`] call that passes `reserved = true`.
    pub fn reserve(&mut self, name: &str, kind: Kind) {
        let header = self.header_name(name, kind).into();
        self.reserved.insert(header, kind);
    }

    /// The family name written in HELP/TYPE for a family whose samples are
    /// named `name` (histograms: the base name).
    fn header_name<'n>(&self, name: &'n str, kind: Kind) -> &'n str {
        match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        }
    }

    /// Start the family `name` (a counter with its `_total`, a histogram by
    /// its base name): write HELP, TYPE and (OpenMetrics) UNIT. Returns
    /// false, writing nothing, when a family of that name was already
    /// written or is reserved for a later part: the caller then writes none
    /// of its samples.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> bool {
        self.family_in(name, kind, help, false)
    }

    /// [`Writer::family`] for the part that reserved the name.
    pub fn reserved_family(&mut self, name: &str, kind: Kind, help: &str) -> bool {
        self.family_in(name, kind, help, true)
    }

    fn family_in(&mut self, name: &str, kind: Kind, help: &str, owner: bool) -> bool {
        let om = self.format == Format::OpenMetrics;
        // OpenMetrics counters are named without `_total`; one without it
        // is written as `unknown` so its samples keep their name.
        let taken_by = |w: &Self, header: &str| {
            w.written
                .get(header)
                .or_else(|| (!owner).then(|| w.reserved.get(header)).flatten())
                .copied()
        };
        let taken = |w: &Self, header: &str| taken_by(w, header).is_some();
        let (mut header, mut kind) = match (om, kind) {
            (true, Kind::Counter) => match name.strip_suffix("_total") {
                Some(base) => (base, Kind::Counter),
                None => (name, Kind::Untyped),
            },
            _ => (name, kind),
        };
        // A histogram `x` and a counter `x_total` are two families in the
        // text format but one name in OpenMetrics: the counter is then
        // written as `unknown` under its full name (same series). Not when
        // the name is another counter's: its samples are `x_total` too.
        if om
            && kind == Kind::Counter
            && taken_by(self, header).is_some_and(|k| k != Kind::Counter)
            && !taken(self, name)
        {
            (header, kind) = (name, Kind::Untyped);
        }
        if taken(self, header) {
            self.skipped.push(name.to_string());
            return false;
        }
        self.written.insert(header.into(), kind);
        let out = &mut *self.out;
        out.push_str("# HELP ");
        out.push_str(header);
        out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '"' if om => out.push_str("\\\""),
                c => out.push(c),
            }
        }
        out.push_str("\n# TYPE ");
        out.push_str(header);
        out.push(' ');
        out.push_str(match (kind, om) {
            (Kind::Gauge, _) => "gauge",
            (Kind::Counter, _) => "counter",
            (Kind::Histogram, _) => "histogram",
            (Kind::Summary, _) => "summary",
            (Kind::Untyped, false) => "untyped",
            (Kind::Untyped, true) => "unknown",
        });
        out.push('\n');
        if om && let Some(unit) = unit_of(header) {
            out.push_str("# UNIT ");
            out.push_str(header);
            out.push(' ');
            out.push_str(unit);
            out.push('\n');
        }
        true
    }

    /// The string samples are appended to (after [`Writer::family`]).
    pub fn out(&mut self) -> &mut String {
        self.out
    }

    /// Write one sample line `name{labels} value`; `labels` is a rendered
    /// label set (`{a="x"}` or empty).
    pub fn sample(&mut self, name: &str, labels: &str, value: f64) {
        let out = &mut *self.out;
        out.push_str(name);
        out.push_str(labels);
        out.push(' ');
        text::write_value(value, out);
        out.push('\n');
    }

    /// OpenMetrics only: the `<base>_created` sample of a counter or
    /// histogram `name` (a counter with its `_total`): when its count
    /// started, in Unix seconds. Nothing in the text format.
    pub fn created(&mut self, name: &str, labels: &str, unix_seconds: f64) {
        if self.format != Format::OpenMetrics {
            return;
        }
        let base = name.strip_suffix("_total").unwrap_or(name);
        let out = &mut *self.out;
        out.push_str(base);
        out.push_str("_created");
        out.push_str(labels);
        out.push(' ');
        text::write_value(unix_seconds, out);
        out.push('\n');
    }

    /// Families left out because a family of the same name was written.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// End the exposition (`# EOF` in OpenMetrics).
    pub fn finish(self) -> Vec<String> {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.skipped
    }
}

/// Write one scrape of `store` and vitals' own metrics `own` (from
/// [`crate::telemetry::Telemetry::gather`], counting since `started`, Unix
/// seconds) into `out` (appended) in `format`, each family once: a store
/// family named like a self-metric is left out, the self-metric is
/// written. The store's read lock is held only while its part is written.
/// Returns the names of the families left out, in order.
pub fn write_scrape(
    store: &RwLock<Store>,
    own: &[MetricFamily],
    started: f64,
    format: Format,
    out: &mut String,
) -> Vec<String> {
    let mut w = Writer::new(out, format);
    own::reserve(own, &mut w);
    write_store(&store.read(), &mut w);
    own::write(own, started, &mut w);
    w.finish()
}

/// The store's families and its anomaly families in the text format
/// (for checks, tests and benchmarks).
pub fn store_text(store: &Store, out: &mut String) {
    let mut w = Writer::new(out, Format::Text);
    write_store(store, &mut w);
    w.finish();
}

/// Every self-metric of `telemetry` in the text format (for checks and
/// tests).
pub fn own_text(telemetry: &crate::telemetry::Telemetry) -> String {
    let families = telemetry.gather();
    let mut text = String::new();
    let mut w = Writer::new(&mut text, Format::Text);
    own::write(&families, telemetry.started(), &mut w);
    w.finish();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_accept_header() {
        // What Prometheus 2.x sends.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // Text preferred, or a tie: text.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;q=0.5,text/plain;version=0.0.4"
            )),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text, */*")),
            Format::Text
        );
        // An OpenMetrics version we do not write, or q=0: text.
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=2.0.0")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
    }

    #[test]
    fn units_are_whole_name_parts() {
        assert_eq!(unit_of("a_seconds"), Some("seconds"));
        assert_eq!(unit_of("vitals_cpu_seconds"), Some("seconds"));
        assert_eq!(unit_of("a_xbytes"), None);
        assert_eq!(unit_of("bytes"), None);
        assert_eq!(unit_of("vitals_store_series"), None);
    }

    fn both(f: impl Fn(&mut Writer)) -> (String, String) {
        let mut text = String::new();
        let mut w = Writer::new(&mut text, Format::Text);
        f(&mut w);
        w.finish();
        let mut om = String::new();
        let mut w = Writer::new(&mut om, Format::OpenMetrics);
        f(&mut w);
        w.finish();
        (text, om)
    }

    #[test]
    fn counters_units_created_and_eof_per_format() {
        let (text, om) = both(|w| {
            assert!(w.family("x_seconds_total", Kind::Counter, "A \"q\" \\ b"));
            w.sample("x_seconds_total", "{a=\"1\"}", 2.5);
            w.created("x_seconds_total", "{a=\"1\"}", 1_700_000_000.0);
            assert!(w.family("plain", Kind::Counter, "No suffix."));
            w.sample("plain", "", 1.0);
        });
        assert_eq!(
            text,
            "# HELP x_seconds_total A \"q\" \\\\ b\n# TYPE x_seconds_total counter\n\
             x_seconds_total{a=\"1\"} 2.5\n\
             # HELP plain No suffix.\n# TYPE plain counter\nplain 1\n"
        );
        assert_eq!(
            om,
            "# HELP x_seconds A \\\"q\\\" \\\\ b\n# TYPE x_seconds counter\n# UNIT x_seconds seconds\n\
             x_seconds_total{a=\"1\"} 2.5\nx_seconds_created{a=\"1\"} 1700000000\n\
             # HELP plain No suffix.\n# TYPE plain unknown\nplain 1\n# EOF\n"
        );
    }

    #[test]
    fn an_openmetrics_counter_named_like_a_histogram_keeps_its_series() {
        let (text, om) = both(|w| {
            assert!(w.family("pay_rupees", Kind::Histogram, "H."));
            w.sample("pay_rupees_count", "", 1.0);
            assert!(w.family("pay_rupees_total", Kind::Counter, "C."));
            w.sample("pay_rupees_total", "", 5.0);
        });
        assert!(text.contains("# TYPE pay_rupees_total counter\npay_rupees_total 5\n"));
        assert!(
            om.contains("# TYPE pay_rupees_total unknown\npay_rupees_total 5\n"),
            "{om}"
        );
        assert_eq!(om.matches("# HELP").count(), 2);
    }

    #[test]
    fn a_family_is_written_once_and_reserved_names_win() {
        let mut out = String::new();
        let mut w = Writer::new(&mut out, Format::Text);
        w.reserve("process_cpu_seconds_total", Kind::Counter);
        assert!(!w.family("process_cpu_seconds_total", Kind::Counter, "user"));
        assert!(w.family("a", Kind::Gauge, "first"));
        assert!(!w.family("a", Kind::Gauge, "second"));
        assert!(w.reserved_family("process_cpu_seconds_total", Kind::Counter, "own"));
        assert!(!w.reserved_family("process_cpu_seconds_total", Kind::Counter, "own"));
        let skipped = w.finish();
        assert_eq!(
            skipped,
            vec![
                "process_cpu_seconds_total",
                "a",
                "process_cpu_seconds_total"
            ]
        );
        assert_eq!(out.matches("# HELP").count(), 2);
    }
}
