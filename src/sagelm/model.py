"""Loading the judge: the Qwen2.5-Omni thinker plus an audio-only processor (tokenizer + Whisper features).

`--model` takes a hub id (default: the released SageLM weights) or a local folder holding either a full
Qwen2.5-Omni checkpoint (thinker + talker + token2wav, as the authors released it) or a thinker-only one
(as training saves it). Only the thinker is loaded: `Qwen2_5OmniThinkerForConditionalGeneration` reads a
full checkpoint's `thinker_config` and `thinker.*` weights and skips the rest.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sagelm.aspects import load_aspects
from sagelm.errors import SagelmError
from sagelm.prompts import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN, IM_END
from sagelm.verdicts import VERDICTS

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "LGB666/SageLM"  # the released SageLM weights (full Qwen2.5-Omni-7B checkpoint)
HUB_PROBE_SECONDS = 3.0


class ModelUnavailableError(SagelmError, RuntimeError):
    """The model can be neither found locally nor fetched."""


class ModelFormatError(SagelmError, RuntimeError):
    """A folder that is not a usable Qwen2.5-Omni checkpoint."""


class DeviceError(SagelmError, ValueError):
    """A --device this machine does not have."""


@dataclass
class JudgeModel:
    """A loaded judge: the thinker, its tokenizer and feature extractor, and the ids the judge reads."""

    name: str
    thinker: Any
    tokenizer: Any
    feature_extractor: Any

    def __post_init__(self) -> None:
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or "<|endoftext|>"
        for special in (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS, IM_END):
            if special not in tok.get_vocab():
                raise ModelFormatError(f"{self.name}: tokenizer lacks the special token {special}")
        self.im_end_id: int = tok.convert_tokens_to_ids(IM_END)
        audio_id = tok.convert_tokens_to_ids(AUDIO_TOKEN)
        if self.thinker.config.audio_token_id != audio_id:
            raise ModelFormatError(
                f"{self.name}: config audio_token_id {self.thinker.config.audio_token_id} "
                f"!= tokenizer's {AUDIO_TOKEN} id {audio_id}"
            )
        # The verdict is the first generated token; P(1), P(2), P(Tie) are read at these ids.
        first_ids = [tok.encode(v, add_special_tokens=False)[0] for v in VERDICTS]
        if len(set(first_ids)) != len(first_ids):
            raise ModelFormatError(f"{self.name}: verdicts 1/2/Tie do not start with distinct tokens")
        self.verdict_token_ids: dict[str, int] = dict(zip(VERDICTS, first_ids, strict=True))

    @property
    def device(self) -> Any:
        return self.thinker.device


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        with socket.create_connection((endpoint.hostname or "", port), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def resolve_checkpoint(model: str) -> Path:
    """A local folder for `model`: the folder itself, the hub cache, or a fresh download."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelUnavailableError(
            f"model {model!r}: no such folder and not a hub id; pass --model with a checkpoint folder"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        pass
    if not _hub_reachable():
        raise ModelUnavailableError(
            f"model {model!r} is not in the local cache and the Hugging Face hub is unreachable; "
            "pass --model /path/to/checkpoint (a full Qwen2.5-Omni or thinker-only folder)"
        )
    try:
        return Path(snapshot_download(model))
    except Exception as e:
        raise ModelUnavailableError(f"model {model!r}: download failed ({str(e).splitlines()[0]})") from None


def default_device_dtype() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


SPREAD_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # transformers' device_map strategies


def check_device(device: str) -> str:
    """`device` if this machine has it (cpu, cuda, cuda:N, mps, or a strategy that spreads the model over the
    GPUs, e.g. auto), else a one-line DeviceError."""
    import torch

    if device in SPREAD_DEVICE_MAPS:
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {device!r}: not a device (e.g. cpu, cuda, cuda:1, or auto)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceError(f"--device {device}: this machine has no CUDA GPU (use --device cpu)")
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"--device {device}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {device}: MPS is not available on this machine")
    return device


