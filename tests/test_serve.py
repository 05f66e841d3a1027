"""`sagelm serve` on loopback: a real server process (the CLI) with the tiny taught tone judge.

Two servers for the module: `server` (batching, an --audio-root, a 1 MB audio limit so over-limit bodies are
cheap to make) takes the correctness, fault, load and finally SIGTERM tests; `small` (batch 1, a queue of 2,
a bearer key) takes auth and the flood beyond its queue.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import TONE_QUESTION, free_port, wait_until_serving

from sagelm.aspects import SEMANTIC_ASPECTS

START_TIMEOUT_S = 240  # importing torch and loading the tiny judge on a busy 2-core machine
LOAD_SECONDS = 30
LOAD_CLIENTS = 50
RSS_SLACK_MB = 40  # "memory flat": RSS at the end within a few tens of MB of RSS after warm-up
API_KEY = "s3cret-test-key"


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    tmp: Path  # the server's TMPDIR: where uploads are decoded from

    def uploads_left(self) -> list[Path]:
        return [p for d in self.tmp.glob("sagelm-serve-*") for p in d.iterdir()]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text

    def count(self, status_prefix: str) -> float:
        """Requests answered with a status starting with `status_prefix` ("5" for every 5xx)."""
        pattern = rf'^sagelm_requests_total\{{path="[^"]*",status="{status_prefix}\d*"\}} (\S+)$'
        return sum(float(m.group(1)) for m in re.finditer(pattern, self.metrics(), re.M))


def start_server(model: Path, log: Path, *args: str, env: dict | None = None) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "sagelm", "serve", "--model", str(model), "--port", str(port), *args]
    tmp = log.parent / "tmp"
    tmp.mkdir()
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "TMPDIR": str(tmp), **(env or {})})  # fmt: skip
    server = Server(proc, f"http://127.0.0.1:{port}", log, tmp)
    try:
        wait_until_serving(proc, f"{server.url}/health", log, START_TIMEOUT_S)
    except AssertionError:
        proc.kill()
        raise
    return server


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory, clips) -> Path:
    root = tmp_path_factory.mktemp("served")
    (root / "probes").mkdir()
    for name in ("tone", "noise", "tone_long", "noise_short"):
        shutil.copy(clips[name], root / "probes" / f"{name}.wav")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(clips["tone"], outside / "secret.wav")
    (root / "escape.wav").symlink_to(outside / "secret.wav")  # a symlink inside the root, to a file outside
    (root / "notes.txt").write_text("not audio at all\n")
    with sf.SoundFile(str(root / "two_hours.flac"), "w", 8000, 1, subtype="PCM_16", format="FLAC") as f:
        minute = np.zeros(8000 * 60, dtype=np.int16)  # silence: 2 h in ~180 KB of FLAC
        for _ in range(120):
            f.write(minute)
    return root


@pytest.fixture(scope="module")
def server(tone_judge_dir, audio_root, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    s = start_server(tone_judge_dir, log, "--audio-root", str(audio_root), "--max-audio-mb", "1",
                     "--max-batch-size", "8", "--max-wait-ms", "10")  # fmt: skip
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def small(tone_judge_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "small.log"
    s = start_server(tone_judge_dir, log, "--max-batch-size", "1", "--max-queue", "2",
                     "--api-key-env", "SAGELM_TEST_KEY", env={"SAGELM_TEST_KEY": API_KEY})  # fmt: skip
    yield s
    stop_server(s)


def b64(path: Path) -> dict:
    return {"data": base64.b64encode(path.read_bytes()).decode()}


def body(a1: dict, a2: dict, **more) -> dict:
    """A judge request for the tone judge: on helpfulness unless `aspects` are given."""
    aspect = {} if "aspects" in more else {"aspect": "helpfulness"}
    return {"question": TONE_QUESTION, **aspect, "audio_1": a1, "audio_2": a2, **more}


def assert_refused(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    payload = r.json()
    assert list(payload) == ["error"] and "\n" not in payload["error"], payload
    for w in words:
        assert w in payload["error"], payload


def assert_serving(server: Server) -> None:
    """The server still answers a probe pair correctly."""
    r = httpx.post(f"{server.url}/v1/judge", json=body({"path": "probes/tone.wav"}, {"path": "probes/noise.wav"}))
    assert r.status_code == 200, r.text
    assert [j["verdict"] for j in r.json()["judgments"]] == ["1"]


# -- correctness ---------------------------------------------------------------------------------------------
def test_probe_pairs_in_both_orders_give_the_records_of_sagelm_judge(server, audio_root, tone_judge_dir):
    from sagelm.judge import Judge

    tone, noise = (audio_root / "probes" / "tone.wav").resolve(), (audio_root / "probes" / "noise.wav").resolve()
    r = httpx.post(f"{server.url}/v1/judge", json=body({"path": "probes/tone.wav"}, {"path": str(noise)},
                                                       both_orders=True), timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    served = r.json()["judgments"]
    assert [(j["verdict"], j["swapped"]) for j in served] == [("1", False), ("1", True)]
    assert served[1]["raw"].startswith("2")  # heard swapped, mapped back to the original numbering

    judge = Judge.from_pretrained(str(tone_judge_dir))
    local = [j.model_dump() for j in judge.compare(TONE_QUESTION, tone, noise, ["helpfulness"], both_orders=True)]
    for s, j in zip(served, local, strict=True):
        assert s.keys() == j.keys()
        assert {k: v for k, v in s.items() if k != "probabilities"} == {k: v for k, v in j.items()
                                                                         if k != "probabilities"}  # fmt: skip
        assert s["probabilities"] == pytest.approx(j["probabilities"], abs=1e-4)

    # The other order, uploaded in base64: named by digest, same key as the file judged by path.
    r = httpx.post(f"{server.url}/v1/judge", json=body(b64(noise), b64(tone)), timeout=60)
    assert r.status_code == 200, r.text
    (j,) = r.json()["judgments"]
    assert j["verdict"] == "2" and j["audio_1"].startswith("upload:") and j["error"] is None
    by_path = httpx.post(f"{server.url}/v1/judge", json=body({"path": str(noise)}, {"path": str(tone)})).json()
    assert by_path["judgments"][0]["key"] == j["key"] and by_path["judgments"][0]["verdict"] == "2"


def test_aspects_verdict_only_and_the_python_client(server, audio_root):
    from sagelm import Client, ServerPath

    tone, noise = audio_root / "probes" / "tone_long.wav", audio_root / "probes" / "noise_short.wav"
    with Client(server.url) as client:
        assert client.health()["status"] == "ok"
        records = client.judge(TONE_QUESTION, noise, tone.read_bytes(), aspects=["helpfulness", "honesty"],
                               verdict_only=True)  # fmt: skip
        assert [(r.aspect, r.verdict, r.rationale) for r in records] == [("helpfulness", "2", None),
                                                                          ("honesty", "2", None)]  # fmt: skip
        four = client.judge(TONE_QUESTION, ServerPath("probes/tone.wav"), ServerPath("probes/noise.wav"))
        assert tuple(r.aspect for r in four) == SEMANTIC_ASPECTS  # neither aspect nor aspects: the semantic four
        from sagelm.client import ServerError

        with pytest.raises(ServerError) as e:
            client.judge(TONE_QUESTION, ServerPath("../x.wav"), noise)
        assert e.value.status == 403


def test_health_metrics_and_docs(server):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["backend"] == "hf"
    text = server.metrics()
    for name in ("sagelm_requests_total", "sagelm_request_seconds_bucket", "sagelm_batch_size_bucket",
                 "sagelm_queue_depth"):  # fmt: skip
        assert name in text
    assert httpx.get(f"{server.url}/docs").status_code == 200
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/judge" in schema["paths"]


# -- faults --------------------------------------------------------------------------------------------------
def raw_http(port: int, head: bytes, payload: bytes = b"", read: bool = True) -> bytes:
    """Send a hand-made HTTP request; the answer's bytes (or b"" when `read` is false: the client just leaves)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + payload)
        if not read:
            return b""
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b'"}' in chunk:
                break
        return b"".join(chunks)


