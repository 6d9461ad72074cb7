// Starts Swagger UI on /api/docs (a static file: the console's CSP forbids inline scripts).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  window.ui = window.SwaggerUIBundle({
    url: "/api/docs/openapi.json", // /api/openapi.json as OpenAPI 3.0, what Swagger UI 4 reads
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // no call to swagger.io: the console runs offline
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // "Try it out" on a write sends the page's CSRF token, as the console's own pages do
    requestInterceptor: (request) => {
      if (meta && request.method && request.method.toUpperCase() !== "GET") {
        request.headers["X-CSRF-Token"] = meta.content;
      }
      return request;
    },
  });
});
