"""`sagelm serve`: the judge behind HTTP (FastAPI + uvicorn), concurrent requests batched into one engine call.

One worker thread owns the engine: it loads the model (the server answers 503 meanwhile), then takes up to
`max_batch_size` queued tasks at a time, waiting at most `max_wait_ms` after the oldest one for more, and judges
them with `Judge.judge_chunk`, so records are those of `sagelm judge`. An engine that batches for itself as
requests arrive (vLLM's async engine: continuous batching) gets each task at once instead (`Streamer`), and
its records are made by the same `Judge.prepare` and `Judge.record`. The event loop only validates requests,
hands audio decoding to a small thread pool and awaits futures; it never runs the model. The queue is bounded
(`max_queue` tasks): a request that does not fit is answered 429 at once instead of waiting.

Audio comes as base64 (written to a private temporary file only for as long as decoding takes) or as a path
under an `--audio-root` (resolved, so neither `..` nor a symlink leaves it). A base64 clip's record names it
`upload:<digest>` (records.bytes_digest: the sha256 of its bytes up to 2 MiB), and its resume key is the one
`sagelm judge` gives the same file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hmac
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sagelm.aspects import get_aspect
from sagelm.audio import AudioError, Clip, load_audio
from sagelm.backends import batches_for_itself
from sagelm.data import Pair
from sagelm.decoding import DecodingOptions
from sagelm.jsonout import dumps
from sagelm.judge import Judge, Task, TaskKeys, plan
from sagelm.records import Judgment, bytes_digest, file_digest

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("sagelm.serve.access")

JUDGE_PATH = "/v1/judge"
MIB = 1 << 20
BASE64_GROWTH = 4 / 3  # base64 writes 4 characters for every 3 bytes
BODY_SLACK = 64 * 1024  # the question, the aspects and the JSON around the two base64 audios
MAX_SERVED_SECONDS = 300  # longer audio is refused before decoding (the judge hears only the first 60 s anyway)
AUDIO_THREADS = max(2, os.cpu_count() or 2)  # clips decoded at once: bounds the memory decoding takes
MAX_QUESTION_CHARS = 20_000  # a question, not a document: a prompt of this many characters is already ~5k tokens
MAX_ASPECTS = 16  # aspects in one request (SageLM knows eight; a trained judge may add a few)
RETRY_AFTER_S = 1  # what a 429/503 tells the client to wait
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KNOWN_PATHS = frozenset({JUDGE_PATH, "/health", "/metrics", "/docs", "/openapi.json"})


@dataclass(frozen=True)
class ServeOptions:
    """What `sagelm serve` was started with (interface.md: sagelm serve)."""

    model: str
    backend: str = "hf"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_wait_ms: float = 20.0
    max_queue: int = 256
    max_audio_mb: float = 25.0
    audio_roots: tuple[Path, ...] = ()
    api_key: str | None = None
    decoding: DecodingOptions = DecodingOptions()
    engine_settings: dict[str, Any] = field(default_factory=dict)  # the engine's own (device, max_num_seqs, ...)

    @property
    def max_audio_bytes(self) -> int:
        return int(self.max_audio_mb * MIB)

    @property
    def max_body_bytes(self) -> int:
        """Two audios at the limit, in base64, plus the rest of the JSON."""
        return int(2 * self.max_audio_bytes * BASE64_GROWTH) + BODY_SLACK


class Refusal(Exception):
    """A request answered with `status` and the one-line `message` (never a 500)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def body_too_large(options: ServeOptions) -> Refusal:
    return Refusal(413, f"the request body is over the server's limit of {options.max_body_bytes / MIB:.1f} MB (two "
                        f"audios of at most {options.max_audio_mb:g} MB each, in base64)")


