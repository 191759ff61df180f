"""Losses of ContMAV (Sodano et al., CVPR 2024) and of the seed-003 variants.

Label convention everywhere: ``labels`` [B, H, W] int64 with the known classes
``0 .. K-1`` and void / unknown 255 (:data:`IGNORE_INDEX`, Cityscapes trainIds). Any
other value outside ``0 .. K-1`` is ignored by every loss. K is read from the
channel dimension of the prediction (semantic logits and contrastive features both
have K channels).

ContMAV (paper Sec. 3.2, Eq. 2-10):

* :func:`weighted_cross_entropy` with :func:`median_frequency_weights` computed from
  :func:`label_histogram` (L_sem);
* :class:`MAVAccumulator`: per-epoch class means (MAVs) and variances of the semantic
  logits over true-positive pixels; :func:`mav_feature_loss` (L_feat) uses those of
  the previous epoch;
* :func:`mav_contrastive_loss` (L_cont): class-mean contrastive features against the
  normalised MAVs, tau = 0.1;
* :func:`objectosphere_loss` (L_obj): xi = 1, squared norm as in Eq. 9;
* :class:`ContMAVCriterion` with the weights 0.9 / 0.1 / 0.5 / 0.5.

Variants (seed 003): :func:`focal_loss`, :func:`dice_loss` (focal + dice replaces the
CE term), :func:`known_unknown_infonce` between known and unknown crop embeddings,
and SynCo-style synthetic hard negatives (:func:`synthesize_hard_negatives`).

Under DDP every mean above (over pixels, (image, class) pairs or images) is the mean
over the global batch: each process divides its own sum by the global count
(:func:`~vocabseg.engine.distributed.global_normaliser`, a collective that every
process reaches whatever its shard holds), so training does not depend on the number
of processes. :func:`known_unknown_infonce` is the exception: its anchors and
negatives are the crops of one process's shard.

Deliberate differences from the public ContMAV code (see the reference notes):
per-class means are formed per class, never by reshaping a (D, N) tensor with
``view``; the feature loss divides by the standard deviation, not the variance;
every known class present is used (no "last label is void" assumption); booleans
are parsed strictly (:func:`~vocabseg.openworld.model.config.parse_bool`); the
objectosphere unknown term has weight 1 (not 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vocabseg.engine.distributed import global_normaliser
from vocabseg.errors import InputError
from vocabseg.openworld.model.config import choice, convert_fields, parse_bool, to_float, to_int

__all__ = [
    "IGNORE_INDEX",
    "label_histogram",
    "median_frequency_weights",
    "weighted_cross_entropy",
    "focal_loss",
    "dice_loss",
    "MAVs",
    "MAVAccumulator",
    "mav_feature_loss",
    "class_mean_features",
    "mav_contrastive_loss",
    "objectosphere_loss",
    "ContMAVLossConfig",
    "ContMAVCriterion",
    "infonce_from_logits",
    "known_unknown_infonce",
    "SYNCO_TYPES",
    "SynCoConfig",
    "interpolate_negatives",
    "extrapolate_negatives",
    "mixup_negatives",
    "noise_negatives",
    "gradient_negatives",
    "adversarial_negatives",
    "synthesize_hard_negatives",
]

#: Void / unknown label (Cityscapes trainId 255).
IGNORE_INDEX = 255


def _known_mask(labels: Tensor, num_classes: int) -> Tensor:
    """Bool mask of pixels with a known class ``0 <= label < K``."""
    return (labels >= 0) & (labels < num_classes)


def _check_pair(pred: Tensor, labels: Tensor, what: str) -> None:
    if pred.dim() != 4 or labels.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(f"{what}: expected prediction [B, K, H, W] and labels [B, H, W], "
                         f"got {list(pred.shape)} and {list(labels.shape)}")


def _zero(like: Tensor) -> Tensor:
    """A 0 that stays connected to the graph of ``like`` (for empty selections)."""
    return like.sum() * 0.0


def _global_mean(total: Tensor, local_count: float | Tensor, like: Tensor) -> Tensor:
    """``total`` (this process's sum over its items) divided by the global item count.

    The count is :func:`~vocabseg.engine.distributed.global_normaliser` of
    ``local_count`` (a collective: every process calls it, with or without items), so
    under DDP the averaged gradient is that of the mean over the global batch. 0,
    attached to the graph of ``like``, when no process has an item.
    """
    norm = global_normaliser(local_count)
    if norm <= 0:
        return _zero(like)
    return total / norm


# ---------------------------------------------------------------------- class weights
def label_histogram(labels: Iterable[Tensor], num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class pixel statistics over label maps.

    Args:
        labels: iterable of label maps, [H, W] or [B, H, W] (each [H, W] slice is one
            image); void and any other value outside 0..K-1 is not counted.
        num_classes: K.

    Returns:
        ``pixel_counts`` [K] float64: pixels of class c over all images;
        ``image_pixels`` [K] float64: total pixels (H * W, void included) of the
        images that contain class c.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for item in labels:
        item = torch.as_tensor(item)
        if item.dim() not in (2, 3):
            raise ValueError(f"label_histogram: expected [H, W] or [B, H, W] label maps, got {list(item.shape)}")
        for image in item.reshape(-1, *item.shape[-2:]):
            flat = image.reshape(-1).long().cpu()
            flat = flat[_known_mask(flat, num_classes)]
            hist = torch.bincount(flat, minlength=num_classes).to(torch.float64)
            counts += hist
            image_pixels += (hist > 0).to(torch.float64) * image.numel()
    return counts, image_pixels


def median_frequency_weights(pixel_counts: Tensor, image_pixels: Tensor) -> Tensor:
    """Median-frequency class weights (Eigen & Fergus; ContMAV/ESANet ``median_frequency``).

    ``freq_c = pixel_counts_c / image_pixels_c`` and ``w_c = median(freq) / freq_c``,
    the median taken over the classes that occur (``pixel_counts_c > 0``; for an even
    number of classes the mean of the two middle values). Classes that never occur
    get weight 0 (they never appear as a target). Returns [K] float32.
    """
    pixel_counts = torch.as_tensor(pixel_counts, dtype=torch.float64)
    image_pixels = torch.as_tensor(image_pixels, dtype=torch.float64)
    present = pixel_counts > 0
    weights = torch.zeros_like(pixel_counts)
    if present.any():
        freq = pixel_counts[present] / image_pixels[present]
        median = torch.quantile(freq, 0.5)
        weights[present] = median / freq
    return weights.to(torch.float32)


# ---------------------------------------------------------------------- semantic losses
def weighted_cross_entropy(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Class-weighted cross-entropy, weighted mean over the known pixels (L_sem).

    ``L = sum_p w_{y_p} * (-log softmax(f_p)_{y_p}) / sum_p w_{y_p}`` over pixels with
    a known label (void and other out-of-range labels are skipped);
    ``w = 1`` without ``class_weights``. This is PyTorch's weighted ``mean`` reduction
    and the public code's normalisation (the paper writes ``1 / |Omega|``; with
    median-frequency weights the weighted mean keeps the loss scale independent of
    the class mix); under DDP both sums run over the global batch (the denominator
    all-reduced). ``logits`` [B, K, H, W], ``labels`` [B, H, W]; 0 if no pixel is known.
    """
    _check_pair(logits, labels, "weighted_cross_entropy")
    known = _known_mask(labels, logits.shape[1])
    targets = torch.where(known, labels, torch.full_like(labels, -100))
    weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
    nll = F.cross_entropy(logits, targets, weight=weight, ignore_index=-100, reduction="sum")
    pixel_weights = known.sum() if weight is None else weight[labels[known]].sum()
    return _global_mean(nll, pixel_weights, logits)


def focal_loss(logits: Tensor, labels: Tensor, alpha: Tensor | None = None, gamma: float = 2.0) -> Tensor:
    """Multi-class focal loss (Lin et al. 2017), mean over the known pixels.

    ``FL = (1 / |V|) sum_{p in V} -alpha_{y_p} (1 - p_t)^gamma log p_t`` with
    ``p_t = softmax(f_p)_{y_p}``, V the pixels with a known label, ``alpha`` [K] the
    class weights (e.g. median frequency; 1 if None). ``gamma = 0`` and
    ``alpha = None`` give the unweighted CE mean. 0 if V is empty. Under DDP, V is
    the known pixels of the global batch.
    """
    _check_pair(logits, labels, "focal_loss")
    known = _known_mask(labels, logits.shape[1])
    log_probs = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1)[known]  # [N, K]
    target = labels[known]
    log_pt = log_probs.gather(1, target[:, None]).squeeze(1)
    loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * alpha.to(logits.device, logits.dtype)[target]
    return _global_mean(loss.sum(), known.sum(), logits)


