// Live monitoring of a label set (GET /v1/label-sets/{id}/monitor). `monitorNumbers` is the one place that
// maps the answer to what is charted; every field of the answer is also listed as it came.
import { fmt, h, keyValues } from "../dom.js";

/** The charted numbers of one answer of GET /v1/label-sets/{id}/monitor (`MonitorOut`: live_acceptance_rate,
 * calibration_coverage, estimated_accuracy, drift {psi, ks}, window {samples, start, end, ...}); a number the
 * server leaves null (too few answers in the window yet) stays null and is shown as "—". */
export function monitorNumbers(m) {
  const drift = m.drift || {};
  const psi = typeof drift.psi === "number" ? drift.psi : null;
  return {
    acceptanceRate: m.live_acceptance_rate ?? null,
    calibrationCoverage: m.calibration_coverage ?? null,
    drift: psi ?? drift.ks ?? null,
    driftName: psi !== null || drift.ks == null ? "PSI" : "KS",
    estimatedAccuracy: m.estimated_accuracy ?? null,
    window: m.window ? { samples: m.window.samples, from: m.window.start, to: m.window.end } : null,
    history: null,
  };
}

function flatten(obj, prefix = "") {
  const pairs = [];
  for (const [key, value] of Object.entries(obj)) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (value && typeof value === "object" && !Array.isArray(value)) pairs.push(...flatten(value, name));
    else pairs.push([name, Array.isArray(value) ? `${value.length} entries` : fmt(value, 4)]);
  }
  return pairs;
}

export function renderMonitorFields(m) {
  return h("details", {}, h("summary", {}, "Every field of the answer"), keyValues(flatten(m)));
}
