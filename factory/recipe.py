"""Recipes: one YAML file that says what to build and for which device budget.

Every section is a strict pydantic model (:class:`factory.config.Section`), so a typo fails before any work
starts. ``load_recipe`` reads the file, applies ``--set key.path=value`` overrides and validates the result in
full (:func:`factory.config.load_yaml_model`); every problem comes back as one :class:`RecipeError` naming the
file and field. The ``budget`` section lives with the limits it sets, in :mod:`factory.budget`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from factory.budget import BudgetConfig
from factory.config import WEIGHTS_HELP, Section, Weights, load_yaml_model, role
from factory.data_config import DataConfig
from factory.hashing import hash_config

CHANGES_NO_RESULT = True

class SearchConfig(Section):
    """How ``student.model: auto`` ranks the candidates that fit: successive halving over short distillations."""

    max_candidates: int = Field(9, ge=1, le=64, description="candidates admitted (at most two per family, at least "
                                "one plain residual network), in the order of the regime prior",
                                json_schema_extra=role("selection"))
    eta: int = Field(3, ge=2, description="each rung keeps the best 1/eta of its candidates",
                     json_schema_extra=role("selection"))
    rungs: list[float] = Field([1 / 9, 1 / 3, 1.0], min_length=1, description="fractions of distill.epochs each "
                               "rung distils for, increasing; the last is 1 (the build's own distillation)",
                               json_schema_extra=role("selection"))
    max_cost: float = Field(2.5, gt=0, description="epochs the search may spend besides the winner's full run, in "
                            "units of distill.epochs: a tie's second seed runs only within it (the halving itself "
                            "costs about (len(rungs) - 1) x distill.epochs)", json_schema_extra=role("selection"))

    @field_validator("rungs")
    @classmethod
    def _rungs_increase_to_one(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(value, value[1:])) or value[-1] != 1.0 or value[0] <= 0:
            raise ValueError("student.search.rungs must increase from above 0 and end at 1.0 (the full "
                             "distillation), e.g. [0.111, 0.333, 1.0]")
        return value


class StudentConfig(Section):
    model: str = Field("resnet18", description="timm architecture of the student, or 'auto': the candidates that "
                       "fit the budget (measured), ranked by short distillations on the task (student.search)")
    candidates: list[str] = Field(default_factory=list, description="with auto: names or glob patterns to keep "
                                  "from the curated candidate list (or any timm architecture); default: all",
                                  json_schema_extra=role("selection"))
    exclude: list[str] = Field(default_factory=list, description="with auto: names or glob patterns to drop",
                               json_schema_extra=role("selection"))
    search: SearchConfig = SearchConfig()

    @model_validator(mode="after")
    def _known_candidates(self) -> StudentConfig:
        if self.model != "auto" and (self.candidates or self.exclude or self.search != SearchConfig()):
            raise ValueError("student.candidates, student.exclude and student.search apply only with "
                             "student.model: auto")
        return self


class TeacherConfig(Section):
    model: str = Field(description="timm architecture of the teacher")
    weights: Weights | None = Field(None, description=WEIGHTS_HELP)
    adapt: Literal["scratch", "linear_probe", "finetune"] = Field(
        "finetune", description="how the teacher is fitted to the task before distillation"
    )
    license: str | None = Field(None, description="licence of the teacher's weights (an SPDX id such as apache-2.0 or cc-by-nc-4.0, or its name): recorded in the report and the model card; default: the weights' own record (config.json's license, timm's registry), else unknown",
                                json_schema_extra=role("report"))
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, description="head learning rate")
    body_lr_scale: float = Field(0.1, gt=0, le=1, description="finetune: body lr = lr * body_lr_scale")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    image_size: int | None = Field(
        None, ge=16, le=1024, description="the one input size the teacher is finetuned, evaluated, cached and "
        "exported at; default: the size its weights were trained at (a checkpoint folder's config.json, timm's registry "
        "for 'timm' and hf-hub:timm/ ids), else data.image_size. Students' training views are rendered at the larger of the two sizes"
    )
    seed: int = 0
    pretrain_flops: float | None = Field(
        None, gt=0, description="documented training FLOPs behind teacher.weights, counted in the distilled method's "
        "compute; read from pretrain_report.json when the weights are a factory checkpoint folder"
    , json_schema_extra=role("report"))

    @model_validator(mode="after")
    def _adapt_needs_weights(self) -> TeacherConfig:
        if self.adapt != "scratch" and self.weights is None:
            raise ValueError(
                f"teacher.adapt is {self.adapt!r} but teacher.weights is null; give pretrained weights "
                f"({WEIGHTS_HELP}) or set teacher.adapt: scratch"
            )
        if self.adapt == "scratch" and self.weights is not None:
            raise ValueError("teacher.adapt is 'scratch' but teacher.weights is set; remove one of them")
        return self


class AugmentFilter(Section):
    enabled: bool = Field(True, description="score every synthetic image with the teacher adapted on the real images "
                          "and drop those it does not vouch for")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="also drop images whose teacher probability of "
                                  "their class is below this (a top-1 other than their class is always dropped)")


class AugmentConfig(Section):
    enabled: bool = False
    pipeline: str = Field("stabilityai/sd-turbo", description="diffusers pipeline: hub id or local folder")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of a hub pipeline")
    license: str | None = Field(None, description="licence of the diffusion pipeline (sd-turbo's is non-commercial) (an SPDX id such as apache-2.0 or cc-by-nc-4.0, or its name): recorded in the report and the model card; default: the pipeline folder's model card (README.md license), else unknown",
                                json_schema_extra=role("report"))
    mode: Literal["text2img", "img2img"] = Field(
        "text2img", description="text2img: images from prompts; img2img: variants of the real training images "
                                "(each synthetic image starts from one, cycling through the class)")
    images_per_class: int | None = Field(None, ge=1, description="synthetic images per class (or use amount)")
    amount: str | None = Field(None, pattern=r"^\d+(\.\d+)?x$", description="synthetic images as a multiple of each "
                               "class's real training images: 1x, 2x, 0.5x; default 1x when images_per_class is unset")
    prompt: str = Field("a photo of a {label}, a type of flower", description="'{label}' is the class name")
    prompts: dict[str, str] = Field(default_factory=dict, description="per-class prompts (class name -> prompt), "
                                    "overriding prompt for those classes")
    negative_prompt: str = Field("blurry, low quality, text, watermark", description="used with guidance_scale > 1")
    steps: int = Field(4, ge=1)
    guidance_scale: float = Field(0.0, ge=0)
    strength: float = Field(0.6, gt=0, le=1, description="img2img: how far from the real image (1: ignore it)")
    image_size: int = Field(512, ge=64)
    batch_size: int = Field(8, ge=1, description="images per pipeline call", json_schema_extra=role("execution"))
    seed: int = 0
    filter: AugmentFilter = AugmentFilter()
    for_baselines: bool = Field(False, description="train the baselines on the kept synthetic images too (by default "
                                "they see the real images only, as a pretrain-then-finetune user would)")

    @field_validator("prompt")
    @classmethod
    def _prompt_has_label(cls, value: str) -> str:
        if "{label}" not in value:
            raise ValueError(f"prompt {value!r} must contain '{{label}}' where the class name goes")
        return value

    @model_validator(mode="after")
    def _one_amount(self) -> AugmentConfig:
        if self.images_per_class is not None and self.amount is not None:
            raise ValueError("augment.images_per_class and augment.amount both set; keep one")
        if self.mode == "img2img" and self.steps * self.strength < 1:
            raise ValueError(f"augment.steps ({self.steps}) x augment.strength ({self.strength}) is under 1: img2img "
                             "would run no denoising step; raise one of them")
        return self

    def count(self, real: int) -> int:
        """Synthetic images for a class with ``real`` training images."""
        if self.images_per_class is not None:
            return self.images_per_class
        return max(1, round(float((self.amount or "1x")[:-1]) * real))


class LossWeights(Section):
    ce: float = Field(1.0, ge=0)
    align: float = Field(1.0, ge=0)
    uniform: float = Field(1.0, ge=0)
    kd: float = Field(1.0, ge=0)


class DistillConfig(Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2, description="at least 2: the uniformity loss needs pairs")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    weights: LossWeights = LossWeights()
    temperature: float = Field(4.0, gt=0)
    proj_dim: int = Field(128, ge=2)
    proj_hidden: int | None = Field(
        None, ge=2, description="hidden width of each projection head; default: that head's input width, as in "
        "the paper's code (sfarhat/dapt, models/projector.py)")
    teacher_views: int = Field(
        8, ge=0, description="augmented views per image whose teacher outputs are cached; 0 = online teacher"
    )
    seed: int = 0


class ExportConfig(Section):
    opset: int = Field(18, ge=13, le=23)
    formats: list[Literal["onnx", "image", "ort", "openvino"]] = Field(
        ["onnx", "image", "ort", "openvino"], description="what the export folder gets of the shipped model: onnx "
        "(always), image (the same model with its preprocessing in the graph, taking a decoded uint8 image), ort "
        "(onnxruntime's mobile format, with its reduced-build operator config and mobile usability check), openvino "
        "(OpenVINO IR, judged on validation against the ONNX file and timed beside it; skipped with a note when the "
        "openvino package is not installed)")
    quantize: Literal["auto", "static_int8", "dynamic_int8", "fp16", "none"] = Field(
        "auto", description="'auto': the device profile's preset (static_int8 on CPUs, fp16 on CUDA)"
    )
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_images: int = Field(128, ge=1)
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="allowed top-1 drop of the quantized model: it "
                                     "is rejected when its drop against FP32 on the validation split exceeds this with "
                                     "90% confidence (paired, image by image)")
    parity_atol: float = Field(1e-3, gt=0, description="max |logit| difference ONNX vs PyTorch")
    qat_epochs: int = Field(3, ge=0, description="static INT8: epochs of quantization-aware distillation, the "
                            "remedy tried when post-training quantization (plain, then equalized) loses more than "
                            "max_accuracy_drop; 0 turns it off")
    qat_lr: float | None = Field(None, gt=0, description="learning rate of quantization-aware distillation; "
                                 "default: a hundredth of distill.lr (NVIDIA's QAT recipe: about 1% of the training rate for about "
                                 "a tenth of its epochs)")


class BenchConfig(Section):
    rounds: int = Field(10, ge=1, description="rounds per figure; files measured together interleave their rounds")
    warmup: int = Field(5, ge=0, description="untimed runs at the start of each round")
    runs: int = Field(30, ge=1, description="minimum timed runs per round")
    min_time_s: float = Field(0.3, ge=0, description="minimum timed seconds per round")
    noise_band: float = Field(
        0.25, ge=0, lt=1, description="least relative half-width of a latency band: how far p50 drifts between "
        "measurements minutes apart on this host (benchmarks/latency_noise.py measures it)")
    threads: int | None = Field(None, ge=1, description="default: budget.threads, then the profile's")
    batch_size: int = Field(8, ge=1, description="second batch size measured besides batch 1")


class BaselineConfig(Section):
    scratch: bool = Field(True, description="train the student from scratch (CE only) as a comparison")
    pretrained: bool = Field(True, description="pretrain-then-finetune baseline")
    weights: Weights | None = Field("timm", description=f"baseline's pretrained student weights: {WEIGHTS_HELP}; or "
                                    "a folder of checkpoint folders (as `factory pretrain` writes them under exports/"
                                    "pretrained/), of which the student's architecture is used")
    lr: float | None = Field(None, gt=0, description="finetune lr; default: distill.lr")
    license: str | None = Field(None, description="licence of the baseline's pretrained weights (an SPDX id such as apache-2.0 or cc-by-nc-4.0, or its name): recorded in the report and the model card; default: the weights' own record (config.json's license, timm's registry), else unknown",
                                json_schema_extra=role("report"))
    distill_pretrained: bool = Field(False, description="also distil the pretrained student (init from "
                                     "baseline.weights, lr as the finetune's) with the distillation loss: a fourth method")
    pretrain_flops: float | None = Field(
        None, gt=0, description="documented training FLOPs behind baseline.weights (e.g. 3 x forward FLOPs x images x "
        "epochs of its ImageNet recipe); read from pretrain_report.json when the weights are a factory checkpoint folder"
    , json_schema_extra=role("report"))


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="output goes to exports/<name>/",
                      json_schema_extra=role("report"))
    data: DataConfig
    budget: BudgetConfig = BudgetConfig()
    student: StudentConfig = StudentConfig()
    teacher: TeacherConfig
    augment: AugmentConfig = AugmentConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()
    baseline: BaselineConfig = BaselineConfig()
    ship: Literal["best", "distilled"] = Field(
        "best", description="best: of every trained model (distilled, baselines, teacher) at the precision it would "
        "ship, the one with the best validation accuracy among those meeting every budget check; distilled: always "
        "the distilled student", json_schema_extra=role("report"))
    license: str | None = Field(None, description="the licence the shipped model is released under, for its model "
                                "card (an SPDX id such as apache-2.0); default: other, with every input's licence listed",
                                json_schema_extra=role("report"))
    noncommercial: Literal["warn", "fail"] = Field(
        "warn", description="when an input under a non-commercial licence (data, teacher or baseline weights, the "
        "diffusion pipeline) reaches the shipped model: warn in the summary, the report and the card, or also fail "
        "the build (exit 11; its outputs are still written)", json_schema_extra=role("report"))
    refit: bool = Field(
        True, description="after the validation split has decided which model ships and how it quantizes, train "
        "that method once more on train + validation (every labelled image) and ship the refit model, quantized as "
        "decided, parity checked and benchmarked (nothing is decided on it); false: ship the model as decided",
        json_schema_extra=role("report"))

    def fingerprint(self) -> str:
        """Short content hash of the whole recipe (after overrides)."""
        return hash_config(self.model_dump(mode="json"))[:16]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a build recipe. Raises :class:`RecipeError` with every problem found."""
    return load_yaml_model(Recipe, path, overrides)
