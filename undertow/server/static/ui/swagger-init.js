// Starts Swagger UI on /docs from the vendored bundle (no CDN). The OpenAPI document is
// fetched with the browser's session cookie; "Authorize" takes the API token for requests.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.openapi,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
  });
});
