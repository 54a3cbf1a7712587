// motionwatch dashboard: renders the server's snapshot (GET /api/state, then /events).
// Everything is built with textContent (file names never become markup).
"use strict";

const $ = (id) => document.getElementById(id);
// bidirectional controls in a file name (U+202E ...) would show it reordered: shown as U+FFFD
const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const shown = (text) => String(text).replace(BIDI_CONTROLS, "\ufffd");
const el = (tag, attrs = {}, text) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = shown(text);
  return node;
};
const num = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const STATE_TEXT = {
  waiting: "waiting for the feed", live: "live", stopping: "daemon stopping",
  silent: "no heartbeat: daemon down?", restarted: "restarted",
  stopped: "daemon stopped",
};

function setImage(img, url) {
  if (!url) { img.removeAttribute("src"); img.dataset.url = ""; return; }
  if (img.dataset.url !== url) { img.dataset.url = url; img.src = url; }
}

function renderHeader(s) {
  const d = s.daemon;
  const badge = $("daemon-state");
  badge.className = "badge " + d.state;
  let text = STATE_TEXT[d.state] || d.state;
  if (d.state === "restarted") text += ` (${d.restarts}x, new session)`;
  if (d.state === "stopping" && d.stopping) text = d.stopping;
  badge.textContent = text;
  badge.dataset.state = d.state;
  $("session").textContent = d.session
    ? `session ${d.session.slice(0, 8)} on ${d.host || "?"}` + (d.restarts ? ` · restarts ${d.restarts}` : "")
      + (d.out_dir ? ` · writing into ${d.out_dir}` : "")
    : (d.feed ? `nothing heard from ${d.feed} yet` : "");
  $("problem").textContent = d.problem ? shown(d.problem) : "";
  $("problem").hidden = !d.problem;
}

function card(label, value, cls = "") {
  const c = el("div", { class: "card " + cls });
  c.append(el("b", {}, value), el("span", {}, label));
  return c;
}

function renderCounters(s) {
  const c = s.counters, r = s.rates;
  const box = $("counters");
  box.replaceChildren(
    card("corrected", c.done ?? "–"), card("failed", c.failed ?? "–", c.failed ? "bad" : ""),
    card("quarantined", c.quarantined ?? "–", c.quarantined ? "bad" : ""),
    card("backlog", c.backlog ?? "–"), card("running", c.running ?? "–"),
    card("corrected / min", num(r.corrected_per_min)), card("arriving / min", num(r.arrived_per_min)),
    card("keeping up", r.keeping_up === null ? "–" : (r.keeping_up ? "yes" : "no"),
         r.keeping_up === false ? "bad" : (r.keeping_up ? "good" : "")),
    card("work waiting (min)", num(r.behind_min), r.keeping_up === false ? "bad" : ""),
    card("feed gaps", s.feed.gaps, s.feed.gaps ? "bad" : ""),
    card("dropped by the daemon", c.dropped ?? 0, c.dropped ? "bad" : ""));
}

function renderLatest(s) {
  const m = s.latest;
  if (!m) {  // none (yet) in this session: nothing of another's left shown
    $("latest-name").textContent = "none yet";
    $("latest-facts").replaceChildren();
    for (const id of ["latest-thumb", "latest-spectrum", "latest-drift"]) setImage($(id), null);
    return;
  }
  $("latest-name").textContent = shown(m.name) + (m.series ? ` · ${shown(m.series)} ${num(m.tilt_deg)}°` : "");
  const f = $("latest-facts");
  f.replaceChildren(
    el("span", {}, `drift ${num(m.total_A)} Å (early ${num(m.early_A)})`),
    el("span", {}, `max jump ${num(m.max_frame_jump_A)} Å`),
    el("span", {}, `resolution ${num(m.resolution_A)} Å`),
    el("span", {}, `dose ${num(m.dose_e_A2)} e/Å²`),
    el("span", {}, `pre-exposure ${num(m.pre_exposure_e_A2)} e/Å²`),
    el("span", {}, `local ${m.local_applied ? "applied" : "not applied"}`));
  const p = m.pictures || {};
  setImage($("latest-thumb"), p.thumbnail);
  setImage($("latest-spectrum"), p.spectrum);
  setImage($("latest-drift"), p.drift);
}

