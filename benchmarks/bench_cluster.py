"""`sagelm judge --ray` against a plain `sagelm judge --data`: what Ray costs and what 2 actors give on one machine.

    python benchmarks/bench_cluster.py [PAIRS] [MAX_NEW_TOKENS]     # default 48 pairs, 32 tokens

A tiny random judge (sagelm.tiny, 0.1 M parameters) judges the same PAIRS pairs (batch 4) three ways, each as the
user runs it, in its own process, start-up included:
  plain      `sagelm judge --data` (one process, torch on every core)
  ray 1      `--ray --workers 1` (a local Ray started by the run: one actor)
  ray 2      `--ray --workers 2` (two actors, one core each)
Figures: wall time of the whole command, and the judging phase alone (from the first record written to the last,
read off OUT.jsonl's modification as it grows), judgments per second, and Ray's fixed cost (start-up, actor
start). Every run's records are checked to be the same judgments (keys) as the plain run's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SAGELM = shutil.which("sagelm") or str(Path(sys.executable).with_name("sagelm"))
SR = 16_000
BATCH = 4
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_worker_niceness": "0"}


def make_data(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        t = np.arange(int(SR * rng.uniform(0.6, 1.6))) / SR
        sf.write(folder / f"t{i}.wav", (0.5 * np.sin(2 * np.pi * rng.uniform(250, 900) * t)).astype(np.float32), SR)
        sf.write(folder / f"n{i}.wav", (0.3 * rng.standard_normal(len(t))).astype(np.float32), SR)
        rows.append({"id": f"p{i}", "instruction": "Which response is the pure tone?", "audio_1": f"t{i}.wav",
                     "audio_2": f"n{i}.wav", "aspect": "helpfulness", "label": "1"})  # fmt: skip
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def timed_run(args: list[str], out: Path) -> dict[str, float]:
    """Wall time of the command, and of its judging phase: first record line to last (polled every 10 ms)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([SAGELM, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = last = None
    seen = 0
    while proc.poll() is None:
        n = out.read_bytes().count(b"\n") if out.exists() else 0
        if n != seen:
            now = time.perf_counter()
            first, last, seen = first or now, now, n
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {proc.returncode}\n{err}")
    n = out.read_bytes().count(b"\n")
    if n != seen:
        last = time.perf_counter()
        first = first or last
    return {"wall": wall, "first": (first or t0) - t0, "judging": (last or t0) - (first or t0), "records": n}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    tokens = sys.argv[2] if len(sys.argv) > 2 else "32"
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        d = Path(tmp)
        data = make_data(d, n)
        subprocess.run([SAGELM, "tiny-model", str(d / "tiny")], env=ENV, check=True, capture_output=True)
        common = ["--data", str(data), "--model", str(d / "tiny"), "--batch-size", str(BATCH),
                  "--max-new-tokens", tokens]  # fmt: skip
        runs = {"plain": [], "ray 1": ["--ray", "--workers", "1"], "ray 2": ["--ray", "--workers", "2"]}
        results, keys = {}, {}
        for name, extra in runs.items():
            out = d / f"{name.replace(' ', '')}.jsonl"
            results[name] = timed_run(["judge", *common, "--output", str(out), *extra], out)
            keys[name] = sorted(json.loads(x)["key"] for x in out.read_text().splitlines())
        same = all(k == keys["plain"] for k in keys.values())
    load = os.getloadavg()[0]
    print(f"{n} pairs, batch {BATCH}, up to {tokens} new tokens, tiny random judge; {os.cpu_count()} cores, "
          f"load average {load:.1f} at the end; same judgments in every run: {same}")
    print(f"{'run':8} {'wall s':>8} {'to 1st record s':>16} {'judging s':>10} {'judgments/s':>12} {'vs plain':>9}")
    base = results["plain"]
    for name, r in results.items():
        rate = r["records"] / r["wall"]
        print(f"{name:8} {r['wall']:8.1f} {r['first']:16.1f} {r['judging']:10.1f} {rate:12.2f} "
              f"{r['wall'] / base['wall']:8.2f}x")
    ray2 = results["ray 2"]
    print(f"Ray's fixed cost (ray 2's time to its first record minus plain's): {ray2['first'] - base['first']:.1f} s; "
          f"judging phase ray 2 / plain: {ray2['judging'] / max(base['judging'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