def test_each_fault_gets_its_status_and_one_line_and_the_server_goes_on(server, audio_root):
    url = f"{server.url}/v1/judge"
    tone, noise = {"path": "probes/tone.wav"}, {"path": "probes/noise.wav"}
    fives = server.count("5")

    # Malformed JSON and wrong types: 400 (not FastAPI's 422), naming the field.
    r = httpx.post(url, content=b'{"question": "x", "audio_1": ', headers={"content-type": "application/json"})
    assert_refused(r, 400, "not valid JSON")
    assert_refused(httpx.post(url, json={**body(tone, noise), "question": 7}), 400, "question")
    assert_refused(httpx.post(url, json={**body(tone, noise), "both_orders": "yes"}), 400, "both_orders")
    assert_refused(httpx.post(url, json={"question": "x", "audio_1": tone}), 400, "audio_2: missing")
    assert_refused(httpx.post(url, json={**body(tone, noise), "verdictonly": True}), 400, "verdictonly")
    assert_refused(httpx.post(url, json={**body(tone, noise), "aspect": "charm"}), 400, "aspect", "charm")
    assert_refused(httpx.post(url, json=body({"data": "x", "path": "y"}, noise)), 400, "exactly one")
    assert_refused(httpx.post(url, json=[1, 2]), 400, "JSON object")
    assert_refused(httpx.post(url, json={**body(tone, noise), "question": "why? " * 10_000}), 400, "question")

    # A 2-hour file (small as FLAC): refused before it is decoded; by path or uploaded.
    assert_refused(httpx.post(url, json=body({"path": "two_hours.flac"}, noise)), 413, "audio_1", "7200 s")
    assert_refused(httpx.post(url, json=body(tone, b64(audio_root / "two_hours.flac"))), 413, "audio_2", "7200 s")

    # Bodies over the limit (1 MB an audio -> about 2.7 MB of body): by Content-Length before any is read, and
    # counted while streaming when the client does not say.
    answer = raw_http(server.port, b"POST /v1/judge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 104857600\r\n\r\n", b'{"question": "')  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 413") and b"over the server's limit" in answer, answer[:300]

    def stream():
        yield b'{"question": "x", "audio_1": {"data": "'
        for _ in range(50):
            yield b"A" * 65536
        yield b'"}}'

    r = httpx.post(url, content=stream(), headers={"content-type": "application/json"})
    assert_refused(r, 413, "over the server's limit")
    big = base64.b64encode(os.urandom(int(1.2 * 2**20))).decode()  # one audio over 1 MB in a body under the limit
    assert_refused(httpx.post(url, json=body({"data": big}, noise)), 413, "audio_1", "1 MB")

    # Not audio, not base64, an empty upload.
    assert_refused(httpx.post(url, json=body(tone, {"data": base64.b64encode(b"hello, world\n" * 50).decode()})),
                   400, "audio_2", "not readable as audio")  # fmt: skip
    assert "sagelm-serve" not in httpx.post(url, json=body(tone, b64(audio_root / "notes.txt"))).text  # no temp path
    assert_refused(httpx.post(url, json=body({"path": "notes.txt"}, noise)), 400, "audio_1", "not readable")
    assert_refused(httpx.post(url, json=body({"data": "%%%not base64"}, noise)), 400, "audio_1.data", "base64")

    # Paths: outside the root by `..`, absolute, through a symlink; missing; a folder.
    assert_refused(httpx.post(url, json=body({"path": "../outside/secret.wav"}, noise)), 403, "outside")
    assert_refused(httpx.post(url, json=body({"path": "/etc/passwd"}, noise)), 403, "outside")
    assert_refused(httpx.post(url, json=body({"path": "escape.wav"}, noise)), 403, "outside")
    assert_refused(httpx.post(url, json=body({"path": "probes/missing.wav"}, noise)), 400, "no such file")
    assert_refused(httpx.post(url, json=body({"path": "probes"}, noise)), 400, "not a file")
    assert_refused(httpx.post(url, json=body({"path": "probes/tone.wav\u0000"}, noise)), 400, "NUL")
    (audio_root / "loop.wav").symlink_to(audio_root / "loop.wav")
    assert_refused(httpx.post(url, json=body({"path": "loop.wav"}, noise)), 400, "audio_1.path")
    wrapped = base64.encodebytes((audio_root / "probes" / "tone.wav").read_bytes()).decode()  # 76-column lines
    r = httpx.post(url, json=body({"data": wrapped}, noise))
    assert r.status_code == 200 and r.json()["judgments"][0]["verdict"] == "1", r.text

    # Clients that leave: half a body, and a whole request whose answer nobody waits for.
    request = json.dumps(body(tone, noise)).encode()
    head = b"POST /v1/judge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    raw_http(server.port, head % len(request), request[: len(request) // 2], read=False)
    raw_http(server.port, head % len(request), request, read=False)
    time.sleep(0.5)

    assert_serving(server)
    assert server.count("5") == fives  # never a 500 for any of it
    assert list(server.tmp.glob("sagelm-serve-*")) and not server.uploads_left()  # no upload left behind


