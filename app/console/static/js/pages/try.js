// Try it: one image against typed labels or a label set; the whole answer rendered part by part.
import { endpoints, form } from "../api.js";
import { errorBox, field, h, notAvailable, parseLabels, replace } from "../dom.js";
import { renderResult } from "../render/result.js";

const DEFAULT_LABELS = "espresso, a cat, a rocket";

function modelSelect(models) {
  const select = h("select", { "data-testid": "model" });
  for (const m of models.models) {
    const image = m.runtime && m.runtime.image ? `, ${m.runtime.image.runtime || ""} ${m.runtime.image.precision || ""}` : "";
    select.append(h("option", { value: m.id }, `${m.id} (${m.device}${image.trimEnd()})`));
  }
  for (const p of models.presets) {
    if (models.models.some((m) => m.id === p.name)) continue;
    select.append(h("option", { value: p.name, disabled: true }, `${p.name} — not loaded (trustserve serve --model ${p.name})`));
  }
  return select;
}

function dropZone(onFile) {
  const input = h("input", { type: "file", accept: "image/*", "data-testid": "image-input" });
  const preview = h("div", { class: "muted small" }, "No image chosen.");
  const zone = h("div", { class: "drop" }, field("Image", input, "drop an image into this box, or choose a file"), preview);
  const show = (file) => {
    if (!file) return;
    const img = h("img", { class: "preview", alt: `chosen image ${file.name}` });
    img.src = URL.createObjectURL(file);
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
    replace(preview, img, h("div", {}, file.name));
    onFile(file);
  };
  input.addEventListener("change", () => show(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
    show(file);
  });
  return { zone, input };
}

export async function renderTry(root) {
  root.append(h("h1", {}, "Try it"));
  const [models, sets] = await Promise.all([endpoints.models(), endpoints.labelSets().catch(() => null)]);
  let chosen = null;
  const { zone } = dropZone((file) => { chosen = file; });
  const labels = h("textarea", { rows: 3, "data-testid": "labels" }, DEFAULT_LABELS);
  const setSelect = h("select", { "data-testid": "label-set" },
    (sets ? sets.label_sets : []).map((x) => h("option", { value: x.id }, `${x.id}${x.calibrated ? " (calibrated)" : ""}`)));
  const useLabels = h("input", { type: "radio", name: "source", value: "labels", id: "src-labels", checked: true });
  const useSet = h("input", { type: "radio", name: "source", value: "set", id: "src-set", "data-testid": "use-label-set" });
  if (!sets || !sets.label_sets.length) useSet.disabled = true;
  const topK = h("input", { type: "number", min: 1, max: 100, value: 5, "data-testid": "top-k" });
  const submit = h("button", { type: "submit", "data-testid": "classify" }, "Classify");
  const output = h("div", { "aria-live": "polite" });
  const sync = () => {
    labels.disabled = useSet.checked;
    setSelect.disabled = !useSet.checked;
  };
  useLabels.addEventListener("change", sync);
  useSet.addEventListener("change", sync);
  sync();

  const formEl = h("form", { class: "card", "aria-label": "classify an image" },
    field("Model", modelSelect(models), "the server runs one model; other presets are listed for reference"),
    zone,
    h("fieldset", {}, h("legend", {}, "Classify against"),
      h("label", { for: "src-labels" }, useLabels, " labels"),
      h("label", { for: "src-set" }, useSet, " a label set")),
    field("Labels", labels, "comma-separated on one line, or one per line"),
    field("Label set", setSelect, sets ? "label sets give image-space trust scores and calibrated decisions" : "label sets are not available to this key"),
    field("Top k", topK),
    submit);
  formEl.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!chosen) { replace(output, errorBox("Choose or drop an image first.")); return; }
    const fields = { top_k: topK.value || "5" };
    if (useSet.checked) fields.label_set = setSelect.value;
    else fields.labels = JSON.stringify(parseLabels(labels.value));
    submit.disabled = true;
    replace(output, h("p", { class: "muted" }, "Classifying…"));
    try {
      const answer = await endpoints.classify(form(fields, [["image", chosen]]));
      replace(output, h("div", { class: "card" }, renderResult(answer.results[0], answer)));
    } catch (err) {
      replace(output, errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });
  root.append(h("div", { class: "grid" }, formEl, h("div", {}, output)));
  if (!models.models.length) root.prepend(notAvailable("A loaded model"));
}