# -- the request body ----------------------------------------------------------------------------------------
class AudioIn(BaseModel):
    """One response: `{"data": "<base64 of a wav/flac/mp3/ogg file>"}` or `{"path": "<file under an --audio-root>"}`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    data: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one(self) -> AudioIn:
        if (self.data is None) == (self.path is None):
            raise ValueError('give exactly one of "data" (base64) and "path"')
        return self


class JudgeBody(BaseModel):
    """POST /v1/judge: one pair, judged on `aspect`, `aspects` or (neither) the four semantic aspects."""

    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    aspect: str | None = None
    aspects: list[str] | None = Field(default=None, min_length=1, max_length=MAX_ASPECTS)
    audio_1: AudioIn
    audio_2: AudioIn
    both_orders: bool = False
    verdict_only: bool = False

    @field_validator("aspect")
    @classmethod
    def _aspect(cls, v: str | None) -> str | None:
        return None if v is None else get_aspect(v).name

    @field_validator("aspects")
    @classmethod
    def _aspects(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [get_aspect(a).name for a in v]

    @model_validator(mode="after")
    def _not_both(self) -> JudgeBody:
        if self.aspect is not None and self.aspects is not None:
            raise ValueError('give "aspect" or "aspects", not both')
        return self

    def tasks(self, audio_1: str, audio_2: str) -> list[Task]:
        pair = Pair(id="pair", question=self.question, audio_1=audio_1, audio_2=audio_2)  # as Judge.compare
        return list(plan([pair], [self.aspect] if self.aspect else self.aspects, self.both_orders))


class JudgeAnswer(BaseModel):
    """200 from POST /v1/judge."""

    judgments: list[Judgment]


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """The first validation error in one line: where in the body, and what is wrong."""
    err = errors[0]
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error")
        return f"the body is not valid JSON ({detail})" if detail else "the body is not valid JSON"
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc and err.get("type") in ("model_attributes_type", "model_type", "dict_type"):
        return "the body must be a JSON object (Content-Type: application/json)"
    if err.get("type") == "missing" and loc:
        return f"{'.'.join(loc)}: missing"
    return f"{'.'.join(loc)}: {msg}" if loc else msg


# -- audio ---------------------------------------------------------------------------------------------------
class HeldAudio:
    """The decoded clips and digests of the requests in flight, by label (a resolved path, or `upload:...` for
    base64 audio), held until their request is answered. It is the clip source of the server's Judges (the
    worker never decodes) and the digest source of their resume keys."""

    def __init__(self) -> None:
        self._items: dict[str, list[Any]] = {}  # label -> [clip, digest, holders]
        self._lock = threading.Lock()

    def hold(self, label: str, clip: Clip, digest: str) -> None:
        with self._lock:
            entry = self._items.setdefault(label, [clip, digest, 0])
            entry[2] += 1

    def release(self, label: str) -> None:
        with self._lock:
            entry = self._items[label]
            entry[2] -= 1
            if entry[2] == 0:
                del self._items[label]

    def get(self, label: str) -> Clip:
        try:
            return self._items[label][0]
        except KeyError:  # its request was cancelled while the task waited: an error record, not a failed batch
            raise AudioError(f"{label}: the request that brought this audio is gone") from None

    def digest(self, label: str) -> str:
        return self._items[label][1]

    def __len__(self) -> int:
        return len(self._items)


class _HeldKeys(TaskKeys):
    """Resume keys with each audio's digest taken from the request's own bytes (as `sagelm judge` hashes the
    file), not from a file that may be gone by the time the record is made."""

    def __init__(self, held: HeldAudio, model_name: str, options: DecodingOptions, backend: str):
        super().__init__(model_name, options, backend)
        self._held = held

    def _digest(self, path: str) -> str:
        return self._held.digest(path)


class AudioReader:
    """Turns an `AudioIn` into (label, digest, clip), or a Refusal naming `audio_1`/`audio_2` and the problem."""

    def __init__(self, options: ServeOptions, tmp_dir: Path):
        self.max_bytes = options.max_audio_bytes
        self.max_mb = options.max_audio_mb
        self.roots = tuple(Path(r).expanduser().resolve() for r in options.audio_roots)
        self.tmp_dir = tmp_dir

    def read(self, audio: AudioIn, name: str) -> tuple[str, str, Clip]:
        if audio.data is not None:
            raw = self._base64(audio.data, name)
            digest = bytes_digest(raw)
            label = f"upload:{digest}"
            with tempfile.NamedTemporaryFile(dir=self.tmp_dir, suffix=".audio") as f:  # removed on leaving
                f.write(raw)
                f.flush()
                clip = self._decode(f.name, name)
        else:
            assert audio.path is not None
            path = self._resolve(audio.path, name)
            try:
                size = path.stat().st_size
            except OSError as e:
                raise Refusal(400, f"{name}.path {audio.path!r}: {e.strerror or e}") from None
            self._check_size(size, name)
            label, digest = str(path), file_digest(str(path))
            clip = self._decode(label, name)
        return label, digest, dataclasses.replace(clip, path=label)

    def _check_size(self, size: int, name: str) -> None:
        if size > self.max_bytes:
            raise Refusal(413, f"{name} is {size / MIB:.1f} MB; the server takes at most {self.max_mb:g} MB an audio")

    def _base64(self, data: str, name: str) -> bytes:
        self._check_size(len(data) * 3 // 4, name)
        try:  # line breaks (as `base64` writes by default) are fine; anything else outside the alphabet is not
            raw = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(400, f"{name}.data is not valid base64") from None
        if not raw:
            raise Refusal(400, f"{name}.data is empty")
        return raw

    def _resolve(self, given: str, name: str) -> Path:
        if not self.roots:
            raise Refusal(403, f"{name}.path: this server takes no paths (start it with --audio-root DIR)")
        if "\0" in given:
            raise Refusal(400, f"{name}.path holds a NUL character")
        p = Path(given)
        for candidate in [p] if p.is_absolute() else [root / p for root in self.roots]:
            try:
                resolved = candidate.resolve()  # `..` and symlinks followed: what is checked is what is read
                if not any(resolved.is_relative_to(root) for root in self.roots):
                    raise Refusal(403, f"{name}.path {given!r} is outside every --audio-root")
                if resolved.is_file():
                    return resolved
                exists = resolved.exists()
            except RuntimeError:  # Path.resolve on Python 3.11-3.12
                raise Refusal(400, f"{name}.path {given!r}: a symlink loop") from None
            except OSError as e:  # a symlink loop (3.13), a name too long, no permission
                raise Refusal(400, f"{name}.path {given!r}: {e.strerror or e}") from None
            if exists:
                raise Refusal(400, f"{name}.path {given!r} is not a file")
        raise Refusal(400, f"{name}.path {given!r}: no such file under the --audio-root")

    def _decode(self, path: str, name: str) -> Clip:
        import soundfile as sf

        try:
            seconds = sf.info(path).duration
        except Exception:  # soundfile raises several kinds; what cannot be read is load_audio's to name
            seconds = 0.0
        if seconds > MAX_SERVED_SECONDS:
            raise Refusal(413, f"{name} is {seconds:.0f} s long; the server takes at most {MAX_SERVED_SECONDS} s "
                               "(the judge hears the first 60 s)")  # fmt: skip
        try:
            return load_audio(path)
        except AudioError as e:
            raise Refusal(400, f"{name}: {str(e).removeprefix(f'{path}: ').replace(path, name)}") from None


# -- metrics -------------------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("sagelm_requests", "HTTP requests answered, by path and status",
                                ["path", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("sagelm_request_seconds", "Time from request to response, by path", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_size = Histogram("sagelm_batch_size", "Tasks per engine call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)  # fmt: skip
        self.queue_depth = Gauge("sagelm_queue_depth", "Tasks waiting for the engine", registry=self.registry)
        self.in_flight = Gauge("sagelm_requests_in_flight", "Judge requests being answered", registry=self.registry)
        self.judgments = Counter("sagelm_judgments", "Judgments made", registry=self.registry)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# -- the batcher ---------------------------------------------------------------------------------------------
@dataclass
class _Item:
    task: Task
    verdict_only: bool
    future: asyncio.Future
    enqueued: float


class _Driver:
    """What the server's two ways of driving an engine share: the settings, the held audio, the metrics, what to
    call when the engine cannot go on, and, once it is loaded, the judge's name (or why it did not load)."""

    def __init__(self, options: ServeOptions, held: HeldAudio, metrics: Metrics, on_fatal: Callable[[], None]):
        self.options = options
        self.held = held
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.load_error: BaseException | None = None
        self.model_name: str | None = None


