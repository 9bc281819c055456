"""``factory students``: every candidate student measured for a recipe's budget and device profile, and the
order the build's search admits them in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from factory.cli.common import CacheOpt, DebugOpt, RecipeArg, SetOpt, app, needs_build_extra, run
from factory.console import console

if TYPE_CHECKING:
    from factory.report.selection import Selection

CHANGES_NO_RESULT = True


@app.command()
def students(
    recipe: RecipeArg,
    set_: SetOpt = None,
    measured: Annotated[Optional[list[Path]], typer.Option("--measured", help="a `factory bench --json` file measured "
                                                           "on the device (repeatable); overrides this host's figures")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="also write the listing here")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="draw prior accuracy vs latency with the front and "
                                                 "the budget into this PNG")] = None,
    export_dir: Annotated[Optional[Path], typer.Option("--export", help="copy each candidate's ONNX file here, to "
                                                       "measure on the device with factory bench --json")] = None,
    cache_dir: CacheOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Measure every candidate student for the recipe's budget and device profile, and show which fit and in
    which order the build's search (student.model: auto) admits them."""
    run(needs_build_extra, debug)
    from factory.pipeline import students as list_students
    from factory.recipe import load_recipe
    from factory.report.selection import selection_of
    from factory.decide.listing import NoStudentFits

    loaded = run(lambda: load_recipe(recipe, ["student.model=auto", *(set_ or [])]), debug)

    def listing_or_near_misses():
        try:
            return list_students(loaded, measured or [], cache_dir)
        except NoStudentFits as err:
            nearest = [r.architecture for r in err.listing.nearest_misses(8)]
            _print_students(selection_of(err.listing), loaded, only=nearest)
            raise

    listing = run(listing_or_near_misses, debug)
    selection = selection_of(listing)
    _print_students(selection, loaded)
    if json_file is not None:
        from factory.files import write_atomic

        write_atomic(json_file, selection.model_dump_json(indent=2, exclude={"search"}) + "\n")
    if plot is not None:
        from factory.report.plots import plot_students

        plot_students(selection, loaded.budget.latency_ms, plot)
        console.print(f"wrote {plot}", highlight=False)
    if export_dir is not None:
        _export_candidates(listing, export_dir)


def _export_candidates(listing, folder: Path) -> None:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for row in listing.rows:
        if row.path:
            shutil.copyfile(row.path, folder / f"{row.architecture}.{row.precision}.onnx")
    console.print(f"wrote the candidates' ONNX files to {folder}/: on the device run `factory bench {folder}/*.onnx "
                  f"--threads {listing.settings.threads} --json measured.json`, then `factory students ... --measured "
                  "measured.json`", highlight=False)


def _print_students(selection: Selection, recipe, only: list[str] | None = None) -> None:
    from factory.budget import LIMITS
    from factory.report.selection import CANDIDATE_COLUMNS, candidate_table

    b = recipe.budget
    limits = ", ".join(f"{limit.field} {getattr(b, limit.field):g}" for limit in LIMITS
                       if getattr(b, limit.field) is not None) or "none"
    table = Table(title=f"{recipe.name}: candidate students for {selection.profile} ({selection.threads} threads; "
                        f"limits: {limits})")
    for col in CANDIDATE_COLUMNS:
        table.add_column(col, justify="left" if col in ("candidate", "latency from", "fits") else "right",
                         overflow="fold")
    fits = CANDIDATE_COLUMNS.index("fits")
    for cells in candidate_table(selection, only):
        cells[fits] = f"[green]{cells[fits]}[/]" if cells[fits] == "yes" else f"[red]{escape(cells[fits])}[/]"
        table.add_row(*cells)
    console.print(table)
    sources = sorted({r.latency_source for r in selection.candidates if r.latency_ms})
    console.print(f"* Pareto front (prior accuracy vs measured latency). Latency: {'; '.join(sources)}; "
                  f"{selection.rounds} interleaved rounds, band >= ±{selection.noise_band:.0%}. Priors: "
                  f"{selection.priors_source}.", highlight=False, soft_wrap=True)
    if selection.admitted:
        console.print(f"admitted to the build's search, in this order: [bold]{', '.join(selection.admitted)}[/] "
                      f"({selection.rule}; regime prior: {selection.regime_prior})", highlight=False, soft_wrap=True)
