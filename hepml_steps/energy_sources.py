"""The energy sources :class:`hepml_steps.energy.EnergyMeter` adds up.

Every source meters one block of code the same way::

    notes = source.start()      # before the block; never raises
    ...                         # the block
    reading = source.stop()     # a Reading: joules per part, methods, notes

A source that cannot measure does not raise: ``start`` sets ``why_not``,
``stop`` returns a :class:`Reading` without joules, and the notes of one or
the other say why.

- :class:`CpuTimeEstimate` (``estimate:cpu-time``): process CPU seconds and
  peak RSS times fixed wattages; it also keeps the block's clock.
- :class:`RaplSource` (``rapl``): package and DRAM counters through powercap
  (:mod:`hepml_steps.energy_powercap` reads them).
- :class:`NvmlSource` (``nvml``): the GPU's energy counter, or its power
  sampled and integrated. :class:`NvmlSession` is the one place NVML is
  initialised, a GPU handle looked up and NVML shut down.

Why each source measures what it does, and its limits, is in the docstring of
:mod:`hepml_steps.energy`. Only the standard library is imported here;
``pynvml`` is imported when an NVML session opens.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .energy_powercap import (
    DEFAULT_POWERCAP_ROOT,
    RaplUnavailable,
    domain_deltas_j,
    domains_by_kind,
    mirrored_packages,
    read_rapl,
    read_rapl_checked,
    reread,
)

DEFAULT_CPU_WATTS_PER_CORE = 10.0
DEFAULT_RAM_WATTS_PER_GIB = 0.375


@dataclass
class Reading:
    """What one source measured over a block.

    Attributes
    ----------
    cpu_j, ram_j, gpu_j : float or None
        Energy in J of the CPU packages, the RAM and the GPU; None for a part
        the source did not measure.
    methods : dict of str to str
        How each measured part was obtained, keyed ``"cpu"``, ``"ram"``,
        ``"gpu"`` (``"rapl"``, ``"rapl:dram"``, ``"nvml:total-energy"``, ...).
    notes : list of str
        What a reader of the numbers must know: whose energy is included, why
        a part is missing.
    """

    cpu_j: float | None = None
    ram_j: float | None = None
    gpu_j: float | None = None
    methods: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ProcessReading(Reading):
    """A :class:`CpuTimeEstimate` reading: the estimate plus the block's clock.

    Attributes
    ----------
    wall_s : float
        Wall time of the block, s.
    cpu_s : float
        CPU time of this process and its exited, waited-for children, s.
    peak_rss_mib : float
        Peak resident set size, MiB (a lifetime peak: an upper bound for the block).
    ram_basis : str
        How the RAM estimate was made, for a note.
    """

    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    ram_basis: str = ""


class EnergySource(ABC):
    """One way of measuring the energy of a block of code.

    Attributes
    ----------
    name : str
        Key of the source in :func:`hepml_steps.energy.available_sources`.
    method : str
        The label the record's ``method`` is built from (``"rapl"``,
        ``"nvml"``, ``"estimate:cpu-time"``).
    why_not : str or None
        After :meth:`start`: None when the source is measuring, otherwise one
        line saying why it is not.
    """

    name: str = ""
    method: str = ""
    why_not: str | None = None

    @abstractmethod
    def availability(self) -> dict[str, Any]:
        """Whether the source works on this machine, without measuring anything.

        Returns
        -------
        dict
            ``{"available": bool, "reason": str}``, plus what the source found.
        """

    @abstractmethod
    def start(self) -> list[str]:
        """Begin measuring. Never raises: an unusable source sets ``why_not``.

        Returns
        -------
        list of str
            Notes known at the start (a skipped domain, which GPU is read).
        """

    @abstractmethod
    def stop(self) -> Reading:
        """Stop measuring. Never raises.

        Returns
        -------
        Reading
            Energy (J) per part since :meth:`start`, how it was obtained, and notes.
        """


class _Periodic:
    """Call ``fn`` every ``interval`` seconds in a daemon thread until stopped."""

    def __init__(self, interval: float, fn: Callable[[], None], name: str):
        self.interval = float(interval)
        self.fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> _Periodic:
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


# -- the estimate from process CPU time ---------------------------------------------


def _rusage() -> tuple[float, float]:
    """(CPU seconds of this process + exited children, peak RSS MiB)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    unit = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    peak_mib = max(me.ru_maxrss, kids.ru_maxrss) * unit / 2**20
    return cpu, peak_mib


