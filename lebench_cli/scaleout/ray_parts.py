"""`lebench ray`: the parts of one extraction as Ray tasks, each one `extract --shard K/N` run
in a worker, all writing into one output folder that every node must share.

A part whose worker dies (killed, out of memory, node lost) is retried by Ray up to
max_retries times: the kernel drops the dead worker's part lock and the retry resumes from
the part's committed shards."""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import (InputError, LebenchError, MissingExtraError, OutputError, PartFailedError, install_extra_hint,
                      one_line)
from ..pipeline.options import ExtractOptions
from ..pipeline.summary import ExtractSummary, merged_summaries

MARKER_PREFIX = ".lebench-ray-"
INSTALL_HINT = f"lebench ray needs Ray: {install_extra_hint('ray')}"


@dataclass
class RayOptions:
    parts: Optional[int] = None  # default: one per GPU of the cluster, or per cpus_per_part CPUs
    address: Optional[str] = None  # default: RAY_ADDRESS, else a local cluster
    gpus_per_part: Optional[float] = None  # default: 1 when the cluster has GPUs and the device is not the CPU
    cpus_per_part: float = 1.0
    max_retries: int = 3
    # Set in every part's worker (Ray's runtime_env), whatever the environment of `ray start`
    # on its node says: HF_HOME and HF_HUB_OFFLINE=1 for a model from the hub cache.
    environment: dict = field(default_factory=dict)


@dataclass
class PartResult:
    """What a part reports back: its summary, or the error that stopped it."""

    part: int
    parts: int
    node: str
    summary: ExtractSummary = field(default_factory=ExtractSummary)
    error: Optional[str] = None
    exit_code: int = 0

    def line(self) -> str:
        if self.error is not None:
            return f"part {self.part}/{self.parts} on {self.node} failed: {self.error}"
        return f"part {self.part}/{self.parts} on {self.node}: {self.summary.line()}"


def run_parts_on_ray(options: ExtractOptions, ray_options: RayOptions,
                     on_part_done: Optional[Callable[[PartResult], None]] = None) -> ExtractSummary:
    """Runs every part of `options` as a Ray task; the merged summary of all parts. Raises
    PartFailedError (after all parts have ended) when a part stopped with an error."""
    import time

    options.validate()
    ray = _import_ray()
    started = time.monotonic()
    connected_here = _connect(ray, ray_options.address)
    try:
        gpus, parts = _resources(ray, options, ray_options)
        output = Path(options.output)
        marker = _write_marker(output)
        try:
            results = _run(ray, options, ray_options, gpus, parts, marker, on_part_done)
        finally:
            marker[0].unlink(missing_ok=True)
    finally:
        if connected_here:
            ray.shutdown()
    summary = merged_summaries([result.summary for result in results], output, parts)
    summary.failures_path = str(output / f"failures-*of{parts}.jsonl")  # as lebench ray always named them
    # The parts ran side by side: the run's rate is over its wall time.
    summary.processing_seconds = summary.elapsed_seconds = time.monotonic() - started
    failed = [result for result in results if result.error is not None]
    if failed:
        more = f" (and {len(failed) - 1} more parts)" if len(failed) > 1 else ""
        raise PartFailedError(f"part {failed[0].part}/{parts} failed: {failed[0].error}{more}",
                              failed[0].exit_code or 1)
    return summary


def _import_ray():
    try:
        import ray
    except ImportError:
        raise MissingExtraError(INSTALL_HINT) from None
    return ray


def _connect(ray, address: Optional[str]) -> bool:
    """Connects to the cluster (address, RAY_ADDRESS, else a new local one); False when the
    caller had already connected this process."""
    import logging

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = {} if address else {"include_dashboard": False}
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **local)
    except (ConnectionError, ValueError, RuntimeError) as error:
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray cluster"
        raise InputError(f"cannot {where}: {_first_line(error)}") from None
    return True


