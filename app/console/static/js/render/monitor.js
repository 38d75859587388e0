// Live monitoring of a label set (GET /v1/label-sets/{id}/monitor, from the monitoring issue). The JSON's
// exact shape belongs to that issue: `monitorNumbers` is the one place that maps it to what is charted;
// every field of the answer is also listed as it came.
import { fmt, h, keyValues } from "../dom.js";

function first(...values) {
  return values.find((v) => typeof v === "number" && Number.isFinite(v));
}

function driftNameOf(m, drift) {
  if (first(m.drift_statistic, drift.statistic, drift.value) !== undefined || typeof m.drift === "number") return "drift";
  if (first(m.psi, drift.psi) !== undefined) return "PSI";
  if (first(m.ks, drift.ks) !== undefined) return "KS";
  return "drift";
}

function isoTime(seconds) {
  return typeof seconds === "number" ? new Date(seconds * 1000).toISOString() : null;
}

/** The charted numbers of one monitor answer, whichever of the plausible shapes it has (flat fields as
 * in issue 17's snapshot — acceptance_rate, calibration_coverage, estimated_accuracy, psi, ks, samples,
 * window_start/end in epoch seconds — or nested objects). */
export function monitorNumbers(m) {
  const drift = m.drift && typeof m.drift === "object" ? m.drift : {};
  const acceptance = m.acceptance && typeof m.acceptance === "object" ? m.acceptance : {};
  const accuracy = m.estimated_accuracy && typeof m.estimated_accuracy === "object" ? m.estimated_accuracy : {};
  return {
    acceptanceRate: first(m.acceptance_rate, acceptance.rate, acceptance.live, m.live && m.live.acceptance_rate),
    calibrationCoverage: first(m.calibration_coverage, acceptance.calibration_coverage, acceptance.calibration, m.calibration && m.calibration.coverage),
    drift: first(m.drift_statistic, drift.statistic, drift.value, typeof m.drift === "number" ? m.drift : undefined, m.psi, drift.psi, m.ks, drift.ks),
    driftName: drift.name || drift.method || drift.kind || m.drift_method || driftNameOf(m, drift),
    estimatedAccuracy: first(typeof m.estimated_accuracy === "number" ? m.estimated_accuracy : undefined, accuracy.value, accuracy.estimate, m.atc && m.atc.estimated_accuracy),
    window: m.window ?? (m.samples === undefined ? null
      : { samples: m.samples, from: isoTime(m.window_start), to: isoTime(m.window_end) }),
    history: Array.isArray(m.history) ? m.history : null,
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
