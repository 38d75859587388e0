// Parts of a label set (GET /v1/label-sets/{id}) and of its calibration evidence. Fields that later issues
// add (self-selection evidence, preprocessing policy) are rendered when the server sends them.
import { lineChart } from "../charts.js";
import { fmt, h, keyValues, notAvailable, percent, table } from "../dom.js";

export function renderSummary(ls) {
  return keyValues([
    ["version", fmt(ls.version)],
    ["description", ls.description || null],
    ["model", ls.model],
    ["image space", ls.image_space_encoder || ls.aux_encoder],
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

/** What a calibration was computed on (its `basis`): where each tower that runs per request computed
 * (runtime, precision, dtype, device), the model's logit scale and bias, and the digest of the arrays the
 * scores read. A change to any of them makes the calibration not apply (app/labelsets/basis.py). */
export function renderBasis(basis) {
  if (!basis) return h("p", { class: "muted", "data-testid": "calibration-basis" }, "Not recorded: this calibration was made before its basis was kept.");
  const towers = Object.entries(basis.towers).map(([tower, t]) => [tower, t.runtime, t.precision, t.dtype, t.device]);
  return h("div", { "data-testid": "calibration-basis" },
    table(["tower", "runtime", "precision", "dtype", "device"], towers),
    keyValues([
      ["logit scale, bias", `${fmt(basis.logit_scale, 4)}, ${fmt(basis.logit_bias, 4)}`],
      ["arrays (sha256)", h("code", { title: basis.arrays_sha256 }, `${basis.arrays_sha256.slice(0, 16)}…`)],
    ]));
}

/** The stored calibration of label set `ls`: the rule's result, whether it applies to the scores served
 * now, and what it was computed on. */
export function renderCalibration(ls) {
  const cal = ls.calibration;
  if (!cal) return h("p", { class: "notice", "data-testid": "calibration" }, "Not calibrated: classify answers carry no accept/reject decision yet.");
  const target = cal.rule === "target_risk" ? `selective risk ≤ ${percent(cal.target)} at δ = ${fmt(cal.delta)}` : `coverage ≥ ${percent(cal.target)}`;
  const applies = ls.calibration_applies
    ? "yes"
    : h("span", { class: "notice" }, `no: ${ls.calibration_problem || "it does not match the scores served now"}; recalibrate`);
  return h("div", { "data-testid": "calibration" }, keyValues([
    ["applies now", applies],
    ["rule", `${cal.rule} (${target})`],
    ["score", cal.score],
    ["threshold", fmt(cal.threshold, 4)],
    ["guarantee", cal.guarantee],
    ["coverage on calibration images", percent(cal.coverage)],
    ["risk on calibration images", percent(cal.risk)],
    ["risk upper bound", cal.risk_upper_bound === null || cal.risk_upper_bound === undefined ? null : percent(cal.risk_upper_bound)],
    ["images", `${cal.n} for the threshold${cal.n_tuning ? `, ${cal.n_tuning} for the selection` : ""}`],
    ["α, T_v used", `${fmt(cal.alpha)}, ${fmt(cal.visual_temperature)}`],
    ["calibrated", `${cal.calibrated_at} (label-set version ${cal.label_set_version})`],
  ]), h("h4", {}, "Computed on"), renderBasis(cal.basis));
}

/** A table of objects with the union of their keys (numbers formatted), for evidence lists. */
export function objectsTable(objects) {
  const keys = [...new Set(objects.flatMap((o) => Object.keys(o)))];
  return table(keys, objects.map((o) => keys.map((k) => (typeof o[k] === "object" && o[k] !== null ? JSON.stringify(o[k]) : fmt(o[k], 4)))));
}

/** How the label set's aspect policy and α were chosen (issue 14's self-selection: `selection` on the label
 * set, evidence "support-loo" before calibration, "calibration" after, "fixed" when the user set them), with
 * every candidate's AURC / AUROC and intervals; records from before self-selection show their α tuning. */
export function renderSelection(ls) {
  const section = h("div", { "data-testid": "selection" });
  const chosen = ls.selection;
  const cal = ls.calibration;
  if (chosen) {
    const detail = chosen.selection;
    section.append(keyValues([
      ["evidence", chosen.evidence],
      ["aspect policy", `${chosen.policy}${ls.preprocess ? ` (setting: ${ls.preprocess})` : ""}`],
      ["image space", chosen.image_space],
      ["α", fmt(chosen.alpha)],
      ["candidates compared", fmt(chosen.candidates_compared)],
      ["rule", detail ? detail.rule : chosen.policy_rule],
      ["chosen on", detail ? `${fmt(detail.n)} images (${fmt(detail.n_errors)} errors), best: ${detail.best}, chosen: ${detail.chosen}` : null],
      ["fallback", detail ? detail.fallback : null],
    ]));
    if (Array.isArray(chosen.policies) && chosen.policies.length > 1) {
      section.append(h("h4", {}, "Aspect policies compared"), objectsTable(chosen.policies));
    }
    if (detail && Array.isArray(detail.candidates) && detail.candidates.length) {
      const rows = detail.candidates.map((c) => ({
        candidate: c.name, alpha: c.alpha, AURC: c.aurc, AUROC: c.auroc,
        "AURC − MSP": c.aurc_minus_msp, "within one SE": c.within_one_se ? "yes" : "no",
      }));
      section.append(h("h4", {}, "Every candidate"), objectsTable(rows));
    }
  } else if (cal && cal.tuning) {
    const t = cal.tuning;
    section.append(keyValues([
      ["tuned", (t.tuned || []).join(", ")],
      ["on", `${fmt(t.n)} held-out calibration images (not used for the threshold)`],
      ["chosen", `α = ${fmt(cal.alpha)}, T_v = ${fmt(cal.visual_temperature)}`],
    ]));
    if (Array.isArray(t.grid) && t.grid.length) section.append(h("h4", {}, "Every point tried"), objectsTable(t.grid));
  } else {
    section.append(h("p", { class: "muted" }, `No selection recorded: the label set serves its own α = ${fmt(ls.alpha)} and T_v = ${fmt(ls.visual_temperature)}.`));
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
