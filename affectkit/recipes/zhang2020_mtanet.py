"""zhang2020_mtanet: MTANet (Zhang & Gu, ABAW 2020), trained in two stages.

What the paper adds to the shared run: its losses (1 - mean CCC, binary and categorical
cross-entropy, all masked) and two stages, the plain sum of the losses (Adam), then learned
uncertainty weights (SGD), each with the paper's (PyTorch) weight decay, the coupled L2
term of the optimizer spec's `l2` (`affectkit.training.optimizers.CoupledL2`). Network and
settings: `affectkit.presets.zhang2020_mtanet`.
"""

from affectkit import losses
from affectkit.recipes.base import Recipe


class MTANetRecipe(Recipe):
    """Zhang & Gu, "Facial Affect Recognition in the Wild Using Multi-Task Learning
    Convolutional Network" (ABAW 2020)."""

    name = "zhang2020_mtanet"

    def build_losses(self, stage, train_labels):
        return {
            "va": losses.MaskedCCCLoss(),
            "expr": losses.MaskedCategoricalCrossentropy(),
            "au": losses.MaskedBinaryCrossentropy(),
        }
