"""The paper's experiment in miniature: a student distilled from a pre-trained teacher vs the same
student pre-trained then finetuned, vs from scratch, at full and scarce data, over several seeds.

    python experiments/distill_vs_pretrain.py [RECIPE] [--seeds 0 1 2] [--train-per-class all 20]
                                              [--pretrain] [--device cpu|cuda] [--set key=value ...] [--name NAME]

RECIPE (default recipes/flowers12_cpu.yaml) names the pre-trained teacher (``teacher.weights``) and the
pre-trained student for the baseline (``baseline.weights``): factory checkpoint folders made by
``factory pretrain`` (committed under exports/pretrained/). ``--pretrain`` first re-runs the
pre-training recipes (``--pretrain-recipes``, default the two Tiny ImageNet recipes; about 65 minutes
on 2 CPU cores); without it the committed checkpoints are used and the rest takes about 40 minutes.

Each (seed, training-set size) is one ``factory build`` of RECIPE with ``distill.seed`` (student init,
data order and views of every student) and ``data.train_per_class`` set; the teacher is finetuned on the
same training images (seeded by ``teacher.seed``, so shared by the seeds). Every method trains for the
recipe's ``distill.epochs``. Compute per method is the build's own plus the pre-training behind the
weights it starts from (read from each checkpoint's pretrain_report.json). Writes
experiments/results/<recipe>_methods.json and a plot of accuracy against total compute.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from factory.pipeline import build
from factory.pretrain import load_pretrain_recipe, pretrain
from factory.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
PRETRAIN_RECIPES = [ROOT / "recipes" / "pretrain_tinyimagenet_resnet26.yaml",
                    ROOT / "recipes" / "pretrain_tinyimagenet_resnet18.yaml"]
LABELS = {"scratch": "from scratch", "pretrained-finetuned": "pre-trained, finetuned (baseline)",
          "distilled": "distilled from pre-trained teacher", "teacher": "teacher (pre-trained, finetuned)"}


def run_builds(recipe_path: str, overrides: list[str], seeds: list[int], sizes: list[int | None], device: str,
               cache_dir: Path | None, name: str) -> list[dict]:
    """One build per (training-set size, seed); returns a row per method, at the precision it would ship (each
    model is exported and quantized the same way), with accuracy and compute."""
    rows = []
    for size in sizes:
        for seed in seeds:
            extra = [f"distill.seed={seed}"] + ([f"data.train_per_class={size}"] if size else [])
            recipe = load_recipe(recipe_path, overrides + extra)
            tag = f"{name}_{size or 'all'}pc_seed{seed}"
            report = build(recipe, device=device, cache_dir=cache_dir, out_dir=RESULTS / tag).report.model_dump()
            methods = report["compute"]["methods"]
            for result in (r for r in report["results"] if r["ships"]):
                method = methods.get(result["method"], {})
                rows.append({"method": result["method"], "precision": result["precision"],
                             "train_per_class": size, "seed": seed,
                             "train_images": report["data"]["train"], "classes": len(report["data"]["classes"]),
                             "accuracy": result["accuracy"],
                             "latency_p50_ms": result["latency_ms"]["p50"],
                             "total_flops": method.get("flops"), "pretrain_flops": method.get("pretrain_flops"),
                             "build_flops": method.get("build_flops"), "build_wall_s": method.get("build_wall_s"),
                             "pretrain_wall_s": method.get("pretrain_wall_s")})
                print(json.dumps(rows[-1]))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds per (method, training-set size)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["train_per_class"]), []).append(row)
    summary = []
    for (method, size), group in groups.items():
        acc = [r["accuracy"] for r in group]

        def mean_of(key: str) -> float | None:
            values = [r[key] for r in group if r[key] is not None]
            return statistics.mean(values) if values else None

        summary.append({"method": method, "train_per_class": size, "seeds": len(group),
                        "train_images": group[0]["train_images"], "classes": group[0]["classes"],
                        "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                        "per_seed": acc, "total_flops": mean_of("total_flops"), "pretrain_flops": mean_of("pretrain_flops"),
                        "build_flops": mean_of("build_flops"), "build_wall_s": mean_of("build_wall_s"),
                        "pretrain_wall_s": mean_of("pretrain_wall_s")})
    return summary


def markdown_table(summary: list[dict]) -> str:
    lines = ["| method | train / class | accuracy (mean ± std) | per seed | pre-training TFLOP | this run TFLOP "
             "| total TFLOP | pre-training + run wall s |", "|---|---|---|---|---|---|---|---|"]

    def tflop(x: float | None) -> str:
        return "?" if x is None else f"{x / 1e12:.1f}"

    for s in summary:
        size = s["train_per_class"] or f"all ({s['train_images'] // s['classes']})"
        wall = (s["pretrain_wall_s"] or 0) + (s["build_wall_s"] or 0)
        lines.append(f"| {LABELS.get(s['method'], s['method'])} | {size} | {s['accuracy_mean'] * 100:.1f}% ± "
                     f"{s['accuracy_std'] * 100:.1f} | {' / '.join(f'{a * 100:.1f}' for a in s['per_seed'])} | "
                     f"{tflop(s['pretrain_flops'])} | {tflop(s['build_flops'])} | {tflop(s['total_flops'])} | {wall:.0f} |")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    """Accuracy (mean ± std over seeds) against total compute, one marker per method and data size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    markers = {None: "o", 20: "s"}
    colors = {"scratch": "tab:gray", "pretrained-finetuned": "tab:blue", "distilled": "tab:red",
              "teacher": "tab:green"}
    for s in summary:
        if s["method"] not in colors or s["total_flops"] is None:
            continue
        size = s["train_per_class"]
        ax.errorbar(s["total_flops"], s["accuracy_mean"] * 100, yerr=s["accuracy_std"] * 100,
                    marker=markers.get(size, "^"), color=colors[s["method"]], capsize=3, linestyle="none",
                    markerfacecolor="white" if size else colors[s["method"]],
                    label=f"{LABELS[s['method']]}, {f'{size}/class' if size else 'all data'}")
    ax.set_xscale("log")
    ax.set_xlabel("total training compute incl. pre-training (FLOPs)")
    ax.set_ylabel("flowers12 test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "flowers12_cpu.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-per-class", nargs="+", default=["all", "20"],
                        help="training images per class, 'all' for the whole training set")
    parser.add_argument("--pretrain", action="store_true", help="re-run the pre-training recipes first")
    parser.add_argument("--pretrain-recipes", type=Path, nargs="+", default=PRETRAIN_RECIPES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default=None, help="names the results (default: the recipe's file name)")
    args = parser.parse_args()

    if args.pretrain:
        for path in args.pretrain_recipes:
            recipe = load_pretrain_recipe(path)
            pretrain(recipe, device=args.device, cache_dir=args.cache_dir,
                     out_dir=ROOT / "exports" / "pretrained" / recipe.name)
    sizes = [None if s == "all" else int(s) for s in args.train_per_class]
    stem = args.name or Path(args.recipe).stem
    rows = run_builds(args.recipe, args.overrides, args.seeds, sizes, args.device, args.cache_dir, stem)
    summary = summarise(rows)
    recipe_path = Path(args.recipe).resolve()
    shown = recipe_path.relative_to(ROOT) if recipe_path.is_relative_to(ROOT) else recipe_path
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}_methods.json").write_text(json.dumps(
        {"recipe": str(shown), "overrides": args.overrides, "seeds": args.seeds, "summary": summary, "runs": rows},
        indent=2) + "\n")
    plot(summary, RESULTS / f"{stem}_methods.png")
    print("\n" + markdown_table(summary))
    print(f"\nwrote {RESULTS / f'{stem}_methods.json'} and {RESULTS / f'{stem}_methods.png'}")


if __name__ == "__main__":
    main()
