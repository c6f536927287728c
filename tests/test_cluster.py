"""`--ray`: a real local Ray cluster (2 CPUs, started once per session), tiny real models.
classify and extract give the rows of a local run in the same order; an actor killed with
SIGKILL mid-job is restarted and the job completes; a pool that cannot fit fails at once."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image

from resnet_cli.backbones import build_feature_model
from resnet_cli.cli import app
from resnet_cli.cluster import parse_ray_actors, ray_runner
from resnet_cli.errors import UsageError
from resnet_cli.extras import require_module
from resnet_cli.inference import predict_paths
from resnet_cli.models import ModelOptions


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A real Ray cluster on this machine with 2 CPUs: one model actor and one reading
    task fit, two actors do not."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ray_photos")
    files = [make_image(folder / f"p{i:02d}.{'jpg' if i % 3 else 'png'}", (70 + i, 60), seed=i)
             for i in range(9)]
    bad = folder / "p04.jpg"
    bad.write_bytes(b"not a picture")
    return files


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_classify_on_ray_gives_the_local_rows(ray_cluster, runner, tiny_classifier_factory,
                                              photos: list[Path]) -> None:
    weights, _ = tiny_classifier_factory("resnet50")
    args = ["classify", *map(str, photos), "--weights", str(weights), "--image-size",
            str(TINY), "-f", "json", "-k", "4", "-b", "2", "-q"]
    local = runner.invoke(app, args)
    remote = runner.invoke(app, [*args, "--ray", "auto"])
    assert local.exit_code == remote.exit_code == 1, remote.stderr
    assert _errors(remote.stderr) == _errors(local.stderr) == [
        f"error: {photos[4]}: not an image Pillow can read"]
    want, got = json.loads(local.stdout), json.loads(remote.stdout)
    assert [r["path"] for r in got] == [r["path"] for r in want] == list(map(str, photos))
    for mine, theirs in zip(got, want, strict=True):
        assert mine.get("error") == theirs.get("error")
        assert [p["index"] for p in mine.get("predictions", [])] == \
            [p["index"] for p in theirs.get("predictions", [])]
        assert np.allclose([p["probability"] for p in mine.get("predictions", [])],
                           [p["probability"] for p in theirs.get("predictions", [])],
                           atol=1e-6)


def test_extract_on_ray_gives_the_local_rows(ray_cluster, runner, tiny_backbone,
                                             photos: list[Path], tmp_path: Path) -> None:
    weights, _, _ = tiny_backbone("resnet50")
    args = ["extract", *map(str, photos), "--weights", str(weights), "--image-size",
            str(TINY), "-b", "3", "--pooling", "max", "-q"]
    local = runner.invoke(app, [*args, "-o", str(tmp_path / "local.npy")])
    remote = runner.invoke(app, [*args, "-o", str(tmp_path / "ray.npy"), "--ray", "auto",
                                 "--ray-actors", "1"])
    assert local.exit_code == remote.exit_code == 1, remote.stderr
    assert _errors(remote.stderr) == _errors(local.stderr)
    want, got = np.load(tmp_path / "local.npy"), np.load(tmp_path / "ray.npy")
    assert got.shape == want.shape == (8, 2048)
    assert np.abs(got - want).max() <= 1e-5
    assert (tmp_path / "ray.paths.txt").read_text() == (tmp_path / "local.paths.txt").read_text()


def _actor_pids() -> set[int]:
    """Processes of this user whose title names the model actor (Ray sets it)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"_ModelActor" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_actor_killed_mid_job_is_restarted_and_every_row_comes_once(
        ray_cluster, tiny_backbone, tmp_path: Path) -> None:
    weights, _, loaded = tiny_backbone("resnet50")
    paths = [str(make_image(tmp_path / f"k{i:03d}.png", (64, 64), seed=100 + i))
             for i in range(48)]
    features = build_feature_model(loaded, pooling="avg")
    want = np.concatenate([b.outputs for b in predict_paths(
        paths, loaded, batch_size=2, progress=False, model=features)])
    options = ModelOptions(weights=str(weights), image_size=TINY)
    run = ray_runner("auto", "1", options, features=("avg", None))(loaded)
    batches = run(paths, batch_size=2, progress=False)
    rows, seen, killed = [], [], set()
    for batch in batches:
        rows.append(batch.outputs)
        seen.extend(batch.paths)
        if not killed:  # after the first batch: the actor is up and mid-job
            killed = _actor_pids()
            assert killed, "no model actor process found"
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
    assert seen == paths  # every row once, in order
    assert np.abs(np.concatenate(rows) - want).max() <= 1e-5
    assert _actor_pids() - killed or not _actor_pids()  # a new actor did the rest


def test_a_pool_that_cannot_fit_fails_in_one_line(ray_cluster, runner, tiny_backbone,
                                                  photos: list[Path], tmp_path: Path) -> None:
    weights, _, _ = tiny_backbone("resnet50")
    result = runner.invoke(app, ["extract", str(photos[0]), "--weights", str(weights),
                                 "--image-size", str(TINY), "-o", str(tmp_path / "f.npy"),
                                 "--ray", "auto", "--ray-actors", "2", "-q"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "--ray-actors 2 cannot run" in result.stderr
    assert not (tmp_path / "f.npy").exists()


def test_ray_options_are_checked(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_ray_actors("2") == (2, None) and parse_ray_actors("1:8") == (1, 8)
    for bad in ("0", "3:2", "x", "1:"):
        with pytest.raises(UsageError):
            parse_ray_actors(bad)
    result = runner.invoke(app, ["extract", "a.jpg", "-o", "f.npy", "--ray", "somewhere"])
    assert result.exit_code == 2 and "ray://HOST:PORT" in result.stderr
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"pip install 'resnet\[ray\]'"):
        require_module("ray", extra="ray", purpose="--ray")
