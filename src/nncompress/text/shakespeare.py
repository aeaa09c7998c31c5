"""Tiny Shakespeare: 1,115,394 characters of Shakespeare's plays (Karpathy's char-rnn corpus).

:func:`load_tinyshakespeare` reads ``<data dir>/tinyshakespeare/input.txt`` (see
:func:`nncompress.data.data_dir`), checked by its sha256; when the file is missing it is
downloaded atomically from the char-rnn repository and checked before it is written. The first
90 % of the characters are the training part and the last 10 % the validation part, as nanoGPT
splits them (:func:`shakespeare_split`).

References: karpathy2015charrnn
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .. import validate
from ..data import ChecksumError, check_sha256, data_dir, download

__all__ = ["SHAKESPEARE_SHA256", "SHAKESPEARE_URLS", "load_tinyshakespeare", "shakespeare_split", "shakespeare_lines"]

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_URLS = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",)


def load_tinyshakespeare(root: str | os.PathLike | None = None, urls: Sequence[str] = SHAKESPEARE_URLS,
                         timeout: float = 60.0) -> str:
    """The text of Tiny Shakespeare, checked by its sha256.

    Parameters
    ----------
    root
        The data folder (default :func:`nncompress.data.data_dir`); the file is
        ``<root>/tinyshakespeare/input.txt``.
    urls
        Where to download a missing file from, tried in turn.
    timeout
        Seconds allowed for each download.

    Returns
    -------
    str
        The whole text (1,115,394 characters).

    Raises
    ------
    ChecksumError
        If the file on disk, or a downloaded one, is not the expected file (it is never used).
    FileNotFoundError
        If the file is missing and no URL could provide it.
    """
    path = Path(root if root is not None else data_dir()) / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        errors = []
        path.parent.mkdir(parents=True, exist_ok=True)
        for url in urls:
            try:
                download(url, path, timeout, lambda tmp: check_sha256(tmp.read_bytes(), SHAKESPEARE_SHA256, url))
                break
            except ChecksumError:
                raise
            except OSError as err:  # urllib's URLError is an OSError
                errors.append(f"{url}: {err}")
        else:
            raise FileNotFoundError(f"{path} is missing and could not be downloaded ({'; '.join(errors) or 'no URLs'}). "
                                    f"Put char-rnn's data/tinyshakespeare/input.txt there.")
    payload = path.read_bytes()
    check_sha256(payload, SHAKESPEARE_SHA256, str(path))
    return payload.decode("utf-8")


def shakespeare_split(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """The training and validation parts of ``text``: its first ``train_fraction`` of characters, and the rest.

    Parameters
    ----------
    text
        The corpus (:func:`load_tinyshakespeare`).
    train_fraction
        In (0, 1): 0.9, as nanoGPT.

    Returns
    -------
    tuple of str
        ``(train, validation)``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    cut = int(len(text) * validate.number(train_fraction, "train_fraction", 0.0, 1.0, low_open=True, high_open=True))
    return text[:cut], text[cut:]


def shakespeare_lines(text: str, min_words: int = 4) -> list[str]:
    """The distinct lines of ``text`` with at least ``min_words`` words, in order: unlabeled sentences.

    Speakers' names (lines ending in a colon) and short lines are left out.

    Parameters
    ----------
    text
        Part of the corpus, e.g. the training part of :func:`shakespeare_split`.
    min_words
        An int >= 1.

    Returns
    -------
    list of str
        The stripped lines.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    min_words = validate.integer(min_words, "min_words", 1)
    lines = (line.strip() for line in text.splitlines())
    return list(dict.fromkeys(line for line in lines if len(line.split()) >= min_words and not line.endswith(":")))
