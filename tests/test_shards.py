"""TFRecord shards: the frame pipeline's elements, records, metadata, resume, file sharding.

References are independent of the shard code: `pipeline.frame_dataset` on the same index,
the JPEG files' bytes read directly, the index's label columns, a brute-force partition.
"""

import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from affectkit.data import pipeline, shards
from affectkit.data.affwild2 import FrameIndex
from affectkit.data.synthetic import write_demo_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """6 videos of 20 frames at 32 px (4 train), some frames without a JPEG."""
    root = str(tmp_path_factory.mktemp("shards") / "data")
    write_demo_dataset(root, edition="abaw3", videos=6, frames=20, seed=3, image_size=SIZE,
                       write_videos=False)
    return root


@pytest.fixture(scope="module")
def index(root):
    """The train split, with some labels set missing so every marker occurs."""
    index = FrameIndex.from_affwild2(root, "abaw3", "train", fill_missing_images=True)
    frames = index.frames.copy()
    rows = frames.index[frames["has_image"]]
    frames.loc[rows[[2, 30]], ["valence", "arousal"]] = -5.0
    frames.loc[rows[[5, 31]], "expr"] = -1
    frames.loc[rows[[7, 32, 33]], list(index.schema.aus)] = -1
    frames.loc[rows[8], index.schema.aus[0]] = -1  # one AU missing only
    changed = FrameIndex(frames, index.schema, index.root)
    changed.sources = index.sources
    return changed


@pytest.fixture(scope="module")
def written(index, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("written") / "train")
    metadata = shards.write_shards(index, folder, shards=3, split="train")
    return folder, metadata


def _elements(ds):
    return list(ds.as_numpy_iterator())


def _assert_same_elements(got, expected):
    assert len(got) == len(expected) > 0
    for (images, labels), (ref_images, ref_labels) in zip(got, expected):
        assert images.dtype == ref_images.dtype
        np.testing.assert_array_equal(images, ref_images)  # bit for bit
        assert sorted(labels) == sorted(ref_labels)
        for task in ref_labels:
            assert labels[task].dtype == ref_labels[task].dtype
            np.testing.assert_array_equal(labels[task], ref_labels[task])


def _frame_keys(ds):
    """A hash of each frame's pixels and labels, in the order the dataset yields them."""
    keys = []
    for images, labels in ds.as_numpy_iterator():
        for i in range(len(images)):
            digest = hashlib.sha1(images[i].tobytes())
            for task in sorted(labels):
                digest.update(labels[task][i].tobytes())
            keys.append(digest.hexdigest())
    return keys


# ------------------------------------------------------------------ elements


@pytest.mark.parametrize("view, image_size, missing_images, tasks, normalization, batch", [
    ("aligned", SIZE, "skip", ("va", "expr", "au"), "imagenet", 7),
    ("aligned", 24, "skip", ("expr",), "unit", 8),          # resized
    ("aligned", SIZE, "fill", ("va", "au"), None, 16),       # filled frames
    ("cropped", SIZE, "skip", ("va", "expr", "au"), "caffe", 5),  # 45 px, resized
])
def test_unshuffled_elements_are_frame_datasets(index, tmp_path, view, image_size,
                                                missing_images, tasks, normalization, batch):
    folder = str(tmp_path / "shards")
    shards.write_shards(index, folder, shards=3, view=view, split="train",
                        missing_images=missing_images)
    common = dict(tasks=tasks, batch_size=batch, image_size=image_size,
                  normalization=normalization)
    expected = _elements(pipeline.frame_dataset(index, view=view,
                                                missing_images=missing_images, **common))
    got = _elements(shards.shard_dataset(folder, view=view, missing_images=missing_images,
                                         **common))
    _assert_same_elements(got, expected)


def test_drop_remainder_and_repeat_match_frame_dataset(index, written):
    folder, _ = written
    common = dict(batch_size=10, image_size=SIZE, drop_remainder=True, repeat=True)
    expected = _elements(pipeline.frame_dataset(index, **common).take(13))
    _assert_same_elements(_elements(shards.shard_dataset(folder, **common).take(13)),
                          expected)


# ------------------------------------------------------------------- records


def _records(folder, metadata):
    for shard in metadata["shards"]:
        path = os.path.join(folder, shard["file"])
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            yield shard["file"], tf.train.Example.FromString(raw).features.feature