# -- load ----------------------------------------------------------------------------------------------------
async def _load(server: Server, probes: list[tuple[dict, str]], seconds: float, clients: int) -> dict:
    stats = {"ok": 0, "wrong": 0, "status": {}, "rss_warm": None}
    deadline = time.monotonic() + seconds
    warm_at = time.monotonic() + min(5.0, seconds / 4)

    async def client(n: int, http: httpx.AsyncClient) -> None:
        i = n
        while time.monotonic() < deadline:
            payload, want = probes[i % len(probes)]
            i += 1
            r = await http.post("/v1/judge", json=payload)
            stats["status"][r.status_code] = stats["status"].get(r.status_code, 0) + 1
            if r.status_code == 200:
                verdicts = [j["verdict"] for j in r.json()["judgments"]]
                stats["ok" if verdicts == [want] else "wrong"] += 1
            if stats["rss_warm"] is None and time.monotonic() > warm_at:
                stats["rss_warm"] = server.rss_mb()

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    return stats


def probe_requests(audio_root: Path) -> list[tuple[dict, str]]:
    tone, noise = audio_root / "probes" / "tone.wav", audio_root / "probes" / "noise_short.wav"
    return [
        (body({"path": "probes/tone.wav"}, {"path": "probes/noise_short.wav"}), "1"),
        (body(b64(noise), b64(tone)), "2"),
        (body(b64(tone), {"path": "probes/noise.wav"}, verdict_only=True), "1"),
        (body({"path": "probes/noise.wav"}, {"path": "probes/tone_long.wav"}), "2"),
    ]


