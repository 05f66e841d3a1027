"""Training a judge: supervised fine-tuning of the Qwen2.5-Omni thinker on judge data, as SageLM was trained.

A run is a YAML file with LLaMA-Factory's key names (defaults: the authors' recipe, `llamafactory.RECIPE`)
plus ours (`freeze_audio_encoder`, `swap_augment`, `stages`). The prompt rendering, audio front end and
checkpoint loading are the judge's own (`samples`, `encoding`, `model`), so what is trained is what is judged.
The engine is transformers' Trainer: `accelerate launch` / `torchrun` with a DeepSpeed ZeRO-2 config run the
same code on many GPUs. On a CPU it trains in float32.

Layout of `output_dir`: `stage-K/checkpoint-N/` (Trainer checkpoints, each loadable by `sagelm judge`),
`stage-K/final/` (the model after stage K, when there are several), and the final judge at the top
(config, weights, tokenizer, feature extractor) with `train_summary.json`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sagelm.llamafactory import RECIPE

logger = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]


class TrainConfigError(ValueError):
    """A training configuration that cannot run; the message names the key and the problem."""


def _as_list(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]  # LLaMA-Factory: "a,b"
    return v


class Stage(BaseModel):
    """One step of a curriculum: its data, epochs and learning rate (default: the run's)."""

    model_config = ConfigDict(extra="forbid")
    dataset: list[str] = Field(min_length=1)
    epochs: float | None = Field(default=None, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)

    _split = field_validator("dataset", mode="before")(_as_list)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
    media_dir: str | None = None

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
        value = err.get("input")
        raise TrainConfigError(f"{where}: {key}={value!r}: {err['msg']}") from None
    config.plan()
    from sagelm.aspects import UnknownAspectError, register_aspect

    for name in config.new_aspects:
        try:
            register_aspect(name)
        except UnknownAspectError as e:
            raise TrainConfigError(f"{where}: {e}") from None
    if config.deepspeed and not Path(config.deepspeed).is_file():
        raise TrainConfigError(f"{where}: deepspeed config {config.deepspeed!r} not found")
    return config


# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageResult:
    index: int
    datasets: list[str]
    counts: dict[str, int]
    steps: int
    epochs: float
    learning_rate: float
    final_loss: float | None
    seconds: float
    folder: str


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


def _load_weights(thinker: Any, folder: str | Path) -> None:
    """Load a saved thinker's weights into `thinker` through `from_pretrained`, which maps the checkpoint's
    tensor names to the module's."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    saved = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(folder, dtype=thinker.dtype)
    thinker.load_state_dict(saved.state_dict())
    logger.info("weights loaded from %s", folder)


def _trainer_class() -> type:
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
    samples, problems = read_samples(files, config.max_samples)
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

    thinker = load_judge_model(path, device="cpu", dtype=dtype).thinker
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


def _write_summary(out: Path, config: TrainConfig, results: list[StageResult], resumed: bool) -> None:
    summary = {
        "model_name_or_path": config.model_name_or_path,
        "config": config.model_dump(exclude_none=True),
        "stages": [r.__dict__ for r in results],
    }
    path = out / SUMMARY_FILE
    if path.is_file() and resumed:  # keep what earlier runs recorded of the stages this one skipped
        done = {s["index"] for s in summary["stages"]}
        old = json.loads(path.read_text(encoding="utf-8")).get("stages", [])
        summary["stages"] = sorted([s for s in old if s["index"] not in done] + summary["stages"],
                                   key=lambda s: s["index"])  # fmt: skip
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")


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
    if out.exists() and any(out.iterdir()) and not resume and not config.overwrite_output_dir:
        raise TrainConfigError(
            f"output_dir {out} is not empty; set resume_from_checkpoint: true to continue that run, "
            "overwrite_output_dir: true to replace it, or choose another output_dir"
        )
    # Everything that can fail on the data fails here, before the model is loaded or anything is removed.
    base = resolve_checkpoint(config.model_name_or_path)
    tokenizer, feature_extractor = load_processor(base)
    prepared = [_prepare_stage(k, stage, config, tokenizer) for k, stage in enumerate(stages, start=1)]
    if out.exists() and not resume and config.overwrite_output_dir and _is_main_process():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = config.bf16 and torch.cuda.is_available()
    if config.bf16 and not bf16:
        logger.info("no GPU: training in float32 (bf16 needs one)")
    # With DeepSpeed, bf16 weights (it keeps float32 master weights itself); otherwise float32 and autocast.
    dtype = torch.bfloat16 if bf16 and config.deepspeed else torch.float32
    thinker = _trainable_thinker(str(base), dtype, config.freeze_audio_encoder)

    results: list[StageResult] = []
    for k, (stage, (files, ready)) in enumerate(zip(stages, prepared, strict=True), start=1):
        last = k == len(stages)
        folder = out / f"stage-{k}"
        final = out if last else folder / "final"
        if resume and _is_model(final) and (not last or (out / SUMMARY_FILE).is_file()):
            logger.info("stage %d already done (%s); loading it", k, final)
            _load_weights(thinker, final)
            continue
        start_from: str | None = None
        if isinstance(resume, str) and (len(stages) == 1 or Path(resume).resolve().parent == folder.resolve()):
            start_from = resume
        elif resume is True and (latest := _latest_checkpoint(folder)) is not None:
            start_from = str(latest)
        if start_from:
            logger.info("stage %d: resuming from %s", k, start_from)
        losses: list[float] = []
        trainer = _trainer_class()(
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
        thinker.config.use_cache = True
        _save_judge(trainer, final, tokenizer, feature_extractor, config.new_aspects)
        thinker.config.use_cache = False
        results.append(StageResult(
            index=k, datasets=[str(f) for f in files], counts=ready.summary(), steps=trainer.state.global_step,
            epochs=float(stage.epochs or 0), learning_rate=float(stage.learning_rate or 0),
            final_loss=losses[-1] if losses else float(output.training_loss), seconds=round(seconds, 1),
            folder=str(final),
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
