"""Parameters shared by several pipelines are declared once (``mammoflow.pipelines.signature.takes``): KFP sees
them in each pipeline's signature, typed, with their defaults and descriptions, and the pipeline body gets them as
one object."""

# No `from __future__ import annotations`: `takes` and KFP read live annotations.
import inspect

import pytest

from mammoflow.pipelines.data import DataParameters
from mammoflow.pipelines.signature import takes


def test_shared_parameters_are_laid_out_in_the_signature() -> None:
    @takes(DataParameters, storage_root="gs://b/m")
    def pipeline(data: DataParameters, spec: str = "demo") -> tuple:
        """A pipeline.

        Args:
            spec: Its own parameter.
        """
        return data, spec

    sig = inspect.signature(pipeline)
    assert list(sig.parameters)[:2] == ["source", "data_root"] and list(sig.parameters)[-1] == "spec"
    assert "data" not in sig.parameters and sig.parameters["n_demo_images"].annotation is int
    assert sig.parameters["storage_root"].default == "gs://b/m" and sig.parameters["labels"].default == ""
    # KFP calls a pipeline function positionally, in signature order; a caller may name them too.
    data, spec = pipeline("dicom-dir", spec="s", labels="l.csv")
    assert (data.source, data.labels, data.storage_root, data.seed, spec) == ("dicom-dir", "l.csv", "gs://b/m", 0,
                                                                              "s")
    doc = inspect.getdoc(pipeline)
    assert doc.startswith("A pipeline.\n\nArgs:\n    source: phantoms (built-in demo data)")
    assert "\n    labels: dicom-dir: labels CSV" in doc and doc.endswith("\n    spec: Its own parameter.")


def test_a_pipeline_cannot_take_a_shared_parameter_twice() -> None:
    def clash(data: DataParameters, seed: int = 0) -> None:
        """Args:
            seed: Also a data parameter.
        """

    with pytest.raises(TypeError, match=r"\['seed'\] are already in DataParameters"):
        takes(DataParameters)(clash)
    with pytest.raises(TypeError, match="needs exactly one parameter annotated DataParameters"):
        takes(DataParameters)(lambda spec: None)
    with pytest.raises(TypeError, match=r"no parameter\(s\) \['nope'\]"):
        takes(DataParameters, nope=1)
