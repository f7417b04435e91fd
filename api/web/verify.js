// Lineage bundle and receipt verifier: an independent implementation, written
// from docs/FORMAT.md, docs/SCOPE.md, docs/LOG.md and docs/CHECKPOINT.md.
//
// ES module, no dependencies. Works in a browser (globalThis.crypto.subtle)
// and in Node 20 (globalThis.crypto, or pass options.crypto built with
// webCryptoBackend(require("node:crypto").webcrypto.subtle)).
//
//   const r = await verifyBundle(bundleText, logVkeyString, {since, mode});
//   r.ok ? r.size : (r.check, r.detail, r.entry)

// ---------------------------------------------------------------- errors

class VerifyError extends Error {
  constructor(check, detail, entry) {
    super(`${check}: ${detail}`);
    this.check = check;
    this.detail = detail;
    this.entry = entry;
  }
}
const fail = (check, detail, entry) => {
  throw new VerifyError(check, detail, entry);
};

// ---------------------------------------------------------------- crypto backend

export function webCryptoBackend(subtle) {
  const keyCache = new Map();
  return {
    async sha256(bytes) {
      return new Uint8Array(await subtle.digest("SHA-256", bytes));
    },
    async ed25519Verify(pub, sig, msg) {
      const k = b64uEncode(pub);
      let key = keyCache.get(k);
      if (!key) {
        key = await subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
        keyCache.set(k, key);
      }
      try {
        return await subtle.verify({ name: "Ed25519" }, key, sig, msg);
      } catch {
        return false;
      }
    },
  };
}

function defaultBackend() {
  const c = globalThis.crypto;
  if (!c || !c.subtle) throw new Error("no WebCrypto available: pass options.crypto");
  return webCryptoBackend(c.subtle);
}

// ---------------------------------------------------------------- bytes

const enc = new TextEncoder();
const utf8 = (s) => enc.encode(s);
const concat = (...parts) => {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const bytesEq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64U = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

function b64EncodeWith(bytes, alpha, pad) {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += alpha[n >> 18] + alpha[(n >> 12) & 63] + alpha[(n >> 6) & 63] + alpha[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += alpha[n >> 18] + alpha[(n >> 12) & 63] + (pad ? "==" : "");
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += alpha[n >> 18] + alpha[(n >> 12) & 63] + alpha[(n >> 6) & 63] + (pad ? "=" : "");
  }
  return out;
}
function b64DecodeWith(s, alpha, pad) {
  if (typeof s !== "string") return null;
  let body = s;
  if (pad) {
    if (s.length % 4 !== 0) return null;
    body = s.replace(/={1,2}$/, "");
  } else if (s.length % 4 === 1) return null;
  const vals = [];
  for (const ch of body) {
    const v = alpha.indexOf(ch);
    if (v < 0) return null;
    vals.push(v);
  }
  const out = [];
  for (let i = 0; i < vals.length; i += 4) {
    const chunk = vals.slice(i, i + 4);
    let n = 0;
    for (let j = 0; j < 4; j++) n = (n << 6) | (chunk[j] ?? 0);
    out.push((n >> 16) & 255);
    if (chunk.length > 2) out.push((n >> 8) & 255);
    if (chunk.length > 3) out.push(n & 255);
  }
  const bytes = new Uint8Array(out);
  // canonical: must re-encode to the same characters (§1)
  if (b64EncodeWith(bytes, alpha, pad) !== s) return null;
  return bytes;
}
export const b64uEncode = (b) => b64EncodeWith(b, B64U, false);
export const b64uDecode = (s) => b64DecodeWith(s, B64U, false);
export const b64Encode = (b) => b64EncodeWith(b, B64, true);
export const b64Decode = (s) => b64DecodeWith(s, B64, true);

// ---------------------------------------------------------------- Ed25519 strictness (BigInt)

const P = (1n << 255n) - 19n;
const L = (1n << 252n) + 27742317777372353535851937790883648493n;
const mod = (a) => {
  const r = a % P;
  return r < 0n ? r + P : r;
};
function powmod(b, e) {
  let r = 1n;
  b = mod(b);
  while (e > 0n) {
    if (e & 1n) r = (r * b) % P;
    b = (b * b) % P;
    e >>= 1n;
  }
  return r;
}
const inv = (a) => powmod(a, P - 2n);
const D = mod(-121665n * inv(121666n));
const SQRT_M1 = powmod(2n, (P - 1n) / 4n);

function decodePoint(bytes) {
  if (bytes.length !== 32) return null;
  let y = 0n;
  for (let i = 31; i >= 0; i--) y = (y << 8n) | BigInt(bytes[i]);
  const sign = y >> 255n;
  y &= (1n << 255n) - 1n;
  if (y >= P) return null; // non-canonical encoding
  const y2 = (y * y) % P;
  const x2 = mod((y2 - 1n) * inv(D * y2 + 1n));
  let x = powmod(x2, (P + 3n) / 8n);
  if (mod(x * x - x2) !== 0n) x = (x * SQRT_M1) % P;
  if (mod(x * x - x2) !== 0n) return null; // not on the curve
  if (x === 0n && sign === 1n) return null; // non-canonical
  if ((x & 1n) !== sign) x = P - x;
  return [x, y, 1n, (x * y) % P];
}
function padd(p, q) {
  const [X1, Y1, Z1, T1] = p;
  const [X2, Y2, Z2, T2] = q;
  const A = mod((Y1 - X1) * (Y2 - X2));
  const B = mod((Y1 + X1) * (Y2 + X2));
  const C = mod(2n * T1 * T2 * D);
  const DD = mod(2n * Z1 * Z2);
  const E = B - A, F = DD - C, G = DD + C, H = B + A;
  return [mod(E * F), mod(G * H), mod(F * G), mod(E * H)];
}
function pmul(p, n) {
  let r = [0n, 1n, 1n, 0n];
  let q = p;
  while (n > 0n) {
    if (n & 1n) r = padd(r, q);
    q = padd(q, q);
    n >>= 1n;
  }
  return r;
}
const isIdentity = (p) => mod(p[0]) === 0n && mod(p[1] - p[2]) === 0n;
const pointCache = new Map();
/** a canonical point of prime order (FORMAT.md §1, CHECKPOINT.md) */
export function isPrimeOrderPoint(bytes) {
  const k = hex(bytes);
  if (pointCache.has(k)) return pointCache.get(k);
  const p = decodePoint(bytes);
  const ok = !!p && !isIdentity(p) && isIdentity(pmul(p, L));
  pointCache.set(k, ok);
  return ok;
}
function isSmallOrder(bytes) {
  const p = decodePoint(bytes);
  if (!p) return false;
  return isIdentity(pmul(p, 8n));
}
function scalarBelowL(bytes) {
  let s = 0n;
  for (let i = 31; i >= 0; i--) s = (s << 8n) | BigInt(bytes[i]);
  return s < L;
}

async function edVerify(cx, pub, sig, msg) {
  if (!(sig instanceof Uint8Array) || sig.length !== 64) return false;
  if (pub.length !== 32 || !isPrimeOrderPoint(pub)) return false;
  if (!scalarBelowL(sig.subarray(32))) return false;
  if (isSmallOrder(sig.subarray(0, 32))) return false;
  return cx.ed25519Verify(pub, sig, msg);
}

// ---------------------------------------------------------------- canonical JSON (§2)

const MAX_SAFE = 2 ** 53 - 1;

/** Parse JSON text under FORMAT.md §2's subset. Objects have a null prototype. */
export function parseJson(text, maxDepth) {
  let i = 0;
  const n = text.length;
  const err = (m) => fail("format", `JSON: ${m} at offset ${i}`);
  const ws = () => {
    while (i < n) {
      const c = text[i];
      if (c === " " || c === "\t" || c === "\n" || c === "\r") i++;
      else break;
    }
  };
  const value = (depth) => {
    if (depth > maxDepth) err(`nesting deeper than ${maxDepth}`);
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj = Object.create(null);
      ws();
      if (text[i] === "}") {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') err("expected a key");
        const k = str();
        if (!/^[\x00-\x7f]*$/.test(k)) err("non-ASCII object key");
        if (Object.prototype.hasOwnProperty.call(obj, k)) err(`duplicate key ${JSON.stringify(k)}`);
        ws();
        if (text[i] !== ":") err("expected ':'");
        i++;
        obj[k] = value(depth + 1);
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return obj;
        }
        err("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const arr = [];
      ws();
      if (text[i] === "]") {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return arr;
        }
        err("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    if (c === "-" || (c >= "0" && c <= "9")) {
      const m = /^-?(0|[1-9][0-9]*)/.exec(text.slice(i, i + 400));
      if (!m) err("bad number");
      const after = text[i + m[0].length];
      if (after === "." || after === "e" || after === "E") err("fractions and exponents are not allowed");
      if (m[0] === "-0") err("-0 is not allowed");
      const v = Number(m[0]);
      if (!Number.isSafeInteger(v)) err("integer beyond ±(2^53 − 1)");
      i += m[0].length;
      return v;
    }
    for (const [lit, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return v;
      }
    }
    err("unexpected character");
  };
  const str = () => {
    i++;
    let out = "";
    for (;;) {
      if (i >= n) err("unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        break;
      }
      if (c < 0x20) err("raw control character in string");
      if (c === 0x5c) {
        const e = text[i + 1];
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
        if (e in simple) {
          out += simple[e];
          i += 2;
          continue;
        }
        if (e === "u") {
          const h = text.slice(i + 2, i + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(h)) err("bad \\u escape");
          out += String.fromCharCode(parseInt(h, 16));
          i += 6;
          continue;
        }
        err("bad escape");
      }
      out += text[i];
      i++;
    }
    // strings are valid Unicode: no lone surrogates
    for (let j = 0; j < out.length; j++) {
      const u = out.charCodeAt(j);
      if (u >= 0xd800 && u <= 0xdbff) {
        const v = out.charCodeAt(j + 1);
        if (!(v >= 0xdc00 && v <= 0xdfff)) err("lone surrogate");
        j++;
      } else if (u >= 0xdc00 && u <= 0xdfff) err("lone surrogate");
    }
    return out;
  };
  const v = value(0);
  ws();
  if (i !== n) err("trailing data");
  return v;
}

export function decodeUtf8(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return fail("format", "not UTF-8");
  }
}

const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isInt = (v) => typeof v === "number" && Number.isSafeInteger(v);
const isStr = (v) => typeof v === "string";

/** RFC 8785 on the §2 subset. Returns a JS string; utf8() it for bytes. */
export function jcs(v) {
  if (v === null) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || Object.is(v, -0)) fail("format", "not an integer");
    return String(v);
  }
  if (typeof v === "string") {
    let out = '"';
    for (const ch of v) {
      const c = ch.codePointAt(0);
      if (ch === '"') out += '\\"';
      else if (ch === "\\") out += "\\\\";
      else if (c === 8) out += "\\b";
      else if (c === 9) out += "\\t";
      else if (c === 10) out += "\\n";
      else if (c === 12) out += "\\f";
      else if (c === 13) out += "\\r";
      else if (c < 0x20) out += "\\u" + c.toString(16).padStart(4, "0");
      else out += ch;
    }
    return out + '"';
  }
  if (Array.isArray(v)) return "[" + v.map(jcs).join(",") + "]";
  const keys = Object.keys(v).sort();
  return "{" + keys.map((k) => jcs(k) + ":" + jcs(v[k])).join(",") + "}";
}
const jcsBytes = (v) => utf8(jcs(v));

