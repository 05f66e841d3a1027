"""The cascade backend end to end: espeak-ng speech -> the embedded Whisper base -> a text judge over HTTP.

The text judge is the tests' own OpenAI-compatible server (chat_server.py), which prefers the transcript holding
"banana" and injects faults on demand; the recogniser, the prompt, the parser, the records and the resume are
sagelm's own.
"""

import ast
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from chat_server import ChatServer
from conftest import REPO, free_port, wait_until_serving

from sagelm import synth
from sagelm.asr import embedded_model_dir
from sagelm.backends.cascade import text_prompt
from sagelm.cache import cache_root
from sagelm.judge import Judge
from sagelm.prompts import CHAT_TEMPLATE, SYSTEM_PROMPT, instruction_prompt

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


# -- against a real OpenAI-compatible server: vLLM's, from the vLLM environment (issue 11) ------------------------
# $SAGELM_VLLM_PYTHON (make test-vllm sets it), else the checkout's vLLM env once `make vllm` has finished it
VLLM_ENV = REPO / ".venv-vllm"
VLLM_PYTHON = Path(os.environ.get("SAGELM_VLLM_PYTHON") or VLLM_ENV / "bin" / "python")
VLLM_READY = bool(os.environ.get("SAGELM_VLLM_PYTHON")) or (VLLM_ENV / ".installed").is_file()
FRUIT_MODEL = "tiny-fruit"
VLLM_START_TIMEOUT_S = 300  # ~22 s on a quiet 2-core machine; importing vLLM and torch is most of it
OTHER_FRUITS = ("apple", "cherry", "pear", "plum", "mango", "grape", "lemon", "peach", "orange", "melon")
# the ChatML template of Qwen's tokenizers, for the tiny text judge's tokenizer (vLLM's server renders with it)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip


def teach_fruit_judge(folder: Path, steps: int = 500, seed: int = 0) -> Path:
    """A tiny Qwen2 text model taught, in ~15 s, to judge SageLM's prompt over two transcripts: the better
    response is the one that names the banana (in either position, on any semantic aspect)."""
    import random

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sagelm.aspects import ASPECTS
    from sagelm.backends.cascade import text_prompt
    from sagelm.tiny import build_tokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = build_tokenizer()
    tok.chat_template = CHATML
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,  # head_dim 32:
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # vLLM's CPU attention needs it
    model = Qwen2ForCausalLM(config)
    aspects = [a for a, spec in ASPECTS.items() if spec.kind == "semantic"]
    forms = ("My favourite fruit is the {}.", "My favorite fruit is the {}.", "my favourite fruit is the {}",
             "My favorite fruit is a {}.", "I like the {} best.")  # the ways Whisper may write what was said

    def example() -> tuple[list[int], list[int]]:
        first = rng.random() < 0.5
        said = [rng.choice(forms).format(f) for f in ("banana", rng.choice(OTHER_FRUITS))]
        verdict = "1" if first else "2"
        question = rng.choice(["Which fruit?", "Name a fruit you like.", "What is your favourite fruit?"])
        prompt = text_prompt(rng.choice(aspects), question, said if first else said[::-1])
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        head = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        answer = f"{verdict}\nResponse {verdict} names the banana.<|im_end|>"
        return tok(head, add_special_tokens=False).input_ids, tok(answer, add_special_tokens=False).input_ids

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        pairs = [example() for _ in range(n)]
        width = max(len(h) + len(a) for h, a in pairs)
        ids = [h + a + [tok.pad_token_id] * (width - len(h) - len(a)) for h, a in pairs]
        labels = [[-100] * len(h) + a + [-100] * (width - len(h) - len(a)) for h, a in pairs]
        mask = [[1] * (len(h) + len(a)) + [0] * (width - len(h) - len(a)) for h, a in pairs]
        at = [len(h) for h, _ in pairs]  # where the verdict is
        return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels), torch.tensor(at)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = torch.arange(8)
    for _ in range(steps):
        ids, mask, labels, at = batch(8)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        # the verdict token weighs as much as the whole rationale: it is the one decision to learn
        verdict_loss = torch.nn.functional.cross_entropy(out.logits[rows, at - 1], ids[rows, at])
        (out.loss + verdict_loss).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        ids, mask, _, at = batch(32)
        guess = model(input_ids=ids, attention_mask=mask).logits[torch.arange(32), at - 1].argmax(-1)
    assert (guess == ids[torch.arange(32), at]).float().mean() == 1.0, "the tiny text judge did not learn"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """vLLM's OpenAI-compatible server on the CPU, serving the taught tiny text judge; (base URL, its log), the
    log at DEBUG level, where vLLM writes each prompt it rendered and its token ids."""
    if not VLLM_READY or not os.access(VLLM_PYTHON, os.X_OK):
        pytest.skip(f"no vLLM environment at {VLLM_ENV} (`make vllm` builds it; `make test-vllm` runs this)")
    d = tmp_path_factory.mktemp("fruit-judge")
    model = teach_fruit_judge(d / "model")
    port, log = free_port(), d / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_LOGGING_LEVEL": "DEBUG"}  # fmt: skip
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", FRUIT_MODEL, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "2048", "--distributed-executor-backend", "uni",
           "--enable-log-requests"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, url + "/v1/models", log, VLLM_START_TIMEOUT_S)
        yield url, log
    finally:  # the server's whole process group, unless it is gone already (then its log says why)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


