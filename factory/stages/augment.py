"""Augment stage: synthesize extra training images per class with a diffusers text-to-image pipeline.

Image ``i`` of class ``c`` is a pure function of the pipeline, the recipe's ``augment`` section and
its seed ``view_seed(augment.seed, c, i)``: every image gets its own CPU generator, so it can be
regenerated from its provenance record alone, whatever batch it was made in. Images are written
one by one (atomically) as ``images/<class>/<i:05d>.png``; an interrupted stage resumes by making
only the images that are missing. ``provenance.json`` lists, per image, the prompt, seed and
settings that made it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from factory.cache import Done, Plan, Stage, StageResult, write_json
from factory.console import log, progress_bar
from factory.context import Runtime
from factory.data import view_seed
from factory.errors import CheckpointError, FactoryError, HubUnreachableError
from factory.models import path_fingerprint
from factory.network import go_offline, hub_reachable
from factory.task import Sample

if TYPE_CHECKING:
    from factory.recipe import Recipe

BATCH_SIZE = 8  # images per pipeline call
IMAGES_DIR = "images"
PROVENANCE_LOG = "provenance.jsonl"
PROVENANCE = "provenance.json"
STATE_FILE = ".augment_state.json"  # resume bookkeeping: FLOPs per image and wall time spent so far

_FIELD = "augment.pipeline"
_LOCAL_HELP = "a local folder saved with pipeline.save_pretrained() (model_index.json + component folders)"


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "~", os.sep)) or Path(ref).is_absolute() or ref.count("/") > 1


def load_pipeline(ref: str, device: torch.device):
    """Load the diffusers text-to-image pipeline ``ref`` (hub id or local folder) for ``device``.

    fp16 on CUDA, fp32 elsewhere. Raises :class:`HubUnreachableError` quickly when a hub id is asked
    for, the hub cannot be reached and there is no cached copy, and :class:`CheckpointError` when a
    local folder is missing or is not a saved pipeline.
    """
    from diffusers import AutoPipelineForText2Image

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise CheckpointError(f"{_FIELD}: folder {str(local)!r} has no model_index.json; expected {_LOCAL_HELP}")
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(str(local), dtype=dtype)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{_FIELD}: cannot load the pipeline in {str(local)!r} ({err}); expected {_LOCAL_HELP}") from None
    elif _looks_like_path(ref):
        raise CheckpointError(f"{_FIELD}: folder {ref!r} does not exist; give a hub id (e.g. stabilityai/sd-turbo) or {_LOCAL_HELP}")
    else:
        reachable = hub_reachable()
        if not reachable:
            go_offline()  # use the local cache only; no retries against an unreachable hub
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(ref, dtype=dtype)
        except Exception as err:  # huggingface_hub / diffusers raise several types for "not available"
            if not reachable:
                raise HubUnreachableError(
                    f"{_FIELD}: {ref!r} is a Hugging Face hub id, the hub cannot be reached and there is no cached "
                    f"copy; run where the hub is reachable (once, to fill the cache), or set {_FIELD} to {_LOCAL_HELP}"
                ) from None
            if isinstance(err, (OSError, ValueError)):
                raise FactoryError(f"{_FIELD}: cannot load {ref!r} from the Hugging Face hub ({err}); check the id, or set {_FIELD} to {_LOCAL_HELP}") from None
            raise
    if device.type == "cuda":
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _local_content(pipeline: str) -> str | None:
    """Content hash of a local pipeline folder; None for a hub id."""
    local = Path(pipeline).expanduser()
    return path_fingerprint(local, (".json", ".safetensors", ".bin", ".txt", ".model")) if local.is_dir() else None


@dataclass(frozen=True)
class AugmentPlan(Plan):
    pipeline: str
    pipeline_content: str | None
    """Content hash of a local pipeline folder (None for a hub id)."""
    classes: tuple[str, ...]
    images_per_class: int
    prompt: str
    negative_prompt: str | None
    """Used only with classifier-free guidance (guidance_scale > 1), else None."""
    steps: int
    guidance_scale: float
    image_size: int
    seed: int

    @classmethod
    def from_recipe(cls, recipe: Recipe, classes: list[str]) -> AugmentPlan | None:
        """None when augmentation is off."""
        a = recipe.augment
        if not a.enabled:
            return None
        return cls(a.pipeline, _local_content(a.pipeline), tuple(classes), a.images_per_class, a.prompt,
                   a.negative_prompt if a.guidance_scale > 1 else None, a.steps, a.guidance_scale, a.image_size, a.seed)


@dataclass(kw_only=True)
class SyntheticImages(StageResult):
    images: int
    per_class: int
    pipeline: str
    generated_this_run: int
    flagged_nsfw: int
    flops_per_image: float


AUGMENT = Stage("augment", SyntheticImages, __name__, ("torch", "diffusers", "transformers", "pillow"))


def class_prompt(plan: AugmentPlan, class_name: str) -> str:
    return plan.prompt.format(label=class_name.replace("_", " ").replace("-", " "))


def image_file(class_name: str, index: int) -> str:
    """Path of image ``index`` of a class, relative to the stage folder."""
    return f"{IMAGES_DIR}/{class_name}/{index:05d}.png"


def image_record(plan: AugmentPlan, classes: list[str], label: int, index: int) -> dict[str, Any]:
    """Everything that determines image ``index`` of class ``classes[label]``."""
    return {
        "file": image_file(classes[label], index),
        "class": classes[label],
        "label": label,
        "prompt": class_prompt(plan, classes[label]),
        "negative_prompt": plan.negative_prompt,
        "seed": view_seed(plan.seed, label, index),
        "steps": plan.steps,
        "guidance_scale": plan.guidance_scale,
        "image_size": plan.image_size,
        "pipeline": plan.pipeline,
    }


def all_records(plan: AugmentPlan, classes: list[str]) -> list[dict[str, Any]]:
    return [image_record(plan, classes, c, i) for c in range(len(classes)) for i in range(plan.images_per_class)]


def missing_records(plan: AugmentPlan, classes: list[str], work: Path) -> list[dict[str, Any]]:
    return [r for r in all_records(plan, classes) if not (work / r["file"]).is_file()]


def generate_images(pipe, records: list[dict[str, Any]]) -> tuple[list, list[bool | None]]:
    """Run ``pipe`` once on ``records`` (same steps / guidance / size); return PIL images and NSFW flags."""
    first = records[0]
    kwargs: dict[str, Any] = {
        "prompt": [r["prompt"] for r in records],
        "num_inference_steps": first["steps"],
        "guidance_scale": first["guidance_scale"],
        "height": first["image_size"],
        "width": first["image_size"],
        "generator": [torch.Generator(device="cpu").manual_seed(r["seed"]) for r in records],
    }
    if first["negative_prompt"] is not None:
        kwargs["negative_prompt"] = [r["negative_prompt"] for r in records]
    out = pipe(**kwargs)
    nsfw = getattr(out, "nsfw_content_detected", None)
    return list(out.images), list(nsfw) if nsfw is not None else [None] * len(records)


def _read_state(work: Path) -> dict[str, Any]:
    try:
        return json.loads((work / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:  # an interrupted write may have left a line without its newline
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(record) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def generate_missing(pipe, plan: AugmentPlan, classes: list[str], work: Path, progress=None) -> int:
    """Generate the images of ``work`` that do not exist yet; return how many were made.

    Each PNG is written atomically and then logged in ``provenance.jsonl``. The FLOPs per image of
    the first batch (``FlopCounterMode``) and the wall time spent are kept in ``.augment_state.json``
    so a resumed run still accounts for the work done before the interruption.
    """
    from torch.utils.flop_counter import FlopCounterMode

    for stale in work.glob(f"{IMAGES_DIR}/*/.*.tmp*"):  # leftovers of an interrupted write
        stale.unlink(missing_ok=True)
    todo = missing_records(plan, classes, work)
    state = _read_state(work)
    prior_wall = float(state.get("wall_s", 0.0))
    start = time.perf_counter()
    made = 0
    for b in range(0, len(todo), BATCH_SIZE):
        batch = todo[b:b + BATCH_SIZE]
        if "flops_per_image" not in state:
            with FlopCounterMode(display=False) as counter:
                images, nsfw = generate_images(pipe, batch)
            state["flops_per_image"] = counter.get_total_flops() / len(batch)
        else:
            images, nsfw = generate_images(pipe, batch)
        for record, image, flagged in zip(batch, images, nsfw):
            path = work / record["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            image.save(tmp, format="PNG")
            os.replace(tmp, path)
            _append_line(work / PROVENANCE_LOG, record | {"nsfw": flagged})
            made += 1
        state["wall_s"] = prior_wall + time.perf_counter() - start
        write_json(work / STATE_FILE, state)
        if progress is not None:
            progress(len(batch))
    return made


def write_provenance(plan: AugmentPlan, classes: list[str], work: Path) -> list[dict[str, Any]]:
    """Write ``provenance.json``: one record per image, sorted by file, from the log (last entry wins).

    A record missing from the log (an interruption between the PNG and its log line) is rebuilt from
    the recipe, since every record is a pure function of the recipe, the class and the index.
    """
    logged: dict[str, dict[str, Any]] = {}
    log_path = work / PROVENANCE_LOG
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interruption
            if isinstance(record, dict) and "file" in record:
                logged[record["file"]] = record
    records = [logged.get(r["file"], r | {"nsfw": None}) for r in all_records(plan, classes)]
    records.sort(key=lambda r: r["file"])
    write_json(work / PROVENANCE, records)
    return records


def synthesize(rt: Runtime, plan: AugmentPlan) -> Done[SyntheticImages]:
    """Generate ``plan.images_per_class`` images per class (resuming image by image)."""
    classes = list(plan.classes)

    def run(work: Path) -> SyntheticImages:
        total = len(classes) * plan.images_per_class
        resumed_wall = float(_read_state(work).get("wall_s", 0.0))
        todo = len(missing_records(plan, classes, work))
        made = 0
        if todo:
            if todo < total:
                log(f"augment: resuming, {total - todo} of {total} images already made")
            if plan.pipeline_content is not None and _local_content(plan.pipeline) != plan.pipeline_content:
                raise CheckpointError(f"{_FIELD}: folder {plan.pipeline} changed while the build was running; "
                                      f"run the build again")
            pipe = load_pipeline(plan.pipeline, rt.device)
            with torch.inference_mode(), progress_bar() as bar:
                task = bar.add_task(f"augment ({plan.images_per_class} x {len(classes)} classes)", total=total,
                                    completed=total - todo)
                made = generate_missing(pipe, plan, classes, work, lambda n: bar.advance(task, n))
            del pipe
        records = write_provenance(plan, classes, work)
        state = _read_state(work)
        (work / STATE_FILE).unlink(missing_ok=True)
        flops_per_image = float(state.get("flops_per_image", 0.0))
        return SyntheticImages(
            images=len(records), per_class=plan.images_per_class, pipeline=plan.pipeline, generated_this_run=made,
            flagged_nsfw=sum(bool(r.get("nsfw")) for r in records), flops_per_image=flops_per_image,
            # all images of the stage, also those made before an interruption (as resumed_wall_s does)
            flops=flops_per_image * len(records), resumed_wall_s=resumed_wall)

    return rt.cache.run(AUGMENT, plan, {}, run)


def synthetic_samples(stage: Done[SyntheticImages], classes: list[str]) -> list[Sample]:
    """The synthetic images of an augment stage as training samples labelled in ``classes``.

    Images the pipeline's safety checker flagged (it blacks them out) are left out.
    """
    records = json.loads(stage.file(PROVENANCE).read_text())
    samples = []
    for record in records:
        if record["class"] not in classes:
            raise FactoryError(
                f"augment output {stage.path} has class {record['class']!r}, which the task data does not; "
                f"rerun the augment stage for this dataset"
            )
        if record.get("nsfw"):
            continue
        samples.append(Sample(stage.path / record["file"], classes.index(record["class"])))
    return samples
