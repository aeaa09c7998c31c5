"""The MNIST loader on tiny IDX files written here, and its download path against a local server."""

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from nncompress import data

N_TRAIN, N_TEST = 12, 5


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def tiny():
    """Four tiny IDX payloads with the MNIST names, and their sha256 table."""
    rng = np.random.default_rng(0)
    payloads = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(N_TRAIN, dtype=np.uint8) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(N_TEST, dtype=np.uint8) % 10),
    }
    return payloads, {n: hashlib.sha256(p).hexdigest() for n, p in payloads.items()}


def write(folder: Path, payloads: dict, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_loads_raw_and_gzip_files(tmp_path, tiny, gz):
    payloads, hashes = tiny
    write(tmp_path / "mnist", payloads, gz)
    mnist = data.load_mnist(tmp_path, val_size=3, files=hashes, mirrors=())
    assert mnist.train_x.shape == (N_TRAIN - 3, 1, 28, 28) and mnist.val_x.shape == (3, 1, 28, 28)
    assert mnist.test_x.shape == (N_TEST, 1, 28, 28) and mnist.test_y.dtype == torch.int64
    raw = np.frombuffer(payloads["t10k-images-idx3-ubyte"][16:], dtype=np.uint8).reshape(N_TEST, 1, 28, 28)
    expected = (torch.from_numpy(raw.copy()).float() / 255 - data.MNIST_MEAN) / data.MNIST_STD
    torch.testing.assert_close(mnist.test_x, expected)


def test_validation_split_is_deterministic_and_disjoint(tmp_path, tiny):
    payloads, hashes = tiny
    write(tmp_path / "mnist", payloads, gz=True)
    a = data.load_mnist(tmp_path, val_size=4, seed=1, files=hashes, mirrors=())
    b = data.load_mnist(tmp_path, val_size=4, seed=1, files=hashes, mirrors=())
    c = data.load_mnist(tmp_path, val_size=4, seed=2, files=hashes, mirrors=())
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.val_x, c.val_x)
    # train and val partition the original training set: every image appears exactly once
    whole = torch.cat([a.train_x, a.val_x]).flatten(1)
    assert len(torch.unique(whole, dim=0)) == N_TRAIN
    with pytest.raises(ValueError, match="val_size"):
        data.load_mnist(tmp_path, val_size=N_TRAIN, files=hashes, mirrors=())


def test_corrupted_local_file_is_rejected_with_both_hashes(tmp_path, tiny):
    payloads, hashes = tiny
    write(tmp_path / "mnist", payloads, gz=True)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    bad = bytearray(payloads["train-labels-idx1-ubyte"])
    bad[-1] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(bad)))
    with pytest.raises(data.ChecksumError) as err:
        data.load_mnist(tmp_path, val_size=0, files=hashes, mirrors=())
    message = str(err.value)
    assert "train-labels-idx1-ubyte" in message
    assert hashes["train-labels-idx1-ubyte"] in message and hashlib.sha256(bytes(bad)).hexdigest() in message


def test_truncated_gzip_is_rejected(tmp_path, tiny):
    payloads, hashes = tiny
    write(tmp_path / "mnist", payloads, gz=True)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(data.ChecksumError, match="t10k-images"):
        data.load_mnist(tmp_path, val_size=0, files=hashes, mirrors=())


