"""``report.md``: the :class:`~factory.report.schema.Report` in Markdown, one function per section or table."""

from __future__ import annotations

from factory.report.augmentation import Augmentation
from factory.report.budget import Budget, verdict_line
from factory.report.compute import Compute, flops_text
from factory.report.card import licences_section
from factory.fields import percent
from factory.report.schema import Report, ShipDecision
from factory.report.selection import CANDIDATE_COLUMNS, Search, Selection, candidate_table

CHANGES_NO_RESULT = True

PLOTS = {"accuracy_latency.png": "accuracy vs latency", "training_curves.png": "training curves",
         "students.png": "candidate students"}
"""The plots the report shows: file -> alt text."""


def table(columns: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows]


def image(file: str) -> str:
    """A plot of :data:`PLOTS`, shown."""
    return f"![{PLOTS[file]}]({file})"


def header(report: Report) -> list[str]:
    """The title, what made the report and where, and the data."""
    git, host, data = report.git, report.host, report.data
    return [f"# {report.name}", "",
            f"factory {report.factory_version}"
            + (f" (git {git.commit[:10]}{', uncommitted changes' if git.dirty else ''})" if git else "")
            + f", recipe {report.recipe_hash}, built {report.created} on {host.cpu} ({host.machine}, {report.device}; "
            f"ISA flags {' '.join(host.isa_flags) or 'none listed'}); "
            + ", ".join(f"{k} {v}" for k, v in report.libraries.items()) + ".", "",
            f"Data: {data.source}: {len(data.classes)} classes, {data.train} train / {data.val} val / {data.test} test "
            "images" + (f", {data.synthetic} synthetic" if data.synthetic else "")
            + (f"; {len(data.skipped)} image(s) skipped because they cannot be decoded (listed in report.json, "
               "data.skipped)" if data.skipped else "") + ". "
            f"Every decision (student search, calibration, accepting a quantized model, which model ships) was made "
            f"on {data.decisions_on}; the test split was used only to measure.", ""]


def shipped_section(shipped: ShipDecision) -> list[str]:
    """The report's opening: which model shipped, by which rule, and by how much."""
    rows = [[f"{o.name} ({o.precision}){' (shipped)' if o.name == shipped.method else ''}", percent(o.val_accuracy),
             "met" if not o.misses else "misses " + ", ".join(o.misses)] for o in shipped.options]
    rule = ("the distilled student ships whatever the comparison says." if shipped.rule == "distilled" else
            "every trained model at the precision it would ship is a candidate; of those meeting every budget check, "
            "the best validation accuracy ships, unless another's accuracy is inside the paired noise of it (its "
            "90% interval on the same images holds 0): then they tie and the lowest mean validation NLL of them "
            "ships (benchmarks/decisions.py measures this rule's regret on test). The test split only measures.")
    return [f"**Shipped:** `{shipped.file}` ({shipped.name}): {shipped.decision}. Precision: {shipped.why}.", "",
            *table(("model (shipped precision)", "validation accuracy", "budget"), rows), "",
            f"Rule (`ship: {shipped.rule}`): {rule}", ""]


RESULT_COLUMNS = ("model", "precision", "ships", "val accuracy", "test accuracy", "p50 ms (band)", "vs shipped",
                  "p90 ms", "p99 ms", "end-to-end p50 ms", "batch p50 ms", "eager p50 ms", "peak MB", "size MB", "params")


def results_table(report: Report) -> list[str]:
    """Every model at every precision: accuracy, latency, memory and size."""
    rows = [[r.name, r.precision, "yes" if r.ships else "", percent(r.val_accuracy), percent(r.accuracy),
             r.latency_ms.text(), f"{r.vs_student.median:.2f}x ({r.vs_student.low:.2f}-{r.vs_student.high:.2f})",
             f"{r.latency_ms.p90:.2f}", f"{r.latency_ms.p99:.2f}",
             r.end_to_end_ms.text() if r.end_to_end_ms else "-", f"{r.latency_ms_batch.p50:.2f}",
             f"{r.eager_latency_ms.p50:.2f}" if r.eager_latency_ms else "-", f"{r.peak_memory_mb or 0:.0f}",
             f"{r.size_mb:.2f}", f"{r.params / 1e6:.2f}M"] for r in report.results]
    return ["## Results", "", report.comparison.line, "", *table(RESULT_COLUMNS, rows)]


