"""phan2022_regnet_transformer: RegNet + attention + transformer (Phan et al., "Expression
Classification using Concatenation of Deep Neural Network for the 3rd ABAW3 Competition",
CVPRW 2022).

Clips of 64 aligned faces at 112x112; RegNetY-1.6GF per frame (888-d average-pooled
feature), then per frame [feature, self-attention (2 heads of 64), pre-norm transformer
layer (2 heads of 64, MLP 512)] -> Dropout(0.5) -> Dense(8).

Clips (`data.clip_frames`): the paper chunks the frames that have both an expression label
and an image (`"labelled"`). Since clips are cut by frame number and never span a gap,
that cuts a video at every unlabelled or imageless frame, into short pieces each padded to
the clip length. The presets use `"all"` instead: clips run over every frame of a video,
frames without their own image read the nearest frame's, and those frames and the
unlabelled ones are labelled -1 (out of loss and metrics). The clips stay contiguous in
time, and the training set is larger: on the default demo data, `cpu_demo` cuts 300
training clips holding 9360 frames with `"all"`, 223 holding 4077 with `"labelled"`, and
scores a validation macro-F1 of 0.2492 (official files 0.2531) with `"all"` against 0.2041
(0.2026) with `"labelled"`; the majority class scores 0.0423.
"""

MODEL = {
    "schema": "abaw3",
    "tasks": ["expr"],
    "input_kind": "clips",
    "image_size": 112,
    "sequence_length": 64,
    "view": "aligned",
    "normalization": "backbone",
    "backbone": {"name": "regnety_1.6gf"},
    "neck": {"type": "avg"},
    "temporal": {"type": "concat_attention_transformer", "attention_heads": 2,
                 "attention_head_dim": 64, "transformer_layers": 1, "transformer_heads": 2,
                 "transformer_head_dim": 64, "transformer_mlp_dim": 512},
    "heads": {"expr": {"input_dropout": 0.5}},
}

PAPER = {
    "edition": "abaw3",
    "seed": 0,
    # ImageNet RegNetY-1.6GF (torchvision, converted: `affectkit convert-weights --name
    # imagenet_regnety_1.6gf`); a path, or None to train from scratch (with a warning).
    "weights": "imagenet_regnety_1.6gf",
    # False keeps the whole backbone fixed (only the sequence blocks and the classifier
    # train). trainable_from: the first backbone layer that trains, the ones before it
    # frozen (their BatchNorm in inference mode); null: all train. The paper's code trains
    # RegNet's stages 2-4 with the stem and stage 1 frozen (the backbone runs on every frame
    # at each step).
    "train_backbone": True,
    "trainable_from": "stage2_block1_a_conv",
    "model": {},
    # batch_size: clips per batch. clip_frames: "all" or "labelled" (see above).
    # train_stride: frames between training clip starts (None: no overlap); validation and
    # prediction clips never overlap. cache_frames: keep the decoded clips in memory.
    # augment: per frame, RandomHorizontalFlip(0.5) and ColorJitter(0.5, 0.25, 0.25) of the
    # authors' code (REFERENCE.md section 6; `affectkit.data.augmentation`).
    "data": {"batch_size": 16, "annotations": "per_task", "clip_frames": "all",
             "train_stride": None, "cache_frames": False, "augment": "phan2022"},
    # Focal loss (alpha 0.9, gamma 2) with label smoothing 0.1. form "authors": as the
    # authors' code computes it (`losses.MaskedFocalKLLoss`), focal_weight x the focal
    # term + kl_weight x the KL divergence from the smoothed labels; "keras": Keras' focal
    # cross-entropy (`losses.MaskedFocalLoss`, the weights unused).
    "losses": {"form": "authors", "focal_alpha": 0.9, "focal_gamma": 2.0,
               "label_smoothing": 0.1, "focal_weight": 0.8, "kl_weight": 0.2},
    # AdamW (lr 1e-3, weight decay 5e-5), 30 epochs, the learning rate reduced on plateau
    # of the validation macro-F1; the paper gives no plateau settings, these are PyTorch's
    # `ReduceLROnPlateau` defaults.
    "stages": {
        "train": {"epochs": 30,
                  "optimizer": {"name": "adamw", "learning_rate": 1e-3, "weight_decay": 5e-5},
                  "plateau": {"factor": 0.1, "patience": 10}},
    },
    "run": {"mixed_precision": False, "jit_compile": False, "backup_every": 50,
            "strategy": "auto"},
}

RUNS = {
    "paper": PAPER,
    # A tiny RegNet at 64 px over 32-frame clips: trains from scratch on the default demo
    # data (`affectkit demo-data`) in a few minutes on 2 CPU cores, every layer trained (a
    # random stem would stay random if frozen). The authors' form of the loss, as the paper.
    "cpu_demo": dict(
        PAPER,
        trainable_from=None,
        weights=None,
        model={"image_size": 64, "sequence_length": 32,
               "backbone": {"depths": [1, 1, 1, 1], "widths": [16, 32, 48, 64],
                            "group_width": 8, "stem_width": 16}},
        # Overlapping training clips (stride 8): 4x as many from the demo's videos.
        data=dict(PAPER["data"], batch_size=4, train_stride=8, cache_frames=True),
        stages={
            "train": {"epochs": 20,
                      "optimizer": {"name": "adamw", "learning_rate": 1e-3,
                                    "weight_decay": 5e-5},
                      "plateau": {"factor": 0.1, "patience": 3}},
        },
    ),
}

# `affectkit tune` search spaces (`affectkit.tuning.spaces`): the clip length, the heads of
# the self-attention and of the transformer layer, the focal loss's gamma and the dropout
# before the classifier. The demo's videos are 60 frames long: its clips are shorter.
SPACE = {
    "sequence_length": {"choices": [32, 64, 128], "keys": ["model.sequence_length"]},
    "attention_heads": {"choices": [1, 2, 4], "keys": ["model.temporal.attention_heads",
                                                       "model.temporal.transformer_heads"]},
    "focal_gamma": {"choices": [0.0, 1.0, 2.0, 3.0], "keys": ["losses.focal_gamma"]},
    "dropout": {"min": 0.1, "max": 0.6, "step": 0.1, "keys": ["model.heads.expr.input_dropout"]},
}

SPACES = {
    "paper": SPACE,
    "cpu_demo": dict(SPACE, sequence_length=dict(SPACE["sequence_length"], choices=[8, 16, 32])),
}
