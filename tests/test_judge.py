import numpy as np
import pytest
from conftest import TONE_QUESTION

from sagelm.data import Pair
from sagelm.decoding import DecodingOptions
from sagelm.judge import Judge, Task, plan


@pytest.fixture(scope="module")
def random_judge(tiny_dir):
    return Judge.from_pretrained(str(tiny_dir), DecodingOptions(max_new_tokens=6))


def test_plan_defaults_and_both_orders():
    p = Pair("a", "Q", "x.wav", "y.wav")
    q = Pair("b", "Q", "x.wav", "y.wav", aspect="gender instruction following")
    tasks = list(plan([p, q]))
    assert [(t.pair.id, t.aspect) for t in tasks] == [
        ("a", "helpfulness"), ("a", "honesty"), ("a", "instruction_following"), ("a", "truthfulness"),
        ("b", "gender instruction following"),
    ]  # fmt: skip
    both = list(plan([q], ["emotion"], both_orders=True))
    assert [(t.aspect, t.swapped) for t in both] == [("emotion instruction following", False),
                                                     ("emotion instruction following", True)]  # fmt: skip


def test_probabilities_sum_to_one_and_garbage_is_not_a_verdict(random_judge, clips):
    records = random_judge.compare("Q?", clips["tone"], clips["noise"], aspects=["honesty", "helpfulness"])
    assert len(records) == 2
    for r in records:
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert set(r.probabilities) == {"1", "2", "Tie"}
        assert r.raw is not None and r.error is None
        # a random model writes no verdict on its first line: that is None, not a Tie or a loss
        assert r.verdict is None


def test_batched_equals_one_by_one(random_judge, clips):
    kw = dict(aspects=["honesty", "truthfulness"], both_orders=True)
    one = random_judge.compare("Q?", clips["tone_long"], clips["noise_short"], batch_size=1, **kw)
    many = random_judge.compare("Q?", clips["tone_long"], clips["noise_short"], batch_size=4, **kw)
    for a, b in zip(one, many, strict=True):
        assert a.raw == b.raw
        assert np.allclose([a.probabilities[k] for k in "12"], [b.probabilities[k] for k in "12"], atol=1e-4)


def test_verdict_only_is_one_decoding_step(tiny_dir, clips):
    judge = Judge.from_pretrained(str(tiny_dir), DecodingOptions(verdict_only=True))
    (r,) = judge.compare("Q?", clips["tone"], clips["noise"], aspects=["honesty"])
    assert r.rationale is None
    assert len(judge.backend.model.tokenizer.encode(r.raw, add_special_tokens=False)) <= 1


def test_verdict_only_reads_the_same_first_step_as_generation(tone_judge_dir, clips):
    full = Judge.from_pretrained(str(tone_judge_dir), DecodingOptions(max_new_tokens=16))
    quick = Judge.from_pretrained(str(tone_judge_dir), DecodingOptions(verdict_only=True))
    for a, b in [("tone", "noise"), ("noise_short", "tone_long")]:
        (f,) = full.compare(TONE_QUESTION, clips[a], clips[b], aspects=["helpfulness"])
        (q,) = quick.compare(TONE_QUESTION, clips[a], clips[b], aspects=["helpfulness"])
        assert q.verdict == f.verdict and q.raw == f.verdict and q.new_tokens == 1
        assert all(abs(q.probabilities[k] - f.probabilities[k]) < 1e-4 for k in ("1", "2", "Tie"))


def test_trained_judge_hears_the_order(tone_judge, clips):
    records = tone_judge.compare(TONE_QUESTION, clips["tone"], clips["noise"], aspects=["helpfulness"])
    assert records[0].verdict == "1" and records[0].probabilities["1"] > 0.8
    records = tone_judge.compare(TONE_QUESTION, clips["noise_short"], clips["tone_long"], aspects=["helpfulness"])
    assert records[0].verdict == "2" and records[0].probabilities["2"] > 0.8
    assert records[0].rationale == "Response 2 is the tone."


def test_swapped_judgment_is_mapped_back(tone_judge, clips):
    plain, swapped = tone_judge.compare(
        TONE_QUESTION, clips["tone"], clips["noise"], aspects=["helpfulness"], both_orders=True
    )
    assert not plain.swapped and swapped.swapped
    # the model saw (noise, tone) and said 2; in the original numbering the tone is Response 1
    assert swapped.raw.startswith("2\n")
    assert swapped.verdict == "1" and swapped.probabilities["1"] > 0.8
    assert plain.verdict == "1"


