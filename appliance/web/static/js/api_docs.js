// The API's reference, drawn by the vendored Swagger UI from the appliance's own OpenAPI document
// (no CDN: an appliance without internet shows it too). "Try it out" acts as the user signed in to
// the console in this browser tab's session, if any, like any other script with their token.
const SESSION_KEY = "cairn.session";

function signedInToken() {
  const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  return saved && new Date(saved.expires_at) > new Date() ? saved.token : null;
}

window.SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  requestInterceptor: (request) => {
    const token = signedInToken();
    if (token && !request.headers.Authorization) request.headers.Authorization = `Bearer ${token}`;
    return request;
  },
});
