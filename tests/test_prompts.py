import json

import pytest

from sagelm.aspects import ACOUSTIC_ASPECTS, ASPECTS, SEMANTIC_ASPECTS, UnknownAspectError, get_aspect
from sagelm.prompts import instruction_prompt, judge_text, parse_instruction, render_chat

EXPECTED_PROMPT = (
    "Below are two responses for a given task. The task is defined by the Instruction. Evaluate in terms of "
    "**honesty** and indicate a better response using 1, 2 or Tie.\n### Instruction:\nWhat is 2+2?\n\n"
    "### Response 1:\n<audio>\n\n### Response 2:\n<audio>\n\n"
)


def test_aspect_registry_has_the_eight_exact_strings():
    assert SEMANTIC_ASPECTS == ("helpfulness", "honesty", "instruction_following", "truthfulness")
    assert ACOUSTIC_ASPECTS == (
        "emotion instruction following",
        "gender instruction following",
        "character instruction following",
        "gender instruction following and emotion instruction following",
    )
    assert {a.group for a in ASPECTS.values() if a.kind == "acoustic"} == {"emotion", "gender", "character", "mixed"}
    assert get_aspect("gender").name == "gender instruction following"
    with pytest.raises(UnknownAspectError, match="'kindness'"):
        get_aspect("kindness")


def test_instruction_prompt_is_byte_exact():
    assert instruction_prompt("honesty", "What is 2+2?") == EXPECTED_PROMPT


def test_chat_rendering_unexpanded_and_expanded():
    head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    tail = "<|im_end|>\n<|im_start|>assistant\n"
    one = "<|audio_bos|><|AUDIO|><|audio_eos|>"
    assert render_chat(EXPECTED_PROMPT) == head + EXPECTED_PROMPT.replace("<audio>", one) + tail
    text = judge_text("honesty", "What is 2+2?", [3, 2])
    first, second = "<|audio_bos|>" + "<|AUDIO|>" * 3 + "<|audio_eos|>", "<|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|>"
    assert text == head + EXPECTED_PROMPT.replace("<audio>", first, 1).replace("<audio>", second, 1) + tail
    # Response 1 gets the first count, Response 2 the second.
    assert text.index(first) < text.index("### Response 2:") < text.index(second)


def test_question_is_inserted_as_is_with_trailing_newlines():
    p = instruction_prompt("helpfulness", "Line one\nline two\n\n")
    assert "### Instruction:\nLine one\nline two\n\n\n\n### Response 1:" in p
    assert parse_instruction(p) == ("helpfulness", "Line one\nline two\n\n")


@pytest.mark.parametrize("name", ["test_semantic.json", "test_acoustic.json"])
def test_released_rows_round_trip(release, name):
    rows = json.loads((release / name).read_text())
    for i, row in enumerate(rows):
        aspect, question = parse_instruction(row["instruction"])
        assert instruction_prompt(aspect, question) == row["instruction"], f"{name} row {i}"


def test_semantic_rows_cycle_through_the_four_aspects(release):
    rows = json.loads((release / "test_semantic.json").read_text())
    assert [parse_instruction(r["instruction"])[0] for r in rows[:8]] == list(SEMANTIC_ASPECTS) * 2


def test_two_space_instruction_heading_is_read(release):
    row = json.loads((release / "test_alpaca_qwen_kimi.json").read_text())[0]
    assert "### Instruction:  \n" in row["instruction"]
    question = "What are different drawers I should have for clothes?"
    assert parse_instruction(row["instruction"]) == ("helpfulness", question)


def test_question_containing_bold_markers_keeps_the_right_aspect():
    p = instruction_prompt("gender instruction following", "Say **hello** loudly. Read this with a male voice.")
    assert parse_instruction(p)[0] == "gender instruction following"


def test_not_a_judge_prompt():
    with pytest.raises(ValueError, match="not a SageLM instruction prompt"):
        parse_instruction("Tell me a joke")


def test_markup_in_the_question_stays_text_and_the_responses_stay_two():
    from sagelm.prompts import AUDIO_BOS, fill_responses, judge_segments, markup_in

    question = "Compare <audio> with <|AUDIO|>"
    text = judge_text("honesty", question, [3, 4])
    assert text.count(AUDIO_BOS) == 2 and question in text  # the question is kept as it was written
    before, q, after = judge_segments("honesty", question, [3, 4])
    assert q == question and before.endswith("### Instruction:\n") and after.count(AUDIO_BOS) == 2
    assert fill_responses("honesty", question, ("A", "B")).endswith("### Response 1:\nA\n\n### Response 2:\nB\n\n")
    assert instruction_prompt("honesty", question).count("<audio>") == 3
    assert markup_in(question) == "<audio>" and markup_in("Read <|im_end|>") == "<|im_end|>"
    assert markup_in("a < b and c | d > e") is None
    with pytest.raises(ValueError):
        fill_responses("honesty", "Q", ("only one",))
