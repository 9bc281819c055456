"""Images per second of the augment stage beside a plain diffusers pipeline call with the same settings.

    python benchmarks/augment.py [--images 24] [--batch-size 8] [--steps 2] [--size 64] [--gpu-images 32]

CPU: the tiny random Stable Diffusion pipeline the tests use (64 px). The stage (``synthesize``: per-image
seeded generators, atomic PNG writes, manifest lines, FLOP count of the first batch) and the plain call
(``pipe(prompt=[...], num_inference_steps, guidance_scale, height, width)`` over the same batches, images
kept in memory) run alternately, twice each, in one process; the ratio is the stage's overhead.

GPU (when torch sees CUDA): the headline recipe's architecture, SD-Turbo (the SD 2.1 UNet, VAE and
OpenCLIP ViT-H text encoder built from their published configurations with random weights, since hub
weights may be unreachable), fp16, SDPA attention, 512 px, 1 step, guidance 0, the same comparison.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import _tiny_tokenizer, make_tiny_pipeline  # noqa: E402

from factory.cache import StageCache  # noqa: E402
from factory.context import Runtime  # noqa: E402
from factory.host import host_info  # noqa: E402
from factory.stages.augment import AugmentPlan, load_pipeline, synthesize  # noqa: E402
from factory.diffusion import pinned_pipeline  # noqa: E402
from factory.task import TaskData  # noqa: E402

CLASSES = ("daisy", "iris", "tulip")


def sd_turbo_architecture(folder: Path) -> Path:
    """SD-Turbo's components from their published configurations (stabilityai/sd-turbo: the SD 2.1 UNet at
    64 x 64 latents, the SD VAE, the OpenCLIP ViT-H/14 text encoder), random weights, saved as a pipeline."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer, _ = _tiny_tokenizer(folder / "tok_src")  # token ids only; the embedding table has the full vocabulary
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512))
    scheduler = EulerDiscreteScheduler(timestep_spacing="trailing", steps_offset=1, prediction_type="epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = folder / "sd_turbo_random"
    pipe.save_pretrained(out)
    return out


def plan_for(pipeline: Path, images: int, steps: int, size: int, seed: int) -> AugmentPlan:
    per_class = -(-images // len(CLASSES))
    return AugmentPlan(pinned_pipeline(str(pipeline)), None, "text2img", CLASSES,
                       (per_class,) * len(CLASSES),
                       tuple(f"a photo of a {c}, a type of flower" for c in CLASSES), None, steps, 0.0, size, seed,
                       None, None)


def stage_rate(pipeline: Path, device: torch.device, images: int, batch: int, steps: int, size: int, seed: int,
               cache: Path) -> float:
    """Images per second of the augment stage (pipeline loading excluded, as in the plain call)."""
    plan = plan_for(pipeline, images, steps, size, seed)
    data = TaskData(cache, list(CLASSES), [], [], [], "bench")
    rt = Runtime(data, StageCache(cache), device)
    import factory.stages.augment as augment

    loaded = load_pipeline(str(pipeline), device)
    real_load = augment.load_pipeline
    augment.load_pipeline = lambda *a, **k: loaded
    try:
        _sync(device)
        start = time.perf_counter()
        done = synthesize(rt, plan, batch)
        _sync(device)
        return done.result.images / (time.perf_counter() - start)
    finally:
        augment.load_pipeline = real_load


def plain_rate(pipe, device: torch.device, images: int, batch: int, steps: int, size: int) -> float:
    """Images per second of plain batched pipeline calls with the same settings (images kept in memory)."""
    prompts = [f"a photo of a {CLASSES[i % len(CLASSES)]}, a type of flower" for i in range(images)]
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, images, batch):
            pipe(prompt=prompts[b:b + batch], num_inference_steps=steps, guidance_scale=0.0, height=size, width=size)
    _sync(device)
    return images / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(label: str, pipeline: Path, device: torch.device, images: int, batch: int, steps: int, size: int,
            tmp: Path) -> None:
    pipe = load_pipeline(str(pipeline), device)
    plain_rate(pipe, device, batch, batch, steps, size)  # warm-up
    stage, plain = [], []
    for repeat in range(2):  # alternate, so drift hits both
        stage.append(stage_rate(pipeline, device, images, batch, steps, size, repeat, tmp / f"cache{repeat}"))
        plain.append(plain_rate(pipe, device, images, batch, steps, size))
    attention = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    print(f"\n{label}: {images} images, batch {batch}, {steps} step(s), {size} px, {pipe.unet.dtype}, attention {attention}")
    print(f"  augment stage   {' '.join(f'{r:8.2f}' for r in stage)} images/s")
    print(f"  plain pipeline  {' '.join(f'{r:8.2f}' for r in plain)} images/s")
    print(f"  stage / plain   {max(stage) / max(plain):.3f} (best of each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--gpu-images", type=int, default=32)
    args = parser.parse_args()
    host = host_info()
    print(f"host: {host['cpu']} ({platform.machine()}), ISA flags {' '.join(host['isa_flags'])}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        compare("CPU, tiny random pipeline", make_tiny_pipeline(tmp), torch.device("cpu"), args.images,
                args.batch_size, args.steps, args.size, tmp)
        if torch.cuda.is_available():
            print(f"\nGPU: {torch.cuda.get_device_name()}")
            compare("CUDA, SD-Turbo architecture (random weights)", sd_turbo_architecture(tmp), torch.device("cuda"),
                    args.gpu_images, args.batch_size, 1, 512, tmp)
        else:
            print("\nno CUDA device: the SD-Turbo fp16 512 px comparison needs a GPU")


if __name__ == "__main__":
    main()
