"""sagelm arena: rating time and peak memory on synthetic verdicts, and what the arena adds to judging.

    python benchmarks/bench_arena.py            # all three parts
    python benchmarks/bench_arena.py rate       # (a) ratings + intervals only
    python benchmarks/bench_arena.py plan judge # (b) planning overhead per judgment, (c) end-to-end throughput

(a) 10 systems x 1,000 questions x 4 aspects x 2 orders (all pairs: 360,000 judgments) and 16 systems x 1,042
    questions (1,000,320): debiasing, Bradley-Terry ratings and win rates with 1,000 bootstrap replicates per
    aspect and overall, and the duration model; each size in its own process (wall time, VmHWM).
(b) The bookkeeping per judgment, model left out: the arena's two streaming passes over its plan (resume keys,
    then tasks with their systems) and the record copy with system_1/system_2/question_id, against
    `sagelm judge`'s (read the data file, plan, resume keys).
(c) A tiny random judge (verdict only, batch 8) judging the same pairs through the arena and through
    `sagelm judge --data`: judgments per second of each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
from sagelm.ratings import debias, rate
k, n_q, n_a, n_boot = map(int, sys.argv[1:5])
rng = np.random.default_rng(0)
ii, jj = np.triu_indices(k, 1)
n_p = len(ii)
q = np.repeat(np.arange(n_q), n_p * n_a * 2)
pi = np.tile(np.repeat(np.arange(n_p), n_a * 2), n_q)
asp = np.tile(np.repeat(np.arange(n_a), 2), n_q * n_p)
sw = np.tile([False, True], n_q * n_p * n_a)
a, b = ii[pi], jj[pi]
true = np.linspace(-1.5, 1.5, k)
p = 1 / (1 + np.exp(-(true[a] - true[b])))
u = rng.random(len(a))
v = np.where(u < 0.9 * p, 0, np.where(u < 0.9, 1, np.where(u < 0.97, 2, -1))).astype(np.int8)
durations = rng.uniform(2, 20, size=(n_q, k))
del p, u, pi
t = time.perf_counter()
c = debias(q, asp, a, b, sw, v, k, n_a)
for x in range(n_a):
    rate(c.subset(c.aspect == x), k, n_q, None, durations, n_boot)
r = rate(c, k, n_q, None, durations, n_boot)
seconds = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"judgments": len(v), "seconds": seconds, "peak_mib": hwm / 1024,
                  "order_ok": bool(np.all(np.diff(r.rating) > 0))}))
"""


def bench_rate() -> None:
    print("(a) ratings + 95% bootstrap intervals (1000 replicates) per aspect and overall, + duration model")
    for k, n_q in ((10, 1000), (16, 1042)):
        out = subprocess.run([sys.executable, "-c", CHILD, str(k), str(n_q), "4", "1000"], capture_output=True,
                             text=True, check=True)  # fmt: skip
        r = json.loads(out.stdout)
        print(f"    {k} systems x {n_q} questions x 4 aspects x 2 orders = {r['judgments']:,} judgments: "
              f"{r['seconds']:.2f} s, peak {r['peak_mib']:.0f} MiB (process total), ratings in true order: "
              f"{r['order_ok']}")  # fmt: skip


def _arena_data(root: Path, n_systems: int, n_questions: int, seconds: float = 0.5) -> tuple[Path, Path]:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    qfile = root / "Q.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i}", "question": "Which is better?", "aspect": "helpfulness"})
                             + "\n" for i in range(n_questions)))  # fmt: skip
    for s in range(n_systems):
        d = root / "systems" / f"sys{s}"
        d.mkdir(parents=True)
        for i in range(n_questions):
            sf.write(str(d / f"q{i}.wav"), (0.3 * rng.standard_normal(int(16000 * seconds))).astype("float32"), 16000)
    return qfile, root / "systems"


def _pairs_file(root: Path, plan) -> Path:  # the arena's pairs as `sagelm judge` JSONL rows, in the same order
    path = root / "pairs.jsonl"
    seen = set()
    with path.open("w") as f:
        for task, _ in plan:
            p = task.pair
            if p.id not in seen:
                seen.add(p.id)
                f.write(json.dumps({"id": p.id, "instruction": p.question, "audio_1": p.audio_1,
                                    "audio_2": p.audio_2, "aspect": p.aspect}) + "\n")  # fmt: skip
    return path