def test_records_hold_the_jpeg_files_and_every_label_with_its_marker(index, written, root):
    folder, metadata = written
    frames = index.frames[index.frames["has_image"]].reset_index(drop=True)
    records = list(_records(folder, metadata))
    assert len(records) == len(frames)
    aus = list(index.schema.aus)
    for (_, feature), (_, row) in zip(records, frames.iterrows()):
        video = feature["video"].bytes_list.value[0].decode()
        frame = feature["frame"].int64_list.value[0]
        assert (video, frame) == (row["video"], row["frame"])
        path = os.path.join(root, "cropped_aligned", video, f"{frame:05d}.jpg")
        with open(path, "rb") as file:
            assert feature["image"].bytes_list.value[0] == file.read()  # not re-encoded
        assert list(feature["va"].float_list.value) == [np.float32(row["valence"]),
                                                        np.float32(row["arousal"])]
        assert feature["expr"].int64_list.value[0] == row["expr"]
        assert list(feature["au"].int64_list.value) == row[aus].astype(int).tolist()
        assert (feature["height"].int64_list.value[0], feature["width"].int64_list.value[0]) \
            == (SIZE, SIZE)

    labels = shards.shard_labels(folder)
    reference = pipeline.label_arrays(index)
    for task in reference:
        np.testing.assert_array_equal(labels[task], reference[task])
        assert labels[task].dtype == reference[task].dtype
    # the markers occur: whole and partial rows
    assert (labels["va"] == -5).all(axis=1).sum() >= 2
    assert (labels["expr"] == -1).sum() >= 2
    assert (labels["au"] == -1).all(axis=1).sum() >= 3
    assert ((labels["au"] == -1).any(axis=1) & ~(labels["au"] == -1).all(axis=1)).any()
    table = shards.shard_frames(folder)
    rows = pipeline.frame_rows(index)
    assert table["video"].tolist() == rows["video"].tolist()
    assert table["frame"].tolist() == rows["frame"].tolist()


def test_metadata_says_what_is_where_and_what_made_it(index, written):
    folder, metadata = written
    with open(os.path.join(folder, "metadata.json")) as file:
        on_disk = json.load(file)
    assert {k: v for k, v in metadata.items() if k != "skipped"} == on_disk
    frames = index.frames[index.frames["has_image"]]
    counts = frames.groupby("video").size()
    assert [v["video"] for v in on_disk["videos"]] == sorted(counts.index)
    for entry in on_disk["videos"]:
        video_frames = frames[frames["video"] == entry["video"]]["frame"]
        assert entry["frames"] == counts[entry["video"]]
        assert (entry["first_frame"], entry["last_frame"]) == (video_frames.min(),
                                                                video_frames.max())
    assert on_disk["frames"] == len(frames)
    assert (on_disk["edition"], on_disk["view"], on_disk["split"]) == ("abaw3", "aligned",
                                                                       "train")
    assert on_disk["aus"] == list(index.schema.aus)
    assert on_disk["image_sizes"] == [[SIZE, SIZE, len(frames)]]
    assert on_disk["label_markers"] == {"va": -5.0, "expr": -1, "au": -1}
    assert on_disk["tasks"] == ["va", "expr", "au"]
    assert on_disk["created_by"]["writer"] == "affectkit.data.shards.write_shards"
    assert on_disk["created_by"]["root"] == index.root
    assert len(on_disk["shards"]) == 3
    # each shard: its file, its record count, its videos, whole and in order
    seen = {}
    for file, feature in _records(folder, on_disk):
        seen.setdefault(file, []).append(feature["video"].bytes_list.value[0].decode())
    for number, shard in enumerate(on_disk["shards"]):
        assert shard["file"] == f"train-{number:05d}-of-00003.tfrecord"
        assert shard["records"] == len(seen[shard["file"]])
        assert shard["bytes"] == os.path.getsize(os.path.join(folder, shard["file"]))
        listed = [v["video"] for v in on_disk["videos"] if v["shard"] == number]
        assert list(dict.fromkeys(seen[shard["file"]])) == listed
        assert shard["videos"] == len(listed)
    assert sorted(os.listdir(folder)) == sorted(
        ["metadata.json"] + [s["file"] for s in on_disk["shards"]])  # no plan, no .partial


