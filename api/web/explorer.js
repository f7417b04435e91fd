// The explorer (docs/EXPLORER.md): search the log, draw a credential's lineage, and verify
// what the server sent with the second verifier (verify.js) before marking anything verified.
// Everything is built with textContent: nothing from the log is ever parsed as HTML.
import { checkConsistency, openCheckpointNote, verifyEach, jcs, leafHash, rootFromInclusion, b64Decode, webCryptoBackend } from "/static/verify.js";

const $ = (id) => document.getElementById(id);
const TOKEN = "lineage.explorer.token"; // sessionStorage: this tab only
const PRINCIPAL = "lineage.explorer.principal"; // sessionStorage: the kid of this browser's key in use
const PIN = "lineage.explorer.pinned-key"; // localStorage: the key the auditor was given
const SEEN_KEY = "lineage.explorer.seen-key"; // localStorage: the key first fetched (trust on first use)
const REMEMBERED = "lineage.explorer.checkpoint"; // localStorage: the largest checkpoint verified here
const cx = webCryptoBackend(crypto.subtle);

let shown = []; // the search rows on screen, as /v1/entries sent them
let nextCursor = null;
let lastQuery = null;
let bundle = null; // the lineage on screen
let bundleResults = null;
let bundleText = ""; // the bundle exactly as served: what the download holds

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k === "title" || k === "role" || k === "type") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

const iso = (t) => (Number.isFinite(t) ? new Date(t * 1000).toISOString().replace(".000Z", "Z") : "");
const short = (s, n = 12) => (typeof s === "string" && s.length > n ? s.slice(0, n) + "…" : String(s ?? ""));
const now = () => Math.floor(Date.now() / 1000);

// A principal reads as itself with the key this browser made at enrolment (common.js keys()):
// a DPoP proof (RFC 9449) per request, its handle the principal's name (docs/API.md).
async function principalHeaders(path, nonce) {
  const k = (await keys()).find((x) => x.kid === sessionStorage.getItem(PRINCIPAL));
  if (!k) throw new Error("this browser no longer holds the key you signed in with");
  const enc = new TextEncoder();
  const part = (o) => b64u(enc.encode(JSON.stringify(o)));
  const url = new URL(path, location.href);
  const claims = {
    jti: b64u(crypto.getRandomValues(new Uint8Array(16))),
    htm: "GET",
    htu: url.origin + url.pathname,
    iat: now(),
    ath: b64u(await crypto.subtle.digest("SHA-256", enc.encode(k.principal))),
  };
  if (nonce) claims.nonce = nonce;
  const header = { typ: "dpop+jwt", alg: "EdDSA", jwk: { kty: "OKP", crv: "Ed25519", x: k.public_key } };
  const input = `${part(header)}.${part(claims)}`;
  const sig = await crypto.subtle.sign({ name: "Ed25519" }, k.pair.privateKey, enc.encode(input));
  return { Authorization: `DPoP ${k.principal}`, DPoP: `${input}.${b64u(sig)}` };
}

