"""onnxruntime sessions as the factory opens them everywhere (export checks, benchmarks, the runtime), so that
what is measured is what runs. Imports no torch."""

from __future__ import annotations


def available_provider(wanted: str) -> str:
    """``wanted`` if this onnxruntime build has it, else the CPU provider."""
    import onnxruntime as ort

    return wanted if wanted in ort.get_available_providers() else "CPUExecutionProvider"


def make_session(path, threads: int, provider: str = "CPUExecutionProvider", spinning: bool = True,
                 optimize: bool = True):
    """An onnxruntime session with the options :data:`factory.latency.SESSION_OPTIONS` states and ``threads``
    intra-op threads; ``path`` may also be a serialized model. ``optimize=False`` runs the graph as written: for
    a QDQ file, onnxruntime's reference of what it means (float operators between QuantizeLinear and
    DequantizeLinear), without its fused INT8 kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=[provider])


IMAGE_INPUT = "image"
"""The input of an image-input file (:mod:`factory.image_graph`): a decoded uint8 RGB image, height x width x 3."""

PROVIDER_PACKAGES = {"CUDAExecutionProvider": "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu",
                     "OpenVINOExecutionProvider": "onnxruntime-openvino", "DmlExecutionProvider": "onnxruntime-directml",
                     "CoreMLExecutionProvider": "onnxruntime (macOS wheels)"}
"""Which onnxruntime build brings an execution provider (installed in place of the plain ``onnxruntime``)."""


def check_provider(provider: str) -> None:
    """ModelError naming the installed providers and the package to install, unless this onnxruntime has
    ``provider``."""
    import onnxruntime as ort

    from factory.errors import ModelError

    available = ort.get_available_providers()
    if provider not in available:
        package = PROVIDER_PACKAGES.get(provider)
        raise ModelError(f"--provider {provider}: this onnxruntime ({ort.__version__}) has {', '.join(available)}"
                         + (f"; install {package} in place of onnxruntime for it" if package else ""))
