"""What the gateway's hop costs, run by hand: ``.venv/bin/python bench/gateway_bench.py``.

Four real processes on 127.0.0.1, each its own uvicorn: a small upstream API, the
service (``lineage serve``), the gateway (``lineage gateway``, asking the service for
each decision), and the same gateway with a decider that allows without logging (the
proxy hop alone). One client, in this process, measures in one run:

    direct      the upstream, straight                  (the baseline)
    decision    POST /v1/access, the decision alone     (what the gateway waits for)
    proxy       through the gateway, decision skipped   (one proxy hop, signing included)
    gateway     through the gateway, decided and logged (the real thing)

each one request at a time (latency: median, p99) and from ``--threads`` threads
(throughput). The claim to check: gateway ≈ decision + proxy − direct, i.e. the logged,
decided, secret-attaching hop costs no more than the decision plus one proxy hop.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

SECRET = "bench-secret-0123456789"
MAIL = "https://mail.example.com:443"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def upstream_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    ok = dict(scope["headers"]).get(b"x-api-key") == SECRET.encode()
    body = b'{"id": "17", "subject": "Invoice"}' if ok else b'{"error": "key"}'
    await send(
        {
            "type": "http.response.start",
            "status": 200 if ok else 401,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def role(name: str, port: int, config: str) -> None:
    """Run one of the bench's servers in this process (a child of the bench)."""
    import uvicorn

    if name == "upstream":
        uvicorn.run(upstream_app, host="127.0.0.1", port=port, log_level="warning")
        return
    from lineage.api.gateway.app import Gateway
    from lineage.api.gateway.config import load_gateway_config
    from lineage.api.gateway.decider import Verdict

    class AllowAll:  # the proxy hop alone: no decision, nothing logged
        async def decide(self, invocation, context):
            return Verdict(True, "bench", "0" * 64, 0, None)

        async def results(self, results):
            return []

        async def holding(self, credential):
            return None

        async def aclose(self):
            return None

    cfg = load_gateway_config(config)
    uvicorn.run(Gateway(cfg, AllowAll()), host="127.0.0.1", port=port, log_level="warning")