def test_balanced_cuts_are_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 9))
        counts = rng.integers(1, 50, n)
        for parts in range(1, n + 1):
            cuts = shards.balanced_cuts(counts, parts)
            assert cuts[0] == 0 and cuts[-1] == n and len(cuts) == parts + 1
            assert all(a < b for a, b in zip(cuts, cuts[1:]))  # no empty shard
            best = min(max(counts[a:b].sum() for a, b in zip((0, *c), (*c, n)))
                       for c in itertools.combinations(range(1, n), parts - 1))
            assert max(counts[a:b].sum() for a, b in zip(cuts, cuts[1:])) == best
    assert shards.balanced_cuts([10] * 8, 4) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="3 videos into 4 shards"):
        shards.balanced_cuts([1, 2, 3], 4)


# ------------------------------------------------------------------- writing


class _Stop(Exception):
    pass


def test_interrupted_writing_resumes_and_ignores_the_partial_shard(index, tmp_path,
                                                                   monkeypatch):
    folder = str(tmp_path / "train")
    plan, *_ = shards._plan(index, "aligned", "skip", 3, "train")
    first = plan["shards"][0]["records"]
    real_read = shards._read_jpeg_bytes
    calls = []

    def failing_read(path):  # the process dies 2 frames into the second shard
        calls.append(path)
        if len(calls) > first + 2:
            raise _Stop()
        return real_read(path)

    monkeypatch.setattr(shards, "_read_jpeg_bytes", failing_read)
    with pytest.raises(_Stop):
        shards.write_shards(index, folder, shards=3, split="train")
    names = sorted(os.listdir(folder))
    assert names == ["plan.json", "train-00000-of-00003.tfrecord",
                     "train-00001-of-00003.tfrecord.partial"]
    with pytest.raises(FileNotFoundError, match="no metadata.json.*rerun it"):
        shards.shard_dataset(folder)

    monkeypatch.setattr(shards, "_read_jpeg_bytes", real_read)
    finished = os.path.join(folder, "train-00000-of-00003.tfrecord")
    before = os.stat(finished)
    metadata = shards.write_shards(index, folder, shards=3, split="train")
    assert metadata["skipped"] == 1
    assert os.stat(finished).st_mtime_ns == before.st_mtime_ns  # kept, not rewritten
    assert "train-00001-of-00003.tfrecord.partial" not in os.listdir(folder)
    common = dict(batch_size=9, image_size=SIZE)
    _assert_same_elements(_elements(shards.shard_dataset(folder, **common)),
                          _elements(pipeline.frame_dataset(index, **common)))

    again = shards.write_shards(index, folder, shards=3, split="train")
    assert again["skipped"] == 3
    assert os.stat(finished).st_mtime_ns == before.st_mtime_ns


def test_a_leftover_partial_file_is_not_a_finished_shard(index, tmp_path):
    folder = str(tmp_path / "train")
    plan, *_ = shards._plan(index, "aligned", "skip", 2, "train")
    os.makedirs(folder)
    with open(os.path.join(folder, "plan.json"), "w") as file:
        json.dump(plan, file)
    with open(os.path.join(folder, "train-00000-of-00002.tfrecord.partial"), "wb") as file:
        file.write(b"half a shard")
    metadata = shards.write_shards(index, folder, shards=2, split="train")
    assert metadata["skipped"] == 0
    assert shards.shard_labels(folder)["expr"].tolist() == \
        pipeline.label_arrays(index, "expr")["expr"].tolist()


def test_a_mismatching_folder_is_refused(index, written, tmp_path):
    folder, _ = written
    with pytest.raises(ValueError, match="metadata.json was written for 3 shards over 4 "
                                         "videos, this call 2 shards"):
        shards.write_shards(index, folder, shards=2, split="train")
    with pytest.raises(ValueError, match="metadata.json was written for other frames, labels"):
        shards.write_shards(index.subset(index.videos[:3]), folder, shards=3, split="train")
    with pytest.raises(ValueError, match="view='aligned', this call view='cropped'"):
        shards.write_shards(index, folder, shards=3, view="cropped", split="train")

    stray = str(tmp_path / "stray")
    os.makedirs(stray)
    shutil.copy(os.path.join(folder, "train-00000-of-00003.tfrecord"), stray)
    with pytest.raises(ValueError, match=r"stray: holds shard files \(train-00000-of-00003"):
        shards.write_shards(index, stray, shards=3, split="train")
    metadata = shards.write_shards(index, stray, shards=2, split="train", overwrite=True)
    assert sorted(os.listdir(stray)) == ["metadata.json", "train-00000-of-00002.tfrecord",
                                         "train-00001-of-00002.tfrecord"]
    assert metadata["skipped"] == 0


