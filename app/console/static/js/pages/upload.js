// Uploads shared by the label-set pages: support images in batches per class, with a progress bar.
import { endpoints } from "../api.js";
import { batchesByClass } from "../classfolders.js";
import { h } from "../dom.js";

// images per request: well under the server's default max_images_per_request (64) and pixel budget
export const BATCH = 16;

export function progressBar(label) {
  const bar = h("progress", { max: 1, value: 0, "aria-label": label });
  const text = h("span", { class: "muted small" });
  const el = h("div", { class: "field" }, bar, text);
  return {
    el,
    update(done, total, what) {
      bar.max = Math.max(total, 1);
      bar.value = done;
      text.textContent = `${done} / ${total} ${what}`;
    },
  };
}

/** Upload [{label, file}] as support images of label set `id`; calls progress(done, total). */
export async function uploadSupport(id, items, progress) {
  let done = 0;
  const total = items.length;
  progress(done, total);
  for (const batch of batchesByClass(items, BATCH)) {
    try {
      await endpoints.addSupport(id, batch.label, batch.files);
    } catch (err) {
      err.message = `${err.message} (after ${done} of ${total} images were added)`;
      throw err;
    }
    done += batch.files.length;
    progress(done, total);
  }
  return done;
}

/** A folder picker: every file of the chosen folder, with its relative path. */
export function folderInput(testid) {
  return h("input", { type: "file", webkitdirectory: true, multiple: true, "data-testid": testid });
}
