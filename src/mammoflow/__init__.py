"""mammoflow: mammography classifiers as batch jobs, on Kubernetes or one laptop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mammoflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
