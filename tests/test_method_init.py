"""Every method's initial state, audited against its official code (docs/METHODS.md, "Initialisation, audited
against the official code"): which parameters start as copies of one another, which distributions and scales, and,
where the official prompt learner draws its own tensors (MaPLe, CoCoOp), the draw order: from the same generator
state rlptune builds the tensors the official learner builds.

The architecture has different text, image and joint widths (d = 32, w = 48, e = 32) so a map built the wrong way
round, or a width read from the wrong tower, changes a shape.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import TINY_ARCH, backbone_from_arch
from rlptune.config import resolve_config
from rlptune.methods import build_method
from rlptune.methods.base import ClosedFormData
from rlptune.methods.shared import handcrafted_features
from rlptune.text import text_embeddings

CLASSES = ["red", "green", "blue", "yellow"]
D, W = 32, 48  # text width, image-transformer width
DEPTH = 4

ARCH = copy.deepcopy(TINY_ARCH)
ARCH["text_cfg"]["layers"] = DEPTH
ARCH["vision_cfg"].update({"layers": DEPTH, "width": W})

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return backbone_from_arch(tmp_path_factory, ARCH, "tiny-init")


def _config(name: str, options: dict | None = None, **sections):
    overrides = {"method": {"name": name, "options": options or {}}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return resolve_config(None, overrides)


def _build(backbone, config, seed: int = 0, classes=CLASSES):
    """Build under a fixed generator state (the config is resolved before, so only the method draws)."""
    torch.manual_seed(seed)
    return build_method(config, backbone, classes)


def _official_normal(*shape: int, std: float = 0.02) -> torch.Tensor:
    """What the official learners write for one prompt: ``nn.init.normal_(torch.empty(...), std=0.02)``."""
    return nn.init.normal_(torch.empty(*shape), std=std)


def _maple(backbone, seed: int = 0, depth: int = DEPTH, ctx_init: str | None = "a photo of a"):
    return _build(backbone, _config("maple", {"depth": depth}, prompt={"n_ctx": 2, "ctx_init": ctx_init}), seed)


# -- MaPLe: the coupling maps ---------------------------------------------------------------------------------------
def test_maple_deeper_maps_start_identical_and_layer_0_s_map_differs(tiny):
    """Official ``MultiModalPromptLearner``: ``proj`` (layer 0) is its own nn.Linear, layers 1 … J−1 are
    ``_get_clones`` deep copies of ONE nn.Linear: equal at init, separate parameters (they train apart)."""
    method = _maple(tiny)
    maps = method.couplers
    assert len(maps) == DEPTH and all(tuple(m.weight.shape) == (W, D) and tuple(m.bias.shape) == (W,) for m in maps)
    for m in maps[2:]:
        assert torch.equal(m.weight, maps[1].weight) and torch.equal(m.bias, maps[1].bias)
    assert not torch.equal(maps[0].weight, maps[1].weight) and not torch.equal(maps[0].bias, maps[1].bias)
    # copies, not one tied map: every map is its own parameter with its own storage
    pointers = {m.weight.data_ptr() for m in maps} | {m.bias.data_ptr() for m in maps}
    assert len(pointers) == 2 * DEPTH
    with torch.no_grad():
        maps[1].weight.add_(1.0)
    assert torch.equal(maps[2].weight, maps[3].weight) and not torch.equal(maps[1].weight, maps[2].weight)
    assert method.num_trainable() == DEPTH * 2 * D + DEPTH * (D * W + W)  # the count is unchanged: J separate maps


@pytest.mark.parametrize("ctx_init", ["a photo of a", None])
def test_maple_init_replays_the_official_learner_draw_for_draw(tiny, ctx_init):
    """The official order: the context (random only without an init text), ``proj``, the J−1 deeper text prompts
    (N(0, 0.02²) each), then the one Linear that is cloned. Same generator state, same tensors."""
    method = _maple(tiny, seed=7, ctx_init=ctx_init)
    torch.manual_seed(7)
    ctx = _official_normal(2, D) if ctx_init is None else text_embeddings(tiny, "a photo")
    proj = nn.Linear(D, W)
    deeper = torch.stack([_official_normal(2, D) for _ in range(DEPTH - 1)])
    single = nn.Linear(D, W)
    assert torch.equal(method.text_prompt.ctx, ctx)
    assert torch.equal(method.couplers[0].weight, proj.weight) and torch.equal(method.couplers[0].bias, proj.bias)
    assert torch.equal(method.text_deep.ctx, deeper)
    for m in method.couplers[1:]:
        assert torch.equal(m.weight, single.weight) and torch.equal(m.bias, single.bias)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(depth=st.integers(1, DEPTH), seed=st.integers(0, 2**31 - 1))
def test_maple_deeper_maps_never_start_apart_and_layer_0_never_joins_them(tiny, depth, seed):
    """Property: at every depth and seed the maps of layers 1 … J−1 are equal at init and layer 0's is not theirs."""
    maps = _maple(tiny, seed=seed, depth=depth).couplers
    assert len(maps) == depth
    for m in maps[1:]:
        assert torch.equal(m.weight, maps[1].weight) and torch.equal(m.bias, maps[1].bias)
        assert not torch.equal(m.weight, maps[0].weight)


