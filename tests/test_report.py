"""The report rendered from a checked-in report.json (tests/fixtures/report.json, written by a real tiny build with
``student.model: auto``): the schema, Markdown, HTML and plots, in milliseconds and without building anything."""

import json
import time
from pathlib import Path

import pytest

from factory.report.augmentation import Augmentation, ClassImages, SyntheticFilter
from factory.report.budget import verdict_line
from factory.report.html import render_html
from factory.report.markdown import render_markdown
from factory.report.plots import write_plots
from factory.report.publish import write_report
from factory.report.schema import SCHEMA_VERSION, Report
from factory.report.selection import CANDIDATE_COLUMNS, candidate_table

FIXTURE = Path(__file__).parent / "fixtures" / "report.json"


@pytest.fixture(scope="module")
def report() -> Report:
    return Report.load(FIXTURE)


@pytest.fixture(scope="module")
def published(report, tmp_path_factory) -> Path:
    """The fixture's report written as a build writes it: JSON, schema, plots, Markdown and HTML."""
    folder = tmp_path_factory.mktemp("published")
    write_report(report, folder)
    return folder


def test_the_fixture_validates_and_round_trips(report):
    text = FIXTURE.read_text()
    assert report.schema_version == SCHEMA_VERSION
    assert Report.model_validate_json(report.model_dump_json()) == report
    assert json.loads(report.model_dump_json()) == json.loads(text)  # nothing lost or added on the way
    assert report.selection.search.winner == report.student.model  # the fixture covers the search


def test_unknown_keys_are_rejected():
    data = json.loads(FIXTURE.read_text())
    data["budget"]["verdikt"] = "met"
    with pytest.raises(ValueError, match="verdikt"):
        Report.model_validate(data)


def test_rendering_takes_milliseconds(report, tmp_path):
    start = time.perf_counter()
    markdown = render_markdown(report)
    page = render_html(report, tmp_path)
    (tmp_path / "report.json").write_text(report.model_dump_json(indent=2))
    (tmp_path / "report.schema.json").write_text(json.dumps(Report.model_json_schema()))
    assert time.perf_counter() - start < 1.0
    assert markdown and page


def test_markdown_has_the_sections_tables_verdict_shipped_model_and_notes(report):
    text = render_markdown(report)
    for heading in ("# tiny", "## Results", "## Budget", "## Student selection", "## Compute", "## Notes"):
        assert f"\n{heading}\n" in f"\n{text}"
    assert text.index("**Shipped:**") < text.index("## Results")  # the report opens with the decision
    assert f"**Shipped:** `{report.shipped.file}` ({report.shipped.name}): {report.shipped.decision}." in text
    assert "| model | precision | ships | val accuracy | test accuracy | p50 ms (band) |" in text
    for row in report.results:
        assert f"| {row.name} | {row.precision} |" in text
    assert f"Verdict: **{report.budget.verdict}** for {report.budget.model}." in text
    for note in report.notes:
        assert f"- {note}" in text
    assert "| " + " | ".join(CANDIDATE_COLUMNS) + " |" in text
    assert "search: " in text and "| contender | family |" in text


def test_html_has_tables_and_the_plots_embedded(published):
    page = (published / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<table>") >= 6
    assert page.count('<img src="data:image/png;base64,') == 3  # accuracy/latency, training curves, students
    assert "<strong>Shipped:</strong>" in page and "<h2>Budget</h2>" in page and "<li>" in page


def test_the_plots_are_written(published):
    for name in ("accuracy_latency.png", "training_curves.png", "students.png"):
        assert (published / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_json_schema_is_published_and_the_fixture_validates_against_it(published):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((published / "report.schema.json").read_text())
    jsonschema.validate(json.loads(FIXTURE.read_text()), schema)
    assert json.loads((published / "report.json").read_text()) == json.loads(FIXTURE.read_text())


def test_one_verdict_line_for_the_report_and_the_cli(report):
    budget = report.budget.model_copy(update={"verdict": "not met", "failed": ["max_size_mb"],
                                              "inconclusive": ["latency_ms (p50, batch 1)"]})
    line = verdict_line(budget, str.upper)
    assert line == (f"NOT MET for {budget.model} (failed: max_size_mb) (inconclusive: latency_ms (p50, batch 1): "
                    "the latency band straddles the limit)")
    assert f"Verdict: **NOT met** for {budget.model} (failed: max_size_mb)" in \
        render_markdown(report.model_copy(update={"budget": budget}))


def test_the_candidate_table_lists_every_candidate_or_those_asked_for(report):
    rows = candidate_table(report.selection)
    assert len(rows) == len(report.selection.candidates) and all(len(r) == len(CANDIDATE_COLUMNS) for r in rows)
    chosen = report.selection.choice
    assert any(r[0].startswith(f"{chosen} (chosen)") for r in rows)
    last = report.selection.candidates[-1].architecture
    assert [r[0].split()[0] for r in candidate_table(report.selection, only=[last])] == [last]


def test_synthetic_data_has_its_section(report):
    aug = Augmentation(mode="text2img", pipeline="tiny-sd", pipeline_revision="abc123", generated=6, used=5,
                       flagged_nsfw=0, filter=SyntheticFilter(min_confidence=0.5, kept=5, dropped=1),
                       for_baselines=False, manifest="synthetic_manifest.jsonl",
                       per_class={c: ClassImages(real=13, generated=2, used=2 - (c == "red"), dropped=int(c == "red"))
                                  for c in report.data.classes})
    text = render_markdown(report.model_copy(update={"augmentation": aug}))
    assert "## Synthetic data" in text and "kept 5 and dropped 1" in text and "| red | 13 | 2 | 1 | 1 |" in text
    assert "the baselines trained on the real images only" in text


def test_plots_need_no_selection(report, tmp_path):
    written = write_plots(report.model_copy(update={"selection": None}), tmp_path)
    assert [p.name for p in written] == ["accuracy_latency.png", "training_curves.png"]
