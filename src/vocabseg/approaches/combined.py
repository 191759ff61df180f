"""The combined approach: two FC-CLIP models trained jointly, ``L = L1 + L2 + Lcombined``.

Research seed 000, "Combination of Models" (rows "n°6 + n°9 - Combined FT"). n°6 is
the FTZS model, n°9 the lower bound; the seed's maths computes ``L1 = model_one(data)``
and ``L2 = model_two(data)`` on the same data, and its "Pred N°9" row (Out PQ 42.28)
shows that M2 learnt the out-classes. Two variants (config key ``start``):

* ``trained`` (the seed's reading, the default): M1 starts from the *trained* FTZS
  model's weights, M2 from the *trained* lower bound's; both learn the FTZS targets
  (in-class ground truth + the zero-shot model's out-class pseudo-labels):

      L1        = criterion(M1 outputs, FTZS targets)
      L2        = criterion(M2 outputs, FTZS targets)
      Lcombined = criterion(fuse(M1 outputs, M2 outputs), FTZS targets)

* ``base_in_only``: both start from the base weights and M2 learns the lower bound's
  targets (the FTZS targets without the pseudo-labelled segments):

      L2        = criterion(M2 outputs, in-class-only targets)

  (L1 and Lcombined as above); the combined loss alone then has to teach M2 the
  out-classes.

In both, ``L = L1 + L2 + Lcombined``, where ``criterion`` is the FC-CLIP set criterion
with its weights (CE 2, mask BCE 5, dice 5, deep supervision) and ``fuse`` one rule of
:mod:`vocabseg.approaches.fusion`, applied to the final outputs and to every auxiliary
layer. The loss terms are ``m1_<term>``, ``m2_<term>`` and ``com_<term>``, each already
multiplied by the criterion's ``weight_dict`` weight, so their plain sum is L.

Shared backbone. :class:`CombinedFCCLIP` holds the two models as ``m1`` and ``m2``
(ordinary :class:`FCCLIP` modules) whose ``backbone`` is one and the same frozen CLIP
module: a batch costs one backbone pass and two heads. Both models use the same
19-class test-vocabulary text classifier during training (each with its own learnt
void embedding), so their logits live in one class space and can be fused.

Training samples. With ``base_in_only`` one dataset serves both targets: a target
dict is the FTZS target plus a flag per segment,

    {"labels": LongTensor [N], "masks": BoolTensor [N, H, W], "seed": int,
     "in_only": BoolTensor [N]}   # True: in-class ground-truth segment,
                                  # False: pseudo-labelled out-class segment

and M2's targets are the FTZS targets restricted to ``in_only`` (the lower-bound
targets are exactly the FTZS targets without the pseudo-labelled out-class
segments; out-class pixels are thereby void). All three criteria use the sample's
``"seed"`` for their point sampling.

Prediction. ``CombinedFCCLIP.inference`` has the contract of
:meth:`FCCLIP.inference`; ``predict_with`` selects ``"m1"`` / ``"m2"`` (plain FC-CLIP
inference with that model) or ``"fused"`` (one backbone pass, both heads, the final
outputs fused with ``fusion``, then the usual FC-CLIP inference on the fused class and
mask logits with M1's out-of-vocabulary classifier and inference settings).

Files. :func:`save_combined_checkpoint` writes one file ``{"model": state, "fusion":
name}`` whose ``state`` has M1's complete FC-CLIP state dict under ``m1.`` and M2's
under ``m2.`` (the shared backbone tensors are stored once); :func:`split_combined_checkpoint`
turns it into two ordinary FC-CLIP checkpoints that load strictly with
:func:`~vocabseg.models.fcclip.load_fcclip_checkpoint`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from vocabseg.approaches.study_model import ModelSpec
from vocabseg.approaches.fusion import check_fusion, fuse, fuse_outputs
from vocabseg.errors import InputError
from vocabseg.fileio import torch_load_checked, torch_save_atomic
from vocabseg.losses import build_criterion
from vocabseg.models.fcclip import FCCLIP, TextClassifier, backbone_differences

__all__ = [
    "IN_ONLY_KEY",
    "PREDICT_WITH",
    "PREFIXES",
    "CombinedFCCLIP",
    "CombinedTask",
    "build_training_pair",
    "InOnlyDataset",
    "lower_bound_targets",
    "combined_state_dict",
    "save_combined_checkpoint",
    "load_combined_checkpoint",
    "split_combined_checkpoint",
]

#: Target key flagging the in-class ground-truth segments (see the module docstring).
IN_ONLY_KEY = "in_only"
#: Values of :attr:`CombinedFCCLIP.predict_with`.
PREDICT_WITH = ("fused", "m1", "m2")
#: State-dict prefixes of the two models in the combined module and file.
PREFIXES = ("m1.", "m2.")


class CombinedFCCLIP(nn.Module):
    """Two FC-CLIP models (``m1``, ``m2``) sharing one frozen CLIP backbone.

    Build it with :meth:`from_base` (M2 a copy of M1, the training start) or
    :meth:`from_models` (two trained models, e.g. from the split checkpoint).

    Attributes:
        m1, m2: :class:`FCCLIP`; ``m1.backbone is m2.backbone``.
        fusion: name of the fusion (a key of :data:`vocabseg.approaches.fusion.FUSIONS`)
            used by ``"fused"`` prediction (and by :class:`CombinedTask`).
        predict_with: ``"fused"``, ``"m1"`` or ``"m2"``: what :meth:`inference` runs.
    """

    def __init__(self, m1: FCCLIP, m2: FCCLIP, *, fusion: str = "entropy_norm", predict_with: str = "fused"):
        super().__init__()
        if m1.config != m2.config:
            raise ValueError("the two FC-CLIP models of a combined model need the same config")
        if m2.backbone is not m1.backbone:
            differ = backbone_differences(m1, m2)
            if differ:
                raise InputError(
                    "the two FC-CLIP models of a combined model must have the same CLIP backbone weights; "
                    f"{len(differ)} backbone tensors differ (e.g. {differ[:3]})"
                )
            m2.backbone = m1.backbone
        self.m1 = m1
        self.m2 = m2
        self.fusion = check_fusion(fusion)
        self.predict_with = predict_with
        self._check_predict_with()

    @classmethod
    def from_base(cls, base: FCCLIP, **kwargs) -> CombinedFCCLIP:
        """M1 = ``base`` itself, M2 = a deep copy of its heads and void embedding sharing
        ``base.backbone``: both models start from the same weights."""
        twin = copy.deepcopy(base, memo={id(base.backbone): base.backbone})
        return cls(base, twin, **kwargs)

    @classmethod
    def from_models(cls, m1: FCCLIP, m2: FCCLIP, **kwargs) -> CombinedFCCLIP:
        """Combine two trained models; their CLIP backbones must hold equal weights
        (:class:`InputError` otherwise); M2's backbone is replaced by M1's."""
        return cls(m1, m2, **kwargs)

    @property
    def config(self):
        """M1's :class:`FCCLIPConfig` (equal to M2's)."""
        return self.m1.config

    def _check_predict_with(self) -> None:
        if self.predict_with not in PREDICT_WITH:
            raise InputError(
                f"combined approach key predict_with: {self.predict_with!r} is not one of {list(PREDICT_WITH)}"
            )

    # ------------------------------------------------------------- forward
    def forward(
        self,
        images: Tensor,
        text_classifier: Tensor,
        num_synonyms: Sequence[int],
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, dict]:
        """Both heads on one backbone pass.

        Args: as :meth:`FCCLIP.forward`.

        Returns:
            ``{"m1": outputs of M1, "m2": outputs of M2}``, each the dict of
            :meth:`FCCLIP.forward` (``pred_logits`` [B, Q, K + 1], ``pred_masks``
            [B, Q, Hp/4, Wp/4], ``aux_outputs``).
        """
        features, _ = self.m1.backbone_features(images, image_sizes)
        return {
            "m1": self.m1.head_outputs(features, self.m1.with_void(text_classifier, num_synonyms), num_synonyms),
            "m2": self.m2.head_outputs(features, self.m2.with_void(text_classifier, num_synonyms), num_synonyms),
        }

    # ----------------------------------------------------------- inference
    @torch.no_grad()
    def inference(self, images: Tensor, text_classifier: Tensor, num_synonyms: Sequence[int], **kwargs) -> list[dict]:
        """Panoptic and semantic predictions, same arguments (the keyword-only ones in
        ``kwargs``: ``seen_mask``, ``thing_mask``, ``image_sizes``, ``output_sizes``) and
        results as :meth:`FCCLIP.inference`.

        ``predict_with == "m1"`` / ``"m2"``: exactly ``self.m1.inference(...)`` /
        ``self.m2.inference(...)``. ``"fused"``: ``self.m1.inference(...)`` with both
        heads in place of M1's head: one backbone pass, both heads, the final-layer
        outputs fused with ``self.fusion`` (class logits z and mask logits m, see
        :mod:`vocabseg.approaches.fusion`); then the out-of-vocabulary CLIP classifier
        of the fused masks, the geometric ensemble with z, semantic and panoptic
        inference, with M1's settings.
        """
        self._check_predict_with()
        if self.predict_with == "m1":
            return self.m1.inference(images, text_classifier, num_synonyms, **kwargs)
        if self.predict_with == "m2":
            return self.m2.inference(images, text_classifier, num_synonyms, **kwargs)

        def fused_head(features: dict[str, Tensor], classifier1: Tensor, num_synonyms: Sequence[int]) -> tuple:
            return self._fused_final(features, text_classifier, num_synonyms, classifier1)

        return self.m1.inference(images, text_classifier, num_synonyms, head=fused_head, **kwargs)

    def _fused_final(
        self, features: dict[str, Tensor], text_classifier: Tensor, num_synonyms: Sequence[int], classifier1: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Fused final-layer (class logits [B, Q, K + 1], mask logits [B, Q, Hp/4, Wp/4])
        of the two heads (their aux outputs are dropped as soon as possible)."""
        z1, m1 = self.m1.final_outputs(features, classifier1, num_synonyms)
        z2, m2 = self.m2.final_outputs(features, self.m2.with_void(text_classifier, num_synonyms), num_synonyms)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            return fuse(self.fusion, z1, z2, m1, m2)