def dice_loss(logits: Tensor, labels: Tensor, smooth: float = 1.0, exponent: int = 2) -> Tensor:
    """Soft multi-class Dice loss (V-Net), averaged over images and classes.

    With ``p = softmax(f)`` and one-hot ``g``, both zeroed on pixels without a known
    label (void pixels count in neither sum), for image b and class c::

        D_bc = 1 - (2 sum_p p g + s) / (sum_p p^e + sum_p g^e + s)

    and ``L = mean_{b, c} D_bc`` (s = ``smooth`` 1, e = ``exponent`` 2 as TruFor), the
    mean over the images of the global batch under DDP.
    """
    _check_pair(logits, labels, "dice_loss")
    num_classes = logits.shape[1]
    known = _known_mask(labels, num_classes)
    probs = F.softmax(logits, dim=1) * known[:, None].to(logits.dtype)
    onehot = F.one_hot(torch.where(known, labels, 0), num_classes).permute(0, 3, 1, 2).to(logits.dtype)
    onehot = onehot * known[:, None].to(logits.dtype)
    inter = (probs * onehot).sum(dim=(2, 3))
    denom = (probs**exponent).sum(dim=(2, 3)) + (onehot**exponent).sum(dim=(2, 3))
    per_image_class = 1.0 - (2.0 * inter + smooth) / (denom + smooth)  # [B, K]
    return _global_mean(per_image_class.sum(), per_image_class.numel(), logits)


# ---------------------------------------------------------------------- MAVs
@dataclass
class MAVs:
    """Class descriptors of one epoch.

    means: [K, D] mean activation vectors mu_k (rows).
    variances: [K, D] element-wise variances sigma_k^2 (population, divided by n).
    valid: [K] bool, classes that have descriptors (had true positives in this or an
        earlier epoch).
    """

    means: Tensor
    variances: Tensor
    valid: Tensor

    def stds(self, eps: float = 1e-6) -> Tensor:
        """``sqrt(variances + eps)`` [K, D], the sigma_k of the feature loss."""
        return torch.sqrt(self.variances + eps)


