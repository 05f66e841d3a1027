"""GPU benchmark, prepared for a machine with one H100/H200-class GPU (not run here: no figures are claimed).

A random-weight model with the real Qwen2.5-Omni-7B thinker configuration (written out below from the
published config; no download: throughput does not depend on the weights when the output length is fixed)
judges pairs of 60 s clips, OUT_TOKENS new tokens each:
  hf (transformers, bf16) at batch 1, 8 and 16;
  vLLM, our defaults (scheduler batching every prompt it is given) vs --preset authors (max_num_seqs=1).
Prints judgments/s, tokens per judgment (a random model rarely says <|im_end|>, so ~OUT_TOKENS) and peak GPU
memory (hf: torch's peak allocation; vLLM: what its process holds, i.e. its gpu_memory_utilization share).
Each configuration runs in a subprocess of its own. Sized to finish in under 8 minutes on one H100/H200.

Needs: a CUDA machine with `pip install -e '.[model,vllm]'` (vllm's CUDA build with its torch; transformers
as vllm pins it). Run: `python benchmarks/bench_gpu.py`. `--smoke` runs the same code on the CPU with a tiny
config, 2 s clips and a few judgments (in .venv-vllm) to prove it executes: its figures mean nothing.
The tokenizer is the tiny one of sagelm.tiny (Qwen's real 152k-word tokenizer needs the hub); the vocabulary
of the model is the real one, so the LM head costs what it costs in the real model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16_000
OUT_TOKENS = 128  # fixed output length: a verdict and a rationale of SageLM's usual size

# The published Qwen2.5-Omni-7B thinker (config.json "thinker_config"), dimensions only; token ids come from
# the tokenizer actually used. The talker and token2wav are never run by the judge: tiny ones fill the file.
QWEN25_OMNI_7B_TEXT = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    tie_word_embeddings=False, use_sliding_window=False, sliding_window=32768,
)  # fmt: skip
QWEN25_OMNI_7B_AUDIO = dict(
    num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
    output_dim=3584, n_window=100, max_source_positions=1500, activation_function="gelu", scale_embedding=False,
)  # fmt: skip
QWEN25_OMNI_7B_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=3584,
    fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu",
)  # fmt: skip


def sizes(smoke: bool) -> dict:
    if smoke:  # tiny but vLLM-able on the CPU (head_dim 32)
        return dict(seconds=2.0, vocab=1024, text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1), audio=dict(encoder_layers=2,
                    encoder_attention_heads=4, encoder_ffn_dim=128, d_model=64, output_dim=64),
                    vision=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=64,
                    fullatt_block_indexes=[0]), hf=((1, 2), (4, 4)), vllm_ours=8, vllm_authors=2,
                    out_tokens=8)  # fmt: skip
    return dict(seconds=60.0, vocab=QWEN25_OMNI_7B_TEXT["vocab_size"], text={}, audio={}, vision={},
                hf=((1, 8), (8, 16), (16, 32)), vllm_ours=128, vllm_authors=16, out_tokens=OUT_TOKENS)  # fmt: skip


def write_checkpoint(folder: Path, smoke: bool) -> Path:
    """config.json (full Qwen2.5-Omni), the tiny tokenizer and the real feature extractor settings; no weights."""
    from transformers import Qwen2_5OmniConfig

    from sagelm.tiny import SPECIAL_TOKENS, build_feature_extractor, build_tokenizer, thinker_config

    s = sizes(smoke)
    tok = build_tokenizer()
    tiny = thinker_config(tok).to_dict()  # its token ids match the tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert max(ids.values()) < s["vocab"]
    thinker = dict(tiny)
    thinker["text_config"] = {**tiny["text_config"], **QWEN25_OMNI_7B_TEXT, **s["text"], "vocab_size": s["vocab"]}
    if smoke:
        rope = {**QWEN25_OMNI_7B_TEXT["rope_parameters"], "mrope_section": [4, 6, 6]}  # head_dim 32
        thinker["text_config"]["rope_parameters"] = rope
    thinker["audio_config"] = {**tiny["audio_config"], **QWEN25_OMNI_7B_AUDIO, **s["audio"]}
    thinker["vision_config"] = {**tiny["vision_config"], **QWEN25_OMNI_7B_VISION, **s["vision"]}
    # a tiny talker, as in sagelm.tiny's full layout (never run by the judge)
    talker = dict(
        vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, embedding_size=thinker["text_config"]["hidden_size"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        tts_text_start_token_id=0, tts_text_end_token_id=0, tts_text_pad_token_id=0, tts_codec_start_token_id=1,
        tts_codec_end_token_id=2, tts_codec_pad_token_id=3, tts_codec_mask_token_id=4, vision_end_token_id=0,
        **{k: tiny[k] for k in ("audio_token_index", "audio_start_token_id", "audio_end_token_id",
                                "image_token_index", "video_token_index", "vision_start_token_id")},
    )  # fmt: skip
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, enable_audio_output=False)
    config.architectures = ["Qwen2_5OmniModel"]
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    tok.save_pretrained(folder)
    build_feature_extractor().save_pretrained(folder)
    return folder


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """bench_judge's synthetic voice (a gliding, amplitude-modulated tone with a little noise)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_judge import speech_like as voice

    return voice(seconds, seed)


