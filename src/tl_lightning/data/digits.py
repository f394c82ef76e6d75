"""The embedded default data: scikit-learn's 1,797 real 8x8 handwritten digits, written once as an ImageFolder.

500 stratified training images (about 50 a class, `train_test_split(train_size=500, stratify=y,
random_state=0)`); the 1,297 held out are split, stratified
and seeded, into 297 for validation (checkpoint selection) and 1,000 for test, which nothing else sees.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.transforms import train_transform

log = logging.getLogger(__name__)

NUM_TRAIN = 500
NUM_VAL = 297
# No flips or random crops (digits are orientation- and position-sensitive): small affine jitter only.
# conf/data/digits.yaml spells out the same values.
DIGITS_AUGMENTATION = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "hflip": 0.0,
    "affine_degrees": 10,
    "affine_scale": 0.1,
    "affine_translate": 0.1,
}


def write_digits(folder: Path) -> Path:
    """Write the digits as `folder/{train,val,test}/{0..9}/NNNN.png`, atomically (a temp folder renamed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(images))
    train, held = train_test_split(index, train_size=NUM_TRAIN, stratify=digits.target, random_state=0)
    val, test = train_test_split(held, train_size=NUM_VAL, stratify=digits.target[held], random_state=0)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    for split, indices in (("train", train), ("val", val), ("test", test)):
        for i in indices:
            target = staging / split / str(digits.target[i])
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(target / f"{i:04d}.png")
    if folder.exists():  # another process finished first
        shutil.rmtree(staging)
    else:
        staging.rename(folder)
    return folder


class DigitsDataModule(ImageFolderDataModule):
    """`ImageFolderDataModule` over the digits, written to `cache_dir` on first use.

    >>> dm = DigitsDataModule(cache_dir="/tmp/tl_cache")  # doctest: +SKIP
    >>> dm.prepare_data(); dm.class_names[:3]  # doctest: +SKIP
    ['0', '1', '2']
    """

    def __init__(self, cache_dir: str | Path = "~/.cache/tl_lightning", **kwargs: Any) -> None:
        kwargs.setdefault("train_transform", partial(train_transform, **DIGITS_AUGMENTATION))
        super().__init__(root=Path(cache_dir).expanduser() / "digits-v1", cache_dir=cache_dir, **kwargs)

    def prepare_data(self) -> None:
        # One writer at a time, across DDP ranks and separate jobs sharing the cache: without the lock, two first
        # uses could both find no folder and the second rename would meet the first's ("directory not empty").
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root.parent / f".{self.root.name}.lock"):
            if not self.root.is_dir():
                log.info("Writing the digits ImageFolder to %s", self.root)
                write_digits(self.root)
