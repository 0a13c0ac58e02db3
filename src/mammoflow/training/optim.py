"""Optimisers with per-layer learning rates (Xi et al. 2018: the new head learns at 20x the backbone's rate)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="mammoflow")
class HeadScaledSGD(keras.optimizers.SGD):
    """SGD (with momentum) whose learning rate is ``head_multiplier`` times larger for the head's variables.

    ``head_paths`` are variable-path prefixes (layer names such as ``"predictions"``); every other variable
    learns at the base rate. Saved with the model, so a resumed run keeps the same rates.
    """

    def __init__(self, head_multiplier: float = 20.0, head_paths: list[str] | tuple[str, ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.head_multiplier = float(head_multiplier)
        self.head_paths = tuple(head_paths)

    def _is_head(self, variable) -> bool:
        path = getattr(variable, "path", variable.name)
        return any(path == p or path.startswith(p + "/") for p in self.head_paths)

    def update_step(self, gradient, variable, learning_rate):
        if self._is_head(variable):
            learning_rate = keras.ops.multiply(learning_rate, self.head_multiplier)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "head_multiplier": self.head_multiplier, "head_paths": list(self.head_paths)}
