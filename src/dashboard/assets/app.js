// vitals live dashboard: WebSocket client, state, views, filters, alerts.
// The message format is documented in docs/dashboard-stream.md.
"use strict";

(() => {
  const $ = (s) => document.querySelector(s);
  const C = VitalsChart;
  const OVERVIEW = 1, USER = 2; // filter bits: 0 = host overview, 1 = user filter
  // Windows offered (s); longer than the in-memory history they are read from /api/v1.
  const WINDOWS = [60, 300, 900, 3600, 21600, 86400, 604800, 2592000];
  // Query steps (s): the smallest at least the window over the chart width.
  const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  const EVENT_LIMIT = 2000;
  const METRICS_PER_QUERY = 40;
  const OV_METRICS = ["vitals_cpu_usage_ratio", "vitals_cpu_core_usage_ratio", "vitals_memory_used_bytes", "vitals_memory_total_bytes",
    "vitals_disk_read_bytes_total", "vitals_disk_written_bytes_total", "vitals_network_receive_bytes_total", "vitals_network_transmit_bytes_total"];

  const state = {
    series: new Map(), // id -> series
    hello: { history: 900, score_threshold: 0.8, group_labels: ["line", "device", "machine", "sensor"], resolution: 1 },
    sources: [],
    events: [], // newest first
    unseen: 0,
    paused: false,
    pausedAt: 0,
    view: "overview",
    filter: { source: "", metric: "", labels: "", text: "" },
    window: 900,
    from: null, to: null, // a fixed range (s) instead of the window ending now
    skew: 0, // server clock minus local clock, ms
    rtt: 0, // round trip of the best clock-offset probe, ms
    structure: 0, // bumped when the set of series changes
    data: 0, // bumped on every data change
  };
  // Measurements for tests and the benchmark.
  const stats = (window.__vitals = {
    latencies: [], // ms from a sample's timestamp to the frame that drew it
    snapshots: 0, deltas: 0, events: 0, frames: 0, notices: [], eventDelays: [],
    points: () => { let n = 0; for (const s of state.series.values()) n += s.t.length; return n; },
    state,
    pts: (s) => pts(s), // a series' points as drawn (history, then in-memory)
  });
  // History read from the query API for windows beyond the in-memory one.
  const hist = (stats.hist = {
    key: "", at: -1e9, busy: false, step: 0, version: 0, fetches: 0, error: "",
    byKey: new Map(), // series key -> {t: [s], v: [number|null]}
    events: [], // stored events in the range, oldest first
    lastQuery: null, // {query, start, end, step}
  });

  // ---- URL state -------------------------------------------------------
  function readUrl() {
    const q = new URLSearchParams(location.search);
    state.view = ["overview", "sensors", "business"].includes(q.get("view")) ? q.get("view") : "overview";
    state.filter.source = q.get("source") || "";
    state.filter.metric = q.get("metric") || "";
    state.filter.labels = q.get("labels") || "";
    state.filter.text = q.get("q") || "";
    const w = parseInt(q.get("window") || "900", 10);
    state.window = WINDOWS.includes(w) ? w : 900;
    const from = parseTime(q.get("from")), to = parseTime(q.get("to"));
    if (from != null && to != null && from < to) { state.from = from; state.to = to; } else state.from = state.to = null;
    state.paused = q.get("paused") === "1";
    state.pausedAt = Date.now() / 1000;
  }
  function writeUrl() {
    const q = new URLSearchParams();
    if (state.view !== "overview") q.set("view", state.view);
    if (state.filter.source) q.set("source", state.filter.source);
    if (state.filter.metric) q.set("metric", state.filter.metric);
    if (state.filter.labels) q.set("labels", state.filter.labels);
    if (state.filter.text) q.set("q", state.filter.text);
    if (state.from != null) { q.set("from", iso(state.from)); q.set("to", iso(state.to)); }
    else if (state.window !== 900) q.set("window", String(state.window));
    if (state.paused) q.set("paused", "1");
    const s = q.toString();
    history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
  }
  /** Seconds since the epoch from unix seconds or an ISO 8601 time; null if neither. */
  function parseTime(x) {
    if (!x) return null;
    if (/^\d+(\.\d+)?$/.test(x)) return Number(x);
    const ms = Date.parse(x);
    return isNaN(ms) ? null : ms / 1000;
  }
  function iso(t) { return new Date(t * 1000).toISOString().replace(".000Z", "Z"); }

  // ---- the stream ------------------------------------------------------
  let ws = null, retry = 0;
  function userFilter() {
    const f = {};
    if (state.filter.source) f.source = [state.filter.source];
    const metrics = state.filter.metric.split(/[\s,]+/).filter(Boolean);
    if (metrics.length) f.metric = metrics;
    const labels = {};
    for (const part of state.filter.labels.split(",")) {
      const m = part.split(/[=:]/);
      if (m.length >= 2 && m[0].trim()) (labels[m[0].trim()] ||= []).push(m.slice(1).join("=").trim());
    }
    if (Object.keys(labels).length) f.labels = labels;
    if (state.filter.text.trim()) f.text = state.filter.text.trim();
    return f;
  }
  function subscribe() {
    if (!ws || ws.readyState !== 1) return;
    ws.send(JSON.stringify({ type: "subscribe", filters: [{ source: ["system"] }, userFilter()], window: state.hello.history }));
  }
  function connect() {
    const base = location.pathname.replace(/[^/]*$/, "");
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + base + "api/ws");
    const ping = () => { if (ws.readyState === 1) ws.send(JSON.stringify({ type: "ping", t: Date.now() })); };
    ws.onopen = () => {
      retry = 0; setConn("live", "live"); subscribe();
      state.rtt = 0;
      for (const d of [100, 400, 1000, 3000]) setTimeout(ping, d);
    };
    clearInterval(connect.pinger);
    connect.pinger = setInterval(ping, 30000);
    ws.onclose = () => {
      setConn("down", "reconnecting…");
      setTimeout(connect, Math.min(10000, 500 * 2 ** retry++));
    };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch (err) { return; }
      handle(msg);
    };
  }
  function setConn(cls, text) { const el = $("#conn"); el.className = "conn " + cls; el.textContent = text; }

  function handle(msg) {
    switch (msg.type) {
      case "hello":
        state.hello = msg;
        if (!state.rtt) state.skew = msg.now - Date.now();
        break;
      case "pong": {
        // Clock offset from the round trip with the smallest delay (NTP-style).
        const rtt = Date.now() - msg.t;
        if (msg.t && (!state.rtt || rtt <= state.rtt)) {
          state.rtt = Math.max(rtt, 0.001);
          state.skew = msg.now - (msg.t + rtt / 2);
        }
        break;
      }
      case "snapshot":
        stats.snapshots++;
        state.series.clear();
        for (const s of msg.series) addSeries(s, s);
        state.events = msg.events.slice().reverse();
        renderFeed(true);
        if (msg.sources) state.sources = msg.sources;
        state.structure++; state.data++;
        lastTables = -1e9; frame.statsAt = -1e9;
        break;
      case "delta":
        stats.deltas++;
        for (const s of msg.series) addSeries(s, null);
        for (const p of msg.points) { const s = state.series.get(p.id); if (s) merge(s, p); }
        for (const id of msg.gone) state.series.delete(id);
        if (msg.series.length || msg.gone.length) state.structure++;
        for (const e of msg.events) addEvent(e);
        if (msg.sources) state.sources = msg.sources;
        state.data++;
        break;
      case "notice":
        stats.notices.push(msg);
        showNotice(msg.message + (msg.unknown ? ": " + msg.unknown.join(", ") : ""));
        break;
    }
  }

  function addSeries(meta, points) {
    let s = state.series.get(meta.id);
    if (!s) {
      s = { t: [], v: [], s: null, last: 0, value: null, pend: 0, rate: null, rateAt: -1, ver: 0 };
      state.series.set(meta.id, s);
    }
    Object.assign(s, { id: meta.id, metric: meta.metric, kind: meta.kind, source: meta.source, labels: meta.labels, help: meta.help, m: meta.m });
    s.key = seriesKey(meta.metric, meta.labels);
    s.labelText = Object.entries(meta.labels).map(([k, v]) => k + "=" + v).join(", ");
    if (points) { s.t = []; s.v = []; s.s = null; merge(s, points); }
  }

  /** Merge points by time: newer ones append, same slot replaces, older are ignored. */
  function merge(s, p) {
    s.ver++;
    for (let i = 0; i < p.t.length; i++) {
      const t = p.t[i], n = s.t.length;
      const sc = p.s ? p.s[i] : null;
      if (p.s && !s.s) s.s = new Array(n).fill(null);
      if (n && t < s.t[n - 1]) continue;
      if (n && t === s.t[n - 1]) {
        s.v[n - 1] = p.v[i];
        if (p.s) s.s[n - 1] = sc;
        continue;
      }
      s.t.push(t); s.v.push(p.v[i]);
      if (s.s) s.s.push(sc);
    }
    s.last = p.last; s.value = p.value; s.pend = p.last;
    const keep = (Date.now() + state.skew) / 1000 - state.hello.history - 5;
    let cut = C.firstIndex(s.t, keep);
    if (cut > 0) { s.t.splice(0, cut); s.v.splice(0, cut); if (s.s) s.s.splice(0, cut); }
  }

  /** A sample drawn on screen: record its end-to-end latency once. */
  function drawn(s) {
    if (s.pend) {
      stats.latencies.push(Date.now() + state.skew - s.pend);
      if (stats.latencies.length > 20000) stats.latencies.splice(0, 10000);
      s.pend = 0;
    }
  }

  /** Identity of a series across the stream and the query API: name and sorted labels. */
  function seriesKey(metric, labels) {
    return metric + "{" + Object.keys(labels).sort().map((k) => k + "=" + JSON.stringify(labels[k])).join(",") + "}";
  }
  /** A series' points: stored history before its first in-memory point, then the in-memory ones. */
  function pts(s) {
    const h = hist.byKey.get(s.key);
    if (!h || !h.t.length) return s;
    const tag = hist.version + ":" + s.ver;
    if (s.ptsAt === tag) return s.pts;
    const n = C.firstIndex(h.t, s.t.length ? s.t[0] : Infinity);
    s.pts = {
      t: h.t.slice(0, n).concat(s.t), v: h.v.slice(0, n).concat(s.v),
      s: s.s ? new Array(n).fill(null).concat(s.s) : null,
    };
    s.ptsAt = tag;
    return s.pts;
  }
  /** Per-second rate of a counter (null across resets). Cached per data version. */
  function rate(s) {
    const tag = hist.version + ":" + s.ver;
    if (s.rateAt === tag) return s.rate;
    const p = pts(s);
    const t = [], v = [];
    for (let i = 1; i < p.t.length; i++) {
      const dt = p.t[i] - p.t[i - 1];
      const dv = p.v[i] - p.v[i - 1];
      t.push(p.t[i]);
      v.push(dt > 0 && dv >= 0 && p.v[i] != null && p.v[i - 1] != null ? dv / dt : null);
    }
    s.rate = { t, v, s: p.s ? p.s.slice(1) : null };
    s.rateAt = tag;
    return s.rate;
  }
  const line = (s) => (s.kind === "counter" ? rate(s) : pts(s));

  /** Sum several series (their rates for counters) on common timestamps. */
  function sum(list) {
    const acc = new Map();
    for (const s of list) {
      const l = line(s);
      for (let i = 0; i < l.t.length; i++) if (l.v[i] != null) acc.set(l.t[i], (acc.get(l.t[i]) || 0) + l.v[i]);
    }
    const t = [...acc.keys()].sort((a, b) => a - b);
    return { t, v: t.map((k) => acc.get(k)) };
  }

  // ---- time ------------------------------------------------------------
  function nowSec() { return (Date.now() + state.skew) / 1000; }
  function range() {
    if (state.from != null) return [state.from, state.to];
    // The right edge trails real time slightly so new points slide in smoothly.
    const t1 = (state.paused ? state.pausedAt : nowSec()) - 1;
    return [t1 - state.window, t1];
  }
  /** Longest gap (s) a line is drawn across. */
  function gap() { return Math.max(5 * state.hello.resolution, hist.byKey.size ? 2.5 * hist.step : 0); }
  function ago(ms) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((Date.now() + state.skew - ms) / 1000));
    return s < 60 ? s + "s ago" : s < 3600 ? Math.floor(s / 60) + "m " + (s % 60) + "s ago" : Math.floor(s / 3600) + "h ago";
  }

  // ---- overview --------------------------------------------------------
  function bySeries(metric, bit) {
    const out = [];
    for (const s of state.series.values()) if (s.metric === metric && s.m & bit) out.push(s);
    return out;
  }
  let ovCache = { data: -1 };
  function overviewLines() {
    if (ovCache.data === state.data) return ovCache;
    const one = (m) => bySeries(m, OVERVIEW)[0];
    const cpu = one("vitals_cpu_usage_ratio");
    const cores = bySeries("vitals_cpu_core_usage_ratio", OVERVIEW);
    const used = one("vitals_memory_used_bytes"), total = one("vitals_memory_total_bytes");
    const nics = (m) => bySeries(m, OVERVIEW).filter((s) => s.labels.device !== "lo");
    const disksR = bySeries("vitals_disk_read_bytes_total", OVERVIEW), disksW = bySeries("vitals_disk_written_bytes_total", OVERVIEW);
    const rx = nics("vitals_network_receive_bytes_total"), tx = nics("vitals_network_transmit_bytes_total");
    const css = getComputedStyle(document.documentElement);
    ovCache = {
      data: state.data,
      cpu: { lines: [...cores.map((s) => ({ t: pts(s).t, v: pts(s).v, width: 1, alpha: 0.25 })), ...(cpu ? [{ t: pts(cpu).t, v: pts(cpu).v, width: 2, color: css.getPropertyValue("--c1") }] : [])], src: [cpu, ...cores], now: cpu && C.fmt(cpu.value, "%") },
      mem: { lines: used ? [{ t: pts(used).t, v: pts(used).v, width: 2, fill: true }] : [], src: [used], max: total && total.value, now: used && C.fmt(used.value, "B") + (total ? " of " + C.fmt(total.value, "B") : "") },
      disk: { lines: [sum(disksR), sum(disksW)], src: [...disksR, ...disksW] },
      net: { lines: [sum(rx), sum(tx)], src: [...rx, ...tx] },
    };
    const mk = markers();
    for (const k of ["cpu", "mem", "disk", "net"]) {
      const names = new Set(ovCache[k].src.filter(Boolean).map((s) => s.metric));
      ovCache[k].markers = [...names].flatMap((n) => mk.byMetric.get(n) || []);
    }
    ovCache.all = [cpu, ...cores, used, total, ...disksR, ...disksW, ...rx, ...tx].filter(Boolean);
    const lastOf = (l) => (l.v.length ? l.v[l.v.length - 1] : null);
    ovCache.disk.now = "read " + C.fmt(lastOf(ovCache.disk.lines[0]), "B/s") + " · write " + C.fmt(lastOf(ovCache.disk.lines[1]), "B/s");
    ovCache.net.now = "in " + C.fmt(lastOf(ovCache.net.lines[0]), "B/s") + " · out " + C.fmt(lastOf(ovCache.net.lines[1]), "B/s");
    return ovCache;
  }
  function drawOverview() {
    const o = overviewLines();
    const [t0, t1] = range();
    const charts = [["cpu", "%", 0], ["mem", "B", 0], ["disk", "B/s", 0], ["net", "B/s", 0]];
    for (const [k, unit, min] of charts) {
      const c = o[k];
      if (C.draw($("#c-" + k), c.lines, t0, t1, { unit, min, max: c.max, gap: gap(), markers: c.markers })) {
        for (const s of c.src) if (s) drawn(s);
      }
      $("#now-" + k).textContent = c.now || "";
    }
  }
  function renderTables() {
    const groups = new Map();
    for (const s of state.series.values()) {
      if (!(s.m & OVERVIEW) || !s.metric.startsWith("vitals_process_group_")) continue;
      const g = groups.get(s.labels.group) || {};
      g[s.metric.slice("vitals_process_group_".length)] = s;
      groups.set(s.labels.group, g);
    }
    const rows = [...groups.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, g]) => {
      const up = g.up && g.up.value === 1;
      const cpu = g.cpu_seconds_total ? rate(g.cpu_seconds_total).v.at(-1) : null;
      return `<tr><td>${esc(name)}</td><td><span class="pill ${up ? "up" : "down"}">${up ? "up" : "down"}</span></td>` +
        `<td class="num">${g.processes ? C.fmt(g.processes.value) : "–"}</td><td class="num">${cpu == null ? "–" : (cpu * 100).toFixed(1) + "%"}</td>` +
        `<td class="num">${g.resident_memory_bytes ? C.fmt(g.resident_memory_bytes.value, "B") : "–"}</td></tr>`;
    });
    $("#t-groups tbody").innerHTML = rows.join("") || `<tr><td colspan="5" class="empty">No process groups configured.</td></tr>`;
    $("#t-sources tbody").innerHTML = state.sources.map((s) => {
      const up = s.up === 1;
      return `<tr><td>${esc(s.source)}</td><td>${esc(s.type || "")}</td><td><span class="pill ${up ? "up" : "down"}">${up ? "up" : s.up == null ? "?" : "down"}</span></td>` +
        `<td class="num">${s.series}</td><td class="num">${s.errors}</td><td>${s.last_success ? ago(s.last_success * 1000) : "never"}</td></tr>`;
    }).join("");
    const sel = $("#f-source");
    const names = ["", ...state.sources.map((s) => s.source)];
    if (state.filter.source && !names.includes(state.filter.source)) names.push(state.filter.source);
    if (sel.options.length !== names.length || [...sel.options].some((o, i) => o.value !== names[i])) {
      sel.innerHTML = names.map((n) => `<option value="${esc(n)}">${n ? esc(n) : "all"}</option>`).join("");
      sel.value = state.filter.source;
    }
  }

  // ---- sensors and business: one small chart per series ------------------
  const UNIT = [["_celsius", "°C"], ["_pascals", "Pa"], ["_meters_per_second", "m/s"], ["_amperes", "A"], ["_seconds", "s"],
    ["_bytes", "B"], ["_ratio", "%"], ["_volts", "V"], ["_watts", "W"], ["_euros", "€"], ["_meters", "m"]];
  function unitOf(metric) {
    const base = metric.replace(/_total$/, "");
    const u = (UNIT.find(([suf]) => base.endsWith(suf)) || [null, ""])[1];
    return metric.endsWith("_total") ? (u ? u + "/s" : "/s") : u;
  }
  const rows = new Map(); // id -> {el, canvas, val, seen, card}
  const visible = new Set();
  const io = new IntersectionObserver((entries) => {
    for (const e of entries) { const id = +e.target.dataset.id; if (e.isIntersecting) visible.add(id); else visible.delete(id); }
  });
  let builtFor = "";
  function isSensor(s) { return state.hello.group_labels.some((l) => l in s.labels); }
  function buildCards() {
    const key = state.view + ":" + state.structure;
    if (builtFor === key || state.view === "overview") return;
    builtFor = key;
    const sensors = state.view === "sensors";
    const groups = new Map();
    for (const s of state.series.values()) {
      if (!(s.m & USER) || s.source === "system" || s.metric.startsWith("vitals_anomaly_")) continue;
      if (isSensor(s) !== sensors) continue;
      const g = sensors ? state.hello.group_labels.filter((l) => l in s.labels).map((l) => s.labels[l]).join(" / ") : s.metric;
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(s);
    }
    const host = $(sensors ? "#cards-sensors" : "#cards-business");
    for (const r of rows.values()) io.unobserve(r.canvas);
    rows.clear(); visible.clear();
    const frag = document.createDocumentFragment();
    const natural = (a, b) => a.localeCompare(b, undefined, { numeric: true });
    for (const g of [...groups.keys()].sort(natural)) {
      const card = document.createElement("div");
      card.className = "card";
      card.innerHTML = `<h3><span>${esc(g)}</span><span class="tag"></span></h3>`;
      const list = groups.get(g).map((s) => [sensors ? s.metric : s.labelText || "(no labels)", s]).sort((a, b) => natural(a[0], b[0]));
      for (const [name, s] of list) {
        const el = document.createElement("div");
        el.className = "srow";
        el.innerHTML = `<span class="name" title="${esc(s.metric + " " + s.labelText + " — " + (s.help || ""))}">${esc(name)}</span><span class="val"></span><span class="seen"></span><canvas data-id="${s.id}"></canvas>`;
        card.appendChild(el);
        const r = { el, canvas: el.querySelector("canvas"), val: el.querySelector(".val"), seen: el.querySelector(".seen"), card, unit: unitOf(s.metric) };
        rows.set(s.id, r);
        io.observe(r.canvas);
      }
      frag.appendChild(card);
    }
    host.replaceChildren(frag);
    host.parentElement.querySelector(".empty").hidden = groups.size > 0;
  }
  function silentAfter(s) {
    // Three typical intervals, at least 10 s.
    const n = s.t.length;
    const typical = n >= 3 ? Math.min(s.t[n - 1] - s.t[n - 2], s.t[n - 2] - s.t[n - 3]) : state.hello.resolution;
    return Math.max(10, 3 * typical) * 1000;
  }
  function drawCards(full) {
    const [t0, t1] = range();
    const thr = state.hello.score_threshold;
    const now = Date.now() + state.skew;
    const mk = markers();
    const cards = new Map();
    for (const [id, r] of rows) {
      const s = state.series.get(id);
      if (!s) continue;
      const silent = now - s.last > silentAfter(s);
      const c = cards.get(r.card) || { all: 0, silent: 0, since: 0 };
      c.all++; if (silent) { c.silent++; c.since = Math.max(c.since, s.last); }
      cards.set(r.card, c);
      if (!visible.has(id) && !full) continue;
      const l = line(s);
      const score = s.s ? s.s[s.s.length - 1] : null;
      r.el.classList.toggle("silent", silent);
      r.el.classList.toggle("anom", score != null && score >= thr);
      r.val.textContent = C.fmt(s.kind === "counter" ? l.v.at(-1) : s.value, r.unit === "%" ? "%" : r.unit);
      r.seen.textContent = ago(s.last);
      if (visible.has(id) && C.draw(r.canvas, [{ t: l.t, v: l.v, s: l.s, width: 1.4, fill: true }], t0, t1,
        { unit: r.unit === "%" ? "%" : "", axes: false, scoreStrip: true, threshold: thr, gap: gap(), markers: mk.bySeries.get(s.key) })) drawn(s);
    }
    for (const [card, c] of cards) {
      const silent = c.all > 0 && c.silent === c.all;
      card.classList.toggle("silent", silent);
      card.querySelector(".tag").textContent = silent ? "silent since " + ago(c.since).replace(" ago", "") : c.silent ? c.silent + " silent" : "";
    }
  }

  // ---- alerts ----------------------------------------------------------
  function addEvent(e) {
    stats.events++;
    // Delay from the event's publication to its display (clock-skew corrected).
    stats.eventDelays.push({ kind: e.kind, ms: Date.now() + state.skew - e.timestamp_ms });
    state.events.unshift(e);
    if (state.events.length > 200) state.events.length = 200;
    if (e.m & USER) {
      state.unseen++;
      if (e.severity === "critical" && $("#notify").checked && "Notification" in window && Notification.permission === "granted") {
        try { new Notification("vitals: " + e.metric, { body: `${e.reason}: ${C.fmt(e.value)} ${labelsText(e.labels)}`, tag: e.metric + e.labels }); } catch (err) {}
      }
    }
    renderFeed(false, e);
  }
  function labelsText(rendered) { return rendered || ""; }
  function eventItem(e, fresh) {
    const li = document.createElement("li");
    li.className = e.severity + (fresh ? " fresh" : "");
    const exp = e.expected != null ? ` · expected <b>${C.fmt(e.expected)}</b>` : "";
    const band = e.lower != null || e.upper != null ? ` [${C.fmt(e.lower)} … ${C.fmt(e.upper)}]` : "";
    li.innerHTML = `<div class="row1"><span class="sev">${esc(e.severity)}</span><span>${esc(e.kind)} · ${esc(e.reason)}</span>` +
      `<time>${C.clock(Math.floor(e.timestamp_ms / 1000))}</time></div>` +
      `<div class="series">${esc(e.metric)}${esc(e.labels)}</div>` +
      `<div class="vals">value <b>${C.fmt(e.value)}</b>${exp}${band} · ${esc(e.source)}</div>`;
    return li;
  }
  function renderFeed(all, one) {
    const feed = $("#feed");
    if (all) {
      feed.replaceChildren(...state.events.filter((e) => e.m & USER).slice(0, 200).map((e) => eventItem(e, false)));
    } else if (one && one.m & USER) {
      feed.prepend(eventItem(one, true));
      while (feed.children.length > 200) feed.lastChild.remove();
    }
    $("#feed-empty").hidden = feed.children.length > 0;
    const badge = $("#badge");
    badge.hidden = state.unseen === 0;
    badge.textContent = state.unseen > 99 ? "99+" : String(state.unseen);
  }

  // ---- history: query API, event markers, CSV export ----------------------
  /** Does the range reach beyond the in-memory history? */
  function needHistory() { return state.from != null || state.window > state.hello.history; }
  /** Width (CSS px) of the widest chart in the view: one query step per pixel. */
  function chartWidth() {
    let w = 0;
    for (const c of document.querySelectorAll(state.view === "overview" ? "#view-overview canvas" : "#view-" + state.view + " canvas")) w = Math.max(w, c.clientWidth);
    return w || 600;
  }
  function stepFor(span) {
    const raw = span / chartWidth();
    return Math.max(state.hello.resolution || 1, STEPS.find((s) => s >= raw) || STEPS[STEPS.length - 1]);
  }
  /** The series the current view draws (and exports). */
  function seriesInView() {
    if (state.view === "overview") return overviewLines().all;
    return [...rows.keys()].map((id) => state.series.get(id)).filter(Boolean);
  }
  function metricsInView() {
    const names = state.view === "overview" ? OV_METRICS : [...new Set(seriesInView().map((s) => s.metric))];
    return names.filter((n) => /^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(n)).sort();
  }
  async function getJson(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok || !body || body.status !== "success") throw new Error(body && body.error ? body.error : "HTTP " + r.status);
    return body.data;
  }
  function num(x) { const v = parseFloat(x); return isFinite(v) ? v : null; }
  /** Fetch what the range needs when the view, range or step changed (sliding windows: every minute). */
  function maybeFetch(ts) {
    if (!needHistory()) {
      if (hist.byKey.size || hist.events.length) { hist.byKey = new Map(); hist.events = []; hist.key = ""; hist.version++; state.data++; }
      return;
    }
    if (hist.busy) return;
    const metrics = metricsInView();
    if (!metrics.length) return;
    const [t0, t1] = range();
    const step = stepFor(t1 - t0);
    const key = [state.view, metrics.join("|"), step, state.from, state.to, state.window].join(" ");
    const slide = state.from == null && !state.paused && ts - hist.at > Math.max(60000, 5000 * step);
    if (key !== hist.key || slide) fetchHistory(key, metrics, t0, t1, step, ts);
  }
  async function fetchHistory(key, metrics, t0, t1, step, ts) {
    hist.busy = true; hist.key = key; hist.at = ts; hist.fetches++;
    const start = Math.floor(t0 / step) * step, end = Math.ceil(t1 / step) * step;
    const queries = [];
    for (let i = 0; i < metrics.length; i += METRICS_PER_QUERY) queries.push('{__name__=~"' + metrics.slice(i, i + METRICS_PER_QUERY).join("|") + '"}');
    hist.lastQuery = { query: queries[0], queries, start, end, step };
    const qs = (q) => "api/v1/query_range?query=" + encodeURIComponent(q) + "&start=" + start + "&end=" + end + "&step=" + step;
    try {
      const [results, events] = await Promise.all([
        Promise.all(queries.map((q) => getJson(qs(q)))),
        getJson("api/v1/vitals/events?start=" + start + "&end=" + end + "&limit=" + EVENT_LIMIT).catch(() => []),
      ]);
      if (hist.key !== key) return; // the range changed meanwhile
      const byKey = new Map();
      for (const data of results) {
        for (const r of data.result || []) {
          const labels = { ...r.metric };
          const name = labels.__name__;
          delete labels.__name__;
          const h = { t: r.values.map((p) => Number(p[0])), v: r.values.map((p) => num(p[1])) };
          byKey.set(seriesKey(name, labels), h);
        }
      }
      hist.byKey = byKey; hist.events = Array.isArray(events) ? events : []; hist.step = step; hist.error = "";
    } catch (err) {
      if (hist.key !== key) return;
      hist.error = String(err.message || err);
      showNotice("History unavailable (" + hist.error + "): showing the in-memory window");
    } finally {
      hist.busy = false;
    }
    hist.version++; state.data++;
  }

  /** `{a="x"}` (as events carry labels) to an object. */
  function parseLabels(text) {
    const out = {}, re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    let m;
    while ((m = re.exec(text || ""))) out[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    return out;
  }
  function renderLabels(labels) {
    return "{" + Object.keys(labels).sort().map((k) => k + '="' + String(labels[k]).replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : "\\" + c)) + '"').join(",") + "}";
  }
  /** Event markers by series key and by metric: stored events in the range and live ones. */
  let mkCache = { tag: "" };
  function markers() {
    const tag = hist.version + ":" + stats.events + ":" + stats.snapshots;
    if (mkCache.tag === tag) return mkCache;
    const all = new Map();
    for (const e of [...hist.events, ...state.events]) all.set(e.timestamp_ms + e.kind + e.metric + e.labels + e.reason, e);
    mkCache = { tag, bySeries: new Map(), byMetric: new Map() };
    const push = (m, k, v) => { if (!m.has(k)) m.set(k, []); m.get(k).push(v); };
    for (const e of all.values()) {
      const mark = { t: e.timestamp_ms / 1000, severity: e.severity, kind: e.kind };
      push(mkCache.bySeries, seriesKey(e.metric, parseLabels(e.labels)), mark);
      push(mkCache.byMetric, e.metric, mark);
    }
    return mkCache;
  }

  function csvField(x) {
    const s = x == null ? "" : String(x);
    return /[",\r\n]/.test(s) || s !== s.trim() ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function stamp(t) { return iso(Math.round(t)).replace(/[-:]/g, ""); }
  /** The series and range in view as CSV (RFC 4180), built from the points shown. */
  function csv() {
    const [t0, t1] = range();
    const out = ["time,unix_seconds,metric,source,labels,value"];
    for (const s of seriesInView()) {
      const p = pts(s), labels = renderLabels(s.labels);
      for (let i = C.firstIndex(p.t, t0); i < p.t.length && p.t[i] <= t1; i++) {
        out.push([new Date(p.t[i] * 1000).toISOString(), p.t[i], s.metric, s.source, labels, p.v[i]].map(csvField).join(","));
      }
    }
    return { text: out.join("\r\n") + "\r\n", name: "vitals-" + state.view + "-" + stamp(t0) + "-" + stamp(t1) + ".csv" };
  }
  function exportCsv() {
    const { text, name } = csv();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  }

  // ---- range: window, custom from/to, zoom and pan -------------------------
  function localInput(t) {
    const d = new Date(Math.round(t) * 1000), p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  function showRange() {
    const custom = state.from != null;
    $("#f-window").value = custom ? "custom" : String(state.window);
    $("#custom").hidden = !custom;
    $("#live").hidden = !custom;
    if (custom) { $("#f-from").value = localInput(state.from); $("#f-to").value = localInput(state.to); }
  }
  /** Show the fixed range [a, b] (s); it keeps streaming while it includes now. */
  function setRange(a, b) {
    a = Math.floor(a); b = Math.ceil(b);
    if (b - a < 10) { const mid = (a + b) / 2; a = Math.floor(mid - 5); b = a + 10; }
    state.from = a; state.to = b;
    showRange(); writeUrl();
  }
  function setWindow(w) {
    state.from = state.to = null; state.window = w;
    showRange(); writeUrl();
  }
  function pan(frac) {
    const [t0, t1] = range(), d = (t1 - t0) * frac;
    setRange(t0 + d, t1 + d);
  }
  function initZoom() {
    let drag = null;
    const box = $("#zoombox");
    $("#main").addEventListener("pointerdown", (e) => {
      const cv = e.target.closest("canvas");
      if (!cv || !cv.__geom || e.button !== 0) return;
      drag = { cv, r: cv.getBoundingClientRect(), x0: e.clientX, pan: e.shiftKey, g: { ...cv.__geom } };
      e.preventDefault();
    });
    addEventListener("pointermove", (e) => {
      if (!drag || drag.pan) return;
      const a = Math.min(drag.x0, e.clientX), b = Math.max(drag.x0, e.clientX);
      Object.assign(box.style, { left: a + "px", width: b - a + "px", top: drag.r.top + "px", height: drag.r.height + "px" });
      box.hidden = false;
    });
    addEventListener("pointerup", (e) => {
      if (!drag) return;
      const d = drag;
      drag = null; box.hidden = true;
      const dx = e.clientX - d.x0;
      if (Math.abs(dx) < 4) return;
      const perPx = (d.g.t1 - d.g.t0) / d.g.plotW;
      if (d.pan) { setRange(d.g.t0 - dx * perPx, d.g.t1 - dx * perPx); return; }
      const at = (cx) => d.g.t0 + (cx - d.r.left - d.g.padL) * perPx;
      setRange(at(Math.min(d.x0, e.clientX)), at(Math.max(d.x0, e.clientX)));
    });
  }

  // ---- controls --------------------------------------------------------
  let noticeTimer = 0;
  function showNotice(text) {
    const n = $("#notice");
    n.textContent = text; n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => (n.hidden = true), 8000);
  }
  function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  function setView(v) {
    state.view = v;
    for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.view === v));
    for (const id of ["overview", "sensors", "business"]) $("#view-" + id).hidden = id !== v;
    builtFor = "";
    writeUrl();
  }
  function setPaused(p) {
    state.paused = p;
    if (p) state.pausedAt = nowSec();
    $("#pause").classList.toggle("on", p);
    $("#pause").textContent = p ? "Paused" : "Pause";
    writeUrl();
  }
  function initControls() {
    for (const b of document.querySelectorAll(".tabs button")) b.onclick = () => setView(b.dataset.view);
    $("#pause").onclick = () => setPaused(!state.paused);
    $("#theme").onclick = () => {
      const dark = getComputedStyle(document.documentElement).colorScheme === "dark";
      document.documentElement.dataset.theme = dark ? "light" : "dark";
      try { localStorage.setItem("vitals-theme", document.documentElement.dataset.theme); } catch (e) {}
      C.resetColors(); ovCache.data = -1;
    };
    $("#alerts-toggle").onclick = () => {
      $("#alerts").classList.toggle("closed");
      state.unseen = 0; renderFeed(false);
    };
    $("#notify").onchange = (e) => {
      if (e.target.checked && "Notification" in window && Notification.permission === "default") Notification.requestPermission();
    };
    const fields = { "#f-metric": "metric", "#f-labels": "labels", "#f-text": "text" };
    let debounce = 0;
    for (const [sel, key] of Object.entries(fields)) {
      $(sel).value = state.filter[key];
      $(sel).oninput = () => {
        state.filter[key] = $(sel).value;
        clearTimeout(debounce);
        debounce = setTimeout(() => { writeUrl(); subscribe(); }, 300);
      };
    }
    $("#f-source").onchange = () => { state.filter.source = $("#f-source").value; writeUrl(); subscribe(); };
    $("#f-window").onchange = () => {
      const v = $("#f-window").value;
      if (v === "custom") { const [t0, t1] = range(); setRange(t0, t1); } else setWindow(parseInt(v, 10));
    };
    const custom = () => {
      const a = Date.parse($("#f-from").value) / 1000, b = Date.parse($("#f-to").value) / 1000;
      if (a < b) setRange(a, b); else showNotice("From must be before To");
    };
    $("#f-from").onchange = custom;
    $("#f-to").onchange = custom;
    $("#pan-back").onclick = () => pan(-0.5);
    $("#pan-fwd").onclick = () => pan(0.5);
    $("#live").onclick = () => { const [t0, t1] = range(); setWindow(WINDOWS.find((w) => w >= t1 - t0) || WINDOWS[WINDOWS.length - 1]); };
    $("#export").onclick = exportCsv;
    showRange();
    initZoom();
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => { C.resetColors(); });
  }

  // ---- the frame loop ----------------------------------------------------
  let lastCards = -1e9, lastTables = -1e9, cardsData = -1;
  function frame(ts) {
    stats.frames++;
    if (state.view === "overview") {
      if (!state.paused || ovCache.data !== state.data) drawOverview();
      if (ts - lastTables > 1000) { lastTables = ts; renderTables(); }
    } else {
      buildCards();
      // Small charts redraw when data arrives, and otherwise four times a
      // second to scroll (their pixels move slowly).
      if (state.data !== cardsData || ts - lastCards > 250) { lastCards = ts; cardsData = state.data; drawCards(false); }
    }
    const lat = stats.latencies.slice(-200).sort((a, b) => a - b);
    if (ts - (frame.statsAt ?? -1e9) > 1000) {
      frame.statsAt = ts;
      $("#stats").textContent = `${state.series.size} series · ${stats.points()} points in memory · ` +
        (hist.byKey.size ? `history ${hist.byKey.size} series at ${hist.step} s steps · ` : "") +
        (lat.length ? `latency p50 ${lat[Math.floor(lat.length / 2)]} ms, p95 ${lat[Math.floor(lat.length * 0.95)]} ms` : "waiting for data");
    }
    maybeFetch(ts);
    requestAnimationFrame(frame);
  }

  readUrl();
  initControls();
  setView(state.view);
  setPaused(state.paused);
  connect();
  requestAnimationFrame(frame);
})();