def test_bad_jpegs_and_empty_indexes_are_named(root, tmp_path):
    copy = str(tmp_path / "data")
    shutil.copytree(root, copy)
    index = FrameIndex.from_affwild2(copy, "abaw3", "train")
    video = index.videos[1]
    gone = os.path.join(copy, "cropped_aligned", video, "00004.jpg")
    os.remove(gone)
    with pytest.raises(FileNotFoundError, match=f"{gone}: cannot read this frame's JPEG"):
        shards.write_shards(index, str(tmp_path / "a"), shards=2)
    with open(gone, "wb") as file:
        file.write(b"GIF89a not a jpeg")
    with pytest.raises(ValueError, match=f"{gone}: not a JPEG file"):
        shards.write_shards(index, str(tmp_path / "b"), shards=2)
    with open(index.image_paths("aligned", [0])[0], "rb") as file:
        head = file.read(20)
    with open(gone, "wb") as file:
        file.write(head)  # truncated before the frame header
    with pytest.raises(ValueError, match=f"{gone}: no valid JPEG frame header"):
        shards.write_shards(index, str(tmp_path / "c"), shards=2)

    frames = index.frames.copy()
    frames["has_image"] = False
    with pytest.raises(ValueError, match="Nothing to shard: none of the .* frames"):
        shards.write_shards(FrameIndex(frames, index.schema, copy), str(tmp_path / "d"))
    with pytest.raises(ValueError, match="4 videos into 5 shards"):
        shards.write_shards(index, str(tmp_path / "e"), shards=5)


def test_reading_checks_the_folder_and_settings(written, tmp_path):
    folder, _ = written
    with pytest.raises(FileNotFoundError, match="no such shard folder"):
        shards.shard_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no metadata.json; expected a folder written"):
        shards.shard_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="written with view='aligned', asked for "
                                         "view='cropped'"):
        shards.shard_dataset(folder, view="cropped")
    with pytest.raises(ValueError, match="Unknown task 'age'"):
        shards.shard_dataset(folder, tasks=("age",))


# ------------------------------------------------------------------- training


def test_training_shuffles_reproducibly_over_every_frame(written):
    folder, _ = written
    common = dict(batch_size=8, image_size=SIZE, training=True, shuffle_buffer=64)
    eval_keys = _frame_keys(shards.shard_dataset(folder, batch_size=8, image_size=SIZE))
    ds = shards.shard_dataset(folder, shuffle_seed=5, **common)
    epoch1, epoch2 = _frame_keys(ds), _frame_keys(ds)
    assert sorted(epoch1) == sorted(epoch2) == sorted(eval_keys)  # each frame once
    assert epoch1 != eval_keys and epoch1 != epoch2  # shuffled, anew each epoch
    again = shards.shard_dataset(folder, shuffle_seed=5, **common)
    assert _frame_keys(again) == epoch1 and _frame_keys(again) == epoch2
    assert _frame_keys(shards.shard_dataset(folder, shuffle_seed=6, **common)) != epoch1

    augmented = dict(common, augment="default", shuffle_seed=5)
    first = _elements(shards.shard_dataset(folder, **augmented).take(2))
    second = _elements(shards.shard_dataset(folder, **augmented).take(2))
    _assert_same_elements(first, second)
    plain = _elements(shards.shard_dataset(folder, shuffle_seed=5, **common).take(2))
    assert not np.array_equal(first[0][0], plain[0][0])


def test_a_keras_layer_augments_training_batches(written):
    import keras

    folder, _ = written
    layer = keras.layers.RandomFlip("horizontal", seed=1)
    images, labels = next(iter(shards.shard_dataset(folder, batch_size=8, image_size=SIZE,
                                                    training=True, augment=layer)))
    assert images.shape == (8, SIZE, SIZE, 3) and labels["va"].shape == (8, 2)


# ------------------------------------------------------------- file sharding


def _pipeline_videos(metadata, pipelines, i):
    files = [s["file"] for s in metadata["shards"]][i::pipelines]
    numbers = [n for n, s in enumerate(metadata["shards"]) if s["file"] in files]
    return [v["video"] for v in metadata["videos"] if v["shard"] in numbers]