def process_cpu_time_availability() -> dict[str, Any]:
    """Whether ``getrusage`` (this process's and its children's CPU time) exists here.

    Returns
    -------
    dict
        ``{"available": bool, "reason": str}``.
    """
    try:
        import resource  # noqa: F401
    except ImportError:
        return {"available": False, "reason": "no resource module on this OS"}
    return {"available": True, "reason": "getrusage (self + exited children)"}


class CpuTimeEstimate(EnergySource):
    """Energy estimated from process CPU time and peak RSS (``estimate:cpu-time``).

    CPU energy (J) = CPU seconds (user + system, this process's threads and
    its exited, waited-for children) x ``cpu_watts_per_core``; RAM energy (J)
    = ``ram_watts_per_gib`` x peak RSS (GiB) x wall time (s). Idle power and
    everything outside CPU and RAM are not included. The source also keeps
    the block's clock: its :class:`ProcessReading` has the wall and CPU time.

    Parameters
    ----------
    cpu_watts_per_core : float, default 10.0
        Power of one busy core, W.
    ram_watts_per_gib : float, default 0.375
        Power of one GiB of resident memory, W.
    """

    name = "estimate"
    method = "estimate:cpu-time"

    def __init__(
        self,
        cpu_watts_per_core: float = DEFAULT_CPU_WATTS_PER_CORE,
        ram_watts_per_gib: float = DEFAULT_RAM_WATTS_PER_GIB,
    ):
        self.cpu_watts_per_core = float(cpu_watts_per_core)
        self.ram_watts_per_gib = float(ram_watts_per_gib)

    def availability(self) -> dict[str, Any]:
        defaults = (self.cpu_watts_per_core, self.ram_watts_per_gib) == (
            DEFAULT_CPU_WATTS_PER_CORE,
            DEFAULT_RAM_WATTS_PER_GIB,
        )
        return {
            "available": process_cpu_time_availability()["available"],
            "reason": f"process CPU time x {self.cpu_watts_per_core:g} W/core + "
            f"{self.ram_watts_per_gib:g} W/GiB x peak RSS x wall "
            + ("(defaults, configurable)" if defaults else "(configured)"),
        }

    def start(self) -> list[str]:
        self._cpu0, _ = _rusage()
        self._t0 = time.perf_counter()
        return []

    def stop(self) -> ProcessReading:
        wall = time.perf_counter() - self._t0
        cpu1, peak_mib = _rusage()
        return self.reading(wall, max(0.0, cpu1 - self._cpu0), peak_mib)

    def reading(self, wall_s: float, cpu_s: float, peak_rss_mib: float) -> ProcessReading:
        """The estimate for a block.

        Parameters
        ----------
        wall_s : float
            Wall time, s.
        cpu_s : float
            Process CPU time, s.
        peak_rss_mib : float
            Peak resident set size, MiB.

        Returns
        -------
        ProcessReading
            ``cpu_j`` and ``ram_j`` in J, with a note saying it is an estimate.
        """
        ram_basis = f"RAM {self.ram_watts_per_gib:g} W/GiB x peak RSS {peak_rss_mib:.1f} MiB x wall {wall_s:.3f} s"
        note = (
            f"estimate, not a measurement: CPU {self.cpu_watts_per_core:g} W per busy "
            f"core x process CPU time {cpu_s:.3f} s (user+sys, threads and exited "
            f"children) + {ram_basis}; idle and non-CPU/RAM power not included"
        )
        return ProcessReading(
            cpu_j=cpu_s * self.cpu_watts_per_core,
            ram_j=self.ram_watts_per_gib * (peak_rss_mib / 1024.0) * wall_s,
            methods={"cpu": self.method, "ram": "estimate:rss-time"},
            notes=[note],
            wall_s=wall_s,
            cpu_s=cpu_s,
            peak_rss_mib=peak_rss_mib,
            ram_basis=ram_basis,
        )


# -- RAPL ---------------------------------------------------------------------------


def _rapl_why_not(exc: RaplUnavailable) -> str:
    prefix = "RAPL unreadable" if exc.unreadable else "RAPL not available"
    return f"{prefix}: {exc.reason}"


