"""End-to-end frames per second of `affectkit predict` against the naive loop, side by side.

Both read the same 640x360 MP4 (a real photograph, `skimage.data.astronaut()`, moving and
changing size; `affectkit.data.moving_photos`) and run the same `model.keras`: the paper-size
MTANet (SE-ResNet-50 at 112, `AffectModel.from_preset("zhang2020_mtanet")`, random weights:
speed does not depend on them). Start-up is included: from loading the model file to the
last row.

    affectkit     FacePredictor: BlazeFace, detection every --every frames, landmark tracking
                  in between, aligned crops batched (--batch-size) into one model call
    naive         MTCNN on every frame at full resolution, each face aligned and run through
                  the model one at a time (batch 1), as a per-frame loop is usually written

Per-stage seconds (decode, detect, align, model) are printed for both. On a machine with a
GPU TensorFlow uses it for the model; the figure is printed the same way.

Usage:
    python tools/bench_predict.py                    # 300 frames (10 s of video)
    python tools/bench_predict.py --frames 900 --every 5 --naive-frames 60
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def write_video(path, frames):
    from skimage import data

    from affectkit.data.moving_photos import ASTRONAUT_FACE, MovingPhoto, write_moving_photo_video

    photo = MovingPhoto(data.astronaut(), ASTRONAUT_FACE, start=(150, 170), end=(500, 200),
                        scale=(0.7, 1.4))
    write_moving_photo_video(path, [photo], frames=frames)


def write_model(path):
    from affectkit.models.affect_model import AffectModel

    AffectModel.from_preset("zhang2020_mtanet").save(path)


def run_affectkit(model_path, video, every, batch_size):
    from affectkit.inference.predictor import FacePredictor

    start = time.perf_counter()
    predictor = FacePredictor(model_path, detector="blazeface", every=every,
                              batch_size=batch_size)
    table = predictor.predict_video(video)
    seconds = time.perf_counter() - start
    return table["frame"].nunique(), seconds, dict(predictor.timings), int(table["success"].sum())


def run_naive(model_path, video, limit):
    import keras

    import affectkit  # noqa: F401
    from affectkit.inference.alignment import cut_view
    from affectkit.inference.detection import MTCNNDetector
    from affectkit.inference.video import VideoReader

    timings = dict.fromkeys(("decode", "detect", "align", "model"), 0.0)
    start = time.perf_counter()
    model = keras.saving.load_model(model_path)
    size, view = model.get_config()["image_size"], model.get_config()["view"]
    detector = MTCNNDetector()
    frames = faces = 0
    clock = time.perf_counter()
    with VideoReader(video) as reader:
        for index, timestamp, frame in reader:
            now = time.perf_counter()
            timings["decode"] += now - clock
            found = detector(frame)
            clock = time.perf_counter()
            timings["detect"] += clock - now
            for face in found:
                crop = cut_view(frame, face.landmarks, face.landmark_names, view, size)
                now = time.perf_counter()
                timings["align"] += now - clock
                model.predict_on_batch(crop[None].astype(np.float32) / 255.0)
                clock = time.perf_counter()
                timings["model"] += clock - now
                faces += 1
            frames += 1
            if frames >= limit:
                break
            clock = time.perf_counter()
    return frames, time.perf_counter() - start, timings, faces


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames of the test video")
    parser.add_argument("--naive-frames", type=int, default=60,
                        help="frames the naive loop runs (it is slow; its fps is per frame)")
    parser.add_argument("--every", type=int, nargs="+", default=[1, 5],
                        help="affectkit runs: detect every K frames")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import tensorflow as tf

    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        video, model_path = os.path.join(tmp, "moving.mp4"), os.path.join(tmp, "mtanet.keras")
        write_video(video, args.frames)
        write_model(model_path)
        rows = []
        for every in args.every:
            rows.append((f"affectkit (BlazeFace, every {every}, batch {args.batch_size})",
                         *run_affectkit(model_path, video, every, args.batch_size)))
        rows.append(("naive (MTCNN full-res every frame, batch 1)",
                     *run_naive(model_path, video, args.naive_frames)))

    print(f"\n640x360 video, MTANet SE-ResNet-50 at 112, on {device}; start-up included")
    print(f"{'method':48s} {'frames':>6s} {'faces':>6s} {'fps':>7s}   decode  detect   align   model (s)")
    naive_fps = rows[-1][1] / rows[-1][2]
    for name, frames, seconds, timings, faces in rows:
        fps = frames / seconds
        stages = "  ".join(f"{timings[k]:6.2f}" for k in ("decode", "detect", "align", "model"))
        print(f"{name:48s} {frames:6d} {faces:6d} {fps:7.1f}   {stages}   "
              f"({fps / naive_fps:.1f}x naive)")


if __name__ == "__main__":
    main()
