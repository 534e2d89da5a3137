//! The store's families and the `vitals_anomaly_*` families, written from
//! the store's series and the detector state the store keeps beside them.

use super::Writer;
use super::text::{write_value, write_value_f32};
use crate::model::{Labels, MetricKind};
use crate::store::{Family, Series, Store};

/// Write every family of `store` through `w` (either format), families
/// sorted by name, then the anomaly families of its scored series; a family
/// whose name `w` already wrote or reserved is left out.
///
/// Histogram parts (`x_bucket`, `x_sum`, `x_count`, each a family of kind
/// [`MetricKind::Histogram`]) are written together under one header for
/// `x`, buckets in `le` order.
pub fn write_store(store: &Store, w: &mut Writer) {
    // (name written in HELP/TYPE, part order, family)
    let mut order: Vec<(&str, u8, &Family)> = store
        .families()
        .map(|family| match family.meta.kind {
            MetricKind::Histogram => {
                let (base, part) = histogram_part(&family.meta.name);
                (base, part, family)
            }
            _ => (family.meta.name.as_ref(), 0, family),
        })
        .collect();
    order.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut header: Option<&str> = None;
    let mut keep = false;
    for (base, _, family) in order {
        if header != Some(base) {
            header = Some(base);
            keep = w.family(base, family.meta.kind.into(), &family.meta.help);
        }
        if !keep {
            continue;
        }
        let name = &family.meta.name;
        let out = w.out();
        if family.meta.kind == MetricKind::Histogram {
            let mut series: Vec<(&Labels, &Series)> = family.series.iter().collect();
            series.sort_unstable_by(|a, b| bucket_order(a.0, b.0));
            for (labels, series) in series {
                write_series(name, labels, series.value, out);
            }
        } else {
            for (labels, series) in &family.series {
                write_series(name, labels, series.value, out);
            }
        }
    }
    write_anomalies(store, w);
}

fn write_series(name: &str, labels: &Labels, value: f64, out: &mut String) {
    out.push_str(name);
    out.push_str(labels.as_str());
    out.push(' ');
    write_value(value, out);
    out.push('\n');
}

/// The base name of a histogram part and the part's position
/// (buckets, then sum, then count).
fn histogram_part(name: &str) -> (&str, u8) {
    if let Some(base) = name.strip_suffix("_bucket") {
        (base, 1)
    } else if let Some(base) = name.strip_suffix("_sum") {
        (base, 2)
    } else if let Some(base) = name.strip_suffix("_count") {
        (base, 3)
    } else {
        (name, 4)
    }
}

/// Order histogram series by their labels without `le`, then by the
/// numeric `le` bound (`+Inf` last).
fn bucket_order(a: &Labels, b: &Labels) -> std::cmp::Ordering {
    fn split(l: &Labels) -> (Vec<(String, String)>, f64) {
        let mut pairs = l.pairs();
        let mut le = f64::NEG_INFINITY;
        pairs.retain(|(k, v)| {
            if k == "le" {
                le = if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap_or(f64::NEG_INFINITY)
                };
                false
            } else {
                true
            }
        });
        (pairs, le)
    }
    let (pa, la) = split(a);
    let (pb, lb) = split(b);
    pa.cmp(&pb).then(la.total_cmp(&lb))
}

struct Fam {
    name: &'static str,
    kind: super::Kind,
    help: &'static str,
}