class RaplSource(EnergySource):
    """CPU package and DRAM energy from RAPL counters (``rapl``).

    Every domain under ``powercap_root`` is read at :meth:`start`, every
    ``poll_s`` seconds from a background thread (:meth:`poll`) and at
    :meth:`stop`, each interval wrap-corrected per domain. Package domains are
    summed (a mirrored package counted once) into ``cpu_j``; ``dram`` domains
    are ``ram_j``; core/uncore subdomains and ``psys`` are left out. The
    counters cover the whole package, including other processes: the notes
    say so.

    Parameters
    ----------
    powercap_root : str or path-like, default ``/sys/class/powercap``
        The powercap class directory.
    poll_s : float, default 10.0
        Seconds between reads; a counter wraps at ``max_energy_range_uj``
        (about 262 kJ, ~20 min at 200 W), so it must be read more often.
    """

    name = "rapl"
    method = "rapl"

    def __init__(self, powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT, poll_s: float = 10.0):
        self.powercap_root = str(powercap_root)
        self.poll_s = float(poll_s)
        self._lock = threading.Lock()
        self._last: dict[str, dict] | None = None
        self._poller: _Periodic | None = None

    def availability(self) -> dict[str, Any]:
        try:
            domains = read_rapl(self.powercap_root)
        except RaplUnavailable as exc:
            return {"available": False, "reason": _rapl_why_not(exc)}
        return {
            "available": True,
            "reason": "RAPL counters readable",
            "domains": {p: {"name": d["name"], "kind": d["kind"]} for p, d in domains.items()},
        }

    def start(self) -> list[str]:
        self.why_not, self._last = None, None
        try:
            domains, skipped = read_rapl_checked(self.powercap_root)
        except RaplUnavailable as exc:
            self.why_not = _rapl_why_not(exc)
            return []
        self._start = self._last = domains
        self._acc = dict.fromkeys(domains, 0.0)
        self._mirrored = mirrored_packages(domains)
        self._poller = _Periodic(self.poll_s, self.poll, "hepml-rapl").start()
        return [f"RAPL domain {path} skipped: {why}" for path, why in skipped.items()]

    def poll(self) -> None:
        """Add the energy since the last read to the per-domain totals (J).

        Raises
        ------
        RaplUnavailable
            When a counter can no longer be read; the totals are then unchanged.
        """
        with self._lock:
            if self._last is None:
                return
            current = reread(self._last)
            for path, joules in domain_deltas_j(self._last, current).items():
                self._acc[path] += joules
            self._last = current

    def stop(self) -> Reading:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        if self.why_not is not None:
            return Reading(notes=[self.why_not])
        try:
            self.poll()
        except RaplUnavailable as exc:
            return Reading(notes=[f"RAPL unreadable at the end of the block: {exc.reason}"])
        kinds = domains_by_kind(self._start)
        packages = [p for p in kinds["package"] if p not in self._mirrored]
        drams = kinds["dram"]
        return Reading(
            cpu_j=sum(self._acc[p] for p in packages),
            ram_j=sum(self._acc[p] for p in drams) if drams else None,
            methods={"cpu": self.method, **({"ram": "rapl:dram"} if drams else {})},
            notes=self._notes(kinds, packages),
        )

    def _notes(self, kinds: dict[str, list[str]], packages: list[str]) -> list[str]:
        """What the summed domains include and what was left out."""
        names = ", ".join(self._start[p]["name"] for p in packages)
        notes = [f"RAPL counts the whole CPU package, including other processes and idle power (packages: {names})"]
        notes += [
            f"RAPL domain {mirror} mirrors the counter of {ref}: counted once"
            for mirror, ref in sorted(self._mirrored.items())
        ]
        if kinds["subdomain"]:
            notes.append(
                "RAPL subdomains "
                f"{sorted(self._start[p]['name'] for p in kinds['subdomain'])} are part of "
                "their package and not added"
            )
        if kinds["psys"]:
            notes.append("RAPL psys domain present (whole platform) and ignored to avoid double counting")
        if kinds["dram"]:
            notes.append("RAM energy from the RAPL dram domain (all DIMMs on the socket, not only this process)")
        return notes


# -- NVML ---------------------------------------------------------------------------


class NvmlUnavailable(RuntimeError):
    """NVML cannot give the energy of the GPU; the message says why, in one line."""


def _load_nvml(nvml=None):
    """The pynvml module (or the injected one)."""
    if nvml is not None:
        return nvml
    try:
        import pynvml  # noqa: PLC0415 - lazy on purpose
    except Exception as exc:  # ImportError, or a broken install
        raise NvmlUnavailable(f"NVML not available: pynvml (nvidia-ml-py) not importable: {exc}") from None
    return pynvml


