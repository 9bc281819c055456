"""Property-based tests of the recipe loader and the --set parser: whatever the input, the result is a Recipe
or the factory's own RecipeError (one clear line), never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory.errors import RecipeError
from factory.recipe import Recipe, load_recipe

SECTIONS = ["name", "data", "budget", "student", "teacher", "augment", "distill", "export", "bench", "baseline"]
FIELDS = ["root", "image_size", "val_fraction", "epochs", "batch_size", "lr", "model", "weights", "profile",
          "latency_ms", "enabled", "amount", "prompts", "splits", "source", "dataset", "filter", "min_confidence",
          "quantize", "threads", "weights.kd", "search", "rungs", "class_names", ""]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)),
                      max_leaves=8)
trees = st.dictionaries(st.sampled_from(SECTIONS + ["unknown"]), values, max_size=6)


def _load(text: str, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(text)
        try:
            assert isinstance(load_recipe(path, overrides), Recipe)
        except RecipeError as err:
            assert str(err) and "Traceback" not in str(err)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_any_yaml_tree_gives_a_recipe_or_a_recipe_error(tree):
    _load(yaml.safe_dump(tree), [])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_recipe_or_a_recipe_error(text):
    _load(text, [])


overrides = st.one_of(
    st.text(max_size=40),
    st.builds(lambda k, v: f"{k}={v}", st.lists(st.sampled_from(SECTIONS + FIELDS), min_size=1, max_size=4).map(".".join),
              st.one_of(st.text(max_size=15), st.integers().map(str), st.sampled_from(["null", "[1, 2]", "{a: 1}", "x: [", "2x"]))))


@settings(max_examples=300, deadline=None)
@given(st.lists(overrides, max_size=4))
def test_any_set_overrides_give_a_recipe_or_a_recipe_error(items):
    _load("name: r\ndata: {root: .}\nteacher: {model: resnet18, adapt: scratch}\n", items)