def measure(call: Callable[[], int], n: int, threads: int) -> dict[str, float]:
    for _ in range(20):  # warm up connections and caches
        call()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status = call()
        times.append(time.perf_counter() - t)
        assert status == 200, status
    times.sort()
    done = [0] * threads

    def work(i: int) -> None:
        for _ in range(n // threads):
            call()
            done[i] += 1

    t = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - t
    return {
        "median_ms": statistics.median(times) * 1000,
        "p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
        "per_s": sum(done) / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="requests per measurement")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", help="measure only this one (direct, decision, proxy, gateway)")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        return role(args.role, args.port, args.config)

    from lineage.client import Agent, LineageClient
    from lineage.client.gateway import gateway_session
    from lineage.verifier.keys import SigningKey, key_file_text

    tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
    env = {**os.environ, "BENCH_MAIL_KEY": SECRET}
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], url: str, **kw) -> None:
        p = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw
        )
        procs.append(p)
        wait(url, p)

    try:
        ports = {k: free_port() for k in ("upstream", "service", "gateway", "proxy")}
        up = f"http://127.0.0.1:{ports['upstream']}"
        svc = f"http://127.0.0.1:{ports['service']}"
        gw = f"http://127.0.0.1:{ports['gateway']}"
        px = f"http://127.0.0.1:{ports['proxy']}"
        me = [sys.executable, __file__]
        start([*me, "--role", "upstream", "--port", str(ports["upstream"])], up)
        lineage = str(BIN / "lineage")

        def run(*a: str) -> str:
            done = subprocess.run(
                [lineage, *a], cwd=tmp, env=env, check=True, capture_output=True, text=True
            )
            return done.stdout.strip()

        run("init", "--origin", "bench.example/gateway")
        alice = SigningKey.generate()
        (tmp / "alice.key").write_text(key_file_text(alice))
        run("principal", "add", "alice@corp", "--public-key", alice.public.b64)
        token = run("token", "create", "--role", "enforcement", "--name", "gateway-1")
        env["LINEAGE_GATEWAY_TOKEN"] = token
        (tmp / "lineage.toml").write_text(f"""
[gateway]
service = "{svc}"
token = {{from = "env", name = "LINEAGE_GATEWAY_TOKEN"}}

[gateway.upstreams.mail]
url = "{up}"
type = "email"
location = "{MAIL}"
actions = {{GET = "read"}}
secret = {{from = "env", name = "BENCH_MAIL_KEY"}}
attach = "header:X-Api-Key"
""")
        start([lineage, "serve", "--port", str(ports["service"])], svc + "/healthz")
        start(
            [lineage, "gateway", "--config", "lineage.toml", "--port", str(ports["gateway"])],
            gw + "/healthz",
        )
        start(
            [
                *me,
                "--role",
                "proxy",
                "--port",
                str(ports["proxy"]),
                "--config",
                str(tmp / "lineage.toml"),
            ],
            px + "/healthz",
        )

        log_key = httpx.get(svc + "/v1/log/key").text.strip()
        client = LineageClient(svc, log_key=log_key)
        agent = Agent.ephemeral()
        scope = [
            {
                "type": "email",
                "actions": ["read"],
                "locations": [MAIL],
                "resources": [f"{MAIL}/v1/*"],
            }
        ]
        handle = client.grant(alice, "alice@corp", agent, task="bench", scope=scope, ttl=3600)
        ep = LineageClient(svc, token=token)
        request = {
            "type": "email",
            "action": "read",
            "location": MAIL,
            "resource": f"{MAIL}/v1/messages/17",
        }

        direct = httpx.Client(base_url=up, headers={"X-Api-Key": SECRET})
        through = gateway_session(gw, agent, handle)
        proxied = gateway_session(px, agent, handle)
        local = threading.local()

        def session(make):  # one client per thread, as agents would have
            def get():
                if not hasattr(local, make.__name__):
                    setattr(local, make.__name__, make())
                return getattr(local, make.__name__)

            return get

        def direct_c():
            return httpx.Client(base_url=up, headers={"X-Api-Key": SECRET})

        def gw_c():
            return gateway_session(gw, agent, handle)

        def px_c():
            return gateway_session(px, agent, handle)

        def ep_c():
            return LineageClient(svc, token=token)

        d, g, p, e = session(direct_c), session(gw_c), session(px_c), session(ep_c)
        results = {
            "direct": measure(lambda: d().get("/v1/messages/17").status_code, args.n, args.threads),
            "decision": measure(
                lambda: (e().access(agent.invoke(handle, request), {}), 200)[1],
                args.n,
                args.threads,
            ),
            "proxy": measure(
                lambda: p().get(f"{MAIL}/v1/messages/17").status_code, args.n, args.threads
            ),
            "gateway": measure(
                lambda: g().get(f"{MAIL}/v1/messages/17").status_code, args.n, args.threads
            ),
        }
        metrics = httpx.get(gw + "/metrics").text
        for line in metrics.splitlines():
            if line.startswith(
                (
                    "lineage_gateway_decision_seconds_sum",
                    "lineage_gateway_decision_seconds_count",
                    "lineage_gateway_upstream_seconds_sum",
                    "lineage_gateway_upstream_seconds_count",
                )
            ):
                print(line)
        for c in (direct, through, proxied, client, ep):
            c.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    if args.only:
        print(args.only, results[args.only])
        return
    base = results["direct"]
    print(f"{'':10} {'median ms':>10} {'p99 ms':>8} {'req/s':>8} {'req/s vs direct':>16}")
    for name, r in results.items():
        print(
            f"{name:10} {r['median_ms']:10.2f} {r['p99_ms']:8.2f} {r['per_s']:8.0f} "
            f"{r['per_s'] / base['per_s']:15.2f}x"
        )
    added = results["gateway"]["median_ms"] - base["median_ms"]
    budget = results["decision"]["median_ms"] + results["proxy"]["median_ms"] - base["median_ms"]
    print(f"gateway adds {added:.2f} ms median over direct; decision + proxy hop: {budget:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
