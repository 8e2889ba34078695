"""A method registered from outside the package trains with a recipe: its own when it registers one, else the one
of its nearest parent class that has one (a CoOp subclass trains CoOp's 200 epochs at 16 shots, not the bare
defaults' 10). This is the proof behind docs/EXTENDING.md's "Give it a recipe"."""

from __future__ import annotations

import pytest

import rlptune
from rlptune import recipes
from rlptune.config import RunConfig, blank_config, resolve_config
from rlptune.methods.coop import CoOp


@rlptune.register_method("toy_inheriting_coop")
class InheritingCoOp(CoOp):
    """Declares nothing: CoOp's recipe applies."""


class _Grandchild(InheritingCoOp):
    pass


rlptune.register_method("toy_grandchild_coop")(_Grandchild)


@rlptune.register_method("toy_own_recipe_coop")
class OwnRecipeCoOp(CoOp):
    """Registers a recipe of its own: only its values apply, CoOp's none."""


OWN_RECIPE = rlptune.Recipe(
    "toy_own_recipe_coop",
    "a toy recipe",
    (
        recipes.Rule(
            (recipes.Setting("train.epochs", 7, "mine:README"), recipes.Setting("train.lr", 0.01, "mine:README"))
        ),
        recipes.Rule((recipes.Setting("train.epochs", 3, "mine:README"),), protocols=("base2new",)),
    ),
)


@pytest.fixture(autouse=True, scope="module")
def _own_recipe():
    """Registered for this module only: other tests list the built-in recipes."""
    rlptune.register_recipe("toy_own_recipe_coop", OWN_RECIPE)
    yield
    recipes.RECIPES.pop("toy_own_recipe_coop", None)


@rlptune.register_method("toy_plain_method")
class PlainMethod(rlptune.Method):
    """Subclasses no method with a recipe: the defaults apply."""


def _resolved(method: str, **data):
    return resolve_config(overrides={"method": {"name": method}, "data": data})


@pytest.mark.parametrize("method", ["toy_inheriting_coop", "toy_grandchild_coop"])
@pytest.mark.parametrize(
    "shots, protocol, epochs", [(16, "few-shot", 200), (1, "few-shot", 50), (4, "few-shot", 100), (16, "base2new", 200)]
)
def test_a_coop_subclass_inherits_coops_recipe(method, shots, protocol, epochs):
    ours = _resolved(method, shots=shots, protocol=protocol)
    coop = _resolved("coop", shots=shots, protocol=protocol)
    assert ours.train.epochs == epochs
    assert ours.method.name == method  # the run is the subclass's, although the recipe names CoOp
    # every other resolved value is CoOp's
    mine, theirs = ours.to_dict(), coop.to_dict()
    mine["method"]["name"] = theirs["method"]["name"]
    assert mine == theirs
    assert recipes.recipe_owner(method) == "coop"
    assert recipes.sources(method, protocol, shots)["train.epochs"].startswith("KaiyangZhou/CoOp:")


def test_the_inherited_recipe_also_applies_to_a_named_runconfig():
    assert RunConfig(method="toy_inheriting_coop").train.epochs == 200


def test_a_subclass_declaring_its_own_recipe_uses_only_it():
    few = _resolved("toy_own_recipe_coop")
    assert (few.train.epochs, few.train.lr) == (7, 0.01)
    assert few.prompt.n_ctx == blank_config().prompt.n_ctx  # CoOp's n_ctx=16 is not merged in: the own recipe is whole
    assert _resolved("toy_own_recipe_coop", protocol="base2new").train.epochs == 3
    assert recipes.recipe_owner("toy_own_recipe_coop") == "toy_own_recipe_coop"


def test_explicit_settings_still_win_over_an_inherited_recipe():
    config = resolve_config(overrides={"method": {"name": "toy_inheriting_coop"}, "train": {"epochs": 2}})
    assert config.train.epochs == 2


def test_a_method_outside_every_recipe_keeps_the_defaults():
    assert recipes.recipe_owner("toy_plain_method") is None
    assert _resolved("toy_plain_method").train.epochs == blank_config().train.epochs
    assert recipes.recipe_owner("no_such_method") is None  # reported by validation, with a suggestion


def test_a_recipe_must_be_a_recipe():
    with pytest.raises(rlptune.RlptuneError, match="expected a rlptune.recipes.Recipe, got dict"):
        rlptune.register_recipe("toy_plain_method", {"train.epochs": 3})
