"""`sagelm judge --ray`: a dataset judged on Ray Data, as users run it (real `sagelm` subprocesses), on one local
Ray instance per module that the runs join by address (the way a cluster is joined), plus one `--ray` alone.

Faults are real: SIGKILL of a judge actor's process, SIGKILL of the driver."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TONE_QUESTION
from test_cli import ENV, SAGELM

ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'sagelm[ray]')")
pytestmark = pytest.mark.ray

ACTOR_TITLE = b"ray::MapWorker(MapBatches(_JudgeWorker))"  # the process title of a judge actor
# Actors at the tests' own priority on a busy 2-core machine; the token of the module's Ray (~/.ray/auth_token)
# sent to it, as Ray wants for an explicit address.
RAY_ENV = {**ENV, "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "token"}
DEADLINE_S = 240


@pytest.fixture(scope="module")
def ray_address():
    """One small local Ray instance for the module (2 CPUs, a 100 MB object store); runs join it by address."""
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def run(*args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([SAGELM, *map(str, args)], capture_output=True, text=True, env=env or RAY_ENV)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr}")
    return p


def _dataset(tmp_path: Path, clips, n: int, extra: list[dict] = ()) -> Path:
    rows = []
    for i in range(n):
        a, b = (clips["tone"], clips["noise"]) if i % 2 == 0 else (clips["noise_short"], clips["tone_long"])
        rows.append({"id": f"p{i}", "instruction": TONE_QUESTION, "audio_1": str(a), "audio_2": str(b),
                     "aspect": "helpfulness", "label": "1" if i % 2 == 0 else "2"})  # fmt: skip
    rows[1:1] = extra
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline and _lines(path) < n and proc.poll() is None:
        time.sleep(0.05)
    assert _lines(path) >= n, f"no {n} records in {DEADLINE_S} s (exit {proc.poll()})"


def _judge_actors() -> list[int]:
    """The pids of the judge actors of this test process's Ray instance (its descendants only)."""
    parent: dict[int, int] = {}
    titles: dict[int, bytes] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(d.name)] = (d / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [p for p, t in titles.items() if t.startswith(ACTOR_TITLE) and ours(p)]


def _args(data: Path, out: Path, model: Path, *more) -> list[str]:
    return ["judge", "--data", str(data), "--output", str(out), "--model", str(model), *map(str, more)]


def test_a_ray_run_writes_the_records_of_a_plain_run(ray_address, tone_judge_dir, clips, tmp_path):
    bad = [{"id": "missing", "instruction": TONE_QUESTION, "audio_1": "nope.wav", "audio_2": str(clips["tone"]),
            "aspect": "helpfulness"}, {"id": "broken", "instruction": "Q"}]  # fmt: skip
    data = _dataset(tmp_path, clips, 6, bad)
    common = ["--both-orders", "--batch-size", "2", "--max-new-tokens", "12"]
    plain, on_ray = tmp_path / "plain.jsonl", tmp_path / "ray.jsonl"
    run(*_args(data, plain, tone_judge_dir, *common))
    p = run(*_args(data, on_ray, tone_judge_dir, *common, "--ray", ray_address, "--workers", "2"))
    assert "Ray: 2 judge actor(s)" in p.stderr
    a, b = {r["key"]: r for r in _records(plain)}, {r["key"]: r for r in _records(on_ray)}
    assert len(a) == len(_records(plain)) == 2 * 7 + 1  # 7 pairs in both orders, one row that is not a pair
    assert a.keys() == b.keys() and len(b) == len(_records(on_ray))
    for key, r in a.items():
        s = b[key]
        probs_r, probs_s = r.pop("probabilities"), s.pop("probabilities")
        assert r == s
        if probs_r is None:
            assert probs_s is None
        else:  # float32 sums over 1 thread (an actor) vs 2 (the plain run): the last digits may differ
            assert probs_s == pytest.approx(probs_r, abs=1e-5)
    assert {r["id"]: r["error"] for r in a.values() if r["error"]} == {
        "missing": f"{tmp_path / 'nope.wav'}: no such file", "broken": f"{data} line 3: audio_1: Field required"}
    assert sorted(r["verdict"] for r in a.values() if r["id"].startswith("p")) == ["1"] * 6 + ["2"] * 6
    # sagelm eval reads either file the same way
    ev = [json.loads(run("eval", f, "--json").stdout) for f in (plain, on_ray)]
    assert ev[0]["overall"] == ev[1]["overall"] and ev[0]["overall"]["accuracy"] == 1.0
    # a rerun of the plain run's file on Ray judges again only the judgment that failed (its audio is missing)
    p = run(*_args(data, plain, tone_judge_dir, *common, "--ray", ray_address))
    assert "13 judgments already done, 2 to go" in p.stderr  # its two orders
    again = _records(plain)[15:]
    assert sorted((r["id"], r["swapped"], r["error"]) for r in again) == [
        ("missing", s, f"{tmp_path / 'nope.wav'}: no such file") for s in (False, True)]


def test_a_killed_actor_is_replaced_and_every_row_is_judged_once(ray_address, tiny_dir, clips, tmp_path):
    n = 24
    data, out = _dataset(tmp_path, clips, n), tmp_path / "out.jsonl"
    args = [SAGELM, *_args(data, out, tiny_dir, "--max-new-tokens", "40", "--ray", ray_address, "--workers", "2")]
    proc = subprocess.Popen(args, env=RAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(out, 3, proc)
        actors = _judge_actors()
        assert len(actors) == 2, f"judge actors: {actors}"
        os.kill(actors[0], signal.SIGKILL)
        killed_at = _lines(out)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert killed_at < n, "the actor was meant to be killed mid-run"
    records = _records(out)
    assert sorted(r["id"] for r in records) == sorted(f"p{i}" for i in range(n))
    assert len({r["key"] for r in records}) == n and not any(r["error"] for r in records)


def test_a_killed_driver_is_resumed_by_a_rerun(ray_address, tiny_dir, clips, tmp_path):
    n = 24
    data, out = _dataset(tmp_path, clips, n), tmp_path / "out.jsonl"
    args = _args(data, out, tiny_dir, "--max-new-tokens", "40", "--ray", ray_address, "--workers", "2")
    proc = subprocess.Popen([SAGELM, *args], env=RAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_lines(out, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _lines(out)
    assert 3 <= first < n, "the driver was meant to be killed mid-run"
    p = run(*args)
    assert f"{first} judgments already done, {n - first} to go" in p.stderr
    records = _records(out)
    assert sorted(r["id"] for r in records) == sorted(f"p{i}" for i in range(n))
    assert len({r["key"] for r in records}) == n


def test_ray_alone_starts_a_local_instance(tone_judge_dir, clips, tmp_path):
    data, out = _dataset(tmp_path, clips, 2), tmp_path / "out.jsonl"
    env = {k: v for k, v in RAY_ENV.items() if k != "RAY_ADDRESS"}
    p = run(*_args(data, out, tone_judge_dir, "--max-new-tokens", "12", "--ray"), env=env)  # --ray last: no value
    assert "Ray: 1 judge actor(s), each with 1 CPU" in p.stderr
    assert [r["verdict"] for r in sorted(_records(out), key=lambda r: r["id"])] == ["1", "2"]


def test_ray_flags_misused_are_one_line(ray_address, tone_judge_dir, clips, tmp_path):
    data, out = _dataset(tmp_path, clips, 2), tmp_path / "out.jsonl"
    p = run(*_args(data, out, tone_judge_dir, "--ray", ray_address, "--workers", "3"), check=False)
    assert p.returncode == 1 and p.stderr.strip().endswith(
        f"--workers 3: the cluster at {ray_address} has 2 CPU(s) for judge actors, 3 needed; pass --workers 2 "
        "or add nodes")  # fmt: skip
    assert p.stderr.count("sagelm: error:") == 1 and "Traceback" not in p.stderr
    p = run(*_args(data, out, tone_judge_dir, "--ray", "127.0.0.1:1"), check=False)
    assert p.returncode == 1 and "--ray 127.0.0.1:1: no Ray cluster there" in p.stderr, p.stderr
    p = run("judge", "--instruction", "Q", clips["tone"], clips["noise"], "--ray", check=False)
    assert p.returncode == 2 and "--ray and --workers judge a dataset" in p.stderr
