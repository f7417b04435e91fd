// Enrolment (docs/CONSENT.md): this browser makes a non-extractable Ed25519 key with
// WebCrypto, proves it holds it, and keeps it in IndexedDB. Only the public half is sent.
"use strict";
// Uses $, b64u, unb64u, say, post and keyring from common.js, loaded first.

const INVITE = /(?:^#|&)invite=(inv_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{43})(?:&|$)/;

async function keep(record) {
  const db = await keyring();
  await new Promise((resolve, reject) => {
    const tx = db.transaction("keys", "readwrite");
    tx.objectStore("keys").put(record);
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
  });
}

async function enrol(invite) {
  $("go").disabled = true;
  say("Making your key…");
  try {
    // extractable: false. The private key can sign here; it can never be exported.
    const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    const publicKey = b64u(await crypto.subtle.exportKey("raw", pair.publicKey));
    const message = new TextEncoder().encode(`lineage-enrol-v1\n${invite}\n${publicKey}`);
    const proof = b64u(await crypto.subtle.sign({ name: "Ed25519" }, pair.privateKey, message));
    const done = await post("/v1/enroll", { invite, public_key: publicKey, proof });
    await keep({ kid: done.kid, principal: done.principal, public_key: publicKey, pair,
                 enrolled: Date.now() });
    say(`Enrolled. This browser now signs for ${done.principal} with key ${done.kid}; ` +
        `the binding is entry ${done.index} of the log.`);
    $("done").hidden = false;
    $("done").dataset.kid = done.kid;
    $("done").textContent = done.kid;
  } catch (e) {
    say(`Not enrolled: ${e.message}`, true);
  }
}

async function start() {
  const m = INVITE.exec(location.hash);
  if (!m) return say("This address holds no invitation: ask your operator for a new link.", true);
  const invite = m[1];
  history.replaceState(null, "", location.pathname); // the secret leaves the address bar
  try {
    const info = await post("/v1/enroll/preview", { invite });
    $("who").textContent = info.principal;
    $("roles").textContent = info.roles.length ? info.roles.join(", ") : "none";
    $("go").disabled = false;
    $("go").addEventListener("click", () => enrol(invite), { once: true });
    say(`The invitation is good until ${new Date(info.expires * 1000).toLocaleString()}.`);
  } catch (e) {
    say(`This invitation cannot be used: ${e.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", start);
