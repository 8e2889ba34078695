"""Pretraining smoke test and the exactness of the truncated text path used to pretrain."""

import torch
from safetensors.torch import load_file

from rlptune.micro.pretrain import (
    build_model,
    encode_text_truncated,
    get_tokenizer,
    load_config,
    main,
    pretrain_micro,
    tokenize,
)


def _load(path):
    model = build_model()
    sd = load_file(str(path))
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}, strict=True)
    return model


def test_config_is_clip_with_standard_vocabulary():
    cfg = load_config()
    assert cfg["text_cfg"]["context_length"] == 77 and cfg["text_cfg"]["vocab_size"] == 49408


def test_truncated_text_path_equals_encode_text():
    torch.manual_seed(0)
    model = build_model().eval()
    tok = tokenize(get_tokenizer(), ["a photo of a red circle.", "a sketch of two striped hexagons on a beach."])
    import open_clip

    assert torch.equal(
        tok, open_clip.tokenize(["a photo of a red circle.", "a sketch of two striped hexagons on a beach."])
    )
    with torch.no_grad():
        full = model.encode_text(tok)
        short = encode_text_truncated(model, tok)
    assert torch.allclose(full, short, atol=1e-5)


def test_pretrain_smoke(tmp_path):
    logs = []
    path = pretrain_micro(tmp_path / "out", seed=0, steps=2, threads=1, eval_every=0, log=logs.append)
    assert path.exists() and path.stat().st_size < 20 * 1024 * 1024
    sd = load_file(str(path))
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    model = _load(path).eval()
    with torch.no_grad():
        img = model.encode_image(torch.zeros(2, 3, 64, 64))
    assert img.shape == (2, 128) and torch.isfinite(img).all()
    assert any("wrote" in line for line in logs)


def test_pretrain_is_reproducible_and_cli(tmp_path):
    a = pretrain_micro(tmp_path / "a", seed=3, steps=1, threads=1, eval_every=0, log=lambda s: None)
    assert (
        main(["--steps", "1", "--seed", "3", "--threads", "1", "--eval-every", "0", "--out", str(tmp_path / "b")]) == 0
    )
    sa, sb = load_file(str(a)), load_file(str(tmp_path / "b" / a.name))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
