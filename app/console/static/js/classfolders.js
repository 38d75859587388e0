// Class folders chosen in the browser (a folder picker gives each file its relative path): each image's
// class is the name of the folder that directly holds it; the same rule as app/classfolders.py.

export const IMAGE_SUFFIXES = [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"];

export function isImageName(name) {
  const lower = name.toLowerCase();
  return IMAGE_SUFFIXES.some((suffix) => lower.endsWith(suffix));
}

/** [{label, file}] for every image in a class folder, and how many files were skipped. */
export function labelledFiles(files) {
  const items = [];
  let skipped = 0;
  for (const file of files) {
    const parts = (file.webkitRelativePath || file.name).split("/").filter(Boolean);
    const hidden = parts.some((p) => p.startsWith(".") || p === "__MACOSX");
    if (hidden || parts.length < 2 || !isImageName(parts[parts.length - 1])) {
      skipped += 1;
      continue;
    }
    items.push({ label: parts[parts.length - 2], file });
  }
  items.sort((a, b) => (a.label + "/" + a.file.name).localeCompare(b.label + "/" + b.file.name));
  return { items, skipped };
}

export function classesOf(items) {
  return [...new Set(items.map((x) => x.label))].sort();
}

/** Items grouped by class, each group cut into batches of at most `size` files. */
export function batchesByClass(items, size) {
  const batches = [];
  for (const label of classesOf(items)) {
    const files = items.filter((x) => x.label === label).map((x) => x.file);
    for (let i = 0; i < files.length; i += size) batches.push({ label, files: files.slice(i, i + size) });
  }
  return batches;
}
