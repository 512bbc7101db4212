"""The ``gflow`` command. Thin: each command calls the library function a Python user
would call, and turns bad input into one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import FIELD_TYPES, TUPLE_ITEMS, RunConfig
from .errors import DiskFull, GflowError
from .sweep import ENGINES


class _Choices:
    """A module's tuple of names as argparse choices, imported when a command is parsed or its
    help printed, not when the parser is built: ``gflow --help`` loads neither torch nor
    matplotlib."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def _names(self) -> tuple[str, ...]:
        import importlib

        return getattr(importlib.import_module(self.module, __package__), self.name)

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        self.exit(2, f"gflow: error: {message}\n")


def _json_object(text: str) -> dict[str, Any]:
    """A flag's JSON object (keyword arguments of a factory), e.g. '{"width": 64}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not a JSON object ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, same name with dashes, its help the field's own (what it
    means, the choices, the default); unset flags keep the config's value."""
    group = p.add_argument_group("run configuration (RunConfig fields; override --config)")
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        base, _ = FIELD_TYPES[f.name]
        help = RunConfig.help(f.name).replace("%", "%%")
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif base is tuple:
            item = TUPLE_ITEMS[f.name]
            group.add_argument(flag, type=item, nargs="+", default=None, metavar="CLASS" if item is int else "T",
                               help=help)
        elif base is dict:
            group.add_argument(flag, type=_json_object, default=None, metavar="JSON", help=help)
        else:
            metavar = "MODULE:FUNCTION" if f.name in ("model", "data") else {
                str: "NAME" if f.name in _NAMED else "TEXT", int: "N", float: "X"}[base]
            group.add_argument(flag, type=base, default=None, metavar=metavar, help=help)


_NAMED = ("dataset", "labels", "arch", "act", "parametrization", "loss", "solver", "flow", "controller",
          "kernel_outputs", "device", "dtype", "batchnorm", "save_spacing", "weight_decay_center", "width_from")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base = RunConfig.load(args.config) if args.config else RunConfig()
    changes = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name) is not None}
    return base.replace(**changes)


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import resume, run

    if args.resume and os.path.isdir(args.resume) or not args.resume and (config_from_args(args).ensemble > 1):
        return _run_ensemble(args)
    if args.resume:
        traj = resume(args.resume, max_steps=args.max_steps, max_wall=args.max_wall, progress=None,
                      trust_code=args.trust_code)
    else:
        traj = run(config_from_args(args), args.out, overwrite=args.overwrite, progress=None)
    print(format_summary(traj))
    return 0 if traj.status == "finished" else 1


def _run_ensemble(args: argparse.Namespace) -> int:
    """An ensemble's members into a directory (or the unfinished ones of an ensemble
    directory, with --resume), a line per member, a summary."""
    from .ensembles import one_by_one, resume_ensemble, run_ensemble
    from .sweep import summarize

    def line(result: dict[str, str]) -> None:
        print(f"{result['status']:8s} {result['action']:6s} {result['name']}", flush=True)

    if args.resume:
        results = resume_ensemble(args.resume, on_member=line, trust_code=args.trust_code)
    else:
        cfg = config_from_args(args)
        if args.out == "run.h5":  # the single run's default file name is no directory name
            raise GflowError(f"--ensemble {cfg.ensemble}: give --out DIR, the directory of the members' files")
        why = one_by_one(cfg)
        how = f"members integrated one after another: {why}" if why else "members integrated together (vmap)"
        header = f"ensemble of {cfg.ensemble} (seeds {cfg.seed}..{cfg.seed + cfg.ensemble - 1}) into {args.out}; {how}"
        results = run_ensemble(cfg, args.out, on_member=line, on_start=lambda: print(header, flush=True))
    print(summarize(results))
    return 0 if all(r["status"] == "finished" for r in results) else 1


