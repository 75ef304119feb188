"""Detection data sets on disk, read into one form, and written out again.

Readers: :func:`read_coco` (COCO JSON, one file or one per split),
:func:`read_voc` (Pascal VOC folders) and :func:`read_yolo` (Ultralytics' data
YAML); :func:`read` picks one by name. Writers: :func:`write_coco`, the form
``bckd_train`` trains from (``python -m bckd_train data --name NAME``), and
:func:`write_yolo`, Ultralytics' layout (``python -m bckd_train to-yolo``).

A :class:`Dataset` holds the class names in their order and, per split, the
images with their boxes (``[K, 4]`` xyxy pixels) and labels. Readers take what
a real data set has and report it instead of failing on it or hiding it:

- a degenerate box (``x2 <= x1`` or ``y2 <= y1``) is dropped;
- a box reaching outside its image is clipped to it (dropped when nothing is left);
- an image without boxes is dropped;

each with a count in :attr:`Dataset.dropped`, which the commands print. A
missing file or folder, a broken annotation file or an image that does not
decode is a :class:`~bckd_train.errors.UserError` naming the file.

Splits come from the data set when it has them (VOC's ``ImageSets/Main``, one
COCO JSON per split, the YAML's ``val``); otherwise :func:`seeded_split` draws
them from a seed, which the dataset records. Writers write into a temporary
folder beside the destination and rename it (:func:`atomic_folder`), so a
killed conversion leaves no half data set.
"""

from ..errors import UserError
from .coco import read_coco
from .common import SPLITS, Dataset, Sample, seeded_split
from .voc import read_voc
from .writers import atomic_folder, write_coco, write_yolo
from .yolo import read_yolo, yolo_label_path

FORMATS = ("coco", "voc", "yolo")


def read(fmt, path, *, images=None, classes=None, seed=0):
    """The data set at ``path`` in format ``fmt`` (one of FORMATS), by that format's reader.

    ``images`` (COCO only): the folder the JSON's file names are relative to.
    ``classes``: the class names in label order (None: the data set's own).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: not a format bckd_train reads; one of {', '.join(FORMATS)}")
    if fmt == "coco":
        return read_coco(path, images=images, classes=classes, seed=seed)
    if images is not None:
        raise UserError(f"--images is for --format coco; a {fmt} data set says where its images are")
    if not isinstance(path, str):
        raise UserError(f"--path: one {fmt} data set, not one per split (that is for --format coco)")
    return (read_voc if fmt == "voc" else read_yolo)(path, classes=classes, seed=seed)


__all__ = ["FORMATS", "SPLITS", "Dataset", "Sample", "atomic_folder", "read", "read_coco", "read_voc", "read_yolo",
           "seeded_split", "write_coco", "write_yolo", "yolo_label_path"]
