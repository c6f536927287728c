from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet_cli.errors import WeightsError
from resnet_cli.registry import WeightsFile, get_spec, imagenet_weights_file
from resnet_cli.weights import file_md5, keras_cache_dir, load_imagenet_weights

UNREACHABLE = "http://127.0.0.1:9/"  # nothing listens on the discard port: like no network


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a folder, standing in for the weights host."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()


def _weights(name: str, data: bytes, base: str) -> WeightsFile:
    import hashlib

    return WeightsFile(filename=name, url=base + name, md5=hashlib.md5(data).hexdigest())


def test_cache_dir_follows_keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("KERAS_HOME")
    assert keras_cache_dir() == Path.home() / ".keras" / "models"


def test_offline_with_empty_cache_fails_fast_with_both_remedies(tmp_path: Path) -> None:
    spec_file = imagenet_weights_file(get_spec("resnet50"), include_top=True)
    offline = dataclasses.replace(spec_file, url=UNREACHABLE + spec_file.filename)
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        load_imagenet_weights(offline, cache_dir=tmp_path, progress=False)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in message
    assert str(tmp_path) in message and "--weights PATH" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_verified_cached_file_is_used_without_network(tmp_path: Path) -> None:
    data = b"pretend weights" * 100
    (tmp_path / "w.h5").write_bytes(data)
    weights = _weights("w.h5", data, UNREACHABLE)
    assert load_imagenet_weights(weights, cache_dir=tmp_path) == tmp_path / "w.h5"


def test_cached_file_with_wrong_hash_is_never_used_silently(tmp_path: Path) -> None:
    (tmp_path / "w.h5").write_bytes(b"corrupted")
    weights = _weights("w.h5", b"the real thing", UNREACHABLE)
    with pytest.raises(WeightsError, match="corrupt") as info:
        load_imagenet_weights(weights, cache_dir=tmp_path)
    assert "expected " + weights.md5 in str(info.value)


def test_download_fills_the_cache_and_replaces_a_corrupt_copy(
        tmp_path: Path, served: tuple[str, Path]) -> None:
    base, root = served
    data = bytes(range(256)) * 4096
    (root / "w.h5").write_bytes(data)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "w.h5").write_bytes(b"corrupted")
    path = load_imagenet_weights(_weights("w.h5", data, base), cache_dir=cache, progress=False)
    assert path.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == ["w.h5"]  # no temp files left


def test_download_with_wrong_hash_is_rejected(tmp_path: Path, served: tuple[str, Path]) -> None:
    base, root = served
    (root / "w.h5").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match="md5"):
        load_imagenet_weights(_weights("w.h5", b"genuine", base), cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_file_md5(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert file_md5(tmp_path / "f") == "900150983cd24fb0d6963f7d28e17f72"
