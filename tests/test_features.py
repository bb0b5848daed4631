"""Feature cache: extraction with a tiny model, resume after an interruption, nearest-frame
fill, combining caches, errors, and the `extract-features` command.

Reference features come from `cv2.imread` and `model.predict` on the images, not from the
cache code.
"""

import json
import os

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from affectkit import cli
from affectkit.data.affwild2 import FrameIndex
from affectkit.features.cache import CacheWriter, FeatureCache, feature_matrix, nearest_positions
from affectkit.features.extraction import extract_features, video_frame_images

SIZE = 112  # the demo_root fixture's frames


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu")(inputs)
    feature = keras.layers.GlobalAveragePooling2D(name="feature")(x)
    probabilities = keras.layers.Dense(3, activation="softmax", name="probabilities")(feature)
    return keras.Model(inputs, {"feature": feature, "probabilities": probabilities}, name="tiny")


@pytest.fixture(scope="module")
def train_index(demo_root):
    return FrameIndex.from_affwild2(demo_root, "abaw3", "train")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, model, train_index):
    out = str(tmp_path_factory.mktemp("cache") / "tiny")
    extract_features(model, train_index, out, batch_size=16, verbose=0)
    return out


def reference_features(model, demo_root, video):
    folder = os.path.join(demo_root, "cropped_aligned", video)
    names = sorted(os.listdir(folder))
    images = np.stack([cv2.imread(os.path.join(folder, n))[..., ::-1] for n in names])
    out = model.predict(images.astype(np.float32) / 255.0, verbose=0)
    return np.array([int(n[:-4]) for n in names]), out


