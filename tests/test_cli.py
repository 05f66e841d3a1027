"""The command line as users run it: real subprocesses of the installed `sagelm` script."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import DEMO_AUDIO, REPO, TONE_QUESTION

SAGELM = shutil.which("sagelm") or str(REPO / ".venv" / "bin" / "sagelm")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def run(*args, check=True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([SAGELM, *map(str, args)], capture_output=True, text=True, env=ENV, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr}")
    return p


def test_prompt_prints_the_exact_text_without_torch():
    p = run("prompt", "--aspect", "helpfulness", "--instruction", "Hi?")
    assert p.stdout == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nBelow are two responses for "
        "a given task. The task is defined by the Instruction. Evaluate in terms of **helpfulness** and indicate a "
        "better response using 1, 2 or Tie.\n### Instruction:\nHi?\n\n### Response 1:\n<|audio_bos|><|AUDIO|>"
        "<|audio_eos|>\n\n### Response 2:\n<|audio_bos|><|AUDIO|><|audio_eos|>\n\n<|im_end|>\n<|im_start|>assistant\n"
    )
    code = (
        "import sys; from sagelm.cli import main\n"
        "sys.argv = ['sagelm', 'prompt', '--aspect', 'honesty', '--instruction', 'x']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)"
    )
    q = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert q.stderr.strip().endswith("False False")


def test_prompt_expands_real_audio(release):
    p = run("prompt", "--aspect", "honesty", "--instruction", "Q", DEMO_AUDIO / "53" / "kimi-Audio.wav",
            DEMO_AUDIO / "16" / "kimi-Audio.wav")  # fmt: skip
    spans = p.stdout.split("<|audio_bos|>")[1:]
    assert [s.split("<|audio_eos|>")[0].count("<|AUDIO|>") for s in spans] == [1500, 932]
    assert "only its first 60 s" in p.stderr


def test_user_errors_are_one_line_with_exit_1():
    p = run("prompt", "--aspect", "kindness", "--instruction", "x", check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "unknown aspect 'kindness'" in p.stderr
    p = run("prompt", "--aspect", "honesty", "--instruction", "x", "/no/a.wav", "/no/b.wav", check=False)
    assert p.returncode == 1 and p.stderr.strip() == "sagelm: error: /no/a.wav: no such file"
    assert "Traceback" not in p.stderr
    p = run("judge", "--instruction", "x", "/no/a.wav", check=False)
    assert p.returncode == 2


def test_judge_one_pair_json(tone_judge_dir, clips):
    p = run("judge", "--instruction", TONE_QUESTION, clips["noise"], clips["tone"], "--aspect", "helpfulness",
            "--model", tone_judge_dir, "--both-orders", "--json", "--max-new-tokens", "16")  # fmt: skip
    records = [json.loads(x) for x in p.stdout.splitlines()]
    assert [(r["verdict"], r["swapped"]) for r in records] == [("2", False), ("2", True)]
    for r in records:
        assert set(r) >= {"id", "aspect", "verdict", "probabilities", "rationale", "raw", "swapped", "label", "error"}
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-6


def test_judge_one_pair_bad_audio_is_one_line(tone_judge_dir, clips, tmp_path):
    (tmp_path / "x.wav").write_bytes(b"")
    p = run("judge", "--instruction", "Q", tmp_path / "x.wav", clips["tone"], "--model", tone_judge_dir, check=False)
    assert p.returncode == 1 and p.stderr.strip() == f"sagelm: error: {tmp_path / 'x.wav'}: empty file"


def test_judge_unreachable_model_is_one_line(clips):
    p = run("judge", "--instruction", "Q", clips["noise"], clips["tone"], check=False)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "'LGB666/SageLM'" in p.stderr and "--model" in p.stderr


def _dataset(tmp_path, clips, n):
    rows = []
    for i in range(n):
        a, b = (clips["tone"], clips["noise"]) if i % 2 == 0 else (clips["noise_short"], clips["tone_long"])
        rows.append({"id": f"p{i}", "instruction": TONE_QUESTION, "audio_1": str(a), "audio_2": str(b),
                     "aspect": "helpfulness", "label": "1" if i % 2 == 0 else "2"})  # fmt: skip
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_with_bad_rows_goes_on(tone_judge_dir, clips, tmp_path):
    data = _dataset(tmp_path, clips, 4)
    with data.open("a") as f:
        f.write(json.dumps({"id": "missing", "instruction": "Q", "audio_1": "nope.wav", "audio_2": str(clips["tone"]),
                            "aspect": "helpfulness"}) + "\n")  # fmt: skip
        f.write('{"id": "broken", "instruction": "Q"}\n')
        f.write(json.dumps({"id": "last", "instruction": TONE_QUESTION, "audio_1": str(clips["tone"]),
                            "audio_2": str(clips["noise"]), "aspect": "helpfulness", "label": "1"}) + "\n")  # fmt: skip
    out = tmp_path / "out.jsonl"
    run("judge", "--data", data, "--output", out, "--model", tone_judge_dir, "--batch-size", "3",
        "--max-new-tokens", "12")  # fmt: skip
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["p0", "p1", "p2", "p3", "missing", "broken", "last"]
    assert [r["verdict"] for r in records] == ["1", "2", "1", "2", None, None, "1"]
    assert [r["label"] for r in records] == ["1", "2", "1", "2", None, None, "1"]
    assert records[4]["error"] == f"{tmp_path / 'nope.wav'}: no such file"
    assert records[5]["error"] == f"{data} line 6: audio_1: Field required"


def test_killed_run_resumes_without_loss_or_repeats(tiny_dir, clips, tmp_path):
    n = 40
    data, out = _dataset(tmp_path, clips, n), tmp_path / "out.jsonl"
    args = [SAGELM, "judge", "--data", str(data), "--output", str(out), "--model", str(tiny_dir),
            "--max-new-tokens", "40", "--aspect", "honesty", "--aspect", "truthfulness"]  # fmt: skip
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = out.read_text().count("\n")
    assert 5 <= first < 2 * n, "the run was meant to be killed midway"
    with out.open("a") as f:
        f.write('{"id": "torn')  # as if the kill had landed mid-write
    p = run(*args[1:])
    assert f"{first} judgments already done" in p.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 2 * n
    assert len({r["key"] for r in records}) == 2 * n
    assert [(r["id"], r["aspect"]) for r in records] == [
        (f"p{i}", a) for i in range(n) for a in ("honesty", "truthfulness")
    ]
    run(*args[1:])  # a third run has nothing to do
    assert len(out.read_text().splitlines()) == 2 * n


def test_demo_end_to_end_on_real_audio(tiny_dir, release):
    p = run("demo", "--model", tiny_dir, "--audio-dir", DEMO_AUDIO, "--verdict-only", "--batch-size", "4")
    assert "human" in p.stdout and "agreement with the human verdicts:" in p.stdout
    assert p.stdout.count("helpfulness") == 3 and p.stdout.count("truthfulness") == 3


def test_demo_without_weights_says_so_in_one_line(release):
    p = run("demo", "--audio-dir", DEMO_AUDIO)
    assert p.stderr.count("\n") == 1
    assert "SageLM weights unreachable" in p.stderr and "--model" in p.stderr


@pytest.mark.parametrize("layout", ["thinker", "full"])
def test_tiny_model_command(tmp_path, layout):
    run("tiny-model", tmp_path / "m", "--layout", layout)
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "preprocessor_config.json").exists()


def test_rerun_after_retraining_into_the_same_folder_judges_again(clips, tmp_path):
    from sagelm.tiny import TinySpec, build_tiny_judge

    model, data, out = tmp_path / "judge", _dataset(tmp_path, clips, 2), tmp_path / "out.jsonl"
    build_tiny_judge(model, "thinker", TinySpec(seed=1))
    args = ("judge", "--data", data, "--output", out, "--model", model, "--verdict-only")
    run(*args)
    run(*args)  # same judge: nothing to do
    assert out.read_text().count("\n") == 2
    build_tiny_judge(model, "thinker", TinySpec(seed=2))  # "retrained": same folder, new weights
    done = run(*args)
    assert out.read_text().count("\n") == 4, done.stderr  # judged again, the old records kept


# -- --output, --device and other messages (issue 9: 2, 4, 9, 15, 20, 21) --------------------------------------
def test_output_that_is_the_data_a_pipe_or_another_runs_file_is_refused(tiny_dir, clips, tmp_path):
    data = _dataset(tmp_path, clips, 30)
    before = data.read_bytes()
    p = run("judge", "--data", data, "--output", data, "--model", tiny_dir, check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "is the --data file" in p.stderr
    assert data.read_bytes() == before
    piped = subprocess.run(f"{SAGELM} judge --data {data} --output /dev/stdout --model {tiny_dir} | cat",
                           shell=True, capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
    assert piped.returncode == 0 and "not a regular file" in piped.stderr and piped.stderr.count("\n") == 1
    out = tmp_path / "out.jsonl"
    args = [SAGELM, "judge", "--data", str(data), "--output", str(out), "--model", str(tiny_dir),
            "--max-new-tokens", "40"]  # fmt: skip
    first = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not out.exists():
            time.sleep(0.05)
        second = run(*args[1:], check=False)
        assert second.returncode == 1 and "being written by another sagelm run" in second.stderr
    finally:
        first.wait(timeout=300)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == len({r["key"] for r in records}) == 30  # every judgment once


def test_pair_output_is_written_and_another_judge_is_announced(tone_judge_dir, tiny_dir, clips, tmp_path):
    out = tmp_path / "pair.jsonl"
    pair = ("judge", "--instruction", TONE_QUESTION, clips["noise"], clips["tone"], "--aspect", "helpfulness",
            "--verdict-only", "--output", out)  # fmt: skip
    run(*pair, "--model", tone_judge_dir)
    assert [json.loads(x)["verdict"] for x in out.read_text().splitlines()] == ["2"]
    p = run(*pair, "--model", tiny_dir)
    assert "already holds records of" in p.stderr and str(tone_judge_dir) in p.stderr
    assert len(out.read_text().splitlines()) == 2


def test_device_bin_weights_prompt_arity_and_debug_anywhere(tiny_dir, clips, tmp_path):
    pair = ("judge", "--instruction", "Q", clips["noise"], clips["tone"], "--verdict-only")
    p = run(*pair, "--model", tiny_dir, "--device", "cuda:3", check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "--device cuda:3" in p.stderr
    p = run(*pair, "--model", tiny_dir, "--device", "cpu")
    assert "Traceback" not in p.stderr
    pickled = tmp_path / "bin-only"
    shutil.copytree(tiny_dir, pickled)
    for f in pickled.glob("*.safetensors"):
        f.rename(f.with_name("pytorch_model.bin"))
    p = run(*pair, "--model", pickled, check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "no .safetensors weights" in p.stderr
    for files in ([clips["tone"]], [clips["tone"], clips["noise"], clips["tone"]]):
        p = run("prompt", "--aspect", "honesty", "--instruction", "Q", *files, check=False)
        assert p.returncode == 2 and "two audio files or none" in p.stderr
    p = run("prompt", "--aspect", "kindness", "--instruction", "x", "--debug", check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_output_that_is_a_folder_is_one_line(tiny_dir, clips, tmp_path):
    data, folder = _dataset(tmp_path, clips, 2), tmp_path / "judged"
    folder.mkdir()
    for args in (("--data", data), ("--instruction", TONE_QUESTION, clips["noise"], clips["tone"])):
        p = run("judge", *args, "--output", folder, "--model", tiny_dir, check=False)
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.startswith(f"sagelm: error: --output {folder} is a folder"), p.stderr
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder regardless of its permissions")
def test_output_in_a_folder_that_cannot_be_written_is_one_line(tiny_dir, clips, tmp_path):
    data, locked = _dataset(tmp_path, clips, 2), tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for out in (locked / "out.jsonl", locked / "sub" / "out.jsonl"):
            p = run("judge", "--data", data, "--output", out, "--model", tiny_dir, check=False)
            assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
            assert p.stderr.startswith(f"sagelm: error: --output {out}: cannot write there"), p.stderr
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []
