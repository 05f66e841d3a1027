import time

import numpy as np
import pytest
import torch

from sagelm.model import ModelFormatError, ModelUnavailableError, load_judge_model


def test_both_checkpoint_layouts_load_the_same_thinker(tiny_dir, tiny_full_dir):
    import json

    assert json.loads((tiny_full_dir / "config.json").read_text())["model_type"] == "qwen2_5_omni"
    assert json.loads((tiny_dir / "config.json").read_text())["model_type"] == "qwen2_5_omni_thinker"
    a, b = load_judge_model(str(tiny_dir)), load_judge_model(str(tiny_full_dir))
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    assert isinstance(b.thinker, Qwen2_5OmniThinkerForConditionalGeneration)
    sa, sb = a.thinker.state_dict(), b.thinker.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.thinker.dtype == torch.float32 and a.device.type == "cpu"
    assert a.tokenizer.padding_side == "left"
    assert len(set(a.verdict_token_ids.values())) == 3


def test_the_judge_loads_without_the_vision_tower_and_the_same_weights(tiny_dir, tiny_full_dir):
    # issue 9 item 20: the judge only hears; the 7B's vision tower (~670M parameters) is neither read nor held.
    # Training keeps it (vision=True), so that the thinker it saves is whole and merges into a full checkpoint.
    for folder in (tiny_dir, tiny_full_dir):
        heard, whole = load_judge_model(str(folder)), load_judge_model(str(folder), vision=True)
        sh, sw = heard.thinker.state_dict(), whole.thinker.state_dict()
        vision = {k for k in sw if "visual." in k}
        assert vision and not any("visual." in k for k in sh) and set(sh) == set(sw) - vision
        assert all(torch.equal(sh[k], sw[k]) for k in sh)  # every other weight read from the checkpoint as before
        n = sum(p.numel() for p in heard.thinker.parameters())
        assert n == sum(p.numel() for p in whole.thinker.parameters()) - sum(sw[k].numel() for k in vision)


def test_device_auto_loads_on_a_machine_without_a_gpu(tiny_dir):
    m = load_judge_model(str(tiny_dir), device="auto")
    assert m.device.type == "cpu" and m.thinker.dtype == torch.float32


def test_offline_hub_id_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: unreachable at once
    t = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as e:
        load_judge_model("LGB666/SageLM")
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert "LGB666/SageLM" in msg and "--model" in msg and "\n" not in msg


def test_missing_folder_and_non_checkpoint_folder(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no such folder"):
        load_judge_model(str(tmp_path / "nope"))
    with pytest.raises(ModelFormatError, match="no config.json"):
        load_judge_model(str(tmp_path))


def test_merge_puts_the_trained_thinker_into_the_full_checkpoint(tmp_path, tone_judge_dir, tiny_full_dir):
    from safetensors.numpy import load_file

    from sagelm.model import merge_into_full

    out = merge_into_full(tone_judge_dir, str(tiny_full_dir), tmp_path / "merged")
    merged = {k: v for f in out.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    trained = load_file(str(tone_judge_dir / "model.safetensors"))
    base = {k: v for f in tiny_full_dir.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    assert {k for k in merged if k.startswith("thinker.")} == {f"thinker.{k}" for k in trained}
    assert all(np.array_equal(merged[f"thinker.{k}"], v) for k, v in trained.items())
    others = [k for k in base if not k.startswith("thinker.")]
    assert others and all(np.array_equal(merged[k], base[k]) for k in others)  # talker, token2wav untouched
    judge = load_judge_model(str(out))  # and it loads as a judge, with the trained weights
    assert np.array_equal(judge.thinker.lm_head.weight.detach().numpy(), trained["lm_head.weight"])


def test_merge_refuses_what_does_not_fit(tmp_path, tone_judge_dir, tiny_dir):
    from sagelm.model import ModelFormatError, merge_into_full
    from sagelm.tiny import TinySpec, build_tiny_judge

    with pytest.raises(ModelFormatError, match="not a full Qwen2.5-Omni checkpoint"):
        merge_into_full(tone_judge_dir, str(tiny_dir), tmp_path / "x")
    wide = build_tiny_judge(tmp_path / "wide", "full", TinySpec(hidden_size=128))
    with pytest.raises(ModelFormatError, match="does not fit the thinker"):
        merge_into_full(tone_judge_dir, str(wide), tmp_path / "y")
