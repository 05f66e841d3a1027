"""A client for any OpenAI-compatible chat API (`POST {base}/v1/chat/completions`), as the cascade's text judge.

Calls run `concurrency` at a time (threads over one httpx connection pool). A 429, a 5xx, a timeout, a dropped
connection or a body that is not a chat completion is retried with exponential backoff (honouring `Retry-After`)
up to `max_retries` times, then that one call fails (the judge writes an error record and goes on); a 401/403/404
(a wrong key, URL or model) stops the run, since every other call would fail the same way. Each successful
response is cached on disk by (base URL, request body), so a rerun or a resumed run makes no repeat calls.
The API key is read from the environment variable named by `api_key_env`, sent only in the Authorization header,
and never logged, cached or written.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagelm.cache import DiskCache
from sagelm.errors import SagelmError

logger = logging.getLogger(__name__)

CHAT_PATH = "/chat/completions"  # under the base URL's /v1
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})  # transient: overloaded, rate-limited, restarting
FATAL_STATUS = frozenset({401, 403, 404})  # the key, the URL or the model is wrong: every call would fail alike
LOGPROB_FIELDS = ("logprobs", "top_logprobs")  # asked for, and dropped where a server refuses them
MAX_ERROR_BODY = 200  # characters of a server's error body quoted in a message


class TextJudgeError(SagelmError):
    """The text judge cannot be used at all (a wrong key, URL or model name; a missing key variable)."""


class CallFailed(Exception):
    """One chat call that failed for good (after its retries); its message becomes that row's error record."""


@dataclass(frozen=True)
class ClientSettings:
    base_url: str  # e.g. http://127.0.0.1:8000 or https://api.openai.com (a trailing /v1 is optional)
    api_key_env: str | None = None  # the environment variable holding the key; None: no Authorization header
    concurrency: int = 4
    timeout_s: float = 120.0  # per attempt, for the whole response
    connect_timeout_s: float = 10.0
    max_retries: int = 5
    backoff_s: float = 1.0  # first wait; doubled each retry, with jitter
    max_backoff_s: float = 60.0  # cap on one wait, Retry-After included
    cache_dir: Path | None = None  # None: no response cache

    @property
    def endpoint(self) -> str:
        base = self.base_url.rstrip("/")
        return (base if base.endswith("/v1") else base + "/v1") + CHAT_PATH


@dataclass(frozen=True)
class ChatResult:
    text: str
    top_logprobs: list[dict[str, Any]] | None  # the first generated token's alternatives, as the server sent them
    usage: dict[str, int] = field(default_factory=dict)
    cached: bool = False  # read from the response cache, no call made


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_completion(data: Any) -> ChatResult:
    """The text, first-token alternatives and usage of a chat completion body (ValueError if it is not one)."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("the response is not a chat completion (no choices[0].message.content)") from None
    if not isinstance(text, str):
        text = ""  # a refusal or tool call: no verdict
    top = None
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if isinstance(content, list) and content and isinstance(content[0], dict):
        alts = content[0].get("top_logprobs")
        if isinstance(alts, list):
            top = [a for a in alts if isinstance(a, dict) and "token" in a and "logprob" in a]
    raw_usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    usage = {k: int(v) for k, v in raw_usage.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return ChatResult(text=text, top_logprobs=top, usage=usage)


class ChatClient:
    """Chat completions against one OpenAI-compatible server; `calls` counts HTTP attempts, `cache_hits` the
    calls the response cache saved."""

    def __init__(self, settings: ClientSettings):
        import httpx

        self.settings = settings
        headers = {"Content-Type": "application/json"}
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise TextJudgeError(f"--api-key-env {settings.api_key_env}: that environment variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
        limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
        self._http = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._count = threading.Lock()
        self.calls = 0
        self.cache_hits = 0
        self.without_logprobs = False  # set once the server refuses logprobs/top_logprobs
        d = settings.cache_dir
        self._cache = DiskCache(d, "response cache") if d is not None else None

    def close(self) -> None:
        self._http.close()

    # -- cache ----------------------------------------------------------------------------------------------
    def cache_key(self, body: dict[str, Any]) -> str:
        payload = json.dumps({"url": self.settings.endpoint, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:40]

    def _cached(self, key: str) -> ChatResult | None:
        data = self._cache.get(key) if self._cache is not None else None
        if data is None:
            return None
        try:
            r = parse_completion(data)
        except ValueError:
            return None
        return ChatResult(r.text, r.top_logprobs, r.usage, cached=True)

    def _store(self, key: str, data: dict[str, Any]) -> None:
        if self._cache is not None:
            self._cache.put(key, data)

    # -- calls ----------------------------------------------------------------------------------------------
    def complete(self, body: dict[str, Any]) -> ChatResult:
        """One chat completion (from the cache when it holds it); CallFailed after the retries."""
        import httpx

        key = self.cache_key(body)
        if self.without_logprobs:
            body = {k: v for k, v in body.items() if k not in LOGPROB_FIELDS}
        hit = self._cached(key)
        if hit is not None:
            with self._count:
                self.cache_hits += 1
            return hit
        s = self.settings
        problem = "no attempt made"
        for attempt in range(s.max_retries + 1):
            wait: float | None = None
            with self._count:
                self.calls += 1
            try:
                resp = self._http.post(s.endpoint, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {s.timeout_s:g} s"
            except httpx.TransportError as e:  # refused, dropped or broken connection
                problem = f"connection failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                        result = parse_completion(data)
                    except ValueError as e:  # JSONDecodeError is a ValueError
                        problem = f"malformed response ({str(e).splitlines()[0]})"
                    else:
                        self._store(key, data)
                        return result
                else:
                    detail = resp.text[:MAX_ERROR_BODY].replace("\n", " ")
                    problem = f"HTTP {resp.status_code} from {s.endpoint}: {detail}"
                    if resp.status_code in FATAL_STATUS:
                        raise TextJudgeError(f"the text judge refused the request: {problem}")
                    if resp.status_code in (400, 422) and "logprobs" in body and "logprobs" in resp.text:
                        logger.warning("the text judge does not take logprobs; judging without them (probabilities "
                                       "null)")  # fmt: skip
                        self.without_logprobs = True
                        body = {k: v for k, v in body.items() if k not in LOGPROB_FIELDS}
                        continue
                    if resp.status_code not in RETRY_STATUS:
                        raise CallFailed(problem)
                    wait = retry_after(resp.headers.get("Retry-After"))
            if attempt == s.max_retries:
                break
            if wait is None:
                wait = s.backoff_s * 2**attempt * (0.5 + random.random() / 2)
            wait = min(wait, s.max_backoff_s)
            logger.info("text judge: %s; retrying in %.1f s (%d/%d)", problem, wait, attempt + 1, s.max_retries)
            time.sleep(wait)
        raise CallFailed(f"text judge failed after {s.max_retries + 1} attempts: {problem}")

    def complete_many(self, bodies: Sequence[dict[str, Any]]) -> list[ChatResult | CallFailed]:
        """`bodies` completed `concurrency` at a time, in order; a failed call is its CallFailed."""

        def one(body: dict[str, Any]) -> ChatResult | CallFailed:
            try:
                return self.complete(body)
            except CallFailed as e:
                return e

        if len(bodies) <= 1 or self.settings.concurrency == 1:
            return [one(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(bodies))) as pool:
            return list(pool.map(one, bodies))
