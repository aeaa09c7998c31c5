"""Full MNIST from the four standard IDX files, checked by sha256 and split deterministically.

The data directory is ``$NNCOMPRESS_DATA`` when that is set, else the user cache directory
(``platformdirs.user_cache_dir("nncompress")``). MNIST lives in its ``mnist/`` subfolder, as
``<name>`` (raw IDX) or ``<name>.gz``. A missing file is downloaded from the standard mirrors into
a temporary file, checked, and only then renamed into place, so a partial or corrupt download is
never used.

References: lecun1998gradient
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATA_ENV",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_MEAN",
    "MNIST_STD",
    "ChecksumError",
    "MNIST",
    "data_dir",
    "read_idx",
    "fetch",
    "download",
    "check_sha256",
    "load_mnist",
]

DATA_ENV = "NNCOMPRESS_DATA"

# sha256 of each *decompressed* IDX file: the standard MNIST checksums.
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# The mirrors torchvision uses, tried in order; each serves ``<name>.gz``.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# Mean and standard deviation of the training pixels after division by 255.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ChecksumError(ValueError):
    """A data file's sha256 is not the expected one: it is corrupt or partial and is never used.

    Parameters
    ----------
    message
        What was checked and what to do.
    """


def data_dir() -> Path:
    """Root of the data directory.

    Returns
    -------
    pathlib.Path
        ``$NNCOMPRESS_DATA`` if set, else the user cache directory's ``nncompress``.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("nncompress"))


def _decompressed_bytes(path: Path, gzipped: bool | None = None) -> bytes:
    """The IDX payload of ``path``, gunzipped when ``gzipped`` (default: the name ends in ``.gz``)."""
    if gzipped if gzipped is not None else path.suffix == ".gz":
        try:
            return gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as err:
            raise ChecksumError(f"{path}: not a valid gzip file ({err})") from err
    return path.read_bytes()


def check_sha256(payload: bytes, expected: str, where: str) -> None:
    """Raise :class:`ChecksumError` unless ``payload``'s sha256 is ``expected``.

    Parameters
    ----------
    payload
        The data (decompressed, for a compressed file).
    expected
        Its expected sha256, in hex.
    where
        What the data is, for the message.

    Raises
    ------
    ChecksumError
        If the digests differ: the data is corrupt or partial.
    """
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise ChecksumError(
            f"{where}: sha256 of the (decompressed) data is {actual}, expected {expected}. "
            "The file is corrupt or partial; delete it (or let the loader download it again)."
        )


