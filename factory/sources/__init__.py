"""Where the task's images come from: an image folder, a Hugging Face dataset or a torchvision dataset.

:func:`load_task_data` turns every source into the same :class:`~factory.data.TaskData` (classes in
label order, train / val / test samples that are image files with labels, a content fingerprint), so no
stage after loading depends on the source. A source's own splits are used as they are; a split it lacks
is held out of train (``data.test_fraction``, ``data.val_fraction``), stratified and seeded.

Images that are not files of their own (a Hugging Face dataset's embedded bytes, a torchvision dataset
held in arrays) are written once into the cache by the ``data`` stage, with their original bytes, as
``<split>/<class>/<file>``; a source whose images are files (an image folder, Flowers102) is read in
place. Every image is decoded once per content fingerprint (the ``data_check`` stage): one that cannot
be is skipped and counted, or fails the load under ``data.strict``. A remote source fails within seconds
when its host cannot be reached, saying how to use local files instead.

The package is split by source (imagefolder, hf, torchvision_datasets), what they share (common) and the one
task made of any of them (load). It is not imported by any training stage: the data's content fingerprint, not the code that
found it, is what their keys hold.
"""

from factory.sources.common import MATERIALIZE, DownloadPending, Found
from factory.sources.load import DATA_CHECK, content_fingerprint, decode_problem, load_task_data

__all__ = ["DATA_CHECK", "MATERIALIZE", "DownloadPending", "Found", "content_fingerprint", "decode_problem",
           "load_task_data"]
