"""``minigpt``: the command-line shell over the core (train, sample, eval, inspect, bench).

Heavy modules (torch, the trainer) are imported inside commands so that ``--help`` is instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import click

from backends.base import OutOfMemory
from minigpt_tui.errors import MiniGPTError, describe_os_error
from minigpt_tui.storage import STDOUT, atomic_write_text, check_file_name, check_output_file, check_output_folder
from minigpt_tui.training.config import PRESETS, TrainConfig, field_help, field_names, field_type
from minigpt_tui.training.datasets import DATASETS
from minigpt_tui.training.sampling import DEFAULT_TEMPERATURE
from minigpt_tui.training.threads import AUTO, ENV_VAR, parse_threads

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
MAX_BENCH_ROUNDS = 20  # best-of-N throughput: rounds beyond a few only lengthen the wait


class FriendlyGroup(click.Group):
    """Turns a MiniGPTError or a bad option anywhere below into ``error: <message>`` and exit code 2."""

    def invoke(self, ctx: click.Context):
        with terminate_as_interrupt():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MiniGPTError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:  # Ctrl-C before training started (loading, tokenizing): nothing to save
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as exc:  # disk full, permission, is-a-directory...: checkpoints are written atomically
            click.echo(f"error: {describe_os_error(exc)}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except (MemoryError, OutOfMemory):
            click.echo("error: out of memory (try a smaller --batch-size, --block-size or model)", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except click.UsageError as exc:  # click would print three lines of usage; one line like the rest
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except Exception as exc:  # a bug: still one line (checkpoints are atomic), and a way to report it
            click.echo(f"error: internal error, please report it: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does: every command then cleans up the same way (temporary
    files and staging folders removed, worker processes ended, one line) instead of dying where it stands."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up it starts finish
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def param_label(param) -> str:
    """How an error names the parameter: ``--json`` for an option, ``OUT_DIR`` for an argument."""
    if isinstance(param, click.Option):
        return param.opts[0]
    return param.human_readable_name if param is not None else "output"


class OutputFile(click.ParamType):
    """A file the command will write, checked when the command line is read, before any work
    (``storage.check_output_file``); ``-`` means standard output where ``allow_stdout``."""

    name = "path"

    def __init__(self, allow_stdout: bool = False) -> None:
        self.allow_stdout = allow_stdout

    def convert(self, value, param, ctx):
        option = param_label(param)
        path = check_output_file(value, option, allow_stdout=self.allow_stdout)
        return STDOUT if path is None else path


class OutputFolder(click.ParamType):
    """A folder the command will create or write in, checked up front (``storage.check_output_folder``)."""

    name = "folder"

    def convert(self, value, param, ctx):
        return check_output_folder(value, param_label(param))


class FileName(click.ParamType):
    """A bare file name (``--name``): it cannot point outside ``--out``."""

    name = "name"

    def convert(self, value, param, ctx):
        return check_file_name(value, param_label(param))


def output_file_option(flag: str, dest: str, help: str, *, allow_stdout: bool = False):
    """``--json``/``--png``-style options of any command: checked before the work (see ``OutputFile``)."""
    if allow_stdout:
        help += " '-' writes it to standard output."
    return click.option(flag, dest, type=OutputFile(allow_stdout), default=None, help=help)


def write_output_text(path: Path | str, text: str) -> None:
    """An output file (atomically) or, for ``-``, standard output."""
    if path == STDOUT:
        click.echo(text)
    else:
        atomic_write_text(path, text)


def config_options(command):
    """One ``--kebab-case`` option per TrainConfig field, all defaulting to "not given"."""
    for name in reversed(field_names()):
        flag = name.replace("_", "-")
        kind = field_type(name)
        if kind is bool:
            option = click.option(f"--{flag}/--no-{flag}", name, default=None, help=field_help(name))
        else:
            option = click.option(f"--{flag}", name, type=kind, default=None, help=field_help(name))
        command = option(command)
    return command


def given_fields(kwargs: dict) -> dict:
    """The config fields the user set on the command line (the options of ``config_options``)."""
    return {name: kwargs[name] for name in field_names() if kwargs.get(name) is not None}


class ThreadsType(click.ParamType):
    """``--threads auto|N``: a bad value is click's one-line usage error."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        try:
            return parse_threads(value)
        except MiniGPTError as exc:
            self.fail(str(exc), param, ctx)


def threads_option(what: str = "The CPU threads the math runs on"):
    return click.option(
        "--threads", type=ThreadsType(), default=AUTO, show_default=True, envvar=ENV_VAR,
        help=f"{what}: auto measures the candidate counts and keeps the fastest (training measures again when "
        "step times drift); N uses exactly N (bit-for-bit repeatable runs). Env: MINIGPT_THREADS.",
    )


data_option = click.option(
    "--data", type=click.Path(path_type=Path), help="A UTF-8 text file or a folder of .txt files."
)
dataset_option = click.option("--dataset", type=click.Choice(DATASETS), help="A named corpus.")


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="minigpt")
def main() -> None:
    """Train, watch and sample a small GPT."""


@main.command()
@click.option("--headless", is_flag=True, help="Train without the TUI: a progress bar or plain log lines.")
@data_option
@dataset_option
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="Start from a preset (default: baby).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="A TOML file of config fields.")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder (default runs/<timestamp>).")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this folder.")
@click.option("--overwrite", is_flag=True, help="Start a new run in an --out folder that already holds one.")
@threads_option()
@config_options
def train(
    headless: bool,
    data: Path | None,
    dataset: str | None,
    preset: str | None,
    config_file: Path | None,
    out: Path | None,
    resume: Path | None,
    overwrite: bool,
    threads,
    **kwargs,
) -> None:
    """Train a model (headless), or resume one with --resume RUN_DIR."""
    from minigpt_tui.training.config import config_from_sources
    from minigpt_tui.training.corpus import corpus_for_run, resolve_corpus
    from minigpt_tui.training.distributed import start_world, stop_world
    from minigpt_tui.training.runs import default_run_dir, open_run
    from minigpt_tui.training.trainer import check_resume_changes, new_training, resume_training

    overrides = given_fields(kwargs)
    if not headless:
        open_tui(data, dataset, preset, config_file, out, resume, overrides, threads)
        return
    if resume is not None:
        if preset or config_file or out or overwrite:
            raise MiniGPTError("--resume continues a run with its own config; drop --preset/--config/--out/--overwrite")
        run = open_run(resume)
        check_resume_changes(run, overrides)  # named as what it is before the config is rebuilt with them
        config = run.config.replace(**overrides)
    else:
        config = config_from_sources(preset, config_file, overrides)
    # under torchrun: join the process group before any backend is built (each process is one rank)
    world = start_world(config.backend, config.device)
    try:
        if resume is not None:
            trainer = resume_training(resume, corpus_for_run(run, data, dataset), overrides, world, threads=threads)
        else:
            corpus, note = resolve_corpus(data, dataset)
            if note and world.is_writer:
                click.echo(note, err=True)
            trainer = new_training(config, corpus, out or default_run_dir(), world, overwrite=overwrite,
                                   threads=threads)
        run_headless(trainer)
    except SystemExit:  # stopped or diverged: decided by all ranks together
        stop_world(world)
        raise
    except Exception:  # an error this rank may have hit alone: do not wait for the others
        stop_world(world, wait_for_peers=False)
        raise
    stop_world(world)


