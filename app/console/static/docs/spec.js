// Shared by the API docs pages: fetch the OpenAPI document with the console's API key (sessionStorage),
// and say clearly what to do when the server wants a key. No inline script: the page's CSP forbids it.
"use strict";
window.trustserveDocs = {
  key() {
    try { return sessionStorage.getItem("trustserve.apiKey") || ""; } catch (e) { return ""; }
  },
  status(text, linkText, href) {
    const el = document.getElementById("docs-status");
    el.textContent = text;
    if (linkText) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = linkText;
      el.append(" ", a);
    }
  },
  async spec() {
    const body = document.body.dataset;
    const key = this.key();
    const headers = key ? { Authorization: "Bearer " + key } : {};
    const response = await fetch(body.openapiUrl, { headers, cache: "no-store", credentials: "omit" });
    if (response.status === 401 || response.status === 403) {
      this.status("This server's API docs need an API key with the read scope: enter it in the console, then reload.",
        "Open the console", body.consoleUrl);
      return null;
    }
    if (!response.ok) {
      this.status("The OpenAPI document could not be loaded (" + response.status + ").");
      return null;
    }
    return response.json();
  },
};
