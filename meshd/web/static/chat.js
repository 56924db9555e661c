// meshd console: chat through the mesh. Streams POST /api/chat (same origin; the console proxies it
// to this node's OpenAI API), shows time to first token, tokens/s and the host that answered.
// Conversations live in this browser's localStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE_KEY = "meshd.chat.v1";
const MAX_CONVERSATIONS = 50;

let store = loadStore();
let status = null;
let modelsKey = null;
let controller = null;
let live = null; // {bubble, stats, reply} of the reply being streamed

function loadStore() {
  try {
    const raw = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    if (raw && Array.isArray(raw.conversations)) return raw;
  } catch (e) {
    /* a damaged store starts over */
  }
  return { conversations: [], current: null, model: null };
}

function saveStore() {
  store.conversations.sort((a, b) => b.updated - a.updated);
  store.conversations = store.conversations.slice(0, MAX_CONVERSATIONS);
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(store));
  } catch (e) {
    /* full or disabled storage: the chat still works, just not kept */
  }
}

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

function current() {
  return store.conversations.find((c) => c.id === store.current) || null;
}

function newConversation() {
  const conv = { id: newId(), title: "New chat", messages: [], updated: Date.now() };
  store.conversations.unshift(conv);
  store.current = conv.id;
  saveStore();
  renderAll();
  $("prompt").focus();
  return conv;
}

function selectConversation(id) {
  if (controller) return;
  store.current = id;
  saveStore();
  renderAll();
}

function deleteConversation(id) {
  if (controller && id === store.current) return;
  store.conversations = store.conversations.filter((c) => c.id !== id);
  if (store.current === id) store.current = store.conversations.length ? store.conversations[0].id : null;
  saveStore();
  renderAll();
}

// -- rendering ------------------------------------------------------------------------------------

function renderConversations() {
  fill(
    $("conversations"),
    store.conversations.map((c) =>
      h(
        "li",
        {},
        h("button", { type: "button", class: "conv", "aria-current": c.id === store.current ? "true" : "false", title: c.title, onclick: () => selectConversation(c.id) }, c.title),
        h("button", { type: "button", class: "conv-del", "aria-label": "Delete chat " + c.title, title: "Delete", onclick: () => deleteConversation(c.id) }, "×"),
      ),
    ),
  );
  const conv = current();
  const path = conv ? "/chat/" + conv.id : "/chat";
  if (location.pathname !== path) history.replaceState(null, "", path);
}

function statsLine(meta) {
  const parts = [];
  if (meta.host) {
    // x-mesh-served-by carries the full endpoint id; show iroh's short form (first 10 hex digits).
    const short = /^[0-9a-f]{64}$/.test(meta.host) ? meta.host.slice(0, 10) : meta.host;
    parts.push(h("span", { "data-testid": "served-by" }, "host ", h("b", { class: "mono", title: meta.host }, short)));
  }
  if (meta.model) parts.push(h("span", {}, "model ", h("b", {}, meta.model)));
  if (meta.ttft_ms !== undefined) parts.push(h("span", { "data-testid": "ttft" }, "TTFT ", h("b", {}, Math.round(meta.ttft_ms) + " ms")));
  if (meta.tps !== undefined) parts.push(h("span", { "data-testid": "tps" }, h("b", {}, meta.tps.toFixed(1)), " tok/s"));
  if (meta.tokens) parts.push(h("span", {}, h("b", {}, meta.tokens), " tokens"));
  if (meta.stopped) parts.push(h("span", { "data-testid": "stopped", class: "stopped" }, "■ stopped"));
  return parts;
}

function messageView(m, streaming) {
  const bubble = h("div", { class: "bubble" }, m.content);
  const stats = h("div", { class: "stats-line" }, m.meta ? statsLine(m.meta) : []);
  const err = m.meta && m.meta.error ? h("div", { class: "error", role: "alert" }, m.meta.error) : null;
  const el = h("article", { class: "msg " + m.role + (streaming ? " streaming" : "") }, h("div", { class: "who" }, m.role === "user" ? "You" : "Mesh"), bubble, err, m.role === "assistant" ? stats : null);
  return { el, bubble, stats };
}

function renderMessages() {
  const conv = current();
  const box = $("messages");
  if (!conv || !conv.messages.length) {
    fill(
      box,
      h("div", { class: "welcome" }, h("h1", {}, "Chat with the mesh"), h("p", {}, "Messages go through this node to a host that serves the chosen model. Each reply shows which host answered, the time to the first token and the speed.")),
    );
    return;
  }
  const views = conv.messages.map((m, i) => {
    const streaming = live !== null && i === conv.messages.length - 1;
    const v = messageView(m, streaming);
    if (streaming) {
      live.bubble = v.bubble;
      live.stats = v.stats;
      live.el = v.el;
    }
    return v.el;
  });
  fill(box, views);
  box.scrollTop = box.scrollHeight;
}

function renderAll() {
  renderConversations();
  renderMessages();
  updateButtons();
}

function updateButtons() {
  const busy = controller !== null;
  $("send").disabled = busy || !$("model").value;
  $("stop").disabled = !busy;
  $("new-chat").disabled = busy;
}

