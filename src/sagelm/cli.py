"""The `sagelm` command line (interface.md). JSON to stdout; logs, progress and warnings to stderr.

Exit status: 0 success, 1 user error (one line naming the file/row and the problem), 2 usage error.
Commands that need no model import neither torch nor transformers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console

from sagelm.errors import SagelmError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Judge spoken responses with SageLM.")  # fmt: skip
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)
logger = logging.getLogger("sagelm")
_state = {"debug": False}
_PRESET_HELP = "Decoding: greedy, paper (the authors' sampling) or authors (their run, one sequence at a time)."


class UserError(SagelmError):
    """A problem with the user's files, flags or data: reported in one line, exit status 1."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """What the user can fix: every sagelm error (one base class, sagelm.errors) and a file that is not there."""
    return (SagelmError, FileNotFoundError)


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (typer.Exit, typer.Abort, typer.TyperException, click.ClickException):  # usage errors: exit 2
        raise
    except Exception as e:
        if _state["debug"]:
            raise
        if not isinstance(e, _user_errors()):
            stderr.print(f"sagelm: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                         markup=False, highlight=False)  # fmt: skip
            raise typer.Exit(3) from None
        stderr.print(f"sagelm: error: {e}", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _setup_logging(debug: bool) -> None:
    from rich.logging import RichHandler

    quiet = os.environ.get("RANK", "0") != "0"  # in a torchrun / accelerate job only rank 0 reports progress
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_path=False, show_time=False, markup=False)],
    )


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug
    _setup_logging(debug)


# --------------------------------------------------------------------------------------------------------------
@app.command()
def prompt(
    aspect: Annotated[str, typer.Option(help="The aspect to judge, e.g. helpfulness.")],
    instruction: Annotated[str, typer.Option(help="The question the two responses answer.")],
    audio: Annotated[list[Path] | None, typer.Argument(help="AUDIO_1 AUDIO_2: expand to their token counts.")] = None,
) -> None:
    """Print exactly the text the judge model receives (no newline added)."""

    files = audio or []
    if len(files) not in (0, 2):
        raise typer.BadParameter("give two audio files or none", param_hint="AUDIO_1 AUDIO_2")

    def go() -> None:
        from sagelm.audio import load_audio
        from sagelm.prompts import judge_text

        counts = [load_audio(f).n_tokens for f in files] if files else None
        sys.stdout.write(judge_text(aspect, instruction, counts))
        sys.stdout.flush()

    _run(go)


# --------------------------------------------------------------------------------------------------------------
def _decoding(preset: str, seed: int | None, verdict_only: bool, max_new_tokens: int | None):
    from sagelm.decoding import preset as get_preset

    try:
        options = get_preset(preset)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--preset") from None
    changes: dict[str, Any] = {"verdict_only": verdict_only, "seed": seed}
    if max_new_tokens is not None:
        changes["max_new_tokens"] = max_new_tokens
    return options.replace(**changes)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=stderr, transient=False,
    )  # fmt: skip


def _verdict_table(records, title: str, human: Callable[[Any], str] | None = None):
    from rich.table import Table

    table = Table(title=title)
    for col in ["pair", "aspect", "order", *(["human"] if human else []), "judge", "P(1)", "P(2)", "P(Tie)",
                "rationale / error"]:  # fmt: skip
        table.add_column(col, overflow="fold")
    for r in records:
        p = r.probabilities or {}
        table.add_row(
            r.id, r.aspect or "", "2,1" if r.swapped else "1,2", *([human(r)] if human else []),
            r.verdict or ("error" if r.error else "none"),
            *(f"{p[k]:.3f}" if k in p else "" for k in ("1", "2", "Tie")),
            (r.error or r.rationale or r.raw or "")[:160],
        )  # fmt: skip
    return table


# The engine flags of every command that judges (judge, arena, serve).
BackendOpt = Annotated[str, typer.Option(help="Engine: hf (transformers) or vllm.")]
DeviceOpt = Annotated[str | None, typer.Option(
    help="hf: where the model goes (cpu, cuda, cuda:1), or auto to spread it over all GPUs.")]
