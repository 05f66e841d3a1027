"""vLLM benchmark on the CPU, measured side by side in one run (in .venv-vllm: `make bench-vllm`, or
`VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/bench_vllm.py`).

A tiny taught tone judge (full Qwen2.5-Omni checkpoint, head_dim 32) judges the same 64 pairs x 4 aspects
(256 judgments) with
  (a) vLLM, our defaults: greedy, vLLM's scheduler batching every prompt it is given;
  (b) vLLM, --preset authors: the authors' vllm_infer.py run (T 0.95, top-p 0.7, top-k 50, max_num_seqs=1),
      three seeds (42, 123, 1234), each a run of its own as they ran it (so no seed reuses another's cached
      audio features);
  (c) hf (transformers), greedy, batched 16 at a time.
Each run is a subprocess of its own (one engine per process). Engine start is timed apart, and each run first
judges WARMUP_PAIRS pairs of other clips untimed (first-call costs), so neither is in judgments/s. Prints a
table of judgments/s and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' taught tone judge and clips (conftest helpers)

N_PAIRS = 64
WARMUP_PAIRS = 8  # other clips, judged untimed before each run
AUTHORS_SEEDS = (42, 123, 1234)  # the seeds of the authors' three runs
HF_BATCH = 16
ALL_AT_ONCE = 1 << 20  # chunk size that hands vLLM every prompt in one call: its scheduler does the batching


def pairs(folder: Path, name: str, n_pairs: int, seed: int) -> Path:
    """A JSONL data file of `n_pairs` distinct tone-vs-noise pairs (the tone first in half of them)."""
    import numpy as np
    from conftest import TONE_QUESTION, noise, tone, write

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        t = write(folder / f"{name}/t{i}.wav", tone(rng.uniform(0.5, 1.8), rng.uniform(250, 900)))
        n = write(folder / f"{name}/n{i}.wav", noise(rng.uniform(0.5, 1.8), seed=seed * 1000 + i))
        a, b = (t, n) if i % 2 == 0 else (n, t)
        rows.append({"id": f"{name}{i}", "instruction": TONE_QUESTION, "audio_1": str(a), "audio_2": str(b),
                     "label": "1" if i % 2 == 0 else "2"})  # fmt: skip
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def build(folder: Path) -> tuple[Path, Path, Path]:
    """The taught judge, the measured pairs and the warm-up pairs."""
    from conftest import teach_tone_judge

    from sagelm.tiny import TinySpec

    model = teach_tone_judge(folder / "judge", spec=TinySpec(hidden_size=64, heads=2, kv_heads=1), layout="full")
    return model, pairs(folder, "pairs", N_PAIRS, seed=0), pairs(folder, "warmup", WARMUP_PAIRS, seed=1)


RUNS = [("vllm-ours", None)] + [("vllm-authors", s) for s in AUTHORS_SEEDS] + [("hf-batched", None)]


def one(config: str, seed: int | None, model: str, data: str, warmup: str) -> dict:
    """Judge every task of `data` (4 semantic aspects per pair) with `config`; what it took."""
    from sagelm.data import read_pairs
    from sagelm.decoding import PRESET_ENGINE_SETTINGS, DecodingOptions, preset
    from sagelm.judge import Judge, plan

    backend, options, settings, chunk = {
        "vllm-ours": ("vllm", DecodingOptions(), {}, ALL_AT_ONCE),
        "vllm-authors": ("vllm", preset("authors"), PRESET_ENGINE_SETTINGS["authors"], ALL_AT_ONCE),
        "hf-batched": ("hf", DecodingOptions(), {}, HF_BATCH),
    }[config]
    options = options.replace(seed=seed) if seed is not None else options
    t0 = time.perf_counter()
    judge = Judge.from_pretrained(model, options, backend=backend, **settings)
    start = time.perf_counter() - t0
    for _ in judge.judge(list(plan(read_pairs(Path(warmup)))), chunk):
        pass
    tasks = list(plan(read_pairs(Path(data))))
    t = time.perf_counter()
    records = [r for batch in judge.judge(tasks, chunk) for r in batch]
    seconds = time.perf_counter() - t
    tokens, right = sum(r.new_tokens or 0 for r in records), sum(r.verdict == r.label for r in records)
    return {"config": config, "judgments": len(records), "seconds": seconds, "start_s": start, "tokens": tokens,
            "right": right}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.seed, args.model, args.data, args.warmup)))
        return
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model, data, warmup = build(Path(tmp))
        for config, seed in RUNS:
            cmd = [sys.executable, __file__, "--one", config, "--model", str(model), "--data", str(data),
                   "--warmup", str(warmup)] + ([] if seed is None else ["--seed", str(seed)])  # fmt: skip
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{config} failed:\n{p.stderr[-3000:]}")
            r = json.loads(line.removeprefix("RESULT "))
            total = results.setdefault(config, {"runs": 0, "judgments": 0, "seconds": 0.0, "start_s": 0.0,
                                                "tokens": 0, "right": 0})  # fmt: skip
            total["runs"] += 1
            for k in ("judgments", "seconds", "start_s", "tokens", "right"):
                total[k] += r[k]
    for r in results.values():
        r["start_s"] /= r["runs"]
        r["tokens_per_judgment"], r["accuracy"] = r["tokens"] / r["judgments"], r["right"] / r["judgments"]
    rate = {c: r["judgments"] / r["seconds"] for c, r in results.items()}
    print(f"tiny taught judge, {N_PAIRS} pairs x 4 aspects = {N_PAIRS * 4} judgments per run, CPU "
          f"({os.cpu_count()} cores)")  # fmt: skip
    print(f"{'configuration':<44}{'runs':>5}{'judgments/s':>13}{'tokens/judg.':>14}{'accuracy':>10}{'start s':>9}")
    names = {"vllm-ours": "vLLM, ours (greedy, scheduler batching)",
             "vllm-authors": "vLLM, --preset authors (max_num_seqs=1)", "hf-batched": f"hf, greedy, batch {HF_BATCH}"}
    for c, r in results.items():
        print(f"{names[c]:<44}{r['runs']:>5}{rate[c]:>13.1f}{r['tokens_per_judgment']:>14.1f}{r['accuracy']:>10.3f}"
              f"{r['start_s']:>9.1f}")  # fmt: skip
    print(f"vLLM ours / vLLM authors: {rate['vllm-ours'] / rate['vllm-authors']:.1f}x judgments/s "
          f"({rate['vllm-ours'] / rate['vllm-authors'] * len(AUTHORS_SEEDS):.1f}x per final answer of three seeds)")
    print(f"vLLM ours / hf batched  : {rate['vllm-ours'] / rate['hf-batched']:.1f}x judgments/s")


if __name__ == "__main__":
    main()