def test_each_input_pipeline_reads_its_own_shard_files(index, written):
    folder, metadata = written
    common = dict(batch_size=6, image_size=SIZE)
    all_keys = _frame_keys(shards.shard_dataset(folder, **common))
    per_pipeline = []
    for i in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                             num_replicas_in_sync=2)
        ds = shards.shard_dataset(folder, input_context=context, **common)
        videos = _pipeline_videos(metadata, 2, i)
        assert videos  # shards 0, 2 and shard 1
        _assert_same_elements(_elements(ds),
                              _elements(pipeline.frame_dataset(index.subset(videos), **common)))
        per_pipeline.append(_frame_keys(ds))
        shuffled = shards.shard_dataset(folder, input_context=context, training=True,
                                        **common)
        assert sorted(_frame_keys(shuffled)) == sorted(per_pipeline[-1])
    assert not set(per_pipeline[0]) & set(per_pipeline[1])
    assert sorted(per_pipeline[0] + per_pipeline[1]) == sorted(all_keys)

    context = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=0)
    with pytest.raises(ValueError, match="3 shard files for 4 input pipelines"):
        shards.shard_dataset(folder, input_context=context)


def test_tf_distribute_auto_shards_the_dataset_by_file(index, written):
    """The rewrite `MultiWorkerMirroredStrategy.experimental_distribute_dataset` applies to
    each worker's dataset (`input_ops.auto_shard_dataset`), under the dataset's FILE policy:
    FILE raises where it finds no file source instead of falling back to DATA."""
    from tensorflow.python.distribute import input_ops

    folder, metadata = written
    common = dict(batch_size=6, image_size=SIZE)
    for training in (False, True):
        ds = shards.shard_dataset(folder, training=training, **common)
        assert ds.options().experimental_distribute.auto_shard_policy == \
            tf.data.experimental.AutoShardPolicy.FILE
        keys = []
        for i in range(2):
            worker = input_ops.auto_shard_dataset(ds, 2, i, 2)
            reference = pipeline.frame_dataset(index.subset(_pipeline_videos(metadata, 2, i)),
                                               **common)
            if training:
                assert sorted(_frame_keys(worker)) == sorted(_frame_keys(reference))
            else:
                _assert_same_elements(_elements(worker), _elements(reference))
            keys.append(_frame_keys(worker))
        assert not set(keys[0]) & set(keys[1])
        assert len(keys[0]) + len(keys[1]) == metadata["frames"]


# ------------------------------------------------------------------- command