def test_maple_map_init_is_torch_s_default_linear_init(tiny):
    """``nn.Linear(ctx_dim, 768)`` default init: weight and bias uniform within ±1/√fan_in (fan_in = d)."""
    maps = _maple(tiny).couplers
    bound = 1 / math.sqrt(D)
    weights = torch.cat([maps[0].weight.flatten(), maps[1].weight.flatten()])
    assert weights.abs().max() <= bound and weights.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.08)
    assert max(maps[0].bias.abs().max(), maps[1].bias.abs().max()) <= bound


# -- random contexts and deep prompts: N(0, 0.02²), every layer and class drawn apart -------------------------------------
def _pooled(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


@pytest.mark.parametrize(
    "name, options, prompt, tensors",
    [
        ("coop", {}, {"n_ctx": 16, "ctx_init": None}, lambda m: [m.prompt.ctx]),
        ("cocoop", {}, {"n_ctx": 16, "ctx_init": None}, lambda m: [m.prompt.ctx]),
        ("kgcoop", {}, {"n_ctx": 16, "ctx_init": None}, lambda m: [m.prompt.ctx]),
        (
            "deep_text",
            {"text_depth": DEPTH},
            {"n_ctx": 4, "ctx_init": None},
            lambda m: [m.text_prompt.ctx, m.text_deep.ctx],
        ),
        ("deep_vision", {"vision_depth": DEPTH, "vision_ctx": 4}, {}, lambda m: [m.vision_prompt.ctx]),
        (
            "ivlp",
            {"text_depth": DEPTH, "vision_depth": DEPTH, "vision_ctx": 4},
            {"n_ctx": 4, "ctx_init": None},
            lambda m: [m.text_prompt.ctx, m.text_deep.ctx, m.vision_prompt.ctx],
        ),
        (
            "promptsrc",
            {"text_depth": DEPTH, "vision_depth": DEPTH},
            {"ctx_init": None},
            lambda m: [m.text_prompt.ctx, m.text_deep.ctx, m.vision_prompt.ctx],
        ),
        ("maple", {"depth": DEPTH}, {"n_ctx": 4, "ctx_init": None}, lambda m: [m.text_prompt.ctx, m.text_deep.ctx]),
    ],
)
def test_random_prompts_are_normal_with_std_0_02(tiny, name, options, prompt, tensors):
    """CoOp / CoCoOp / KgCoOp ``nn.init.normal_(ctx_vectors, std=0.02)``; MaPLe's compound prompts, IVLP's, VPT's
    and PromptSRC's ``VPT`` / ``VPT_shallow`` prompts: the same, one draw per layer. Pooled over seeds."""
    config = _config(name, options, prompt=prompt)
    values = _pooled([t for seed in range(6) for t in tensors(_build(tiny, config, seed))])
    assert values.numel() >= 3000
    assert values.std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(values.mean().item()) < 0.0015
    assert values.abs().max().item() < 0.02 * 6  # a normal, not a wider law


@pytest.mark.parametrize(
    "name, options",
    [
        ("ivlp", {"text_depth": DEPTH, "vision_depth": DEPTH, "vision_ctx": 2}),
        ("promptsrc", {"text_depth": DEPTH, "vision_depth": DEPTH}),
    ],
)
def test_deep_prompts_of_different_layers_are_drawn_apart(tiny, name, options):
    """IVLP / PromptSRC build each layer's ``VPT_shallow`` in its own block: no two layers start equal (unlike
    MaPLe's cloned maps); layer 0's text prompt is the first n tokens' word embeddings of "a photo of a"."""
    method = _build(tiny, _config(name, options, prompt={"n_ctx": 2} if name == "ivlp" else {}))
    n = method.n_ctx
    assert torch.equal(method.text_prompt.ctx, text_embeddings(tiny, "a photo of a")[:n])
    for layers in (method.text_deep.ctx, method.vision_prompt.ctx):
        for i in range(layers.shape[0]):
            for j in range(i + 1, layers.shape[0]):
                assert not torch.allclose(layers[i], layers[j])


def test_random_contexts_replay_coop_s_draw_generic_and_class_specific(tiny):
    """CoOp without an init text: one (n, d) N(0, 0.02²) draw, or one (C, n, d) draw with CSC (each class its own
    context); the same generator state gives the official tensor."""
    generic = _build(tiny, _config("coop", prompt={"n_ctx": 4, "ctx_init": None}), seed=3)
    torch.manual_seed(3)
    assert torch.equal(generic.prompt.ctx, _official_normal(4, D))
    method = _build(
        tiny, _config("coop", prompt={"n_ctx": 4, "ctx_init": None}, method={"class_specific": True}), seed=3
    )
    torch.manual_seed(3)
    assert torch.equal(method.prompt.ctx, _official_normal(len(CLASSES), 4, D))
    assert not torch.allclose(method.prompt.ctx[0], method.prompt.ctx[1])


# -- contexts from words ------------------------------------------------------------------------------------------------------
def test_a_context_from_words_is_their_token_embeddings(tiny):
    """CoOp / CoCoOp / KgCoOp: ``token_embedding(tokenize(ctx_init))[0, 1 : 1 + n]`` (no positional embedding)."""
    ids = tiny.tokenize(["a photo of a"])[0]
    with torch.no_grad():
        words = tiny.model.token_embedding(ids[1:5]).float()
    for name in ("coop", "cocoop", "kgcoop"):
        method = _build(tiny, _config(name, prompt={"n_ctx": 4, "ctx_init": "a photo of a"}))
        assert torch.equal(method.prompt.ctx, words), name


def test_class_specific_context_from_words_starts_as_one_copy_per_class(tiny):
    """rlptune's documented choice: class-specific with an init text gives C equal copies of the words, each class
    its own rows (the official CoOp silently ignores CSC when CTX_INIT is set and learns one shared context)."""
    method = _build(
        tiny, _config("coop", prompt={"n_ctx": 4, "ctx_init": "a photo of a"}, method={"class_specific": True})
    )
    ctx = method.prompt.ctx
    assert tuple(ctx.shape) == (len(CLASSES), 4, D)
    for c in range(len(CLASSES)):
        assert torch.equal(ctx[c], text_embeddings(tiny, "a photo of a"))
    assert method.num_trainable() == len(CLASSES) * 4 * D


# -- CoCoOp's meta-net, KgCoOp ----------------------------------------------------------------------------------------------
def test_cocoop_meta_net_is_torch_s_default_linear_init_in_the_official_order(tiny):
    """``Linear(vis_dim, vis_dim // 16) → ReLU → Linear(vis_dim // 16, ctx_dim)`` built after the context with
    torch's default init: the same generator state gives the same meta-net."""
    method = _build(tiny, _config("cocoop", prompt={"n_ctx": 4, "ctx_init": "a photo of a"}), seed=11)
    e = tiny.embed_dim
    torch.manual_seed(11)
    linear1, linear2 = nn.Linear(e, e // 16), nn.Linear(e // 16, D)
    net = method.meta_net
    assert torch.equal(net.linear1.weight, linear1.weight) and torch.equal(net.linear1.bias, linear1.bias)
    assert torch.equal(net.linear2.weight, linear2.weight) and torch.equal(net.linear2.bias, linear2.bias)
    assert net.linear1.weight.abs().max() <= 1 / math.sqrt(e) and net.linear2.weight.abs().max() <= 1 / math.sqrt(
        e // 16
    )


def test_kgcoop_starts_where_coop_starts_and_trains_the_context_only(tiny):
    """KgCoOp's learner is CoOp's (its unused ``bias_vectors``, ``meta_net`` and ``adapter`` are frozen, never in the
    forward pass): the same context from the same state, and nothing else trainable."""
    config = {"n_ctx": 4, "ctx_init": None}
    coop = _build(tiny, _config("coop", prompt=config), seed=5)
    kgcoop = _build(tiny, _config("kgcoop", prompt=config), seed=5)
    assert torch.equal(coop.prompt.ctx, kgcoop.prompt.ctx)
    assert [n for n, p in kgcoop.named_parameters() if p.requires_grad] == ["prompt.ctx"]


# -- CLIP-LoRA -------------------------------------------------------------------------------------------------------------
def test_clip_lora_a_is_kaiming_uniform_b_is_zero_on_q_k_v_of_every_block(tiny):
    """loralib: A ``kaiming_uniform_(a=√5)`` (uniform within ±1/√fan_in), B zeros, on W_q, W_k, W_v of every block
    of both towers (``--position all --encoder both``), r = 2, α = 1, scale α/√r, dropout 0.25 on the adapter input;
    so the adapted CLIP starts exactly at the frozen one."""
    pytest.importorskip("peft")
    method = _build(tiny, _config("clip_lora"))
    layers = [(name, m) for name, m in method.clip.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(layers) == 3 * (DEPTH + DEPTH)
    assert {name.rsplit(".", 1)[-1] for name, _ in layers} == {"q_proj", "k_proj", "v_proj"}
    samples = []
    for name, m in layers:
        a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
        fan_in = a.shape[1]
        assert tuple(a.shape) == (2, fan_in) and tuple(b.shape) == (m.out_features, 2), name
        assert torch.count_nonzero(b) == 0, name
        assert a.abs().max() <= 1 / math.sqrt(fan_in), name
        samples.append(a.detach().flatten() * math.sqrt(fan_in))  # uniform on ±1 after scaling
        assert m.scaling["default"] == pytest.approx(1 / math.sqrt(2)) and m.lora_dropout["default"].p == 0.25, name
    pooled = torch.cat(samples)
    assert pooled.std().item() == pytest.approx(1 / math.sqrt(3), rel=0.08)
    frozen = F.normalize(tiny.encode_text_ids(tiny.tokenize([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    with torch.no_grad():
        assert torch.allclose(method.class_features(), frozen, atol=1e-6)


# -- linear probe ----------------------------------------------------------------------------------------------------------
def test_linear_probe_fit_starts_from_zero_not_from_its_zero_shot_weights(tiny):
    """lpclip fits ``LogisticRegression`` from scratch (lbfgs from zero); rlptune's zero-shot weights (W = logit
    scale · class text features, b = 0) are what the probe predicts before a fit, never the fit's starting point."""
    config = _config("linear_probe", {"c": 1.0, "solver": "torch"})
    generator = torch.Generator().manual_seed(0)
    data = ClosedFormData(
        torch.randn(24, tiny.embed_dim, generator=generator), torch.arange(24) % 4, log=lambda _: None
    )
    plain, scrambled = _build(tiny, config), _build(tiny, config)
    expected = tiny.logit_scale * handcrafted_features(tiny, CLASSES, "a photo of a {}.")
    assert torch.allclose(plain.weight, expected) and torch.count_nonzero(plain.bias) == 0
    with torch.no_grad():
        scrambled.weight.normal_()
        scrambled.bias.normal_()
    plain.fit_closed_form(data)
    scrambled.fit_closed_form(data)
    assert torch.equal(plain.weight, scrambled.weight) and torch.equal(plain.bias, scrambled.bias)


# -- RLP (no public code) -------------------------------------------------------------------------------------------------------
def test_rlp_starts_exactly_at_its_frozen_prompt(tiny):
    """rlptune's measured default (docs/RLP.md): P_A ~ N(0, 1), P_B = 0, so the prompt starts at P_fr, the words of
    "a photo of a"; deep prompts under RLP have P_fr = 0 and start at exactly 0."""
    prompts = [_build(tiny, _config("rlp", prompt={"rank": 4}), seed).prompt for seed in range(60)]
    assert all(torch.count_nonzero(p.B) == 0 for p in prompts)
    assert all(torch.equal(p.merged(), text_embeddings(tiny, "a photo of a")) for p in prompts)
    a = _pooled([p.A for p in prompts])
    assert a.numel() == 60 * 4 * 4 and a.std().item() == pytest.approx(1.0, rel=0.08)
    deep = _build(tiny, _config("ivlp", {"text_depth": 2, "vision_depth": 2}, prompt={"kind": "lowrank", "n_ctx": 2}))
    assert torch.count_nonzero(deep.text_deep.merged()) == 0 and torch.count_nonzero(deep.vision_prompt.merged()) == 0
