"""The command-line flags every multi-run command shares (``run``, ``reproduce``, ``demo``): one definition each, so
a flag reads and checks its values the same way wherever it appears; only the default and the sentence after the
flag's meaning differ per command."""

from __future__ import annotations

import argparse

from ..options import int_flag


def add_seeds_flag(parser: argparse.ArgumentParser, default: list[int], each: str = "one run per seed") -> None:
    """``--seeds S [S ...]``: the seeds, ``each`` saying what one seed means to this command."""
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int_flag("--seeds"),
        default=list(default),
        metavar="SEED",
        help=f"seeds, {each} (default: {' '.join(map(str, default))})",
    )


def add_shots_flag(parser: argparse.ArgumentParser, default: int | list[int], help: str) -> None:
    """``--shots``: images per class, one count (``default`` an int) or one run per count (``default`` a list)."""
    many = isinstance(default, list)
    parser.add_argument(
        "--shots",
        nargs="+" if many else None,
        type=int_flag("--shots", low=0),
        default=list(default) if many else default,
        metavar="SHOTS",
        help=f"{help} (default: {' '.join(map(str, default)) if many else default})",
    )


def add_jobs_flag(parser: argparse.ArgumentParser, default: int = 1, default_text: str | None = None) -> None:
    """``--jobs N``: runs in parallel, as processes (``default_text`` says how a computed default is chosen)."""
    parser.add_argument(
        "--jobs",
        type=int_flag("--jobs", low=1),
        default=default,
        help=f"runs in parallel (processes; default: {default_text or default})",
    )