class Batcher(_Driver):
    """A bounded queue of tasks and the worker thread that owns the engine and judges them in batches."""

    def __init__(
        self,
        options: ServeOptions,
        held: HeldAudio,
        metrics: Metrics,
        on_fatal: Callable[[], None],
        arriving: Callable[[], int] = lambda: 1,
    ):
        super().__init__(options, held, metrics, on_fatal)
        self.arriving = arriving  # requests on their way to the queue: with none, waiting for more only costs
        self.max_wait = options.max_wait_ms / 1000
        self.ready = threading.Event()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._work, name="sagelm-engine", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        """Let the worker finish what is queued, then end (from a thread: it waits)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def submit(self, tasks: Sequence[Task], verdict_only: bool) -> list[asyncio.Future]:
        """Queue `tasks` (all or none); a Refusal(429) when they do not fit."""
        assert self._loop is not None
        now = time.monotonic()
        with self._cond:
            if len(self._queue) + len(tasks) > self.options.max_queue:
                raise Refusal(429, f"the queue is full ({len(self._queue)} of {self.options.max_queue} judgments "
                                   "waiting); retry later")  # fmt: skip
            items = [_Item(t, verdict_only, self._loop.create_future(), now) for t in tasks]
            self._queue.extend(items)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()
        return [it.future for it in items]

    async def stop(self) -> None:
        import anyio

        await anyio.to_thread.run_sync(self._stop)

    # -- the worker thread --
    def _load(self) -> dict[bool, Judge]:
        from sagelm.backends import load_backend

        o = self.options
        backend = load_backend(o.backend, o.model, options=o.decoding, **o.engine_settings)
        self.model_name = backend.model_name
        return _judges(backend, o.decoding, self.held)

    def _work(self) -> None:
        try:
            judges = self._load()
        except BaseException as e:  # reported by the command once the server is down
            self.load_error = e
            self.on_fatal()
            return
        logger.info("judge %s loaded on %s; serving", self.model_name, self.options.backend)
        self.ready.set()
        try:
            while (batch := self._take()) is not None:
                if batch:
                    self._judge(judges[batch[0].verdict_only], batch)
        finally:
            judges[False].close()

    def _take(self) -> list[_Item] | None:
        """Up to max_batch_size queued items of one decoding, waiting at most max_wait after the oldest while other
        requests are on their way."""
        size = self.options.max_batch_size
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            mode = self._queue[0].verdict_only
            deadline = self._queue[0].enqueued + self.max_wait
            while sum(1 for it in self._queue if it.verdict_only == mode) < size and not self._stopping:
                if self.arriving() == 0:  # a lone client: nothing else is coming to batch with
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [it for it in self._queue if it.verdict_only == mode][:size]
            taken = {id(it) for it in batch}
            self._queue = deque(it for it in self._queue if id(it) not in taken)
            self.metrics.queue_depth.set(len(self._queue))
        return [it for it in batch if not it.future.done()]  # a cancelled request's tasks are dropped

    def _judge(self, judge: Judge, batch: list[_Item]) -> None:
        assert self._loop is not None
        self.metrics.batch_size.observe(len(batch))
        try:
            records: list[Any] = judge.judge_chunk([it.task for it in batch])
            self.metrics.judgments.inc(len(records))
            error = None
        except Exception as e:  # an engine failure is a bug, not bad input: every request of the batch gets a 500
            logger.exception("the engine failed on a batch of %d", len(batch))
            records, error = [None] * len(batch), e
        self._loop.call_soon_threadsafe(_settle, batch, records, error)


def _judges(backend: Any, decoding: DecodingOptions, held: HeldAudio) -> dict[bool, Judge]:
    """One engine, two decodings (each request picks verdict-only or not), resume keys from the held audio."""
    judges = {}
    for verdict_only in (False, True):
        options = decoding.replace(verdict_only=verdict_only)
        keys = _HeldKeys(held, backend.model_name, options, backend.name)
        judges[verdict_only] = Judge(backend, options, keys=keys, clips=held)
    return judges


def _settle(batch: list[_Item], records: list[Any], error: BaseException | None) -> None:
    for it, record in zip(batch, records, strict=True):
        if it.future.done():  # its request is gone
            continue
        if error is not None:
            it.future.set_exception(error)
        else:
            it.future.set_result(record)


class Streamer(_Driver):
    """For an engine that batches requests as they arrive (vLLM's async engine, continuous batching): each task
    goes to it at once, on the event loop, and it schedules them. At most `max_queue` tasks are in the engine at
    a time (429 beyond); `max_batch_size` and `max_wait_ms` are the engine's business here (`--max-num-seqs`)."""

    def __init__(self, options: ServeOptions, held: HeldAudio, metrics: Metrics, on_fatal: Callable[[], None]):
        super().__init__(options, held, metrics, on_fatal)
        self.ready = asyncio.Event()
        self._backend: Any = None
        self._judges: dict[bool, Judge] = {}
        self._loading: asyncio.Task | None = None
        self._in_engine: set[asyncio.Task] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loading = loop.create_task(self._load())

    async def _load(self) -> None:
        import anyio

        from sagelm.backends import load_async_backend

        o = self.options
        try:  # the engine starts in a thread (it blocks until its core is up): the server answers 503 meanwhile
            self._backend = await anyio.to_thread.run_sync(
                lambda: load_async_backend(o.backend, o.model, options=o.decoding, **o.engine_settings)
            )
        except BaseException as e:  # reported by the command once the server is down
            self.load_error = e
            self.on_fatal()
            return
        self.model_name = self._backend.model_name
        self._judges = _judges(self._backend, o.decoding, self.held)
        logger.info("judge %s loaded on %s (async engine); serving", self.model_name, o.backend)
        self.ready.set()

    def submit(self, tasks: Sequence[Task], verdict_only: bool) -> list[asyncio.Future]:
        """Hand `tasks` to the engine (all or none); a Refusal(429) when they do not fit."""
        if len(self._in_engine) + len(tasks) > self.options.max_queue:
            raise Refusal(429, f"the queue is full ({len(self._in_engine)} of {self.options.max_queue} judgments "
                               "in the engine); retry later")  # fmt: skip
        judge = self._judges[verdict_only]
        futures = [asyncio.ensure_future(self._judge_one(judge, t)) for t in tasks]
        for f in futures:  # a cancelled request's tasks are cancelled with it: vLLM aborts them
            self._in_engine.add(f)
            f.add_done_callback(self._done)
        self.metrics.queue_depth.set(len(self._in_engine))
        return futures

    def _done(self, future: asyncio.Future) -> None:
        self._in_engine.discard(future)  # type: ignore[arg-type]
        self.metrics.queue_depth.set(len(self._in_engine))

    async def _judge_one(self, judge: Judge, task: Task) -> Judgment:
        prepared = judge.prepare(task)
        if isinstance(prepared, Judgment):
            return prepared
        raw = await self._backend.judge_one(prepared, judge.options)
        self.metrics.judgments.inc()
        return judge.record(task, prepared, raw)

    async def stop(self) -> None:
        """Let the tasks in the engine finish, then shut it down."""
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self._in_engine:
            await asyncio.wait(set(self._in_engine))
        if self._backend is not None:
            self._backend.close()


# -- the service: what the routes call -----------------------------------------------------------------------
class Service:
    """The server's state: loading, serving or draining; the engine (batched here, or batching for itself);
    audio in flight; metrics."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.metrics = Metrics()
        self.held = HeldAudio()
        self.draining = False
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="sagelm-serve-"))  # private (0700), removed at shutdown
        self.reader = AudioReader(options, self.tmp_dir)
        self.on_fatal: Callable[[], None] = lambda: None
        self.arriving = 0  # judge requests accepted whose tasks are not queued yet (their audio is being read)
        fatal = lambda: self.on_fatal()  # noqa: E731 (set by serve() once the server exists)
        self.engine: Batcher | Streamer = (
            Streamer(options, self.held, self.metrics, fatal)
            if batches_for_itself(options.backend)
            else Batcher(options, self.held, self.metrics, fatal, arriving=lambda: self.arriving)
        )
        self._limiter: Any = None

    @property
    def ready(self) -> bool:
        return self.engine.ready.is_set()

    def status(self) -> str:
        return "draining" if self.draining else "ok" if self.ready else "loading"

    def refusal(self, headers: dict[bytes, bytes]) -> Refusal | None:
        """Why a judge request is turned away before its body is read: shutting down, loading, or no key."""
        if self.draining:
            return Refusal(503, "the server is shutting down")
        if not self.ready:
            return Refusal(503, "the judge is still loading; retry shortly")
        if self.options.api_key is not None:
            given = headers.get(b"authorization", b"")
            scheme, _, key = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.options.api_key.encode()):
                return Refusal(401, "missing or wrong API key (send Authorization: Bearer KEY)")
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.options.max_body_bytes:  # a body without one is counted as read
            return body_too_large(self.options)
        return None

    async def start(self) -> None:
        import anyio

        self._limiter = anyio.CapacityLimiter(AUDIO_THREADS)
        self.engine.start(asyncio.get_running_loop())

    async def stop(self) -> None:
        await self.engine.stop()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    async def judge(self, body: JudgeBody) -> list[Judgment]:
        import anyio

        labels: list[str] = []
        self.metrics.in_flight.inc()
        try:
            self.arriving += 1
            try:
                for name in ("audio_1", "audio_2"):
                    label, digest, clip = await anyio.to_thread.run_sync(
                        self.reader.read, getattr(body, name), name, limiter=self._limiter
                    )
                    self.held.hold(label, clip, digest)
                    labels.append(label)
            finally:  # before submit: the batcher, woken by it, must not wait for this one
                self.arriving -= 1
            futures = self.engine.submit(body.tasks(*labels), body.verdict_only)
            return list(await asyncio.gather(*futures))
        finally:
            for label in labels:
                self.held.release(label)
            self.metrics.in_flight.dec()


# -- the app -------------------------------------------------------------------------------------------------
def _error_response(status: int, message: str) -> Any:
    from starlette.responses import Response

    headers = {"retry-after": str(RETRY_AFTER_S)} if status in (429, 503) else {}
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    return Response(dumps({"error": message}), status_code=status, media_type="application/json", headers=headers)


class _Gate:
    """Pure ASGI middleware: the access log line and request metrics of every request, and the refusals of a
    judge request that need no body (503, 401), answered before a byte of the body is read."""

    def __init__(self, app: Any, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: list[int] = []

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        path = scope["path"]
        try:
            refusal = self.service.refusal(dict(scope["headers"])) if path == JUDGE_PATH else None
            if refusal is not None:
                await _error_response(refusal.status, refusal.message)(scope, receive, send_status)
            else:
                limited = _counting(receive, self.service.options.max_body_bytes) if path == JUDGE_PATH else receive
                await self.app(scope, limited, send_status)
        finally:
            seconds = time.perf_counter() - start
            code = status[0] if status else 500
            label = path if path in KNOWN_PATHS else "other"
            self.service.metrics.requests.labels(label, str(code)).inc()
            self.service.metrics.latency.labels(label).observe(seconds)
            client = scope.get("client")
            access_logger.info(dumps({
                "time": round(time.time(), 3), "method": scope["method"], "path": path, "status": code,
                "ms": round(1000 * seconds, 1),
                "client": f"{client[0]}:{client[1]}" if client else None,
            }))  # fmt: skip


def _counting(receive: Any, limit: int) -> Any:
    """`receive` that counts the body as it arrives (one sent without Content-Length, or longer than it said)
    and stops it past `limit`: an HTTPException(413), which FastAPI passes on to the app's handler."""
    from starlette.exceptions import HTTPException

    received = 0

    async def counted() -> Any:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413)
        return message

    return counted


