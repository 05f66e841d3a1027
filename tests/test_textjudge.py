"""The OpenAI-compatible chat client: retries, Retry-After, timeouts, the response cache, the API key."""

import pytest
from chat_server import ChatServer

from sagelm.textjudge import CallFailed, ChatClient, ClientSettings, TextJudgeError, parse_completion, retry_after


def body(prompt: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
            "logprobs": True, "top_logprobs": 20}  # fmt: skip


def client(server: ChatServer, tmp_path, **kw) -> ChatClient:
    settings = {"concurrency": 4, "timeout_s": 1.0, "max_retries": 3, "backoff_s": 0.01, "cache_dir": tmp_path / "c"}
    return ChatClient(ClientSettings(server.url, **{**settings, **kw}))


PROMPT = "### Response 1:\n{}\n\n### Response 2:\n{}\n\n"


@pytest.mark.parametrize("fault", ["429", "500", "hang", "badjson", "drop"])
def test_a_transient_fault_is_retried_and_the_call_succeeds(tmp_path, fault):
    with ChatServer(retry_after="0") as server:
        prompt = PROMPT.format("a banana", "an apple")
        server.faults[prompt] = [fault]
        c = client(server, tmp_path)
        r = c.complete(body(prompt))
        assert r.text.startswith("1\n") and not r.cached
        assert c.calls == 2 and len(server.requests) == 2
        assert r.usage["completion_tokens"] > 0 and r.top_logprobs[0]["token"] == "1"


def test_retry_after_is_honoured(tmp_path):
    with ChatServer(retry_after="1") as server:
        prompt = PROMPT.format("x", "banana")
        server.faults[prompt] = ["429"]
        client(server, tmp_path).complete(body(prompt))
        first, second = server.requests
        assert second["t"] - first["t"] >= 0.95  # the header's 1 s, not the 0.01 s backoff


def test_retry_after_as_seconds_or_http_date():
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_a_fault_that_persists_fails_that_call_after_the_retries(tmp_path):
    with ChatServer(retry_after="0") as server:
        prompt = PROMPT.format("banana", "x")
        server.faults[prompt] = ["500"] * 10
        c = client(server, tmp_path, max_retries=2)
        results = c.complete_many([body(prompt), body(PROMPT.format("x", "banana"))])
        assert isinstance(results[0], CallFailed) and "after 3 attempts: HTTP 500" in str(results[0])
        assert results[1].text.startswith("2\n")  # the other call is unaffected
        assert len(server.requests) == 4


def test_a_wrong_key_stops_the_run(tmp_path):
    with ChatServer() as server:
        prompt = PROMPT.format("banana", "x")
        server.faults[prompt] = ["401"]
        with pytest.raises(TextJudgeError, match="HTTP 401"):
            client(server, tmp_path).complete(body(prompt))


def test_the_response_cache_makes_no_repeat_calls(tmp_path):
    with ChatServer() as server:
        prompts = [PROMPT.format("banana", "x"), PROMPT.format("x", "banana"), PROMPT.format("x", "y")]
        first = client(server, tmp_path).complete_many([body(p) for p in prompts])
        again = client(server, tmp_path)
        second = again.complete_many([body(p) for p in prompts])
        assert len(server.requests) == 3 and again.calls == 0 and again.cache_hits == 3
        assert [r.text for r in first] == [r.text for r in second] and all(r.cached for r in second)


def test_the_api_key_is_sent_but_never_written(tmp_path, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    with ChatServer() as server:
        client(server, tmp_path, api_key_env="MY_JUDGE_KEY").complete(body(PROMPT.format("banana", "x")))
        assert server.requests[0]["headers"]["Authorization"] == f"Bearer {secret}"
    for f in (tmp_path / "c").rglob("*"):
        if f.is_file():
            assert secret not in f.read_text()
    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(TextJudgeError, match="MY_JUDGE_KEY: that environment variable is not set"):
        ChatClient(ClientSettings(server.url, api_key_env="MY_JUDGE_KEY"))


def test_a_server_that_refuses_logprobs_is_asked_again_without_them(tmp_path):
    with ChatServer() as server:
        p1, p2 = PROMPT.format("banana", "x"), PROMPT.format("x", "banana")
        server.faults[p1] = ["nologprobs"]
        c = client(server, tmp_path)
        r1, r2 = c.complete(body(p1)), c.complete(body(p2))
        assert r1.text.startswith("1\n") and r1.top_logprobs is None and r2.top_logprobs is None
        assert "logprobs" in server.requests[0]["body"] and "logprobs" not in server.requests[1]["body"]
        assert "logprobs" not in server.requests[2]["body"]  # remembered: one refusal, not one per call


def test_parse_completion_refuses_what_is_not_a_chat_completion():
    with pytest.raises(ValueError, match="not a chat completion"):
        parse_completion({"error": "x"})
    r = parse_completion({"choices": [{"message": {"content": "2\nwhy"}}]})
    assert r.text == "2\nwhy" and r.top_logprobs is None and r.usage == {}
