// ReDoc (from the fastapi-offline wheel) on the OpenAPI document.
"use strict";
(async () => {
  const spec = await window.trustserveDocs.spec();
  if (!spec) return;
  Redoc.init(spec, { hideDownloadButton: false }, document.getElementById("docs-root"));
})();
