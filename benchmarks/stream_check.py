"""Peak memory of the features and predict steps, and predict's time against bare inference.

    python benchmarks/stream_check.py [--events 1000000] [--threads 2] [--trees 200]
                                      [--code DIR ...] [--keep DIR]

Generates ``--events`` toy events (:mod:`hepml_steps.generate`: 18 columns),
splits them (60/20/20), prepares them once and trains an XGBoost model
(``--trees`` trees of depth 6) with this checkout. Then, for each ``--code``
tree (default: this checkout; give an older checkout, e.g. ``git archive main``
unpacked, to compare), runs in a fresh process each:

- the features step (all feature columns standardised; one derived column;
  the model's target ``m_jj`` kept), and
- the predict step (batches of 131,072 events, the config default, ``--threads``),

printing the peak RSS (VmHWM; with :func:`hepml_steps.io.release_freed_memory`
when the code has it, as the step CLIs call it), the peak above a baseline process that only
imports what the step imports (for predict: and loads the model and scores
ten events), and the wall time. The sizes the peaks are
measured against ("needed", Arrow/numpy bytes):

- features: the training split's feature columns as the fit's float64
  matrix (n_train × n_features × 8 B), and one batch of the columns it reads;
- predict: one batch of the columns scoring reads (features + event columns).

``bare`` is what a physicist would write: read the feature columns of the
three prepared splits with pyarrow, make one float32 matrix, and call the
family's ``predict_score`` (XGBoost ``inplace_predict``) in batches; both
run ``--repeat`` times, alternated, and the fastest run of each is shown. Targets
(issue #16): each step's peak above baseline ≤ 1.5 × the needed size;
predict's time ≤ 1.3 × bare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPLITS = ("train", "validation", "test")
BATCH = 131_072
DERIVED = {"pt_sum": "j1_pt + j2_pt"}

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork+exec.
_RUN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
args = json.loads(sys.argv[2])
what = args.pop("what")
import numpy, pandas, pyarrow.parquet  # what every step imports
from hepml_steps import io
if what in ("features", "predict") and hasattr(io, "release_freed_memory"):
    io.release_freed_memory()  # as the step's CLI does (absent from older code)
if what.endswith("features"):
    from hepml_steps import features
else:
    from hepml_steps import predict, registry
    import xgboost
t0 = time.perf_counter()
if what == "baseline_features":
    import numexpr, pyarrow.compute  # noqa
elif what == "baseline_predict":  # the fixed cost: imports, the model loaded, its threads started
    import numpy as np
    model, meta = registry.load_model(args["model_dir"])
    model.n_threads = args["threads"]
    model.predict_score(np.zeros((10, len(meta["features"])), np.float32))
elif what == "features":
    features.features(**args)
elif what == "predict":
    predict.predict(**args)
elif what == "bare":
    import numpy as np
    import pyarrow.parquet as pq
    model, meta = registry.load_model(args["model_dir"])
    model.n_threads = args["threads"]
    for path in args["inputs"].values():
        t = pq.read_table(path, columns=meta["features"])
        X = np.empty((t.num_rows, len(meta["features"])), np.float32)
        for j, c in enumerate(meta["features"]):
            X[:, j] = t.column(c).to_numpy()
        del t
        for i in range(0, len(X), args["batch_size"]):
            model.predict_score(X[i : i + args["batch_size"]])
seconds = time.perf_counter() - t0
with open("/proc/self/status") as status:
    peak = int(status.read().split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"peak": peak, "seconds": seconds}))
"""


