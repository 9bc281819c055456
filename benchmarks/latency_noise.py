"""How steady are the build's latency verdicts? The whole procedure, five times in a row.

    python benchmarks/latency_noise.py [EXPORT_DIR] [--repeats 5] [--spinning off] [--threads N]

On a build's published files (default ``exports/flowers12_cpu``: ``student.onnx`` and its quantized file),
with the bench settings and latency budget of the recipe recorded in its ``report.json``, each repetition
does what ``factory build`` does: measures FP32 and the quantized file together (interleaved rounds), checks
the shipped file's band against the budget (met / not met / inconclusive), and chooses the shipped precision
from the round-by-round ratio. Printed: each verdict, the absolute p50 spread over repetitions, the
quantized/FP32 ratio spread, ending with ``verdicts agree: yes|no`` and ``ratio spread (max/min): X``.
``--spinning off`` / ``--threads`` measure other session options the same way (the hygiene comparison).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from factory.host import host_info
from factory.latency import LatencySettings, measure, ratio
from factory.runtime import ExportedModel

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", nargs="?", type=Path, default=ROOT / "exports" / "flowers12_cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spinning", choices=("on", "off"), default="on")
    parser.add_argument("--threads", type=int, default=None, help="default: the build's")
    args = parser.parse_args()

    report = json.loads((args.export_dir / "report.json").read_text())
    bench, limit = report["recipe"]["bench"], report["recipe"]["budget"]["latency_ms"]
    fp32_path = args.export_dir / "student.onnx"
    quantized = [p for p in sorted(args.export_dir.glob("student.*.onnx"))]
    if not quantized:
        raise SystemExit(f"{args.export_dir}: no quantized student.*.onnx was published; nothing to compare")
    q_path = quantized[0]
    size = ExportedModel.open(fp32_path).size
    threads = args.threads or report["results"][0]["threads"]
    settings = LatencySettings(bench["rounds"], bench["warmup"], bench["runs"], bench["min_time_s"], threads,
                               noise_band=bench["noise_band"], spinning=args.spinning == "on")
    host = host_info()
    print(f"host: {host['cpu']}, {host['cores']} cores, ISA flags {' '.join(host['isa_flags'])}, "
          f"onnxruntime {host['onnxruntime']}")
    print(f"files: {fp32_path.name} and {q_path.name} ({size}px, batch 1, {threads} threads, spinning "
          f"{args.spinning}); {settings.rounds} interleaved rounds of >= {settings.runs} runs and "
          f">= {settings.min_time_s}s; noise band {settings.noise_band:.0%}; budget {limit} ms")
    print(f"{'repeat':>6} {'fp32 p50 ms (band)':>22} {'quantized p50 ms (band)':>26} {'q/fp32 (interval)':>22} "
          f"{'verdict':>13} {'ships':>6} {'load':>11} {'others/steal':>13}")
    verdicts, ships, q_p50, f_p50, ratios = [], [], [], [], []
    for i in range(args.repeats):
        m = measure([(str(fp32_path), size), (str(q_path), size)], settings, memory=False)
        fp32, q = m.latencies
        r = ratio(fp32, q)
        verdict = q.verdict(limit) if limit else "no limit"
        choice = "fp32" if r.low > 1 else "quant"
        verdicts.append(verdict)
        ships.append(choice)
        q_p50.append(q.p50)
        f_p50.append(fp32.p50)
        ratios.append(r.median)
        busy = "-" if m.load.others_cpu is None else f"{m.load.others_cpu:.0%}/{m.load.steal:.0%}"
        print(f"{i + 1:>6} {fp32.band_text():>22} {q.band_text():>26} "
              f"{f'{r.median:.3f} ({r.low:.3f}-{r.high:.3f})':>22} {verdict:>13} {choice:>6} "
              f"{m.load.load_before:.2f}->{m.load.load_after:.2f} {busy:>13}")
    print(f"absolute p50 spread (max/min): quantized {max(q_p50) / min(q_p50):.3f}, fp32 {max(f_p50) / min(f_p50):.3f}")
    print(f"shipped precision: {', '.join(ships)} ({'same' if len(set(ships)) == 1 else 'CHANGED'} every time)")
    print(f"verdicts agree: {'yes' if len(set(verdicts)) == 1 else 'no'}")
    print(f"ratio spread (max/min): {max(ratios) / min(ratios):.3f}")


if __name__ == "__main__":
    main()
