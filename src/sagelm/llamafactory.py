"""The LLaMA-Factory route: the authors' training recipe, and exporting judge data for their fork.

`RECIPE` is the authors' `examples/judge/qwen2.5_omni_7B_compare_1_aspect.yaml` (IronBeliever/SageLM),
key for key and in order; `sagelm train` takes its defaults from it. `export` writes data files in the
SageLM / LLaMA-Factory JSON columns, their `dataset_info.json` entries, and that YAML with the data filled in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sagelm.audio import AudioError, load_audio
from sagelm.data import DataError
from sagelm.prompts import instruction_prompt, markup_in
from sagelm.samples import read_dataset_info, read_samples

logger = logging.getLogger(__name__)

BASE_MODEL = "Qwen/Qwen2.5-Omni-7B"  # what SageLM was fine-tuned from
TEMPLATE = "qwen2_omni"  # LLaMA-Factory's chat template for Qwen2.5-Omni (judge-protocol.md)
DS_Z2_CONFIG = "examples/deepspeed/ds_z2_config.json"  # inside a LLaMA-Factory checkout

RECIPE: dict[str, Any] = {
    # model
    "model_name_or_path": BASE_MODEL,
    "trust_remote_code": True,
    # method
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "full",
    "deepspeed": DS_Z2_CONFIG,
    # dataset
    "dataset": None,
    "template": TEMPLATE,
    "cutoff_len": 4096,
    "overwrite_cache": True,
    "preprocessing_num_workers": 16,
    "dataloader_num_workers": 0,
    # output
    "output_dir": None,
    "logging_steps": 20,
    "save_steps": 80000,
    "plot_loss": True,
    "overwrite_output_dir": True,
    "save_only_model": False,
    "report_to": "none",
    # train
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "learning_rate": 1.0e-5,
    "num_train_epochs": 3.0,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "bf16": True,
    "ddp_timeout": 180000000,
    "resume_from_checkpoint": None,
}

# Files export writes into `out`: no data file may take these names.
RESERVED = ("dataset_info", "sagelm_sft")


class ExportError(DataError):
    """Export cannot write where asked (the message names the path)."""


COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "audios": "audios"}


def dataset_entry(file_name: str) -> dict[str, Any]:
    """A `dataset_info.json` entry for a SageLM JSON file (data-formats.md)."""
    return {"file_name": file_name, "columns": dict(COLUMNS)}


def _clip_problem(audio: str, folder: Path, allow_outside: bool, seen: dict[str, str | None]) -> str | None:
    """Why a clip cannot be exported (unreadable, NaN, ..., or outside the data folder), or None; each once."""
    if audio not in seen:
        resolved = Path(audio).resolve()
        if not allow_outside and folder != resolved and folder not in resolved.parents:
            seen[audio] = f"audio {audio} is outside the data folder {folder} (allow it with --allow-outside)"
        else:
            try:
                load_audio(audio)
                seen[audio] = None
            except AudioError as e:
                seen[audio] = str(e)
    return seen[audio]


def _rows(path: Path, allow_outside: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """The trainable rows of a data file (as `sagelm train` reads them), in the SageLM JSON columns. A row whose
    clip cannot be read as audio (missing, NaN, empty, ...) or lies outside the data file's folder is skipped
    with a one-line problem, as training would skip it."""
    samples, problems = read_samples([path])
    folder = path.parent.resolve()
    seen: dict[str, str | None] = {}
    rows = []
    for s in samples:
        bad = next((p for a in (s.audio_1, s.audio_2) if (p := _clip_problem(a, folder, allow_outside, seen))), None)
        if bad is None and (markup := markup_in(s.question)):
            bad = (f"the question spells {markup}, which LLaMA-Factory would read as markup, not text "
                   "(sagelm train keeps it as text)")  # fmt: skip
        if bad is not None:
            problems.append(f"{path} row {s.id}: {bad}")
            continue
        rows.append({
            "instruction": instruction_prompt(s.aspect, s.question),
            "input": "",
            "output": s.output,
            # Absolute: LLaMA-Factory joins media_dir with the path, which keeps an absolute path as is.
            "audios": [str(Path(s.audio_1).resolve()), str(Path(s.audio_2).resolve())],
        })  # fmt: skip
    return rows, problems


def recipe_yaml(datasets: Sequence[str], dataset_dir: str, model: str, output_dir: str) -> str:
    """The authors' YAML with the model, data and output filled in (keys in their order)."""
    import yaml

    recipe = dict(RECIPE)
    recipe.update(model_name_or_path=model, dataset=",".join(datasets), output_dir=output_dir)
    items = list(recipe.items())
    at = [k for k, _ in items].index("template")
    items.insert(at, ("dataset_dir", dataset_dir))
    return yaml.safe_dump(dict(items), sort_keys=False)


def export(
    data: Sequence[str | Path], out: str | Path, model: str = BASE_MODEL, output_dir: str = "saves/sagelm",
    allow_outside: bool = False,
) -> tuple[list[str], list[str]]:  # fmt: skip
    """Write each data file as `out/NAME.json`, register them in `out/dataset_info.json` (merged with what is
    there), and write `out/sagelm_sft.yaml`. Returns (dataset names, one-line problems of skipped rows).
    No input file is written over: NAME avoids the registry's and the YAML's names and every input's path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    inputs = [Path(p) for p in data]
    for p in inputs:
        if not p.is_file():
            raise DataError(f"{p}: no such data file")
    info_path = out / "dataset_info.json"
    info = read_dataset_info(info_path)
    taken = {p.resolve() for p in inputs}
    names: list[str] = []
    problems: list[str] = []
    out.mkdir(parents=True, exist_ok=True)
    for path in inputs:
        rows, bad = _rows(path, allow_outside)
        problems += bad
        name = path.stem
        while name in names or name in RESERVED or (out / f"{name}.json").resolve() in taken:
            name += "_"
        (out / f"{name}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        info[name] = dataset_entry(f"{name}.json")
        names.append(name)
        logger.info("%s: %d rows -> %s (%d skipped)", path, len(rows), out / f"{name}.json", len(bad))
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (out / "sagelm_sft.yaml").write_text(recipe_yaml(names, str(out.resolve()), model, output_dir), encoding="utf-8")
    return names, problems
