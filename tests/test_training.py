"""`sagelm train`: configuration checks, stages, save -> judge round trip, resume, and that a judge learns."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, TONE_QUESTION, noise, tone, write

from sagelm.training import TrainConfigError, load_config, steps_per_epoch, train

SAGELM = [str(REPO / ".venv" / "bin" / "sagelm")] if (REPO / ".venv" / "bin" / "sagelm").exists() else ["sagelm"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def _config(tmp_path: Path, **keys) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "dataset": "d.json", **keys}))
    return path


# -- configuration ---------------------------------------------------------------------------------------------
def test_defaults_are_the_authors_recipe(tmp_path):
    c = load_config(_config(tmp_path))
    assert (c.learning_rate, c.lr_scheduler_type, c.warmup_ratio, c.num_train_epochs) == (1e-5, "cosine", 0.1, 3.0)
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps, c.cutoff_len, c.bf16) == (2, 2, 4096, True)
    assert c.freeze_audio_encoder is True and c.swap_augment is False
    assert c.model_name_or_path == "Qwen/Qwen2.5-Omni-7B"
    assert [s.dataset for s in c.plan()] == [["d.json"]]


@pytest.mark.parametrize(
    ("keys", "overrides", "message"),
    [
        ({"learning_rat": 1e-5}, [], "unknown key 'learning_rat'"),
        ({"learning_rate": -1}, [], "learning_rate=-1: Input should be greater than 0"),
        ({"warmup_ratio": 1.5}, [], "warmup_ratio=1.5"),
        ({"lr_scheduler_type": "cosine_annealing"}, [], "lr_scheduler_type='cosine_annealing'"),
        ({"template": "qwen2_vl"}, [], "template='qwen2_vl'"),
        ({"finetuning_type": "lora"}, [], "finetuning_type='lora'"),
        ({"per_device_train_batch_size": 0}, [], "per_device_train_batch_size=0"),
        ({"stages": [{"dataset": "a.json", "epoch": 1}]}, [], "unknown key 'stages.0.epoch'"),
        ({"stages": [{"dataset": "a.json"}]}, [], "either 'dataset' or 'stages'"),
        ({}, ["dataset="], "no data"),
        ({}, ["num_train_epochs=three"], "num_train_epochs='three'"),
        ({}, ["oops"], "expected key=value"),
        ({"deepspeed": "missing/ds.json"}, [], "deepspeed config 'missing/ds.json' not found"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, keys, overrides, message):
    with pytest.raises(TrainConfigError) as e:
        load_config(_config(tmp_path, **keys), overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_output_dir_and_bad_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text("dataset: d.json\n")
    with pytest.raises(TrainConfigError, match="'output_dir' is required"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("dataset: [d.json\n")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(TrainConfigError, match="no such config file"):
        load_config(tmp_path / "none.yaml")


def test_overrides_and_llamafactory_style_values(tmp_path):
    c = load_config(
        _config(tmp_path),
        [
            "learning_rate=1e-3",
            "dataset=a.json,b.json",
            "swap_augment=true",
            "resume_from_checkpoint=true",
            "stage=sft",
            "trust_remote_code=true",
        ],
    )
    assert c.learning_rate == 1e-3 and c.dataset == ["a.json", "b.json"] and c.swap_augment
    assert c.resume_from_checkpoint is True
    stages = load_config(
        _config(
            tmp_path,
            dataset=None,
            learning_rate=2e-5,
            num_train_epochs=2,
            stages=[{"dataset": ["s.json"]}, {"dataset": "a.json", "epochs": 1, "learning_rate": 5e-6}],
        )
    )
    assert [(s.dataset, s.epochs, s.learning_rate) for s in stages.plan()] == [
        (["s.json"], 2.0, 2e-5),
        (["a.json"], 1.0, 5e-6),
    ]


def test_steps_per_epoch():
    c = load_config(
        None, ["output_dir=o", "dataset=d", "per_device_train_batch_size=4", "gradient_accumulation_steps=2"]
    )
    assert [steps_per_epoch(n, c) for n in (1, 8, 9, 16, 17)] == [1, 1, 2, 2, 3]


# -- training on a tiny thinker --------------------------------------------------------------------------------
def _tone_data(folder: Path, n: int, seed: int, aspect: str = "helpfulness") -> Path:
    """Pairs of a tone and a noise in random order; the label names the tone."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = write(folder / f"t{i}.wav", tone(rng.uniform(0.4, 1.2), rng.uniform(250, 900)))
        z = write(folder / f"z{i}.wav", noise(rng.uniform(0.4, 1.2), seed=int(rng.integers(1 << 30))))
        first = rng.random() < 0.5
        rows.append(
            {
                "id": f"r{i}",
                "instruction": TONE_QUESTION,
                "aspect": aspect,
                "audio_1": str(t if first else z),
                "audio_2": str(z if first else t),
                "output": "1\nResponse 1 is the tone." if first else "2\nResponse 2 is the tone.",
            }
        )
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tone_data(tmp_path_factory) -> Path:
    return _tone_data(tmp_path_factory.mktemp("tone_data"), 24, seed=1)


