"""rlptune: adapt a frozen CLIP to a new classification task by tuning a tiny prompt (CoOp, RLP, …).

The practitioner's path in a few lines::

    import rlptune
    backbone = rlptune.load_backbone("micro")                      # or "ViT-B-16:/path/to/weights.pt"
    config = rlptune.resolve_config(overrides={"method": {"name": "rlp"},
                                               "data": {"dataset": "folder", "root": "my_images/"}})
    result = rlptune.train(config, "runs/mine", backbone=backbone)  # adapter in runs/mine/adapter
    method = rlptune.load_adapter("runs/mine/adapter", backbone)
    rows = rlptune.predict(method, ["photo.jpg"], top_k=3)
"""

from __future__ import annotations

__version__ = "0.4.0"

from .errors import RlptuneError  # noqa: E402

_LAZY = {
    "load_backbone": ("backbones", "load_backbone"),
    "Backbone": ("backbones", "Backbone"),
    "RunConfig": ("config", "RunConfig"),
    "resolve_config": ("config", "resolve_config"),
    "load_dataset": ("data", "load_dataset"),
    "build_method": ("methods", "build_method"),
    "list_methods": ("methods", "list_methods"),
    # extension points: a method, its options, a prompt parameterisation, a dataset, a backbone loader
    "Method": ("methods", "Method"),
    "Batch": ("methods.base", "Batch"),
    "StepOutput": ("methods.base", "StepOutput"),
    "ClosedFormData": ("methods.base", "ClosedFormData"),
    "register_method": ("methods", "register_method"),
    "option": ("options", "option"),
    "PromptModule": ("prompts", "PromptModule"),
    "build_prompt": ("prompts", "build_prompt"),
    "register_prompt_kind": ("prompts", "register_prompt_kind"),
    "register_dataset": ("data", "register_dataset"),
    "register_recipe": ("recipes", "register_recipe"),
    "Recipe": ("recipes", "Recipe"),
    "Protocol": ("protocols", "Protocol"),
    "register_protocol": ("registry", "register_protocol"),
    "load_plugins": ("registry", "load_plugins"),
    "run": ("engine.pipeline", "run"),
    "train": ("engine.api", "train"),
    "evaluate": ("engine.api", "evaluate"),
    "predict": ("engine.api", "predict"),
    "prepare_dataset": ("engine.api", "prepare_dataset"),
    "save_adapter": ("engine.adapter", "save_adapter"),
    "load_adapter": ("engine.adapter", "load_adapter"),
    # hub-shaped adapters: folder + model card, a folder or hub repo id, an upload (docs/ADAPTERS.md)
    "save_pretrained": ("engine.hub", "save_pretrained"),
    "from_pretrained": ("engine.hub", "from_pretrained"),
    "push_to_hub": ("engine.hub", "push_to_hub"),
}


def __getattr__(name: str):
    """Import submodules on first use, so ``import rlptune`` stays cheap (no torch until needed)."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlptune' has no attribute {name!r}")


__all__ = ["RlptuneError", "__version__", *_LAZY]
