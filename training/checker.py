"""Read a toy-world image back into attributes, analytically, with no model.

The background is the median colour of the border; the shape is the largest connected region that
differs from it; its colour is the nearest palette entry to the region's median, its position the
nearest anchor to the centre of its bounding box, and its kind follows from how much of its bounding box it fills
(square 1.0, circle pi/4, triangle 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
from scipy import ndimage

from training.world import BACKGROUNDS, COLOURS, POSITIONS, Scene

# A pixel belongs to the foreground when it is this far (RGB distance, 0..441) from the background.
_FOREGROUND_DISTANCE = 60.0
# Regions smaller than this fraction of the image are specks, not a shape.
_MIN_AREA = 0.01


@dataclass(frozen=True)
class Reading:
    """What the checker sees in an image; None where it sees no shape."""

    colour: str | None
    shape: str | None
    position: str | None
    background: str
    fill_ratio: float
    area: float

    def matches(self, scene: Scene) -> dict[str, bool]:
        """Per attribute, whether this reading agrees with `scene`, plus `all` for colour, shape and position."""
        result = {
            "colour": self.colour == scene.colour,
            "shape": self.shape == scene.shape,
            "position": self.position == scene.position,
            "background": self.background == scene.background,
        }
        result["all"] = result["colour"] and result["shape"] and result["position"]
        return result


def read(image: PIL.Image.Image | np.ndarray) -> Reading:
    """The attributes of the single shape in `image` (an RGB image or an HxWx3 uint8 array)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image, dtype=np.float32)
    height, width, _ = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = min(BACKGROUNDS, key=lambda name: float(np.linalg.norm(np.array(BACKGROUNDS[name]) - background_rgb)))

    distance = np.linalg.norm(pixels - background_rgb, axis=2)
    labels, count = ndimage.label(distance > _FOREGROUND_DISTANCE)
    if count == 0:
        return Reading(None, None, None, background, 0.0, 0.0)
    areas = ndimage.sum_labels(np.ones_like(distance), labels, index=range(1, count + 1))
    largest = int(np.argmax(areas)) + 1
    region = labels == largest
    area = float(region.sum()) / (height * width)
    if area < _MIN_AREA:
        return Reading(None, None, None, background, 0.0, area)

    rgb = np.median(pixels[region], axis=0)
    colour = min(COLOURS, key=lambda name: float(np.linalg.norm(np.array(COLOURS[name]) - rgb)))

    ys, xs = np.nonzero(region)
    # The centre of the bounding box, which is where the world places a shape: a triangle's centroid
    # sits below it.
    bx = (xs.min() + xs.max() + 1) / 2 / width
    by = (ys.min() + ys.max() + 1) / 2 / height
    position = min(POSITIONS, key=lambda name: (POSITIONS[name][0] - bx) ** 2 + (POSITIONS[name][1] - by) ** 2)

    box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = float(region.sum()) / float(box_area)
    shape = "triangle" if fill < 0.64 else "circle" if fill < 0.9 else "square"
    return Reading(colour, shape, position, background, fill, area)
