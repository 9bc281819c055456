"""The ``augment`` stage: synthetic training images per class from a diffusers pipeline (loaded by
:mod:`factory.diffusion`; the teacher's filter is :mod:`factory.stages.augment_filter`).

``augment`` generates them, text-to-image from a prompt per class or image-to-image variants of the real
training images (``augment.mode``), ``augment.images_per_class`` or ``augment.amount`` (a multiple of each
class's real images, as the paper's 1x / 2x). Image ``i`` of class ``c`` is a pure function of the pipeline,
the recipe's ``augment`` section, its seed ``view_seed(augment.seed, c, i)`` (its own CPU generator) and,
for img2img, its source image: it can be regenerated from its manifest line alone, whatever batch it was
made in. Images are written one by one (atomically) as ``images/<class>/<i:05d>.png`` and logged in
``manifest.jsonl``; an interrupted stage resumes by making only the missing images. Under a multi-process
launch (one process per GPU) each process makes its share. On CUDA the pipeline runs in fp16 with
PyTorch's scaled-dot-product attention (diffusers' default processor).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from factory import distributed as dist
from factory.files import atomic_path, write_atomic, write_json
from factory.stage import Done, Plan, Stage, StageResult
from factory.console import log, progress_bar
from factory.context import Runtime
from factory.data import view_seed
from factory.diffusion import FIELD, load_pipeline, pinned_pipeline
from factory.errors import FactoryError
from factory.models import Pinned, unchanged
from factory.task import Sample, TaskData

if TYPE_CHECKING:
    from factory.recipe import Recipe

IMAGES_DIR = "images"
MANIFEST = "manifest.jsonl"  # one line per image: appended while generating, rewritten sorted when done
STATE_FILE = ".augment_state.json"  # resume bookkeeping: FLOPs per image and wall time spent so far


@dataclass(frozen=True)
class AugmentPlan(Plan):
    pipeline: Pinned
    """A hub id, or a local pipeline folder keyed by its content."""
    revision: str | None
    mode: str
    classes: tuple[str, ...]
    counts: tuple[int, ...]
    """Synthetic images per class."""
    prompts: tuple[str, ...]
    """The prompt of each class."""
    negative_prompt: str | None
    """Used only with classifier-free guidance (guidance_scale > 1), else None."""
    steps: int
    guidance_scale: float
    image_size: int
    seed: int
    strength: float | None
    """img2img only."""
    sources: tuple[tuple[str, ...], ...] | None
    """img2img: per class, the real training images (paths under the data root) its images start from, cycled."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, data: TaskData) -> AugmentPlan | None:
        """None when augmentation is off."""
        a = recipe.augment
        if not a.enabled:
            return None
        unknown = sorted(set(a.prompts) - set(data.classes))
        if unknown:
            raise FactoryError(f"augment.prompts names class(es) {', '.join(unknown)} that the data does not have "
                               f"(classes: {', '.join(data.classes[:8])}{' ...' if len(data.classes) > 8 else ''})")
        real = [[s for s in data.train if s.label == label] for label in range(data.num_classes)]
        prompts = tuple(a.prompts.get(name) or a.prompt.format(label=readable(name)) for name in data.classes)
        img2img = a.mode == "img2img"
        return cls(pinned_pipeline(a.pipeline), a.revision, a.mode, tuple(data.classes),
                   tuple(a.count(len(own)) for own in real), prompts,
                   a.negative_prompt if a.guidance_scale > 1 else None, a.steps, a.guidance_scale, a.image_size, a.seed,
                   a.strength if img2img else None,
                   tuple(tuple(str(s.path.relative_to(data.root)) for s in own) for own in real) if img2img else None)


def readable(class_name: str) -> str:
    """A class name as words for a prompt: 'lily-valley' -> 'lily valley'."""
    return class_name.replace("_", " ").replace("-", " ")


@dataclass(kw_only=True)
class SyntheticImages(StageResult):
    images: int
    per_class: list[int]
    pipeline: str
    pipeline_revision: str
    """The hub commit the pipeline was loaded from, or the local folder's content hash."""
    mode: str
    generated_this_run: int
    flagged_nsfw: int
    flops_per_image: float


AUGMENT = Stage("augment", SyntheticImages, __name__, ("torch", "diffusers", "transformers", "pillow"),
                distributed=True)


def image_file(class_name: str, index: int) -> str:
    """Path of image ``index`` of a class, relative to the stage folder."""
    return f"{IMAGES_DIR}/{class_name}/{index:05d}.png"


