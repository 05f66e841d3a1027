"""The transformers engine: memory stays bounded at any batch size (issue 9 item 18)."""

import json
import subprocess
import sys

import pytest

QWEN_VOCAB = 152_064  # Qwen2.5-Omni-7B's vocabulary: what makes full logits large

PROBE = """
import json, resource, sys
import numpy as np
from sagelm.audio import Clip
from sagelm.backends.base import Request
from sagelm.backends.hf import HFBackend
from sagelm.decoding import DecodingOptions

folder, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
backend = HFBackend.load(folder, device="cpu")
rng = np.random.default_rng(0)
clip = lambda s: Clip(f"c{s}", (rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32), 1.0)
requests = [Request("honesty", "Which answer is right?", clip(1.0), clip(1.2)) for _ in range(batch)]
backend.judge(requests[:1], DecodingOptions(max_new_tokens=2))  # warm up: weights, kernels, caches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = backend.judge(requests, DecodingOptions(max_new_tokens=steps))
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"grown_mib": grown, "new_tokens": [o.new_tokens for o in out]}))
"""


@pytest.fixture(scope="module")
def big_vocab_dir(tmp_path_factory):
    from sagelm.tiny import TinySpec, build_feature_extractor, build_thinker, build_tokenizer, save_judge

    tok = build_tokenizer()
    thinker = build_thinker(tok, TinySpec())
    thinker.resize_token_embeddings(QWEN_VOCAB, mean_resizing=False)
    return save_judge(tmp_path_factory.mktemp("vocab") / "judge", thinker, tok, build_feature_extractor())


def _grown(folder, batch: int, steps: int) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, str(folder), str(batch), str(steps)], capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_batch_16_long_generation_stays_near_the_batch_1_peak(big_vocab_dir):
    """Full logits would be [16, prompt, 152,064] at the prefill plus one [16, 152,064] per step kept to the end
    (2.7 GB here when the LM head runs on every prompt position); the judge keeps only what it reads."""
    one, sixteen = _grown(big_vocab_dir, 1, 256), _grown(big_vocab_dir, 16, 256)
    assert sixteen["new_tokens"] == [256] * 16, "the random judge was meant to write to the cap"
    assert sixteen["grown_mib"] - one["grown_mib"] < 300, (one, sixteen)
