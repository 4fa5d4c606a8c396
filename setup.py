from setuptools import find_packages, setup

setup(
    name="cl-replay",
    version="0.1.0",
    description="Continual learning with generative replay from a conditional-prior VAE (CP-VAE), in Avalanche",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cl_replay", "cl_replay.*", "strategies", "strategies.*"]) + ["cl_replay.configs"],
    # The YAML configs live in the top-level configs/ folder and install as the package cl_replay.configs.
    package_dir={"cl_replay.configs": "configs"},
    package_data={"cl_replay.configs": ["*/*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.16",
        "avalanche-lib>=0.6",
        "numpy",
        "scipy",
        "umap-learn>=0.5",
        "tensorboard",
        "click>=8",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "pillow>=10.1",
    ],
    # Ray runs `cl-replay sweep`; the tests exercise it, so the test extra installs it too.
    extras_require={"sweep": ["ray>=2.9"], "test": ["pytest", "ray>=2.9"]},
    entry_points={"console_scripts": ["cl-replay=cl_replay.cli:main"]},
)
