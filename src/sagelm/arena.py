"""The arena: rank speech systems by judging their spoken answers to the same questions against each other.

    questions (Q.jsonl)  +  DIR/<system>/<question id>.<wav|flac|mp3|ogg>
      -> validation (per system: what is missing or unreadable; those pairs are not judged)
      -> a streaming plan (question by question: each pair of systems, each aspect, both orders)
      -> the same Judge as `sagelm judge` (batches, resume keys, error records) into RUN_DIR/judgments.jsonl
      -> ratings (sagelm.ratings) -> RUN_DIR/leaderboard.json, leaderboard.md, report.html (sagelm.leaderboard)

RUN_DIR/arena.json keeps what the ratings need besides the judgments (systems, questions, answers and their
durations, the settings), so `run` on an existing RUN_DIR resumes it and `rerate` recomputes without judging.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from sagelm.aspects import SEMANTIC_ASPECTS, UnknownAspectError, get_aspect
from sagelm.data import Pair
from sagelm.decoding import DecodingOptions
from sagelm.errors import SagelmError
from sagelm.paths import UnusableFile, open_regular

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
JUDGMENTS = "judgments.jsonl"
SETTINGS = "arena.json"


class ArenaError(SagelmError, ValueError):
    """A questions file, systems folder or run folder the arena cannot work with (the message names it)."""


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    aspect: str | None = None


@dataclass
class ArenaConfig:
    """What an arena run is asked to do (the CLI flags)."""

    output: Path
    questions: Path | None = None
    systems: Path | None = None
    baseline: str | None = None
    pairs: str = "all"  # "all" or "baseline"
    aspects: list[str] | None = None
    model: str = ""
    backend: str = "hf"
    both_orders: bool = True
    batch_size: int = 1
    options: DecodingOptions = field(default_factory=DecodingOptions)
    n_boot: int = 1000
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # the engine's own (device, max_num_seqs, ...)


# -- input -----------------------------------------------------------------------------------------------------
def read_questions(path: Path) -> list[Question]:
    """Q.jsonl rows `{"id", "question", "aspect"?}`; a bad row is an ArenaError naming the file and line."""
    if not path.is_file():
        raise ArenaError(f"{path}: no such questions file")
    out: list[Question] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ArenaError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("question"), str):
                raise ArenaError(f'{where}: a question row needs "id" and "question" (text)')
            qid = str(row["id"])
            if qid in seen:
                raise ArenaError(f"{where}: question id {qid!r} appears twice")
            if "/" in qid or "\\" in qid or qid in ("", ".", ".."):
                raise ArenaError(f"{where}: question id {qid!r} cannot name an answer file")
            aspect = row.get("aspect")
            if aspect is not None:
                try:
                    aspect = get_aspect(str(aspect)).name
                except UnknownAspectError as e:
                    raise ArenaError(f"{where}: {e}") from None
            seen.add(qid)
            out.append(Question(qid, row["question"], aspect))
    if not out:
        raise ArenaError(f"{path}: holds no questions")
    return out


@dataclass
class Answer:
    path: str
    duration: float | None = None
    problem: str | None = None  # why it cannot be judged (missing, unreadable, empty)


def find_answers(systems_dir: Path, questions: Sequence[Question]) -> dict[str, dict[str, Answer]]:
    """Each system's answer to each question, checked: a file per question (the first by AUDIO_EXTENSIONS
    order if several), readable as audio (its header), with samples. Durations come from the header."""
    import soundfile as sf

    if not systems_dir.is_dir():
        raise ArenaError(f"{systems_dir}: no such systems folder")
    names = sorted(p.name for p in systems_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise ArenaError(f"{systems_dir}: needs a folder per system, at least two (found {len(names)})")
    answers: dict[str, dict[str, Answer]] = {}
    for name in names:
        files: dict[str, list[str]] = {}
        with os.scandir(systems_dir / name) as it:
            for entry in it:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in AUDIO_EXTENSIONS:
                    files.setdefault(stem, []).append(entry.path)
        mine: dict[str, Answer] = {}
        for q in questions:
            found = sorted(files.get(q.id, []), key=lambda p: AUDIO_EXTENSIONS.index(os.path.splitext(p)[1].lower()))
            if not found:
                mine[q.id] = Answer(str(systems_dir / name / q.id), problem="missing")
                continue
            if len(found) > 1:
                logger.warning("%s: %d answers to question %s; using %s", name, len(found), q.id, found[0])
            mine[q.id] = _check_answer(found[0], sf)
        answers[name] = mine
    return answers


def _check_answer(path: str, sf: Any) -> Answer:
    try:
        with open_regular(path, "an audio file") as f:  # a FIFO or device is refused, never waited on
            if os.fstat(f.fileno()).st_size == 0:
                return Answer(path, problem="empty file")
            info = sf.info(f)
    except UnusableFile as e:
        return Answer(path, problem=str(e))
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        return Answer(path, problem=f"not readable as audio ({detail})")
    if info.frames <= 0:
        return Answer(path, problem="holds no samples")
    return Answer(path, duration=info.frames / info.samplerate)


def validation_report(answers: dict[str, dict[str, Answer]]) -> dict[str, dict[str, Any]]:
    """Per system: how many answers are usable, and each problem (question id -> what is wrong)."""
    report = {}
    for name, mine in answers.items():
        problems = {qid: a.problem for qid, a in mine.items() if a.problem}
        report[name] = {"answers": len(mine) - len(problems), "questions": len(mine), "problems": problems}
    return report


def log_validation(report: dict[str, dict[str, Any]]) -> None:
    for name, r in report.items():
        problems: dict[str, str] = r["problems"]
        if not problems:
            continue
        missing = [q for q, p in problems.items() if p == "missing"]
        other = [f"{q}: {p}" for q, p in problems.items() if p != "missing"]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''})")
        if other:
            parts.append(f"{len(other)} unreadable ({'; '.join(other[:5])}{'; ...' if len(other) > 5 else ''})")
        logger.warning("system %s: %s of %d answers usable; %s; those pairs are not judged",
                       name, r["answers"], r["questions"], ", ".join(parts))  # fmt: skip


# -- the plan --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Meta:
    question_id: str
    system_1: str
    system_2: str


class ArenaPlan:
    """The judgments of an arena, streamed question by question (nothing per judgment is held).

    Each pair of systems (or each system with the baseline) on each question where both have a usable answer;
    each aspect asked (default: the question's own, else the four semantic ones); both orders unless told.
    In one order only, which system is presented first alternates, so that position bias does not favour one."""

    def __init__(self, questions: Sequence[Question], systems: Sequence[str], answers: dict[str, dict[str, Answer]],
                 pairs: str = "all", baseline: str | None = None, aspects: Sequence[str] | None = None,
                 both_orders: bool = True):  # fmt: skip
        self.questions, self.systems, self.answers = list(questions), list(systems), answers
        self.aspects = [get_aspect(a).name for a in aspects] if aspects else None
        self.both_orders = both_orders
        if pairs == "baseline":
            if baseline is None:
                raise ArenaError("--pairs baseline needs --baseline NAME")
            self.system_pairs = [(s, baseline) for s in self.systems if s != baseline]
        elif pairs == "all":
            self.system_pairs = list(combinations(self.systems, 2))
        else:
            raise ArenaError(f"--pairs is 'all' or 'baseline', not {pairs!r}")

    def _aspects(self, q: Question) -> list[str]:
        return self.aspects or ([q.aspect] if q.aspect else list(SEMANTIC_ASPECTS))

    def _pairs(self) -> Iterator[tuple[Question, str, str, list[str]]]:
        for qi, q in enumerate(self.questions):
            aspects = self._aspects(q)
            for pi, (s1, s2) in enumerate(self.system_pairs):
                a1, a2 = self.answers[s1][q.id], self.answers[s2][q.id]
                if a1.problem or a2.problem:
                    continue
                if not self.both_orders and (qi + pi) % 2:
                    s1, s2 = s2, s1
                yield q, s1, s2, aspects

    def __len__(self) -> int:
        return sum(len(aspects) for *_, aspects in self._pairs()) * (2 if self.both_orders else 1)

    def __iter__(self) -> Iterator[tuple[Any, Meta]]:
        from sagelm.judge import Task

        for q, s1, s2, aspects in self._pairs():
            pair = Pair(id=f"{q.id}:{s1}:{s2}", question=q.question, audio_1=self.answers[s1][q.id].path,
                        audio_2=self.answers[s2][q.id].path, aspect=q.aspect)  # fmt: skip
            meta = Meta(q.id, s1, s2)
            for aspect in aspects:
                yield Task(pair, aspect, False), meta
                if self.both_orders:
                    yield Task(pair, aspect, True), meta


# -- running ---------------------------------------------------------------------------------------------------
def _progress_none() -> Any:
    from contextlib import nullcontext

    class _Null:
        def add_task(self, *a: Any, **k: Any) -> int:
            return 0

        def advance(self, *a: Any, **k: Any) -> None:
            pass

    return nullcontext(_Null())


def run(config: ArenaConfig, progress: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Validate, plan, judge what is not judged yet, then rate and write the leaderboard and report.
    Without questions and systems, recompute an existing RUN_DIR from its judgments (no judging).
    Returns leaderboard.json's content."""
    out = Path(config.output)
    if config.questions is None and config.systems is None:
        return rerate(out, n_boot=config.n_boot, seed=config.seed)
    if config.questions is None or config.systems is None:
        raise ArenaError("give both --questions and --systems (or neither, to recompute an existing RUN_DIR)")
    questions = read_questions(Path(config.questions))
    answers = find_answers(Path(config.systems), questions)
    systems = list(answers)
    if config.baseline is not None and config.baseline not in answers:
        raise ArenaError(f"{config.systems}: no system folder named {config.baseline!r} (the baseline); "
                         f"systems: {', '.join(systems)}")  # fmt: skip
    report = validation_report(answers)
    log_validation(report)
    plan = ArenaPlan(questions, systems, answers, config.pairs, config.baseline, config.aspects, config.both_orders)
    out.mkdir(parents=True, exist_ok=True)
    _write_settings(out, config, questions, answers, report)
    judge_plan(plan, out / JUDGMENTS, config, progress or _progress_none)
    return rerate(out, n_boot=config.n_boot, seed=config.seed)


def judge_plan(plan: ArenaPlan, path: Path, config: ArenaConfig, progress: Callable[[], Any]) -> int:
    """Judge the tasks of `plan` not yet in `path` (resume keys as `sagelm judge`); returns how many were judged."""
    from sagelm.judge import Judge, TaskKeys
    from sagelm.records import JudgmentLog

    keys = TaskKeys(config.model, config.options, config.backend)
    log = JudgmentLog(path)
    # Pass 1: what is left to do, one bit per planned judgment (the keys need the audio only, not the model).
    total = len(plan)
    todo = np.zeros(total, dtype=bool)
    for i, (task, _) in enumerate(plan):
        todo[i] = log.to_do(keys(task))
    left = int(todo.sum())
    if total - left:
        logger.info("%s: %d of %d judgments already done, %d to go", path, total - left, total, left)
    if not left:
        log.close()
        return 0
    judge = Judge.from_pretrained(config.model, config.options, keys=keys, backend=config.backend, **config.settings)
    metas: deque[Meta] = deque()

    def tasks() -> Iterator[Any]:  # pass 2: stream the tasks left, their systems queued beside them
        for i, (task, meta) in enumerate(plan):
            if todo[i]:
                metas.append(meta)
                yield task

    errors = 0
    with log, progress() as bar_owner:
        bar = bar_owner.add_task("arena: judging", total=left)
        for batch in judge.judge(tasks(), config.batch_size):
            records = []
            for r in batch:
                m = metas.popleft()
                records.append(r.model_copy(update={"question_id": m.question_id, "system_1": m.system_1,
                                                    "system_2": m.system_2}))  # fmt: skip
            log.write(records)
            errors += sum(r.error is not None for r in records)
            bar_owner.advance(bar, len(records))
    judge.close()
    logger.info("%s: judged %d (%d with errors)", path, left, errors)
    return left


def _write_settings(out: Path, config: ArenaConfig, questions: Sequence[Question],
                    answers: dict[str, dict[str, Answer]], report: dict[str, Any]) -> None:  # fmt: skip
    settings = {
        "questions_file": str(config.questions), "systems_dir": str(config.systems), "baseline": config.baseline,
        "pairs": config.pairs, "aspects": config.aspects, "model": config.model, "backend": config.backend,
        "both_orders": config.both_orders, "decoding": config.options.as_dict(),
        "questions": [asdict(q) for q in questions],
        "answers": {s: {q: [a.path, a.duration] for q, a in mine.items() if not a.problem}
                    for s, mine in answers.items()},
        "validation": report,
    }  # fmt: skip
    tmp = out / (SETTINGS + ".tmp")
    tmp.write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out / SETTINGS)