def latency_section(report: Report) -> list[str]:
    """How latency was measured, and on how busy a host."""
    first, latency = report.first_row, report.latency
    load = latency.load
    options = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in latency.session_options.items())
    busy = ("" if load.others_cpu is None else
            f"; meanwhile other processes used {load.others_cpu:.0%} of the CPU and steal was {load.steal:.0%}")
    lines = [f"Latency: onnxruntime {first.provider} ({options}), {first.threads} threads on {load.cores} cores, "
             f"batch 1, every file measured together in {latency.rounds} interleaved rounds; p50 is the median over "
             f"rounds, the band its 95% interval widened to at least ±{latency.noise_band:.0%} (bench.noise_band, the "
             "drift between measurements on a shared host); vs shipped: latency over the shipped model's, round by "
             f"round. Load average {load.load_before:.2f} before, {load.load_after:.2f} after{busy}. Batch column: "
             f"batch {first.latency_ms_batch.batch_size}; eager: PyTorch on the same threads; peak: resident memory "
             "of a process running the model alone.", ""]
    return lines + ([f"**Warning:** {latency.warning}.", ""] if latency.warning else [])


REMEDY_WORDS = {"equalized": " after cross-layer equalization and bias correction",
                "equalized-relu6": " after equalization through ReLU6 (made ReLU) and bias correction",
                "qat": " after quantization-aware fine-tuning"}


def export_section(report: Report) -> list[str]:
    """ONNX parity with PyTorch and every quantization attempt."""
    parity, quant = report.export.parity, report.export.quantization
    lines = [f"Parity (ONNX FP32 vs PyTorch, {parity.images} check images): max |logit diff| "
             f"{parity.max_abs_diff:.2e}, top-1 agreement {parity.top1_agreement * 100:.1f}%.", ""]
    if quant:
        tried = "; ".join(f"{a.calibration or quant.method}" + REMEDY_WORDS.get(a.remedy, "")
                          + (f" with {len(a.float_nodes)} layer(s) in float" if a.float_nodes else "")
                          + f": drop {a.drop * 100:+.1f} points ({a.confidence:.0%} interval "
                          f"{a.drop_low * 100:+.1f} to {a.drop_high * 100:+.1f})" + (" (kept)" if a.used else "")
                          for a in quant.attempts)
        verdict = "accepted" if quant.accepted else f"rejected, not published: {quant.reason}"
        bits = ", 7-bit weights: x86 without VNNI cannot overflow them" if quant.weight_bits == 7 else ""
        bits += (", accuracy as the QDQ file defines it, as the device computes it (this host's kernels overflow "
                 "16-bit sums)") if quant.reference else ""
        lines += [f"Quantization ({quant.method}{bits}, accuracy checked on {quant.checked_on}): {tried}; {verdict}.",
                  ""]
    if quant and quant.qat:
        q, steps = quant.qat, quant.qat.parity.get("max_diff_steps")
        lines += [f"Quantization-aware fine-tuning: {q.epochs} epoch(s) of {q.objective} through the INT8 "
                  f"simulation ({q.calibration} calibration), {flops_text(q.flops)}, {q.wall_s:.0f} s (counted in "
                  f"the method's compute); the file against the simulation: max |logit diff| "
                  f"{q.parity['max_abs_diff']:.3g}" + (f" ({steps:.1f} quantization steps)" if steps is not None else "")
                  + f", top-1 agreement {q.parity['top1_agreement'] * 100:.1f}%.", ""]
    return lines


