"""`affectkit.inference.video`: inputs, streaming video decode, images, bad files.

Every input is synthesised in `tmp_path` (OpenCV's writers, or the FFmpeg binary that
imageio-ffmpeg ships for rotation, variable frame rate and raw streams). Frame `i` carries
a white bar at column block `i` in a black top strip, so decoded order can be read back.
"""

import os
import struct
import subprocess
import zlib

import cv2
import numpy as np
import pytest

from affectkit.inference import video
from affectkit.inference.video import ImageSequence, Input, VideoReader, find_inputs, read_image

BAR = 8  # width of the index bar; the strip is 16 rows high


def make_frames(n, height=96, width=128):
    """`n` RGB frames: scikit-image's astronaut under a strip whose white bar encodes the index."""
    skimage_data = pytest.importorskip("skimage.data")
    base = cv2.resize(skimage_data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    frames = np.repeat(base[None], n, axis=0)
    frames[:, :16] = 0
    for i in range(n):
        frames[i, :16, i * BAR : (i + 1) * BAR] = 255
    return frames


def bar_index(frame):
    """The index drawn by `make_frames` into a decoded frame."""
    return int(np.argmax(frame[:16].mean(axis=(0, 2))) // BAR)


def write_video(path, frames, fps=10, fourcc="mp4v"):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, frames.shape[2:0:-1])
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


def ffmpeg(*args, frames=None, rate=10):
    """Run the bundled FFmpeg; `frames` are piped in as raw RGB at `rate` fps (time base 1/rate)."""
    exe = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    cmd = [exe, "-y", "-loglevel", "error"]
    if frames is not None:
        h, w = frames.shape[1:3]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(rate), "-i", "-"]
    data = None if frames is None else frames.tobytes()
    done = subprocess.run(cmd + list(map(str, args)), input=data, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


def cut(src, dst, size):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: size if isinstance(size, int) else int(len(data) * size)])
    return str(dst)


def test_constant_fps_order_timestamps_and_colours(tmp_path):
    frames = make_frames(12)
    frames[:, 16:32, :16] = (255, 0, 0)  # a red patch: checks RGB (not BGR) order
    path = write_video(tmp_path / "clip.mp4", frames, fps=10)
    with VideoReader(path) as reader:
        assert (reader.fps, reader.frame_count, reader.width, reader.height) == (10.0, 12, 128, 96)
        got = list(reader)
    assert [i for i, _, _ in got] == list(range(12))
    assert [bar_index(f) for _, _, f in got] == list(range(12))
    np.testing.assert_allclose([t for _, t, _ in got], np.arange(12) / 10, atol=1e-6)
    frame = got[3][2]
    assert frame.dtype == np.uint8 and frame.shape == (96, 128, 3) and frame.flags.c_contiguous
    np.testing.assert_allclose(frame[20:28, 4:12].mean(axis=(0, 1)), (255, 0, 0), atol=40)
    assert np.abs(frame[32:].astype(int) - frames[3, 32:]).mean() < 12  # the photo survives
    assert reader.warnings == []


def test_iterating_again_restarts_and_close(tmp_path):
    path = write_video(tmp_path / "clip.mp4", make_frames(5))
    reader = VideoReader(path)
    first = next(iter(reader))
    assert first[0] == 0 and bar_index(first[2]) == 0
    assert [bar_index(f) for _, _, f in reader] == list(range(5))  # starts again after a break
    reader.close()
    assert len(list(reader)) == 5  # and after close()
    frames = iter(reader)
    next(frames)
    reader.close()  # mid-iteration: the iteration ends, without a truncation warning
    assert list(frames) == [] and reader.warnings == []
    reader.close()  # idempotent


@pytest.mark.parametrize("codec,ext", [("mpeg4", "mp4"), ("libx264", "mkv"), ("mjpeg", "avi")])
def test_variable_frame_rate_timestamps(tmp_path, codec, ext):
    # 5 frames at 10 fps, then 5 at 3.33 fps (presentation times in units of 0.1 s).
    path = tmp_path / f"vfr.{ext}"
    extra = ["-video_track_timescale", "1000"] if ext == "mp4" else []
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    ffmpeg(
        "-vf", "setpts='if(lt(N,5),N,5+(N-5)*3)'", "-fps_mode", "passthrough",
        "-c:v", codec, "-pix_fmt", pix_fmt, *extra, path, frames=make_frames(10),
    )
    reader = VideoReader(path)
    got = list(reader)
    assert [bar_index(f) for _, _, f in got] == list(range(10))
    expected = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.8, 1.1, 1.4, 1.7]
    np.testing.assert_allclose([t for _, t, _ in got], expected, atol=1e-3)
    # AVI has no timestamps, only slots: 18 of them, 8 empty. That is not a truncation.
    assert reader.warnings == []


