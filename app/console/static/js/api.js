// The console's only way to the server: fetch() against the public API, the key in the Authorization
// header. Errors become ApiError with the server's {error: {code, message}}.
import { getKey } from "./session.js";

// this file is served at <root>/ui/static/js/api.js
export const ROOT = new URL("../../../", import.meta.url);

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export function url(path) {
  return new URL(path.replace(/^\//, ""), ROOT);
}

export async function api(path, { method = "GET", json, body, headers = {}, as = "json" } = {}) {
  const h = new Headers(headers);
  const key = getKey();
  if (key) h.set("Authorization", `Bearer ${key}`);
  if (json !== undefined) {
    h.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(url(path), { method, headers: h, body, cache: "no-store", credentials: "omit" });
  } catch (err) {
    throw new ApiError(0, "network", `the server did not answer (${err.message})`);
  }
  if (!response.ok) {
    let code = "http_error", message = `${response.status} ${response.statusText}`, details = null;
    try {
      const err = (await response.json()).error;
      if (err) ({ code, message, details } = { code: err.code, message: err.message, details: err.details });
    } catch { /* not JSON */ }
    throw new ApiError(response.status, code, message, details);
  }
  if (response.status === 204) return null;
  if (as === "blob") return response.blob();
  if (as === "text") return response.text();
  return response.json();
}

/** A path segment, percent-encoded (ids and labels never change the path). */
export function seg(value) {
  return encodeURIComponent(value);
}

/** Multipart form: fields are strings (or arrays of strings), files are [field, File] pairs. */
export function form(fields, files = []) {
  const data = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value === null || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) data.append(name, String(v));
  }
  for (const [name, file] of files) data.append(name, file, file.name);
  return data;
}

export const endpoints = {
  access: () => api("/v1/access"),
  models: () => api("/v1/models"),
  labelSets: () => api("/v1/label-sets"),
  labelSet: (id) => api(`/v1/label-sets/${seg(id)}`),
  createLabelSet: (body) => api("/v1/label-sets", { method: "POST", json: body }),
  deleteLabelSet: (id, version) =>
    api(`/v1/label-sets/${seg(id)}`, { method: "DELETE", headers: { "If-Match": String(version) } }),
  classify: (data) => api("/v1/classify", { method: "POST", body: data }),
  addSupport: (id, label, files) =>
    api(`/v1/label-sets/${seg(id)}/images`, { method: "POST", body: form({ label }, files.map((f) => ["images", f])) }),
  addSupportArchive: (id, file) =>
    api(`/v1/label-sets/${seg(id)}/images/archive`, { method: "POST", body: form({}, [["archive", file]]) }),
  calibrate: (id, fields, items) =>
    api(`/v1/label-sets/${seg(id)}/calibrate`, {
      method: "POST",
      body: form({ ...fields, labels: JSON.stringify(items.map((x) => x.label)) }, items.map((x) => ["images", x.file])),
    }),
  riskCoverage: (id, fields, items) =>
    api(`/v1/label-sets/${seg(id)}/risk-coverage`, {
      method: "POST",
      body: form({ ...fields, labels: JSON.stringify(items.map((x) => x.label)) }, items.map((x) => ["images", x.file])),
    }),
  exportLabelSet: (id) => api(`/v1/label-sets/${seg(id)}/export`, { as: "blob" }),
  importLabelSet: (file, newId) =>
    api(`/v1/label-sets/import${newId ? `?id=${seg(newId)}` : ""}`, { method: "POST", body: form({}, [["archive", file]]) }),
  monitor: (id) => api(`/v1/label-sets/${seg(id)}/monitor`),
};