def create_app(service: Service) -> Any:
    """The FastAPI app of `service`: POST /v1/judge, GET /health, GET /metrics, GET /docs."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.responses import Response

    o = service.options

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="sagelm", summary="SageLM judging pairs of spoken responses", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Any, exc: RequestValidationError) -> Any:
        return _error_response(400, validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(_: Any, exc: HTTPException) -> Any:
        if exc.status_code == 413:  # _counting: a body that came without Content-Length (or lied about it)
            refusal = body_too_large(o)
            return _error_response(refusal.status, refusal.message)
        if exc.status_code == 400:  # FastAPI's "There was an error parsing the body" (e.g. the client left)
            return _error_response(400, "the body could not be read")
        return _error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Refusal)
    async def _refused(_: Any, exc: Refusal) -> Any:
        return _error_response(exc.status, exc.message)

    @app.exception_handler(ValidationError)
    async def _invalid_model(_: Any, exc: ValidationError) -> Any:
        return _error_response(400, validation_message(exc.errors()))

    responses: dict[int | str, dict[str, Any]] = {
        s: {"description": d}
        for s, d in [(400, "bad request or unreadable audio"), (401, "missing or wrong bearer key"),
                     (403, "a path outside every --audio-root"), (413, "an audio or body over the limit"),
                     (429, "the queue is full"), (503, "loading or shutting down")]
    }  # fmt: skip

    responses[200] = {"model": JudgeAnswer, "description": "the records, one per aspect and order"}

    @app.post(JUDGE_PATH, responses=responses, response_model=None)
    async def judge(body: JudgeBody):  # a Response: the records written by jsonout.dumps (NaN -> null)
        """Judge one pair; the answer is `{"judgments": [records as sagelm judge writes them]}`."""
        records = await service.judge(body)
        payload = {"judgments": [r.model_dump() for r in records]}
        return Response(dumps(payload, ensure_ascii=False), media_type="application/json")

    @app.get("/health", response_model=None)
    async def health():
        status = service.status()
        payload = {"status": status, "model": service.engine.model_name or o.model, "backend": o.backend}
        return Response(dumps(payload), status_code=200 if status == "ok" else 503, media_type="application/json")

    @app.get("/metrics", response_model=None)
    async def metrics():
        content, media_type = service.metrics.text()
        return Response(content, media_type=media_type)

    app.add_middleware(_Gate, service=service)
    return app


# -- running it ----------------------------------------------------------------------------------------------
def _server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server that drains on SIGTERM/SIGINT and then exits 0 (uvicorn re-raises the signal after
        its graceful shutdown, so the process would die of it); a second Ctrl-C still forces the exit."""

        service: Service

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.service.draining = True
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    return GracefulServer


def serve(options: ServeOptions) -> None:
    """Run the server until SIGTERM/SIGINT (drains, then returns) or a model that cannot load (raises)."""
    import uvicorn

    if not access_logger.handlers:  # one JSON object a line on stderr, whatever the command's log looks like
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_logger.addHandler(handler)
        access_logger.setLevel(logging.INFO)
        access_logger.propagate = False
    service = Service(options)
    config = uvicorn.Config(
        create_app(service), host=options.host, port=options.port, log_config=None, access_log=False,
        lifespan="on", timeout_graceful_shutdown=None,
    )  # fmt: skip
    server = _server_class()(config)
    server.service = service

    def fatal() -> None:
        server.should_exit = True

    service.on_fatal = fatal
    try:
        server.run()
    finally:
        shutil.rmtree(service.tmp_dir, ignore_errors=True)
    if service.engine.load_error is not None:
        raise service.engine.load_error