def budget_section(budget: Budget) -> list[str]:
    """The budget's verdict and each of its checks."""
    verdict = verdict_line(budget, lambda v: f"**{v.replace('not met', 'NOT met')}**")
    lines = ["## Budget", "", f"Profile `{budget.profile}`: {budget.profile_description}. Verdict: {verdict}.", ""]
    if not budget.host_matches_profile:
        lines += [f"Latency was measured on this {budget.measured_on} host, which cannot stand in for the profile's "
                  f"device ({budget.stand_in}): the latency figures are proxies; run `factory bench` on the device.", ""]
    if not budget.checks:
        return lines + ["The recipe sets no budget limits."]
    rows = [[c.name, c.limit_text(), c.value_text(), c.verdict] for c in budget.checks]
    return lines + table(("check", "limit", "value", "verdict"), rows)


def selection_section(selection: Selection | None) -> list[str]:
    """How the student was chosen: the candidates measured and the search among them."""
    if not selection:
        return []
    proxies = "" if selection.host_stands_in else (
        f"; this host cannot stand in for the profile ({selection.stand_in}), so latencies not measured on the "
        "device are proxies")
    return ["", "## Student selection", "",
            f"`student.model: auto`: every candidate was exported and quantized as it would ship for "
            f"`{selection.profile}` ({selection.threads} threads) and measured in {selection.rounds} interleaved "
            f"rounds{proxies}. Regime prior: {selection.regime_prior}. ImageNet priors: {selection.priors_source}; "
            "* marks the Pareto front.", "",
            *search_section(selection.search), *table(CANDIDATE_COLUMNS, candidate_table(selection)), "",
            image("students.png")]


def _rung_cells(search: Search) -> list[list[str]]:
    rows = []
    for c in search.contenders:
        cells = []
        for epochs in search.rung_epochs:
            got = [s for s in c.scores if s.epochs == epochs]
            cells.append(" ; ".join(f"{s.nll:.3f} / {s.accuracy * 100:.1f}%"
                                    + (f" (seed {s.seed})" if s.seed != got[0].seed else "") for s in got) or "-")
        prior = "-" if c.regime_prior is None else f"{c.regime_prior:.3f}"
        left = "winner" if c.left_at is None else f"{c.left_at} epochs"
        rows.append([c.architecture, c.family, prior, *cells, left])
    return rows


def search_section(search: Search | None) -> list[str]:
    """The search's rule, decision, cost and every contender's validation figures per rung."""
    if not search:
        return []
    ratio = search.wall_s / search.winner_distill_wall_s if search.winner_distill_wall_s else float("nan")
    columns = ["contender", "family", "regime prior", *(f"{e} ep: NLL / val acc" for e in search.rung_epochs),
               "left after"]
    return [f"Chose **{search.winner}**: {search.rule}. Decision: {search.finalists}. Cost: {search.epochs_spent:.2f} "
            f"full distillations in epochs, {search.wall_s:.0f} s wall ({ratio:.2f}x the winner's own distillation, "
            f"{search.winner_distill_wall_s:.0f} s; its full run is the build's distillation).", "",
            *table(columns, _rung_cells(search)), ""]


def augmentation_section(aug: Augmentation | None) -> list[str]:
    """The synthetic images: how made, filtered and used, per class."""
    if aug is None:
        return []
    f = aug.filter
    kept = (f"the teacher, adapted on the real images, kept {f.kept} and dropped {f.dropped} (top-1 not the image's "
            f"class, or class probability under {f.min_confidence:g}); " if f else "no teacher filter; ")
    baselines = ("; the baselines trained on them too (augment.for_baselines)." if aug.for_baselines else
                 "; the baselines trained on the real images only (augment.for_baselines: false).")
    rows = [[name, str(c.real), str(c.generated), str(c.dropped), str(c.used)] for name, c in aug.per_class.items()]
    return ["", "## Synthetic data", "",
            f"{aug.generated} images generated ({aug.mode}, {aug.pipeline}, {aug.pipeline_revision}); {kept}"
            f"{aug.used} used in distillation, the teacher cache and calibration{baselines} Every image's prompt, "
            f"seed, settings and verdict: {aug.manifest}.", "",
            *table(("class", "real", "generated", "dropped", "used"), rows)]


