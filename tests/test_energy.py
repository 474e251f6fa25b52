"""Energy meter: RAPL counters (fake powercap trees), NVML (fake module), the
CPU-time estimate used on this machine, and the derived ratios."""

from __future__ import annotations

import builtins
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hepml_steps.energy import EnergyMeter, RaplUnavailable, available_sources, energy_delta, read_rapl
from hepml_steps.errors import ConfigError

MAX_RANGE = 262_143_328_850


def domain(path: Path, name: str, energy_uj: int, max_range: int = MAX_RANGE) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range}\n")
    return path


def set_uj(path: Path, value: int) -> None:
    (path / "energy_uj").write_text(f"{value}\n")


@pytest.fixture
def rapl_tree(tmp_path):
    """Two packages; package 0 has core and dram subdomains (nested layout)."""
    root = tmp_path / "powercap"
    d = {
        "pkg0": domain(root / "intel-rapl:0", "package-0", 1_000_000),
        "pkg1": domain(root / "intel-rapl:1", "package-1", 7_000_000),
    }
    d["core"] = domain(d["pkg0"] / "intel-rapl:0:0", "core", 500_000)
    d["dram"] = domain(d["pkg0"] / "intel-rapl:0:1", "dram", 300_000)
    (root / "intel-rapl").mkdir()  # control-type dir without counters
    return root, d


