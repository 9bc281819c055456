"""The report's plots (PNG): accuracy against latency, the training curves, and the candidate students."""

from __future__ import annotations

from pathlib import Path

from factory.report.schema import Report
from factory.report.selection import Selection

CHANGES_NO_RESULT = True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_latency_axis(ax) -> None:
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    low, high = ax.get_xlim()  # minor labels only where a decade and a half or less shows: else they overlap
    minor = matplotlib.ticker.FormatStrFormatter("%g") if high / low < 30 else matplotlib.ticker.NullFormatter()
    ax.xaxis.set_minor_formatter(minor)


def _save_figure(fig, path: Path) -> None:
    import io

    from factory.files import write_atomic

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    write_atomic(path, buffer.getvalue())


def _budget_lines(ax, report: Report) -> None:
    limits = report.budget.limits
    if limits.latency_ms is not None:
        ax.axvline(limits.latency_ms, color="tab:red", linestyle="--", linewidth=1,
                   label=f"latency budget {limits.latency_ms:g} ms")
    if limits.min_accuracy is not None:
        ax.axhline(limits.min_accuracy * 100, color="tab:green", linestyle="--", linewidth=1,
                   label=f"accuracy floor {limits.min_accuracy * 100:g}%")


def plot_accuracy_latency(report: Report, path: Path) -> None:
    """Test accuracy against p50 latency with its band: each model at the precision it would ship (filled),
    other precisions hollow and joined to it, with the budget's lines."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2), dpi=120)
    colors: dict[str, str] = {}
    for row in report.results:
        color = colors.setdefault(row.method, f"C{len(colors)}")
        lat, y = row.latency_ms, row.accuracy * 100
        ax.errorbar(lat.p50, y, xerr=[[lat.p50 - lat.low], [lat.high - lat.p50]], color=color, linewidth=0.8,
                    alpha=0.6, capsize=2, zorder=2)
        ax.scatter(lat.p50, y, s=46 if row.ships else 30, color=color if row.ships else "none", edgecolors=color,
                   zorder=3)
        if row.ships:
            ax.annotate(f"{row.method} ({row.precision})", (lat.p50, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
    for method, color in colors.items():
        own = [row for row in report.results if row.method == method]
        if len(own) > 1:
            ax.plot([o.latency_ms.p50 for o in own], [o.accuracy * 100 for o in own], color=color, linewidth=0.8,
                    alpha=0.5)
    _budget_lines(ax, report)
    _log_latency_axis(ax)
    ax.set_xlabel(f"p50 latency, batch 1, {report.first_row.threads} threads (ms, log scale); filled: shipped precision")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{report.name}: accuracy vs latency")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_students(selection: Selection, latency_limit: float | None, path: Path) -> None:
    """Prior ImageNet top-1 (parameters where no candidate has one) against measured p50 latency (with its band)
    of every candidate student: the Pareto front joined, the choice ringed, misses hollow, the budget's line."""
    by_prior = any(r.prior_top1 is not None for r in selection.candidates)
    value = (lambda r: r.prior_top1) if by_prior else (lambda r: r.params / 1e6)
    rows = [r for r in selection.candidates if r.latency_ms and value(r) is not None]
    fig, ax = _pyplot().subplots(figsize=(7, 4.6), dpi=120)
    for r in rows:
        lat, y = r.latency_ms, value(r)
        color = "tab:blue" if r.fits else "tab:gray"
        ax.errorbar(lat.p50, y, xerr=[[lat.p50 - lat.low], [lat.high - lat.p50]], color=color, linewidth=0.7,
                    alpha=0.5, capsize=2)
        ax.scatter(lat.p50, y, s=28, color=color if r.fits else "none", edgecolors=color, zorder=3)
        ax.annotate(r.architecture, (lat.p50, y), textcoords="offset points", xytext=(4, 3), fontsize=6.5)
        if r.chosen:
            ax.scatter(lat.p50, y, s=160, facecolors="none", edgecolors="tab:green", linewidths=1.6, zorder=4,
                       label=f"choice: {r.architecture}")
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.latency_ms.p50)
    if front:
        ax.plot([r.latency_ms.p50 for r in front], [value(r) for r in front], color="tab:orange", linewidth=1,
                label="Pareto front")
    if latency_limit is not None:
        ax.axvline(latency_limit, color="tab:red", linestyle="--", linewidth=1, label=f"latency budget {latency_limit:g} ms")
    _log_latency_axis(ax)
    proxy = "" if selection.host_stands_in else " (proxy host)"
    ax.set_xlabel(f"p50 latency{proxy}, batch 1, {selection.threads} threads (ms, log); filled: fits every limit")
    ax.set_ylabel("ImageNet top-1 of default weights (%)" if by_prior else "parameters (M)")
    ax.set_title(f"candidate students for {selection.profile}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_training_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """Training cross-entropy (and validation accuracy when recorded) per epoch for every trained model."""
    has_val = any("val_accuracy" in h for hist in curves.values() for h in hist)
    fig, axes = _pyplot().subplots(1, 2 if has_val else 1, figsize=(9 if has_val else 5.5, 3.6), dpi=120,
                                   squeeze=False)
    for name, hist in curves.items():
        epochs = [h["epoch"] for h in hist]
        axes[0][0].plot(epochs, [h.get("ce", h["loss"]) for h in hist], label=name)
        if has_val and any("val_accuracy" in h for h in hist):
            axes[0][1].plot(epochs, [h.get("val_accuracy", float("nan")) * 100 for h in hist], label=name)
    axes[0][0].set(xlabel="epoch", ylabel="train cross-entropy", title="training loss")
    axes[0][0].set_yscale("log")
    if has_val:
        axes[0][1].set(xlabel="epoch", ylabel="val accuracy (%)", title="validation accuracy")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save_figure(fig, path)


def write_plots(report: Report, folder: Path) -> list[Path]:
    """Every plot the report shows, written into ``folder``; returns their paths."""
    written = [folder / "accuracy_latency.png", folder / "training_curves.png"]
    plot_accuracy_latency(report, written[0])
    plot_training_curves(report.training_curves, written[1])
    if report.selection:
        written.append(folder / "students.png")
        plot_students(report.selection, report.budget.limits.latency_ms, written[2])
    return written