_LOGGED = re.compile(r"details: prompt: (.*), prompt_token_ids: \[([\d, ]*)\], prompt_embeds")


def _prompts_received(log: Path) -> list[tuple[str, int]]:
    """(prompt as the server rendered it, its length in tokens) of every request vLLM's server took."""
    return [(ast.literal_eval(m.group(1)), len(m.group(2).split(","))) for m in _LOGGED.finditer(log.read_text())]


@pytest.mark.vllm
def test_a_real_vllm_server_judges_the_transcripts_in_both_orders(fruit, cache, vllm_server, tmp_path):
    url, log = vllm_server
    rows = [
        {"id": "a", "instruction": "Which fruit?", "audio_1": fruit["banana"], "audio_2": fruit["apple"], "label": "1"},
        {"id": "b", "instruction": "What is your favourite fruit?", "audio_1": fruit["apple"],
         "audio_2": fruit["banana"], "label": "2"},
        {"id": "c", "instruction": "Name a fruit you like.", "audio_1": fruit["cherry"], "audio_2": fruit["banana"],
         "label": "2"},
    ]  # fmt: skip
    data, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["judge", "--backend", "cascade", "--text-judge", url, "--text-model", FRUIT_MODEL, "--data", data,
            "--output", out, "--both-orders", "--max-new-tokens", "32"]  # fmt: skip
    _sagelm(*args, cache=cache / "run")
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 3 * 4 * 2 and all(r["error"] is None for r in records)
    label = {r["id"]: r["label"] for r in rows}
    for r in records:  # the verdict in the records' own numbering, whichever order the server saw
        assert r["verdict"] == label[r["id"]], r
        p = r["probabilities"]  # from the first token's top_logprobs, renormalised over 1 / 2 / Tie
        assert p[r["verdict"]] > 0.9 and sum(p.values()) == pytest.approx(1.0), r
        seen = {"1": "2", "2": "1"}[r["verdict"]] if r["swapped"] else r["verdict"]  # as the server numbered them
        assert r["raw"].startswith(f"{seen}\nResponse {seen} names the ban") and r["backend"] == "cascade"
        assert r["model"] == f"cascade:base+{FRUIT_MODEL}" and r["usage"]["completion_tokens"] == r["new_tokens"] > 0

    # what the server received, one request per judgment (no two are the same call): SageLM's chat with each
    # <audio> replaced by the transcript heard, in the order of the judgment (the swapped one holds them the other
    # way round), as vLLM rendered it through the chat template
    received = _prompts_received(log)
    want = []
    for r in records:
        t = r["transcripts"][::-1] if r["swapped"] else r["transcripts"]
        user = text_prompt(r["aspect"], r["question"], t)
        want.append(CHAT_TEMPLATE.replace("{prompt}", user))
    assert sorted(p for p, _ in received) == sorted(want)
    assert sorted(n for _, n in received) == sorted(r["usage"]["prompt_tokens"] for r in records)

    _sagelm(*args, cache=cache / "run")  # resumed: nothing left to judge, no request
    out.unlink()
    _sagelm(*args, cache=cache / "run")  # a new output file, the same calls: all from the response cache
    assert len(_prompts_received(log)) == len(received)
    assert [json.loads(x)["verdict"] for x in out.read_text().splitlines()] == [r["verdict"] for r in records]

    scored = json.loads(_sagelm("eval", out, "--json", cache=cache).stdout)
    assert scored["overall"]["n"] == 12 and scored["overall"]["accuracy"] == 1.0
