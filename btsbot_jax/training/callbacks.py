"""Epoch-level Keras callbacks on the validation loss, re-implemented with Keras' exact update rules: the paper
trains with ReduceLROnPlateau and EarlyStopping (Rehemtulla et al. 2024, Table 3). Their state is plain data, stored
in every checkpoint's metadata so that a resumed run takes the same decisions."""

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

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record one epoch; return True when training must stop after it."""
        self.wait += 1
        if val_loss - self.min_delta < self.best:
            self.best = float(val_loss)
            self.best_epoch = int(epoch)
            self.wait = 0
            return False
        return self.wait >= self.patience and epoch > 0
