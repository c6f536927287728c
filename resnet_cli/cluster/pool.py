"""`--ray`'s settings and the size of its actor pool: what the smallest pool needs, and the
wait for a cluster's AVAILABLE resources to hold it (an autoscaling cluster adding workers, a
busy one finishing), said on stderr and bounded by `--ray-timeout`."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from resnet_cli.errors import ResnetCliError, UsageError, first_line

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds to wait for the cluster to offer the pool (--ray-timeout)
_POLL_SECONDS = 0.5


class ClusterError(ResnetCliError):
    """The Ray cluster cannot be reached, cannot hold the job, or the job failed on it."""


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run: `address` is auto, local, HOST:PORT or ray://HOST:PORT;
    `timeout` bounds the wait for the cluster to offer the pool's resources."""

    address: str = "auto"
    min_actors: int = 1
    max_actors: int | None = None  # None: as many as the cluster holds
    timeout: float = DEFAULT_TIMEOUT


def parse_ray_actors(text: str) -> tuple[int, int | None]:
    """Parse `MIN` or `MIN:MAX` (actors in the pool; MAX defaults to what the cluster holds)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", text)
    low = int(match.group(1)) if match else 0
    high = int(match.group(2)) if match and match.group(2) else None
    if low < 1 or (high is not None and high < low):
        raise UsageError(f"Invalid --ray-actors '{text}': use MIN or MIN:MAX with "
                         "1 <= MIN <= MAX, e.g. 2 or 1:8.")
    return low, high


@dataclass(frozen=True)
class PoolNeed:
    """What the smallest pool needs: `cpus` (the actors' and one reading task's) and
    `gpus` (the actors', with a GPU device)."""

    actors: int
    cpus: int
    gpus: int

    def describe(self) -> str:
        gpu = f" and {self.gpus} GPU(s)" if self.gpus else ""
        return (f"{self.cpus} CPU(s){gpu} ({self.actors} model actor(s) and a task that "
                "reads images)")


def plan_pool(available: dict[str, float], total: dict[str, float], settings: RaySettings,
              device: str) -> tuple[PoolNeed, tuple[int, int, int] | None]:
    """What the minimum pool needs, and (min actors, max actors, GPUs per actor) when the
    cluster's AVAILABLE resources hold it now (None: not yet). The maximum is what the
    whole cluster could hold next to one reading task (or MAX of --ray-actors, if smaller).
    """
    from resnet_cli.devices import parse_device

    kind = parse_device(device).kind
    use_gpus = kind == "gpu" or (kind == "auto" and total.get("GPU", 0) >= 1)
    need = PoolNeed(settings.min_actors, settings.min_actors + 1,
                    settings.min_actors if use_gpus else 0)
    free_cpus, free_gpus = int(available.get("CPU", 0)), int(available.get("GPU", 0))
    if free_cpus < need.cpus or free_gpus < need.gpus:
        return need, None
    fits = int(total.get("CPU", 0)) - 1  # one CPU stays free for reading and decoding
    if use_gpus:
        fits = min(fits, int(total.get("GPU", 0)))
    high = fits if settings.max_actors is None else min(settings.max_actors, fits)
    return need, (settings.min_actors, max(high, settings.min_actors), int(use_gpus))


def wait_for_pool(ray: Any, settings: RaySettings, device: str) -> tuple[int, int, int]:
    """The pool to start, once the cluster's available resources hold its minimum: waits
    up to `settings.timeout` (an autoscaling cluster adding workers, a busy one finishing
    work), saying on stderr what it waits for, and asks Ray's autoscaler for it meanwhile.

    Raises:
        ClusterError: the resources did not come within the timeout.
    """
    deadline = time.monotonic() + settings.timeout
    need, pool = plan_pool(ray.available_resources(), ray.cluster_resources(), settings,
                           device)
    if pool is not None:
        return pool
    have = _resources_line(ray.available_resources())
    log.warning("waiting up to %g s for the Ray cluster to offer %s; available now: %s",
                settings.timeout, need.describe(), have)
    _request_resources([{"CPU": 1.0, **({"GPU": 1.0} if need.gpus else {})}] * need.actors
                       + [{"CPU": 1.0}])
    try:
        while time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
            need, pool = plan_pool(ray.available_resources(), ray.cluster_resources(),
                                   settings, device)
            if pool is not None:
                return pool
    except BaseException:
        _request_resources([])
        raise
    _request_resources([])
    raise ClusterError(
        f"the Ray cluster did not offer {need.describe()} within --ray-timeout "
        f"{settings.timeout:g} s (available: {_resources_line(ray.available_resources())}, "
        f"total: {_resources_line(ray.cluster_resources())}). Use a smaller --ray-actors, "
        "a larger cluster, or a longer --ray-timeout.")


def _resources_line(resources: dict[str, float]) -> str:
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    return f"{cpus:g} CPU(s)" + (f", {gpus:g} GPU(s)" if gpus else "")


def _request_resources(bundles: list[dict[str, float]]) -> None:
    """Ask Ray's autoscaler for `bundles` (what Ray Data does itself); [] withdraws the
    request. A cluster without an autoscaler ignores it."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
    except Exception as exc:  # no autoscaler support in this install: only a hint is lost
        log.debug("request_resources: %s", first_line(exc))