def open_tui(
    data: Path | None,
    dataset: str | None,
    preset: str | None,
    config_file: Path | None,
    out: Path | None,
    resume: Path | None,
    overrides: dict,
    threads,
) -> None:
    """Without --headless: the TUI's new-run form prefilled with these options, or the run to resume."""
    from minigpt_tui.training.config import config_from_sources
    from minigpt_tui.tui.app import create_app
    from minigpt_tui.tui.terminal import check_terminal

    if resume is not None:
        if overrides or preset or config_file or out or data or dataset:
            raise MiniGPTError("the TUI resumes a run as it is (press c); add --headless to resume with options")
        check_terminal()
        create_app(resume, threads=threads).run()
        return
    config = config_from_sources(preset, config_file, overrides)
    check_terminal()
    create_app(config=config, data=data, dataset=dataset, out=out, threads=threads).run()


def run_headless(trainer) -> None:
    from minigpt_tui.progress import attach_progress

    def stop(signum, frame):
        if trainer.stop_requested:  # the second Ctrl-C: leave now; the last checkpoint on disk is complete
            sys.stderr.write("\nstopped at once; the last checkpoint is kept\n")
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        trainer.request_stop()
        sys.stderr.write("\nstopping: saving a checkpoint after this step (Ctrl-C again to quit at once)\n")
        sys.stderr.flush()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    c, world = trainer.config, trainer.world
    # under torchrun only rank 0 talks; the others train silently
    speaks = world.is_writer
    if speaks:
        ranks = f" x {world.size} ranks" if world.is_distributed else ""
        click.echo(
            f"run {trainer.run_dir.path}: {trainer.backend.name} on {trainer.backend.device}{ranks}, "
            f"{trainer.backend.num_parameters() / 1e6:.2f}M parameters, {trainer.tokens_per_step} tokens/step "
            f"(batch {c.batch_size} x accum {c.grad_accum_steps}{ranks} x block {c.model.block_size}), "
            f"steps {trainer.step} -> {c.max_iters}",
            err=True,
        )
    try:
        with attach_progress(trainer, sys.stdout.isatty()) if speaks else contextlib.nullcontext():
            done = trainer.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if speaks:
        click.echo(done.message, err=done.reason != "finished")
    if done.reason == "stopped":
        sys.exit(EXIT_INTERRUPTED)
    if done.reason == "diverged":
        sys.exit(1)


def checkpoint_choice():
    return click.option(
        "--checkpoint",
        type=click.Choice(["best", "latest"]),
        default="best",
        show_default=True,
        help="Which checkpoint of the run to load.",
    )


