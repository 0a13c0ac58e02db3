"""How much of Yu et al. 2020's protocol a ``mammoflow reproduce yu2020`` run does (``--budget``).

- ``paper``: the paper's counts (500 random 72x72 patches per normal ROI, 2,000 per tumour ROI; Sec. 3.2), 5
  epochs as in the released code, every cell of Tables 1-3 (Fusion1/Fusion2 x VGG16/VGG19 x the five branch
  subsets, plus the VGG16/VGG19 GAP baselines) through the ``yu2020_branches`` sweep. Days on a CPU; hours on a GPU.
- ``fast``: one cell (VGG16 Fusion1 over all five blocks, the paper's best accuracy), 10 patches per normal ROI and
  40 per tumour ROI (1/50 of the paper's counts, same 1:4 ratio), one epoch. Checks the whole path on real data in
  minutes; its numbers are not the paper's protocol and the report says so.
- ``cpu``: our from-scratch model (``yu2020_cpu`` train preset) with test-time augmentation and a decision
  threshold fitted on the validation split; no ImageNet weights needed.
- ``cpu-pretrained``: the papers' transfer-learning protocols on the installed pretrained weights (no network):
  Yu's VGG16 Fusion1 and Fusion2 on ``hed-bsds500`` (frozen convs with the head cache, then fine-tuning) and
  Jaamour's MobileNetV2 on ``torchvision-imagenet`` (frozen, then unfrozen at 1e-5); every choice on validation
  (:mod:`mammoflow.reproduce.pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mammoflow.errors import ConfigError

BudgetName = Literal["fast", "paper", "cpu", "cpu-pretrained"]
ALL_BRANCHES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Cell:
    """One model of the paper's tables: a registered model name and its fusion branches (None: a GAP baseline)."""

    model: str
    branches: tuple[int, ...] | None = ALL_BRANCHES

    @property
    def name(self) -> str:
        if self.branches is None:
            return self.model
        return f"{self.model}_b{''.join(str(b) for b in self.branches)}"

    def overrides(self) -> dict[str, Any]:
        """Dotted train-config overrides that select this cell on the ``yu2020`` preset."""
        if self.branches is None:
            return {"model.name": self.model, "model.params": {}}
        return {"model.name": self.model, "model.params.branches": list(self.branches)}


@dataclass(frozen=True)
class Budget:
    """One ``--budget``: the train preset, patch counts, epochs and which cells are trained."""

    name: BudgetName
    preset: str
    description: str
    patches_per_roi: dict[str, int] | None = None  # None: the preset's own
    epochs: int | None = None  # None: the preset's own
    cells: tuple[Cell, ...] = ()
    sweep: str | None = None  # a sweep spec trains the cells (paper budget)
    faithful: bool = True  # whether the numbers follow the paper's protocol
    extra: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.patches_per_roi is not None:
            out["data.patches_per_roi"] = dict(self.patches_per_roi)
        if self.epochs is not None:
            out["schedule.phases"] = [{"epochs": self.epochs, "learning_rate": 1.0e-4, "trainable_backbone": False}]
        return out


BUDGETS: dict[str, Budget] = {
    "fast": Budget(
        name="fast", preset="yu2020", faithful=False,
        description="one cell (VGG16 Fusion1, blocks 1-5), 10 patches per normal ROI and 40 per tumour ROI "
                    "(1/50 of the paper's 500 / 2,000), one epoch",
        patches_per_roi={"normal": 10, "tumour": 40}, epochs=1, cells=(Cell("vgg16_fusion1"),)),
    "paper": Budget(
        name="paper", preset="yu2020",
        description="every cell of Tables 1-3 (Fusion1/Fusion2 x VGG16/VGG19 x branch subsets [5] .. [1-5], and "
                    "the VGG16/VGG19 baselines), 500 patches per normal ROI and 2,000 per tumour ROI, 5 epochs "
                    "(the released code), through the yu2020_branches sweep",
        sweep="yu2020_branches"),
    "cpu": Budget(
        name="cpu", preset="yu2020_cpu", faithful=False,
        description="our compact CNN trained from scratch on CPU (train preset yu2020_cpu), with test-time "
                    "augmentation and a decision threshold fitted on the validation split"),
    "cpu-pretrained": Budget(
        name="cpu-pretrained", preset="yu2020", faithful=False,
        description="the papers' transfer-learning protocols on CPU: Yu's VGG16 Fusion1 and Fusion2 on HED (BSDS500 "
                    "edges, VGG16 initialised from ImageNet) with frozen convs and the head cache, then fine-tuned; "
                    "Jaamour's MobileNetV2 on torchvision ImageNet weights (frozen, then unfrozen at 1e-5) on the "
                    "whole ROI upscaled to 144x144; thresholds, stages and the ensemble chosen on validation"),
}

#: Named pretrained weights that pick ``cpu-pretrained`` when ``--budget`` is left out.
PRETRAINED_WEIGHTS = ("hed-bsds500", "torchvision-imagenet")


def default_budget(weights: str | None) -> str:
    """The budget when ``--budget`` is not given: ``cpu-pretrained`` for its named weights, else ``fast``."""
    return "cpu-pretrained" if weights in PRETRAINED_WEIGHTS else "fast"


def get_budget(name: str) -> Budget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise ConfigError(f"unknown budget {name!r}. Fix: use one of {', '.join(BUDGETS)}") from None
