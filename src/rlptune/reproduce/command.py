"""The ``reproduce`` command line: its parser and the call into the study.

Kept apart from the study so that building the CLI parser imports neither torch nor the methods: the study is
imported when the command runs (this module is a command-line entry point, like :mod:`rlptune.cli`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..options import int_flag
from ..sweeps.executors import add_executor_args, executor_settings_from_args
from ..sweeps.flags import add_jobs_flag, add_seeds_flag, add_shots_flag
from .settings import PAPER_PARTS, PARTS, StudySettings


def add_reproduce_parser(sub: Any) -> None:
    """Add ``reproduce`` to the CLI's subparsers."""
    p = sub.add_parser(
        "reproduce", help="the RLP paper's experiments as one resumable study, with a verdict on each claim"
    )
    p.add_argument("study", choices=("rlp",), help="which paper's study (rlp: arXiv 2312.10813)")
    p.add_argument(
        "--backbone",
        default="micro-v2",
        help="backbone spec; micro-v2 (default: every method runs on it) and micro bring their dataset suites",
    )
    p.add_argument("--datasets", nargs="+", default=None, help="datasets (default: the backbone's micro suite)")
    p.add_argument("--data-root", default=None, help="root of real datasets (CoOp layout)")
    add_seeds_flag(p, [1, 2, 3], each="one run per seed and setting")
    add_shots_flag(p, 16, "shots of the base-to-new, cross-dataset and domain-gen runs")
    p.add_argument(
        "--epochs",
        type=int_flag("--epochs", low=0),
        default=None,
        help="override every recipe's epochs (default: the official ones)",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        default=list(PAPER_PARTS),
        choices=PARTS,
        help="which parts to run (default: the paper's six; auto: --auto vs the official recipe vs zero-shot)",
    )
    p.add_argument(
        "--sweep-datasets",
        nargs="+",
        default=None,
        help="run parts 3-5 (rank, ablation, transfer) on these datasets only (default: all of --datasets)",
    )
    p.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="leave these methods out (the report lists them as skipped), e.g. clip_lora on a CPU",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the report from the runs already finished (it says how many are missing)",
    )
    p.add_argument(
        "--merge",
        default=None,
        metavar="REPORT",
        help="an earlier report folder of this study (same backbone, datasets, seeds, shots, epochs, "
        "exclusions): its parts that this invocation does not run join this report, which says where "
        "each part came from (a long study made in pieces)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI size: 2 datasets, 2 seeds, 4 shots, 4 epochs, fewer grid points (minutes; read nothing into it)",
    )
    p.add_argument(
        "--results", default="results", help="results folder (finished runs are skipped, interrupted ones resume)"
    )
    p.add_argument("-o", "--output", default="report", help="report folder (tables md/csv/json, figures, EVIDENCE.md)")
    p.add_argument("--docs", default=None, help="also write the report's markdown here (e.g. docs/EVIDENCE.md)")
    add_jobs_flag(p)
    add_executor_args(p)
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the study the arguments describe and print the verdict on each claim."""
    from .study import run_study

    settings = StudySettings(
        backbone=args.backbone,
        datasets=args.datasets,
        data_root=args.data_root,
        seeds=args.seeds,
        shots=args.shots,
        epochs=args.epochs,
        parts=list(args.parts),
        quick=args.quick,
        sweep_datasets=args.sweep_datasets,
        exclude=list(args.exclude),
    )
    summary = run_study(
        settings,
        args.results,
        args.output,
        executor_settings_from_args(args),
        docs=args.docs,
        report_only=args.report_only,
        merge=args.merge,
    )
    for claim in summary["claims"]:
        print(f"{claim['verdict']}: {claim['claim']} — {claim['evidence']}")
    minutes = summary["wall_seconds"] / 60
    print(f"\n{summary['runs']} runs in {minutes:.1f} min; report in {args.output}/EVIDENCE.md", file=sys.stderr)
    return 0