backend_option = click.option("--backend", default=None, help="Backend that loads the run (default: the run's).")
device_option = click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps.")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--prompt", default="\n", show_default=True, help="Text to continue.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--temperature", type=float, default=DEFAULT_TEMPERATURE, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=None, help="Keep the k most likely tokens.")
@click.option("--top-p", type=float, default=None, help="Keep the smallest set with probability >= p.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible samples.")
@checkpoint_choice()
@backend_option
@device_option
@threads_option()
def sample(
    run_dir: Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    checkpoint: str,
    backend: str | None,
    device: str | None,
    threads,
) -> None:
    """Stream a sample from a trained run."""
    from minigpt_tui.training.runs import load_model, open_run
    from minigpt_tui.training.sampling import SamplingParams, decode_step, generate_text
    from minigpt_tui.training.threads import apply_threads

    params = SamplingParams(temperature, top_k, top_p)
    run = open_run(run_dir)
    run.tokenizer.encode(prompt)  # unknown characters fail before the model loads
    model, _ = load_model(run, which=checkpoint, backend=backend, device=device)
    apply_threads(threads, model.set_threads, decode_step(model))
    click.echo(prompt, nl=False)
    for piece in generate_text(model, run.tokenizer, prompt, max_new_tokens, params, seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    click.echo()


@main.command(name="eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@data_option
@dataset_option
@checkpoint_choice()
@backend_option
@device_option
@click.option(
    "--stride",
    type=int,
    default=None,
    help="Sliding windows every N tokens: each token scored with >= context - N tokens of context "
    "(default: non-overlapping windows).",
)
@output_file_option("--json", "json_path", "Also write the scores as JSON.", allow_stdout=True)
@threads_option()
def eval_command(
    run_dir: Path,
    data: Path | None,
    dataset: str | None,
    checkpoint: str,
    backend: str | None,
    device: str | None,
    stride: int | None,
    json_path: Path | None,
    threads,
) -> None:
    """Loss, perplexity and bits/char over the whole validation split."""
    from minigpt_tui.training.corpus import corpus_for_run
    from minigpt_tui.training.evaluation import evaluate_run
    from minigpt_tui.training.runs import open_run

    run = open_run(run_dir)
    report = evaluate_run(
        run, corpus_for_run(run, data, dataset).text, which=checkpoint, backend=backend, device=device, stride=stride,
        threads=threads,
    )
    click.echo(report.summary(), err=json_path == STDOUT)  # stdout is the JSON's when it is asked for there
    if json_path:
        write_output_text(json_path, json.dumps(report.to_dict(), indent=1))


@main.command(name="inspect")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--text", required=True, help="The text to read (\\n for a newline).")
@click.option("--position", type=int, default=-1, show_default=True, help="Token whose next-token distribution "
              "and attention are shown (negative: from the end).")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=None, help="Keep the k most likely tokens.")
@click.option("--top-p", type=float, default=None, help="Keep the smallest set with probability >= p.")
@click.option("--layer", type=int, default=0, show_default=True, help="Layer of the attention head shown.")
@click.option("--head", type=int, default=0, show_default=True, help="Head shown.")
@click.option("--ablate-heads", default=None, help="Knock these heads out (zero-ablation), as LAYER.HEAD, "
              "comma-separated: e.g. 1.0,2.3.")
@click.option("--logit-lens", is_flag=True, help="Also show each layer's top next tokens at the position.")
@checkpoint_choice()
@backend_option
@device_option
@click.option("--step", type=click.IntRange(min=0), default=None,
              help="Use the run's snapshot at this step (see train --snapshots) instead of a checkpoint.")
@output_file_option("--png", "png_path", "Write a figure: surprisal, next-token bars at T=0.5/1/1.5, every "
                    "attention map (with --logit-lens, also the lens as FILE-lens.png).")
@output_file_option("--json", "json_path", "Write the raw numbers as JSON.", allow_stdout=True)
@threads_option()
def inspect_command(
    run_dir: Path,
    text: str,
    position: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    layer: int,
    head: int,
    ablate_heads: str | None,
    logit_lens: bool,
    checkpoint: str,
    backend: str | None,
    device: str | None,
    step: int | None,
    png_path: Path | None,
    json_path: Path | None,
    threads,
) -> None:
    """Why the model predicts what it does: surprisal per token, next-token table, attention."""
    from rich.console import Console

    from minigpt_tui.inspection.inspector import inspect_text
    from minigpt_tui.inspection.text import attention_text, label, next_tokens_table, surprisal_legend, surprisal_text
    from minigpt_tui.training.runs import available_checkpoint, model_at, open_run
    from minigpt_tui.training.sampling import SamplingParams
    from minigpt_tui.training.threads import apply_threads

    params = SamplingParams(temperature, top_k, top_p)
    text = text.replace("\\n", "\n")
    run = open_run(run_dir)
    kind = "snapshot" if step is not None else available_checkpoint(run, checkpoint)
    model, step = model_at(run, kind, backend=backend, device=device, step=step)
    ablation, ablated = None, []
    if ablate_heads is not None:
        from backends.base import HeadAblation
        from minigpt_tui.inspection.head_ablation import head_labels, parse_heads

        mask = parse_heads(ablate_heads, model.config.n_layer, model.config.n_head)
        ablation, ablated = HeadAblation(mask), head_labels(mask)
    apply_threads(threads, model.set_threads, lambda: inspect_text(model, run.tokenizer, text, ablation))
    inspection = inspect_text(model, run.tokenizer, text, ablation)
    position = inspection.check_position(position)
    inspection.check_head(layer, head)
    view = inspection.next_tokens(position, params, run.tokenizer)
    console = Console(highlight=False, stderr=json_path == STDOUT)
    mean_bits = float(inspection.surprisal_bits[1:].mean()) if inspection.length > 1 else float("nan")
    knocked_out = f", heads {', '.join(ablated)} ablated" if ablated else ""
    console.print(f"{run.path} ({kind} weights, step {step}, {model.name}{knocked_out}): {inspection.length} "
                  f"tokens, mean surprisal {mean_bits:.2f} bits/token")
    console.print(surprisal_text(inspection, position))
    console.print(surprisal_legend())
    piece = label(inspection.pieces[position])
    console.print(next_tokens_table(view, title=f"next token after position {position} ('{piece}')"))
    console.print(f"attention of layer {layer} head {head} from position {position} ('{piece}'):")
    console.print(attention_text(inspection, inspection.attention_from(position, layer, head), position))
    lens = None
    if logit_lens:
        from minigpt_tui.inspection.lens import Unembedding
        from minigpt_tui.inspection.lens import logit_lens as read_lens
        from minigpt_tui.inspection.text import lens_table

        lens = read_lens(Unembedding.of(model), inspection, position, run.tokenizer)
        console.print(lens_table(lens, title=f"logit lens: each layer's guess after position {position} ('{piece}')"))
    if png_path:
        from minigpt_tui.inspection.figures import save_figure, write_inspection_figure

        title = f"{run.path.name}, {kind} weights step {step}{knocked_out}: position {position} ('{piece}')"
        click.echo(write_inspection_figure(png_path, inspection, run.tokenizer, position, title), err=True)
        if lens is not None:
            from minigpt_tui.inspection.insight_figures import lens_figure

            context = "".join(inspection.pieces[: position + 1])
            lens_path = png_path.with_name(f"{png_path.stem}-lens{png_path.suffix or '.png'}")
            click.echo(save_figure(lens_figure(lens, context, title=title), lens_path), err=True)
    if json_path:
        document = {"run": str(run.path), "checkpoint": kind, "step": step, "backend": model.name, "text": text,
                    "position": position, "layer": layer, "head": head, "ablated_heads": ablated,
                    **inspection.to_dict(), "next_tokens": view.to_dict(),
                    "attention_from_position": inspection.attention_from(position, layer, head).tolist()}
        if lens is not None:
            document["logit_lens"] = lens.to_dict()
        write_output_text(json_path, json.dumps(document))
        if json_path != STDOUT:
            click.echo(json_path, err=True)


step_option = click.option("--step", type=click.IntRange(min=0), default=None,
                           help="Use the run's snapshot at this step (see train --snapshots) instead.")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--windows", type=click.IntRange(min=1), default=64, show_default=True,
              help="Context-long windows spread evenly over the validation split.")
@click.option("--whole-split", is_flag=True, help="With --ablate: the whole validation split, window after window.")
@click.option("--weights", type=click.Choice(["best", "latest", "init"]), default="best", show_default=True,
              help="A checkpoint, or the run's initial weights (its seed, before any training).")
@step_option
@click.option("--ablate", is_flag=True, help="Also knock out each head alone, each layer and every head, and "
              "measure the rise in val loss: (heads + layers + 2) forwards per window.")
@click.option("--mode", type=click.Choice(["zero", "mean"]), default="zero", show_default=True,
              help="With --ablate: replace a head's output by zeros, or by its mean over the windows.")
@click.option("--logit-lens", is_flag=True, help="Also the loss of each layer's logit lens over the windows: how "
              "much of the prediction each block has built.")
@data_option
@dataset_option
@backend_option
@device_option
@output_file_option("--png", "png_path", "Write the table and surprisal as a figure (with --ablate: the delta "
                    "loss beside the roles).")