def _resources(ray, options: ExtractOptions, ray_options: RayOptions) -> tuple:
    """(GPUs per part, number of parts), checked against what the cluster has: a task asking
    for more than any node has would wait forever."""
    cluster = ray.cluster_resources()
    cluster_gpus, cluster_cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    gpus = ray_options.gpus_per_part
    if gpus is None:
        gpus = 1 if cluster_gpus and not (options.device or "").startswith("cpu") else 0
    if gpus > cluster_gpus:
        raise InputError(f"--gpus-per-part {gpus:g}: the Ray cluster has {cluster_gpus:g} GPUs")
    if ray_options.cpus_per_part > cluster_cpus:
        raise InputError(f"--cpus-per-part {ray_options.cpus_per_part:g}: the Ray cluster has {cluster_cpus:g} CPUs")
    parts = ray_options.parts
    if parts is None:
        parts = int(cluster_gpus // gpus) if gpus else int(cluster_cpus // ray_options.cpus_per_part)
    return gpus, max(1, parts)


def _write_marker(output: Path) -> tuple:
    """A file only this run knows: a part that cannot read it runs on a node that does not
    see this output folder."""
    token = secrets.token_hex(16)
    path = output / f"{MARKER_PREFIX}{token}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    return path, token


def task_options(ray_options: RayOptions, gpus: float) -> dict:
    """What each part's Ray task is given: its resources, its retries, its environment."""
    given = {"num_cpus": ray_options.cpus_per_part, "num_gpus": gpus, "max_retries": ray_options.max_retries,
             "retry_exceptions": False}
    if ray_options.environment:
        given["runtime_env"] = {"env_vars": dict(ray_options.environment)}
    return given


def _run(ray, options, ray_options, gpus, parts, marker, on_part_done) -> list:
    remote = ray.remote(run_part).options(**task_options(ray_options, gpus))
    marker_path, token = marker
    workdir = os.getcwd()
    pending = {
        remote.remote(dataclasses.replace(options, shard=(k, parts)), marker_path.name, token, workdir): k
        for k in range(1, parts + 1)
    }
    results = []
    try:
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            part = pending.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayError as error:  # a bug, or a worker that died more than max_retries times
                result = PartResult(part, parts, "?", error=_describe(ray, error), exit_code=1)
            results.append(result)
            if on_part_done is not None:
                on_part_done(result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return sorted(results, key=lambda result: result.part)


def run_part(options: ExtractOptions, marker_name: str, token: str, workdir: str) -> PartResult:
    """One part, in a Ray worker, from the driver's working folder: relative paths, and the
    ids of files given by path, mean what they meant to the driver."""
    from ..pipeline.extract import Extraction
    from ..pipeline.memory import return_large_blocks_to_the_os

    part, parts = options.part
    node = socket.gethostname()
    previous = os.getcwd()
    try:
        os.chdir(workdir)
    except OSError:
        return PartResult(part, parts, node, exit_code=1, error=(
            f"the driver's working folder {workdir} does not exist on this node: run lebench ray from a "
            "folder every node shares"))
    try:
        marker = Path(options.output) / marker_name
        try:
            seen = marker.read_text()
        except OSError:
            seen = None
        if seen != token:
            return PartResult(part, parts, node, exit_code=1, error=(
                f"{options.output} is not the driver's folder on this node (its marker {marker_name} is "
                "missing): the output folder must be on a filesystem every node shares"))
        return_large_blocks_to_the_os()
        try:
            summary = Extraction(options).run()
        except LebenchError as error:
            return PartResult(part, parts, node, error=str(error), exit_code=error.exit_code)
        return PartResult(part, parts, node, summary=summary)
    finally:
        os.chdir(previous)


def _describe(ray, error: BaseException) -> str:
    cause = getattr(error, "cause", None) if isinstance(error, ray.exceptions.RayTaskError) else None
    if cause is not None:
        return one_line(cause, first_line=True)
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
