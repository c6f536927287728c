"""What `resnet benchmark` shows: Rich tables of the set-up, the timings and the ratios, or JSON."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from rich.table import Table

from resnet_cli.benchmark import MEASUREMENTS

if TYPE_CHECKING:
    from rich.console import Console

    from resnet_cli.benchmark import BenchmarkReport

RATIO_MEANING = {
    "classify/model": "1.0: decoding costs nothing",
    "classify/keras": "end to end vs plain Keras",
    "model/keras": "",
    "model/model_fp32": "speed-up of the precision, model alone",
    "classify/classify_fp32": "speed-up of the precision, end to end",
    "classify/model_fp32": "end to end vs the fp32 model alone",
}


def render_benchmark(report: BenchmarkReport, console: Console) -> None:
    """The report as Rich tables: set-up, timings (median and range), ratios."""
    console.print(_setup_table(report))
    console.print(_timings_table(report))
    if report.ratios:
        console.print(_ratios_table(report))


def _setup_table(report: BenchmarkReport) -> Table:
    setup = Table(show_header=False, title="benchmark", title_justify="left")
    setup.add_column(style="bold")
    setup.add_column()
    precision = report.precision
    if report.policy != "float32" or precision != "fp32":
        precision += f" (Keras policy {report.policy})"
    load = ""
    if report.other_cpu is not None:
        busy = report.other_cpu > 0.2 * max(report.cpu_count, 1)
        load = (f"; other processes used {report.other_cpu:.1f} cores meanwhile"
                + (": figures are noisy" if busy else ""))
    rows = [
        ("model", report.source
         + ("; as fast as trained weights" if "random" in report.source else "")),
        ("precision", precision),
        ("device", f"{report.device}, {report.cpu_count} CPU cores{load}"),
        ("batch", f"{report.batch_size} images of {report.image_size}x{report.image_size}"),
        ("inputs", f"{report.inputs}; {report.input_count} images per run"),
        ("first batch", f"{report.compile_s:.2f} s "
         + ("(already compiled)" if report.precompiled else "(fold + trace + compile + run)")
         + f"; traced {report.trace_count} time(s) in all"),
    ]
    if report.keras_first_s is not None:
        rows.append(("first model.predict", f"{report.keras_first_s:.2f} s (Keras baseline, "
                                            "one batch with its set-up)"))
    for key, value in rows:
        setup.add_row(key, value)
    return setup


def _timings_table(report: BenchmarkReport) -> Table:
    timings = Table(title=f"timed runs (median, min-max of {len(report.timings[0].seconds)})",
                    title_justify="left", caption_justify="left", caption="; ".join(
                        f"{MEASUREMENTS[t.name][0]}: {t.description}" for t in report.timings))
    for name, justify in (("measurement", "left"), ("images/s", "right"), ("range", "right"),
                          ("ms/batch", "right"), ("range ", "right"), ("CPU ms/img", "right")):
        timings.add_column(name, justify=justify)  # type: ignore[arg-type]
    for timing in report.timings:
        ips, ms = timing.images_per_s, timing.ms_per_batch
        cpu = timing.stats()["cpu_ms_per_image"]
        timings.add_row(MEASUREMENTS[timing.name][0], f"{statistics.median(ips):.1f}",
                        f"{min(ips):.1f}-{max(ips):.1f}", f"{statistics.median(ms):.0f}",
                        f"{min(ms):.0f}-{max(ms):.0f}", "" if cpu is None else f"{cpu:.0f}")
    return timings


def _ratios_table(report: BenchmarkReport) -> Table:
    ratios = Table(title="throughput ratios (median of per-round ratios)", title_justify="left")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    ratios.add_column("meaning")
    for label, ratio in report.ratios.items():
        ratios.add_row(label, f"{ratio:.2f}x", RATIO_MEANING.get(label, ""))
    return ratios
