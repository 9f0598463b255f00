// The gateway's JSON APIs, called with the session cookies: the customer API under /api/v1 and the
// operator API under /admin/v1. Calls that change something send the session's CSRF token.

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(error.message || `The gateway answered ${status}.`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
    this.retryAfter = retryAfter;
  }
}

export function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

function operatorPath(path) {
  return path.startsWith("/admin/") || path.startsWith("/console/api/operator");
}

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") {
    const csrf = cookie(operatorPath(path) ? "zowy_operator_csrf" : "zowy_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    redirect: "error",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data, response.headers.get("retry-after"));
    const signingIn = path.startsWith("/api/v1/auth/") || (method === "POST" && path === "/console/api/operator/session");
    if (response.status === 401 && !signingIn) window.dispatchEvent(new CustomEvent("zowy:signed-out", { detail: { operator: operatorPath(path), error } }));
    throw error;
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);
export const put = (path, body = {}) => call("PUT", path, body);
export const patch = (path, body = {}) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);

export function query(params) {
  const out = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") out.set(k, String(v));
  }
  const text = out.toString();
  return text ? `?${text}` : "";
}

export const enc = encodeURIComponent;

// The base URL an SDK is given for this gateway: the address the console was loaded from.
export function baseUrl() {
  return `${window.location.origin}/api/v1`;
}