def test_shard_command_writes_a_split_and_says_what_it_did(root, tmp_path, capsys):
    out = str(tmp_path / "val")
    metadata = shards.shard_command(root, "abaw3", "val", out, shards=1)
    printed = capsys.readouterr().out
    index = FrameIndex.from_mtl(root, "abaw3", "val")  # ABAW3 has an MTL file: "auto" uses it
    frames = int(index.frames["has_image"].sum())
    assert metadata["frames"] == frames
    assert f"{frames} frames of 2 videos" in printed and "MTL file" in printed
    assert "1 shards in" in printed and " MB, " in printed
    assert metadata["created_by"]["command"].startswith("affectkit shard --data")
    assert "mtl" in metadata["created_by"]["sources"]
    common = dict(batch_size=4, image_size=SIZE)
    _assert_same_elements(_elements(shards.shard_dataset(out, **common)),
                          _elements(pipeline.frame_dataset(index, **common)))

    rerun = shards.shard_command(root, "abaw3", "val", out, shards=1)
    assert rerun["skipped"] == 1 and "(1 finished shards kept)" in capsys.readouterr().out

    per_task = shards.shard_command(root, "abaw3", "train", str(tmp_path / "train"),
                                    annotations="per_task", tasks=("va",), verbose=False)
    assert per_task["tasks"] == ["va"]
    assert len(per_task["shards"]) == len(per_task["videos"]) == 3  # auto: <= one per video
    assert capsys.readouterr().out == ""

    with pytest.raises(ValueError, match="Unknown ABAW edition 'abaw9'"):
        shards.shard_command(root, "abaw9", "train", str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="no such Aff-Wild2 folder"):
        shards.shard_command(str(tmp_path / "nowhere"), "abaw3", "train", str(tmp_path / "x"))
    with pytest.raises(ValueError, match="split"):
        shards.shard_command(root, "abaw3", "test", str(tmp_path / "x"))
    with pytest.raises(ValueError, match="Unknown view 'side'"):
        shards.shard_command(root, "abaw3", "train", str(tmp_path / "x"), view="side")
    with open(tmp_path / "file", "w") as file:
        file.write("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        shards.shard_command(root, "abaw3", "train", str(tmp_path / "file"), verbose=False)


# ------------------------------------------------------------------- bench tool


@pytest.mark.slow
def test_bench_shards_runs_on_tiny_demo_data(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_shards", os.path.join(REPO_ROOT, "tools", "bench_shards.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = str(tmp_path / "data")
    write_demo_dataset(root, edition="abaw3", videos=3, frames=24, seed=1, image_size=112,
                       write_videos=False)
    result = tool.shard_throughput(root, epochs=1, batch_size=16)
    assert result["frames"] > 0 and result["shards"] >= 1
    for row in ("loose eval", "shards eval", "loose train", "shards train"):
        assert result["rows"][row]["frames_per_s"] > 0
    assert result["ratio"]["eval"] > 0 and result["ratio"]["train"] > 0
    assert tool.main(["--data", root, "--epochs", "1", "--batch-size", "16"]) == 0
    assert "shards eval" in capsys.readouterr().out


# ------------------------------------------------------- a two-worker cluster


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_of_a_cluster_read_disjoint_shard_files(index, written, tmp_path):
    """`MultiWorkerMirroredStrategy` over two processes: `experimental_distribute_dataset`
    (auto-sharding, FILE policy) and `distribute_datasets_from_function` (`input_context`)
    give worker i the records of shard files i, i + 2, ..."""
    folder, metadata = written
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    outputs = [str(tmp_path / f"worker{i}.json") for i in range(2)]
    logs = [str(tmp_path / f"worker{i}.log") for i in range(2)]
    workers = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=REPO_ROOT, CUDA_VISIBLE_DEVICES="",
                   TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": i}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "tests.test_shards", folder, outputs[i]], cwd=REPO_ROOT,
            env=env, stdout=open(logs[i], "w"), stderr=subprocess.STDOUT))
    try:
        codes = [worker.wait(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for code, log in zip(codes, logs):
        assert code == 0, open(log).read()[-3000:]
    seen = [json.load(open(path)) for path in outputs]
    for route in ("auto", "from_function"):
        for i in range(2):
            reference = pipeline.frame_dataset(index.subset(_pipeline_videos(metadata, 2, i)),
                                               tasks=("expr",), batch_size=4, image_size=SIZE)
            assert seen[i][route] == _frame_keys(reference)
        assert not set(seen[0][route]) & set(seen[1][route])


def _worker_main(folder, output):
    """One worker of `test_two_workers_of_a_cluster_read_disjoint_shard_files`."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    def keys(dataset):
        frames = []
        for images, labels in dataset:
            pairs = zip(strategy.experimental_local_results(images),
                        strategy.experimental_local_results(labels))
            for local_images, local_labels in pairs:
                local = tf.data.Dataset.from_tensors((local_images, local_labels))
                frames += _frame_keys(local)
        return frames

    common = dict(tasks=("expr",), image_size=SIZE)
    auto = strategy.experimental_distribute_dataset(
        shards.shard_dataset(folder, batch_size=8, **common))  # 4 per worker
    from_function = strategy.distribute_datasets_from_function(
        lambda context: shards.shard_dataset(folder, batch_size=4, input_context=context,
                                             **common))
    with open(output, "w") as file:
        json.dump({"auto": keys(auto), "from_function": keys(from_function)}, file)


if __name__ == "__main__":
    _worker_main(*sys.argv[1:])


def test_the_shard_command_line(root, tmp_path, capsys):
    """`affectkit shard`: writes and summarises; a rerun with other settings and a missing
    folder are named errors (exit 2, no traceback); `--overwrite` replaces."""
    from affectkit import cli

    out = str(tmp_path / "train")
    base = ["shard", "--data", root, "--edition", "abaw3", "--split", "train", "--out", out]
    assert cli.main(base + ["--shards", "2"]) == 0
    assert "2 shards in" in capsys.readouterr().out
    assert len(shards.read_shard_metadata(out)["shards"]) == 2
    assert cli.main(base + ["--shards", "3"]) == 2
    error = capsys.readouterr().err
    assert "metadata.json was written for 2 shards" in error and "--overwrite" in error
    assert "Traceback" not in error
    assert cli.main(base + ["--shards", "3", "--overwrite"]) == 0
    assert len(shards.read_shard_metadata(out)["shards"]) == 3
    bad = ["shard", "--data", str(tmp_path / "none"), "--edition", "abaw3", "--split", "train",
           "--out", out]
    assert cli.main(bad) == 2 and "no such Aff-Wild2 folder" in capsys.readouterr().err
