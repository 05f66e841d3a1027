"""sagelm: judge spoken responses with SageLM, a speech language model judge.

Light imports only: `sagelm prompt` and `sagelm eval` run without torch. The model side
(`Judge`, `load_judge_model`) imports torch and transformers when first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Judge": "sagelm.judge",
    "Task": "sagelm.judge",
    "DecodingOptions": "sagelm.decoding",
    "Judgment": "sagelm.records",
    "load_judge_model": "sagelm.model",
    "parse_verdict": "sagelm.verdicts",
    "judge_text": "sagelm.prompts",
    "Client": "sagelm.client",
    "ServerPath": "sagelm.client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sagelm' has no attribute {name!r}")


__all__ = list(_LAZY)
