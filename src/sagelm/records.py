"""Judgment records and the append-only JSONL file they go to.

One record per judgment (interface.md), plus the context a later `sagelm eval` needs
(question, audio paths, model) and the resume `key`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sagelm.cache import DiskCache, cache_root
from sagelm.errors import SagelmError
from sagelm.jsonout import dumps
from sagelm.paths import UnusableFile, open_regular, shown
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


DIGEST_END_BYTES = 1 << 20  # file_digest reads this much of each end of a file bigger than twice as much


def file_digest(path: str) -> str:
    """A file's identity for resume keys, from its content (a copied or moved dataset keeps its keys): the sha256
    of its bytes up to 2 MiB, as sagelm has always keyed them; of a bigger file, of its size and its first and
    last MiB, so that a long file costs two reads, not gigabytes. A file that cannot be read as a regular file
    (missing, a FIFO, /dev/zero, a folder: audio loading names the problem) gets a marker naming the path,
    found without blocking."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(DIGEST_END_BYTES if size > 2 * DIGEST_END_BYTES else size)
            if size > 2 * DIGEST_END_BYTES:
                f.seek(size - DIGEST_END_BYTES)
            tail = f.read(DIGEST_END_BYTES)
    except (OSError, UnusableFile):
        return f"unreadable:{shown(path)}"
    return _content_digest(size, head, tail)


DIGEST_RACY_S = 2.0  # a file changed less than this long ago is hashed anew each time (git's "racy" rule: a
# change within the same timestamp tick as the one remembered would not show in its stat; FAT's tick is 2 s)


class DigestCache:
    """file_digest remembered by what stat says of the file (device, inode, size, modification and change times
    in ns) in the user cache (`digests/`), so that a rerun over a dataset of 2,000 clips stats
    them instead of reading them. Any change to a file changes its stat and so misses; a digest is only
    remembered when the file's stat is the same after reading as before, and not for a file changed in the last
    DIGEST_RACY_S seconds."""

    def __init__(self, folder: Path | None = None, racy_s: float = DIGEST_RACY_S):
        self._disk = DiskCache(folder or cache_root() / "digests", "audio digest cache")
        self.racy_s = racy_s

    def _signature(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        if time.time() - max(st.st_mtime, st.st_ctime) < self.racy_s:
            return None
        parts = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # the file, not its name
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:40]

    def __call__(self, path: str) -> str:
        before = self._signature(path)
        if before is not None:
            found = self._disk.get(before)
            if found is not None and isinstance(found.get("digest"), str):
                return found["digest"]
        digest = file_digest(path)
        if before is not None and self._signature(path) == before:
            self._disk.put(before, {"digest": digest})
        return digest


def bytes_digest(data: bytes) -> str:
    """file_digest of a file holding `data` (audio uploaded as bytes keys as the same file on disk does)."""
    if len(data) > 2 * DIGEST_END_BYTES:
        return _content_digest(len(data), data[:DIGEST_END_BYTES], data[-DIGEST_END_BYTES:])
    return _content_digest(len(data), data, b"")


def _content_digest(size: int, head: bytes, tail: bytes) -> str:
    if size <= 2 * DIGEST_END_BYTES:
        return hashlib.sha256(head + tail).hexdigest()
    return hashlib.sha256(b"%d:%b%b" % (size, head, tail)).hexdigest()


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


class JudgmentLogError(SagelmError):
    """An --output that sagelm must not write to: not its own records, not a regular file, or in use."""


def refuse_output_over_data(output: Path, data: Path) -> None:
    """--output naming the --data file itself is refused before anything is read or written."""
    if output.exists() and output.resolve() == data.resolve():
        raise JudgmentLogError(f"--output {output} is the --data file; judgments go to a file of their own")


