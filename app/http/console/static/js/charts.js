// Charts drawn with the vendored uPlot (a global from vendor/uplot-*/uPlot.iife.min.js). Each chart is
// a figure with a caption and, for people who cannot see the canvas, its numbers in a table.

import { h, int, percent, table, uid } from "./dom.js";

const DAY = 86400;
export const PALETTE = ["#3b3fd8", "#0f8f7e", "#d97706", "#c0265e", "#5b7fa6", "#8e44ad", "#2e7d32", "#7a5c2e"];
const ERROR = "#c62828";
const HEIGHT = 240;

const live = new Set();

// Stop watching the sizes of charts that left the page.
export function disposeCharts() {
  for (const watcher of live) watcher.disconnect();
  live.clear();
}

function mount(plotEl, options, data) {
  const width = () => Math.max(280, Math.floor(plotEl.clientWidth || 640));
  const chart = new window.uPlot({ ...options, width: width(), height: HEIGHT }, data, plotEl);
  const watcher = new ResizeObserver(() => {
    if (plotEl.clientWidth) chart.setSize({ width: width(), height: HEIGHT });
  });
  watcher.observe(plotEl);
  live.add(watcher);
  plotEl.uplot = chart; // for the browser tests, which read its scales and axes
  return chart;
}

function utc(ts) {
  return window.uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
}

// The last `count` UTC days up to today, as "YYYY-MM-DD".
export function lastDays(count = 30, now = Date.now()) {
  const today = Math.floor(now / 1000 / DAY) * DAY;
  return Array.from({ length: count }, (_, i) => new Date((today - (count - 1 - i) * DAY) * 1000).toISOString().slice(0, 10));
}

function figure(title, summary, plotEl, numbers) {
  const id = uid("fig");
  return h("figure", { class: "chart", "aria-labelledby": id },
    h("figcaption", { id }, title),
    h("div", { class: "plot", role: "img", "aria-label": summary }, plotEl),
    numbers ? h("details", { class: "numbers" }, h("summary", null, "Show the numbers"), numbers) : null);
}

const legendValue = (raw) => (u, v, si, di) => (di === null || di === undefined ? "—" : int(raw[si - 1][di]));

// Bars per UTC day, one stacked layer per group: groups = [{label, values: [n per day]}].
export function stackedDays(title, days, groups, unit) {
  const xs = days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000);
  const stacks = [];
  let running = days.map(() => 0);
  for (const g of groups) {
    running = running.map((v, i) => v + (g.values[i] || 0));
    stacks.push(running);
  }
  // uPlot draws series in order: the tallest (all groups) first, each lower layer over it.
  const order = groups.map((_, i) => i).reverse();
  const raw = order.map((i) => groups[i].values);
  const bars = window.uPlot.paths.bars({ size: [0.7, 48] });
  const options = {
    tzDate: utc,
    scales: { x: { time: true, range: (u, min, max) => [min - DAY / 2, max + DAY / 2] }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [{}, { label: unit, size: 64, values: (u, ticks) => ticks.map((t) => compact(t)) }],
    series: [{ label: "Day", value: (u, v) => (v === null ? "—" : new Date(v * 1000).toISOString().slice(0, 10)) },
      ...order.map((i) => ({
        label: groups[i].label, stroke: PALETTE[i % PALETTE.length], fill: PALETTE[i % PALETTE.length] + "cc",
        width: 1, paths: bars, points: { show: false }, value: legendValue(raw),
      }))],
    legend: { live: true },
  };
  const plotEl = h("div");
  const total = groups.reduce((sum, g) => sum + g.values.reduce((a, b) => a + b, 0), 0);
  const summary = `${title}: ${int(total)} ${unit} over ${days.length} days` +
    (groups.length ? `, ${groups.map((g) => `${g.label} ${int(g.values.reduce((a, b) => a + b, 0))}`).join(", ")}` : "");
  const rows = days.map((d, i) => ({ day: d, values: groups.map((g) => g.values[i] || 0) })).filter((r) => r.values.some((v) => v));
  const numbers = table(`${title} (days with any)`, [
    { label: "Day (UTC)", value: (r) => r.day },
    ...groups.map((g, gi) => ({ label: g.label, numeric: true, value: (r) => int(r.values[gi]) })),
  ], rows, { empty: "None in this period." });
  const fig = figure(title, summary, plotEl, numbers);
  fig.dataset.total = String(total);
  mount(plotEl, options, [xs, ...order.map((i) => stacks[i])]);
  return fig;
}

