// Renders the server's OpenAPI document with the bundled Swagger UI. Nothing is fetched from
// anywhere else: the online spec validator is off. "Try it out" calls this server; with an API
// key typed in the playground (same tab) or set through "Authorize", every call carries it.
(function () {
  const KEY_STORE = 'shiftserve.apiKey';
  const stored = () => sessionStorage.getItem(KEY_STORE) || '';
  const note = document.getElementById('key-note');
  if (stored()) note.textContent = 'using the API key from the playground';

  let ui = null;
  ui = SwaggerUIBundle({
    url: '/api-doc/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: false,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 1,
    docExpansion: 'list',
    filter: true,
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    requestInterceptor: (req) => {
      // The key given to "Authorize", else the playground's.
      const given = ui && ui.authSelectors.authorized().getIn(['api_key', 'value']);
      const key = given || stored();
      const h = req.headers || (req.headers = {});
      if (key && !h.Authorization && !h.authorization) h.Authorization = 'Bearer ' + key;
      return req;
    },
    onComplete: () => {
      const key = stored();
      if (key) ui.preauthorizeApiKey('api_key', key);
    },
  });
  window.ui = ui;
})();