// -- models ---------------------------------------------------------------------------------------

// The warm models come with the status (same origin): the API port may want a key this page does not
// have, or not be reachable from this browser at all.
function loadModels() {
  const select = $("model");
  const warm = ((status && status.meshd && status.meshd.mesh_models) || []).filter((m) => m.status === "warm");
  const names = warm.map((m) => m.name);
  const hosts = {};
  for (const m of warm) hosts[m.name] = m.node_count;
  const wanted = select.value || store.model;
  if (!names.length) {
    fill(select, h("option", { value: "" }, "no model in the mesh yet"));
  } else {
    fill(select, names.map((n) => h("option", { value: n }, n)));
    select.value = names.includes(wanted) ? wanted : names[0];
  }
  showHosts(hosts);
  select.dataset.hosts = JSON.stringify(hosts);
  updateButtons();
}

function showHosts(hosts) {
  const n = (hosts || {})[$("model").value];
  $("model-hosts").textContent = n ? `${n} host${n === 1 ? "" : "s"}` : "";
}

function onStatus(st) {
  status = st;
  const warm = ((st.meshd && st.meshd.mesh_models) || [])
    .filter((m) => m.status === "warm")
    .map((m) => m.name + ":" + m.node_count)
    .join(",");
  if (warm !== modelsKey) {
    modelsKey = warm;
    loadModels();
  }
}

// -- sending --------------------------------------------------------------------------------------

function errorText(status, text) {
  try {
    const body = JSON.parse(text);
    const e = body.error;
    if (typeof e === "string") return e;
    if (e && e.message) return e.message;
  } catch (err) {
    /* not JSON */
  }
  return text ? text.slice(0, 300) : "HTTP " + status;
}

function showLive() {
  if (!live || !live.bubble) return;
  live.bubble.textContent = live.reply.content;
  fill(live.stats, statsLine(live.reply.meta));
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

async function send(text) {
  const model = $("model").value;
  if (!text.trim() || !model || controller) return;
  let conv = current() || newConversation();
  if (conv.messages.length === 0) conv.title = text.trim().slice(0, 48);
  conv.model = model;
  conv.messages.push({ role: "user", content: text });
  const history = conv.messages.filter((m) => !(m.meta && m.meta.error) && m.content).map((m) => ({ role: m.role, content: m.content }));
  const reply = { role: "assistant", content: "", meta: { model } };
  conv.messages.push(reply);
  conv.updated = Date.now();
  store.model = model;
  saveStore();
  controller = new AbortController();
  live = { reply };
  renderAll();

  const t0 = performance.now();
  let tFirst = null;
  let chunks = 0;
  let usageTokens = null;
  try {
    const r = await fetch("/api/chat", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ model, messages: history, stream: true, stream_options: { include_usage: true } }),
      signal: controller.signal,
    });
    reply.meta.host = r.headers.get("x-mesh-served-by") || r.headers.get("x-meshd-host") || undefined;
    if (!r.ok) {
      reply.meta.error = "Error " + r.status + ": " + errorText(r.status, await r.text());
      return;
    }
    showLive();
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let done = false;
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = block
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart())
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") {
          done = true;
          break;
        }
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch (e) {
          continue;
        }
        if (chunk.error) {
          reply.meta.error = errorText(0, JSON.stringify(chunk));
          continue;
        }
        if (chunk.usage && chunk.usage.completion_tokens) usageTokens = chunk.usage.completion_tokens;
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        const piece = delta.content || "";
        if (piece) {
          if (tFirst === null) {
            tFirst = performance.now();
            reply.meta.ttft_ms = tFirst - t0;
          }
          chunks += 1;
          reply.content += piece;
          showLive();
        }
      }
    }
  } catch (e) {
    if (e && e.name === "AbortError") reply.meta.stopped = true;
    else reply.meta.error = "The request failed: " + (e && e.message ? e.message : String(e));
  } finally {
    const tEnd = performance.now();
    const tokens = usageTokens || chunks;
    if (tokens) reply.meta.tokens = tokens;
    if (tFirst !== null && tokens > 1 && tEnd > tFirst) reply.meta.tps = (tokens - 1) / ((tEnd - tFirst) / 1000);
    controller = null;
    live = null;
    conv.updated = Date.now();
    saveStore();
    renderAll();
  }
}

// -- wiring ---------------------------------------------------------------------------------------

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value;
  if (!text.trim()) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", newConversation);
$("model").addEventListener("change", () => {
  showHosts(JSON.parse($("model").dataset.hosts || "{}"));
  updateButtons();
});
$("toggle-convs").addEventListener("click", () => {
  const open = $("chat").classList.toggle("show-convs");
  $("toggle-convs").setAttribute("aria-expanded", open ? "true" : "false");
});

(function start() {
  const m = location.pathname.match(/^\/chat\/([A-Za-z0-9]+)$/);
  if (m && store.conversations.some((c) => c.id === m[1])) store.current = m[1];
  renderAll();
  followStatus(onStatus, (state) => showConn($("conn"), state));
})();
