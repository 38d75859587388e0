// Console start-up: the key form, what the key may do (GET /v1/access), and the hash router.
import { endpoints } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import { renderLabelSet } from "./pages/labelset.js";
import { renderLabelSets } from "./pages/labelsets.js";
import { renderMonitoring } from "./pages/monitoring.js";
import { renderTry } from "./pages/try.js";
import { access, accessFailed, accessText, applyAccess, getKey, setKey } from "./session.js";

const main = document.getElementById("main");
let leavePage = null; // cleanup of the current page (timers)

const routes = [
  [/^#\/try$/, "try", () => renderTry],
  [/^#\/label-sets$/, "label-sets", () => renderLabelSets],
  [/^#\/label-sets\/([^/]+)$/, "label-sets", (m) => (root) => renderLabelSet(root, decodeURIComponent(m[1]))],
  [/^#\/monitoring(?:\/([^/]+))?$/, "monitoring", (m) => (root) => renderMonitoring(root, m[1] ? decodeURIComponent(m[1]) : null)],
];

async function refreshAccess() {
  const status = document.getElementById("access");
  try {
    applyAccess(await endpoints.access());
  } catch (err) {
    accessFailed(err);
  }
  status.textContent = accessText();
  document.body.dataset.access = access.canWrite ? "write" : "read";
}

async function route() {
  const hash = location.hash || "#/try";
  if (leavePage) { leavePage(); leavePage = null; }
  for (const link of document.querySelectorAll("#nav a[data-page]")) link.removeAttribute("aria-current");
  for (const [pattern, page, make] of routes) {
    const match = hash.match(pattern);
    if (!match) continue;
    document.querySelector(`#nav a[data-page="${page}"]`).setAttribute("aria-current", "page");
    const root = clear(main);
    main.setAttribute("aria-busy", "true");
    try {
      leavePage = (await make(match)(root)) || null;
    } catch (err) {
      root.append(errorBox(err));
    } finally {
      main.removeAttribute("aria-busy");
    }
    const heading = main.querySelector("h1");
    if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus({ preventScroll: true }); }
    return;
  }
  clear(main).append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/try" }, "Go to Try it")));
}

function setupKeyForm() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.placeholder = getKey() ? "key set for this session" : "not set";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    input.value = "";
    input.placeholder = getKey() ? "key set for this session" : "not set";
    await refreshAccess();
    await route();
  });
  document.getElementById("forget-key").addEventListener("click", async () => {
    setKey("");
    input.value = "";
    input.placeholder = "not set";
    await refreshAccess();
    await route();
  });
}

setupKeyForm();
window.addEventListener("hashchange", route);
refreshAccess().then(route);
