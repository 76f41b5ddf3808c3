"""kosmos-jax: train, evaluate and serve Kosmos-1-style multimodal LLMs in JAX."""
import setuptools

# Ranges are the versions this project is tested with (see README "Tested versions");
# the upper bounds keep a fresh install from picking up an untested major release.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "seqio==0.0.20",
    "tensorflow-cpu>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    "clu==0.0.12",
    "tensorboard>=2.21,<2.22",
    "gin-config>=0.5.0,<0.6",
    "ml-collections>=1.1,<1.2",
    "sentencepiece>=0.2.0,<0.3",
    "pillow>=11",
    "safetensors>=0.8,<0.9",
    "pyarrow>=14",   # img2dataset parquet sources
    "importlib_resources",   # TFDS needs it to prepare datasets and does not declare it
    "numpy>=2.0",
]

EXTRAS_REQUIRE = {
    # Reference implementations used only by tests and benchmarks (never imported by the package).
    # torch is pinned to the CPU build that ships on the CI machines; torchscale is installed
    # separately with --no-deps by the Makefile (its deps would pull timm/torchvision).
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.6",       # --no-loadscope-reorder (Makefile)
        "ruff>=0.17,<0.18",
        "torch==2.13.0",
        "transformers>=5.20,<6",
        "fairscale==0.4.0",
        "pycocoevalcap==1.2",
        # Real writers and real photos for the data-source tests.
        "webdataset>=0.2.100",
        "scikit-image>=0.24",
    ],
    # What `make demo` needs beyond the runtime: the caption metrics (pycocoevalcap, with Java).
    "demo": ["pycocoevalcap==1.2"],
    "eval": ["pycocoevalcap==1.2"],
    # The TPU runtime and compiler (libtpu from PyPI, about 700 MB): training on Cloud TPU, and
    # `python -m kosmos_jax.plan --topology=...` compiling for a TPU slice on a CPU host.
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
}

setuptools.setup(
    name="kosmos_jax",
    version="0.1.0",
    description="JAX-native training, evaluation and serving of Kosmos-1-style multimodal LLMs",
    packages=setuptools.find_packages(include=["kosmos_jax", "kosmos_jax.*"]),
    python_requires=">=3.11,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
