"""sagelm's user cache folder and the one way anything is kept in it: one small JSON file per key, written to a
private temporary name and renamed into place, so that concurrent processes (two judges, Ray actors, server
threads) never see half a file. What the cache holds is only ever a shortcut: an entry that cannot be read is
a miss, and a cache that cannot be written is warned about once and the work goes on without it.

Used for transcripts (asr), text-judge responses (textjudge) and audio digests of resume keys (records).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from sagelm.jsonout import dumps

logger = logging.getLogger(__name__)

CACHE_ENV = "SAGELM_CACHE"  # sagelm's user cache folder (default: $XDG_CACHE_HOME/sagelm, else ~/.cache/sagelm)


def cache_root() -> Path:
    """sagelm's user cache folder: $SAGELM_CACHE, else $XDG_CACHE_HOME/sagelm, else ~/.cache/sagelm."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sagelm"


class DiskCache:
    """JSON objects by key (hex text) under `folder`, `folder/ab/abcdef....json` (two-letter shards keep a folder
    of a million entries listable). `what` names the cache in the one warning a failed write gives."""

    def __init__(self, folder: Path, what: str = "cache"):
        self.folder = Path(folder)
        self.what = what
        self._warned = False

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self.path(key), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, data: dict[str, Any]) -> None:
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(dumps(data, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self._warned:
                self._warned = True
                logger.warning("cannot write the %s in %s (%s); going on without it", self.what, self.folder, e)
