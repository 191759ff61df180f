"""The Cityscapes label table, as the evaluation sees it.

Read by :meth:`vocabseg.data.labelset.LabelSet.cityscapes` alone: every stage gets the
dataset's classes as a :class:`~vocabseg.data.labelset.LabelSet`, never from here.

The single source of truth is ``cityscapesscripts.helpers.labels`` (the official
table); this module only derives the views the pipeline needs from it:

* ``EVAL_LABELS``: the 19 evaluated classes (``ignoreInEval`` is False), in label-id
  order. 11 stuff classes (ids 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23) and 8 thing
  classes (ids 24-28, 31-33).
* ``ID_TO_TRAIN_ID``: a 256-entry lookup table from label id to train id (255 = ignore).
* ``CITYSCAPES_PROMPT_ENG``: FC-CLIP's prompt-engineered names of the 19 classes
  (upstream's ``cityscapes_panoptic_with_prompt_eng.txt``), by train id.

Everything the pipeline writes to disk (panoptic JSON ``category_id``, ``split.json``)
uses label **ids**, never train ids, as ``csEvalPanopticSemanticLabeling`` expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cityscapesscripts.helpers import labels as _cs

__all__ = [
    "Label",
    "ALL_LABELS",
    "EVAL_LABELS",
    "EVAL_IDS",
    "THING_IDS",
    "STUFF_IDS",
    "TRAIN_ID_TO_NAME",
    "CITYSCAPES_PROMPT_ENG",
    "ID_TO_TRAIN_ID",
]


@dataclass(frozen=True)
class Label:
    """One row of the Cityscapes label table."""

    name: str
    id: int
    train_id: int
    category: str
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


ALL_LABELS: tuple[Label, ...] = tuple(
    Label(
        name=lb.name,
        id=int(lb.id),
        train_id=int(lb.trainId),
        category=lb.category,
        has_instances=bool(lb.hasInstances),
        ignore_in_eval=bool(lb.ignoreInEval),
        color=tuple(int(c) for c in lb.color),
    )
    for lb in _cs.labels
    if lb.id >= 0  # license plate (id -1) never appears in label images
)

EVAL_LABELS: tuple[Label, ...] = tuple(lb for lb in ALL_LABELS if not lb.ignore_in_eval)
EVAL_IDS: tuple[int, ...] = tuple(lb.id for lb in EVAL_LABELS)
THING_IDS: tuple[int, ...] = tuple(lb.id for lb in EVAL_LABELS if lb.has_instances)
STUFF_IDS: tuple[int, ...] = tuple(lb.id for lb in EVAL_LABELS if not lb.has_instances)

#: Train id (0..18) -> class name.
TRAIN_ID_TO_NAME: dict[int, str] = {lb.train_id: lb.name for lb in EVAL_LABELS}

ID_TO_TRAIN_ID = np.full(256, 255, dtype=np.uint8)
for _lb in EVAL_LABELS:
    ID_TO_TRAIN_ID[_lb.id] = _lb.train_id

# FC-CLIP's prompt-engineered Cityscapes names, "<trainId>:<syn1>,<syn2>,...".
CITYSCAPES_PROMPT_ENG = """\
0:road,railroad
1:sidewalk,pavement
2:building,buildings,edifice,edifices,house,ceiling
3:wall,walls,brick wall,stone wall,tile wall,wood wall
4:fence,fences
5:pole,poles
6:traffic light,traffic lights
7:traffic sign,stop sign
8:vegetation,tree,trees,palm tree,bushes
9:terrain,river,sand,sea,snow,water,mountain,grass,dirt,rock
10:sky,clouds
11:person
12:rider
13:car,cars
14:truck,trucks
15:bus,buses
16:train,trains,locomotive,locomotives,freight train
17:motorcycle,motorcycles
18:bicycle,bicycles,bike,bikes"""
