"""Quantization: onnxruntime's quantizers with one set of static INT8 options and one pre-process (quantizers),
the torch simulation of onnxruntime's static INT8 QDQ graph (qat, qdq_graph) and the distillation that trains
through it (qat_distill), the remedies applied before quantizing (equalize), the per-layer sensitivity ranking
(sensitivity), the remedy ladder that tries them in order (ladder) and what a quantization tried and decided
(results). The stage that uses them is factory.stages.export."""

CHANGES_NO_RESULT = True
