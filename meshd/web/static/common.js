// meshd console: helpers shared by the dashboard and the chat page (no dependencies).
"use strict";

/** Build an element: h("td", {class: "num"}, "text", childNode). Text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtDuration(secs) {
  if (secs === null || secs === undefined || !isFinite(secs)) return "–";
  secs = Math.max(0, Math.floor(secs));
  if (secs < 60) return secs + "s";
  const m = Math.floor(secs / 60);
  if (m < 60) return m + "m " + (secs % 60) + "s";
  const hh = Math.floor(m / 60);
  if (hh < 48) return hh + "h " + (m % 60) + "m";
  return Math.floor(hh / 24) + "d " + (hh % 24) + "h";
}

function fmtAgo(secs) {
  if (secs === null || secs === undefined || !isFinite(secs)) return "–";
  if (secs < 2) return "just now";
  return fmtDuration(secs) + " ago";
}

function fmtRtt(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return "–";
  if (ms < 10) return ms.toFixed(1) + " ms";
  return Math.round(ms) + " ms";
}

/** Replace an element's children. */
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/**
 * Follow GET /api/events: onStatus(status) for every event; reconnect with backoff 1 s doubling to
 * 15 s, re-fetching /api/status on every (re)open. onConn(state) gets "live" | "connecting" | "offline".
 */
function followStatus(onStatus, onConn) {
  let delay = 1000;
  let es = null;
  let timer = null;
  const fetchStatus = () =>
    fetch("/api/status", { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null))
      .then((st) => st && onStatus(st))
      .catch(() => {});
  const open = () => {
    timer = null;
    onConn("connecting");
    es = new EventSource("/api/events");
    es.onopen = () => {
      delay = 1000;
      onConn("live");
    };
    es.onmessage = (ev) => {
      let st;
      try {
        st = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      onStatus(st);
    };
    es.onerror = () => {
      es.close();
      es = null;
      onConn("offline");
      if (timer === null) {
        timer = setTimeout(() => {
          open();
          fetchStatus();
        }, delay);
        delay = Math.min(delay * 2, 15000);
      }
    };
  };
  fetchStatus();
  open();
  window.addEventListener("pagehide", () => es && es.close());
}

function showConn(el, state) {
  el.className = "pill " + (state === "live" ? "ok" : state === "connecting" ? "warn" : "bad");
  el.textContent = state === "live" ? "live" : state === "connecting" ? "connecting…" : "reconnecting…";
  el.title = state === "live" ? "Receiving live updates from /api/events" : "Live updates interrupted; retrying";
}
