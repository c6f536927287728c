"""Feature files: `.npz` without pickle, `resnet merge` of shards, atomic and streamed writing.

Rows come from the tiny session backbone (`tiny_backbone`), taken from an early layer
(conv2_block1_out), which keeps the compiled graphs small.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import TINY, make_image

from resnet_cli.cli import app
from resnet_cli.extract import Shard, write_features

EARLY = "conv2_block1_out"  # 256 channels, 16x16 at 64 px


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnet_cli", "extract", *args]


# ----- writing and merging -----------------------------------------------------------------

def test_npz_round_trips_without_pickle(tiny_backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, loaded = tiny_backbone("resnet50")
    odd = tmp_path / "ünï cödé, spaces.png"
    paths = [str(make_image(odd, seed=1)), str(tmp_path / "missing.jpg"),
             str(make_image(tmp_path / "b.jpg", seed=2))]
    failures: list[tuple[str, str]] = []
    summary = write_features(paths, loaded, tmp_path / "f.npz", layer=EARLY, pooling="none",
                             batch_size=2, progress=False,
                             on_failure=lambda e: failures.append((e.path, e.reason)))
    assert failures == [(paths[1], "no such file")]
    assert (summary.output.rows, summary.output.row_shape, summary.failed) == (2, (16, 16, 256), 1)
    with np.load(tmp_path / "f.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == ["features", "paths"]
        assert saved["features"].shape == (2, 16, 16, 256)
        assert saved["paths"].dtype.kind == "U"
        assert saved["paths"].tolist() == [paths[0], paths[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["b.jpg", odd.name, "f.npz"])  # no scratch files left


def test_shards_merge_to_one_run(tiny_backbone, tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    _, _, loaded = tiny_backbone("resnet50")
    names = ["e", "a", "g", "c", "f", "b", "d"]
    paths = [str(make_image(tmp_path / f"{n}.png", seed=i)) for i, n in enumerate(names)]
    write_features(sorted(paths), loaded, tmp_path / "all.npy", layer=EARLY, progress=False)
    shards = [Shard(k, 3).select(paths) for k in range(3)]
    assert [len(s) for s in shards] == [2, 2, 3] and [p for s in shards for p in s] == sorted(paths)
    parts = [tmp_path / "part0.npy", tmp_path / "part1.npz", tmp_path / "part2.npy"]
    for part, selected in zip(parts, shards, strict=True):
        write_features(selected, loaded, part, layer=EARLY, batch_size=2, progress=False)

    for merged in (tmp_path / "merged.npy", tmp_path / "merged.npz"):
        result = runner.invoke(app, ["merge", *map(str, parts), "-o", str(merged)])
        assert result.exit_code == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "merged.npy"), np.load(tmp_path / "all.npy"))
    assert _lines(tmp_path / "merged.paths.txt") == sorted(paths)
    with np.load(tmp_path / "merged.npz", allow_pickle=False) as saved:
        assert np.array_equal(saved["features"], np.load(tmp_path / "all.npy"))
        assert saved["paths"].tolist() == sorted(paths)

    # Files that do not belong together are refused before anything is written.
    np.save(tmp_path / "other.npy", np.zeros((1, 3), np.float32))
    (tmp_path / "other.paths.txt").write_text("x.jpg\n")
    result = runner.invoke(app, ["merge", str(parts[0]), str(tmp_path / "other.npy"),
                                 "-o", str(tmp_path / "bad.npy")])
    assert result.exit_code == 2 and "same extract options" in result.stderr
    assert not (tmp_path / "bad.npy").exists()


# ----- whole processes: interrupt, memory ---------------------------------------------------

def test_interrupted_run_leaves_no_file(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(300):
        make_image(images / f"{i:03d}.png", (12, 12), seed=i)
    out = tmp_path / "feats.npy"
    proc = subprocess.Popen(_cli(str(images), "--weights", "none", "--image-size", str(TINY),
                                 "-b", "1", "-o", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            partial = list(tmp_path.glob(".feats.*.tmp.npy"))
            if partial and partial[0].stat().st_size > 128 + 3 * 2048 * 4:  # rows are landing
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_memory_stays_flat_as_inputs_grow(tmp_path: Path) -> None:
    """Peak RSS of a run with 5x the images (1 MiB of features each) stays put."""
    runs = {}
    for count in (60, 300):
        folder = tmp_path / f"in{count}"
        folder.mkdir()
        for i in range(count):
            make_image(folder / f"{i:03d}.png", (8, 8), seed=i)
        out = tmp_path / f"f{count}.npy"
        args = _cli(str(folder), "--weights", "none", "--image-size", "128", "--resize",
                    "squash", "--layer", "conv2_block3_out", "--pooling", "none", "-b", "16",
                    "-q", "-o", str(out))
        runs[count] = (subprocess.Popen(args, stderr=subprocess.PIPE), out)
    peaks = {}
    for count, (proc, out) in runs.items():  # both ran side by side
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        assert np.load(out, mmap_mode="r").shape == (count, 32, 32, 256)
        peaks[count] = usage.ru_maxrss / 1024  # MiB
    print(f"peak RSS: 60 images {peaks[60]:.0f} MiB, 300 images {peaks[300]:.0f} MiB")
    # Keeping the features in memory would add 240 MiB to the larger run.
    assert peaks[300] - peaks[60] < 80, peaks


def test_merge_carries_the_shards_common_card_and_refuses_different_ones(tmp_path: Path
                                                                         ) -> None:
    import json

    import pytest

    from resnet_cli.errors import UsageError
    from resnet_cli.features import merge_features

    record = {"format": "resnet-features", "weights": "imagenet", "pooling": "avg"}
    shards = []
    for k in range(2):
        path = tmp_path / f"feats-{k}.npy"
        np.save(path, np.full((2, 4), k, dtype=np.float32))
        path.with_suffix(".paths.txt").write_text(f"a{k}.jpg\nb{k}.jpg\n")
        path.with_suffix(".card.json").write_text(json.dumps(record))
        shards.append(path)
    merge_features(shards, tmp_path / "all.npy")
    assert json.loads((tmp_path / "all.card.json").read_text()) == record
    shards[1].with_suffix(".card.json").write_text(json.dumps({**record, "pooling": "max"}))
    with pytest.raises(UsageError, match="different models"):
        merge_features(shards, tmp_path / "other.npy")
    assert not (tmp_path / "other.npy").exists()
