"""A stage's code identity moves when, and only when, code that computes its output changes.

Each test edits a copy of the package and recomputes every stage's identity from it: messages, docstrings and
modules that declare they change no result (``CHANGES_NO_RESULT = True``, factory.identity) must move no key; the modules that compute a stage's
output must move its key and the keys of the stages downstream of it. A module classified wrongly either way
fails here.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import shutil
from pathlib import Path

import pytest

import factory
import factory.identity as identity
from factory.identity import changes_no_result
from factory.stage import Stage

PACKAGE = Path(factory.__file__).resolve().parent
STAGE_MODULES = ("factory.sources", "factory.stages.select", "factory.stages.augment",
                 "factory.stages.augment_filter", "factory.stages.teacher",
                 "factory.stages.distill", "factory.stages.baselines", "factory.stages.export",
                 "factory.stages.bench", "factory.stages.refit", "factory.stages.apps", "factory.pretrain")


def all_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(package.rglob("*.py"))}


def stages() -> list[Stage]:
    found = []
    for name in STAGE_MODULES:
        for value in vars(importlib.import_module(name)).values():
            values = value.values() if isinstance(value, dict) else [value]
            found += [v for v in values if isinstance(v, Stage)]
    return found


def identities(package: Path) -> dict[str, str]:
    identity.code_fingerprint.cache_clear()
    try:
        return {m: identity.code_fingerprint(m, package) for m in STAGE_MODULES}
    finally:
        identity.code_fingerprint.cache_clear()


@pytest.fixture
def package(tmp_path) -> Path:
    copy = tmp_path / "factory"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.csv", "*.json"))
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: {old!r} not found (the test's edit no longer applies)"
    path.write_text(text.replace(old, new, 1))


def reword(path: Path, kind: type, where=lambda node: True) -> None:
    """Reword the first string literal inside a node of ``kind`` in ``path`` (its interpolations stay)."""
    old = string_of(path, kind, where)
    quote = min(i for i in (old.find('"'), old.find("'")) if i >= 0)
    quote += 3 if old[quote:quote + 3] in ('"""', "'''") else 1
    edit(path, old, old[:quote] + "Reworded: " + old[quote:])


def add_docstring(path: Path) -> None:
    """Give the first function in ``path`` that has no docstring (and a one-line signature) one."""
    lines = path.read_text().splitlines(keepends=True)
    for node in ast.walk(ast.parse("".join(lines))):
        if isinstance(node, ast.FunctionDef) and node.body[0].lineno == node.lineno + 1 and not (
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)):
            indent = " " * node.body[0].col_offset
            lines.insert(node.lineno, f'{indent}"""Added where there was none."""\n')
            path.write_text("".join(lines))
            return
    raise AssertionError(f"{path}: no function without a docstring (the test's edit no longer applies)")


def string_of(path: Path, kind: type, where=lambda node: True) -> str:
    """The source of the first string literal inside a node of ``kind`` in ``path``."""
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, kind) and where(node):
            for text in ast.walk(node):
                if isinstance(text, ast.JoinedStr) or (isinstance(text, ast.Constant) and isinstance(text.value, str)):
                    return ast.get_source_segment(source, text)
    raise AssertionError(f"{path}: no string in a {kind.__name__}")


def test_every_stage_module_holds_a_stage():
    assert {s.module for s in stages()} == set(STAGE_MODULES)
    in_stages = {m for m in all_modules() if m.startswith("factory.stages.")}
    assert in_stages <= set(STAGE_MODULES), f"modules in factory/stages/ without a Stage: {in_stages - set(STAGE_MODULES)}"


def test_infrastructure_edits_move_no_key(package):
    before = identities(package)
    edited = [m for m in all_modules(package) if changes_no_result(m, package)]
    assert {"factory.cache", "factory.errors", "factory.console", "factory.cli", "factory.network"} <= set(edited)
    assert any(m.startswith("factory.report") for m in edited) or not (package / "report").exists()
    for module, path in all_modules(package).items():
        if changes_no_result(module, package):
            path.write_text(path.read_text() + "\n\ndef _edited_by_test():\n    return 'a reworded message'\n")
    after = identities(package)
    assert after == before, {m for m in before if after[m] != before[m]}


def test_every_module_declares_it_changes_no_result_or_is_covered_by_a_stage():
    """A module no stage follows must say why (it changes no result); one that says so is never followed. Either
    way a module is classified, so moving or adding one cannot silently change what a key covers."""
    covered = set().union(*(identity.code_modules(m) for m in STAGE_MODULES))
    for module in all_modules():
        declared = changes_no_result(module)
        assert declared != (module in covered), (
            f"{module}: " + ("declares CHANGES_NO_RESULT but a stage's code identity covers it" if declared else
                             "no stage covers it: declare CHANGES_NO_RESULT = True in it, or import it from a stage"))


