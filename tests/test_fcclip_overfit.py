"""The whole FC-CLIP training and inference path can fit a few synthetic images.

A tiny FC-CLIP (random frozen CLIP, trainable pixel decoder and transformer
decoder) is trained with the study's criterion, trainer and augmentation-free data
on two synthetic-city images and then predicts them through the same panoptic
inference and evaluator the study uses. Reaching a high PQ on its own training
images is the end-to-end check that targets, matcher, losses, optimiser and
inference agree with each other: a wrong mask/label pairing, a class-index shift
between training and inference or a broken panoptic merge all keep PQ low.
"""

from __future__ import annotations

import json

import torch

from vocabseg.approaches.study_model import ModelSpec, build_model, vocab_ids
from vocabseg.approaches.finetune import FinetuneTask
from vocabseg.approaches.predict import image_list, predict_panoptic
from vocabseg.data.panoptic_dataset import PanopticTrainDataset
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city
from vocabseg.engine import TrainConfig, train
from vocabseg.evaluation.panoptic import evaluate_panoptic
from vocabseg.models.fcclip import TextClassifier


def _random_text(num_classes: int, dim: int, seed: int = 0) -> TextClassifier:
    """One random unit embedding per class: names carry no meaning when CLIP is random."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)
    return TextClassifier(emb, [1] * num_classes, [[f"class {k}"] for k in range(num_classes)], "random")


def test_overfitting_two_images_reaches_high_pq(tmp_path):
    torch.set_num_threads(1)
    generate_city(tmp_path / "raw", split_sizes={"train": 2}, height=128, width=256, seed=3)
    prepare_dataset(tmp_path / "raw", tmp_path / "prepared", ("train",))
    gt_json = tmp_path / "prepared" / "cityscapes_panoptic_train.json"
    gt_folder = tmp_path / "prepared" / "cityscapes_panoptic_train"
    image_root = tmp_path / "raw" / "leftImg8bit" / "train"

    torch.manual_seed(0)
    model = build_model(ModelSpec(preset="tiny"), None)
    ids = vocab_ids(None)
    text = _random_text(len(ids), model.backbone.dim_latent)
    dataset = PanopticTrainDataset(gt_json, gt_folder, image_root, ids, transform=None)
    cfg = TrainConfig(iters=300, batch_size=2, lr=1e-3, clip_grad=1.0, checkpoint_every=1000, log_every=100)
    train(
        FinetuneTask(model, text, num_points=1024), dataset, cfg,
        out=tmp_path / "model.pt", state_dir=tmp_path / "ckpt", metrics_log=tmp_path / "metrics.jsonl",
    )

    images = image_list(gt_json, image_root)
    predict_panoptic(model, text, ids, ids, images, tmp_path / "pred.json", tmp_path / "pred", batch_size=2)
    result = evaluate_panoptic(gt_json, gt_folder, tmp_path / "pred.json", tmp_path / "pred")
    summary = {k: round(100 * result[k]["pq"], 1) for k in ("All", "Things", "Stuff")}
    print(json.dumps(summary))
    assert result["All"]["pq"] > 0.6, summary
    assert result["Things"]["pq"] > 0.4, summary
