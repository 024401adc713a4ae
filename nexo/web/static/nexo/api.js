// HTTP calls with the account's tokens: refreshed before the access token expires,
// and a clear error (no silent loop) when the refresh token is refused.
export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

export class Api {
  constructor() { this.access = null; this.refreshToken = null; this.expiresAt = 0; this.onSignedOut = () => {}; }

  setTokens(doc) {
    this.access = doc.access_token;
    this.refreshToken = doc.refresh_token;
    this.expiresAt = Date.now() + (Number(doc.expires_in || 3600) * 1000);
  }

  async token() {
    if (this.refreshToken && Date.now() > this.expiresAt - 60_000) {
      try {
        this.setTokens(await this.json("POST", "/api/auth/refresh", { auth: false, body: { refresh_token: this.refreshToken } }));
      } catch (err) {
        this.access = this.refreshToken = null;
        this.onSignedOut(err);
        throw err;
      }
    }
    return this.access;
  }

  /** GET a text document (the checkpoint note); no token. */
  async text(path) {
    let response;
    try { response = await fetch(path, { cache: "no-store" }); } catch { throw new ApiError(0, "offline", "the server cannot be reached"); }
    if (!response.ok) throw new ApiError(response.status, "http_error", `HTTP ${response.status} for ${path}`);
    return response.text();
  }

  async json(method, path, { auth = true, body } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) headers.Authorization = `Bearer ${await this.token()}`;
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
    } catch {
      throw new ApiError(0, "offline", "the server cannot be reached");
    }
    const doc = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new ApiError(response.status, doc.error?.code || "http_error", doc.error?.message || `HTTP ${response.status}`);
    }
    return doc;
  }
}
