//! Scoring on the Numenta Anomaly Benchmark (NAB), written from the
//! definitions of the NAB paper (Lavin & Ahmad, 2015):
//!
//! - each labelled anomaly has a window of rows around it;
//! - the first rows of a file (15 %, at most 750) are a probationary period
//!   in which detections are not scored;
//! - a detection inside a window scores by its position with a scaled
//!   sigmoid, `2 / (1 + e^(5y)) - 1`, where `y` is -1 at the window's start
//!   and 0 just past its end, normalised so the earliest detection scores
//!   the profile's true-positive weight; only the best detection of a
//!   window counts;
//! - a detection outside every window is a false positive: `-A_FP` before
//!   the first window, and after a window the sigmoid of the distance past
//!   it (relative to the window's width), so a late detection just after a
//!   window costs little;
//! - each window without a detection costs `A_FN`;
//! - the corpus score is normalised between the null detector (no
//!   detections: every window missed) and the perfect one (every window
//!   detected at its first scorable row) to 0..100.

/// Weights of one application profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

/// NAB's three profiles.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

/// Rows at the start of a file of `rows` rows whose detections are not scored.
pub fn probationary_rows(rows: usize) -> usize {
    ((rows as f64 * 0.15).floor() as usize).min(750)
}

/// NAB's scaled sigmoid: 1 far before 0, 0 at 0, -1 beyond 3.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// An anomaly window as inclusive row indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
}

impl Window {
    pub fn width(&self) -> usize {
        self.end - self.start + 1
    }
}

/// Map windows given as timestamps (ms) onto row indices of `timestamps`:
/// from the first row at or after the start to the last row at or before
/// the end. Windows holding no row are dropped. The timestamps are
/// normally ascending; a file whose clock steps back keeps every row, so
/// the rows are scanned rather than bisected.
pub fn windows_to_rows(timestamps: &[i64], windows: &[(i64, i64)]) -> Vec<Window> {
    let mut out: Vec<Window> = windows
        .iter()
        .filter_map(|(a, b)| {
            let start = timestamps.iter().position(|t| t >= a)?;
            let end = timestamps.iter().rposition(|t| t <= b)?;
            (end >= start).then_some(Window { start, end })
        })
        .collect();
    out.sort_by_key(|w| w.start);
    out
}

/// Per row: `Some(window index)` inside a window, and the profile-weighted
/// score a detection there would get (window rows: the true-positive value).
fn row_weights(rows: usize, windows: &[Window], profile: &Profile) -> Vec<(Option<usize>, f64)> {
    let max_tp = scaled_sigmoid(-1.0);
    let mut out = Vec::with_capacity(rows);
    let mut w = 0;
    let mut prev: Option<&Window> = None;
    for i in 0..rows {
        while w < windows.len() && windows[w].end < i {
            prev = Some(&windows[w]);
            w += 1;
        }
        if w < windows.len() && windows[w].start <= i {
            let win = &windows[w];
            let y = -((win.end - i + 1) as f64) / win.width() as f64;
            out.push((Some(w), scaled_sigmoid(y) * profile.tp / max_tp));
        } else if let Some(p) = prev {
            let y = (i - p.end) as f64 / (p.width().max(2) - 1) as f64;
            out.push((None, scaled_sigmoid(y) * profile.fp));
        } else {
            out.push((None, -profile.fp));
        }
    }
    out
}

/// The outcome for one file under one profile.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FileScore {
    pub score: f64,
    /// Windows with a detection.
    pub tp: usize,
    /// Detections outside every window.
    pub fp: usize,
    /// Windows without a detection.
    pub fn_: usize,
    /// Detections inside windows (all of them, for precision).
    pub in_window: usize,
    /// Score of the null and perfect detectors on this file.
    pub null: f64,
    pub perfect: f64,
}

/// Score the detections (`true` rows) of one file.
pub fn score_file(detections: &[bool], windows: &[Window], profile: &Profile) -> FileScore {
    let rows = detections.len();
    let probation = probationary_rows(rows);
    let weights = row_weights(rows, windows, profile);
    let mut best: Vec<Option<f64>> = vec![None; windows.len()];
    let mut out = FileScore::default();
    for (i, hit) in detections.iter().enumerate() {
        if !hit || i < probation {
            continue;
        }
        let (win, weight) = weights[i];
        match win {
            Some(w) => {
                out.in_window += 1;
                best[w] = Some(best[w].map_or(weight, |b: f64| b.max(weight)));
            }
            None => {
                out.fp += 1;
                out.score += weight;
            }
        }
    }
    for b in &best {
        match b {
            Some(s) => {
                out.tp += 1;
                out.score += s;
            }
            None => {
                out.fn_ += 1;
                out.score -= profile.fn_;
            }
        }
    }
    out.null = -profile.fn_ * windows.len() as f64;
    out.perfect = windows
        .iter()
        .map(|w| {
            let first = w.start.max(probation);
            if first <= w.end {
                weights[first].1
            } else {
                -profile.fn_
            }
        })
        .sum();
    out
}