def requests(n: int, seconds: float) -> list:
    from sagelm.audio import Clip
    from sagelm.backends import Request

    a, b = Clip("a", speech_like(seconds, 0), seconds), Clip("b", speech_like(seconds, 1), seconds)
    return [Request("helpfulness", f"Question {i}: which answer is better?", a, b, seed=i) for i in range(n)]


def gpu_peak_bytes(reset: bool = False) -> int:
    import torch

    if not torch.cuda.is_available():
        return 0
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return 0
    free, total = torch.cuda.mem_get_info()
    return max(torch.cuda.max_memory_allocated(), total - free)


def run_hf(folder: Path, smoke: bool) -> list[dict]:
    import torch
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from sagelm.backends.hf import HFBackend
    from sagelm.decoding import DecodingOptions
    from sagelm.model import JudgeModel, load_processor

    s = sizes(smoke)
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    config = Qwen2_5OmniThinkerConfig(**json.loads((folder / "config.json").read_text())["thinker_config"])
    torch.set_default_dtype(dtype)
    with torch.device(device):
        thinker = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    torch.set_default_dtype(torch.float32)
    tok, fe = load_processor(folder)
    engine = HFBackend(JudgeModel("random-7b", thinker, tok, fe))
    options = DecodingOptions(max_new_tokens=s["out_tokens"])
    out = []
    for batch, n in s["hf"]:
        reqs = requests(n, s["seconds"])
        engine.judge(reqs[:batch], options)  # warm-up
        gpu_peak_bytes(reset=True)
        t = time.perf_counter()
        raws = [r for i in range(0, n, batch) for r in engine.judge(reqs[i : i + batch], options)]
        seconds = time.perf_counter() - t
        out.append({"config": f"hf, batch {batch}", "judgments": n, "seconds": seconds,
                    "tokens": sum(r.new_tokens for r in raws) / n, "peak_gib": gpu_peak_bytes() / 2**30})  # fmt: skip
    return out


def run_vllm(folder: Path, smoke: bool, authors: bool) -> list[dict]:
    from sagelm.backends.vllm import VLLMBackend
    from sagelm.decoding import PRESET_ENGINE_SETTINGS, DecodingOptions, preset

    s = sizes(smoke)
    settings = PRESET_ENGINE_SETTINGS["authors"] if authors else {}
    options = (preset("authors") if authors else DecodingOptions()).replace(max_new_tokens=s["out_tokens"], seed=42)
    t = time.perf_counter()
    engine = VLLMBackend.load(str(folder), load_format="dummy", max_model_len=8192, options=options, **settings)
    start = time.perf_counter() - t
    n = s["vllm_authors" if authors else "vllm_ours"]
    reqs = requests(n, s["seconds"])
    engine.judge(reqs[:1], options)  # warm-up
    t = time.perf_counter()
    raws = engine.judge(reqs, options)
    seconds = time.perf_counter() - t
    name = "vLLM, --preset authors (max_num_seqs=1)" if authors else "vLLM, ours (scheduler batching)"
    return [{"config": name, "judgments": n, "seconds": seconds, "tokens": sum(r.new_tokens for r in raws) / n,
             "peak_gib": gpu_peak_bytes() / 2**30, "start_s": start}]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU: proves the script runs")
    ap.add_argument("--one", choices=["hf", "vllm-ours", "vllm-authors"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: its memory is ours
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        folder = Path(args.folder)
        if args.one == "hf":
            rows = run_hf(folder, args.smoke)
        else:
            rows = run_vllm(folder, args.smoke, args.one == "vllm-authors")
        print("RESULT " + json.dumps(rows))
        return
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_checkpoint(Path(tmp) / "random-omni", args.smoke)
        for one in ("hf", "vllm-ours", "vllm-authors"):
            smoke = ["--smoke"] if args.smoke else []
            cmd = [sys.executable, __file__, "--one", one, "--folder", str(folder), *smoke]
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{one} failed:\n{p.stderr[-3000:]}")
            rows += json.loads(line.removeprefix("RESULT "))
    s = sizes(args.smoke)
    print(f"{'smoke (CPU, tiny config): figures mean nothing' if args.smoke else 'Qwen2.5-Omni-7B, random weights'}; "
          f"pairs of {s['seconds']:.0f} s clips, {s['out_tokens']} new tokens asked per judgment")  # fmt: skip
    print(f"{'configuration':<42}{'judgments':>10}{'judgments/s':>13}{'tokens/judg.':>14}{'peak GiB':>10}")
    for r in rows:
        print(f"{r['config']:<42}{r['judgments']:>10}{r['judgments'] / r['seconds']:>13.2f}{r['tokens']:>14.1f}"
              f"{r['peak_gib']:>10.1f}")  # fmt: skip
    rate = {r["config"]: r["judgments"] / r["seconds"] for r in rows}
    ours, authors = rows[-2]["config"], rows[-1]["config"]
    print(f"vLLM ours / vLLM authors: {rate[ours] / rate[authors]:.1f}x; whole run {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
