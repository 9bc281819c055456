"""OpenVINO IR run as the torch-free runtime runs ONNX: an ``.xml`` (with its ``.bin``) compiled for OpenVINO's CPU
plugin behind the part of onnxruntime's session API the runtime uses. Needs the ``openvino`` package only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

RUNTIME = "OpenVINO CPU"
"""How latency rows name OpenVINO's CPU plugin (the ONNX rows name the onnxruntime execution provider)."""
INSTALL = "pip install 'factory[openvino]' (the openvino package)"


def installed() -> bool:
    """Whether the openvino package is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def compile_ir(model, threads: int):
    """The IR ``model`` (an ``openvino.Model``) compiled for OpenVINO's CPU plugin: ``threads`` inference threads,
    latency-first, float32 where float."""
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})


class OpenVinoSession:
    """An OpenVINO IR behind the part of onnxruntime's ``InferenceSession`` that :class:`factory.runtime.ExportedModel`
    uses (``run``, inputs, outputs, the metadata the converter kept in the IR's ``rt_info``), so ``factory predict``,
    ``info`` and ``bench`` open an ``.xml`` as they open an ``.onnx`` file."""

    def __init__(self, xml: str | Path, threads: int):
        import openvino as ov

        model = ov.Core().read_model(str(xml))
        self.compiled = compile_ir(model, threads)
        self._request = self.compiled.create_infer_request()
        framework = model.get_rt_info()["framework"] if model.has_rt_info(["framework"]) else {}
        self._metadata = {key: value.astype(str) for key, value in framework.items()}
        port = lambda p: SimpleNamespace(name=p.get_any_name(), type=str(p.get_element_type()),  # noqa: E731
                                         shape=[d.get_length() if d.is_static else None for d in p.get_partial_shape()])
        self._inputs, self._outputs = [port(p) for p in model.inputs], [port(p) for p in model.outputs]

    def run(self, _outputs, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(self._request.infer(list(feed.values()))[0])]

    def get_inputs(self) -> list:
        return self._inputs

    def get_outputs(self) -> list:
        return self._outputs

    def get_modelmeta(self):
        return SimpleNamespace(custom_metadata_map=self._metadata)

    def get_providers(self) -> list[str]:
        return [RUNTIME]
