"""An honest energy meter for training, tuning and inference steps.

Wrap the work in :class:`EnergyMeter`::

    with EnergyMeter(device="cpu") as meter:
        model.fit(X, y)
        meter.set_events(len(X))
    meter.record   # wall/CPU time, energy, how it was obtained, J/event, ...

Every number in ``meter.record`` says how it was obtained (``method``,
``methods``) and every fallback is explained in ``notes``. Sources, best first:

1. **RAPL through Linux powercap** (``method`` ``"rapl"``). Counters under
   ``/sys/class/powercap`` (``intel-rapl:N`` packages, ``intel-rapl:N:M``
   subdomains ``core``/``uncore``/``dram``; AMD Zen CPUs use the same
   driver; other ``<prefix>:N`` directories with ``energy_uj``,
   ``max_energy_range_uj`` and ``name`` are scanned too). The package domains
   are summed; their ``core``/``uncore`` subdomains are already inside the
   package and are not added; a ``dram`` domain (outside the package power
   plane) is reported as RAM energy; ``psys`` (the whole platform) is ignored
   to avoid double counting. Counters wrap at ``max_energy_range_uj`` (about
   262 kJ, i.e. every ~20 min at 200 W), so they are read at the start, every
   ``rapl_poll_s`` seconds from a background thread and at the end, and each
   interval is wrap-corrected per domain. Package domains whose counters are
   identical (multi-die AMD parts and ``intel-rapl-mmio`` can mirror one
   socket counter) are counted once. RAPL counts the *whole package*,
   including other processes and idle power: with Snakemake running several
   jobs on one socket each job sees the others' energy too, so the
   process-time estimate is always reported alongside
   (``cpu_energy_estimate_j``). Since the November 2020 "Platypus" fix
   (CVE-2020-8694; Linux 5.10 and stable backports) ``energy_uj`` is
   readable by root only, so unprivileged jobs usually fall back.
2. **NVML** for an NVIDIA GPU when ``device`` is ``"cuda"``/``"cuda:N"``
   (``"+nvml"``): ``nvmlDeviceGetTotalEnergyConsumption`` (mJ, Volta and
   newer) at start and end, otherwise ``nvmlDeviceGetPowerUsage`` (mW)
   sampled every ``gpu_sample_s`` seconds in a background thread and
   integrated with the trapezoidal rule. NVML also counts the whole GPU.
   NVML numbers GPUs physically while CUDA numbers the visible ones, so the
   CUDA device is mapped through ``CUDA_VISIBLE_DEVICES`` (indices or full or
   short ``GPU-…`` UUIDs, as SLURM and HTCondor set it) to the GPU NVML reads;
   ``hepml_steps`` sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (unless already set)
   so CUDA indices follow NVML's PCI order.
3. **Estimate from process CPU time** (``"estimate:cpu-time"``) when RAPL is
   absent or unreadable, as on this machine (AMD EPYC under KVM: no
   powercap at all). CPU energy = process CPU seconds (user + system, this
   process's threads plus its exited, waited-for children, from
   ``getrusage``) x ``cpu_watts_per_core``. Default **10 W per busy
   core**: package TDP divided by core count of current server CPUs is
   3.5-7.5 W (EPYC 7763 280 W/64 cores = 4.4 W, EPYC 9654 360 W/96 = 3.75 W,
   Xeon Platinum 8380 270 W/40 = 6.75 W, Xeon Gold 6248 150 W/20 = 7.5 W); a
   busy core also keeps the uncore/IO die and memory controller awake and
   boosts above base clock, so we round up to a deliberately generous 10 W
   (CodeCarbon's fallback for unknown CPUs is 4 W per *thread*, i.e. 8 W per
   SMT core). The estimate ignores idle/baseline power and everything
   outside the CPU and RAM (fans, PSU losses, network, storage). RAM energy
   = ``ram_watts_per_gib`` x peak RSS (GiB) x wall seconds, default
   **0.375 W/GiB**, i.e. 3 W per 8 GB of DDR3/DDR4 (Crucial's rule of thumb,
   used by CodeCarbon 2.x and, as 0.3725 W/GB, by the Green Algorithms
   calculator). Peak RSS is ``ru_maxrss`` of this process (or of its largest
   exited child, whichever is larger): a lifetime peak, so an upper bound for
   the measured block.
4. **CO2**: ``co2_g = energy_j / 3.6e6 * grid_gco2_per_kwh`` when a grid
   intensity is given; otherwise ``None`` (we do not guess a location).

Why not CodeCarbon (3.3.2 is installed here; all numbers measured on this
machine with ``/work/venv/bin/python``):

- its default ``tracking_mode="machine"`` charges the measured code with the
  whole machine (RAPL package, or machine CPU load x TDP without RAPL): with
  Snakemake running several jobs in parallel every job is billed for all of
  them. Its ``tracking_mode="process"`` is close to our estimate (process
  and children CPU load x TDP / cores) but is not the default and, without a
  TDP for KVM's bare "AMD EPYC" model string, uses its 4 W/thread default;
- ``EmissionsTracker.start()`` took 1.4-1.7 s here (hardware detection in
  worker threads; it also pulls in pandas: 230 -> ~875 loaded modules), per
  step, and by default writes ``emissions.csv`` into the working directory
  and logs its own warnings;
- the often-quoted "slow import" is *not* true any more: ``import
  codecarbon`` took 0.06-0.08 s (process wall 0.09-0.10 s against 0.02 s
  for a bare interpreter, 3 runs each).

Zeus (ml.energy) needs NVML or RAPL as well and is GPU-focused: on this
machine it would have nothing to measure.

This module imports only the standard library at import time; ``pynvml`` is
imported lazily, and only for CUDA devices.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .energy_powercap import (DEFAULT_POWERCAP_ROOT, RaplUnavailable, _kind, _read_int, _why,  # noqa: F401
                              energy_delta, read_rapl)
from .energy_powercap import domain_deltas_j as _domain_deltas_j
from .energy_powercap import mirrored_packages as _mirrored_packages
from .energy_powercap import read_rapl_checked as _read_rapl_checked
from .errors import ConfigError

DEFAULT_CPU_WATTS_PER_CORE = 10.0
DEFAULT_RAM_WATTS_PER_GIB = 0.375


# -- NVML ----------------------------------------------------------------------

def _load_nvml(nvml=None):
    """(module, None) or (None, reason)."""
    if nvml is not None:
        return nvml, None
    try:
        import pynvml  # noqa: PLC0415 - lazy on purpose
    except Exception as exc:  # ImportError, or a broken install
        return None, f"pynvml (nvidia-ml-py) not importable: {exc}"
    return pynvml, None


def _cuda_index(device: str, gpu_index: int) -> int | None:
    """GPU index for a CUDA device string, None for other devices."""
    dev = str(device).strip().lower()
    if not dev.startswith("cuda"):
        return None
    _, sep, idx = dev.partition(":")
    if sep and idx.isdigit():
        return int(idx)
    return int(gpu_index)


def _nvml_locator(cuda_index: int, env: str | None = None) -> tuple[str, Any]:
    """Which GPU NVML must read for CUDA device ``cuda_index``: ``("index", n)``
    or ``("uuid", "GPU-...")``. CUDA renumbers the devices listed in
    ``CUDA_VISIBLE_DEVICES`` from 0; NVML ignores that variable."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES") if env is None else env
    if env is None:
        return "index", cuda_index
    entries = [e.strip() for e in env.split(",") if e.strip()]
    if cuda_index >= len(entries):
        return "missing", f"CUDA_VISIBLE_DEVICES={env!r} has no device {cuda_index}"
    entry = entries[cuda_index]
    if entry.isdigit():
        return "index", int(entry)
    return "uuid", entry