def test_raw_stream_without_timestamps_falls_back_to_index_over_fps(tmp_path):
    path = tmp_path / "raw.h264"  # elementary stream: no container clock, no frame count
    ffmpeg("-c:v", "libx264", "-pix_fmt", "yuv420p", path, frames=make_frames(6))
    reader = VideoReader(path)
    got = list(reader)
    assert reader.frame_count is None
    assert [bar_index(f) for _, _, f in got] == list(range(6))
    np.testing.assert_allclose([t for _, t, _ in got], np.arange(6) / reader.fps)


def test_next_timestamp_rules():
    ts, prev = [], None
    for i, pos in enumerate([0, 100, 100, float("nan"), 500, -1, 200]):
        prev = video._next_timestamp(pos, i, 10.0, prev)
        ts.append(prev)
    # clock used while it moves forward; else index / fps, or one frame on when that is behind
    np.testing.assert_allclose(ts, [0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7])


def test_missing_frame_rate_assumes_30(tmp_path, monkeypatch):
    capture = cv2.VideoCapture

    class NoFps:  # a wrapper: Python subclasses of cv2.VideoCapture crash when collected
        def __init__(self, *args):
            self.cap = capture(*args)

        def get(self, prop):
            return 0.0 if prop == cv2.CAP_PROP_FPS else self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    path = write_video(tmp_path / "clip.mp4", make_frames(3))
    monkeypatch.setattr(cv2, "VideoCapture", NoFps)
    reader = VideoReader(path)
    assert reader.fps == 30.0
    assert "assuming 30 fps" in reader.warnings[0] and path in reader.warnings[0]
    assert len(list(reader)) == 3


