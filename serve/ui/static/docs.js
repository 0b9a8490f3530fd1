// The API docs page: Swagger UI over this server's own OpenAPI document. validatorUrl null keeps Swagger UI from
// sending the document to its public validator (the only remote request it would make).
"use strict";

window.ui = SwaggerUIBundle({
  url: "/docs.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
});
