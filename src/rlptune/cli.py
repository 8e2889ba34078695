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
from .config import FORMER_METHOD_FIELDS, FORMER_PROMPT_FIELDS, flag_hint, flag_table, parse_set, resolve_config
from .errors import RlptuneError
from .options import int_flag
from .sweeps.executors import add_executor_args, executor_settings_from_args
from .sweeps.flags import add_jobs_flag, add_seeds_flag, add_shots_flag


def _add_config_flags(
    parser: argparse.ArgumentParser,
    sections: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    recipe: "_Recipe | None" = None,
) -> None:
    parser.add_argument(
        "--config",
        help="YAML settings file or the name of a shipped preset (coop, rlp, …) (default: none, the method's recipe)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="set any field, e.g. prompt.rank=2 (repeatable; default: none)",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, (section, name, f) in flag_table().items():
        if (sections is not None and section not in sections) or f"{section}.{name}" in skip:
            continue
        group = groups.setdefault(section, parser.add_argument_group(f"{section} settings"))
        hint = flag_hint(section, name)
        dest = f"cfg__{section}__{name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {_default_text(section, name, default, recipe)}{_bounds(f.metadata)})"
        if flag == "backbone" and recipe is not None and recipe.detailed:
            help_text += f"; registered: {_backbone_names()}"
        help_text = help_text.replace("%", "%%")
        if hint is bool:
            group.add_argument(
                f"--{flag}", dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif hint is list or typing.get_origin(hint) is list:
            group.add_argument(
                f"--{flag}",
                dest=dest,
                action="append",
                default=None,
                metavar=name.upper(),
                help=help_text + " (repeatable)",
            )
        elif hint is dict:
            continue
        else:
            group.add_argument(f"--{flag}", dest=dest, default=None, metavar=name.upper(), help=help_text)


@dataclasses.dataclass
class _Recipe:
    """What a command's settings default to: the method's official recipe for a protocol and shot count."""

    method: str
    protocol: str
    shots: int
    values: dict[str, Any]  # "train.epochs" -> 200
    base: dict[str, Any]  # the command's own defaults, "data.shots" -> 0
    detailed: bool  # help was asked for: backbones and recipe values are looked up (imports the registries)

    def label(self) -> str:
        return f"{self.method} recipe, {self.protocol}, {self.shots} shots"


def _default_text(section: str, name: str, default: Any, recipe: "_Recipe | None") -> str:
    key = f"{section}.{name}"
    if recipe is not None and key in recipe.base:
        return repr(recipe.base[key])
    if recipe is not None and key in recipe.values:
        return f"{recipe.values[key]!r} from the {recipe.label()}"
    if recipe is not None and not recipe.detailed and key.split(".")[0] in ("train", "prompt", "method"):
        return f"{default!r}, or the method's recipe"
    return repr(default)


def _backbone_names() -> str:
    """The registered backbone loaders, as ``--backbone``'s help lists them (plug-ins included)."""
    from . import registry
    from .backbones.loader import backbone_loaders

    registry.load_builtin_plugins()
    return ", ".join(n for n in backbone_loaders() if n != "missing checkpoint")


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` / ``--flag=VALUE`` on a command line, if given (the last one wins)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def _recipe_for(
    argv: Sequence[str], command: str, method: str | None = None, base: dict[str, Any] | None = None
) -> _Recipe:
    """The recipe ``command``'s line resolves to (``--method``, ``--protocol``, ``--shots`` as typed, else the
    defaults); its values are looked up only when that command's help is asked for (they import the registries)."""
    from .config import DataSettings
    from .defaults import DEFAULT_METHOD
    from .options import coerce

    method = method or _flag_value(argv, "--method") or DEFAULT_METHOD
    protocol = _flag_value(argv, "--protocol") or DataSettings().protocol
    base = dict(base or {})
    shots = base.get("data.shots", DataSettings().shots)
    try:
        shots = coerce(_flag_value(argv, "--shots"), int, "--shots") if _flag_value(argv, "--shots") else shots
    except RlptuneError:
        pass  # reported when the settings are resolved
    detailed = list(argv[:1]) == [command] and ("-h" in argv or "--help" in argv)
    values: dict[str, Any] = {}
    if detailed:
        from . import recipes

        try:
            preset = recipes.preset(method, protocol, shots) if method in recipes.recipe_methods() else {}
        except RlptuneError:
            preset = {}
        for section, fields in preset.items():
            for name, value in fields.items():
                if name != "options":
                    values[f"{section}.{name}"] = value
        values["method.name"] = method
    return _Recipe(method, protocol, shots, values, base, detailed)


def _bounds(metadata: Any) -> str:
    """A number setting's declared range for its help text (checked by rlptune.options.check_ranges)."""
    low, high = metadata.get("low"), metadata.get("high")
    if high is not None:
        return f"; {low if low is not None else 'any'} to {high:,}"
    return f"; at least {low}" if low is not None else ""


def _method_in(argv: Sequence[str]) -> str | None:
    """The ``--method NAME`` of a command line, if any (its options become flags of that command); the last one
    wins, as it does for the setting itself."""
    return _flag_value(argv, "--method")


def _add_method_option_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """The typed options of the method named on the command line, as flags with their defaults and help."""
    from . import registry
    from .defaults import DEFAULT_METHOD
    from .options import option_fields

    name = _method_in(argv) or (DEFAULT_METHOD if list(argv[:1]) == ["train"] else None)
    if not name:
        return  # another command: the method registry (and torch) are not imported to build its parser
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
        if (
            field_name in FORMER_METHOD_FIELDS
        ):  # a knob several methods share keeps its one flag (--csc, --text-chunk …),
            for action in parser._actions:  # which now sets this method's option (as --set method.options.X does)
                if action.dest == f"cfg__method__{field_name}":
                    action.dest = f"opt__{field_name}"
            continue
        flag = "--" + field_name.replace("_", "-")
        if flag in taken:
            flag = f"--{name.replace('_', '-')}-{field_name.replace('_', '-')}"
        text = f"{help_text} (default: {default!r}{_bounds(metadata[field_name])})"
        if hint is bool:
            group.add_argument(
                flag, dest=f"opt__{field_name}", action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            group.add_argument(flag, dest=f"opt__{field_name}", default=None, metavar=field_name.upper(), help=text)


def _add_prompt_option_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """The typed options of the prompt kind named on the command line (``--prompt KIND``), as flags setting
    ``prompt.options.*``; the low-rank kind's keep the flags they always had (``--rank``, ``--dropout`` …)."""
    from . import registry
    from .options import option_fields

    kind = _flag_value(argv, "--prompt")
    if not kind:
        return
    try:
        options_class = registry.prompt_options_class(kind)
    except RlptuneError:
        return  # reported when the settings are resolved, with a suggestion
    fields = [f for f in option_fields(options_class) if f[0] not in FORMER_PROMPT_FIELDS]
    if not fields:
        return
    taken = {a for action in parser._actions for a in action.option_strings}
    metadata = {f.name: f.metadata for f in dataclasses.fields(options_class)}
    group = parser.add_argument_group(f"{kind} prompt options (prompt.options.*)")
    for field_name, default, help_text, hint in fields:
        flag = "--" + field_name.replace("_", "-")
        if flag in taken:
            flag = f"--{kind.replace('_', '-')}-{field_name.replace('_', '-')}"
        text = f"{help_text} (default: {default!r}{_bounds(metadata[field_name])})".replace("%", "%%")
        if hint is bool:
            group.add_argument(
                flag, dest=f"popt__{field_name}", action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            group.add_argument(flag, dest=f"popt__{field_name}", default=None, metavar=field_name.upper(), help=text)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out = parse_set(getattr(args, "set", []) or [])
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            out.setdefault(section, {})[name] = value
        elif key.startswith("opt__") and value is not None:
            out.setdefault("method", {}).setdefault("options", {})[key[len("opt__") :]] = value
        elif key.startswith("popt__") and value is not None:
            out.setdefault("prompt", {}).setdefault("options", {})[key[len("popt__") :]] = value
    return out


def config_from_args(args: argparse.Namespace, base: dict | None = None):
    return resolve_config(getattr(args, "config", None), _overrides(args), base=base)


def _print_metrics(title: str, metrics: dict) -> None:
    ci = f" (95% CI {metrics['ci95'][0]:.1f}-{metrics['ci95'][1]:.1f})" if metrics.get("ci95") else ""
    print(f"{title}: top-1 {metrics['top1']:.2f}%{ci}  macro-F1 {metrics['macro_f1']:.2f}%  (n={metrics['n']})")


def _print_against_zero_shot(zero_shot: dict, notes: list, split: str) -> None:
    """The zero-shot baseline of the same split beside the result, and what small numbers cannot show."""
    if split in zero_shot:
        _print_metrics(f"zero-shot {split}", zero_shot[split])
    for note in notes:
        print(note)


# -- commands ------------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.api import train
    from .rundir import ADAPTER_DIR

    config = config_from_args(args)
    output = Path(args.output)
    # the text as typed: an empty -o is refused, not read as the current directory
    result = train(config, args.output, resume=args.resume, overwrite=args.overwrite, progress=_progress(args))
    print(
        f"method {result['method']}  trainable params {result['trainable_params']:,}  epochs {result['epochs']}  ({result['train_seconds']:.1f}s)"
    )
    if "test" in result["metrics"]:
        _print_metrics("test", result["metrics"]["test"])
    _print_against_zero_shot(result.get("zero_shot", {}), result.get("notes", []), "test")
    print(f"run directory: {output}  (adapter: {output / ADAPTER_DIR})")
    return 0


def _data_splits(args: argparse.Namespace, method):
    """eval's data: what the adapter recorded (its dataset and absolute root), unless the data flags say otherwise."""
    from .engine.api import eval_config, prepare_dataset

    config = eval_config(method, None, _overrides(args))
    return config, prepare_dataset(config)


def _load_adapter(args: argparse.Namespace):
    """The adapter on its recorded backbone, or on ``--backbone`` (the identity is checked either way)."""
    from .backbones import load_backbone
    from .engine.adapter import load_adapter

    device = args.device or "auto"
    from .backbones.precision import check_precision

    precision = check_precision(
        getattr(args, "precision", None) or "auto", "--precision"
    )  # auto: per the adapter's method
    backbone = load_backbone(args.backbone, device=device, precision=precision) if args.backbone else None
    return load_adapter(args.adapter, backbone=backbone, device=device, precision=precision)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: redirected logs get no bar frames."""
    return not args.no_progress and sys.stderr.isatty()


def _check_metrics_json(args: argparse.Namespace) -> None:
    """``--json FILE`` replaces an earlier metrics file and nothing else; checked before any work."""
    if args.json is not None:
        from .rundir import check_output_file

        check_output_file(
            args.json, "--json", lambda first: first.lstrip().startswith(b"{") and b'"top1"' in first, "a metrics JSON"
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine.pipeline import evaluate_against_zero_shot

    _check_metrics_json(args)
    method = _load_adapter(args)
    config, splits = _data_splits(args, method)
    metrics = evaluate_against_zero_shot(method, splits, args.split, batch_size=config.eval.batch_size)
    _print_metrics(f"{splits.name} {args.split} ({method.registered_name})", metrics)
    _print_against_zero_shot(metrics.get("zero_shot", {}), metrics.get("notes", []), args.split)
    if args.json:
        from . import io

        io.write_json(args.json, metrics)
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .engine.api import evaluate, prepare_dataset, resolve_backbone, zero_shot_method

    _check_metrics_json(args)
    config = resolve_config(
        getattr(args, "config", None), _overrides(args), base={"method": {"name": "zeroshot"}, "data": {"shots": 0}}
    )
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
    from .data.common import read_class_list

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
    rows = predict(method, args.images, top_k=args.top_k, progress=_progress(args), image_policy=args.image_policy)
    k = max(1, min(args.top_k, len(method.classnames)))
    skipped = [row for row in rows if "error" in row]
    if args.output:
        write_predictions_csv(args.output, rows, k, error_column=args.image_policy == "skip")
        print(
            f"wrote {len(rows) - len(skipped)} predictions to {args.output}"
            + (f" ({len(skipped)} skipped image(s) listed in its error column)" if skipped else "")
        )
    else:
        for row in rows:
            if "error" not in row:
                best = ", ".join(f"{_printable(ln)} {p:.3f}" for ln, p in zip(row["labels"], row["probs"]))
                print(f"{_printable(row['path'])}\t{best}")
    if skipped:  # at the end, after every prediction: the list is what a user reads last
        print(f"skipped {len(skipped)} unreadable image(s) (--image-policy skip):", file=sys.stderr)
        for row in skipped:
            print(f"  {_printable(row['error'])}", file=sys.stderr)
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
    from .prompts import prompt_layout

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
        # the prompt kind's own sizes (low rank: "rank"), named by the kind
        **{
            field.rsplit(".", 1)[-1]: value
            for field, value, _ in prompt_layout(config.prompt.kind).sizes(config.prompt)
        },
        "trainable_params": method.num_trainable(),
        "formula": method.parameter_formula() if hasattr(method, "parameter_formula") else None,
    }


def cmd_export(args: argparse.Namespace) -> int:
    """``export --format classifier``: the merged class features + a JSON, for open_clip without rlptune."""
    from .engine.export import check_classifier_output, export_classifier

    check_classifier_output(args.output)  # before loading anything
    args.precision = "fp32"  # the exported numbers are float32 whatever the adapter trained in
    method = _load_adapter(args)
    tensor_path, json_path = export_classifier(method, args.output)
    print(
        f"wrote {tensor_path} (class features: {len(method.classnames)} classes) and {json_path} (class names, logit scale)"
    )
    return 0


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


def recipe_lines(method: str, protocol: str = "few-shot", shots: int = 16, dataset: str | None = None) -> list[str]:
    """The resolved recipe of ``method`` for ``protocol`` and ``shots``: one ``key = value  [source]`` line each."""
    from . import recipes

    if method not in recipes.recipe_methods():
        return [f"{method}: no official recipe (the settings' defaults apply)"]
    preset = recipes.preset(method, protocol, shots, dataset)
    lines = [
        f"{method} recipe for {protocol}, {shots} shots{f', {dataset}' if dataset else ''} "
        f"(values from these sources; anything given explicitly wins):"
    ]
    for key, source in recipes.sources(method, protocol, shots, dataset).items():
        section, _, name = key.partition(".")
        value = (
            preset[section]["options"][name[len("options.") :]]
            if name.startswith("options.")
            else preset[section][name]
        )
        lines.append(f"  {key} = {value!r}  [{source}]")
    return lines


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import list_methods
    from .recipe_listing import methods_table

    if args.method:
        from . import registry

        registry.method_entry(args.method)  # an unknown name is one line with a suggestion
        print("\n".join(recipe_lines(args.method, args.protocol, args.shots, args.dataset)))
        return 0
    print("methods:", ", ".join(list_methods()))
    print()
    print(methods_table())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .protocols import aggregate, default_targets
    from .sweeps.runner import make_specs, parse_grid, run_sweep

    protocol = registry.get_protocol(args.protocol, what="protocol")  # one line with a suggestion
    datasets = args.datasets or _default_datasets(protocol)
    overrides = _overrides(args)
    targets = None
    if protocol.uses_targets:
        targets = (
            {d: list(args.targets) for d in datasets} if args.targets else default_targets(args.protocol, datasets)
        )
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
    _, markdown = aggregate(
        results, args.protocol, results / "tables" / args.protocol, run_dirs=[s.run_dir(results) for s in specs]
    )
    print(markdown)
    print(f"tables: {results / 'tables'}")
    return 0


def _default_datasets(protocol) -> list[str]:
    if protocol.default_sources:
        return list(protocol.default_sources)  # e.g. the transfer protocols' source: micro-shapes
    from .micro.suite import MICRO_DATASETS

    return list(MICRO_DATASETS)


def cmd_report(args: argparse.Namespace) -> int:
    from .report.writer import write_report

    paths = write_report(args.results, args.output)
    print(f"report: {Path(args.output) / 'report.html'} ({len(paths)} files)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .report.writer import analyze_runs, render_analysis_markdown

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
    "learning-rate": "lr",
    "learningrate": "lr",
    "base-lr": "lr",
    "max-epoch": "epochs",
    "max-epochs": "epochs",
    "num-epochs": "epochs",
    "n-epochs": "epochs",
    "epoch": "epochs",
    "bs": "batch-size",
    "batch": "batch-size",
    "wd": "weight-decay",
    "num-shots": "shots",
    "n-shots": "shots",
    "nctx": "n-ctx",
    "num-ctx": "n-ctx",
    "model": "backbone",
    "arch": "backbone",
    "out": "output",
    "output-dir": "output",
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


class _HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default: the ones whose text does not already say it get it appended."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Descriptions and epilogs keep their line breaks (the recipe listing is one value per line)."""
        lines = text.splitlines()
        return "\n".join(
            super(_HelpFormatter, self)._fill_text(line, width, indent + line[: len(line) - len(line.lstrip())])
            if line.strip()
            else ""
            for line in lines
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        value = action.default
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)) and not value:
            shown = "off"
        elif value is None:
            shown = "not set"
        elif isinstance(value, (list, tuple)):
            shown = " ".join(str(v) for v in value) or "none"
        else:
            shown = str(value)
        return f"{text} (default: {shown.replace('%', '%%')})".strip()


class _Parser(argparse.ArgumentParser):
    """argparse with a did-you-mean for unknown flags (``--learning_rate`` → ``--lr``) and defaults in every help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

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
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this plug-in module first (repeatable; also $RLPTUNE_PLUGINS and the "
        "rlptune.plugins entry points); a sweep's workers import it too",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train_recipe = _recipe_for(argv, "train")
    p = sub.add_parser(
        "train",
        help="train a method and write a run directory (adapter, metrics, result)",
        epilog="\n".join(recipe_lines(train_recipe.method, train_recipe.protocol, train_recipe.shots))
        if train_recipe.detailed
        else None,
    )
    _add_config_flags(p, recipe=train_recipe)
    _add_method_option_flags(p, argv)
    _add_prompt_option_flags(p, argv)
    p.add_argument("-o", "--output", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue a killed or finished run with the same settings")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the rlptune run the output folder holds (only when the new run succeeds; never a "
        "folder that is not a run)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn only on a terminal anyway)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate an adapter on a dataset split")
    p.add_argument("adapter", help="adapter folder (run_dir/adapter)")
    _add_config_flags(
        p, sections=("data", "eval"), skip=("eval.top_k",), recipe=_recipe_for(argv, "eval", base={"data.shots": 0})
    )
    p.add_argument(
        "--backbone",
        default=None,
        help="backbone spec to load the adapter on (default: the one it records; identity checked)",
    )
    p.add_argument("--device", default=None, help="device: auto, cpu, cuda, cuda:1 … (default: auto)")
    p.add_argument(
        "--precision",
        default="auto",
        metavar="PRECISION",
        help="auto | fp32 | bf16 | fp16 autocast (default auto: the method's official fp16 on CUDA, fp32 on a CPU)",
    )
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split to evaluate")
    p.add_argument("--json", help="also write the metrics to this JSON file (default: print only)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("zeroshot", help="zero-shot accuracy with hand-written templates")
    _add_config_flags(
        p,
        sections=("backbone", "data", "method", "eval"),
        skip=(
            "eval.top_k",
            "method.class_specific",
            "method.class_token_position",
            "method.text_chunk",
            "method.checkpoint_text",
            "method.shared_prefix",
            "method.name",
            "method.options",
        ),
        recipe=_recipe_for(argv, "zeroshot", method="zeroshot", base={"data.shots": 0}),
    )
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split to evaluate")
    p.add_argument("--json", help="also write the metrics to this JSON file (default: print only)")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("predict", help="top-k labels for images or folders, as CSV")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument(
        "--top-k",
        type=int_flag("--top-k", low=1),
        default=5,
        help="labels per image, most probable first (clipped to the class count; default: 5)",
    )
    p.add_argument(
        "--classes",
        help="comma-separated class names or a file (one per line): overrides the adapter's "
        "classes (default: the adapter's)",
    )
    p.add_argument("-o", "--output", help="CSV file to write (default: print)")
    p.add_argument(
        "--backbone",
        default=None,
        help="backbone spec to load the adapter on (default: the one it records; identity checked)",
    )
    p.add_argument("--device", default=None, help="device: auto, cpu, cuda, cuda:1 … (default: auto)")
    p.add_argument(
        "--precision",
        default="auto",
        metavar="PRECISION",
        help="auto | fp32 | bf16 | fp16 autocast (default auto: the method's official fp16 on CUDA, fp32 on a CPU)",
    )
    p.add_argument(
        "--image-policy",
        default="error",
        choices=("error", "skip"),
        help="an image that does not decode: error stops with one line naming it; skip predicts the others "
        "and lists the skipped files at the end and in the CSV's error column (default: error)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn only on a terminal anyway)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("push", help="upload an adapter folder (with its model card) to the Hugging Face Hub")
    p.add_argument("adapter", help="adapter folder (run_dir/adapter)")
    p.add_argument("repo_id", help="Hub repository, e.g. my-org/pets-rlp")
    p.add_argument("--private", action="store_true", help="create the repository as private (default: public)")
    p.add_argument("--message", default=None, help="commit message (default: generated)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("export", help="export an adapter for use without rlptune (a classifier for open_clip)")
    p.add_argument("adapter", help="adapter folder (run_dir/adapter)")
    p.add_argument(
        "--format",
        default="classifier",
        choices=("classifier",),
        help="classifier: the merged class features (safetensors) and a JSON of class names and logit scale "
        "(default: classifier; see docs/ADAPTERS.md for the open_clip lines that use them)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE.safetensors",
        help="the class features file; its JSON is written beside it as FILE.json",
    )
    p.add_argument(
        "--backbone",
        default=None,
        help="backbone spec to load the adapter on (default: the one it records; identity checked)",
    )
    p.add_argument("--device", default="cpu", help="device to merge the prompt on (default: cpu)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("params", help="trainable-parameter count of a method on a backbone")
    _add_config_flags(p, sections=("backbone", "method", "prompt"), recipe=_recipe_for(argv, "params"))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("run", help="run a protocol over datasets × methods × shots × seeds (× a settings grid)")
    names = registry.protocol_names()  # the registered protocols, plug-ins' included
    p.add_argument("protocol", metavar="PROTOCOL", help=f"a registered protocol: {', '.join(names)}")
    p.add_argument(
        "--datasets", nargs="+", help="dataset names (default: the micro suite; source for cross-dataset/domain-gen)"
    )
    p.add_argument(
        "--targets", nargs="+", help="target datasets (cross-dataset / domain-gen; default: the literature's)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["zeroshot", "coop", "rlp"],
        metavar="METHOD",
        help="methods to run, each with its own recipe (`rlptune methods NAME`; default: zeroshot coop rlp)",
    )
    add_seeds_flag(p, [1, 2, 3])
    add_shots_flag(p, [16], "shots per class, one run per count")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SECTION.FIELD=V1,V2",
        help="sweep a setting (repeatable: grid product)",
    )
    p.add_argument("--results", default="results", help="results folder (finished runs are skipped)")
    add_jobs_flag(p)
    add_executor_args(p)
    _add_config_flags(
        p,
        sections=("method", "prompt", "train", "eval", "cache", "auto"),
        recipe=_Recipe("each method's", "the protocol's", 16, {}, {}, False),
    )
    p.add_argument(
        "--backbone",
        default="micro",
        help="backbone spec of every run (default: micro, whose suite "
        "the default datasets are; micro-v2 brings its own)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding real datasets (CoOp layout; default: $RLPTUNE_DATA, or none for the micro suites)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="tables, figures and report.md/report.html from a results folder")
    p.add_argument("results", help="results folder of `rlptune run` (or any folder of run directories)")
    p.add_argument("-o", "--output", default="report", help="report folder (tables, figures, report.md/.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "analyze",
        help="prompt singular values / information density per run, and their correlation with new-class accuracy",
    )
    p.add_argument("runs", nargs="+", help="run directories or folders of runs")
    p.add_argument("--k", type=int_flag("--k", low=1), default=1, help="k of ID_k")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "methods",
        help="list registered methods and every official recipe value, or one method's "
        "recipe resolved for a protocol and shot count, with sources",
    )
    p.add_argument(
        "method",
        nargs="?",
        default=None,
        help="print this method's resolved recipe (default: list every method and recipe)",
    )
    p.add_argument(
        "--protocol",
        default="few-shot",
        help="a registered protocol whose recipe to resolve (`rlptune run --help` lists them; default: few-shot)",
    )
    p.add_argument("--shots", type=int_flag("--shots", low=0), default=16, help="shots per class")
    p.add_argument("--dataset", default=None, help="dataset, for recipes with per-dataset values (default: none)")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser(
        "demo", help="the main job on the embedded micro world v2: zero-shot vs CoOp vs RLP, base-to-new"
    )
    p.add_argument("-o", "--output", default="rlptune-demo", help="output folder")
    add_seeds_flag(p, [1, 2], each="one run per seed, method and dataset")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    add_jobs_flag(p, min(2, os.cpu_count() or 1), default_text="2, or 1 on a one-core machine")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cache", help="what the feature cache holds (per backbone and kind), and clearing it")
    p.add_argument(
        "action",
        choices=("info", "ls", "clear"),
        help="info: sizes per kind and backbone; ls: one line per entry; clear: delete matching entries",
    )
    p.add_argument("--cache-dir", default=None, help="cache folder (default $RLPTUNE_CACHE or ~/.cache/rlptune)")
    p.add_argument(
        "--kind",
        action="append",
        default=None,
        metavar="KIND",
        help="features (centre crops), views, micro, memo or leftovers (repeatable; default: all)",
    )
    p.add_argument("--backbone", default=None, help="only this backbone's entries (its identity or architecture name)")
    p.add_argument("--older-than", default=None, metavar="DAYS", help="only entries not used for more than DAYS days")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("pretrain-micro", help="pretrain the micro CLIP on the procedural world", add_help=False)
    p.set_defaults(func=None)  # main() hands its arguments to the pretraining command as they are

    from .serve.cli import add_serve_parser  # fastapi/uvicorn are imported only when serving

    add_serve_parser(sub)

    from .reproduce.command import add_reproduce_parser  # the study imports torch only when it runs

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