// The error rate per UTC day, on one axis in percent (the day's failed and total requests in its legend
// and table): a day without failures draws nothing.
export function requestsAndErrors(title, days, requests, errors) {
  const xs = days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000);
  const rate = requests.map((r, i) => (r ? (100 * errors[i]) / r : null));
  const bars = window.uPlot.paths.bars({ size: [0.7, 48] });
  const options = {
    tzDate: utc,
    scales: { x: { time: true, range: (u, min, max) => [min - DAY / 2, max + DAY / 2] }, pct: { range: (u, min, max) => [0, percentTop(max)] } },
    axes: [{}, { scale: "pct", label: "error rate", size: 64, values: (u, ticks) => ticks.map((t) => `${+t.toFixed(1)}%`) }],
    series: [{ label: "Day", value: (u, v) => (v === null ? "—" : new Date(v * 1000).toISOString().slice(0, 10)) },
      {
        label: "Error rate", scale: "pct", stroke: ERROR, fill: ERROR + "dd", paths: bars, points: { show: false },
        value: (u, v, si, di) => (di === null || di === undefined || !requests[di] ? "—"
          : `${v < 10 && v > 0 ? v.toFixed(1) : Math.round(v)}% (${int(errors[di])} of ${int(requests[di])} failed)`),
      }],
  };
  const plotEl = h("div");
  const totalRequests = requests.reduce((a, b) => a + b, 0);
  const totalErrors = errors.reduce((a, b) => a + b, 0);
  const summary = `${title}: ${int(totalRequests)} requests over ${days.length} days, ${int(totalErrors)} failed`;
  const rows = days.map((d, i) => ({ day: d, requests: requests[i], errors: errors[i] })).filter((r) => r.requests);
  const numbers = table(`${title} (days with any)`, [
    { label: "Day (UTC)", value: (r) => r.day },
    { label: "Requests", numeric: true, value: (r) => int(r.requests) },
    { label: "Failed", numeric: true, value: (r) => int(r.errors) },
    { label: "Error rate", numeric: true, value: (r) => percent(r.errors, r.requests) },
  ], rows, { empty: "No requests in this period." });
  const fig = figure(title, summary, plotEl, numbers);
  fig.dataset.total = String(totalRequests);
  mount(plotEl, options, [xs, rate]);
  return fig;
}

// The top of a percent axis: the next of a few round values above the highest rate, 10 % at least.
function percentTop(max) {
  return [10, 20, 25, 50, 100].find((top) => top >= (max || 0)) || 100;
}

// A chart of values over the last minutes that grows as samples arrive: push(at, [values]).
export function liveChart(title, series, { unit, keep = 90, span = 60 } = {}) {
  const plotEl = h("div");
  const data = [[], ...series.map(() => [])];
  const options = {
    tzDate: utc,
    scales: { x: { time: true, range: () => recent(data[0], span) }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [{}, { label: unit, size: 64, values: (u, ticks) => ticks.map((t) => compact(t)) }],
    series: [{ label: "Time" }, ...series.map((s, i) => ({
      label: s.label, stroke: s.color || PALETTE[i % PALETTE.length], width: 2,
      value: (u, v) => (v === null || v === undefined ? "—" : v.toFixed(2)),
    }))],
  };
  const fig = figure(title, `${title}, updated every few seconds`, plotEl, null);
  const chart = mount(plotEl, options, data);
  fig.push = (at, values) => {
    data[0].push(at);
    values.forEach((v, i) => data[i + 1].push(v));
    if (data[0].length > keep) data.forEach((column) => column.shift());
    chart.setData(data);
    fig.dataset.samples = String(data[0].length);
  };
  return fig;
}

// The time range of a live chart: its samples, and at least the last `span` seconds up to the newest
// (up to now before the first), so that its first samples read on an axis of seconds. Taken from the
// samples themselves: uPlot widens a single sample's range to 1,000 days before asking.
function recent(times, span) {
  const end = times.length ? times[times.length - 1] : Date.now() / 1000;
  return [Math.min(times.length ? times[0] : end, end - span), end];
}

function compact(n) {
  if (Math.abs(n) >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return `${+n.toFixed(2)}`;
}