/// Corpus totals for one profile.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub raw: f64,
    pub null: f64,
    pub perfect: f64,
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub in_window: usize,
}

impl Totals {
    pub fn add(&mut self, f: &FileScore) {
        self.raw += f.score;
        self.null += f.null;
        self.perfect += f.perfect;
        self.tp += f.tp;
        self.fp += f.fp;
        self.fn_ += f.fn_;
        self.in_window += f.in_window;
    }

    /// The normalised NAB score, 0 = null detector, 100 = perfect.
    pub fn normalised(&self) -> f64 {
        let span = self.perfect - self.null;
        if span.abs() < f64::EPSILON {
            return 0.0;
        }
        100.0 * (self.raw - self.null) / span
    }

    /// Share of detections that fall inside a window.
    pub fn precision(&self) -> f64 {
        let all = self.in_window + self.fp;
        if all == 0 {
            0.0
        } else {
            self.in_window as f64 / all as f64
        }
    }

    /// Share of windows detected.
    pub fn recall(&self) -> f64 {
        let all = self.tp + self.fn_;
        if all == 0 {
            0.0
        } else {
            self.tp as f64 / all as f64
        }
    }
}

/// One file's scores and windows, for the threshold sweep.
pub struct SweepFile<'a> {
    pub scores: &'a [f64],
    pub windows: &'a [Window],
}

