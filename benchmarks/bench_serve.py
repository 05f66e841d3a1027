"""`sagelm serve` throughput and latency: a batching server (--max-batch-size 8) vs one judging a request at a
time (--max-batch-size 1), each driven on loopback by 1, 8 and 50 concurrent clients.

    .venv/bin/python benchmarks/bench_serve.py [--model DIR] [--seconds 10]

Without --model it teaches the tiny tone judge of the tests (tests/conftest.py: teach_tone_judge), whose
answers ("1\\nResponse 1 is the tone.") stop after about 10 tokens, as a real judge's verdict and rationale do.
Each request is one probe pair (tone vs noise, in either order) on one aspect, the audio uploaded in base64;
every answer is checked. Prints judgments/s and p50/p99 latency per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import TONE_QUESTION, noise, teach_tone_judge, tone, write  # noqa: E402 (the tests' own judge)

CLIENTS = (1, 8, 50)
BATCH_SIZES = (8, 1)
WARMUP_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "sagelm", "serve", "--model", model, "--port", str(port),
           "--max-batch-size", str(batch)]  # fmt: skip
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready")


async def drive(url: str, probes: list[tuple[dict, str]], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    wrong = failed = 0
    measuring = False

    async def client(n: int, http: httpx.AsyncClient, stop_at: float) -> None:
        nonlocal wrong, failed
        i = n
        while time.monotonic() < stop_at:
            payload, want = probes[i % len(probes)]
            i += 1
            t = time.perf_counter()
            r = await http.post("/v1/judge", json=payload)
            dt = time.perf_counter() - t
            if r.status_code != 200:
                failed += 1
            elif [j["verdict"] for j in r.json()["judgments"]] != [want]:
                wrong += 1
            elif measuring:
                latencies.append(dt)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(n, http, time.monotonic() + WARMUP_S) for n in range(clients)))
        measuring = True
        t0 = time.monotonic()
        await asyncio.gather(*(client(n, http, t0 + seconds) for n in range(clients)))
        elapsed = time.monotonic() - t0
    lat = np.array(latencies) * 1000
    return {"rate": len(latencies) / elapsed, "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"), "n": len(latencies),
            "wrong": wrong, "failed": failed}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a judge folder (default: teach the tests' tiny tone judge)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per setting")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model or str(teach_tone_judge(root / "judge"))
        t = base64.b64encode(write(root / "tone.wav", tone(1.0, 523.0)).read_bytes()).decode()
        n = base64.b64encode(write(root / "noise.wav", noise(1.2, seed=1)).read_bytes()).decode()

        def body(a: str, b: str) -> dict:
            return {"question": TONE_QUESTION, "aspect": "helpfulness", "audio_1": {"data": a}, "audio_2": {"data": b}}

        probes = [(body(t, n), "1"), (body(n, t), "2")]
        results: dict[tuple[int, int], dict] = {}
        for batch in BATCH_SIZES:
            proc, url = start(model, batch, root / f"server-{batch}.log")
            try:
                for clients in CLIENTS:
                    results[batch, clients] = r = asyncio.run(drive(url, probes, clients, args.seconds))
                    print(f"--max-batch-size {batch}  {clients:3d} clients: {r['rate']:7.1f} judgments/s  "
                          f"p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  ({r['n']} judged, {r['wrong']} wrong, "
                          f"{r['failed']} not 200)", flush=True)  # fmt: skip
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        print()
        print("| clients | batch 8: judgments/s | p50 ms | p99 ms | batch 1: judgments/s | p50 ms | p99 ms | ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for c in CLIENTS:
            a, b = results[8, c], results[1, c]
            print(f"| {c} | {a['rate']:.1f} | {a['p50']:.0f} | {a['p99']:.0f} | {b['rate']:.1f} | {b['p50']:.0f} | "
                  f"{b['p99']:.0f} | {a['rate'] / b['rate']:.2f}x |")


if __name__ == "__main__":
    main()