const FAMILIES: [Fam; 7] = {
    use super::Kind;
    [
        Fam {
            name: "vitals_anomaly_detector_score",
            kind: Kind::Gauge,
            help: "Anomaly likelihood of one detector of the ensemble (0..1).",
        },
        Fam {
            name: "vitals_anomaly_events_total",
            kind: Kind::Counter,
            help: "Anomaly events (rising edges of vitals_anomaly_flag) of the series.",
        },
        Fam {
            name: "vitals_anomaly_expected",
            kind: Kind::Gauge,
            help: "Value the detectors expected for the series.",
        },
        Fam {
            name: "vitals_anomaly_flag",
            kind: Kind::Gauge,
            help: "1 while the series is in an anomaly (from an event until the suppression period ends).",
        },
        Fam {
            name: "vitals_anomaly_lower",
            kind: Kind::Gauge,
            help: "Lower edge of the band of normal values of the series.",
        },
        Fam {
            name: "vitals_anomaly_score",
            kind: Kind::Gauge,
            help: "Ensemble anomaly score of the series (0..1); at or above the threshold on events.",
        },
        Fam {
            name: "vitals_anomaly_upper",
            kind: Kind::Gauge,
            help: "Upper edge of the band of normal values of the series.",
        },
    ]
};

/// Write the `vitals_anomaly_*` families for every series with detector
/// state that scored something, families in name order, each with HELP and
/// TYPE; per-detector scores when the store is set to export them.
///
/// One pass over the (large, scattered) detector states writes each
/// family's lines into its own buffer; the buffers are then appended in
/// family order. Visiting every state once per family instead costs a
/// cache miss per state and family, which dominated large scrapes.
fn write_anomalies(store: &Store, w: &mut Writer) {
    const DETECTOR: usize = 0;
    const EVENTS: usize = 1;
    const EXPECTED: usize = 2;
    const FLAG: usize = 3;
    const LOWER: usize = 4;
    const SCORE: usize = 5;
    const UPPER: usize = 6;
    let detector_scores = store.detector_scores();
    let families: Vec<&Family> = store.families().collect();
    // Reserve for one line per series (untouched capacity costs nothing),
    // so the buffers do not grow by copying.
    let series: usize = families.iter().map(|f| f.series.len()).sum();
    let label_bytes = families
        .iter()
        .filter_map(|f| f.series.keys().next())
        .map(|l| l.as_str().len())
        .max()
        .unwrap_or(0);
    // The buffers of the previous write are reused (fresh memory costs a
    // page fault per 4 KiB written); a concurrent scrape takes new ones.
    let mut pooled = BUFS.try_lock();
    let mut fresh: [String; 7] = Default::default();
    let bufs = match pooled.as_deref_mut() {
        Some(b) => b,
        None => &mut fresh,
    };
    for (i, buf) in bufs.iter_mut().enumerate().skip(1) {
        buf.clear();
        buf.reserve(series * (FAMILIES[i].name.len() + label_bytes + 48));
    }
    bufs[DETECTOR].clear();
    let line = |buf: &mut String, fam: usize, labels: &str, v: f64| {
        buf.push_str(FAMILIES[fam].name);
        buf.push_str(labels);
        buf.push(' ');
        write_value_f32(v, buf);
        buf.push('\n');
    };
    for a in families
        .iter()
        .flat_map(|f| f.series.values())
        .filter_map(|s| s.detect.as_deref())
        .filter_map(|d| d.anomaly())
    {
        let l = a.labels.as_str();
        line(&mut bufs[SCORE], SCORE, l, a.score);
        line(&mut bufs[FLAG], FLAG, l, if a.active { 1.0 } else { 0.0 });
        line(&mut bufs[EVENTS], EVENTS, l, a.events as f64);
        if let Some(b) = a.band {
            line(&mut bufs[EXPECTED], EXPECTED, l, b.expected);
            line(&mut bufs[LOWER], LOWER, l, b.lower);
            line(&mut bufs[UPPER], UPPER, l, b.upper);
        }
        if detector_scores {
            for (name, v) in a.detector_scores() {
                let labels = a.labels.with("detector", name);
                line(&mut bufs[DETECTOR], DETECTOR, labels.as_str(), v);
            }
        }
    }
    for (fam, buf) in FAMILIES.iter().zip(bufs.iter()) {
        if buf.is_empty() || !w.family(fam.name, fam.kind, fam.help) {
            continue;
        }
        w.out().push_str(buf);
    }
    // Let go of buffers far larger than this write needed (the store shrank).
    for buf in bufs.iter_mut() {
        if buf.capacity() > 64 * 1024 && buf.capacity() > 4 * buf.len() {
            *buf = String::new();
        }
    }
}

