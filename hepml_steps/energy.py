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

How the code is laid out: :class:`EnergyMeter` (here) starts and stops one
:class:`~.energy_sources.EnergySource` per kind of energy and adds their
:class:`~.energy_sources.Reading` up: the CPU side is
:class:`~.energy_sources.RaplSource` where it measured, else
:class:`~.energy_sources.CpuTimeEstimate`; :class:`~.energy_sources.NvmlSource`
joins for a CUDA device. The sources live in :mod:`hepml_steps.energy_sources`,
the powercap reading in :mod:`hepml_steps.energy_powercap`; the names callers
use (``read_rapl``, ``energy_delta``, ``RaplUnavailable``) are re-exported here.

These modules import only the standard library at import time; ``pynvml`` is
imported lazily, and only for CUDA devices.
"""

from __future__ import annotations

import os
from typing import Any

from .energy_powercap import DEFAULT_POWERCAP_ROOT, RaplUnavailable, energy_delta, read_rapl
from .energy_sources import (
    DEFAULT_CPU_WATTS_PER_CORE,
    DEFAULT_RAM_WATTS_PER_GIB,
    CpuTimeEstimate,
    EnergySource,
    NvmlSession,
    NvmlSource,
    ProcessReading,
    RaplSource,
    Reading,
    process_cpu_time_availability,
)
from .errors import ConfigError

__all__ = [
    "DEFAULT_CPU_WATTS_PER_CORE",
    "DEFAULT_POWERCAP_ROOT",
    "DEFAULT_RAM_WATTS_PER_GIB",
    "SETTINGS_KEYS",
    "CpuTimeEstimate",
    "EnergyMeter",
    "EnergySource",
    "NvmlSource",
    "RaplSource",
    "RaplUnavailable",
    "Reading",
    "available_sources",
    "energy_delta",
    "gpu_visible",
    "read_rapl",
    "step_meter",
]


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


def _cuda_index(device: str, gpu_index: int) -> int | None:
    """GPU index for a CUDA device string, None for other devices."""
    dev = str(device).strip().lower()
    if not dev.startswith("cuda"):
        return None
    _, sep, idx = dev.partition(":")
    if sep and idx.isdigit():
        return int(idx)
    return int(gpu_index)


def _cpu_and_ram(est: ProcessReading, rapl: Reading) -> Reading:
    """The CPU and RAM parts: RAPL where it measured them, else the estimate.

    The notes returned are those not already in ``rapl.notes``.
    """
    if rapl.cpu_j is None:
        return est
    if rapl.ram_j is not None:
        return Reading(cpu_j=rapl.cpu_j, ram_j=rapl.ram_j, methods=rapl.methods)
    return Reading(
        cpu_j=rapl.cpu_j,
        ram_j=est.ram_j,
        methods={"cpu": rapl.methods["cpu"], "ram": f"{est.methods['ram']} (no RAPL dram domain)"},
        notes=[f"no RAPL dram domain: RAM energy is an estimate, not a measurement: {est.ram_basis}"],
    )


class EnergyMeter:
    """Context manager measuring time, CPU time and energy of a block.

    After the block, :attr:`record` holds wall and CPU time (s), energy (J) in
    total and per part, the CPU-time estimate beside any measurement, how each
    number was obtained (``method``, ``methods``), ``notes``, and J/event and
    events/s once :meth:`set_events` is called (before or after the block).

    Parameters
    ----------
    cpu_watts_per_core : float, default 10.0
        Power of one busy core for the estimate, W (see the module docstring).
    ram_watts_per_gib : float, default 0.375
        Power of one GiB of peak RSS for the estimate, W.
    grid_gco2_per_kwh : float, optional
        Grid carbon intensity, gCO2/kWh; enables ``co2_g``.
    powercap_root : str or path-like, default ``/sys/class/powercap``
        Where the RAPL counters are.
    device : str, default ``"cpu"``
        ``"cpu"``, or ``"cuda"``/``"cuda:N"`` to add the GPU's energy from NVML.
    gpu_index : int, default 0
        CUDA device number when ``device`` is ``"cuda"`` without one.
    nvml : module, optional
        A pynvml-like module (tests).
    rapl_poll_s : float, default 10.0
        Seconds between RAPL reads, to catch repeated counter wrap-arounds.
    gpu_sample_s : float, default 0.1
        NVML power sampling period, s (GPUs without an energy counter).

    Attributes
    ----------
    record : dict
        The step record (empty until the block ends).
    rapl, estimate, gpu : EnergySource or None
        The sources of the current or last block (``gpu`` None for the CPU).

    Raises
    ------
    ConfigError
        A wattage or intensity that is not a finite number >= 0, or a period <= 0.
    RuntimeError
        On entering a meter that is already measuring.
    """

    def __init__(
        self,
        *,
        cpu_watts_per_core: float | None = None,
        ram_watts_per_gib: float | None = None,
        grid_gco2_per_kwh: float | None = None,
        powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT,
        device: str = "cpu",
        gpu_index: int = 0,
        nvml=None,
        rapl_poll_s: float = 10.0,
        gpu_sample_s: float = 0.1,
    ):
        self.cpu_watts_per_core = _check_nonneg("cpu_watts_per_core", cpu_watts_per_core, DEFAULT_CPU_WATTS_PER_CORE)
        self.ram_watts_per_gib = _check_nonneg("ram_watts_per_gib", ram_watts_per_gib, DEFAULT_RAM_WATTS_PER_GIB)
        self.grid_gco2_per_kwh = _check_nonneg("grid_gco2_per_kwh", grid_gco2_per_kwh, None)
        if not float(rapl_poll_s) > 0 or not float(gpu_sample_s) > 0:
            raise ConfigError("energy: 'rapl_poll_s' and 'gpu_sample_s' must be > 0")
        self.powercap_root = str(powercap_root)
        self.device = str(device)
        self.gpu_index = int(gpu_index)
        self.rapl_poll_s = float(rapl_poll_s)
        self.gpu_sample_s = float(gpu_sample_s)
        self._nvml = nvml
        self.events: int | None = None
        self.record: dict[str, Any] = {}
        self.rapl: RaplSource | None = None
        self.estimate: CpuTimeEstimate | None = None
        self.gpu: NvmlSource | None = None
        self._active = False

    def set_events(self, n: int) -> None:
        """Number of events processed in the measured block (may follow exit).

        Raises
        ------
        ConfigError
            When ``n`` is not an integer >= 0.
        """
        try:
            n = int(n)
        except (TypeError, ValueError):
            raise ConfigError(f"energy: events must be an integer, got {n!r}") from None
        if n < 0:
            raise ConfigError(f"energy: events must be >= 0, got {n}")
        self.events = n
        if self.record:
            self._fill_ratios(self.record)

    def __enter__(self) -> EnergyMeter:
        if self._active:
            raise RuntimeError("EnergyMeter is not re-entrant")
        self._active = True
        self.record = {}
        self.rapl = RaplSource(self.powercap_root, self.rapl_poll_s)
        self.estimate = CpuTimeEstimate(self.cpu_watts_per_core, self.ram_watts_per_gib)
        index = _cuda_index(self.device, self.gpu_index)
        self.gpu = None if index is None else NvmlSource(index, nvml=self._nvml, sample_s=self.gpu_sample_s)
        self._notes = self.rapl.start() + (self.gpu.start() if self.gpu else [])
        self.estimate.start()  # last, so the clock does not include the others' start
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            process = self.estimate.stop()  # first, for the same reason
            gpu = self.gpu.stop() if self.gpu else None
            self.record = self._build(process, self.rapl.stop(), gpu)
        finally:
            self._active = False
        return False

    def _build(self, est: ProcessReading, rapl: Reading, gpu: Reading | None) -> dict[str, Any]:
        cpu = _cpu_and_ram(est, rapl)
        notes = self._notes + (gpu.notes if gpu else []) + rapl.notes + cpu.notes
        gpu_j = gpu.gpu_j if gpu else None
        method = cpu.methods["cpu"] + (f"+{self.gpu.method}" if gpu_j is not None else "")
        if gpu is not None and gpu_j is None:
            notes.append("GPU energy not included in energy_j")
        energy = cpu.cpu_j + cpu.ram_j + (gpu_j or 0.0)
        record: dict[str, Any] = {
            "wall_s": est.wall_s,
            "cpu_s": est.cpu_s,
            "energy_j": energy,
            "cpu_energy_j": cpu.cpu_j,
            "gpu_energy_j": gpu_j,
            "ram_energy_j": cpu.ram_j,
            "cpu_energy_estimate_j": est.cpu_j,
            "method": method,
            "methods": {
                "cpu": cpu.methods["cpu"],
                "gpu": gpu.methods.get("gpu") if gpu else None,
                "ram": cpu.methods["ram"],
            },
            "notes": notes,
            "events": self.events,
            "events_per_s": None,
            "j_per_event": None,
            "peak_rss_mib": est.peak_rss_mib,
            "device": self.device,
            "co2_g": None if self.grid_gco2_per_kwh is None else energy / 3.6e6 * self.grid_gco2_per_kwh,
            "parameters": {
                "cpu_watts_per_core": self.cpu_watts_per_core,
                "ram_watts_per_gib": self.ram_watts_per_gib,
                "grid_gco2_per_kwh": self.grid_gco2_per_kwh,
            },
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


def available_sources(powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT, *, nvml=None) -> dict[str, dict]:
    """Which energy sources work here, and why the others do not.

    Parameters
    ----------
    powercap_root : str or path-like, default ``/sys/class/powercap``
        Where to look for RAPL counters.
    nvml : module, optional
        A pynvml-like module (tests).

    Returns
    -------
    dict
        ``{"rapl": {...}, "nvml": {...}, "process_cpu_time": {...},
        "estimate": {...}}``, each with ``available`` (bool) and ``reason``
        (str); RAPL adds its ``domains``, NVML its number of ``devices``.
    """
    return {
        "rapl": RaplSource(powercap_root).availability(),
        "nvml": NvmlSource(nvml=nvml).availability(),
        "process_cpu_time": process_cpu_time_availability(),
        "estimate": CpuTimeEstimate().availability(),
    }


# -- use from the pipeline steps --------------------------------------------------
#: Keys of the config's ``energy`` section understood by :func:`step_meter`.
SETTINGS_KEYS = ("cpu_watts_per_core", "ram_watts_per_gib", "grid_gco2_per_kwh", "powercap_root")


def gpu_visible(nvml=None) -> bool:
    """Whether NVML reports at least one NVIDIA GPU (False when pynvml or the driver is absent).

    Parameters
    ----------
    nvml : module, optional
        A pynvml-like module (tests).
    """
    try:
        with NvmlSession(nvml) as session:
            return bool(session.device_count())
    except Exception:
        return False


def step_meter(settings: dict | None = None, requested_device: str = "cpu", gpu_capable: bool = False) -> EnergyMeter:
    """An :class:`EnergyMeter` for a pipeline step, configured from the config's ``energy`` section.

    The GPU is metered when the family can use one, the model did not ask for
    the CPU, and NVML sees a GPU.

    Parameters
    ----------
    settings : dict, optional
        The ``energy`` section; keys in :data:`SETTINGS_KEYS` (wattages in W,
        grid intensity in gCO2/kWh).
    requested_device : str, default ``"cpu"``
        The model's device setting (``"cpu"``, ``"auto"``, ``"cuda"``, ``"cuda:N"``).
    gpu_capable : bool, default False
        Whether the model family can run on a GPU.

    Raises
    ------
    ConfigError
        An unknown key in ``settings``, or a value :class:`EnergyMeter` refuses.
    """
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:
        raise ConfigError(f"energy: unknown key(s) {unknown}; known: {list(SETTINGS_KEYS)}")
    device = "cpu"
    if gpu_capable and str(requested_device).lower() != "cpu" and gpu_visible():
        device = requested_device if str(requested_device).startswith("cuda") else "cuda"
    kw = {
        k: settings[k]
        for k in ("cpu_watts_per_core", "ram_watts_per_gib", "grid_gco2_per_kwh")
        if settings.get(k) is not None
    }
    if settings.get("powercap_root"):
        kw["powercap_root"] = settings["powercap_root"]
    return EnergyMeter(device=device, **kw)
