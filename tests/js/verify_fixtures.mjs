#!/usr/bin/env node
// Runs the JavaScript verifier (api/web/verify.js) on every fixture bundle and
// receipt and compares with the fixtures' expected.json files.
// Prints one line per file; with --json, one JSON object per line instead.
// Exits 1 on any disagreement.
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { webcrypto } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { verifyBundle, verifyEach, verifyReceipt, webCryptoBackend } from "../../api/web/verify.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const fx = join(root, "fixtures");
const asJson = process.argv.includes("--json");
const crypto = webCryptoBackend(webcrypto.subtle);
const vkey = readFileSync(join(fx, "log.vkey"), "utf8").trim();

let bad = 0;

// The explorer's entry-by-entry verifier must tell the same story as verifyBundle: all
// verified where the bundle verifies; where it fails, the same check, at the same entry
// (or, for the document, key or checkpoint, before any entry).
async function eachAgrees(input, key, options) {
  const whole = await verifyBundle(input, key, options);
  const each = await verifyEach(input, key, options);
  if (whole.ok) return each.ok ? whole : { ok: false, check: "verifyEach", detail: JSON.stringify(each.entries.find((e) => !e.ok) ?? each) };
  if (each.entries.length === 0) return each.check === whole.check ? whole : { ...whole, check: `verifyEach said ${each.check}` };
  const first = each.entries.find((e) => !e.ok);
  if (!first) {
    // only the consistency part of a bundle (§9.1 step 5) is not checked entry by entry
    return whole.entry === null && whole.check === "proof" ? whole : { ...whole, check: "verifyEach passed" };
  }
  return first.check === whole.check && first.index === whole.entry ? whole : { ...whole, check: `verifyEach said ${first.check} at ${first.index}` };
}
async function runDir(sub, verify) {
  const dir = join(fx, sub);
  if (!existsSync(dir)) return;
  const expPath = join(dir, "expected.json");
  const expected = existsSync(expPath) ? JSON.parse(readFileSync(expPath, "utf8")) : {};
  const files = readdirSync(dir).filter((f) => f.endsWith(".json") && f !== "expected.json").sort();
  for (const f of files) {
    const res = await verify(readFileSync(join(dir, f)), vkey, { crypto });
    let want;
    if (f.startsWith("valid-")) want = { ok: true, check: null };
    else if (f in expected) want = { ok: false, check: expected[f].check };
    else want = { ok: false, check: null }; // invalid without an expectation: must fail
    const got = { ok: res.ok, check: res.ok ? null : res.check };
    const agree = got.ok === want.ok && (want.check === null || got.check === want.check);
    if (!agree) bad++;
    if (asJson) {
      console.log(JSON.stringify({ file: `${sub}/${f}`, agree, ok: res.ok, check: got.check, want: want.check, detail: res.detail ?? null, entry: res.entry ?? null }));
    } else {
      const what = res.ok ? "ok" : `${res.check} (entry ${res.entry}): ${res.detail}`;
      console.log(`${agree ? "agree" : "DISAGREE"}  ${sub}/${f}: ${what}${agree ? "" : `; expected ${want.ok ? "ok" : want.check}`}`);
    }
  }
  for (const f of Object.keys(expected)) {
    if (!files.includes(f)) {
      bad++;
      console.log(asJson ? JSON.stringify({ file: `${sub}/${f}`, agree: false, missing: true }) : `DISAGREE  ${sub}/${f}: listed in expected.json but missing`);
    }
  }
}
await runDir("bundles", verifyBundle);
await runDir("bundles", eachAgrees);
await runDir("receipts", verifyReceipt);
if (!asJson) console.log(bad ? `${bad} disagreement(s)` : "all fixtures agree");
process.exit(bad ? 1 : 0);
