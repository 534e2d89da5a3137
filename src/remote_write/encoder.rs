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

/// The label fields of a `TimeSeries`: each series' [`Label`]s encoded
/// once by prost (when the series enters the queue's series table) and
/// reused by every request. A repeated message field and a repeated bytes
/// field of the same tag are the same on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SeriesLabels {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub labels: Vec<bytes::Bytes>,
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

/// The label fields of a `TimeSeries` holding `labels` (encoded `Label`
/// messages, as [`series_labels`] gives them), ready to be copied into
/// requests: prost's encoding of [`SeriesLabels`].
pub fn label_fields(labels: &[bytes::Bytes]) -> bytes::Bytes {
    let msg = SeriesLabels {
        labels: labels.to_vec(),
    };
    bytes::Bytes::from(prost::Message::encode_to_vec(&msg))
}

/// Builds request bodies with buffers kept from one request to the next
/// (one per sender lane).
///
/// A `TimeSeries` is written as its length-delimited field in the
/// `WriteRequest`: the series' label fields (encoded once by prost, see
/// [`label_fields`]) followed by its samples, each encoded by prost as
/// field 2. Protobuf decodes a message's fields in any grouping, so this
/// is the same message prost would write for the whole `WriteRequest`
/// (a unit test checks the bytes are equal).
pub struct RequestEncoder {
    raw: Vec<u8>,
    samples: Vec<u8>,
    snappy: snap::raw::Encoder,
}

impl Default for RequestEncoder {
    fn default() -> Self {
        RequestEncoder {
            raw: Vec::new(),
            samples: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        }
    }
}

impl RequestEncoder {
    /// Snappy-compress (raw block format) a `WriteRequest` of `series`,
    /// each (label fields, timestamps, values) with its samples oldest
    /// first.
    pub fn body<'a>(
        &mut self,
        series: impl Iterator<Item = (&'a [u8], &'a [i64], &'a [f64])>,
    ) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint, message};
        self.raw.clear();
        for (labels, ts, values) in series {
            self.samples.clear();
            for (t, v) in ts.iter().zip(values) {
                let s = Sample {
                    value: *v,
                    timestamp: *t,
                };
                message::encode(2, &s, &mut self.samples);
            }
            encode_key(1, WireType::LengthDelimited, &mut self.raw);
            encode_varint((labels.len() + self.samples.len()) as u64, &mut self.raw);
            self.raw.extend_from_slice(labels);
            self.raw.extend_from_slice(&self.samples);
        }
        let mut out = vec![0u8; snap::raw::max_compress_len(self.raw.len())];
        let n = self
            .snappy
            .compress(&self.raw, &mut out)
            .expect("snappy accepts any input below 4 GiB");
        out.truncate(n);
        // Keep the buffers of a typical request, not of the largest ever.
        if self.raw.capacity() > 64 << 20 {
            self.raw = Vec::new();
        }
        out
    }
}

/// [`RequestEncoder::body`] with fresh buffers (tests, one-off requests).
pub fn request_body<'a>(
    series: impl Iterator<Item = (&'a [u8], &'a [i64], &'a [f64])>,
) -> Vec<u8> {
    RequestEncoder::default().body(series)
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
        let la = label_fields(&series_labels("temp", &a, &ext));
        let lb = label_fields(&series_labels("temp", &b, &ext));
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

    #[test]
    fn bodies_are_the_bytes_prost_writes_for_the_whole_request() {
        let ext = [("site".to_string(), "plant-3".to_string())];
        let ls: Vec<Labels> = (0..3)
            .map(|i| Labels::from_pairs(&[("sensor", format!("t{i}"))]))
            .collect();
        let fields: Vec<bytes::Bytes> = ls
            .iter()
            .map(|l| label_fields(&series_labels("temp", l, &ext)))
            .collect();
        let ts: Vec<Vec<i64>> = vec![vec![0, 1, 1 << 40], vec![-5], vec![7, 8]];
        let vs: Vec<Vec<f64>> = vec![vec![0.0, -1.5, f64::NAN], vec![0.0], vec![1e300, 2.0]];
        let want = WriteRequest {
            timeseries: (0..3)
                .map(|i| TimeSeries {
                    labels: labels_of("temp", &ls[i], &ext),
                    samples: ts[i]
                        .iter()
                        .zip(&vs[i])
                        .map(|(t, v)| Sample {
                            value: *v,
                            timestamp: *t,
                        })
                        .collect(),
                })
                .collect(),
        };
        let mut enc = RequestEncoder::default();
        // Twice through the same buffers: the second body is not polluted.
        for _ in 0..2 {
            let body = enc.body((0..3).map(|i| (&fields[i][..], &ts[i][..], &vs[i][..])));
            let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
            assert_eq!(raw, prost::Message::encode_to_vec(&want));
        }
        assert!(enc.body(std::iter::empty()).len() < 4);
    }
}
