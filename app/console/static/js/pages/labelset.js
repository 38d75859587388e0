// One label set: what it is, its classes, its calibration and evidence; with a write key also support
// images (files, class folders or an archive), calibration, the risk-coverage curve, export and delete.
import { endpoints } from "../api.js";
import { classesOf, labelledFiles } from "../classfolders.js";
import { errorBox, field, h, replace, toast } from "../dom.js";
import { renderCalibration, renderClasses, renderRiskCoverage, renderSelection, renderSummary } from "../render/labelset.js";
import { access } from "../session.js";
import { folderInput, progressBar, uploadSupport } from "./upload.js";

function section(title, testid, ...children) {
  const id = `${testid}-h`;
  return h("section", { class: "card", "aria-labelledby": id, "data-testid": testid }, h("h2", { id }, title), ...children);
}

function busy(button, work) {
  return async (event) => {
    event.preventDefault();
    button.disabled = true;
    try { await work(); } finally { button.disabled = false; }
  };
}

function supportForm(ls, reload) {
  const classSelect = h("select", {}, ls.labels.map((label) => h("option", { value: label }, label)));
  const files = h("input", { type: "file", accept: "image/*", multiple: true, "data-testid": "support-files" });
  const folder = folderInput("support-folder");
  const archive = h("input", { type: "file", accept: ".zip,.tar,.tgz,.tar.gz,application/zip,application/gzip,application/x-tar", "data-testid": "support-archive" });
  const submit = h("button", { type: "submit", "data-testid": "add-support" }, "Add support images");
  const status = h("div", { "aria-live": "polite" });
  const formEl = h("form", { "data-write": "" },
    h("p", { class: "muted small" }, "Choose any of the three; adding images drops the calibration (the prototypes change)."),
    h("div", { class: "row" },
      field("Class", classSelect), field("Images of that class", files, "several at once")),
    field("Or a folder of class folders", folder, "sub-folder names must be labels of this set"),
    field("Or a zip / tar / tar.gz of class folders", archive, "sent as one upload; each image's class is the folder that holds it"),
    submit, status);
  formEl.addEventListener("submit", busy(submit, async () => {
    try {
      let added = 0;
      if (archive.files[0]) {
        const answer = await endpoints.addSupportArchive(ls.id, archive.files[0]);
        added = Object.values(answer.added).reduce((a, b) => a + b, 0);
        if (answer.skipped) toast(`${answer.skipped} archive entries skipped`);
      }
      const items = [
        ...[...files.files].map((file) => ({ label: classSelect.value, file })),
        ...labelledFiles(folder.files).items,
      ];
      if (items.length) {
        const bar = progressBar("support images uploaded");
        replace(status, bar.el);
        added += await uploadSupport(ls.id, items, (done, total) => bar.update(done, total, "support images"));
      }
      if (!added) { replace(status, errorBox("Choose images, a folder or an archive first.")); return; }
      toast(`${added} support images added`);
      await reload();
    } catch (err) {
      replace(status, errorBox(err));
    }
  }));
  return formEl;
}

function calibrateForm(ls, reload, showCurve) {
  const folder = folderInput("calib-folder");
  const folderInfo = h("p", { class: "muted small", "aria-live": "polite" });
  const risk = h("input", { type: "radio", name: "rule", value: "target_risk", id: "rule-risk" });
  const coverage = h("input", { type: "radio", name: "rule", value: "target_coverage", id: "rule-cov", checked: true, "data-testid": "rule-coverage" });
  const target = h("input", { type: "number", min: 0.001, max: 1, step: "any", value: 0.8, "data-testid": "target" });
  const delta = h("input", { type: "number", min: 0.001, max: 0.5, step: "any", value: 0.05, "data-testid": "delta" });
  const score = h("select", {}, ["trustvlm", "trustvlm_star", "msp"].map((x) => h("option", { value: x, selected: x === ls.trust_score }, x)));
  const tune = h("input", { type: "checkbox", id: "tune" });
  const submit = h("button", { type: "submit", "data-testid": "calibrate" }, "Calibrate");
  const status = h("div", { "aria-live": "polite" });
  const syncRule = () => {
    target.value = risk.checked ? "0.1" : "0.8";
    delta.disabled = !risk.checked;
  };
  risk.addEventListener("change", syncRule);
  coverage.addEventListener("change", syncRule);
  syncRule();
  let items = [];
  folder.addEventListener("change", () => {
    const found = labelledFiles(folder.files);
    items = found.items;
    folderInfo.textContent = `${items.length} labelled images in ${classesOf(items).length} class folders`;
  });
  const formEl = h("form", { "data-write": "" },
    field("Labelled calibration images (a folder of class folders)", folder, "images the prototypes were not built from"),
    folderInfo,
    h("fieldset", {}, h("legend", {}, "Rule"),
      h("label", { for: "rule-risk" }, risk, " target risk (guaranteed with probability 1 − δ)"),
      h("label", { for: "rule-cov" }, coverage, " target coverage")),
    h("div", { class: "row" },
      field("Target (fraction)", target, "risk e.g. 0.1 = at most 10 % errors; coverage e.g. 0.8 = accept 80 %"),
      field("δ", delta, "for target risk"),
      field("Score", score)),
    h("p", {}, h("label", { for: "tune" }, tune, " tune α / T_v on half of the images first")),
    submit, status);
  formEl.addEventListener("submit", busy(submit, async () => {
    if (!items.length) { replace(status, errorBox("Choose a folder of labelled images first.")); return; }
    const fields = { rule: risk.checked ? "target_risk" : "target_coverage", score: score.value, tune: String(tune.checked) };
    if (risk.checked) Object.assign(fields, { target_risk: target.value, delta: delta.value });
    else fields.target_coverage = target.value;
    replace(status, h("p", { class: "muted" }, `Calibrating on ${items.length} images…`));
    try {
      await endpoints.calibrate(ls.id, fields, items);
      replace(status, h("p", { class: "muted" }, "Calibrated. Computing the risk-coverage curve…"));
      const curve = await endpoints.riskCoverage(ls.id, { score: score.value }, items);
      replace(status);
      await reload();
      showCurve(curve, "calibration images");
    } catch (err) {
      replace(status, errorBox(err));
    }
  }));
  return formEl;
}

