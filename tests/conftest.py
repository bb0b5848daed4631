"""Test setup: two logical CPU devices (for MirroredStrategy tests), quiet TF logs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the command line sets it

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialised by another conftest import
    pass


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A tiny synthetic Aff-Wild2 layout (ABAW3 names), generated once per test session."""
    from affectkit.data.synthetic import write_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    write_demo_dataset(str(root), edition="abaw3", videos=6, frames=40, seed=3)
    return str(root)


@pytest.fixture(scope="session")
def default_demo_root(tmp_path_factory):
    """The demo data of `make demo` (`affectkit demo-data` defaults, ABAW3), for slow tests."""
    from affectkit.data.synthetic import DEMO_DEFAULTS, write_demo_dataset

    root = tmp_path_factory.mktemp("default_demo") / "data"
    write_demo_dataset(str(root), edition="abaw3", **DEMO_DEFAULTS)
    return str(root)
