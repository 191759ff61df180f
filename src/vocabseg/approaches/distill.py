"""Knowledge distillation (KD): fine-tune on the in-classes, distil the out-classes.

Teacher = the zero-shot base model (frozen, eval mode, no gradient). Student = a copy
of the same weights, trained by the shared trainer on the configuration's ground
truth (out-class pixels VOID) with the *19-class* test-vocabulary text classifier, so
that its class head still has a column for every out-class. The ground truth teaches
the in-classes; a distillation term keeps the teacher's out-of-vocabulary predictions.
Both hold the same frozen CLIP (checked at construction), so a step runs it once and
feeds its features to both heads, as the combined models share theirs.

Loss of one batch (all from the decoder's training-time ``pred_logits`` [B, Q, K+1]
and ``pred_masks`` [B, Q, h, w], h, w = H/4, W/4; not the inference ensemble)::

    L = L_set(student, in-class GT; ignore_queries = S)          # criterion, deep supervision
        + 2 * L_kd_cls + 5 * L_kd_mask                           # final decoder layer only

    S        = {(b, q) : argmax_c z_T[b, q, c] in O}              # O = out-class indices;
                                                                  # c over K+1 (last = void)
    L_kd_cls  = 1/|S| sum_{(b,q) in S} sum_c p_T(c) (log p_T(c) - log p_S(c)),
                p = softmax(z) over the K+1 classes (temperature 1)
    L_kd_mask = 1/|S| sum_{(b,q) in S} 1/(h w) sum_{pixels}
                [ t log(t / s) + (1 - t) log((1 - t) / (1 - s)) ],
                t = sigmoid(m_T), s = sigmoid(m_S)   (binary KL per pixel)

Both KD terms are 0 when |S| = 0 and exactly 0 when the student's outputs equal the
teacher's. Queries are aligned by index: the student starts from the teacher's
weights, so query q of both models starts as the same detector. ``L_set`` is the
Mask2Former / FC-CLIP criterion (CE 2, mask BCE 5, dice 5, no-object 0.1) with one
change: a query of S that the Hungarian matching (of the layer at hand) leaves
unmatched gets CE weight 0 instead of the "no object" target (``ignore_queries``, see
:meth:`vocabseg.losses.SetCriterion.loss_labels`). Otherwise the set loss pushes
exactly those queries to "no object" - the out-class objects are VOID in the ground
truth, so no GT segment claims them - while the KD term pulls them to the teacher's
out-class: the two would fight on every query the KD is meant to keep. Matched queries
of S keep their CE target (the ground truth wins where it speaks). The weights 2 and 5
are the criterion's class and mask weights, so a distilled query weighs like a
supervised one.

Why not LwF or CoMFormer as they are.

* LwF (Li & Hoiem 2017) distils all outputs (KL on every query). The student must
  *change* its in-class predictions - that is the point of fine-tuning (seed table:
  zero-shot In-PQ 48 vs fine-tuned 65) - and most of the Q queries are "no object",
  so an all-query KL would pull the in-class head back to the zero-shot solution and
  be dominated by void queries, reinforcing exactly the background shift (out-class
  objects called void) that the approach has to avoid.
* CoMFormer (Cermelli, Cord, Douillard, CVPR 2023) distils the old model's
  probabilities of the old classes (+ no-object, new-class mass folded into it) on
  all queries, reweighted by the teacher's objectness (1 - p_T(void))^gamma, adds a
  BCE mask distillation on all queries and pixels, and mask-based pseudo-labels. In
  continual learning the old classes are exactly those the new data leaves
  unlabelled, so distilling them everywhere does not contradict the new ground truth.
  Here the teacher knows every class of the test vocabulary, including the in-classes
  that fine-tuning has to relabel: its in-class probabilities *do* contradict the
  ground truth. So the soft objectness weighting is replaced by a hard selection of
  the queries the teacher spends on an out-class, for the class and the mask term
  alike (the masks of in-class queries must be free to follow the ground truth); and
  as the teacher already has a column for every class, the plain K+1 KL needs no
  folding. The binary KL has the same student gradient as CoMFormer's BCE (they
  differ by the teacher's entropy, a constant) but is 0 at perfect retention, so the
  logged value reads as "how far from the teacher". Pseudo-labels are left to the
  FTZS approach (:mod:`vocabseg.approaches.pseudolabel`) so that the comparison keeps
  the two mechanisms apart.

Under DDP |S| is the size of S over the *global* batch: each process divides its own
sum by ``global_normaliser(|S_local|)`` (:mod:`vocabseg.engine.distributed`), as the
criterion divides by its global counts, so the KD gradient does not depend on the
number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vocabseg.engine.distributed import global_normaliser
from vocabseg.errors import InputError
from vocabseg.losses import build_criterion
from vocabseg.models.fcclip import FCCLIP, TextClassifier, backbone_differences, save_fcclip_checkpoint

__all__ = ["DistillTask", "select_out_queries", "kd_class_loss", "kd_mask_loss", "out_class_indices"]


def out_class_indices(split: Mapping, class_ids: Sequence[int]) -> list[int]:
    """Indices in ``class_ids`` (the test vocabulary's label ids, classifier order) of
    the split's ``out_ids``; :class:`InputError` if an out id is not in the vocabulary."""
    out_ids = split.get("out_ids") if isinstance(split, Mapping) else None
    if not isinstance(out_ids, list):
        raise InputError(f"vocabulary split: 'out_ids' must be a list of label ids, got {out_ids!r}")
    position = {int(c): k for k, c in enumerate(class_ids)}
    missing = [c for c in out_ids if c not in position]
    if missing:
        raise InputError(f"vocabulary split: out id(s) {missing} are not in the test vocabulary {list(class_ids)}")
    return sorted(position[c] for c in out_ids)


def select_out_queries(teacher_logits: Tensor, out_idx: Tensor | Sequence[int]) -> Tensor:
    """Queries the teacher assigns to an out-class.

    Args:
        teacher_logits: [B, Q, K+1] class logits (last column = void).
        out_idx: out-class indices in 0..K-1.

    Returns:
        bool [B, Q]: ``argmax_c teacher_logits[b, q, c]`` is in ``out_idx``.
    """
    pred = teacher_logits.detach().argmax(dim=-1)
    out_idx = torch.as_tensor(out_idx, dtype=torch.long, device=pred.device)
    return torch.isin(pred, out_idx)


def _mean_over_selected(values: Tensor) -> Tensor:
    """Sum of the per-query values [N] of this process's selected queries, divided by
    the global |S| (:func:`~vocabseg.engine.distributed.global_normaliser`; a
    collective); 0 when S is empty on every process."""
    norm = global_normaliser(values.numel())
    return values.sum() / (norm if norm > 0 else 1.0)


def kd_class_loss(student_logits: Tensor, teacher_logits: Tensor, selected: Tensor) -> Tensor:
    """``1/|S| sum_{q in S} KL(p_T(q) || p_S(q))`` over the K+1 classes, temperature 1.

    Args:
        student_logits, teacher_logits: [B, Q, K+1].
        selected: bool [B, Q], the set S.

    Returns:
        float32 scalar; 0 (still attached to the student's graph) when S is empty.
        No gradient flows to ``teacher_logits``.
    """
    log_s = student_logits[selected].float().log_softmax(dim=-1)  # [N, K+1]
    log_t = teacher_logits.detach()[selected].float().log_softmax(dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)  # [N]
    return _mean_over_selected(kl)


def kd_mask_loss(student_masks: Tensor, teacher_masks: Tensor, selected: Tensor) -> Tensor:
    """``1/|S| sum_{q in S} mean_pixels BKL(sigmoid(m_T) || sigmoid(m_S))``.

    ``BKL(t || s) = t (log t - log s) + (1 - t) (log(1 - t) - log(1 - s))``, computed
    from logits with ``logsigmoid`` (``log(1 - sigmoid(x)) = logsigmoid(-x)``), so it is
    finite for any logits and exactly 0 where the two logits are equal.

    Args:
        student_masks, teacher_masks: [B, Q, h, w] mask logits.
        selected: bool [B, Q].

    Returns:
        float32 scalar; 0 when S is empty. No gradient flows to ``teacher_masks``.
    """
    m_s = student_masks[selected].float().flatten(1)  # [N, h*w]
    m_t = teacher_masks.detach()[selected].float().flatten(1)
    t = m_t.sigmoid()
    bkl = t * (F.logsigmoid(m_t) - F.logsigmoid(m_s)) + (1.0 - t) * (F.logsigmoid(-m_t) - F.logsigmoid(-m_s))
    return _mean_over_selected(bkl.mean(dim=1))


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class DistillTask:
    """Trainer task (see :class:`vocabseg.engine.trainer.TrainTask`) of the KD approach.

    Args:
        student: the model to train (``task.model``), initialised like the teacher.
        teacher: the zero-shot model, kept outside ``task.model`` (so neither the
            optimiser nor the trainer's checkpoints see it), in eval mode, run under
            ``torch.no_grad`` only, and moved to the training device on the first batch.
            Its parameters' ``requires_grad`` flags are left as they are (as the
            student's): PyTorch picks another matmul kernel for a non-contiguous input
            when the weight needs no gradient (outputs differ by ~1e-6), and equal flags
            make teacher and student compute bit-identical outputs from equal weights,
            so the KD terms are exactly 0 at the first step. No gradient can reach the
            teacher: its forward never records a graph.
        text: test-vocabulary text classifier (K classes, e.g. all 19); the targets'
            labels index its classes (build the dataset with the same class ids).
        out_class_indices: indices in 0..K-1 of the out-classes (see
            :func:`out_class_indices`); may be empty (then KD terms are 0).
        num_points: importance-sampled points of the set criterion.
        kd_class_weight, kd_mask_weight: weights of ``L_kd_cls`` and ``L_kd_mask``.
    """

    def __init__(
        self,
        student: FCCLIP,
        teacher: FCCLIP,
        text: TextClassifier,
        out_class_indices: Sequence[int],
        *,
        num_points: int = 12544,
        kd_class_weight: float = 2.0,
        kd_mask_weight: float = 5.0,
    ):
        if teacher is student:
            raise ValueError("the teacher must be a separate model (e.g. copy.deepcopy of the student)")
        trainable = {p.data_ptr() for p in student.parameters() if p.requires_grad}
        if any(p.data_ptr() in trainable for p in teacher.parameters()):
            raise ValueError("the teacher shares trainable parameters with the student; pass a separate copy")
        if backbone_differences(student, teacher):
            raise ValueError("the teacher's frozen CLIP backbone differs from the student's; both start from the same weights")
        num_classes = len(text.num_synonyms)
        indices = [int(i) for i in out_class_indices]
        if len(set(indices)) != len(indices) or any(not 0 <= i < num_classes for i in indices):
            raise InputError(f"out_class_indices {indices}: expected distinct class indices in 0..{num_classes - 1}")
        self.model = student
        self.teacher = teacher.eval()
        self.text = text
        self.out_idx = torch.tensor(sorted(indices), dtype=torch.long)
        self.criterion = build_criterion(num_classes, num_points=num_points, num_aux=student.config.dec_layers)
        self.kd_weights = {"loss_kd_cls": float(kd_class_weight), "loss_kd_mask": float(kd_mask_weight)}

    @torch.no_grad()
    def backbone_features(self, images: Tensor) -> dict[str, Tensor]:
        """The frozen CLIP's features of ``images``, computed once for teacher and student
        (equal weights, checked at construction; always eval mode, no gradient)."""
        if _device_of(self.teacher) != images.device:
            self.teacher.to(images.device)
        self.teacher.eval()
        return self.teacher.backbone_features(images)[0]

    @torch.no_grad()
    def teacher_outputs(
        self, images: Tensor, embeddings: Tensor, features: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Teacher's final-layer ``pred_logits`` [B, Q, K+1] and ``pred_masks`` [B, Q, h, w]
        (``features``: :meth:`backbone_features` of ``images``, computed here if None)."""
        features = self.backbone_features(images) if features is None else features
        out = self.teacher(images, embeddings, self.text.num_synonyms, features=features)
        return {"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}

    def losses(self, model: nn.Module, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """Weighted loss terms of one batch: the criterion's plus ``loss_kd_cls``, ``loss_kd_mask``."""
        self.criterion.to(images.device)
        embeddings = self.text.embeddings.to(images.device)
        features = self.backbone_features(images)  # one backbone pass for both models
        teacher = self.teacher_outputs(images, embeddings, features)
        selected = select_out_queries(teacher["pred_logits"], self.out_idx)  # [B, Q]
        outputs = model(images, embeddings, self.text.num_synonyms, features=features)
        targets = [{**t, "ignore_queries": selected[b]} for b, t in enumerate(targets)]
        raw = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        terms = {k: v * weights[k] for k, v in raw.items() if k in weights}
        kd_cls = kd_class_loss(outputs["pred_logits"], teacher["pred_logits"], selected)
        kd_mask = kd_mask_loss(outputs["pred_masks"], teacher["pred_masks"], selected)
        terms["loss_kd_cls"] = self.kd_weights["loss_kd_cls"] * kd_cls
        terms["loss_kd_mask"] = self.kd_weights["loss_kd_mask"] * kd_mask
        return terms

    def export(self, model: nn.Module, path: Path) -> None:
        """The student's checkpoint (the teacher is not part of it)."""
        save_fcclip_checkpoint(self.model, path)
