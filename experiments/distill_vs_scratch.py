"""Distilled student vs the same student trained from scratch, over several seeds.

    python experiments/distill_vs_scratch.py [RECIPE] [--seeds 0 1 2] [--device cpu|cuda] [--set key=value ...]

Builds the recipe once per seed (``distill.seed``: student init, data order and views of both the
distilled and the scratch student; the teacher is shared and cached), then prints test accuracy
per seed and the mean and standard deviation per method. Results go to experiments/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from factory.pipeline import build
from factory.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "flowers12_cpu.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    per_seed = []
    for seed in args.seeds:
        recipe = load_recipe(args.recipe, args.overrides + [f"distill.seed={seed}"])
        out = ROOT / "experiments" / "results" / f"{recipe.name}_seed{seed}"
        report = build(recipe, device=args.device, cache_dir=args.cache_dir, out_dir=out).report
        acc = {r["name"]: r["accuracy"] for r in report["results"]}
        per_seed.append({"seed": seed, **acc})
        print(json.dumps(per_seed[-1]))

    names = [n for n in per_seed[0] if n != "seed"]
    summary = {n: {"mean": statistics.mean(r[n] for r in per_seed),
                   "std": statistics.stdev(r[n] for r in per_seed) if len(per_seed) > 1 else 0.0} for n in names}
    recipe_path = Path(args.recipe).resolve()
    shown = recipe_path.relative_to(ROOT) if recipe_path.is_relative_to(ROOT) else recipe_path
    result = {"recipe": str(shown), "overrides": args.overrides, "seeds": args.seeds, "per_seed": per_seed,
              "summary": summary}
    out = ROOT / "experiments" / "results" / f"{Path(args.recipe).stem}_seeds.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'model':<22} {'mean':>7} {'std':>6}  per seed")
    for n in names:
        print(f"{n:<22} {summary[n]['mean'] * 100:6.1f}% {summary[n]['std'] * 100:5.1f}  "
              + " ".join(f"{r[n] * 100:.1f}" for r in per_seed))
    d, s = summary.get("distilled"), summary.get("scratch")
    if d and s:
        print(f"distilled - scratch: {(d['mean'] - s['mean']) * 100:+.1f} points (mean over {len(per_seed)} seeds)")


if __name__ == "__main__":
    main()
