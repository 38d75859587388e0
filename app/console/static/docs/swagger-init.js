// Swagger UI (from the fastapi-offline wheel) on the OpenAPI document; "Try it out" requests carry the
// console's API key when one is set.
"use strict";
(async () => {
  const docs = window.trustserveDocs;
  const spec = await docs.spec();
  if (!spec) return;
  window.ui = SwaggerUIBundle({
    spec,
    dom_id: "#docs-root",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    requestInterceptor: (request) => {
      const key = docs.key();
      if (key) request.headers.Authorization = "Bearer " + key;
      return request;
    },
  });
})();
