// Operator: live traffic of the instance serving the console — requests and tokens per second, errors
// per second by status, and each upstream target's breaker — from counters sampled every few seconds.

import { liveChart, PALETTE } from "../charts.js";
import { badge, card, h, int, ms, section, table } from "../dom.js";

const EVERY = 2000;
const KEEP = 90;

function rate(now, before, pick) {
  const dt = now.at - before.at;
  return dt > 0 ? Math.max(0, (pick(now) - pick(before)) / dt) : 0;
}

const breakerKind = { closed: "ok", half_open: "neutral", open: "bad" };

export async function render(main, ctx) {
  const { api } = ctx;
  const samples = [];
  const first = await api.get("/admin/v1/traffic");
  if (!ctx.current()) return;
  samples.push(first);

  const cards = h("div", { class: "cards" });
  const breakers = h("div");
  const details = h("div", { class: "columns" });
  const requestsChart = liveChart("Requests per second", [{ label: "requests/s" }], { unit: "req/s", keep: KEEP });
  const tokensChart = liveChart("Tokens per second", [{ label: "tokens/s", color: PALETTE[1] }], { unit: "tokens/s", keep: KEEP });
  const errorsHolder = h("div");
  let errorStatuses = [];
  let errorsChart = null;

  const errorSeries = (statuses) => statuses.map((s, i) => ({ label: `${s}/s`, color: s.startsWith("5") ? ["#c62828", "#8e0000", "#ff5f52"][i % 3] : PALETTE[(i + 2) % PALETTE.length] }));

  const drawErrors = () => {
    const seen = new Set();
    for (const s of samples) for (const status of Object.keys(s.requests_by_status)) if (Number(status) >= 400) seen.add(status);
    const statuses = [...seen].sort();
    if (errorsChart && statuses.join() === errorStatuses.join()) {
      const [before, now] = samples.slice(-2);
      errorsChart.push(now.at, statuses.map((st) => rate(now, before, (x) => x.requests_by_status[st] || 0)));
      return;
    }
    errorStatuses = statuses;
    errorsChart = liveChart("Errors per second, by status", statuses.length ? errorSeries(statuses) : [{ label: "errors/s", color: "#c62828" }], { unit: "errors/s", keep: KEEP });
    for (let i = 1; i < samples.length; i += 1) {
      const [before, now] = [samples[i - 1], samples[i]];
      errorsChart.push(now.at, statuses.length ? statuses.map((st) => rate(now, before, (x) => x.requests_by_status[st] || 0)) : [0]);
    }
    errorsHolder.replaceChildren(errorsChart);
  };

  const drawNumbers = () => {
    const now = samples[samples.length - 1];
    const before = samples.length > 1 ? samples[samples.length - 2] : null;
    const latency = before && now.latency_seconds.count > before.latency_seconds.count
      ? (1000 * (now.latency_seconds.sum - before.latency_seconds.sum)) / (now.latency_seconds.count - before.latency_seconds.count)
      : null;
    const errors = Object.entries(now.requests_by_status).filter(([s]) => Number(s) >= 400).reduce((a, [, n]) => a + n, 0);
    cards.replaceChildren(
      card("Requests since start", int(now.requests), `${int(errors)} answered with an error status`),
      card("Tokens since start", int(now.tokens), `${int(now.tokens_by_kind.prompt || 0)} prompt, ${int(now.tokens_by_kind.completion || 0)} completion`),
      card("Mean latency, last interval", latency === null ? "—" : ms(latency), "to the last byte"),
      card("Ledger", `${int(now.ledger.queued)} queued`, now.ledger.spool_bytes ? `${int(now.ledger.spool_bytes)} bytes spooled: the store is unreachable` : "nothing spooled"));
    breakers.replaceChildren(table("Upstream breakers (the worst state over this instance's workers)", [
      { label: "Target", value: (b) => b.target },
      { label: "State", value: (b) => badge(b.state.replace("_", " "), breakerKind[b.state]) },
    ], now.breakers, { empty: "No upstream targets.", rowId: (b) => b.target }));
    const counts = (caption, label, values) => table(caption, [
      { label, value: ([k]) => k },
      { label: "Count", numeric: true, value: ([, v]) => int(v) },
    ], Object.entries(values), { empty: "None." });
    details.replaceChildren(
      counts("Requests by status, since start", "Status", now.requests_by_status),
      counts("Refusals before any upstream call", "Reason", now.rejections),
      counts("Failed upstream attempts", "Target and kind", now.upstream_errors));
  };

  const tick = async () => {
    try {
      const next = await api.get("/admin/v1/traffic");
      if (!ctx.current()) return;
      const before = samples[samples.length - 1];
      samples.push(next);
      if (samples.length > KEEP + 1) samples.shift();
      requestsChart.push(next.at, [rate(next, before, (x) => x.requests)]);
      tokensChart.push(next.at, [rate(next, before, (x) => x.tokens)]);
      drawErrors();
      drawNumbers();
    } catch (err) {
      if (err.status === 401) stop();
    }
  };
  const timer = setInterval(tick, EVERY);
  const stop = () => clearInterval(timer);
  ctx.onLeave(stop);

  drawErrors();
  drawNumbers();
  main.append(
    h("h1", null, "Live traffic"),
    h("p", { class: "note" }, `This instance's counters, summed over its workers and sampled every ${EVERY / 1000} s; rates are the change between samples.`),
    cards,
    section("Throughput", h("div", { class: "charts" }, requestsChart, tokensChart, errorsHolder)),
    section("Upstream breakers", breakers),
    section("Counts", details));
}
