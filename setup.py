"""Package discovery that pyproject.toml alone cannot express.

``kernels/`` sits at the top of the repository (one folder per concept, as the layout asks)
but installs as ``hyco_rag.kernels`` so its import name cannot clash with other ``kernels``
packages. setuptools does not discover packages behind a package-dir mapping, so we list
them here: every package under ``hyco_rag/`` plus the mapped kernels package.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["hyco_rag", "hyco_rag.*"]), "hyco_rag.kernels"],
    package_dir={"hyco_rag.kernels": "kernels"},
)
