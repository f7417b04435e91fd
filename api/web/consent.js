// Consent (docs/CONSENT.md §5): the grant is signed here, by the principal's key that
// this browser made at enrolment and can never export. The service prepares the exact
// bytes (the entry's signing context and canonical body); this page signs them.
"use strict";
// Uses $, b64u, unb64u, say, post and keys from common.js, loaded first.

async function start() {
  const request = $("request").dataset.request;
  const csrf = $("request").dataset.csrf;
  $("deny").addEventListener("click", async () => {
    $("deny").disabled = true;
    $("approve").disabled = true;
    try {
      const answer = await post("/oauth/authorize/deny", { request, csrf });
      location.assign(answer.redirect);
    } catch (e) {
      say(`Could not answer: ${e.message}`, true);
    }
  }, { once: true });
  const mine = await keys();
  if (!mine.length) {
    $("signer").textContent = "This browser holds no principal's key: enrol it first " +
      "(ask your operator for an invitation).";
    return;
  }
  const chosen = mine[mine.length - 1]; // the most recent enrolment
  let prepared;
  try {
    prepared = await post("/oauth/authorize/prepare", { request, csrf, kid: chosen.kid });
  } catch (e) {
    $("signer").textContent = `This browser's key cannot sign this: ${e.message}`;
    return;
  }
  $("signer").textContent = `You will sign as ${prepared.principal} with this browser's key ` +
    `${chosen.kid}.`;
  $("approve").disabled = false;
  $("approve").addEventListener("click", async () => {
    $("approve").disabled = true;
    $("deny").disabled = true;
    try {
      const sig = await crypto.subtle.sign(
        { name: "Ed25519" }, chosen.pair.privateKey, unb64u(prepared.signing_input));
      const answer = await post("/oauth/authorize/approve",
        { request, csrf, kid: chosen.kid, sig: b64u(sig) });
      if (answer.refused) say(`The ledger refused the grant: ${answer.refused}`, true);
      location.assign(answer.redirect);
    } catch (e) {
      say(`Not approved: ${e.message}`, true);
    }
  }, { once: true });
}

document.addEventListener("DOMContentLoaded", start);
