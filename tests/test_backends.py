"""Engines resolved by name: a missing library is one line naming the pip extra (runs with or without vLLM)."""

import sys

import pytest

from sagelm.backends import BackendUnavailableError, load_backend


def test_missing_vllm_names_the_extra_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without vLLM: `import vllm` fails
    with pytest.raises(BackendUnavailableError) as e:
        load_backend("vllm", str(tmp_path), device=None, max_num_seqs=None)
    message = str(e.value)
    assert "\n" not in message and "pip install 'sagelm[vllm]'" in message


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(BackendUnavailableError, match="unknown backend 'nope'; known backends: .*vllm"):
        load_backend("nope", "x")
