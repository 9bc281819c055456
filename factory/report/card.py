"""The model card: ``README.md`` in every export folder, in the Hugging Face format (YAML front matter read by the
hub, then the text), generated from the :class:`~factory.report.schema.Report` with huggingface_hub's
``ModelCard`` and ``ModelCardData``: what the model is, its classes and preprocessing, its accuracy and latency
(and where that latency was measured), how it was made, the licences of its inputs (the most restrictive first)
and its limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from factory.fields import percent
from factory.methods import method

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from factory.report.schema import Report, ResultRow

CHANGES_NO_RESULT = True

CARD_FILE = "README.md"


def model_card(report: Report) -> ModelCard:
    """The card of the build ``report`` describes."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    files = published_rows(report)
    licensing = report.licensing
    model_license = (licensing.model_license if licensing else None) or "other"
    data = ModelCardData(
        model_name=report.name, library_name="onnx", pipeline_tag="image-classification", license=model_license,
        license_name="see-the-inputs-licences" if model_license == "other" else None,
        tags=_tags(report), datasets=[_dataset_name(report)], base_model=base_model(report),
        metrics=["accuracy"],
        eval_results=[EvalResult(task_type="image-classification", dataset_type=str(report.recipe.get("data", {}).get("source", "imagefolder")),
                                 dataset_name=_dataset_name(report), dataset_split="test", metric_type="accuracy",
                                 metric_value=round(accuracy, 4), metric_name=f"test accuracy ({file})")
                      for file, accuracy in test_accuracies(report)])
    body = "\n".join([f"# {report.name}", "", *_summary(report, files), *_classes(report), *_use(report),
                      *_figures(report, files), *_made(report), *licences_section(report), *_limits(report)])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def published_rows(report: Report) -> list[ResultRow]:
    """The rows of the files the export folder holds (the shipped model at FP32 and at its precision)."""
    return [r for r in report.results if r.file]


def test_accuracies(report: Report) -> list[tuple[str, float]]:
    """(file, test accuracy) of every model file the export folder holds: the ONNX files, then the app forms."""
    forms = [report.export.image_input, report.export.mobile, report.export.openvino]
    return [(r.file, r.accuracy) for r in published_rows(report)] + \
        [(check.file, check.accuracy) for check in forms if check is not None]


def base_model(report: Report) -> str | None:
    """The hub model the shipped model was finetuned from, when it started from hub weights."""
    weights = report.recipe.get("baseline", {}).get("weights")
    if "student" not in method(report.shipped.method).pretrained or not weights:
        return None
    if weights.startswith("hf-hub:"):
        return weights.removeprefix("hf-hub:")
    if weights == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(report.student.model)
        return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None
    return None


def _dataset_name(report: Report) -> str:
    data = report.recipe.get("data", {})
    return str(data.get("dataset") or report.data.root.rstrip("/").rsplit("/", 1)[-1] or report.name)


def _tags(report: Report) -> list[str]:
    tags = ["onnx", "image-classification", "timm", "factory"]
    if any(r.precision == "int8" for r in published_rows(report)):
        tags.append("int8")
    if method(report.shipped.method).distils:
        tags.append("knowledge-distillation")
    if report.augmentation is not None:
        tags.append("synthetic-data")
    return tags


def _summary(report: Report, files: list[ResultRow]) -> list[str]:
    s = report.student
    lines = [f"An image classifier for {len(report.data.classes)} classes: {s.model} ({s.params / 1e6:.1f}M "
             f"parameters, {s.macs / 1e6:.0f}M MACs at {s.image_size} px), trained as **{report.shipped.method}** and "
             f"exported to ONNX ({', '.join(f'`{r.file}`' for r in files)}) by the factory "
             f"(version {report.factory_version}, recipe hash `{report.recipe_hash}`).", ""]
    if report.licensing and report.licensing.restricted():
        names = "; ".join(f"{i.input}: {i.license}" for i in report.licensing.restricted())
        lines = [f"**Non-commercial input:** {names}. The model may not be usable commercially.", ""] + lines
    return lines


def _classes(report: Report) -> list[str]:
    return ["## Classes", "", ", ".join(f"`{c}`" for c in report.data.classes) + " (in output order; "
            "`labels.json` holds the same list).", ""]


def _use(report: Report) -> list[str]:
    pre = report.export.preprocess
    return ["## Preprocessing and use", "",
            f"Input: {pre.get('input_layout', 'NCHW float32')}; input size {pre.get('input_size')}, mean "
            f"{pre.get('mean')}, std {pre.get('std')}, crop {pre.get('crop_pct')}, interpolation "
            f"{pre.get('interpolation')} (also in the ONNX file's metadata).", "",
            "```python", "from factory.runtime import ExportedModel  # pip install factory (no torch needed)", "",
            f'model = ExportedModel.open("{report.shipped.file}")',
            'for p in model.predict(["photo.jpg"]):', "    print(p.label, p.probability)", "```", "",
            *_image_input(report), *_mobile(report), *_openvino(report)]