def load_processor(path: str | Path) -> tuple[Any, Any]:
    """The audio-only processor: the checkpoint's tokenizer and WhisperFeatureExtractor.

    The stock Qwen2.5-Omni processor also builds image/video processors, which need torchvision; the judge
    hears audio only, so it is built from the two parts it needs.
    """
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    path = Path(path)
    if not (path / "preprocessor_config.json").exists():
        raise ModelFormatError(f"{path}: no preprocessor_config.json (the Whisper feature extractor settings)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(path)
    return tokenizer, feature_extractor


@functools.cache
def _hearing_thinker_class() -> type:
    """The Qwen2.5-Omni thinker class without its vision tower: the judge only hears, and the tower is ~670M of the 7B's
    parameters (1.3 GB in bf16). It is built on the meta device by `from_pretrained` and dropped before any weight
    is read, so its weights are neither read nor held; the checkpoint's `visual.*` tensors are skipped quietly."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping as mapping_of
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping as register

    stock = Qwen2_5OmniThinkerForConditionalGeneration

    class HearingThinker(stock):
        _keys_to_ignore_on_load_unexpected = [r"visual\."]

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            owner = self.model if hasattr(self.model, "visual") else self  # transformers >= 5.20 moved it into model
            del owner.visual

    # the stock class's renaming of checkpoint keys (both layouts, older names): transformers looks it up by class
    # name and skips it for classes defined outside transformers unless registered under their own name
    register(HearingThinker.__name__, mapping_of(stock.__name__) or mapping_of(stock.config_class.model_type) or [],
             overwrite=True)
    return HearingThinker


def load_judge_model(model: str = DEFAULT_MODEL, device: str | None = None, dtype: Any = None,
                     vision: bool = False) -> JudgeModel:  # fmt: skip
    """Load the thinker of `model` (hub id or folder): bf16 on a GPU when there is one, else CPU float32.
    Without its vision tower unless `vision` (training keeps it, so that what it saves is a whole thinker)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    path = resolve_checkpoint(model)
    if not (path / "config.json").exists():
        raise ModelFormatError(f"{path}: no config.json; not a model checkpoint")
    load_aspects(path)  # the new aspects a trained judge knows
    if not list(path.glob("*.safetensors")):
        found = sorted(f.name for f in path.iterdir() if f.suffix in (".bin", ".pt", ".pth"))
        raise ModelFormatError(
            f"{path}: no .safetensors weights" + (f" (only {', '.join(found[:3])}: sagelm does not unpickle "
            "weight files; convert them to safetensors)" if found else "")
        )
    auto_device, auto_dtype = default_device_dtype()
    device = check_device(device) if device else auto_device
    dtype = dtype or auto_dtype
    tokenizer, feature_extractor = load_processor(path)
    logger.info("loading the thinker of %s on %s (%s)", path, device, dtype)
    cls = Qwen2_5OmniThinkerForConditionalGeneration if vision else _hearing_thinker_class()
    try:  # straight onto the device (or spread over the GPUs with "auto"), never whole in host RAM first
        thinker = cls.from_pretrained(path, dtype=dtype, device_map=device, use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelFormatError(f"{path}: cannot load a Qwen2.5-Omni thinker ({str(e).splitlines()[0]})") from None
    thinker.eval()
    return JudgeModel(name=model, thinker=thinker, tokenizer=tokenizer, feature_extractor=feature_extractor)


def _tensor_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def merge_into_full(thinker_dir: str | Path, base: str, out: str | Path) -> Path:
    """Put a trained thinker back into a full Qwen2.5-Omni checkpoint, as the authors released SageLM.

    Shard by shard: every `thinker.*` tensor of `base` is replaced by the trained one (in the shard's dtype),
    everything else (talker, token2wav, speaker dictionary, configs, shard index) is copied as is. Only one
    shard is held in memory at a time. `out` loads in `sagelm judge` and in Qwen2.5-Omni's own code.
    """
    import shutil
    from contextlib import ExitStack

    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelFormatError(f"--out {out} is a file, not a folder")
    thinker_path = resolve_checkpoint(str(thinker_dir))
    base_path = resolve_checkpoint(base)
    for read, what in ((base_path, "--base"), (thinker_path, "the trained thinker")):
        if out.resolve() == read.resolve():
            raise ModelFormatError(f"--out {out} is {what} ({read}); writing there would overwrite the weights "
                                   "being read: choose another folder")  # fmt: skip
    config_file = base_path / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if "thinker_config" not in config or "talker_config" not in config:
        raise ModelFormatError(f"{base_path}: not a full Qwen2.5-Omni checkpoint (no thinker_config/talker_config)")
    tokenizer, feature_extractor = load_processor(thinker_path)
    trained_files = _tensor_files(thinker_path)
    if not trained_files:
        raise ModelFormatError(f"{thinker_path}: no .safetensors weights")
    misfit = f"{thinker_path} does not fit the thinker of {base_path}"
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    with ExitStack() as stack:
        where = {}  # trained tensor name -> its open file, each file opened once
        for f in trained_files:
            handle = stack.enter_context(safe_open(str(f), framework="pt"))
            where.update({k: handle for k in handle.keys()})
        for shard in _tensor_files(base_path):
            tensors = {}
            with safe_open(str(shard), framework="pt") as g:
                metadata = g.metadata()
                for key in g.keys():
                    t = g.get_tensor(key)
                    if key.startswith("thinker."):
                        name = key.removeprefix("thinker.")
                        if name not in where:
                            raise ModelFormatError(f"{misfit} (no {name})")
                        new = where[name].get_tensor(name)
                        if new.shape != t.shape:
                            raise ModelFormatError(f"{misfit} ({name}: {tuple(new.shape)} vs {tuple(t.shape)})")
                        t = new.to(t.dtype)
                        used.add(name)
                    tensors[key] = t
            save_file(tensors, str(out / shard.name), metadata=metadata or {"format": "pt"})
    unused = set(where) - used
    if unused:
        raise ModelFormatError(f"{misfit} "
                               f"({len(unused)} trained tensors have no place, e.g. {sorted(unused)[0]})")  # fmt: skip
    for f in base_path.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    tokenizer.save_pretrained(out)
    feature_extractor.save_pretrained(out)
    logger.info("merged the thinker of %s into %s -> %s", thinker_path, base_path, out)
    return out
