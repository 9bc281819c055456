"""factory: turn a recipe into small, fast, deployable image classifiers.

A recipe names a dataset and a device budget; ``factory build`` distills a small
timm student from a teacher, exports it to ONNX, quantizes it and benchmarks it
against a scratch-trained student and the pretrain-then-finetune baseline.
"""

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)

__version__ = "0.2.0"
