"""RAPL energy counters read through Linux powercap (``/sys/class/powercap``).

Plain functions over the sysfs tree, with no state: :func:`read_rapl` takes a
reading of every domain, :func:`energy_delta` turns two readings into joules.
:class:`.energy_sources.RaplSource` uses them to meter a block; the module
docstring of :mod:`hepml_steps.energy` explains the domains, wrap-around and
mirrored packages.

A reading is ``{domain path: {"name", "energy_uj", "max_energy_range_uj",
"kind", "parent"}}`` (energy in µJ); ``kind`` is ``package``, ``subdomain``
(core/uncore, inside their package), ``dram`` or ``psys``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"

# Counters of distinct packages are never equal to within this; mirrored
# views of one counter are (reads are sequential, hence the 1 J slack).
_MIRROR_REL_TOL = 1e-6
_MIRROR_ABS_TOL_UJ = 1_000_000
_DOMAIN_DIR = re.compile(r"^[A-Za-z0-9_.-]+(:\d+)+$")
_MAX_DEPTH = 4


class RaplUnavailable(RuntimeError):
    """No usable RAPL counter; ``reason`` says exactly why.

    Parameters
    ----------
    reason : str
        One line naming the directory or file and what is wrong with it.
    unreadable : bool, default False
        True when counters exist but cannot be read (permission, bad
        contents, a counter that went backwards), False when there are none.
    """

    def __init__(self, reason: str, *, unreadable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.unreadable = unreadable


# -- reading one file ------------------------------------------------------------


def _read_int(path: Path) -> int:
    with open(path) as fh:
        return int(fh.read().strip())


def _why(path: Path, exc: BaseException) -> str:
    """One line saying why ``path`` could not be read."""
    if isinstance(exc, PermissionError):
        return f"permission denied on {path} (root-only since the CVE-2020-8694 fix, Linux 5.10 and backports)"
    if isinstance(exc, ValueError):
        return f"unparsable value in {path}"
    detail = getattr(exc, "strerror", None) or str(exc)
    return f"cannot read {path}: {type(exc).__name__}: {detail}"


# -- finding the domains ---------------------------------------------------------


def _is_domain(path: Path) -> bool:
    return (path / "energy_uj").exists() and (path / "name").exists()


def _domain_dirs(directory: Path) -> list[Path]:
    """Subdirectories of ``directory`` named like a domain (``<prefix>:N[:M]``)."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if not _DOMAIN_DIR.match(entry.name):
            continue
        try:
            if entry.is_dir() and _is_domain(Path(entry.path)):
                out.append(Path(entry.path))
        except OSError:
            continue
    return out


def _visit(directory: Path, parent: Path | None, depth: int, found: dict[str, tuple[Path, Path | None]]) -> None:
    """Add the domains under ``directory`` to ``found`` (keyed by resolved path)."""
    for path in _domain_dirs(directory):
        key = os.path.realpath(path)
        if key not in found or (found[key][1] is None and parent is not None):
            found[key] = (path, parent)
        if depth < _MAX_DEPTH:
            _visit(path, path, depth + 1, found)


def _scan_domains(root: Path) -> list[tuple[Path, Path | None]]:
    """Domain directories under ``root`` as (path, enclosing domain or None).

    ``/sys/class/powercap`` lists every domain flat (as symlinks) and nests the
    subdomains inside their package as well, so directories are de-duplicated
    by their resolved path, keeping the nested view (which knows its parent).
    """
    found: dict[str, tuple[Path, Path | None]] = {}
    _visit(root, None, 0, found)
    # top-level control types such as "intel-rapl" hold the packages as well
    try:
        controls = [Path(e.path) for e in os.scandir(root) if ":" not in e.name and e.is_dir() and "rapl" in e.name]
    except OSError:
        controls = []
    for ctl in sorted(controls):
        _visit(ctl, None, 1, found)
    return sorted(found.values(), key=lambda item: str(item[0]))


def _looks_like_subdomain(path: Path) -> bool:
    return path.name.count(":") >= 2 or _DOMAIN_DIR.match(path.parent.name) is not None