MaxNumSeqsOpt = Annotated[int | None, typer.Option(min=1, help="vllm: sequences in flight at once.")]
GpuMemoryOpt = Annotated[float | None, typer.Option(min=0.01, max=1.0, help="vllm: fraction of GPU memory to use.")]
TensorParallelOpt = Annotated[int | None, typer.Option(min=1, help="vllm: GPUs per model.")]
# The cascade's flags (speech recognition, then a text judge over an OpenAI-compatible API).
AsrOpt = Annotated[str | None, typer.Option(
    help="cascade/transcribe: faster-whisper model (name, hub id or folder); default: the embedded Whisper base.")]
TextJudgeOpt = Annotated[str | None, typer.Option(help="cascade: base URL of an OpenAI-compatible chat server.")]
TextModelOpt = Annotated[str | None, typer.Option(help="cascade: the text judge's model name.")]
ApiKeyEnvOpt = Annotated[str | None, typer.Option(help="cascade: environment variable holding the API key.")]
TextPromptOpt = Annotated[Path | None, typer.Option(
    help="cascade: prompt template with {aspect} {question} {response_1} {response_2}.")]
ConcurrencyOpt = Annotated[int | None, typer.Option(min=1, help="cascade: API calls in flight at once (4).")]


@app.command()
def judge(
    audio: Annotated[list[Path] | None, typer.Argument(help="AUDIO_1 AUDIO_2 (one pair).")] = None,
    instruction: Annotated[str | None, typer.Option(help="The question (one pair).")] = None,
    data: Annotated[Path | None, typer.Option(help="A data file: SageLM JSON list or JSONL rows.")] = None,
    output: Annotated[Path | None, typer.Option(
        help="OUT.jsonl: a dataset's records (reruns resume it); one pair's records are appended to it.")] = None,
    aspect: Annotated[list[str] | None, typer.Option(help="Aspect(s) to judge; may repeat.")] = None,
    model: Annotated[str | None, typer.Option(help="Hub id or local checkpoint folder.")] = None,
    both_orders: Annotated[bool, typer.Option("--both-orders", help="Judge each pair in both orders.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON record per line (one pair).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")] = 1,
    verdict_only: Annotated[bool, typer.Option("--verdict-only", help="Stop after the verdict.")] = False,
    preset: Annotated[str, typer.Option(help=_PRESET_HELP)] = "greedy",
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Cap on generated tokens.")] = None,
    backend: BackendOpt = "hf",
    device: DeviceOpt = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    gpu_memory_utilization: GpuMemoryOpt = None,
    tensor_parallel_size: TensorParallelOpt = None,
    asr: AsrOpt = None,
    text_judge: TextJudgeOpt = None,
    text_model: TextModelOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    text_prompt: TextPromptOpt = None,
    concurrency: ConcurrencyOpt = None,
    ray: Annotated[str | None, typer.Option(metavar="[ADDRESS]", help=(
        "Judge --data on Ray Data: --ray alone starts a local Ray, --ray auto or HOST:PORT joins a cluster."))] = None,
    workers: Annotated[int | None, typer.Option(min=1, help=(
        "--ray: judge actors (default: one per GPU of the cluster, else 1)."))] = None,
) -> None:
    """Judge one pair (AUDIO_1 AUDIO_2 --instruction) or a dataset (--data --output)."""
    from sagelm.model import DEFAULT_MODEL

    options = _decoding(preset, seed, verdict_only, max_new_tokens)
    engine = _Engine(backend, _engine_settings(preset, device=device, max_num_seqs=max_num_seqs,
                                               gpu_memory_utilization=gpu_memory_utilization,
                                               tensor_parallel_size=tensor_parallel_size))  # fmt: skip
    model_id = model or DEFAULT_MODEL
    if backend == "cascade":
        model_id, batch_size = _cascade(engine, model, asr, text_judge, text_model, api_key_env, text_prompt,
                                        concurrency, batch_size)  # fmt: skip
    if data is not None:
        if audio or instruction is not None:
            raise typer.BadParameter("--data judges a file: give no AUDIO files or --instruction")
        if output is None:
            raise typer.BadParameter("--data needs --output OUT.jsonl", param_hint="--output")
        if ray is not None:
            _run(lambda: _judge_on_ray(data, output, aspect, model_id, options, both_orders, batch_size, engine,
                                       ray, workers))  # fmt: skip
            return
        _run(lambda: _judge_dataset(data, output, aspect, model_id, options, both_orders, batch_size, engine))
        return
    if ray is not None or workers is not None:
        raise typer.BadParameter("--ray and --workers judge a dataset: give --data FILE --output OUT.jsonl")
    if not audio or len(audio) != 2 or instruction is None:
        raise typer.BadParameter("give AUDIO_1 AUDIO_2 and --instruction, or --data FILE --output OUT.jsonl")
    _run(lambda: _judge_pair(audio, instruction, aspect, model_id, options, both_orders, batch_size, json_out,
                             engine, output))  # fmt: skip


