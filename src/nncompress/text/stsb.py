"""The STS Benchmark (Cer et al., 2017): 8,628 English sentence pairs scored 0 to 5 for similarity.

:func:`load_stsb` reads the three splits, checked by sha256, from ``<data dir>/stsb`` (see
:func:`nncompress.data.data_dir`); a missing split is taken from the authors' archive, which is
downloaded atomically, and each member is checked before anything is written.

References: cer2017semeval
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import urllib.error
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import validate
from ..data import ChecksumError, check_sha256, data_dir, download

__all__ = ["STSB_FILES", "STSB_MIRRORS", "STSPairs", "STSB", "read_sts", "load_stsb"]

# sha256 of each split as the authors distribute it (folder stsbenchmark/ of their archive).
STSB_FILES = {
    "sts-train.csv": "0f71910b59aa1ad973c5897f0791f3b0965a92b8f82b1a95f3eea9f4162fda82",
    "sts-dev.csv": "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234",
    "sts-test.csv": "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a",
}
# The authors' archive (the STS wiki), tried in order; each member is checked by its sha256.
STSB_MIRRORS = (
    "http://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz",
    "http://ixa2.si.ehu.es/stswiki/images/4/48/Stsbenchmark.tar.gz",
)

@dataclass(frozen=True)
class STSPairs:
    """Sentence pairs with gold similarity scores in [0, 5].

    Parameters
    ----------
    first, second
        The two sentences of each pair.
    scores
        The gold scores, float64, one per pair.
    """

    first: tuple[str, ...]
    second: tuple[str, ...]
    scores: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)

    def sentences(self) -> list[str]:
        """The distinct sentences of the pairs, in order of first appearance."""
        return list(dict.fromkeys(self.first + self.second))


@dataclass(frozen=True)
class STSB:
    """The three splits of the STS Benchmark: 5,749 train, 1,500 dev and 1,379 test pairs."""

    train: STSPairs
    dev: STSPairs
    test: STSPairs

    def split(self, name: str) -> STSPairs:
        """One split by name: ``"train"``, ``"dev"`` or ``"test"``."""
        return getattr(self, validate.choice(name, "name", ("train", "dev", "test")))


def read_sts(payload: bytes) -> STSPairs:
    """Parse one STS-B file: UTF-8, tab-separated, score in field 5, sentences in fields 6 and 7.

    Parameters
    ----------
    payload
        The file's bytes.

    Returns
    -------
    STSPairs
        Its pairs, in file order. Fields after the seventh (source notes on a few lines) are
        ignored.

    Raises
    ------
    ValueError
        If a line has fewer than seven fields or a score outside [0, 5].
    """
    first, second, scores = [], [], []
    for number, line in enumerate(payload.decode("utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 7:
            raise ValueError(f"line {number} has {len(fields)} tab-separated fields, an STS-B line has at least 7")
        score = float(fields[4])
        if not 0.0 <= score <= 5.0:
            raise ValueError(f"line {number}: score {score} is outside [0, 5]")
        first.append(fields[5])
        second.append(fields[6])
        scores.append(score)
    return STSPairs(tuple(first), tuple(second), torch.tensor(scores, dtype=torch.float64))


def _fetch_stsb(folder: Path, missing: list[str], files: Mapping[str, str], mirrors: Sequence[str],
                timeout: float) -> None:
    """Download the archive, check the ``missing`` members and write each atomically into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in mirrors:
        archive = folder / ".Stsbenchmark.tar.gz"
        try:
            download(url, archive, timeout)
            with tarfile.open(archive, "r:gz") as tar:
                payloads = {}
                for name in missing:
                    member = tar.extractfile(f"stsbenchmark/{name}")
                    if member is None:
                        raise ChecksumError(f"{url}: the archive has no stsbenchmark/{name}")
                    payloads[name] = member.read()
                    check_sha256(payloads[name], files[name], f"{name} from {url}")
        except (urllib.error.URLError, OSError, EOFError, KeyError, tarfile.TarError) as err:
            errors.append(f"{url}: {err}")
            continue
        finally:
            archive.unlink(missing_ok=True)
        for name, payload in payloads.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
            os.replace(tmp, folder / name)
        return
    raise FileNotFoundError(
        f"STS-B files {missing} are not in {folder} and could not be downloaded ({'; '.join(errors) or 'no mirrors'}). "
        f"Put {', '.join(missing)} (from the STS wiki's Stsbenchmark.tar.gz) into {folder}."
    )


def load_stsb(root: str | os.PathLike | None = None, mirrors: Sequence[str] = STSB_MIRRORS,
              files: Mapping[str, str] | None = None, timeout: float = 30.0) -> STSB:
    """Load the STS Benchmark's three splits, each checked by its sha256.

    Parameters
    ----------
    root
        The data directory (default :func:`nncompress.data.data_dir`); files are read from
        ``root/stsb``.
    mirrors
        URLs of the authors' archive, tried in turn for missing files.
    files
        ``{file name: sha256}`` of the three splits (default :data:`STSB_FILES`).
    timeout
        Seconds a download may stall.

    Returns
    -------
    STSB
        Train, dev and test pairs.

    Raises
    ------
    ChecksumError
        If a present or downloaded file is corrupt or partial (it is never used).
    FileNotFoundError
        If a file is missing and cannot be downloaded.
    ValueError
        If ``files`` does not name the three splits.

    References
    ----------
    cer2017semeval
    """
    files = dict(STSB_FILES if files is None else files)
    if sorted(files) != sorted(STSB_FILES):
        raise ValueError(f"files must name {sorted(STSB_FILES)}, got {sorted(files)}")
    folder = Path(root if root is not None else data_dir()) / "stsb"
    missing = [name for name in files if not (folder / name).exists()]
    if missing:
        _fetch_stsb(folder, missing, files, mirrors, timeout)
    splits = {}
    for name, sha256 in files.items():
        payload = (folder / name).read_bytes()
        check_sha256(payload, sha256, str(folder / name))
        splits[name.split("-")[1].split(".")[0]] = read_sts(payload)
    return STSB(splits["train"], splits["dev"], splits["test"])
