// Monitoring: per label set, the live acceptance rate against the calibration coverage, the drift
// statistic and the estimated accuracy over time, polled from GET /v1/label-sets/{id}/monitor (the
// monitoring issue adds it; until then this page says the server does not offer it). Links to /metrics.
import { url, endpoints } from "../api.js";
import { lineChart } from "../charts.js";
import { errorBox, field, fmt, h, keyValues, notAvailable, percent, replace } from "../dom.js";
import { monitorNumbers, renderMonitorFields } from "../render/monitor.js";

const POLL_MS = 5000;
const MAX_POINTS = 720; // one hour of 5-second polls, kept in this page only

function timeSeries(history, key) {
  return history.filter((p) => Number.isFinite(p[key])).map((p) => [p.t, p[key]]);
}

function charts(history, calibrationCoverage, driftName) {
  const time = { label: "time", format: (v) => new Date(v).toLocaleTimeString() };
  const t0 = history.length ? history[0].t : 0;
  const x = { ...time, domain: history.length > 1 ? [t0, history[history.length - 1].t] : undefined };
  const refs = Number.isFinite(calibrationCoverage) ? [{ y: calibrationCoverage, label: `calibration coverage ${percent(calibrationCoverage)}` }] : [];
  return h("div", { class: "grid" },
    lineChart({ title: "Live acceptance rate", x, y: { label: "acceptance rate", domain: [0, 1] },
      series: [{ name: "acceptance rate", points: timeSeries(history, "acceptanceRate") }], refs }),
    lineChart({ title: `Drift (${driftName})`, x, y: { label: driftName },
      series: [{ name: driftName, points: timeSeries(history, "drift") }] }),
    lineChart({ title: "Estimated accuracy (no labels)", x, y: { label: "estimated accuracy", domain: [0, 1] },
      series: [{ name: "estimated accuracy", points: timeSeries(history, "estimatedAccuracy") }] }));
}

function historyFrom(numbers, polled) {
  if (!numbers.history) return polled;
  return numbers.history.map((entry) => ({ t: Date.parse(entry.time ?? entry.t ?? entry.timestamp) || 0, ...monitorNumbers(entry) }));
}

export async function renderMonitoring(root, chosenId) {
  root.append(h("h1", {}, "Monitoring"));
  root.append(h("p", { class: "muted" }, "Prometheus metrics of this server: ",
    h("a", { href: url("/metrics").href, target: "_blank", rel: "noopener" }, "/metrics"),
    " (scraped by the Prometheus and Grafana set-up in deploy/)."));
  let listing;
  try {
    listing = await endpoints.labelSets();
  } catch (err) {
    root.append(errorBox(err));
    return;
  }
  if (!listing.label_sets.length) { root.append(h("p", { class: "muted" }, "No label sets yet.")); return; }
  const ids = listing.label_sets.map((x) => x.id);
  const id = ids.includes(chosenId) ? chosenId : ids[0];
  const select = h("select", { "data-testid": "monitor-set" }, ids.map((x) => h("option", { value: x, selected: x === id }, x)));
  select.addEventListener("change", () => { location.hash = `#/monitoring/${encodeURIComponent(select.value)}`; });
  const body = h("div", { "aria-live": "polite", "data-testid": "monitor" });
  root.append(h("div", { class: "card" }, field("Label set", select)), body);

  const ls = await endpoints.labelSet(id);
  const expected = ls.calibration ? ls.calibration.coverage : undefined;
  const polled = [];
  let timer = null;
  let stopped = false;
  const poll = async () => {
    let answer;
    try {
      answer = await endpoints.monitor(id);
    } catch (err) {
      if (err.status === 404 && err.code !== "label_set_not_found") {
        replace(body, h("div", { class: "card" }, notAvailable("Live monitoring (GET /v1/label-sets/{id}/monitor)"),
          ls.calibration ? keyValues([["calibration coverage (expected acceptance rate)", percent(expected)]])
            : h("p", { class: "muted" }, "This label set is not calibrated.")));
        stopped = true;
        clearInterval(timer);
        return;
      }
      replace(body, errorBox(err));
      return;
    }
    const numbers = monitorNumbers(answer);
    polled.push({ t: Date.now(), ...numbers });
    if (polled.length > MAX_POINTS) polled.shift();
    const coverage = Number.isFinite(numbers.calibrationCoverage) ? numbers.calibrationCoverage : expected;
    replace(body,
      h("div", { class: "card" }, keyValues([
        ["acceptance rate (live)", percent(numbers.acceptanceRate)],
        ["calibration coverage", percent(coverage)],
        [`drift (${numbers.driftName})`, fmt(numbers.drift, 4)],
        ["estimated accuracy", percent(numbers.estimatedAccuracy)],
        ["window", numbers.window ? `${numbers.window.samples} answers${numbers.window.from ? `, ${numbers.window.from} – ${numbers.window.to}` : ""}` : null],
        ["note", answer.note ?? null],
      ]), renderMonitorFields(answer)),
      h("div", { class: "card" }, charts(historyFrom(numbers, polled), coverage, numbers.driftName)));
  };
  await poll();
  if (!stopped) timer = setInterval(poll, POLL_MS);
  return () => { stopped = true; clearInterval(timer); };
}
