//! Remote write 1.0 payloads: the protobuf `WriteRequest` (declared here
//! with prost derives) compressed with snappy's raw block format.

use rustc_hash::FxHashMap;

/// Value of a staleness marker: the NaN Prometheus writes when a series
/// ends, told apart from an ordinary NaN by its bits.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Sorted by name; `__name__` carries the metric name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// One point to encode: family name, rendered label set, value, time.
#[derive(Debug, Clone, Copy)]
pub struct Point<'a> {
    pub family: &'a str,
    pub labels: &'a crate::model::Labels,
    pub value: f64,
    pub timestamp_ms: i64,
}

/// A ready-to-send request body and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Snappy-compressed (raw block format) `WriteRequest`.
    pub body: Vec<u8>,
    pub samples: u32,
    /// Newest sample time in the block (ms), for the lag gauge.
    pub newest_ms: i64,
}

/// Build the `WriteRequest` of `points` (grouped by series, each series'
/// samples in the order given) with `external` labels added to series that
/// lack them, and compress it.
pub fn encode(points: &[Point<'_>], external: &[(String, String)]) -> Encoded {
    let mut index: FxHashMap<(&str, &str), usize> = FxHashMap::default();
    let mut series: Vec<TimeSeries> = Vec::new();
    let mut newest_ms = i64::MIN;
    for p in points {
        newest_ms = newest_ms.max(p.timestamp_ms);
        let i = *index
            .entry((p.family, p.labels.as_str()))
            .or_insert_with(|| {
                series.push(TimeSeries {
                    labels: labels_of(p.family, p.labels, external),
                    samples: Vec::new(),
                });
                series.len() - 1
            });
        series[i].samples.push(Sample {
            value: p.value,
            timestamp: p.timestamp_ms,
        });
    }
    let req = WriteRequest { timeseries: series };
    let raw = prost::Message::encode_to_vec(&req);
    let body = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy accepts any input below 4 GiB");
    Encoded {
        body,
        samples: points.len() as u32,
        newest_ms,
    }
}

fn labels_of(
    family: &str,
    labels: &crate::model::Labels,
    external: &[(String, String)],
) -> Vec<Label> {
    let mut out: Vec<Label> = labels
        .pairs()
        .into_iter()
        .map(|(name, value)| Label { name, value })
        .collect();
    for (k, v) in external {
        if !out.iter().any(|l| &l.name == k) {
            out.push(Label {
                name: k.clone(),
                value: v.clone(),
            });
        }
    }
    out.retain(|l| l.name != "__name__");
    out.push(Label {
        name: "__name__".into(),
        value: family.to_string(),
    });
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Decompress and decode a body (tests and the queue's checks).
pub fn decode(body: &[u8]) -> Result<WriteRequest, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("not snappy: {e}"))?;
    prost::Message::decode(raw.as_slice()).map_err(|e| format!("not a WriteRequest: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    #[test]
    fn groups_series_keeps_order_and_adds_external_labels() {
        let a = Labels::from_pairs(&[("sensor", "t1")]);
        let b = Labels::from_pairs(&[("site", "own")]);
        let pts = [
            Point {
                family: "temp",
                labels: &a,
                value: 1.0,
                timestamp_ms: 10,
            },
            Point {
                family: "temp",
                labels: &b,
                value: 2.0,
                timestamp_ms: 11,
            },
            Point {
                family: "temp",
                labels: &a,
                value: f64::from_bits(STALE_NAN),
                timestamp_ms: 12,
            },
        ];
        let e = encode(&pts, &[("site".into(), "plant-3".into())]);
        assert_eq!((e.samples, e.newest_ms), (3, 12));
        let req = decode(&e.body).unwrap();
        assert_eq!(req.timeseries.len(), 2);
        let names = |ts: &TimeSeries| {
            ts.labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            names(&req.timeseries[0]),
            "__name__=temp,sensor=t1,site=plant-3"
        );
        // The series' own label wins over the external one.
        assert_eq!(names(&req.timeseries[1]), "__name__=temp,site=own");
        let s = &req.timeseries[0].samples;
        assert_eq!(s[0].timestamp, 10);
        assert_eq!(s[1].timestamp, 12);
        assert_eq!(s[1].value.to_bits(), STALE_NAN);
    }
}