def _nvml_locator(cuda_index: int, env: str | None = None) -> tuple[str, Any]:
    """Which GPU NVML must read for CUDA device ``cuda_index``: ``("index", n)``
    or ``("uuid", "GPU-...")``. CUDA renumbers the devices listed in
    ``CUDA_VISIBLE_DEVICES`` from 0; NVML ignores that variable."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES") if env is None else env
    if env is None:
        return "index", cuda_index
    entries = [e.strip() for e in env.split(",") if e.strip()]
    if cuda_index >= len(entries):
        raise NvmlUnavailable(f"NVML: CUDA_VISIBLE_DEVICES={env!r} has no device {cuda_index}")
    entry = entries[cuda_index]
    if entry.isdigit():
        return "index", int(entry)
    return "uuid", entry


def _locate(cuda_index: int) -> tuple[str, Any, list[str]]:
    """(``"index"`` or ``"uuid"``, NVML index or UUID, notes) for CUDA device ``cuda_index``."""
    kind, key = _nvml_locator(cuda_index)
    notes = []
    if (kind, key) != ("index", cuda_index):
        notes.append(
            f"CUDA device {cuda_index} is NVML GPU {key} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')})"
        )
    if kind == "index" and os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID") != "PCI_BUS_ID":
        notes.append(
            "CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's device numbers may not be "
            "NVML's, so the GPU read may not be the one used"
        )
    return kind, key, notes


class NvmlSession:
    """NVML, initialised: the one place ``nvmlInit``, handle lookup and ``nvmlShutdown`` happen.

    Use as a context manager, or :meth:`open` and :meth:`close`. pynvml raises
    ``NVMLError`` subclasses; anything else from a broken driver or binding
    must not kill the job either, so every NVML call is guarded by
    ``except Exception``.

    Parameters
    ----------
    nvml : module, optional
        A pynvml-like module (tests); by default ``pynvml``, imported on :meth:`open`.

    Attributes
    ----------
    module : module or None
        The initialised NVML module while the session is open.
    """

    def __init__(self, nvml=None):
        self._nvml = nvml
        self.module = None

    def open(self) -> NvmlSession:
        """Import and initialise NVML.

        Raises
        ------
        NvmlUnavailable
            When pynvml cannot be imported or ``nvmlInit`` fails.
        """
        module = _load_nvml(self._nvml)
        try:
            module.nvmlInit()
        except Exception as exc:
            raise NvmlUnavailable(f"NVML not available: nvmlInit failed ({exc}; no NVIDIA driver?)") from None
        self.module = module
        return self

    def close(self) -> None:
        """Shut NVML down (once; errors are ignored)."""
        module, self.module = self.module, None
        if module is None:
            return
        try:
            module.nvmlShutdown()
        except Exception:
            pass

    def __enter__(self) -> NvmlSession:
        return self.open()

    def __exit__(self, *exc_info) -> bool:
        self.close()
        return False

    def device_count(self) -> int | None:
        """Number of GPUs NVML sees (None when the binding cannot count them)."""
        count_fn = getattr(self.module, "nvmlDeviceGetCount", None)
        return int(count_fn()) if count_fn else None

    def handle(self, kind: str, key: Any):
        """The NVML handle of the GPU with index ``key`` (``kind`` ``"index"``) or UUID
        ``key`` (``"uuid"``; a prefix is enough, as HTCondor and CUDA accept short UUIDs).

        Raises
        ------
        NvmlUnavailable
            When no GPU has that index or UUID.
        """
        try:
            if kind == "uuid":
                return self._uuid_handle(key)
            return self.module.nvmlDeviceGetHandleByIndex(key)
        except Exception as exc:
            raise NvmlUnavailable(f"NVML: no GPU with {kind} {key} ({exc})") from None

    def _uuid_handle(self, uuid: str):
        nvml = self.module
        for i in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            full = nvml.nvmlDeviceGetUUID(handle)
            full = full.decode() if isinstance(full, bytes) else str(full)
            if full == uuid or full.startswith(uuid):
                return handle
        raise nvml.NVMLError(f"no GPU has a UUID starting with {uuid}")


class _EnergyCounter:
    """NVML's total-energy counter (mJ, Volta and newer), read at start and stop."""

    method = "nvml:total-energy"

    def __init__(self, nvml, handle):
        self._read = lambda: float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        self._start_mj = self._read()

    def stop(self) -> tuple[float, list[str]]:
        try:
            end = self._read()
        except Exception as exc:
            raise NvmlUnavailable(f"NVML: total energy unreadable at the end ({exc})") from None
        return max(0.0, end - self._start_mj) / 1000.0, []