def test_fifty_clients_for_thirty_seconds(server, audio_root):
    """Every answer 200 and correct, requests batched together, RSS flat after warm-up."""
    before = server.metrics()
    stats = asyncio.run(_load(server, probe_requests(audio_root), LOAD_SECONDS, LOAD_CLIENTS))
    rss_end = server.rss_mb()
    assert set(stats["status"]) == {200}, stats
    assert stats["wrong"] == 0 and stats["ok"] >= LOAD_CLIENTS, stats
    assert rss_end - stats["rss_warm"] < RSS_SLACK_MB, (stats["rss_warm"], rss_end)
    after = server.metrics()

    def batch_mean(text: str) -> tuple[float, float]:
        count = float(re.search(r"^sagelm_batch_size_count (\S+)$", text, re.M).group(1))
        total = float(re.search(r"^sagelm_batch_size_sum (\S+)$", text, re.M).group(1))
        return count, total

    (c0, s0), (c1, s1) = batch_mean(before), batch_mean(after)
    assert (s1 - s0) / (c1 - c0) > 2, "concurrent requests were not batched together"


# -- the small server: auth and a flood beyond the queue ------------------------------------------------------
def test_bearer_key(small, clips):
    url = f"{small.url}/v1/judge"
    payload = body(b64(clips["tone"]), b64(clips["noise"]))
    assert_refused(httpx.post(url, json=payload), 401, "API key")
    assert_refused(httpx.post(url, json=payload, headers={"authorization": "Bearer wrong"}), 401, "API key")
    assert_refused(httpx.post(url, json=payload, headers={"authorization": API_KEY}), 401)
    r = httpx.post(url, json=payload, headers={"authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.json()["judgments"][0]["verdict"] == "1"
    assert httpx.get(f"{small.url}/health").status_code == 200  # health and metrics need no key
    # A path on a server with no --audio-root: refused, not read.
    r = httpx.post(url, json=body({"path": str(clips["tone"])}, b64(clips["noise"])),
                   headers={"authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert_refused(r, 403, "no paths")


def test_a_flood_beyond_the_queue_gets_429_and_the_rest_is_judged(small, clips):
    payload = body(b64(clips["noise"]), b64(clips["tone_long"]), aspects=["helpfulness", "honesty"])
    headers = {"authorization": f"Bearer {API_KEY}"}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small.url, timeout=120, headers=headers) as http:
            return await asyncio.gather(*(http.post("/v1/judge", json=payload) for _ in range(30)))

    answers = asyncio.run(flood())
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429} and codes.count(429) >= 10, codes
    for r in answers:
        if r.status_code == 429:
            assert_refused(r, 429, "queue is full")
            assert r.headers["retry-after"] == "1"
        else:
            assert [j["verdict"] for j in r.json()["judgments"]] == ["2", "2"]
    r = httpx.post(f"{small.url}/v1/judge", json=payload, headers=headers)
    assert r.status_code == 200  # and it goes on serving


# -- last: SIGTERM with requests in flight ---------------------------------------------------------------------
def test_sigterm_finishes_requests_in_flight_then_exits_0(server, audio_root):
    payload = body({"path": "probes/tone_long.wav"}, {"path": "probes/noise.wav"}, both_orders=True)

    async def in_flight() -> list[httpx.Response | BaseException]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            posts = [asyncio.ensure_future(http.post("/v1/judge", json=payload)) for _ in range(8)]
            for _ in range(500):  # until several requests are being answered
                await asyncio.sleep(0.01)
                if float(re.search(r"^sagelm_requests_in_flight (\S+)$", (await http.get("/metrics")).text,
                                   re.M).group(1)) >= 3:  # fmt: skip
                    break
            server.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*posts, return_exceptions=True)

    answers = asyncio.run(in_flight())
    done = [r for r in answers if isinstance(r, httpx.Response) and r.status_code == 200]
    assert len(done) >= 3, answers
    for r in answers:  # judged in full; or, sent after SIGTERM, refused (503) or never accepted
        if r in done:
            assert [(j["verdict"], j["swapped"]) for j in r.json()["judgments"]] == [("1", False), ("1", True)]
        else:
            assert isinstance(r, httpx.TransportError) or r.status_code == 503, r
    assert server.proc.wait(60) == 0, server.log.read_text()[-2000:]
    assert not list(server.tmp.glob("sagelm-serve-*"))  # its private upload folder removed
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=2)


