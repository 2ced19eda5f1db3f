from setuptools import find_packages, setup

setup(
    name="objpretrain",
    version="0.1.0",
    description="Object-level self-supervised pretraining of detectors (SoCo, object-aware cropping) on Detectron2",
    packages=find_packages(include=["objpretrain", "objpretrain.*"]),
    python_requires=">=3.10",
    # Dependencies are pinned in requirements/*.txt and installed by `make setup`
    # (Detectron2 cannot be resolved by pip on Python 3.11, see requirements/detectron2.txt).
    install_requires=[],
)
