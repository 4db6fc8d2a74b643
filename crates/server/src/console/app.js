// coopr console: plain JavaScript, no build step. Every page reads the same REST API the CLI
// uses, with the Coopr headers of the user who logged in (kept in this browser tab's session
// storage), and refreshes itself every second.
"use strict";

const REFRESH_MS = 1000;
// Colors of the DCs, in the order the shard map lists them.
const COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4d7c0f", "#be185d", "#57534e"];
// Lag samples the replication chart keeps (one per refresh: five minutes).
const LAG_SAMPLES = 300;

const main = document.getElementById("main");
let timer = null;
let renewals = {}; // dc -> {sequence, seenAt}: when this page last saw the DC's lease renewed
const lagHistory = []; // {at, byDc: {dc: maxLagMs}}

function session() {
  const raw = sessionStorage.getItem("coopr");
  return raw ? JSON.parse(raw) : null;
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

async function api(method, path, body) {
  const who = session();
  const headers = { "Coopr-UserID": who.user, "Coopr-TenantID": who.tenant, "Coopr-ApiKey": who.key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!response.ok) {
    const error = new Error((data && data.message) || response.statusText);
    error.code = (data && data.code) || String(response.status);
    error.status = response.status;
    throw error;
  }
  return data;
}

function isSuperadmin() {
  const who = session();
  return who && who.tenant === "superadmin";
}

function ms(value) {
  if (value === null || value === undefined) return "-";
  if (value >= 1.8e19) return "never";
  if (value < 10000) return `${value} ms`;
  return `${(value / 1000).toFixed(1)} s`;
}

function position(p) {
  return p ? `${p.epoch}:${p.seq}` : "-";
}

function dcColor(dcs, dc) {
  const i = dcs.indexOf(dc);
  return COLORS[(i < 0 ? dcs.length : i) % COLORS.length];
}

function shardStatus(status) {
  if (!status || typeof status === "string") return status || "-";
  const name = status.status;
  if (status.from && status.to) return `${name} ${status.from} → ${status.to}`;
  if (status.to) return `${name} to ${status.to}`;
  return name;
}

// ---- pages -------------------------------------------------------------------------------------

// A page with a form draws its frame (headings, forms, containers) once and only the live
// parts on each refresh, so that what the user typed or chose stays, and handlers are wired
// once (buttons in live parts are handled by delegation on their container).
function frame(key, html, wire) {
  if (main.dataset.page === key) return;
  main.innerHTML = html;
  main.dataset.page = key;
  if (wire) wire();
}

function live(id, html) {
  const element = document.getElementById(id);
  if (element && element.innerHTML !== html) element.innerHTML = html;
}

const PAGES = {
  dcs: { title: "Datacenters", admin: true, render: renderDcs },
  shards: { title: "Shard map", admin: true, render: renderShards },
  replication: { title: "Replication", admin: true, render: renderReplication },
  clusters: { title: "Clusters", admin: false, render: renderClusters },
  events: { title: "Events", admin: true, render: renderEvents },
};

async function renderDcs() {
  const [map, dcs] = await Promise.all([api("GET", "/v2/admin/shards"), api("GET", "/v2/admin/dcs")]);
  const now = Date.now();
  const rows = (map.dcs || []).map((dc) => {
    const lease = (map.leases || []).find((l) => l.dc === dc);
    const seen = renewals[dc];
    if (lease && (!seen || seen.sequence !== lease.sequence)) renewals[dc] = { sequence: lease.sequence, seenAt: now };
    const owned = (map.shards || []).filter((s) => s.owner === dc).length;
    const since = renewals[dc] ? Math.round((now - renewals[dc].seenAt) / 1000) : null;
    const health = !lease ? '<span class="bad">no lease</span>'
      : since !== null && since > 5 ? `<span class="bad">no renewal for ${since} s</span>`
      : '<span class="ok">renewing</span>';
    const maintenance = (map.maintenance || {})[dc];
    const nodes = (dcs.nodes || []).filter((n) => n.dc === dc).map((n) => !n.reachable
      ? `<div><b>${esc(n.node)}</b> <span class="bad">unreachable</span></div>`
      : `<div><b>${esc(n.node)}</b>${n.this ? " (this node)" : ""}: ${esc(n.role)}, leader ${esc(n.leader ?? "-")}, term ${esc(n.term)}${n.placement_role ? `, placement ${esc(n.placement_role)}` : ""}${n.role === "leader" && n.lease_remaining_ms !== null && n.lease_remaining_ms !== undefined ? `, lease ${esc(ms(n.lease_remaining_ms))} left` : ""};
         <span class="${n.ready ? "ok" : "bad"}">${n.ready ? "ready" : "not ready: " + esc(n.reason || "")}</span></div>`);
    return `<tr data-dc="${esc(dc)}"><td><span class="legend"><span style="background:${dcColor(map.dcs, dc)}">${esc(dc)}</span></span></td>
      <td>${nodes.join("") || "-"}</td><td>${owned}</td><td>${lease ? esc(lease.sequence) : "-"}</td><td class="lease">${health}</td>
      <td class="maintenance">${esc(maintenance ? (typeof maintenance === "string" ? maintenance : JSON.stringify(maintenance)) : "-")}</td>
      <td><button data-drain="${esc(dc)}">Drain</button> <button data-undrain="${esc(dc)}">Undrain</button></td></tr>`;
  });
  frame("dcs", `<h1>Datacenters</h1>
    <table><thead><tr><th>DC</th><th>nodes (DC log role, leader, readiness)</th><th>shards owned</th><th>lease sequence</th><th>lease</th><th>maintenance</th><th></th></tr></thead>
    <tbody id="dcs"></tbody></table>
    <div class="error" id="dc-error"></div>
    <p class="muted" id="dcs-note"></p>`, () => {
    document.getElementById("dcs").onclick = (event) => {
      const button = event.target.closest("[data-drain], [data-undrain]");
      if (!button) return;
      const drain = "drain" in button.dataset;
      const dc = drain ? button.dataset.drain : button.dataset.undrain;
      const what = drain ? `Drain datacenter ${dc}? Its shards are handed to the other DCs.` : `Undrain datacenter ${dc}? Its home shards are handed back to it.`;
      if (!confirm(what)) return;
      act("dc-error", () => api("POST", `/v2/admin/dcs/${encodeURIComponent(dc)}/${drain ? "drain" : "undrain"}`, { dry_run: false }));
    };
  });
  live("dcs", rows.join(""));
  live("dcs-note", `Asked through datacenter ${esc(map.dc)}. A DC renews its lease at the placement group every third of a lease; one that stops renewing loses its shards to the others once its lease (plus the clock-offset margin) ran out. Draining hands a DC's shards to the others a few at a time, without loss; undraining hands its home shards back.`);
}

async function renderShards() {
  const [map, replication] = await Promise.all([api("GET", "/v2/admin/shards"), api("GET", "/v2/admin/replication")]);
  const reports = {};
  for (const r of replication.shards || []) reports[r.shard] = r;
  const lagOf = (shard, replica) => {
    const r = reports[shard];
    if (!r) return null;
    if (r.by_replica) return r.by_replica[replica] ? r.by_replica[replica].lag_ms : null;
    return replica === map.dc && r.local ? r.local.lag_ms : null;
  };
  const cells = (map.shards || []).map((s) => {
    const status = shardStatus(s.status);
    const lags = (s.replicas || []).map((r) => { const lag = lagOf(s.shard, r); return `${esc(r)}${lag === null ? "" : " " + esc(ms(lag))}`; });
    const moving = status !== "active" ? " moving" : "";
    return `<div class="shard${moving}" data-shard="${esc(s.shard)}" data-owner="${esc(s.owner)}" data-epoch="${esc(s.epoch)}" data-status="${esc(status)}"
      style="background:${dcColor(map.dcs, s.owner)}" title="replicas: ${esc(lags.join(", "))}"><b>${esc(s.shard)}</b>${esc(s.owner)} · e${esc(s.epoch)}<br>${esc(status)}</div>`;
  });
  const legend = (map.dcs || []).map((dc) => `<span style="background:${dcColor(map.dcs, dc)}">${esc(dc)}</span>`).join("");
  const options = (map.shards || []).filter((s) => s.shard !== "global").map((s) => `<option>${esc(s.shard)}</option>`).join("");
  const targets = (map.dcs || []).map((dc) => `<option>${esc(dc)}</option>`).join("");
  const unreplicated = (replication.shards || []).reduce((sum, r) => sum + Object.values(r.by_replica || {}).reduce((m, b) => Math.max(m, b.unreplicated_records || 0), 0), 0);
  frame("shards", `<h1>Shard map</h1>
    <p id="shard-summary"></p>
    <div class="grid" id="shard-grid"></div>
    <h2>Hand a shard over</h2>
    <form class="inline" id="handover"><label>shard<select name="shard">${options}</select></label>
      <label>to<select name="to">${targets}</select></label><button>Hand over</button>
      <button type="button" id="abort-handover">Abort its handover</button></form>
    <div class="error" id="handover-error"></div>`, () => {
    const form = document.getElementById("handover");
    form.onsubmit = (event) => {
      event.preventDefault();
      const shard = form.shard.value, to = form.to.value;
      if (!confirm(`Hand shard ${shard} over to ${to}? Running operations finish at the old owner first.`)) return;
      act("handover-error", () => api("POST", `/v2/admin/shards/${encodeURIComponent(shard)}/handover`, { to }));
    };
    document.getElementById("abort-handover").onclick = () => {
      const shard = form.shard.value;
      if (!confirm(`Abort the handover of shard ${shard}?`)) return;
      act("handover-error", () => api("POST", `/v2/admin/shards/${encodeURIComponent(shard)}/handover/abort`));
    };
  });
  live("shard-summary", `<span class="legend">${legend}</span> <span class="muted">${(map.shards || []).length} shards (the global one last), as datacenter ${esc(map.dc)} sees them. RPO exposure of ${esc(map.dc)}: ${unreplicated} record(s) some replica lacks.</span>`);
  live("shard-grid", cells.join(""));
}

async function renderReplication() {
  const replication = await api("GET", "/v2/admin/replication");
  const byDc = {};
  const rows = [];
  for (const s of replication.shards || []) {
    for (const [dc, r] of Object.entries(s.by_replica || {})) {
      if (r.lag_ms < 1.8e19) byDc[dc] = Math.max(byDc[dc] || 0, r.lag_ms);
      rows.push(`<tr><td>${esc(s.shard)}</td><td>${esc(s.owner)}</td><td>${esc(dc)}</td><td>${position(r.cursor)}</td><td>${position(s.last)}</td><td>${esc(r.unreplicated_records)}</td><td>${ms(r.lag_ms)}</td></tr>`);
    }
    if (s.local) {
      if (s.local.lag_ms < 1.8e19) byDc[replication.dc] = Math.max(byDc[replication.dc] || 0, s.local.lag_ms);
      rows.push(`<tr><td>${esc(s.shard)}</td><td>${esc(s.owner)}</td><td>${esc(replication.dc)}</td><td>${position(s.local.watermark)}</td><td>${position(s.local.owner_last)}</td><td>-</td><td>${ms(s.local.lag_ms)}</td></tr>`);
    }
  }
  lagHistory.push({ at: Date.now(), byDc });
  while (lagHistory.length > LAG_SAMPLES) lagHistory.shift();
  main.dataset.page = "";
  main.innerHTML = `<h1>Replication</h1><p class="muted">Largest lag per replica DC as datacenter ${esc(replication.dc)} sees it, sampled every second while this page is open.</p>
    ${lagChart()}<h2>Per shard</h2>
    <table><tr><th>shard</th><th>owner</th><th>replica</th><th>at</th><th>owner at</th><th>unreplicated</th><th>lag</th></tr>${rows.join("")}</table>`;
}

function lagChart() {
  const dcs = [...new Set(lagHistory.flatMap((s) => Object.keys(s.byDc)))].sort();
  const top = Math.max(100, ...lagHistory.flatMap((s) => Object.values(s.byDc)));
  const width = 1000, height = 200;
  const x = (i) => (i / Math.max(1, LAG_SAMPLES - 1)) * width;
  const y = (v) => height - (v / top) * (height - 20);
  const lines = dcs.map((dc, n) => {
    const points = lagHistory.map((s, i) => (dc in s.byDc ? `${x(i).toFixed(1)},${y(s.byDc[dc]).toFixed(1)}` : null)).filter(Boolean).join(" ");
    return `<polyline fill="none" stroke="${COLORS[n % COLORS.length]}" stroke-width="2" points="${points}"/><text x="8" y="${16 + 14 * n}" fill="${COLORS[n % COLORS.length]}" font-size="12">${esc(dc)}</text>`;
  });
  return `<svg class="chart" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none">${lines.join("")}<text x="${width - 8}" y="14" text-anchor="end" font-size="12" fill="#6b7280">max ${ms(top)}</text></svg>`;
}

async function renderClusters() {
  const [clusters, templates] = await Promise.all([api("GET", "/v2/clusters"), api("GET", "/v2/clustertemplates").catch(() => [])]);
  const rows = clusters.map((c) => {
    const p = c.progress || {};
    const pct = p.stepstotal ? Math.round((100 * p.stepscompleted) / p.stepstotal) : 0;
    const job = p.action ? `${esc(p.action)} ${esc((p.actionstatus || "").toLowerCase())}` : "-";
    const remove = c.status === "terminated" ? "" : `<button data-delete="${esc(c.id)}">Delete</button>`;
    return `<tr data-cluster="${esc(c.id)}" data-status="${esc(c.status)}"><td><a href="#/clusters/${esc(c.id)}">${esc(c.id)}</a></td><td>${esc(c.name)}</td><td class="status">${esc(c.status)}</td>
      <td>${esc((c.clusterTemplate || {}).name)}</td><td>${esc(c.numNodes)}</td><td>${job}<div class="bar"><div style="width:${pct}%"></div></div></td><td>${remove}</td></tr>`;
  });
  const names = (Array.isArray(templates) ? templates : []).map((t) => `<option>${esc(t.name)}</option>`).join("");
  frame("clusters", `<h1>Clusters</h1>
    <form class="inline" id="create"><label>name<input name="name" required maxlength="255" value="web"></label>
      <label>template<select name="template">${names}</select></label>
      <label>machines<input name="machines" type="number" min="1" max="100" value="1"></label><button>Create</button></form>
    <div class="error" id="cluster-error"></div>
    <table><thead><tr><th>id</th><th>name</th><th>status</th><th>template</th><th>nodes</th><th>job</th><th></th></tr></thead>
    <tbody id="clusters"></tbody></table>`, () => {
    const form = document.getElementById("create");
    form.onsubmit = (event) => {
      event.preventDefault();
      const body = { name: form.name.value, clusterTemplate: form.template.value, numMachines: Number(form.machines.value) };
      if (!confirm(`Create cluster ${body.name} from ${body.clusterTemplate} with ${body.numMachines} machine(s)?`)) return;
      act("cluster-error", () => api("POST", "/v2/clusters", body));
    };
    document.getElementById("clusters").onclick = (event) => {
      const button = event.target.closest("[data-delete]");
      if (!button) return;
      const id = button.dataset.delete;
      if (!confirm(`Delete cluster ${id}? Its machines are deleted.`)) return;
      act("cluster-error", () => api("DELETE", `/v2/clusters/${encodeURIComponent(id)}`));
    };
  });
  live("clusters", rows.join(""));
}

async function renderCluster(id) {
  const [c, plans] = await Promise.all([api("GET", `/v2/clusters/${encodeURIComponent(id)}`), api("GET", `/v2/clusters/${encodeURIComponent(id)}/plans`).catch(() => [])]);
  const nodes = (c.nodes || []).map((n) => {
    const p = n.properties || {};
    const addresses = Object.entries(p.ipaddresses || {}).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(" ");
    const services = (n.services || []).map((s) => esc(s.name)).join(", ");
    const last = (n.actions || []).slice(-1)[0];
    return `<tr><td>${esc(n.id)}</td><td>${esc(p.hostname)}</td><td>${addresses || "-"}</td><td>${services || "-"}</td><td>${last ? esc(last.action + " " + last.status) : "-"}</td></tr>`;
  });
  const withTasks = (Array.isArray(plans) ? plans : []).filter((plan) => (plan.stages || []).length > 0);
  const jobs = withTasks.slice(-3).reverse().map((plan) => {
    const stages = (plan.stages || []).map((stage, i) => `<tr><td>${i + 1}${i === plan.currentStage ? " ◀" : ""}</td><td>${stage.map((t) => `${esc(t.taskName)} ${esc(t.service || "")} <span class="muted">${esc(t.nodeId)}</span>`).join("<br>")}</td></tr>`);
    return `<h2>Job ${esc(plan.id)}: ${esc(plan.action)}</h2><table><tr><th>stage</th><th>tasks</th></tr>${stages.join("")}</table>`;
  });
  const p = c.progress || {};
  main.dataset.page = "";
  main.innerHTML = `<h1>Cluster ${esc(c.id)}: ${esc(c.name)}</h1>
    <div class="card">status <b id="cluster-status">${esc(c.status)}</b>; template ${esc((c.clusterTemplate || {}).name)}; services ${esc((c.services || []).join(", "))};
      last job ${esc(p.action || "-")} ${esc((p.actionstatus || "").toLowerCase())} (${esc(p.stepscompleted ?? 0)}/${esc(p.stepstotal ?? 0)} steps)${c.message ? "; " + esc(c.message) : ""}</div>
    <h2>Nodes</h2><table><tr><th>node</th><th>hostname</th><th>addresses</th><th>services</th><th>last action</th></tr>${nodes.join("")}</table>${jobs.join("")}`;
}

async function renderEvents() {
  const [map, lost] = await Promise.all([api("GET", "/v2/admin/shards"), api("GET", "/v2/admin/lost-operations")]);
  const history = (map.history || []).slice().reverse().map((h) =>
    `<tr><td>${esc(h.number)}</td><td>${esc(h.shard)}</td><td>${esc(h.from)} → ${esc(h.to)}</td><td>${esc(h.epoch)}</td><td>${esc(h.reason && h.reason.reason ? h.reason.reason : JSON.stringify(h.reason))}</td></tr>`);
  const operations = (lost.operations || []).map((o) =>
    `<tr><td>${esc(o.shard)}</td><td>${esc(o.epoch)}:${esc(o.seq)}</td><td>${esc(o.kind)}</td><td>${esc(o.tenant || "-")}</td><td>${esc(o.cluster || "-")}</td><td>${esc(o.new_owner)}</td></tr>`);
  main.dataset.page = "";
  main.innerHTML = `<h1>Events</h1><h2>Ownership changes (handovers and failovers), newest first</h2>
    <table id="history"><tr><th>#</th><th>shard</th><th>move</th><th>epoch</th><th>reason</th></tr>${history.join("")}</table>
    <h2>Lost operations of datacenter ${esc(lost.dc)} (${esc(lost.total)} in all)</h2>
    <table><tr><th>shard</th><th>position</th><th>kind</th><th>tenant</th><th>cluster</th><th>new owner</th></tr>${operations.join("") || '<tr><td colspan="6" class="muted">none: nothing this DC acknowledged was lost</td></tr>'}</table>`;
}

// ---- shell ---------------------------------------------------------------------------------------

async function act(errorId, call) {
  const box = document.getElementById(errorId);
  try {
    await call();
    if (box) box.textContent = "";
    refresh();
  } catch (error) {
    if (box) box.textContent = `${error.status || ""} ${error.code}: ${error.message}`;
  }
}

function renderLogin(message) {
  document.getElementById("nav").innerHTML = "";
  document.getElementById("who").innerHTML = "";
  main.dataset.page = "";
  main.innerHTML = `<form class="card login" id="login"><h1>Log in to coopr</h1>
    <label>tenant<input name="tenant" value="superadmin" required></label>
    <label>user<input name="user" value="admin" required></label>
    <label>API key<input name="key" type="password" required></label>
    <button>Log in</button><div class="error" id="login-error">${esc(message || "")}</div></form>`;
  const form = document.getElementById("login");
  form.onsubmit = async (event) => {
    event.preventDefault();
    sessionStorage.setItem("coopr", JSON.stringify({ tenant: form.tenant.value, user: form.user.value, key: form.key.value }));
    try {
      await api("GET", "/v2/clusters");
      location.hash = isSuperadmin() ? "#/shards" : "#/clusters";
      route();
    } catch (error) {
      sessionStorage.removeItem("coopr");
      document.getElementById("login-error").textContent = `${error.code}: ${error.message}`;
    }
  };
}

function route() {
  clearInterval(timer);
  main.dataset.page = "";
  const who = session();
  if (!who) return renderLogin();
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const page = parts[0] || (isSuperadmin() ? "shards" : "clusters");
  const id = parts[1];
  const visible = Object.entries(PAGES).filter(([, p]) => !p.admin || isSuperadmin());
  document.getElementById("nav").innerHTML = visible.map(([key, p]) => `<a href="#/${key}" class="${key === page ? "active" : ""}">${p.title}</a>`).join("");
  document.getElementById("who").innerHTML = `${esc(who.user)} @ ${esc(who.tenant)} <button id="logout">Log out</button>`;
  document.getElementById("logout").onclick = () => { sessionStorage.removeItem("coopr"); location.hash = ""; route(); };
  const draw = page === "clusters" && id ? () => renderCluster(id) : (PAGES[page] || PAGES.clusters).render;
  current = async () => {
    try { await draw(); } catch (error) {
      if (error.status === 401) return renderLogin("The key was refused: log in again.");
      main.dataset.page = "";
      main.innerHTML = `<div class="error">${esc(error.code)}: ${esc(error.message)}</div>`;
    }
  };
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

let current = null;
let drawing = false;
async function refresh() {
  if (!current || drawing) return;
  drawing = true;
  try { await current(); } finally { drawing = false; }
}

window.addEventListener("hashchange", route);
route();
