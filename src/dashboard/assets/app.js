// vitals live dashboard: WebSocket client, state, views, filters, alerts.
// The message format is documented in docs/dashboard-stream.md.
"use strict";

(() => {
  const $ = (s) => document.querySelector(s);
  const C = VitalsChart;
  const OVERVIEW = 1, USER = 2; // filter bits: 0 = host overview, 1 = user filter

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
    state.window = [60, 300, 900].includes(w) ? w : 900;
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
    if (state.window !== 900) q.set("window", String(state.window));
    if (state.paused) q.set("paused", "1");
    const s = q.toString();
    history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
  }

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
      s = { t: [], v: [], s: null, last: 0, value: null, pend: 0, rate: null, rateAt: -1 };
      state.series.set(meta.id, s);
    }
    Object.assign(s, { id: meta.id, metric: meta.metric, kind: meta.kind, source: meta.source, labels: meta.labels, help: meta.help, m: meta.m });
    s.labelText = Object.entries(meta.labels).map(([k, v]) => k + "=" + v).join(", ");
    if (points) { s.t = []; s.v = []; s.s = null; merge(s, points); }
  }

  /** Merge points by time: newer ones append, same slot replaces, older are ignored. */
  function merge(s, p) {
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

  /** Per-second rate of a counter (null across resets). Cached per data version. */
  function rate(s) {
    if (s.rateAt === s.t.length + ":" + s.last) return s.rate;
    const t = [], v = [];
    for (let i = 1; i < s.t.length; i++) {
      const dt = s.t[i] - s.t[i - 1];
      const dv = s.v[i] - s.v[i - 1];
      t.push(s.t[i]);
      v.push(dt > 0 && dv >= 0 && s.v[i] != null && s.v[i - 1] != null ? dv / dt : null);
    }
    s.rate = { t, v, s: s.s ? s.s.slice(1) : null };
    s.rateAt = s.t.length + ":" + s.last;
    return s.rate;
  }
  const line = (s) => (s.kind === "counter" ? rate(s) : s);

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
    // The right edge trails real time slightly so new points slide in smoothly.
    const t1 = (state.paused ? state.pausedAt : nowSec()) - 1;
    return [t1 - state.window, t1];
  }
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
      cpu: { lines: [...cores.map((s) => ({ t: s.t, v: s.v, width: 1, alpha: 0.25 })), ...(cpu ? [{ t: cpu.t, v: cpu.v, width: 2, color: css.getPropertyValue("--c1") }] : [])], src: [cpu, ...cores], now: cpu && C.fmt(cpu.value, "%") },
      mem: { lines: used ? [{ t: used.t, v: used.v, width: 2, fill: true }] : [], src: [used], max: total && total.value, now: used && C.fmt(used.value, "B") + (total ? " of " + C.fmt(total.value, "B") : "") },
      disk: { lines: [sum(disksR), sum(disksW)], src: [...disksR, ...disksW] },
      net: { lines: [sum(rx), sum(tx)], src: [...rx, ...tx] },
    };
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
      if (C.draw($("#c-" + k), c.lines, t0, t1, { unit, min, max: c.max, gap: 5 * state.hello.resolution })) {
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
        { unit: r.unit === "%" ? "%" : "", axes: false, scoreStrip: true, threshold: thr, gap: 5 * state.hello.resolution })) drawn(s);
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
    $("#f-window").value = String(state.window);
    $("#f-window").onchange = () => { state.window = parseInt($("#f-window").value, 10); writeUrl(); };
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
        (lat.length ? `latency p50 ${lat[Math.floor(lat.length / 2)]} ms, p95 ${lat[Math.floor(lat.length * 0.95)]} ms` : "waiting for data");
    }
    requestAnimationFrame(frame);
  }

  readUrl();
  initControls();
  setView(state.view);
  setPaused(state.paused);
  connect();
  requestAnimationFrame(frame);
})();