def image_record(plan: AugmentPlan, label: int, index: int) -> dict[str, Any]:
    """Everything that determines image ``index`` of class ``plan.classes[label]``."""
    name = plan.classes[label]
    sources = plan.sources[label] if plan.sources is not None else None
    return {
        "file": image_file(name, index),
        "class": name,
        "label": label,
        "mode": plan.mode,
        "prompt": plan.prompts[label],
        "negative_prompt": plan.negative_prompt,
        "seed": view_seed(plan.seed, label, index),
        "steps": plan.steps,
        "guidance_scale": plan.guidance_scale,
        "strength": plan.strength,
        "source_image": sources[index % len(sources)] if sources else None,
        "image_size": plan.image_size,
        "pipeline": plan.pipeline.ref,
    }


def all_records(plan: AugmentPlan) -> list[dict[str, Any]]:
    return [image_record(plan, c, i) for c in range(len(plan.classes)) for i in range(plan.counts[c])]


def missing_records(plan: AugmentPlan, work: Path) -> list[dict[str, Any]]:
    return [r for r in all_records(plan) if not (work / r["file"]).is_file()]


def source_image(path: Path, size: int):
    """A real training image as an img2img start: RGB, shorter side resized to ``size``, centre-cropped square."""
    from PIL import Image, ImageOps

    from factory.data import decode_rgb

    return ImageOps.fit(decode_rgb(path), (size, size), Image.BICUBIC)


def generate_images(pipe, records: list[dict[str, Any]], data_root: Path | None = None) -> tuple[list, list[bool | None]]:
    """Run ``pipe`` once on ``records`` (same mode / steps / guidance / size); return PIL images and NSFW
    flags. img2img records start from their ``source_image`` under ``data_root``."""
    first = records[0]
    kwargs: dict[str, Any] = {
        "prompt": [r["prompt"] for r in records],
        "num_inference_steps": first["steps"],
        "guidance_scale": first["guidance_scale"],
        "generator": [torch.Generator(device="cpu").manual_seed(r["seed"]) for r in records],
    }
    if first["mode"] == "img2img":
        kwargs["image"] = [source_image(data_root / r["source_image"], first["image_size"]) for r in records]
        kwargs["strength"] = first["strength"]
    else:
        kwargs["height"] = kwargs["width"] = first["image_size"]
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


def generate_missing(pipe, plan: AugmentPlan, work: Path, data_root: Path | None = None, batch_size: int = 8,
                     progress=None, share: tuple[int, int] = (0, 1), revision: str = "") -> int:
    """Generate this process's ``share`` (rank, processes) of the images of ``work`` that do not exist yet;
    return how many were made.

    Each PNG is written atomically and then logged in ``manifest.jsonl``. The FLOPs per image of the first
    batch (``FlopCounterMode``) and the wall time spent are kept in ``.augment_state.json`` (by the main
    process) so a resumed run still accounts for the work done before the interruption.
    """
    from torch.utils.flop_counter import FlopCounterMode

    rank, processes = share
    if rank == 0:
        for stale in work.glob(f"{IMAGES_DIR}/*/.*.tmp*"):  # leftovers of an interrupted write
            stale.unlink(missing_ok=True)
    # the share is fixed over all images (not over the missing ones, which change while others generate)
    todo = [r for r in all_records(plan)[rank::processes] if not (work / r["file"]).is_file()]
    state = _read_state(work)
    prior_wall = float(state.get("wall_s", 0.0))
    start = time.perf_counter()
    made = 0
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        if "flops_per_image" not in state:
            with FlopCounterMode(display=False) as counter:
                images, nsfw = generate_images(pipe, batch, data_root)
            state["flops_per_image"] = counter.get_total_flops() / len(batch)
        else:
            images, nsfw = generate_images(pipe, batch, data_root)
        for record, image, flagged in zip(batch, images, nsfw):
            path = work / record["file"]
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            _append_line(work / MANIFEST, record | {"pipeline_revision": revision, "nsfw": flagged})
            made += 1
        state["wall_s"] = prior_wall + time.perf_counter() - start
        if rank == 0:
            write_json(work / STATE_FILE, state)
        if progress is not None:
            progress(len(batch))
    return made


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The lines of a manifest (a line cut short by an interruption is skipped)."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "file" in record:
            records.append(record)
    return records