def test_a_wrong_declaration_fails_either_way(package):
    """Declaring a module a stage computes with drops it from that stage's identity; the check above sees both."""
    before = identities(package)
    losses = package / "losses.py"
    losses.write_text(losses.read_text() + "\nCHANGES_NO_RESULT = True\n")
    assert changes_no_result("factory.losses", package) and identities(package) != before
    assert not changes_no_result("factory.losses")


def test_messages_and_docstrings_move_no_key(package):
    before = identities(package)
    models, train, bench = package / "models.py", package / "train.py", package / "stages" / "bench.py"
    reword(models, ast.Raise)
    edit(train, '"""', '"""Reworded. ')  # the module's docstring
    is_log = lambda node: isinstance(node.func, ast.Name) and node.func.id in ("log", "progress_bar")  # noqa: E731
    reword(bench, ast.Call, is_log)
    add_docstring(train)  # a docstring where there was none
    assert identities(package) == before


def test_a_loss_change_moves_the_stages_that_use_it(package):
    before = identities(package)
    (package / "losses.py").write_text((package / "losses.py").read_text() + "\n\nEPSILON = 1e-6\n")
    after = identities(package)
    moved = {m for m in before if after[m] != before[m]}
    # export: its quantization-aware remedy distils with the same loss; the refit retrains the chosen method
    assert moved == {"factory.stages.distill", "factory.stages.baselines", "factory.pretrain", "factory.stages.export",
                     "factory.stages.refit"}


def test_a_teacher_change_moves_the_teacher_and_every_stage_downstream(package, monkeypatch):
    from factory.stages.distill import DISTILL
    from factory.stages.export import EXPORT
    from factory.stages.teacher import TEACHER

    def keys() -> tuple[str, str, str]:
        identity.code_fingerprint.cache_clear()
        teacher = TEACHER.key({"plan": 1}, {"data": "d"})
        distilled = DISTILL.key({"plan": 2}, {"teacher": teacher})
        return teacher, distilled, EXPORT.key({"plan": 3}, {"model": distilled})

    monkeypatch.setattr(identity, "_PACKAGE_DIR", package)
    before = keys()
    teacher_py = package / "stages" / "teacher.py"
    teacher_py.write_text(teacher_py.read_text() + "\n\nVIEWS_SEED_OFFSET = 1\n")
    after = keys()
    identity.code_fingerprint.cache_clear()
    assert all(a != b for a, b in zip(after, before))


def test_a_session_option_moves_export_and_bench_not_training(package):
    before = identities(package)
    session = package / "runtime" / "session.py"
    edit(session, "options.inter_op_num_threads = 1", "options.inter_op_num_threads = 2")
    after = identities(package)
    moved = {m for m in before if after[m] != before[m]}
    assert {"factory.stages.export", "factory.stages.bench", "factory.stages.select"} <= moved


def test_no_import_cycle_among_factory_modules():
    """Every import counts, inside functions and for annotations too (a cycle there is still a layering knot)."""
    modules, graph = all_modules(), {}
    for module, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("factory"):
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("factory")}
        graph[module] = {m for m in imported if m in modules and m not in (module, "factory")}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_offline_mode_is_scoped():
    """Offline mode holds inside the block only: the process's own setting comes back afterwards."""
    import os

    import huggingface_hub.constants as hf_constants

    from factory.network import offline

    before = (os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE)
    try:
        os.environ.pop("HF_HUB_OFFLINE", None)
        hf_constants.HF_HUB_OFFLINE = False
        with offline():
            assert os.environ["HF_HUB_OFFLINE"] == "1" and hf_constants.HF_HUB_OFFLINE
        assert "HF_HUB_OFFLINE" not in os.environ and not hf_constants.HF_HUB_OFFLINE
        with offline(False):
            assert not hf_constants.HF_HUB_OFFLINE
    finally:
        if before[0] is not None:
            os.environ["HF_HUB_OFFLINE"] = before[0]
        hf_constants.HF_HUB_OFFLINE = before[1]


def test_plan_reads_are_recorded_inside_the_block_only():
    from conftest import recording_plan_reads
    from factory.train import TrainSettings

    settings = TrainSettings(1, 2, 0.0, 0.0, 0)
    with recording_plan_reads() as reads:
        settings.epochs
    settings.batch_size
    assert reads == {("TrainSettings", "epochs")}