@pytest.mark.parametrize("auto", [True, False], ids=["opencv_rotates", "we_rotate"])
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_gives_upright_frames(tmp_path, monkeypatch, degrees, auto):
    frames = make_frames(3, height=48, width=64)
    frames[:, 20:30, :10] = (255, 0, 0)
    src = write_video(tmp_path / "src.mp4", frames)
    path = tmp_path / f"rot{degrees}.mp4"
    # `-display_rotation` (counter-clockwise); `-metadata:s:v rotate=` is ignored by FFmpeg 7+.
    ffmpeg("-display_rotation", degrees, "-i", src, "-c", "copy", path)
    monkeypatch.setattr(VideoReader, "_auto_orient", auto)
    reader = VideoReader(path)
    upright = np.rot90(frames[1], degrees // 90)  # what a player shows
    assert (reader.height, reader.width) == upright.shape[:2]
    _, _, frame = list(reader)[1]
    assert frame.shape == upright.shape and frame.flags.c_contiguous
    assert np.abs(frame.astype(int) - upright).mean() < 12


def test_4k_frames_decode(tmp_path):
    frames = np.zeros((2, 2160, 3840, 3), np.uint8)
    frames[0, :, :100] = 255
    frames[1, :, -100:] = 255
    path = write_video(tmp_path / "uhd.mp4", frames, fps=25)
    reader = VideoReader(path)
    assert (reader.width, reader.height, reader.frame_count) == (3840, 2160, 2)
    got = [f for _, _, f in reader]
    assert [f.shape for f in got] == [(2160, 3840, 3)] * 2
    assert got[0][:, :50].mean() > 200 and got[0][:, -50:].mean() < 50
    assert got[1][:, -50:].mean() > 200


@pytest.mark.parametrize("fourcc,ext", [("MJPG", "avi"), ("mjpeg", "mkv")])
def test_truncated_streaming_video_yields_what_decodes_then_warns(tmp_path, fourcc, ext):
    frames = make_frames(10, height=192, width=192)
    full = tmp_path / f"full.{ext}"
    if ext == "avi":
        write_video(full, frames, fourcc=fourcc)
    else:
        ffmpeg("-c:v", "mjpeg", "-q:v", "3", full, frames=frames)
    path = cut(full, tmp_path / f"cut.{ext}", 0.5)
    reader = VideoReader(path)
    assert reader.frame_count == 10  # from the header, which survived
    got = list(reader)
    assert 2 <= len(got) < 10
    # in order (the last one may be partly decoded)
    assert [bar_index(f) for _, _, f in got[:-1]] == list(range(len(got) - 1))
    assert reader.warnings == [
        f"{path}: stopped after {len(got)} of 10 frames; the rest could not be decoded "
        "(the file may be truncated or damaged)."
    ]


def test_truncated_mp4_with_index_at_the_end_cannot_be_opened(tmp_path):
    full = write_video(tmp_path / "full.mp4", make_frames(10))  # mp4v: moov atom at the end
    path = cut(full, tmp_path / "cut.mp4", 0.5)
    with pytest.raises(ValueError, match="could not be opened as a video") as err:
        VideoReader(path)
    assert path in str(err.value)


def test_video_whose_first_frame_does_not_decode(tmp_path):
    full = write_video(tmp_path / "full.mp4", make_frames(10))
    fast = tmp_path / "fast.mp4"
    ffmpeg("-i", full, "-c", "copy", "-movflags", "+faststart", fast)  # moov first, then frames
    data = open(fast, "rb").read()
    path = cut(fast, tmp_path / "header_only.mp4", data.index(b"mdat") + 4)
    with pytest.raises(ValueError, match="first frame could not be decoded") as err:
        VideoReader(path)
    assert path in str(err.value)


def test_bad_video_files(tmp_path):
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="missing.mp4: no such file, expected a video file"):
        VideoReader(missing)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.mp4: empty file \(0 bytes\), expected a video"):
        VideoReader(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    expected = r"notes.mp4: could not be opened as a video, expected a video file \(.mp4, .avi"
    with pytest.raises(ValueError, match=expected):
        VideoReader(text)
    with pytest.raises(ValueError, match="is a folder, expected a video file"):
        VideoReader(tmp_path)


def write_png(path, array):
    assert cv2.imwrite(str(path), array)
    return str(path)


def test_read_image_colour_grey_16bit_alpha(tmp_path):
    rgb = make_frames(1, 40, 60)[0]
    assert np.array_equal(read_image(write_png(tmp_path / "rgb.png", rgb[..., ::-1])), rgb)

    grey = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60)
    got = read_image(write_png(tmp_path / "grey.png", grey))
    assert got.shape == (40, 60, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.repeat(grey[..., None], 3, 2))

    deep = np.full((40, 60, 3), 257 * 100, np.uint16)
    deep[0, 0] = 65535
    got = read_image(write_png(tmp_path / "deep.png", deep))
    assert got.dtype == np.uint8 and got.shape == (40, 60, 3)
    assert got[0, 0].tolist() == [255] * 3 and got[1, 1].tolist() == [100] * 3
    got = read_image(write_png(tmp_path / "deep_grey.png", deep[..., 0]))
    assert got.shape == (40, 60, 3) and got[1, 1].tolist() == [100] * 3

    bgra = np.zeros((40, 60, 4), np.uint8)
    bgra[..., 2] = 200  # red
    bgra[:, :20, 3] = 255  # opaque
    bgra[:, 20:40, 3] = 0  # transparent
    bgra[:, 40:, 3] = 128  # half
    got = read_image(write_png(tmp_path / "rgba.png", bgra))
    assert got.shape == (40, 60, 3)
    assert got[0, 0].tolist() == [200, 0, 0]
    assert got[0, 30].tolist() == [255, 255, 255]  # composited over white
    np.testing.assert_allclose(got[0, 50], [227, 127, 127], atol=1)


