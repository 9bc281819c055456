"""A multi-process build (2 CPU processes, DDP over gloo), as `accelerate launch` or torchrun would start it."""

import json
import subprocess
import sys


def test_two_process_build_trains_with_ddp(tiny_recipe, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "factory.cli", "build",
           str(tiny_recipe), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
           "--set", "distill.batch_size=6", "--set", "teacher.batch_size=6", "--set", "distill.epochs=1", "--set", "teacher.epochs=1"]
    for item in ["augment.enabled=true", f"augment.pipeline={tiny_pipeline_dir}", "augment.images_per_class=4",
                 "augment.steps=1", "augment.image_size=64", "augment.batch_size=2", "augment.for_baselines=true"]:
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.count("wrote ") == 1  # only the main process publishes
    report = json.loads((out / "report.json").read_text())
    stages = {s["stage"]: s for s in report["compute"]["stages"]}
    assert stages["distill"]["flops"] > 0 and report["comparison"]["same_views"]
    epochs = report["training_curves"]["distilled"]
    assert len(epochs) == 1 and {"ce", "align", "uniform", "kd"} <= set(epochs[0])
    # the real training images + the kept synthetic ones over 2 processes, 6 per batch: a shard's batches
    shard = (report["data"]["train"] + report["data"]["synthetic"]) // 2
    assert epochs[0]["steps"] in (shard // 6, -(-shard // 6))
    # each process made its share of the synthetic images (the main one counts its own)
    augment = json.loads(next((tmp_path / "cache" / "augment").glob("*/stage.json")).read_text())["result"]
    assert augment["images"] == 12 and augment["generated_this_run"] == 6
    assert len((out / "synthetic_manifest.jsonl").read_text().splitlines()) == 12
    assert {r["name"] for r in report["results"]} == {"distilled", "distilled-int8", "scratch", "scratch-int8",
                                                      "teacher", "teacher-int8"}
