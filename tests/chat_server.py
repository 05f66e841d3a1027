"""A small OpenAI-compatible chat server for the tests, that injects the faults no real server makes on demand.

It judges like a text judge that prefers the response whose transcript holds `keyword` (Tie when both or
neither do), answers with first-token `top_logprobs`, and before that plays each prompt's scripted faults, one
per attempt: "429" (with Retry-After), "500", "hang" (longer than the client's timeout), "badjson", "drop" (the
connection closed without an answer), "401", "nologprobs" (400 refusing logprobs, as transformers serve does).
Every request is kept in `requests` (headers and body) with the time it came.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    def __init__(self, keyword: str = "banana", retry_after: str = "1", hang_s: float = 3.0,
                 with_logprobs: bool = True):  # fmt: skip
        self.keyword = keyword
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.with_logprobs = with_logprobs
        self.faults: dict[str, list[str]] = {}  # substring of the user prompt -> faults, one per attempt
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def prompts(self) -> list[str]:
        return [r["body"]["messages"][-1]["content"] for r in self.requests]

    def _fault(self, prompt: str) -> str | None:
        with self._lock:
            for needle, faults in self.faults.items():
                if needle in prompt and faults:
                    return faults.pop(0)
        return None

    def verdict(self, prompt: str) -> str:
        one = prompt.split("### Response 1:", 1)[-1].split("### Response 2:", 1)[0]
        two = prompt.split("### Response 2:", 1)[-1]
        k1, k2 = self.keyword in one.lower(), self.keyword in two.lower()
        return "1" if k1 and not k2 else "2" if k2 and not k1 else "Tie"

    def handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        prompt = body["messages"][-1]["content"]
        with self._lock:
            self.requests.append({"t": time.monotonic(), "headers": dict(h.headers), "body": body})
        fault = self._fault(prompt)
        if fault == "drop":
            h.connection.close()
            h.close_connection = True
            return
        if fault == "hang":
            time.sleep(self.hang_s)
        if fault == "429":
            return _send(h, 429, b'{"error": "rate limited"}', {"Retry-After": self.retry_after})
        if fault in ("500", "401"):
            return _send(h, int(fault), b'{"error": "boom"}')
        if fault == "nologprobs" and "logprobs" in body:
            return _send(h, 400, b'{"error": "logprobs is not supported"}')
        if fault == "badjson":
            return _send(h, 200, b'{"choices": [{"message": ')
        verdict = self.verdict(prompt)
        text = f"{verdict}\nResponse {verdict} mentions the {self.keyword}." if verdict != "Tie" else "Tie\nEqual."
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}  # fmt: skip
        if self.with_logprobs and body.get("logprobs"):
            p = {"1": 0.1, "2": 0.1, "Tie": 0.1, verdict: 0.7}
            alts = [{"token": t, "logprob": math.log(q)} for t, q in p.items()] + [{"token": "The", "logprob": -5.0}]
            choice["logprobs"] = {"content": [{"token": verdict, "logprob": math.log(0.7), "top_logprobs": alts}]}
        n_prompt, n_out = len(prompt.split()), len(text.split())
        data = {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}}
        _send(h, 200, json.dumps(data).encode())


def _send(h: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
    try:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
        pass
