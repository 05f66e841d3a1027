"""The cascade backend end to end: espeak-ng speech -> the embedded Whisper base -> a text judge over HTTP.

The text judge is the tests' own OpenAI-compatible server (chat_server.py), which prefers the transcript holding
"banana" and injects faults on demand; the recogniser, the prompt, the parser, the records and the resume are
sagelm's own.
"""

import json
import os
import shutil
import subprocess

import pytest
from chat_server import ChatServer
from conftest import REPO

from sagelm import synth
from sagelm.asr import embedded_model_dir
from sagelm.cache import cache_root
from sagelm.judge import Judge
from sagelm.prompts import SYSTEM_PROMPT, instruction_prompt

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (make system-deps)")
SAGELM = shutil.which("sagelm") or str(REPO / ".venv" / "bin" / "sagelm")
# Said by espeak-ng's m3 voice, Whisper base hears these right (not "I ate a banana for breakfast.", which it
# hears as "I ate them and a forbric first.": the recognition errors the cascade baseline is known for).
SAYINGS = {f: f"My favourite fruit is the {f}." for f in ("banana", "apple", "cherry")}


@pytest.fixture(scope="module")
def fruit(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("fruit")
    return {k: str(synth.speak(text, "m3", d / f"{k}.wav")) for k, text in SAYINGS.items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A sagelm cache of its own (transcripts, responses) that shares the assembled Whisper base."""
    root = tmp_path_factory.mktemp("cache")
    embedded_model_dir("base")
    (root / "models").symlink_to(cache_root() / "models")
    return root


def test_judging_a_pair_transcribes_each_clip_once(fruit, cache):
    with ChatServer() as server:
        judge = Judge.from_pretrained(backend="cascade", text_judge=server.url, text_model="tiny",
                                      cache_dir=cache / "api")  # fmt: skip
        records = judge.compare("Which fruit?", fruit["banana"], fruit["apple"], both_orders=True)
        assert len(records) == 8 and judge.backend.transcriber.misses == 2 and judge.backend.transcriber.hits == 14
        assert [r.verdict for r in records] == ["1"] * 8  # both orders, mapped back to the original numbering
        first, swapped = records[0], records[1]
        t_banana, t_apple = first.transcripts
        assert "banana" in t_banana.lower() and "apple" in t_apple.lower()
        assert swapped.swapped and swapped.transcripts == [t_banana, t_apple]  # the record's own order
        assert first.probabilities["1"] == pytest.approx(0.7 / 0.9) and swapped.probabilities["1"] == pytest.approx(
            0.7 / 0.9)
        assert first.usage["prompt_tokens"] > 0 and first.new_tokens == first.usage["completion_tokens"]
        assert first.backend == "cascade" and first.model == "cascade:base+tiny"
        body = server.requests[0]["body"]
        want = instruction_prompt(first.aspect, "Which fruit?").split("<audio>")
        assert body["messages"] == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": want[0] + t_banana + want[1] + t_apple + want[2]},
        ]
        assert body["model"] == "tiny" and body["temperature"] == 0.0 and body["logprobs"] is True
        judge.close()


def _sagelm(*args, cache, check=True):
    env = {**os.environ, "SAGELM_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    p = subprocess.run([SAGELM, *map(str, args)], capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr}")
    return p


def test_a_dataset_run_with_faults_bad_rows_and_a_rerun(fruit, cache, tmp_path):
    rows = [
        {"id": "r0", "instruction": "Which fruit? (r0)", "audio_1": fruit["banana"], "audio_2": fruit["apple"],
         "label": "1"},
        {"id": "r1", "instruction": "Which fruit? (r1)", "audio_1": fruit["apple"], "audio_2": fruit["banana"],
         "label": "2"},
        {"id": "r2", "instruction": "Which fruit? (r2)", "audio_1": fruit["apple"], "audio_2": fruit["cherry"],
         "label": "Tie"},
        {"id": "missing", "instruction": "Q", "audio_1": str(tmp_path / "nope.wav"), "audio_2": fruit["apple"]},
        {"id": "down", "instruction": "Which fruit? (down)", "audio_1": fruit["banana"], "audio_2": fruit["apple"]},
        {"id": "flaky", "instruction": "Which fruit? (flaky)", "audio_1": fruit["cherry"], "audio_2": fruit["banana"],
         "label": "2"},
    ]  # fmt: skip
    data, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ChatServer(retry_after="0") as server:
        server.faults["(down)"] = ["429"] * 1000  # every attempt of every judgment of this row
        server.faults["(flaky)"] = ["drop", "429", "badjson"]
        args = ["judge", "--backend", "cascade", "--text-judge", server.url, "--text-model", "tiny", "--data", data,
                "--output", out, "--both-orders", "--concurrency", "3"]  # fmt: skip
        _sagelm(*args, cache=cache)
        records = [json.loads(x) for x in out.read_text().splitlines()]
        keys = [(r["id"], r["aspect"], r["swapped"]) for r in records]
        assert len(keys) == len(set(keys)) == 6 * 8  # every judgment once (4 aspects x 2 orders a row)
        by_id: dict[str, list] = {}
        for r in records:
            by_id.setdefault(r["id"], []).append(r)
        assert {r["verdict"] for r in by_id["r0"]} == {"1"} and {r["verdict"] for r in by_id["r1"]} == {"2"}
        assert {r["verdict"] for r in by_id["r2"]} == {"Tie"} and {r["verdict"] for r in by_id["flaky"]} == {"2"}
        assert {r["error"] for r in by_id["missing"]} == {f"{tmp_path / 'nope.wav'}: no such file"}
        assert all("failed after 6 attempts: HTTP 429" in r["error"] for r in by_id["down"])
        assert all(r["transcripts"] and r["verdict"] is None for r in by_id["down"])
        calls = len(server.requests)
        assert calls == 4 * 8 + 6 * 8 + 3  # judged rows once each, "down" 6 attempts each, "flaky" 3 faults more

        _sagelm(*args, cache=cache)  # a rerun tries again only what failed: the row the server never answered
        assert len(server.requests) == calls + 6 * 8
        again = [json.loads(x) for x in out.read_text().splitlines()]
        assert [r for r in again if r["error"] is None] == [r for r in records if r["error"] is None]
        assert len(again) == len(records) + 2 * 8  # "down" and "missing": new error records that supersede theirs
        out.unlink()  # the same run into a new file: every answer from the response cache
        _sagelm(*args, cache=cache)
        assert len(server.requests) == calls + 2 * 6 * 8  # only the row that never got an answer is asked again

    scored = json.loads(_sagelm("eval", tmp_path / "out.jsonl", "--json", cache=cache).stdout)
    # scored like SageLM's records: the 4 labelled rows x 4 aspects, each order's verdict agreeing with the label
    assert scored["overall"]["n"] == 16 and scored["overall"]["accuracy"] == 1.0 and scored["overall"]["kappa"] == 1.0
    assert set(scored["groups"]) >= {"helpfulness", "honesty", "instruction_following"}


def test_cascade_flags_are_checked_before_any_work(fruit, cache, tmp_path):
    p = _sagelm("judge", "--backend", "cascade", "--instruction", "Q", fruit["banana"], fruit["apple"], cache=cache,
                check=False)  # fmt: skip
    assert p.returncode == 2 and "--text-judge URL and --text-model NAME" in p.stderr
    bad = tmp_path / "t.txt"
    bad.write_text("Judge {question}: {response_1}")
    p = _sagelm("judge", "--backend", "cascade", "--text-judge", "http://127.0.0.1:9", "--text-model", "m",
                "--text-prompt", bad, "--instruction", "Q", fruit["banana"], fruit["apple"], cache=cache,
                check=False)  # fmt: skip
    assert p.returncode == 1 and "lacks {response_2}" in p.stderr and p.stderr.count("\n") == 1


def test_a_text_prompt_template_and_the_transcribe_command(fruit, cache, tmp_path):
    template = tmp_path / "t.txt"
    template.write_text("Aspect {aspect}. Q: {question}\n### Response 1:\n{response_1}\n### Response 2:\n{response_2}")
    with ChatServer() as server:
        p = _sagelm("judge", "--backend", "cascade", "--text-judge", server.url, "--text-model", "m", "--text-prompt",
                    template, "--instruction", "Which?", fruit["apple"], fruit["banana"], "--aspect", "helpfulness",
                    "--json", cache=cache)  # fmt: skip
        (record,) = [json.loads(x) for x in p.stdout.splitlines()]
        assert record["verdict"] == "2" and record["model"].startswith("cascade:base+m+prompt:")
        sent = server.requests[0]["body"]["messages"][1]["content"]
        assert sent == (f"Aspect helpfulness. Q: Which?\n### Response 1:\n{record['transcripts'][0]}\n### Response 2:\n"
                        f"{record['transcripts'][1]}")  # fmt: skip
    p = _sagelm("transcribe", fruit["banana"], tmp_path / "nope.wav", "--json", cache=cache, check=False)
    ok, bad = [json.loads(x) for x in p.stdout.splitlines()]
    assert p.returncode == 1 and "banana" in ok["text"].lower() and ok["words"] == len(ok["text"].split())
    assert ok["seconds"] > 1 and ok["words_per_second"] == pytest.approx(ok["words"] / ok["seconds"], abs=1e-3)
    assert bad["error"].endswith("nope.wav: no such file")