def _classify(path: Path, name: str, parent: Path | None) -> tuple[str, str | None]:
    """(kind, parent) with kind one of package, dram, psys, subdomain."""
    if parent is None:
        # flat listing: intel-rapl:0:1 belongs to intel-rapl:0
        base, _, last = path.name.rpartition(":")
        if ":" in base and last.isdigit():
            parent = path.parent / base
    lname = name.strip().lower()
    if lname.startswith("dram"):
        return "dram", str(parent) if parent else None
    if lname.startswith("psys"):
        return "psys", str(parent) if parent else None
    if parent is not None:
        return "subdomain", str(parent)
    return "package", None


def _kind(path: str, info: dict) -> str:
    """Domain kind, inferred from name and path if the dict does not carry it."""
    if info.get("kind"):
        return info["kind"]
    name = str(info.get("name", "")).lower()
    if name.startswith("dram"):
        return "dram"
    if name.startswith("psys"):
        return "psys"
    if _looks_like_subdomain(Path(path)):
        return "subdomain"
    return "package"


# -- reading the domains ------------------------------------------------------------


def _read_domain(path: Path, parent: Path | None) -> tuple[dict | None, tuple[str, str] | None]:
    """(domain info, None), or (None, (why unreadable, kind)) for one domain directory."""
    try:
        name = (path / "name").read_text().strip()
    except OSError as exc:
        guess = "subdomain" if _looks_like_subdomain(path) else "package"
        return None, (_why(path / "name", exc), guess)
    kind, parent_s = _classify(path, name, parent)
    values = {}
    for field in ("energy_uj", "max_energy_range_uj"):
        try:
            values[field] = _read_int(path / field)
        except (OSError, ValueError) as exc:
            return None, (_why(path / field, exc), kind)
    return {"name": name, **values, "kind": kind, "parent": parent_s}, None


def _read_domains_detailed(
    powercap_root: str | os.PathLike,
) -> tuple[dict[str, dict], dict[str, tuple[str, str]]]:
    """Readable domains and, for the others, why they could not be read (path -> (why, kind))."""
    root = Path(powercap_root)
    if not root.exists():
        raise RaplUnavailable(
            f"{root} does not exist (no powercap interface: a VM, a container without /sys, or not Linux)"
        )
    if not root.is_dir():
        raise RaplUnavailable(f"{root} is not a directory")
    scanned = _scan_domains(root)
    if not scanned:
        raise RaplUnavailable(f"{root} has no intel-rapl domains (no directory with energy_uj and name)")
    domains: dict[str, dict] = {}
    problems: dict[str, tuple[str, str]] = {}
    for path, parent in scanned:
        info, problem = _read_domain(path, parent)
        if info is None:
            problems[str(path)] = problem
        else:
            domains[str(path)] = info
    return domains, problems


def read_rapl_checked(
    powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT,
) -> tuple[dict[str, dict], dict[str, str]]:
    """:func:`read_rapl`, plus the non-package domains it left out.

    Returns
    -------
    reading : dict
        As :func:`read_rapl`.
    skipped : dict of str to str
        Domain path -> why it could not be read (dram, psys or subdomains only).

    Raises
    ------
    RaplUnavailable
        As :func:`read_rapl`.
    """
    domains, detailed = _read_domains_detailed(powercap_root)
    pkg_problems = [why for why, kind in detailed.values() if kind == "package"]
    if pkg_problems:
        raise RaplUnavailable("; ".join(pkg_problems), unreadable=True)
    problems = {path: why for path, (why, _) in detailed.items()}
    if not any(_kind(p, d) == "package" for p, d in domains.items()):
        if problems:
            raise RaplUnavailable("; ".join(problems.values()), unreadable=True)
        raise RaplUnavailable(
            f"{powercap_root} has no RAPL package domain (found: {sorted(d['name'] for d in domains.values())})"
        )
    return domains, problems


def read_rapl(powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT) -> dict[str, dict]:
    """Read every RAPL domain under ``powercap_root``.

    Parameters
    ----------
    powercap_root : str or path-like, default ``/sys/class/powercap``
        The powercap class directory (a fake tree in tests).

    Returns
    -------
    dict
        ``{domain path: {"name", "energy_uj", "max_energy_range_uj", "kind",
        "parent"}}``; counters in µJ, ``kind`` one of ``package``,
        ``subdomain`` (core/uncore: inside the package), ``dram`` and ``psys``.
        Unreadable non-package domains are simply left out.

    Raises
    ------
    RaplUnavailable
        When there is no counter, or when a package counter cannot be read
        (a partial sum would silently undercount).
    """
    return read_rapl_checked(powercap_root)[0]


