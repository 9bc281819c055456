"""What every YAML config file of the factory shares: strict sections (unknown keys rejected, so a typo fails
before any work starts), checkpoint-path fields, and the loader: read the file, resolve its relative paths,
apply ``--set key.path=value`` overrides and validate in full, every problem in one :class:`RecipeError` naming
the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from factory.errors import RecipeError

CHANGES_NO_RESULT = True

WEIGHTS_HELP = (
    "'timm' (timm's default pretrained weights for the model, from the hub), "
    "'hf-hub:<org>/<repo>' (a hub repo), a local checkpoint path (.safetensors, .pth, or a folder "
    "with config.json and model.safetensors), or null (random init)"
)


ModelT = TypeVar("ModelT", bound=BaseModel)

ROLES = {
    "report": "read only when the report, card and exit code are made (or which trained model ships, and the refit "
              "that adds its own stages after that decision): changes no stage's plan",
    "execution": "how fast, never what, a stage computes: changes no stage's plan",
    "selection": "read by the candidate listing of student.model: auto, whose stages are keyed per candidate",
    "data": "what the task data is: changes its content fingerprint, which every stage reading data is keyed by",
    "source": "how the images are found: changes the task data itself (its classes, samples and fingerprint)",
}
"""The role of a config field that reaches no stage's plan directly, declared on the field (:func:`role`); every
other field is read by the plans of the stages it changes (tests/test_stage_keys.py checks both)."""


def role(name: str) -> dict[str, str]:
    """A field's ``json_schema_extra`` declaring its role (:data:`ROLES`); it shows in the recipe's JSON Schema."""
    if name not in ROLES:
        raise ValueError(f"unknown field role {name!r}; one of {', '.join(ROLES)}")
    return {"role": name}


class Section(BaseModel):
    """A config section: unknown keys are an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_weights(value: str) -> str:
    """A weights field's value (:data:`WEIGHTS_HELP`), a local path made absolute; ValueError if it is missing."""
    if value == "timm" or value.startswith("hf-hub:"):
        return value
    if not Path(value).expanduser().exists():
        raise ValueError(f"checkpoint path {value!r} does not exist; expected {WEIGHTS_HELP}")
    return str(Path(value).expanduser().resolve())


Weights = Annotated[str, AfterValidator(_check_weights)]
"""A weights field of a config: a local path (made absolute, and it must exist), ``timm`` or ``hf-hub:<id>``."""


def _set_path(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{source}: cannot set {dotted!r}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r}: expected KEY.PATH=VALUE, for example --set distill.epochs=5")
    try:
        value = strict_yaml(raw) if raw.strip() else None
    except yaml.composer.ComposerError as err:
        raise RecipeError(f"--set {item!r}: {err.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


_RELATIVE_PATH_FIELDS = ("data.root", "data.dataset", "data.class_names", "teacher.weights", "baseline.weights", "augment.pipeline", "budget.measured")


def _resolve_relative_paths(tree: dict, base: Path) -> None:
    """Paths written in a recipe file are relative to that file, not to the working directory."""
    for dotted in _RELATIVE_PATH_FIELDS:
        section, key = dotted.split(".")
        value = tree.get(section, {}).get(key) if isinstance(tree.get(section), dict) else None
        if isinstance(value, list) and dotted == "budget.measured":  # data.class_names as a list holds names
            tree[section][key] = [str((base / Path(v).expanduser()).resolve()) if isinstance(v, str) else v
                                  for v in value]
            continue
        if not isinstance(value, str) or value == "timm" or value.startswith("hf-hub:"):
            continue
        if dotted == "data.dataset" and tree["data"].get("source") != "hf":
            continue  # a torchvision class name
        path = Path(value).expanduser()
        if path.is_absolute():
            continue
        candidate = base / path
        if dotted in ("augment.pipeline", "data.dataset", "data.class_names") and not candidate.exists():
            continue  # a hub id such as stabilityai/sd-turbo, a class name, a shipped names list
        tree[section][key] = str(candidate.resolve())


def _section_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the section holding ``loc`` (a pydantic error location), or [] if not a section."""
    import typing

    section: type | None = model
    for part in loc[:-1]:
        field = section.model_fields.get(str(part)) if section is not None else None
        if field is None:
            return []
        options = [field.annotation, *typing.get_args(field.annotation)]
        section = next((t for t in options if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return list(section.model_fields) if section is not None else []


def _unknown_field_message(model: type[BaseModel], loc: tuple) -> str:
    import difflib

    fields = _section_fields(model, loc)
    close = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.5)
    if close:
        return f"unknown field; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?"
    return "unknown field; valid here: " + (", ".join(fields) if fields else "see recipes/")


def _format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    lines = [f"{source}: invalid recipe ({err.error_count()} problem{'s' * (err.error_count() > 1)}):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_field_message(model, e["loc"])
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        got_text = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {msg}{got_text}")
    return "\n".join(lines)

MAX_RECIPE_BYTES = 1 << 20
"""A recipe is a page of settings: a larger file is refused before it is parsed."""


class _StrictLoader(yaml.SafeLoader):
    """YAML as a recipe needs it: safe tags only, no aliases (a few nested ones expand to gigabytes), and no key
    given twice in one mapping (the later one would silently replace the earlier)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}) is not allowed in a recipe; "
                                              "write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in this mapping; "
                                                            "keep one", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def strict_yaml(text: str) -> Any:
    """``text`` parsed as a recipe's YAML (:class:`_StrictLoader`); yaml.YAMLError with its place otherwise."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_recipe_text(path: Path) -> str:
    """The text of the recipe file ``path``: UTF-8 (a byte-order mark is fine), at most :data:`MAX_RECIPE_BYTES`."""
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {size:,} bytes, over the {MAX_RECIPE_BYTES:,} a recipe may have; is it a recipe?")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RecipeError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                          "save the recipe as UTF-8") from None


def load_yaml_model(model: type[ModelT], path: str | Path, overrides: list[str] | None = None) -> ModelT:
    """Read a YAML file, resolve its relative paths against it, apply ``--set`` overrides, validate as ``model``."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} not found; pass the path of a YAML recipe, e.g. recipes/flowers12_cpu.yaml")
    try:
        tree = strict_yaml(read_recipe_text(path)) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{path}:{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections (name, data, ...), got {type(tree).__name__}")
    _resolve_relative_paths(tree, path.parent)
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_path(tree, key, value, f"--set {item!r}")
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        source = str(path) + (" with --set " + " ".join(overrides) if overrides else "")
        raise RecipeError(_format_validation_error(err, source, model)) from None
