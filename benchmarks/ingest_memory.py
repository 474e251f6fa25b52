"""Peak memory of the ingest step against the size of what it reads and writes.

    python benchmarks/ingest_memory.py [--events 2000000] [--format root|parquet|csv|all]
                                       [--chunk-size 200000] [--keep DIR]

Generates a NanoAOD-like file (16 float32 features, run/luminosityBlock/event,
a signed genWeight, jets ``Jet_pt``/``Jet_eta`` with 4 per event on average)
of ``--events`` events and of half as many, and runs :func:`hepml_steps.ingest.ingest`
on each in a fresh process (default columns plus the aliases ``lead_pt:
Jet_pt[0]`` and ``n_jet: len(Jet_pt)``), once with ``--chunk-size`` and once
reading the whole file in one chunk (what ingest did before it read in
chunks). For each run it prints

- the peak RSS of the process, and above the baseline (a process that only
  imports what ingest imports);
- the output table's size in memory (Arrow) and the input file's size;
- ``ratio``: (peak - baseline) / output table size.

Target: with chunks, the peak above the baseline stays flat when the file
doubles and is at most about one output table; in one chunk it grows with the
file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_FEATURES = 16
WRITE_CHUNK = 250_000

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork+exec, so a
# child would report the (large) parent's memory at the fork.
_RUN = """
import json, sys
sys.path.insert(0, {root!r})
from hepml_steps import ingest
args = json.loads(sys.argv[1])
if args.pop("baseline", False):
    import awkward, pandas, pyarrow.parquet, uproot  # what a run imports
    from hepml_steps import jagged, readers
else:
    ingest.ingest(**args)
with open("/proc/self/status") as status:
    print(int(status.read().split("VmHWM:")[1].split()[0]) * 1024)
"""


def _chunk(n: int, start: int, rng: np.random.Generator) -> dict:
    import awkward as ak

    n_jet = rng.poisson(4.0, n).astype(np.int32)
    total = int(n_jet.sum())
    arrays = {
        "run": np.ones(n, np.uint32),
        "luminosityBlock": (np.arange(start, start + n) // 1000).astype(np.uint32),
        "event": np.arange(start, start + n, dtype=np.uint64),
        "genWeight": np.where(rng.random(n) < 0.15, -1.0, 1.0).astype(np.float32),
        "nJet": n_jet,
        "Jet_pt": ak.unflatten((rng.exponential(30.0, total) + 15).astype(np.float32), n_jet),
        "Jet_eta": ak.unflatten(rng.normal(0, 2, total).astype(np.float32), n_jet),
    }
    arrays.update({f"f{i}": rng.normal(size=n).astype(np.float32) for i in range(N_FEATURES)})
    return arrays


def generate(path: Path, n: int, fmt: str, seed: int) -> Path:
    """A file of ``n`` events, written ``WRITE_CHUNK`` events at a time."""
    rng = np.random.default_rng(seed)
    starts = range(0, n, WRITE_CHUNK)
    if fmt == "root":
        import uproot

        with uproot.recreate(path) as f:
            for start in starts:
                arrays = _chunk(min(WRITE_CHUNK, n - start), start, rng)
                if start == 0:
                    f.mktree(
                        "Events",
                        {k: ("var * float32" if k.startswith("Jet_") else v.dtype) for k, v in arrays.items()},
                        counter_name=lambda b: "nJet",
                    )
                f["Events"].extend(arrays)
        return path
    import awkward as ak
    import pyarrow.parquet as pq

    writer = None
    for start in starts:
        arrays = _chunk(min(WRITE_CHUNK, n - start), start, rng)
        if fmt == "csv":  # no collections in CSV: the flat branches only
            import pandas as pd

            df = pd.DataFrame({k: v for k, v in arrays.items() if not k.startswith("Jet_")})
            df.to_csv(path, mode="w" if start == 0 else "a", header=start == 0, index=False)
            continue
        table = ak.to_arrow_table(ak.zip(arrays, depth_limit=1), extensionarray=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer:
        writer.close()
    return path


def peak_rss(args: dict) -> int:
    """Peak RSS (bytes) of a fresh process running ingest with ``args`` (or only importing: baseline)."""
    out = subprocess.run(
        [sys.executable, "-c", _RUN.format(root=str(ROOT)), json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000, help="events of the larger file")
    p.add_argument("--format", default="root", choices=["root", "parquet", "csv", "all"])
    p.add_argument("--chunk-size", type=int, default=200_000, help="events per chunk (data.files.chunk_size)")
    p.add_argument("--keep", help="folder for the generated files (default: a temporary one, removed)")
    a = p.parse_args(argv)
    formats = ["root", "parquet", "csv"] if a.format == "all" else [a.format]
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        base = peak_rss({"baseline": True})
        print(f"baseline (imports only): {base / mib:.0f} MiB peak RSS")
        print(
            f"{'format':8} {'events':>9} {'chunk':>9} {'input MiB':>10} {'output MiB':>11} {'peak MiB':>9} "
            f"{'above base':>11} {'ratio':>6}"
        )
        for fmt in formats:
            for n in (a.events // 2, a.events):
                path = generate(folder / f"nano_{n}.{fmt}", n, fmt, seed=n)
                out = folder / f"events_{n}_{fmt}.parquet"
                for chunk in (a.chunk_size, n):
                    args = {
                        "inputs": [
                            {"path": str(path), "label": 1, "name": "s"},
                            {"path": str(path), "label": 0, "name": "b"},
                        ],
                        "out": str(out),
                        "chunk_size": chunk,
                    }
                    if fmt != "csv":
                        args["aliases"] = {"lead_pt": "Jet_pt[0]", "n_jet": "len(Jet_pt)"}
                    peak = peak_rss(args)
                    import pyarrow.parquet as pq

                    table_bytes = pq.read_table(out).nbytes
                    above = peak - base
                    print(
                        f"{fmt:8} {n:>9} {chunk:>9} {path.stat().st_size / mib:>10.0f} "
                        f"{table_bytes / mib:>11.0f} {peak / mib:>9.0f} {above / mib:>11.0f} "
                        f"{above / table_bytes:>6.2f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