def write_manifest(plan: AugmentPlan, work: Path, revision: str) -> list[dict[str, Any]]:
    """Rewrite ``manifest.jsonl``: one line per image, sorted by file, from the log (last line wins).

    A line missing from the log (an interruption between the PNG and its line) is rebuilt from the plan,
    since every record is a pure function of the plan, the class and the index.
    """
    absent = missing_records(plan, work)
    if absent:
        raise FactoryError(f"augment: {len(absent)} image(s) were not generated (e.g. {absent[0]['file']}); run the "
                           "build again to make them")
    logged = {r["file"]: r for r in read_manifest(work / MANIFEST)}
    records = [logged.get(r["file"], r | {"pipeline_revision": revision, "nsfw": None}) for r in all_records(plan)]
    records.sort(key=lambda r: r["file"])
    write_atomic(work / MANIFEST, "".join(json.dumps(r) + "\n" for r in records))
    return records


def pipeline_revision(plan: AugmentPlan) -> str:
    """What identifies the pipeline's weights: a local folder's content hash, or the hub commit it was
    loaded from (resolved in the local hub cache; the asked revision when it cannot be)."""
    if plan.pipeline.content is not None:
        return f"content:{plan.pipeline.content}"
    try:
        from huggingface_hub import snapshot_download

        return f"commit:{Path(snapshot_download(plan.pipeline.ref, revision=plan.revision, local_files_only=True)).name}"
    except Exception:  # not in the cache in this form: record what was asked for
        return f"revision:{plan.revision or 'main'}"


def synthesize(rt: Runtime, plan: AugmentPlan, batch_size: int = 8) -> Done[SyntheticImages]:
    """Generate ``plan.counts`` images per class (resuming image by image; each process its share under a
    multi-process launch). ``batch_size`` (images per pipeline call) changes speed, not the images."""
    total = sum(plan.counts)

    def run(work: Path) -> SyntheticImages | None:
        resumed_wall = float(_read_state(work).get("wall_s", 0.0))
        todo = len(missing_records(plan, work))
        made = 0
        revision = pipeline_revision(plan) if todo == 0 else ""
        if todo:
            if todo < total and dist.is_main():
                log(f"augment: resuming, {total - todo} of {total} images already made")
            pipe = load_pipeline(unchanged(plan.pipeline, FIELD, pinned_pipeline), rt.device, plan.mode, plan.revision)
            revision = pipeline_revision(plan)
            with torch.inference_mode(), progress_bar(disable=not dist.is_main()) as bar:
                task = bar.add_task(f"augment ({plan.mode}, {total} images, {len(plan.classes)} classes)",
                                    total=total, completed=total - todo)
                made = generate_missing(pipe, plan, work, rt.data.root, batch_size,
                                        lambda n: bar.advance(task, n * dist.world_size()),
                                        (dist.rank(), dist.world_size()), revision)
            del pipe
        dist.barrier()  # every process has made its share
        if not dist.is_main():
            return None
        records = write_manifest(plan, work, revision)
        state = _read_state(work)
        (work / STATE_FILE).unlink(missing_ok=True)
        flops_per_image = float(state.get("flops_per_image", 0.0))
        return SyntheticImages(
            images=len(records), per_class=list(plan.counts), pipeline=plan.pipeline.ref, pipeline_revision=revision,
            mode=plan.mode, generated_this_run=made, flagged_nsfw=sum(bool(r.get("nsfw")) for r in records),
            flops_per_image=flops_per_image,
            # all images of the stage, also those made before an interruption (as resumed_wall_s does)
            flops=flops_per_image * len(records), resumed_wall_s=resumed_wall)

    return rt.cache.run(AUGMENT, plan, {"data": rt.data.fingerprint if plan.sources is not None else None}, run)


def synthetic_samples(records: list[dict[str, Any]], folder: Path, classes: list[str]) -> list[Sample]:
    """The kept synthetic images of a manifest (files under ``folder``) as training samples labelled in
    ``classes``: not flagged by the pipeline's safety checker (it blacks them out), not dropped by the filter."""
    samples = []
    for record in records:
        if record["class"] not in classes:
            raise FactoryError(f"synthetic images in {folder} have class {record['class']!r}, which the task data does "
                               "not; rerun the augment stage for this dataset")
        if record.get("nsfw") or record.get("kept") is False:
            continue
        samples.append(Sample(folder / record["file"], classes.index(record["class"])))
    return samples