def _run_config(tiny_dir: Path, data: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"model_name_or_path={tiny_dir}",
            f"dataset={data}",
            f"output_dir={out}",
            "learning_rate=2e-3",
            "per_device_train_batch_size=4",
            "gradient_accumulation_steps=1",
            "logging_steps=1",
            "save_steps=2",
            "warmup_ratio=0",
            *extra,
        ],
    )


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_train_saves_a_judge_that_sagelm_judge_loads(tmp_path, tiny_dir, tone_data):
    from sagelm.model import load_processor
    from sagelm.samples import prepare, read_samples

    lengths = sorted(prepare(read_samples([tone_data])[0], load_processor(tiny_dir)[0], 10_000).lengths)
    cutoff = lengths[15]  # the 8 longest samples are dropped
    out = tmp_path / "judge"
    results = train(_run_config(tiny_dir, tone_data, out, "max_steps=3", f"cutoff_len={cutoff}"))
    summary = json.loads((out / "train_summary.json").read_text())
    assert results[0].steps == 3 and summary["stages"][0]["steps"] == 3
    counts = summary["stages"][0]["counts"]
    assert counts == {
        "read": 24,
        "kept": sum(n <= cutoff for n in lengths),
        "too_long": sum(n > cutoff for n in lengths),
        "bad_audio": 0,
        "bad_rows": 0,
    }
    assert counts["too_long"] > 0
    for f in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (out / f).is_file() and (out / "stage-1" / "checkpoint-2" / f).is_file()
    before, after = _weights(tiny_dir), _weights(out)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert any(k.startswith("model.") for k in changed) and "lm_head.weight" in changed
    assert not any(k.startswith("audio_tower.") for k in changed)  # frozen by default
    rows = [json.loads(x) for x in tone_data.read_text().splitlines()[:1]]
    for model in (out, out / "stage-1" / "checkpoint-2"):
        done = subprocess.run(
            [
                *SAGELM,
                "judge",
                "--model",
                str(model),
                "--instruction",
                TONE_QUESTION,
                rows[0]["audio_1"],
                rows[0]["audio_2"],
                "--json",
                "--max-new-tokens",
                "4",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        records = [json.loads(x) for x in done.stdout.splitlines()]
        assert len(records) == 4 and all(r["error"] is None for r in records)
        assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in records)


def test_existing_output_dir_needs_resume_or_overwrite(tmp_path, tiny_dir, tone_data):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(TrainConfigError, match="is not empty"):
        train(_run_config(tiny_dir, tone_data, out, "max_steps=1"))
    assert (out / "something").exists()  # nothing already written is lost


class _Crash(RuntimeError):
    pass


def test_resume_from_a_checkpoint_gives_the_uninterrupted_result(tmp_path, tiny_dir, tone_data):
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise _Crash("killed")

    whole = tmp_path / "whole"
    train(_run_config(tiny_dir, tone_data, whole, "max_steps=4"))
    part = tmp_path / "part"
    with pytest.raises(_Crash):
        train(_run_config(tiny_dir, tone_data, part, "max_steps=4"), callbacks=[CrashAfter()])
    assert (part / "stage-1" / "checkpoint-2").is_dir() and not (part / "model.safetensors").exists()
    steps_seen: list[int] = []

    class Seen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_seen.append(state.global_step)

    train(_run_config(tiny_dir, tone_data, part, "max_steps=4", "resume_from_checkpoint=true"), callbacks=[Seen()])
    assert steps_seen == [3, 4]  # steps 1-2 came from checkpoint-2
    a, b = _weights(whole), _weights(part)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5


def test_two_stages_run_in_order_each_with_its_schedule(tmp_path, tiny_dir, tone_data):
    from transformers import TrainerCallback

    second = _tone_data(tmp_path / "second", 8, seed=2, aspect="honesty")
    seen: list[tuple[int, float, float]] = []

    class Watch(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.append((state.max_steps, args.learning_rate, float(model.lm_head.weight.detach().sum())))

    stages = (
        f"stages=[{{dataset: {tone_data}, epochs: 1, learning_rate: 0.002}},"
        f" {{dataset: {second}, epochs: 2, learning_rate: 0.0005}}]"
    )
    config = load_config(
        None,
        [
            f"model_name_or_path={tiny_dir}",
            f"output_dir={tmp_path / 'out'}",
            stages,
            "per_device_train_batch_size=4",
            "gradient_accumulation_steps=1",
            "warmup_ratio=0",
            "save_steps=1000",
            "logging_steps=1",
        ],
    )
    results = train(config, callbacks=[Watch()])
    assert [(r.index, r.steps, r.learning_rate) for r in results] == [(1, 6, 0.002), (2, 4, 0.0005)]
    assert [(s[0], s[1]) for s in seen] == [(6, 0.002), (4, 0.0005)]  # 24/4 x 1 epoch, then 8/4 x 2 epochs
    stage1 = _weights(tmp_path / "out" / "stage-1" / "final")
    assert abs(seen[1][2] - float(stage1["lm_head.weight"].sum())) < 1e-3  # stage 2 starts where stage 1 ended
    final = _weights(tmp_path / "out")
    assert not np.array_equal(final["lm_head.weight"], stage1["lm_head.weight"])
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert [s["index"] for s in summary["stages"]] == [1, 2]


def test_cli_train_reports_bad_config_in_one_line(tmp_path):
    path = _config(tmp_path, learning_rat=1)
    done = subprocess.run([*SAGELM, "train", str(path)], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"sagelm: error: {path}: unknown key 'learning_rat'"]


def test_shipped_configs_load():
    recipe = load_config(REPO / "configs" / "sagelm_recipe.yaml")
    assert [(s.epochs, s.learning_rate) for s in recipe.plan()] == [(3.0, 1e-5), (3.0, 1e-5)]
    assert (recipe.cutoff_len, recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps) == (4096, 2, 2)
    assert recipe.freeze_audio_encoder and recipe.bf16 and recipe.lr_scheduler_type == "cosine"
    ds = json.loads((REPO / "configs" / "ds_z2_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2
    tiny = load_config(REPO / "configs" / "gender_tiny.yaml")
    assert tiny.freeze_audio_encoder is False and tiny.max_steps > 0


# -- proof that it learns ---------------------------------------------------------------------------------------
def _order_accuracy(records: list[dict]) -> dict[bool, float]:
    out = {}
    for swapped in (False, True):
        rs = [r for r in records if r["swapped"] is swapped]
        out[swapped] = sum(r["verdict"] == r["label"] for r in rs) / len(rs)
    return out


def test_a_tiny_judge_learns_to_hear_the_requested_gender(tmp_path_factory):
    """The README example, end to end through the command line: espeak-ng data, a tiny random thinker, the
    shipped config, then `sagelm judge` on voices and sentences never heard in training, in both orders."""
    from sagelm.synth import make_gender_set
    from sagelm.tiny import TinySpec, build_tiny_judge

    root = tmp_path_factory.mktemp("learn")
    train_file, heldout = make_gender_set(root / "gender", train_pairs=1000, heldout_pairs=100, seed=0)
    tiny = build_tiny_judge(root / "tiny", "thinker", TinySpec(hidden_size=128))
    out = root / "judge"
    done = subprocess.run(
        [
            *SAGELM,
            "train",
            str(REPO / "configs" / "gender_tiny.yaml"),
            f"model_name_or_path={tiny}",
            f"dataset={train_file}",
            f"output_dir={out}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2000 samples (0 too long, 0 bad)" in done.stderr
    judged = root / "heldout.jsonl"
    done = subprocess.run(
        [
            *SAGELM,
            "judge",
            "--model",
            str(out),
            "--data",
            str(heldout),
            "--both-orders",
            "--verdict-only",
            "--batch-size",
            "16",
            "--output",
            str(judged),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(x) for x in judged.read_text().splitlines()]
    assert len(records) == 200 and all(r["error"] is None for r in records)
    accuracy = _order_accuracy(records)
    assert accuracy[False] >= 0.85 and accuracy[True] >= 0.85, accuracy
    # A judge that learned only a position ("always Response 1") fails the same bar.
    position_only = [{**r, "verdict": "2" if r["swapped"] else "1"} for r in records]
    assert min(_order_accuracy(position_only).values()) < 0.85
    # sagelm eval reports the same per-order figures.
    done = subprocess.run([*SAGELM, "eval", str(judged), "--json"], capture_output=True, text=True, env=ENV, timeout=60)
    report = json.loads(done.stdout)
    assert report["order"]["original"]["accuracy"] == pytest.approx(accuracy[False])
    assert report["order"]["swapped"]["accuracy"] == pytest.approx(accuracy[True])


def test_a_judge_for_a_new_aspect(tmp_path, tiny_dir):
    from sagelm.aspects import ASPECTS

    aspect = "pitch purity"
    data = _tone_data(tmp_path / "d", 8, seed=3, aspect=aspect)
    with pytest.raises(TrainConfigError, match="no sample left"):
        train(_run_config(tiny_dir, data, tmp_path / "a", "max_steps=1"))  # unknown aspect: every row is bad
    out = tmp_path / "b"
    try:
        train(_run_config(tiny_dir, data, out, "max_steps=2", f"new_aspects=[{aspect}]"))
    finally:
        ASPECTS.pop(aspect, None)
    assert json.loads((out / "sagelm_aspects.json").read_text()) == {"new_aspects": [aspect]}
    assert (out / "stage-1" / "checkpoint-2" / "sagelm_aspects.json").is_file()
    row = json.loads(data.read_text().splitlines()[0])
    pair = [row["audio_1"], row["audio_2"]]
    done = subprocess.run(
        [*SAGELM, "judge", "--model", str(out), "--instruction", TONE_QUESTION, *pair, "--aspect", aspect, "--json",
         "--max-new-tokens", "2"],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["aspect"] for x in done.stdout.splitlines()] == [aspect]
    # A model that was not trained on it does not know it.
    done = subprocess.run(
        [*SAGELM, "judge", "--model", str(tiny_dir), "--instruction", TONE_QUESTION, *pair, "--aspect", aspect],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "unknown aspect 'pitch purity'" in done.stderr


def test_training_starts_from_a_full_omni_checkpoint(tmp_path, tiny_full_dir, tone_data):
    from sagelm.model import load_judge_model

    out = tmp_path / "from-full"
    train(_run_config(tiny_full_dir, tone_data, out, "max_steps=1"))
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_5_omni_thinker"
    assert load_judge_model(str(out)).thinker.lm_head.weight.shape[0] > 0


def test_unreachable_hub_model_is_one_line(tmp_path, tone_data):
    path = _config(tmp_path, model_name_or_path="no-such-org/no-such-model", dataset=str(tone_data))
    done = subprocess.run([*SAGELM, "train", str(path)], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-org/no-such-model" in lines[0] and "unreachable" in lines[0]


def test_torchrun_two_processes_share_the_data(tmp_path, tiny_dir, tone_data):
    """The same command under `torchrun` (DDP on CPU here; DeepSpeed on GPUs): 24 samples, 4 per process, two
    processes, one epoch -> 3 optimizer steps instead of 6."""
    torchrun = REPO / ".venv" / "bin" / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not in the project's venv")
    out = tmp_path / "ddp"
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--no-python", *SAGELM, "train", str(_config(tmp_path)),
         f"model_name_or_path={tiny_dir}", f"dataset={tone_data}", f"output_dir={out}", "num_train_epochs=1",
         "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "learning_rate=1e-3", "bf16=false"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["stages"][0]["steps"] == 3
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()


# -- issue 9: nothing lost, one-line errors --------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SAGELM, *args], capture_output=True, text=True, env=ENV, timeout=300)


def _one_line_error(done: subprocess.CompletedProcess, *parts: str) -> str:
    """The run ended with exit 1 and one error line (after the log lines, if any), holding every part."""
    lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
    assert done.returncode == 1, done.stderr
    assert lines[-1].startswith("sagelm: error: ") and "Traceback" not in done.stderr, done.stderr
    assert all(p in lines[-1] for p in parts), lines[-1]
    return lines[-1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learning_rate=.inf"], "learning_rate=inf"),
        (["learning_rate=.nan"], "learning_rate=nan"),
        (["stages=[{dataset: a.json, learning_rate: .inf}]", "dataset="], "stages.0.learning_rate=inf"),
        (["resume_from_checkpoint=/no/such/checkpoint-4"], "resume_from_checkpoint '/no/such/checkpoint-4': no such"),
        (["media_dir=/no/such/media"], "media_dir '/no/such/media': no such folder"),
        (["report_to=wandb"], "report_to='wandb' but the wandb package is not installed"),
        (["report_to=wanddb"], "report_to='wanddb': not one of"),
    ],
)
def test_bad_values_stop_before_any_work(tmp_path, overrides, message):
    if "report_to=wandb" in overrides and __import__("importlib").util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    with pytest.raises(TrainConfigError) as e:
        load_config(_config(tmp_path), overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_yaml_alias_bomb_gives_a_short_message(tmp_path):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcde", "bcdef", strict=True)
    ]  # 9**6 strings once expanded: a message of megabytes before the cap
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(bomb) + "\noutput_dir: o\ndataset: d.json\nlearning_rate: *f\n")
    with pytest.raises(TrainConfigError) as e:
        load_config(path)
    assert "learning_rate=" in str(e.value) and len(str(e.value)) < 400


def test_cli_output_dir_resume_path_and_aspects_file_errors(tmp_path, tiny_dir, tone_data):
    (tmp_path / "file").write_text("mine")
    base = [f"model_name_or_path={tiny_dir}", f"dataset={tone_data}", "max_steps=1"]
    _one_line_error(_cli("train", str(_config(tmp_path)), *base, f"output_dir={tmp_path / 'file'}"),
                    "output_dir", "is a file")  # fmt: skip
    assert (tmp_path / "file").read_text() == "mine"
    done = _cli("train", str(_config(tmp_path)), *base, "resume_from_checkpoint=runs/x/checkpoint-4")
    _one_line_error(done, "resume_from_checkpoint 'runs/x/checkpoint-4': no such checkpoint folder")
    # A trained judge's corrupt sagelm_aspects.json is named, not an internal error.
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "sagelm_aspects.json").write_text('{"new_aspects": ["pitch"')
    rows = [json.loads(x) for x in tone_data.read_text().splitlines()[:1]]
    done = _cli("judge", "--model", str(judge), "--instruction", "q", rows[0]["audio_1"], rows[0]["audio_2"])
    _one_line_error(done, str(judge / "sagelm_aspects.json"), "not valid JSON")


def test_overwrite_output_dir_removes_only_what_sagelm_wrote(tmp_path, tiny_dir, tone_data):
    out = tmp_path / "out"
    (out / "stage-1" / "checkpoint-99").mkdir(parents=True)  # an earlier run's checkpoint
    (out / "train_summary.json").write_text("{}")
    (out / "notes.txt").write_text("my notes")
    (out / "configs").mkdir()
    (out / "configs" / "run.yaml").write_text("a: 1\n")
    train(_run_config(tiny_dir, tone_data, out, "max_steps=2", "overwrite_output_dir=true"))
    assert (out / "notes.txt").read_text() == "my notes" and (out / "configs" / "run.yaml").is_file()
    assert not (out / "stage-1" / "checkpoint-99").exists() and (out / "stage-1" / "checkpoint-2").is_dir()
    assert json.loads((out / "train_summary.json").read_text())["stages"][0]["steps"] == 2
    # A stage folder holding something sagelm did not write is not removed.
    (out / "stage-1" / "data.json").write_text("[]")
    with pytest.raises(TrainConfigError, match="holds files sagelm did not write"):
        train(_run_config(tiny_dir, tone_data, out, "max_steps=1", "overwrite_output_dir=true"))
    assert (out / "stage-1" / "data.json").is_file() and (out / "stage-1" / "checkpoint-2").is_dir()


def test_output_dir_holding_the_model_or_the_data_is_refused(tmp_path, tiny_dir, tone_data):
    import shutil

    model = shutil.copytree(tiny_dir, tmp_path / "run" / "base")
    before = (model / "model.safetensors").read_bytes()
    with pytest.raises(TrainConfigError, match="holds the model being trained"):
        train(_run_config(model, tone_data, tmp_path / "run", "max_steps=1", "overwrite_output_dir=true"))
    assert (model / "model.safetensors").read_bytes() == before
    with pytest.raises(TrainConfigError, match="holds training data"):
        train(_run_config(tiny_dir, tone_data, tone_data.parent, "max_steps=1", "overwrite_output_dir=true"))
    assert tone_data.is_file() and (tone_data.parent / "t0.wav").is_file()


def test_a_loss_that_becomes_nan_stops_training(tmp_path, tiny_dir, tone_data):
    from sagelm.training import TrainingDiverged

    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged, match=r"stage 1 step \d+: the loss is nan") as e:
        train(_run_config(tiny_dir, tone_data, out, "max_steps=4", "learning_rate=1e30", "max_grad_norm=1e30"))
    assert "\n" not in str(e.value)
    assert not (out / "model.safetensors").exists() and not (out / "train_summary.json").exists()


def test_summary_writes_null_never_nan(tmp_path):
    from sagelm.training import StageResult, _write_summary

    config = load_config(None, [f"output_dir={tmp_path}", "dataset=d.json"])
    result = StageResult(1, ["d.json"], {"kept": 1}, 0, 1.0, 1e-5, float("nan"), 0.0, str(tmp_path))
    _write_summary(tmp_path, config, [result], resumed=False)

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in the summary")

    summary = json.loads((tmp_path / "train_summary.json").read_text(), parse_constant=refuse)
    assert summary["stages"][0]["final_loss"] is None


def test_resume_with_a_larger_max_steps_continues_and_a_corrupt_checkpoint_is_named(tmp_path, tiny_dir, tone_data):
    from transformers import TrainerCallback

    out = tmp_path / "out"
    train(_run_config(tiny_dir, tone_data, out, "max_steps=4"))
    steps_seen: list[int] = []

    class Seen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_seen.append(state.global_step)

    first = _weights(out)
    train(_run_config(tiny_dir, tone_data, out, "max_steps=6", "resume_from_checkpoint=true"), callbacks=[Seen()])
    assert steps_seen == [5, 6]
    assert json.loads((out / "train_summary.json").read_text())["stages"][0]["steps"] == 6
    assert not np.array_equal(first["lm_head.weight"], _weights(out)["lm_head.weight"])
    # A truncated checkpoint: the file is named and the checkpoint before it suggested, in one line (exit 1).
    weights = out / "stage-1" / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    args = [f"model_name_or_path={tiny_dir}", f"dataset={tone_data}", f"output_dir={out}", "max_steps=8",
            "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "save_steps=2"]  # fmt: skip
    done = _cli("train", str(_config(tmp_path)), *args, "resume_from_checkpoint=true")
    previous = out / "stage-1" / "checkpoint-4"
    _one_line_error(done, str(weights), "corrupt or truncated", f"resume_from_checkpoint={previous}")


def test_resume_with_a_larger_max_steps_but_no_checkpoint_left_says_why(tmp_path, tiny_dir, tone_data):
    """A finished run whose checkpoint-N folders are gone cannot be continued: one line saying so (exit 1), not
    a run that trains nothing and exits 0."""
    import shutil

    out = tmp_path / "out"
    train(_run_config(tiny_dir, tone_data, out, "max_steps=2"))
    for checkpoint in (out / "stage-1").glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    judge = _weights(out)
    args = [f"model_name_or_path={tiny_dir}", f"dataset={tone_data}", f"output_dir={out}", "max_steps=4",
            "per_device_train_batch_size=4", "gradient_accumulation_steps=1"]  # fmt: skip
    done = _cli("train", str(_config(tmp_path)), *args, "resume_from_checkpoint=true")
    _one_line_error(done, "stage 1 finished after 2 steps", f"{out / 'stage-1'} holds no checkpoint-N")
    assert json.loads((out / "train_summary.json").read_text())["stages"][0]["steps"] == 2
    assert all(np.array_equal(judge[k], v) for k, v in _weights(out).items())  # the judge is left as it was


def test_resume_with_more_epochs_continues_a_finished_run(tmp_path, tiny_dir, tone_data):
    """24 samples, 4 a step: half an epoch is 3 steps; resumed with one epoch, steps 4-6 follow checkpoint-3."""
    from transformers import TrainerCallback

    out = tmp_path / "out"
    train(_run_config(tiny_dir, tone_data, out, "num_train_epochs=0.5", "save_steps=3"))
    assert json.loads((out / "train_summary.json").read_text())["stages"][0]["steps"] == 3
    first = _weights(out)
    steps_seen: list[int] = []

    class Seen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_seen.append(state.global_step)

    resumed = _run_config(tiny_dir, tone_data, out, "num_train_epochs=1", "save_steps=3", "resume_from_checkpoint=true")
    train(resumed, callbacks=[Seen()])
    assert steps_seen == [4, 5, 6]
    stage = json.loads((out / "train_summary.json").read_text())["stages"][0]
    assert (stage["steps"], stage["epochs"]) == (6, 1.0)
    assert not np.array_equal(first["lm_head.weight"], _weights(out)["lm_head.weight"])
    steps_seen.clear()
    train(resumed, callbacks=[Seen()])  # asked for no more than it has: nothing to do
    assert steps_seen == []


def test_cli_train_a_loss_that_becomes_nan_is_one_line(tmp_path, tiny_dir, tone_data):
    out = tmp_path / "out"
    config = _config(tmp_path, model_name_or_path=str(tiny_dir), dataset=str(tone_data), output_dir=str(out),
                     max_steps=4, learning_rate=1e30, max_grad_norm=1e30, per_device_train_batch_size=4,
                     gradient_accumulation_steps=1, warmup_ratio=0, logging_steps=1)  # fmt: skip
    _one_line_error(_cli("train", str(config)), "stage 1 step", "the loss is nan", "training stopped")
    assert not (out / "model.safetensors").exists() and not (out / "train_summary.json").exists()


def test_cli_train_reads_relative_audio_from_media_dir(tmp_path, tiny_dir, tone_data):
    """A data file whose relative audio paths exist only under media_dir trains through `sagelm train`."""
    media, data = tmp_path / "media", tmp_path / "data" / "d.jsonl"
    rows = [json.loads(x) for x in tone_data.read_text().splitlines()[:4]]
    for row in rows:
        for key in ("audio_1", "audio_2"):
            name = Path(row[key]).name
            (media / "clips").mkdir(parents=True, exist_ok=True)
            (media / "clips" / name).write_bytes(Path(row[key]).read_bytes())
            row[key] = f"clips/{name}"  # not beside the data file: only media_dir/clips/NAME exists
    data.parent.mkdir()
    assert not (data.parent / "clips").exists() and not (Path.cwd() / "clips").exists()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = [f"model_name_or_path={tiny_dir}", f"dataset={data}", f"output_dir={out}", "max_steps=1",
            "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "save_steps=1"]  # fmt: skip
    done = _cli("train", str(_config(tmp_path)), *args, f"media_dir={media}")
    assert done.returncode == 0, done.stderr[-2000:]
    stage = json.loads((out / "train_summary.json").read_text())["stages"][0]
    assert stage["steps"] == 1 and stage["counts"]["kept"] == 4 and stage["counts"]["bad_audio"] == 0