@output_file_option("--json", "json_path", "Write the numbers as JSON.", allow_stdout=True)
def heads(run_dir: Path, windows: int, whole_split: bool, weights: str, step: int | None, ablate: bool, mode: str,
          logit_lens: bool, data, dataset, backend: str | None, device: str | None, png_path: Path | None,
          json_path: Path | None) -> None:
    """What the heads learned: attention on the previous token, word/line start, newline and (in a play's
    "NAME:" lines) speaker name, and surprisal by word start, word middle and after a newline, over the
    validation split. With --ablate, which heads matter: the rise in val loss when each is knocked out,
    beside its attention role."""
    from rich.console import Console
    from rich.table import Table

    from minigpt_tui.inspection.head_roles import head_roles
    from minigpt_tui.training.corpus import corpus_for_run
    from minigpt_tui.training.runs import model_at, open_run
    from minigpt_tui.training.trainer import tokenize_corpus

    run = open_run(run_dir)
    val = tokenize_corpus(run, corpus_for_run(run, data, dataset).text).val
    snapshot = step
    model, step = model_at(run, weights, backend=backend, device=device, step=snapshot)
    if snapshot is not None:
        weights = "snapshot"
    roles = head_roles(model, run.tokenizer, val, windows=windows)
    table = Table(title=f"{run.path} ({weights} weights, step {step}): mean attention mass per target, "
                        f"{roles.windows} windows of {roles.window_tokens} tokens")
    table.add_column("head")
    for label in roles.labels:
        table.add_column(label, justify="right")
    for layer in range(roles.mass.shape[0]):
        for head in range(roles.mass.shape[1]):
            table.add_row(f"L{layer} H{head}", *(f"{m:.3f}" for m in roles.mass[layer, head]))
    table.add_row("chance", *(f"{c:.3f}" for c in roles.chance), style="dim")
    console = Console(highlight=False, stderr=json_path == STDOUT)
    console.print(table)
    for k, (kind, label) in enumerate(zip(roles.kinds, roles.labels, strict=True)):
        layer, head, mass = roles.strongest(kind)
        console.print(f"{label}: strongest L{layer} H{head} {mass:.3f} (chance {roles.chance[k]:.3f}, "
                      f"{roles.queries[k]} queries)")
    console.print("surprisal (bits/token): " + ", ".join(
        f"{name} {bits:.2f} (n={roles.surprisal_counts[name]})" for name, bits in roles.surprisal_bits.items()))
    importance = None
    if ablate:
        from minigpt_tui.inspection.head_ablation import head_importance
        from minigpt_tui.inspection.text import importance_table

        importance = head_importance(model, run.tokenizer, val, windows=None if whole_split else windows, mode=mode)
        console.print(importance_table(importance, roles, title=f"which heads matter ({mode}-ablation, "
                                       f"{importance.windows} windows): Δ val loss in nats, and the head's role"))
        console.print(f"val loss {importance.base_loss:.4f}; every head ablated {importance.all_heads_loss:.4f}; "
                      f"context-free levels: unigram {importance.unigram_loss:.4f}, bigram "
                      f"{importance.bigram_loss:.4f} (nats/token)")
    lens_losses = None
    if logit_lens:
        from minigpt_tui.inspection.lens import depth_name, layer_losses

        lens_losses = layer_losses(model, val, windows=None if whole_split else windows)
        console.print(f"logit lens loss over {lens_losses.windows} windows (nats/token): " + ", ".join(
            f"after {depth_name(d)} {loss:.4f}" for d, loss in enumerate(lens_losses.loss)))
    if png_path:
        from minigpt_tui.inspection.figures import head_roles_figure, save_figure

        title = f"{run.path.name}, {weights} weights (step {step}): {roles.windows} val windows of " \
                f"{roles.window_tokens}"
        if importance is not None:
            from minigpt_tui.inspection.insight_figures import importance_figure

            figure = importance_figure(importance, roles, title)
        else:
            figure = head_roles_figure(roles, title)
        click.echo(save_figure(figure, png_path), err=True)
    if json_path:
        document = {"run": str(run.path), "weights": weights, "step": step, **roles.to_dict()}
        if importance is not None:
            document["ablation"] = importance.to_dict()
        if lens_losses is not None:
            document["logit_lens_loss"] = lens_losses.to_dict()
        write_output_text(json_path, json.dumps(document, indent=1))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--weights", type=click.Choice(["best", "latest", "init"]), default="best", show_default=True,
              help="A checkpoint, or the run's initial weights.")
@step_option
@backend_option
@output_file_option("--png", "png_path", "Write the labelled map as a figure.")
@output_file_option("--json", "json_path", "Write the points as JSON.", allow_stdout=True)
def embeddings(run_dir: Path, weights: str, step: int | None, backend: str | None, png_path: Path | None,
               json_path: Path | None) -> None:
    """Where the tokens sit: a 2-D PCA of the token embeddings, grouped vowels, consonants, capitals, digits,
    punctuation and whitespace, with the share of the variance the two axes show."""
    from minigpt_tui.inspection.embedding_map import embedding_map
    from minigpt_tui.inspection.text import label
    from minigpt_tui.training.runs import model_at, open_run

    run = open_run(run_dir)
    if step is not None:
        weights = "snapshot"
    model, step = model_at(run, weights, backend=backend, device="cpu", step=step)  # only its weights are read
    emap = embedding_map(model, run.tokenizer)
    pc1, pc2 = emap.variance_explained
    click.echo(f"{run.path} ({weights} weights, step {step}): {len(emap.labels)} tokens; PC 1 holds {pc1:.1%} of "
               f"the variance, PC 2 {pc2:.1%}")
    for group, (x, y) in emap.centroids().items():
        members = "".join(label(t) for t, g in zip(emap.labels, emap.groups, strict=True) if g == group)
        click.echo(f"  {group:12s} centre ({x:+.3f}, {y:+.3f}): {members[:60]}")
    title = f"{run.path.name}, {weights} weights (step {step}): token embeddings, 2-D PCA"
    if png_path:
        from minigpt_tui.inspection.figures import save_figure
        from minigpt_tui.inspection.insight_figures import embedding_figure

        click.echo(save_figure(embedding_figure(emap, title), png_path), err=True)
    if json_path:
        write_output_text(json_path, json.dumps({"run": str(run.path), "weights": weights, "step": step,
                                                 **emap.to_dict()}, indent=1))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--text", default=None, help="Text whose attention is drawn (default: a val excerpt; \\n for a "
              "newline).")
@click.option("--windows", type=click.IntRange(min=1), default=16, show_default=True,
              help="Validation windows for the surprisal and the head ranking.")