def test_extraction_stores_every_frame_image(cache_dir, model, demo_root, train_index):
    cache = FeatureCache(cache_dir)
    assert cache.videos == train_index.videos
    assert cache.dims == {"feature": 4, "probabilities": 3}
    with open(os.path.join(cache_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["format"] == "affectkit-feature-cache"
    assert manifest["image_size"] == [SIZE, SIZE] and manifest["normalization"] == "unit"
    assert manifest["model"]["name"] == "tiny" and manifest["modality"] == "visual"
    for video in cache.videos:
        frames, expected = reference_features(model, demo_root, video)
        stored = cache.load(video)
        np.testing.assert_array_equal(stored["frames"], frames)
        for name in ("feature", "probabilities"):
            np.testing.assert_allclose(stored[name], expected[name], atol=1e-5, rtol=1e-5)
    # Frames without an image (the demo data has some) are not stored.
    frames_with_image = train_index.frames[train_index.frames["has_image"]]
    assert sum(len(cache.load(v)["frames"]) for v in cache.videos) == len(frames_with_image)


def test_features_for_fills_frames_without_image(cache_dir, train_index):
    cache = FeatureCache(cache_dir)
    got = cache.features_for(train_index)
    frames = train_index.frames
    assert got["feature"].shape == (len(frames), 4)
    missing = np.flatnonzero(~frames["has_image"].to_numpy())
    assert len(missing)
    for row in missing:
        video, frame = frames["video"].iloc[row], frames["frame"].iloc[row]
        stored = cache.load(video)
        distance = np.abs(stored["frames"] - frame)
        nearest = int(np.flatnonzero(distance == distance.min())[0])  # earlier on a tie
        np.testing.assert_array_equal(got["feature"][row], stored["feature"][nearest])


def test_nearest_frame_fill_by_hand(tmp_path):
    writer = CacheWriter(tmp_path / "c", {"modality": "visual", "model": {"name": "h"}})
    values = np.array([[20.0], [50.0], [90.0]], np.float32)
    writer.write("vid", [2, 5, 9], {"f": values})
    cache = FeatureCache(tmp_path / "c")
    table = pd.DataFrame({"video": ["vid"] * 11, "frame": np.arange(1, 12)})
    got = cache.features_for(table)["f"][:, 0]
    # frame: 1  2  3  4  5  6  7 (tie 5/9 -> 5)  8  9 10 11
    assert got.tolist() == [20, 20, 20, 50, 50, 50, 50, 90, 90, 90, 90]
    np.testing.assert_array_equal(nearest_positions([2, 5, 9], [7, 3, 12, 0]),
                                  [1, 0, 2, 0])


def test_resume_skips_done_videos_after_a_deleted_file(tmp_path, cache_dir, model, train_index):
    out = str(tmp_path / "cache")
    first = extract_features(model, train_index, out, batch_size=16, verbose=0)
    assert first["videos_done"] == len(train_index.videos)
    video = train_index.videos[1]
    os.remove(os.path.join(out, video + ".npz"))
    stamps = {v: os.stat(os.path.join(out, v + ".npz")).st_mtime_ns
              for v in train_index.videos if v != video}
    second = extract_features(model, train_index, out, batch_size=16, verbose=0)
    assert second["videos_done"] == 1 and second["videos_skipped"] == len(stamps)
    for v, stamp in stamps.items():
        assert os.stat(os.path.join(out, v + ".npz")).st_mtime_ns == stamp
    again = FeatureCache(out).load(video)
    np.testing.assert_allclose(again["feature"],
                               FeatureCache(cache_dir).load(video)["feature"], atol=1e-6)


def test_interrupted_extraction_leaves_whole_files_and_resumes(tmp_path, model, train_index,
                                                               cache_dir):
    out = str(tmp_path / "cache")
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated interruption")
        return model.predict_on_batch(batch)

    with pytest.raises(KeyboardInterrupt):
        extract_features(flaky, train_index, out, batch_size=16, description="tiny",
                                  verbose=0)
    left = sorted(os.listdir(out))
    assert not [name for name in left if name.endswith(".partial")]
    done = [name[:-4] for name in left if name.endswith(".npz")]
    assert 0 < len(done) < len(train_index.videos)
    summary = extract_features(model, train_index, out, batch_size=16, verbose=0)
    assert summary["videos_skipped"] == len(done)
    assert summary["videos_done"] == len(train_index.videos) - len(done)
    reference = FeatureCache(cache_dir)
    for video in train_index.videos:
        np.testing.assert_allclose(FeatureCache(out).load(video)["probabilities"],
                                   reference.load(video)["probabilities"], atol=1e-6)


def test_resume_with_other_settings_is_refused(cache_dir, model, train_index):
    with pytest.raises(ValueError, match="normalization"):
        extract_features(model, train_index, cache_dir, normalization="imagenet",
                                  verbose=0)


def test_caches_combine_as_modalities(tmp_path, cache_dir, train_index):
    visual = FeatureCache(cache_dir)
    writer = CacheWriter(tmp_path / "other", {"modality": "audio",
                                                       "model": {"name": "fake"}})
    for video in train_index.videos:
        n = int((train_index.frames["video"] == video).sum())
        frames = np.arange(1, n + 1)
        writer.write(video, frames, {"loud": np.stack([frames, -frames], 1).astype(np.float32)})
    audio = FeatureCache(tmp_path / "other")
    combined = feature_matrix(train_index, [visual, audio])
    assert combined.shape == (len(train_index), 4 + 3 + 2)
    own = visual.features_for(train_index)
    np.testing.assert_array_equal(combined[:, :4], own["feature"])
    np.testing.assert_array_equal(combined[:, 4:7], own["probabilities"])
    np.testing.assert_array_equal(combined[:, 7], train_index.frames["frame"].to_numpy())
    picked = feature_matrix(train_index, [(visual, ["probabilities"]), audio])
    np.testing.assert_array_equal(picked[:, :3], own["probabilities"])
    with pytest.raises(ValueError, match="aligned to the index rows"):
        feature_matrix(train_index, np.zeros((3, 2)))


def test_window_dataset_reads_from_caches(cache_dir, train_index):
    from affectkit.data.sequences import window_dataset

    cache = FeatureCache(cache_dir)
    ds = window_dataset(train_index, {"probabilities": (cache, "probabilities"),
                                      "feature": [cache]},
                        windowed="probabilities", window=8, batch_size=16, tasks=("expr",))
    x, y = next(iter(ds))
    assert x["probabilities"].shape == (16, 8, 3) and x["feature"].shape == (16, 7)
    assert y["expr"].shape == (16,)


def test_memory_mapped_features_equal_the_loaded_ones(tmp_path, cache_dir, model,
                                                    train_index):
    """`MappedFeatures` reads rows from the memory-mapped `.npz` files: the same values as
    `feature_matrix` (float32 and float16 caches, nearest-frame fill, an array part), and
    the window and segment datasets built on it give the same batches."""
    from affectkit.data.sequences import segment_dataset, window_dataset
    from affectkit.features.cache import MappedFeatures

    index = FrameIndex.from_affwild2(train_index.root, "abaw3", "train",
                                     fill_missing_images=True)
    half = str(tmp_path / "half")
    extract_features(model, train_index, half, batch_size=16, dtype="float16", verbose=0)
    extra = np.random.default_rng(0).random((len(index), 2), np.float32)
    for sources in ([FeatureCache(cache_dir), extra], (FeatureCache(half), ["feature"])):
        mapped = MappedFeatures(index, sources)
        expected = feature_matrix(index, sources)
        assert mapped.shape == expected.shape
        rows = np.random.default_rng(1).integers(0, len(index), 50)
        np.testing.assert_array_equal(mapped[rows], expected[rows])
        # What it holds per row: a video id and a position per cache, not the features.
        held = mapped.codes.nbytes + sum(p[2].nbytes for p in mapped.parts
                                         if isinstance(p, tuple))
        assert held == 8 * len(index)
    cache = FeatureCache(cache_dir)
    inputs = {"probabilities": (cache, "probabilities"), "feature": [cache]}
    for build, options in ((window_dataset, dict(windowed="probabilities", window=8)),
                           (segment_dataset, dict(length=8))):
        batches = [list(build(index, inputs, batch_size=16, tasks=("expr",),
                              missing_images="fill", mapped=mapped, **options))
                   for mapped in (False, True)]
        assert len(batches[0]) == len(batches[1]) > 1
        for (x0, y0), (x1, y1) in zip(*batches):
            for name in inputs:
                np.testing.assert_array_equal(x0[name], x1[name])
            np.testing.assert_array_equal(y0["expr"], y1["expr"])


def test_unknown_video_names_the_video(cache_dir, train_index):
    table = pd.DataFrame({"video": ["not_there"], "frame": [1]})
    with pytest.raises(ValueError, match="not_there"):
        FeatureCache(cache_dir).features_for(table)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        FeatureCache(os.path.dirname(cache_dir) + "/nothing")


def test_cli_extract_features_round_trip(tmp_path, demo_root, capsys):
    model = tiny_model(seed=1)
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    out = str(tmp_path / "cli_cache")
    args = ["extract-features", "--model", path, "--layer", "feature", "--data", demo_root,
            "--out", out, "--edition", "abaw3", "--split", "val", "--batch-size", "32"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "videos_done" in printed and "'features': 4" in printed
    cache = FeatureCache(out)
    val = FrameIndex.from_affwild2(demo_root, "abaw3", "val")
    assert cache.videos == val.videos and cache.dims == {"features": 4}
    frames, expected = reference_features(model, demo_root, val.videos[0])
    np.testing.assert_allclose(cache.load(val.videos[0])["features"], expected["feature"],
                               atol=1e-5, rtol=1e-5)
    assert cli.main(args) == 0
    assert "videos_skipped: 2" in capsys.readouterr().out


def test_cli_extract_features_backbone_name(tmp_path, demo_root, capsys):
    out = str(tmp_path / "regnet")
    code = cli.main(["extract-features", "--model", "regnetx_400mf", "--data", demo_root,
                     "--out", out, "--image-size", "32", "--split", "val", "--edition",
                     "abaw3"])
    assert code == 0, capsys.readouterr().err
    cache = FeatureCache(out)
    assert cache.dims == {"features": 400}
    assert cache.manifest["model"]["backbone"] == "regnetx_400mf"
    assert cache.manifest["image_size"] == [32, 32]


def test_cli_extract_features_errors(tmp_path, demo_root, capsys):
    code = cli.main(["extract-features", "--model", "no_such_model", "--data", demo_root,
                     "--out", str(tmp_path / "x")])
    assert code == 2
    assert "unknown --model 'no_such_model'" in capsys.readouterr().err
    code = cli.main(["extract-features", "--model", str(tmp_path / "missing.keras"),
                     "--data", demo_root, "--out", str(tmp_path / "x")])
    assert code == 2
    assert "missing.keras" in capsys.readouterr().err
    code = cli.main(["extract-features", "--model", "regnetx_400mf", "--data", demo_root,
                     "--out", str(tmp_path / "x"), "--split", "train"])
    assert code == 2
    assert "--edition" in capsys.readouterr().err


# ------------------------------------------------------------------------- views, frame listing


def mean_rgb(batch):
    """A model as a callable: the mean RGB of each image, `(B, 3)`."""
    import tensorflow as tf

    return {"mean": tf.reduce_mean(batch, axis=(1, 2))}


def write_two_views(root, rng, aligned=range(1, 7), cropped=(1, 2, 3, 5, 6), size=16):
    """One video `v`, 6 frames with an expression label; JPEGs of `aligned` frames in
    `cropped_aligned/v`, of `cropped` frames in `cropped/v`."""
    from affectkit.data.affwild2 import write_annotation_file

    write_annotation_file(os.path.join(root, "EXPR_Classification_Challenge", "Train_Set",
                                       "v.txt"), "expr", np.arange(6), "abaw3")
    for view, numbers in (("cropped_aligned", aligned), ("cropped", cropped)):
        os.makedirs(os.path.join(root, view, "v"), exist_ok=True)
        for k in numbers:
            image = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
            cv2.imwrite(os.path.join(root, view, "v", f"{k:05d}.jpg"), image,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])


def cv2_means(root, view, numbers):
    return np.stack([cv2.imread(os.path.join(root, view, "v", f"{k:05d}.jpg"))[..., ::-1]
                     .reshape(-1, 3).mean(0) / 255.0 for k in numbers])


def test_extraction_follows_the_view_availability(tmp_path):
    root = str(tmp_path / "aff")
    write_two_views(root, np.random.default_rng(0))
    index = FrameIndex.from_affwild2(root, "abaw3", "train", tasks=("expr",))
    out = {}
    for view in ("aligned", "cropped"):
        out[view] = str(tmp_path / view)
        summary = extract_features(mean_rgb, index, out[view], view=view, image_size=16,
                                   description="mean", verbose=0)
        assert summary["videos_done"] == 1
    aligned, cropped = FeatureCache(out["aligned"]), FeatureCache(out["cropped"])
    assert aligned.view == "aligned" and cropped.view == "cropped"
    # Frame 4 is missing in cropped/ only: not in the cropped cache, in the aligned one.
    assert aligned.load("v")["frames"].tolist() == [1, 2, 3, 4, 5, 6]
    assert cropped.load("v")["frames"].tolist() == [1, 2, 3, 5, 6]
    np.testing.assert_allclose(aligned.load("v")["mean"],
                               cv2_means(root, "cropped_aligned", range(1, 7)), atol=1e-5)
    np.testing.assert_allclose(cropped.load("v")["mean"],
                               cv2_means(root, "cropped", [1, 2, 3, 5, 6]), atol=1e-5)
    # The folder route lists the same frames per view.
    for view, folder in (("aligned", "cropped_aligned"), ("cropped", "cropped")):
        by_folder = video_frame_images(root, view=view)["v"]
        by_index = video_frame_images(index, view=view)["v"]
        assert by_folder[0].tolist() == by_index[0].tolist()
        assert by_folder[1] == by_index[1]
    # Windows over the cropped cache select targets by the cropped view's images.
    from affectkit.data.sequences import window_dataset

    ds = window_dataset(index, cropped, tasks="expr", window=2, view="cropped")
    assert np.concatenate([y["expr"].numpy() for _, y in ds]).tolist() == [0, 1, 2, 4, 5]
    with pytest.raises(ValueError, match="'cropped' view"):
        window_dataset(index, cropped, tasks="expr", window=2)  # view="aligned"


def test_folder_and_index_agree_on_odd_files(tmp_path):
    root = str(tmp_path / "aff")
    write_two_views(root, np.random.default_rng(1), aligned=(1, 2, 5, 6), cropped=(1, 2, 5, 6))
    folder = os.path.join(root, "cropped_aligned", "v")
    jpeg = open(os.path.join(folder, "00001.jpg"), "rb").read()
    for name in ("00003.JPG", "0004.jpg", "00004.png", "notes.txt"):  # none a frame image
        with open(os.path.join(folder, name), "wb") as f:
            f.write(jpeg if name != "notes.txt" else b"not an image")
    index = FrameIndex.from_affwild2(root, "abaw3", "train", tasks=("expr",))
    assert index.frames["has_image"].tolist() == [True, True, False, False, True, True]
    by_folder = video_frame_images(root)["v"]
    by_index = video_frame_images(index)["v"]
    assert by_folder[0].tolist() == by_index[0].tolist() == [1, 2, 5, 6]
    assert by_folder[1] == by_index[1] == [os.path.join(folder, f"{k:05d}.jpg")
                                           for k in (1, 2, 5, 6)]
    summary = extract_features(mean_rgb, root, str(tmp_path / "c"), image_size=16,
                               description="mean", verbose=0)
    assert summary["frames"] == 4
    assert FeatureCache(tmp_path / "c").load("v")["frames"].tolist() == [1, 2, 5, 6]
