"""Peak memory of `affectkit predict` on a short and a long video, side by side.

Decoding streams and rows go to the CSV a batch at a time, so a long video should need no
more memory than a short one. Each run is its own process (`affectkit predict`, started
from a small wrapper that reports its child's peak RSS); the videos are 640x360 MP4s of a
real photograph moving (`affectkit.data.moving_photos`), the model a small MTANet (the
memory under test is the pipeline's, not the network's).

Usage:
    python tools/bench_predict_memory.py                 # 1 minute against 10 minutes
    python tools/bench_predict_memory.py --minutes 1 60  # against an hour
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(code)")


def write_video(path, minutes, fps=30):
    import cv2
    from skimage import data

    from affectkit.data.moving_photos import ASTRONAUT_FACE, MovingPhoto, render_moving_photos

    photo = MovingPhoto(data.astronaut(), ASTRONAUT_FACE, start=(150, 170), end=(490, 200),
                        scale=(0.6, 1.0), region=(100, 0, 280, 330))
    loop = [frame[:, :, ::-1].copy() for frame, _ in render_moving_photos([photo], 150)]
    loop += loop[::-1]  # there and back: a 10-second loop
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (640, 360))
    for k in range(int(minutes * 60 * fps)):
        writer.write(loop[k % len(loop)])
    writer.release()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs=2, default=[1, 10])
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()

    from affectkit.models.affect_model import AffectModel

    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model.keras")
        AffectModel.from_preset("zhang2020_mtanet", schema="abaw3", image_size=64,
                                backbone={"depths": [1, 1, 1, 1], "stem_width": 16,
                                          "widths": [32, 64, 128, 256]},
                                neck={"width": 64}).save(model)
        results = []
        for minutes in args.minutes:
            video = os.path.join(tmp, f"video_{minutes:g}min.mp4")
            write_video(video, minutes)
            start = time.perf_counter()
            command = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "affectkit.cli",
                       "predict", "--model", model, "--input", video, "--out",
                       os.path.join(tmp, "out"), "--every", str(args.every)]
            output = subprocess.run(command, capture_output=True, text=True)
            if output.returncode:
                sys.exit(output.stdout + output.stderr)
            peak = int(output.stdout.rsplit("peak_rss_kb", 1)[1].split()[0]) / 1024
            results.append((minutes, peak, time.perf_counter() - start))
    print(f"\naffectkit predict, 640x360 MP4, small MTANet, --every {args.every}")
    print(f"{'video':>12s} {'peak RSS (MiB)':>15s} {'seconds':>8s}")
    for minutes, peak, seconds in results:
        print(f"{minutes:9g} min {peak:15.0f} {seconds:8.0f}")
    print(f"ratio long / short: {results[-1][1] / results[0][1]:.3f}")


if __name__ == "__main__":
    main()