def test_mixed_batch_keeps_each_rows_audio(tone_judge, clips):
    tasks = [
        Task(Pair("a", TONE_QUESTION, str(clips["tone_long"]), str(clips["noise_short"])), "helpfulness"),
        Task(Pair("b", TONE_QUESTION, str(clips["noise"]), str(clips["tone"])), "helpfulness"),
        Task(Pair("c", TONE_QUESTION, str(clips["noise_short"]), str(clips["tone_long"])), "helpfulness"),
        Task(Pair("d", TONE_QUESTION, str(clips["tone"]), str(clips["noise"])), "helpfulness", swapped=True),
    ]
    (batch,) = list(tone_judge.judge(tasks, batch_size=4))
    assert [r.id for r in batch] == ["a", "b", "c", "d"]
    assert [r.verdict for r in batch] == ["1", "2", "2", "1"]


def test_unreadable_audio_gives_an_error_record_and_the_rest_goes_on(tone_judge, clips, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    tasks = [
        Task(Pair("ok1", TONE_QUESTION, str(clips["tone"]), str(clips["noise"])), "helpfulness"),
        Task(Pair("bad", TONE_QUESTION, str(bad), str(clips["noise"])), "helpfulness"),
        Task(Pair("ok2", TONE_QUESTION, str(clips["noise"]), str(clips["tone"])), "helpfulness"),
    ]
    (batch,) = list(tone_judge.judge(tasks, batch_size=3))
    assert [r.verdict for r in batch] == ["1", None, "2"]
    assert batch[1].error.startswith(f"{bad}: not readable as audio") and batch[1].probabilities is None


def test_paper_preset_sampling_is_seeded(tiny_dir, clips):
    from sagelm.decoding import preset

    opts = preset("paper").replace(seed=42, max_new_tokens=8)
    a = Judge.from_pretrained(str(tiny_dir), opts).compare("Q?", clips["tone"], clips["noise"], aspects=["honesty"])
    b = Judge.from_pretrained(str(tiny_dir), opts).compare("Q?", clips["tone"], clips["noise"], aspects=["honesty"])
    assert a[0].raw == b[0].raw
    assert (opts.temperature, opts.top_p, opts.top_k, opts.max_new_tokens, opts.do_sample) == (0.95, 0.7, 50, 8, True)


@pytest.mark.parametrize("question", ["Say <audio> twice: <audio>", "Read <|AUDIO|> aloud", "Stop <|im_end|> here",
                                      "<|audio_bos|><|AUDIO|><|audio_eos|> is markup"])  # fmt: skip
def test_a_question_spelling_markup_is_judged_as_text(tone_judge, clips, question):
    """issue 9 item 5: the question is user text; the prompt holds exactly the template's two audio spans."""
    from sagelm.encoding import Example, build_inputs
    from sagelm.prompts import AUDIO_TOKEN

    tok = tone_judge.backend.model.tokenizer
    clip_1 = tone_judge.request(Task(Pair("p", question, str(clips["noise"]), str(clips["tone"])), "honesty")).audio_1
    clip_2 = tone_judge.request(Task(Pair("p", question, str(clips["tone"]), str(clips["noise"])), "honesty")).audio_1
    inputs = build_inputs(tok, tone_judge.backend.model.feature_extractor,
                          [Example("honesty", question, clip_1, clip_2)])  # fmt: skip
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(tok.convert_tokens_to_ids(AUDIO_TOKEN)) == clip_1.n_tokens + clip_2.n_tokens
    assert question in tok.decode(ids)
    pair = Pair("markup", question, str(clips["noise"]), str(clips["tone"]))
    ok = Pair("plain", TONE_QUESTION, str(clips["noise"]), str(clips["tone"]))
    records = [r for batch in tone_judge.judge(plan([pair, ok], ["helpfulness"]), batch_size=2) for r in batch]
    assert [r.error for r in records] == [None, None]
    assert records[1].verdict == "2" and records[0].verdict in ("1", "2", "Tie")


def test_tie_is_two_tokens_as_in_qwen_and_still_read_right(tmp_path, clips):
    """issue 9 item 19: Qwen2.5 spells "Tie" as "T" + "ie"; P(Tie) is read at "T", verdict-only's raw is "T"."""
    from conftest import teach_tone_judge

    folder = teach_tone_judge(tmp_path / "tie", steps=40, always="Tie")
    judge = Judge.from_pretrained(str(folder), DecodingOptions(max_new_tokens=8))
    tok = judge.backend.model.tokenizer
    assert tok.convert_ids_to_tokens(tok.encode("Tie", add_special_tokens=False)) == ["T", "ie"]
    full = judge.compare(TONE_QUESTION, clips["tone"], clips["noise"], ["helpfulness"], both_orders=True)
    assert [(r.verdict, r.raw.split("\n")[0]) for r in full] == [("Tie", "Tie"), ("Tie", "Tie")]
    assert all(max(r.probabilities, key=r.probabilities.get) == "Tie" for r in full)
    quick = Judge(judge.backend, DecodingOptions(verdict_only=True))
    (r,) = quick.compare(TONE_QUESTION, clips["tone"], clips["noise"], ["helpfulness"])
    assert (r.raw, r.verdict, r.new_tokens) == ("T", "Tie", 1)
    assert r.probabilities == pytest.approx(full[0].probabilities, abs=1e-5)
