"""Training a judge: supervised fine-tuning of the Qwen2.5-Omni thinker on judge data, as SageLM was trained.

A run is a YAML file with LLaMA-Factory's key names (defaults: the authors' recipe, `llamafactory.RECIPE`)
plus ours (`freeze_audio_encoder`, `swap_augment`, `stages`). The prompt rendering, audio front end and
checkpoint loading are the judge's own (`samples`, `encoding`, `model`), so what is trained is what is judged.
The engine is transformers' Trainer: `accelerate launch` / `torchrun` with a DeepSpeed ZeRO-2 config run the
same code on many GPUs. On a CPU it trains in float32.

Layout of `output_dir`: `stage-K/checkpoint-N/` (Trainer checkpoints, each loadable by `sagelm judge`),
`stage-K/final/` (the model after stage K, when there are several), and the final judge at the top
(config, weights, tokenizer, feature extractor) with `train_summary.json`. `overwrite_output_dir` means what it
means in LLaMA-Factory and transformers (write into a non-empty folder): only an earlier run's `stage-K` folders and
summary are removed, nothing else; an `output_dir` holding the model being trained or its data is refused.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import reprlib
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sagelm.errors import SagelmError
from sagelm.jsonout import finite
from sagelm.llamafactory import RECIPE

logger = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]


class TrainConfigError(SagelmError, ValueError):
    """A training configuration that cannot run; the message names the key and the problem."""


class TrainingDiverged(TrainConfigError):
    """The loss (or the weights) stopped being finite numbers: training stops instead of saving a broken judge."""


# What an error message quotes of a value: bounded, so that a YAML alias bomb does not become a 351 MB line.
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxstring, _QUOTE.maxother, _QUOTE.maxlong = 2, 4, 4, 80, 80, 40

# `report_to` integrations and the packages they need (transformers.integrations), checked before any work.
_REPORTERS = {
    "wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",), "clearml": ("clearml",), "neptune": ("neptune",), "dvclive": ("dvclive",),
    "swanlab": ("swanlab",), "codecarbon": ("codecarbon",), "azure_ml": ("azureml",), "trackio": ("trackio",),
}  # fmt: skip


def _as_list(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]  # LLaMA-Factory: "a,b"
    return v


class Stage(BaseModel):
    """One step of a curriculum: its data, epochs and learning rate (default: the run's)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    dataset: list[str] = Field(min_length=1)
    epochs: float | None = Field(default=None, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)

    _split = field_validator("dataset", mode="before")(_as_list)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # learning_rate: .inf is not a rate

    model_name_or_path: str = RECIPE["model_name_or_path"]
    dataset: list[str] | None = None
    dataset_dir: str | None = None
    output_dir: str
    learning_rate: float = Field(default=RECIPE["learning_rate"], gt=0)
    lr_scheduler_type: Scheduler = RECIPE["lr_scheduler_type"]
    warmup_ratio: float = Field(default=RECIPE["warmup_ratio"], ge=0, lt=1)
    num_train_epochs: float = Field(default=RECIPE["num_train_epochs"], gt=0)
    max_steps: int = Field(default=-1, description="> 0: train this many optimizer steps per stage instead")
    per_device_train_batch_size: int = Field(default=RECIPE["per_device_train_batch_size"], ge=1)
    gradient_accumulation_steps: int = Field(default=RECIPE["gradient_accumulation_steps"], ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    cutoff_len: int = Field(default=RECIPE["cutoff_len"], ge=16)
    max_samples: int | None = Field(default=None, ge=1)
    bf16: bool = RECIPE["bf16"]
    seed: int = 42
    save_steps: int = Field(default=RECIPE["save_steps"], ge=1)
    save_total_limit: int | None = Field(default=None, ge=1)
    save_only_model: bool = RECIPE["save_only_model"]
    logging_steps: int = Field(default=RECIPE["logging_steps"], ge=1)
    resume_from_checkpoint: bool | str | None = None
    overwrite_output_dir: bool = False
    deepspeed: str | None = None
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = Field(default=0, ge=0)
    report_to: str = "none"
    ddp_timeout: int = Field(default=1800, ge=1)
    # ours
    new_aspects: list[str] = Field(default_factory=list)  # aspects beyond SageLM's eight, as written in the prompts
    freeze_audio_encoder: bool = True
    swap_augment: bool = False
    stages: list[Stage] | None = None
    # LLaMA-Factory's: accepted so that the authors' YAML loads; fixed to the values implemented here, or (caching,
    # plots, remote code) changing nothing here
    stage: Literal["sft"] = "sft"
    do_train: Literal[True] = True
    finetuning_type: Literal["full"] = "full"
    template: Literal["qwen2_omni"] = "qwen2_omni"
    trust_remote_code: bool | None = None
    overwrite_cache: bool | None = None
    preprocessing_num_workers: int | None = None
    plot_loss: bool | None = None
    media_dir: str | None = None  # relative audio paths resolve against it first (LLaMA-Factory's meaning)

    _split = field_validator("dataset", mode="before")(_as_list)

    def plan(self) -> list[Stage]:
        """The stages to run: `stages` as given, or one stage of `dataset`."""
        if self.stages:
            if self.dataset:
                raise TrainConfigError("give either 'dataset' or 'stages', not both")
            return [
                Stage(dataset=s.dataset, epochs=s.epochs or self.num_train_epochs,
                      learning_rate=s.learning_rate or self.learning_rate)
                for s in self.stages
            ]  # fmt: skip
        if not self.dataset:
            raise TrainConfigError("no data: give 'dataset' (one or more files) or 'stages'")
        return [Stage(dataset=self.dataset, epochs=self.num_train_epochs, learning_rate=self.learning_rate)]


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise TrainConfigError(f"override {item!r}: expected key=value")
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read and check a training YAML (plus `key=value` overrides); one-line TrainConfigError when wrong."""
    raw: dict[str, Any] = {}
    where = "the command line"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise TrainConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise TrainConfigError(f"{path}: expected a mapping of keys to values")
        raw = dict(loaded or {})
    for item in overrides:
        key, value = _parse_override(item)
        raw[key] = value
    raw = {k: v for k, v in raw.items() if v is not None or k in ("resume_from_checkpoint",)}
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            raise TrainConfigError(f"{where}: unknown key {key!r}") from None
        if err["type"] == "missing":
            raise TrainConfigError(f"{where}: {key!r} is required") from None
        value = _QUOTE.repr(err.get("input"))
        raise TrainConfigError(f"{where}: {key}={value}: {err['msg']}") from None
    config.plan()
    from sagelm.aspects import UnknownAspectError, register_aspect

    for name in config.new_aspects:
        try:
            register_aspect(name)
        except UnknownAspectError as e:
            raise TrainConfigError(f"{where}: {e}") from None
    if config.deepspeed and not Path(config.deepspeed).is_file():
        raise TrainConfigError(f"{where}: deepspeed config {config.deepspeed!r} not found")
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and not Path(resume).expanduser().is_dir():
        raise TrainConfigError(f"{where}: resume_from_checkpoint {resume!r}: no such checkpoint folder")
    if config.media_dir is not None and not Path(config.media_dir).expanduser().is_dir():
        raise TrainConfigError(f"{where}: media_dir {config.media_dir!r}: no such folder")
    _check_reporters(config.report_to, where)
    return config


def _check_reporters(report_to: str, where: str) -> None:
    """Each `report_to` integration is known and installed (else Trainer fails after the model has loaded)."""
    for name in _as_list(report_to):
        if name in ("none", "all"):
            continue
        if name not in _REPORTERS:
            raise TrainConfigError(f"{where}: report_to={name!r}: not one of none, all, {', '.join(_REPORTERS)}")
        if not any(importlib.util.find_spec(m) for m in _REPORTERS[name]):
            raise TrainConfigError(f"{where}: report_to={name!r} but the {_REPORTERS[name][0]} package is not "
                                   f"installed (pip install {_REPORTERS[name][0]}, or report_to: none)")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageResult:
    index: int
    datasets: list[str]
    counts: dict[str, int]
    steps: int
    epochs: float
    learning_rate: float
    final_loss: float | None  # None when no finite loss was logged
    seconds: float
    folder: str
    max_steps: int = -1  # as configured (-1: epochs decide); a resume with a larger one continues the stage


Progress = Callable[[str, int, int], None]  # (stage label, step, total steps)


def _trainer_callbacks(
    label: str, on_progress: Progress | None, losses: list[float], feature_extractor: Any, new_aspects: list[str]
) -> list[Any]:
    from transformers import TrainerCallback

    from sagelm.aspects import save_aspects

    class Report(TrainerCallback):
        """Progress and loss to the caller and the log (not print: Trainer's own printer is removed)."""

        def on_train_begin(self, args, state, control, **kwargs):
            if on_progress:
                on_progress(label, state.global_step, state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if on_progress:
                on_progress(label, state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                logger.info("%s step %d/%d: loss %.4f, lr %.2e", label, state.global_step, state.max_steps,
                            logs["loss"], logs.get("learning_rate", float("nan")))  # fmt: skip

    class SaveFeatureExtractor(TrainerCallback):
        """The feature extractor beside every checkpoint (Trainer saves the tokenizer), so each one loads
        in `sagelm judge --model`."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                feature_extractor.save_pretrained(folder)
                save_aspects(folder, new_aspects)

    return [Report(), SaveFeatureExtractor()]


def _step_of(folder: Path) -> int:
    tail = folder.name.rsplit("-", 1)[-1]
    return int(tail) if folder.name.startswith("checkpoint-") and tail.isdigit() else -1


def _checkpoint_problem(folder: Path, trainer_files: bool) -> str | None:
    """What makes `folder` unusable to resume from (a missing or truncated file), or None. Cheap: JSON files are
    parsed, safetensors headers read and torch's zip archives opened, nothing is loaded."""
    from safetensors import safe_open

    if not folder.is_dir():
        return f"{folder}: no such checkpoint folder"
    needed = ["config.json"] + (["trainer_state.json"] if trainer_files else [])
    for name in needed:
        f = folder / name
        if not f.is_file():
            return f"{f}: missing"
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"{f}: corrupt ({str(e).splitlines()[0]})"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return f"{folder}: no model weights (*.safetensors)"
    for f in weights:
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # safetensors raises its own error types for a bad header or a short file
            return f"{f}: corrupt or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    for f in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        try:
            zipfile.ZipFile(f).close()
        except (zipfile.BadZipFile, OSError) as e:
            return f"{f}: corrupt or truncated ({e})"
    return None


def _check_checkpoint(folder: Path, trainer_files: bool = True) -> None:
    """A one-line TrainConfigError naming the bad file (and the previous checkpoint-N) when `folder` cannot be
    resumed from."""
    problem = _checkpoint_problem(folder, trainer_files)
    if problem is None:
        return
    step = _step_of(folder)
    earlier = [p for p in folder.parent.glob("checkpoint-*") if -1 < _step_of(p) < step] if step >= 0 else []
    if earlier:
        previous = max(earlier, key=_step_of)
        problem += f"; resume from the previous one with resume_from_checkpoint={previous}"
    raise TrainConfigError(problem)


def _load_weights(thinker: Any, folder: str | Path) -> None:
    """Load a saved thinker's weights into `thinker` through `from_pretrained`, which maps the checkpoint's
    tensor names to the module's."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    _check_checkpoint(Path(folder), trainer_files=False)
    saved = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(folder, dtype=thinker.dtype)
    thinker.load_state_dict(saved.state_dict())
    logger.info("weights loaded from %s", folder)


def _trainer_class(label: str) -> type:
    import torch
    from transformers import Trainer

    class JudgeTrainer(Trainer):
        """Trainer whose resume reloads the thinker's weights by their saved names.

        transformers 5.24 saves the thinker's weights under their checkpoint names (`audio_tower.*`, `model.*`)
        but Trainer's own resume loads them by module names (`model.audio_tower.*`, `model.language_model.*`):
        nothing but `lm_head` matches and it goes on from the wrong weights with a warning. `from_pretrained`
        maps the names; this loads through it (tests/test_training.py checks resume against an unbroken run).
        """

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            _load_weights(model or self.model, resume_from_checkpoint)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not bool(torch.isfinite(loss.detach()).all()):  # one sync a step: cheap beside the step itself
                raise TrainingDiverged(
                    f"{label} step {self.state.global_step + 1}: the loss is {float(loss):g}; training stopped "
                    f"(learning_rate {self.args.learning_rate:g} too high, or bad data?)"
                )
            return loss

    return JudgeTrainer


def _submodule(thinker: Any, name: str) -> Any:
    """`thinker.model.NAME` (transformers 5) or `thinker.NAME` (transformers 4)."""
    for path in (f"model.{name}", name):
        try:
            return thinker.get_submodule(path)
        except AttributeError:
            continue
    raise TrainConfigError(f"the model has no {name!r} module; is it a Qwen2.5-Omni thinker?")


def _is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` job (or a plain run): the one that removes and summarises."""
    return int(os.environ.get("RANK", "0")) == 0


def _latest_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_output_dir(out: Path, config: TrainConfig) -> None:
    """`output_dir` is a folder (or can be one) and, unless resuming, empty or `overwrite_output_dir` allows
    writing into it."""
    if out.exists() and not out.is_dir():
        raise TrainConfigError(f"output_dir {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not config.resume_from_checkpoint and not config.overwrite_output_dir:
        raise TrainConfigError(
            f"output_dir {out} is not empty; set resume_from_checkpoint: true to continue that run, "
            "overwrite_output_dir: true to write into it (only what an earlier run saved there is replaced), "
            "or choose another output_dir"
        )


def _check_nothing_read_inside(out: Path, base: Path, prepared: list[tuple[list[Path], Any]]) -> None:
    """`output_dir` holds neither the model being trained nor its data (saving would write over them)."""
    if _within(base, out):
        raise TrainConfigError(f"output_dir {out} holds the model being trained ({base}); choose another output_dir")
    for files, ready in prepared:
        inside = next((f for f in files if _within(f, out)), None)
        inside = inside or next((Path(a) for s in ready.samples for a in (s.audio_1, s.audio_2)
                                 if _within(Path(a), out)), None)  # fmt: skip
        if inside is not None:
            raise TrainConfigError(f"output_dir {out} holds training data ({inside}); choose another output_dir")


def _clear_previous_run(out: Path) -> None:
    """Before a fresh run in a used `output_dir` (`overwrite_output_dir`): remove what an earlier sagelm run wrote
    that would mislead a later resume (its `stage-K` folders of checkpoints and its summary) and nothing else;
    the judge files at the top are overwritten when this run saves."""
    stale = [d for d in out.glob("stage-*") if d.is_dir() and d.name.removeprefix("stage-").isdigit()]
    for d in stale:
        foreign = [p.name for p in d.iterdir() if not (p.is_dir() and (p.name == "final" or _step_of(p) >= 0))]
        if foreign:
            raise TrainConfigError(f"output_dir {out}: {d} holds files sagelm did not write "
                                   f"({', '.join(foreign[:3])}); move them or choose another output_dir")  # fmt: skip
    for d in stale:
        logger.info("overwrite_output_dir: removing %s (an earlier run's checkpoints)", d)
        shutil.rmtree(d)
    (out / SUMMARY_FILE).unlink(missing_ok=True)


def _training_args(config: TrainConfig, stage: Stage, folder: Path, bf16: bool) -> Any:
    import torch
    from transformers import TrainingArguments

    cpu = not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(folder),
        learning_rate=stage.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # below 1: a ratio of the total steps
        num_train_epochs=stage.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=bf16,
        seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        save_only_model=config.save_only_model,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss is reported, never averaged away
        deepspeed=config.deepspeed,
        activation_checkpointing=config.gradient_checkpointing,
        dataloader_pin_memory=not cpu,
        # Under torchrun on a machine without GPUs, DDP needs the gloo backend and use_cpu (else each process
        # trains alone on all the data).
        use_cpu=cpu,
        ddp_backend="gloo" if cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        dataloader_num_workers=config.dataloader_num_workers,
        report_to=config.report_to,
        ddp_timeout=config.ddp_timeout,
        remove_unused_columns=False,
        disable_tqdm=True,
    )


def _save_judge(trainer: Any, folder: Path, tokenizer: Any, feature_extractor: Any, new_aspects: list[str]) -> None:
    from sagelm.aspects import save_aspects

    trainer.save_model(str(folder))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(folder)
        feature_extractor.save_pretrained(folder)
        save_aspects(folder, new_aspects)


def _prepare_stage(k: int, stage: Stage, config: TrainConfig, tokenizer: Any) -> tuple[list[Path], Any]:
    """A stage's data files and its checked, counted samples; a stage left with nothing stops the run."""
    from sagelm.samples import data_files, prepare, read_samples

    files = data_files(stage.dataset, config.dataset_dir)
    samples, problems = read_samples(files, config.max_samples, config.media_dir)
    ready = prepare(samples, tokenizer, config.cutoff_len, config.swap_augment, problems)
    for p in ready.problems:
        logger.warning("%s", p)
    logger.info("stage %d: %s", k, ready.summary())
    if not ready.samples:
        raise TrainConfigError(f"stage {k} ({', '.join(map(str, files))}): no sample left to train on "
                               f"({ready.summary()})")  # fmt: skip
    return files, ready


def _trainable_thinker(path: str, dtype: Any, freeze_audio_encoder: bool) -> Any:
    """The thinker, loaded by the judge's own code, with what is not trained frozen."""
    from sagelm.model import load_judge_model

    thinker = load_judge_model(path, device="cpu", dtype=dtype, vision=True).thinker
    thinker.config.use_cache = False
    thinker.requires_grad_(True)
    # The vision tower is never used (and would leave DDP with unused parameters); the audio encoder is frozen
    # as in SageLM's recipe unless asked otherwise.
    for name in ("visual",) + (("audio_tower",) if freeze_audio_encoder else ()):
        _submodule(thinker, name).requires_grad_(False)
    trainable = sum(p.numel() for p in thinker.parameters() if p.requires_grad)
    logger.info("training %s parameters of %s (audio encoder %s)", f"{trainable:,}",
                f"{sum(p.numel() for p in thinker.parameters()):,}",
                "frozen" if freeze_audio_encoder else "trained")  # fmt: skip
    return thinker.train()


def _previous_stages(out: Path) -> dict[int, dict[str, Any]]:
    """The stages an earlier run's summary records, by index ({} without a readable summary)."""
    try:
        stages = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8")).get("stages", [])
        return {int(s["index"]): s for s in stages}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _wants_more(config: TrainConfig, stage: Stage, before: dict[str, Any] | None) -> bool:
    """A finished stage that this config asks to train further (a larger max_steps, or more epochs)."""
    if before is None:
        return False
    if config.max_steps > 0:
        return config.max_steps > int(before.get("steps", 0))
    return int(before.get("max_steps", -1)) <= 0 and float(stage.epochs or 0) > float(before.get("epochs", 0))


def _write_summary(out: Path, config: TrainConfig, results: list[StageResult], resumed: bool) -> None:
    summary = {
        "model_name_or_path": config.model_name_or_path,
        "config": config.model_dump(exclude_none=True),
        "stages": [r.__dict__ for r in results],
    }
    if resumed:  # keep what earlier runs recorded of the stages this one skipped
        done = {s["index"] for s in summary["stages"]}
        old = [s for i, s in _previous_stages(out).items() if i not in done]
        summary["stages"] = sorted(old + summary["stages"], key=lambda s: s["index"])
    text = json.dumps(finite(summary), indent=2, default=str, allow_nan=False)
    (out / SUMMARY_FILE).write_text(text + "\n", encoding="utf-8")


def _check_finite_weights(thinker: Any, label: str) -> None:
    import torch

    bad = next((n for n, p in thinker.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())),
               None)  # fmt: skip
    if bad is not None:
        raise TrainingDiverged(f"{label}: weight {bad} is no longer finite (NaN/inf); the judge is not saved "
                               "(learning_rate too high?)")  # fmt: skip


def _start_point(
    k: int, stage: Stage, last: bool, out: Path, config: TrainConfig, before: dict[int, dict[str, Any]]
) -> tuple[bool, str | None]:
    """(stage k is done, the checkpoint it resumes from), worked out and checked before the model is loaded. A
    finished stage that the config asks to train further (a larger max_steps, more epochs) continues from its
    last checkpoint."""
    resume = config.resume_from_checkpoint
    folder = out / f"stage-{k}"
    final = out if last else folder / "final"
    start_from: str | None = None
    if resume and _is_model(final) and (not last or (out / SUMMARY_FILE).is_file()):
        if not _wants_more(config, stage, before.get(k)):
            _check_checkpoint(final, trainer_files=False)
            return True, None
        latest = _latest_checkpoint(folder)
        if latest is None:
            raise TrainConfigError(f"stage {k} finished after {before[k].get('steps')} steps and {folder} holds "
                                   "no checkpoint-N to continue it from; train into a new output_dir")  # fmt: skip
        logger.info("stage %d finished after %s steps; continuing it from %s", k, before[k].get("steps"), latest)
        start_from = str(latest)
    elif isinstance(resume, str) and (last and k == 1 or Path(resume).resolve().parent == folder.resolve()):
        start_from = resume
    elif resume is True and (latest := _latest_checkpoint(folder)) is not None:
        start_from = str(latest)
    if start_from:
        _check_checkpoint(Path(start_from))
    return False, start_from


def train(
    config: TrainConfig,
    on_progress: Progress | None = None,
    callbacks: Sequence[Any] = (),
) -> list[StageResult]:
    """Run every stage of `config` in order and save the judge in `config.output_dir`."""
    import torch
    from transformers import PrinterCallback

    from sagelm.model import load_processor, resolve_checkpoint
    from sagelm.samples import Collator, SampleDataset

    out = Path(config.output_dir)
    stages = config.plan()
    resume = config.resume_from_checkpoint
    if config.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise TrainConfigError(f"deepspeed: {config.deepspeed} is set but the deepspeed package is not installed "
                               "(pip install deepspeed, on a machine with CUDA GPUs)")  # fmt: skip
    _check_output_dir(out, config)
    # Everything that can fail on the data fails here, before the model is loaded or anything is removed.
    base = resolve_checkpoint(config.model_name_or_path)
    tokenizer, feature_extractor = load_processor(base)
    prepared = [_prepare_stage(k, stage, config, tokenizer) for k, stage in enumerate(stages, start=1)]
    _check_nothing_read_inside(out, base, prepared)
    if out.is_dir() and not resume and config.overwrite_output_dir and _is_main_process():
        _clear_previous_run(out)
    before = _previous_stages(out) if resume else {}
    starts = [_start_point(k, stage, k == len(stages), out, config, before) for k, stage in enumerate(stages, 1)]
    out.mkdir(parents=True, exist_ok=True)
    bf16 = config.bf16 and torch.cuda.is_available()
    if config.bf16 and not bf16:
        logger.info("no GPU: training in float32 (bf16 needs one)")
    # With DeepSpeed, bf16 weights (it keeps float32 master weights itself); otherwise float32 and autocast.
    dtype = torch.bfloat16 if bf16 and config.deepspeed else torch.float32
    thinker = _trainable_thinker(str(base), dtype, config.freeze_audio_encoder)

    results: list[StageResult] = []
    for k, (stage, (files, ready), (done, start_from)) in enumerate(zip(stages, prepared, starts, strict=True), 1):
        last = k == len(stages)
        folder = out / f"stage-{k}"
        final = out if last else folder / "final"
        if done:
            logger.info("stage %d already done (%s); loading it", k, final)
            _load_weights(thinker, final)
            continue
        if start_from:
            logger.info("stage %d: resuming from %s", k, start_from)
        losses: list[float] = []
        trainer = _trainer_class(f"stage {k}")(
            model=thinker,
            args=_training_args(config, stage, folder, bf16),
            data_collator=Collator(tokenizer, feature_extractor),
            train_dataset=SampleDataset(ready.samples),
            processing_class=tokenizer,
            callbacks=[
                *_trainer_callbacks(f"stage {k}", on_progress, losses, feature_extractor, config.new_aspects),
                *callbacks,
            ],
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        t0 = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=start_from)
        seconds = time.perf_counter() - t0
        _check_finite_weights(thinker, f"stage {k}")
        thinker.config.use_cache = True
        _save_judge(trainer, final, tokenizer, feature_extractor, config.new_aspects)
        thinker.config.use_cache = False
        results.append(StageResult(
            index=k, datasets=[str(f) for f in files], counts=ready.summary(), steps=trainer.state.global_step,
            epochs=float(stage.epochs or 0), learning_rate=float(stage.learning_rate or 0),
            final_loss=finite(losses[-1] if losses else float(output.training_loss)), seconds=round(seconds, 1),
            folder=str(final), max_steps=config.max_steps,
        ))  # fmt: skip
        logger.info("stage %d: %d steps in %.0f s, saved %s", k, trainer.state.global_step, seconds, final)
    thinker.eval()
    if _is_main_process():
        _write_summary(out, config, results, bool(resume))
    return results


def steps_per_epoch(n_samples: int, config: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps in one epoch (as Trainer counts them)."""
    batches = math.ceil(n_samples / (config.per_device_train_batch_size * world_size))
    return max(1, math.ceil(batches / config.gradient_accumulation_steps))
