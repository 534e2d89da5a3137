//! The text pieces every exposition line is made of: a float the way
//! Prometheus parses it and an escaped label value. A leaf: [`crate::model`]
//! builds the canonical label set with [`escape_label_value`], so the store
//! key is already what a scrape writes.

/// Escape a label value for the text exposition format.
pub fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Write a float the way Prometheus parses it.
pub fn write_value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        // Shortest round-trip form (Prometheus parses exponents too).
        out.push_str(ryu::Buffer::new().format_finite(v));
    }
}

/// Write a value at single precision: for derived figures (anomaly scores
/// and bands) whose further digits carry no information, so the exposition
/// stays short.
pub fn write_value_f32(v: f64, out: &mut String) {
    let f = v as f32;
    if f.is_finite() && f.fract() != 0.0 {
        out.push_str(ryu::Buffer::new().format_finite(f));
    } else {
        write_value(v, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_like_prometheus() {
        let mut s = String::new();
        for v in [
            1.0,
            0.25,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e20,
            -3e-7,
        ] {
            write_value(v, &mut s);
            s.push(' ');
        }
        // Exponents are valid in the text format (Go's ParseFloat).
        assert_eq!(s, "1 0.25 NaN +Inf -Inf 1e20 -3e-7 ");
        let mut s = String::new();
        for v in [0.1f64 + 0.2, 20.305763244628906, 7.0] {
            write_value_f32(v, &mut s);
            s.push(' ');
        }
        assert_eq!(s, "0.3 20.305763 7 ");
    }
}
