"""`sagelm export llamafactory`: data, dataset_info.json and the authors' YAML."""

from __future__ import annotations

import json
import os
import subprocess

import yaml
from conftest import REPO, tone, write

from sagelm.llamafactory import RECIPE, export
from sagelm.prompts import instruction_prompt
from sagelm.samples import data_files, read_samples
from sagelm.training import load_config

SAGELM = str(REPO / ".venv" / "bin" / "sagelm") if (REPO / ".venv" / "bin" / "sagelm").exists() else "sagelm"

# The authors' examples/judge/qwen2.5_omni_7B_compare_1_aspect.yaml (IronBeliever/SageLM), its keys in order.
AUTHORS_KEYS = [
    "model_name_or_path",
    "trust_remote_code",
    "stage",
    "do_train",
    "finetuning_type",
    "deepspeed",
    "dataset",
    "template",
    "cutoff_len",
    "overwrite_cache",
    "preprocessing_num_workers",
    "dataloader_num_workers",
    "output_dir",
    "logging_steps",
    "save_steps",
    "plot_loss",
    "overwrite_output_dir",
    "save_only_model",
    "report_to",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "lr_scheduler_type",
    "warmup_ratio",
    "bf16",
    "ddp_timeout",
    "resume_from_checkpoint",
]


def _data(tmp_path):
    write(tmp_path / "src" / "a.wav", tone(0.5))
    write(tmp_path / "src" / "b.wav", tone(0.7, 300))
    rows = [
        {
            "id": "q1",
            "instruction": "Read it with a male voice: hello",
            "audio_1": "a.wav",
            "audio_2": "b.wav",
            "aspect": "gender",
            "output": "2\nResponse 2 uses man's voice.",
        },
        {"id": "q2", "instruction": "no aspect", "audio_1": "a.wav", "audio_2": "b.wav", "label": "1"},
    ]
    jsonl = tmp_path / "src" / "mine.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return jsonl


