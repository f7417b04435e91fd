// Shared by the enrolment, consent and approval pages (docs/CONSENT.md): encodings, posting JSON to
// this service, and the keyring this browser keeps in IndexedDB.
"use strict";

const $ = (id) => document.getElementById(id);

function b64u(buffer) {
  let s = "";
  for (const b of new Uint8Array(buffer)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function unb64u(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(answer.error_description || answer.detail || `HTTP ${r.status}`);
  return answer;
}

// IndexedDB "lineage", store "keys" (key path "kid"): {kid, principal, public_key, pair}.
function keyring() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("lineage", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("keys", { keyPath: "kid" });
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

// Every key this browser holds: [{kid, principal, public_key, pair}], oldest first.
async function keys() {
  const db = await keyring();
  return new Promise((resolve, reject) => {
    const all = db.transaction("keys").objectStore("keys").getAll();
    all.onsuccess = () => resolve(all.result);
    all.onerror = () => reject(all.error);
  });
}
