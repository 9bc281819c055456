"""factory publish: what an export folder would upload, checked without the network; the hub unreachable is one
line and a non-zero exit."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from factory.cli import app
from factory.report.publish import write_report
from factory.report.schema import Report

FIXTURE = Path(__file__).parent / "fixtures" / "report.json"
runner = CliRunner()


def _export(folder: Path) -> Path:
    """An export folder as a build writes it, from the fixture report (model files stand in as bytes)."""
    folder.mkdir()
    write_report(Report.load(FIXTURE), folder)
    for name in ("student.onnx", "student.int8.onnx", "labels.json"):
        (folder / name).write_bytes(b"x")
    (folder / "my_notes.txt").write_text("the user's own file")
    return folder


def test_publish_dry_run_lists_the_factory_files_and_checks_the_card(tmp_path):
    folder = _export(tmp_path / "out")
    result = runner.invoke(app, ["publish", str(folder), "--repo", "my-org/tiny-int8", "--dry-run"])
    assert result.exit_code == 0, result.output
    listed = result.output.split(": ", 1)[1].replace("\n", "").split(", ")
    assert {"README.md", "student.onnx", "student.int8.onnx", "labels.json", "report.json", "report.md"} <= set(listed)
    assert "my_notes.txt" not in listed


def test_publish_refuses_a_bad_repo_a_folder_without_card_and_an_unreachable_hub(tmp_path, monkeypatch):
    folder = _export(tmp_path / "out")
    bad = runner.invoke(app, ["publish", str(folder), "--repo", "no-slash", "--dry-run"])
    assert bad.exit_code == 10 and "--repo 'no-slash': not a hub repository id" in bad.output
    (folder / "README.md").write_text("---\nlicense: [\n---\n")
    broken = runner.invoke(app, ["publish", str(folder), "--repo", "my-org/tiny", "--dry-run"])
    assert broken.exit_code == 10 and "README.md" in broken.output and "Traceback" not in broken.output
    shutil.rmtree(folder)
    folder = _export(tmp_path / "out")
    monkeypatch.setattr("factory.network.hub_reachable", lambda timeout=3.0: False)
    offline = runner.invoke(app, ["publish", str(folder), "--repo", "my-org/tiny"])
    assert offline.exit_code == 4 and "cannot be reached" in offline.output and "nothing was uploaded" in offline.output
    missing = runner.invoke(app, ["publish", str(tmp_path / "nope"), "--repo", "my-org/tiny", "--dry-run"])
    assert missing.exit_code == 10 and "no report.json" in missing.output
