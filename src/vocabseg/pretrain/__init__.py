"""Pretraining of the small stand-in models used by the default (laptop) study."""

from vocabseg.pretrain.clip_regions import pretrain_clip_regions, region_accuracy

__all__ = ["pretrain_clip_regions", "region_accuracy"]