def _describe_sources(traj: Any) -> list[str]:
    """The data, network and loss lines: the config's built-in fields, or what the file
    recorded of the user's model, data and loss."""
    cfg, sources = traj.config, traj.sources
    data, model, loss = sources["data"], sources["model"], sources["loss"]
    if data.get("source") == "builtin":
        data_line = f"{cfg.dataset} ptr={cfg.ptr} pte={cfg.pte} labels={cfg.labels}" + (f" pca={cfg.pca}" if cfg.pca else "")
    else:
        shape = "x".join(map(str, data.get("x_shape", [])))
        where = data.get("reference", "arrays given in Python") + (f" {json.dumps(data['args'])}" if data.get("args") else "")
        data_line = f"{where}: inputs {shape} {data.get('x_dtype', '')}, labels {data.get('y_dtype', '')}"
    if model.get("source") == "builtin":
        model_line = f"{cfg.arch} depth={cfg.depth} width={cfg.width} act={cfg.act} {cfg.parametrization} seed={cfg.seed}"
    else:
        where = model.get("reference", "a module given in Python") + (
            f" {json.dumps(model['args'])}" if model.get("args") else "")
        model_line = f"{model.get('class', '?')} from {where}, seed={cfg.seed}"
    outputs = model.get("outputs", 1)
    model_line += f", {traj.n_params} parameters" + (f", {outputs} outputs" if outputs > 1 else "")
    loss_line = f"{loss.get('name', cfg.loss)} alpha={cfg.alpha:g}" + (" centred" if cfg.centered else "")
    if cfg.weight_decay:
        loss_line += f", weight decay {cfg.weight_decay:g}/2 |w - {'w0' if cfg.weight_decay_center == 'init' else '0'}|^2"
    lines = [f"  data         {data_line}", f"  network      {model_line}"]
    eval_mode = describe_eval_mode(model)
    if eval_mode:
        lines.append(f"  eval mode    {eval_mode}")
    return [*lines, f"  loss         {loss_line}"]


def describe_eval_mode(model: dict[str, Any]) -> str:
    """What the network's mode-dependent layers do in the run (it runs in eval mode): the
    BatchNorm policy and the layers it applied to, the Dropout layers that are off."""
    parts = []
    batchnorm = model.get("batchnorm") or {}
    layers = [str(n) for n in batchnorm.get("layers", [])]
    if batchnorm.get("policy") == "calibrate":
        parts.append(f"BatchNorm {', '.join(layers)} calibrated on the {batchnorm.get('points', '?')} training points "
                     "at w0")
    elif batchnorm.get("policy") == "as-is":
        parts.append(f"BatchNorm {', '.join(layers)} with the module's own running statistics")
    others = [n for n in model.get("eval_mode_layers", []) if n not in layers]
    if others:
        parts.append(f"{', '.join(others)} in eval mode (Dropout off)")
    return "; ".join(parts)


def format_summary(traj: Any) -> str:
    """A readable summary of a stored run: config, status, counts, final metrics."""
    s = traj.summary()
    cfg = traj.config
    lines = [
        f"{traj.path}",
        f"  status       {s['status']} ({s['stop_reason']})",
        *_describe_sources(traj),
        f"  solver       {cfg.describe_method()}",
    ]
    if "t" in s:
        lines += [
            f"  reached      t = {s['t']:.6g} of {cfg.t_end:g} in {int(s['step'])} steps, "
            f"{int(s['evals'])} gradient evaluations, {s['wall']:.1f} s",
            f"  train        loss {s['train_loss']:.4e}  error {s['train_err']:.4f}",
            f"  test         loss {s['test_loss']:.4e}  error {s['test_err']:.4f}",
        ]
        if "saved_t" in s:  # the loss is the latest step's; errors and test loss wait for a save
            lines[-2] = (f"  train        loss {s['train_loss']:.4e} at t = {s['t']:.6g}; error {s['train_err']:.4f} "
                         f"at the last save, t = {s['saved_t']:.6g}")
            lines[-1] += f" at t = {s['saved_t']:.6g}"
        if cfg.flow == "central" and len(traj):
            last = traj.saves.iloc[-1]
            lines.append(f"  central      {int(last['central_k'])} eigenvalue(s) at the edge 2/lr = {2 / cfg.lr:.6g}; "
                         f"predicted GD loss {last['central_loss']:.4e}, oscillation variance tr X "
                         f"{last['central_sigma2']:.4e}; {int(last['central_hvps'])} Hessian-vector and "
                         f"{int(last['central_thirds'])} third-derivative products")
    disk = traj.storage()
    lines.append(f"  stored       {disk['saves']} saves ({disk['states']} with the state, {disk['forwards']} forward "
                 f"passes for interpolated ones), {disk['bytes'] / 1e6:.2f} MB, "
                 f"{disk['bytes_per_save'] / 1e3:.1f} kB per save")
    return "\n".join(lines)


