"""The post-processing of a class map, as one value: what turns the network's 3-class map into nuclei.

``PostProcessing`` holds every setting of the two steps -- the object filter (``kernels/contrast.py``: faint small
objects and edge slivers erased, small objects grown into their bright outer ring) and the instances
(``kernels/instances.py``: seeds grown through the boundary band, holes filled, specks dropped) -- and is passed
whole: from the model card (where the trainer's calibration wrote it, in the model's pixels) and the command line's
overrides, through ``at_scale`` to the pixels of the frames at hand, to ``postprocess`` here and the fused
measurement kernels (``kernels/measure.py``). The trainer's validation and calibration run the same function, so a
model is validated with exactly what the engine will apply.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from nucleiscreen.kernels.contrast import DEFAULT_CONTRAST_AREA, INNER, OUTER, filter_faint
from nucleiscreen.kernels.instances import DEFAULT_MAX_GROW, DEFAULT_MIN_AREA, instances_from_classes

# The settings a user may override for one run (``--min-area`` etc.), in the frames' pixels.
OVERRIDABLE = ("min_area", "min_contrast", "min_edge_area", "grow_area")


@dataclass(frozen=True)
class PostProcessing:
    """Every setting of the class map -> nuclei step; lengths and areas in pixels of the frame it is applied to.

    Attributes
    ----------
    max_grow : int
        Rounds of the seeds' growth through boundary pixels (``instances_from_classes``).
    min_area : int
        Objects with fewer pixels are dropped.
    min_contrast : float
        Objects under ``contrast_area`` px whose mean exceeds the background around them by less than this
        (a fraction of the frame's normalized range) are erased; 0: no filter.
    contrast_area : int
        The size under which objects are tested for ``min_contrast``.
    min_edge_area : int
        Objects touching the frame's edge with fewer pixels are erased; 0: none.
    grow_area : int
        Objects under this many pixels grow into the bright pixels of their outer ring; 0: no growth.
    grow_level : float
        ... those at least this fraction of the way from the background around them to their mean.
    ring : (int, int)
        The background ring of the contrast: between the object's box grown by ``ring[0]`` and by ``ring[1]`` px.
    connectivity : {4, 8}
        Of the seeds and the growth.
    """

    max_grow: int = DEFAULT_MAX_GROW
    min_area: int = DEFAULT_MIN_AREA
    min_contrast: float = 0.0
    contrast_area: int = DEFAULT_CONTRAST_AREA
    min_edge_area: int = 0
    grow_area: int = 0
    grow_level: float = 0.5
    ring: tuple[int, int] = (INNER, OUTER)
    connectivity: int = 8

    def __post_init__(self):
        for name in ("max_grow", "min_area", "contrast_area", "min_edge_area", "grow_area"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more pixels, got {getattr(self, name)}")
        if not 0 <= self.min_contrast < 1:
            raise ValueError(f"min_contrast must be in [0, 1) (a fraction of the frame's range), got "
                             f"{self.min_contrast}")
        if not 0 <= self.grow_level <= 1:
            raise ValueError(f"grow_level must be in [0, 1], got {self.grow_level}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        object.__setattr__(self, "ring", tuple(self.ring))

    @classmethod
    def from_card(cls, card: dict) -> PostProcessing:
        """The settings of a model card's ``postprocessing`` section (keys it lacks keep their defaults; other keys,
        such as the training target's, are not this step's)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in card.items() if k in known})

    def to_card(self) -> dict:
        """The settings a model card records (the ring and the connectivity are the engine's, not a model's)."""
        return {k: v for k, v in asdict(self).items() if k not in ("ring", "connectivity")}

    def with_overrides(self, overrides: dict) -> PostProcessing:
        """These settings with some replaced (None values: not given); one line for a name that is not a setting."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown post-processing setting(s) {', '.join(unknown)}")
        return replace(self, **given)

    def at_scale(self, scale: float) -> PostProcessing:
        """The settings for frames resized by ``scale`` before the network (whose nuclei are ``1 / scale`` times the
        model's size): lengths divided by ``scale``, areas by its square; the post-processing runs on the class map
        at the frame's own size."""
        if scale == 1.0:
            return self
        s = scale
        return replace(self, max_grow=math.ceil(self.max_grow / s), min_area=max(1, round(self.min_area / s**2)),
                       contrast_area=max(1, round(self.contrast_area / s**2)),
                       ring=(round(self.ring[0] / s), max(round(self.ring[1] / s), round(self.ring[0] / s) + 1)),
                       min_edge_area=round(self.min_edge_area / s**2), grow_area=round(self.grow_area / s**2))

    @property
    def filters(self) -> bool:
        """Whether the object filter changes any class map (else it is skipped, and its inputs not made)."""
        return self.min_contrast > 0 or self.min_edge_area > 0 or self.grow_area > 0

    @property
    def instance_args(self) -> dict:
        """The keyword arguments of ``instances_from_classes`` and the fused measurement kernels."""
        return {"min_area": self.min_area, "connectivity": self.connectivity, "max_grow": self.max_grow}


def filter_classes(class_map: np.ndarray, image: np.ndarray, post: PostProcessing,
                   rescale: tuple[float, float] | None = None) -> np.ndarray:
    """The object filter step of ``post`` on a class map (``kernels/contrast.py``; ``class_map`` itself when ``post``
    has none). ``image``: the normalized frame, or the raw uint8/uint16 frame with ``rescale = (lo, scale)`` of its
    normalization (``normalize.normalization_range``)."""
    if not post.filters:
        return class_map
    return filter_faint(class_map, image, post.min_contrast, post.contrast_area, post.ring, post.min_edge_area,
                        post.grow_area, post.grow_level, rescale, **post.instance_args)


def postprocess(class_map: np.ndarray, image: np.ndarray | None, post: PostProcessing,
                rescale: tuple[float, float] | None = None) -> np.ndarray:
    """Nuclei (int32 labels) of a class map: the object filter, then the instances (``image`` as for
    ``filter_classes``; None only when ``post`` has no filter)."""
    if post.filters and image is None:
        raise ValueError("the object filter of these settings reads the frame: give its image")
    return instances_from_classes(filter_classes(class_map, image, post, rescale), **post.instance_args)
