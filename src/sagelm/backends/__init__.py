"""Judging engines, resolved by name through lazy factories.

A backend module is imported only when its name is asked for, so `sagelm judge --backend hf` never imports
vLLM and `sagelm eval` imports no engine at all. A missing library is one line naming the pip extra.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from sagelm.backends.base import AsyncJudgeBackend, JudgeBackend, RawJudgment, Request
from sagelm.errors import SagelmError

__all__ = [
    "BACKENDS", "AsyncJudgeBackend", "BackendUnavailableError", "JudgeBackend", "RawJudgment", "Request",
    "batches_for_itself", "load_async_backend", "load_backend",
]  # fmt: skip


class BackendUnavailableError(SagelmError):
    """An engine whose library is not installed, or an unknown engine name."""


@dataclass(frozen=True)
class BackendEntry:
    module: str  # sagelm.backends.<module>
    cls: str  # its JudgeBackend class, with a `load(model, **settings)` classmethod
    extra: str  # the pip extra that installs what it needs
    requires: tuple[str, ...]  # top-level modules that must import
    async_cls: str | None = None  # its AsyncJudgeBackend class, if the engine batches requests as they arrive


BACKENDS: dict[str, BackendEntry] = {
    "hf": BackendEntry("sagelm.backends.hf", "HFBackend", "model", ("torch", "transformers")),
    "vllm": BackendEntry("sagelm.backends.vllm", "VLLMBackend", "vllm", ("vllm",), async_cls="AsyncVLLMBackend"),
    "cascade": BackendEntry("sagelm.backends.cascade", "CascadeBackend", "cascade", ("faster_whisper", "httpx")),
}


def _entry(name: str) -> BackendEntry:
    """Engine `name`'s entry, once the libraries it needs are known to import."""
    try:
        entry = BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}") from None
    for module in entry.requires:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise BackendUnavailableError(
                f"the {name} backend needs {module} ({e.msg}); install it with: pip install 'sagelm[{entry.extra}]'"
            ) from None
    return entry


def backend_class(name: str) -> type:
    entry = _entry(name)
    return getattr(importlib.import_module(entry.module), entry.cls)


def load_backend(name: str, model: str, **settings: Any) -> JudgeBackend:
    """The engine `name` with `model` loaded; `settings` are the engine's own (device, max_num_seqs, ...);
    settings another engine takes are ignored (a `None` value means "the engine's default")."""
    return backend_class(name).load(model, **settings)


def batches_for_itself(name: str) -> bool:
    """Whether engine `name` has an async form that batches requests as they arrive (see load_async_backend)."""
    entry = BACKENDS.get(name)
    return entry is not None and entry.async_cls is not None


def load_async_backend(name: str, model: str, **settings: Any) -> AsyncJudgeBackend | None:
    """Engine `name`'s async form with `model` loaded, or None if it has none (the caller batches for it)."""
    entry = _entry(name)
    if entry.async_cls is None:
        return None
    return getattr(importlib.import_module(entry.module), entry.async_cls).load(model, **settings)
