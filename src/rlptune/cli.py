"""Command line: parses settings, calls the library, prints tables. Errors users cause print one line, exit 2."""

from __future__ import annotations

import difflib

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from . import __version__, registry
from .config import flag_table, parse_set, resolve_config
from .errors import RlptuneError
from .protocols.executors import add_executor_args, executor_settings_from_args


def _add_config_flags(parser: argparse.ArgumentParser, sections: Sequence[str] | None = None, skip: Sequence[str] = ()) -> None:
    from .config import _section_classes

    classes = _section_classes()
    parser.add_argument("--config", help="YAML settings file or the name of a shipped preset (coop, rlp, …)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="set any field, e.g. prompt.rank=2")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, (section, name, f) in flag_table().items():
        if (sections is not None and section not in sections) or f"{section}.{name}" in skip:
            continue
        group = groups.setdefault(section, parser.add_argument_group(f"{section} settings"))
        hint = typing.get_type_hints(classes[section])[name]
        dest = f"cfg__{section}__{name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default!r}, or the method's recipe{_bounds(f.metadata)})"
        if hint is bool:
            group.add_argument(f"--{flag}", dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif hint is list or typing.get_origin(hint) is list:
            group.add_argument(f"--{flag}", dest=dest, action="append", default=None, help=help_text + " (repeatable)")
        elif hint is dict:
            continue
        else:
            group.add_argument(f"--{flag}", dest=dest, default=None, metavar=name.upper(), help=help_text)


def _bounds(metadata: Any) -> str:
    """A number setting's declared range for its help text (checked by rlptune.options.check_ranges)."""
    low, high = metadata.get("low"), metadata.get("high")
    if high is not None:
        return f"; {low if low is not None else 'any'} to {high:,}"
    return f"; at least {low}" if low is not None else ""


def _method_in(argv: Sequence[str]) -> str | None:
    """The ``--method NAME`` of a command line, if any (its options become flags of that command)."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return None


def _add_method_option_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """The typed options of the method named on the command line, as flags with their defaults and help."""
    from . import registry
    from .options import option_fields

    name = _method_in(argv)
    if not name:
        return
    try:
        entry = registry.method_entry(name)
    except RlptuneError:
        return  # reported when the settings are resolved, with a suggestion
    fields = option_fields(entry.options_class)
    if not fields:
        return
    taken = {a for action in parser._actions for a in action.option_strings}
    metadata = {f.name: f.metadata for f in dataclasses.fields(entry.options_class)}
    group = parser.add_argument_group(f"{name} options (method.options.*)")
    for field_name, default, help_text, hint in fields:
        flag = "--" + field_name.replace("_", "-")
        if flag in taken:
            flag = f"--{name.replace('_', '-')}-{field_name.replace('_', '-')}"
        text = f"{help_text} (default: {default!r}{_bounds(metadata[field_name])})"
        if hint is bool:
            group.add_argument(flag, dest=f"opt__{field_name}", action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=f"opt__{field_name}", default=None, metavar=field_name.upper(), help=text)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out = parse_set(getattr(args, "set", []) or [])
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            out.setdefault(section, {})[name] = value
        elif key.startswith("opt__") and value is not None:
            out.setdefault("method", {}).setdefault("options", {})[key[len("opt__"):]] = value
    return out


def config_from_args(args: argparse.Namespace, base: dict | None = None):
    return resolve_config(getattr(args, "config", None), _overrides(args), base=base)


def _print_metrics(title: str, metrics: dict) -> None:
    print(f"{title}: top-1 {metrics['top1']:.2f}%  macro-F1 {metrics['macro_f1']:.2f}%  (n={metrics['n']})")


# -- commands ------------------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from .engine.api import train

    config = config_from_args(args)
    output = Path(args.output)
    # the text as typed: an empty -o is refused, not read as the current directory
    result = train(config, args.output, resume=args.resume, overwrite=args.overwrite, progress=_progress(args))
    print(f"method {result['method']}  trainable params {result['trainable_params']:,}  epochs {result['epochs']}  ({result['train_seconds']:.1f}s)")
    if "test" in result["metrics"]:
        _print_metrics("test", result["metrics"]["test"])
    print(f"run directory: {output}  (adapter: {output / 'adapter'})")
    return 0


def _data_splits(args: argparse.Namespace):
    from .engine.api import prepare_dataset

    config = resolve_config(None, _overrides(args), base={"data": {"shots": 0}})
    return config, prepare_dataset(config)


def _load_adapter(args: argparse.Namespace):
    """The adapter on its recorded backbone, or on ``--backbone`` (the identity is checked either way)."""
    from .backbones import load_backbone
    from .engine.adapter import load_adapter

    device = args.device or "auto"
    from .backbones.precision import check_precision

    precision = check_precision(getattr(args, "precision", None) or "auto", "--precision")  # auto: per the adapter's method
    backbone = load_backbone(args.backbone, device=device, precision=precision) if args.backbone else None
    return load_adapter(args.adapter, backbone=backbone, device=device, precision=precision)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: redirected logs get no bar frames."""
    return not args.no_progress and sys.stderr.isatty()


def _check_metrics_json(args: argparse.Namespace) -> None:
    """``--json FILE`` replaces an earlier metrics file and nothing else; checked before any work."""
    if args.json is not None:
        from .rundir import check_output_file

        check_output_file(args.json, "--json", lambda first: first.lstrip().startswith(b"{") and b'"top1"' in first,
                          "a metrics JSON")


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine.api import evaluate

    _check_metrics_json(args)
    method = _load_adapter(args)
    config, splits = _data_splits(args)
    metrics = evaluate(method, splits, args.split, batch_size=config.eval.batch_size)
    _print_metrics(f"{splits.name} {args.split} ({method.registered_name})", metrics)
    if args.json:
        from . import io

        io.write_json(args.json, metrics)
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .engine.api import evaluate, prepare_dataset, resolve_backbone, zero_shot_method

    _check_metrics_json(args)
    config = resolve_config(getattr(args, "config", None), _overrides(args), base={"method": {"name": "zeroshot"}, "data": {"shots": 0}})
    splits = prepare_dataset(config)
    backbone = resolve_backbone(config)
    method = zero_shot_method(config, backbone, splits.classnames, splits.template)
    metrics = evaluate(method, splits, args.split, batch_size=config.eval.batch_size)
    _print_metrics(f"{splits.name} {args.split} (zero-shot, {len(method.templates())} template(s))", metrics)
    if args.json:
        from . import io

        io.write_json(args.json, metrics)
    return 0


def _read_classes(value: str) -> list[str]:
    from .data._common import read_class_list

    return read_class_list(value)


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.api import check_predictions_output, predict, write_predictions_csv

    if args.top_k < 1:
        raise RlptuneError(f"--top-k must be >= 1, got {args.top_k}")
    if args.output is not None:
        check_predictions_output(args.output)
    method = _load_adapter(args)
    if args.classes:
        method.set_classnames(_read_classes(args.classes))
    rows = predict(method, args.images, top_k=args.top_k, progress=_progress(args))
    k = max(1, min(args.top_k, len(method.classnames)))
    if args.output:
        write_predictions_csv(args.output, rows, k)
        print(f"wrote {len(rows)} predictions to {args.output}")
    else:
        for row in rows:
            best = ", ".join(f"{_printable(ln)} {p:.3f}" for ln, p in zip(row["labels"], row["probs"]))
            print(f"{_printable(row['path'])}\t{best}")
    return 0


def _printable(text: str) -> str:
    """``text`` on one line: backslashes and unprintable characters (tab, newline, other controls, line
    separators) written as Python writes them (``\\t``, ``\\n``, ``\\x1b``, ``\\\\``), so every printed line of
    ``predict`` is one image and a name can be read back unambiguously."""
    return "".join(repr(ch)[1:-1] if ch == "\\" or not ch.isprintable() else ch for ch in str(text))


def parameter_counts(config) -> dict[str, Any]:
    """Trainable parameters of the configured method on the configured backbone (random weights suffice)."""
    from .backbones import load_backbone
    from .methods import build_method

    spec = config.backbone.name
    if ":" not in spec and not spec.endswith(".json") and spec != "micro" and not Path(spec).exists():
        spec = f"random:{spec}"  # counting needs the architecture only
    backbone = load_backbone(spec, device="cpu")
    method = build_method(config, backbone, ["class"] * 2)
    return {
        "backbone": config.backbone.name,
        "text_width": backbone.text.width,
        "method": config.method.name,
        "prompt": config.prompt.kind,
        "n_ctx": getattr(method, "n_ctx", None),
        "rank": config.prompt.rank if config.prompt.kind == "lowrank" else None,
        "trainable_params": method.num_trainable(),
        "formula": method.parameter_formula() if hasattr(method, "parameter_formula") else None,
    }


def cmd_push(args: argparse.Namespace) -> int:
    from .engine.hub import push_to_hub

    url = push_to_hub(args.adapter, args.repo_id, private=args.private or None, commit_message=args.message)
    print(f"pushed {args.adapter} to {args.repo_id}: {url}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    counts = parameter_counts(config)
    if args.json:
        print(json.dumps(counts))
        return 0
    for key, value in counts.items():
        if value is not None:
            print(f"{key:>17}: {value:,}" if isinstance(value, int) else f"{key:>17}: {value}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from . import recipes
    from .methods import list_methods

    print("methods:", ", ".join(list_methods()))
    print()
    print(recipes.methods_table())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .protocols import aggregate, default_targets, make_specs, parse_grid, run_sweep

    protocol = registry.get_protocol(args.protocol, what="protocol")  # one line with a suggestion
    datasets = args.datasets or _default_datasets(protocol)
    overrides = _overrides(args)
    targets = None
    if protocol.uses_targets:
        targets = {d: list(args.targets) for d in datasets} if args.targets else default_targets(args.protocol, datasets)
    specs = make_specs(
        args.protocol,
        datasets,
        args.methods,
        args.seeds,
        args.shots,
        backbone=args.backbone,
        data_root=args.data_root,
        grid=parse_grid(args.grid),
        targets=targets,
        config_file=args.config,
        base_overrides=overrides,
    )
    results = Path(args.results)
    run_sweep(specs, args.results, executor=executor_settings_from_args(args))  # as typed: an empty one is refused
    _, markdown = aggregate(results, args.protocol, results / "tables" / args.protocol, run_dirs=[s.run_dir(results) for s in specs])
    print(markdown)
    print(f"tables: {results / 'tables'}")
    return 0


def _default_datasets(protocol) -> list[str]:
    if protocol.default_sources:
        return list(protocol.default_sources)  # e.g. the transfer protocols' source: micro-shapes
    from .micro.suite import MICRO_DATASETS

    return list(MICRO_DATASETS)


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import write_report

    paths = write_report(args.results, args.output)
    print(f"report: {Path(args.output) / 'report.html'} ({len(paths)} files)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.report import analyze_runs, render_analysis_markdown

    table, correlation = analyze_runs(args.runs, k=args.k)
    print(render_analysis_markdown(table, correlation))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .cachedir import run_command

    if args.action == "info" and (args.kind or args.backbone or args.older_than is not None):
        raise RlptuneError("cache info: --kind, --backbone and --older-than select entries for ls and clear")
    print(run_command(args.action, args.cache_dir, args.kind, args.backbone, args.older_than, args.json))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_pretrain_micro(args: argparse.Namespace, rest: list[str]) -> int:
    """``--version 2`` hands the arguments to micro v2's recipe; otherwise the shipped (v1) micro CLIP's."""
    version, remaining = "1", list(rest)
    for i, arg in enumerate(rest):
        if arg == "--version" and i + 1 < len(rest):
            version, remaining = rest[i + 1], rest[:i] + rest[i + 2 :]
        elif arg.startswith("--version="):
            version, remaining = arg.split("=", 1)[1], rest[:i] + rest[i + 1 :]
    if version not in ("1", "2"):
        raise RlptuneError(f"pretrain-micro --version {version!r}: expected 1 (the shipped micro CLIP) or 2 (micro v2)")
    if version == "2":
        from .micro.v2.pretrain import main as pretrain_main
    else:
        from .micro.pretrain import main as pretrain_main
    return int(pretrain_main(remaining) or 0)


#: Names people type for a flag, from other tools, and the flag they mean.
FLAG_SYNONYMS = {
    "learning-rate": "lr", "learningrate": "lr", "base-lr": "lr", "max-epoch": "epochs", "max-epochs": "epochs",
    "num-epochs": "epochs", "n-epochs": "epochs", "epoch": "epochs", "bs": "batch-size", "batch": "batch-size",
    "wd": "weight-decay", "num-shots": "shots", "n-shots": "shots", "nctx": "n-ctx", "num-ctx": "n-ctx",
    "model": "backbone", "arch": "backbone", "out": "output", "output-dir": "output",
}


def suggest_flag(token: str, flags: Sequence[str]) -> str | None:
    """The flag a mistyped one most likely means: a known synonym, the same name with dashes, then edit distance."""

    key = token.lstrip("-").split("=", 1)[0].replace("_", "-").lower()
    names = {f.lstrip("-") for f in flags if f.startswith("--")}
    for candidate in (key, FLAG_SYNONYMS.get(key)):
        if candidate in names:
            return f"--{candidate}"
    close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return f"--{close[0]}" if close else None


class _Parser(argparse.ArgumentParser):
    """argparse with a did-you-mean for unknown flags (``--learning_rate`` → ``--lr``)."""

    def error(self, message: str):  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            unknown = [t for t in message.split(":", 1)[1].split() if t.startswith("--")]
            flags = [o for p in _all_parsers(self) for a in p._actions for o in a.option_strings]
            hint = suggest_flag(unknown[0], flags) if unknown else None
            if hint:
                message += f" (did you mean {hint}?)"
        super().error(message)


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_all_parsers(sub))
    return found


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="rlptune", description="Adapt a frozen CLIP with a tiny prompt (CoOp, RLP, …).")
    parser.add_argument("--version", action="version", version=f"rlptune {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import this plug-in module first (repeatable; also $RLPTUNE_PLUGINS and the "
                             "rlptune.plugins entry points); a sweep's workers import it too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a method and write a run directory (adapter, metrics, result)")
    _add_config_flags(p)
    _add_method_option_flags(p, argv)
    p.add_argument("-o", "--output", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue a killed or finished run with the same settings")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the rlptune run the output folder holds (only when the new run succeeds; never a "
                        "folder that is not a run)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate an adapter on a dataset split")
    p.add_argument("adapter", help="adapter folder (run_dir/adapter)")
    _add_config_flags(p, sections=("data", "eval"), skip=("eval.top_k",))
    p.add_argument("--backbone", default=None, help="backbone spec to load the adapter on (default: the one it records; identity checked)")
    p.add_argument("--device", default=None, help="device: auto, cpu, cuda, cuda:1 … (default: auto)")
    p.add_argument("--precision", default="auto", metavar="PRECISION",
                   help="auto | fp32 | bf16 | fp16 autocast (default auto: the method's official fp16 on CUDA, fp32 on a CPU)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("zeroshot", help="zero-shot accuracy with hand-written templates")
    _add_config_flags(p, sections=("backbone", "data", "method", "eval"), skip=("eval.top_k", "method.class_specific", "method.class_token_position", "method.text_chunk", "method.checkpoint_text", "method.shared_prefix", "method.name", "method.options"))
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("predict", help="top-k labels for images or folders, as CSV")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--classes", help="comma-separated class names or a file (one per line): overrides the adapter's classes")
    p.add_argument("-o", "--output", help="CSV file to write (default: print)")
    p.add_argument("--backbone", default=None, help="backbone spec to load the adapter on (default: the one it records; identity checked)")
    p.add_argument("--device", default=None, help="device: auto, cpu, cuda, cuda:1 … (default: auto)")
    p.add_argument("--precision", default="auto", metavar="PRECISION",
                   help="auto | fp32 | bf16 | fp16 autocast (default auto: the method's official fp16 on CUDA, fp32 on a CPU)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("push", help="upload an adapter folder (with its model card) to the Hugging Face Hub")
    p.add_argument("adapter", help="adapter folder (run_dir/adapter)")
    p.add_argument("repo_id", help="Hub repository, e.g. my-org/pets-rlp")
    p.add_argument("--private", action="store_true", help="create the repository as private (default: public)")
    p.add_argument("--message", default=None, help="commit message (default: generated)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("params", help="trainable-parameter count of a method on a backbone")
    _add_config_flags(p, sections=("backbone", "method", "prompt"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("run", help="run a protocol over datasets × methods × shots × seeds (× a settings grid)")
    names = registry.protocol_names()  # the registered protocols, plug-ins' included
    p.add_argument("protocol", metavar="PROTOCOL", help=f"a registered protocol: {', '.join(names)}")
    p.add_argument("--datasets", nargs="+", help="dataset names (default: the micro suite; source for cross-dataset/domain-gen)")
    p.add_argument("--targets", nargs="+", help="target datasets (cross-dataset / domain-gen; default: the literature's)")
    p.add_argument("--methods", nargs="+", default=["zeroshot", "coop", "rlp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--shots", nargs="+", type=int, default=[16])
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.FIELD=V1,V2", help="sweep a setting (repeatable: grid product)")
    p.add_argument("--results", default="results", help="results folder (finished runs are skipped)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    add_executor_args(p)
    _add_config_flags(p, sections=("method", "prompt", "train", "eval", "cache"))
    p.add_argument("--backbone", default="micro")
    p.add_argument("--data-root", default=None)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="tables, figures and report.md/report.html from a results folder")
    p.add_argument("results")
    p.add_argument("-o", "--output", default="report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("analyze", help="prompt singular values / information density per run, and their correlation with new-class accuracy")
    p.add_argument("runs", nargs="+", help="run directories or folders of runs")
    p.add_argument("--k", type=int, default=1, help="k of ID_k")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("methods", help="list registered methods and every official recipe value")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo", help="the main job on the embedded micro world v2: zero-shot vs CoOp vs RLP, base-to-new")
    p.add_argument("-o", "--output", default="rlptune-demo", help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs in parallel (processes; default: 2, or 1 on a one-core machine)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cache", help="what the feature cache holds (per backbone and kind), and clearing it")
    p.add_argument("action", choices=("info", "ls", "clear"),
                   help="info: sizes per kind and backbone; ls: one line per entry; clear: delete matching entries")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $RLPTUNE_CACHE or ~/.cache/rlptune)")
    p.add_argument("--kind", action="append", default=None, metavar="KIND",
                   help="features (centre crops), views, micro, memo or leftovers (repeatable; default: all)")
    p.add_argument("--backbone", default=None, help="only this backbone's entries (its identity or architecture name)")
    p.add_argument("--older-than", default=None, metavar="DAYS", help="only entries not used for more than DAYS days")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("pretrain-micro", help="pretrain the micro CLIP on the procedural world", add_help=False)
    p.set_defaults(func=None)  # main() hands its arguments to the pretraining command as they are

    from .serve.cli import add_serve_parser  # issue 18; fastapi/uvicorn are imported only when serving

    add_serve_parser(sub)

    from .evidence import add_reproduce_parser  # issue 17; the study imports torch only when it runs

    add_reproduce_parser(sub)
    return parser


def _plugins_in(argv: Sequence[str]) -> list[str]:
    """The ``--plugin MODULE`` options before the command (they must load before the parser lists methods and
    protocols)."""
    found, i = [], 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
            i += 1
        elif argv[i].startswith("--plugin="):
            found.append(argv[i].split("=", 1)[1])
        i += 1
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv
    try:
        registry.load_plugins(_plugins_in(argv), where="--plugin")
        parser = build_parser(argv)
        if argv and argv[0] == "pretrain-micro":
            return cmd_pretrain_micro(argparse.Namespace(), argv[1:])
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except RlptuneError as exc:
        if show_traceback:
            raise
        print(f"rlptune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlptune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
