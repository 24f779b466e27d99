"""Epoch-level rules on the validation loss. v1: Keras callbacks re-implemented with Keras' exact update rules (the
paper trains with ReduceLROnPlateau and EarlyStopping, Rehemtulla et al. 2024, Table 3). v2 (Rehemtulla et al.
2025): a warm-up + cosine learning-rate schedule per epoch and a keep-best / early-stopping rule on a 0.5% relative
improvement. Their state is plain data, stored in every checkpoint's metadata so that a resumed run takes the same
decisions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class Plateau:
    """tf.keras.callbacks.ReduceLROnPlateau(monitor='val_loss', mode='min', cooldown=0) update rule."""

    lr: float
    factor: float = 0.4
    patience: int = 20
    min_lr: float = 5e-10
    min_delta: float = 1e-4
    best: float = math.inf
    wait: int = 0

    def update(self, val_loss: float) -> float:
        """Record one epoch's val_loss; return the learning rate for the next epoch."""
        if val_loss < self.best - self.min_delta:
            self.best = float(val_loss)
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                if np.float32(self.lr) > np.float32(self.min_lr):
                    self.lr = max(self.lr * self.factor, self.min_lr)
                    self.wait = 0
        return self.lr


@dataclasses.dataclass
class EarlyStopping:
    """tf.keras.callbacks.EarlyStopping(monitor='val_loss', mode='min', baseline=None) update rule."""

    patience: int = 75
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = -1
    wait: int = 0

    def improves(self, val_loss: float) -> bool:
        """Whether an epoch with this val_loss is kept as the best model (Keras ModelCheckpoint(save_best_only=True):
        strictly lower than the best so far)."""
        return val_loss < self.best

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record one epoch; return True when training must stop after it."""
        self.wait += 1
        if val_loss - self.min_delta < self.best:
            self.best = float(val_loss)
            self.best_epoch = int(epoch)
            self.wait = 0
            return False
        return self.wait >= self.patience and epoch > 0


@dataclasses.dataclass
class WarmupCosine:
    """BTSbot v2's per-epoch learning rate (Rehemtulla et al. 2025; upstream `train.py`: torch SequentialLR of
    LinearLR(start_factor=0.01, total_iters=warmup_epochs) and CosineAnnealingLR(T_max=epochs - warmup_epochs,
    eta_min=0.01 * lr), stepped once per epoch): a linear warm-up from `start_factor` x lr, then a cosine from lr
    down to `final_factor` x lr, reached at epoch `num_epochs`. Stateless, so a resumed run gets the same values."""

    lr: float
    num_epochs: int
    warmup_epochs: int = 2
    start_factor: float = 0.01
    final_factor: float = 0.01

    def lr_at(self, epoch: int) -> float:
        """The learning rate of (0-based) epoch `epoch`."""
        w = int(self.warmup_epochs)
        if epoch < w:
            return self.lr * (self.start_factor + (1.0 - self.start_factor) * epoch / w)
        t_max = max(1, int(self.num_epochs) - w)
        eta_min = self.lr * self.final_factor
        return eta_min + (self.lr - eta_min) * (1.0 + math.cos(math.pi * (epoch - w) / t_max)) / 2.0


@dataclasses.dataclass
class RelativeImprovement:
    """BTSbot v2's keep-best and early-stopping rule (Rehemtulla et al. 2025; upstream `train.py`): an epoch improves
    when (1 + min_rel_delta) * val_loss < the lowest val_loss of all earlier epochs (0.5% by default); training stops
    after `patience` epochs in a row without improvement. Only improving epochs are kept as the best model."""

    patience: int = 5
    min_rel_delta: float = 0.005
    best: float = math.inf  # lowest val_loss so far (whether or not that epoch counted as an improvement)
    best_epoch: int = -1  # the last improving epoch: the model that is kept
    wait: int = 0

    def improves(self, val_loss: float) -> bool:
        return (1.0 + self.min_rel_delta) * val_loss < self.best

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record one epoch; return True when training must stop after it."""
        improved = self.improves(val_loss)
        self.best = float(min(self.best, val_loss))
        if improved:
            self.best_epoch = int(epoch)
            self.wait = 0
            return False
        self.wait += 1
        return self.wait >= self.patience
