"""The auditor's explorer at ``/ui`` (docs/EXPLORER.md).

The page is a server-rendered shell with one ES module (``explorer.js``, which imports the
JavaScript verifier ``verify.js``); it holds no data. Everything it shows it fetches with
the reader's own token from the JSON API (``/v1/entries``, ``/v1/credentials/{id}/lineage``,
``/v1/log/...``), which sends only what that reader may read, and it verifies every
bundle in the browser before it marks an entry verified: the server's word is not taken.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from .web import page

__all__ = ["router"]

router = APIRouter(tags=["explorer"])

KINDS = ("grant", "delegation", "access", "result", "revocation", "key", "policy", "genesis")


def _options(values: tuple[str, ...]) -> str:
    return "".join(f'<option value="{v}">{v}</option>' for v in values)


BODY = f"""
<header>
  <h1>Lineage explorer</h1>
  <p class="hint">Who authorised what, through which chain, and proof of it, checked here in
  your browser against the log's public key.</p>
</header>
<section id="signin" aria-labelledby="signin-h">
  <h2 id="signin-h">Reader</h2>
  <form id="signin-form" autocomplete="off">
    <label>Token <input type="password" id="token" name="token" required
      placeholder="an auditor or operator token" spellcheck="false"></label>
    <button type="submit">Sign in</button>
  </form>
  <p id="who" class="hint">Not signed in. The token stays in this tab (sessionStorage) and is
  sent only to this service, in an Authorization header.</p>
  <div id="as-principal" class="bar" hidden></div>
  <button type="button" id="signout" hidden>Sign out</button>
</section>
<section id="trust" aria-labelledby="trust-h">
  <h2 id="trust-h">The log</h2>
  <p>Log key: <code id="vkey">not loaded</code> <span id="vkey-source" class="hint"></span></p>
  <details id="pin-box"><summary>Pin the log key you were given</summary>
    <form id="pin-form"><textarea id="pin" rows="2" spellcheck="false"
      placeholder="origin+keyid+base64 (lineage log key)"></textarea>
    <button type="submit">Pin</button> <button type="button" id="unpin">Forget pin</button></form>
  </details>
  <p>Last checkpoint verified here: <span id="remembered">none</span></p>
  <details id="older-box"><summary>Prove an earlier checkpoint is extended by this log</summary>
    <form id="older-form"><textarea id="older" rows="4" spellcheck="false"
      placeholder="a signed checkpoint you kept (lineage checkpoint)"></textarea>
    <button type="submit">Prove consistency</button></form>
    <p id="older-result" role="status"></p>
  </details>
</section>
<section id="search-section" aria-labelledby="search-h">
  <h2 id="search-h">Search</h2>
  <form id="search" class="grid">
    <label>Principal <input name="principal" placeholder="alice@corp"></label>
    <label>Agent key <input name="holder" placeholder="key or kid"></label>
    <label>Task <input name="task" placeholder="id, or prefix/"></label>
    <label>Resource <input name="resource" placeholder="exact, or prefix*"></label>
    <label>Decision <select name="decision"><option value="">any</option>
      <option value="allow">allow</option><option value="deny">deny</option></select></label>
    <label>Kind <select name="kind"><option value="">any</option>{_options(KINDS)}</select>
    </label>
    <label>From (UTC) <input name="since" type="datetime-local" step="1"></label>
    <label>Until (UTC) <input name="until" type="datetime-local" step="1"></label>
    <button type="submit">Search</button>
  </form>
  <div id="results-bar" class="bar" hidden>
    <span id="count"></span>
    <button type="button" id="view-table" aria-pressed="true">Table</button>
    <button type="button" id="view-timeline" aria-pressed="false">Timeline</button>
    <button type="button" id="check-inclusion">Check inclusion</button>
    <button type="button" id="dl-csv">CSV</button>
    <button type="button" id="dl-jsonl">JSON Lines</button>
  </div>
  <table id="results" hidden><thead><tr><th>#</th><th>Time (UTC)</th><th>Kind</th>
    <th>What</th><th>Proof</th><th></th></tr></thead><tbody></tbody></table>
  <ol id="timeline" hidden></ol>
  <button type="button" id="more" hidden>More</button>
</section>
<section id="lineage" aria-labelledby="lineage-h" hidden>
  <h2 id="lineage-h">Lineage</h2>
  <p id="verdict" role="status"></p>
  <p id="consistency" class="hint"></p>
  <div class="bar">
    <button type="button" id="dl-bundle">Evidence bundle</button>
    <button type="button" id="dl-lineage-csv">CSV</button>
    <button type="button" id="dl-lineage-jsonl">JSON Lines</button>
  </div>
  <div id="tree" class="tree"></div>
  <h3>Every entry of the bundle</h3>
  <table id="bundle-entries"><thead><tr><th>#</th><th>Time (UTC)</th><th>Kind</th>
    <th>What</th><th>Verified here</th></tr></thead><tbody></tbody></table>
</section>
<p id="status" role="status"></p>
"""


@router.get("/ui", include_in_schema=False)
def explorer() -> HTMLResponse:
    """The explorer's page; it sends no data, only the shell and its script."""
    return page("Lineage explorer", BODY, module="explorer.js", wide=True)
