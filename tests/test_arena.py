"""sagelm arena end to end: systems of known quality ranked by a tiny judge that really hears (tone beats noise),
a judge that knows only position, validation, resume, recomputation and the report in a real browser."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TONE_QUESTION, noise, tone, write

SAGELM = shutil.which("sagelm") or str(REPO / ".venv" / "bin" / "sagelm")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "2"}
QUALITY = {"s90": 0.9, "s70": 0.7, "s40": 0.4, "s10": 0.1}
N_QUESTIONS = 40


def sagelm(*args, check=True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([SAGELM, *map(str, args)], capture_output=True, text=True, env=ENV, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr}")
    return p


def make_arena(root: Path, quality: dict[str, float], n: int, seed: int = 0) -> tuple[Path, Path]:
    """Questions and a folder per system: system s answers with a tone (the good kind) on round(q * n) of the
    n questions, chosen at random, and with noise on the rest; short clips of random length."""
    rng = np.random.default_rng(seed)
    qfile = root / "Q.jsonl"
    qfile.parent.mkdir(parents=True, exist_ok=True)
    qfile.write_text("".join(json.dumps({"id": f"q{i:02d}", "question": TONE_QUESTION, "aspect": "helpfulness"}) + "\n"
                             for i in range(n)))  # fmt: skip
    for name, q in quality.items():
        good = set(rng.permutation(n)[: round(q * n)].tolist())
        for i in range(n):
            secs = float(rng.uniform(0.5, 0.9))
            seed_i = int(rng.integers(1 << 30))
            clip = tone(secs, float(rng.uniform(300, 800))) if i in good else noise(secs, seed=seed_i)
            write(root / "systems" / name / f"q{i:02d}.wav", clip)
    return qfile, root / "systems"


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    return make_arena(tmp_path_factory.mktemp("arena"), QUALITY, N_QUESTIONS)


def ranked(board: dict) -> list[str]:
    return [r["system"] for r in board["overall"]]


def by_system(board: dict) -> dict[str, dict]:
    return {r["system"]: r for r in board["overall"]}


def test_a_judge_that_hears_ranks_known_quality_in_all_pairs(arena, tone_judge_dir, tmp_path):
    qfile, systems = arena
    out = tmp_path / "run"
    p = sagelm("arena", "--questions", qfile, "--systems", systems, "--output", out, "--model", tone_judge_dir,
               "--verdict-only", "--batch-size", 16)  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    assert json.loads(p.stdout) == board["overall"]
    assert ranked(board) == ["s90", "s70", "s40", "s10"]
    rows = by_system(board)
    assert rows["s90"]["rating_ci"][0] > rows["s10"]["rating_ci"][1]  # the extremes' intervals are apart
    assert rows["s90"]["win_rate_ci"][0] > rows["s10"]["win_rate_ci"][1]
    # without a baseline the mean rating is 1000; each system met the other three on 40 questions
    assert np.mean([r["rating"] for r in board["overall"]]) == pytest.approx(1000, abs=0.5)
    assert all(r["n"] == 3 * N_QUESTIONS for r in board["overall"])
    assert list(board["aspects"]) == ["helpfulness"]
    lines = (out / "judgments.jsonl").read_text().splitlines()
    assert len(lines) == 6 * N_QUESTIONS * 2  # 6 pairs x 40 questions x 2 orders
    rec = json.loads(lines[0])
    assert {rec["question_id"], rec["system_1"], rec["system_2"]} <= {"q00", *QUALITY}
    md = (out / "leaderboard.md").read_text()
    assert md.index("| s90 |") < md.index("| s10 |")


def test_a_judge_that_hears_ranks_known_quality_against_a_baseline(arena, tone_judge_dir, tmp_path):
    qfile, systems = arena
    out = tmp_path / "run"
    sagelm("arena", "--questions", qfile, "--systems", systems, "--output", out, "--model", tone_judge_dir,
           "--pairs", "baseline", "--baseline", "s40", "--verdict-only", "--batch-size", 16)  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    assert ranked(board) == ["s90", "s70", "s40", "s10"]
    rows = by_system(board)
    assert rows["s40"]["rating"] == 1000 and rows["s40"]["win_rate"] == 0.5
    assert rows["s90"]["rating_ci"][0] > rows["s10"]["rating_ci"][1]
    assert rows["s90"]["win_rate"] > 0.5 > rows["s10"]["win_rate"]
    assert rows["s90"]["n"] == N_QUESTIONS  # against the baseline only
    lines = (out / "judgments.jsonl").read_text().splitlines()
    assert len(lines) == 3 * N_QUESTIONS * 2
    assert all("s40" in (json.loads(x)["system_1"], json.loads(x)["system_2"]) for x in lines)


def test_a_judge_that_knows_only_position_gives_ties_and_no_ranking(arena, position_judge_dir, tmp_path):
    qfile, systems = arena
    out = tmp_path / "run"
    sagelm("arena", "--questions", qfile, "--systems", systems, "--output", out, "--model", position_judge_dir,
           "--pairs", "baseline", "--baseline", "s40", "--verdict-only", "--batch-size", 16)  # fmt: skip
    board = json.loads((out / "leaderboard.json").read_text())
    rows = board["overall"]
    verdicts = [json.loads(x)["verdict"] for x in (out / "judgments.jsonl").read_text().splitlines()]
    # it says Response 1 every time: mapped back, the swapped order says the other system, so every pair flips
    assert verdicts.count("1") == verdicts.count("2") == len(verdicts) / 2
    for r in rows:
        assert r["ties"] == r["n"] and r["wins"] == r["losses"] == 0
        assert r["flip_rate"] == 1.0
        assert r["win_rate"] == 0.5 and r["rating"] == pytest.approx(1000, abs=0.5)
        assert r["rating_ci"][0] <= 1000 <= r["rating_ci"][1]  # no system is told apart from any other


def test_validation_resume_and_recompute_without_judging(tone_judge_dir, tmp_path):
    qfile, systems = make_arena(tmp_path / "data", {"good": 0.9, "bad": 0.1, "gaps": 0.5}, 12, seed=3)
    (systems / "gaps" / "q03.wav").unlink()
    (systems / "gaps" / "q05.wav").write_bytes(b"not audio at all")
    out = tmp_path / "run"
    args = ["arena", "--questions", qfile, "--systems", systems, "--output", out, "--model", tone_judge_dir,
            "--max-new-tokens", "8", "--batch-size", "2"]  # fmt: skip
    proc = subprocess.Popen([SAGELM, *map(str, args)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "judgments.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 6):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = log.read_text().splitlines()
    planned = (3 * 12 - 2 * 2) * 2  # 3 pairs on 12 questions, minus gaps' two pairs on q03 and q05; 2 orders
    assert 6 <= len(first) < planned, "the run was to be killed midway"
    p = sagelm(*args)
    lines = log.read_text().splitlines()
    assert lines[: len(first)] == first
    keys = [json.loads(x)["key"] for x in lines]
    assert len(keys) == len(set(keys)) == planned  # the rerun judged only what was missing
    assert "gaps" in p.stderr and "q03" in p.stderr and "q05" in p.stderr
    board = json.loads((out / "leaderboard.json").read_text())
    problems = board["details"]["validation"]["gaps"]["problems"]
    assert problems["q03"] == "missing" and problems["q05"].startswith("not readable as audio")
    assert ranked(board)[0] == "good" and ranked(board)[-1] == "bad"
    # an existing RUN_DIR alone: recomputed from its judgments, no model loaded (this one does not exist)
    (out / "leaderboard.json").unlink()
    (out / "report.html").unlink()
    sagelm("arena", "--output", out, "--model", tmp_path / "no-such-model", "--bootstrap", "200")
    again = json.loads((out / "leaderboard.json").read_text())
    assert ranked(again) == ranked(board) and (out / "report.html").is_file()
    assert len(log.read_text().splitlines()) == planned


def test_user_errors_are_one_line(arena, tmp_path):
    qfile, systems = arena
    p = sagelm("arena", "--questions", qfile, "--systems", systems, "--output", tmp_path / "r", "--pairs",
               "baseline", "--baseline", "nobody", check=False)  # fmt: skip
    assert p.returncode == 1 and "nobody" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    bad = tmp_path / "Q.jsonl"
    bad.write_text('{"id": "a", "question": "x"}\n{"id": "a", "question": "y"}\n')
    p = sagelm("arena", "--questions", bad, "--systems", systems, "--output", tmp_path / "r", check=False)
    assert p.returncode == 1 and f"{bad} line 2" in p.stderr
    p = sagelm("arena", "--output", tmp_path / "nothing-here", check=False)
    assert p.returncode == 1 and "not an arena run folder" in p.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("SAGELM_ARTIFACTS", REPO / "runs" / "test-artifacts"))


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4, NUL-separated JSON)."""

    def __init__(self, tmp: Path):
        r_cmd, w_cmd = os.pipe()
        r_ev, w_ev = os.pipe()

        def to_3_and_4() -> None:  # in the child: the commands on fd 3, the answers on fd 4
            cmd, ev = os.dup(r_cmd), os.dup(w_ev)
            os.dup2(cmd, 3)
            os.dup2(ev, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--allow-file-access-from-files", "--mute-audio", f"--user-data-dir={tmp / 'profile'}", "about:blank"],
            preexec_fn=to_3_and_4, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(r_cmd)
        os.close(w_ev)
        self.w, self.r = os.fdopen(w_cmd, "wb"), os.fdopen(r_ev, "rb")
        self.n, self.events, self.buf = 0, [], b""

    def _read(self) -> dict:
        while b"\0" not in self.buf:
            chunk = self.r.read1(1 << 16)
            assert chunk, "chromium closed its pipe"
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params, **({"sessionId": session} if session else {})}
        self.w.write(json.dumps(msg).encode() + b"\0")
        self.w.flush()
        while True:
            m = self._read()
            if m.get("id") == self.n:
                assert "error" not in m, m
                return m["result"]
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            for m in self.events:
                if m.get("method") == method:
                    return m
            self.events.append(self._read())
        raise AssertionError(f"no {method} within {timeout} s")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_a_real_browser(tone_judge_dir, tmp_path):
    qfile, systems = make_arena(tmp_path / "data", {"alpha": 0.8, "beta": 0.5, "gamma": 0.2}, 6, seed=5)
    out = tmp_path / "run"
    sagelm("arena", "--questions", qfile, "--systems", systems, "--output", out, "--model", tone_judge_dir,
           "--max-new-tokens", "12", "--batch-size", 8, "--bootstrap", 200)  # fmt: skip
    b = Browser(tmp_path)
    try:
        target = b.send("Target.createTarget", url="about:blank")["targetId"]
        s = b.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            b.send(f"{domain}.enable", s)
        b.send("Emulation.setDeviceMetricsOverride", s, width=1400, height=2400, deviceScaleFactor=1, mobile=False)
        b.send("Page.navigate", s, url=(out / "report.html").as_uri())
        b.wait_event("Page.loadEventFired")
        time.sleep(0.3)

        def js(expr: str):
            return b.send("Runtime.evaluate", s, expression=expr, returnByValue=True)["result"]["value"]

        rows = js("Array.from(document.querySelectorAll('table.leaderboard[data-group=overall] tr.system-row'))"
                  ".map(tr => tr.dataset.system)")  # fmt: skip
        assert sorted(rows) == ["alpha", "beta", "gamma"]
        box = js("(() => {const r = document.getElementById('ratings-plot').getBoundingClientRect();"
                 "return [r.x, r.y + window.scrollY, r.width, r.height, document.getElementById('ratings-plot')"
                 ".naturalWidth]})()")  # fmt: skip
        assert box[2] > 100 and box[3] > 50 and box[4] > 0
        srcs = js("Array.from(document.querySelectorAll('audio')).map(a => a.src)")
        assert srcs and all(src.startswith("file://") for src in srcs)
        from urllib.parse import unquote, urlparse

        assert all(Path(unquote(urlparse(src).path)).is_file() for src in srcs)
        assert js("document.querySelectorAll('#questions tbody tr').length") == 3 * 6
        js("document.getElementById('filter-system').value = 'alpha';"
           "document.getElementById('filter-system').dispatchEvent(new Event('change'))")  # fmt: skip
        assert js("document.getElementById('shown').textContent") == str(2 * 6)
        import base64
        import io

        from PIL import Image

        clip = {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1}
        png = base64.b64decode(b.send("Page.captureScreenshot", s, format="png", clip=clip,
                                      captureBeyondViewport=True)["data"])  # fmt: skip
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
        assert (pixels < 200).mean() > 0.01  # drawn: marks and labels, not a blank box
        full = base64.b64decode(b.send("Page.captureScreenshot", s, format="png", captureBeyondViewport=True)["data"])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "arena_report.png").write_bytes(full)
        errors = [m for m in b.events if m.get("method") == "Runtime.exceptionThrown"
                  or (m.get("method") == "Runtime.consoleAPICalled" and m["params"]["type"] == "error")
                  or (m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error")]  # fmt: skip
        assert not errors, errors
    finally:
        b.close()


def test_the_plan_streams_360k_judgments_without_holding_them():
    import tracemalloc
    from itertools import islice

    from sagelm.arena import Answer, ArenaPlan, Question

    questions = [Question(f"q{i}", "Say something.") for i in range(1000)]  # no aspect: the four semantic ones
    systems = [f"sys{k}" for k in range(10)]
    answers = {s: {q.id: Answer(f"/x/{s}/{q.id}.wav", 1.0) for q in questions} for s in systems}
    answers["sys3"]["q7"] = Answer("/x/sys3/q7.wav", problem="missing")
    plan = ArenaPlan(questions, systems, answers)
    assert len(plan) == (45 * 1000 - 9) * 4 * 2  # sys3's 9 pairs on q7 are not planned
    tracemalloc.start()
    head = list(islice(iter(plan), 10))
    n = sum(1 for _ in plan)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == len(plan) and peak < 5_000_000  # a few KB in flight, not 360k tasks (~100 MB)
    (t0, m0), (t1, _) = head[0], head[1]
    assert (m0.question_id, m0.system_1, m0.system_2) == ("q0", "sys0", "sys1")
    assert (t0.aspect, t0.swapped, t1.swapped) == ("helpfulness", False, True)
    one = ArenaPlan(questions[:2], systems[:2], answers, both_orders=False)
    assert [m.system_1 for _, m in one][::4] == ["sys0", "sys1"]  # one order: who goes first alternates


def test_a_fifo_among_the_answers_is_reported_not_waited_on(tmp_path):
    import os

    import soundfile as sf

    from sagelm.arena import _check_answer

    os.mkfifo(tmp_path / "q1.wav")
    sf.write(str(tmp_path / "q2.wav"), np.full(16000, 0.1, dtype=np.float32), 16000)
    assert "not a regular file" in _check_answer(str(tmp_path / "q1.wav"), sf).problem
    assert _check_answer(str(tmp_path / "q2.wav"), sf).duration == 1.0
