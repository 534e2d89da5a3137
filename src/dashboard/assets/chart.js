// Small canvas line charts for the vitals dashboard: time on x, one or
// more lines, optional anomaly-score strip and anomalous-point markers.
// No dependencies. One canvas per chart; drawing cost is proportional to
// the points in view, and nothing is allocated per point.
"use strict";

const VitalsChart = (() => {
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  let palette = null;
  function colors() {
    if (!palette) {
      palette = {
        ink: css("--ink"), muted: css("--muted"), grid: css("--grid"), crit: css("--crit"),
        warn: css("--warn"), info: css("--accent-2"),
        lines: ["--c1", "--c2", "--c3", "--c4", "--c5", "--c6"].map(css),
      };
    }
    return palette;
  }
  /** Forget cached colours (after a theme change). */
  function resetColors() { palette = null; }

  /** "Nice" tick step for a range and a target tick count. */
  function niceStep(range, ticks) {
    const raw = range / Math.max(1, ticks);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  }

  const UNITS = ["", "k", "M", "G", "T", "P"];
  /** Compact number: 1.2k, 3.4M, 0.0021. */
  function fmt(v, unit) {
    if (v == null || !isFinite(v)) return "–";
    if (unit === "%") return (v * 100).toFixed(v < 0.1 ? 1 : 0) + "%";
    const a = Math.abs(v);
    let s;
    if (unit === "B" || unit === "B/s") {
      let i = 0, x = a;
      while (x >= 1024 && i < UNITS.length - 1) { x /= 1024; i++; }
      s = (x >= 100 ? x.toFixed(0) : x.toFixed(1)) + " " + (i ? UNITS[i] + "i" : "") + unit;
      return (v < 0 ? "-" : "") + s;
    }
    if (a >= 1e4) {
      let i = 0, x = a;
      while (x >= 1000 && i < UNITS.length - 1) { x /= 1000; i++; }
      s = (x >= 100 ? x.toFixed(0) : x.toFixed(1)) + UNITS[i];
    } else if (a >= 100 || Number.isInteger(a)) s = a.toFixed(0);
    else if (a >= 1) s = a.toFixed(a >= 10 ? 1 : 2);
    else s = a.toPrecision(2);
    return (v < 0 ? "-" : "") + s + (unit ? " " + unit : "");
  }

  function clock(tSec) {
    const d = new Date(tSec * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0") +
      (d.getSeconds() ? ":" + String(d.getSeconds()).padStart(2, "0") : "");
  }
  /** Axis label: the clock, with the day for ticks a day apart or more. */
  function tick(tSec, step) {
    if (step < 86400) return clock(tSec);
    const d = new Date(tSec * 1000);
    return String(d.getMonth() + 1).padStart(2, "0") + "-" + String(d.getDate()).padStart(2, "0");
  }
  const TICKS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

  /** Size the backing store to the element and device pixel ratio. */
  function fit(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return null;
    const W = Math.round(w * dpr), H = Math.round(h * dpr);
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { ctx, w, h };
  }

  /**
   * Draw `lines` over the time range [t0, t1] (seconds).
   * Each line: {t: [sec], v: [number|null], s?: [score|null], color?, width?, alpha?}.
   * opts: {unit, axes (bool), min (fixed y min), max, threshold (score), scoreStrip (bool),
   *   gap (s: a longer gap breaks the line), markers ([{t, severity}]: events, drawn as
   *   vertical lines with a triangle on top)}.
   * Records the plot geometry in `canvas.__geom` (for zoom and pan) and where
   * each marker was drawn in `canvas.__marks` ([{t, x, y}], CSS pixels).
   */
  function draw(canvas, lines, t0, t1, opts) {
    const f = fit(canvas);
    if (!f) return false;
    const { ctx, w, h } = f;
    const c = colors();
    const axes = opts.axes !== false;
    const padL = axes ? (opts.unit === "B" || opts.unit === "B/s" ? 72 : 48) : 2, padR = 4, padT = 6, padB = axes ? 18 : 2;
    const strip = opts.scoreStrip && lines.some((l) => l.s) ? Math.max(8, Math.round(h * 0.18)) : 0;
    const plotH = h - padT - padB - strip;
    const plotW = w - padL - padR;
    ctx.clearRect(0, 0, w, h);
    // y range over the points in view (and one past each edge)
    let lo = Infinity, hi = -Infinity;
    const end = (l) => Math.min(l.t.length, firstIndex(l.t, t1) + 1);
    for (const l of lines) {
      for (let i = firstIndex(l.t, t0 - 2), n = end(l); i < n; i++) {
        const v = l.v[i];
        if (v == null) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (opts.min != null) lo = Math.min(lo, opts.min);
    if (opts.max != null) hi = Math.max(hi, opts.max);
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) { const d = Math.abs(hi) * 0.05 || 1; lo -= d; hi += d; }
    else { const pad = (hi - lo) * 0.08; if (opts.min == null || lo > opts.min) lo -= pad; hi += pad; if (opts.min != null && lo < opts.min) lo = opts.min; }
    const x = (t) => padL + ((t - t0) / (t1 - t0)) * plotW;
    const y = (v) => padT + (1 - (v - lo) / (hi - lo)) * plotH;

    if (axes) {
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = c.muted;
      ctx.strokeStyle = c.grid;
      ctx.lineWidth = 1;
      const ys = niceStep(hi - lo, Math.max(2, Math.floor(plotH / 36)));
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (let v = Math.ceil(lo / ys) * ys; v <= hi; v += ys) {
        const py = Math.round(y(v)) + 0.5;
        ctx.beginPath(); ctx.moveTo(padL, py); ctx.lineTo(w - padR, py); ctx.stroke();
        ctx.fillText(fmt(v, opts.unit), padL - 6, py);
      }
      const span = t1 - t0;
      const xs = TICKS.find((s) => span / s <= Math.max(2, plotW / 90)) || TICKS[TICKS.length - 1];
      // Day-or-longer ticks fall on local midnights.
      const off = xs >= 86400 ? new Date(t0 * 1000).getTimezoneOffset() * 60 : 0;
      ctx.textAlign = "center"; ctx.textBaseline = "top";
      for (let t = Math.ceil((t0 - off) / xs) * xs + off; t <= t1; t += xs) {
        const px = Math.round(x(t)) + 0.5;
        ctx.beginPath(); ctx.moveTo(px, padT); ctx.lineTo(px, padT + plotH); ctx.stroke();
        ctx.fillText(tick(t, xs), px, h - padB + 4);
      }
    }
    ctx.save();
    ctx.beginPath(); ctx.rect(padL, 0, plotW, h); ctx.clip();
    lines.forEach((l, k) => {
      const color = l.color || c.lines[k % c.lines.length];
      ctx.strokeStyle = color;
      ctx.globalAlpha = l.alpha == null ? 1 : l.alpha;
      ctx.lineWidth = l.width || 1.5;
      ctx.lineJoin = "round";
      ctx.beginPath();
      let pen = false, prevT = 0, segX = 0;
      const gap = (opts.gap || 5);
      const fill = l.fill && lines.length === 1;
      const area = fill ? new Path2D() : null, bottom = padT + plotH;
      const close = (px) => { if (area) { area.lineTo(px, bottom); area.lineTo(segX, bottom); area.closePath(); } };
      for (let i = firstIndex(l.t, t0 - 2), n = end(l); i < n; i++) {
        const v = l.v[i];
        if (v == null) { if (pen) close(x(prevT)); pen = false; continue; }
        const px = x(l.t[i]), py = y(v);
        if (pen && l.t[i] - prevT <= gap) { ctx.lineTo(px, py); if (area) area.lineTo(px, py); }
        else {
          if (pen) close(x(prevT));
          ctx.moveTo(px, py);
          if (area) area.moveTo(px, py);
          segX = px;
        }
        pen = true; prevT = l.t[i];
      }
      if (pen) close(x(prevT));
      ctx.stroke();
      if (fill) { ctx.globalAlpha = 0.08; ctx.fillStyle = color; ctx.fill(area); }
      ctx.globalAlpha = 1;
      if (l.s) {
        const thr = opts.threshold || 0.8;
        // score strip under the plot
        if (strip) {
          const top = padT + plotH + 2, sh = strip - 3;
          ctx.fillStyle = c.crit;
          for (let i = firstIndex(l.t, t0 - 2); i < l.t.length; i++) {
            const s = l.s[i];
            if (s == null) continue;
            ctx.globalAlpha = s >= thr ? 0.9 : 0.35;
            const bh = Math.max(1, s * sh);
            ctx.fillRect(x(l.t[i]) - 1, top + sh - bh, 2.5, bh);
          }
          ctx.globalAlpha = 1;
        }
        // anomalous points on the line
        ctx.fillStyle = c.crit;
        for (let i = firstIndex(l.t, t0 - 2); i < l.t.length; i++) {
          if (l.s[i] != null && l.s[i] >= thr && l.v[i] != null) {
            ctx.beginPath(); ctx.arc(x(l.t[i]), y(l.v[i]), 3.2, 0, 2 * Math.PI); ctx.fill();
          }
        }
      }
    });
    const marks = [];
    for (const m of opts.markers || []) {
      if (m.t < t0 || m.t > t1) continue;
      const px = Math.round(x(m.t)) + 0.5;
      ctx.strokeStyle = ctx.fillStyle = m.severity === "critical" ? c.crit : m.severity === "warning" ? c.warn : c.info;
      ctx.globalAlpha = 0.55; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(px, padT); ctx.lineTo(px, padT + plotH); ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.beginPath(); ctx.moveTo(px - 4, padT); ctx.lineTo(px + 4, padT); ctx.lineTo(px, padT + 6); ctx.closePath(); ctx.fill();
      marks.push({ t: m.t, x: px, y: padT + 2 });
    }
    ctx.restore();
    canvas.__geom = { padL, plotW, t0, t1 };
    canvas.__marks = marks;
    return true;
  }

  /** First index with t[i] >= t (binary search; arrays are ascending). */
  function firstIndex(t, from) {
    let a = 0, b = t.length;
    while (a < b) { const m = (a + b) >> 1; if (t[m] < from) a = m + 1; else b = m; }
    return a;
  }

  return { draw, fmt, clock, resetColors, firstIndex };
})();
