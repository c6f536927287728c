"""Load on `resnet serve`: throughput, latency, hostile bodies and SIGTERM, in one run.

    python benchmarks/serve_load.py [--requests 96] [--clients 16] [--hostile 200]
    python benchmarks/serve_load.py --cpu-only [--requests 64] [--rounds 2]

Writes random ResNet50 weights (224 px) and 1920x1080 photo-like JPEGs to a work folder, starts
`resnet serve` on them, and measures, with the same files and weights:

* throughput with CLIENTS concurrent clients (one image per request) against `resnet classify`'s
  pipeline (`classify.classify_images`, batch 32, timed after a warm-up) and against a naive
  server written below (decode, then one `model.predict` per request), in interleaved rounds;
* the median latency of one client against decoding plus the model at batch 1, and the 99th
  percentile over the median with CLIENTS clients;
* a hostile mix (20% empty, truncated, 50 MB of noise, a decompression bomb, text, a PNG that
  claims 100000x100000, bad JSON, a v2 tensor of the wrong shape): no 5xx but 503, every good
  image answered as classify answers it, the server's memory before and after;
* SIGTERM under load: every answer the server logged reached its client, exit 0, and how long;
* CPU-seconds per image (from /proc: user + system time of every thread): the server process
  at CLIENTS clients against `resnet classify`'s pipeline in this process, for the float32
  Keras model and an int8 `.tflite` exported from it (`--cpu-only` measures just this). The
  clients' own CPU is not counted, which a throughput ratio on a small machine would mix in.

Figures depend on the machine and what else runs on it; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from _cli import work_folder

SIZE = 224


# ----- the naive server: one predict per request ---------------------------------------------

def naive_server(weights: str, port: int) -> None:
    """Serve POST / (an image body) with one `model.predict` per request, under a lock."""
    from keras.applications import imagenet_utils

    from resnet_cli.images import decode_image
    from resnet_cli.models import ModelOptions, load_model

    loaded = load_model(ModelOptions(weights=weights, device="cpu"), progress=False)
    model, lock = loaded.model, threading.Lock()
    model.predict(np.zeros((1, SIZE, SIZE, 3), np.float32), verbose=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers["Content-Length"]))
            image = decode_image(data, name="upload", size=SIZE).astype(np.float32)
            x = imagenet_utils.preprocess_input(image[None], mode=loaded.preprocess_mode)
            with lock:
                probs = model.predict(x, verbose=0)[0]
            body = json.dumps({"index": int(probs.argmax())}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


# ----- processes --------------------------------------------------------------------------

def start_serve(weights: Path, *, quiet: bool = True, explain: bool = True
                ) -> tuple[subprocess.Popen[str], str, list[str]]:
    command = [sys.executable, "-m", "resnet_cli", "serve", "--weights", str(weights),
               "--port", "0", "--device", "cpu", *(["-q"] if quiet else []),
               *([] if explain else ["--no-explain"])]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True).start()
    deadline = time.monotonic() + 600
    while not any(line.startswith("ready in") for line in lines):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit("resnet serve did not start:\n" + "".join(lines))
        time.sleep(0.2)
    url = re.search(r"listening on (http://\S+);", "".join(lines)).group(1)  # type: ignore[union-attr]
    return process, url, lines


def start_naive(weights: Path, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, __file__, "naive", str(weights), str(port)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


# ----- load -------------------------------------------------------------------------------

def load(url: str, bodies: list[bytes], clients: int, *, headers: dict[str, str] | None = None
         ) -> tuple[float, list[float], list[requests.Response]]:
    """POST every body once from `clients` threads; (seconds, latencies, responses)."""
    sessions = threading.local()
    latencies: list[float] = []

    def one(body: bytes) -> requests.Response:
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        started = time.perf_counter()
        answer = sessions.s.post(url, data=body, headers=headers, timeout=600)
        latencies.append(time.perf_counter() - started)
        return answer

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, bodies))
    return time.perf_counter() - started, latencies, answers


def classify_rate(loaded: object, files: list[str]) -> float:
    from resnet_cli.classify import classify_images

    started = time.perf_counter()
    results = list(classify_images(files, loaded, batch_size=32, progress=False))  # type: ignore[arg-type]
    assert all(r.ok for r in results)
    return len(files) / (time.perf_counter() - started)


def hostile_bodies(folder: Path, photo: bytes) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(kind, path, body, headers) of each hostile request."""
    from PIL import Image

    bomb = folder / "bomb.png"
    if not bomb.exists():
        Image.new("L", (12000, 12000)).save(bomb, optimize=True)
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    huge_png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\0" * 64)
    shape = json.dumps({"inputs": [{"name": "images", "shape": [1, 100, 100, 3],
                                    "datatype": "UINT8",
                                    "parameters": {"binary_data_size": 30000}}]}).encode()
    image = {"Content-Type": "image/jpeg"}
    v2 = "/v2/models/resnet50/infer"
    return [
        ("empty", "/v1/classify", b"", image),
        ("truncated", "/v1/classify", photo[:len(photo) // 3], image),
        ("noise_50mb", "/v1/classify", os.urandom(50 << 20), image),
        ("bomb", "/v1/classify", bomb.read_bytes(), {"Content-Type": "image/png"}),
        ("text", "/v1/classify", b"hello " * 1000, {"Content-Type": "text/plain"}),
        ("png_100000", "/v1/classify", huge_png, {"Content-Type": "image/png"}),
        ("bad_json", v2, b'{"inputs": [', {"Content-Type": "application/json"}),
        ("wrong_shape", v2, shape + bytes(30000),
         {"Inference-Header-Content-Length": str(len(shape))}),
    ]


def hostile_run(url: str, photos: list[bytes], expected: list[int], folder: Path, total: int,
                clients: int) -> dict[str, object]:
    hostile = hostile_bodies(folder, photos[0])
    jobs = [("hostile", i % len(hostile)) if i % 5 == 4 else ("good", i % len(photos))
            for i in range(total)]
    sessions = threading.local()

    def one(job: tuple[str, int]) -> tuple[str, int, object]:
        kind, i = job
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        if kind == "good":
            answer = sessions.s.post(url + "/v1/classify", data=photos[i], timeout=600,
                                     headers={"Content-Type": "image/jpeg"})
            top = answer.json()[0]["predictions"][0]["index"] if answer.ok else None
            return "good", answer.status_code, top == expected[i]
        name, path, body, headers = hostile[i]
        try:
            answer = sessions.s.post(url + path, data=body, headers=headers, timeout=600)
        except requests.ConnectionError:  # refused before the body was all sent
            sessions.s = requests.Session()
            return name, -1, None
        return name, answer.status_code, None

    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(one, jobs))
    statuses: dict[str, dict[int, int]] = {}
    for name, status, _ in outcomes:
        statuses.setdefault(name, {}).setdefault(status, 0)
        statuses[name][status] += 1
    return {"statuses": statuses,
            "good_right": sum(1 for n, s, ok in outcomes if n == "good" and ok),
            "good": sum(1 for n, _, _ in outcomes if n == "good"),
            "server_errors": sum(1 for _, s, _ in outcomes if s >= 500 and s != 503)}


def sigterm_run(weights: Path, photos: list[bytes], clients: int) -> dict[str, object]:
    process, url, lines = start_serve(weights, quiet=False)
    stop = threading.Event()
    got: list[int] = []
    errors: list[str] = []

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while not stop.is_set():
            try:
                answer = session.post(url + "/v1/classify", data=photos[i % len(photos)],
                                      headers={"Content-Type": "image/jpeg"}, timeout=60)
                answer.json()  # complete
                got.append(answer.status_code)
            except (requests.ConnectionError, ValueError) as exc:
                errors.append(type(exc).__name__)
                if process.poll() is not None or stop.is_set():
                    return
                time.sleep(0.05)
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(8)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(60)
    exit_seconds = time.monotonic() - signalled
    stop.set()
    for thread in threads:
        thread.join()
    logged = sum(1 for line in lines if re.search(r'"POST /v1/classify" 200 ', line))
    return {"exit_code": code, "exit_seconds": round(exit_seconds, 2),
            "answers_logged_by_server": logged, "answers_received": got.count(200),
            "refused_after_signal": len(errors)}


def throughput(args: argparse.Namespace, url: str, naive_port: int, loaded: object,
               files: list[str], photos: list[bytes], expected: list[int]) -> dict[str, object]:
    """classify, the server and the naive server in interleaved rounds; median ratios."""
    rates: dict[str, list[float]] = {"classify": [], "serve": [], "naive": []}
    tails = []
    for _ in range(args.rounds):
        rates["classify"].append(classify_rate(loaded, files))
        seconds, latencies, answers = load(url + "/v1/classify", photos, args.clients,
                                           headers={"Content-Type": "image/jpeg"})
        assert all(a.status_code == 200 for a in answers)
        assert [a.json()[0]["predictions"][0]["index"] for a in answers] == expected
        rates["serve"].append(len(photos) / seconds)
        tails.append(np.percentile(latencies, 99) / statistics.median(latencies))
        seconds, _, answers = load(f"http://127.0.0.1:{naive_port}/", photos, args.clients)
        assert [a.json()["index"] for a in answers] == expected
        rates["naive"].append(len(photos) / seconds)
    return {
        "images_per_s": {k: [round(v, 2) for v in vs] for k, vs in rates.items()},
        "serve_over_classify": round(statistics.median(
            s / c for s, c in zip(rates["serve"], rates["classify"], strict=True)), 3),
        "serve_over_naive": round(statistics.median(
            s / n for s, n in zip(rates["serve"], rates["naive"], strict=True)), 3),
        "p99_over_median_16_clients": round(statistics.median(tails), 2)}


def latency(url: str, photos: list[bytes], loaded: object) -> dict[str, object]:
    """One client's median latency against decoding plus the model at batch 1, in-process."""
    from resnet_cli.images import decode_image
    from resnet_cli.inference import make_predictor

    _, latencies, _ = load(url + "/v1/classify", photos, 1,
                           headers={"Content-Type": "image/jpeg"})
    alone = make_predictor(loaded, 1)  # type: ignore[arg-type]
    alone(decode_image(photos[0], name="x", size=SIZE)[None])  # traced before timing
    direct = []
    for data in photos:
        started = time.perf_counter()
        alone(decode_image(data, name="x", size=SIZE)[None])
        direct.append(time.perf_counter() - started)
    return {"latency_1_client_ms": round(1000 * statistics.median(latencies), 1),
            "decode_plus_model_batch_1_ms": round(1000 * statistics.median(direct), 1),
            "latency_over_direct": round(statistics.median(latencies)
                                         / statistics.median(direct), 3)}


def cpu_per_image(args: argparse.Namespace, weights: Path, files: list[str],
                  photos: list[bytes]) -> dict[str, object]:
    """CPU-seconds per image: the server at CLIENTS clients over classify, interleaved rounds."""
    from resnet_cli.classify import classify_images
    from resnet_cli.models import ModelOptions, load_model

    loaded = load_model(ModelOptions(weights=str(weights), device="cpu"), progress=False)
    list(classify_images(files[:32], loaded, batch_size=32, progress=False))  # warm-up
    server, url, _ = start_serve(weights, explain=False)
    headers = {"Content-Type": "image/jpeg"}
    try:
        load(url + "/v1/classify", photos[:32], args.clients, headers=headers)  # warm-up
        per_image: dict[str, list[float]] = {"classify": [], "serve": []}
        for _ in range(args.rounds):
            before = cpu_seconds(os.getpid())
            results = list(classify_images(files, loaded, batch_size=32, progress=False))
            per_image["classify"].append((cpu_seconds(os.getpid()) - before) / len(files))
            assert all(r.ok for r in results)
            before = cpu_seconds(server.pid)
            _, _, answers = load(url + "/v1/classify", photos, args.clients, headers=headers)
            per_image["serve"].append((cpu_seconds(server.pid) - before) / len(photos))
            assert all(a.status_code == 200 for a in answers)
        batches = re.findall(r'^resnet_(batch_size_sum|batch_size_count|padding_images_total) '
                             r'(\S+)$', requests.get(url + "/metrics", timeout=10).text,
                             re.MULTILINE)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    stats = dict(batches)
    return {
        "cpu_s_per_image": {k: [round(v, 4) for v in vs] for k, vs in per_image.items()},
        "serve_over_classify_cpu": round(statistics.median(
            s / c for s, c in zip(per_image["serve"], per_image["classify"], strict=True)), 3),
        "mean_batch": round(float(stats["batch_size_sum"]) / float(stats["batch_size_count"]),
                            2),
        "padding_per_image": round(float(stats["padding_images_total"])
                                   / float(stats["batch_size_sum"]), 3)}


def int8_model(work: Path, weights: Path, files: list[str]) -> Path:
    """An int8 .tflite of `weights` (calibrated on the photos), written once per work folder."""
    from resnet_cli.export import ExportFormat, export_model
    from resnet_cli.models import ModelOptions

    path = work / "resnet50_int8.tflite"
    if not path.exists():
        export_model(ModelOptions(weights=str(weights), device="cpu"), ExportFormat.litert,
                     path, int8=True, calibrate=files[:32], calibration_images=32,
                     progress=False)
    return path


def cpu_run(args: argparse.Namespace, work: Path, weights: Path, files: list[str],
            photos: list[bytes]) -> dict[str, object]:
    report: dict[str, object] = {"load_average_at_start": os.getloadavg()}
    report["fp32"] = cpu_per_image(args, weights, files, photos)
    report["int8_tflite"] = cpu_per_image(args, int8_model(work, weights, files), files, photos)
    report["load_average_at_end"] = os.getloadavg()
    return report


# ----- main -------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=96, help="images per throughput run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument("--hostile", type=int, default=200, help="requests in the hostile mix")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--cpu-only", action="store_true",
                        help="only the CPU-seconds per image of the server against classify")
    args = parser.parse_args()
    with work_folder(args.work, prefix="serve_load_") as work:
        run(args, work)


