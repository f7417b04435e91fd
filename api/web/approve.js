// Step-up (docs/CONSENT.md §7): the person approves or refuses one exact call, signed here
// by the principal's key this browser made at enrolment and can never export. Before
// signing, this page checks that the approval names the SHA-256 of the very invocation
// and context it shows, and signs the bytes it built itself.
"use strict";
// Uses $, b64u, post, say and keys from common.js, loaded first.

const CONTEXT = "lineage.approval.v1\u0000";


async function hex(text) {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

// RFC 8785 for the approval's flat object (strings and integers): sorted keys.
function canonical(obj) {
  const keys = Object.keys(obj).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + JSON.stringify(obj[k])).join(",") + "}";
}

async function start() {
  const call = $("call").dataset;
  const mine = (await keys()).filter((k) => k.principal === call.principal);
  if (!mine.length) {
    $("signer").textContent = `This browser holds no key of ${call.principal}: only ` +
      `${call.principal} can answer, from a browser they enrolled.`;
    return;
  }
  const chosen = mine[mine.length - 1]; // the most recent enrolment
  const invocation = await hex(call.invocation);
  const context = await hex(call.context);
  $("signer").textContent = `You will sign as ${call.principal} with this browser's key ` +
    `${chosen.kid}.`;

  async function answer(decision) {
    $("approve").disabled = true;
    $("refuse").disabled = true;
    try {
      const prepared = await post(`/approve/${call.call}/prepare`,
        { csrf: call.csrf, kid: chosen.kid, decision });
      const a = prepared.approval;
      if (a.invocation !== invocation || a.context !== context || a.decision !== decision) {
        throw new Error("the service asked to sign something other than this call");
      }
      const bytes = new TextEncoder().encode(CONTEXT + canonical(a));
      const sig = await crypto.subtle.sign({ name: "Ed25519" }, chosen.pair.privateKey, bytes);
      const signed = { ...a, sigs: [{ kid: chosen.kid, sig: b64u(sig) }] };
      const done = await post(`/approve/${call.call}/answer`, { csrf: call.csrf, approval: signed });
      say(done.status === "approved"
        ? "Approved. The agent may now make this one call."
        : "Refused. The call will not be made.");
    } catch (e) {
      say(`Not answered: ${e.message}`, true);
    }
  }
  $("approve").addEventListener("click", () => answer("approve"), { once: true });
  $("refuse").addEventListener("click", () => answer("refuse"), { once: true });
  $("approve").disabled = false;
  $("refuse").disabled = false;
}

document.addEventListener("DOMContentLoaded", start);
