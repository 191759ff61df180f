"""Training losses of Mask2Former / FC-CLIP: point sampling, Hungarian matcher, set criterion."""

from .criterion import LOSS_STREAM, SetCriterion, build_criterion, dice_loss, sigmoid_ce_loss
from .matcher import MATCHER_STREAM, HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost
from .point_sampling import (
    calculate_uncertainty,
    derive_seed,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    random_points,
    seeded_generator,
)

__all__ = [
    "SetCriterion",
    "build_criterion",
    "HungarianMatcher",
    "dice_loss",
    "sigmoid_ce_loss",
    "batch_dice_cost",
    "batch_sigmoid_ce_cost",
    "point_sample",
    "calculate_uncertainty",
    "get_uncertain_point_coords_with_randomness",
    "random_points",
    "derive_seed",
    "seeded_generator",
    "LOSS_STREAM",
    "MATCHER_STREAM",
]