@click.option("--sample-tokens", type=click.IntRange(min=1), default=120, show_default=True)
@data_option
@dataset_option
@backend_option
@output_file_option("--png", "png_path", "Write the time-lapse as a figure.")
@output_file_option("--json", "json_path", "Write the numbers as JSON.", allow_stdout=True)
def timelapse(run_dir: Path, text: str | None, windows: int, sample_tokens: int, data, dataset, backend: str | None,
              png_path: Path | None, json_path: Path | None) -> None:
    """How the model learned: at each snapshot (train --snapshots) a sample, the surprisal by character class,
    and the attention of the heads that matter most at the end."""
    from minigpt_tui.inspection.inspector import excerpt
    from minigpt_tui.inspection.timelapse import timelapse as read_timelapse
    from minigpt_tui.training.corpus import corpus_for_run
    from minigpt_tui.training.data import split_text
    from minigpt_tui.training.runs import open_run
    from minigpt_tui.training.trainer import tokenize_corpus

    run = open_run(run_dir)
    corpus = corpus_for_run(run, data, dataset).text
    val = tokenize_corpus(run, corpus).val
    text = text.replace("\\n", "\n") if text else excerpt(split_text(corpus)[1], run.config.model.block_size)
    lapse = read_timelapse(run, val, text, sample_tokens=sample_tokens, windows=windows, backend=backend)
    heads = ", ".join(f"L{layer} H{head} (Δ {delta:+.3f})" for (layer, head), delta in
                      zip(lapse.heads, lapse.head_delta_loss, strict=True))
    click.echo(f"{run.path}: {len(lapse.frames)} snapshots; the heads that matter most at the end: {heads}")
    for frame in lapse.frames:
        bits = ", ".join(f"{name} {value:.2f}" for name, value in frame.class_bits.items())
        click.echo(f"step {frame.step}: val loss {frame.val_loss:.3f}; surprisal (bits) {bits}")
        click.echo("  " + frame.sample.replace("\n", "\n  ")[:400])
    if png_path:
        from minigpt_tui.inspection.figures import save_figure
        from minigpt_tui.inspection.insight_figures import timelapse_figure

        click.echo(save_figure(timelapse_figure(lapse, f"{run.path.name}: how the model learned"), png_path),
                   err=True)
    if json_path:
        write_output_text(json_path, json.dumps({"run": str(run.path), **lapse.to_dict()}, indent=1))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=OutputFolder(), default=None,
              help="Report folder (default: RUN_DIR/report of the first run).")
@click.option("--samples", type=click.IntRange(min=1), default=5, show_default=True,
              help="Samples per temperature, and free runs for exposure bias.")
@click.option("--length", type=click.IntRange(min=1), default=300, show_default=True,
              help="Tokens per sample and per free run.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i at every temperature.")
@click.option("--prompt", default=None, help="Text the samples continue (default: the start of a line of the "
              "first run's validation text).")
