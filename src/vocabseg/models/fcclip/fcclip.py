"""The FC-CLIP meta-architecture and its inference.

``FCCLIP`` = frozen CLIP backbone + pixel decoder + masked-attention decoder with a
CLIP-space class head (``sem_seg_head``), plus a learnt void embedding. It holds no
loss. ``forward`` gives the head outputs at the padded input size (training and
evaluation alike); ``inference`` adds the out-of-vocabulary CLIP classifier, the
geometric ensemble and the Mask2Former panoptic / semantic post-processing.

The pieces are public so that several heads can share one backbone pass (the
combined approach): ``backbone_features`` (preprocess + CLIP), ``head_outputs`` /
``final_outputs`` (one head on those features), the ``head`` argument of
``inference`` (any final-layer class / mask logits in place of this model's head)
and ``inference_from_outputs`` (everything after the head).

Input images are RGB floats in 0..255, [B, 3, H, W]; they are normalised with the
CLIP mean/std and zero-padded bottom/right to a multiple of ``size_divisibility``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import FEATURE_NAMES, CLIPBackbone
from .config import FCCLIPConfig
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskPooling, MultiScaleMaskedTransformerDecoder, get_classification_logits

__all__ = [
    "FCCLIP",
    "FCCLIPHead",
    "geometric_ensemble",
    "panoptic_inference",
    "semantic_inference",
]

#: ``head(features, classifier, num_synonyms) -> (pred_logits, pred_masks)``: see :meth:`FCCLIP.inference`.
HeadFn = Callable[[dict[str, Tensor], Tensor, Sequence[int]], tuple[Tensor, Tensor]]


class FCCLIPHead(nn.Module):
    """``pixel_decoder`` followed by ``predictor`` (keys ``sem_seg_head.*`` upstream)."""

    def __init__(self, pixel_decoder: nn.Module, predictor: MultiScaleMaskedTransformerDecoder):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(self, features: dict[str, Tensor], text_classifier: Tensor, num_synonyms: Sequence[int]) -> dict:
        """``features`` res2..res5 -> the decoder's output dict (see the predictor)."""
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features, text_classifier, num_synonyms)


