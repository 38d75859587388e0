// The API key lives in sessionStorage (entered once per browser session, gone when the tab closes); it is
// sent in the Authorization header only, never in a URL, and never logged.

const KEY = "trustserve.apiKey";

export function getKey() {
  try { return sessionStorage.getItem(KEY) || ""; } catch { return ""; }
}

export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

/** What the current key may do, from GET /v1/access; pages read it to hide write controls. */
export const access = { loaded: false, keysRequired: false, scope: null, canWrite: false, note: null, error: null };

export function applyAccess(body) {
  Object.assign(access, {
    loaded: true, keysRequired: body.keys_required, scope: body.scope, canWrite: body.can_write,
    note: body.note || null, error: null,
  });
}

export function accessFailed(error) {
  Object.assign(access, { loaded: true, scope: null, canWrite: false, error });
}

export function accessText() {
  if (access.error) return access.error.status === 401 ? "invalid key" : `access unknown (${access.error.message})`;
  if (!access.loaded) return "";
  if (access.scope === "admin") return access.keysRequired ? "admin key" : "no key needed";
  if (access.scope === "read") return access.keysRequired ? "read-only key" : "read-only (server refuses changes)";
  return "key required";
}
