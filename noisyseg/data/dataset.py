"""A torch Dataset over in-memory uint8 arrays: an image plus any number of per-pixel maps."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from noisyseg.data.transforms import apply_transform

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet statistics, a common convention
STD = np.array([0.229, 0.224, 0.225], np.float32)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, H, W]``."""
    return torch.from_numpy(((image.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1).copy())


class SegmentationDataset(Dataset):
    """Items are dicts: ``image`` ``[3, H, W]`` float, each map ``[1, H, W]`` float, ``index``.

    Index with an int, or with ``(index, seed)`` to fix the augmentation draw.

    Args:
        images: uint8 ``[N, H, W, 3]``.
        maps: name -> uint8/float ``[N, H, W]`` (e.g. ``mask``, ``true_mask``).
        transform: an albumentations pipeline applied to the image and all maps with one draw.
        origin: also emit ``origin``, each pixel's flat index in the un-augmented image (the map of
            indices goes through the same draw, with the nearest-neighbour interpolation of masks), so
            per-pixel state can be kept in image coordinates: exact for flips and 90° rotations.
    """

    def __init__(self, images: np.ndarray, maps: dict[str, np.ndarray], transform=None, origin: bool = False) -> None:
        for name, array in maps.items():
            if array.shape != images.shape[:3]:
                raise ValueError(f"map {name!r} has shape {array.shape}, images {images.shape[:3]}")
        if origin and images.shape[1] * images.shape[2] > 2**24:
            raise ValueError(f"origin maps are float32: images of {images.shape[1]}x{images.shape[2]} have too many pixels")
        self.images, self.maps, self.transform, self.origin = images, maps, transform, origin

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        names = list(self.maps)
        arrays = [self.maps[n][index] for n in names]
        if self.origin:
            height, width = self.images.shape[1:3]
            names.append("origin")
            arrays.append(np.arange(height * width, dtype=np.float32).reshape(height, width))
        image, maps = apply_transform(self.transform, self.images[index], arrays, seed)
        sample: dict[str, torch.Tensor | int] = {"image": to_tensor(image), "index": index}
        for name, array in zip(names, maps):
            sample[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
        return sample