def _cmd_show(args: argparse.Namespace) -> int:
    from .store import TrajectoryFile  # the file alone: no network, no torch
    from .store.listing import run_files

    failed = 0
    for path in run_files(args.files):
        try:
            print(format_summary(TrajectoryFile(path)))
        except GflowError as e:  # one damaged run of a directory does not hide the others
            print(f"gflow: error: {e}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import bench

    out = Path(args.out)
    if args.which == "ensemble":
        return _bench_ensemble(args, out)
    if args.which == "overhead":
        if args.methods or args.tolerances or args.problems:
            raise GflowError("--problems, --methods and --tolerances select solver variants: they apply to "
                             "`gflow bench solvers` only")
        out.mkdir(parents=True, exist_ok=True)
        cfg = RunConfig.load(args.config) if args.config else RunConfig()  # the default run and save policy
        cfg = cfg.replace(t_end=min(cfg.t_end, 100.0)) if args.quick else cfg
        numbers = bench.overhead(cfg, repeats=1 if args.quick else 3)
        for k, v in numbers.items():
            print(f"{k:24s} {v:.4g}")
        (out / "overhead.json").write_text(json.dumps(numbers, indent=1) + "\n")
        print(f"wrote {out / 'overhead.json'}")
        return 0
    if args.config:
        raise GflowError("--config applies to `gflow bench overhead` only; `gflow bench solvers` runs its own problems")
    try:
        chosen = bench.problems(args.problems, quick=args.quick)
        every = [v for cfg in chosen.values() for v in bench.default_variants(cfg.momentum, args.quick)]
        bench.check_selection(every, args.methods, args.tolerances)  # before anything runs
    except ValueError as e:
        raise GflowError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for name, cfg in chosen.items():  # written after each problem: a long benchmark keeps what it measured
        tables.append(bench.solvers_benchmark({name: cfg}, args.methods, args.tolerances, quick=args.quick,
                                             cache=out / "references"))
        pd.concat(tables).to_csv(out / "solvers.csv", index=False)
    table = pd.concat(tables)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    bench.work_precision_plot(table, out / "work_precision.png")
    (out / "solvers.md").write_text(bench.markdown_tables(table))
    print(f"wrote {out / 'solvers.csv'}, {out / 'solvers.md'} and {out / 'work_precision.png'}")
    return 0


def _bench_ensemble(args: argparse.Namespace, out: Path) -> int:
    from . import throughput

    if args.methods or args.tolerances or args.problems or args.config:
        raise GflowError("--problems, --methods, --tolerances and --config apply to `gflow bench solvers` and "
                         "`overhead`; `gflow bench ensemble` runs the built-in network at its own widths")
    ks, widths = ((1, 4), (10, 30)) if args.quick else (throughput.KS, throughput.WIDTHS)
    base = RunConfig(t_end=10.0 if args.quick else 100.0)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'width':>6} {'K':>4} {'evals':>7} {'together s':>11} {'one by one s':>13} {'speedup':>8}")

    def line(row: dict) -> None:
        print(f"{row['width']:6d} {row['K']:4d} {row['evals_per_member']:7.0f} {row['together_s']:11.2f} "
              f"{row['one_by_one_s']:13.2f} {row['speedup']:8.2f}", flush=True)

    table = throughput.ensemble_throughput(base, ks, widths, on_row=line)
    table.to_csv(out / "ensemble.csv", index=False)
    (out / "ensemble.md").write_text(throughput.markdown(table))
    throughput.plot(table, out / "ensemble.png")
    print(f"wrote {out / 'ensemble.csv'}, {out / 'ensemble.md'} and {out / 'ensemble.png'}")
    return 0


def _cmd_t1(args: argparse.Namespace) -> int:
    from .timescales import t1_table

    table = t1_table(args.files, eps=args.eps, trust_code=args.trust_code)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    table = compare(args.a, args.b, trust_code=args.trust_code)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import JOBQUEUES, Jobs, Sweep, run_sweep, summarize

    sweep = Sweep.load(args.file)
    jobs = Jobs(args.jobs, args.job_cores, args.job_memory, args.walltime, args.queue, args.account,
                tuple(args.job_directive or ()))
    if args.engine not in JOBQUEUES:
        if args.job_script or any(getattr(args, a) != default for a, default in _JOB_DEFAULTS.items()):
            raise GflowError(f"--jobs, --job-cores, --job-memory, --walltime, --queue, --account, --job-directive and "
                             f"--job-script describe batch jobs: give --engine one of {', '.join(JOBQUEUES)}")
        jobs = None
    elif args.job_script:  # what would be queued, without queueing it
        cluster = jobs.cluster(args.engine)
        print(cluster.job_script())
        cluster.close()
        return 0
    results = run_sweep(sweep, args.out, engine=args.engine, workers=args.workers, scheduler=args.scheduler,
                        on_result=_line_per_run(len(sweep.runs())), jobs=jobs, ensembles=args.ensembles)
    print(summarize(results))
    return 0 if all(r["status"] == "finished" for r in results) else 1


