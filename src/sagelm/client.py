"""`sagelm.Client`: a small client of `sagelm serve` for reward loops (httpx; thread-safe, one connection pool).

>>> with Client("http://127.0.0.1:8000") as judge:                                      # doctest: +SKIP
...     [j.verdict for j in judge.judge("Name a fruit.", "a.wav", "b.wav", aspect="helpfulness")]
['2']
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sagelm.errors import SagelmError
from sagelm.records import Judgment

RETRY_STATUSES = frozenset({429, 503})  # a full queue, a judge still loading or a server restarting
BACKOFF_S = 0.25  # first wait before a retry; doubled each time unless the server says Retry-After


class ServerError(SagelmError):
    """What the server refused, with its status code and its one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(f"the judge server answered {status}: {message}")
        self.status = status
        self.message = message


class ServerPath(str):
    """An audio file named by its path on the server (under one of its --audio-root folders), not uploaded."""


def _audio(audio: str | Path | bytes | ServerPath) -> dict[str, str]:
    if isinstance(audio, ServerPath):
        return {"path": str(audio)}
    raw = audio if isinstance(audio, bytes) else Path(audio).read_bytes()
    return {"data": base64.b64encode(raw).decode("ascii")}


class Client:
    """Judge pairs on a `sagelm serve` server. Audio is a local file (uploaded in base64), its bytes, or a
    `ServerPath`. A 429 or 503 is retried `retries` times with backoff; other refusals raise ServerError."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 5,
        api_key_env: str | None = None,
    ):
        import httpx

        key = api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.retries = retries
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def judge(
        self,
        question: str,
        audio_1: str | Path | bytes | ServerPath,
        audio_2: str | Path | bytes | ServerPath,
        aspect: str | None = None,
        aspects: Sequence[str] | None = None,
        both_orders: bool = False,
        verdict_only: bool = False,
    ) -> list[Judgment]:
        """The records of one pair (one per aspect and order), as `sagelm judge` writes them."""
        body: dict[str, Any] = {"question": question, "audio_1": _audio(audio_1), "audio_2": _audio(audio_2),
                                "both_orders": both_orders, "verdict_only": verdict_only}  # fmt: skip
        if aspect is not None:
            body["aspect"] = aspect
        if aspects is not None:
            body["aspects"] = list(aspects)
        answer = self._post("/v1/judge", body)
        return [Judgment.model_validate(r) for r in answer["judgments"]]

    def health(self) -> dict[str, Any]:
        """`{"status": "ok"|"loading"|"draining", "model", "backend"}` (whatever the status code)."""
        return self._http.get("/health").json()

    def wait_ready(self, timeout: float = 600.0) -> dict[str, Any]:
        """Wait for the judge to load (or raise ServerError after `timeout` seconds)."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.health()
                if health.get("status") == "ok":
                    return health
            except httpx.TransportError:
                health = {"status": "unreachable"}
            if time.monotonic() > deadline:
                raise ServerError(503, f"not ready after {timeout:g} s ({health.get('status')})")
            time.sleep(0.2)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        wait = BACKOFF_S
        for attempt in range(self.retries + 1):
            r = self._http.post(path, json=body)
            if r.status_code == 200:
                return r.json()
            if r.status_code not in RETRY_STATUSES or attempt == self.retries:
                break
            time.sleep(float(r.headers.get("retry-after", wait)))
            wait *= 2
        try:
            message = r.json().get("error", r.text)
        except ValueError:
            message = r.text.strip()[:200]
        raise ServerError(r.status_code, message)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