def compute_section(compute: Compute) -> list[str]:
    """Every stage run and its cost, then each method's training compute."""
    stages = [[s.stage, f"{s.wall_s:.1f}", flops_text(s.flops), "yes" if s.cached else "no"] for s in compute.stages]
    methods = [[name, f"{m.build_wall_s:.1f}", flops_text(m.build_flops),
                "unknown" if m.pretrain_flops is None else flops_text(m.pretrain_flops), flops_text(m.flops), m.includes]
               for name, m in compute.methods.items()]
    return ["", "## Compute", "", *table(("stage", "wall time s", "FLOPs", "cached this run"), stages), "",
            *table(("method", "this build: wall time s", "this build: FLOPs", "pre-training FLOPs", "total FLOPs",
                    "includes"), methods)]


FORMAT_COLUMNS = ("format", "file", "runtime", "on validation, against the ONNX file", "validation accuracy",
                  "test accuracy", "same class as factory predict (test)", "p50 ms (band)", "vs ONNX")


def _test_figures(report: Report, form: str) -> tuple[str, str]:
    """(test accuracy, agreement with factory predict on test) of a form's own check."""
    e = report.export
    check = {"image": e.image_input, "ort": e.mobile, "openvino": e.openvino}.get(form)
    if check is None:
        shipped = next(r for r in report.results if r.file == report.shipped.file)
        return percent(shipped.accuracy), "-"
    return percent(check.accuracy), percent(check.agreement)


def format_rows(report: Report) -> list[list[str]]:
    """One row per form of the shipped model an app can load, the ONNX file first (:mod:`factory.formats`)."""
    rows = []
    for f in report.export.formats:
        verdict = "the reference" if f.format == "onnx" else "not judged (the refit model trained on them)" \
            if f.drop is None else (f"{'accepted' if f.accepted else 'rejected, deleted'}: drop {f.drop * 100:+.1f} "
                                    f"points (90% interval {f.drop_low * 100:+.1f} to {f.drop_high * 100:+.1f})")
        runtime = f.runtime
        if f.format == "openvino" and report.export.openvino:
            runtime += f", {report.export.openvino.int8_layers} of {report.export.openvino.layers} layers in INT8"
        rows.append([f.format, f"`{f.file}`", runtime, verdict, percent(f.val_accuracy) if f.val_accuracy is not None
                     else "-", *_test_figures(report, f.format),
                     f"{f.latency.p50:.2f} ({f.latency.low:.2f}-{f.latency.high:.2f})" if f.latency else "-",
                     f"{f.vs_onnx.median:.2f}x ({f.vs_onnx.low:.2f}-{f.vs_onnx.high:.2f})" if f.vs_onnx else "-"])
    return rows


def formats_section(report: Report) -> list[str]:
    """The forms of the shipped model, each judged against the ONNX file and timed beside it by its own runtime."""
    if not report.export.formats:
        return []
    f = report.export.formats[0]
    return ["## Formats of the shipped model", "", *table(FORMAT_COLUMNS, format_rows(report)), "",
            (f"Each form was judged on the {f.val_images} validation images against the ONNX file with the paired rule "
             "(a form whose drop is beyond `export.max_accuracy_drop` outside the noise is deleted)" if f.val_images else
             "The shipped model was refit on train + validation, so no image is left to judge its forms on before the "
             "test split: they are checked on test against `factory predict` only")
            + " and timed in one run "
            "beside it, rounds interleaved, at batch 1 (the image-input file on a decoded 640 x 480 frame, its resize "
            "and crop included); `vs ONNX` is the latency ratio, round by round.", ""]


def render_markdown(report: Report) -> str:
    """The whole report in Markdown."""
    lines = [*header(report), *shipped_section(report.shipped), *results_table(report), "",
             *latency_section(report), *export_section(report), *formats_section(report),
             image("accuracy_latency.png"), "", image("training_curves.png"), "",
             *budget_section(report.budget), *selection_section(report.selection),
             *augmentation_section(report.augmentation), *compute_section(report.compute), "",
             *licences_section(report)]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"
