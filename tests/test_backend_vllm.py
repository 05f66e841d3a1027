"""The vLLM engine against the hf engine on one taught tiny full checkpoint (run in .venv-vllm: `make test-vllm`).

One vLLM engine per module (it takes ~20-40 s to start); the hf engine loads the same folder (conftest:
full_judge_dir, shared with the vLLM server's tests). The largest
hf-vs-vLLM probability difference is logged (pytest -s, or -o log_cli=true) for the README.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TONE_QUESTION

from sagelm.data import Pair
from sagelm.decoding import DecodingOptions, preset
from sagelm.judge import Judge, Task

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here: `make test-vllm` runs these"
    ),
]

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
logger = logging.getLogger(__name__)

PROB_TOLERANCE = 1e-3  # hf vs vLLM first-step probabilities (vLLM's audio tower runs without flash-attn here)
GREEDY = DecodingOptions(max_new_tokens=16)
PAIRS = [("tone", "noise"), ("noise_short", "tone_long"), ("tone_long", "noise"), ("noise", "tone")]


@pytest.fixture(scope="module")
def vllm_engine(full_judge_dir):
    from sagelm.backends import load_backend

    engine = load_backend("vllm", str(full_judge_dir))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(full_judge_dir):
    from sagelm.backends import load_backend

    return load_backend("hf", str(full_judge_dir))


def _tasks(clips) -> list[Task]:
    return [
        Task(Pair(f"{a}-{b}", TONE_QUESTION, str(clips[a]), str(clips[b])), "helpfulness", swapped)
        for a, b in PAIRS
        for swapped in (False, True)
    ]


def _run(engine, clips, options: DecodingOptions, batch_size: int = 4):
    judge = Judge(engine, options)
    return [r for batch in judge.judge(_tasks(clips), batch_size) for r in batch]


def _largest_difference(ours, theirs) -> float:
    pairs = zip(ours, theirs, strict=True)
    return max(abs(a.probabilities[k] - b.probabilities[k]) for a, b in pairs for k in ("1", "2", "Tie"))


def test_protocol(vllm_engine, clips):
    from sagelm.backends import JudgeBackend, RawJudgment, Request
    from sagelm.backends.vllm import VLLMBackend

    assert isinstance(vllm_engine, VLLMBackend) and isinstance(vllm_engine, JudgeBackend)
    assert vllm_engine.name == "vllm" and vllm_engine.judge([], GREEDY) == []
    judge = Judge(vllm_engine, GREEDY)
    req = judge.request(_tasks(clips)[0])
    assert isinstance(req, Request)
    (raw,) = vllm_engine.judge([req], GREEDY)
    assert isinstance(raw, RawJudgment)
    assert "<|im_end|>" not in raw.text and raw.new_tokens == len(vllm_engine.tokenizer.encode(raw.text)) + 1
    assert set(raw.probabilities) == {"1", "2", "Tie"} and sum(raw.probabilities.values()) == pytest.approx(1.0)


def test_greedy_parity_with_hf_in_both_orders(vllm_engine, hf_engine, clips):
    ours, theirs = _run(vllm_engine, clips, GREEDY), _run(hf_engine, clips, GREEDY)
    assert [r.verdict for r in ours] == [r.verdict for r in theirs]
    assert [r.rationale for r in ours] == [r.rationale for r in theirs]
    assert [(r.raw, r.new_tokens, r.swapped) for r in ours] == [(r.raw, r.new_tokens, r.swapped) for r in theirs]
    diff = _largest_difference(ours, theirs)
    logger.warning("hf vs vLLM: largest first-step probability difference %.2e over %d judgments", diff, len(ours))
    assert diff < PROB_TOLERANCE


def test_verdict_only_parity_with_hf(vllm_engine, hf_engine, clips):
    options = DecodingOptions(verdict_only=True)
    ours, theirs = _run(vllm_engine, clips, options, 8), _run(hf_engine, clips, options, 8)
    assert all(r.new_tokens == 1 and r.rationale is None for r in ours)
    assert [(r.verdict, r.raw) for r in ours] == [(r.verdict, r.raw) for r in theirs]
    diff = _largest_difference(ours, theirs)
    logger.warning("hf vs vLLM, verdict-only: largest probability difference %.2e", diff)
    assert diff < PROB_TOLERANCE


def test_probe_pair_is_answered_right(vllm_engine, clips):
    """The tone beats the noise in either position, and the swapped judgment is mapped back."""
    judge = Judge(vllm_engine, GREEDY)
    plain, swapped = judge.compare(TONE_QUESTION, clips["tone"], clips["noise"], ["helpfulness"], both_orders=True)
    assert plain.raw.startswith("1\n") and plain.verdict == "1" and plain.probabilities["1"] > 0.8
    assert swapped.raw.startswith("2\n") and swapped.verdict == "1" and swapped.probabilities["1"] > 0.8
    assert plain.backend == "vllm" and plain.rationale == "Response 1 is the tone."


def test_records_have_hf_records_shape(vllm_engine, hf_engine, clips):
    (ours,) = Judge(vllm_engine, GREEDY).compare(TONE_QUESTION, clips["tone"], clips["noise"], ["helpfulness"])
    (theirs,) = Judge(hf_engine, GREEDY).compare(TONE_QUESTION, clips["tone"], clips["noise"], ["helpfulness"])
    a, b = json.loads(ours.to_json()), json.loads(theirs.to_json())
    assert list(a) == list(b)
    assert {k for k in a if a[k] != b[k]} <= {"backend", "key", "probabilities"}
    assert (a["backend"], b["backend"]) == ("vllm", "hf") and a["key"] != b["key"]


def test_sampled_preset_is_seeded_per_request(vllm_engine, clips):
    options = preset("authors").replace(seed=42, max_new_tokens=8)
    first, again = _run(vllm_engine, clips, options, 8), _run(vllm_engine, clips, options, 2)
    assert [r.raw for r in first] == [r.raw for r in again]  # whatever the batching


def test_thinker_only_folder_is_one_line(tiny_dir):
    from sagelm.backends import load_backend
    from sagelm.errors import SagelmError

    with pytest.raises(SagelmError) as e:
        load_backend("vllm", str(tiny_dir))
    message = str(e.value)
    assert "\n" not in message and "thinker-only" in message and f"sagelm merge {tiny_dir}" in message


SAGELM = str(Path(sys.executable).with_name("sagelm"))


def test_cli_bad_rows_go_on_and_resume_across_backends(full_judge_dir, clips, tmp_path):
    rows = [
        {"id": "p0", "instruction": TONE_QUESTION, "audio_1": str(clips["tone"]), "audio_2": str(clips["noise"])},
        {"id": "missing", "instruction": "Q", "audio_1": str(tmp_path / "nope.wav"), "audio_2": str(clips["tone"])},
        {"id": "broken", "instruction": "Q"},
        {"id": "p1", "instruction": TONE_QUESTION, "audio_1": str(clips["noise"]), "audio_2": str(clips["tone"])},
    ]
    (tmp_path / "bad.wav").write_text("not audio")
    rows.insert(3, {"id": "bad", "instruction": "Q", "audio_1": str(tmp_path / "bad.wav"),
                    "audio_2": rows[0]["audio_1"]})  # fmt: skip
    data, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["judge", "--data", str(data), "--output", str(out), "--model", str(full_judge_dir), "--aspect",
            "helpfulness", "--max-new-tokens", "12", "--batch-size", "8"]  # fmt: skip
    subprocess.run([SAGELM, *args, "--backend", "hf"], env=env, check=True, capture_output=True, text=True)
    p = subprocess.run([SAGELM, *args, "--backend", "vllm"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    by_backend = {b: [r for r in records if r.get("backend") == b] for b in ("hf", "vllm")}
    # the vLLM run did not take the hf run's records for its own: every row judged (or refused) again
    assert [r["id"] for r in by_backend["vllm"]] == ["p0", "missing", "bad", "p1"]
    assert [r["verdict"] for r in by_backend["vllm"]] == ["1", None, None, "2"]
    assert [r["verdict"] for r in by_backend["hf"] if r["id"] != "broken"] == ["1", None, None, "2"]
    vllm_errors = {r["id"]: r["error"] for r in by_backend["vllm"] if r["error"]}
    assert vllm_errors["missing"] == f"{tmp_path / 'nope.wav'}: no such file"
    assert vllm_errors["bad"].startswith(f"{tmp_path / 'bad.wav'}: not readable as audio")
    assert sum(r["id"] == "broken" for r in records) == 1  # a bad row's record is engine-independent
