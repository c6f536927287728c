"""`--ray`: a real Ray head (`ray start --head` on 127.0.0.1, 2 CPUs, its own temp dir and
ports), started once for the module and joined by this process and by real `resnet`
processes (`--ray 127.0.0.1:PORT`); tiny real models. classify and extract give the rows of
a local run, whatever the defaults (no --pooling, a finetuned .keras whose card says squash,
an exported .tflite); an actor SIGKILLed mid-job (found by pid in Ray's actor table) is
restarted and the job completes; a pool the cluster cannot offer is waited for, said, and
refused in one line; Ctrl-C leaves no output; Ray Data's global settings are restored."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image

from resnet_cli.backbones import build_feature_model
from resnet_cli.cli import app
from resnet_cli.cluster import ray_runner
from resnet_cli.cluster.pool import RaySettings, parse_ray_actors, plan_pool
from resnet_cli.errors import UsageError
from resnet_cli.extras import require_module
from resnet_cli.inference import FeatureSpec, predict_paths
from resnet_cli.models import ModelOptions

HEAD_START_SECONDS = 120
RESNET = [sys.executable, "-m", "resnet_cli"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, their children, ...), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs (one model actor and one reading
    task fit, two actors do not), free ports and a temp dir of its own; token auth off (a
    loopback test cluster: RAY_AUTH_MODE=disabled here and in the processes that join).
    This process joins it. At the end: SIGTERM to the `ray start` process this fixture
    started (it stops what it spawned), then SIGKILL, by pid, to any of its descendants
    still alive. Nothing else is touched."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc to end the head's processes by pid")
    import ray

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths are bounded
    port = _free_port()
    worker_ports = 20000 + port % 10000
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
        "--include-dashboard=false", "--include-log-monitor=false", "--disable-usage-stats",
        f"--temp-dir={temp}", f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        f"--min-worker-port={worker_ports}", f"--max-worker-port={worker_ports + 200}"]
    log = open(Path(temp) / "head.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEAD_START_SECONDS
        while b"--block" not in (Path(temp) / "head.log").read_bytes():
            assert process.poll() is None, (Path(temp) / "head.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        yield address
    finally:
        ray.shutdown()
        below = _descendants(process.pid)
        process.terminate()  # `ray start --block` stops what it started on SIGTERM
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # still draining: its processes are ended below
            process.kill()
            process.wait(timeout=30)
        for pid in below + _descendants(process.pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ray_photos")
    files = [make_image(folder / f"p{i:02d}.{'jpg' if i % 3 else 'png'}", (90 + 7 * i, 60),
                        seed=i) for i in range(9)]
    bad = folder / "p04.jpg"
    bad.write_bytes(b"not a picture")
    return files


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finetune-style run folder: model.keras (a small classifier over a ResNet50V2
    backbone, 3 classes) and its card, which says the model was trained with --resize
    squash (the photos are not square, so crop would give other rows)."""
    import keras

    keras.utils.set_random_seed(3)
    backbone = keras.applications.ResNet50V2(include_top=False, weights=None,
                                             input_shape=(TINY, TINY, 3))
    image = keras.Input((TINY, TINY, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone(image))
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    run = tmp_path_factory.mktemp("ray_run")
    keras.Model(image, outputs).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"resnet_cli_model": {
        "base_model": "resnet50v2", "image_size": TINY, "preprocess_mode": "tf",
        "class_names": ["a", "b", "c"], "resize": "squash"}}))
    return run / "model.keras"


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _same_predictions(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for mine, theirs in zip(got, want, strict=True):
        assert mine.get("error") == theirs.get("error")
        assert [p["index"] for p in mine.get("predictions", [])] == \
            [p["index"] for p in theirs.get("predictions", [])]
        assert np.allclose([p["probability"] for p in mine.get("predictions", [])],
                           [p["probability"] for p in theirs.get("predictions", [])],
                           atol=1e-6)


def test_classify_on_ray_gives_the_local_rows(head, runner, finetuned: Path,
                                              exported: dict[str, Path],
                                              photos: list[Path]) -> None:
    # (a weights file's classifier goes through the same load_model + make_predictor on the
    # actor as the .keras model here; weights files are run by the extract tests below)
    models = {"exported .tflite": [str(exported["litert"])],
              "exported .xml (and its .bin)": [str(exported["openvino"])],
              "finetuned .keras": [str(finetuned)]}
    for name, model in models.items():
        args = ["classify", *map(str, photos), "--weights", *model, "-f", "json", "-k", "2",
                "-b", "2", "-q"]
        local = runner.invoke(app, args)
        remote = runner.invoke(app, [*args, "--ray", "auto"])
        assert local.exit_code == remote.exit_code == 1, (name, remote.stderr)
        assert _errors(remote.stderr) == _errors(local.stderr) == [
            f"error: {photos[4]}: not an image Pillow can read"], name
        _same_predictions(json.loads(remote.stdout), json.loads(local.stdout))
    # the card's squash was used on both paths: crop gives other rows for these photos
    cropped = runner.invoke(app, [*args, "--resize", "crop"])
    assert json.loads(cropped.stdout)[0]["predictions"] != \
        json.loads(local.stdout)[0]["predictions"]


def test_extract_on_ray_resolves_the_defaults_as_locally(head, runner, tiny_backbone,
                                                         exported: dict[str, Path],
                                                         photos: list[Path],
                                                         tmp_path: Path) -> None:
    weights, _, _ = tiny_backbone("resnet50")
    cases = {"no --pooling": ["--weights", str(weights), "--image-size", str(TINY)],
             "exported backbone": ["--weights", str(exported["backbone"])]}
    for number, (name, model) in enumerate(cases.items()):
        args = ["extract", *map(str, photos), *model, "-b", "3", "-q"]
        local, ray = tmp_path / f"local{number}.npy", tmp_path / f"ray{number}.npy"
        done = runner.invoke(app, [*args, "-o", str(local)])
        remote = runner.invoke(app, [*args, "-o", str(ray), "--ray", "auto"])
        assert done.exit_code == remote.exit_code == 1, (name, remote.stderr)
        assert _errors(remote.stderr) == _errors(done.stderr), name
        want, got = np.load(local), np.load(ray)
        assert got.shape == want.shape == (8, 2048), name
        assert np.abs(got - want).max() <= 1e-5, name
        assert ray.with_suffix(".paths.txt").read_text() == \
            local.with_suffix(".paths.txt").read_text()


def _model_actors() -> dict[str, dict[str, object]]:
    """This job's model actors in Ray's actor table (GCS): ActorID -> its row (Pid, State,
    NumRestarts). Ray Data names the class after the callable it maps (`_ModelActor`)."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    return {actor_id: row for actor_id, row in ray._private.state.actors().items()
            if row.get("JobID") == job and "_ModelActor" in str(row.get("ActorClassName"))}


def test_an_actor_killed_mid_job_is_restarted_and_every_row_comes_once(
        head, tiny_backbone, tmp_path: Path) -> None:
    import logging

    import ray.data

    weights, _, loaded = tiny_backbone("resnet50")
    paths = [str(make_image(tmp_path / f"k{i:03d}.png", (64, 64), seed=100 + i))
             for i in range(48)]
    features = build_feature_model(loaded, pooling="avg")
    want = np.concatenate([b.outputs for b in predict_paths(
        paths, loaded, batch_size=2, progress=False, model=features)])
    options = ModelOptions(weights=str(weights), image_size=TINY)
    before = set(_model_actors())
    context = ray.data.DataContext.get_current()
    order, bars = context.execution_options.preserve_order, context.enable_progress_bars
    level = logging.getLogger("ray.data").level
    run = ray_runner("auto", "1", options)(loaded, features=FeatureSpec("avg"))
    rows, seen, killed, ordered = [], [], {}, []
    for batch in run(paths, batch_size=2, progress=False):
        rows.append(batch.outputs)
        seen.extend(batch.paths)
        ordered.append(ray.data.DataContext.get_current().execution_options.preserve_order)
        if not killed:  # after the first batch: the actor is up and mid-job
            killed = {actor_id: int(row["Pid"]) for actor_id, row in _model_actors().items()
                      if actor_id not in before and row.get("State") == "ALIVE"}
            assert len(killed) == 1, "this run's model actor is not in Ray's actor table"
            for pid in killed.values():
                os.kill(pid, signal.SIGKILL)
    assert seen == paths  # every row once, in order
    assert np.abs(np.concatenate(rows) - want).max() <= 1e-5
    table = _model_actors()
    for actor_id, pid in killed.items():
        assert int(table[actor_id]["NumRestarts"]) >= 1  # Ray restarted that actor...
        assert not _alive(pid)  # ...in a new process
    # the run's Ray Data settings held while it ran, and the caller's are back afterwards
    assert all(ordered)
    assert ray.data.DataContext.get_current() is context
    assert (context.execution_options.preserve_order, context.enable_progress_bars) == \
        (order, bars)
    assert logging.getLogger("ray.data").level == level


def test_a_pool_the_cluster_cannot_offer_is_waited_for_then_refused(
        head, runner, tiny_backbone, photos: list[Path], tmp_path: Path) -> None:
    weights, _, _ = tiny_backbone("resnet50")
    started = time.monotonic()
    result = runner.invoke(app, ["extract", str(photos[0]), "--weights", str(weights),
                                 "--image-size", str(TINY), "-o", str(tmp_path / "f.npy"),
                                 "--ray", "auto", "--ray-actors", "2", "--ray-timeout", "2",
                                 "-q"])
    assert result.exit_code == 1
    assert time.monotonic() - started < 60
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("WARNING resnet_cli.cluster.pool: waiting up to 2 s for the Ray "
                               "cluster to offer 3 CPU(s) (2 model actor(s) and a task that "
                               "reads images)")
    assert lines[1].startswith("error: the Ray cluster did not offer 3 CPU(s)") and \
        "within --ray-timeout 2 s" in lines[1]
    assert not (tmp_path / "f.npy").exists()


def test_the_pool_is_sized_from_available_resources() -> None:
    settings = RaySettings(min_actors=2)
    need, pool = plan_pool({"CPU": 1}, {"CPU": 8}, settings, "auto")
    assert pool is None and (need.cpus, need.gpus) == (3, 0)  # busy: wait, do not refuse
    assert plan_pool({}, {}, settings, "cpu")[1] is None  # autoscaling from zero workers
    assert plan_pool({"CPU": 3}, {"CPU": 8}, settings, "auto")[1] == (2, 7, 0)
    assert plan_pool({"CPU": 5}, {"CPU": 8}, RaySettings(min_actors=1, max_actors=3),
                     "cpu")[1] == (1, 3, 0)
    need, pool = plan_pool({"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 2}, settings, "auto")
    assert pool is None and need.gpus == 2
    assert plan_pool({"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2}, settings, "gpu")[1] == \
        (2, 2, 1)


def _resnet(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([*RESNET, *args], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]


def test_a_real_process_joins_the_head_by_address_and_ctrl_c_leaves_no_output(
        head, runner, tiny_backbone, photos: list[Path], tmp_path: Path) -> None:
    weights, _, _ = tiny_backbone("resnet50")
    args = ["extract", *map(str, photos), "--weights", str(weights), "--image-size",
            str(TINY), "-b", "3", "-q"]
    local = runner.invoke(app, [*args, "-o", str(tmp_path / "local.npy")])
    assert local.exit_code == 1, local.stderr
    joined = _resnet([*args, "-o", str(tmp_path / "joined.npy"), "--ray", head])
    _, err = joined.communicate(timeout=300)
    assert joined.returncode == 1, err
    assert _errors(err) == _errors(local.stderr) and "Traceback" not in err
    assert np.abs(np.load(tmp_path / "joined.npy") - np.load(tmp_path / "local.npy")).max() \
        <= 1e-5

    # Ctrl-C mid-run (its model actor up and working): one line, exit 130, nothing written
    folder = tmp_path / "interrupted"
    folder.mkdir()
    before = set(_every_model_actor())
    listing = tmp_path / "many.txt"  # 1,200 paths, read from stdin
    listing.write_text("\n".join([str(p) for p in photos if p.name != "p04.jpg"] * 150))
    with listing.open() as stdin:
        job = _resnet(["extract", "-", "--weights", str(weights), "--image-size", str(TINY),
                       "-b", "4", "-q", "-o", str(folder / "f.npy"), "--ray", head],
                      stdin=stdin)
    deadline = time.monotonic() + 240
    while not set(_every_model_actor(alive=True)) - before:
        assert job.poll() is None and time.monotonic() < deadline, job.stderr
        time.sleep(0.25)
    time.sleep(1.0)  # batches are flowing
    assert job.poll() is None, "the job ended before it could be interrupted"
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert err.strip().splitlines() == ["error: interrupted"], err
    assert list(folder.iterdir()) == []  # no partial .npy, no index, no temp file


def _every_model_actor(*, alive: bool = False) -> list[str]:
    """Model actors of every job on the head (the real process's job is not this one's)."""
    import ray

    return [actor_id for actor_id, row in ray._private.state.actors().items()
            if "_ModelActor" in str(row.get("ActorClassName"))
            and (not alive or row.get("State") == "ALIVE")]


def test_ray_options_are_checked(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_ray_actors("2") == (2, None) and parse_ray_actors("1:8") == (1, 8)
    for bad in ("0", "3:2", "x", "1:"):
        with pytest.raises(UsageError):
            parse_ray_actors(bad)
    result = runner.invoke(app, ["extract", "a.jpg", "-o", "f.npy", "--ray", "somewhere"])
    assert result.exit_code == 2 and "HOST:PORT" in result.stderr
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"pip install 'resnet-cli\[ray\]'"):
        require_module("ray", extra="ray", purpose="--ray")


def test_an_address_where_nothing_listens_fails_at_once() -> None:
    from resnet_cli.cluster import ClusterError, _check_reachable

    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"cannot join the Ray cluster at 127\.0\.0\.1:\d+: "
                                           r"nothing answers there \(Connection refused\)"):
        _check_reachable(f"127.0.0.1:{_free_port()}")
    assert time.monotonic() - started < 10
    _check_reachable("auto")  # Ray finds that one itself