@dataclass(frozen=True)
class _Engine:
    """The engine a command judges on: its name and its own settings (device, max_num_seqs, ...)."""

    name: str = "hf"
    settings: dict[str, Any] = field(default_factory=dict)

    def load(self, model_id: str, options: Any, keys: Any = None) -> Any:
        from sagelm.judge import Judge

        return Judge.from_pretrained(model_id, options, keys=keys, backend=self.name, **self.settings)


def _cascade(engine, model, asr, text_judge, text_model, api_key_env, text_prompt, concurrency, batch_size):
    """The cascade's settings into `engine`; (the records' model name, prompts per batch: at least the
    concurrency, so that many calls are in flight)."""
    from sagelm.backends.cascade import DEFAULT_CONCURRENCY, cascade_model_name, read_template

    if not text_judge or not text_model:
        raise typer.BadParameter("--backend cascade needs --text-judge URL and --text-model NAME")
    template = _run(lambda: read_template(text_prompt))
    engine.settings.update({k: v for k, v in {"asr": asr, "text_judge": text_judge, "text_model": text_model,
                            "api_key_env": api_key_env, "text_prompt": text_prompt,
                            "concurrency": concurrency}.items() if v is not None})  # fmt: skip
    return model or cascade_model_name(asr, text_model, template), max(batch_size, concurrency or DEFAULT_CONCURRENCY)


def _engine_settings(preset: str, **given: Any) -> dict[str, Any]:
    """The engine settings of the command line: a preset's own (e.g. `authors`: one sequence at a time),
    then the flags given (None: not given)."""
    from sagelm.decoding import PRESET_ENGINE_SETTINGS

    return {**PRESET_ENGINE_SETTINGS.get(preset, {}), **{k: v for k, v in given.items() if v is not None}}


def _local_aspects(model_id: str) -> None:
    """Register the new aspects of a trained judge in a local folder, so `--aspect` and data rows may name them
    before the model is loaded."""
    from sagelm.aspects import load_aspects

    if Path(model_id).expanduser().is_dir():
        load_aspects(Path(model_id).expanduser())


def _judge_pair(audio, instruction, aspects, model_id, options, both_orders, batch_size, json_out, engine,
                output=None) -> None:  # fmt: skip
    from sagelm.aspects import get_aspect
    from sagelm.audio import load_audio
    from sagelm.records import JudgmentLog

    _local_aspects(model_id)

    for a in aspects or []:
        get_aspect(a)
    for f in audio:  # fail fast, before loading a 7B model
        load_audio(f)
    log = JudgmentLog(output) if output is not None else None  # refused before the model loads, if it must be
    try:
        _quiet_transformers()
        judge = engine.load(model_id, options)
        records = judge.compare(instruction, audio[0], audio[1], aspects, both_orders, batch_size)
        if log is not None:
            log.warn_if_mixed(judge.model_name, engine.name)
            log.write(records)
    finally:
        if log is not None:
            log.close()
    failed = next((r for r in records if r.error), None)
    if failed:
        raise UserError(failed.error)
    if json_out:
        for r in records:
            sys.stdout.write(r.to_json() + "\n")
    else:
        stdout.print(_verdict_table(records, f"{audio[0].name} vs {audio[1].name}"))