def burn_cpu(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


# -- RAPL ---------------------------------------------------------------------


def test_read_rapl_classifies_domains(rapl_tree):
    root, d = rapl_tree
    reading = read_rapl(root)
    kinds = {Path(p).name: (v["name"], v["kind"]) for p, v in reading.items()}
    assert kinds == {
        "intel-rapl:0": ("package-0", "package"),
        "intel-rapl:1": ("package-1", "package"),
        "intel-rapl:0:0": ("core", "subdomain"),
        "intel-rapl:0:1": ("dram", "dram"),
    }
    assert reading[str(d["pkg1"])]["energy_uj"] == 7_000_000
    assert reading[str(d["pkg1"])]["max_energy_range_uj"] == MAX_RANGE


def test_rapl_meter_sums_packages_reports_dram_and_skips_subdomains(rapl_tree):
    root, d = rapl_tree
    with EnergyMeter(powercap_root=root) as m:
        set_uj(d["pkg0"], 6_000_000)  # +5 J
        set_uj(d["pkg1"], 9_500_000)  # +2.5 J
        set_uj(d["core"], 4_500_000)  # +4 J, inside package 0: must not be added
        set_uj(d["dram"], 1_300_000)  # +1 J
        m.set_events(100)
    r = m.record
    assert r["method"] == "rapl"
    assert r["methods"] == {"cpu": "rapl", "gpu": None, "ram": "rapl:dram"}
    assert r["cpu_energy_j"] == pytest.approx(7.5)
    assert r["ram_energy_j"] == pytest.approx(1.0)
    assert r["gpu_energy_j"] is None
    assert r["energy_j"] == pytest.approx(8.5)
    assert any("whole CPU package" in n for n in r["notes"])
    assert any("subdomains ['core']" in n for n in r["notes"])
    assert not any(n.startswith("estimate") for n in r["notes"])
    assert r["j_per_event"] == pytest.approx(0.085)


def test_rapl_wrap_around_is_corrected(tmp_path):
    root = tmp_path / "powercap"
    pkg = domain(root / "intel-rapl:0", "package-0", 9_000_000, max_range=10_000_000)
    start = read_rapl(root)
    set_uj(pkg, 500_000)
    end = read_rapl(root)
    assert energy_delta(start, end) == pytest.approx(1.5)  # 1.0 J to the top + 0.5 J

    set_uj(pkg, 9_000_000)
    with EnergyMeter(powercap_root=root) as m:
        set_uj(pkg, 250_000)
    assert m.record["cpu_energy_j"] == pytest.approx(1.25)
    # no dram domain: RAM is the estimate, and the record says so
    assert m.record["methods"]["ram"].startswith("estimate:rss-time")
    assert any("no RAPL dram domain" in n for n in m.record["notes"])


def test_rapl_polling_catches_repeated_wraps(tmp_path):
    """Reading only at start and end would lose whole laps of the counter."""
    root = tmp_path / "powercap"
    pkg = domain(root / "intel-rapl:0", "package-0", 0, max_range=10_000_000)
    with EnergyMeter(powercap_root=root, rapl_poll_s=3600) as m:
        for value in (8_000_000, 6_000_000, 4_000_000):  # +8, +8 (wrap), +8 (wrap)
            set_uj(pkg, value)
            m.rapl.poll()
        set_uj(pkg, 5_000_000)  # +1
    assert m.record["cpu_energy_j"] == pytest.approx(25.0)


def test_energy_delta_without_kind_keys():
    """Hand-made readings (no "kind") are classified from name and path."""
    start = {
        "/p/intel-rapl:0": {"name": "package-0", "energy_uj": 10, "max_energy_range_uj": 100},
        "/p/intel-rapl:0/intel-rapl:0:0": {"name": "core", "energy_uj": 0, "max_energy_range_uj": 100},
        "/p/intel-rapl:1": {"name": "psys", "energy_uj": 0, "max_energy_range_uj": 100},
    }
    end = {k: {**v, "energy_uj": v["energy_uj"] + 50} for k, v in start.items()}
    assert energy_delta(start, end) == pytest.approx(50e-6)


def test_flat_sysfs_layout_with_symlinks_is_not_double_counted(tmp_path):
    """Real /sys/class/powercap lists every domain flat, as symlinks into a nested tree."""
    dev = tmp_path / "devices" / "intel-rapl"
    pkg = domain(dev / "intel-rapl:0", "package-0", 0)
    core = domain(pkg / "intel-rapl:0:0", "core", 0)
    dram = domain(pkg / "intel-rapl:0:1", "dram", 0)
    root = tmp_path / "class"
    root.mkdir()
    for target in (pkg, core, dram):
        (root / target.name).symlink_to(target, target_is_directory=True)
    (root / "intel-rapl").symlink_to(dev, target_is_directory=True)
    reading = read_rapl(root)
    assert sorted(v["kind"] for v in reading.values()) == ["dram", "package", "subdomain"]
    with EnergyMeter(powercap_root=root) as m:
        set_uj(pkg, 3_000_000)
        set_uj(core, 2_000_000)
        set_uj(dram, 1_000_000)
    assert m.record["cpu_energy_j"] == pytest.approx(3.0)
    assert m.record["ram_energy_j"] == pytest.approx(1.0)


def test_psys_ignored_and_mirrored_packages_counted_once(tmp_path):
    root = tmp_path / "powercap"
    a = domain(root / "intel-rapl:0", "package-0", 123_456_789)
    b = domain(root / "intel-rapl:1", "package-0", 123_456_789)  # mirrored die counter
    psys = domain(root / "intel-rapl:2", "psys", 5_000_000)
    with EnergyMeter(powercap_root=root) as m:
        set_uj(a, 125_456_789)
        set_uj(b, 125_456_789)
        set_uj(psys, 50_000_000)
    r = m.record
    assert r["cpu_energy_j"] == pytest.approx(2.0)
    assert any("psys" in n and "ignored" in n for n in r["notes"])
    assert any("mirrors" in n and "counted once" in n for n in r["notes"])


# -- fallbacks ------------------------------------------------------------------


def test_unreadable_counter_falls_back_with_reason(tmp_path):
    root = tmp_path / "powercap"
    pkg = domain(root / "intel-rapl:0", "package-0", 1)
    (pkg / "energy_uj").unlink()
    (pkg / "energy_uj").mkdir()  # chmod 000 does not stop root
    with pytest.raises(RaplUnavailable) as info:
        read_rapl(root)
    assert info.value.unreadable and "energy_uj" in info.value.reason
    with EnergyMeter(powercap_root=root) as m:
        pass
    r = m.record
    assert r["method"] == "estimate:cpu-time"
    assert any(n.startswith("RAPL unreadable:") and str(pkg / "energy_uj") in n for n in r["notes"])


def test_permission_denied_names_the_file(rapl_tree, monkeypatch):
    root, d = rapl_tree
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if str(file).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    with EnergyMeter(powercap_root=root) as m:
        pass
    monkeypatch.undo()
    note = next(n for n in m.record["notes"] if n.startswith("RAPL unreadable:"))
    assert "permission denied on" in note and "energy_uj" in note
    assert m.record["method"].startswith("estimate")
    assert available_sources(root, nvml=FakeNvml())["rapl"]["available"] is True


def test_unreadable_dram_only_is_skipped_with_note(rapl_tree):
    root, d = rapl_tree
    (d["dram"] / "energy_uj").unlink()
    (d["dram"] / "energy_uj").mkdir()
    with EnergyMeter(powercap_root=root) as m:
        set_uj(d["pkg0"], 2_000_000)
    r = m.record
    assert r["method"] == "rapl" and r["cpu_energy_j"] == pytest.approx(1.0)
    assert r["methods"]["ram"].startswith("estimate")
    assert any("skipped" in n and "intel-rapl:0:1" in n for n in r["notes"])


def test_unreadable_psys_does_not_block_packages(tmp_path):
    root = tmp_path / "powercap"
    pkg = domain(root / "intel-rapl:0", "package-0", 0)
    psys = domain(root / "intel-rapl:1", "psys", 0)
    (psys / "energy_uj").unlink()
    (psys / "energy_uj").mkdir()
    with EnergyMeter(powercap_root=root) as m:
        set_uj(pkg, 4_000_000)
    assert m.record["method"] == "rapl" and m.record["cpu_energy_j"] == pytest.approx(4.0)
    assert any("intel-rapl:1 skipped" in n for n in m.record["notes"])


def test_estimate_without_powercap(tmp_path):
    with EnergyMeter(powercap_root=tmp_path / "absent", cpu_watts_per_core=12.0, ram_watts_per_gib=0.5) as m:
        burn_cpu(0.3)
        m.set_events(30_000)
    r = m.record
    assert r["method"] == "estimate:cpu-time"
    assert r["methods"] == {"cpu": "estimate:cpu-time", "gpu": None, "ram": "estimate:rss-time"}
    assert r["cpu_s"] > 0.2 and r["wall_s"] >= r["cpu_s"] * 0.9
    assert r["cpu_energy_j"] == pytest.approx(r["cpu_s"] * 12.0)
    assert r["ram_energy_j"] == pytest.approx(0.5 * r["peak_rss_mib"] / 1024 * r["wall_s"])
    assert r["energy_j"] == pytest.approx(r["cpu_energy_j"] + r["ram_energy_j"])
    assert any(n.startswith("estimate, not a measurement") for n in r["notes"])
    assert any(n.startswith("RAPL not available:") and "does not exist" in n for n in r["notes"])
    assert r["peak_rss_mib"] > 0
    assert r["parameters"] == {"cpu_watts_per_core": 12.0, "ram_watts_per_gib": 0.5, "grid_gco2_per_kwh": None}
    assert r["co2_g"] is None
    assert r["events_per_s"] == pytest.approx(30_000 / r["wall_s"])
    assert r["j_per_event"] == pytest.approx(r["energy_j"] / 30_000)


def test_empty_powercap_dir(tmp_path):
    (tmp_path / "pc").mkdir()
    with EnergyMeter(powercap_root=tmp_path / "pc") as m:
        pass
    assert any("has no intel-rapl domains" in n for n in m.record["notes"])
    assert m.record["parameters"]["cpu_watts_per_core"] == 10.0
    assert m.record["parameters"]["ram_watts_per_gib"] == 0.375


# -- ratios, CO2, parameters -------------------------------------------------------


def test_ratios_co2_and_late_events(tmp_path):
    with EnergyMeter(powercap_root=tmp_path / "absent", grid_gco2_per_kwh=400.0) as m:
        burn_cpu(0.05)
    r = m.record
    assert r["events"] is None and r["events_per_s"] is None and r["j_per_event"] is None
    assert r["co2_g"] == pytest.approx(r["energy_j"] / 3.6e6 * 400.0)
    m.set_events(0)
    assert r["events"] == 0 and r["events_per_s"] is None and r["j_per_event"] is None
    m.set_events(500)  # after exit: ratios are filled in
    assert r["events_per_s"] == pytest.approx(500 / r["wall_s"])
    assert r["j_per_event"] == pytest.approx(r["energy_j"] / 500)


def test_bad_parameters_are_rejected():
    with pytest.raises(ConfigError, match="cpu_watts_per_core"):
        EnergyMeter(cpu_watts_per_core=-1)
    with pytest.raises(ConfigError, match="ram_watts_per_gib"):
        EnergyMeter(ram_watts_per_gib="lots")
    with pytest.raises(ConfigError, match="events"):
        EnergyMeter().set_events(-3)


def test_record_filled_even_when_block_raises(tmp_path):
    m = EnergyMeter(powercap_root=tmp_path / "absent")
    with pytest.raises(ZeroDivisionError):
        with m:
            _ = 1 / 0
    assert m.record["method"] == "estimate:cpu-time" and m.record["wall_s"] >= 0


def test_module_import_is_light():
    code = (
        "import sys, hepml_steps.energy; "
        "print([m for m in ('psutil', 'pynvml', 'numpy', 'codecarbon') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert out.stdout.strip() == "[]"


# -- NVML -----------------------------------------------------------------------


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """The pynvml functions the meter uses; energy in mJ, power in mW."""

    NVMLError = FakeNvmlError

    def __init__(self, *, init_error=False, total_energy=True, power_mw=150_000, n_devices=1):
        self.init_error = init_error
        self.total_energy = total_energy
        self.power_mw = power_mw
        self.n_devices = n_devices
        self.energy_mj = 1_000_000
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error:
            raise FakeNvmlError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return self.n_devices

    def nvmlDeviceGetHandleByIndex(self, index):
        self.calls.append(f"handle {index}")
        if index >= self.n_devices:
            raise FakeNvmlError("Invalid Argument")
        return ("handle", index)

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle[1]}f6c1a2e-0000-1111-2222-333344445555".encode()

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.total_energy:
            raise FakeNvmlError("Not Supported")
        value = self.energy_mj
        self.energy_mj += 250_000  # 250 J per reading
        return value

    def nvmlDeviceGetPowerUsage(self, handle):
        return self.power_mw


def test_nvml_total_energy(tmp_path):
    fake = FakeNvml()
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda", nvml=fake) as m:
        pass
    r = m.record
    assert r["gpu_energy_j"] == pytest.approx(250.0)
    assert r["method"] == "estimate:cpu-time+nvml"
    assert r["methods"]["gpu"] == "nvml:total-energy"
    assert r["energy_j"] == pytest.approx(r["cpu_energy_j"] + r["ram_energy_j"] + 250.0)
    assert any("whole GPU 0" in n for n in r["notes"])
    assert fake.calls == ["init", "handle 0", "shutdown"]


def test_nvml_with_rapl(rapl_tree):
    root, d = rapl_tree
    with EnergyMeter(powercap_root=root, device="cuda:0", nvml=FakeNvml()) as m:
        set_uj(d["pkg0"], 2_000_000)
    assert m.record["method"] == "rapl+nvml"
    assert m.record["energy_j"] == pytest.approx(1.0 + 0.0 + 250.0)


def test_nvml_power_sampling_when_total_energy_unsupported(tmp_path):
    fake = FakeNvml(total_energy=False, power_mw=150_000)  # 150 W
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda", nvml=fake, gpu_sample_s=0.02) as m:
        time.sleep(0.3)
    r = m.record
    assert r["methods"]["gpu"] == "nvml:power-sampling"
    assert r["method"] == "estimate:cpu-time+nvml"
    # integrated from the first sample (just before the clock starts) to the
    # last one (just after it stops): a little more than the wall time
    assert 150.0 * r["wall_s"] * 0.99 <= r["gpu_energy_j"] <= 150.0 * r["wall_s"] * 1.15
    note = next(n for n in r["notes"] if "power sampled" in n)
    assert "Not Supported" in note
    assert int(re.search(r"\((\d+) samples, 0 failed\)", note).group(1)) >= 5


def test_nvml_init_failure_records_note(tmp_path):
    fake = FakeNvml(init_error=True)
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda", nvml=fake) as m:
        pass
    r = m.record
    assert r["gpu_energy_j"] is None and r["methods"]["gpu"] is None
    assert r["method"] == "estimate:cpu-time"
    assert any("nvmlInit failed" in n and "Driver Not Loaded" in n for n in r["notes"])
    assert any("GPU energy not included" in n for n in r["notes"])
    assert math.isfinite(r["energy_j"])


def test_nvml_bad_index_and_missing_pynvml(tmp_path, monkeypatch):
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda", gpu_index=3, nvml=FakeNvml()) as m:
        pass
    assert m.record["gpu_energy_j"] is None
    assert any("no GPU with index 3" in n for n in m.record["notes"])

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda") as m:
        pass
    assert any("pynvml (nvidia-ml-py) not importable" in n for n in m.record["notes"])


def test_cpu_device_never_touches_nvml(tmp_path):
    fake = FakeNvml()
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cpu", nvml=fake) as m:
        pass
    assert fake.calls == [] and m.record["methods"]["gpu"] is None
    assert not any("GPU" in n for n in m.record["notes"])


def test_available_sources(rapl_tree, tmp_path):
    root, _ = rapl_tree
    here = available_sources(tmp_path / "absent", nvml=FakeNvml(init_error=True))
    assert here["rapl"]["available"] is False and "does not exist" in here["rapl"]["reason"]
    assert here["nvml"]["available"] is False and "nvmlInit failed" in here["nvml"]["reason"]
    assert here["estimate"]["available"] is True
    there = available_sources(root, nvml=FakeNvml(n_devices=2))
    assert there["rapl"]["available"] is True and len(there["rapl"]["domains"]) == 4
    assert there["nvml"] == {"available": True, "devices": 2, "reason": "NVML initialised"}


def test_real_machine_sources_are_explained():
    """Whatever this machine has, every source is either usable or says why not."""
    for name, info in available_sources().items():
        assert isinstance(info["available"], bool) and info["reason"], name


@pytest.mark.parametrize(
    "visible, device, reads, note",
    [
        ("2,3", "cuda:1", "handle 3", "CUDA device 1 is NVML GPU 3"),
        ("GPU-2f6c1a2e-0000-1111-2222-333344445555", "cuda", "handle 2", "CUDA device 0 is NVML GPU GPU-2f6c1a2e"),
        ("3,GPU-1f6c1a2e-0000-1111-2222-333344445555", "cuda:1", "handle 1", "CUDA device 1 is NVML GPU GPU-1f6c1a2e"),
        ("1", "cuda:1", None, "has no device 1"),
    ],
)
def test_nvml_reads_the_gpu_cuda_sees(visible, device, reads, note, tmp_path, monkeypatch):
    """A batch system hands the job GPU 3 as CUDA_VISIBLE_DEVICES=3: CUDA calls
    it cuda:0, NVML calls it 3. The meter must read the GPU the job uses."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    fake = FakeNvml(n_devices=4)
    with EnergyMeter(powercap_root=tmp_path / "absent", device=device, nvml=fake) as m:
        pass
    r = m.record
    assert any(note in n for n in r["notes"]), r["notes"]
    if reads:
        assert fake.calls[-2] == reads and r["gpu_energy_j"] == pytest.approx(250.0)
    else:
        assert not any(c.startswith("handle") for c in fake.calls) and r.get("gpu_energy_j") is None


def test_nvml_matches_a_short_uuid_and_warns_about_device_order(tmp_path, monkeypatch):
    """HTCondor hands out short UUIDs (GPU-3f6c1a2e); NVML's own lookup needs the full one."""
    fake = FakeNvml(n_devices=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3f6c1a2e")
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda", nvml=fake) as m:
        pass
    assert m.record["gpu_energy_j"] == pytest.approx(250.0) and fake.calls[-2] == "handle 3"
    fake = FakeNvml(n_devices=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-ffff")
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda", nvml=fake) as m:
        pass
    assert m.record.get("gpu_energy_j") is None
    assert any("no GPU with uuid GPU-ffff" in n for n in m.record["notes"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda", nvml=FakeNvml(n_devices=4)) as m:
        pass
    assert any("CUDA_DEVICE_ORDER is not PCI_BUS_ID" in n for n in m.record["notes"])


def test_importing_hepml_numbers_cuda_devices_in_pci_order():
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "CUDA_DEVICE_ORDER"}
    out = subprocess.run(
        [sys.executable, "-c", "import os, hepml_steps; print(os.environ['CUDA_DEVICE_ORDER'])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "PCI_BUS_ID"


# -- the sources behind the meter ------------------------------------------------------


class EndFailNvml(FakeNvml):
    """Total-energy counter readable at the start only."""

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.energy_mj > 1_000_000:
            raise FakeNvmlError("GPU is lost")
        return super().nvmlDeviceGetTotalEnergyConsumption(handle)


def test_every_source_has_the_same_interface(rapl_tree, tmp_path):
    """start() -> notes, stop() -> Reading, availability() -> available + reason; an
    unusable source says why instead of raising."""
    from hepml_steps.energy import CpuTimeEstimate, EnergySource, NvmlSource, RaplSource, Reading

    root, d = rapl_tree
    rapl, absent = RaplSource(root), RaplSource(tmp_path / "absent")
    gpu, no_driver = NvmlSource(nvml=FakeNvml()), NvmlSource(nvml=FakeNvml(init_error=True))
    readings = {}
    for source in (rapl, absent, gpu, no_driver, CpuTimeEstimate()):
        assert isinstance(source, EnergySource) and source.name and source.method
        info = source.availability()
        assert isinstance(info["available"], bool) and info["reason"]
        notes = source.start()
        set_uj(d["pkg0"], 3_000_000)  # +2 J
        readings[source] = source.stop()
        assert isinstance(readings[source], Reading) and notes + readings[source].notes
    assert rapl.why_not is None and readings[rapl].cpu_j == pytest.approx(2.0)
    assert absent.why_not.startswith("RAPL not available:") and readings[absent].cpu_j is None
    assert readings[gpu].gpu_j == pytest.approx(250.0) and gpu.why_not is None
    assert no_driver.why_not.startswith("NVML not available: nvmlInit failed")
    assert readings[no_driver].gpu_j is None


@pytest.mark.parametrize(
    "make, visible",
    [
        (FakeNvml, None),
        (FakeNvml, "1"),
        (FakeNvml, "GPU-ffff"),
        (EndFailNvml, None),
        (lambda: FakeNvml(total_energy=False), None),
        (lambda: FakeNvml(n_devices=0), None),
    ],
)
def test_nvml_is_shut_down_once_per_init(make, visible, tmp_path, monkeypatch):
    """Whatever fails, every nvmlInit is matched by one nvmlShutdown (one NvmlSession)."""
    from hepml_steps.energy import gpu_visible

    fake = make()
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with EnergyMeter(powercap_root=tmp_path / "absent", device="cuda", nvml=fake, gpu_sample_s=0.01) as m:
        pass
    available_sources(tmp_path / "absent", nvml=fake)
    gpu_visible(fake)
    assert fake.calls.count("init") == fake.calls.count("shutdown") == 3
    assert fake.calls[-4:] == ["init", "shutdown", "init", "shutdown"]
    assert (m.record["gpu_energy_j"] is None) == any("GPU energy not measured" in n for n in m.record["notes"])
