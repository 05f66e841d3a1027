"""Tiny random Qwen2.5-Omni judges, built in about a second, for tests, benchmarks and laptop examples.

They are real `Qwen2_5OmniThinkerForConditionalGeneration` checkpoints, saved in either layout SageLM
meets (thinker-only, as training saves it; full Omni with talker and token2wav, as the authors released
it) with a byte-level BPE tokenizer holding Qwen's special tokens and a Whisper feature extractor with the
real checkpoint's settings (128 mel bins, 300 s window). They load through the same code as the real weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sagelm.aspects import ASPECTS
from sagelm.prompts import (
    AUDIO_BOS,
    AUDIO_EOS,
    AUDIO_TOKEN,
    IM_END,
    IM_START,
    INSTRUCTION_TEMPLATE,
    SYSTEM_PROMPT,
)

Layout = Literal["thinker", "full"]

# Qwen's special tokens the judge needs, plus the vision ones the thinker config names.
SPECIAL_TOKENS = (
    "<|endoftext|>", IM_START, IM_END, AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS,
    "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>",
)  # fmt: skip

# The special tokens the released tokenizer_config.json names: Qwen2_5OmniProcessor (which vLLM builds) reads them.
NAMED_TOKENS = {
    "audio_token": AUDIO_TOKEN, "audio_bos_token": AUDIO_BOS, "audio_eos_token": AUDIO_EOS,
    "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
}  # fmt: skip
# The image-processor half of the released preprocessor_config.json (Qwen2VLImageProcessor): the judge hears audio
# only, but vLLM builds the whole Qwen2_5OmniProcessor from that file.
IMAGE_PROCESSOR_SETTINGS = dict(
    image_processor_type="Qwen2VLImageProcessor", image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711], min_pixels=3136, max_pixels=12845056, patch_size=14,
    temporal_patch_size=2, merge_size=2,
)  # fmt: skip

_CORPUS = [
    SYSTEM_PROMPT,
    *(INSTRUCTION_TEMPLATE.format(aspect=a, question="") for a in ASPECTS),
    "1\nResponse 1 is more helpful. 2\nResponse 2 is better. Tie\nBoth responses are correct and confident.",
    "The Instruction requires using woman's voice. Response 1 uses man's voice, Response 2 uses woman's voice.",
    "Tie Tie Tie the two responses both answers, a female voice, a male voice, tone noise",
]


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 512
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    audio_width: int = 64
    audio_layers: int = 2
    seed: int = 0


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with Qwen's special tokens; digits split one per token as in Qwen2, and "Tie"
    two tokens, "T" + "ie", as in Qwen2.5's vocabulary (so the verdict's first token is "T" here too)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.Split(Regex(r"T(?=ie)"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token="<|endoftext|>", extra_special_tokens=NAMED_TOKENS
    )


def build_feature_extractor():
    from transformers import WhisperFeatureExtractor

    # The released checkpoint's settings: 128 bins and a 300 s window (chunk_length 300, 4.8 M samples).
    return WhisperFeatureExtractor(
        feature_size=128, chunk_length=300, n_samples=4_800_000, nb_max_frames=30_000, **IMAGE_PROCESSOR_SETTINGS
    )


def thinker_config(tokenizer, spec: TinySpec = TinySpec()):
    from transformers import Qwen2_5OmniThinkerConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = spec.hidden_size // spec.heads
    section = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]  # Qwen's 16/24/24 of head_dim 128
    section[0] += head_dim // 2 - sum(section)
    return Qwen2_5OmniThinkerConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.hidden_size * 2,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
            tie_word_embeddings=False,
        ),
        audio_config=dict(
            num_mel_bins=128,
            encoder_layers=spec.audio_layers,
            encoder_attention_heads=4,
            encoder_ffn_dim=spec.audio_width * 2,
            d_model=spec.audio_width,
            output_dim=spec.hidden_size,
            n_window=100,
            max_source_positions=1500,
        ),
        vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=spec.hidden_size,
            fullatt_block_indexes=[0],
        ),
        audio_token_index=ids[AUDIO_TOKEN],
        audio_start_token_id=ids[AUDIO_BOS],
        audio_end_token_id=ids[AUDIO_EOS],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=tokenizer.encode("user", add_special_tokens=False)[0],
    )


def build_thinker(tokenizer, spec: TinySpec = TinySpec()):
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(spec.seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(thinker_config(tokenizer, spec))
    return model.eval()


def _full_model(thinker):
    """A full Qwen2.5-Omni model (tiny talker and token2wav) around `thinker`."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    c = thinker.config.to_dict()
    ids = {k: c[k] for k in ("audio_token_index", "audio_start_token_id", "audio_end_token_id",
                             "image_token_index", "video_token_index", "vision_start_token_id")}  # fmt: skip
    talker = dict(
        vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, embedding_size=thinker.config.text_config.hidden_size,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        tts_text_start_token_id=0, tts_text_end_token_id=0, tts_text_pad_token_id=0,
        tts_codec_start_token_id=1, tts_codec_end_token_id=2, tts_codec_pad_token_id=3,
        tts_codec_mask_token_id=4, vision_end_token_id=0, **ids,
    )  # fmt: skip
    token2wav = {
        "dit_config": dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ff_mult=1, emb_dim=32, head_dim=16,
            enc_channels=[32, 32, 32, 32, 32], enc_attention_channels=16, enc_emb_dim=32, repeats=1,
            mel_dim=80, enc_dim=32,
        ),
        "bigvgan_config": dict(
            upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
            upsample_rates=[2], upsample_kernel_sizes=[4], mel_dim=80,
        ),
    }  # fmt: skip
    full = Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=c, talker_config=talker, token2wav_config=token2wav)
    )
    full.thinker.load_state_dict(thinker.state_dict())
    return full


def save_judge(folder: str | Path, thinker, tokenizer, feature_extractor, layout: Layout = "thinker") -> Path:
    """Save a judge checkpoint that `sagelm judge --model FOLDER` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = thinker if layout == "thinker" else _full_model(thinker)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    return folder


def build_tiny_judge(folder: str | Path, layout: Layout = "thinker", spec: TinySpec = TinySpec()) -> Path:
    """Build and save a tiny random judge in `folder`."""
    tokenizer = build_tokenizer(spec.vocab_size)
    thinker = build_thinker(tokenizer, spec)
    return save_judge(folder, thinker, tokenizer, build_feature_extractor(), layout)
