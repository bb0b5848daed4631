"""zhang2020_mtanet: MTANet (Zhang & Gu, "Facial Affect Recognition in the Wild Using
Multi-Task Learning Convolutional Network", ABAW 2020).

SE-ResNet-50 at 112x112 (ResNeXt-50 and ResNeXt-50 + CBAM in the ablation), the
average/max neck (2 x 512) and one dense layer per task.
"""

MODEL = {
    "schema": "abaw1",
    "tasks": ["va", "expr", "au"],
    "input_kind": "images",
    "image_size": 112,
    "view": "aligned",
    "normalization": "backbone",
    "backbone": {"name": "senet50"},
    "neck": {"type": "avg_max", "width": 512, "dropout": 0.5},
    "heads": {},
}

PAPER = {
    "edition": "abaw1",
    "seed": 0,
    # VGGFace2 SENet-50 (keras-vggface, converted: `affectkit convert-weights --name
    # vggface2_senet50`); a path, or None to train from scratch (with a warning).
    "weights": "vggface2_senet50",
    "model": {},
    "data": {"batch_size": 32,  # not given by the paper
             "augment": True,  # not given by the paper
             "annotations": "per_task"},
    # Stage 1: the plain sum of the masked losses; stage 2: learned uncertainty weights
    # (paper eq. 5). The paper gives the learning rates and weight decays only; its weight
    # decay is PyTorch's, the coupled L2 term added to the gradient (`l2`), not Keras'
    # decoupled `weight_decay`.
    "stages": {
        "stage1_sum": {"epochs": 10,  # not given by the paper
                       "optimizer": {"name": "adam", "learning_rate": 1e-3, "l2": 1e-3}},
        "stage2_uncertainty": {"epochs": 5,  # not given by the paper
                               "uncertainty": True,
                               "optimizer": {"name": "sgd", "learning_rate": 1e-4,
                                             "momentum": 0.0,  # not given by the paper
                                             "l2": 5e-3}},
    },
    "run": {"mixed_precision": False, "jit_compile": False, "backup_every": 50,
            "strategy": "auto"},
}

RUNS = {
    "paper": PAPER,
    # Trains from scratch on the default demo data (`affectkit demo-data`: 96 videos x 60
    # frames) in about 4 minutes on 2 CPU cores.
    "cpu_demo": dict(
        PAPER,
        edition="abaw3",
        weights=None,  # a tiny backbone, trained from scratch
        model={"image_size": 64,
               "backbone": {"depths": [1, 1, 1, 1], "stem_width": 16,
                            "widths": [32, 64, 128, 256]},
               "neck": {"width": 64, "dropout": 0.2}},
        # The paper's coupled L2 (stage 2 its value), faster rates and momentum from scratch.
        stages={
            "stage1_sum": {"epochs": 12, "optimizer": {"name": "adam", "learning_rate": 1e-3,
                                                       "l2": 1e-4}},
            "stage2_uncertainty": {"epochs": 2, "uncertainty": True,
                                   "optimizer": {"name": "sgd", "learning_rate": 1e-3,
                                                 "momentum": 0.9, "l2": 5e-3}},
        },
    ),
}

# `affectkit tune` search spaces (`affectkit.tuning.spaces`), from the paper's ablation:
# the backbone (SE-ResNet-50, ResNeXt-50, ResNeXt-50 + CBAM), the uncertainty stage on or
# off (the plain sum of the losses against learned weights) and both learning rates.
SPACE = {
    "backbone": {"choices": ["senet50", "resnext50", "resnext50_cbam"],
                 "keys": ["model.backbone.name"]},
    "stage2": {"choices": {"on": True, "off": False}, "keys": ["stages.stage2_uncertainty"]},
    "stage1_lr": {"min": 1e-4, "max": 1e-2, "sampling": "log",
                  "keys": ["stages.stage1_sum.optimizer.learning_rate"]},
    "stage2_lr": {"min": 1e-5, "max": 1e-2, "sampling": "log",
                  "keys": ["stages.stage2_uncertainty.optimizer.learning_rate"]},
}

SPACES = {"paper": SPACE, "cpu_demo": SPACE}