function sparkline(target, points, key, threshold, label) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 600 120");
  svg.setAttribute("preserveAspectRatio", "none");
  const values = points.map((p) => p[key]).filter((v) => v !== null && v !== undefined);
  const top = Math.max(1, ...values, threshold || 0) * 1.1;
  const peak = values.length ? Math.max(...values) : null;  // the data's, not the threshold's
  const x = (i) => 30 + (560 * i) / Math.max(1, points.length - 1);
  const y = (v) => 110 - (100 * v) / top;
  const t = document.createElementNS(NS, "text");
  t.setAttribute("x", 32); t.setAttribute("y", 10); t.textContent = `${label} (max ${num(peak)})`;
  svg.append(t);
  if (threshold) {
    const line = document.createElementNS(NS, "line");
    line.setAttribute("x1", 30); line.setAttribute("x2", 590);
    line.setAttribute("y1", y(threshold)); line.setAttribute("y2", y(threshold));
    line.setAttribute("stroke", "#c62828"); line.setAttribute("stroke-dasharray", "4 3");
    svg.append(line);
  }
  const path = points.map((p, i) => (p[key] === null || p[key] === undefined ? null : `${x(i)},${y(p[key])}`))
    .filter(Boolean).join(" ");
  const poly = document.createElementNS(NS, "polyline");
  poly.setAttribute("points", path); poly.setAttribute("fill", "none"); poly.setAttribute("stroke", "#1a5ac8");
  svg.append(poly);
  target.replaceChildren(svg);
}

function renderHistory(s) {
  sparkline($("history-drift"), s.history, "total_A", s.thresholds.max_total_drift_A, "total drift Å");
  sparkline($("history-resolution"), s.history, "resolution_A", null, "resolution Å");
}

function renderSeries(s) {
  const box = $("series");
  const threshold = s.thresholds.max_total_drift_A;
  box.replaceChildren(...s.series.map((series) => {
    const div = el("div", { class: "series", "data-series": series.series });
    const expected = series.n_expected ? `/${series.n_expected}` : "";
    const done = series.n_done ?? series.tilts.length;  // the daemon's count: the page keeps fewer
    div.append(el("h3", {}, `${series.series} · ${series.status} · ${done}${expected} tilts` +
      (series.n_failed ? ` · ${series.n_failed} failed` : "") +
      (series.accumulated_dose_e_A2 ? ` · ${num(series.accumulated_dose_e_A2)} e/Å²` : "")));
    const table = el("table");
    const head = el("tr");
    for (const h of ["tilt °", "movie", "drift Å", "early Å", "resolution Å", "dose e/Å²", "pre-exp. e/Å²"]) head.append(el("th", {}, h));
    table.append(head);
    for (const t of series.tilts) {
      const row = el("tr", { class: "tilt" + (threshold && t.total_A > threshold ? " warn" : ""), "data-path": t.path });
      for (const v of [num(t.tilt_deg), t.name, num(t.total_A), num(t.early_A), num(t.resolution_A), num(t.dose_e_A2, 2), num(t.pre_exposure_e_A2, 2)]) row.append(el("td", {}, v));
      table.append(row);
    }
    div.append(table);
    for (const kind of ["sheet", "chart"]) {
      const url = (series.pictures || {})[kind];
      if (url) { const img = el("img", { alt: `${series.series} ${kind}`, class: "series-" + kind }); img.src = url; div.append(img); }
    }
    return div;
  }));
}

// a note's time (ISO 8601 in UTC, as the daemon stamps it) on the browser's own clock: the UTC
// clock cut out of the string read an hour or more off beside the microscope, unlabelled
function clock(iso) {
  const time = new Date(iso || "");
  return isNaN(time) ? "" : time.toLocaleTimeString("en-GB", { hour12: false });
}

function renderLog(list, items, text) {
  list.replaceChildren(...items.slice(0, 30).map((item) => el("li", {}, `${clock(item.time)} ${text(item)}`)));
}

function render(s) {
  renderHeader(s);
  renderCounters(s);
  renderLatest(s);
  renderHistory(s);
  renderSeries(s);
  const named = (e) => e.shown || (e.path || "").split("/").pop();  // below the common folder
  renderLog($("errors"), s.errors, (e) => `${named(e)}: ${e.reason}`);
  renderLog($("warnings"), s.warnings, (w) => w.message || w.kind);
  document.body.dataset.version = s.version;
}

// a stream refused (503: the dashboard's bounds) or lost for good is opened again this often
const RECONNECT_MS = 5000;

function unreachable() {  // what the page shows is no longer live: said where it is read
  $("connection").textContent = "reconnecting to the dashboard…";
  const badge = $("daemon-state");
  badge.className = "badge unreachable";
  badge.dataset.state = "unreachable";
  badge.textContent = "dashboard unreachable: figures as last seen";
}

function connect() {
  let live = false;  // a snapshot fetched before the stream failed must not say "live"
  fetch("/api/state").then((r) => r.json()).then((s) => { if (live) render(s); })
    .catch(() => {});
  const source = new EventSource("/events");
  source.onopen = () => { live = true; $("connection").textContent = "connected"; };
  source.onerror = () => {
    live = false;
    unreachable();
    if (source.readyState === EventSource.CLOSED) {  // an HTTP error: the browser gives up
      setTimeout(connect, RECONNECT_MS);
    }
  };
  source.onmessage = (event) => { live = true; render(JSON.parse(event.data)); };
}

connect();
