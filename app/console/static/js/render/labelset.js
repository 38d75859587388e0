// Parts of a label set (GET /v1/label-sets/{id}) and of its calibration evidence. Fields that later issues
// add (self-selection evidence, preprocessing policy) are rendered when the server sends them.
import { lineChart } from "../charts.js";
import { fmt, h, keyValues, notAvailable, percent, table } from "../dom.js";

export function renderSummary(ls) {
  return keyValues([
    ["version", fmt(ls.version)],
    ["description", ls.description || null],
    ["model", ls.model],
    ["image space", ls.aux_encoder],
    ["trust score", ls.trust_score],
    ["α (TrustVLM)", fmt(ls.alpha)],
    ["T_v (TrustVLM*)", fmt(ls.visual_temperature)],
    ["prototype index", ls.prototype_index ? `${ls.prototype_index.kind}, ${ls.prototype_index.vectors} vectors` : "none yet"],
    ["test-time adaptation", ls.adaptation && ls.adaptation.enabled ? "on" : "off"],
    ["preprocessing", typeof ls.preprocessing === "string" ? ls.preprocessing : ls.preprocessing ? JSON.stringify(ls.preprocessing) : null],
    ["updated", ls.updated_at],
  ]);
}

export function renderClasses(ls) {
  return table(["class", "support images", "prototype"],
    ls.classes.map((c) => [c.label, fmt(c.support_images), h("span", { class: c.has_prototype ? "badge yes" : "badge" }, c.has_prototype ? "yes" : "no")]),
    { numeric: [1] });
}

export function renderCalibration(cal) {
  if (!cal) return h("p", { class: "notice", "data-testid": "calibration" }, "Not calibrated: classify answers carry no accept/reject decision yet.");
  const target = cal.rule === "target_risk" ? `selective risk ≤ ${percent(cal.target)} at δ = ${fmt(cal.delta)}` : `coverage ≥ ${percent(cal.target)}`;
  return h("div", { "data-testid": "calibration" }, keyValues([
    ["rule", `${cal.rule} (${target})`],
    ["score", cal.score],
    ["threshold", fmt(cal.threshold, 4)],
    ["guarantee", cal.guarantee],
    ["coverage on calibration images", percent(cal.coverage)],
    ["risk on calibration images", percent(cal.risk)],
    ["risk upper bound", cal.risk_upper_bound === null || cal.risk_upper_bound === undefined ? null : percent(cal.risk_upper_bound)],
    ["images", `${cal.n} for the threshold${cal.n_tuning ? `, ${cal.n_tuning} for tuning α / T_v` : ""}`],
    ["α, T_v used", `${fmt(cal.alpha)}, ${fmt(cal.visual_temperature)}`],
    ["calibrated", `${cal.calibrated_at} (label-set version ${cal.label_set_version})`],
  ]));
}

/** A table of objects with the union of their keys (numbers formatted), for evidence lists. */
export function objectsTable(objects) {
  const keys = [...new Set(objects.flatMap((o) => Object.keys(o)))];
  return table(keys, objects.map((o) => keys.map((k) => (typeof o[k] === "object" && o[k] !== null ? JSON.stringify(o[k]) : fmt(o[k], 4)))));
}

/** How calibration chose the settings the threshold is for (the record's `tuning`: which settings, on
 * how many held-out images, the objective and every grid point tried). */
export function renderSelection(ls) {
  const section = h("div", { "data-testid": "selection" });
  const cal = ls.calibration;
  if (!cal) {
    section.append(h("p", { class: "muted" }, "Not calibrated."));
  } else if (!("tuning" in cal)) {
    section.append(notAvailable("Tuning evidence"));
  } else if (cal.tuning === null) {
    section.append(h("p", { class: "muted" }, `Not tuned: the threshold is for the label set's own α = ${fmt(cal.alpha)} and T_v = ${fmt(cal.visual_temperature)}.`));
  } else {
    const t = cal.tuning;
    section.append(keyValues([
      ["tuned", (t.tuned || []).join(", ")],
      ["on", `${fmt(t.n)} held-out calibration images (not used for the threshold)`],
      ["objective", `lowest ${t.objective}`],
      ["chosen", `α = ${fmt(cal.alpha)}, T_v = ${fmt(cal.visual_temperature)}`],
    ]));
    if (Array.isArray(t.grid) && t.grid.length) section.append(h("h4", {}, "Every point tried"), objectsTable(t.grid));
  }
  return section;
}

/** The answer of POST /v1/label-sets/{id}/risk-coverage as a chart, with the calibrated operating point. */
export function renderRiskCoverage(rc, source) {
  const markers = [];
  if (rc.calibration && rc.calibration.risk !== null) {
    markers.push({ x: rc.calibration.coverage, y: rc.calibration.risk, label: `calibrated threshold ${fmt(rc.calibration.threshold, 4)}` });
  }
  return h("div", { "data-testid": "risk-coverage" },
    lineChart({
      title: `Risk-coverage of ${rc.score} on ${rc.n} ${source}`,
      x: { label: "coverage (fraction accepted)", domain: [0, 1] },
      y: { label: "selective risk (error rate among accepted)", domain: [0, Math.max(0.05, ...rc.points.map((p) => p.risk))] },
      series: [{ name: rc.score, points: rc.points.map((p) => [p.coverage, p.risk]) }],
      markers,
      description: `Each point accepts the most confident images down to a threshold. Accuracy ${percent(rc.accuracy)}, AURC ${fmt(rc.aurc, 4)}.`,
    }),
    rc.calibration
      ? keyValues([
          ["on these images, the calibrated rule accepts", `${rc.calibration.accepted} of ${rc.n} (${percent(rc.calibration.coverage)})`],
          ["with selective risk", percent(rc.calibration.risk)],
        ])
      : null);
}
