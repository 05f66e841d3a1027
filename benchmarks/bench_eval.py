"""`sagelm eval` on 400,000 rows vs the authors' approach to scoring (run on demand).

Two shapes of data: `distinct` (every row its own pair and question, as in a large judge log) and `repeated`
(the released semantic rows over and over, so pairs repeat); `python benchmarks/bench_eval.py [SHAPE ...]`.

The baseline below does what the authors' semantic script (IronBeliever/SageLM, LLaMA-Factory/judge-eval/)
does: load the reference JSON and the predictions whole, then one loop comparing first characters. Each
contender runs in its own process, which prints its wall time and peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

N = 400_000
CHILD = r"""
import json, sys, time
t = time.perf_counter()
mode, ref, pred = sys.argv[1:4]
if mode == "baseline":
    gt = json.load(open(ref)); pr = [json.loads(l) for l in open(pred)]
    assert len(gt) == len(pr)
    score = {"1": 1, "2": -1, "T": 0}
    hits = [0] * 4; agree = [0.0] * 4
    for i, (g, p) in enumerate(zip(gt, pr)):
        a, b = g["output"][0], p["predict"][0]
        hits[i % 4] += a == b
        r1, r2 = score[a], score[b]
        agree[i % 4] += 1 if r1 == r2 else (0.5 if r1 * r2 == 0 else 0)
    out = [h * 400 / len(pr) for h in hits]
else:
    from sagelm import scoring
    if mode == "official":
        out = scoring.evaluate_official([pred], ref)
    elif mode == "default":
        out = scoring.evaluate([pred], ref)
    else:
        out = scoring.evaluate([pred])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak.
# A helper process sagelm forks to read predictions beside the reference counts too (its ru_maxrss: an upper
# bound, as it starts with the pages it shares with its parent).
import resource
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
helper = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mib": (hwm + helper) / 1024}))
"""


SHAPES = {
    "distinct": "each row its own pair and question (a large judge log)",
    "repeated": "the 728 released rows over and over (182 pairs, repeating)",
}


def rows_of(shape: str, release_rows: list[dict]) -> list[dict]:
    """N reference rows: the released ones repeated, or made distinct (question and audio paths numbered)."""
    rows = [release_rows[i % len(release_rows)] for i in range(N)]
    if shape == "repeated":
        return rows
    out = []
    for i, r in enumerate(rows):
        instruction = r["instruction"].replace("\n\n### Response 1:", f" (#{i})\n\n### Response 1:", 1)
        audios = [a.replace(".wav", f"-{i}.wav") for a in r["audios"]]
        out.append({**r, "instruction": instruction, "audios": audios})
    return out


def write_files(d: Path, rows: list[dict]) -> tuple[Path, Path, Path, Path]:
    from sagelm.prompts import find_aspect

    ref, pred, inline = d / "ref.json", d / "pred.jsonl", d / "judged.jsonl"
    ref.write_text(json.dumps(rows))
    with pred.open("w") as f, inline.open("w") as g:
        for i, r in enumerate(rows):
            v = r["output"].split("\n")[0] if i % 5 else "1"
            row = {"prompt": r["instruction"], "predict": v + "\nBecause ...", "label": r["output"]}
            f.write(json.dumps(row) + "\n")
            label = r["output"].split("\n")[0]
            record = {"id": f"r{i}", "aspect": find_aspect(r["instruction"]), "verdict": v, "label": label,
                      "swapped": False, "probabilities": None, "raw": v + "\nBecause ...",
                      "audio_1": r["audios"][0], "audio_2": r["audios"][1]}  # fmt: skip
            g.write(json.dumps(record) + "\n")
    small = d / "judged_small.jsonl"  # the first quarter: memory should not grow with the rows
    with inline.open() as g, small.open("w") as h:
        for i, line in enumerate(g):
            if i == N // 4:
                break
            h.write(line)
    return ref, pred, inline, small


def run_shape(shape: str, release_rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as d:
        ref, pred, inline, small = write_files(Path(d), rows_of(shape, release_rows))
        mib = 2**20
        sizes = ref.stat().st_size / mib, pred.stat().st_size / mib
        print(f"\n{shape}: {SHAPES[shape]}")
        print(f"{N:,} rows; reference {sizes[0]:.0f} MiB, predictions {sizes[1]:.0f} MiB")
        runs = [("authors' approach (baseline)", "baseline", pred), ("sagelm eval --compat official", "official", pred),
                ("sagelm eval --reference (full report)", "default", pred),
                ("sagelm eval, labels inside the records", "inline", inline),
                (f"  same, first {N // 4:,} rows only", "inline", small)]
        results = {}
        for name, mode, p in runs:
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(ref), str(p)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        base = results["authors' approach (baseline)"]
        for name, r in results.items():
            print(f"{name:42s} {r['seconds']:6.2f} s  peak {r['peak_mib']:7.0f} MiB   "
                  f"time x{r['seconds'] / base['seconds']:.2f}  memory x{r['peak_mib'] / base['peak_mib']:.2f}")


def main() -> None:
    from sagelm.demo import release_candidates

    folder = next((c for c in release_candidates() if c.is_dir()), None)
    if folder is None:
        raise SystemExit("the released SageLM data was not found; set SAGELM_RELEASE to its folder")
    release_rows = json.loads((folder / "test_semantic.json").read_text())
    shapes = sys.argv[1:] or list(SHAPES)
    for shape in shapes:
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        run_shape(shape, release_rows)


if __name__ == "__main__":
    main()
