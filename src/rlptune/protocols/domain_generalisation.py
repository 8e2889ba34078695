"""Domain generalisation: train on a source dataset, evaluate on its shifted variants with the same classes
(CoCoOp: ImageNet → ImageNet-V2, -Sketch, -A, -R; on the micro suite, the source's shifted renderings)."""

from __future__ import annotations

from ..errors import RlptuneError
from ..registry import register_protocol
from .base import Protocol


class DomainGeneralisation(Protocol):
    name = "domain-gen"
    title = "Domain generalisation"
    aliases = ("domain-generalisation", "domain-generalization", "dg")
    recipe_key = "domain-gen"
    table_kind = "domain-gen"
    uses_targets = True
    default_sources = ("micro-shapes",)

    def default_targets(self, source: str) -> list[str]:
        """The source's shifted variants (catalogues read on first use, as in cross-dataset)."""
        if source.startswith("micro"):
            from ..micro.suite import MICRO_SHIFTS

            if source not in MICRO_SHIFTS:
                raise RlptuneError(
                    f"{self.name}: micro dataset {source!r} has no shifted variants; use one of {', '.join(MICRO_SHIFTS)}"
                )
            return list(MICRO_SHIFTS[source])
        from ..data.coop import IMAGENET_SHIFTS

        return list(IMAGENET_SHIFTS)


DOMAIN_GENERALISATION = register_protocol(DomainGeneralisation())

__all__ = ["DOMAIN_GENERALISATION", "DomainGeneralisation"]