/** Parse bytes of a signed structure: must already be canonical (§2). */
export function parseCanonical(bytes, maxDepth = 32) {
  const text = decodeUtf8(bytes);
  const v = parseJson(text, maxDepth);
  if (!bytesEq(jcsBytes(v), bytes)) fail("format", "not canonical JSON");
  return v;
}

function depthOf(v) {
  if (Array.isArray(v)) return 1 + Math.max(-1, ...v.map(depthOf));
  if (isObj(v)) return 1 + Math.max(-1, ...Object.values(v).map(depthOf));
  return 0;
}

// ---------------------------------------------------------------- schema helpers

function fields(obj, path, required, optional = []) {
  const where = path ? `${path}: ` : "";
  if (!isObj(obj)) fail("format", `${path || "value"}: not an object`);
  for (const k of Object.keys(obj)) {
    if (!required.includes(k) && !optional.includes(k)) fail("format", `${where}unknown field ${JSON.stringify(k)}`);
    if (obj[k] === null) fail("format", `${path ? path + "." : ""}${k}: null`);
  }
  for (const k of required) if (!(k in obj)) fail("format", `${where}missing field ${JSON.stringify(k)}`);
}
const fmt = (field, msg) => fail("format", `${field}: ${msg}`);
function needInt(v, field, lo, hi = MAX_SAFE) {
  if (!isInt(v)) fmt(field, "not an integer");
  if (v < lo || v > hi) fmt(field, `out of range ${lo}..${hi}`);
  return v;
}
function needStr(v, field, maxLen = Infinity, minLen = 0) {
  if (!isStr(v)) fmt(field, "not a string");
  const len = [...v].length;
  if (len > maxLen || len < minLen) fmt(field, `length must be ${minLen}..${maxLen}`);
  return v;
}
const cpLen = (s) => [...s].length;

/** FORMAT.md §1 "text for people" */
function badTextCodePoint(c) {
  return (
    c <= 0x1f ||
    (c >= 0x7f && c <= 0x9f) ||
    c === 0xad ||
    c === 0x61c ||
    c === 0x180e ||
    (c >= 0x200b && c <= 0x200f) ||
    (c >= 0x2028 && c <= 0x202e) ||
    (c >= 0x2060 && c <= 0x206f) ||
    c === 0xfeff ||
    (c >= 0xfff9 && c <= 0xfffb) ||
    c === 0xfffe ||
    c === 0xffff ||
    (c >= 0xe0000 && c <= 0xe007f)
  );
}
function needText(v, field, maxLen) {
  needStr(v, field, maxLen);
  for (const ch of v) if (badTextCodePoint(ch.codePointAt(0))) fmt(field, "holds a code point not allowed in text for people");
  return v;
}

const HEX64 = /^[0-9a-f]{64}$/;
const needId = (v, field) => {
  if (!isStr(v) || !HEX64.test(v)) fmt(field, "not an id (64 lower-case hex digits)");
  return v;
};
function needKey(v, field) {
  if (!isStr(v)) fmt(field, "not a key");
  const b = b64uDecode(v);
  if (!b || b.length !== 32) fmt(field, "not base64url of 32 bytes");
  if (!isPrimeOrderPoint(b)) fmt(field, "not a canonical Ed25519 point of prime order");
  return v;
}
const PRINCIPAL = /^[a-z0-9][a-z0-9._+-]{0,63}(@[a-z0-9][a-z0-9.-]{0,190})?$/;
const ROLE = /^[a-z0-9][a-z0-9._:-]{0,63}$/;
const TOKEN = /^[a-z0-9_.:-]+$/;
function needPrincipal(v, field) {
  if (!isStr(v) || !PRINCIPAL.test(v)) fmt(field, "not a principal");
  return v;
}
function needRoles(v, field, allowed) {
  if (!Array.isArray(v) || v.length < 1 || v.length > 16) fmt(field, "must be a list of 1..16 roles");
  v.forEach((r, i) => {
    if (!isStr(r) || !ROLE.test(r)) fmt(`${field}[${i}]`, "not a role");
    if (allowed && !allowed.includes(r)) fmt(`${field}[${i}]`, `must be one of ${allowed.join(", ")}`);
    if (i > 0 && !(v[i - 1] < r)) fmt(field, "not sorted without duplicates");
  });
  return v;
}
function needLog(v, field = "log") {
  if (!isStr(v) || !/^[\x21-\x2a\x2c-\x7e]{1,255}$/.test(v)) fmt(field, "not a log origin");
  return v;
}
function needSigs(v, field = "sigs") {
  if (!Array.isArray(v) || v.length !== 1) fmt(field, "must be a list of exactly one signature");
  fields(v[0], `${field}[0]`, ["kid", "sig"]);
  // A kid is compared, never decoded (FORMAT.md §3): 43 base64url characters; one that is
  // not canonical names no key, and fails as "signature" when it is looked up.
  if (!isStr(v[0].kid) || !/^[A-Za-z0-9_-]{43}$/.test(v[0].kid)) fmt(`${field}[0].kid`, "not a key id");
  const sig = isStr(v[0].sig) ? b64uDecode(v[0].sig) : null;
  if (!sig || sig.length !== 64) fmt(`${field}[0].sig`, "not canonical base64url of 64 bytes");
}
const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
function needCanonicalList(v, field, min, max, each, compare = cmp) {
  if (!Array.isArray(v)) fmt(field, "not a list");
  if (v.length < min || v.length > max) fmt(field, `must hold ${min}..${max} items`);
  v.forEach((x, i) => {
    each(x, `${field}[${i}]`);
    if (i > 0 && compare(v[i - 1], x) >= 0) fmt(field, "not sorted strictly ascending");
  });
}
// strings compared by Unicode code point
const cpCmp = (a, b) => {
  const A = [...a].map((c) => c.codePointAt(0));
  const B = [...b].map((c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(A.length, B.length); i++) if (A[i] !== B[i]) return A[i] - B[i];
  return A.length - B.length;
};

// ---------------------------------------------------------------- resources (SCOPE.md §2)

const RESERVED_NS = new Set(["about", "blob", "data", "file", "filesystem", "ftp", "http", "https", "javascript", "vbscript", "ws", "wss"]);
const BROWSER_SCHEMES = new Set(["about", "blob", "data", "file", "filesystem", "javascript", "vbscript"]);
const SCHEME = /^[a-z][a-z0-9+.-]*$/;
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const DEC_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])";
const IPV4 = new RegExp(`^${DEC_OCTET}(\\.${DEC_OCTET}){3}$`);
const SEG_CHAR = /^[A-Za-z0-9\-._~!$&'()+,;=:@]$/;

function checkSegment(seg) {
  if (seg === "" ) return "empty segment";
  if (seg === "." || seg === "..") return "dot-segment";
  const bytes = [];
  for (let i = 0; i < seg.length; i++) {
    const c = seg[i];
    if (c === "%") {
      const h = seg.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(h)) return "bad percent-escape (upper-case hex required)";
      const b = parseInt(h, 16);
      if (/[A-Za-z0-9\-._~]/.test(String.fromCharCode(b)) && b < 0x80) return "escaped unreserved character";
      if (b === 0x2f) return "escaped '/'";
      if (b === 0x25 && /^[0-9A-Fa-f]{2}$/.test(seg.slice(i + 3, i + 5))) return "double encoding";
      if (b === 0x5c) return "escaped '\\'";
      if (b <= 0x1f || b === 0x7f) return "escaped control character";
      bytes.push(b);
      i += 2;
    } else if (SEG_CHAR.test(c)) bytes.push(c.charCodeAt(0));
    else return `character ${JSON.stringify(c)} not allowed`;
  }
  let decoded;
  try {
    decoded = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(new Uint8Array(bytes));
  } catch {
    return "escaped octets are not UTF-8";
  }
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) return "byte order mark";
  for (const ch of decoded) if (badTextCodePoint(ch.codePointAt(0))) return "escapes a code point not allowed in text";
  // cut at the first ';' or '%3B'
  let cut = seg.length;
  const a = seg.indexOf(";");
  const b = seg.indexOf("%3B");
  if (a >= 0) cut = Math.min(cut, a);
  if (b >= 0) cut = Math.min(cut, b);
  const before = seg.slice(0, cut);
  if (before === "" || before === "." || before === "..") return "empty or dot-segment before ';'";
  return null;
}

