"""Peak memory of the train step against the size of the model's feature matrix.

    python benchmarks/train_memory.py [--events 2000000] [--features 20]
                                      [--families xgboost,mlp] [--keep DIR]

Writes prepared training splits (``--events`` events, half as many, and
20,000; ``--features`` float32 features, ``event_id``, ``label``, ``weight``;
row groups of 250,000 events, written chunk by chunk) and a validation split
of a tenth of ``--events``, then runs
:func:`hepml_steps.train.train` for each family in a fresh process, streamed
(``stream_above_events: 0``: ``fit_stream`` from the Parquet batches) and in
memory (``fit`` on the whole matrix, what train did before it streamed). For
each run it prints

- the peak RSS (VmHWM) of the process, and above the baseline (the same
  train job on 20,000 events: imports, ONNX export and fixed buffers);
- the training feature matrix's size in memory as float32 (events x features x 4 B);
- ``ratio``: peak RSS / matrix, and ``above``: (peak - baseline) / matrix;
- with ``--slope`` (default), the same at half the events first, and
  ``marginal``: the growth of the peak per event over the matrix's per event,
  the ratio a very large training set tends to.

Target (issue #16): peak RSS <= 1.5 x the feature matrix when it is large
(``ratio`` at 10^8 events; at a few million events the libraries' own
~0.3-0.5 GB dominates, so read ``marginal`` there). The fits are short
(XGBoost 20 trees, MLP 1 epoch): memory, not accuracy, is measured.
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

ROW_GROUP = 250_000
PARAMS = {
    "xgboost": {"n_estimators": 20, "max_depth": 6, "external_memory": True},  # streamed: on disk at every size
    "mlp": {"epochs": 1, "hidden_layers": [64, 64], "batch_size": 1024, "early_stopping_patience": 0},
    "autoencoder": {"epochs": 1, "hidden_layers": [16, 4], "batch_size": 1024, "early_stopping_patience": 0},
}

_RUN = """
import json, sys
sys.path.insert(0, {root!r})
args = json.loads(sys.argv[1])
from hepml_steps import train
rec = train.train(**args)
print(json.dumps({{"n_train": rec["n_train"], "streamed": rec["streamed"], "fit_seconds": rec["fit_seconds"]}}))
with open("/proc/self/status") as status:
    print(int(status.read().split("VmHWM:")[1].split()[0]) * 1024)
"""


def write_split(path: Path, n: int, n_features: int, seed: int) -> None:
    """A prepared split of ``n`` events, written in row groups without holding it all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer = None
    try:
        for start in range(0, n, ROW_GROUP):
            m = min(ROW_GROUP, n - start)
            label = (rng.random(m) < 0.5).astype(np.int8)
            cols = {
                "event_id": np.arange(start, start + m, dtype=np.int64) * 7 + seed,
                "label": label,
                "weight": rng.uniform(0.5, 2.0, m),
            }
            for i in range(n_features):
                cols[f"f{i}"] = (rng.normal(size=m) + (0.8 / (1 + i)) * label).astype(np.float32)
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema, compression="zstd")
            writer.write_table(table, row_group_size=ROW_GROUP)
    finally:
        if writer is not None:
            writer.close()


def run(args: dict) -> tuple[int, dict | None]:
    res = subprocess.run(
        [sys.executable, "-c", _RUN.format(root=str(ROOT)), json.dumps(args)],
        capture_output=True,
        text=True,
    )
    if res.returncode:
        raise SystemExit(f"run failed ({args.get('model')}):\n{res.stderr[-3000:]}")
    lines = res.stdout.strip().splitlines()
    return int(lines[-1]), (json.loads(lines[-2]) if len(lines) > 1 else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--families", default="xgboost,mlp")
    p.add_argument("--modes", default="stream,memory", help="stream, memory or both")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", help="write the splits here and keep them")
    p.add_argument("--no-slope", dest="slope", action="store_false", help="skip the run at half the events")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(a.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        sizes = [20_000, a.events // 2, a.events] if a.slope else [20_000, a.events]
        for n in sizes:
            if not (d / f"train-{n}.parquet").exists():
                write_split(d / f"train-{n}.parquet", n, a.features, 1)
        val_path = d / "validation.parquet"
        if not val_path.exists():
            write_split(val_path, max(1000, a.events // 10), a.features, 2)
        print(
            f"# {a.events} training events x {a.features} features: matrix "
            f"{a.events * a.features * 4 / 2**20:.0f} MiB (float32); validation {max(1000, a.events // 10)} events"
        )
        print(
            f"{'family':<12} {'mode':<7} {'events':>9} {'peak MiB':>9} {'base MiB':>9} {'ratio':>6} {'above':>6}"
            f" {'marginal':>8} {'fit s':>7}"
        )
        for family in a.families.split(","):
            spec = {"family": family, "params": PARAMS[family], "weighting": "balanced", "leakage": "off"}
            if family == "autoencoder":
                spec["task"] = "anomaly"
            for mode in a.modes.split(","):
                s = {**spec, "stream_above_events": 0 if mode == "stream" else 10**12, "max_in_memory_events": None}
                peaks = {}
                for n in sizes if mode == "stream" else [sizes[0], a.events]:
                    args = {
                        "train_path": str(d / f"train-{n}.parquet"),
                        "validation_path": str(val_path),
                        "model": f"{family}-{mode}",
                        "spec": s,
                        "out_dir": str(d / f"{family}-{mode}-{n}"),
                        "record_out": str(d / f"{family}-{mode}-{n}.json"),
                        "threads": a.threads,
                    }
                    peaks[n], rec = run(args)
                    if n == sizes[0]:
                        continue
                    matrix = n * a.features * 4
                    base = peaks[sizes[0]]
                    half = a.events // 2
                    marginal = (
                        f"{(peaks[n] - peaks[half]) / ((n - half) * a.features * 4):>8.2f}"
                        if n == a.events and half in peaks
                        else f"{'':>8}"
                    )
                    print(
                        f"{family:<12} {mode:<7} {n:>9} {peaks[n] / 2**20:>9.0f} {base / 2**20:>9.0f}"
                        f" {peaks[n] / matrix:>6.2f} {(peaks[n] - base) / matrix:>6.2f} {marginal}"
                        f" {rec['fit_seconds']:>7.1f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