def run(args: argparse.Namespace, work: Path) -> None:
    import keras

    from resnet_cli.classify import classify_images
    from resnet_cli.models import ModelOptions, load_model
    from resnet_cli.photos import synthesize_photos

    weights = work / "resnet50.weights.h5"
    if not weights.exists():
        keras.utils.set_random_seed(0)
        keras.applications.ResNet50(weights=None).save_weights(weights)
    files = [str(p) for p in synthesize_photos(work, args.requests)]
    photos = [Path(f).read_bytes() for f in files]
    if args.cpu_only:
        print(json.dumps(cpu_run(args, work, weights, files, photos), indent=2))
        return
    loaded = load_model(ModelOptions(weights=str(weights), device="cpu"), progress=False)
    # classify's answers, which every server must give (and the warm-up of its pipeline)
    expected = [r.predictions[0].index for r in classify_images(files, loaded, progress=False)]

    server, url, _ = start_serve(weights)
    naive_port = 18000 + os.getpid() % 1000
    naive = start_naive(weights, naive_port)
    report: dict[str, object] = {"load_average_at_start": os.getloadavg()}
    try:
        rss_ready = rss_mb(server.pid)
        report.update(throughput(args, url, naive_port, loaded, files, photos, expected))
        report.update(latency(url, photos[: args.latency_requests], loaded))
        report["hostile"] = hostile_run(url, photos, expected, work, args.hostile,
                                        args.clients)
        report["server_up_after_hostile"] = requests.get(url + "/v2/health/live",
                                                         timeout=10).ok
        report["rss_mb_ready"] = round(rss_ready, 1)
        report["rss_mb_after_hostile"] = round(rss_mb(server.pid), 1)
        report["rss_after_over_ready"] = round(rss_mb(server.pid) / rss_ready, 3)
        report["load_average_at_end"] = os.getloadavg()
    finally:
        naive.terminate()
        server.send_signal(signal.SIGTERM)
        report["exit_code_after_sigterm_idle"] = server.wait(60)
    report["sigterm_under_load"] = sigterm_run(weights, photos, args.clients)
    report["cpu"] = cpu_run(args, work, weights, files, photos)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["naive"]:
        naive_server(sys.argv[2], int(sys.argv[3]))
    else:
        main()