def test_read_image_grey_alpha_and_float(tmp_path):
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    la = np.zeros((4, 6, 2), np.uint8)  # grey + alpha (PNG colour type 4), which cv2 cannot write
    la[..., 0] = 100
    la[:, :3, 1] = 255
    rows = b"".join(b"\0" + row.tobytes() for row in la)
    header = struct.pack(">IIBBBBB", 6, 4, 8, 4, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    (tmp_path / "la.png").write_bytes(png + chunk(b"IEND", b""))
    got = read_image(tmp_path / "la.png")
    assert got.shape == (4, 6, 3)
    assert got[0, 0].tolist() == [100] * 3 and got[0, 5].tolist() == [255] * 3  # over white

    values = np.full((4, 6, 3), 0.5, np.float32)
    values[0, 0] = (2.0, -1.0, 1.0)  # clipped to [0, 1]
    got = read_image(write_png(tmp_path / "float.tiff", values))
    assert got.dtype == np.uint8 and got[1, 1].tolist() == [128] * 3
    assert got[0, 0].tolist() == [255, 0, 255]


def exif_orientation(value):
    """A big-endian EXIF block holding only the orientation tag."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, value, 0)
    return np.frombuffer(b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + entry + b"\x00" * 4, np.uint8)


@pytest.mark.skipif(not hasattr(cv2, "imencodeWithMetadata"), reason="OpenCV < 4.12 writes no EXIF")
@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_honours_exif_orientation(tmp_path, orientation):
    bgr = make_frames(1, 40, 60)[0][..., ::-1]
    exif = [cv2.IMAGE_METADATA_EXIF], [exif_orientation(orientation)]
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])  # PNG: the alpha code path
    for name, image in [("photo.jpg", bgr), ("photo.png", bgra)]:
        ok, data = cv2.imencodeWithMetadata(os.path.splitext(name)[1], image, *exif)
        path = tmp_path / name
        path.write_bytes(data.tobytes())
        expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        got = read_image(path)  # OpenCV's IMREAD_COLOR orients (but would drop alpha)
        assert got.shape == expected.shape and got.flags.c_contiguous
        assert np.array_equal(got, expected), name


def test_read_image_bad_files(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    expected = r"notes.png: could not be decoded as an image, expected an image file \(.jpg"
    with pytest.raises(ValueError, match=expected):
        read_image(tmp_path / "notes.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.jpg: empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg: no such file"):
        read_image(tmp_path / "missing.jpg")


def test_image_sequence(tmp_path):
    frames = make_frames(3, 40, 60)
    files = [write_png(tmp_path / f"{i}.png", f[..., ::-1]) for i, f in enumerate(frames)]
    seq = ImageSequence(files)
    assert (seq.fps, seq.frame_count) == (None, 3)
    got = list(seq)
    assert [(i, t) for i, t, _ in got] == [(0, None), (1, None), (2, None)]
    assert all(np.array_equal(f, frames[i]) for i, _, f in got)

    (tmp_path / "bad.png").write_text("oops")
    files.insert(1, str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="bad.png: could not be decoded"):
        list(ImageSequence(files))
    with ImageSequence(files, skip_unreadable=True) as seq:
        assert [i for i, _, _ in seq] == [0, 2, 3]
    assert len(seq.warnings) == 1
    assert "bad.png: could not be decoded" in seq.warnings[0]
    assert seq.warnings[0].endswith("Skipped.")


def test_find_inputs_expands_folders(tmp_path):
    folder = tmp_path / "session"
    folder.mkdir()
    clip = make_frames(2)
    write_video(folder / "b.mp4", clip)
    write_video(folder / "a.avi", clip, fourcc="MJPG")
    for name in ["img10.png", "img2.PNG", "img1.jpg", ".hidden.png"]:
        write_png(folder / name, clip[0])
    (folder / "notes.txt").write_text("x")
    (folder / "sub").mkdir()
    write_video(folder / "sub" / "deep.mp4", clip)  # not recursive

    single = write_png(tmp_path / "face.png", clip[0])
    odd = tmp_path / "recording.dat"
    odd.write_text("not a video")
    inputs = find_inputs([folder, single, str(odd)])
    images = ["img1.jpg", "img2.PNG", "img10.png"]  # natural order
    assert inputs == [
        Input(str(folder / "a.avi"), "video", "a"),
        Input(str(folder / "b.mp4"), "video", "b"),
        Input(str(folder), "images", "session", tuple(str(folder / n) for n in images)),
        Input(single, "images", "face", (single,)),
        Input(str(odd), "video", "recording"),
    ]
    assert isinstance(inputs[0].open(), VideoReader) and isinstance(inputs[2].open(), ImageSequence)
    with pytest.raises(ValueError, match="recording.dat: could not be opened as a video"):
        inputs[4].open()

    one = str(folder / "b.mp4")
    assert find_inputs(one) == [Input(one, "video", "b")]  # a single path
    # given twice: kept once; same name twice: made unique
    again = find_inputs([one, folder, tmp_path / "session" / ".." / "session" / "b.mp4"])
    assert [i.name for i in again] == ["b", "a", "session"]
    (tmp_path / "x").mkdir()
    write_video(tmp_path / "x" / "session.mp4", clip)
    names = [i.name for i in find_inputs([folder, tmp_path / "x"])]
    assert names == ["a", "b", "session", "session-2"]


def test_find_inputs_errors(tmp_path):
    missing = str(tmp_path / "nope.mp4")
    expected = "nope.mp4: no such file or folder, expected a video, an image or a folder"
    with pytest.raises(FileNotFoundError, match=expected):
        find_inputs([missing])
    empty = tmp_path / "empty"
    empty.mkdir()
    expected = r"empty: folder has no videos or images, expected files ending in .mp4, .avi"
    with pytest.raises(ValueError, match=expected):
        find_inputs([empty])
    (empty / "readme.txt").write_text("x")
    (empty / "sub").mkdir()
    with pytest.raises(ValueError, match=f"{empty}: folder has no videos or images"):
        find_inputs([empty])
    assert os.path.isdir(empty)
