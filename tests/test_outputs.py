from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

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


# ----- outputs the operating system refuses -------------------------------------------------

@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny tmpfs that is already full (needs root, as CI has; skipped otherwise)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mount / "old.json").write_text("previous")
        (mount / "old-run").mkdir()  # a finetune run folder, as far as --overwrite can tell
        for name in ("model.keras", "history.csv", "labels.txt"):
            (mount / "old-run" / name).write_text(f"previous {name}")
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: make a read-only mount
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                              capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip("cannot make a read-only folder as root here")
        try:
            (folder / "old.json").write_text("previous")
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        (folder / "old.json").write_text("previous")
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


def test_disk_full_is_one_line_and_leaves_no_temporary_file(full_disk: Path) -> None:
    before = sorted(p.name for p in full_disk.iterdir())
    with pytest.raises(OutputError, match=r"Cannot write .*old\.json: No space left on device"), \
            atomic_open(full_disk / "old.json") as handle:
        for _ in range(100):
            handle.write("x" * 4096)
    assert sorted(p.name for p in full_disk.iterdir()) == before
    assert (full_disk / "old.json").read_text() == "previous"


def test_read_only_folder_is_refused_before_any_work(read_only_folder: Path) -> None:
    with pytest.raises(OutputError, match=r"(read-only file system|permission denied)"):
        check_output_path(read_only_folder / "new.json")
    assert (read_only_folder / "old.json").read_text() == "previous"


def test_errors_about_other_files_are_not_called_output_errors(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    elsewhere = tmp_path / "inputs" / "weights.h5"  # e.g. a file read while writing
    with pytest.raises(FileNotFoundError), atomic_open(tmp_path / "out" / "o.json"):
        raise FileNotFoundError(2, "No such file or directory", str(elsewhere))
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("command", ["classify", "extract"])
def test_commands_report_a_full_disk_in_one_line(runner: CliRunner, full_disk: Path,
                                                  image_files: list[Path],
                                                  command: str) -> None:
    from resnet_cli.cli import app

    target = full_disk / ("old.json" if command == "classify" else "feats.npy")
    args = [command, *map(str, image_files), "--weights", "none", "--image-size", "32",
            "-o", str(target), "-q"]
    if command == "extract":
        args.insert(-1, "--pooling")
        args.insert(-1, "max")
    before = sorted(p.name for p in full_disk.iterdir())
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    # extract names whichever of its two files (rows, row index) hit the full disk
    assert lines[0].startswith(f"error: Cannot write {target.with_suffix('')}")
    assert lines[0].endswith(": No space left on device.")
    assert sorted(p.name for p in full_disk.iterdir()) == before
    assert (full_disk / "old.json").read_text() == "previous"


@pytest.mark.parametrize("command", ["classify", "extract"])
def test_commands_refuse_a_read_only_folder(runner: CliRunner, read_only_folder: Path,
                                            image_files: list[Path], command: str) -> None:
    from resnet_cli.cli import app

    target = read_only_folder / ("out.csv" if command == "classify" else "feats.npz")
    result = runner.invoke(app, [command, str(image_files[0]), "--weights", "none",
                                 "--image-size", "32", "-o", str(target)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: Cannot write {target}: "
        + ("read-only file system" if os.geteuid() == 0 else "permission denied")
        + f" (folder {read_only_folder})."]
    assert sorted(p.name for p in read_only_folder.iterdir()) == ["old.json"]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "filler"}


def test_finetune_on_a_full_disk_keeps_the_old_run(runner: CliRunner, full_disk: Path,
                                                    tmp_path: Path) -> None:
    from conftest import write_class_dataset

    from resnet_cli.cli import app

    data = write_class_dataset(tmp_path / "data")
    before = _tree(full_disk)
    for target, extra in ((full_disk / "new-run", []), (full_disk / "old-run", ["--overwrite"])):
        result = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o", str(target),
                                     "--weights", "none", "--image-size", "32", "--epochs", "1",
                                     "--batch-size", "4", "-q", *extra])
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: Cannot write {target}")
        assert lines[0].endswith(": No space left on device."), lines
        assert _tree(full_disk) == before  # the old run is back, nothing else is left
        assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "old-run", "old.json"]


def test_finetune_refuses_a_read_only_run_folder_before_any_work(runner: CliRunner,
                                                                  read_only_folder: Path,
                                                                  tmp_path: Path) -> None:
    from conftest import write_class_dataset

    from resnet_cli.cli import app

    data = write_class_dataset(tmp_path / "data")
    target = read_only_folder / "runs" / "pets"
    result = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o", str(target),
                                 "--weights", "none", "--image-size", "32"])
    assert result.exit_code == 1
    reason = "read-only file system" if os.geteuid() == 0 else "permission denied"
    assert result.stderr.strip().splitlines() == [
        f"error: Cannot write {target}: {reason} (folder {read_only_folder})."]


def test_merge_on_a_full_disk_is_one_line(runner: CliRunner, full_disk: Path,
                                          tmp_path: Path) -> None:
    import numpy as np

    from resnet_cli.cli import app

    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}.npz"
        np.savez(part, features=np.ones((500, 64), np.float32),
                 paths=np.array([f"{i}-{j}.jpg" for j in range(500)]))
        parts.append(str(part))
    target = full_disk / "merged.npz"
    result = runner.invoke(app, ["merge", *parts, "-o", str(target)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: Cannot write {target}: No space left on device."]
    assert not target.exists()
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "old-run", "old.json"]