# ------------------------------------------------------------------ training
def lower_bound_targets(targets: Sequence[dict]) -> list[dict]:
    """M2's targets: each FTZS target restricted to its in-class ground-truth segments.

    Args:
        targets: B dicts with ``"labels"`` [N], ``"masks"`` [N, H, W] and
            ``"in_only"`` BoolTensor [N] (other keys, e.g. ``"seed"``, are kept).

    Returns:
        B dicts with ``labels[in_only]``, ``masks[in_only]`` and no ``"in_only"``.

    Raises :class:`InputError` if a target lacks ``"in_only"`` or it is not a bool
    vector with one entry per segment.
    """
    out = []
    for b, target in enumerate(targets):
        flag = target.get(IN_ONLY_KEY)
        num = int(target["labels"].numel())
        if not isinstance(flag, Tensor) or flag.dtype != torch.bool or flag.shape != (num,):
            if flag is None:
                got = "missing"
            else:
                got = f"{getattr(flag, 'dtype', type(flag).__name__)} {tuple(getattr(flag, 'shape', ()))}"
            raise InputError(
                f"combined training target {b}: key '{IN_ONLY_KEY}' must be a bool tensor with one entry per "
                f"segment ({num}), got {got}"
            )
        kept = {k: v for k, v in target.items() if k != IN_ONLY_KEY}
        flag = flag.to(target["labels"].device)
        kept["labels"] = target["labels"][flag]
        kept["masks"] = target["masks"][flag.to(target["masks"].device)]
        out.append(kept)
    return out


