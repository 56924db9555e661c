// meshd console: the dashboard. Live from /api/events; discovered meshes from /api/discover.
"use strict";

const $ = (id) => document.getElementById(id);
let status = null;
let receivedAt = 0;
const ticking = []; // [element, baseSecs, formatter]

function elapsed() {
  return (performance.now() - receivedAt) / 1000;
}

function tick() {
  const e = elapsed();
  for (const [el, base, fmt] of ticking) el.textContent = fmt(base + e);
}

// meshd's own fields of /api/status (beside mesh-llm 0.76's keys) are under `meshd`, per node and per peer.
function mine(x) {
  return (x && x.meshd) || {};
}

function roleClass(role) {
  return String(role || "").toLowerCase() === "host" ? "host" : "client";
}

function render(st) {
  status = st;
  receivedAt = performance.now();
  ticking.length = 0;
  const peers = Array.isArray(st.peers) ? st.peers : [];
  const own = mine(st);
  const models = Array.isArray(own.mesh_models) ? own.mesh_models : [];

  $("mesh-title").textContent = st.mesh_name ? st.mesh_name : st.mesh_id ? "Mesh " + st.mesh_id.slice(0, 8) : "Not in a mesh";
  $("node-id").textContent = st.node_id || "–";
  $("node-id").title = own.endpoint_id || "";
  const role = $("node-role");
  role.textContent = st.is_client ? "client" : "host";
  role.className = "badge " + (st.is_client ? "client" : "host");
  const state = $("node-state");
  state.textContent = own.node_state || "–";
  state.className = "badge " + (own.node_state === "joined" ? "warm" : "");
  $("node-version").textContent = own.version || st.version || "–";
  ticking.push([$("node-uptime"), own.uptime_secs || 0, fmtDuration]);
  $("mesh-id").textContent = st.mesh_id || "–";

  const hosts = peers.filter((p) => roleClass(p.role) === "host").length + (st.is_host ? 1 : 0);
  const clients = peers.filter((p) => roleClass(p.role) !== "host").length + (st.is_client ? 1 : 0);
  const vram = peers.filter((p) => roleClass(p.role) === "host").reduce((a, p) => a + (Number(p.vram_gb) || 0), 0);
  $("stat-models").textContent = models.filter((m) => m.status === "warm").length;
  $("stat-hosts").textContent = hosts;
  $("stat-clients").textContent = clients;
  fill($("stat-vram"), vram.toFixed(vram >= 100 ? 0 : 1), h("small", {}, " GB"));
  $("stat-inflight").textContent = st.inflight_requests || 0;

  renderTopology(st, peers);
  renderModels(models, !st.is_client);
  renderPeers(peers);
  $("token").textContent = st.token || "–";
  tick();
}

function renderModels(models, isHost) {
  // On a host, "Served here" counts what its backend answered for the whole mesh (every client).
  for (const th of $("models-table").querySelectorAll("th.served-col")) th.hidden = !isHost;
  const body = $("models-table").querySelector("tbody");
  $("models-count").textContent = models.length ? String(models.length) : "";
  $("models-empty").hidden = models.length > 0;
  $("models-table").hidden = models.length === 0;
  fill(
    body,
    models.map((m) => {
      const ago = h("td", { class: "num" }, "–");
      if (m.last_active_secs_ago !== undefined) ticking.push([ago, m.last_active_secs_ago, fmtAgo]);
      return h(
        "tr",
        { "data-model": m.name },
        h("td", {}, h("code", {}, m.name)),
        h("td", {}, h("span", { class: "badge " + (m.status === "warm" ? "warm" : "cold") }, m.status)),
        h("td", { class: "num" }, m.node_count),
        h("td", { class: "num" }, m.request_count === undefined ? "–" : m.request_count),
        isHost ? h("td", { class: "num", "data-testid": "served" }, m.served_count === undefined ? "–" : m.served_count) : null,
        ago,
      );
    }),
  );
}

function pathOf(p) {
  const m = mine(p);
  if (m.path === "relay") return "relay";
  if (m.path === "direct" || m.connected) return "direct";
  return "gossip";
}

// The exact round trip (ms, a float) where meshd measured one; mesh-llm's rtt_ms is whole milliseconds.
function rttOf(p) {
  const m = mine(p);
  return m.rtt_ms !== null && m.rtt_ms !== undefined ? m.rtt_ms : p.rtt_ms;
}

