"""Loading the judge: the Qwen2.5-Omni thinker plus an audio-only processor (tokenizer + Whisper features).

`--model` takes a hub id (default: the released SageLM weights) or a local folder holding either a full
Qwen2.5-Omni checkpoint (thinker + talker + token2wav, as the authors released it) or a thinker-only one
(as training saves it). Only the thinker is loaded: `Qwen2_5OmniThinkerForConditionalGeneration` reads a
full checkpoint's `thinker_config` and `thinker.*` weights and skips the rest.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sagelm.prompts import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN, IM_END
from sagelm.verdicts import VERDICTS

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "LGB666/SageLM"  # the released SageLM weights (full Qwen2.5-Omni-7B checkpoint)
HUB_PROBE_SECONDS = 3.0


class ModelUnavailableError(RuntimeError):
    """The model can be neither found locally nor fetched."""


class ModelFormatError(RuntimeError):
    """A folder that is not a usable Qwen2.5-Omni checkpoint."""


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


def load_judge_model(model: str = DEFAULT_MODEL, device: str | None = None, dtype: Any = None) -> JudgeModel:
    """Load the thinker of `model` (hub id or folder): bf16 on a GPU when there is one, else CPU float32."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    path = resolve_checkpoint(model)
    if not (path / "config.json").exists():
        raise ModelFormatError(f"{path}: no config.json; not a model checkpoint")
    auto_device, auto_dtype = default_device_dtype()
    device = device or auto_device
    dtype = dtype or auto_dtype
    tokenizer, feature_extractor = load_processor(path)
    logger.info("loading the thinker of %s on %s (%s)", path, device, dtype)
    try:
        thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelFormatError(f"{path}: cannot load a Qwen2.5-Omni thinker ({str(e).splitlines()[0]})") from None
    thinker.to(device).eval()
    return JudgeModel(name=model, thinker=thinker, tokenizer=tokenizer, feature_extractor=feature_extractor)