def reread(reading: dict[str, dict]) -> dict[str, dict]:
    """The same domains as ``reading``, with their ``energy_uj`` read again (µJ).

    Raises
    ------
    RaplUnavailable
        (``unreadable``) when a counter can no longer be read.
    """
    out = {}
    for path, info in reading.items():
        try:
            value = _read_int(Path(path) / "energy_uj")
        except (OSError, ValueError) as exc:
            raise RaplUnavailable(_why(Path(path) / "energy_uj", exc), unreadable=True) from None
        out[path] = {**info, "energy_uj": value}
    return out


# -- from readings to joules ---------------------------------------------------------


def _counter_delta_uj(start: int, end: int, max_range: int | None) -> int:
    """Counter increase, corrected for one wrap-around."""
    if end >= start:
        return end - start
    if not max_range:
        raise RaplUnavailable(
            f"counter went backwards ({start} -> {end}) and max_energy_range_uj is unknown", unreadable=True
        )
    return end + max_range - start


def domain_deltas_j(start: dict[str, dict], end: dict[str, dict]) -> dict[str, float]:
    """Energy of each domain between two readings, in J (each wrap-corrected once).

    Raises
    ------
    RaplUnavailable
        (``unreadable``) when a counter went backwards and its
        ``max_energy_range_uj`` is unknown.
    """
    out = {}
    for path, s in start.items():
        e = end.get(path)
        if e is None:
            continue
        max_range = e.get("max_energy_range_uj") or s.get("max_energy_range_uj")
        out[path] = _counter_delta_uj(int(s["energy_uj"]), int(e["energy_uj"]), max_range) / 1e6
    return out


def mirrored_packages(reading: dict[str, dict]) -> dict[str, str]:
    """Package domains that repeat an earlier package's counter -> that package.

    Multi-die AMD parts and ``intel-rapl-mmio`` can show one socket counter
    twice; distinct packages never agree to within 1e-6 (or 1 J).
    """
    refs: list[tuple[str, int]] = []
    mirrored: dict[str, str] = {}
    for path in sorted(reading):
        info = reading[path]
        if _kind(path, info) != "package":
            continue
        value = int(info["energy_uj"])
        if value <= 0:
            continue
        for ref_path, ref in refs:
            if abs(value - ref) <= max(_MIRROR_REL_TOL * max(value, ref), _MIRROR_ABS_TOL_UJ):
                mirrored[path] = ref_path
                break
        else:
            refs.append((path, value))
    return mirrored


def domains_by_kind(reading: dict[str, dict]) -> dict[str, list[str]]:
    """Domain paths of ``reading`` grouped by kind (``package``, ``subdomain``, ``dram``, ``psys``)."""
    out: dict[str, list[str]] = {"package": [], "subdomain": [], "dram": [], "psys": []}
    for path, info in reading.items():
        out.setdefault(_kind(path, info), []).append(path)
    return out


def energy_delta(start: dict[str, dict], end: dict[str, dict]) -> float:
    """Joules used by the RAPL package domains between two :func:`read_rapl` readings.

    Each domain is wrap-corrected on its own (``end < start`` means the
    counter passed ``max_energy_range_uj`` once); package domains are summed;
    subdomains, dram and psys are not added; packages mirroring another's
    counter are counted once.

    Parameters
    ----------
    start, end : dict
        Readings as returned by :func:`read_rapl` (``kind`` may be absent: it
        is then inferred from the domain's name and path).

    Returns
    -------
    float
        Energy in J.

    Raises
    ------
    RaplUnavailable
        When a counter went backwards and its ``max_energy_range_uj`` is unknown.
    """
    mirrored = mirrored_packages(start)
    deltas = domain_deltas_j(start, end)
    return float(sum(j for path, j in deltas.items() if _kind(path, start[path]) == "package" and path not in mirrored))