function renderPeers(peers) {
  const body = $("peers-table").querySelector("tbody");
  $("peers-count").textContent = peers.length ? String(peers.length) : "";
  $("peers-empty").hidden = peers.length > 0;
  $("peers-table").hidden = peers.length === 0;
  fill(
    body,
    peers.map((p) => {
      const seen = h("td", { class: "num" });
      ticking.push([seen, Number(mine(p).last_seen_secs_ago) || 0, fmtAgo]);
      const path = pathOf(p);
      return h(
        "tr",
        { "data-peer-id": p.id },
        h("td", {}, h("code", { title: mine(p).endpoint_id || "" }, p.id)),
        h("td", {}, h("span", { class: "badge " + roleClass(p.role) }, p.role)),
        h("td", {}, (p.models || []).length ? (p.models || []).join(", ") : h("span", { class: "empty" }, "none")),
        h("td", {}, path === "gossip" ? "via gossip" : path),
        h("td", { class: "num" }, fmtRtt(rttOf(p))),
        seen,
        h("td", {}, p.version || "–"),
      );
    }),
  );
}

function truncate(text, n) {
  text = String(text || "");
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

// Topology geometry (SVG user units). Labels sit above nodes in the upper half and below them in the
// lower half; the margins keep the outermost labels inside the drawing.
const NODE_R = 16;
const LABEL_REACH = 52; // from a peer's centre to the far edge of its two label lines
const SELF_REACH = 70; // from this node's centre to the bottom of its labels
const EDGE_PAD = 8;
const ID_CHARS = 16;

// Rough text widths for the layout (a monospace id; the model line in the UI font).
function idWidth(text) {
  return text.length * 7.8;
}
function modelWidth(text) {
  return text.length * 6.8;
}

function renderTopology(st, peers) {
  // Drawn at the container's own width so text stays readable on a phone.
  const box = $("topology");
  const W = Math.round(Math.max(320, Math.min(760, box.clientWidth || 640)));
  const narrow = W < 520;
  const modelChars = narrow ? 18 : 24;
  const hostPeers = peers.filter((p) => roleClass(p.role) === "host");
  const clientPeers = peers.filter((p) => roleClass(p.role) !== "host");
  const modelLabel = (p) => {
    const models = p.models || [];
    return models.length ? truncate(models[0] + (models.length > 1 ? ` +${models.length - 1}` : ""), modelChars) : "";
  };
  // Hosts above this node, clients below; one band only when there is one kind of peer.
  const both = hostPeers.length > 0 && clientPeers.length > 0;
  const H = both ? (narrow ? 380 : 420) : narrow ? 260 : 300;
  const cx = W / 2;
  const top = LABEL_REACH + EDGE_PAD; // the highest a peer's centre may be
  const bottom = H - LABEL_REACH - EDGE_PAD; // the lowest
  let cy;
  let ry;
  if (both || !peers.length) {
    cy = H / 2;
    ry = cy - top;
  } else if (hostPeers.length) {
    cy = H - SELF_REACH - EDGE_PAD;
    ry = cy - top;
  } else {
    cy = 85; // nothing above this node but its halo
    ry = bottom - cy;
  }
  // Leave room at the sides for the widest label of a peer drawn there.
  const halfLabel = Math.max(
    NODE_R,
    ...peers.map((p) => Math.max(idWidth(truncate(p.id, ID_CHARS)), modelWidth(modelLabel(p))) / 2),
  );
  const rx = Math.max(40, W / 2 - halfLabel - EDGE_PAD);
  const place = (list, a0, a1) =>
    list.map((p, i) => {
      const deg = list.length === 1 ? (a0 + a1) / 2 : a0 + (i * (a1 - a0)) / (list.length - 1);
      const a = (deg * Math.PI) / 180;
      return { p, x: cx + rx * Math.cos(a), y: cy + ry * Math.sin(a) };
    });
  const spread = (n) => Math.min(75, 35 + n * 10); // half-width of the arc, in degrees
  const placed = [
    ...place(hostPeers, 270 - spread(hostPeers.length), 270 + spread(hostPeers.length)),
    ...place(clientPeers, 90 + spread(clientPeers.length), 90 - spread(clientPeers.length)),
  ];
  const edges = [];
  const labels = [];
  const nodes = [];
  for (const { p, x, y } of placed) {
    const path = pathOf(p);
    const color = path === "direct" ? "var(--accent)" : path === "relay" ? "var(--warn)" : "var(--muted)";
    const dash = path === "direct" ? null : path === "relay" ? "8 6" : "2 6";
    edges.push(s("line", { x1: cx, y1: cy, x2: x, y2: y, stroke: color, "stroke-width": 2, "stroke-dasharray": dash, "stroke-linecap": "round", opacity: 0.9 }));
    const mx = cx + (x - cx) * 0.55;
    const my = cy + (y - cy) * 0.55;
    const rtt = rttOf(p) !== null && rttOf(p) !== undefined ? fmtRtt(rttOf(p)) : "";
    const lines = path === "gossip" ? ["via gossip"] : narrow && rtt ? [path, rtt] : [path + (rtt ? " · " + rtt : "")];
    const w = Math.max(...lines.map((t) => t.length)) * 6.6 + 14;
    const lh = 14 * lines.length + 6;
    labels.push(
      s("g", { class: "edge-label" },
        s("rect", { x: mx - w / 2, y: my - lh / 2, width: w, height: lh, rx: 9, fill: "#0d1218", stroke: "#263241" }),
        lines.map((t, i) => s("text", { x: mx, y: my - lh / 2 + 15 + i * 14, "text-anchor": "middle", "font-size": 11.5, fill: "#c9d4e0" }, t))),
    );
    const isHost = roleClass(p.role) === "host";
    const fillColor = isHost ? "var(--host)" : "var(--client)";
    const below = y >= cy;
    const model = modelLabel(p);
    nodes.push(
      s("g", { class: "peer-node", "data-peer-id": p.id },
        s("title", {}, `${p.role} ${p.id}${model ? " · " + (p.models || []).join(", ") : ""}`),
        s("circle", { cx: x, cy: y, r: NODE_R, fill: fillColor, stroke: "#0d1218", "stroke-width": 3 }),
        s("text", { x, y: y + 4, "text-anchor": "middle", "font-size": 11, "font-weight": 700, fill: "#0d1218" }, isHost ? "H" : "C"),
        s("text", { class: "node-label", x, y: below ? y + 32 : y - 38, "text-anchor": "middle", "font-size": 12.5, "font-family": "ui-monospace, monospace", fill: "#e6edf3" }, truncate(p.id, ID_CHARS)),
        model ? s("text", { class: "node-label", x, y: below ? y + 47 : y - 23, "text-anchor": "middle", "font-size": 11.5, fill: "#93a1b3" }, model) : null),
    );
  }
  const selfColor = "var(--accent)";
  const self = s("g", { class: "self-node" },
    s("circle", { cx, cy, r: 30, fill: "none", stroke: selfColor, "stroke-opacity": 0.35, "stroke-width": 8 }),
    s("circle", { cx, cy, r: 24, fill: selfColor }),
    s("text", { x: cx, y: cy + 4, "text-anchor": "middle", "font-size": 11, "font-weight": 800, fill: "#062624" }, "YOU"),
    s("text", { class: "node-label", x: cx, y: cy + 50, "text-anchor": "middle", "font-size": 12.5, "font-family": "ui-monospace, monospace", fill: "#e6edf3" }, truncate(st.node_id || "", ID_CHARS)),
    s("text", { class: "node-label", x: cx, y: cy + 65, "text-anchor": "middle", "font-size": 11.5, fill: "#93a1b3" }, st.is_client ? "client (this node)" : "host (this node)"),
  );
  const children = [...edges, ...nodes, self, ...labels];
  if (!peers.length) {
    const looking = mine(st).node_state === "joining" || mine(st).node_state === "discovering";
    const lines = looking ? ["Looking for peers…"] : ["No peers yet:", "paste an invite token below to join a mesh"];
    lines.forEach((t, i) => children.push(s("text", { class: "node-label", x: cx, y: 30 + i * 17, "text-anchor": "middle", "font-size": 13, fill: "#93a1b3" }, t)));
  }
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "presentation" }, ...children);
  fill($("topology"), svg);
  fitDrawing(svg, W, H);
  $("topology").setAttribute("aria-label", `Topology: this node and ${peers.length} peer(s), ${hostPeers.length} host(s)`);
}

