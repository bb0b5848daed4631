"""phan2022_regnet_transformer: RegNet + attention + transformer encoder (Phan et al., ABAW3 2022).

What the paper adds to the shared run: its loss (focal loss, alpha 0.9 and gamma 2, with
label smoothing 0.1, masked), the learning rate reduced on plateau of the validation score
(the stage's `plateau`), and the option of a fixed backbone (`train_backbone`). The model
is a clip model (`AffectModel` of `input_kind="clips"`: `frames` `(B, T, H, W, 3)` RGB in
[0, 1] -> `expr` `(B, T, classes)`), so the shared run trains and predicts it on clips of
consecutive frames (`affectkit.data.clips`: `data.clip_frames`, `data.train_stride`,
`data.cache_frames`). Network, settings and the choice of clip frames:
`affectkit.presets.phan2022_regnet_transformer`.
"""

import keras

from affectkit import losses
from affectkit.recipes.base import Recipe


class RegNetTransformerRecipe(Recipe):
    """Phan, Huynh, Nguyen & Kim, "Expression Classification using Concatenation of Deep
    Neural Network for the 3rd ABAW3 Competition" (CVPRW 2022)."""

    name = "phan2022_regnet_transformer"

    def build_losses(self, stage, train_labels):
        """Focal loss with label smoothing (`config["losses"]`), -1 labels masked."""
        settings = self.config["losses"]
        return {"expr": losses.MaskedFocalLoss(alpha=settings["focal_alpha"],
                                               gamma=settings["focal_gamma"],
                                               label_smoothing=settings["label_smoothing"])}

    def stage_callbacks(self, stage):
        """Reduce-on-plateau of the validation score (`val_score`, the macro-F1), with the
        stage's `plateau` settings (`factor`, `patience`); none without them."""
        plateau = self.config["stages"][stage].get("plateau")
        if not plateau:
            return []
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_score", mode="max",
                                                  factor=plateau["factor"],
                                                  patience=plateau["patience"], verbose=1)]

    def build_model(self):
        """The preset's network; with `train_backbone` False its backbone is frozen (its
        BatchNorm then runs in inference mode, as Keras freezes layers)."""
        model = super().build_model()
        model.backbone.trainable = bool(self.config.get("train_backbone", True))
        return model