def read_idx(payload: bytes) -> np.ndarray:
    """Parse an IDX buffer into an array of its declared dtype and shape.

    Parameters
    ----------
    payload
        The bytes of an (uncompressed) IDX file.

    Returns
    -------
    numpy.ndarray
        A read-only view of the data, of the declared dtype and shape.

    Raises
    ------
    ValueError
        If the buffer is not IDX, is truncated, or holds more or fewer bytes than declared.
    """
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0:
        raise ValueError("payload is not an IDX buffer: it must start with two zero bytes")
    code, ndim = payload[2], payload[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"payload has unknown IDX type code {code:#04x}")
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise ValueError("payload is truncated inside the IDX header")
    shape = struct.unpack(f">{ndim}I", payload[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(payload) - header != expected:
        raise ValueError(f"payload holds {len(payload) - header} data bytes, its header declares {expected}")
    return np.frombuffer(payload, dtype=dtype, offset=header).reshape(shape)


def download(url: str, target: Path, timeout: float, check: Callable[[Path], None] | None = None) -> Path:
    """Download ``url`` to ``target`` atomically: into a temporary file beside it, renamed when complete.

    A transfer shorter than its declared length, or a file that ``check`` rejects (by raising),
    is deleted and never appears under ``target``'s name.

    Parameters
    ----------
    url
        What to download.
    target
        Where the file ends up; its folder must exist.
    timeout
        Seconds the connection may stall.
    check
        Called with the temporary file's path before the rename; raises to reject it.

    Returns
    -------
    pathlib.Path
        ``target``.

    Raises
    ------
    ConnectionError
        If the transfer stopped early.
    urllib.error.URLError, OSError
        If the download fails.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
            declared, received = response.headers.get("Content-Length"), out.tell()
        if declared is not None and int(declared) != received:
            raise ConnectionError(f"transfer interrupted after {received} of {declared} bytes")
        if check is not None:
            check(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _download(url: str, target: Path, sha256: str, timeout: float) -> None:
    """Download ``url`` (a gzip file) to ``target`` atomically, checking the payload's sha256."""
    download(url, target, timeout, lambda tmp: check_sha256(_decompressed_bytes(tmp, gzipped=True), sha256,
                                                             f"{target.name} downloaded from {url}"))


def fetch(
    name: str,
    sha256: str,
    folder: str | os.PathLike,
    mirrors: tuple[str, ...] = MNIST_MIRRORS,
    timeout: float = 30.0,
) -> bytes:
    """Return the verified, decompressed payload of IDX file ``name`` from ``folder``.

    ``folder/name`` or ``folder/name.gz`` is used when present; a present file whose checksum is
    wrong raises :class:`ChecksumError` (it is never used, and never silently replaced). A missing
    file is downloaded as ``name.gz`` from each mirror in turn, atomically.

    Parameters
    ----------
    name
        The IDX file's name, e.g. ``"train-images-idx3-ubyte"``.
    sha256
        The expected sha256 of the decompressed payload.
    folder
        Where the file is looked for and downloaded to.
    mirrors
        Base URLs to try in turn.
    timeout
        Seconds per download attempt.

    Returns
    -------
    bytes
        The decompressed, verified payload.

    Raises
    ------
    ChecksumError
        The file (present or downloaded) does not match ``sha256``.
    FileNotFoundError
        The file is missing and no mirror could deliver it, e.g. with no network.
    """
    folder = Path(folder)
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            payload = _decompressed_bytes(candidate)
            check_sha256(payload, sha256, str(candidate))
            return payload
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.gz"
    errors = []
    for mirror in mirrors:
        url = mirror + target.name
        try:
            _download(url, target, sha256, timeout)
        except ChecksumError:
            raise
        except (urllib.error.URLError, OSError, EOFError) as err:
            errors.append(f"{url}: {err}")
            continue
        return _decompressed_bytes(target)
    tried = "; ".join(errors) or "no mirrors given"
    raise FileNotFoundError(
        f"MNIST file {name!r} is not in {folder} and could not be downloaded ({tried}). "
        f"Put {name}.gz (or the raw {name}) into {folder}, or set {DATA_ENV} to a directory "
        "whose mnist/ subfolder holds the four IDX files."
    )


@dataclass(frozen=True)
class MNIST:
    """Normalized MNIST tensors: images ``(n, 1, 28, 28)`` float32, labels ``(n,)`` int64.

    Parameters
    ----------
    train_x, train_y, val_x, val_y, test_x, test_y
        Images and labels of the three splits.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of one split.

        Parameters
        ----------
        name
            ``"train"``, ``"val"`` or ``"test"``.

        Returns
        -------
        tuple of torch.Tensor
            Images and labels.

        Raises
        ------
        ValueError
            For another name.
        """
        if name not in ("train", "val", "test"):
            raise ValueError(f"name must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def _images(payload: bytes) -> torch.Tensor:
    pixels = torch.from_numpy(read_idx(payload).copy()).float().div_(255.0)
    return pixels.sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)  # (n, 1, 28, 28)


def _labels(payload: bytes) -> torch.Tensor:
    return torch.from_numpy(read_idx(payload).astype(np.int64))


def load_mnist(
    root: str | os.PathLike | None = None,
    val_size: int = 5000,
    seed: int = 0,
    mirrors: tuple[str, ...] = MNIST_MIRRORS,
    files: dict[str, str] | None = None,
) -> MNIST:
    """Load full MNIST (60,000 train, 10,000 test), normalized, with a held-out validation split.

    The last ``val_size`` images of a fixed permutation (``torch.Generator`` seeded with
    ``seed``) of the training set form the validation split, so the split is the same on every
    machine. ``val_size=0`` keeps all 60,000 for training.

    Parameters
    ----------
    root : data directory (default :func:`data_dir`); the files are read from ``root/mnist``.
    val_size : images held out from the training set, in ``[0, n_train)``.
    seed : seed of the validation permutation.
    mirrors : base URLs to download missing files from.
    files : ``{name: sha256}`` of the four IDX files (default :data:`MNIST_FILES`).

    Returns
    -------
    MNIST
        The three splits.

    Raises
    ------
    ChecksumError
        If a file is corrupt or partial (it is never used).
    FileNotFoundError
        If a file is missing and cannot be downloaded.
    ValueError
        For a bad ``val_size`` or ``files``.

    References
    ----------
    lecun1998gradient
    """
    files = dict(MNIST_FILES if files is None else files)
    folder = Path(root if root is not None else data_dir()) / "mnist"
    names = sorted(files)
    kinds = {n: n.split("-")[0] + "-" + n.split("-")[1] for n in names}  # e.g. "train-images"
    if sorted(kinds.values()) != ["t10k-images", "t10k-labels", "train-images", "train-labels"]:
        raise ValueError(f"files must name the four MNIST IDX files, got {names}")
    payloads = {kinds[n]: fetch(n, files[n], folder, mirrors) for n in names}
    train_x, train_y = _images(payloads["train-images"]), _labels(payloads["train-labels"])
    test_x, test_y = _images(payloads["t10k-images"]), _labels(payloads["t10k-labels"])
    n = len(train_y)
    if not isinstance(val_size, int) or not 0 <= val_size < n:
        raise ValueError(f"val_size must be an int in [0, {n}), got {val_size!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep, held = order[: n - val_size].sort().values, order[n - val_size :].sort().values
    return MNIST(train_x[keep], train_y[keep], train_x[held], train_y[held], test_x, test_y)
