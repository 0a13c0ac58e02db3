"""Package discovery (everything else is in pyproject.toml).

components/ and pipelines/ sit at the top of the repository but install as mammoflow.components and
mammoflow.pipelines, so container images and `mammoflow pipeline` import them like the rest of the library.
"""

from setuptools import find_packages, setup

EXTRA = {"mammoflow.components": "components", "mammoflow.pipelines": "pipelines"}

setup(
    packages=find_packages("src") + sorted(EXTRA),
    package_dir={"": "src", **EXTRA},
)
