"""The judge's prompt and its chat rendering, byte for byte as SageLM was trained.

Instruction prompt (the user turn), from the released training data:

    Below are two responses ... Evaluate in terms of **{aspect}** and indicate a better response
    using 1, 2 or Tie.\\n### Instruction:\\n{question}\\n\\n
    ### Response 1:\\n<audio>\\n\\n### Response 2:\\n<audio>\\n\\n

Chat rendering: LLaMA-Factory's `qwen2_omni` template with the system prompt "You are a helpful assistant."
(not Qwen's own Omni system prompt). Each `<audio>` placeholder becomes
`<|audio_bos|>` + `<|AUDIO|>` x N + `<|audio_eos|>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sagelm.aspects import get_aspect

AUDIO_PLACEHOLDER = "<audio>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_EOS = "<|audio_eos|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SYSTEM_PROMPT = "You are a helpful assistant."

INSTRUCTION_TEMPLATE = (
    "Below are two responses for a given task. The task is defined by the Instruction. "
    "Evaluate in terms of **{aspect}** and indicate a better response using 1, 2 or Tie.\n"
    "### Instruction:\n{question}\n\n"
    "### Response 1:\n" + AUDIO_PLACEHOLDER + "\n\n"
    "### Response 2:\n" + AUDIO_PLACEHOLDER + "\n\n"
)

CHAT_TEMPLATE = (
    IM_START + "system\n" + SYSTEM_PROMPT + IM_END + "\n"
    + IM_START + "user\n{prompt}" + IM_END + "\n"
    + IM_START + "assistant\n"
)

# The answer the model was trained to write: the verdict alone on the first line, then a rationale.
ANSWER_TEMPLATE = "{verdict}\n{rationale}" + IM_END

# Reading a released row back: the aspect sits between the first `**` pair after "Evaluate in terms of";
# the question between "### Instruction:" (some files add two spaces) and the "### Response 1:" heading.
_INSTRUCTION_RE = re.compile(
    r"\A.*?Evaluate in terms of \*\*(?P<aspect>.*?)\*\* and indicate a better response using 1, 2 or Tie\.\n"
    r"### Instruction: *\n(?P<question>.*)\n\n### Response 1:\n<audio>\n\n### Response 2:\n<audio>\n\n\Z",
    re.DOTALL,
)


def instruction_prompt(aspect: str, question: str) -> str:
    """The user turn for judging `question` in terms of `aspect` (validated against the registry), with its two
    `<audio>` placeholders (as LLaMA-Factory data holds it)."""
    return fill_responses(aspect, question, (AUDIO_PLACEHOLDER, AUDIO_PLACEHOLDER))


def fill_responses(aspect: str, question: str, responses: Sequence[str]) -> str:
    """The user turn with the template's two `<audio>` placeholders replaced by `responses` (audio spans,
    transcripts). The question is user text: an `<audio>` or special token in it is never taken for a response."""
    head, tail = INSTRUCTION_TEMPLATE.split("{question}")
    pieces = tail.split(AUDIO_PLACEHOLDER)
    if len(responses) != len(pieces) - 1:
        raise ValueError(f"the judge compares {len(pieces) - 1} responses, not {len(responses)}")
    body = pieces[0] + "".join(r + rest for r, rest in zip(responses, pieces[1:], strict=True))
    return head.format(aspect=get_aspect(aspect).name) + question + body


def audio_span(n_tokens: int) -> str:
    return AUDIO_BOS + AUDIO_TOKEN * n_tokens + AUDIO_EOS


def render_chat(prompt: str, audio_tokens: Sequence[int] | None = None) -> str:
    """The full text the model reads for a user turn `prompt` holding `<audio>` placeholders (e.g. a released
    row's instruction). Without `audio_tokens` each placeholder gets one `<|AUDIO|>` (the unexpanded form vLLM
    receives); with them, the i-th placeholder gets audio_tokens[i]."""
    n = prompt.count(AUDIO_PLACEHOLDER)
    counts = [1] * n if audio_tokens is None else list(audio_tokens)
    if len(counts) != n:
        raise ValueError(f"prompt has {n} audio placeholders but {len(counts)} audio token counts were given")
    pieces = prompt.split(AUDIO_PLACEHOLDER)
    expanded = pieces[0] + "".join(audio_span(c) + rest for c, rest in zip(counts, pieces[1:], strict=True))
    return CHAT_TEMPLATE.format(prompt=expanded)


def judge_segments(aspect: str, question: str, audio_tokens: Sequence[int] | None = None) -> tuple[str, str, str]:
    """The text the model reads, as (before the question, the question, after it): the question is encoded as
    plain text even where it spells a special token (encoding.prompt_ids)."""
    spans = [audio_span(n) for n in (audio_tokens if audio_tokens is not None else (1, 1))]
    user = fill_responses(aspect, "\0", spans)
    chat_head, chat_tail = CHAT_TEMPLATE.split("{prompt}")
    before, after = user.split("\0")
    return chat_head + before, question, after + chat_tail


def judge_text(aspect: str, question: str, audio_tokens: Sequence[int] | None = None) -> str:
    """The full text the model reads for `question` (`sagelm prompt` prints it)."""
    return "".join(judge_segments(aspect, question, audio_tokens))


# What another tool (LLaMA-Factory, a chat template) would read as markup in a question: its audio placeholder or a
# Qwen special token.
_MARKUP_RE = re.compile(r"<audio>|<\|[A-Za-z0-9_]+\|>")


def markup_in(question: str) -> str | None:
    """The first `<audio>` or `<|...|>` special token spelled in `question`, or None."""
    m = _MARKUP_RE.search(question)
    return m.group(0) if m else None


def parse_instruction(instruction: str) -> tuple[str, str]:
    """(aspect, question) of a released instruction prompt; ValueError when it is not one."""
    m = _INSTRUCTION_RE.match(instruction)
    if m is None:
        raise ValueError("not a SageLM instruction prompt (expected '... Evaluate in terms of **ASPECT** ...')")
    return m.group("aspect"), m.group("question")


_ASPECT_RE = re.compile(r"Evaluate in terms of \*\*(.*?)\*\* and indicate a better response using 1, 2 or Tie\.")
_ASPECT_PREFIX = "Evaluate in terms of **"
_ASPECT_SUFFIX = "** and indicate a better response using 1, 2 or Tie."


def find_aspect(text: str) -> str | None:
    """The aspect named in a judge prompt (plain or chat-rendered), or None; robust to `**` in the question.

    Plain string search first (scoring calls this once per row of large files); the regex decides the rare
    cases where the first prefix/suffix pair is not the answer (a newline between them).
    """
    i = text.find(_ASPECT_PREFIX)
    if i >= 0:
        start = i + len(_ASPECT_PREFIX)
        j = text.find(_ASPECT_SUFFIX, start)
        if j >= 0 and "\n" not in text[start:j]:
            return text[start:j]
    m = _ASPECT_RE.search(text)
    return m.group(1) if m else None