def run(code: Path, what: str, **args) -> dict:
    """Peak RSS (bytes) and wall time (s) of ``what`` in a fresh process using the code in ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(code), json.dumps({"what": what, **args})],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"{what} ({code}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare(folder: Path, n: int, trees: int, threads: int) -> dict:
    """Toy events, their splits, prepared splits and an XGBoost model (this checkout's code)."""
    from hepml_steps import features, generate, split, train

    raw = {s: str(folder / f"split_{s}.parquet") for s in SPLITS}
    prepared = {s: str(folder / f"features_{s}.parquet") for s in SPLITS}
    files = {"raw": raw, "prepared": prepared, "model": str(folder / "bdt")}
    if (folder / "bdt.json").is_file():  # --keep of an earlier run: reused
        return files
    events = folder / "events.parquet"
    generate.generate(events, n, seed=7, chunk_size=250_000)
    split.split(str(events), raw, {"train": 0.6, "validation": 0.2, "test": 0.2})
    features.features(raw, prepared, str(folder / "transform.json"), derived=DERIVED, targets=["m_jj"])
    spec = {"family": "xgboost", "params": {"n_estimators": trees, "max_depth": 6}}
    train.train(
        prepared["train"],
        prepared["validation"],
        "bdt",
        spec,
        str(folder / "bdt"),
        str(folder / "bdt.json"),
        threads=threads,
    )
    return files


def needed(files: dict) -> dict:
    """The sizes (bytes) the peaks are compared with (module docstring)."""
    import pyarrow.parquet as pq

    from hepml_steps import registry
    from hepml_steps.dataset import scoring_columns
    from hepml_steps.io import columns_of, read_json

    transform = read_json(Path(files["prepared"]["train"]).parent / "transform.json")
    n_train = pq.ParquetFile(files["raw"]["train"]).metadata.num_rows
    fit_cols = [c for c in columns_of(files["raw"]["train"]) if c in transform["columns"] or c in ("j1_pt", "j2_pt")]
    from hepml_steps.features import BATCH_EVENTS

    raw_batch = pq.ParquetFile(files["raw"]["test"]).iter_batches(batch_size=BATCH_EVENTS, columns=fit_cols)
    _, meta = registry.load_model(files["model"])
    cols = scoring_columns(columns_of(files["prepared"]["test"]), meta)
    batch = next(pq.ParquetFile(files["prepared"]["test"]).iter_batches(batch_size=BATCH, columns=cols))
    return {
        "features_fit": n_train * len(transform["columns"]) * 8,
        "features_batch": next(raw_batch).nbytes,
        "predict_batch": batch.nbytes,
        "n_train": n_train,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trees", type=int, default=200, help="XGBoost trees (depth 6)")
    p.add_argument("--code", nargs="+", default=[str(ROOT)], help="checkouts whose steps are measured")
    p.add_argument("--keep", help="folder for the data (default: a temporary one, removed); reused when it holds them")
    p.add_argument("--repeat", type=int, default=3, help="runs of predict and bare; the fastest is shown")
    p.add_argument("--steps", nargs="+", default=["features", "predict"], choices=["features", "predict"])
    a = p.parse_args(argv)
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        files = prepare(folder, a.events, a.trees, a.threads)
        size = needed(files)
        print(f"{a.events} events ({size['n_train']} train), prepared in {time.perf_counter() - t0:.0f} s")
        print(
            f"needed: features fit matrix {size['features_fit'] / mib:.0f} MiB, features batch "
            f"{size['features_batch'] / mib:.1f} MiB, predict batch {size['predict_batch'] / mib:.1f} MiB"
        )
        print(f"{'code':40} {'step':9} {'peak MiB':>9} {'above base':>11} {'ratio':>7} {'seconds':>8}")
        for code in map(Path, a.code):
            rows = []
            pred_args = {
                "model_dir": files["model"],
                "inputs": files["prepared"],
                "batch_size": BATCH,
                "threads": a.threads,
            }
            base = {
                "features": run(code, "baseline_features")["peak"],
                "predict": run(code, "baseline_predict", **pred_args)["peak"],
            }
            outs = {s: str(folder / f"out_{s}.parquet") for s in SPLITS}
            if "features" in a.steps:
                feat = run(
                    code,
                    "features",
                    inputs=files["raw"],
                    outs=outs,
                    transform_out=str(folder / "t_out.json"),
                    derived=DERIVED,
                    targets=["m_jj"],
                )
                rows.append(("features", feat, base["features"], size["features_fit"]))
            if "predict" in a.steps:
                runs = {"predict": [], "bare": []}
                for _ in range(a.repeat):  # alternated, the fastest of each kept: a shared machine is noisy
                    runs["predict"].append(run(code, "predict", out=str(folder / "pred.parquet"), **pred_args))
                    runs["bare"].append(run(code, "bare", **pred_args))
                pred, bare = (min(runs[k], key=lambda r: r["seconds"]) for k in ("predict", "bare"))
                rows.append(("predict", pred, base["predict"], size["predict_batch"]))
                rows.append(("bare", bare, base["predict"], size["predict_batch"]))
            for step, r, b, need in rows:
                above = r["peak"] - b
                print(
                    f"{str(code)[-40:]:40} {step:9} {r['peak'] / mib:>9.0f} {above / mib:>11.0f} "
                    f"{above / need:>7.2f} {r['seconds']:>8.1f}"
                )
            if "predict" in a.steps:
                print(f"{'':40} predict / bare time: {pred['seconds'] / bare['seconds']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