async function api(path, raw = false) {
  let headers = {};
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  else if (sessionStorage.getItem(PRINCIPAL)) headers = await principalHeaders(path);
  let r = await fetch(path, { headers, credentials: "omit", cache: "no-store" });
  if (r.status === 401 && headers.DPoP && r.headers.get("DPoP-Nonce")) {
    headers = await principalHeaders(path, r.headers.get("DPoP-Nonce")); // RFC 9449 §8
    r = await fetch(path, { headers, credentials: "omit", cache: "no-store" });
  }
  if (!r.ok) {
    const answer = await r.json().catch(() => ({}));
    const why = answer.detail || answer.error_description || `HTTP ${r.status}`;
    throw new Error(r.status === 401 ? `Sign in with a reader token first (${why}).` : why);
  }
  return !raw && (r.headers.get("content-type") || "").includes("json") ? r.json() : r.text();
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ------------------------------------------------------------------ the log's key and checkpoints

async function logKey() {
  const pinned = localStorage.getItem(PIN);
  const served = (await api("/v1/log/key")).trim();
  if (pinned) {
    $("vkey").textContent = pinned;
    $("vkey-source").textContent = pinned === served ? "(pinned; the service serves the same)" : "(pinned; the service serves ANOTHER key)";
    $("vkey-source").className = pinned === served ? "hint" : "error";
    return pinned;
  }
  const seen = localStorage.getItem(SEEN_KEY);
  if (seen && seen !== served) {
    $("vkey").textContent = seen;
    $("vkey-source").textContent = "(the service now serves another key than the one first seen here: pin the right one)";
    $("vkey-source").className = "error";
    return seen; // keep checking against the first key: a new one must be pinned by hand
  }
  if (!seen) localStorage.setItem(SEEN_KEY, served);
  $("vkey").textContent = served;
  $("vkey-source").textContent = "(fetched from this service and remembered; pin the key you were given to be sure)";
  $("vkey-source").className = "hint";
  return served;
}

function showRemembered() {
  const note = localStorage.getItem(REMEMBERED);
  const first = note ? note.split("\n").slice(0, 2) : null;
  $("remembered").textContent = first ? `tree size ${first[1]} of ${first[0]}` : "none";
}

// Prove that `newer` (a checkpoint just verified) extends `older`; remember the larger one.
async function consistent(older, newer, vkey) {
  const a = await openCheckpointNote(older, vkey, { crypto: cx });
  const b = await openCheckpointNote(newer, vkey, { crypto: cx });
  if (!a.ok) return { ok: false, check: a.check, detail: `the earlier checkpoint: ${a.detail}` };
  if (!b.ok) return { ok: false, check: b.check, detail: b.detail };
  if (a.size > b.size)
    // A log smaller than one seen before is rolled back, or a stale view hiding what was
    // appended since: never an extension, whatever proves it a prefix.
    return { ok: false, check: "proof", detail: `the log shown has ${b.size} entries, fewer than the ${a.size} of the checkpoint seen before: rolled back, or hiding what came after` };
  let proof = [];
  if (a.size > 0 && a.size < b.size) proof = (await api(`/v1/log/proof/consistency?first=${a.size}&second=${b.size}`)).consistency;
  const r = await checkConsistency(older, newer, proof, vkey, { crypto: cx });
  if (r.ok) {
    localStorage.setItem(REMEMBERED, newer);
    showRemembered();
  }
  return r;
}

async function rememberFirst(note, vkey) {
  if (localStorage.getItem(REMEMBERED)) return consistent(localStorage.getItem(REMEMBERED), note, vkey);
  const opened = await openCheckpointNote(note, vkey, { crypto: cx });
  if (opened.ok) {
    localStorage.setItem(REMEMBERED, note);
    showRemembered();
  }
  return { ...opened, first: true };
}

// ------------------------------------------------------------------ what an entry says, in words

function credentialOf(entry, id) {
  if (entry.kind === "grant" || entry.kind === "delegation") return id;
  if (entry.kind === "access") return entry.invocation.credential;
  if (entry.kind === "revocation" && entry.target && entry.target.credential) return entry.target.credential;
  return null;
}

function describe(entry) {
  switch (entry.kind) {
    case "grant":
      return `${entry.principal} granted ${entry.agent || "an agent"} task ${entry.task.id}: ${scopeText(entry.scope)}`;
    case "delegation":
      return `delegated to ${entry.agent || "an agent"} (key ${short(entry.holder)}) task ${entry.task.id}: ${scopeText(entry.scope)}`;
    case "access": {
      const q = entry.invocation.request;
      return `${entry.decision}: ${q.action} ${q.resource} at ${q.location}${entry.reason ? ` (${entry.reason})` : ""}`;
    }
    case "result":
      return `result of access ${short(entry.access)}: upstream status ${entry.upstream_status ?? "none"}`;
    case "revocation":
      return entry.target.credential ? `revoked credential ${short(entry.target.credential)}` : `revoked every credential of key ${short(entry.target.holder)}`;
    case "key":
      return `${entry.op} key ${short(entry.key)}${entry.principal ? ` for ${entry.principal}` : ""}${entry.roles ? ` (${entry.roles.join(", ")})` : ""}`;
    case "policy":
      return `policy version ${entry.version}`;
    case "genesis":
      return `genesis of ${entry.log}`;
    default:
      return entry.kind;
  }
}

function scopeText(scope) {
  return (scope || []).map((d) => `${(d.actions || []).join("/")} ${(d.resources || []).join(", ")}`).join("; ");
}

// ------------------------------------------------------------------ search

function query(form) {
  const q = new URLSearchParams();
  for (const name of ["principal", "holder", "task", "resource", "decision", "kind"]) {
    const v = form.elements[name].value.trim();
    if (v) q.set(name, v);
  }
  for (const name of ["since", "until"]) {
    const v = form.elements[name].value;
    if (v) q.set(name, String(Math.floor(Date.parse(v + "Z") / 1000)));
  }
  q.set("limit", "100");
  return q;
}

async function search(more) {
  if (!more) {
    shown = [];
    lastQuery = query($("search"));
    $("results").tBodies[0].replaceChildren();
  }
  const q = new URLSearchParams(lastQuery);
  if (more && nextCursor !== null) q.set("cursor", String(nextCursor));
  say("Searching…");
  const page = await api(`/v1/entries?${q}`);
  const enc = new TextEncoder();
  for (const row of page.entries) {
    // what the downloads and the inclusion check use: computed here, not the server's
    row.id = hexOf(await cx.sha256(enc.encode(jcs(row.entry))));
    row.leaf_hash = hexOf(await leafHash(cx, enc.encode(jcs({ entry: row.entry, time: row.time }))));
  }
  const first = shown.length;
  shown.push(...page.entries);
  nextCursor = page.next_cursor;
  page.entries.forEach((row, i) => $("results").tBodies[0].append(resultRow(row, first + i)));
  renderTimeline();
  $("results-bar").hidden = false;
  $("more").hidden = nextCursor === null;
  $("count").textContent = `${shown.length} entr${shown.length === 1 ? "y" : "ies"}${nextCursor === null ? "" : ", more to load"}`;
  say(shown.length ? "" : nextCursor === null ? "Nothing matches (or nothing you may read)." : "Nothing you may read yet: More goes on searching.");
  showView();
}

function resultRow(row, position) {
  const e = row.entry;
  const cred = credentialOf(e, row.id);
  const open = cred ? el("button", { type: "button", class: "link", text: "lineage", onclick: () => openLineage(cred).catch(failed) }) : "";
  return el(
    "tr",
    { "data-index": String(row.index), "data-kind": e.kind, "data-position": String(position) },
    el("td", { text: String(row.index) }),
    el("td", { text: iso(row.time) }),
    el("td", { text: e.kind }),
    el("td", { class: e.decision === "deny" ? "deny" : "", text: describe(e) }),
    el("td", { class: "proof", text: "not checked" }),
    el("td", {}, open),
  );
}

function renderTimeline() {
  const list = $("timeline");
  list.replaceChildren();
  let day = null;
  for (const row of [...shown].sort((a, b) => a.time - b.time || a.index - b.index)) {
    const d = iso(row.time).slice(0, 10);
    if (d !== day) {
      day = d;
      list.append(el("li", { class: "day", text: d }));
    }
    list.append(
      el("li", { class: `event ${row.entry.kind} ${row.entry.decision || ""}`, "data-index": String(row.index) },
        el("time", { text: iso(row.time).slice(11) }), " ",
        el("strong", { text: row.entry.kind }), " ", describe(row.entry)),
    );
  }
}

let view = "table";
function showView() {
  $("results").hidden = view !== "table" || shown.length === 0;
  $("timeline").hidden = view !== "timeline" || shown.length === 0;
  $("view-table").setAttribute("aria-pressed", String(view === "table"));
  $("view-timeline").setAttribute("aria-pressed", String(view === "timeline"));
}

// Each row on screen: is its leaf in the log the current checkpoint commits to?
async function checkInclusion() {
  const vkey = await logKey();
  const note = await api("/v1/log/checkpoint");
  const cp = await openCheckpointNote(note, vkey, { crypto: cx });
  if (!cp.ok) return say(`The checkpoint does not verify: ${cp.check}: ${cp.detail}`, true);
  const seen = await rememberFirst(note, vkey);
  if (!seen.ok) return say(`The log is not an extension of the checkpoint verified here before: ${seen.detail}`, true);
  const root = cp.root;
  let good = 0;
  for (const tr of $("results").tBodies[0].rows) {
    const row = shown[Number(tr.dataset.position)]; // by position: two rows may claim one index
    const cell = tr.querySelector(".proof");
    if (!row || row.index >= cp.size) {
      cell.textContent = "after the checkpoint";
      continue;
    }
    const p = await api(`/v1/log/proof/inclusion?index=${row.index}&tree_size=${cp.size}`);
    const path = p.audit_path.map((h) => b64Decode(h));
    const leaf = Uint8Array.from(row.leaf_hash.match(/../g), (h) => parseInt(h, 16)); // computed here
    const got = path.every(Boolean) ? await rootFromInclusion(cx, BigInt(row.index), BigInt(cp.size), leaf, path) : null;
    const ok = got && hexOf(got) === root;
    cell.textContent = ok ? `in checkpoint ${cp.size}` : "NOT in the log";
    cell.className = ok ? "proof ok" : "proof error";
    tr.dataset.verdict = ok ? "verified" : "failed";
    if (ok) good++;
  }
  say(`${good} of ${shown.length} entries proved included in the checkpoint of size ${cp.size}.`);
}

const hexOf = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

// ------------------------------------------------------------------ lineage

async function openLineage(credential) {
  say("Fetching the lineage and verifying it here…");
  const [vkey, text] = await Promise.all([logKey(), api(`/v1/credentials/${encodeURIComponent(credential)}/lineage`, true)]);
  const result = await verifyEach(text, vkey, { crypto: cx }); // the bytes as served
  let doc;
  try {
    doc = JSON.parse(text);
  } catch {
    doc = { entries: [] };
  }
  // A bundle refused as a whole (its form, its log key, its checkpoint) is not drawn at all;
  // otherwise result.entries[i] is the verdict on, and the id and leaf hash of, entries[i].
  if (!doc || !Array.isArray(doc.entries) || result.entries.length === 0) doc = { entries: [] };
  bundle = doc;
  bundleText = text;

  bundleResults = result;
  $("lineage").hidden = false;
  $("lineage-h").textContent = `Lineage of ${short(credential, 16)}`;
  $("lineage").dataset.credential = credential;
  const verdict = $("verdict");
  if (result.entries.length === 0) {
    verdict.textContent = `Nothing verified: ${result.check}: ${result.detail}`;
    verdict.className = "error";
    verdict.dataset.verdict = "failed";
  } else {
    const bad = result.entries.filter((e) => !e.ok).length;
    verdict.textContent = bad
      ? `${bad} of ${result.entries.length} entries FAILED verification against checkpoint ${result.size}.`
      : `All ${result.entries.length} entries verified against checkpoint ${result.size} (root ${result.root.slice(0, 16)}…).`;
    verdict.className = bad ? "error" : "ok";
    verdict.dataset.verdict = bad ? "failed" : "verified";
    const c = await rememberFirst(doc.checkpoint, vkey);
    $("consistency").textContent = c.ok
      ? c.first
        ? "First checkpoint verified in this browser: it is remembered, and later ones must extend it."
        : `The log extends the checkpoint verified here before (consistency proof from ${c.from} to ${c.to}).`
      : `This log does NOT extend the checkpoint verified here before: ${c.detail}`;
    $("consistency").className = c.ok ? "hint" : "error";
  }
  drawTree(doc, result);
  listEntries(doc, result);
  say("");
  $("lineage").scrollIntoView({ block: "start" });
}

// The verdict on the bundle's entry at `position`: by position, never by index, since a
// lying bundle may list a forged entry under a genuine one's index.
function verdictOf(result, position) {
  return result.entries[position] || { ok: false, check: result.check || "format", detail: result.detail || "not verified" };
}

function badge(v) {
  return el(
    "span",
    { class: v.ok ? "badge ok" : "badge error", "data-verdict": v.ok ? "verified" : "failed", "data-check": v.ok ? null : v.check },
    v.ok ? "verified" : `failed: ${v.check}: ${v.detail}`,
  );
}

function listEntries(doc, result) {
  const body = $("bundle-entries").tBodies[0];
  body.replaceChildren();
  for (const [position, it] of doc.entries.entries()) {
    const v = verdictOf(result, position);
    body.append(
      el("tr", { "data-entry-index": String(it.index), "data-kind": it.leaf.entry.kind },
        el("td", { text: String(it.index) }),
        el("td", { text: iso(it.leaf.time) }),
        el("td", { text: it.leaf.entry.kind }),
        el("td", { text: describe(it.leaf.entry) }),
        el("td", {}, badge(v))),
    );
  }
}

// The tree: the human at the root, each credential under the one it was delegated from,
// its accesses (and their results) under it.
function drawTree(doc, result) {
  const byId = new Map();
  const leafOf = new Map(); // id -> {index, leaf, position}; the first of an id listed twice
  // ids as the verifier computed them from each entry listed, not as the server named them
  doc.entries.forEach((it, position) => {
    const { id } = result.entries[position];
    if (!leafOf.has(id)) leafOf.set(id, { ...it, position });
  });
  const creds = [], accesses = [], results = [], revocations = [];
  for (const [id, it] of leafOf) {
    const e = it.leaf.entry;
    if (e.kind === "grant" || e.kind === "delegation") creds.push({ id, it, e, children: [], accesses: [] });
    else if (e.kind === "access") accesses.push({ id, it, e, results: [] });
    else if (e.kind === "result") results.push({ id, it, e });
    else if (e.kind === "revocation") revocations.push(e);
  }
  for (const c of creds) byId.set(c.id, c);
  const roots = new Map(); // principal -> credentials
  for (const c of creds) {
    const parent = c.e.parent && byId.get(c.e.parent);
    if (parent) {
      c.parent = parent;
      parent.children.push(c);
    } else {
      const who = c.e.principal || "(a chain whose start you may not read)";
      if (!roots.has(who)) roots.set(who, []);
      roots.get(who).push(c);
    }
  }
  const accessById = new Map(accesses.map((a) => [a.id, a]));
  for (const r of results) if (accessById.has(r.e.access)) accessById.get(r.e.access).results.push(r);
  for (const a of accesses) {
    const c = byId.get(a.e.invocation.credential);
    if (c) c.accesses.push(a);
  }
  const chainOf = (c) => {
    const out = [];
    for (let x = c; x; x = x.parent) out.unshift(x);
    return out;
  };
  const revoked = (c) =>
    chainOf(c).some((x) => revocations.some((r) => r.target.credential === x.id || r.target.holder === x.e.holder));
  const uses = (c) => accesses.filter((a) => a.e.decision === "allow" && chainOf(byId.get(a.e.invocation.credential) || {}).includes(c)).length;
  const status = (c) => {
    if (revoked(c)) return "revoked";
    if (chainOf(c).some((x) => x.e.expires_at <= now())) return "expired";
    if (chainOf(c).some((x) => "max_uses" in x.e && uses(x) >= x.e.max_uses)) return "exhausted";
    return "active";
  };

  const tree = $("tree");
  tree.replaceChildren();
  for (const [who, list] of roots) {
    const ul = el("ul");
    for (const c of list) ul.append(node(c));
    tree.append(el("div", { class: "human" }, el("span", { class: "principal", text: who }), el("span", { class: "hint", text: " principal: the person who granted" }), ul));
  }

  function node(c) {
    const v = verdictOf(result, c.it.position);
    const st = status(c);
    const li = el("li", { class: `cred ${st}`, "data-credential": c.id, "data-entry-index": String(c.it.index), "data-status": st });
    const head = el("div", { class: "card" + (v.ok ? "" : " failed") },
      el("div", { class: "title" },
        el("strong", { text: c.e.agent || "agent" }), " ",
        el("span", { class: "hint", text: `${c.e.kind} #${c.it.index} · key ${short(c.e.holder)}` }), " ",
        el("span", { class: `status ${st}`, text: st }), " ",
        badge(v)),
      field("task", c.e.task.id, c.parent && c.parent.e.task.id !== c.e.task.id),
      scopeView(c.e.scope, c.parent ? c.parent.e.scope : null),
      field("expires", iso(c.e.expires_at), c.parent && c.e.expires_at < c.parent.e.expires_at),
      field("uses", "max_uses" in c.e ? `${uses(c)} of ${c.e.max_uses}` : `${uses(c)} (no limit)`, c.parent && "max_uses" in c.e && c.e.max_uses !== c.parent.e.max_uses),
      field("may delegate", "max_depth" in c.e ? `${c.e.max_depth} more level(s)` : "any depth", c.parent && c.e.max_depth !== c.parent.e.max_depth),
    );
    li.append(head);
    const below = el("ul");
    for (const a of c.accesses) below.append(accessNode(a));
    for (const child of c.children) below.append(node(child));
    if (below.childNodes.length) li.append(below);
    return li;
  }

  function accessNode(a) {
    const v = verdictOf(result, a.it.position);
    const q = a.e.invocation.request;
    const li = el("li", { class: `access ${a.e.decision}`, "data-entry-index": String(a.it.index), "data-decision": a.e.decision },
      el("div", { class: "card" + (v.ok ? "" : " failed") },
        el("strong", { class: a.e.decision, text: a.e.decision }), " ",
        `${q.action} ${q.resource}`, " ",
        el("span", { class: "hint", text: `#${a.it.index} · ${iso(a.it.leaf.time)}` }), " ",
        badge(v),
        a.e.reason ? el("div", { class: "reason", text: `reason: ${a.e.reason}` }) : null,
        ...a.results.map((r) => el("div", { class: "hint", "data-entry-index": String(r.it.index) }, `result #${r.it.index}: upstream status ${r.e.upstream_status ?? "none"} `, badge(verdictOf(result, r.it.position))))),
    );
    return li;
  }
}

function field(name, value, narrowed) {
  return el("div", { class: narrowed ? "field narrowed" : "field", title: narrowed ? "narrowed at this step" : null }, el("span", { class: "name", text: `${name}: ` }), String(value));
}

// The scope, each item marked where it differs from the parent's (what narrowed here).
function scopeView(scope, parentScope) {
  const box = el("div", { class: "scope" });
  for (const d of scope || []) {
    const p = parentScope ? parentScope.find((x) => x.type === d.type) : null;
    const line = el("div", {}, el("span", { class: "name", text: `${d.type}: ` }));
    for (const key of ["actions", "resources", "locations"]) {
      const items = d[key] || [];
      const theirs = p ? p[key] || [] : null;
      line.append(el("span", { class: "name", text: ` ${key} ` }));
      items.forEach((x, i) => {
        line.append(el("span", { class: theirs && !theirs.includes(x) ? "item narrowed" : "item", title: theirs && !theirs.includes(x) ? "narrowed from the parent's" : null, text: x }));
        if (i < items.length - 1) line.append(", ");
      });
      if (theirs) {
        const dropped = theirs.filter((x) => !items.includes(x) && !items.some((y) => y.startsWith(String(x).replace(/\*$/, ""))));
        for (const x of dropped) line.append(" ", el("span", { class: "item dropped", title: "the parent's, dropped here", text: x }));
      }
    }
    const cons = d.constraints || {};
    const theirCons = p ? p.constraints || {} : null;
    for (const [k, c] of Object.entries(cons)) {
      const changed = theirCons && JSON.stringify(theirCons[k]) !== JSON.stringify(c);
      line.append(" ", el("span", { class: changed ? "item narrowed" : "item", title: changed ? "constraint added or tightened here" : null, text: `${k} ${JSON.stringify(c)}` }));
    }
    box.append(line);
  }
  return box;
}

// ------------------------------------------------------------------ downloads

const CSV_COLUMNS = ["index", "time", "kind", "id", "decision", "action", "resource", "reason", "verified"];
function csvOf(rows, verdicts) {
  // A cell a spreadsheet would read as a formula gets a leading ' (OWASP's advice: quotes
  // alone are stripped before the cell is evaluated); then the usual CSV quoting.
  const quote = (v) => {
    let s = v === undefined || v === null ? "" : String(v);
    if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  const lines = [CSV_COLUMNS.join(",")];
  for (const [position, r] of rows.entries()) {
    const e = r.entry;
    const q = e.kind === "access" ? e.invocation.request : {};
    const v = verdicts ? verdicts(position) : "";
    lines.push([r.index, iso(r.time), e.kind, r.id, e.decision, q.action, q.resource, e.reason, v].map(quote).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}
function jsonlOf(rows) {
  return rows.map((r) => JSON.stringify({ index: r.index, id: r.id, time: r.time, kind: r.entry.kind, leaf_hash: r.leaf_hash, entry: r.entry })).join("\n") + (rows.length ? "\n" : "");
}
function bundleRows() {
  const computed = bundleResults.entries; // by position; id and leaf hash computed here
  return bundle.entries.map((it, i) => ({ index: it.index, id: computed[i].id, time: it.leaf.time, entry: it.leaf.entry, leaf_hash: computed[i].leafHash }));
}
function bundleVerdict(position) {
  const v = verdictOf(bundleResults, position);
  return v.ok ? "verified" : `failed: ${v.check}`;
}

// ------------------------------------------------------------------ wiring

function failed(err) {
  say(err && err.message ? err.message : String(err), true);
}

async function signedIn() {
  const token = sessionStorage.getItem(TOKEN);
  const kid = sessionStorage.getItem(PRINCIPAL);
  const mine = await keys().catch(() => []);
  const as = mine.find((k) => k.kid === kid);
  $("who").textContent = token
    ? "Signed in with a reader token (kept in this tab only)."
    : as
      ? `Signed in as ${as.principal}, with this browser's key: you see what you authorised.`
      : "Not signed in. The token stays in this tab (sessionStorage) and is sent only to this service, in an Authorization header.";
  $("signout").hidden = !(token || as);
  $("signin-form").hidden = !!(token || as);
  const choices = $("as-principal");
  choices.replaceChildren();
  if (!(token || as))
    for (const k of mine)
      choices.append(el("button", { type: "button", "data-kid": k.kid, text: `Sign in as ${k.principal} (this browser's key)`, onclick: () => signInAs(k) }));
  choices.hidden = choices.childNodes.length === 0;
}

function signInAs(k) {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.setItem(PRINCIPAL, k.kid);
  const field = $("search").elements.principal;
  field.value = k.principal;
  signedIn();
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN, $("token").value.trim());
  sessionStorage.removeItem(PRINCIPAL);
  $("token").value = "";
  signedIn();
});
$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(PRINCIPAL);
  signedIn();
});
$("pin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem(PIN, $("pin").value.trim());
  logKey().catch(failed);
});
$("unpin").addEventListener("click", () => {
  localStorage.removeItem(PIN);
  logKey().catch(failed);
});
$("older-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const vkey = await logKey();
    const current = await api("/v1/log/checkpoint");
    const r = await consistent($("older").value.trim() + "\n", current, vkey);
    $("older-result").textContent = r.ok
      ? `Proved: the log of size ${r.to} extends the checkpoint of size ${r.from}.`
      : `NOT proved: ${r.check}: ${r.detail}`;
    $("older-result").className = r.ok ? "ok" : "error";
    $("older-result").dataset.verdict = r.ok ? "verified" : "failed";
  } catch (err) {
    failed(err);
  }
});
$("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  search(false).catch(failed);
});
$("more").addEventListener("click", () => search(true).catch(failed));
$("view-table").addEventListener("click", () => ((view = "table"), showView()));
$("view-timeline").addEventListener("click", () => ((view = "timeline"), showView()));
$("check-inclusion").addEventListener("click", () => checkInclusion().catch(failed));
$("dl-csv").addEventListener("click", () => download("lineage-search.csv", "text/csv", csvOf(shown)));
$("dl-jsonl").addEventListener("click", () => download("lineage-search.jsonl", "application/jsonl", jsonlOf(shown)));
$("dl-bundle").addEventListener("click", () => download(`lineage-${$("lineage").dataset.credential}.json`, "application/json", bundleText));
$("dl-lineage-csv").addEventListener("click", () => download("lineage.csv", "text/csv", csvOf(bundleRows(), bundleVerdict)));
$("dl-lineage-jsonl").addEventListener("click", () => download("lineage.jsonl", "application/jsonl", jsonlOf(bundleRows())));

await signedIn();
showRemembered();
logKey().catch(failed);
const wanted = new URLSearchParams(location.search).get("credential");
if (wanted && /^[0-9a-f]{64}$/.test(wanted)) openLineage(wanted).catch(failed);
document.body.dataset.ready = "true";
