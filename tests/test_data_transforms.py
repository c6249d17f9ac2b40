"""Joint augmentation (noisyseg.data.transforms, applied by noisyseg.data.dataset): image and masks stay
aligned; an unknown transform is a clear error."""
from __future__ import annotations

import numpy as np
import pytest

from noisyseg.data.dataset import SegmentationDataset
from noisyseg.data.transforms import build_transform
from noisyseg.errors import ConfigError


def test_augmentation_keeps_image_and_maps_aligned():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    masks = (rng.random((3, 32, 32)) > 0.5).astype(np.uint8)
    # Encode the mask into the image's red channel: after a joint transform they must still agree.
    images[..., 0] = masks * 255
    transform = build_transform([{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomRotate90", "p": 1.0},
                                 {"name": "Transpose", "p": 0.5}])
    dataset = SegmentationDataset(images, {"mask": masks, "other": 1 - masks}, transform)
    for seed in range(8):
        item = dataset[(seed % 3, seed)]
        red = item["image"][0] > item["image"][0].mean()
        assert (red == (item["mask"][0] > 0.5)).all()
        assert (item["other"] == 1 - item["mask"]).all()
    np.testing.assert_array_equal(dataset[(1, 7)]["image"], dataset[(1, 7)]["image"])


def test_unknown_transform():
    with pytest.raises(ConfigError, match="'Blurry' is not an albumentations transform"):
        build_transform([{"name": "Blurry"}])
