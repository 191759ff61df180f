"""Fine-tuning: FC-CLIP trained on the ground truth of a vocabulary configuration.

The training vocabulary is the configuration's in-classes (its out-classes are void
in the training ground truth), so the text classifier, the dataset labels and the
criterion all have K = number of in-classes. The same task pretrains the tiny base
model of the synthetic world (source-style city, all 19 classes).

Loss: the FC-CLIP / Mask2Former set criterion (class CE 2, mask BCE 5, dice 5,
no-object 0.1, deep supervision), see :mod:`vocabseg.losses.criterion`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vocabseg.losses import build_criterion
from vocabseg.models.fcclip import FCCLIP, TextClassifier, save_fcclip_checkpoint

__all__ = ["FinetuneTask"]


class FinetuneTask:
    """Trainer task (see :class:`vocabseg.engine.trainer.TrainTask`) for one FC-CLIP."""

    def __init__(self, model: FCCLIP, text: TextClassifier, *, num_points: int = 12544):
        self.model = model
        self.text = text
        self.criterion = build_criterion(
            len(text.num_synonyms), num_points=num_points, num_aux=model.config.dec_layers
        )

    def losses(self, model: nn.Module, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch (their sum is minimised)."""
        self.criterion.to(images.device)
        outputs = model(images, self.text.embeddings.to(images.device), self.text.num_synonyms)
        raw = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in raw.items() if k in weights}

    def export(self, model: nn.Module, path: Path) -> None:
        save_fcclip_checkpoint(self.model, path)
