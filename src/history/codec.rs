//! Chunk encoding of the history tiers, with the `pco` numeric codec, and
//! the rollup arithmetic shared by compaction and reads.
//!
//! A raw chunk is one series' points inside one raw window: the timestamps
//! (`i64` ms, delta-coded by pco) and the values (`f64`). A rollup chunk is
//! one series' rows of one window of a rollup tier, column by column.
//! Each column is a length-prefixed pco "standalone" file, so a chunk is
//! self-describing and a damaged one fails to decode (an error, never a
//! panic).

use pco::ChunkConfig;
use pco::standalone::{simple_compress, simple_decompress};

/// Format byte of every chunk.
const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("chunk is truncated or has an unknown format")]
    Format,
    #[error("chunk does not decode: {0}")]
    Pco(#[from] pco::errors::PcoError),
}

fn config() -> ChunkConfig {
    // Level 4 of 0..=12: most of the ratio at a fraction of the time of
    // the default 8 (chunks are re-encoded at compaction).
    ChunkConfig::default().with_compression_level(4)
}

fn put<T: pco::data_types::Number>(out: &mut Vec<u8>, col: &[T]) -> Result<(), CodecError> {
    let bytes = simple_compress(col, &config())?;
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Format);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn col<T: pco::data_types::Number>(&mut self, n: usize) -> Result<Vec<T>, CodecError> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        let v: Vec<T> = simple_decompress(self.take(len)?)?;
        if v.len() != n {
            return Err(CodecError::Format);
        }
        Ok(v)
    }

    fn head(&mut self) -> Result<usize, CodecError> {
        if self.take(1)?[0] != VERSION {
            return Err(CodecError::Format);
        }
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }
}

/// Encode points (ascending by time, non-empty).
pub fn encode_raw(points: &[(i64, f64)]) -> Result<Vec<u8>, CodecError> {
    let ts: Vec<i64> = points.iter().map(|p| p.0).collect();
    let vs: Vec<f64> = points.iter().map(|p| p.1).collect();
    let mut out = Vec::with_capacity(16 + points.len() * 2);
    out.push(VERSION);
    out.extend_from_slice(&(points.len() as u32).to_le_bytes());
    put(&mut out, &ts)?;
    put(&mut out, &vs)?;
    Ok(out)
}

pub fn decode_raw(bytes: &[u8]) -> Result<Vec<(i64, f64)>, CodecError> {
    let mut c = Cursor(bytes);
    let n = c.head()?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let ts: Vec<i64> = c.col(n)?;
    let vs: Vec<f64> = c.col(n)?;
    Ok(ts.into_iter().zip(vs).collect())
}

/// One rollup interval of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Start of the interval (ms); the interval is `[start, start + step)`.
    pub start: i64,
    pub min: f64,
    pub max: f64,
    /// Sum of the values (gauges) or the increase (counters: the rise
    /// between consecutive samples, a drop counting as a reset to 0).
    pub sum: f64,
    pub count: u32,
    /// The interval's last value.
    pub last: f64,
}

impl Row {
    /// The point drawn for the interval: the mean of a gauge, the last
    /// value of a counter, stamped at the interval's end.
    pub fn point(&self, step: i64, counter: bool) -> (i64, f64) {
        let v = if counter {
            self.last
        } else {
            self.sum / self.count.max(1) as f64
        };
        (self.start + step, v)
    }
}

pub fn encode_rows(rows: &[Row]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(32 + rows.len() * 8);
    out.push(VERSION);
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    put(&mut out, &rows.iter().map(|r| r.start).collect::<Vec<_>>())?;
    put(&mut out, &rows.iter().map(|r| r.min).collect::<Vec<_>>())?;
    put(&mut out, &rows.iter().map(|r| r.max).collect::<Vec<_>>())?;
    put(&mut out, &rows.iter().map(|r| r.sum).collect::<Vec<_>>())?;
    put(&mut out, &rows.iter().map(|r| r.count).collect::<Vec<_>>())?;
    put(&mut out, &rows.iter().map(|r| r.last).collect::<Vec<_>>())?;
    Ok(out)
}

pub fn decode_rows(bytes: &[u8]) -> Result<Vec<Row>, CodecError> {
    let mut c = Cursor(bytes);
    let n = c.head()?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let start: Vec<i64> = c.col(n)?;
    let min: Vec<f64> = c.col(n)?;
    let max: Vec<f64> = c.col(n)?;
    let sum: Vec<f64> = c.col(n)?;
    let count: Vec<u32> = c.col(n)?;
    let last: Vec<f64> = c.col(n)?;
    Ok((0..n)
        .map(|i| Row {
            start: start[i],
            min: min[i],
            max: max[i],
            sum: sum[i],
            count: count[i],
            last: last[i],
        })
        .collect())
}

/// Roll points (ascending by time) up into rows of `step` ms. `prev` is
/// the series' value just before the first point (a counter's increase
/// starts from it; without it the first point adds nothing).
pub fn rollup(points: &[(i64, f64)], mut prev: Option<f64>, step: i64, counter: bool) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for &(ts, v) in points {
        let start = ts.div_euclid(step) * step;
        let add = if counter {
            match prev {
                Some(p) if v >= p => v - p,
                Some(_) => v,
                None => 0.0,
            }
        } else {
            v
        };
        prev = Some(v);
        match rows.last_mut() {
            Some(r) if r.start == start => {
                r.min = r.min.min(v);
                r.max = r.max.max(v);
                r.sum += add;
                r.count += 1;
                r.last = v;
            }
            _ => rows.push(Row {
                start,
                min: v,
                max: v,
                sum: add,
                count: 1,
                last: v,
            }),
        }
    }
    rows
}

/// Sort by time; of several points at one instant the last one given wins.
pub fn sort_dedup(points: &mut Vec<(i64, f64)>) {
    // Stable: equal timestamps keep their arrival order.
    points.sort_by_key(|p| p.0);
    let mut out: Vec<(i64, f64)> = Vec::with_capacity(points.len());
    for &p in points.iter() {
        match out.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => out.push(p),
        }
    }
    *points = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_rows_round_trip_and_damage_is_an_error() {
        let points: Vec<(i64, f64)> = (0..500)
            .map(|i| {
                (
                    1_700_000_000_000 + i * 1000 + (i % 3),
                    (i as f64 * 0.1).sin(),
                )
            })
            .collect();
        let bytes = encode_raw(&points).unwrap();
        assert_eq!(decode_raw(&bytes).unwrap(), points);
        // Regular timestamps cost next to nothing.
        assert!(bytes.len() < points.len() * 9, "{}", bytes.len());
        let rows = rollup(&points, None, 60_000, false);
        assert_eq!(decode_rows(&encode_rows(&rows).unwrap()).unwrap(), rows);
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_raw(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(decode_raw(&bad).is_err());
    }

    #[test]
    fn counters_roll_up_as_increase_across_resets() {
        let points = [(0, 10.0), (30_000, 15.0), (61_000, 2.0), (90_000, 5.0)];
        let rows = rollup(&points, Some(8.0), 60_000, true);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].sum, 2.0 + 5.0);
        // 15 -> 2 is a reset: the increase is 2, then 3.
        assert_eq!(rows[1].sum, 2.0 + 3.0);
        assert_eq!(rows[1].point(60_000, true), (120_000, 5.0));
        let g = rollup(&points, None, 60_000, false);
        assert_eq!(g[0].point(60_000, false), (60_000, 12.5));
        assert_eq!((g[1].min, g[1].max, g[1].count), (2.0, 5.0, 2));
    }
}
