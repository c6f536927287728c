"""Distributed finetune, for real: MirroredStrategy over two logical CPU devices, and
MultiWorkerMirroredStrategy across two worker processes talking over loopback ports.

Each run happens in fresh interpreters: logical devices and TF_CONFIG must be set before
TensorFlow starts. Tiny data (3 classes of coloured PNGs, 32 px), graph-mode steps.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO
from conftest import write_class_dataset as write_dataset

from resnet_cli.cli import app

TIMEOUT = 300

MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from resnet_cli.training import FinetuneOptions, finetune
result = finetune(FinetuneOptions(sys.argv[1], 3, run_dir=sys.argv[2], weights="none",
                                  image_size=32, epochs=2, batch_size=4, strategy="mirrored",
                                  patience=0),
                  progress=False)
print("RESULT " + json.dumps({"epochs": [r.epoch for r in result.history],
                              "val_accuracy": result.history[-1].val_accuracy,
                              "metrics_top1": result.metrics.top1}))
"""


def _environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_mirrored_over_two_logical_cpus(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    data = write_dataset(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(data), str(run)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=_environment(),
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["epochs"] == [1, 2]
    # The distributed validation of the last epoch and the final model's own evaluation
    # (on one device, through the inference path) see the same model.
    assert abs(result["val_accuracy"] - result["metrics_top1"]) < 1e-6
    training = json.loads((run / "config.json").read_text())["training"]
    assert training["strategy"] == "MirroredStrategy" and training["replicas"] == 2
    classified = runner.invoke(app, ["classify", str(data / "cat"), "--weights",
                                     str(run / "model.keras"), "-f", "json", "-q"])
    assert classified.exit_code == 0, classified.stderr
    assert len(json.loads(classified.stdout)) == 6


def _start_workers(data: Path, run: Path, ports: list[int], scratch: Path, *extra: str
                   ) -> list[subprocess.Popen[str]]:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(len(ports)):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        command = [sys.executable, "-m", "resnet_cli", "finetune", str(data), "--classes", "3",
                   "-o", str(run), "--weights", "none", "--image-size", "32", "--batch-size",
                   "4", "--strategy", "multiworker", "-q", *extra]
        workers.append(subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_environment(TF_CONFIG=config, TMPDIR=str(scratch))))
    return workers


def _finish(workers: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    outcomes = []
    for worker in workers:
        try:
            _, stderr = worker.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, stderr = worker.communicate()
        outcomes.append((worker.returncode, stderr))
    return outcomes


def test_two_workers_train_together_and_resume_after_both_are_killed(tmp_path: Path,
                                                                     runner) -> None:  # type: ignore[no-untyped-def]
    data = write_dataset(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    epochs = 4
    state = run / "checkpoints" / "state.json"

    # Kill both workers (SIGKILL: no clean-up) once the first epoch is checkpointed.
    # --patience 0: the final model is the last epoch's (not the best one), to compare below
    workers = _start_workers(data, run, _free_ports(2), scratch, "--epochs", str(epochs),
                             "--patience", "0")
    deadline = time.monotonic() + TIMEOUT
    while not state.exists() and time.monotonic() < deadline:
        if any(w.poll() is not None for w in workers):
            break
        time.sleep(0.05)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    outcomes = _finish(workers)
    assert state.exists(), outcomes[0][1][-3000:]
    killed_at = json.loads(state.read_text())["epoch"]
    assert 1 <= killed_at < epochs
    left_by_the_kill = sorted(scratch.iterdir())  # a killed process cannot clean up

    workers = _start_workers(data, run, _free_ports(2), scratch, "--epochs", str(epochs),
                             "--patience", "0", "--resume")
    outcomes = _finish(workers)
    for code, stderr in outcomes:
        assert code == 0, stderr[-3000:]

    # The chief alone wrote the run folder; the other worker removed its scratch folder.
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.json", "curves.png", "history.csv", "labels.txt", "logs",
        "metrics.json", "model.keras"]
    assert sorted(scratch.iterdir()) == left_by_the_kill
    history = _history(run)
    assert [int(row["epoch"]) for row in history] == list(range(1, epochs + 1))
    config = json.loads((run / "config.json").read_text())
    # tf.distribute.MultiWorkerMirroredStrategy is the class CollectiveAllReduceStrategy
    assert config["training"]["strategy"] == "CollectiveAllReduceStrategy"
    assert config["training"]["replicas"] == 2
    assert [r["from_epoch"] for r in config["resumed"]] == [killed_at]
    # The global batch of 4 is split over the two workers, 2 images each: 14 training
    # images make 3 steps an epoch.
    assert config["training"]["batch_size"] == 4 and config["training"]["steps_per_epoch"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert abs(metrics["val_accuracy"] - float(history[-1]["val_accuracy"])) < 1e-6
    classified = runner.invoke(app, ["classify", str(data / "dog"), "--weights",
                                     str(run / "model.keras"), "-f", "json", "-q"])
    assert classified.exit_code == 0, classified.stderr
    assert all(r["predictions"][0]["label"] in ("cat", "dog", "fox")
               for r in json.loads(classified.stdout))


def test_multiworker_without_tf_config_is_a_usage_error(tmp_path: Path, runner,
                                                        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    data = write_dataset(tmp_path / "data")
    result = runner.invoke(app, ["finetune", str(data), "--classes", "3", "--weights", "none",
                                 "--strategy", "multiworker", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "TF_CONFIG" in result.stderr and "Traceback" not in result.output