def _uuid_handle(nvml, uuid: str):
    """The NVML handle of the GPU whose UUID is ``uuid`` or starts with it (HTCondor
    and CUDA accept short UUIDs; NVML's own lookup wants the full one)."""
    for i in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        full = nvml.nvmlDeviceGetUUID(handle)
        full = full.decode() if isinstance(full, bytes) else str(full)
        if full == uuid or full.startswith(uuid):
            return handle
    raise nvml.NVMLError(f"no GPU has a UUID starting with {uuid}")


# -- sampling -----------------------------------------------------------------

class _Periodic:
    """Call ``fn`` every ``interval`` seconds in a daemon thread until stopped."""

    def __init__(self, interval: float, fn: Callable[[], None], name: str):
        self.interval = float(interval)
        self.fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "_Periodic":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fn()
            except Exception:  # a failed sample must never kill the job
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval))


def _rusage() -> tuple[float, float]:
    """(CPU seconds of this process + exited children, peak RSS MiB)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    unit = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    peak_mib = max(me.ru_maxrss, kids.ru_maxrss) * unit / 2**20
    return cpu, peak_mib


def _check_nonneg(name: str, value, default):
    if value is None:
        return float(default) if default is not None else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"energy: '{name}' must be a number, got {value!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"energy: '{name}' must be a finite number >= 0, got {value!r}")
    return value


# -- the meter ------------------------------------------------------------------

class EnergyMeter:
    """Context manager measuring time, CPU time and energy of a block.

    ``cpu_watts_per_core`` (W per busy core-second, default 10.0) and
    ``ram_watts_per_gib`` (default 0.375) drive the estimate (see the module
    docstring for their justification); ``grid_gco2_per_kwh`` enables
    ``co2_g``. ``device`` is ``"cpu"`` or ``"cuda"``/``"cuda:N"``;
    ``nvml`` injects a pynvml-like module (tests). ``rapl_poll_s`` sets how
    often RAPL counters are read to catch repeated wrap-arounds and
    ``gpu_sample_s`` the NVML power sampling period.
    """

    def __init__(self, *, cpu_watts_per_core: float | None = None,
                 ram_watts_per_gib: float | None = None,
                 grid_gco2_per_kwh: float | None = None,
                 powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT,
                 device: str = "cpu", gpu_index: int = 0, nvml=None,
                 rapl_poll_s: float = 10.0, gpu_sample_s: float = 0.1):
        self.cpu_watts_per_core = _check_nonneg("cpu_watts_per_core", cpu_watts_per_core,
                                                DEFAULT_CPU_WATTS_PER_CORE)
        self.ram_watts_per_gib = _check_nonneg("ram_watts_per_gib", ram_watts_per_gib,
                                               DEFAULT_RAM_WATTS_PER_GIB)
        self.grid_gco2_per_kwh = _check_nonneg("grid_gco2_per_kwh", grid_gco2_per_kwh, None)
        if not float(rapl_poll_s) > 0 or not float(gpu_sample_s) > 0:
            raise ConfigError("energy: 'rapl_poll_s' and 'gpu_sample_s' must be > 0")
        self.powercap_root = str(powercap_root)
        self.device = str(device)
        self.gpu_index = int(gpu_index)
        self.rapl_poll_s = float(rapl_poll_s)
        self.gpu_sample_s = float(gpu_sample_s)
        self._nvml_arg = nvml
        self.events: int | None = None
        self.record: dict[str, Any] = {}
        self._active = False
        self._lock = threading.Lock()

    # -- public ------------------------------------------------------------
    def set_events(self, n: int) -> None:
        """Number of events processed in the measured block (may follow exit)."""
        try:
            n = int(n)
        except (TypeError, ValueError):
            raise ConfigError(f"energy: events must be an integer, got {n!r}") from None
        if n < 0:
            raise ConfigError(f"energy: events must be >= 0, got {n}")
        self.events = n
        if self.record:
            self._fill_ratios(self.record)

    def __enter__(self) -> "EnergyMeter":
        if self._active:
            raise RuntimeError("EnergyMeter is not re-entrant")
        self._active = True
        self.record = {}
        self._notes: list[str] = []
        self._threads: list[_Periodic] = []
        self._start_rapl()
        self._start_gpu()
        self._cpu0, _ = _rusage()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        wall = time.perf_counter() - self._t0
        cpu1, peak_mib = _rusage()
        for thread in self._threads:
            thread.stop()
        try:
            gpu_j, gpu_method = self._stop_gpu()
            rapl = self._stop_rapl()
            self.record = self._build(wall, max(0.0, cpu1 - self._cpu0), peak_mib,
                                      rapl, gpu_j, gpu_method)
        finally:
            self._active = False
        return False

    # -- RAPL --------------------------------------------------------------
    def _start_rapl(self) -> None:
        self._rapl_last = None
        self._rapl_acc: dict[str, float] = {}
        self._rapl_failed: str | None = None
        try:
            domains, problems = _read_rapl_checked(self.powercap_root)
        except RaplUnavailable as exc:
            self._rapl_failed = exc.reason
            self._rapl_unreadable = exc.unreadable
            return
        for path, why in problems.items():
            self._notes.append(f"RAPL domain {path} skipped: {why}")
        self._rapl_start = domains
        self._rapl_last = domains
        self._rapl_acc = {p: 0.0 for p in domains}
        self._rapl_mirrored = _mirrored_packages(domains)
        self._threads.append(_Periodic(self.rapl_poll_s, self._poll_rapl, "hepml-rapl").start())

    def _reread_rapl(self) -> dict[str, dict]:
        out = {}
        for path, info in self._rapl_last.items():
            try:
                value = _read_int(Path(path) / "energy_uj")
            except (OSError, ValueError) as exc:
                raise RaplUnavailable(_why(Path(path) / "energy_uj", exc), unreadable=True) from None
            out[path] = {**info, "energy_uj": value}
        return out

    def _poll_rapl(self) -> None:
        """Fold the energy since the last reading into the per-domain totals."""
        with self._lock:
            if self._rapl_last is None or self._rapl_failed:
                return
            current = self._reread_rapl()
            for path, joules in _domain_deltas_j(self._rapl_last, current).items():
                self._rapl_acc[path] += joules
            self._rapl_last = current

    def _stop_rapl(self) -> dict | None:
        if self._rapl_failed is not None:
            prefix = "RAPL unreadable" if self._rapl_unreadable else "RAPL not available"
            self._notes.append(f"{prefix}: {self._rapl_failed}")
            return None
        try:
            self._poll_rapl()
        except RaplUnavailable as exc:
            self._notes.append(f"RAPL unreadable at the end of the block: {exc.reason}")
            return None
        kinds = {p: _kind(p, d) for p, d in self._rapl_start.items()}
        packages = [p for p, k in kinds.items() if k == "package" and p not in self._rapl_mirrored]
        drams = [p for p, k in kinds.items() if k == "dram"]
        psys = [p for p, k in kinds.items() if k == "psys"]
        subs = [p for p, k in kinds.items() if k == "subdomain"]
        self._notes.append(
            "RAPL counts the whole CPU package, including other processes and idle "
            f"power (packages: {', '.join(self._rapl_start[p]['name'] for p in packages)})")
        for mirror, ref in sorted(self._rapl_mirrored.items()):
            self._notes.append(f"RAPL domain {mirror} mirrors the counter of {ref}: counted once")
        if subs:
            self._notes.append("RAPL subdomains "
                               f"{sorted(self._rapl_start[p]['name'] for p in subs)} are part of "
                               "their package and not added")
        if psys:
            self._notes.append("RAPL psys domain present (whole platform) and ignored to "
                               "avoid double counting")
        return {
            "cpu_j": sum(self._rapl_acc[p] for p in packages),
            "dram_j": sum(self._rapl_acc[p] for p in drams) if drams else None,
        }

    # -- GPU ---------------------------------------------------------------
    def _start_gpu(self) -> None:
        self._gpu = None
        index = _cuda_index(self.device, self.gpu_index)
        if index is None:
            return
        nvml, why = _load_nvml(self._nvml_arg)
        if nvml is None:
            self._notes.append(f"NVML not available: {why}; GPU energy not measured")
            return
        # pynvml raises NVMLError subclasses; anything else from a broken
        # driver or binding must not kill the job either, so catch Exception.
        errors = Exception
        try:
            nvml.nvmlInit()
        except errors as exc:
            self._notes.append(f"NVML not available: nvmlInit failed ({exc}; no NVIDIA "
                               "driver?); GPU energy not measured")
            return
        kind, key = _nvml_locator(index)
        state: dict[str, Any] = {"nvml": nvml, "errors": errors, "index": key}
        self._gpu = state
        if kind == "missing":
            self._notes.append(f"NVML: {key}; GPU energy not measured")
            state["mode"] = None
            return
        if (kind, key) != ("index", index):
            self._notes.append(f"CUDA device {index} is NVML GPU {key} (CUDA_VISIBLE_DEVICES="
                               f"{os.environ.get('CUDA_VISIBLE_DEVICES')})")
        if kind == "index" and os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID") != "PCI_BUS_ID":
            self._notes.append("CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's device numbers may not be "
                               "NVML's, so the GPU read may not be the one used")
        try:
            handle = _uuid_handle(nvml, key) if kind == "uuid" else nvml.nvmlDeviceGetHandleByIndex(key)
        except errors as exc:
            self._notes.append(f"NVML: no GPU with {kind} {key} ({exc}); GPU energy not measured")
            state["mode"] = None
            return
        state["handle"] = handle
        try:
            state["start_mj"] = float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            state["mode"] = "nvml:total-energy"
            return
        except errors as exc:
            state["total_energy_error"] = str(exc)
        try:
            first = float(nvml.nvmlDeviceGetPowerUsage(handle))
        except errors as exc:
            self._notes.append(
                f"NVML: GPU {index} supports neither total energy "
                f"({state['total_energy_error']}) nor power readings ({exc}); "
                "GPU energy not measured")
            state["mode"] = None
            return
        state["mode"] = "nvml:power-sampling"
        state["samples"] = [(time.perf_counter(), first / 1000.0)]
        state["failed_samples"] = 0
        self._threads.append(_Periodic(self.gpu_sample_s, self._sample_gpu, "hepml-nvml").start())

    def _sample_gpu(self) -> None:
        state = self._gpu
        try:
            watts = float(state["nvml"].nvmlDeviceGetPowerUsage(state["handle"])) / 1000.0
        except state["errors"]:
            state["failed_samples"] += 1
            return
        state["samples"].append((time.perf_counter(), watts))

    def _stop_gpu(self) -> tuple[float | None, str | None]:
        state = self._gpu
        if state is None:
            return None, None
        nvml, errors, index = state["nvml"], state["errors"], state["index"]
        joules = None
        mode = state.get("mode")
        try:
            if mode == "nvml:total-energy":
                try:
                    end = float(nvml.nvmlDeviceGetTotalEnergyConsumption(state["handle"]))
                    joules = max(0.0, end - state["start_mj"]) / 1000.0
                except errors as exc:
                    self._notes.append(f"NVML: total energy unreadable at the end ({exc}); "
                                       "GPU energy not measured")
                    mode = None
            elif mode == "nvml:power-sampling":
                self._sample_gpu()
                samples = state["samples"]
                joules = sum((t1 - t0) * (w0 + w1) / 2.0
                             for (t0, w0), (t1, w1) in zip(samples, samples[1:]))
                self._notes.append(
                    f"GPU {index}: total-energy counter unsupported "
                    f"({state['total_energy_error']}); power sampled every "
                    f"{self.gpu_sample_s:g} s ({len(samples)} samples, "
                    f"{state['failed_samples']} failed) and integrated")
            if mode is not None:
                self._notes.append(f"NVML counts the whole GPU {index}, including other "
                                   "processes using it")
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
        return joules, mode

    # -- record ------------------------------------------------------------
    def _build(self, wall: float, cpu_s: float, peak_mib: float, rapl: dict | None,
               gpu_j: float | None, gpu_method: str | None) -> dict[str, Any]:
        notes = self._notes
        cpu_est_j = cpu_s * self.cpu_watts_per_core
        ram_est_j = self.ram_watts_per_gib * (peak_mib / 1024.0) * wall
        ram_est_method = "estimate:rss-time"
        ram_est_text = (f"RAM {self.ram_watts_per_gib:g} W/GiB x peak RSS "
                        f"{peak_mib:.1f} MiB x wall {wall:.3f} s")
        if rapl is not None:
            cpu_j, cpu_method, method = rapl["cpu_j"], "rapl", "rapl"
            if rapl["dram_j"] is not None:
                ram_j, ram_method = rapl["dram_j"], "rapl:dram"
                notes.append("RAM energy from the RAPL dram domain (all DIMMs on the "
                             "socket, not only this process)")
            else:
                ram_j = ram_est_j
                ram_method = f"{ram_est_method} (no RAPL dram domain)"
                notes.append(f"no RAPL dram domain: RAM energy is an estimate, not a "
                             f"measurement: {ram_est_text}")
        else:
            cpu_j, cpu_method, method = cpu_est_j, "estimate:cpu-time", "estimate:cpu-time"
            ram_j, ram_method = ram_est_j, ram_est_method
            notes.append(
                f"estimate, not a measurement: CPU {self.cpu_watts_per_core:g} W per busy "
                f"core x process CPU time {cpu_s:.3f} s (user+sys, threads and exited "
                f"children) + {ram_est_text}; idle and non-CPU/RAM power not included")
        if gpu_method is not None:
            method += "+nvml"
        elif _cuda_index(self.device, self.gpu_index) is not None:
            notes.append("GPU energy not included in energy_j")
        energy = cpu_j + ram_j + (gpu_j or 0.0)
        record: dict[str, Any] = {
            "wall_s": wall,
            "cpu_s": cpu_s,
            "energy_j": energy,
            "cpu_energy_j": cpu_j,
            "gpu_energy_j": gpu_j,
            "ram_energy_j": ram_j,
            "cpu_energy_estimate_j": cpu_est_j,
            "method": method,
            "methods": {"cpu": cpu_method, "gpu": gpu_method, "ram": ram_method},
            "notes": list(notes),
            "events": self.events,
            "events_per_s": None,
            "j_per_event": None,
            "peak_rss_mib": peak_mib,
            "device": self.device,
            "co2_g": None if self.grid_gco2_per_kwh is None
            else energy / 3.6e6 * self.grid_gco2_per_kwh,
            "parameters": {"cpu_watts_per_core": self.cpu_watts_per_core,
                           "ram_watts_per_gib": self.ram_watts_per_gib,
                           "grid_gco2_per_kwh": self.grid_gco2_per_kwh},
        }
        self._fill_ratios(record)
        return record

    def _fill_ratios(self, record: dict[str, Any]) -> None:
        events = self.events
        record["events"] = events
        ok = bool(events)  # None or 0 -> no ratio
        wall = record.get("wall_s") or 0.0
        record["events_per_s"] = events / wall if ok and wall > 0 else None
        energy = record.get("energy_j")
        record["j_per_event"] = energy / events if ok and energy is not None and wall > 0 else None


def available_sources(powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT, *,
                      nvml=None) -> dict[str, dict]:
    """Which energy sources work here, and why the others do not.

    ``{"rapl": {...}, "nvml": {...}, "process_cpu_time": {...},
    "estimate": {...}}``, each with ``available`` (bool) and ``reason``.
    """
    out: dict[str, dict] = {}
    try:
        domains = read_rapl(powercap_root)
        out["rapl"] = {"available": True, "reason": "RAPL counters readable",
                       "domains": {p: {"name": d["name"], "kind": d["kind"]}
                                   for p, d in domains.items()}}
    except RaplUnavailable as exc:
        prefix = "RAPL unreadable" if exc.unreadable else "RAPL not available"
        out["rapl"] = {"available": False, "reason": f"{prefix}: {exc.reason}"}

    module, why = _load_nvml(nvml)
    if module is None:
        out["nvml"] = {"available": False, "reason": f"NVML not available: {why}"}
    else:
        errors = Exception
        try:
            module.nvmlInit()
        except errors as exc:
            out["nvml"] = {"available": False,
                           "reason": f"NVML not available: nvmlInit failed ({exc}; no NVIDIA driver?)"}
        else:
            try:
                count_fn = getattr(module, "nvmlDeviceGetCount", None)
                count = int(count_fn()) if count_fn else None
                out["nvml"] = {"available": count != 0, "devices": count,
                               "reason": "NVML initialised" if count != 0 else "NVML has no GPU"}
            except errors as exc:
                out["nvml"] = {"available": False, "reason": f"NVML device count failed: {exc}"}
            finally:
                try:
                    module.nvmlShutdown()
                except Exception:
                    pass
    try:
        import resource  # noqa: F401
        out["process_cpu_time"] = {"available": True, "reason": "getrusage (self + exited children)"}
    except ImportError:
        out["process_cpu_time"] = {"available": False, "reason": "no resource module on this OS"}
    out["estimate"] = {"available": out["process_cpu_time"]["available"],
                       "reason": f"process CPU time x {DEFAULT_CPU_WATTS_PER_CORE:g} W/core + "
                                 f"{DEFAULT_RAM_WATTS_PER_GIB:g} W/GiB x peak RSS x wall "
                                 "(defaults, configurable)"}
    return out


# -- use from the pipeline steps --------------------------------------------------
#: Keys of the config's ``energy`` section understood by :func:`step_meter`.
SETTINGS_KEYS = ("cpu_watts_per_core", "ram_watts_per_gib", "grid_gco2_per_kwh", "powercap_root")


def gpu_visible(nvml=None) -> bool:
    """Whether NVML reports at least one NVIDIA GPU (False when pynvml is absent)."""
    mod, _ = _load_nvml(nvml)
    if mod is None:
        return False
    try:
        mod.nvmlInit()
        try:
            return int(mod.nvmlDeviceGetCount()) > 0
        finally:
            mod.nvmlShutdown()
    except Exception:
        return False


def step_meter(settings: dict | None = None, requested_device: str = "cpu",
               gpu_capable: bool = False) -> EnergyMeter:
    """An :class:`EnergyMeter` for a pipeline step, configured from the config's
    ``energy`` section. The GPU is metered when the family can use one, the
    model did not ask for the CPU, and NVML sees a GPU."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:
        raise ConfigError(f"energy: unknown key(s) {unknown}; known: {list(SETTINGS_KEYS)}")
    device = "cpu"
    if gpu_capable and str(requested_device).lower() != "cpu" and gpu_visible():
        device = requested_device if str(requested_device).startswith("cuda") else "cuda"
    kw = {k: settings[k] for k in ("cpu_watts_per_core", "ram_watts_per_gib", "grid_gco2_per_kwh")
          if settings.get(k) is not None}
    if settings.get("powercap_root"):
        kw["powercap_root"] = settings["powercap_root"]
    return EnergyMeter(device=device, **kw)
