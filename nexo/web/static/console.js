// The operator console: polls /api/console/status (the server's own counters, sampled)
// and probes /api/health from this browser, as the runbook's curl does.
const REFRESH_MS = 2000;
const HEALTH_BUDGET_MS = 200;
const PROBES_KEPT = 3;

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("nexo-console-token"), since: 0, timer: null, probes: [],
                plot: { messages_per_second: [], sth_index: [] } };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

async function probeHealth() {
  const started = performance.now();
  try {
    const r = await fetch("/api/health", { cache: "no-store" });
    await r.arrayBuffer();
    state.probes.push({ ms: performance.now() - started, ok: r.ok });
  } catch {
    state.probes.push({ ms: Infinity, ok: false });
  }
  state.probes = state.probes.slice(-PROBES_KEPT);
}

function healthFromBrowser(row) {
  const worst = Math.max(...state.probes.map((p) => p.ms));
  const failed = state.probes.some((p) => !p.ok);
  const shown = Number.isFinite(worst) ? `${Math.round(worst)} ms` : "no answer";
  const ok = row.ok && !failed && worst < HEALTH_BUDGET_MS;
  return { ...row, ok, figure: `browser round trip ${shown} (worst of last ${state.probes.length}); ${row.figure}`,
           remedy: ok ? "" : row.remedy || "Runbook, Health Response Time > 200ms: warm up with 3-5 requests; check database latency; check CPU and memory; verify no proxy or firewall delays." };
}

function renderRows(rows) {
  const body = $("checklist").tBodies[0];
  body.replaceChildren(...rows.map((row) => {
    const badge = el("span", { class: row.ok ? "ok" : "bad" }, row.ok ? "✔ green" : "✘ red");
    const tr = el("tr", { "data-key": row.key, "data-ok": String(row.ok) },
      el("td", {}, badge), el("th", { scope: "row" }, row.check), el("td", {}, row.figure),
      el("td", {}, row.remedy));
    return tr;
  }));
  const red = rows.filter((r) => !r.ok).length;
  $("summary").textContent = red ? `${red} of ${rows.length} checks red` : `All ${rows.length} checks green`;
}

function renderPlot(svg, points, fmt) {
  const w = 320, h = 120, pad = 24;
  svg.replaceChildren();
  if (points.length < 2) { svg.append(svgEl("text", { x: 10, y: 60 }, "collecting…")); return; }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(0, ...ys), y1 = Math.max(...ys, 1);
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (w - pad - 4);
  const sy = (y) => h - 14 - ((y - y0) / (y1 - y0 || 1)) * (h - 24);
  const d = points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
  svg.append(svgEl("path", { d, class: "line" }));
  svg.append(svgEl("text", { x: 2, y: 12 }, fmt(y1)));
  const span = x1 - x0;
  svg.append(svgEl("text", { x: 2, y: h - 2 }, `0 — over the last ${span < 120 ? `${Math.round(span)} s` : `${Math.round(span / 60)} min`}`));
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderRegistrations(list) {
  $("registrations").tBodies[0].replaceChildren(...list.map((d) => el("tr", {},
    el("td", {}, d.username), el("td", {}, `${d.name} (${d.device_id.slice(0, 8)})${d.revoked ? " revoked" : ""}`),
    el("td", {}, d.key_type), el("td", {}, String(d.leaf_index)), el("td", {}, d.created_at))));
}

async function refresh() {
  await probeHealth();
  let doc;
  try {
    const r = await fetch(`/api/console/status?since=${state.since}`,
                          { headers: { Authorization: `Bearer ${state.token}` }, cache: "no-store" });
    if (r.status === 401) { signOut("That token was refused."); return; }
    doc = await r.json();
    if (!r.ok) throw new Error(doc.error?.message || `status ${r.status}`);
  } catch (err) {
    $("refresh-error").textContent = `Refresh failed: ${err.message}. Retrying.`;
    schedule();
    return;
  }
  $("refresh-error").textContent = doc.sample_error ? `Sampler: ${doc.sample_error}` : "";
  renderRows(doc.rows.map((row) => (row.key === "health" ? healthFromBrowser(row) : row)));
  for (const name of Object.keys(state.plot)) {
    state.plot[name] = state.plot[name].concat(doc.plot[name]).filter((p) => p[0] > doc.sampled_at - 3600);
  }
  state.since = doc.sampled_at;
  renderPlot($("plot-messages"), state.plot.messages_per_second, (v) => `${v.toFixed(1)}/s`);
  renderPlot($("plot-sth"), state.plot.sth_index, (v) => `#${v}`);
  renderRegistrations(doc.registrations);
  schedule();
}

function schedule() { state.timer = setTimeout(refresh, REFRESH_MS); }

function show() {
  $("token-form").hidden = !!state.token;
  $("console").hidden = !state.token;
  if (state.token) refresh();
}

function signOut(message = "") {
  clearTimeout(state.timer);
  sessionStorage.removeItem("nexo-console-token");
  state.token = null;
  $("token-error").textContent = message;
  show();
  $("token").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value;
  sessionStorage.setItem("nexo-console-token", state.token);
  $("token").value = "";
  show();
});
$("sign-out").addEventListener("click", () => signOut());
show();