class MAVAccumulator:
    """Per-epoch true-positive statistics of the semantic logits (paper Eq. 3-4).

    During epoch e call :meth:`update` on every training batch (no gradients are
    recorded); at its end :meth:`finalize` turns the sums into

    * ``mu_k = (1 / n_k) sum_{p in TP_k} f_p`` and
    * ``sigma_k^2 = (1 / n_k) sum_{p in TP_k} (f_p - mu_k)^2`` (element-wise),

    with TP_k the pixels whose label and prediction are both k, and resets the sums.
    The result (:attr:`current`) is what the feature and contrastive losses use during
    epoch e + 1. A class without true positives in an epoch keeps its previous
    descriptors; a class that never had any is not ``valid``.

    Sums are kept in float64 (``sum f``, ``sum f^2``, ``n``), so the variance is
    ``sum f^2 / n - mu^2`` (clamped at 0) without noticeable cancellation. Under DDP
    call :meth:`all_reduce_` before :meth:`finalize` so that every process gets the
    same descriptors.

    It is deliberately not an ``nn.Module``: DDP broadcasts module buffers from rank 0
    at every forward, which would overwrite the other processes' partial sums. Save
    and restore it with :meth:`state_dict` / :meth:`load_state_dict` (plain tensors).
    """

    _KEYS = ("count", "sum", "sumsq", "means", "variances", "valid", "epochs")

    def __init__(self, num_classes: int, dim: int | None = None, device: torch.device | str = "cpu"):
        self.num_classes = int(num_classes)
        self.dim = int(num_classes if dim is None else dim)
        k, d = self.num_classes, self.dim
        self.count = torch.zeros(k, dtype=torch.float64, device=device)
        self.sum = torch.zeros(k, d, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(k, d, dtype=torch.float64, device=device)
        self.means = torch.zeros(k, d, dtype=torch.float32, device=device)
        self.variances = torch.zeros(k, d, dtype=torch.float32, device=device)
        self.valid = torch.zeros(k, dtype=torch.bool, device=device)
        self.epochs = torch.zeros((), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, preds: Tensor | None = None) -> None:
        """Add the true-positive pixels of a batch.

        Args:
            features: [B, D, H, W] semantic logits (detached here).
            labels: [B, H, W] ground truth (void / out-of-range labels are skipped).
            preds: [B, H, W] predicted classes; default ``features.argmax(1)``
                (argmax of the softmax, as the paper).
        """
        _check_pair(features, labels, "MAVAccumulator.update")
        if features.shape[1] != self.dim:
            raise ValueError(f"MAVAccumulator.update: features have {features.shape[1]} channels, expected {self.dim}")
        if preds is None:
            preds = features.argmax(dim=1)
        tp = _known_mask(labels, self.num_classes) & (preds == labels)
        if not tp.any():
            return
        cls = labels[tp].to(self.count.device)
        values = features.detach().permute(0, 2, 3, 1)[tp].to(self.sum.device, torch.float64)  # [N, D]
        self.count.index_add_(0, cls, torch.ones_like(cls, dtype=torch.float64))
        self.sum.index_add_(0, cls, values)
        self.sumsq.index_add_(0, cls, values * values)

    def all_reduce_(self) -> None:
        """Sum ``count``, ``sum`` and ``sumsq`` over the default process group (no-op
        outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            for tensor in (self.count, self.sum, self.sumsq):
                dist.all_reduce(tensor)

    @torch.no_grad()
    def finalize(self) -> MAVs:
        """End of epoch: update the descriptors of the classes seen, reset the sums,
        return :attr:`current`."""
        seen = self.count > 0
        if seen.any():
            n = self.count[seen][:, None]
            mean = self.sum[seen] / n
            var = (self.sumsq[seen] / n - mean * mean).clamp_min(0.0)
            self.means[seen] = mean.to(self.means.dtype)
            self.variances[seen] = var.to(self.variances.dtype)
            self.valid |= seen
        self.count.zero_()
        self.sum.zero_()
        self.sumsq.zero_()
        self.epochs += 1
        return self.current

    @property
    def current(self) -> MAVs:
        """The descriptors of the last finalised epoch (none ``valid`` before the first)."""
        return MAVs(self.means, self.variances, self.valid)

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors (copies): ``count``, ``sum``, ``sumsq`` (running epoch),
        ``means``, ``variances``, ``valid`` (last finalised epoch), ``epochs``."""
        return {k: getattr(self, k).detach().clone() for k in self._KEYS}

    def load_state_dict(self, state: Mapping[str, Tensor], source: str = "MAV state") -> None:
        """Restore :meth:`state_dict` output; :class:`InputError` naming ``source`` and the
        key if a key is missing or has another shape."""
        for key in self._KEYS:
            if key not in state:
                raise InputError(f"{source}: missing key {key!r} of the MAV accumulator")
            own = getattr(self, key)
            value = torch.as_tensor(state[key])
            if value.shape != own.shape:
                raise InputError(f"{source}: {key!r} has shape {list(value.shape)}, expected {list(own.shape)}")
            setattr(self, key, value.to(own.device, own.dtype).clone())

    def to(self, device: torch.device | str) -> "MAVAccumulator":
        """Move every tensor to ``device`` (in place); returns self."""
        for key in self._KEYS:
            setattr(self, key, getattr(self, key).to(device))
        return self


def mav_feature_loss(features: Tensor, labels: Tensor, mavs: MAVs, eps: float = 1e-6) -> Tensor:
    """MAV feature loss L_feat (paper Eq. 5) with the previous epoch's descriptors.

    ``L = (1 / |Omega|) sum_{p in Omega} || (f_p - mu_{y_p}) / sigma_{y_p} ||_2`` with
    ``sigma_k = sqrt(sigma_k^2 + eps)`` (standard deviation, element-wise division) and
    Omega all pixels whose ground-truth class is known and ``valid`` in ``mavs``
    (all GT pixels, not only true positives). The squared term is the Mahalanobis
    distance of the Gaussian unknown score (Eq. 11). 0 if Omega is empty (epoch 0).
    Under DDP, Omega spans the global batch.

    ``features`` [B, K, H, W] semantic logits, ``labels`` [B, H, W].
    """
    _check_pair(features, labels, "mav_feature_loss")
    valid = mavs.valid.to(features.device)
    known = _known_mask(labels, valid.numel())
    mask = known & valid[labels.clamp(0, valid.numel() - 1)]
    f = features.permute(0, 2, 3, 1)[mask]  # [N, D]
    cls = labels[mask]
    mu = mavs.means.to(features.device, features.dtype)[cls]
    sigma = mavs.stds(eps).to(features.device, features.dtype)[cls]
    distances = torch.linalg.vector_norm((f - mu) / sigma, dim=1)  # [N]
    return _global_mean(distances.sum(), distances.numel(), features)


def class_mean_features(features: Tensor, labels: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Mean feature of every (image, known class) pair present in the batch.

    ``fbar_{b,k} = mean_{p in Omega_{b,k}} fhat_p`` with ``fhat_p = f_p / ||f_p||``
    (``normalize``) or ``f_p``. Rows are ordered by image, then class.

    Args:
        features: [B, D, H, W].
        labels: [B, H, W]; classes are ``0 .. D-1`` (K = D), others skipped.

    Returns:
        ``means`` [N, D] (differentiable), ``classes`` [N] and ``images`` [N] (int64).
    """
    _check_pair(features, labels, "class_mean_features")
    b, d = features.shape[:2]
    k = d
    known = _known_mask(labels, k)
    f = features.permute(0, 2, 3, 1)[known]  # [P, D]
    if normalize:
        f = F.normalize(f, dim=1)
    image_ids = torch.arange(b, device=labels.device)[:, None, None].expand_as(labels)[known]
    slot = image_ids * k + labels[known]
    sums = torch.zeros(b * k, d, dtype=f.dtype, device=f.device).index_add(0, slot, f)
    counts = torch.bincount(slot, minlength=b * k)
    present = counts > 0
    means = sums[present] / counts[present][:, None].to(f.dtype)
    slots = torch.nonzero(present).squeeze(1)
    return means, slots % k, slots // k


def mav_contrastive_loss(features: Tensor, labels: Tensor, mavs: MAVs, tau: float = 0.1) -> Tensor:
    """Contrastive loss against the normalised MAVs (paper Eq. 7-8), tau = 0.1.

    For every image b and known class k present in it with a ``valid`` MAV, the anchor
    is ``fbar_{b,k}`` (:func:`class_mean_features`: mean of the per-pixel L2-normalised
    contrastive features, as the public code), the candidates are the normalised
    MAVs ``mubar_i = mu_i / ||mu_i||`` of all valid classes V (semantic decoder,
    previous epoch, no gradient), and::

        L = mean_{(b,k)} -log( exp(fbar_{b,k} . mubar_k / tau) / sum_{i in V} exp(fbar_{b,k} . mubar_i / tau) )

    i.e. cross-entropy of the logits ``fbar @ mubar^T / tau`` with target k, the mean
    over the pairs of the global batch under DDP. 0 if no pair exists (epoch 0).
    """
    _check_pair(features, labels, "mav_contrastive_loss")
    valid = mavs.valid.to(features.device)
    if not valid.any():
        return _zero(features)
    means, classes, _ = class_mean_features(features, labels, normalize=True)
    keep = valid[classes]
    anchors, classes = means[keep], classes[keep]
    valid_ids = torch.nonzero(valid).squeeze(1)
    keys = F.normalize(mavs.means.to(features.device, features.dtype)[valid_ids], dim=1)  # [V, D]
    position = torch.full((valid.numel(),), -1, dtype=torch.long, device=features.device)
    position[valid_ids] = torch.arange(valid_ids.numel(), device=features.device)
    logits = anchors @ keys.t() / tau
    total = F.cross_entropy(logits, position[classes], reduction="sum")
    return _global_mean(total, classes.numel(), features)


def objectosphere_loss(
    features: Tensor,
    labels: Tensor,
    xi: float = 1.0,
    unknown_index: int = IGNORE_INDEX,
    unknown_weight: float = 1.0,
) -> Tensor:
    """Objectosphere loss (paper Eq. 9, Dhamija et al. 2018) on contrastive features.

    ``L = mean_{p in D_k} max(xi - ||f_p||^2, 0) + unknown_weight * mean_{p in D_u} ||f_p||^2``

    with D_k the pixels of known classes (0..K-1) and D_u the pixels labelled
    ``unknown_index`` (void at training time); other labels are ignored. Each term is
    averaged over its own pixels (void is rare; one pooled mean would drown it) and
    is 0 when it has none. ``unknown_weight`` is 1 (the public code's 10 is not in
    the paper). Under DDP both pixel sets span the global batch.
    ``features`` [B, K, H, W], ``labels`` [B, H, W].
    """
    _check_pair(features, labels, "objectosphere_loss")
    sq_norm = (features * features).sum(dim=1)  # [B, H, W]
    known = _known_mask(labels, features.shape[1])
    unknown = labels == unknown_index
    known_term = _global_mean(F.relu(xi - sq_norm[known]).sum(), known.sum(), features)
    unknown_term = _global_mean(sq_norm[unknown].sum(), unknown.sum(), features)
    return known_term + unknown_weight * unknown_term


# ---------------------------------------------------------------------- criterion
@dataclass(frozen=True)
class ContMAVLossConfig:
    """Loss switches, weights and constants of ContMAV and its variants.

    semantic: ``"ce"`` (weighted CE), ``"focal"`` (focal with class-weight alpha) or
        ``"focal_dice"`` (focal + dice); the focal term takes the CE weight.
    feature, contrastive, objectosphere: switch L_feat, L_cont, L_obj on (strict
        booleans, see ``parse_bool``).
    w_semantic, w_feature, w_contrastive, w_objectosphere: 0.9 / 0.1 / 0.5 / 0.5
        (paper Sec. 4.1); w_dice 0.5 (the FYP project's dice weight).
    tau (0.1), xi (1.0), focal_gamma (2), variance_eps (added to sigma^2 before the
    square root), unknown_weight (objectosphere void term, 1), dice_smooth (1),
    dice_exponent (2), unknown_index (255: the void label, "unknown" for L_obj; every
    other label outside 0..K-1 is ignored by all losses).
    """

    semantic: str = "ce"
    feature: bool = True
    contrastive: bool = True
    objectosphere: bool = True
    w_semantic: float = 0.9
    w_feature: float = 0.1
    w_contrastive: float = 0.5
    w_objectosphere: float = 0.5
    w_dice: float = 0.5
    tau: float = 0.1
    xi: float = 1.0
    focal_gamma: float = 2.0
    variance_eps: float = 1e-6
    unknown_weight: float = 1.0
    dice_smooth: float = 1.0
    dice_exponent: int = 2
    unknown_index: int = IGNORE_INDEX

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "ContMAV loss config") -> "ContMAVLossConfig":
        """Build from a mapping with checked types; :class:`InputError` names the key."""
        return convert_fields(cls, _LOSS_CONVERTERS, values, source)


def _positive(v: Any, k: str) -> float:
    value = to_float(v, k, 0.0)
    if value == 0.0:
        raise InputError(f"{k}: must be > 0, got {value}")
    return value


_LOSS_CONVERTERS: dict[str, Callable[[Any, str], Any]] = {
    "semantic": choice("ce", "focal", "focal_dice"),
    "feature": parse_bool,
    "contrastive": parse_bool,
    "objectosphere": parse_bool,
    "w_semantic": lambda v, k: to_float(v, k, 0.0),
    "w_feature": lambda v, k: to_float(v, k, 0.0),
    "w_contrastive": lambda v, k: to_float(v, k, 0.0),
    "w_objectosphere": lambda v, k: to_float(v, k, 0.0),
    "w_dice": lambda v, k: to_float(v, k, 0.0),
    "tau": _positive,
    "xi": _positive,
    "focal_gamma": lambda v, k: to_float(v, k, 0.0),
    "variance_eps": _positive,
    "unknown_weight": lambda v, k: to_float(v, k, 0.0),
    "dice_smooth": lambda v, k: to_float(v, k, 0.0),
    "dice_exponent": lambda v, k: to_int(v, k, 1),
    "unknown_index": lambda v, k: to_int(v, k),
}


class ContMAVCriterion(nn.Module):
    """All training losses of ContMAV on the network's output dict.

    ``forward(outputs, labels, mavs)`` with ``outputs["semantic"]`` and
    ``outputs["contrastive"]`` [B, K, H, W], ``labels`` [B, H, W] and ``mavs`` the
    previous epoch's :class:`MAVs` (or None in epoch 0) returns the **unweighted**
    terms:

    * ``loss_ce`` (``semantic="ce"``) or ``loss_focal`` (+ ``loss_dice``) on "semantic";
    * ``loss_feat`` on "semantic" and ``loss_cont`` on "contrastive", only when
      switched on and ``mavs`` has a valid class (inactive in epoch 0);
    * ``loss_obj`` on "contrastive" when switched on.

    :attr:`weight_dict` maps each name to its weight; :meth:`weighted_total` gives
    ``0.9 L_sem + 0.1 L_feat + 0.5 L_cont + 0.5 L_obj`` with the defaults.
    Buffer ``class_weights`` [K] (CE weights / focal alpha; ones if not given).
    """

    def __init__(self, num_classes: int, cfg: ContMAVLossConfig | None = None, class_weights: Tensor | None = None):
        super().__init__()
        self.num_classes = int(num_classes)
        self.cfg = cfg or ContMAVLossConfig()
        if class_weights is None:
            class_weights = torch.ones(self.num_classes)
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
        if class_weights.shape != (self.num_classes,):
            raise InputError(
                f"class weights: expected {self.num_classes} values, got shape {list(class_weights.shape)}"
            )
        self.register_buffer("class_weights", class_weights)

    @property
    def weight_dict(self) -> dict[str, float]:
        c = self.cfg
        semantic = "loss_ce" if c.semantic == "ce" else "loss_focal"
        weights = {semantic: c.w_semantic}
        if c.semantic == "focal_dice":
            weights["loss_dice"] = c.w_dice
        if c.feature:
            weights["loss_feat"] = c.w_feature
        if c.contrastive:
            weights["loss_cont"] = c.w_contrastive
        if c.objectosphere:
            weights["loss_obj"] = c.w_objectosphere
        return weights

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor, mavs: MAVs | None = None) -> dict[str, Tensor]:
        c = self.cfg
        semantic, contrastive = outputs["semantic"], outputs["contrastive"]
        for name, tensor in (("semantic", semantic), ("contrastive", contrastive)):
            if tensor.shape[1] != self.num_classes:
                raise ValueError(f"outputs[{name!r}] has {tensor.shape[1]} channels, expected K={self.num_classes}")
        losses: dict[str, Tensor] = {}
        if c.semantic == "ce":
            losses["loss_ce"] = weighted_cross_entropy(semantic, labels, self.class_weights)
        else:
            losses["loss_focal"] = focal_loss(semantic, labels, self.class_weights, c.focal_gamma)
            if c.semantic == "focal_dice":
                losses["loss_dice"] = dice_loss(semantic, labels, c.dice_smooth, c.dice_exponent)
        active = mavs is not None and bool(mavs.valid.any())
        if c.feature and active:
            losses["loss_feat"] = mav_feature_loss(semantic, labels, mavs, c.variance_eps)
        if c.contrastive and active:
            losses["loss_cont"] = mav_contrastive_loss(contrastive, labels, mavs, c.tau)
        if c.objectosphere:
            losses["loss_obj"] = objectosphere_loss(contrastive, labels, c.xi, c.unknown_index, c.unknown_weight)
        return losses

    def weighted_total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """``sum_k weight_dict[k] * losses[k]`` over the terms present."""
        weights = self.weight_dict
        terms = [losses[k] * weights[k] for k in losses if k in weights]
        if not terms:
            raise ValueError(f"no loss in {sorted(losses)} has a weight in weight_dict")
        return torch.stack(terms).sum()


# ---------------------------------------------------------------------- InfoNCE
def infonce_from_logits(
    logits: Tensor, positive: Tensor, negative: Tensor, extra_negative_logits: Tensor | None = None
) -> Tensor:
    """Multi-positive InfoNCE on precomputed logits (similarity / tau).

    For anchor i with positives ``P_i = {j : positive[i, j]}``, negatives
    ``N_i = {j : negative[i, j]}`` and extra (e.g. synthetic) negative logits
    ``x_i`` [S]::

        L_i = (1 / |P_i|) sum_{j in P_i} -log( e^{l_ij} / (e^{l_ij} + sum_{n in N_i} e^{l_in} + sum_s e^{x_is}) )

    (every positive is scored against the negatives only, as MoCo's one-positive
    InfoNCE), and ``L = mean_i L_i`` over anchors with at least one positive; 0 if
    there is none.

    Args:
        logits: [N, M].
        positive, negative: [N, M] bool (disjoint).
        extra_negative_logits: [N, S] or None.
    """
    has_pos = positive.any(dim=1)
    if not has_pos.any():
        return _zero(logits)
    neg = logits.masked_fill(~negative, float("-inf"))
    if extra_negative_logits is not None and extra_negative_logits.numel() > 0:
        neg = torch.cat([neg, extra_negative_logits], dim=1)
    has_neg = torch.isfinite(neg).any(dim=1, keepdim=True)
    # rows without any negative: lse = -inf (loss 0) without a NaN gradient through logsumexp
    lse = torch.logsumexp(torch.where(has_neg, neg, torch.zeros_like(neg)), dim=1, keepdim=True)
    neg_lse = torch.where(has_neg, lse, torch.full_like(lse, float("-inf")))  # [N, 1]
    per_pair = torch.logaddexp(logits, neg_lse.expand_as(logits)) - logits  # -log(e^l / (e^l + sum_neg))
    per_pair = per_pair.masked_fill(~positive, 0.0)
    per_anchor = per_pair.sum(dim=1)[has_pos] / positive.sum(dim=1)[has_pos].to(logits.dtype)
    return per_anchor.mean()


def known_unknown_infonce(
    known: Tensor,
    unknown: Tensor,
    known_labels: Tensor | None = None,
    tau: float = 0.1,
    anchors: str = "both",
    synco: "SynCoConfig | None" = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """InfoNCE that separates known-class crop embeddings from unknown ones.

    Embeddings are L2-normalised; similarities are cosines divided by ``tau``.

    * **Known anchor** i (a known crop): positives = the other known crops with the
      same label (every other known crop if ``known_labels`` is None); negatives =
      all unknown crops; known crops of other classes are neither.
    * **Unknown anchor** i: positives = the other unknown crops; negatives = all
      known crops.
    * An anchor is never its own positive. Anchors without a positive are skipped.
    * ``anchors``: ``"known"``, ``"unknown"`` or ``"both"`` (one mean over all anchors
      of both groups, :func:`infonce_from_logits`).

    The seed README's snippet (``norm(known) @ norm(unknown)^T`` with targets
    ``arange``) makes known_i and unknown_i a *positive* pair, i.e. pulls known crops
    toward unknown ones; it is not used.

    SynCo (``synco`` not None): synthetic hard negatives
    (:func:`synthesize_hard_negatives`) are appended to the negatives of
    ``synco.direction``: ``"known_to_unknown"`` builds them from the known crops for
    the unknown anchors, ``"unknown_to_known"`` from the unknown crops for the known
    anchors, ``"both"`` does both. The anchors receiving them must be enabled.

    Args:
        known: [N_k, D]; unknown: [N_u, D]; known_labels: [N_k] int or None.
        generator: CPU generator for the SynCo sampling (global RNG if None).

    Returns a scalar (0 if no anchor has a positive).
    """
    if anchors not in ("known", "unknown", "both"):
        raise ValueError(f"anchors {anchors!r}: choose 'known', 'unknown' or 'both'")
    k = F.normalize(known, dim=1)
    u = F.normalize(unknown, dim=1)
    n_k, n_u = k.shape[0], u.shape[0]
    device = k.device
    directions = set()
    if synco is not None:
        directions = {"known_to_unknown", "unknown_to_known"} if synco.direction == "both" else {synco.direction}
        if "known_to_unknown" in directions and anchors == "known":
            raise ValueError("SynCo direction known_to_unknown needs unknown anchors (anchors='unknown' or 'both')")
        if "unknown_to_known" in directions and anchors == "unknown":
            raise ValueError("SynCo direction unknown_to_known needs known anchors (anchors='known' or 'both')")

    emb = torch.cat([k, u], dim=0)  # candidates: known first, then unknown
    is_known = torch.cat([torch.ones(n_k, dtype=torch.bool), torch.zeros(n_u, dtype=torch.bool)]).to(device)
    not_self = ~torch.eye(n_k + n_u, dtype=torch.bool, device=device)

    rows, pos_rows, neg_rows, extra = [], [], [], []
    if anchors in ("known", "both") and n_k > 0:
        if known_labels is None:
            same = torch.ones(n_k, n_k, dtype=torch.bool, device=device)
        else:
            lab = known_labels.to(device)
            same = lab[:, None] == lab[None, :]
        pos = torch.cat([same, torch.zeros(n_k, n_u, dtype=torch.bool, device=device)], dim=1) & not_self[:n_k]
        neg = (~is_known)[None, :].expand(n_k, -1)
        rows.append(k)
        pos_rows.append(pos)
        neg_rows.append(neg)
        extra.append(_synthetic_logits(k, u, synco, tau, generator) if "unknown_to_known" in directions else None)
    if anchors in ("unknown", "both") and n_u > 0:
        pos = (~is_known)[None, :].expand(n_u, -1) & not_self[n_k:]
        neg = is_known[None, :].expand(n_u, -1)
        rows.append(u)
        pos_rows.append(pos)
        neg_rows.append(neg)
        extra.append(_synthetic_logits(u, k, synco, tau, generator) if "known_to_unknown" in directions else None)
    if not rows:
        return _zero(emb)

    anchor = torch.cat(rows, dim=0)
    logits = anchor @ emb.t() / tau
    extra_logits = None
    if any(e is not None for e in extra):
        width = max(e.shape[1] for e in extra if e is not None)
        filled = []
        for rows_i, e in zip(rows, extra):
            block = torch.full((rows_i.shape[0], width), float("-inf"), dtype=logits.dtype, device=device)
            if e is not None:
                block[:, : e.shape[1]] = e
            filled.append(block)
        extra_logits = torch.cat(filled, dim=0)
    return infonce_from_logits(logits, torch.cat(pos_rows), torch.cat(neg_rows), extra_logits)


# ---------------------------------------------------------------------- SynCo
SYNCO_TYPES = ("interpolation", "extrapolation", "mixup", "noise", "gradient", "adversarial")


@dataclass(frozen=True)
class SynCoConfig:
    """SynCo-style synthetic hard negatives (Giakoumoglou & Stathaki, arXiv 2410.02401).

    direction: ``"known_to_unknown"`` (negatives synthesised from known crops for the
        unknown anchors), ``"unknown_to_known"`` (from unknown crops for the known
        anchors) or ``"both"``.
    n_hard: size of each anchor's hard pool, its most similar source embeddings
        (SynCo: 1024 out of a 65,536 queue; crops are far fewer here).
    n_interpolation, n_extrapolation, n_mixup, n_noise, n_gradient, n_adversarial:
        synthetic negatives per anchor of each type (SynCo: 256, 256, 256, 64, 64, 64).
    alpha_max (0.5), beta_min / beta_max (1.0 / 1.5), noise_std (0.01), delta (0.01),
    eta (0.01): the type parameters of :func:`synthesize_hard_negatives`.
    """

    direction: str = "known_to_unknown"
    n_hard: int = 64
    n_interpolation: int = 16
    n_extrapolation: int = 16
    n_mixup: int = 16
    n_noise: int = 4
    n_gradient: int = 4
    n_adversarial: int = 4
    alpha_max: float = 0.5
    beta_min: float = 1.0
    beta_max: float = 1.5
    noise_std: float = 0.01
    delta: float = 0.01
    eta: float = 0.01

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "SynCo config") -> "SynCoConfig":
        """Build from a mapping with checked types; :class:`InputError` names the key."""
        cfg = convert_fields(cls, _SYNCO_CONVERTERS, values, source)
        if cfg.beta_min > cfg.beta_max:
            raise InputError(f"{source}: beta_min {cfg.beta_min} > beta_max {cfg.beta_max}")
        return cfg


_SYNCO_CONVERTERS: dict[str, Callable[[Any, str], Any]] = {
    "direction": choice("known_to_unknown", "unknown_to_known", "both"),
    **{name: (lambda v, k: to_int(v, k, 0)) for name in (
        "n_interpolation", "n_extrapolation", "n_mixup", "n_noise", "n_gradient", "n_adversarial")},
    "n_hard": lambda v, k: to_int(v, k, 1),
    **{name: (lambda v, k: to_float(v, k, 0.0)) for name in (
        "alpha_max", "beta_min", "beta_max", "noise_std", "delta", "eta")},
}


def interpolate_negatives(q: Tensor, n: Tensor, alpha: Tensor) -> Tensor:
    """Type 1: ``normalize(alpha q + (1 - alpha) n)``; q [N, D], n [N, S, D], alpha [N, S]."""
    a = alpha[..., None]
    return F.normalize(a * q[:, None] + (1.0 - a) * n, dim=-1)


def extrapolate_negatives(q: Tensor, n: Tensor, beta: Tensor) -> Tensor:
    """Type 2: ``normalize(q + beta (n - q))`` (beta >= 1: beyond n, away from q)."""
    return F.normalize(q[:, None] + beta[..., None] * (n - q[:, None]), dim=-1)


def mixup_negatives(n1: Tensor, n2: Tensor, gamma: Tensor) -> Tensor:
    """Type 3: ``normalize(gamma n1 + (1 - gamma) n2)``; n1, n2 [N, S, D], gamma [N, S]."""
    g = gamma[..., None]
    return F.normalize(g * n1 + (1.0 - g) * n2, dim=-1)


def noise_negatives(n: Tensor, noise: Tensor) -> Tensor:
    """Type 4: ``normalize(n + noise)`` (noise ~ N(0, sigma^2), same shape as n)."""
    return F.normalize(n + noise, dim=-1)


def gradient_negatives(q: Tensor, n: Tensor, delta: float) -> Tensor:
    """Type 5: ``normalize(n + delta grad_n(q . n)) = normalize(n + delta q)``."""
    return F.normalize(n + delta * q[:, None], dim=-1)


def adversarial_negatives(q: Tensor, n: Tensor, eta: float) -> Tensor:
    """Type 6: ``normalize(n + eta sign(grad_n(q . n))) = normalize(n + eta sign(q))``."""
    return F.normalize(n + eta * torch.sign(q)[:, None], dim=-1)


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _pick(hard: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """[N, count] entries drawn uniformly (with replacement) from each row of ``hard`` [N, h]."""
    cols = torch.randint(hard.shape[1], (hard.shape[0], count), generator=generator).to(hard.device)
    return hard.gather(1, cols)


@torch.no_grad()
def synthesize_hard_negatives(
    anchors: Tensor, pool: Tensor, cfg: SynCoConfig, generator: torch.Generator | None = None
) -> Tensor:
    """Synthetic hard negatives for each anchor from a pool of real negatives.

    1. ``q = normalize(anchors)`` [N, D], ``p = normalize(pool)`` [M, D];
    2. each anchor's hard pool: the ``min(n_hard, M)`` rows of p most similar to q;
    3. per type, entries n (n1, n2) are drawn uniformly with replacement from the
       anchor's hard pool and combined (every result L2-normalised):
       interpolation ``alpha q + (1 - alpha) n``, alpha ~ U(0, alpha_max);
       extrapolation ``q + beta (n - q)``, beta ~ U(beta_min, beta_max);
       mixup ``gamma n1 + (1 - gamma) n2``, gamma ~ U(0, 1);
       noise ``n + e``, e ~ N(0, noise_std^2); gradient ``n + delta q``;
       adversarial ``n + eta sign(q)``.

    Randomness is drawn on the CPU from ``generator`` (global RNG if None).
    Returns [N, S, D] (detached), S the sum of the type counts, in the type order
    of :data:`SYNCO_TYPES`; S = 0 if ``pool`` is empty.
    """
    q = F.normalize(anchors.detach(), dim=1)
    p = F.normalize(pool.detach(), dim=1)
    n_anchor, dim = q.shape
    if p.shape[0] == 0 or n_anchor == 0:
        return q.new_zeros(n_anchor, 0, dim)
    h = min(cfg.n_hard, p.shape[0])
    hard = (q @ p.t()).topk(h, dim=1).indices  # [N, h]

    def draw(count: int) -> Tensor:
        return p[_pick(hard, count, generator)]  # [N, count, D]

    def coeff(count: int, low: float, high: float) -> Tensor:
        return _uniform((n_anchor, count), low, high, generator).to(q.device, q.dtype)

    parts = []
    if cfg.n_interpolation:
        alpha = coeff(cfg.n_interpolation, 0.0, cfg.alpha_max)
        parts.append(interpolate_negatives(q, draw(cfg.n_interpolation), alpha))
    if cfg.n_extrapolation:
        beta = coeff(cfg.n_extrapolation, cfg.beta_min, cfg.beta_max)
        parts.append(extrapolate_negatives(q, draw(cfg.n_extrapolation), beta))
    if cfg.n_mixup:
        parts.append(mixup_negatives(draw(cfg.n_mixup), draw(cfg.n_mixup), coeff(cfg.n_mixup, 0.0, 1.0)))
    if cfg.n_noise:
        n = draw(cfg.n_noise)
        noise = (torch.randn(n.shape, generator=generator) * cfg.noise_std).to(q.device, q.dtype)
        parts.append(noise_negatives(n, noise))
    if cfg.n_gradient:
        parts.append(gradient_negatives(q, draw(cfg.n_gradient), cfg.delta))
    if cfg.n_adversarial:
        parts.append(adversarial_negatives(q, draw(cfg.n_adversarial), cfg.eta))
    if not parts:
        return q.new_zeros(n_anchor, 0, dim)
    return torch.cat(parts, dim=1)


def _synthetic_logits(
    anchors: Tensor, source: Tensor, cfg: SynCoConfig, tau: float, generator: torch.Generator | None
) -> Tensor:
    """``anchors . s / tau`` [N, S] for the synthetic negatives s of every anchor
    (anchors already normalised; the gradient flows through the anchors only)."""
    synthetic = synthesize_hard_negatives(anchors, source, cfg, generator)
    return torch.einsum("nd,nsd->ns", anchors, synthetic) / tau