/** Parse a resource name or pattern; returns {prefix, segs, wild} or an error string. */
export function parseResource(s, { pattern = false, urlOnly = false } = {}) {
  if (!isStr(s)) return "not a string";
  if (s.length > 2048) return "longer than 2048 characters";
  if (!/^[\x21-\x7e]+$/.test(s)) return "whitespace, control or non-ASCII character";
  if (s.includes("?") || s.includes("#")) return "query or fragment";
  let prefix, rest, isUrl;
  const m = /^([^:/]*):\/\//.exec(s);
  if (m && SCHEME.test(m[1])) {
    isUrl = true;
    const scheme = m[1];
    if (BROWSER_SCHEMES.has(scheme)) return `scheme ${scheme} not allowed`;
    const after = s.slice(m[0].length);
    const slash = after.indexOf("/");
    const authority = slash < 0 ? after : after.slice(0, slash);
    rest = slash < 0 ? null : after.slice(slash + 1);
    if (authority.includes("@")) return "userinfo";
    if (authority.includes("[")) return "IP-literal host";
    const colon = authority.lastIndexOf(":");
    if (colon < 0) return "port must be explicit";
    const host = authority.slice(0, colon);
    const port = authority.slice(colon + 1);
    if (!/^[1-9][0-9]{0,4}$/.test(port) || Number(port) > 65535) return "bad port";
    if (host.length < 1 || host.length > 253) return "bad host";
    const labels = host.split(".");
    if (!labels.every((l) => LABEL.test(l))) return "bad host";
    const last = labels[labels.length - 1];
    if ((/^[0-9]+$/.test(last) || /^0x[0-9a-f]*$/.test(last)) && !IPV4.test(host)) return "host reads as a malformed IPv4 address";
    prefix = `${scheme}://${host}:${port}`;
  } else {
    if (urlOnly) return "not a URL";
    isUrl = false;
    const c = s.indexOf(":");
    if (c < 0) return "no namespace";
    const ns = s.slice(0, c);
    if (!SCHEME.test(ns)) return "bad namespace";
    if (RESERVED_NS.has(ns)) return `namespace ${ns} is reserved`;
    prefix = ns;
    rest = s.slice(c + 1);
    if (rest === "") return "empty name";
  }
  let segs = rest === null ? [] : rest.split("/");
  let wild = false;
  if (segs.length > 64) return "more than 64 segments";
  if (segs.length && segs[segs.length - 1] === "*") {
    if (!pattern) return "a wildcard where a name is required";
    wild = true;
    segs = segs.slice(0, -1);
  }
  for (const seg of segs) {
    const e = checkSegment(seg);
    if (e) return e;
  }
  return { prefix, segs, wild, isUrl };
}
function matches(pat, name) {
  if (pat.prefix !== name.prefix) return false;
  const k = pat.segs.length;
  if (!pat.wild) return name.segs.length === k && pat.segs.every((s, i) => s === name.segs[i]);
  return name.segs.length > k && pat.segs.every((s, i) => s === name.segs[i]);
}
function within(child, parent) {
  if (!child.wild) return matches(parent, child);
  if (!parent.wild || parent.prefix !== child.prefix) return false;
  const k = parent.segs.length;
  return k <= child.segs.length && parent.segs.every((s, i) => s === child.segs[i]);
}
function needResource(v, field, opts) {
  const r = parseResource(v, opts);
  if (typeof r === "string") fmt(field, r);
  return r;
}

// ---------------------------------------------------------------- credentials (SCOPE.md §3)