def bench_plan() -> None:
    from sagelm.arena import ArenaPlan, Meta, find_answers, read_questions
    from sagelm.data import BadRow, read_pairs
    from sagelm.decoding import DecodingOptions
    from sagelm.judge import TaskKeys, plan
    from sagelm.records import Judgment

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        qfile, systems = _arena_data(root, 10, 100, seconds=0.05)
        questions = read_questions(qfile)
        answers = find_answers(systems, questions)
        arena_plan = ArenaPlan(questions, list(answers), answers, "all", None, ["helpfulness", "honesty"], True)
        n = len(arena_plan)
        pairs = _pairs_file(root, arena_plan)
        rec = Judgment(id="x", aspect="helpfulness", verdict="1", key="k" * 32)
        keys = TaskKeys("tiny", DecodingOptions())
        for t, _ in arena_plan:  # hash each audio file once before timing (both sides pay it once)
            keys(t)
        t0 = time.perf_counter()
        done: set[str] = set()
        todo = [keys(t) not in done for t, _ in arena_plan]
        for i, (t, m) in enumerate(arena_plan):
            if todo[i]:
                keys(t)  # the judge makes each record's key again, as in `sagelm judge`
                rec.model_copy(update={"question_id": m.question_id, "system_1": m.system_1, "system_2": m.system_2})
        arena_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        items = [x for p in read_pairs(pairs) if not isinstance(p, BadRow)
                 for x in plan([p], ["helpfulness", "honesty"], True)]  # fmt: skip
        todo2 = [t for t in items if keys(t) not in done]
        for t in todo2:
            keys(t)
            Meta("q", "a", "b")  # nothing: keep the loops alike
        judge_s = time.perf_counter() - t0
        assert len(todo2) == n
    print(f"(b) bookkeeping per judgment, model left out ({n:,} judgments: 10 systems, 100 questions, 2 aspects, "
          f"2 orders): arena {1e6 * arena_s / n:.1f} us, sagelm judge {1e6 * judge_s / n:.1f} us")  # fmt: skip


def bench_judge() -> None:
    import logging

    from sagelm.arena import ArenaConfig, ArenaPlan, find_answers, judge_plan, read_questions
    from sagelm.cli import _judge_dataset
    from sagelm.decoding import DecodingOptions
    from sagelm.tiny import build_tiny_judge

    logging.getLogger("sagelm").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = str(build_tiny_judge(root / "tiny"))
        qfile, systems = _arena_data(root, 4, 16)
        questions = read_questions(qfile)
        answers = find_answers(systems, questions)
        options = DecodingOptions(verdict_only=True)
        arena_plan = ArenaPlan(questions, list(answers), answers, "all", None, None, True)
        pairs = _pairs_file(root, arena_plan)
        n = len(arena_plan)
        config = ArenaConfig(root / "run", model=model, batch_size=8, options=options)
        results: dict[str, list[float]] = {"arena": [], "judge": []}
        for rep in range(3):  # alternate, so that a change in machine load hits both alike
            t0 = time.perf_counter()
            judge_plan(arena_plan, root / f"arena{rep}.jsonl", config, _null)
            results["arena"].append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            _judge_dataset(pairs, root / f"judge{rep}.jsonl", None, model, options, True, 8)
            results["judge"].append(n / (time.perf_counter() - t0))
    a, j = max(results["arena"]), max(results["judge"])
    print(f"(c) tiny random judge, verdict only, batch 8, {n} judgments (4 systems, 16 questions, 2 orders), "
          f"best of 3 each, model load included: arena {a:.1f}/s, sagelm judge {j:.1f}/s ({100 * (j - a) / j:+.1f}% "
          "arena overhead)")  # fmt: skip


def _null():
    from sagelm.arena import _progress_none

    return _progress_none()


if __name__ == "__main__":
    parts = sys.argv[1:] or ["rate", "plan", "judge"]
    for part in parts:
        {"rate": bench_rate, "plan": bench_plan, "judge": bench_judge}[part]()
