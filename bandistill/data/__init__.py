"""The data layer: where images come from and how a view of one is made.

Modules, by job:

* :mod:`~bandistill.data.load` -- ``load_dataset(name, data_dir)``, the one entry point;
* :mod:`~bandistill.data.memory` -- the memory source, :class:`ImageDataset` (uint8 tensors);
* :mod:`~bandistill.data.builtin` -- digits and CIFAR, read into memory;
* :mod:`~bandistill.data.scan` -- an ImageFolder tree's splits, classes, files and headers;
* :mod:`~bandistill.data.imagefolder` -- a tree decoded whole into memory;
* :mod:`~bandistill.data.decoded_cache` -- that decode kept by content, in memory and on disk;
* :mod:`~bandistill.data.stream` -- the streaming source: a tree of photos that stays on disk;
* :mod:`~bandistill.data.fingerprint` -- digests of decoded data and of trees of files;
* :mod:`~bandistill.data.views` -- view policies and plans, pure functions of (seed, view, sample);
* :mod:`~bandistill.data.resized_crop` -- the RandomResizedCrop policy (ImageNet-style views).

The package imports nothing above it (checkpoints, training): the layers above import it.
The names below are the public ones; import them from ``bandistill.data``.
"""

from bandistill.data.fingerprint import fingerprint_arrays
from bandistill.data.load import DATASETS, load_dataset
from bandistill.data.memory import ImageDataset, split_validation
from bandistill.data.resized_crop import RandomResizedCrop
from bandistill.data.scan import GRAY_MODES, IMAGE_SUFFIXES
from bandistill.data.stream import FileImages, StreamingDataset, eval_tensor
from bandistill.data.views import (
    PARAM_NAMES,
    VIEW_PLANS,
    ViewPlan,
    ViewPolicy,
    expected_distinct,
    generation0_views_seen,
    normalize,
    policy_from_json,
    view_hash,
    view_schedule,
)

__all__ = [
    "DATASETS", "GRAY_MODES", "IMAGE_SUFFIXES", "PARAM_NAMES", "VIEW_PLANS", "FileImages", "ImageDataset",
    "RandomResizedCrop", "StreamingDataset", "ViewPlan", "ViewPolicy", "eval_tensor", "expected_distinct",
    "fingerprint_arrays", "generation0_views_seen", "load_dataset", "normalize", "policy_from_json",
    "split_validation", "view_hash", "view_schedule",
]