def _openvino(report: Report) -> list[str]:
    v = report.export.openvino
    row = next((f for f in report.export.formats if f.format == "openvino"), None)
    if v is None or (row is not None and not row.accepted):
        return []
    timed = next((f for f in report.export.formats if f.format == "onnx"), None)
    return [f"`{v.file}` (with its `.bin`) is the same model as OpenVINO IR, converted from `{v.source}` by OpenVINO "
            f"{v.openvino}, whose CPU plugin runs {v.int8_layers} of its {v.layers} layers in INT8. On the {v.images} "
            f"test images it names the same class as the ONNX file on {percent(v.agreement)} ({percent(v.accuracy)} "
            "accuracy)" + (f"; {row.latency.p50:.2f} ms p50 on this host against onnxruntime's "
                           f"{timed.latency.p50:.2f} ms in the same run" if row and row.latency and timed else "")
            + ".", ""]


def _mobile(report: Report) -> list[str]:
    m = report.export.mobile
    if m is None:
        return []
    return [f"`{m.file}` is the same model in onnxruntime's mobile format (optimizations fixed for {m.target_platform}); "
            f"`{m.operators_config}` lists the operators a reduced onnxruntime build needs for it "
            f"(`--include_ops_by_config`), and `{m.usability_file}` holds onnxruntime's mobile usability check (NNAPI "
            f"and CoreML: {'may help' if m.mobile_eps_may_help else 'unlikely to help'}). On the {m.images} test images "
            f"it names the same class as the ONNX file on {percent(m.agreement)} ({percent(m.accuracy)} accuracy).", ""]


def _image_input(report: Report) -> list[str]:
    check = report.export.image_input
    if check is None:
        return []
    return [f"`{check.file}` is the same model with this preprocessing inside the graph, for apps: its input "
            "`image` is a decoded uint8 RGB image, height x width x 3, of any size (any onnxruntime, mobile builds "
            f"included). On the {check.images} test images it names the same class as the Python runtime on "
            f"{percent(check.agreement)} of them ({percent(check.accuracy)} accuracy).", "",
            "```python", "import numpy as np, onnxruntime as ort", "from PIL import Image", "",
            f'session = ort.InferenceSession("{check.file}")',
            'logits = session.run(None, {"image": np.asarray(Image.open("photo.jpg").convert("RGB"))})[0]', "```", ""]


def _figures(report: Report, files: list[ResultRow]) -> list[str]:
    b = report.budget
    where = (f"measured on this {report.host.cpu} host ({report.first_row.threads} threads, onnxruntime "
             f"{report.host.onnxruntime}), which stands in for the `{b.profile}` profile"
             if b.host_matches_profile else
             f"a proxy: measured on this host ({report.host.cpu}), which cannot stand in for the `{b.profile}` profile "
             f"({b.stand_in}); measure on the device with `factory bench`")
    rows = ["| file | precision | test accuracy | model p50 ms (band), batch 1 | end-to-end p50 ms (decode + "
            "preprocess + model) | size MB |", "|---|---|---|---|---|---|"]
    rows += [f"| `{r.file}` | {r.precision} | {percent(r.accuracy)} of {r.test_images} | {r.latency_ms.text()} | "
             f"{r.end_to_end_ms.text() if r.end_to_end_ms else '-'} | {r.size_mb:.2f} |" for r in files]
    return ["## Accuracy and latency", "", *rows, "", f"Latency is {where}. Budget: {b.verdict} "
            f"({', '.join(f'{c.name} {c.verdict}' for c in b.checks) or 'no limits set'}).", ""]


def _made(report: Report) -> list[str]:
    t, d = report.teacher, report.data
    lines = ["## How it was made", "",
             f"- Data: {d.source}; {d.train} training, {d.val} validation and {d.test} test images"
             + (f", plus {d.synthetic} synthetic images from a diffusion model" if d.synthetic else "") + ".",
             f"- Teacher: {t.weights}, adapted by {t.adapt}; {percent(t.test_accuracy)} on test.",
             f"- Chosen: {report.shipped.decision}.",
             f"- Precision: {report.shipped.why}."]
    return lines + [""]


def licences_section(report: Report) -> list[str]:
    """The inputs' licences as a Markdown section (the card's and report.md's), the most restrictive first."""
    licensing = report.licensing
    if licensing is None:
        return []
    rows = ["| input | what | licence | read from | reaches this model |", "|---|---|---|---|---|"]
    rows += [f"| {i.input} | {i.name} | {i.license}{' (non-commercial)' if i.noncommercial else ''} | {i.source} | "
             f"{'yes' if i.reaches_shipped else 'no'} |" for i in licensing.inputs]
    head = (f"Released under {licensing.model_license}." if licensing.model_license else
            "No licence was declared for the model itself (recipe `license`); its inputs' licences, the most "
            "restrictive first:")
    return ["## Licences of the inputs", "", head, "", *rows, ""]


def _limits(report: Report) -> list[str]:
    return ["## Limits", "",
            f"- It knows only these {len(report.data.classes)} classes and was tested on {report.data.test} images "
            "from the same source as its training images; other cameras, lighting or classes are untested.",
            f"- Which model ships was decided on {report.data.decisions_on}: small splits make close decisions "
            "uncertain (the report's decision line says how sure).",
            "- Latency figures are for the host named above; a device's own figure needs `factory bench` there.", ""]
