"""The stderr filter of the command line: TensorFlow's C++ start-up lines go, everything else
(errors, tracebacks, output of crashing processes and of child processes) stays."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from affectkit.tensorflow_logs import TensorFlowNoise, filter_stream
from tests.keras_checks import REPO_ROOT

# Written by TensorFlow 2.21 on this project's CPU machine (no GPU driver), verbatim.
NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796161098.077920    4843 port.cc:153] oneDNN custom operations are on. You "
    b"may see slightly different numerical results due to floating-point round-off errors "
    b"from different computation orders. To turn them off, set the environment variable "
    b"`TF_ENABLE_ONEDNN_OPTS=0`.\n",
    b"I0000 00:00:1796161098.078488    4843 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.\n",
    b"I0000 00:00:1796161098.247625    4843 cpu_feature_guard.cc:227] This TensorFlow binary "
    b"is optimized to use available CPU instructions in performance-critical operations.\n",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in "
    b"other operations, rebuild TensorFlow with the appropriate compiler flags.\n",
    b"E0000 00:00:1796161315.299326    7366 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    b"E0000 00:00:1796161330.951556    7366 meta_optimizer.cc:967] remapper failed: "
    b"INVALID_ARGUMENT: Mutation::Apply error: fanout 'StatefulPartitionedCall/gradient_tape/"
    b"mtanet_1/neck_max_lrelu_1/LeakyRelu/LeakyReluGrad' exist for missing node "
    b"'StatefulPartitionedCall/mtanet_1/neck_max_conv_1/BiasAdd'.\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
]
KEPT = [
    b"Traceback (most recent call last):\n",
    b"ValueError: /data/x.txt: expected 2 values, line 3\n",
    b"WARNING:tensorflow:5 out of the last 5 calls to <function f> triggered tf.function "
    b"retracing.\n",
    b"W0000 00:00:1796161330.951556    7366 op_level_cost_estimator.cc:699] Error in "
    b"PredictCost() for the op: op: \"CropAndResize\"\n",
    b"E0000 00:00:1796161330.951556    7366 meta_optimizer.cc:967] layout failed: "
    b"INVALID_ARGUMENT: Size of values 0 does not match size of permutation 4.\n",
    b"F0000 00:00:1796161330.951556    7366 tensor_shape.cc:45] Check failed: d >= 0\n",
    b"Epoch 1/3\n",
]


def test_noise_lines_are_recognised_and_the_rest_kept():
    noise = TensorFlowNoise()
    assert [line for line in NOISE if not noise.is_noise(line)] == []
    assert [line for line in KEPT if noise.is_noise(line)] == []


def test_cuinit_failure_is_kept_when_a_cuda_driver_was_found():
    cuinit = NOISE[5]
    assert not TensorFlowNoise().is_noise(cuinit)  # no "Could not find cuda drivers" before


def test_may_become_noise_holds_back_only_possible_noise():
    noise = TensorFlowNoise()
    for line in NOISE:
        for end in (1, 5, 12, 30, len(line) - 1):
            assert noise.may_become_noise(line[:end]), line[:end]
    for start in (b"Epoch 1/3", b"Extracting  40%|####  \r", b"WARNING:tensorflow:5",
                  b"E: disk full", b"I0000 00:0x"):
        assert not noise.may_become_noise(start), start


def run_filter(chunks):
    """Bytes out of `filter_stream` for `chunks` written one after the other."""
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    worker = threading.Thread(target=filter_stream, args=(read_in, write_out))
    worker.start()
    for chunk in chunks:
        os.write(write_in, chunk)
    os.close(write_in)
    worker.join(timeout=10)
    os.close(write_out)
    out = b""
    while data := os.read(read_out, 1 << 16):
        out += data
    os.close(read_in)
    os.close(read_out)
    return out


def test_filter_stream_drops_noise_split_across_writes_and_keeps_the_rest():
    stream = b"".join(NOISE[:3] + KEPT[:2] + NOISE[3:] + KEPT[2:]) + b"50%\rno newline at end"
    chunks = [stream[i:i + 37] for i in range(0, len(stream), 37)]
    assert run_filter(chunks) == b"".join(KEPT) + b"50%\rno newline at end"


def run_python(script):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, timeout=120)


def test_quiet_tensorflow_logs_keeps_errors_tracebacks_and_child_output():
    result = run_python(
        f"""
        import os, subprocess, sys
        from affectkit.tensorflow_logs import quiet_tensorflow_logs
        with quiet_tensorflow_logs():
            os.write(2, {b"".join(NOISE)!r})
            print("python stderr", file=sys.stderr)
            os.write(2, {KEPT[4]!r})
            subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child')"])
        print("restored", file=sys.stderr)
        with quiet_tensorflow_logs():
            os.write(2, {NOISE[1]!r})
            raise RuntimeError("boom")
        """
    )
    err = result.stderr
    assert result.returncode == 1
    assert not any(line.strip() in err for line in NOISE), err
    order = [err.index(part) for part in
             (b"python stderr", KEPT[4].strip(), b"child", b"restored", b"Traceback",
              b"RuntimeError: boom")]
    assert order == sorted(order), err


def test_what_a_crashing_process_wrote_last_still_shows():
    result = run_python(
        f"""
        import os
        from affectkit.tensorflow_logs import quiet_tensorflow_logs
        with quiet_tensorflow_logs():
            os.write(2, {NOISE[1] + KEPT[5]!r})
            os.abort()
        """
    )
    assert result.returncode != 0
    assert KEPT[5].strip() in result.stderr and b"oneDNN" not in result.stderr


def test_tensorflow_start_up_and_remapper_lines_are_hidden():
    """Real TensorFlow: import, and one training step of Conv2D + LeakyReLU (the pattern
    whose remapper error MTANet's neck prints) under the filter."""
    result = run_python(
        """
        import os
        from affectkit.tensorflow_logs import quiet_tensorflow_logs
        with quiet_tensorflow_logs():
            import numpy as np, keras
            inputs = keras.Input((4, 4, 2))
            x = keras.layers.LeakyReLU(0.01)(keras.layers.Conv2D(3, 1)(inputs))
            model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
            model.compile(optimizer="sgd", loss="mse")
            model.fit(np.ones((2, 4, 4, 2)), np.zeros((2, 3)), epochs=1, verbose=0)
            os.write(2, b"a real error\\n")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr.decode()
    for hidden in ("absl::InitializeLog", "port.cc", "cudart_stub.cc", "cpu_feature_guard.cc",
                   "To enable the following instructions", "remapper failed"):
        assert hidden not in err, err
    assert "a real error" in err


@pytest.mark.slow
def test_remapper_line_appears_without_the_filter():
    """The other half of the check above: this TensorFlow does print the hidden line."""
    result = run_python(
        """
        import numpy as np, keras
        inputs = keras.Input((4, 4, 2))
        x = keras.layers.LeakyReLU(0.01)(keras.layers.Conv2D(3, 1)(inputs))
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.ones((2, 4, 4, 2)), np.zeros((2, 3)), epochs=1, verbose=0)
        """
    )
    assert result.returncode == 0
    lines = [line + b"\n" for line in result.stderr.splitlines() if b"remapper failed" in line]
    assert lines and all(TensorFlowNoise().is_noise(line) for line in lines)