class JudgmentLog:
    """OUT.jsonl: append-only, one line per judgment, flushed and synced per batch, locked while open.

    Opening an existing file reads the keys already judged so that a rerun skips them; a judgment whose record
    is an error (unreadable audio, a failed API call) is tried again, and its later record supersedes it.
    sagelm only appends to a file of its own records: anything else (a data file, a wav, a text file) is
    refused, never cut or appended to. A torn last line (a run killed mid-write) is cut off, so the file never
    keeps a broken line; judgments written twice (by runs of older versions side by side) are collapsed to one.
    An exclusive lock (fcntl.flock) keeps a second process off the file while one writes it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: set[str] = set()  # keys judged (a rerun skips them)
        self.failed: set[str] = set()  # keys whose only record is an error (a rerun tries them again)
        self.models: set[tuple[str, str]] = set()  # (model, backend) of the records already in the file
        try:
            if self.path.exists() and not self.path.is_file():
                what = "a folder" if self.path.is_dir() else "not a regular file (a pipe or device)"
                raise JudgmentLogError(f"--output {self.path} is {what}; sagelm writes and resumes a JSONL file there")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = self.path.open("a+b")
        except OSError as e:
            raise JudgmentLogError(f"--output {self.path}: cannot write there ({e.strerror})") from None
        try:
            self._lock()
            self._repair_and_index()
        except BaseException:
            self._f.close()
            raise

    def _lock(self) -> None:
        import fcntl

        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JudgmentLogError(
                f"--output {self.path} is being written by another sagelm run; wait for it to finish or choose "
                "another --output"
            ) from None

    def _refuse(self, why: str) -> JudgmentLogError:
        return JudgmentLogError(f"--output {self.path}: {why}; sagelm only appends to a file of its own judgment "
                                "records (choose another --output)")  # fmt: skip

    def _repair_and_index(self) -> None:
        self._f.seek(0)
        data = self._f.read()
        if not data:
            return
        keep = data if data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]
        try:
            text = keep.decode("utf-8")
        except UnicodeDecodeError:
            raise self._refuse("not UTF-8 text (an audio or binary file?)") from None
        kept: dict[str, tuple[int, str, bool]] = {}  # key -> (position, line, judged without error)
        n_lines = twice = 0
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            n_lines += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise self._refuse(f"line {n} is not JSON") from None
            if not isinstance(record, dict) or not {"id", "key", "aspect"} <= record.keys():
                raise self._refuse(f"line {n} is not a sagelm judgment record")
            key, ok = record["key"], record.get("error") is None
            earlier = kept.get(key)
            if earlier is None or not earlier[2]:  # the first judgment stays; an error gives way to what came after
                kept[key] = (n, line, ok)
            elif ok:
                twice += 1
            self.models.add((str(record.get("model")), str(record.get("backend") or "hf")))
        if not kept and not (text == "" and data.startswith(b'{"id": ')):  # not even our own torn first record
            raise self._refuse("it holds no judgment records")
        self.done.update(k for k, (_, _, ok) in kept.items() if ok)
        self.failed.update(k for k, (_, _, ok) in kept.items() if not ok)
        if len(keep) != len(data):
            logger.warning("%s: dropping a torn last line left by an interrupted run", self.path)
        if len(kept) != n_lines:
            if twice:
                logger.warning("%s: %d judgments were written twice; keeping one of each", self.path, twice)
            logger.info("%s: %d records superseded (an error judged again, a duplicate) are dropped", self.path,
                        n_lines - len(kept))  # fmt: skip
            lines = [line for _, line, _ in sorted(kept.values(), key=lambda v: v[0])]
            self._rewrite("".join(x + "\n" for x in lines).encode("utf-8"))
        elif len(keep) != len(data):
            self._f.truncate(len(keep))

    def _rewrite(self, content: bytes) -> None:
        """Replace the file's content atomically (a temporary file beside it, then rename), keeping the lock."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        old, self._f = self._f, self.path.open("a+b")
        self._lock()
        old.close()

    def to_do(self, key: str, bad_row: bool = False) -> bool:
        """Whether the judgment `key` is still to be made on a rerun: not judged yet, or judged only with an error
        (tried again), except a bad data row's record, which stays until the row changes (and its key with it)."""
        return key not in self.done and not (bad_row and key in self.failed)

    def warn_if_mixed(self, model: str, backend: str = "hf") -> None:
        """Say so when the file already holds another judge's (or engine's) records: `sagelm eval` then needs
        `--model` to pick one."""
        others = sorted(f"{m} ({b})" for m, b in self.models if (m, b) != (model, backend))
        if others:
            logger.warning("%s already holds records of %s; appending records of %s (%s); score one judge with "
                           "sagelm eval --model", self.path, ", ".join(others), model, backend)  # fmt: skip

    def write(self, records: Iterable[Judgment]) -> None:
        records = list(records)
        lines = [r.to_json() + "\n" for r in records]
        if not lines:
            return
        self._f.write("".join(lines).encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.update(r.key for r in records if r.key and r.error is None)
        self.failed.update(r.key for r in records if r.key and r.error is not None)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JudgmentLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