@data_option
@dataset_option
@backend_option
@device_option
def report(run_dirs: tuple[Path, ...], out: Path | None, samples: int, length: int, seed: int, prompt: str | None,
           data: Path | None, dataset: str | None, backend: str | None, device: str | None) -> None:
    """Write up one or more runs: report.md (what was trained, scores, curves, temperature 0.5/1/1.5, exposure
    bias, attention heads, a comparison of the runs, the journal's three questions) and its PNG figures.

    A rerun reuses the finished computations (cached in OUT/cache by checkpoint and options); Ctrl-C keeps them."""
    from minigpt_tui.experiments.report import ReportOptions, default_out, gather
    from minigpt_tui.experiments.report_markdown import report_command, write_report
    from minigpt_tui.progress import stage_progress

    paths = list(run_dirs)
    options = ReportOptions(samples=samples, length=length, seed=seed, prompt=prompt)
    folder = out or default_out(paths)
    try:
        with stage_progress(sys.stdout.isatty()) as progress:
            evidence = gather(paths, options, folder, data=data, dataset=dataset, backend=backend, device=device,
                              progress=progress, note=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted: the finished computations are kept in {folder / 'cache'}; the same command "
                   "continues from them", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(f"prompt: {json.dumps(evidence[0].prompt)}", err=True)
    shown_out = str(out) if out is not None else None
    click.echo(write_report(evidence, folder, options, report_command([str(p) for p in paths], options, shown_out)))


@main.command()
@click.option("--backend", "backends", multiple=True, default=("torch",), show_default=True, help="Repeat to compare.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="baby", show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help="Timed training steps (default 20; with --contention 200 per mode; with --optimizer-step the "
              "rounds, default 10).")
@click.option("--gen-tokens", type=click.IntRange(min=1), default=500, show_default=True)
@device_option
@threads_option()
@output_file_option("--json", "json_path", "Write the results as JSON.", allow_stdout=True)
@click.option("--optimizer-step", is_flag=True, help="The optimizer update alone, for the preset's model (same "
              "weights, the gradient of one batch): AdamW and Muon's variants (Jordan or Polar Express, 5 to 3 "
              "Newton-Schulz steps, float32 or bfloat16), interleaved round by round; median ms and ratio to AdamW.")
@click.option("--contention", is_flag=True, help="Training tokens/s beside busy processes the benchmark starts and "
              "stops: auto, each thread count, torch's default (with and without OMP_WAIT_POLICY=PASSIVE).")
@click.option("--loads", default="0,1,2", show_default=True, help="With --contention: busy processes per condition.")
@click.option("--modes", default=None, help="With --contention: comma-separated from auto, thread counts, default, "
              "default-passive (default: all of them, counts 1, 2, 4, ... up to the cores).")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="With --contention: the longest one measurement may train (a slow mode reports what it did).")
@click.option("--peer-cmd", default=None, help="With --contention: a shell command (nanoGPT's train.py, say) run "
              "under each load too; its tokens/s are read from 'iter N: ... time T ms' lines.")
@click.option("--peer-tokens-per-iter", type=click.IntRange(min=1), default=768, show_default=True,
              help="Tokens in one of the peer's iterations (baby: batch 12 x context 64).")
def bench(
    backends: tuple[str, ...],
    preset: str,
    iters: int | None,
    gen_tokens: int,
    device: str | None,
    threads,
    json_path: Path | None,
    optimizer_step: bool,
    contention: bool,
    loads: str,
    modes: str | None,
    max_seconds: float,
    peer_cmd: str | None,
    peer_tokens_per_iter: int,
) -> None:
    """Training and generation tokens/s, FLOPs/token and MFU per backend; or, with --contention, training
    tokens/s on a machine made busy on purpose."""
    from rich.console import Console
    from rich.table import Table

    from minigpt_tui.experiments.bench import bench_backend
    from minigpt_tui.training.config import preset as load_preset

    if contention and optimizer_step:
        raise MiniGPTError("--optimizer-step and --contention are two benchmarks: ask for one at a time")
    if contention:
        bench_contention(preset, iters or 200, loads, modes, max_seconds, peer_cmd, peer_tokens_per_iter, json_path)
        return
    if optimizer_step:
        bench_optimizer(backends, preset, iters or 10, device, threads, json_path)
        return
    iters = iters or 20

    config: TrainConfig = load_preset(preset)
    results = [
        bench_backend(name, config, train_iters=iters, gen_tokens=gen_tokens, device=device, threads=threads)
        for name in backends
    ]
    table = Table(title=f"minigpt bench: preset {preset}")
    for column in (
        "backend",
        "device",
        "threads",
        "train tok/s",
        "ms/iter",
        "gen tok/s (KV cache)",
        "gen tok/s (no cache)",
        "FLOPs/token",
        "MFU",
        "inspect 256 (ms)",
        "ablation tok/s: 1 by 1 / batch of 10",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.backend,
            r.device,
            str(r.threads),
            f"{r.train_tokens_per_s:,.0f}",
            f"{r.train_ms_per_iter:.1f}",
            f"{r.generate_tokens_per_s:,.0f}",
            f"{r.generate_tokens_per_s_nocache:,.0f}",
            f"{r.flops_per_token / 1e6:.2f}M",
            f"{r.mfu:.1%}",
            f"{r.inspect_ms:.1f}",
            f"{r.ablation_tokens_per_s_serial:,.0f} / {r.ablation_tokens_per_s_batched:,.0f}",
        )
    Console(stderr=json_path == STDOUT).print(table)
    if json_path:
        write_output_text(
            json_path, json.dumps({"preset": preset, "results": {r.backend: r.to_dict() for r in results}}, indent=1)
        )


def bench_optimizer(backends: tuple[str, ...], preset: str, rounds: int, device: str | None, threads,
                    json_path: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from minigpt_tui.experiments.bench import UPDATES_PER_ROUND, bench_optimizer_step
    from minigpt_tui.training.config import preset as load_preset

    config = load_preset(preset)
    results = [bench_optimizer_step(name, config, rounds=rounds, device=device, threads=threads) for name in backends]
    console = Console(stderr=json_path == STDOUT)  # stdout is the JSON's when asked there
    for r in results:
        table = Table(title=f"minigpt bench --optimizer-step: preset {preset}, {r.backend} on {r.device}, "
                      f"{r.threads} threads, median of {r.rounds} rounds x {UPDATES_PER_ROUND} updates")
        for column in ("optimizer", "ms per update", "x AdamW"):
            table.add_column(column, justify="right")
        for t in r.timings:
            table.add_row(t.variant, f"{t.ms:.2f}", f"{t.ratio:.2f}")
        console.print(table)
    if json_path:
        document = {"preset": preset, "updates_per_round": UPDATES_PER_ROUND,
                    "results": {r.backend: r.to_dict() for r in results}}
        write_output_text(json_path, json.dumps(document, indent=1))


def bench_contention(preset: str, steps: int, loads: str, modes: str | None, max_seconds: float,
                     peer_cmd: str | None, peer_tokens_per_iter: int, json_path: Path | None) -> None:
    from minigpt_tui.experiments.contention import (
        contention_markdown,
        default_modes,
        parse_loads,
        parse_modes,
        peer_command_line,
        run_contention,
    )
    from minigpt_tui.training.threads import available_cores

    load_list = parse_loads(loads)
    mode_list = parse_modes(modes) if modes else default_modes()
    peer = peer_command_line(peer_cmd) if peer_cmd else None

    def report(m) -> None:
        click.echo(f"{m.load} busy, {m.mode}: {m.tokens_per_s:,.0f} tokens/s over {m.steps} steps "
                   f"({m.threads} threads, {m.wall_s:.0f} s){' ' + m.note if m.note else ''}", err=True)

    results = run_contention(loads=load_list, modes=mode_list, preset=preset, steps=steps, max_seconds=max_seconds,
                             peer_command=peer, peer_tokens_per_iter=peer_tokens_per_iter, on_result=report)
    click.echo(contention_markdown(results), err=json_path == STDOUT)  # stdout is the JSON's when asked there
    if json_path:
        document = {"preset": preset, "steps": steps, "max_seconds": max_seconds, "peer_cmd": peer,
                    "cores": available_cores(), "results": [m.to_dict() for m in results]}
        write_output_text(json_path, json.dumps(document, indent=1))


@main.command(name="export-plots")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=OutputFolder(), default=None,
              help="Folder for the files (default: RUN_DIR/plots of the first run; the README's figures: "
                   "--out visualizations).")
@click.option("--name", type=FileName(), default=None,
              help="File-name stem, no folder part (default: the run folder names joined by '+', shortened).")
@click.option("--wall-clock", is_flag=True, help="One chart instead: val loss against seconds, run beside run.")
@click.option("--target", type=float, default=None, help="With --wall-clock: draw this val loss as a level.")
def export_plots_command(run_dirs: tuple[Path, ...], out: Path | None, name: str | None, wall_clock: bool,
                         target: float | None) -> None:
    """Loss, perplexity and bits/char curves of one or more runs, as PNG and text."""
    from minigpt_tui.plots import default_plots_dir, export_plots, export_wall_clock

    out = out or check_output_folder(default_plots_dir(list(run_dirs)))
    if wall_clock:
        paths = export_wall_clock(list(run_dirs), out, name, target)
    else:
        paths = export_plots(list(run_dirs), out, name, on_warning=lambda line: click.echo(line, err=True))
    for path in paths:
        click.echo(path)


@main.command(name="export-hf")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=OutputFolder())
@checkpoint_choice()
def export_hf(run_dir: Path, out_dir: Path, checkpoint: str) -> None:
    """Write a run as a Hugging Face GPT-2 folder (config, safetensors weights, fast tokenizer)."""
    from minigpt_tui.interop.hf import export_run

    done = export_run(run_dir, out_dir, checkpoint)
    click.echo(
        f"{done.path}: GPT2LMHeadModel, {done.parameters:,} parameters, {done.tokenizer} tokenizer "
        f"({done.checkpoint} checkpoint, step {done.step})"
    )


