//! Remote write 1.0 payloads: the protobuf `WriteRequest` (declared here
//! with prost derives) compressed with snappy's raw block format.

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

/// One point to queue: family name, rendered label set, value, time.
#[derive(Debug, Clone, Copy)]
pub struct Point<'a> {
    pub family: &'a str,
    pub labels: &'a crate::model::Labels,
    pub value: f64,
    pub timestamp_ms: i64,
}

/// The sending view of a `WriteRequest`: the same bytes on the wire, with
/// each series' labels encoded once (when the series enters the queue's
/// series table) and reused by every request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequestOut {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeriesOut>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeriesOut {
    /// Each an encoded [`Label`] message: a repeated message field and a
    /// repeated bytes field of the same tag are the same on the wire.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub labels: Vec<bytes::Bytes>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// The labels of series `family{labels}` as sent: `__name__` added,
/// `external` labels added where the series lacks them, sorted by name,
/// each encoded as a `Label` message.
pub fn series_labels(
    family: &str,
    labels: &crate::model::Labels,
    external: &[(String, String)],
) -> Vec<bytes::Bytes> {
    labels_of(family, labels, external)
        .iter()
        .map(|l| bytes::Bytes::from(prost::Message::encode_to_vec(l)))
        .collect()
}

/// Snappy-compress (raw block format) a `WriteRequest` of `series`, each
/// (encoded labels, timestamps, values) with its samples oldest first.
pub fn request_body<'a>(
    series: impl Iterator<Item = (&'a [bytes::Bytes], &'a [i64], &'a [f64])>,
) -> Vec<u8> {
    let req = WriteRequestOut {
        timeseries: series
            .map(|(labels, ts, values)| TimeSeriesOut {
                labels: labels.to_vec(),
                samples: ts
                    .iter()
                    .zip(values)
                    .map(|(t, v)| Sample {
                        value: *v,
                        timestamp: *t,
                    })
                    .collect(),
            })
            .collect(),
    };
    let raw = prost::Message::encode_to_vec(&req);
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy accepts any input below 4 GiB")
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
    fn requests_carry_sorted_labels_with_external_ones_and_samples_in_order() {
        let a = Labels::from_pairs(&[("sensor", "t1")]);
        let b = Labels::from_pairs(&[("site", "own")]);
        let ext = [("site".to_string(), "plant-3".to_string())];
        let la = series_labels("temp", &a, &ext);
        let lb = series_labels("temp", &b, &ext);
        let body = request_body(
            [
                (
                    &la[..],
                    &[10i64, 12][..],
                    &[1.0, f64::from_bits(STALE_NAN)][..],
                ),
                (&lb[..], &[11i64][..], &[2.0][..]),
            ]
            .into_iter(),
        );
        let req = decode(&body).unwrap();
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