class InOnlyDataset:
    """Training data of the combined approach: a panoptic dataset whose targets get
    ``"in_only"`` = the segment's class is an in-class of the configuration.

    Args:
        dataset: e.g. :class:`~vocabseg.data.panoptic_dataset.PanopticTrainDataset` on
            the FTZS pseudo-labels, with ``class_ids`` (label ids of the 19-class
            training vocabulary, the text classifier's order) and ``get(index, seed)``.
        in_ids: label ids of the configuration's in-classes.

    In FTZS data the out-class ground truth is void, so the out-class segments are
    exactly the pseudo-labelled ones and ``in_only`` marks exactly the in-class
    ground truth: ``in_only[i] = labels[i] in {class index of c : c in in_ids}``.
    """

    def __init__(self, dataset, in_ids: Sequence[int]):
        class_ids = [int(c) for c in dataset.class_ids]
        unknown = sorted(set(int(c) for c in in_ids) - set(class_ids))
        if unknown:
            raise InputError(f"in_ids: label ids {unknown} are not in the dataset's classes {class_ids}")
        self.dataset = dataset
        self.class_ids = tuple(class_ids)
        self.in_index = torch.tensor(sorted(class_ids.index(int(c)) for c in in_ids), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, index: int, seed: int) -> tuple[Tensor, dict]:
        """``dataset.get(index, seed)`` with ``target["in_only"]`` BoolTensor [N] added."""
        image, target = self.dataset.get(index, seed)
        target = dict(target)
        target[IN_ONLY_KEY] = torch.isin(target["labels"], self.in_index.to(target["labels"].device))
        return image, target


