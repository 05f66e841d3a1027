"""Judgment records and the append-only JSONL file they go to.

One record per judgment (interface.md), plus the context a later `sagelm eval` needs
(question, audio paths, model) and the resume `key`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sagelm.jsonout import dumps
from sagelm.verdicts import Verdict

logger = logging.getLogger(__name__)


class Judgment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    id: str
    aspect: str | None
    verdict: Verdict | None = None
    probabilities: dict[str, float] | None = None
    rationale: str | None = None
    raw: str | None = None
    swapped: bool = False
    label: Verdict | None = None
    error: str | None = None
    question: str | None = None
    audio_1: str | None = None
    audio_2: str | None = None
    model: str | None = None
    new_tokens: int | None = None  # tokens the judge generated (the verdict, the rationale, <|im_end|>)
    backend: str | None = None  # the engine that judged: "hf", "vllm", ...
    warning: str | None = None  # what the judge heard that a reader should know (e.g. a silent response)
    key: str | None = None

    def to_json(self) -> str:
        return dumps(self.model_dump(), ensure_ascii=False)


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, or a marker naming a file that cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError:
        return f"unreadable:{path}"
    return h.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_fingerprint(model: str) -> str:
    """`model` plus, for a local folder, a digest of its config and weight files (names, sizes, modification
    times): a judge retrained into the same folder is a different judge, and its judgments are made anew."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return model
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.name == "config.json"):
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{model}@{h.hexdigest()[:16]}"


def judgment_key(
    audio_digests: tuple[str, str],
    question: str,
    aspect: str | None,
    swapped: bool,
    model: str,
    decoding: dict,
    row_id: str = "",
    backend: str = "hf",
) -> str:
    """What makes a judgment the same judgment: the audio content, the question, the aspect, the order,
    the model and the decoding settings (and the row id, so that two rows with the same content both count)."""
    payload = json.dumps(
        {"audio": audio_digests, "question": question, "aspect": aspect, "swapped": swapped, "model": model,
         "decoding": decoding, "id": row_id},
        sort_keys=True,
    )  # fmt: skip
    if backend != "hf":  # another engine's judgment is its own (hf keys stay as they were before engines)
        payload += "\0" + backend
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class JudgmentLog:
    """OUT.jsonl: append-only, one line per judgment, flushed and synced per batch.

    Opening an existing file reads the keys already judged so that a rerun skips them; a torn last line
    (a run killed mid-write) is cut off, so the file never keeps a broken line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: set[str] = set()
        if self.path.exists():
            self._repair_and_index()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def _repair_and_index(self) -> None:
        data = self.path.read_bytes()
        keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
        if len(keep) != len(data):
            logger.warning("%s: dropping a torn last line left by an interrupted run", self.path)
            with self.path.open("r+b") as f:
                f.truncate(len(keep))
        for n, line in enumerate(keep.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                key = json.loads(line).get("key")
            except (json.JSONDecodeError, AttributeError):
                logger.warning("%s line %d: not a judgment record; ignored for resuming", self.path, n)
                continue
            if key:
                self.done.add(key)

    def write(self, records: Iterable[Judgment]) -> None:
        records = list(records)
        lines = [r.to_json() + "\n" for r in records]
        if not lines:
            return
        self._f.write("".join(lines))
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.update(r.key for r in records if r.key)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JudgmentLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
