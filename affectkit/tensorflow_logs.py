"""Hiding TensorFlow's C++ start-up lines from stderr (the command line's default).

TensorFlow 2.21 writes, whatever `TF_CPP_MIN_LOG_LEVEL` says, lines such as

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796161098.077920    4843 port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:1796161098.078488    4843 cudart_stub.cc:31] Could not find cuda drivers ...
    I0000 00:00:1796161098.247625    4843 cpu_feature_guard.cc:227] This TensorFlow binary ...
    To enable the following instructions: AVX2 AVX512F ..., rebuild TensorFlow with ...

straight to file descriptor 2, from C++. `quiet_tensorflow_logs()` points descriptor 2 at a
pipe read by a small filter process that drops those lines (`TensorFlowNoise`) and passes
everything else through as it comes: Python warnings, tracebacks, real TensorFlow warnings
and errors, progress bars. The filter is a separate process so that what a crashing
process wrote last (e.g. a `Check failed` before an abort) still reaches the terminal.

Dropped (each matched as a whole line):
- the absl pre-initialisation notice above, and every C++ INFO line (`I` + date header);
- the continuation line "To enable the following instructions: ... compiler flags.";
- `failed call to cuInit` when TensorFlow said before that it found no CUDA driver (a
  machine without a GPU driver; on one with a driver the error is kept);
- grappler's `remapper failed: ... LeakyReluGrad ... BiasAdd` error. TensorFlow's oneDNN
  remapper (on by default on x86 CPUs) tries to fuse Conv2D + BiasAdd + LeakyRelu in a
  training graph although the LeakyRelu gradient still reads the BiasAdd output; it finds
  the rewrite invalid, logs this error and keeps that graph as it was before the pass,
  so training computes the same operations unfused (MTANet's neck prints it once per
  traced training function).
"""

import contextlib
import os
import re
import subprocess
import sys

# absl's line header after the level letter: date, time (before absl is initialised the
# seconds field holds seconds since the epoch: "0000 00:00:1796161098.077920"), thread, file.
_ABSL_HEADER = r"\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.-]+:\d+\] "
_NOISE_LINES = tuple(
    re.compile(pattern.encode())
    for pattern in (
        r"WARNING: All log messages before absl::InitializeLog\(\) is called are written "
        r"to STDERR\s*",
        "I" + _ABSL_HEADER + r".*",
        r"To enable the following instructions: .*rebuild TensorFlow with the appropriate "
        r"compiler flags\.\s*",
        # TensorFlow Lite's interpreter (BlazeFace in `affectkit predict`), once per model.
        r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.\s*",
        "E" + _ABSL_HEADER + r"remapper failed: INVALID_ARGUMENT: Mutation::Apply error: "
        r"fanout '[^']*/LeakyReluGrad' exist for missing node '[^']*/BiasAdd'\.\s*",
    )
)
_NO_CUDA_DRIVER = re.compile(("I" + _ABSL_HEADER + r"Could not find cuda drivers").encode())
_CUINIT_FAILED = re.compile(("E" + _ABSL_HEADER + r"failed call to cuInit: .*").encode())
# Starts of the lines above: a partial line that may still become one is held back.
_LITERAL_STARTS = (b"WARNING: All log messages before absl", b"To enable the following instructions",
                   b"INFO: Created TensorFlow Lite XNNPACK delegate")
_HEADER_SHAPE = b"L0000 00:00:0"  # L: a log level letter, 0: a digit


class TensorFlowNoise:
    """Tells TensorFlow's C++ start-up lines from everything else, line by line.

    Example:
    >>> noise = TensorFlowNoise()
    >>> noise.is_noise(b"I0000 00:00:1796161098.077920    4843 port.cc:153] oneDNN ...\\n")
    True
    >>> noise.is_noise(b"Traceback (most recent call last):\\n")
    False
    """

    def __init__(self):
        self.no_cuda_driver = False

    def is_noise(self, line):
        """Whether a whole line (bytes, with or without its newline) is to be dropped."""
        line = line.rstrip(b"\r\n")
        if _NO_CUDA_DRIVER.match(line):
            self.no_cuda_driver = True
        if self.no_cuda_driver and _CUINIT_FAILED.fullmatch(line):
            return True
        return any(pattern.fullmatch(line) for pattern in _NOISE_LINES)

    @staticmethod
    def may_become_noise(start):
        """Whether a line's first bytes (no newline yet) may still be a noise line."""
        if b"\r" in start:  # progress bars redraw with \r; log lines never hold one
            return False
        if any(literal.startswith(start[: len(literal)]) for literal in _LITERAL_STARTS):
            return True
        for byte, shape in zip(start, _HEADER_SHAPE):
            if shape == ord("L"):
                ok = byte in b"IWEF"
            elif shape == ord("0"):
                ok = ord("0") <= byte <= ord("9")
            else:
                ok = byte == shape
            if not ok:
                return False
        return True


def filter_stream(read_fd, write_fd, noise=None):
    """Copies `read_fd` to `write_fd` until end of file, dropping noise lines.

    Complete lines are judged whole; the start of a line that cannot become a noise line
    is passed on at once (so that prompts and progress bars without a newline show).
    """
    noise = noise or TensorFlowNoise()
    pending = b""  # start of the current line, held back
    passing = False  # the current line's start was passed on: pass the rest too
    while True:
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        pending += chunk
        out = []
        while True:
            end = pending.find(b"\n") + 1
            if not end:
                break
            line, pending = pending[:end], pending[end:]
            if passing or not noise.is_noise(line):
                out.append(line)
            passing = False
        if pending and (passing or not noise.may_become_noise(pending)):
            out.append(pending)
            pending, passing = b"", True
        if out:
            _write_all(write_fd, b"".join(out))
    if pending and (passing or not noise.is_noise(pending)):
        _write_all(write_fd, pending)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_FILTER_PROGRAM = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from affectkit.tensorflow_logs import filter_stream; filter_stream(0, 1)"
)


@contextlib.contextmanager
def quiet_tensorflow_logs(enabled=True):
    """Within the block, TensorFlow's C++ start-up lines are dropped from stderr.

    Everything else written to file descriptor 2 (by Python, C++ or child processes)
    passes through unchanged and in order. On leaving the block, descriptor 2 is restored
    once the filter has passed on everything written before.

    Args:
        enabled: False leaves stderr alone (the command line's `--verbose`).
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:  # no usable descriptor 2: nothing to filter
        yield
        return
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        filter_process = subprocess.Popen(
            [sys.executable, "-S", "-c", _FILTER_PROGRAM, package_parent],
            stdin=read_fd, stdout=saved, stderr=saved,
            start_new_session=True,  # a Ctrl-C for this process does not stop the filter
        )
    except OSError:
        for fd in (saved, read_fd, write_fd):
            os.close(fd)
        yield
        return
    os.close(read_fd)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes this process's last write end of the pipe
        os.close(saved)
        try:
            filter_process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a child process still holds the pipe
            pass
