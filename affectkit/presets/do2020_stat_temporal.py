"""do2020_stat_temporal: the multi-task temporal statistical model (Do, Nguyen-Quynh & Kim,
"Affective Expression Analysis in-the-wild using Multi-Task Temporal Statistical Deep
Learning Model", ABAW 2020).

The temporal model (Fig. 2) over a feature cache of the face model: the current frame's
2048-d feature and the class probabilities of its window of s = 16 previous frames, STAT +
BiLSTM (1024 units), fused with the current frame; branches Dropout-Dense(512)-Dropout-
Dense(512)-Dropout-output for expressions, valence, arousal (tanh each) and the 5-vector.
Table I's six models are overrides: `temporal.stat`, `temporal.lstm` (both off and a
window of 1 for the image models) and the tasks (`["expr"]` without the VA branches); the
recipe's `variant` sets them. `feature_inputs`: `feature` is the face model's feature width
(the last stage of its backbone), `probabilities` is `[s, classes]`.
"""

BRANCH = {"input_dropout": 0.1, "hidden_units": [512, 512], "dropout": 0.1}

MODEL = {
    "schema": "abaw1",
    "tasks": ["va", "expr", "va_vector"],
    "input_kind": "features",
    "feature_inputs": {"feature": [2048], "probabilities": [16, 7]},
    "normalization": None,
    "temporal": {"type": "stat_bilstm", "stat": True, "lstm": True, "lstm_units": 1024,
                 "lstm_layers": 1, "lstm_dropout": 0.1},
    "heads": {
        "expr": dict(BRANCH),
        "va": dict(BRANCH, activation="tanh", separate_dimensions=True),
        "va_vector": dict(BRANCH),
    },
}

PAPER = {
    "edition": "abaw1",  # ABAW1 tracks 1 (VA) and 2 (EXPR)
    "seed": 0,
    # Table I model: emotion_image (1), emotion_va_image (2), emotion_frame (3),
    # emotion_va_frame (4), emotion_frame_lstm (5), emotion_va_frame_lstm (6), or its number.
    "variant": "emotion_va_frame_lstm",
    "model": {},
    # Phase (a), the face feature model (Sec. II-B): VGGFace2 ResNet-50 + a 7-class softmax,
    # frozen before `trainable_from`, fine-tuned on class-balanced frames for expressions;
    # reused from `dir` (or `model_file`) when there, then run once over every frame into
    # the feature cache (`cache`, default `<dir>/cache`) that the variants share.
    "face": {
        "image_size": 224,
        "backbone": {},  # vggface2_resnet50 sizes; {} is ResNet-50, depths (3, 4, 6, 3)
        "trainable_from": "conv4_1_1x1_reduce",
        # VGGFace2 ResNet-50 (`affectkit convert-weights --name vggface2_resnet50`, or a
        # keras-vggface .h5 itself), a do2020_face_model weights file, or None.
        "weights": "vggface2_resnet50",
        "epochs": 5,  # not given in the paper
        "optimizer": {"name": "adam", "learning_rate": 1e-4},  # "0.0001 for all models"
        "batch_size": 32,
        "augment": True,
        "extract_batch_size": 64,
        "dir": None,  # default <run>/face
        "model_file": None,  # a trained face feature model (.keras): skips the training
        "cache": None,  # default <dir>/cache (beside `model_file` when given)
        # What makes the face outputs the temporal model trains on (REFERENCE 6: never the
        # face model's own training frames). "out_of_fold": one face model per fold of the
        # training videos (`folds`), trained on the other folds, makes its fold's outputs
        # and those of a share of the other videos. "pretrained": a face model trained on
        # other data (`model_file`, or `weights` of a whole face model) used as it is, the
        # paper's setup (AffectNet + RAF-DB, Sec. III-A), for which out-of-fold stands in
        # here. "in_sample": one face model for every frame, its own training frames too
        # (leaky; kept to measure the leak).
        "training_outputs": "out_of_fold",
        "folds": 5,
    },
    # Phase (b), the temporal model on windows of the cache; targets class-balanced.
    "data": {"batch_size": 32, "balance": "expr", "annotations": "per_task"},
    # Eq. 4: w1 CE + w2 (1 - CCC_a) + w3 (1 - CCC_v) + w4 MSE, with w2 = w3 = `ccc`.
    "loss_weights": {"expr": 1.0, "ccc": 0.4, "mse": 0.2},
    "stages": {
        "temporal": {"epochs": 10, "optimizer": {"name": "adam", "learning_rate": 1e-4}},
    },
    "run": {"mixed_precision": False, "jit_compile": False, "backup_every": 50,
            "strategy": "auto"},
}

RUNS = {
    "paper": PAPER,
    # Trains from scratch on the default demo data (`affectkit demo-data --edition abaw1`)
    # in 8 CPU minutes (measured on 2 shared cores: 8.1, 12.4 wall; 4.4 CPU minutes with
    # face.training_outputs=in_sample). Without pretrained weights every layer of the tiny
    # face models is trained.
    "cpu_demo": dict(
        PAPER,
        model={"feature_inputs": {"feature": [256]}, "temporal": {"lstm_units": 64},
               "heads": {"expr": {"hidden_units": [64, 64]},
                         "va": {"hidden_units": [64, 64]},
                         "va_vector": {"hidden_units": [64, 64]}}},
        face=dict(PAPER["face"], image_size=64, trainable_from=None, weights=None, epochs=8,
                  # 3 face models, each on 2/3 of the training videos.
                  folds=3,
                  backbone={"depths": [1, 1, 1, 1], "stem_width": 16,
                            "widths": [32, 64, 128, 256]},
                  optimizer={"name": "adam", "learning_rate": 1e-3}),
        stages={
            "temporal": {"epochs": 8, "optimizer": {"name": "adam", "learning_rate": 1e-3}},
        },
    ),
}

# `affectkit tune` search spaces (`affectkit.tuning.spaces`), from the paper's ablation
# (Table I): the window s of previous frames, BiLSTM layers, the VA branches
# on or off (Table I models 6 and 5) and the loss weights of eq. 4.
SPACE = {
    "window": {"choices": [1, 16, 32], "keys": ["model.feature_inputs.probabilities.0"]},
    "lstm_layers": {"choices": [1, 2], "keys": ["model.temporal.lstm_layers"]},
    "va_branches": {"choices": {"on": "emotion_va_frame_lstm", "off": "emotion_frame_lstm"},
                    "keys": ["variant"]},
    "ccc_weight": {"min": 0.1, "max": 1.0, "keys": ["loss_weights.ccc"]},
    "mse_weight": {"min": 0.05, "max": 0.5, "keys": ["loss_weights.mse"]},
}

SPACES = {"paper": SPACE, "cpu_demo": SPACE}