@main.command(name="import-hf")
@click.argument("hf_dir", type=click.Path(path_type=Path))
@click.argument("out_run", type=OutputFolder())
@data_option
@dataset_option
def import_hf(hf_dir: Path, out_run: Path, data: Path | None, dataset: str | None) -> None:
    """Turn a local GPT-2 folder into a run (step 0) to sample, evaluate or fine-tune with train --resume.

    With --data/--dataset the run is tied to that corpus, like a trained run to its own."""
    from minigpt_tui.interop.hf import import_hf as import_folder
    from minigpt_tui.training.corpus import resolve_corpus

    corpus = resolve_corpus(data, dataset)[0] if data is not None or dataset is not None else None
    run = import_folder(hf_dir, out_run, corpus)
    c = run.config.model
    click.echo(
        f"{run.path}: {c.n_layer} layers, {c.n_head} heads, n_embd {c.n_embd}, context {c.block_size}, "
        f"{run.tokenizer.kind} tokenizer of {run.tokenizer.vocab_size} tokens"
    )


@main.group()
def ablate() -> None:
    """Experiments: temperature, tokenizer, context length, positional encoding, exposure bias."""


@ablate.command(name="temperature")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--temperatures", default="0.5,1.0,1.5", show_default=True, help="Comma-separated.")
@click.option("--samples", type=click.IntRange(min=1), default=5, show_default=True, help="Samples per temperature.")
@click.option("--length", type=click.IntRange(min=1), default=300, show_default=True, help="Tokens per sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i at every temperature.")
@click.option("--prompt", default=None, help="Text the samples continue (default: the start of the first line of "
              "the run's validation text).")
@click.option(
    "--out", type=OutputFolder(), default=None, help="Report folder (default RUN_DIR/ablate-temperature)."
)
@data_option
@dataset_option
@checkpoint_choice()
@backend_option
@device_option
@threads_option()
def ablate_temperature(
    run_dir: Path,
    temperatures: str,
    samples: int,
    length: int,
    seed: int,
    prompt: str | None,
    out: Path | None,
    data: Path | None,
    dataset: str | None,
    checkpoint: str,
    backend: str | None,
    device: str | None,
    threads,
) -> None:
    """Coherence (NLL at T=1) and diversity (distinct-n, repeats, known words) of samples per temperature;
    degenerate samples (blank, looping) are flagged and left out of the diversity figures."""
    from minigpt_tui.experiments.temperature import (
        default_prompt,
        parse_temperatures,
        temperature_ablation,
        temperature_table_markdown,
        write_temperature_report,
    )
    from minigpt_tui.training.corpus import corpus_splits
    from minigpt_tui.training.runs import load_model, open_run
    from minigpt_tui.training.sampling import decode_step
    from minigpt_tui.training.threads import apply_threads

    values = parse_temperatures(temperatures)
    run = open_run(run_dir)
    train_text, val_text = corpus_splits(run, data, dataset)
    prompt = default_prompt(val_text) if prompt is None else prompt
    click.echo(f"prompt: {json.dumps(prompt)}", err=True)
    model, ckpt = load_model(run, which=checkpoint, backend=backend, device=device)
    apply_threads(threads, model.set_threads, decode_step(model, batch=samples))  # the samples decode as one batch
    rows = temperature_ablation(
        model, run.tokenizer, train_text, values, samples=samples, length=length, prompt=prompt, seed=seed
    )
    meta = {
        "run": str(run.path),
        "checkpoint": checkpoint,
        "step": ckpt.state.step,
        "samples": samples,
        "length": length,
        "seed": seed,
        "prompt": prompt,
    }
    for path in write_temperature_report(rows, out or run.path / "ablate-temperature", meta):
        click.echo(path, err=True)
    click.echo(temperature_table_markdown(rows))


def ablation_options(command):
    command = config_options(command)
    for option in reversed(
        [
            data_option,
            dataset_option,
            click.option(
                "--preset", type=click.Choice(list(PRESETS)), default=None, help="Base config (default: baby)."
            ),
            click.option(
                "--config", "config_file", type=click.Path(path_type=Path), help="A TOML file of config fields."
            ),
            click.option(
                "--out",
                type=OutputFolder(),
                required=True,
                help="Folder for the variant runs and the report; rerun to continue: finished variants with "
                "the same config and corpus are reused, interrupted ones resumed.",
            ),
            threads_option("The threads each variant trains with"),
            click.option(
                "--overwrite",
                is_flag=True,
                help="Train every variant afresh, even those --out holds from an earlier ablation.",
            ),
            click.option(
                "--isolate/--in-process",
                default=True,
                show_default=True,
                help="Train each variant in a fresh process (own peak-RSS measurement).",
            ),
        ]
    ):
        command = option(command)
    return command


def run_ablation(kind: str, make_variants, options: dict, extra_scores=None, finish=None) -> list:
    """The shared shell of the training ablations: base config, variants, progress lines, report.

    ``options`` holds the ``ablation_options`` and the config-field flags, as click passed them."""
    from minigpt_tui.experiments.pipeline import run_training_ablation
    from minigpt_tui.experiments.reports import results_markdown
    from minigpt_tui.experiments.variants import check_variants
    from minigpt_tui.training.config import config_from_sources
    from minigpt_tui.training.corpus import resolve_corpus

    out = options["out"]
    base = config_from_sources(options["preset"], options["config_file"], given_fields(options))
    variants = make_variants(base)
    check_variants(variants)  # before the corpus is read or any folder touched
    corpus, note = resolve_corpus(options["data"], options["dataset"])
    if note:
        click.echo(note, err=True)

    def report(r) -> None:
        if r.status == "diverged":
            click.echo(f"{r.name}: diverged (non-finite loss); recorded with NaN scores, {r.wall_s:.0f} s", err=True)
            return
        click.echo(
            f"{r.name}: val bits/char {r.val_bpc:.4f}, {r.train_tokens_per_s:,.0f} tokens/s, "
            f"{r.wall_s:.0f} s, peak RSS {r.peak_rss_mb:.0f} MB",
            err=True,
        )

    results, paths = run_training_ablation(
        kind, base, variants, corpus, out, isolate=options["isolate"], threads=options["threads"],
        overwrite=options["overwrite"], extra_scores=extra_scores, finish=finish, on_result=report,
    )
    for path in paths:
        click.echo(path, err=True)
    click.echo(results_markdown(kind, results))
    return results