def build_training_pair(
    spec: ModelSpec, init: str | os.PathLike | None, init_m2: str | os.PathLike | None, *, fusion: str
) -> CombinedFCCLIP:
    """The pair a combined training starts from.

    With ``init_m2`` (variant ``trained``): M1 with the weights of ``init`` (the trained
    FTZS model), M2 with those of ``init_m2`` (the trained lower bound); their CLIP
    backbones must be equal (they are frozen during training). Without (variant
    ``base_in_only``): M1 from ``init`` (the base weights) and M2 a copy of it.
    """
    from vocabseg.approaches.study_model import build_model

    m1 = build_model(spec, init)
    if init_m2 is None:
        return CombinedFCCLIP.from_base(m1, fusion=fusion)
    return CombinedFCCLIP.from_models(m1, build_model(spec, init_m2), fusion=fusion)


class CombinedTask:
    """Trainer task (see :class:`vocabseg.engine.trainer.TrainTask`) of the combined approach.

    Args:
        model: the :class:`CombinedFCCLIP` to train (its ``fusion`` defines Lcombined).
        text: the test-vocabulary text classifier (K = 19 classes), used by both models.
        num_points: points per mask of the criterion.
        m2_in_only: M2 learns the in-class-only targets (variant ``base_in_only``; the
            samples need ``"in_only"``, see :class:`InOnlyDataset`); otherwise M2 learns
            the same targets as M1 (variant ``trained``, the seed's reading).

    ``losses`` returns ``{"m1_<t>": w_t L1_t, "m2_<t>": w_t L2_t, "com_<t>": w_t Lcombined_t}``
    over the criterion's terms t (``loss_ce``, ``loss_mask``, ``loss_dice`` and their
    ``_<i>`` auxiliary versions) with the criterion's weights w_t; the trainer
    minimises their sum ``L1 + L2 + Lcombined``.
    """

    def __init__(
        self, model: CombinedFCCLIP, text: TextClassifier, *, num_points: int = 12544, m2_in_only: bool = True
    ):
        self.model = model
        self.text = text
        self.m2_in_only = m2_in_only
        self.criterion = build_criterion(
            len(text.num_synonyms), num_points=num_points, num_aux=model.config.dec_layers
        )

    def losses(self, model: nn.Module, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """Weighted loss terms of one batch (their sum is minimised).

        Args:
            model: ``self.model`` or its DDP wrapper (called once: one backbone pass).
            images: [B, 3, H, W] RGB 0..255.
            targets: B FTZS target dicts (with ``"in_only"`` if ``m2_in_only``).
        """
        self.criterion.to(images.device)
        m2_targets = lower_bound_targets(targets) if self.m2_in_only else targets
        outputs = model(images, self.text.embeddings.to(images.device), self.text.num_synonyms)
        fused = fuse_outputs(outputs["m1"], outputs["m2"], self.model.fusion)
        weights = self.criterion.weight_dict
        terms: dict[str, Tensor] = {}
        parts = (("m1_", outputs["m1"], targets), ("m2_", outputs["m2"], m2_targets), ("com_", fused, targets))
        for prefix, out, tgt in parts:
            raw = self.criterion(out, tgt)
            terms.update({prefix + k: v * weights[k] for k, v in raw.items() if k in weights})
        return terms

    def export(self, model: nn.Module, path: Path) -> None:
        """Write both models to one file (:func:`save_combined_checkpoint`)."""
        save_combined_checkpoint(self.model, path)


# ------------------------------------------------------------------ files
def combined_state_dict(model: CombinedFCCLIP) -> dict[str, Tensor]:
    """``{"m1.<key>": ..., "m2.<key>": ...}``: both complete FC-CLIP state dicts on the
    CPU; the shared backbone tensors of M2 are the very tensors of M1 (stored once by
    ``torch.save``)."""
    state1 = {k: v.detach().to("cpu") for k, v in model.m1.state_dict().items()}
    state = {PREFIXES[0] + k: v for k, v in state1.items()}
    for k, v in model.m2.state_dict().items():
        state[PREFIXES[1] + k] = state1[k] if k.startswith("backbone.") else v.detach().to("cpu")
    return state


def save_combined_checkpoint(model: CombinedFCCLIP, path: str | os.PathLike) -> None:
    """Write ``{"model": combined_state_dict(model), "fusion": model.fusion}`` atomically."""
    torch_save_atomic({"model": combined_state_dict(model), "fusion": model.fusion}, path)


def _read_combined(path: str | os.PathLike) -> dict[str, Tensor]:
    path = os.fspath(path)
    data = torch_load_checked(path, "combined FC-CLIP checkpoint")
    state = data.get("model") if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path}: not a combined FC-CLIP checkpoint (expected {{'model': {{name: tensor}}}})")
    other = sorted(k for k in state if not k.startswith(PREFIXES))
    if other or not any(k.startswith(PREFIXES[0]) for k in state) or not any(k.startswith(PREFIXES[1]) for k in state):
        raise InputError(
            f"{path}: a combined FC-CLIP checkpoint needs keys under both 'm1.' and 'm2.' and no others "
            f"(found {other[:5]} outside)"
        )
    return state