def _with_audio(release_file, folder):
    """A copy of a released test file with a short clip at every audio path (the audio is a separate download)."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / release_file.name
    copy.write_bytes(release_file.read_bytes())
    clip = write(folder / "clip.wav", tone(0.3))
    for a in {a for r in json.loads(copy.read_text()) for a in r["audios"]}:
        (folder / a).parent.mkdir(parents=True, exist_ok=True)
        os.link(clip, folder / a)
    return copy


def test_export_writes_data_registry_and_the_authors_yaml(tmp_path, release):
    jsonl = _data(tmp_path)
    out = tmp_path / "lf"
    (out).mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"theirs": {"file_name": "theirs.json"}}))
    acoustic = _with_audio(release / "test_acoustic.json", tmp_path / "release")
    names, problems = export([jsonl, acoustic], out, model="/models/omni", output_dir="saves/x")
    assert names == ["mine", "test_acoustic"]
    assert len(problems) == 1 and "row q2" in problems[0] and "no aspect" in problems[0]
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["theirs"] == {"file_name": "theirs.json"}  # entries already there are kept
    assert info["mine"] == {
        "file_name": "mine.json",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "audios": "audios"},
    }
    mine = json.loads((out / "mine.json").read_text())
    assert mine == [
        {
            "instruction": instruction_prompt("gender instruction following", "Read it with a male voice: hello"),
            "input": "",
            "output": "2\nResponse 2 uses man's voice.",
            "audios": [str((tmp_path / "src" / "a.wav").resolve()), str((tmp_path / "src" / "b.wav").resolve())],
        }
    ]
    released = json.loads(acoustic.read_text())
    exported = json.loads((out / "test_acoustic.json").read_text())
    assert len(exported) == len(released) == 410
    assert [r["instruction"] for r in exported] == [
        r["instruction"].replace("### Instruction:  \n", "### Instruction:\n") for r in released
    ]
    assert [r["output"] for r in exported] == [r["output"] for r in released]

    recipe = yaml.safe_load((out / "sagelm_sft.yaml").read_text())
    assert [k for k in recipe if k != "dataset_dir"] == AUTHORS_KEYS
    assert recipe["dataset"] == "mine,test_acoustic" and recipe["dataset_dir"] == str(out.resolve())
    assert recipe["model_name_or_path"] == "/models/omni" and recipe["output_dir"] == "saves/x"
    fixed = {k: v for k, v in recipe.items() if k not in ("dataset", "dataset_dir", "model_name_or_path", "output_dir")}
    assert fixed == {k: v for k, v in RECIPE.items() if k in fixed}
    assert (recipe["learning_rate"], recipe["cutoff_len"], recipe["template"]) == (1e-5, 4096, "qwen2_omni")

    # The same YAML is a valid `sagelm train` config, and its data read back as the same samples.
    config = load_config(out / "sagelm_sft.yaml", ["deepspeed="])
    files = data_files(config.plan()[0].dataset, config.dataset_dir)
    again, _ = read_samples(files[:1])
    first, _ = read_samples([jsonl])
    assert [(s.aspect, s.question, s.verdict, s.rationale) for s in again] == [
        (s.aspect, s.question, s.verdict, s.rationale) for s in first
    ]


def test_cli_export(tmp_path):
    jsonl = _data(tmp_path)
    done = subprocess.run(
        [SAGELM, "export", "llamafactory", str(jsonl), "--out", str(tmp_path / "lf")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "row q2" in done.stderr and "llamafactory-cli train" in done.stderr
    assert sorted(p.name for p in (tmp_path / "lf").iterdir()) == ["dataset_info.json", "mine.json", "sagelm_sft.yaml"]


def _cli(*args):
    return subprocess.run([SAGELM, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
                          timeout=60)  # fmt: skip


def _one_line_error(done, *parts):
    lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
    assert done.returncode == 1 and lines[-1].startswith("sagelm: error: ") and "Traceback" not in done.stderr
    assert all(p in lines[-1] for p in parts), lines[-1]


def test_export_checks_every_clip_and_keeps_to_the_data_folder(tmp_path):
    import numpy as np
    import soundfile as sf

    jsonl = _data(tmp_path)
    sf.write(str(tmp_path / "src" / "nan.wav"), np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    write(tmp_path / "outside.wav", tone(0.5))
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()][:1]
    rows += [{**rows[0], "id": "q3", "audio_2": "nan.wav"}, {**rows[0], "id": "q4", "audio_1": "../outside.wav"},
             {**rows[0], "id": "q5", "audio_1": str(tmp_path / "outside.wav")}]  # fmt: skip
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    names, problems = export([jsonl], tmp_path / "lf")
    assert len(json.loads((tmp_path / "lf" / "mine.json").read_text())) == 1
    assert [p.split(": ", 1)[0].rsplit(" ", 1)[-1] for p in problems] == ["q3", "q4", "q5"]
    assert "NaN" in problems[0] and all("outside the data folder" in p for p in problems[1:])
    export([jsonl], tmp_path / "lf2", allow_outside=True)
    assert len(json.loads((tmp_path / "lf2" / "mine.json").read_text())) == 3


def test_export_never_writes_over_an_input(tmp_path):
    jsonl = _data(tmp_path)
    registry = tmp_path / "src" / "dataset_info.json"  # an input named like the registry
    registry.write_text(jsonl.read_text())
    before = {p: p.read_bytes() for p in (jsonl, registry)}
    names, _ = export([registry, jsonl], tmp_path / "lf")
    assert names == ["dataset_info_", "mine"]
    assert set(json.loads((tmp_path / "lf" / "dataset_info.json").read_text())) == {"dataset_info_", "mine"}
    assert all(p.read_bytes() == b for p, b in before.items())
    exported = tmp_path / "lf" / "mine.json"
    again = exported.read_bytes()
    names, _ = export([exported], tmp_path / "lf", allow_outside=True)  # lf/mine.json would be the input itself
    assert names == ["mine_"] and exported.read_bytes() == again
    assert json.loads((tmp_path / "lf" / "mine_.json").read_text()) == json.loads(again)


def test_cli_export_errors_are_one_line(tmp_path):
    jsonl = _data(tmp_path)
    (tmp_path / "file").write_text("x")
    _one_line_error(_cli("export", "llamafactory", str(jsonl), "--out", str(tmp_path / "file")), "is a file")
    (tmp_path / "lf").mkdir()
    (tmp_path / "lf" / "dataset_info.json").write_text("{oops")
    done = _cli("export", "llamafactory", str(jsonl), "--out", str(tmp_path / "lf"))
    _one_line_error(done, str(tmp_path / "lf" / "dataset_info.json"), "not valid JSON")
    assert (tmp_path / "lf" / "dataset_info.json").read_text() == "{oops"


def test_export_skips_a_question_llamafactory_would_read_as_markup(tmp_path):
    jsonl = _data(tmp_path)
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()][:1]
    rows += [{**rows[0], "id": "q7", "instruction": "Play <audio> again"},
             {**rows[0], "id": "q8", "instruction": "Print <|im_end|>"}]  # fmt: skip
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    names, problems = export([jsonl], tmp_path / "lf")
    assert len(json.loads((tmp_path / "lf" / "mine.json").read_text())) == 1
    assert [p.split(": ", 1)[0].rsplit(" ", 1)[-1] for p in problems] == ["q7", "q8"]
    assert "<audio>" in problems[0] and "<|im_end|>" in problems[1]