# -- the vLLM engine: its async engine batching requests as they arrive (run by `make test-vllm`) ---------------
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here: `make test-vllm` runs these"
)
VLLM_QUEUE = 16


@pytest.fixture(scope="module")
def vllm_server(full_judge_dir, audio_root, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "vllm.log"
    s = start_server(full_judge_dir, log, "--backend", "vllm", "--audio-root", str(audio_root), "--max-queue",
                     str(VLLM_QUEUE), env={"VLLM_CPU_KVCACHE_SPACE": "1"})  # fmt: skip
    yield s
    stop_server(s)


@pytest.mark.vllm
@needs_vllm
def test_vllm_server_under_load_a_flood_and_sigterm(vllm_server, audio_root):
    s = vllm_server
    fives = s.count("5")  # the 503s /health answered while the engine was starting
    health = httpx.get(f"{s.url}/health").json()
    assert health == {"status": "ok", "model": health["model"], "backend": "vllm"}
    r = httpx.post(f"{s.url}/v1/judge", json=body({"path": "probes/tone.wav"}, {"path": "probes/noise.wav"},
                                                  both_orders=True), timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    served = r.json()["judgments"]
    assert [(j["verdict"], j["swapped"], j["backend"]) for j in served] == [("1", False, "vllm"), ("1", True, "vllm")]
    assert served[1]["raw"].startswith("2") and abs(sum(served[0]["probabilities"].values()) - 1) < 1e-6

    # As many clients as the queue holds, 10 s: every answer 200 and right (paths, uploads, verdict-only).
    stats = asyncio.run(_load(s, probe_requests(audio_root), 10, VLLM_QUEUE))
    assert set(stats["status"]) == {200} and stats["wrong"] == 0 and stats["ok"] >= VLLM_QUEUE, stats

    # A flood beyond the queue: 429 for what does not fit, the rest judged right.
    payload = body({"path": "probes/noise.wav"}, {"path": "probes/tone_long.wav"}, aspects=["helpfulness", "honesty"])

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=s.url, timeout=120) as http:
            return await asyncio.gather(*(http.post("/v1/judge", json=payload) for _ in range(40)))

    answers = asyncio.run(flood())
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429} and codes.count(200) >= VLLM_QUEUE // 2, codes
    for r in answers:
        if r.status_code == 429:
            assert_refused(r, 429, "queue is full")
        else:
            assert [j["verdict"] for j in r.json()["judgments"]] == ["2", "2"]
    assert s.count("5") == fives

    # SIGTERM with requests in the engine: they are answered, then the server exits 0.
    async def in_flight() -> list[httpx.Response | BaseException]:
        async with httpx.AsyncClient(base_url=s.url, timeout=120) as http:
            posts = [asyncio.ensure_future(http.post("/v1/judge", json=payload)) for _ in range(6)]
            await asyncio.sleep(0.3)
            s.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*posts, return_exceptions=True)

    answers = asyncio.run(in_flight())
    done = [r for r in answers if isinstance(r, httpx.Response) and r.status_code == 200]
    assert done, answers
    for r in done:
        assert [j["verdict"] for j in r.json()["judgments"]] == ["2", "2"]
    assert s.proc.wait(120) == 0, s.log.read_text()[-3000:]