# -- rating a run folder ---------------------------------------------------------------------------------------
@dataclass
class RunData:
    """A run folder read back: the settings, the judgments as columns, and a few records kept for the report."""

    settings: dict[str, Any]
    systems: list[str]
    questions: list[Question]
    aspects: list[str]
    columns: dict[str, np.ndarray]
    durations: np.ndarray  # [question, system] seconds, NaN where no answer
    records: dict[tuple[int, int, int, int], dict[str, Any]]  # (question, aspect, a, b) -> per order, for the report


REPORT_QUESTIONS = 100  # questions whose verdicts and rationales the report lists


def read_run(out: Path, report_questions: int = REPORT_QUESTIONS) -> RunData:
    """RUN_DIR/arena.json and judgments.jsonl as columns. Records of systems, questions or aspects the run no
    longer plans (an earlier run into the same folder with other settings) are left out."""
    sfile = out / SETTINGS
    if not sfile.is_file():
        raise ArenaError(f"{out}: not an arena run folder (no {SETTINGS}); give --questions and --systems")
    settings = json.loads(sfile.read_text(encoding="utf-8"))
    questions = [Question(**q) for q in settings["questions"]]
    systems = list(settings["answers"])
    sys_index = {s: i for i, s in enumerate(systems)}
    q_index = {q.id: i for i, q in enumerate(questions)}
    durations = np.full((len(questions), len(systems)), np.nan)
    for s, mine in settings["answers"].items():
        for qid, (_, dur) in mine.items():
            if qid in q_index and dur is not None:
                durations[q_index[qid], sys_index[s]] = dur
    wanted = {get_aspect(a).name for a in settings["aspects"]} if settings.get("aspects") else None
    baseline = settings.get("baseline") if settings.get("pairs") == "baseline" else None
    aspects: dict[str, int] = {}
    cols: dict[str, list[int]] = {k: [] for k in ("question", "aspect", "a", "b", "swapped", "verdict", "error")}
    from sagelm.ratings import INVALID, VERDICT_CODES

    records: dict[tuple[int, int, int, int], dict[str, Any]] = {}
    path = out / JUDGMENTS
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                    qi, a, b = q_index[r["question_id"]], sys_index[r["system_1"]], sys_index[r["system_2"]]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn line, or a record of a system or question this run does not plan
                aspect = r.get("aspect")
                if aspect is None or (wanted is not None and aspect not in wanted):
                    continue
                if baseline is not None and baseline not in (r["system_1"], r["system_2"]):
                    continue
                ai = aspects.setdefault(aspect, len(aspects))
                swapped = bool(r.get("swapped"))
                cols["question"].append(qi)
                cols["aspect"].append(ai)
                cols["a"].append(a)
                cols["b"].append(b)
                cols["swapped"].append(swapped)
                cols["verdict"].append(VERDICT_CODES.get(r.get("verdict"), INVALID))
                cols["error"].append(r.get("error") is not None)
                if qi < report_questions:
                    records.setdefault((qi, ai, a, b), {})[swapped] = {
                        k: r.get(k) for k in ("verdict", "rationale", "error", "audio_1", "audio_2")
                    }
    columns = {k: np.asarray(v, dtype=np.int64 if k not in ("swapped", "error") else bool) for k, v in cols.items()}
    return RunData(settings, systems, questions, list(aspects), columns, durations, records)


def rerate(out: Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Ratings and the three output files of a run folder, from the judgments it holds (no judging)."""
    from sagelm import leaderboard

    data = read_run(out)
    result = leaderboard.build(data, n_boot=n_boot, seed=seed)
    leaderboard.write_all(out, data, result)
    return result
