"""Where the items of a batch run: a local process pool, Ray tasks, or SLURM jobs through submitit.

Every executor takes item specs (:data:`~layerforge.pipelines.batch_item_run.ItemSpec`), runs
:func:`~layerforge.pipelines.batch_item_run.run_item` on each, and hands back one record per
item, also for an item that was killed, ran out of memory or overran ``timeout_s``: those get
a one-line error and the others go on. The batch driver (:mod:`layerforge.pipelines.batch`)
decides what to submit, retries and records.

local
    One process per item, forked from a server that imported the pipeline once (so an item
    starts in milliseconds, not the seconds an interpreter takes to import torch). A pool of
    long-lived workers cannot stop one item at its timeout, and one worker killed by the
    kernel's OOM killer breaks the whole pool (``BrokenProcessPool`` fails every item in
    flight), so each item is its own process.
ray
    One Ray task per item with ``num_cpus=cpus_per_item``, ``num_gpus=gpus_per_item``; a
    local Ray is started on 127.0.0.1 only, without a dashboard (see :func:`start_local_ray`).
slurm
    submitit: all items of a round go in one job array (``--array=...%max_parallel``);
    a preempted job is requeued and resumes from its checkpoint.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from layerforge.errors import ConfigError
from layerforge.pipelines.batch_config import BatchConfig
from layerforge.pipelines.batch_item_run import ItemResult, ItemSpec, failure, local_worker, run_item

GRACE_S = 10.0
"""After SIGTERM (a timeout, Ctrl-C), how long an item has to record itself before SIGKILL."""
POLL_S = 0.5
FORK_PRELOAD = ("layerforge.pipelines.batch_item_run", "layerforge.pipelines.launch", "layerforge.pipelines.registry",
                "trimesh", "pxr.Usd", "layerforge.assets.export")
"""What the local executor's fork server imports once, so that no item pays for it (measured in a
fresh process: trimesh 0.35 s, pxr 0.23 s; torch comes with the engine). bpy (0.6 s, .blend
export) is left out: it starts threads, which a fork would not carry over."""


def timeout_error(timeout_s: float) -> str:
    return (f"timed out after {timeout_s:g} s (timeout_s={timeout_s:g}); its checkpoint is kept:"
            " raise timeout_s and re-run the batch to resume it")


def signal_error(code: int) -> str:
    name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
    hint = " (out of memory, or killed from outside)" if -code == signal.SIGKILL else ""
    return f"its process was killed by {name}{hint}; re-run the batch to retry it"


class Executor(Protocol):
    """What the batch driver needs of an executor."""

    name: str

    def capacity(self) -> int:
        """How many more items may be submitted now."""

    def submit(self, specs: list[ItemSpec]) -> None:
        """Start these items (one job array on SLURM)."""

    def poll(self, wait_s: float) -> list[tuple[ItemSpec, ItemResult]]:
        """Items that ended since the last poll (waiting up to ``wait_s`` for one)."""

    def stop_all(self) -> list[tuple[ItemSpec, ItemResult]]:
        """Stop every item in flight (Ctrl-C of the batch); return their records."""

    def close(self) -> None:
        """Release the executor (a local Ray is shut down)."""


# ---- local ----------------------------------------------------------------------------------
@dataclass
class _Running:
    proc: Any
    conn: Any
    spec: ItemSpec
    started: float
    result: ItemResult | None = None
    stopped_at: float | None = None
    timed_out: bool = False


@dataclass
class LocalExecutor:
    """One forked process per item, at most ``max_parallel`` at once."""

    max_parallel: int
    timeout_s: float | None
    preload: list[str] = field(default_factory=list)
    name: str = "local"

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload([*FORK_PRELOAD, *self.preload])
        self._running: dict[str, _Running] = {}

    def capacity(self) -> int:
        return self.max_parallel - len(self._running)

    def submit(self, specs: list[ItemSpec]) -> None:
        for spec in specs:
            recv, send = self._ctx.Pipe(duplex=False)
            proc = self._ctx.Process(target=local_worker, args=(spec, send), name=f"layerforge-{spec['item']}")
            proc.start()
            send.close()
            self._running[spec["item"]] = _Running(proc, recv, spec, time.monotonic())

    def poll(self, wait_s: float) -> list[tuple[ItemSpec, ItemResult]]:
        waitables = [r.proc.sentinel for r in self._running.values()] + [r.conn for r in self._running.values()]
        if waitables:
            multiprocessing.connection.wait(waitables, timeout=wait_s)
        ended = []
        now = time.monotonic()
        for name, run in list(self._running.items()):
            if run.result is None and run.conn.poll():
                try:
                    run.result = run.conn.recv()
                except EOFError:
                    pass
            if run.proc.is_alive():
                if self.timeout_s is not None and run.stopped_at is None and now - run.started > self.timeout_s:
                    run.timed_out = True
                    self._stop(run)
                elif run.stopped_at is not None and now - run.stopped_at > GRACE_S:
                    run.proc.kill()
                continue
            run.proc.join()
            run.conn.close()
            del self._running[name]
            ended.append((run.spec, self._record(run)))
        return ended

    def _stop(self, run: _Running) -> None:
        run.stopped_at = time.monotonic()
        run.proc.terminate()

    def _record(self, run: _Running) -> ItemResult:
        if run.timed_out:
            result = dict(run.result or failure(run.spec, ""))
            result.update(status="failed", error=timeout_error(float(self.timeout_s or 0)))
            return result
        if run.result is not None:
            return run.result
        code = run.proc.exitcode
        if code is not None and code < 0:
            return failure(run.spec, signal_error(code))
        return failure(run.spec, f"its process exited with code {code} before reporting; see the item's log.txt")

    def stop_all(self) -> list[tuple[ItemSpec, ItemResult]]:
        for run in self._running.values():
            self._stop(run)
        ended: list[tuple[ItemSpec, ItemResult]] = []
        deadline = time.monotonic() + GRACE_S + 5
        while self._running and time.monotonic() < deadline:
            ended += self.poll(POLL_S)
        for run in self._running.values():
            run.proc.kill()
        ended += self.poll(POLL_S) if self._running else []
        return ended

    def close(self) -> None:
        for run in self._running.values():
            run.proc.kill()


# ---- ray ------------------------------------------------------------------------------------
LOOPBACK_ONLY_ENV = {
    # Ray's own switch for single-machine use: with clusters disabled its node address is the
    # loopback one and every server it starts (GCS, raylet, workers, agents) listens on
    # 127.0.0.1 only. Without it, Ray binds the machine's external interface (measured with
    # `ss -ltnp`: raylet and GCS on *, the runtime-env agent on the external address).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report to Ray's servers
}


def start_local_ray(num_cpus: int | None, num_gpus: float | None = None) -> None:
    """A Ray instance on this machine, listening on 127.0.0.1 only, with no dashboard.

    The loopback switch is read when Ray is imported, so it is set before the first import.
    """
    for key, value in LOOPBACK_ONLY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)


RAY_CONNECT_TIMEOUT_S = 5.0


def _probe_ray_address(address: str) -> None:
    """Fail in seconds on an address nobody listens at (``ray.init`` retries it for minutes).

    Raises:
        ConfigError: nothing answers at ``host:port``.
    """
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(f"cannot connect to the Ray cluster at {address} ({err.strerror or err})",
                          "check ray_address= (`ray status` on the head node), or drop it to start a local Ray") from None


def _ray_error(err: BaseException) -> str:
    import ray.exceptions as rex

    if isinstance(err, rex.OutOfMemoryError):
        return "ran out of memory (Ray's memory monitor stopped it); give it more memory (mem_gb_per_item=) or lower the sizes"
    if isinstance(err, (rex.WorkerCrashedError, rex.NodeDiedError)):
        return "its Ray worker died (out of memory, or killed from outside); re-run the batch to retry it"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {first}"


@dataclass
class RayExecutor:
    """Ray tasks on an existing cluster (``address``) or on a local one started here."""

    address: str | None
    max_parallel: int | None
    cpus_per_item: int
    gpus_per_item: float
    mem_gb_per_item: float | None
    timeout_s: float | None
    name: str = "ray"

    def __post_init__(self) -> None:
        if self.address is None:
            start_local_ray(num_cpus=None)
        else:
            _probe_ray_address(self.address)
            import ray

            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConfigError(f"cannot connect to the Ray cluster at {self.address} ({str(err).splitlines()[0]})",
                                  "check ray_address= (ray status on the head node), or drop it to start a local Ray") from None
        import ray

        self._ray = ray
        self._started_here = self.address is None
        options: dict[str, Any] = {"num_cpus": self.cpus_per_item, "num_gpus": self.gpus_per_item, "max_retries": 0}
        if self.mem_gb_per_item:
            options["memory"] = int(self.mem_gb_per_item * 2**30)
        self._task = ray.remote(**options)(run_item)
        if self.max_parallel is None:
            cpus = ray.cluster_resources().get("CPU", 1)
            self.max_parallel = max(1, int(cpus // self.cpus_per_item))
        self._refs: dict[Any, tuple[ItemSpec, float]] = {}
        self._cancelled: set[Any] = set()

    def capacity(self) -> int:
        assert self.max_parallel is not None
        return self.max_parallel - len(self._refs)

    def submit(self, specs: list[ItemSpec]) -> None:
        for spec in specs:
            self._refs[self._task.remote(spec)] = (spec, time.monotonic())

    def poll(self, wait_s: float) -> list[tuple[ItemSpec, ItemResult]]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=wait_s, fetch_local=True)
        if not ready:  # ray.wait returns at the timeout with what is ready; wait_s may pass with none
            ready = []
        ended = []
        for ref in ready:
            spec, _ = self._refs.pop(ref)
            try:
                result = self._ray.get(ref)
            except self._ray.exceptions.TaskCancelledError:
                result = failure(spec, timeout_error(float(self.timeout_s or 0)) if ref in self._cancelled else "cancelled")
            except self._ray.exceptions.RayError as err:
                result = failure(spec, _ray_error(err))
            self._cancelled.discard(ref)
            ended.append((spec, result))
        now = time.monotonic()
        for ref, (spec, started) in self._refs.items():  # in flight <= max_parallel: submitted is started
            if self.timeout_s is not None and ref not in self._cancelled and now - started > self.timeout_s:
                self._cancelled.add(ref)
                self._ray.cancel(ref, force=True)
        return ended

    def stop_all(self) -> list[tuple[ItemSpec, ItemResult]]:
        ended = [(spec, failure(spec, "interrupted (re-run the batch to resume it)", status="interrupted"))
                 for spec, _ in self._refs.values()]
        for ref in self._refs:
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        return ended

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()


# ---- slurm (submitit) -----------------------------------------------------------------------
class ItemJob:
    """A submitit job that runs one item; on preemption it is requeued and resumes from its checkpoint."""

    def __init__(self, requeue: bool) -> None:
        self.requeue = requeue

    def __call__(self, spec: ItemSpec) -> ItemResult:
        return run_item(spec)

    def checkpoint(self, spec: ItemSpec) -> Any:
        # submitit calls this on preemption and on timeout; the run's own checkpoints hold the
        # state, so the same call resubmitted continues where it stopped
        import submitit

        return submitit.helpers.DelayedSubmission(ItemJob(self.requeue), spec) if self.requeue else None


@dataclass
class SlurmExecutor:
    """SLURM job arrays through submitit (or submitit's local executor with ``slurm.cluster=local``)."""

    folder: Path
    cfg: BatchConfig
    job_name: str
    name: str = "slurm"

    def __post_init__(self) -> None:
        import submitit

        s = self.cfg.slurm
        check_executor(self.cfg)
        self._submitit = submitit
        timeout_min = s.time_min or (math.ceil(self.cfg.timeout_s / 60) if self.cfg.timeout_s else 60)
        self._parallel = self.cfg.max_parallel or s.array_parallelism
        # a timeout is an item's failure, not a reason to requeue: only preemption requeues
        self._ex = submitit.AutoExecutor(folder=self.folder, cluster=s.cluster, slurm_max_num_timeout=0,
                                         local_max_num_timeout=0)
        params: dict[str, Any] = {"name": self.job_name, "timeout_min": timeout_min, "cpus_per_task": self.cfg.cpus_per_item,
                                  "nodes": 1, "tasks_per_node": 1}
        if self.cfg.gpus_per_item:
            params["gpus_per_node"] = math.ceil(self.cfg.gpus_per_item)
        if self.cfg.mem_gb_per_item:
            params["mem_gb"] = self.cfg.mem_gb_per_item
        slurm_only = {"slurm_partition": s.partition, "slurm_account": s.account, "slurm_qos": s.qos,
                      "slurm_constraint": s.constraint, "slurm_array_parallelism": self._parallel,
                      "slurm_setup": list(s.setup) or None,
                      "slurm_additional_parameters": dict(s.additional) or None}
        params.update({k: v for k, v in slurm_only.items() if v is not None})
        if s.cluster == "local" and s.setup:
            params["local_setup"] = list(s.setup)
        self._ex.update_parameters(**params)
        self._timeout_s = self.cfg.timeout_s
        self._jobs: dict[str, tuple[Any, ItemSpec, float]] = {}

    def capacity(self) -> int:
        # on SLURM the array's %parallelism throttles; submitit's local executor starts every job at once
        return self._parallel - len(self._jobs) if self.cfg.slurm.cluster != "slurm" else 1 << 30

    def submit(self, specs: list[ItemSpec]) -> None:
        if not specs:
            return
        with self._ex.batch():  # one job array
            jobs = [self._ex.submit(ItemJob(self.cfg.slurm.requeue), spec) for spec in specs]
        now = time.monotonic()
        for job, spec in zip(jobs, specs):
            self._jobs[spec["item"]] = (job, spec, now)

    def poll(self, wait_s: float) -> list[tuple[ItemSpec, ItemResult]]:
        deadline = time.monotonic() + wait_s
        while True:
            ended = []
            for name, (job, spec, started) in list(self._jobs.items()):
                if job.done():
                    del self._jobs[name]
                    ended.append((spec, self._result(job, spec)))
                elif self._timeout_s is not None and time.monotonic() - started > self._timeout_s + 60:
                    job.cancel(check=False)  # SLURM's own limit is timeout_min; this catches a lost job
            if ended or time.monotonic() >= deadline or not self._jobs:
                return ended
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    def _result(self, job: Any, spec: ItemSpec) -> ItemResult:
        try:
            return {**job.result(), "job_id": job.job_id}
        except self._submitit.core.utils.UncompletedJobError as err:
            text = str(err)
            if "timed-out" in text or "TIMEOUT" in text:
                return failure(spec, timeout_error(float(self._timeout_s or 0)), job_id=job.job_id)
            return failure(spec, f"SLURM job {job.job_id} ended without a result ({job.state}); see {job.paths.stderr}",
                           job_id=job.job_id)
        except Exception as err:  # the job raised outside run_item (unpickling, environment)
            first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            return failure(spec, f"SLURM job {job.job_id} failed: {first}", job_id=job.job_id)

    def stop_all(self) -> list[tuple[ItemSpec, ItemResult]]:
        ended = []
        for job, spec, _ in self._jobs.values():
            job.cancel(check=False)
            ended.append((spec, failure(spec, "interrupted (re-run the batch to resume it)", status="interrupted")))
        self._jobs.clear()
        return ended

    def close(self) -> None:
        pass


def check_executor(cfg: BatchConfig) -> None:
    """What can be told before anything starts: SLURM needs sbatch on this machine.

    Raises:
        ConfigError: executor=slurm (slurm.cluster=slurm) without sbatch on PATH.
    """
    if cfg.executor == "slurm" and cfg.slurm.cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("executor=slurm needs SLURM's sbatch, which is not on this machine's PATH",
                          "run the batch on a SLURM login node, use executor=local or ray, or slurm.cluster=local"
                          " to run the same jobs as local processes")


def make_executor(cfg: BatchConfig, folder: Path, job_name: str, preload: list[str]) -> Executor:
    """The executor ``cfg.executor`` names, sized by the batch options."""
    if cfg.executor == "ray":
        return RayExecutor(cfg.ray_address, cfg.max_parallel, cfg.cpus_per_item, cfg.gpus_per_item,
                           cfg.mem_gb_per_item, cfg.timeout_s)
    if cfg.executor == "slurm":
        return SlurmExecutor(folder / "slurm", cfg, job_name)
    cores = os.cpu_count() or 1
    parallel = cfg.max_parallel or max(1, cores // cfg.cpus_per_item)
    return LocalExecutor(parallel, cfg.timeout_s, preload)