def split_combined_checkpoint(
    path: str | os.PathLike, m1_path: str | os.PathLike, m2_path: str | os.PathLike
) -> None:
    """Write the two models of a combined checkpoint as ordinary FC-CLIP checkpoints
    ``{"model": state_dict}`` (prefix removed), loadable with
    :func:`~vocabseg.models.fcclip.load_fcclip_checkpoint`."""
    state = _read_combined(path)
    for prefix, out in zip(PREFIXES, (m1_path, m2_path)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        torch_save_atomic({"model": part}, out)


def load_combined_checkpoint(model: CombinedFCCLIP, path: str | os.PathLike) -> None:
    """Load a file of :func:`save_combined_checkpoint` into ``model`` (strict: every
    key of ``model.state_dict()`` and no other; :class:`InputError` naming the file
    otherwise, also when the two stored backbones differ)."""
    state = _read_combined(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or misshaped:
        raise InputError(
            f"{path}: checkpoint does not fit the combined FC-CLIP model: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), mis-shaped {misshaped[:5]}"
        )
    differ = [
        k
        for k in state
        if k.startswith(PREFIXES[0] + "backbone.")
        and not torch.equal(state[k], state[PREFIXES[1] + k[len(PREFIXES[0]) :]])
    ]
    if differ:
        raise InputError(f"{path}: the two models' backbones differ (e.g. {differ[:3]}); they must be shared")
    model.load_state_dict(state, strict=True)


def build_combined(spec: ModelSpec, weights: str | os.PathLike, *, fusion: str, predict_with: str) -> CombinedFCCLIP:
    """The study's combined pair with the weights of a :func:`save_combined_checkpoint` file.

    The file carries both heads and the shared CLIP, so the CLIP is not loaded from
    ``spec.clip_pretrained`` first.
    """
    cfg = spec.config()
    cfg.clip_pretrained = None
    model = CombinedFCCLIP.from_base(FCCLIP(cfg), fusion=fusion, predict_with=predict_with)
    load_combined_checkpoint(model, weights)
    return model