function needConstraint(c, field) {
  if (!isObj(c) || Object.keys(c).length < 1) fmt(field, "must be an object with at least one operator");
  fields(c, field, [], ["eq", "in", "lte", "gte"]);
  if ("eq" in c) {
    if (isStr(c.eq)) needStr(c.eq, `${field}.eq`, 1024);
    else if (!isInt(c.eq)) fmt(`${field}.eq`, "not a string or integer");
  }
  if ("in" in c) {
    const v = c.in;
    if (!Array.isArray(v) || v.length < 1) fmt(`${field}.in`, "must be a list of 1..256 values");
    const allStr = v.every(isStr), allInt = v.every(isInt);
    if (!allStr && !allInt) fmt(`${field}.in`, "must be all strings or all integers");
    needCanonicalList(v, `${field}.in`, 1, 256, (x, f) => (allStr ? needStr(x, f, 1024) : null), allStr ? cpCmp : (a, b) => a - b);
  }
  if ("lte" in c && !isInt(c.lte)) fmt(`${field}.lte`, "not an integer");
  if ("gte" in c && !isInt(c.gte)) fmt(`${field}.gte`, "not an integer");
}
function needDetail(d, field) {
  fields(d, field, ["type", "actions"], ["locations", "resources", "constraints"]);
  if (!isStr(d.type) || !TOKEN.test(d.type) || d.type.length > 128) fmt(`${field}.type`, "not a token of 1..128");
  needCanonicalList(d.actions, `${field}.actions`, 1, 64, (x, f) => {
    if (!isStr(x) || !TOKEN.test(x) || x.length > 64) fmt(f, "not a token of 1..64");
  });
  if ("locations" in d)
    needCanonicalList(d.locations, `${field}.locations`, 1, 64, (x, f) => {
      const r = needResource(x, f, { urlOnly: true });
      if (!r.isUrl) fmt(f, "not a URL");
    });
  if ("resources" in d) needCanonicalList(d.resources, `${field}.resources`, 1, 256, (x, f) => needResource(x, f, { pattern: true }));
  if ("constraints" in d) {
    const c = d.constraints;
    if (!isObj(c)) fmt(`${field}.constraints`, "not an object");
    const ks = Object.keys(c);
    if (ks.length < 1 || ks.length > 32) fmt(`${field}.constraints`, "must hold 1..32 attributes");
    for (const k of ks) {
      if (!TOKEN.test(k) || k.length > 64) fmt(`${field}.constraints.${k}`, "not an attribute name");
      needConstraint(c[k], `${field}.constraints.${k}`);
    }
  }
}
const TASK_ID = /^[A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*$/;
function needCredentialFields(e) {
  if (!Array.isArray(e.scope) || e.scope.length < 1 || e.scope.length > 64) fmt("scope", "must hold 1..64 details");
  e.scope.forEach((d, i) => needDetail(d, `scope[${i}]`));
  needInt(e.expires_at, "expires_at", 1);
  if ("not_before" in e) {
    needInt(e.not_before, "not_before", 0);
    if (!(e.not_before < e.expires_at)) fmt("not_before", "must be below expires_at");
  }
  if ("max_uses" in e) needInt(e.max_uses, "max_uses", 1);
  if ("rate" in e) {
    fields(e.rate, "rate", ["count", "window"]);
    needInt(e.rate.count, "rate.count", 1);
    needInt(e.rate.window, "rate.window", 1);
  }
  needInt(e.max_depth, "max_depth", 0);
  if ("max_children" in e) needInt(e.max_children, "max_children", 0);
  fields(e.task, "task", ["id", "description"]);
  const id = e.task.id;
  if (!isStr(id) || id.length < 1 || id.length > 256 || !TASK_ID.test(id) || id.split("/").some((s) => s === "." || s === ".."))
    fmt("task.id", "not a task id");
  needText(e.task.description, "task.description", 1024);
}
function needAttributes(a, field) {
  if (!isObj(a)) fmt(field, "not an object");
  const ks = Object.keys(a);
  if (ks.length < 1 || ks.length > 64) fmt(field, "must hold 1..64 attributes");
  for (const k of ks) {
    if (!TOKEN.test(k) || k.length > 64) fmt(`${field}.${k}`, "not an attribute name");
    const v = a[k];
    if (isStr(v)) needStr(v, `${field}.${k}`, 1024);
    else if (!isInt(v)) fmt(`${field}.${k}`, "not a string or integer");
  }
}
function needRequest(r, field) {
  fields(r, field, ["type", "action"], ["location", "resource", "attributes"]);
  if (!isStr(r.type) || !TOKEN.test(r.type) || r.type.length > 128) fmt(`${field}.type`, "not a token");
  if (!isStr(r.action) || !TOKEN.test(r.action) || r.action.length > 64) fmt(`${field}.action`, "not a token");
  if ("location" in r && !needResource(r.location, `${field}.location`, { urlOnly: true }).isUrl) fmt(`${field}.location`, "not a URL");
  if ("resource" in r) needResource(r.resource, `${field}.resource`, {});
  if ("attributes" in r) needAttributes(r.attributes, `${field}.attributes`);
}
function needInvocation(inv, field = "invocation") {
  fields(inv, field, ["credential", "request", "nonce", "iat", "sigs"]);
  needId(inv.credential, `${field}.credential`);
  needRequest(inv.request, `${field}.request`);
  const nb = isStr(inv.nonce) ? b64uDecode(inv.nonce) : null;
  if (!nb || nb.length < 16 || nb.length > 64) fmt(`${field}.nonce`, "not base64url of 16..64 bytes");
  needInt(inv.iat, `${field}.iat`, 1);
  needSigs(inv.sigs, `${field}.sigs`);
  if (jcsBytes(inv).length > 16384) fmt(field, "larger than 16,384 bytes");
}
function needApproval(a, field = "approval") {
  fields(a, field, ["log", "invocation", "context", "decision", "iat", "expires_at", "sigs"]);
  needLog(a.log, `${field}.log`);
  needId(a.invocation, `${field}.invocation`);
  needId(a.context, `${field}.context`);
  if (a.decision !== "approve") fmt(`${field}.decision`, "an access carries only an approve");
  needInt(a.iat, `${field}.iat`, 1);
  needInt(a.expires_at, `${field}.expires_at`, 1);
  if (!(a.iat < a.expires_at && a.expires_at <= a.iat + 3600)) fmt(`${field}.expires_at`, "must be within (iat, iat + 3600]");
  needSigs(a.sigs, `${field}.sigs`);
}

// ---------------------------------------------------------------- entries (§4)

const KINDS = {
  genesis: [["log_key", "keys"], []],
  key: [["op", "key"], ["roles", "principal"]],
  policy: [["version", "document"], []],
  grant: [["principal", "holder", "scope", "expires_at", "max_depth", "task"], ["agent", "not_before", "max_uses", "rate", "max_children"]],
  delegation: [["parent", "holder", "scope", "expires_at", "max_depth", "task"], ["agent", "not_before", "max_uses", "rate", "max_children"]],
  revocation: [["target", "reason"], []],
  access: [["invocation", "context", "enforcement", "decision", "reason", "policy"], ["upstream_status", "approval"]],
  result: [["access", "enforcement"], ["upstream_status", "failure"]],
};

/** Validate an entry value against §4 (schema only); throws format. */
export function checkEntry(e) {
  if (!isObj(e)) fmt("entry", "not an object");
  if (!isStr(e.kind) || !(e.kind in KINDS)) fmt("kind", "unknown kind");
  const [req, opt] = KINDS[e.kind];
  fields(e, "", ["kind", "v", "log", "sigs", ...req], opt);
  if (e.v !== 1) fmt("v", "must be 1");
  needLog(e.log);
  needSigs(e.sigs);
  switch (e.kind) {
    case "genesis": {
      let vk;
      try {
        vk = parseVkeySync(e.log_key);
      } catch (x) {
        fmt("log_key", x.detail || "not a verifier key");
      }
      if (!Array.isArray(e.keys) || e.keys.length < 1 || e.keys.length > 64) fmt("keys", "must hold 1..64 keys");
      const seen = new Set();
      let op = false;
      e.keys.forEach((k, i) => {
        fields(k, `keys[${i}]`, ["key", "roles"]);
        needKey(k.key, `keys[${i}].key`);
        needRoles(k.roles, `keys[${i}].roles`, ["decision", "operator"]);
        if (seen.has(k.key)) fmt(`keys[${i}].key`, "key listed twice");
        seen.add(k.key);
        if (k.roles.includes("operator")) op = true;
      });
      if (!op) fmt("keys", "no operator key");
      if (vk.name !== e.log) fmt("log_key", "the key's name must be the entry's log");
      break;
    }
    case "key":
      if (!["add", "bind", "retire"].includes(e.op)) fmt("op", "must be add, bind or retire");
      needKey(e.key, "key");
      if (e.op === "add") {
        if (!("roles" in e)) fmt("roles", "required for add");
        needRoles(e.roles, "roles", ["decision", "operator"]);
        if ("principal" in e) fmt("principal", "bind only");
      } else if (e.op === "bind") {
        needPrincipal(e.principal, "principal");
        if ("roles" in e) needRoles(e.roles, "roles");
      } else {
        if ("roles" in e) fmt("roles", "not allowed for retire");
        if ("principal" in e) fmt("principal", "bind only");
      }
      break;
    case "policy":
      needInt(e.version, "version", 1);
      if (!isObj(e.document)) fmt("document", "not an object");
      break;
    case "grant":
    case "delegation":
      if (e.kind === "grant") needPrincipal(e.principal, "principal");
      else needId(e.parent, "parent");
      needKey(e.holder, "holder");
      if ("agent" in e && (!isStr(e.agent) || e.agent.length > 128 || !/^[\x20-\x7e]*$/.test(e.agent))) fmt("agent", "not printable ASCII of at most 128 characters");
      needCredentialFields(e);
      break;
    case "revocation": {
      const t = e.target;
      if (!isObj(t) || Object.keys(t).length !== 1) fmt("target", "must hold exactly one of credential, holder");
      fields(t, "target", [], ["credential", "holder"]);
      if ("credential" in t) needId(t.credential, "target.credential");
      else needKey(t.holder, "target.holder");
      needStr(e.reason, "reason", 512);
      break;
    }
    case "access":
      needInvocation(e.invocation);
      if (!isObj(e.context)) fmt("context", "not an object");
      if ("attributes" in e.context) needAttributes(e.context.attributes, "context.attributes");
      needStr(e.enforcement, "enforcement", 128);
      if (e.decision !== "allow" && e.decision !== "deny") fmt("decision", "must be allow or deny");
      needStr(e.reason, "reason", 512);
      needInt(e.policy, "policy", 0);
      if ("upstream_status" in e) needInt(e.upstream_status, "upstream_status", 100, 599);
      if ("approval" in e) needApproval(e.approval);
      break;
    case "result":
      needId(e.access, "access");
      needStr(e.enforcement, "enforcement", 128);
      if (("upstream_status" in e) === ("failure" in e)) fmt("upstream_status", "exactly one of upstream_status and failure");
      if ("upstream_status" in e) needInt(e.upstream_status, "upstream_status", 100, 599);
      if ("failure" in e && !["timeout", "unreachable", "bad_response", "cancelled"].includes(e.failure)) fmt("failure", "unknown failure");
      break;
  }
  if (depthOf(e) > 32) fmt("entry", "nested deeper than 32");
  if (jcsBytes(e).length > 65535) fmt("entry", "larger than 65,535 bytes");
}

function checkLeaf(leaf, field = "leaf") {
  fields(leaf, field, ["entry", "time"]);
  needInt(leaf.time, `${field}.time`, 0);
  checkEntry(leaf.entry);
  if (jcsBytes(leaf).length > 65535) fmt(field, "larger than 65,535 bytes");
}

// ---------------------------------------------------------------- keys and notes (CHECKPOINT.md)

function validKeyName(name) {
  if (!name || utf8(name).length > 256) return false;
  for (const ch of name) {
    const c = ch.codePointAt(0);
    if (ch === "+" || c <= 0x20 || (c >= 0x7f && c <= 0x9f) || /\s/u.test(ch)) return false;
  }
  return true;
}
// key id computed lazily (needs SHA-256): parse syntax synchronously, then check id async.
function parseVkeySync(s) {
  if (!isStr(s)) fail("format", "verifier key: not a string");
  const a = s.indexOf("+");
  const b = a < 0 ? -1 : s.indexOf("+", a + 1);
  if (a < 0 || b < 0) fail("format", "verifier key: expected name+id+key");
  const name = s.slice(0, a), id = s.slice(a + 1, b), key = s.slice(b + 1);
  if (!validKeyName(name)) fail("format", "verifier key: bad key name");
  if (!/^[0-9a-f]{8}$/.test(id)) fail("format", "verifier key: key id is not 8 lower-case hex digits");
  const raw = b64Decode(key);
  if (!raw || raw.length !== 33 || raw[0] !== 1) fail("format", "verifier key: not base64 of 0x01 and a 32-byte key");
  const pub = raw.subarray(1);
  if (!isPrimeOrderPoint(pub)) fail("format", "verifier key: not a canonical point of prime order");
  return { name, id, pub, text: s };
}
async function noteKeyId(cx, name, pub) {
  return (await cx.sha256(concat(utf8(name), new Uint8Array([0x0a, 0x01]), pub))).subarray(0, 4);
}
export async function parseVkey(cx, s) {
  const k = parseVkeySync(s);
  if (hex(await noteKeyId(cx, k.name, k.pub)) !== k.id) fail("format", "verifier key: key id does not match");
  return k;
}

/** Open a signed note with verifier key k; returns the text. */
async function openNote(cx, note, k, onBadSig = "signature") {
  if (!isStr(note)) fail("format", "note: not a string");
  if (utf8(note).length > 1 << 20) fail("format", "note: larger than 1 MiB");
  for (const ch of note) {
    const c = ch.codePointAt(0);
    if ((c < 0x20 && c !== 0x0a) || (c >= 0x7f && c <= 0x9f)) fail("format", "note: control character");
  }
  for (const line of note.split("\n")) if (utf8(line).length > 8192) fail("format", "note: line over 8192 bytes");
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0) fail("format", "note: no blank line");
  const text = note.slice(0, cut + 1);
  const sigBlock = note.slice(cut + 2);
  if (text === "\n" || text.length === 0) fail("format", "note: empty text");
  if (text.endsWith("\n\n")) fail("format", "note: text ends with an empty line");
  if (!sigBlock.endsWith("\n")) fail("format", "note: signature block does not end in a newline");
  const lines = sigBlock.slice(0, -1).split("\n");
  if (lines.length > 100) fail("format", "note: more than 100 signatures");
  const sigs = [];
  for (const line of lines) {
    if (!line.startsWith("\u2014 ")) fail("format", "note: signature line does not start with '— '");
    const rest = line.slice(2);
    const sp = rest.indexOf(" ");
    if (sp < 0) fail("format", "note: no space after the key name");
    const name = rest.slice(0, sp);
    if (!validKeyName(name)) fail("format", "note: invalid key name");
    const raw = b64Decode(rest.slice(sp + 1));
    if (!raw || raw.length < 5) fail("format", "note: bad signature base64");
    sigs.push({ name, id: raw.subarray(0, 4), sig: raw.subarray(4) });
  }
  const kid = await noteKeyId(cx, k.name, k.pub);
  let verified = false;
  for (const s of sigs) {
    if (s.name === k.name && bytesEq(s.id, kid)) {
      if (!(await edVerify(cx, k.pub, s.sig, utf8(text)))) fail(onBadSig, "checkpoint signature does not verify");
      verified = true;
    }
  }
  if (!verified) fail("signature", "checkpoint has no signature by the trusted log key");
  return text;
}
function parseCheckpointBody(text) {
  if (!text.endsWith("\n")) fail("format", "checkpoint: no final newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) fail("format", "checkpoint: fewer than three lines");
  const [origin, size, root, ...ext] = lines;
  if (!origin) fail("format", "checkpoint: empty origin");
  if (!/^(0|[1-9][0-9]*)$/.test(size) || BigInt(size) >= 1n << 63n) fail("format", "checkpoint: bad tree size");
  const r = b64Decode(root);
  if (!r || r.length !== 32) fail("format", "checkpoint: bad root hash");
  if (ext.some((l) => l === "")) fail("format", "checkpoint: empty extension line");
  return { origin, size: BigInt(size), root: r };
}
async function openCheckpoint(cx, note, k) {
  const text = await openNote(cx, note, k);
  const cp = parseCheckpointBody(text);
  if (cp.origin !== k.name) fail("signature", `checkpoint is for ${cp.origin}, not ${k.name}`);
  return cp;
}

// ---------------------------------------------------------------- Merkle (LOG.md)

async function hashChildren(cx, l, r) {
  return cx.sha256(concat(new Uint8Array([1]), l, r));
}
export async function leafHash(cx, leafBytes) {
  return cx.sha256(concat(new Uint8Array([0]), leafBytes));
}
function pathLen(m, n) {
  // len(PATH(m, D[n]))
  let len = 0;
  while (n > 1n) {
    let k = 1n;
    while (k * 2n < n) k *= 2n;
    if (m < k) n = k;
    else {
      m -= k;
      n -= k;
    }
    len++;
  }
  return len;
}
export function consistencyProofSize(m, n) {
  // len(PROOF(m, D[n])) for 0 < m <= n
  if (m === n) return 0;
  let len = 0, b = true;
  for (;;) {
    if (m === n) return len + (b ? 0 : 1);
    let k = 1n;
    while (k * 2n < n) k *= 2n;
    if (m <= k) n = k;
    else {
      m -= k;
      n -= k;
      b = false;
    }
    len++;
  }
}
export async function rootFromInclusion(cx, index, size, leaf, proof) {
  if (index >= size) return null;
  if (proof.length !== pathLen(index, size)) return null;
  let fn = index, sn = size - 1n, r = leaf;
  for (const p of proof) {
    if (sn === 0n) return null;
    if ((fn & 1n) === 1n || fn === sn) {
      r = await hashChildren(cx, p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else r = await hashChildren(cx, r, p);
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n ? r : null;
}
export async function verifyConsistency(cx, m, n, oldRoot, newRoot, proof) {
  if (m <= 0n || m > n) return false;
  if (m === n) return proof.length === 0 && bytesEq(oldRoot, newRoot);
  if (proof.length !== consistencyProofSize(m, n)) return false;
  let path = proof.slice();
  if ((m & (m - 1n)) === 0n) path = [oldRoot, ...path];
  let fn = m - 1n, sn = n - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0], sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = await hashChildren(cx, c, fr);
      sr = await hashChildren(cx, c, sr);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else sr = await hashChildren(cx, sr, c);
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && bytesEq(fr, oldRoot) && bytesEq(sr, newRoot);
}
function needHashes(v, field) {
  if (!Array.isArray(v)) fmt(field, "not a list");
  if (v.length > 64) fmt(field, "more than 64 hashes");
  return v.map((h, i) => {
    const b = isStr(h) ? b64Decode(h) : null;
    if (!b || b.length !== 32) fmt(`${field}[${i}]`, "not canonical base64 of 32 bytes");
    return b;
  });
}

// ---------------------------------------------------------------- attenuation (SCOPE.md §4)

const sameVal = (a, b) => typeof a === typeof b && a === b;
function finiteSet(c) {
  if ("eq" in c && "in" in c) return c.in.some((x) => sameVal(x, c.eq)) ? [c.eq] : [];
  if ("eq" in c) return [c.eq];
  if ("in" in c) return c.in.slice();
  return null;
}
function implies(cc, pc) {
  if (!cc) return false;
  const F = finiteSet(cc);
  if ("eq" in pc && !(F && F.every((f) => sameVal(f, pc.eq)))) return false;
  if ("in" in pc && !(F && F.every((f) => pc.in.some((s) => sameVal(s, f))))) return false;
  if ("lte" in pc && !(("lte" in cc && cc.lte <= pc.lte) || (F && F.every((f) => isInt(f) && f <= pc.lte)))) return false;
  if ("gte" in pc && !(("gte" in cc && cc.gte >= pc.gte) || (F && F.every((f) => isInt(f) && f >= pc.gte)))) return false;
  return true;
}
function detailFailures(c, p, i) {
  const f = [];
  if (!c.actions.every((a) => p.actions.includes(a))) f.push(`scope[${i}].actions`);
  const hasL = (d) => "locations" in d;
  if (hasL(c) !== hasL(p) || (hasL(c) && !c.locations.every((l) => p.locations.includes(l)))) f.push(`scope[${i}].locations`);
  const hasR = (d) => "resources" in d;
  if (hasR(c) !== hasR(p)) f.push(`scope[${i}].resources`);
  else if (hasR(c)) {
    const pp = p.resources.map((r) => parseResource(r, { pattern: true }));
    const ok = c.resources.every((r) => {
      const cr = parseResource(r, { pattern: true });
      return pp.some((x) => within(cr, x));
    });
    if (!ok) f.push(`scope[${i}].resources`);
  }
  const pc = p.constraints || {};
  const cc = c.constraints || {};
  for (const a of Object.keys(pc).sort()) if (!implies(cc[a], pc[a])) f.push(`scope[${i}].constraints.${a}`);
  return f;
}
/** covers(parent, child): null when covered, else the failing field. */
export function covers(parent, child) {
  for (let i = 0; i < child.scope.length; i++) {
    const c = child.scope[i];
    const cands = parent.scope.filter((p) => p.type === c.type);
    if (!cands.length) return `scope[${i}]`;
    let best = null;
    for (const p of cands) {
      const f = detailFailures(c, p, i);
      if (!f.length) {
        best = null;
        break;
      }
      if (!best || f.length < best.length) best = f;
    }
    if (best) return best[0];
  }
  if (!(parent.max_depth >= 1 && child.max_depth <= parent.max_depth - 1)) return "max_depth";
  if ("rate" in parent && !("rate" in child)) return "rate";
  if (child.expires_at > parent.expires_at) return "expires_at";
  if ("not_before" in parent && !("not_before" in child && child.not_before >= parent.not_before)) return "not_before";
  if ("max_uses" in parent && !("max_uses" in child && child.max_uses <= parent.max_uses)) return "max_uses";
  if ("rate" in parent && child.rate.count > parent.rate.count) return "rate.count";
  if ("rate" in parent && child.rate.window < parent.rate.window) return "rate.window";
  if ("max_children" in parent && !("max_children" in child && child.max_children <= parent.max_children)) return "max_children";
  if (!(child.task.id === parent.task.id || child.task.id.startsWith(parent.task.id + "/"))) return "task.id";
  return null;
}

// ---------------------------------------------------------------- permits (SCOPE.md §5)

function holds(op, bound, v) {
  if (op === "eq") return sameVal(v, bound);
  if (op === "in") return bound.some((x) => sameVal(x, v));
  if (op === "lte") return isInt(v) && v <= bound;
  if (op === "gte") return isInt(v) && v >= bound;
  return false;
}
/** null when permitted, else a reason */
export function permits(cred, req) {
  let best = null; // [progress, reason]
  const same = cred.scope.map((d, i) => [d, i]).filter(([d]) => d.type === req.type);
  if (!same.length) return `type: no detail of type '${req.type}'`;
  for (const [d, i] of same) {
    let progress = 0, reason = null;
    if (!d.actions.includes(req.action)) reason = `action: '${req.action}' is not in scope[${i}].actions`;
    else {
      progress = 1;
      const locOk = "location" in req ? "locations" in d && d.locations.includes(req.location) : !("locations" in d);
      if (!locOk) reason = "location" in req ? `location: '${req.location}' is not in scope[${i}].locations` : `location: missing, but scope[${i}].locations restricts it`;
      else {
        progress = 2;
        let resOk;
        if ("resource" in req) {
          const name = parseResource(req.resource, {});
          resOk = "resources" in d && d.resources.some((p) => matches(parseResource(p, { pattern: true }), name));
        } else resOk = !("resources" in d);
        if (!resOk) reason = "resource" in req ? `resource: '${req.resource}' is not within scope[${i}].resources` : `resource: missing, but scope[${i}].resources restricts it`;
        else {
          progress = 3;
          const attrs = req.attributes || {};
          for (const a of Object.keys(d.constraints || {}).sort()) {
            if (!(a in attrs)) {
              reason = `attributes.${a}: missing, but scope[${i}].constraints.${a} restricts it`;
              break;
            }
            for (const op of ["eq", "in", "lte", "gte"]) {
              if (op in d.constraints[a] && !holds(op, d.constraints[a][op], attrs[a])) {
                reason = `attributes.${a}: fails scope[${i}].constraints.${a}.${op}`;
                break;
              }
            }
            if (reason) break;
          }
          if (!reason) return null;
        }
      }
    }
    if (!best || progress > best[0]) best = [progress, reason];
  }
  return best[1];
}

// ---------------------------------------------------------------- replay (§8)

const SIG_ENTRY = utf8("lineage.entry.v1\0");
const SIG_INVOCATION = utf8("lineage.invocation.v1\0");
const SIG_APPROVAL = utf8("lineage.approval.v1\0");
function withoutSigs(o) {
  const c = Object.create(null);
  for (const k of Object.keys(o)) if (k !== "sigs") c[k] = o[k];
  return c;
}

async function thumbprint(cx, keyB64) {
  return b64uEncode(await cx.sha256(utf8(`{"crv":"Ed25519","kty":"OKP","x":"${keyB64}"}`)));
}

class Replay {
  constructor(cx, vkey, { mode = "partial", window = 60 } = {}) {
    this.cx = cx;
    this.vkey = vkey;
    this.mode = mode;
    this.W = window;
    this.keys = new Map(); // key -> {roles:Set, principal, bound, active}
    this.kids = new Map(); // key -> kid
    this.creds = new Map(); // id -> record
    this.revokedCreds = new Set();
    this.revokedHolders = new Set();
    this.holders = new Set();
    this.lastPolicy = 0;
    this.ids = new Map(); // id -> {index, kind, entry}
    this.accesses = new Map(); // id -> {decision, enforcement, result}
    this.lastTime = null;
    this.lastIndex = null;
    this.count = 0;
    this.kinds = {};
  }
  async kid(key) {
    let k = this.kids.get(key);
    if (!k) {
      k = await thumbprint(this.cx, key);
      this.kids.set(key, k);
    }
    return k;
  }
  /** signature of obj by one of candidates (array of base64url keys) */
  async sigBy(obj, ctx, candidates, what, check = "signature") {
    const { kid, sig } = obj.sigs[0];
    let key = null;
    for (const c of candidates) if ((await this.kid(c)) === kid) key = c;
    if (!key) fail(check, `not signed by ${what}`);
    const msg = concat(ctx, jcsBytes(withoutSigs(obj)));
    if (!(await edVerify(this.cx, b64uDecode(key), b64uDecode(sig), msg))) fail(check, `signature by ${what} does not verify`);
    return key;
  }
  activeWithRole(role) {
    return [...this.keys].filter(([, r]) => r.active && !r.bound && r.roles.has(role)).map(([k]) => k);
  }
  activeBoundTo(principal) {
    return [...this.keys].filter(([, r]) => r.active && r.bound && r.principal === principal).map(([k]) => k);
  }
  chain(id) {
    const out = [];
    for (let c = this.creds.get(id); c; c = c.parent ? this.creds.get(c.parent) : null) out.unshift(c);
    return out;
  }
  isRevoked(c) {
    return this.revokedCreds.has(c.id) || this.revokedHolders.has(c.body.holder);
  }

  async apply(index, leaf, id) {
    const e = leaf.entry, time = leaf.time;
    const cx = this.cx;
    // step 0
    if (this.lastIndex !== null && index <= this.lastIndex) fail("order", `index ${index} does not increase`);
    if (this.lastTime !== null && time < this.lastTime) fail("order", `time ${time} goes backwards`);
    if (this.ids.has(id)) fail("duplicate", `repeats the entry at index ${this.ids.get(id).index}`);
    // step 1
    if (this.count === 0 && (index !== 0 || e.kind !== "genesis")) fail("genesis", "the first leaf is not a genesis at index 0");
    if (e.log !== this.vkey.name) fail("origin", `entry is for log ${e.log}, not ${this.vkey.name}`);
    if (e.kind === "genesis") {
      if (this.count > 0) fail("genesis", "a second genesis");
      if (e.log_key !== this.vkey.text) fail("log-key", "the genesis names another log key");
      const lk = b64uEncode(this.vkey.pub);
      await this.sigBy(e, SIG_ENTRY, [lk], "the log key");
    }

    const post = [];
    switch (e.kind) {
      case "genesis":
        for (const k of e.keys) post.push(() => this.keys.set(k.key, { roles: new Set(k.roles), principal: null, bound: false, active: true }));
        break;
      case "key": {
        await this.sigBy(e, SIG_ENTRY, this.activeWithRole("operator"), "an active key of role operator");
        const rec = this.keys.get(e.key);
        const active = rec && rec.active;
        if (e.op === "add" || e.op === "bind") {
          if (active) fail("key", `${e.op} of a key that is already active`);
          post.push(() =>
            this.keys.set(e.key, {
              roles: new Set(e.roles || []),
              principal: e.op === "bind" ? e.principal : null,
              bound: e.op === "bind",
              active: true,
            }),
          );
        } else {
          if (!active) fail("key", "retire of a key that is not active");
          if (!rec.bound && rec.roles.has("operator") && this.activeWithRole("operator").length === 1) fail("key", "retires the last active operator key");
          post.push(() => (rec.active = false));
        }
        break;
      }
      case "policy":
        await this.sigBy(e, SIG_ENTRY, this.activeWithRole("operator"), "an active key of role operator");
        if (e.version <= this.lastPolicy) fail("policy", `version ${e.version} does not increase on ${this.lastPolicy}`);
        post.push(() => (this.lastPolicy = e.version));
        break;
      case "grant":
        await this.sigBy(e, SIG_ENTRY, this.activeBoundTo(e.principal), `a key bound to principal ${e.principal}`);
        if (!(time < e.expires_at)) fail("expired", "grant expired when logged");
        post.push(() => this.addCred(id, e, null, e.principal));
        break;
      case "delegation": {
        const parent = this.creds.get(e.parent);
        if (!parent) fail("link", "parent is not an earlier credential");
        await this.sigBy(e, SIG_ENTRY, [parent.body.holder], "the parent's holder");
        const chain = this.chain(e.parent);
        for (const c of chain) {
          // one credential at a time from the root: expired, not yet valid, revoked (§8 step 4)
          if (!(time < c.body.expires_at)) fail("expired", `credential ${c.id} expired`);
          if ("not_before" in c.body && !(c.body.not_before <= time)) fail("not-yet-valid", `credential ${c.id} not yet valid`);
          if (this.isRevoked(c)) fail("revoked", `credential ${c.id} is revoked`);
        }
        const bad = covers(parent.body, e);
        if (bad) fail("attenuation", bad);
        if (!(time < e.expires_at)) fail("expired", "delegation expired when logged");
        if ("max_children" in parent.body && parent.children + 1 > parent.body.max_children) fail("budget", "max_children exceeded");
        post.push(() => {
          parent.children++;
          this.addCred(id, e, e.parent, parent.principal);
        });
        break;
      }
      case "revocation": {
        const ops = this.activeWithRole("operator");
        if ("credential" in e.target) {
          const t = this.creds.get(e.target.credential);
          if (!t) fail("link", "target is not an earlier credential");
          const chain = this.chain(t.id);
          const cands = [...ops, ...this.activeBoundTo(chain[0].principal), ...chain.map((c) => c.body.holder)];
          await this.sigBy(e, SIG_ENTRY, cands, "an operator, the chain's principal or a holder in the chain");
          post.push(() => this.revokedCreds.add(t.id));
        } else {
          const h = e.target.holder;
          const signer = await this.sigBy(e, SIG_ENTRY, [...ops, h], "an operator or the key itself");
          if (signer === h && !this.holders.has(h)) fail("link", "the key held no earlier credential");
          post.push(() => this.revokedHolders.add(h));
        }
        break;
      }
      case "access":
        await this.access(index, e, time, id);
        post.push(() => this.accesses.set(id, { decision: e.decision, enforcement: e.enforcement, result: null }));
        break;
      case "result": {
        await this.sigBy(e, SIG_ENTRY, this.activeWithRole("decision"), "an active key of role decision");
        const prev = this.ids.get(e.access);
        if (!prev) fail("link", "access is not an earlier entry");
        if (prev.kind !== "access") fail("link", "access is not an access entry");
        const a = this.accesses.get(e.access);
        if (a.decision !== "allow") fail("denied", "the access was denied");
        if (a.enforcement !== e.enforcement) fail("enforcement", `the access was enforced by ${a.enforcement}`);
        if (a.result !== null) fail("duplicate-result", `the access already has its result at index ${a.result}`);
        post.push(() => (a.result = index));
        break;
      }
    }
    for (const f of post) f();
    this.ids.set(id, { index, kind: e.kind });
    this.lastIndex = index;
    this.lastTime = time;
    this.count++;
    this.kinds[e.kind] = (this.kinds[e.kind] || 0) + 1;
  }
  addCred(id, body, parent, principal) {
    this.creds.set(id, { id, body, parent, principal, children: 0, allowTimes: [], allowNonces: new Set(), allNonces: new Set() });
    this.holders.add(body.holder);
  }
  async access(index, e, time, id) {
    const cx = this.cx;
    await this.sigBy(e, SIG_ENTRY, this.activeWithRole("decision"), "an active key of role decision");
    const inv = e.invocation;
    const cred = this.creds.get(inv.credential);
    if (!cred) fail("link", "the invocation's credential is not an earlier credential");
    await this.sigBy(inv, SIG_INVOCATION, [cred.body.holder], "the credential's holder", "invocation");
    const chain = this.chain(cred.id);
    if ("approval" in e) {
      const a = e.approval;
      if (a.log !== e.log) fail("approval", "approval is for another log");
      if (hex(await cx.sha256(jcsBytes(inv))) !== a.invocation) fail("approval", "approval is for another invocation, not this one");
      if (hex(await cx.sha256(jcsBytes(e.context))) !== a.context) fail("approval", "approval is for another context");
      await this.sigBy(a, SIG_APPROVAL, this.activeBoundTo(chain[0].principal), `an active key of ${chain[0].principal}: signer is not an active key bound to the principal`, "approval");
      if (!(time <= a.expires_at)) fail("approval", "approval expired");
      if (!(a.iat <= time + this.W)) fail("approval", "approval issued in the future");
    }
    if (this.mode === "complete") {
      const fresh = Math.abs(time - inv.iat) <= this.W || ("approval" in e && inv.iat <= time && time <= e.approval.expires_at);
      if (!fresh) fail("freshness", "invocation outside the window");
      if (cred.allNonces.has(inv.nonce)) fail("replay", "nonce already used");
      if (e.policy !== this.lastPolicy) fail("policy", `names policy ${e.policy}, in force ${this.lastPolicy}`);
    } else if (e.policy < this.lastPolicy) fail("policy", `names policy ${e.policy}, below ${this.lastPolicy}`);
    if (e.decision === "allow") {
      for (const c of chain) {
        if (!(time < c.body.expires_at)) fail("expired", `credential ${c.id} expired`);
        if ("not_before" in c.body && !(c.body.not_before <= time)) fail("not-yet-valid", `credential ${c.id} not yet valid`);
        if (this.isRevoked(c)) fail("revoked", `credential ${c.id} is revoked`);
      }
      const req = Object.assign(Object.create(null), inv.request);
      const ctxAttrs = isObj(e.context) && isObj(e.context.attributes) ? e.context.attributes : null;
      if (ctxAttrs) req.attributes = Object.assign(Object.create(null), inv.request.attributes || {}, ctxAttrs);
      for (const c of chain) {
        const why = permits(c.body, req);
        if (why) fail("scope", `credential ${c.id}: ${why}`);
      }
      if (cred.allowNonces.has(inv.nonce)) fail("replay", "nonce already allowed");
      for (const c of chain) {
        const b = c.body;
        if ("max_uses" in b && c.allowTimes.length + 1 > b.max_uses) fail("budget", `credential ${c.id}: more than ${b.max_uses} uses`);
        if ("rate" in b) {
          const n = c.allowTimes.filter((t) => t > time - b.rate.window && t <= time).length + 1;
          if (n > b.rate.count) fail("budget", `credential ${c.id}: more than ${b.rate.count} in ${b.rate.window} s`);
        }
      }
      cred.allowNonces.add(inv.nonce);
      for (const c of chain) c.allowTimes.push(time);
    }
    cred.allNonces.add(inv.nonce);
  }
}

// ---------------------------------------------------------------- bundles (§9)

function readDoc(input, maxDepth, maxBytes) {
  let text;
  if (typeof input === "string") text = input;
  else if (input instanceof Uint8Array || input instanceof ArrayBuffer) {
    const b = input instanceof ArrayBuffer ? new Uint8Array(input) : input;
    if (b.length > maxBytes) fail("format", "document too large");
    text = decodeUtf8(b);
  } else if (isObj(input)) text = JSON.stringify(input);
  else fail("format", "not a JSON document");
  if (utf8(text).length > maxBytes) fail("format", "document too large");
  return parseJson(text, maxDepth);
}

const asText = (v) => (v instanceof Uint8Array || v instanceof ArrayBuffer ? decodeUtf8(v instanceof ArrayBuffer ? new Uint8Array(v) : v) : String(v));

async function run(fn) {
  try {
    return await fn();
  } catch (x) {
    if (x instanceof VerifyError) return { ok: false, check: x.check, detail: x.detail, entry: x.entry ?? null };
    return { ok: false, check: "format", detail: String(x && x.message ? x.message : x), entry: null };
  }
}

/** The bundle's schema (§9.1, before step 1): the document, its entries read, the consistency part. */
async function parseBundle(cx, bundleJson) {
  const doc = readDoc(bundleJson, 36, 256 * 1024 * 1024);
  // schema
  fields(doc, "bundle", ["origin", "log_key", "checkpoint", "entries"], ["consistency"]);
  needStr(doc.origin, "origin", 255); // what it must be is step 1's question: "signature"
  needStr(doc.log_key, "log_key", 512);
  needStr(doc.checkpoint, "checkpoint", 65536);
  if (!Array.isArray(doc.entries) || doc.entries.length < 1) fmt("entries", "must be a non-empty list");
  const items = [];
  for (let i = 0; i < doc.entries.length; i++) {
    const it = doc.entries[i];
    const f = `entries[${i}]`;
    try {
      fields(it, f, ["index", "leaf", "inclusion"]);
      needInt(it.index, `${f}.index`, 0);
      const proof = needHashes(it.inclusion, `${f}.inclusion`);
      checkLeaf(it.leaf, `${f}.leaf`);
      const leafHashed = await leafHash(cx, jcsBytes(it.leaf));
      const entryBytes = jcsBytes(it.leaf.entry);
      items.push({ index: it.index, leaf: it.leaf, proof, leafHash: leafHashed, id: hex(await cx.sha256(entryBytes)) });
    } catch (x) {
      if (x instanceof VerifyError && x.entry == null) x.entry = isObj(it) && isInt(it.index) ? it.index : i;
      throw x;
    }
  }
  let cons = null;
  if ("consistency" in doc) {
    fields(doc.consistency, "consistency", ["from_size", "proof"]);
    needInt(doc.consistency.from_size, "consistency.from_size", 1);
    cons = { m: BigInt(doc.consistency.from_size), proof: needHashes(doc.consistency.proof, "consistency.proof") };
  }
  return { doc, items, cons };
}

/**
 * Verify an evidence bundle (FORMAT.md §9.1).
 * bundleJson: string, bytes or object; logVkey: the trusted verifier-key string.
 * options: {crypto, since: older checkpoint note text, mode: "partial"|"complete", window}
 */
export async function verifyBundle(bundleJson, logVkey, options = {}) {
  const cx = options.crypto || defaultBackend();
  let at = null;
  return run(async () => {
    const K = await parseVkey(cx, asText(logVkey).trim());
    const { doc, items, cons } = await parseBundle(cx, bundleJson);
    // 1
    if (doc.log_key !== K.text) fail("signature", "the bundle's log key is not the trusted one");
    if (doc.origin !== K.name) fail("signature", "the bundle's origin is not the trusted key's name");
    // 2
    const cp = await openCheckpoint(cx, doc.checkpoint, K);
    // 3
    for (let i = 1; i < items.length; i++)
      if (!(items[i].index > items[i - 1].index)) fail("order", `index ${items[i].index} does not increase`, items[i].index);
    for (const it of items) {
      at = it.index;
      const idx = BigInt(it.index);
      if (idx >= cp.size) fail("proof", `entry ${it.index}: index beyond the checkpoint's size ${cp.size}`);
      const r = await rootFromInclusion(cx, idx, cp.size, it.leafHash, it.proof);
      if (!r || !bytesEq(r, cp.root)) fail("proof", `entry ${it.index}: inclusion proof does not yield the checkpoint's root`);
    }
    // 4
    const replay = new Replay(cx, K, { mode: options.mode || "partial", window: options.window ?? 60 });
    for (const it of items) {
      at = it.index;
      await replay.apply(it.index, it.leaf, it.id);
    }
    at = null;
    // 5
    if (cons) {
      if (cons.m > cp.size) fail("proof", "consistency from_size beyond the checkpoint");
      if (cons.proof.length !== consistencyProofSize(cons.m, cp.size)) fail("proof", "consistency proof has the wrong number of hashes");
    }
    if (options.since != null) {
      const old = await openCheckpoint(cx, asText(options.since), K);
      if (old.size > cp.size) fail("proof", "the older checkpoint is larger");
      if (old.size !== 0n) {
        if (cons && cons.m === old.size) {
          if (!(await verifyConsistency(cx, old.size, cp.size, old.root, cp.root, cons.proof))) fail("proof", "consistency proof does not verify");
        } else if (old.size === cp.size) {
          if (!bytesEq(old.root, cp.root)) fail("proof", "same size, different roots");
        } else fail("proof", "no consistency proof from the older checkpoint's size");
      }
    }
    return {
      ok: true,
      origin: K.name,
      size: Number(cp.size),
      root: hex(cp.root),
      entries: items.length,
      kinds: replay.kinds,
      ids: items.map((it) => it.id),
    };
  }).then((r) => (r.ok || r.entry != null ? r : { ...r, entry: at }));
}

/**
 * Verify a bundle entry by entry, for a page that shows each one (docs/EXPLORER.md).
 * The same checks as verifyBundle, but a failing entry does not stop the rest: it is
 * reported with its check and left out of the replay, so what depends on it fails in turn
 * (a delegation from it: "link"). If the document, the log key or the checkpoint fails,
 * no entry is verified: {ok: false, check, detail, entries: []}.
 * Returns {ok, origin, size, root, checkpoint, entries: [{index, id, leafHash, kind, ok, check, detail}]}
 * (id and leafHash in hex, computed from the entry as listed),
 * entries[i] the verdict on the bundle's entries[i]: match them by position, never by index
 * (a lying bundle may list two entries under one index).
 */
export async function verifyEach(bundleJson, logVkey, options = {}) {
  const cx = options.crypto || defaultBackend();
  let K, doc, items, cp;
  const head = await run(async () => {
    K = await parseVkey(cx, asText(logVkey).trim());
    ({ doc, items } = await parseBundle(cx, bundleJson));
    if (doc.log_key !== K.text) fail("signature", "the bundle's log key is not the trusted one");
    if (doc.origin !== K.name) fail("signature", "the bundle's origin is not the trusted key's name");
    cp = await openCheckpoint(cx, doc.checkpoint, K);
    return { ok: true };
  });
  if (!head.ok) return { ...head, entries: [] };
  const replay = new Replay(cx, K, { mode: options.mode || "partial", window: options.window ?? 60 });
  const entries = [];
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    const r = await run(async () => {
      // step 3 first, against the entry listed before it (as verifyBundle does for all)
      if (i > 0 && !(it.index > items[i - 1].index)) fail("order", `index ${it.index} does not increase`);
      const idx = BigInt(it.index);
      if (idx >= cp.size) fail("proof", `index beyond the checkpoint's size ${cp.size}`);
      const root = await rootFromInclusion(cx, idx, cp.size, it.leafHash, it.proof);
      if (!root || !bytesEq(root, cp.root)) fail("proof", "the inclusion proof does not yield the checkpoint's root");
      await replay.apply(it.index, it.leaf, it.id);
      return { ok: true };
    });
    entries.push({ index: it.index, id: it.id, leafHash: hex(it.leafHash), kind: it.leaf.entry.kind, ok: r.ok, check: r.check ?? null, detail: r.detail ?? null });
  }
  return {
    ok: entries.every((e) => e.ok),
    origin: K.name,
    size: Number(cp.size),
    root: hex(cp.root),
    checkpoint: doc.checkpoint,
    entries,
  };
}

/**
 * Open a checkpoint note with the trusted log key: {ok, origin, size, root (hex)} or a failure.
 */
export async function openCheckpointNote(note, logVkey, options = {}) {
  const cx = options.crypto || defaultBackend();
  return run(async () => {
    const K = await parseVkey(cx, asText(logVkey).trim());
    const cp = await openCheckpoint(cx, asText(note), K);
    return { ok: true, origin: K.name, size: Number(cp.size), root: hex(cp.root) };
  });
}

/**
 * Is the log of checkpoint ``newer`` an extension of the log of checkpoint ``older``?
 * Both notes are opened with the trusted key; ``proof`` is the consistency proof from
 * older's size to newer's (a list of base64 hashes, GET /v1/log/proof/consistency).
 * Returns {ok, from, to} or {ok: false, check: "signature"|"format"|"proof", detail}.
 */
export async function checkConsistency(older, newer, proof, logVkey, options = {}) {
  const cx = options.crypto || defaultBackend();
  return run(async () => {
    const K = await parseVkey(cx, asText(logVkey).trim());
    const a = await openCheckpoint(cx, asText(older), K);
    const b = await openCheckpoint(cx, asText(newer), K);
    if (a.size > b.size) fail("proof", `the earlier checkpoint (${a.size}) is larger than the current one (${b.size})`);
    if (a.size === 0n) return { ok: true, from: 0, to: Number(b.size) };
    const hashes = needHashes(proof, "consistency");
    if (a.size === b.size) {
      if (hashes.length !== 0 || !bytesEq(a.root, b.root)) fail("proof", "same size, different roots: the log was rewritten");
    } else if (!(await verifyConsistency(cx, a.size, b.size, a.root, b.root, hashes)))
      fail("proof", `the consistency proof from ${a.size} to ${b.size} does not verify: the log was rewritten`);
    return { ok: true, from: Number(a.size), to: Number(b.size) };
  });
}

/**
 * Verify an append receipt (FORMAT.md §9.4).
 * options: {crypto, entryId}
 */
export async function verifyReceipt(receiptJson, logVkey, options = {}) {
  const cx = options.crypto || defaultBackend();
  return run(async () => {
    const K = await parseVkey(cx, asText(logVkey).trim());
    const doc = readDoc(receiptJson, 34, 256 * 1024);
    fields(doc, "receipt", ["checkpoint", "index", "leaf", "inclusion"]);
    if (!isStr(doc.checkpoint)) fmt("checkpoint", "not a string");
    needInt(doc.index, "index", 0);
    checkLeaf(doc.leaf);
    const proof = needHashes(doc.inclusion, "inclusion");
    const cp = await openCheckpoint(cx, doc.checkpoint, K);
    if (doc.leaf.entry.log !== K.name) fail("signature", "the entry is for another log");
    const id = hex(await cx.sha256(jcsBytes(doc.leaf.entry)));
    if (options.entryId != null && options.entryId !== id) fail("proof", "the entry is not the one appended");
    const idx = BigInt(doc.index);
    if (idx >= cp.size) fail("proof", `index ${doc.index} beyond the checkpoint's size ${cp.size}`);
    if (proof.length !== pathLen(idx, cp.size)) fail("proof", "inclusion proof has the wrong number of hashes");
    const r = await rootFromInclusion(cx, idx, cp.size, await leafHash(cx, jcsBytes(doc.leaf)), proof);
    if (!r || !bytesEq(r, cp.root)) fail("proof", "inclusion proof does not yield the checkpoint's root");
    return { ok: true, index: doc.index, id, size: Number(cp.size), root: hex(cp.root) };
  });
}