def _judge_dataset(data, output, aspects, model_id, options, both_orders, batch_size, engine=_Engine()) -> None:
    from sagelm.data import BadRow, read_pairs
    from sagelm.records import JudgmentLog, refuse_output_over_data

    _local_aspects(model_id)
    refuse_output_over_data(output, data)
    from sagelm.judge import error_record, plan_rows

    items = list(plan_rows(list(read_pairs(data)), aspects, both_orders))
    log = JudgmentLog(output)
    log.warn_if_mixed(model_id, engine.name)

    def bad_record(b: BadRow) -> Any:
        return error_record(b, model_id, options, engine.name)

    # Keys need the audio digests only, not the model: work out what is left before loading it.
    from sagelm.judge import Task, TaskKeys

    keys = TaskKeys(model_id, options, engine.name)
    todo = [it for it in items if (log.to_do(bad_record(it).key, bad_row=True) if isinstance(it, BadRow)
                                   else log.to_do(keys(it)))]  # fmt: skip
    skipped = len(items) - len(todo)
    if skipped:
        logger.info("%s: %d judgments already done, %d to go", output, skipped, len(todo))
    n_bad = sum(isinstance(it, BadRow) for it in todo)
    judge = None
    if len(todo) > n_bad:
        _quiet_transformers()
        judge = engine.load(model_id, options, keys)
    errors = 0
    with log, _progress() as progress:
        bar = progress.add_task("judging", total=len(todo))
        chunk: list[Task] = []

        def flush() -> None:
            nonlocal errors
            if chunk and judge is not None:
                for batch in judge.judge(list(chunk), batch_size):
                    log.write(batch)
                    errors += sum(r.error is not None for r in batch)
                    progress.advance(bar, len(batch))
            chunk.clear()

        for it in todo:
            if isinstance(it, BadRow):
                flush()
                log.write([bad_record(it)])
                errors += 1
                progress.advance(bar)
                continue
            chunk.append(it)
            if len(chunk) == batch_size:
                flush()
        flush()
    for it in todo:
        if isinstance(it, BadRow):
            logger.warning("%s", it.error)
    logger.info("%s: wrote %d records (%d with errors)", output, len(todo), errors)


def _judge_on_ray(data, output, aspects, model_id, options, both_orders, batch_size, engine, address, workers):
    from sagelm.cluster import RayOptions, judge_dataset

    _local_aspects(model_id)
    _quiet_transformers()
    judge_dataset(data, output, model_id, options, aspects, both_orders, batch_size, engine.name, engine.settings,
                  RayOptions(address, workers), _progress)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Hub id or local checkpoint folder.")],
    backend: BackendOpt = "hf",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Judgments per engine call, across requests.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="How long a judgment waits for others to batch with.")] = 20,
    max_queue: Annotated[int, typer.Option(min=1, help="Judgments waiting at most; beyond them: 429.")] = 256,
    max_audio_mb: Annotated[float, typer.Option(min=0.001, help="Largest audio file taken, in MB.")] = 25,
    audio_root: Annotated[list[Path] | None, typer.Option(
        help="A folder whose files requests may name by path; may repeat.")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the bearer key that requests must send.")] = None,
    device: DeviceOpt = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    gpu_memory_utilization: GpuMemoryOpt = None,
    tensor_parallel_size: TensorParallelOpt = None,
) -> None:
    """Serve the judge over HTTP: POST /v1/judge, GET /health, /metrics, /docs (SIGTERM drains, then exits 0)."""
    roots = tuple(audio_root or ())
    for root in roots:
        if not root.is_dir():
            raise typer.BadParameter(f"{root} is not a folder", param_hint="--audio-root")
    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise typer.BadParameter(f"the environment variable {api_key_env} is not set", param_hint="--api-key-env")

    def go() -> None:
        from sagelm.serve import ServeOptions, serve

        _local_aspects(model)
        _quiet_transformers()
        settings = _engine_settings("greedy", device=device, max_num_seqs=max_num_seqs,
                                    gpu_memory_utilization=gpu_memory_utilization,
                                    tensor_parallel_size=tensor_parallel_size)  # fmt: skip
        serve(ServeOptions(model=model, backend=backend, host=host, port=port, max_batch_size=max_batch_size,
                           max_wait_ms=max_wait_ms, max_queue=max_queue, max_audio_mb=max_audio_mb,
                           audio_roots=roots, api_key=key, engine_settings=settings))  # fmt: skip

    _run(go)


@app.command("eval")
def eval_(
    predictions: Annotated[list[Path], typer.Argument(help="OUT.jsonl of sagelm judge, or vllm_infer.py output.")],
    reference: Annotated[Path | None, typer.Option(help="The SageLM test JSON, paired by row order.")] = None,
    compat: Annotated[str | None, typer.Option(help="'official': the authors' scripts, quirks included.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown tables on stdout.")] = False,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    model: Annotated[str | None, typer.Option(
        help="Score only this judge model's records (a file holding several judges' records needs it).")] = None,
) -> None:
    """Score judgments against reference labels: accuracy, tie-aware agreement, CIs, kappa, order flips."""
    if compat not in (None, "official"):
        raise typer.BadParameter("the only compatibility mode is 'official'", param_hint="--compat")

    def go() -> None:
        from sagelm import report as rep
        from sagelm import scoring

        if compat == "official":
            result = scoring.evaluate_official(predictions, reference, model)
        else:
            result = scoring.evaluate(predictions, reference, seed, model)
        if json_out:
            sys.stdout.write(rep.to_json(result) + "\n")
        elif markdown:
            sys.stdout.write(rep.markdown(result))
        else:
            rep.print_tables(result, stdout)

    _run(go)