// The layout above uses estimated text widths; should a label still reach past the drawing (another
// font, a long name), widen the view box to take it in rather than cut it off.
function fitDrawing(svg, W, H) {
  let b;
  try {
    b = svg.getBBox();
  } catch (e) {
    return;
  }
  if (!b || (b.width === 0 && b.height === 0)) return; // not laid out (hidden)
  if (b.x >= 0 && b.y >= 0 && b.x + b.width <= W && b.y + b.height <= H) return;
  const x0 = Math.min(0, b.x - EDGE_PAD);
  const y0 = Math.min(0, b.y - EDGE_PAD);
  const x1 = Math.max(W, b.x + b.width + EDGE_PAD);
  const y1 = Math.max(H, b.y + b.height + EDGE_PAD);
  svg.setAttribute("viewBox", `${x0} ${y0} ${x1 - x0} ${y1 - y0}`);
}

// -- invite, join ---------------------------------------------------------------------------------

async function copyToken() {
  const token = status && status.token;
  const msg = $("copy-msg");
  if (!token) return;
  let ok = false;
  try {
    await navigator.clipboard.writeText(token);
    ok = true;
  } catch (e) {
    const range = document.createRange();
    range.selectNodeContents($("token"));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    try {
      ok = document.execCommand("copy");
    } catch (e2) {
      ok = false;
    }
  }
  msg.textContent = ok ? "Copied." : "Selected: press Ctrl+C to copy.";
  msg.className = ok ? "msg-ok" : "";
  $("copy-token").textContent = ok ? "Copied" : "Copy";
  setTimeout(() => ($("copy-token").textContent = "Copy"), 1500);
}

