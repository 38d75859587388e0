// One classify answer (one image of POST /v1/classify), one small function per part. A part the server
// does not send (e.g. `prediction_set` before the monitoring issue's server) says so instead of guessing.
import { fmt, h, keyValues, notAvailable, percent, table } from "../dom.js";

export function renderPrediction(result) {
  return h("section", { "aria-labelledby": "pred-h" },
    h("h3", { id: "pred-h" }, "Prediction"),
    h("p", { class: "prediction", "data-testid": "prediction" }, result.prediction.label),
    h("p", { class: "muted" }, `probability ${percent(result.prediction.probability)}`),
    result.refined_prediction
      ? h("p", {}, "TrustVLM* refined prediction: ", h("strong", {}, result.refined_prediction.label))
      : null);
}

export function renderDecision(decision, confidence) {
  let verdict, kind;
  if (decision.accept === true) [verdict, kind] = ["Accept", "accept"];
  else if (decision.accept === false) [verdict, kind] = ["Reject", "reject"];
  else [verdict, kind] = ["No decision", "none"];
  return h("section", { class: `decision ${kind}`, "data-testid": "decision", "aria-labelledby": "dec-h" },
    h("h3", { id: "dec-h" }, "Decision"),
    h("p", { class: "verdict" }, verdict,
      h("span", { class: "muted small" }, decision.calibrated ? " (calibrated)" : " (not calibrated)")),
    keyValues([
      ["score", `${decision.score} = ${fmt(confidence, 4)}`],
      ["threshold", decision.threshold === null || decision.threshold === undefined ? null : fmt(decision.threshold, 4)],
      ["rule", decision.rule],
      ["guarantee", decision.guarantee],
      ["judges", decision.applies_to === "refined_prediction" ? "the refined prediction" : "the prediction"],
      ["note", decision.note],
    ]));
}

export function renderTopK(topK) {
  return h("section", { "aria-labelledby": "topk-h" },
    h("h3", { id: "topk-h" }, `Top ${topK.length}`),
    table(["label", "probability", ""],
      topK.map((item) => [
        item.label,
        percent(item.probability),
        h("meter", { min: 0, max: 1, value: item.probability, "aria-label": `probability of ${item.label}` }),
      ]),
      { numeric: [1] }));
}

export function renderScores(scores) {
  const rows = Object.entries(scores).map(([name, value]) => [name, fmt(value, 4)]);
  return h("section", { "aria-labelledby": "scores-h" },
    h("h3", { id: "scores-h" }, "Trust scores"),
    table(["score", "value"], rows, { numeric: [1] }),
    h("p", { class: "muted small" }, "Higher is more trustworthy. s_it, s_ii, trustvlm and trustvlm_star need support images (a label set)."));
}

export function renderTrust(trust) {
  return h("section", { "aria-labelledby": "trust-h" },
    h("h3", { id: "trust-h" }, "Image-space check"),
    keyValues([
      ["image space", trust.image_space],
      ["classes with prototypes", fmt(trust.classes_with_prototypes)],
      ["prototype for the prediction", trust.prototypes_for_prediction ? "yes" : "no"],
      ["note", trust.note],
    ]));
}

/** Conformal prediction set (monitoring issue): a list of labels, or an object {labels, guarantee, ...}. */
export function renderPredictionSet(result) {
  const head = h("h3", { id: "pset-h" }, "Prediction set");
  const section = h("section", { "aria-labelledby": "pset-h", "data-testid": "prediction-set" }, head);
  if (!("prediction_set" in result)) {
    section.append(notAvailable("Prediction sets"));
    return section;
  }
  const value = result.prediction_set;
  if (value === null) {
    section.append(h("p", { class: "muted" }, "No prediction set: the label set has no conformal calibration."));
    return section;
  }
  const labels = Array.isArray(value) ? value : value.labels || value.set || [];
  section.append(h("ul", { class: "chips" }, labels.map((x) => h("li", {}, typeof x === "string" ? x : x.label))));
  if (!Array.isArray(value)) {
    section.append(keyValues([
      ["guarantee", value.guarantee],
      ["miscoverage ε", value.epsilon ?? value.miscoverage],
      ["method", value.method],
    ]));
  }
  return section;
}

export function renderResult(result, answer) {
  return h("div", { class: "result", "data-testid": "result" },
    renderPrediction(result),
    renderDecision(result.decision, result.confidence),
    renderPredictionSet(result),
    renderTopK(result.top_k),
    renderScores(result.scores),
    renderTrust(result.trust),
    h("p", { class: "muted small" },
      `model ${answer.model}`, answer.label_set ? ` · label set ${answer.label_set.id} v${answer.label_set.version}` : "",
      answer.timing_ms ? ` · ${fmt(answer.timing_ms.total, 0)} ms` : ""));
}
