//! vitals' own metrics: the families of the self-telemetry registry
//! (`prometheus` protobuf values), written after the store's.

use prometheus::proto::{MetricFamily, MetricType};

use super::text::write_value;
use super::{Kind, Writer};
use crate::model::Labels;

/// Type of a registry family as the exposition writes it.
fn kind(t: MetricType) -> Kind {
    match t {
        MetricType::COUNTER => Kind::Counter,
        MetricType::GAUGE => Kind::Gauge,
        MetricType::HISTOGRAM => Kind::Histogram,
        MetricType::SUMMARY => Kind::Summary,
        MetricType::UNTYPED => Kind::Untyped,
    }
}

/// Reserve the names of `families` in `w`, so parts written before them
/// (the store) cannot take a self-metric's name.
pub fn reserve(families: &[MetricFamily], w: &mut Writer) {
    for mf in families {
        w.reserve(mf.name(), kind(mf.get_field_type()));
    }
}

/// Write `families` (from [`crate::telemetry::Telemetry::gather`]) through
/// `w`; `started` (Unix seconds) is when every count in them started (the
/// OpenMetrics `_created`).
pub fn write(families: &[MetricFamily], started: f64, w: &mut Writer) {
    for mf in families {
        let name = mf.name();
        let kind = kind(mf.get_field_type());
        if !w.reserved_family(name, kind, mf.help()) {
            continue;
        }
        for m in mf.get_metric() {
            let pairs: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let labels = Labels::from_pairs(&pairs);
            match mf.get_field_type() {
                MetricType::COUNTER => {
                    w.sample(name, labels.as_str(), m.get_counter().get_value());
                    w.created(name, labels.as_str(), started);
                }
                MetricType::GAUGE => w.sample(name, labels.as_str(), m.get_gauge().get_value()),
                MetricType::UNTYPED => {
                    // Nothing registers one; kept for completeness.
                    #[allow(deprecated)]
                    let v = m.get_untyped().get_value();
                    w.sample(name, labels.as_str(), v);
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let bucket = format!("{name}_bucket");
                    let mut bound = String::new();
                    let mut inf = false;
                    for b in h.get_bucket() {
                        bound.clear();
                        write_value(b.upper_bound(), &mut bound);
                        inf |= b.upper_bound() == f64::INFINITY;
                        let mut with_le = pairs.clone();
                        with_le.push(("le", &bound));
                        let l = Labels::from_pairs(&with_le);
                        w.sample(&bucket, l.as_str(), b.cumulative_count() as f64);
                    }
                    if !inf {
                        let mut with_le = pairs.clone();
                        with_le.push(("le", "+Inf"));
                        let l = Labels::from_pairs(&with_le);
                        w.sample(&bucket, l.as_str(), h.get_sample_count() as f64);
                    }
                    w.sample(&format!("{name}_sum"), labels.as_str(), h.get_sample_sum());
                    w.sample(
                        &format!("{name}_count"),
                        labels.as_str(),
                        h.get_sample_count() as f64,
                    );
                    w.created(name, labels.as_str(), started);
                }
                MetricType::SUMMARY => {
                    let sm = m.get_summary();
                    let mut q = String::new();
                    for quantile in sm.get_quantile() {
                        q.clear();
                        write_value(quantile.quantile(), &mut q);
                        let mut with_q = pairs.clone();
                        with_q.push(("quantile", &q));
                        let l = Labels::from_pairs(&with_q);
                        w.sample(name, l.as_str(), quantile.value());
                    }
                    w.sample(&format!("{name}_sum"), labels.as_str(), sm.sample_sum());
                    w.sample(
                        &format!("{name}_count"),
                        labels.as_str(),
                        sm.sample_count() as f64,
                    );
                    w.created(name, labels.as_str(), started);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::exposition::Writer;
    use crate::telemetry::Telemetry;

    #[test]
    fn render_includes_build_info_and_process_metrics() {
        let t = Telemetry::new();
        t.scrape_duration.observe(0.002);
        t.source_error("s", "timeout", &"boom");
        let families = t.gather();
        let mut text = String::new();
        let mut w = Writer::new(&mut text, crate::exposition::Format::Text);
        crate::exposition::own::write(&families, t.started(), &mut w);
        w.finish();
        assert!(text.contains("vitals_build_info{"));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(text.contains("vitals_scrape_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("vitals_scrape_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("# TYPE vitals_source_errors_total counter\n"));
        assert!(!text.contains("_created"));
        let mut om = String::new();
        let mut w = Writer::new(&mut om, crate::exposition::Format::OpenMetrics);
        crate::exposition::own::write(&families, t.started(), &mut w);
        w.finish();
        assert!(om.contains("# TYPE vitals_source_errors counter\n"));
        assert!(om.contains("vitals_source_errors_created{reason=\"timeout\",source=\"s\"} "));
        assert!(om.contains("# UNIT vitals_scrape_duration_seconds seconds\n"));
        assert!(om.ends_with("# EOF\n"));
    }
}
