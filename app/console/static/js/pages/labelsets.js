// Label sets: the list, and (with a write key) create — optionally from a folder of class folders — and
// import of an exported archive.
import { endpoints } from "../api.js";
import { classesOf, labelledFiles } from "../classfolders.js";
import { errorBox, field, fmt, h, parseLabels, replace, table, toast } from "../dom.js";
import { access } from "../session.js";
import { folderInput, progressBar, uploadSupport } from "./upload.js";

function listTable(listing) {
  if (!listing.label_sets.length) return h("p", { class: "muted" }, "No label sets yet.");
  return table(["id", "classes", "with prototypes", "calibrated", "trust score", "version", "updated"],
    listing.label_sets.map((x) => [
      h("a", { href: `#/label-sets/${encodeURIComponent(x.id)}` }, x.id),
      fmt(x.classes), fmt(x.classes_with_prototypes),
      h("span", { class: x.calibrated ? "badge yes" : "badge" }, x.calibrated ? "yes" : "no"),
      x.trust_score, fmt(x.version), x.updated_at,
    ]),
    { numeric: [1, 2, 5] });
}

function createForm() {
  const id = h("input", { type: "text", required: true, pattern: "[a-z0-9][a-z0-9_\\-]{0,63}", "data-testid": "new-id" });
  const labels = h("textarea", { rows: 3, "data-testid": "new-labels" });
  const description = h("input", { type: "text", maxlength: 2000 });
  const folder = folderInput("new-folder");
  const folderInfo = h("p", { class: "muted small", "aria-live": "polite" });
  const submit = h("button", { type: "submit", "data-testid": "create" }, "Create");
  const status = h("div", { "aria-live": "polite" });
  let items = [];
  folder.addEventListener("change", () => {
    const found = labelledFiles(folder.files);
    items = found.items;
    const classes = classesOf(items);
    if (classes.length && !labels.value.trim()) labels.value = classes.join("\n");
    folderInfo.textContent = `${items.length} images in ${classes.length} class folders` + (found.skipped ? ` (${found.skipped} other files skipped)` : "");
  });
  const formEl = h("form", { class: "card", "aria-labelledby": "create-h", "data-write": "" },
    h("h2", { id: "create-h" }, "Create a label set"),
    field("Id", id, "lower-case letters, digits, '-' and '_'"),
    field("Class folders (optional)", folder, "a folder with one sub-folder per class: the sub-folder names become the labels, their images the support images"),
    folderInfo,
    field("Labels", labels, "one per line, or comma-separated"),
    field("Description", description),
    submit, status);
  formEl.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { id: id.value.trim(), labels: parseLabels(labels.value) };
    if (description.value.trim()) body.description = description.value.trim();
    submit.disabled = true;
    try {
      await endpoints.createLabelSet(body);
      const known = new Set(body.labels);
      const support = items.filter((x) => known.has(x.label));
      if (support.length) {
        const bar = progressBar("support images uploaded");
        replace(status, bar.el);
        await uploadSupport(body.id, support, (done, total) => bar.update(done, total, "support images"));
      }
      toast(`Created ${body.id}`);
      location.hash = `#/label-sets/${encodeURIComponent(body.id)}`;
    } catch (err) {
      replace(status, errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });
  return formEl;
}

function importForm() {
  const file = h("input", { type: "file", accept: ".tar.gz,.tgz,application/gzip", required: true, "data-testid": "import-file" });
  const newId = h("input", { type: "text", pattern: "[a-z0-9][a-z0-9_\\-]{0,63}", "data-testid": "import-id" });
  const submit = h("button", { type: "submit", "data-testid": "import" }, "Import");
  const status = h("div", { "aria-live": "polite" });
  const formEl = h("form", { class: "card", "aria-labelledby": "import-h", "data-write": "" },
    h("h2", { id: "import-h" }, "Import an exported label set"),
    field("Archive (.tar.gz from Export)", file),
    field("Import under a new id (optional)", newId),
    submit, status);
  formEl.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!file.files[0]) return;
    submit.disabled = true;
    try {
      const created = await endpoints.importLabelSet(file.files[0], newId.value.trim());
      location.hash = `#/label-sets/${encodeURIComponent(created.id)}`;
    } catch (err) {
      replace(status, errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });
  return formEl;
}

export async function renderLabelSets(root) {
  root.append(h("h1", {}, "Label sets"));
  let listing;
  try {
    listing = await endpoints.labelSets();
  } catch (err) {
    root.append(errorBox(err));
    return;
  }
  root.append(h("section", { class: "card", "aria-label": "label sets", "data-testid": "label-set-list" }, listTable(listing)));
  if (listing.unavailable.length) {
    root.append(h("section", { class: "card" }, h("h2", {}, "Stored but not loaded"),
      table(["id", "reason"], listing.unavailable.map((x) => [x.id, x.reason]))));
  }
  if (access.canWrite) root.append(h("div", { class: "grid" }, createForm(), importForm()));
  else root.append(h("p", { class: "notice", "data-testid": "read-only" }, "Read-only: this key cannot create, import or change label sets."));
}
