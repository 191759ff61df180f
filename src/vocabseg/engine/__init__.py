"""Training engine shared by every approach: the trainer and its process-group helpers."""

from vocabseg.engine.trainer import PREEMPTED_EXIT_CODE, Preempted, TrainConfig, TrainTask, train

__all__ = ["PREEMPTED_EXIT_CODE", "Preempted", "TrainConfig", "TrainTask", "train"]