class _PowerSampler:
    """NVML power (mW) sampled every ``interval`` s in a thread, integrated by the trapezoidal rule."""

    method = "nvml:power-sampling"

    def __init__(self, nvml, handle, gpu: Any, interval: float, counter_error: str):
        self._read = lambda: float(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0
        first = self._read()
        self.samples = [(time.perf_counter(), first)]
        self.failed = 0
        self._gpu, self._interval, self._counter_error = gpu, interval, counter_error
        self._poller = _Periodic(interval, self.sample, "hepml-nvml").start()

    def sample(self) -> None:
        try:
            watts = self._read()
        except Exception:
            self.failed += 1
            return
        self.samples.append((time.perf_counter(), watts))

    def stop(self) -> tuple[float, list[str]]:
        self._poller.stop()
        self.sample()
        s = self.samples
        joules = sum((t1 - t0) * (w0 + w1) / 2.0 for (t0, w0), (t1, w1) in zip(s, s[1:]))
        return joules, [
            f"GPU {self._gpu}: total-energy counter unsupported "
            f"({self._counter_error}); power sampled every "
            f"{self._interval:g} s ({len(s)} samples, {self.failed} failed) and integrated"
        ]


class NvmlSource(EnergySource):
    """Energy of one NVIDIA GPU from NVML (``nvml``).

    ``nvmlDeviceGetTotalEnergyConsumption`` (mJ) at start and stop where the
    GPU has it (``nvml:total-energy``), otherwise ``nvmlDeviceGetPowerUsage``
    (mW) sampled every ``sample_s`` seconds and integrated
    (``nvml:power-sampling``). The CUDA device is mapped to the GPU NVML
    numbers through ``CUDA_VISIBLE_DEVICES`` (indices or full or short
    ``GPU-...`` UUIDs). NVML counts the whole GPU, other processes included.

    Parameters
    ----------
    cuda_index : int, default 0
        The CUDA device number the block runs on.
    nvml : module, optional
        A pynvml-like module (tests).
    sample_s : float, default 0.1
        Power sampling period, s (only without an energy counter).
    """

    name = "nvml"
    method = "nvml"

    def __init__(self, cuda_index: int = 0, *, nvml=None, sample_s: float = 0.1):
        self.cuda_index = int(cuda_index)
        self.sample_s = float(sample_s)
        self._nvml = nvml
        self._session = NvmlSession(nvml)
        self._gauge: _EnergyCounter | _PowerSampler | None = None

    def availability(self) -> dict[str, Any]:
        try:
            with NvmlSession(self._nvml) as session:
                count = session.device_count()
        except NvmlUnavailable as exc:
            return {"available": False, "reason": str(exc)}
        except Exception as exc:
            return {"available": False, "reason": f"NVML device count failed: {exc}"}
        return {
            "available": count != 0,
            "devices": count,
            "reason": "NVML initialised" if count != 0 else "NVML has no GPU",
        }

    def start(self) -> list[str]:
        self.why_not, self._gauge = None, None
        self._session = NvmlSession(self._nvml)
        notes: list[str] = []
        try:
            self._session.open()
            kind, self._gpu, mapping = _locate(self.cuda_index)
            notes += mapping
            handle = self._session.handle(kind, self._gpu)
            self._gauge = self._open_gauge(handle)
        except NvmlUnavailable as exc:
            self.why_not = str(exc)
            notes.append(f"{exc}; GPU energy not measured")
            self._session.close()
        return notes

    def _open_gauge(self, handle) -> _EnergyCounter | _PowerSampler:
        """The energy counter if the GPU has one, else a power sampler."""
        nvml = self._session.module
        try:
            return _EnergyCounter(nvml, handle)
        except Exception as exc:
            counter_error = str(exc)
        try:
            return _PowerSampler(nvml, handle, self._gpu, self.sample_s, counter_error)
        except Exception as exc:
            raise NvmlUnavailable(
                f"NVML: GPU {self.cuda_index} supports neither total energy "
                f"({counter_error}) nor power readings ({exc})"
            ) from None

    def stop(self) -> Reading:
        gauge, self._gauge = self._gauge, None
        if gauge is None:
            return Reading()
        try:
            joules, notes = gauge.stop()
        except NvmlUnavailable as exc:
            return Reading(notes=[f"{exc}; GPU energy not measured"])
        finally:
            self._session.close()
        notes.append(f"NVML counts the whole GPU {self._gpu}, including other processes using it")
        return Reading(gpu_j=joules, methods={"gpu": gauge.method}, notes=notes)