class FCCLIP(nn.Module):
    """FC-CLIP built from an :class:`FCCLIPConfig`.

    Attributes:
        backbone: :class:`CLIPBackbone` (frozen, always eval).
        sem_seg_head: :class:`FCCLIPHead` with ``pixel_decoder`` and ``predictor``.
        void_embedding: ``nn.Embedding(1, dim_latent)``; normalised, it is appended to
            every text classifier as the void / no-object row.
        pixel_mean, pixel_std: non-persistent buffers [3, 1, 1].
    """

    def __init__(self, config: FCCLIPConfig):
        super().__init__()
        self.config = config
        self.backbone = CLIPBackbone(config.clip_model, config.clip_pretrained, quick_gelu=config.clip_quick_gelu)
        pixel_decoder = MSDeformAttnPixelDecoder(
            self.backbone.output_channels,
            self.backbone.output_strides,
            conv_dim=config.conv_dim,
            mask_dim=config.mask_dim,
            transformer_in_features=("res3", "res4", "res5"),
            enc_layers=config.enc_layers,
            nheads=config.nheads,
            dim_feedforward=config.enc_ffn,
            dropout=0.0,
            n_points=config.n_points,
            common_stride=4,
        )
        predictor = MultiScaleMaskedTransformerDecoder(
            config.conv_dim,
            hidden_dim=config.hidden_dim,
            num_queries=config.num_queries,
            nheads=config.nheads,
            dim_feedforward=config.dim_feedforward,
            dec_layers=config.dec_layers,
            mask_dim=config.mask_dim,
            embed_dim=self.backbone.dim_latent,
        )
        self.sem_seg_head = FCCLIPHead(pixel_decoder, predictor)
        self.void_embedding = nn.Embedding(1, self.backbone.dim_latent)
        self.mask_pooling = MaskPooling()
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    # --------------------------------------------------------------- input
    def preprocess(self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """Normalise 0..255 RGB [B, 3, H, W] and zero-pad bottom/right to a multiple of
        ``size_divisibility``: [B, 3, Hp, Wp].

        With ``image_sizes`` (per image (h, w) of the real content) everything outside
        the content is zero after normalisation, as detectron2's ``ImageList`` pads
        normalised images; padding the caller did in pixel space is thereby undone.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        div = self.config.size_divisibility
        height, width = x.shape[-2:]
        pad_h = (div - height % div) % div if div > 1 else 0
        pad_w = (div - width % div) % div if div > 1 else 0
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
        if image_sizes is not None:
            if len(image_sizes) != x.shape[0]:
                raise ValueError(f"{len(image_sizes)} image sizes for {x.shape[0]} images")
            for i, (h, w) in enumerate(image_sizes):
                if not (0 < int(h) <= height and 0 < int(w) <= width):
                    raise ValueError(f"image size {(h, w)} outside the {height} x {width} input")
                x[i, :, int(h) :, :] = 0.0
                x[i, :, :, int(w) :] = 0.0
        return x

    def with_void(self, text_classifier: Tensor, num_synonyms: Sequence[int]) -> Tensor:
        """[S, D] text classifier + the normalised void row: [S + 1, D]."""
        if text_classifier.dim() != 2 or text_classifier.shape[0] != sum(int(n) for n in num_synonyms):
            raise ValueError(
                f"text classifier {tuple(text_classifier.shape)} does not match num_synonyms (sum {sum(num_synonyms)})"
            )
        void = F.normalize(self.void_embedding.weight, dim=-1)
        return torch.cat([text_classifier.to(device=void.device, dtype=void.dtype), void], dim=0)

    # ------------------------------------------------------------- forward
    def backbone_features(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[dict[str, Tensor], tuple[int, int]]:
        """Preprocess and run the frozen CLIP backbone once.

        Returns:
            (features ``{"stem", "res2", ..., "res5", "clip_vis_dense"}``, the padded
            input size (Hp, Wp)). Several heads may share these features (see
            :class:`vocabseg.approaches.combined.CombinedFCCLIP`).
        """
        x = self.preprocess(images, image_sizes)
        return self.backbone(x), (x.shape[-2], x.shape[-1])

    def head_outputs(self, features: dict[str, Tensor], classifier: Tensor, num_synonyms: Sequence[int]) -> dict:
        """``sem_seg_head`` on backbone ``features`` with a ``classifier`` [S + 1, D]
        that already has the void row (:meth:`with_void`); see :meth:`forward`."""
        return self.sem_seg_head({k: features[k] for k in FEATURE_NAMES}, classifier, num_synonyms)

    def final_outputs(
        self, features: dict[str, Tensor], classifier: Tensor, num_synonyms: Sequence[int]
    ) -> tuple[Tensor, Tensor]:
        """(``pred_logits`` [B, Q, K + 1], ``pred_masks`` [B, Q, Hp/4, Wp/4]) of
        :meth:`head_outputs`; the aux outputs (large at full resolution) are dropped."""
        outputs = self.head_outputs(features, classifier, num_synonyms)
        return outputs["pred_logits"], outputs["pred_masks"]

    def forward(
        self,
        images: Tensor,
        text_classifier: Tensor,
        num_synonyms: Sequence[int],
        image_sizes: Sequence[tuple[int, int]] | None = None,
        features: dict[str, Tensor] | None = None,
    ) -> dict:
        """Head outputs for images [B, 3, H, W] (RGB 0..255).

        Args:
            text_classifier: [S, D] normalised (class, synonym) embeddings.
            num_synonyms: K ints summing to S.
            image_sizes: optional per-image (h, w) of the content; pixels outside are
                zeroed after normalisation (see :meth:`preprocess`).
            features: :meth:`backbone_features` of ``images`` (and ``image_sizes``) if
                already computed, by this model or one with the same frozen backbone
                (the KD teacher: :class:`vocabseg.approaches.distill.DistillTask`); the
                backbone is then not run again.

        Returns:
            ``pred_logits`` [B, Q, K + 1] (last = void), ``pred_masks`` [B, Q, Hp/4, Wp/4]
            mask logits at the padded size, ``aux_outputs``: ``dec_layers`` dicts.
        """
        if features is None:
            features, _ = self.backbone_features(images, image_sizes)
        return self.head_outputs(features, self.with_void(text_classifier, num_synonyms), num_synonyms)

    # ----------------------------------------------------------- inference
    def out_of_vocab_logits(
        self,
        pred_masks: Tensor,
        clip_feature: Tensor,
        classifier: Tensor,
        num_synonyms: Sequence[int],
    ) -> tuple[Tensor, Tensor]:
        """The frozen-CLIP classifier of the predicted masks.

        Args:
            pred_masks: mask logits [B, Q, h4, w4].
            clip_feature: the backbone's ``clip_vis_dense`` [B, C, h32, w32].
            classifier: [S + 1, D] text classifier with the void row.

        Returns:
            (logits [B, Q, K + 1] with CLIP's logit scale, valid [B, Q]: the mask
            resized to the CLIP feature size has a positive pixel).
        """
        masks = F.interpolate(pred_masks, size=clip_feature.shape[-2:], mode="bilinear", align_corners=False)
        if self.backbone.family == "convnext":
            pooled = self.mask_pooling(clip_feature, masks)
            embeddings = self.backbone.visual_prediction_forward(pooled)
        else:
            embeddings = self.backbone.visual_prediction_forward(clip_feature, masks)
        logits = get_classification_logits(embeddings, classifier, self.backbone.clip_model.logit_scale, num_synonyms)
        valid = (masks > 0).flatten(2).any(dim=-1)
        return logits, valid

    @torch.no_grad()
    def inference(
        self,
        images: Tensor,
        text_classifier: Tensor,
        num_synonyms: Sequence[int],
        *,
        seen_mask: Tensor,
        thing_mask: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        output_sizes: Sequence[tuple[int, int]] | None = None,
        head: HeadFn | None = None,
    ) -> list[dict]:
        """Panoptic and semantic predictions.

        Args:
            images: [B, 3, H, W] RGB 0..255 (padded or not; whatever lies outside
                ``image_sizes`` is ignored, as upstream pads after normalising).
            text_classifier, num_synonyms: the test vocabulary (K classes).
            seen_mask: BoolTensor [K]; True for classes of the base model's training
                vocabulary (ensemble weight ``ensemble_alpha``), else ``ensemble_beta``.
            thing_mask: BoolTensor [K]; True for thing classes.
            image_sizes: per image (h, w) of the unpadded content.
            output_sizes: per image size to resize predictions to (default: image_sizes).
            head: what turns the backbone features into final-layer outputs,
                ``head(features, classifier, num_synonyms) -> (pred_logits [B, Q, K + 1],
                pred_masks [B, Q, Hp/4, Wp/4])`` with this model's ``classifier``
                [S + 1, D] (:meth:`with_void`); default :meth:`final_outputs`. Several
                heads on one backbone pass plug in here (the fused heads of
                :class:`vocabseg.approaches.combined.CombinedFCCLIP`).

        Returns:
            One dict per image: ``panoptic_seg`` LongTensor [h, w] of segment ids
            (0 = void), ``segments_info`` list of {"id", "category" (0..K-1),
            "isthing", "score"} (score: see :func:`panoptic_inference`), ``sem_seg``
            [K, h, w] class probabilities.
        """
        seen_mask, thing_mask = self.class_masks(seen_mask, thing_mask, len(num_synonyms))  # fail early
        features, padded_size = self.backbone_features(images, image_sizes)
        classifier = self.with_void(text_classifier, num_synonyms)
        pred_logits, pred_masks = (head or self.final_outputs)(features, classifier, num_synonyms)
        clip_feature = features["clip_vis_dense"]
        del features
        return self.inference_from_outputs(
            pred_logits,
            pred_masks,
            clip_feature,
            classifier,
            num_synonyms,
            seen_mask=seen_mask,
            thing_mask=thing_mask,
            image_sizes=image_sizes,
            padded_size=padded_size,
            output_sizes=output_sizes,
        )

    @staticmethod
    def class_masks(seen_mask: Tensor, thing_mask: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """``seen_mask`` and ``thing_mask`` as flat BoolTensors [K]; ValueError if either
        has not one entry per class."""
        seen_mask = torch.as_tensor(seen_mask, dtype=torch.bool).flatten()
        thing_mask = torch.as_tensor(thing_mask, dtype=torch.bool).flatten()
        if seen_mask.numel() != num_classes or thing_mask.numel() != num_classes:
            raise ValueError(
                f"seen_mask ({seen_mask.numel()}) and thing_mask ({thing_mask.numel()}) need one entry per class "
                f"({num_classes})"
            )
        return seen_mask, thing_mask

    @torch.no_grad()
    def inference_from_outputs(
        self,
        pred_logits: Tensor,
        pred_masks: Tensor,
        clip_feature: Tensor,
        classifier: Tensor,
        num_synonyms: Sequence[int],
        *,
        seen_mask: Tensor,
        thing_mask: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        padded_size: tuple[int, int],
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict]:
        """Everything of :meth:`inference` after the head, for any final-layer outputs
        (e.g. the fused outputs of two heads).

        Args:
            pred_logits: [B, Q, K + 1] in-vocabulary class logits (void last).
            pred_masks: [B, Q, Hp/4, Wp/4] mask logits.
            clip_feature: the backbone's ``clip_vis_dense`` [B, C, Hp/32, Wp/32].
            classifier: [S + 1, D] text classifier with the void row (:meth:`with_void`).
            seen_mask, thing_mask: BoolTensors [K] (see :meth:`inference`).
            image_sizes, output_sizes: as in :meth:`inference`.
            padded_size: (Hp, Wp), the padded input size (:meth:`backbone_features`).

        Steps: the out-of-vocabulary CLIP classifier of ``pred_masks``
        (:meth:`out_of_vocab_logits`), :func:`geometric_ensemble` with ``pred_logits``,
        then per image the masks upsampled to (Hp, Wp), cropped to the image size and
        resized to the output size, semantic and panoptic inference.
        """
        seen_mask, thing_mask = self.class_masks(seen_mask, thing_mask, len(num_synonyms))
        padded_h, padded_w = (int(v) for v in padded_size)
        out_logits, valid = self.out_of_vocab_logits(pred_masks, clip_feature, classifier, num_synonyms)
        device = pred_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            mask_cls = geometric_ensemble(
                pred_logits.float(),
                out_logits.float(),
                seen_mask.to(device),
                self.config.ensemble_alpha,
                self.config.ensemble_beta,
                valid=valid if self.config.ensemble_on_valid_mask else None,
            )
            pred_masks = pred_masks.float()
            del out_logits
            results = []
            for i, (height, width) in enumerate(image_sizes):
                height, width = int(height), int(width)
                out_h, out_w = (int(v) for v in output_sizes[i]) if output_sizes is not None else (height, width)
                masks = F.interpolate(
                    pred_masks[i : i + 1], size=(padded_h, padded_w), mode="bilinear", align_corners=False
                )[:, :, :height, :width]
                if (out_h, out_w) != (height, width):
                    masks = F.interpolate(masks, size=(out_h, out_w), mode="bilinear", align_corners=False)
                # [Q, h, w] mask probabilities, computed once (full-size masks are large)
                probs = masks[0].sigmoid_() if masks.is_contiguous() else masks[0].sigmoid()
                del masks
                class_probs = mask_cls[i].softmax(dim=-1)
                sem_seg = _semantic_from_probs(class_probs, probs)
                panoptic_seg, segments_info = _panoptic_from_probs(
                    class_probs,
                    probs,
                    thing_mask.to(device),
                    object_mask_threshold=self.config.object_mask_threshold,
                    overlap_threshold=self.config.overlap_threshold,
                )
                del probs
                results.append({"panoptic_seg": panoptic_seg, "segments_info": segments_info, "sem_seg": sem_seg})
        return results


# ------------------------------------------------------------------ functions
def geometric_ensemble(
    in_vocab_logits: Tensor,
    out_vocab_logits: Tensor,
    seen_mask: Tensor,
    alpha: float,
    beta: float,
    valid: Tensor | None = None,
) -> Tensor:
    """Combine the in-vocabulary and CLIP (out-of-vocabulary) classifiers.

    Both inputs are [B, Q, K + 1] logits; each is soft-maxed over the K classes only
    (void dropped). Per class, ``p_in^(1-w) * p_out^w`` with ``w = alpha`` for seen
    classes and ``beta`` otherwise; ``valid`` [B, Q] (optional) zeroes w for queries
    whose mask is empty. The void probability comes from the in-vocabulary softmax
    over K + 1: the result is ``log([softmax(log ensemble) * (1 - p_void), p_void] + 1e-8)``,
    [B, Q, K + 1].

    Unlike upstream, which multiplies the two log terms by the 0/1 seen mask, the
    terms are selected, so an underflowed probability (log = -inf) of the other
    branch cannot turn into NaN.
    """
    p_in = in_vocab_logits[..., :-1].softmax(dim=-1)
    p_out = out_vocab_logits[..., :-1].softmax(dim=-1)
    if valid is not None:
        weight = valid.to(p_in.dtype).unsqueeze(-1)
        w_seen, w_unseen = alpha * weight, beta * weight
    else:
        w_seen, w_unseen = alpha, beta
    seen_term = (p_in ** (1 - w_seen) * p_out**w_seen).log()
    unseen_term = (p_in ** (1 - w_unseen) * p_out**w_unseen).log()
    combined = torch.where(seen_mask.to(device=p_in.device, dtype=torch.bool), seen_term, unseen_term)
    p_void = in_vocab_logits.softmax(dim=-1)[..., -1:]
    probs = torch.cat([combined.softmax(dim=-1) * (1.0 - p_void), p_void], dim=-1)
    return torch.log(probs + 1e-8)


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
    """[Q, K + 1] class scores (logits / log-probs) and [Q, h, w] mask logits ->
    [K, h, w] = sum_q softmax(mask_cls)[q, :K] * sigmoid(mask_pred[q])."""
    return _semantic_from_probs(mask_cls.softmax(dim=-1), mask_pred.sigmoid())


def _semantic_from_probs(class_probs: Tensor, mask_probs: Tensor) -> Tensor:
    num_queries, height, width = mask_probs.shape
    sem = class_probs[:, :-1].t() @ mask_probs.reshape(num_queries, -1)
    return sem.reshape(-1, height, width)


def panoptic_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    thing_mask: Tensor,
    *,
    object_mask_threshold: float = 0.0,
    overlap_threshold: float = 0.8,
) -> tuple[Tensor, list[dict]]:
    """Mask2Former panoptic merging for one image.

    Args:
        mask_cls: [Q, K + 1] class scores (soft-maxed here; last = void).
        mask_pred: [Q, h, w] mask logits.
        thing_mask: BoolTensor [K].

    Queries whose best class is void or whose score is <= ``object_mask_threshold``
    are dropped. Every pixel goes to the kept query with the highest
    ``score * sigmoid(mask)``; a query keeps the pixels it wins where its own
    sigmoid is >= 0.5, and is dropped if it wins less than ``overlap_threshold`` of
    its own (>= 0.5) area. Stuff segments of one class are merged. Segment ids
    count from 1; 0 is void.

    Each segment's ``"score"`` is its confidence as Mask2Former ranks queries before
    merging: ``max_c softmax(mask_cls[q])[c]`` over real classes c (the kept query's
    class probability, which is >= its void probability); for a stuff segment merged
    from several queries, the largest of their scores.

    Returns:
        (LongTensor [h, w] of segment ids, list of {"id", "category", "isthing",
        "score" (float)}).
    """
    return _panoptic_from_probs(
        mask_cls.softmax(dim=-1),
        mask_pred.sigmoid(),
        thing_mask,
        object_mask_threshold=object_mask_threshold,
        overlap_threshold=overlap_threshold,
    )


def _panoptic_from_probs(
    class_probs: Tensor,
    mask_probs: Tensor,
    thing_mask: Tensor,
    *,
    object_mask_threshold: float,
    overlap_threshold: float,
) -> tuple[Tensor, list[dict]]:
    num_classes = class_probs.shape[-1] - 1
    scores, labels = class_probs.max(dim=-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    num_queries, height, width = mask_probs.shape
    panoptic = torch.zeros(height * width, dtype=torch.long, device=mask_probs.device)
    segments: list[dict] = []
    kept = keep.nonzero().flatten()
    if kept.numel() == 0:
        return panoptic.reshape(height, width), segments

    flat = mask_probs.reshape(num_queries, -1)  # a view for contiguous input
    cur_scores = scores[kept]
    cur_classes = labels[kept].tolist()
    # winning kept query per pixel, in pixel chunks to bound memory
    owner = torch.empty(height * width, dtype=torch.long, device=mask_probs.device)
    chunk = 1 << 18
    for start in range(0, height * width, chunk):
        owner[start : start + chunk] = (cur_scores[:, None] * flat[kept, start : start + chunk]).argmax(dim=0)
    won_area = torch.bincount(owner, minlength=kept.numel()).tolist()

    score_list = cur_scores.tolist()
    stuff_segments: dict[int, dict] = {}
    next_id = 0
    for k, (query, pred_class) in enumerate(zip(kept.tolist(), cur_classes)):
        isthing = bool(thing_mask[pred_class])
        own = flat[query] >= 0.5
        original_area = int(own.sum())
        mask = (owner == k) & own
        if won_area[k] == 0 or original_area == 0 or not bool(mask.any()):
            continue
        if won_area[k] / original_area < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_segments:
            merged = stuff_segments[pred_class]
            panoptic[mask] = merged["id"]
            merged["score"] = max(merged["score"], float(score_list[k]))
            continue
        next_id += 1
        panoptic[mask] = next_id
        segment = {"id": next_id, "category": int(pred_class), "isthing": isthing, "score": float(score_list[k])}
        segments.append(segment)
        if not isthing:
            stuff_segments[pred_class] = segment
    return panoptic.reshape(height, width), segments