/// NAB's own reporting picks, per profile, the one threshold that gives
/// the best corpus score. Returns (threshold, normalised score). All rows
/// are sorted once by score and the corpus total is updated incrementally,
/// so the sweep costs O(n log n).
pub fn best_threshold(files: &[SweepFile<'_>], profile: &Profile) -> (f64, f64) {
    struct Row {
        score: f64,
        window: Option<usize>,
        weight: f64,
    }
    let mut rows = Vec::new();
    let mut window_base = 0;
    let mut null = 0.0;
    let mut perfect = 0.0;
    for f in files {
        let n = f.scores.len();
        let probation = probationary_rows(n);
        let weights = row_weights(n, f.windows, profile);
        let fs = score_file(&vec![false; n], f.windows, profile);
        null += fs.null;
        perfect += fs.perfect;
        for (i, s) in f.scores.iter().enumerate().skip(probation) {
            let (w, weight) = weights[i];
            rows.push(Row {
                score: *s,
                window: w.map(|w| w + window_base),
                weight,
            });
        }
        window_base += f.windows.len();
    }
    rows.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best_in_window: Vec<Option<f64>> = vec![None; window_base];
    // Above every score: nothing detected, the null detector's score.
    let mut raw = null;
    let norm = |raw: f64| {
        if (perfect - null).abs() < f64::EPSILON {
            0.0
        } else {
            100.0 * (raw - null) / (perfect - null)
        }
    };
    let mut best = (f64::INFINITY, norm(raw));
    let mut i = 0;
    while i < rows.len() {
        let t = rows[i].score;
        while i < rows.len() && rows[i].score == t {
            let r = &rows[i];
            match r.window {
                Some(w) => match best_in_window[w] {
                    None => {
                        raw += profile.fn_ + r.weight;
                        best_in_window[w] = Some(r.weight);
                    }
                    Some(b) if r.weight > b => {
                        raw += r.weight - b;
                        best_in_window[w] = Some(r.weight);
                    }
                    Some(_) => {}
                },
                None => raw += r.weight,
            }
            i += 1;
        }
        let n = norm(raw);
        if n > best.1 {
            best = (t, n);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Profile = PROFILES[0];

    #[test]
    fn sigmoid_endpoints() {
        assert!((scaled_sigmoid(0.0)).abs() < 1e-12);
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298).abs() < 1e-8);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
        assert!(scaled_sigmoid(1.0) < -0.98);
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probationary_rows(1000), 150);
        assert_eq!(probationary_rows(4032), 604);
        assert_eq!(probationary_rows(22695), 750);
    }

    fn dets(n: usize, at: &[usize]) -> Vec<bool> {
        let mut d = vec![false; n];
        for i in at {
            d[*i] = true;
        }
        d
    }

    #[test]
    fn detection_at_window_start_scores_full_weight() {
        // 1000 rows: probation 150. One window of 10 rows at 500..=509.
        let w = [Window {
            start: 500,
            end: 509,
        }];
        let f = score_file(&dets(1000, &[500]), &w, &STD);
        assert!((f.score - 1.0).abs() < 1e-12);
        assert_eq!((f.tp, f.fp, f.fn_), (1, 0, 0));
        assert_eq!(f.null, -1.0);
        assert!((f.perfect - 1.0).abs() < 1e-12);
    }

    #[test]
    fn later_detection_in_window_scores_less_and_only_the_best_counts() {
        let w = [Window {
            start: 500,
            end: 509,
        }];
        // Row 504: y = -(509-504+1)/10 = -0.6.
        let expect = scaled_sigmoid(-0.6) / scaled_sigmoid(-1.0);
        let f = score_file(&dets(1000, &[504]), &w, &STD);
        assert!((f.score - expect).abs() < 1e-12);
        let both = score_file(&dets(1000, &[504, 501]), &w, &STD);
        let expect_501 = scaled_sigmoid(-0.9) / scaled_sigmoid(-1.0);
        assert!((both.score - expect_501).abs() < 1e-12);
        assert_eq!(both.in_window, 2);
    }

    #[test]
    fn false_positives_before_and_after_windows() {
        let w = [Window {
            start: 500,
            end: 509,
        }];
        // Before the window: -0.11; the window is missed: -1.
        let f = score_file(&dets(1000, &[300]), &w, &STD);
        assert!((f.score - (-0.11 - 1.0)).abs() < 1e-12);
        // Just after: y = (512-509)/(10-1) = 1/3.
        let f = score_file(&dets(1000, &[512]), &w, &STD);
        let expect = scaled_sigmoid(1.0 / 3.0) * 0.11 - 1.0;
        assert!((f.score - expect).abs() < 1e-12);
        // Far after: -0.11.
        let f = score_file(&dets(1000, &[900]), &w, &STD);
        assert!((f.score - (-1.11)).abs() < 1e-12);
        // In probation: ignored.
        let f = score_file(&dets(1000, &[10]), &w, &STD);
        assert_eq!(f.fp, 0);
        assert!((f.score + 1.0).abs() < 1e-12);
    }

    #[test]
    fn normalisation_maps_null_to_0_and_perfect_to_100() {
        let w = [Window {
            start: 500,
            end: 509,
        }];
        let mut t = Totals::default();
        t.add(&score_file(&dets(1000, &[]), &w, &STD));
        assert!(t.normalised().abs() < 1e-9);
        let mut t = Totals::default();
        t.add(&score_file(&dets(1000, &[500]), &w, &STD));
        assert!((t.normalised() - 100.0).abs() < 1e-9);
        // One FP before the window, perfect detection: (1 - 0.11 + 1) / 2.
        let mut t = Totals::default();
        t.add(&score_file(&dets(1000, &[300, 500]), &w, &STD));
        assert!((t.normalised() - 94.5).abs() < 1e-9);
        assert!((t.precision() - 0.5).abs() < 1e-12);
        assert!((t.recall() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn windows_map_to_rows_inclusively() {
        let ts: Vec<i64> = (0..10).map(|i| i * 10).collect();
        let w = windows_to_rows(&ts, &[(15, 40), (200, 300)]);
        assert_eq!(w, vec![Window { start: 2, end: 4 }]);
        // A clock that steps back inside the window: rows stay in place.
        let ts = [0, 10, 20, 30, 25, 35, 40, 50];
        let w = windows_to_rows(&ts, &[(20, 36)]);
        assert_eq!(w, vec![Window { start: 2, end: 5 }]);
    }

    #[test]
    fn sweep_finds_the_threshold_that_separates_true_from_false() {
        let w = [Window {
            start: 500,
            end: 509,
        }];
        let mut scores = vec![0.1; 1000];
        scores[300] = 0.6; // a false positive
        scores[500] = 0.8; // the true one
        let files = [SweepFile {
            scores: &scores,
            windows: &w,
        }];
        let (t, s) = best_threshold(&files, &STD);
        assert_eq!(t, 0.8);
        assert!((s - 100.0).abs() < 1e-9);
    }
}
