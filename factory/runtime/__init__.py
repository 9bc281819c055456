"""Run an exported model anywhere: onnxruntime, NumPy and Pillow only (no torch).

    from factory.runtime import ExportedModel
    model = ExportedModel.open("exports/flowers12_cpu/student.int8.onnx")
    for p in model.predict(["rose.jpg"]):
        print(p.file, p.label, p.probability)
"""

from factory.runtime.model import ExportedModel, Prediction, folder_labels, image_files

CHANGES_NO_RESULT = True

__all__ = ["ExportedModel", "Prediction", "folder_labels", "image_files"]