def test_read_idx_rejects_malformed_buffers(tiny):
    payload = tiny[0]["train-labels-idx1-ubyte"]
    assert data.read_idx(payload).tolist() == [i % 10 for i in range(N_TRAIN)]
    with pytest.raises(ValueError, match="two zero bytes"):
        data.read_idx(b"\x01\x00\x08\x01")
    with pytest.raises(ValueError, match="type code"):
        data.read_idx(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="declares"):
        data.read_idx(payload[:-1])


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}  # path -> (body, declared length)

    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path not in self.files:
            self.send_error(404)
            return
        body, length = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)  # fewer bytes than declared: the client sees a cut transfer
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 serving ``_Handler.files``; yields (base URL, files dict)."""
    files = {}
    handler = type("Handler", (_Handler,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", files
    finally:
        httpd.shutdown()
        httpd.server_close()


def serve(files: dict, payloads: dict, corrupt: str | None = None, cut: str | None = None) -> None:
    for name, payload in payloads.items():
        if name == corrupt:
            payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
        body = gzip.compress(payload)
        length = len(body)
        if name == cut:
            body = body[: len(body) // 2]
        files[f"/{name}.gz"] = (body, length)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_from_local_mirror(tmp_path, tiny, server):
    url, files = server
    payloads, hashes = tiny
    serve(files, payloads)
    mnist = data.load_mnist(tmp_path, val_size=2, files=hashes, mirrors=(url,))
    assert len(mnist.train_y) == N_TRAIN - 2
    assert leftovers(tmp_path / "mnist") == sorted(f"{n}.gz" for n in payloads)  # no temporary files


def test_download_falls_back_to_the_next_mirror(tmp_path, tiny, server):
    url, files = server
    payloads, hashes = tiny
    serve(files, payloads)
    dead = "http://127.0.0.1:9/"  # discard port: nothing listens
    data.load_mnist(tmp_path, val_size=0, files=hashes, mirrors=(dead, url + "missing/", url))
    assert len(leftovers(tmp_path / "mnist")) == 4


def test_corrupted_download_is_rejected_and_not_kept(tmp_path, tiny, server):
    url, files = server
    payloads, hashes = tiny
    serve(files, payloads, corrupt="t10k-labels-idx1-ubyte")
    with pytest.raises(data.ChecksumError) as err:
        data.load_mnist(tmp_path, val_size=0, files=hashes, mirrors=(url,))
    bad = payloads["t10k-labels-idx1-ubyte"][:-1] + bytes([payloads["t10k-labels-idx1-ubyte"][-1] ^ 0xFF])
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert hashes["t10k-labels-idx1-ubyte"] in message and hashlib.sha256(bad).hexdigest() in message
    assert "t10k-labels-idx1-ubyte.gz" not in leftovers(tmp_path / "mnist")
    assert not [n for n in leftovers(tmp_path / "mnist") if n.endswith(".part")]


def test_interrupted_download_leaves_no_file(tmp_path, tiny, server):
    url, files = server
    payloads, hashes = tiny
    serve(files, payloads, cut="train-images-idx3-ubyte")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path, val_size=0, files=hashes, mirrors=(url,))
    assert not [n for n in leftovers(tmp_path / "mnist") if n.startswith(("train-images", ".train-images"))]


def test_no_network_error_says_where_to_put_the_files(tmp_path, tiny):
    _, hashes = tiny
    with pytest.raises(FileNotFoundError) as err:
        data.load_mnist(tmp_path, files=hashes, mirrors=("http://127.0.0.1:9/",))
    message = str(err.value)
    assert str(tmp_path / "mnist") in message and data.DATA_ENV in message


def test_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_dir() == tmp_path
    monkeypatch.delenv(data.DATA_ENV)
    assert data.data_dir().name == "nncompress"


@pytest.mark.skipif(not (data.data_dir() / "mnist").is_dir(), reason="full MNIST not in the data directory")
def test_full_mnist_matches_its_published_statistics():
    mnist = data.load_mnist(val_size=0)
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.test_x.shape == (10000, 1, 28, 28)
    counts = torch.bincount(mnist.train_y, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    pixels = mnist.train_x * data.MNIST_STD + data.MNIST_MEAN
    assert abs(pixels.mean().item() - 0.1307) < 1e-4 and abs(pixels.std().item() - 0.3081) < 1e-4
    split = data.load_mnist()
    assert (len(split.train_y), len(split.val_y)) == (55000, 5000)