def int_list(text: str, option: str) -> list[int]:
    """``"16,32,64"`` -> [16, 32, 64]; an empty list, an empty item or a value given twice is refused."""
    parts = text.split(",")
    if not all(part.strip() for part in parts):
        raise MiniGPTError(f"{option} needs comma-separated integers with none empty, got {text!r}")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise MiniGPTError(f"{option} expects comma-separated integers, got {text!r}") from None
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise MiniGPTError(f"{option} repeats {', '.join(map(str, repeated))}; give each value once")
    return values


def check_no_seed_flag(options: dict) -> None:
    if options.get("seed") is not None:
        raise MiniGPTError("--seed conflicts with --seeds here: give the seeds with --seeds")


@ablate.command(name="tokenizer")
@click.option("--vocab-sizes", default="256,512,1024", show_default=True, help="BPE vocabularies to compare with char.")
@ablation_options
def ablate_tokenizer(vocab_sizes: str, **options) -> None:
    """Character level vs byte-level BPE in val bits/char, at the same tokens seen (steps x tokens/step)."""
    from minigpt_tui.experiments.variants import tokenizer_variants

    sizes = int_list(vocab_sizes, "--vocab-sizes")
    run_ablation("tokenizer", lambda base: tokenizer_variants(base, sizes), options)


@ablate.command(name="context")
@click.option("--block-sizes", default="16,32,64,128,256", show_default=True, help="Context lengths to compare.")
@click.option(
    "--tokens-per-step",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="batch_size = this / context: every variant sees the same tokens.",
)
@click.option(
    "--bench-rounds",
    type=click.IntRange(min=0, max=MAX_BENCH_ROUNDS),
    default=3,
    show_default=True,
    help="Round-robin throughput measurements after training (0: skip).",
)
@ablation_options
def ablate_context(block_sizes: str, tokens_per_step: int, bench_rounds: int, **options) -> None:
    """Context length vs val bits/char, training tokens/s and memory, at a fixed token budget."""
    from minigpt_tui.experiments.variants import context_variants, with_throughput

    blocks = int_list(block_sizes, "--block-sizes")
    finish = (lambda results, configs: with_throughput(results, configs, rounds=bench_rounds)) if bench_rounds else None
    run_ablation("context", lambda base: context_variants(base, blocks, tokens_per_step), options, finish=finish)


@ablate.command(name="posenc")
@ablation_options
def ablate_posenc(**options) -> None:
    """Learned vs sinusoidal positions at the same budget; sinusoidal also on windows up to 4x the context."""
    from minigpt_tui.experiments.probes import length_generalisation
    from minigpt_tui.experiments.variants import posenc_variants

    run_ablation("posenc", posenc_variants, options, extra_scores=length_generalisation)


def seeds_option(default: str):
    return click.option("--seeds", default=default, show_default=True,
                        help="Comma-separated seeds; each row runs once per seed.")


def echo_summary(results: list, out: Path) -> None:
    from minigpt_tui.experiments.speedrun import write_summary

    click.echo(write_summary(results, out))


@ablate.command(name="sweep")
@click.option("--grid", required=True, help='Fields and values, e.g. "learning_rate=1e-3,2e-3 muon_lr_scale=5,10".')
@seeds_option("1337")
@ablation_options
def ablate_sweep(grid: str, seeds: str, **options) -> None:
    """Every combination of the grid over the base config, scored on the whole val split (per seed)."""
    from minigpt_tui.experiments.speedrun import parse_grid, sweep_variants

    check_no_seed_flag(options)
    values, seed_list = parse_grid(grid), int_list(seeds, "--seeds")
    echo_summary(run_ablation("sweep", lambda base: sweep_variants(base, values, seed_list), options), options["out"])


@ablate.command(name="ladder")
@click.option("--rows", default=None, help="Comma-separated rungs to run (default: all; an unknown name lists "
              "them, e.g. --rows list).")
@click.option("--top", type=click.Choice(list(PRESETS)), default="speedrun", show_default=True,
              help="The preset the ladder climbs to.")
@seeds_option("1,2,3")
@ablation_options
def ablate_ladder(rows: str | None, top: str, seeds: str, **options) -> None:
    """The record ladder: nanoGPT's baby config (or --preset/--config), then the speedrun's changes added one
    at a time (each rung keeps those above it) up to the --top preset. Config flags apply to every rung."""
    from minigpt_tui.experiments.speedrun import ladder_variants

    check_no_seed_flag(options)
    seed_list, row_list = int_list(seeds, "--seeds"), rows.split(",") if rows is not None else None
    overrides = given_fields(options)
    results = run_ablation("ladder", lambda base: ladder_variants(seed_list, top, row_list, overrides, base),
                           options)
    echo_summary(results, options["out"])


@ablate.command(name="exposure")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--length", type=click.IntRange(min=1), default=256, show_default=True, help="Tokens per free run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out", type=OutputFolder(), default=None, help="Report folder (default RUN_DIR/ablate-exposure)."
)
@data_option
@dataset_option
@checkpoint_choice()
@backend_option
@device_option
@threads_option()
def ablate_exposure(
    run_dir: Path,
    samples: int,
    length: int,
    seed: int,
    out: Path | None,
    data,
    dataset,
    checkpoint: str,
    backend: str | None,
    device: str | None,
    threads,
) -> None:
    """Teacher forcing vs free running: NLL per position on true prefixes vs the model's own samples."""
    from minigpt_tui.experiments.probes import exposure_bias
    from minigpt_tui.experiments.reports import write_exposure_report
    from minigpt_tui.training.corpus import corpus_for_run
    from minigpt_tui.training.runs import load_model, open_run
    from minigpt_tui.training.sampling import decode_step
    from minigpt_tui.training.threads import apply_threads
    from minigpt_tui.training.trainer import tokenize_corpus

    run = open_run(run_dir)
    val = tokenize_corpus(run, corpus_for_run(run, data, dataset).text).val
    model, _ = load_model(run, which=checkpoint, backend=backend, device=device)
    apply_threads(threads, model.set_threads, decode_step(model, batch=samples))
    scores = exposure_bias(model, run.tokenizer, val, samples=samples, length=length, seed=seed)
    for path in write_exposure_report(scores, out or run.path / "ablate-exposure", {"run": str(run.path)}):
        click.echo(path, err=True)
    click.echo(f"teacher-forced val NLL {scores['teacher_forced_mean']:.4f} nats/token; free-running NLL by position:")
    for span, value in scores["free_running_by_bucket"].items():
        click.echo(f"  {span}: {value:.4f}")
