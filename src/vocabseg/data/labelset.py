"""A dataset's classes as data: the one object every stage gets instead of a global table.

A :class:`LabelSet` lists a dataset's classes (id, name, thing or stuff, evaluated or
not, prompt synonyms, colour) and derives what the stages need from it: the evaluated
ids in train-id order, the thing / stuff ids, name lookup, the label-id -> train-id
table and the COCO-panoptic ``categories``. It is built in one of two places:

* :meth:`LabelSet.cityscapes`: from :mod:`vocabseg.data.labels` (the official Cityscapes
  table) and FC-CLIP's prompt-engineered Cityscapes names, the only module that reads
  either;
* :meth:`LabelSet.from_categories`: from the ``categories`` list of a COCO-panoptic JSON
  (as panopticapi and detectron2's converters write it), plus an optional synonyms file
  in FC-CLIP's ``<id>:<name>,<synonym>,...`` format.

On disk it is ``labelset.json`` (:meth:`write` / :meth:`read`), the file the workflow
passes to every command (``--labels``). Train ids are the positions of the evaluated
classes in ascending label-id order, as Cityscapes' own train ids are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from vocabseg.data.prompts import parse_class_names
from vocabseg.errors import InputError
from vocabseg.fileio import read_json, write_json_atomic

__all__ = ["ClassInfo", "LabelSet", "IGNORE_TRAIN_ID", "read_labelset", "labelset_from_files"]

#: train id of a class that is not evaluated (void in train-id label images)
IGNORE_TRAIN_ID = 255


@dataclass(frozen=True)
class ClassInfo:
    """One class of a dataset.

    Attributes:
        id: label id, as written in the panoptic JSON ``category_id`` (1..254 for a
            COCO-panoptic dataset; 0 is void).
        name: display name (table columns, ``split.json``).
        isthing: instances are separate segments (thing) or one per image (stuff).
        evaluated: scored and learnt; ``False`` for Cityscapes' void-like classes.
        train_id: index among the evaluated classes (255 when not evaluated).
        synonyms: the names the text classifier prompts (first the name itself, usually).
        color: RGB display colour.
        supercategory: COCO ``supercategory`` (Cityscapes: the label's category).
    """

    id: int
    name: str
    isthing: bool
    evaluated: bool
    train_id: int
    synonyms: tuple[str, ...]
    color: tuple[int, int, int]
    supercategory: str = ""


@dataclass(frozen=True)
class LabelSet:
    """The classes of one dataset, in label-id order (``classes``)."""

    dataset: str
    classes: tuple[ClassInfo, ...]
    by_id: dict[int, ClassInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {c.id: c for c in self.classes})

    # ---- views the stages use ----
    @property
    def evaluated(self) -> tuple[ClassInfo, ...]:
        """The evaluated classes in train-id order."""
        return tuple(sorted((c for c in self.classes if c.evaluated), key=lambda c: c.train_id))

    @property
    def eval_ids(self) -> tuple[int, ...]:
        """Label ids of the evaluated classes, in train-id order."""
        return tuple(c.id for c in self.evaluated)

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.evaluated if c.isthing)

    @property
    def stuff_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.evaluated if not c.isthing)

    @property
    def num_classes(self) -> int:
        """K, the number of evaluated classes (train ids 0..K-1)."""
        return len(self.evaluated)

    def name(self, class_id: int) -> str:
        return self.by_id[int(class_id)].name

    def by_name(self, name: str) -> ClassInfo:
        """The class called ``name`` (evaluated or not); KeyError if none is."""
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"no class named {name!r} in the {self.dataset} label set")

    def train_id_names(self) -> dict[int, str]:
        """Train id -> class name of the evaluated classes."""
        return {c.train_id: c.name for c in self.evaluated}

    def sorted_ids(self, ids: Iterable[int]) -> list[int]:
        """``ids`` that are evaluated classes, in train-id order."""
        wanted = {int(i) for i in ids}
        return [i for i in self.eval_ids if i in wanted]

    def synonyms(self, ids: Sequence[int]) -> list[list[str]]:
        """The prompt synonym lists of the classes ``ids`` (text-classifier order)."""
        return [list(self.by_id[int(i)].synonyms) for i in ids]

    def train_id_lut(self) -> np.ndarray:
        """uint8 [max(256, max id + 1)]: label id -> train id (255 = not evaluated)."""
        lut = np.full(max(256, max((c.id for c in self.classes), default=0) + 1), IGNORE_TRAIN_ID, np.uint8)
        for c in self.evaluated:
            lut[c.id] = c.train_id
        return lut

    def class_id(self, ref: int | str, key: str = "class") -> int:
        """The label id of an evaluated class given by id or name; ``key`` names the
        config entry in the error."""
        for c in self.evaluated:
            if (isinstance(ref, str) and c.name == ref) or (not isinstance(ref, str) and c.id == ref):
                return c.id
        known = ", ".join(f"{c.id} {c.name}" for c in self.evaluated)
        raise InputError(f"{key}: no evaluated class {ref!r} in the {self.dataset} label set ({known})")

    def train_id(self, ref: int | str, key: str = "class") -> int:
        """The train id of an evaluated class given by train id (an int in 0..K-1) or by
        name (a string); ``key`` names the config entry in the error."""
        for c in self.evaluated:
            if (isinstance(ref, str) and c.name == ref) or (not isinstance(ref, str) and c.train_id == ref):
                return c.train_id
        known = ", ".join(f"{c.train_id} {c.name}" for c in self.evaluated)
        raise InputError(
            f"{key}: no evaluated class with train id or name {ref!r} in the {self.dataset} label set ({known})"
        )

    def categories(self) -> list[dict]:
        """The evaluated classes as a COCO-panoptic ``categories`` list (label-id order
        for Cityscapes, as ``csCreatePanopticImgs`` writes it)."""
        return [
            {
                "id": c.id,
                "name": c.name,
                "color": list(c.color),
                "supercategory": c.supercategory,
                "isthing": 1 if c.isthing else 0,
            }
            for c in self.evaluated
        ]

    # ---- builders ----
    @classmethod
    def cityscapes(cls) -> LabelSet:
        """Cityscapes: the official table (35 classes, 19 evaluated) with FC-CLIP's
        prompt-engineered synonyms of the 19 (built once)."""
        return _cityscapes()

    @classmethod
    def from_categories(
        cls, dataset: str, categories: object, synonyms: Mapping[int, Sequence[str]] | None = None, *, source: str
    ) -> LabelSet:
        """A COCO-panoptic ``categories`` list (every listed class is evaluated).

        ``synonyms`` maps a category id to its prompt names (replacing the default
        ``[name]``); ``source`` names the file in errors.
        """
        if not isinstance(categories, list) or not categories:
            raise InputError(f"{source}: 'categories' must be a non-empty list")
        classes, names = [], set()
        for k, cat in enumerate(categories):
            where = f"{source}: categories[{k}]"
            if not isinstance(cat, dict) or not {"id", "name"} <= cat.keys():
                raise InputError(f"{where}: expected an object with 'id' and 'name'")
            cid, name = cat["id"], cat["name"]
            if not isinstance(cid, int) or isinstance(cid, bool) or not 1 <= cid <= 254:
                raise InputError(f"{where}: id {cid!r} is not an integer in 1..254 (0 is void)")
            if not isinstance(name, str) or not name:
                raise InputError(f"{where}: name {name!r} is not a non-empty string")
            if cid in {c.id for c in classes} or name in names:
                raise InputError(f"{where}: id {cid} or name {name!r} appears twice")
            color = cat.get("color") or _default_color(cid)
            if not (isinstance(color, list | tuple) and len(color) == 3 and all(isinstance(v, int) for v in color)):
                raise InputError(f"{where}: color {color!r} is not [r, g, b]")
            names.add(name)
            classes.append(
                ClassInfo(
                    id=cid,
                    name=name,
                    isthing=bool(cat.get("isthing", 0)),
                    evaluated=True,
                    train_id=0,  # set below, in id order
                    synonyms=(name,),
                    color=(int(color[0]), int(color[1]), int(color[2])),
                    supercategory=str(cat.get("supercategory", "")),
                )
            )
        classes.sort(key=lambda c: c.id)
        synonyms = dict(synonyms or {})
        unknown = sorted(set(synonyms) - {c.id for c in classes})
        if unknown:
            raise InputError(f"{source}: synonyms of category ids {unknown}, which the categories do not list")
        classes = [
            ClassInfo(**{**c.__dict__, "train_id": k, "synonyms": tuple(synonyms.get(c.id, c.synonyms))})
            for k, c in enumerate(classes)
        ]
        return cls(dataset, tuple(classes))

    # ---- file ----
    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "classes": [
                {**c.__dict__, "synonyms": list(c.synonyms), "color": list(c.color)} for c in self.classes
            ],
        }

    def write(self, path: Path | str) -> None:
        write_json_atomic(self.to_dict(), Path(path), indent=1)


def read_labelset(path: Path | str | None) -> LabelSet:
    """The label set of ``labelset.json`` (``None``: Cityscapes, the default study's)."""
    if path is None:
        return LabelSet.cityscapes()
    data = read_json(path)
    try:
        classes = tuple(
            ClassInfo(**{**c, "synonyms": tuple(c["synonyms"]), "color": tuple(c["color"])}) for c in data["classes"]
        )
        return LabelSet(str(data["dataset"]), classes)
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: not a label set written by 'vocabseg labelset' ({err})") from None


@cache
def _cityscapes() -> LabelSet:
    from vocabseg.data.labels import ALL_LABELS, CITYSCAPES_PROMPT_ENG

    synonyms = parse_class_names(CITYSCAPES_PROMPT_ENG, source="Cityscapes prompt names")  # by train id

    return LabelSet(
        "Cityscapes",
        tuple(
            ClassInfo(
                id=lb.id,
                name=lb.name,
                isthing=lb.has_instances,
                evaluated=not lb.ignore_in_eval,
                train_id=IGNORE_TRAIN_ID if lb.ignore_in_eval else lb.train_id,
                synonyms=(
                    (lb.name,) if lb.ignore_in_eval else tuple(synonyms[lb.train_id])
                ),
                color=lb.color,
                supercategory=lb.category,
            )
            for lb in ALL_LABELS
        ),
    )


def labelset_from_files(dataset: str, categories_json: Path | str, synonyms_file: Path | str | None = None) -> LabelSet:
    """The label set of a COCO-panoptic JSON's ``categories``, with the prompt names
    of ``synonyms_file`` (lines ``<category id>:<name>,<synonym>,...``, FC-CLIP's
    format) replacing a class's default ``[name]``."""
    data = read_json(categories_json)
    if not isinstance(data, dict) or "categories" not in data:
        raise InputError(f"{categories_json}: COCO-panoptic JSON without a 'categories' list")
    synonyms = None
    if synonyms_file is not None:
        try:
            text = Path(synonyms_file).read_text(encoding="utf-8")
        except OSError as err:
            raise InputError(f"{synonyms_file}: cannot read the synonyms file ({err.strerror})") from None
        synonyms = parse_class_names(text, source=str(synonyms_file))
    try:
        return LabelSet.from_categories(dataset, data["categories"], synonyms, source=str(categories_json))
    except InputError as err:
        if synonyms_file is not None and "synonyms of category ids" in str(err):
            raise InputError(f"{synonyms_file}: {str(err).split(': ', 1)[1]}") from None
        raise


def _default_color(class_id: int) -> list[int]:
    """A stable display colour of a class without one (spread over the RGB cube)."""
    rng = np.random.default_rng(class_id)
    return [int(v) for v in rng.integers(0, 256, 3)]
