"""What a protocol is: which classes train, how a trained run is evaluated, which recipe and which table it uses.

A protocol is an object registered by name (:func:`rlptune.registry.register_protocol`); settings
(``data.protocol``), the official recipes, ``rlptune run``, the run pipeline and the tables look it up there, so a
protocol defined outside the package is one class and one register call. This module imports neither torch nor
the engine: the pipeline hands :meth:`Protocol.evaluate` an :class:`Evaluation` that does the measuring.
"""

from __future__ import annotations

from typing import Any, Protocol as _Interface, Sequence

Metrics = dict[str, Any]


class Evaluation(_Interface):
    """The measurements a protocol may ask of a trained run (the pipeline implements it)."""

    #: the datasets the run was asked to be evaluated on besides its own (``rlptune run --targets``, or defaults)
    targets: Sequence[str]
    #: the method can score classes it did not train on (zero-shot text features): it has a "new" score
    transfers_to_new_classes: bool
    #: the training classes have a test split
    has_test_split: bool

    def test(self) -> Metrics:
        """Metrics on the training classes' test split."""
        ...

    def new_classes(self) -> Metrics:
        """Metrics on the held-out (new) half of the classes' test split, with the new class names."""
        ...

    def on_targets(self, names: Sequence[str]) -> dict[str, Metrics]:
        """Metrics on each named dataset's test split, with its own class names."""
        ...

    def harmonic_mean(self, a: float, b: float) -> float:
        """The harmonic mean the tables use (base-to-new's H)."""
        ...


class Protocol:
    """An evaluation protocol. Subclass it, set :attr:`name` (and what differs from the defaults below), register
    an instance with :func:`rlptune.protocols.register_protocol`.

    The defaults describe a protocol that trains on ``data.subsample`` and reports test accuracy (plus any
    targets), reads the few-shot recipes and is tabled like few-shot results.
    """

    #: the name runs, settings (``data.protocol``) and ``rlptune run PROTOCOL`` use; also the results sub-folder
    name: str = ""
    #: a human title for tables and help
    title: str = ""
    #: other spellings results files may use (compared in lower case, letters and digits only)
    aliases: tuple[str, ...] = ()
    #: which official recipes apply (:data:`rlptune.recipes.PROTOCOLS`: the protocols the papers' scripts cover)
    recipe_key: str = "few-shot"
    #: which table builder of :mod:`rlptune.report.tables` shows the runs: few-shot, base2new, cross-dataset or
    #: domain-gen
    table_kind: str = "few-shot"
    #: the protocol holds out new classes (``train.track_new`` can score them during training)
    new_classes: bool = False
    #: runs are evaluated on other datasets too (``rlptune run --targets``; :meth:`default_targets` otherwise)
    uses_targets: bool = False
    #: ``rlptune run``'s datasets when none are given (empty: the micro suite)
    default_sources: tuple[str, ...] = ()

    def training_subset(self, config: Any) -> str:
        """Which classes train (``all``, ``base`` or ``new``); by default ``data.subsample``."""
        return config.data.subsample

    def evaluate(self, run: Evaluation) -> tuple[Metrics, Metrics]:
        """(metrics, extra result fields) of a trained run; by default test accuracy and each target's."""
        metrics: Metrics = {}
        extra: Metrics = {}
        if run.has_test_split:
            metrics["test"] = run.test()
        if run.targets:
            extra["targets"] = run.on_targets(run.targets)
        return metrics, extra

    def default_targets(self, source: str) -> list[str]:
        """The datasets a run trained on ``source`` is evaluated on when ``--targets`` is not given."""
        return []

    def __repr__(self) -> str:
        return f"<protocol {self.name!r}>"


__all__ = ["Evaluation", "Metrics", "Protocol"]
