"""Command line: ``python -m kdutils {train,reproduce,methods,models,figures}``."""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import kdutils as kd
from kdutils import diagrams, plots
from kdutils.config import make_config, own_teacher
from kdutils.distillers import describe_status, get_method
from kdutils.errors import EnvironmentProblem
from kdutils.loop import CheckpointError, NonFiniteLoss, resolve_device
from kdutils.models import create_model, num_params, param_check
from kdutils.pipelines import PIPELINES
from kdutils.reproduce import reproduce
from kdutils.runs import cache_dir, run_dir
from kdutils.speed import book_factor_figure, speed_markdown
from kdutils.train import PartialRunExists

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _hparam(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kdutils", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one run (or load it from the cache)")
    t.add_argument("--method", default="kd")
    t.add_argument("--teacher", default=None, help="default: the profile's teacher")
    t.add_argument("--student", default=None, help="default: the profile's student")
    t.add_argument("--dataset", default=None, help="default: the profile's dataset")
    t.add_argument("--profile", default="quick")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument(
        "--set",
        dest="hparams",
        type=_hparam,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a method hyperparameter, e.g. --set T=8 (repeatable)",
    )
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue a partial run")
    g.add_argument("--restart", action="store_true", help="discard a partial run")
    t.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda if available)"
    )
    t.add_argument(
        "--amp",
        choices=["bf16", "fp16"],
        default=None,
        help="train under autocast: bf16 (CPU with bf16 instructions, or CUDA) or "
        "fp16 (CUDA); a separate cached run from the float32 one",
    )
    t.add_argument(
        "--teacher-views",
        choices=["float16", "float32"],
        default=None,
        help="when the run augments (the paper profile): read the teacher's outputs on every augmentation "
        "view, computed once and stored with the teacher's run for all its "
        "students, instead of running it on every batch (methods that read only "
        "its logits and pooled embedding); a separate cached run",
    )
    t.add_argument("--no-progress", action="store_true")

    sub.add_parser(
        "methods",
        help="list the methods and pipelines: survey section, or added by this "
        "book, or a stand-in",
    )
    sub.add_parser("models", help="list the models with their parameter counts")
    r = sub.add_parser(
        "reproduce",
        help="run every row of the survey's Table 1 for each seed (resumable)",
    )
    r.add_argument("--table", type=int, choices=[1], default=1)
    r.add_argument("--profile", default="quick")
    r.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="default: 5 seeds (the survey reports the mean of 3)",
    )
    r.add_argument("--rows", nargs="+", default=None, help="only these rows (names)")
    r.add_argument(
        "--out", type=Path, default=None, help="default: results/table1/<profile>"
    )
    r.add_argument("--executor", choices=["local", "ray"], default="local")
    r.add_argument(
        "--address", default=None, help="Ray cluster address (default: start one)"
    )
    r.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        help="Ray: GPUs per run (1; or 0.5 to pack two small runs on a GPU)",
    )
    r.add_argument("--cpus-per-run", type=float, default=1.0)
    r.add_argument(
        "--amp",
        choices=["bf16", "fp16"],
        default=None,
        help="train every run under autocast (as train --amp); its own runs, "
        "written by default to results/table1/<profile>-<amp>",
    )
    r.add_argument(
        "--extra",
        action="store_true",
        help="also run the methods newer than the survey's references, as rows beside "
        "Table 1 (extra.md), never mixed into it",
    )
    r.add_argument(
        "--tune",
        action="store_true",
        help="first tune each method's main knob on the validation split "
        "(one seed), then run the chosen settings; written by default to "
        "results/table1/<profile>-tuned",
    )
    r.add_argument(
        "--tune-seed",
        type=int,
        default=None,
        help="the seed of the tuning runs (default 100; not a reported seed)",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many runs the reproduction (and, with --tune, the "
        "search) makes and the projected hours; run nothing",
    )
    f = sub.add_parser("figures", help="write the book's generated figures")
    f.add_argument("--out", type=Path, required=True)
    return p


# Names that ``train`` sets with options of its own; ``--set`` may not.
_OWN_OPTIONS = {
    "method": "--method",
    "seed": "--seed",
    "teacher": "--teacher",
    "student": "--student",
    "dataset": "--dataset",
    "epochs": "--epochs",
    "profile": "--profile",
    "method_args": "--set NAME=VALUE",
}


def _train_folders(cfg) -> list[Path]:
    """The run folders ``train`` may write: the student's and its teacher's."""

    teacher = own_teacher(cfg)
    return [run_dir(cfg)] + ([run_dir(teacher)] if teacher is not None else [])


def _warn_small_teacher(cfg) -> None:
    import torch

    if not (get_method(cfg.method).needs_teacher and cfg.teacher):
        return
    with torch.device("meta"):
        t, s = (
            num_params(create_model(cfg.teacher)),
            num_params(create_model(cfg.student)),
        )
    if t < s:
        print(
            f"warning: the teacher {cfg.teacher} ({t:,} parameters) is smaller than "
            f"the student {cfg.student} ({s:,}); distillation usually teaches a "
            "small model from a larger one",
            file=sys.stderr,
        )


def _train(args) -> int:

    hparams = dict(args.hparams)
    for name in hparams:
        if name in _OWN_OPTIONS:
            raise ValueError(
                f"--set {name}=...: {name} has an option of its own; use "
                f"{_OWN_OPTIONS[name]}"
            )
    overrides = {"method": args.method, "seed": args.seed}
    for name in ("teacher", "student", "dataset", "epochs"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cfg = kd.make_config(args.profile, **overrides, **hparams)

    resolve_device(args.device)
    _warn_small_teacher(cfg)
    folders = _train_folders(cfg)
    args.run_folders = folders
    if args.resume and not any((f / "checkpoint.pt").exists() for f in folders):
        done = (folders[0] / "result.json").exists()
        print(
            f"[resume] {cfg.name} is already finished; loading it"
            if done
            else f"[resume] nothing to resume: no partial run of {cfg.name}"
            + (" or its teacher" if len(folders) > 1 else "")
            + "; training from scratch"
        )
    try:
        res = kd.run(
            cfg,
            resume=args.resume,
            restart=args.restart,
            device=args.device,
            progress=not args.no_progress,
            amp=args.amp,
            teacher_views=args.teacher_views,
        )
    except PartialRunExists as e:
        print(
            f"error: {e}: pass --resume to continue it or --restart to discard it",
            file=sys.stderr,
        )
        return 2
    print(f"result: {Path(res.path) / 'result.json'}")
    return 0


def _dry_run(args) -> int:
    from kdutils.reproduce import TUNE_SEED, table1_rows
    from kdutils.reproduce.plan import count_runs, per_run_hours

    rows = table1_rows()
    if args.rows:
        names = {r.row.lower(): r for r in rows}
        unknown = [r for r in args.rows if r.lower() not in names]
        if unknown:
            raise ValueError(
                f"unknown Table-1 row(s) {unknown}; choose from: "
                + ", ".join(r.row for r in rows)
            )
        rows = [names[r.lower()] for r in args.rows]
    seed = TUNE_SEED if args.tune_seed is None else args.tune_seed
    n = count_runs(
        rows, args.profile, args.seeds, tune=args.tune, tune_seed=seed, amp=args.amp
    )
    per = per_run_hours(args.profile, amp=args.amp)
    lines = [
        ("the authors' defaults", n["defaults"]),
    ]
    if args.tune:
        lines += [
            (f"the search (seed {seed}, one knob after another)", n["tuning"]),
            ("the tuned rows (at most: only changed settings)", n["tuned_at_most"]),
        ]
    print(
        f"Table 1, profile {args.profile}, seeds {args.seeds}"
        + (f", {args.amp}" if args.amp else "")
        + ": runs to train from an empty cache (each run once)"
    )
    for what, k in lines:
        hours = f"  ~{k * per[0]:.1f} h" if per else ""
        print(f"  {what:<52} {k:4d}{hours}")
    if per:
        total = sum(k for _, k in lines)
        print(f"  {'total':<52} {total:4d}  ~{total * per[0]:.1f} h")
        print(f"hours: {per[0] * 3600:.0f} s a run, from {per[1]}")
    else:
        print(f"hours: no measured time per run for profile {args.profile!r}")
    if args.tune:
        name = args.profile if args.amp is None else f"{args.profile}-{args.amp}"
        table = Path("results") / "table1" / name
        out = args.out if args.out is not None else Path(f"{table}-tuned")
        recorded = len(list((table / "runs").glob("*.json")))
        searched = len(list((out / "tuning").glob("*.json")))
        print(
            f"recorded already: {recorded} runs in {table / 'runs'} (a tuned row "
            f"that keeps its defaults reuses its own), {searched} search "
            f"candidates in {out / 'tuning'}"
        )
    return 0


def _reproduce(args) -> int:
    if args.dry_run:
        return _dry_run(args)

    if args.gpus_per_run < 0 or args.cpus_per_run <= 0:
        raise ValueError("--gpus-per-run must be >= 0 and --cpus-per-run > 0")
    extra = {}
    if args.executor == "ray":
        extra = dict(
            address=args.address,
            gpus_per_run=args.gpus_per_run,
            cpus_per_run=args.cpus_per_run,
        )
    out = reproduce(
        args.profile,
        args.seeds,
        out=args.out,
        executor=args.executor,
        rows=args.rows,
        amp=args.amp,
        extra=args.extra,
        tune=args.tune,
        **({} if args.tune_seed is None else {"tune_seed": args.tune_seed}),
        **extra,
    )
    print((Path(out["out"]) / "table.md").read_text())
    if out["extra"]:
        print((Path(out["out"]) / "extra.md").read_text())
    return 0


def _section_key(section: str) -> tuple[int, ...]:
    """ "2.2.3" -> (2, 2, 3), for listing in the survey's order."""
    head = section.split()[0].rstrip(",") if section else ""
    parts = [p for p in head.split(".") if p.isdigit()]
    return tuple(int(p) for p in parts) if parts else (99,)


def _methods() -> int:

    def table(rows: list[tuple[str, str, str, str]], head: str) -> None:
        """One line per row; a stand-in's note (what differs) on a line below."""
        w = max(len(head), *(len(r[0]) for r in rows))
        v = max(len("where it comes from"), *(len(r[1]) for r in rows))
        print(f"{head:<{w}}  {'where it comes from':<{v}}  description")
        for name, status, summary, note in rows:
            print(f"{name:<{w}}  {status:<{v}}  {summary}")
            if note:
                print(f"{'':<{w}}  {'':<{v}}  stands in for {note}")

    def summary(obj) -> str:
        return (obj.__doc__ or "").strip().splitlines()[0].replace("``", "")

    methods = sorted(
        kd.METHODS.items(), key=lambda i: _section_key(i[1].survey_section)
    )
    table(
        [
            (
                n,
                describe_status(c.status, c.survey_section, year=c.status_year),
                summary(c),
                c.status_note,
            )
            for n, c in methods
        ],
        "method",
    )
    print()
    pipes = sorted(PIPELINES.values(), key=lambda p: _section_key(p.section))
    table(
        [
            (
                f"pipelines.{p.name}",
                describe_status(p.status, p.section),
                summary(p.fn),
                p.note,
            )
            for p in pipes
        ],
        "pipeline",
    )
    return 0


def _models() -> int:

    for name, n in param_check().items():
        print(f"{name:<12} {n:>10,d} parameters (3x32x32 input, 10 classes)")
    return 0


def _figures(out: Path) -> int:

    out.mkdir(parents=True, exist_ok=True)
    fig = plots.taxonomy()
    fig.savefig(out / "taxonomy.png", dpi=150, bbox_inches="tight")
    (out / "profiles.md").write_text(_profiles_table())
    (out / "speed.md").write_text(speed_markdown())
    fig = book_factor_figure()
    fig.savefig(out / "speed.png", dpi=150, bbox_inches="tight")
    (out / "diagram_legend.svg").write_text(diagrams.legend().svg())
    print(
        "wrote taxonomy.png, profiles.md, speed.md, speed.png and "
        f"diagram_legend.svg to {out}"
    )
    return 0


def _profiles_table() -> str:
    """The profiles as a Markdown table, generated from ``kdutils.PROFILES``."""

    rows = [
        "| profile | data | train / test images | teacher → student | epochs "
        "| batch | lr, schedule | augment |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("smoke", "quick", "paper"):
        c = make_config(name)
        n = f"{c.train_subset:,}" if c.train_subset else "all"
        t = f"{c.test_subset:,}" if c.test_subset else "all"
        if c.schedule == "cosine":
            sched = "cosine"
        else:
            sched = f"×{c.gamma:g} at {', '.join(map(str, c.milestones))}"
        rows.append(
            f"| `{name}` | {c.dataset} | {n} / {t} | {c.teacher} → {c.student} "
            f"| {c.epochs} | {c.batch_size} | {c.lr:g}, {sched} "
            f"| {'yes' if c.augment else 'no'} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.time()

    try:
        if args.command == "train":
            return _train(args)
        if args.command == "methods":
            return _methods()
        if args.command == "reproduce":
            return _reproduce(args)
        if args.command == "models":
            return _models()
        return _figures(args.out)
    except ValueError as e:  # bad names or values: one line, status 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (EnvironmentProblem, CheckpointError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # no space left, a read-only folder, ...
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted(started, getattr(args, "run_folders", ())))
        return 130


def _os_error(e: OSError) -> str:
    """One line for a failed file operation, with the path and what to do."""
    import errno

    where = f" {e.filename}" if e.filename else ""
    text = f"{e.strerror or type(e).__name__}:{where}".rstrip(":")
    if e.errno == errno.ENOSPC:
        return (
            f"{text}: no space left on the device; free some space, or set "
            "KD_CACHE_DIR (runs) or --out (tables) to a disk with room. A "
            "finished epoch's checkpoint is intact: rerun with --resume"
        )
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR):
        return f"{text}: this path cannot be written; choose a writable folder"
    return text


def _interrupted(since: float, folders: list[Path] | tuple = ()) -> str:
    """What an interrupted command left behind, said truthfully.

    A run writes ``checkpoint.pt`` after each finished epoch; the checkpoints
    written since the command started, and those of the command's own runs
    (``folders``, written by an earlier command), say whether there is
    anything to resume.
    """

    saved = sorted(
        (p.stat().st_mtime, p.parent.name)
        for p in (cache_dir() / "runs").glob("*/checkpoint.pt")
        if p.stat().st_mtime >= since
    )
    older = [f.name for f in folders if (f / "checkpoint.pt").exists()]
    if not saved and older:
        return (
            f"interrupted before another epoch finished: {older[0]} is still "
            "checkpointed where it was; rerun the command with --resume to continue it"
        )
    if not saved:
        return (
            "interrupted before any epoch finished: nothing was checkpointed; "
            "rerun the command to start again"
        )
    return (
        f"interrupted: {saved[-1][1]} is checkpointed at its last finished epoch; "
        "rerun the command with --resume to continue it"
    )
