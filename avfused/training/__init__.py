"""Training: the loop (loop.py), the loss (losses.py), augmentations (augment.py), the learning-rate
schedule (schedule.py), data selection and in-memory decoding (data.py), many processes
(distributed.py) and Ctrl-C at a whole step (interrupt.py)."""

from avfused.training.augment import AugmentConfig
from avfused.training.loop import TrainConfig, Trainer

__all__ = ["AugmentConfig", "TrainConfig", "Trainer"]
