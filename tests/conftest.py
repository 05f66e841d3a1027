"""Fixtures: real release data, synthetic clips, and tiny random Qwen2.5-Omni judges built on disk."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sagelm.demo import release_candidates

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# Beside this checkout, or beside the one it was cloned from, or $SAGELM_RELEASE (sagelm.demo.release_candidates).
RELEASE = next((c for c in release_candidates() if c.is_dir()), REPO.parent / "shared" / "data" / "sagelm-release")
DEMO_AUDIO = RELEASE / "demo_audio"
SR = 16_000


def free_port() -> int:
    """A loopback TCP port nothing listens on, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    """Until GET `url` answers 200; an AssertionError quoting the end of the server's `log` if `proc` exits or
    `timeout_s` passes first."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not become ready:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


@pytest.fixture(scope="session")
def release() -> Path:
    assert RELEASE.is_dir(), f"the released SageLM data is expected at {RELEASE}"
    return RELEASE


def tone(seconds: float, freq: float = 440.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, sr: int = SR, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(np.float32)


def write(path: Path, samples: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sr)
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Short tone and noise clips of different lengths (so batches need padding)."""
    d = tmp_path_factory.mktemp("clips")
    return {
        "tone": write(d / "tone.wav", tone(1.0, 523.0)),
        "tone_long": write(d / "tone_long.wav", tone(1.7, 660.0)),
        "noise": write(d / "noise.wav", noise(1.2, seed=1)),
        "noise_short": write(d / "noise_short.wav", noise(0.6, seed=2)),
    }


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from sagelm.tiny import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("tiny") / "thinker", "thinker")


@pytest.fixture(scope="session")
def tiny_full_dir(tmp_path_factory) -> Path:
    from sagelm.tiny import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("tiny") / "full", "full")


TONE_QUESTION = "Which response is the pure tone?"


def teach_tone_judge(
    folder: Path, steps: int = 200, seed: int = 0, always: str | None = None, spec=None, layout: str = "thinker"
) -> Path:
    """A tiny thinker taught, in a few seconds, that the better response is the tone (not the noise), in
    either position: enough to check audio order, probabilities and swap mapping end to end.
    With `always="1"` it is taught to answer "1" whatever it hears: a judge that knows only position.
    `spec` (a sagelm.tiny.TinySpec) sizes it, `layout` "full" saves a full Qwen2.5-Omni checkpoint (for vLLM)."""
    import torch

    from sagelm.audio import Clip
    from sagelm.encoding import Example, build_inputs
    from sagelm.tiny import TinySpec, build_feature_extractor, build_thinker, build_tokenizer, save_judge

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = spec or TinySpec()
    tok, fe = build_tokenizer(spec.vocab_size), build_feature_extractor()
    thinker = build_thinker(tok, spec)

    def example() -> Example:
        a = Clip("tone", tone(rng.uniform(0.5, 1.8), rng.uniform(250, 900)), 1.0)
        b = Clip("noise", noise(rng.uniform(0.5, 1.8), seed=int(rng.integers(1 << 30))), 1.0)
        if always is not None:
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            return Example("helpfulness", TONE_QUESTION, first, second, f"{always}\nResponse {always}.<|im_end|>")
        if rng.random() < 0.5:
            return Example("helpfulness", TONE_QUESTION, a, b, "1\nResponse 1 is the tone.<|im_end|>")
        return Example("helpfulness", TONE_QUESTION, b, a, "2\nResponse 2 is the tone.<|im_end|>")

    opt = torch.optim.AdamW(thinker.parameters(), lr=2e-3)
    thinker.train()
    for _ in range(steps):
        loss = thinker(**build_inputs(tok, fe, [example() for _ in range(8)], with_answers=True)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    thinker.eval()
    return save_judge(folder, thinker, tok, fe, layout)


@pytest.fixture(scope="session")
def tone_judge_dir(tmp_path_factory) -> Path:
    return teach_tone_judge(tmp_path_factory.mktemp("tone") / "judge")


@pytest.fixture(scope="session")
def full_judge_dir(tmp_path_factory) -> Path:
    """The tone judge with head_dim 32 (vLLM's CPU attention rejects 16), saved as a full Qwen2.5-Omni checkpoint
    (what vLLM needs). $SAGELM_VLLM_TEST_JUDGE names one already taught (teach_tone_judge, layout "full"), for
    quick reruns."""
    from sagelm.tiny import TinySpec

    if os.environ.get("SAGELM_VLLM_TEST_JUDGE"):
        return Path(os.environ["SAGELM_VLLM_TEST_JUDGE"])
    spec = TinySpec(hidden_size=64, heads=2, kv_heads=1)  # head_dim 32, mrope_section [4, 6, 6]
    return teach_tone_judge(tmp_path_factory.mktemp("vllm") / "full", spec=spec, layout="full")


@pytest.fixture(scope="session")
def position_judge_dir(tmp_path_factory) -> Path:
    """A tiny judge that says "1" whatever it hears (it learns that in a few dozen steps)."""
    return teach_tone_judge(tmp_path_factory.mktemp("position") / "judge", steps=30, always="1")


@pytest.fixture(scope="session")
def tone_judge(tone_judge_dir):
    from sagelm.decoding import DecodingOptions
    from sagelm.judge import Judge

    return Judge.from_pretrained(str(tone_judge_dir), DecodingOptions(max_new_tokens=16))