function evaluateForm(ls, showCurve) {
  const folder = folderInput("eval-folder");
  const submit = h("button", { type: "submit", class: "secondary" }, "Compute the curve");
  const status = h("div", { "aria-live": "polite" });
  const formEl = h("form", { "data-write": "" },
    field("Labelled images (a folder of class folders)", folder, "e.g. held-out images, to check the calibration"),
    submit, status);
  formEl.addEventListener("submit", busy(submit, async () => {
    const { items } = labelledFiles(folder.files);
    if (!items.length) { replace(status, errorBox("Choose a folder of labelled images first.")); return; }
    try {
      replace(status);
      showCurve(await endpoints.riskCoverage(ls.id, {}, items), "images you chose");
    } catch (err) {
      replace(status, errorBox(err));
    }
  }));
  return formEl;
}

function exportButton(ls) {
  const button = h("button", { type: "button", class: "secondary", "data-testid": "export" }, "Export (.tar.gz)");
  button.addEventListener("click", busy(button, async () => {
    try {
      const blob = await endpoints.exportLabelSet(ls.id);
      const link = h("a", { download: `${ls.id}.tar.gz` });
      link.href = URL.createObjectURL(blob);
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    } catch (err) {
      toast(err.message);
    }
  }));
  return button;
}

function deleteControl(ls) {
  const confirmInput = h("input", { type: "text", autocomplete: "off", "data-testid": "delete-confirm" });
  const confirmButton = h("button", { type: "submit", class: "danger", "data-testid": "delete-confirmed" }, "Delete for good");
  const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
  const status = h("div", { "aria-live": "polite" });
  const dialog = h("dialog", { "aria-labelledby": "del-h" },
    h("form", {},
      h("h2", { id: "del-h" }, `Delete ${ls.id}?`),
      h("p", {}, "Its prototypes and calibration are deleted. Export it first if you may want it back."),
      field(`Type ${ls.id} to confirm`, confirmInput),
      h("div", { class: "actions" }, confirmButton, cancel), status));
  cancel.addEventListener("click", () => dialog.close());
  dialog.querySelector("form").addEventListener("submit", busy(confirmButton, async () => {
    if (confirmInput.value !== ls.id) { replace(status, errorBox(`Type ${ls.id} exactly.`)); return; }
    try {
      await endpoints.deleteLabelSet(ls.id, ls.version);
      dialog.close();
      toast(`Deleted ${ls.id}`);
      location.hash = "#/label-sets";
    } catch (err) {
      replace(status, errorBox(err));
    }
  }));
  const open = h("button", { type: "button", class: "danger", "data-testid": "delete", "data-write": "" }, "Delete…");
  open.addEventListener("click", () => { confirmInput.value = ""; replace(status); dialog.showModal(); confirmInput.focus(); });
  return [open, dialog];
}

export async function renderLabelSet(root, id) {
  let ls;
  try {
    ls = await endpoints.labelSet(id);
  } catch (err) {
    root.append(h("h1", {}, id), errorBox(err), h("p", {}, h("a", { href: "#/label-sets" }, "All label sets")));
    return;
  }
  const reload = async () => {
    const fresh = await endpoints.labelSet(id);
    replace(root);
    draw(fresh);
  };
  const curveBox = h("div", { "data-testid": "curve-box" });
  const showCurve = (rc, source) => replace(curveBox, renderRiskCoverage(rc, source));
  const draw = (current) => {
    ls = current;
    root.append(
      h("p", { class: "small" }, h("a", { href: "#/label-sets" }, "← all label sets")),
      h("h1", {}, `Label set ${ls.id}`),
      h("div", { class: "actions" }, exportButton(ls),
        h("a", { href: `#/monitoring/${encodeURIComponent(ls.id)}` }, "Monitoring"),
        access.canWrite ? deleteControl(ls) : null),
      h("div", { class: "grid" },
        section("Settings", "summary", renderSummary(ls)),
        section("Classes", "classes", renderClasses(ls))),
      section("Calibration: the chosen settings and their evidence", "calibration-card",
        renderCalibration(ls),
        h("h3", {}, "Risk-coverage curve"),
        curveBox,
        access.canWrite
          ? evaluateForm(ls, showCurve)
          : h("p", { class: "muted" }, "The curve is computed from labelled images you upload (admin key)."),
        h("h3", {}, "How the settings were chosen"),
        renderSelection(ls)),
    );
    if (access.canWrite) {
      root.append(h("div", { class: "grid" },
        section("Add support images", "support", supportForm(ls, reload)),
        section("Calibrate", "calibrate-card", calibrateForm(ls, reload, showCurve))));
    } else {
      root.append(h("p", { class: "notice", "data-testid": "read-only" }, "Read-only: this key cannot change this label set."));
    }
  };
  draw(ls);
}
