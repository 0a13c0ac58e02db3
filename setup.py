"""Package discovery (everything else is in pyproject.toml).

components/ and pipelines/ sit at the top of the repository but install as mammoflow.components and
mammoflow.pipelines, so container images and `mammoflow pipeline` import them like the rest of the library.
The data folders (presets, templates, data) are found as namespace packages, so that setuptools ships their
package data without warning that they are importable but unlisted.
"""

from setuptools import find_namespace_packages, setup

EXTRA = {"mammoflow.components": "components", "mammoflow.pipelines": "pipelines"}

setup(
    packages=find_namespace_packages("src", include=["mammoflow*"], exclude=["*.__pycache__"]) + sorted(EXTRA),
    package_dir={"": "src", **EXTRA},
)