async function joinToken(token) {
  const msg = $("join-msg");
  token = String(token || "").trim();
  if (!token) {
    msg.textContent = "Paste an invite token first.";
    msg.className = "hint msg-bad";
    return;
  }
  msg.textContent = "Joining…";
  msg.className = "hint";
  try {
    const r = await fetch("/api/join", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token }) });
    const body = await r.json().catch(() => ({}));
    if (r.ok) {
      msg.textContent = "Joined: node is " + body.node_state + ".";
      msg.className = "hint msg-ok";
      $("join-token").value = "";
    } else {
      msg.textContent = "Could not join: " + (body.error || r.status);
      msg.className = "hint msg-bad";
    }
  } catch (e) {
    msg.textContent = "Could not reach the console.";
    msg.className = "hint msg-bad";
  }
}

// -- discovered meshes ----------------------------------------------------------------------------

async function loadDiscover() {
  const empty = $("discover-empty");
  const table = $("discover-table");
  const button = $("discover-refresh");
  button.disabled = true;
  try {
    const r = await fetch("/api/discover", { cache: "no-store" });
    const body = await r.json().catch(() => null);
    if (!r.ok || !Array.isArray(body)) {
      table.hidden = true;
      empty.hidden = false;
      empty.textContent = "Nostr discovery unavailable" + (body && body.error ? ": " + body.error : "") + ".";
      $("discover-count").textContent = "";
      return;
    }
    body.sort((a, b) => (b.score || 0) - (a.score || 0));
    $("discover-count").textContent = body.length ? String(body.length) : "";
    table.hidden = body.length === 0;
    empty.hidden = body.length > 0;
    empty.textContent = "No meshes listed on the relays right now.";
    fill(
      table.querySelector("tbody"),
      body.map((m) => {
        const l = m.listing || {};
        const name = l.name || (l.mesh_id ? "mesh " + l.mesh_id.slice(0, 8) : "unnamed mesh");
        const mine = status && l.mesh_id && l.mesh_id === status.mesh_id;
        return h(
          "tr",
          { "data-mesh-id": l.mesh_id || "" },
          h("td", {}, h("b", {}, name), l.region ? h("div", { class: "hint" }, l.region) : null, mine ? h("span", { class: "badge self" }, "this mesh") : null),
          h("td", {}, (l.serving || []).join(", ") || "–"),
          h("td", { class: "num" }, `${l.node_count || 0}`, l.client_count ? h("div", { class: "hint" }, `+${l.client_count} client${l.client_count === 1 ? "" : "s"}`) : null),
          h("td", { class: "num" }, Math.round(m.score || 0)),
          h("td", {}, mine ? null : h("button", { type: "button", onclick: () => joinToken(l.invite_token), "aria-label": "Join " + name }, "Join")),
        );
      }),
    );
  } catch (e) {
    empty.hidden = false;
    empty.textContent = "Could not reach the console.";
  } finally {
    button.disabled = false;
  }
}

$("copy-token").addEventListener("click", copyToken);
$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  joinToken($("join-token").value);
});
$("discover-refresh").addEventListener("click", loadDiscover);
setInterval(tick, 1000);
setInterval(loadDiscover, 60000);
followStatus(render, (state) => showConn($("conn"), state));
let lastWidth = 0;
window.addEventListener("resize", () => {
  const w = $("topology").clientWidth;
  if (status && Math.abs(w - lastWidth) > 20) {
    lastWidth = w;
    renderTopology(status, Array.isArray(status.peers) ? status.peers : []);
  }
});
loadDiscover();