_JOB_DEFAULTS = {"jobs": 1, "job_cores": 1, "job_memory": "4GB", "walltime": "01:00:00", "queue": None,
                 "account": None, "job_directive": None}


def _line_per_run(total: int) -> Callable[[dict[str, str]], None] | None:
    """A printer of one line per finished run, where no progress bar shows (stderr is not a
    terminal: a log file, a batch job); None on a terminal, which has the bar."""
    if sys.stderr.isatty():
        return None
    done = []

    def line(result: dict[str, str]) -> None:
        done.append(result)
        print(f"[{len(done)}/{total}] {result['status']:8s} {result['action']:6s} {result['name']}", flush=True)

    return line


def _cmd_query(args: argparse.Namespace) -> int:
    from .catalog import catalog, readable, where

    table = where(catalog(args.dir), args.where or [])
    if args.columns and args.columns != ["all"]:
        missing = [c for c in args.columns if c not in table.columns]
        if missing:
            raise GflowError(f"--columns: no column {missing[0]!r}; columns: {', '.join(table.columns)}")
        table = table[args.columns]
    elif not args.columns and args.format == "table":
        table = readable(table)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    elif args.format == "json":
        print(table.to_json(orient="records", indent=1))
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot

    print(f"wrote {plot(args.dir, args.kind, args.output)}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments import reproduce, sweep_file
    from .sweep import Sweep

    total = len(Sweep.load(sweep_file(args.name)).runs())
    for path in reproduce(args.name, args.out, workers=args.workers, engine=args.engine,
                          on_result=_line_per_run(total)):
        print(f"wrote {path}")
    return 0


def _add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true",
                   help="import and call the model factory, data loader or loss that a file's config names (code "
                        "chosen by whoever made the file: only for files you trust); built-in networks need no opt-in")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gflow", description="Neural-network training as an ODE, integrated accurately.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="integrate one run and store it in HDF5")
    p.add_argument("--config", help="TOML file of RunConfig fields")
    p.add_argument("--out", default="run.h5", help="output HDF5 file (default run.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--resume", metavar="FILE", help="continue a killed or stopped run stored in FILE (or every "
                   "unfinished member of an ensemble directory); --max-steps and --max-wall set new budgets, other "
                   "flags are ignored")
    _add_trust_flag(p)
    _add_config_flags(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="benchmarks: work-precision of every method (solvers); cost per evaluation "
                       "(overhead); ensembles together against one by one (ensemble)")
    p.add_argument("which", choices=["solvers", "overhead", "ensemble"])
    p.add_argument("--problems", nargs="+", metavar="NAME", choices=_Choices(".bench", "PROBLEMS"),
                   help="solvers only: problems to run, among %(choices)s (default: the digits ones)")
    p.add_argument("--methods", nargs="+", metavar="NAME",
                   help="solvers only: method labels such as 'gradient-ratio (paper)' or solver names "
                        "such as chebyshev (default: all)")
    p.add_argument("--tolerances", nargs="+", type=float, metavar="TOL",
                   help="solvers only: keep the variants at these tolerances / bounds (default: all)")
    p.add_argument("--config", help="overhead only: the run to measure, a TOML of RunConfig fields (default: the "
                   "default run); e.g. your own model by its factory reference")
    p.add_argument("--quick", action="store_true", help="tiny problems, for a smoke test")
    p.add_argument("--out", default="benchmarks/results", help="directory for the CSV and the plot")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("t1", help="time scale t1 at which each run leaves the tangent space")
    p.add_argument("files", nargs="+", help="trajectory files, or directories of them (a sweep's, an ensemble's)")
    p.add_argument("--eps", type=float, default=0.1, help="threshold of the gap and kernel estimators (default 0.1)")
    p.add_argument("--format", choices=["table", "csv"], default="table")
    _add_trust_flag(p)
    p.set_defaults(func=_cmd_t1)

    p = sub.add_parser("compare", help="two runs on one time axis: distance between their learned functions, "
                       "loss gap, lr * sharpness (e.g. gradient descent beside the flow)")
    p.add_argument("a", help="trajectory file read at its own save times")
    p.add_argument("b", help="trajectory file read at a's save times (replayed between its saves)")
    p.add_argument("--format", choices=["table", "csv"], default="table")
    _add_trust_flag(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("sweep", help="run a grid of runs (a sweep TOML file) into a directory; re-run to finish it")
    p.add_argument("file", help="sweep TOML: [base] RunConfig fields, [grid] field = [values] or {log = [lo, hi, n]}")
    p.add_argument("--out", required=True, help="directory of the runs (one HDF5 file per run)")
    p.add_argument("--engine", default="local", choices=ENGINES, help="local processes or Dask distributed")
    p.add_argument("--workers", type=int, help="runs at a time (default: one per CPU core)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (default: a LocalCluster)")
    p.add_argument("--no-ensembles", dest="ensembles", action="store_false",
                   help="run every grid point as its own task; by default points that differ only in seed are one "
                        "ensemble, integrated together where ensemble_eval has them so (vmap, or auto on a GPU)")
    jobs = p.add_argument_group("batch jobs (--engine slurm, pbs, sge or lsf: workers in jobs queued through "
                                "dask-jobqueue; docs/CLUSTERS.md)")
    jobs.add_argument("--jobs", type=int, default=_JOB_DEFAULTS["jobs"], help="jobs to queue (default 1)")
    jobs.add_argument("--job-cores", type=int, default=_JOB_DEFAULTS["job_cores"],
                      help="cores per job, each a one-run-at-a-time worker (default 1)")
    jobs.add_argument("--job-memory", default=_JOB_DEFAULTS["job_memory"], help="memory per job (default 4GB)")
    jobs.add_argument("--walltime", default=_JOB_DEFAULTS["walltime"], help="time limit per job (default 01:00:00)")
    jobs.add_argument("--queue", help="queue or partition")
    jobs.add_argument("--account", help="account to charge")
    jobs.add_argument("--job-directive", action="append", metavar="LINE",
                      help="an extra scheduler directive, e.g. --job-directive=--gres=gpu:1 (repeatable)")
    jobs.add_argument("--job-script", action="store_true", help="print the job script that would be queued, and exit")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("query", help="a table of the runs in a directory: config fields and results")
    p.add_argument("dir")
    p.add_argument("--where", action="append", metavar="EXPR", help="COLUMN OP VALUE, e.g. alpha>=1 (repeatable: and)")
    p.add_argument("--columns", nargs="+", help="columns to show, or 'all' (default: all for csv and json; for the "
                   "table, the config fields whose values differ between the runs, then the results any run has)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("plot", help="the paper's figures from a directory of runs")
    p.add_argument("dir")
    p.add_argument("--kind", required=True, choices=_Choices(".plots", "KINDS"), metavar="KIND",
                   help="the figure: %(choices)s")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("reproduce", help="run one of the paper's experiments and draw its figures")
    p.add_argument("name", help="digits (FC, 2 cores, about 10 minutes), fashion (FC at the paper's size: cluster work) or cnn (small CNN on 7x7 Fashion-MNIST: about an hour)")
    p.add_argument("--out", help="directory (default: ./NAME)")
    p.add_argument("--engine", default="local", choices=ENGINES)
    p.add_argument("--workers", type=int)
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("show", help="summarise stored runs")
    p.add_argument("files", nargs="+", help="trajectory files, or directories of them (a sweep's, an ensemble's)")
    p.set_defaults(func=_cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except GflowError as e:
        print(f"gflow: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output left (gflow ... | head): nothing is wrong with the work
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 128 + signal.SIGPIPE
    except OSError as e:
        if e.filename is None or e.errno not in _PATH_ERRORS:
            raise
        # A path given on the command line that the system refuses (too long, read-only,
        # not a directory, ...): bad input, found where no check of gflow's looked first.
        print(f"gflow: error: cannot use {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except DiskFull as e:
        print(f"gflow: error: {e}", file=sys.stderr)
        if e.unclean:  # HDF5 would crash closing the file at exit: end here, the file as a kill leaves it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    except KeyboardInterrupt as e:
        name = getattr(e, "signame", "SIGINT")
        target = (args.resume or args.out) if args.command == "run" else None
        if target and not os.path.isfile(target):  # stopped before the file was made: claim none
            target = None
        where = f"; {target} holds every save so far (status stopped): gflow run --resume {target}" if target else ""
        print(f"gflow: stopped by {name}{where}", file=sys.stderr)
        return 128 + int(getattr(signal.Signals, name, signal.SIGINT))


_PATH_ERRORS = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ELOOP,
                errno.ENOENT}


if __name__ == "__main__":
    sys.exit(main())
