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


def _load_bytes(data: bytes) -> str | None:
    """The RecipeError's text for a recipe file holding ``data``, None when it loads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_bytes(data)
        try:
            assert isinstance(load_recipe(path), Recipe)
            return None
        except RecipeError as err:
            assert str(err) and "Traceback" not in str(err)
            return str(err)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_recipe_or_a_recipe_error(data):
    _load_bytes(data)


@settings(max_examples=100, deadline=None)
@given(trees, st.integers(1, 9))
def test_aliases_are_refused_before_they_expand(tree, depth):
    """The 'billion laughs': each level nine aliases of the one before; refused at the first alias, in bounded
    memory, whatever else the recipe holds."""
    import tracemalloc

    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth + 1)]
    text = (yaml.safe_dump(tree) if tree else "") + "\n".join(laughs) + "\n"
    tracemalloc.start()
    try:
        message = _load_bytes(text.encode())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message is not None and peak < 50 * 2**20
    assert "alias" in message or "not valid YAML" in message


@settings(max_examples=100, deadline=None)
@given(trees)
def test_a_key_given_twice_at_any_level_is_named(tree):
    rest = {k: v for k, v in tree.items() if k not in ("name", "data")}
    text = yaml.safe_dump({"name": "r", "data": {"root": ".", "nested": {"k": 1}}, **rest}, sort_keys=False)
    for twice in (text + "name: again\n", text.replace("    k: 1\n", "    k: 1\n    k: 2\n")):
        message = _load_bytes(twice.encode())
        assert message is not None and "given twice" in message and "line" in message


def test_encodings_a_bom_is_fine_and_other_text_is_named():
    good = b"name: r\ndata: {root: .}\nteacher: {model: resnet18, adapt: scratch}\n"
    assert "UTF-8" not in (_load_bytes(b"\xef\xbb\xbf" + good) or "")
    message = _load_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "r.yaml: line 1: not UTF-8 text (byte 0xe9 at offset 9)" in message
    assert "over the" in _load_bytes(b"#" * (2**20 + 1))