# --------------------------------------------------------------------------------------------------------------
@app.command()
def demo(
    model: Annotated[str | None, typer.Option(help="Hub id or local checkpoint folder.")] = None,
    audio_dir: Annotated[Path | None, typer.Option(help="The demo_audio folder.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    verdict_only: Annotated[bool, typer.Option("--verdict-only")] = False,
    max_new_tokens: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Judge the three bundled demo pairs on the four semantic aspects, beside the human verdicts."""

    def go() -> None:
        from sagelm.demo import DEMO_ASPECTS, demo_pairs, find_demo_audio, human_verdict
        from sagelm.model import DEFAULT_MODEL, ModelUnavailableError

        pairs = demo_pairs(find_demo_audio(audio_dir))
        _quiet_transformers()
        from sagelm.judge import Judge, plan

        model_id = model or DEFAULT_MODEL
        try:
            judge = Judge.from_pretrained(model_id, _decoding("greedy", None, verdict_only, max_new_tokens))
        except ModelUnavailableError as e:
            stderr.print(f"sagelm demo: SageLM weights unreachable: {e}", markup=False, highlight=False)
            return
        tasks = list(plan(pairs, DEMO_ASPECTS))
        records = []
        with _progress() as progress:
            bar = progress.add_task("judging the demo pairs", total=len(tasks))
            for batch in judge.judge(tasks, batch_size):
                records += batch
                progress.advance(bar, len(batch))
        agree = sum(r.verdict == human_verdict(r.id, r.aspect) for r in records)
        stdout.print(_verdict_table(records, f"SageLM ({model_id}) vs human verdicts",
                                    human=lambda r: human_verdict(r.id, r.aspect)))  # fmt: skip
        stdout.print(f"agreement with the human verdicts: {agree}/{len(records)}")

    _run(go)


@app.command("tiny-model")
def tiny_model(
    folder: Annotated[Path, typer.Argument(help="Where to save the checkpoint.")],
    layout: Annotated[str, typer.Option(help="thinker (as training saves) or full (as released).")] = "thinker",
    seed: Annotated[int, typer.Option()] = 0,
    hidden_size: Annotated[int, typer.Option(min=16, help="Text model width.")] = 64,
    layers: Annotated[int, typer.Option(min=1, help="Text model layers.")] = 2,
    audio_width: Annotated[int, typer.Option(min=16, help="Audio encoder width.")] = 64,
    audio_layers: Annotated[int, typer.Option(min=1, help="Audio encoder layers.")] = 2,
) -> None:
    """Build a tiny random Qwen2.5-Omni judge (to try the tool or train on a laptop; untrained, it judges at random)."""

    def go() -> None:
        if layout not in ("thinker", "full"):
            raise typer.BadParameter("thinker or full", param_hint="--layout")
        _quiet_transformers()
        from sagelm.tiny import TinySpec, build_tiny_judge

        spec = TinySpec(hidden_size=hidden_size, layers=layers, audio_width=audio_width, audio_layers=audio_layers,
                        seed=seed)  # fmt: skip
        build_tiny_judge(folder, layout, spec)  # type: ignore[arg-type]
        stderr.print(f"saved a tiny random judge ({layout}) to {folder}")

    _run(go)


# --------------------------------------------------------------------------------------------------------------
@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Training YAML (LLaMA-Factory key names).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value settings over the YAML's.")] = None,
) -> None:
    """Fine-tune a judge on judge data; saves a checkpoint that `sagelm judge --model` loads."""

    def go() -> None:
        from sagelm.training import load_config

        cfg = load_config(config, overrides or [])  # all checks before any work
        _quiet_transformers()
        from sagelm.training import train as run

        with _progress() as progress:
            bars: dict[str, Any] = {}

            def on_progress(label: str, step: int, total: int) -> None:
                if label not in bars:
                    bars[label] = progress.add_task(f"training {label}", total=total)
                progress.update(bars[label], completed=step, total=total)

            results = run(cfg, on_progress)
        for r in results:
            loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "n/a"
            stderr.print(f"stage {r.index}: {r.counts['kept']} samples ({r.counts['too_long']} too long, "
                         f"{r.counts['bad_audio'] + r.counts['bad_rows']} bad), {r.steps} steps, "
                         f"final loss {loss}, {r.seconds:.0f} s", highlight=False)  # fmt: skip
        stderr.print(f"judge saved to {cfg.output_dir} (sagelm judge --model {cfg.output_dir})", highlight=False)

    _run(go)


@app.command()
def merge(
    thinker: Annotated[Path, typer.Argument(help="A trained thinker checkpoint (sagelm train's output_dir).")],
    base: Annotated[str, typer.Option(help="The full Qwen2.5-Omni checkpoint it came from (hub id or folder).")],
    out: Annotated[Path, typer.Option(help="Where to write the full checkpoint.")],
) -> None:
    """Merge a trained thinker back into a full Qwen2.5-Omni checkpoint (talker included), as SageLM was released."""

    def go() -> None:
        _quiet_transformers()
        from sagelm.model import merge_into_full

        merge_into_full(thinker, base, out)
        stderr.print(f"full checkpoint written to {out}", highlight=False)

    _run(go)


export_app = typer.Typer(no_args_is_help=True, help="Write judge data for other tools.")
app.add_typer(export_app, name="export")


@export_app.command("llamafactory")
def export_llamafactory(
    data: Annotated[list[Path], typer.Argument(help="Data files: SageLM JSON lists or JSONL rows.")],
    out: Annotated[Path, typer.Option(help="LLaMA-Factory dataset folder to write.")],
    model: Annotated[str, typer.Option(help="model_name_or_path in the YAML.")] = "Qwen/Qwen2.5-Omni-7B",
    output_dir: Annotated[str, typer.Option(help="output_dir in the YAML.")] = "saves/sagelm",
    allow_outside: Annotated[bool, typer.Option("--allow-outside",
                                                help="Export audio outside each data file's folder too.")] = False,
) -> None:
    """Data, dataset_info.json entries and the authors' training YAML, for LLaMA-Factory."""

    def go() -> None:
        from sagelm.llamafactory import export

        names, problems = export(data, out, model, output_dir, allow_outside)
        for p in problems:
            logger.warning("%s", p)
        stderr.print(f"wrote {', '.join(names)} to {out}; train with: llamafactory-cli train {out / 'sagelm_sft.yaml'}",
                     highlight=False)  # fmt: skip

    _run(go)


synth_app = typer.Typer(no_args_is_help=True, help="Make synthetic judge data.")
app.add_typer(synth_app, name="synth")


@synth_app.command("gender")
def synth_gender(
    out: Annotated[Path, typer.Argument(help="Folder for train.json, heldout.json and audio/.")],
    train_pairs: Annotated[int, typer.Option(min=1)] = 300,
    heldout_pairs: Annotated[int, typer.Option(min=1)] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace train.json/heldout.json in OUT.")] = False,
) -> None:
    """A gender-instruction-following set spoken by espeak-ng voices; held-out voices and sentences for testing."""

    def go() -> None:
        from sagelm.synth import check_out, make_gender_set

        check_out(out, overwrite)  # refused before a progress bar is drawn: the error is the only line
        with _progress() as progress:
            bar = progress.add_task("speaking", total=None)
            train_file, heldout_file = make_gender_set(out, train_pairs, heldout_pairs, seed,
                                                       on_clip=lambda: progress.advance(bar),
                                                       overwrite=overwrite)  # fmt: skip
        stderr.print(f"wrote {train_file} and {heldout_file}", highlight=False)

    _run(go)


@app.command()
def arena(
    output: Annotated[Path, typer.Option(help="RUN_DIR: judgments.jsonl (resumed), leaderboard.*, report.html.")],
    questions: Annotated[Path | None, typer.Option(help="Q.jsonl: {id, question, aspect?} per line.")] = None,
    systems: Annotated[Path | None, typer.Option(help="DIR/<system>/<id>.<wav|flac|mp3|ogg>.")] = None,
    baseline: Annotated[str | None, typer.Option(help="The system at 1000 (--pairs baseline's opponent).")] = None,
    pairs: Annotated[str, typer.Option(help="all: every pair; baseline: each system vs --baseline.")] = "all",
    aspect: Annotated[list[str] | None, typer.Option(help="Aspect(s) to judge; may repeat.")] = None,
    model: Annotated[str | None, typer.Option(help="Hub id or local checkpoint folder.")] = None,
    backend: BackendOpt = "hf",
    device: DeviceOpt = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    gpu_memory_utilization: GpuMemoryOpt = None,
    tensor_parallel_size: TensorParallelOpt = None,
    one_order: Annotated[bool, typer.Option("--one-order", help="Judge each pair in one order only.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")] = 1,
    verdict_only: Annotated[bool, typer.Option("--verdict-only", help="Stop after the verdict.")] = False,
    preset: Annotated[str, typer.Option(help=_PRESET_HELP)] = "greedy",
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Cap on generated tokens.")] = None,
    bootstrap: Annotated[int, typer.Option(min=10, help="Bootstrap replicates for the intervals.")] = 1000,
) -> None:
    """Rank speech systems: judge their answers pairwise, then Bradley-Terry ratings with 95% intervals.
    Without --questions/--systems, recompute an existing RUN_DIR's leaderboard and report (no judging)."""
    from sagelm.model import DEFAULT_MODEL

    options = _decoding(preset, seed, verdict_only, max_new_tokens)

    def go() -> None:
        from sagelm.arena import ArenaConfig, run

        model_id = model or DEFAULT_MODEL
        _local_aspects(model_id)
        _quiet_transformers() if questions is not None else None
        settings = _engine_settings(preset, device=device, max_num_seqs=max_num_seqs,
                                    gpu_memory_utilization=gpu_memory_utilization,
                                    tensor_parallel_size=tensor_parallel_size)  # fmt: skip
        cfg = ArenaConfig(output, questions, systems, baseline, pairs, aspect, model_id, backend, not one_order,
                          batch_size, options, bootstrap, settings=settings)  # fmt: skip
        result = run(cfg, _progress)
        stderr.print(f"leaderboard: {output / 'leaderboard.md'}, report: {output / 'report.html'}", highlight=False)
        import json as _json

        sys.stdout.write(_json.dumps(result["overall"], indent=2) + "\n")

    _run(go)


@app.command()
def transcribe(
    audio: Annotated[list[Path], typer.Argument(help="Audio files (wav/flac/mp3/ogg).")],
    asr: AsrOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Transcribe what the judge hears (first 60 s, 16 kHz) with the cascade's speech recogniser."""

    def go() -> None:
        from rich.table import Table

        from sagelm.asr import DEFAULT_ASR, AsrSettings, Transcriber
        from sagelm.audio import AudioError, load_audio
        from sagelm.jsonout import dumps

        on_gpu = bool(device and device.startswith("cuda"))
        transcriber = Transcriber(AsrSettings(model=asr or DEFAULT_ASR, device="cuda" if on_gpu else "cpu"))
        table = Table("audio", "seconds", "words/s", "transcript / error")
        failed = 0
        for f in audio:
            try:
                t = transcriber.transcribe(load_audio(f))
            except AudioError as e:
                failed += 1
                row: dict[str, Any] = {"audio": str(f), "error": str(e)}
                table.add_row(str(f), "", "", f"[red]{e}[/red]")
            else:
                row = {"audio": str(f), **t.as_dict()}
                table.add_row(str(f), f"{t.seconds:.2f}", f"{t.words_per_second:.2f}", t.text)
            if json_out:
                sys.stdout.write(dumps(row, ensure_ascii=False) + "\n")
                sys.stdout.flush()
        if not json_out:
            stdout.print(table)
        if failed:
            raise UserError(f"{failed} of {len(audio)} files could not be transcribed")

    _run(go)


def main() -> None:
    app(args=_ray_alone(_debug_first(sys.argv[1:])))


def _ray_alone(args: list[str]) -> list[str]:
    """`--ray` with no address (last, or before another option) means a local Ray: `--ray=local`."""
    if "--ray" not in args:
        return args
    from sagelm.cluster import LOCAL

    return [f"--ray={LOCAL}" if a == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")) else a
            for i, a in enumerate(args)]  # fmt: skip


def _debug_first(args: list[str]) -> list[str]:
    """`--debug` works anywhere on the line (`sagelm judge ... --debug` too): it is moved before the command."""
    if "--debug" not in args:
        return args
    return ["--debug", *(a for a in args if a != "--debug")]


if __name__ == "__main__":
    main()
