import time

import pytest
import torch

from sagelm.model import ModelFormatError, ModelUnavailableError, load_judge_model


def test_both_checkpoint_layouts_load_the_same_thinker(tiny_dir, tiny_full_dir):
    import json

    assert json.loads((tiny_full_dir / "config.json").read_text())["model_type"] == "qwen2_5_omni"
    assert json.loads((tiny_dir / "config.json").read_text())["model_type"] == "qwen2_5_omni_thinker"
    a, b = load_judge_model(str(tiny_dir)), load_judge_model(str(tiny_full_dir))
    assert type(b.thinker).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    sa, sb = a.thinker.state_dict(), b.thinker.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.thinker.dtype == torch.float32 and a.device.type == "cpu"
    assert a.tokenizer.padding_side == "left"
    assert len(set(a.verdict_token_ids.values())) == 3


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