/// Per-family buffers of [`write_anomalies`], kept between scrapes.
static BUFS: parking_lot::Mutex<[String; 7]> =
    parking_lot::Mutex::new([const { String::new() }; 7]);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::exposition::{Format, Writer};
    use crate::model::{FamilyMeta, Labels, MetricKind, Sample};
    use crate::store::{Store, family};

    fn sample(f: &Arc<FamilyMeta>, dev: &str, v: f64, ts: i64) -> Sample {
        Sample {
            family: f.clone(),
            labels: Labels::from_pairs(&[("device", dev)]),
            value: v,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn render_writes_help_type_and_samples() {
        let mut store = Store::new();
        let src: Arc<str> = "s".into();
        let g = store.begin_batch();
        let f = family("b_total", MetricKind::Counter, "A \\ help\nline");
        store.upsert(&src, &sample(&f, "x", 3.0, 0), g).unwrap();
        let mut out = String::new();
        crate::exposition::store_text(&store, &mut out);
        assert_eq!(
            out,
            "# HELP b_total A \\\\ help\\nline\n# TYPE b_total counter\nb_total{device=\"x\"} 3\n"
        );
    }

    #[test]
    fn openmetrics_names_counters_without_total_and_adds_units() {
        let mut store = Store::new();
        let src: Arc<str> = "s".into();
        let g = store.begin_batch();
        let c = family("io_bytes_total", MetricKind::Counter, "IO.");
        let t = family("t_celsius", MetricKind::Gauge, "T.");
        store.upsert(&src, &sample(&c, "x", 3.0, 0), g).unwrap();
        store.upsert(&src, &sample(&t, "x", 20.5, 0), g).unwrap();
        let mut out = String::new();
        let mut w = Writer::new(&mut out, Format::OpenMetrics);
        crate::exposition::write_store(&store, &mut w);
        w.finish();
        assert_eq!(
            out,
            "# HELP io_bytes IO.\n# TYPE io_bytes counter\n# UNIT io_bytes bytes\n\
             io_bytes_total{device=\"x\"} 3\n\
             # HELP t_celsius T.\n# TYPE t_celsius gauge\n# UNIT t_celsius celsius\n\
             t_celsius{device=\"x\"} 20.5\n# EOF\n"
        );
    }

    #[test]
    fn histogram_parts_render_under_one_header_in_bucket_order() {
        let mut store = Store::new();
        let src: Arc<str> = "s".into();
        let g = store.begin_batch();
        let b = family("d_seconds_bucket", MetricKind::Histogram, "D.");
        let s = family("d_seconds_sum", MetricKind::Histogram, "D.");
        let c = family("d_seconds_count", MetricKind::Histogram, "D.");
        for (le, v) in [("+Inf", 3.0), ("0.5", 1.0), ("10", 2.0)] {
            let sample = Sample {
                family: b.clone(),
                labels: Labels::from_pairs(&[("le", le)]),
                value: v,
                timestamp_ms: 0,
            };
            store.upsert(&src, &sample, g).unwrap();
        }
        for (f, v) in [(&s, 12.5), (&c, 3.0)] {
            let sample = Sample {
                family: f.clone(),
                labels: Labels::empty(),
                value: v,
                timestamp_ms: 0,
            };
            store.upsert(&src, &sample, g).unwrap();
        }
        let mut out = String::new();
        crate::exposition::store_text(&store, &mut out);
        assert_eq!(
            out,
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.5\"} 1\nd_seconds_bucket{le=\"10\"} 2\n\
             d_seconds_bucket{le=\"+Inf\"} 3\nd_seconds_sum 12.5\nd_seconds_count 3\n"
        );
    }
}
