from __future__ import annotations

from pathlib import Path

import pytest

from resnet_cli.errors import OutputError
from resnet_cli.outputs import atomic_open, atomic_path, check_output_path


def test_file_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with atomic_open(target) as handle:
        handle.write("[1, 2]")
        assert not target.exists()
        temps = [p for p in tmp_path.iterdir()]
        assert len(temps) == 1 and temps[0].name.endswith(".tmp.json")
    assert target.read_text() == "[1, 2]"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("error", [RuntimeError("crash"), KeyboardInterrupt()])
def test_interruption_leaves_the_old_file_untouched(tmp_path: Path,
                                                    error: BaseException) -> None:
    target = tmp_path / "out.csv"
    target.write_text("previous")
    with pytest.raises(type(error)), atomic_open(target) as handle:
        handle.write("half of the new")
        raise error
    assert target.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [target]


def test_overwrite_refused_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "feats.npy"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="--overwrite"), atomic_path(target, overwrite=False):
        pass
    with atomic_path(target, overwrite=True) as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_bad_targets(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a directory"):
        check_output_path(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "such" / "dir.json")


def test_finished_file_has_umask_permissions(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "out.json") as handle:
            handle.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644
