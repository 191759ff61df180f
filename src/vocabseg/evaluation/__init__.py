"""Evaluation: panoptic quality (PQ/SQ/RQ) and semantic IoU of COCO-panoptic predictions.

The public entry points are :func:`evaluate_panoptic` and :func:`write_metrics`; see
:mod:`vocabseg.evaluation.panoptic` for the exact semantics (those of
``cityscapesscripts``' ``csEvalPanopticSemanticLabeling``) and the result schema.
"""

from vocabseg.evaluation.panoptic import evaluate_panoptic, write_metrics

__all__ = ["evaluate_panoptic", "write_metrics"]
