"""The shipped micro CLIP loads offline into open_clip's CLIP and is as good as when it was calibrated."""

import pytest
import torch
import torch.nn.functional as F

from rlptune.micro import MICRO_CONFIG_PATH, MICRO_WEIGHTS_PATH

pytestmark = pytest.mark.skipif(not MICRO_WEIGHTS_PATH.exists(), reason="micro CLIP weights not trained yet")

# Zero-shot top-1 with "a photo of a {}." on the first 10 test images per class of micro-colors, measured on the
# shipped weights (see benchmarks/micro_calibration.py); the floor leaves a margin for BLAS differences only.
SAMPLE_DATASET = "micro-colors"
PER_CLASS = 10
RECORDED = 0.88  # 88 of 100, shipped weights of 2026-11-28 (seed 0, 3600 steps)
FLOOR = 0.80


def _load():
    import json

    import open_clip
    from safetensors.torch import load_file

    model = open_clip.model.CLIP(**json.loads(MICRO_CONFIG_PATH.read_text()))
    sd = load_file(str(MICRO_WEIGHTS_PATH))
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}, strict=True)
    return model.eval()


def test_weights_fit_the_budget():
    assert MICRO_WEIGHTS_PATH.stat().st_size <= 20 * 1024 * 1024


def test_shipped_micro_clip_zero_shot_floor():
    import open_clip

    from rlptune.micro.pretrain import images_to_tensor
    from rlptune.micro.suite import GENERIC_TEMPLATE, micro_spec, render_split

    torch.set_num_threads(1)
    model = _load()
    spec = micro_spec(SAMPLE_DATASET)
    images, labels = render_split(SAMPLE_DATASET, "test")
    n = spec.splits["test"]
    keep = [k for k in range(len(images)) if k % n < PER_CLASS]
    x = images_to_tensor([images[k] for k in keep])
    y = torch.tensor([labels[k] for k in keep])
    with torch.no_grad():
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(
            model.encode_text(open_clip.tokenize([GENERIC_TEMPLATE.format(c) for c in spec.classnames])), dim=-1
        )
    acc = float(((img @ txt.T).argmax(-1) == y).float().mean())
    assert acc >= FLOOR, f"zero-shot {acc:.3f} on {SAMPLE_DATASET} below the recorded floor {FLOOR} ({RECORDED})"
    assert acc >= 2.0 / len(spec.classnames)


def test_micro_loads_by_name_offline_and_keeps_its_zero_shot_floor(monkeypatch, tmp_path):
    """The user's path: `--backbone micro` through rlptune's loader, dataset files, transforms and zero-shot method."""
    from rlptune.backbones import load_backbone
    from rlptune.config import resolve_config
    from rlptune.data import load_dataset
    from rlptune.engine.api import evaluate, zero_shot_method

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RLPTUNE_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    backbone = load_backbone("micro", device="cpu")
    assert backbone.arch == "micro" and backbone.identity.startswith("micro@sha256:")
    splits = load_dataset(SAMPLE_DATASET)
    per_class = len(splits.test) // splits.num_classes  # test items are stored class by class
    splits.test = [it for k, it in enumerate(splits.test) if k % per_class < PER_CLASS]
    method = zero_shot_method(resolve_config(), backbone, splits.classnames, splits.template)
    metrics = evaluate(method, splits, "test")
    assert metrics["n"] == PER_CLASS * splits.num_classes
    assert metrics["top1"] >= 100 * FLOOR, f"zero-shot {metrics['top1']:.1f}% below the floor {100 * FLOOR}%"
