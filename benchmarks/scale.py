"""The whole workflow at 1M, 10M (and 100M) events: time and memory per step.

    python benchmarks/scale.py --events 1e6 1e7 [1e8] [--cores 2] [--out DIR] [--json FILE]

For each size it writes a config (a copy of ``config/config.yaml`` with
``data.toy.n_events`` set, ``select_models: [bdt, mlp]`` — the XGBoost BDT and
the PyTorch MLP with their default parameters —, tuning off, MLflow tracking on
as in a normal run; ``--no-tracking`` turns it off, ``--configfile`` merges
more over it) into ``<out>/events_<n>/`` and runs the real workflow there:
``python -m snakemake -s Snakefile --directory <out>/events_<n> --configfile
... --cores N``. Nothing is written inside the checkout.

Per step (one Snakemake job: ``train/bdt``, ``predict/mlp``, ``features``...)
it prints:

- ``wall s``: the job's wall time, from its ``benchmark:`` file
  (``results/benchmarks/<rule>[/<model>].tsv``, column ``s``);
- ``events/s``: the events the step handles over its wall time (generate,
  ingest, split, features: every event; train: the model's training events;
  predict: every event, three splits; evaluate, plots: the prediction table's
  rows; importance: the test split; summary_plots: the training split);
- ``peak MiB``: the step process's peak RSS — its kernel high-water mark
  (``VmHWM``), polled every 0.05 s from ``/proc`` by this script while the job
  runs, plus that of any process the step starts; or Snakemake's ``max_rss``
  when larger (Snakemake samples RSS every 0.5 s, and only every 30 s after the
  first 15 s, so alone it misses short peaks);
- ``base MiB``: the same step's peak in a run at ``--baseline-events`` (20k by
  default): the interpreter, the libraries and the model, what does not grow
  with the events (``--baseline-events 0``: no baseline run, base 0);
- ``needed MiB``: the in-memory size of the columns the step must hold at
  once by its algorithm, from the Parquet files' metadata (rows, columns,
  types; fixed-width types take their width, others their uncompressed size
  per row):

  * train: the model's feature matrix, ``n_train`` (train record) × features ×
    4 bytes (``dataset.feature_matrix`` builds float32 for every family);
  * generate: one chunk (``data.toy.chunk_size`` events) of the generated
    table (its random draws are made chunk by chunk: a chunk is the unit);
  * ingest: one chunk (``data.files.chunk_size`` events, ingest's default for
    the toy) of its output table, plus 8 bytes per event of the whole table:
    the event ids the uniqueness check sorts;
  * split: its largest batch (whole row groups gathered until they hold
    ``split.batch_events(n)`` = 262,144 events or more up to 16.8M events,
    four of the row groups of ``io.row_group_events``: what it reads at a time,
    ``split.row_group_batches``) of the events table, all its columns;
  * features: the fit's matrix, ``n_fit_events`` × numeric columns ×
    8 bytes (``transform.json``: ``features.fit`` builds float64 from the
    training split; the rest streams by row group);
  * predict: one batch (``evaluation.inference_batch_size`` events), or one
    row group of the prepared splits when larger (above 16.8M events in a
    split, ``io.row_group_events``: ``io.read_matrices`` holds a row group's
    batches), of the columns read from a prepared split (the model's
    features, ``event_id``, ``label``, ``weight``, ``truth_llr``);
  * importance: one record batch (65,536 events) of those columns from the
    test split, plus the events it scores (at most 20,000, its
    ``--max-events``) of them;
  * evaluate, plots: the prediction table's columns they read, every row:
    both hold the three splits' rows together (the train-vs-test KS test and
    score histograms need the train and test scores at once, and the train,
    validation and test AUCs each need all of a split's scores);
  * summary_plots: the test rows of each model's prediction columns the ROC
    and significance curves draw (``split``, ``label``, ``weight``,
    ``score``, ``truth_llr``), plus the training events the input figures
    draw (at most ``plots.MAX_SUMMARY_EVENTS`` = 1M, a subsample beyond) of
    ``label``, ``weight`` and the feature columns;
  * leaderboard, report_front, track, track_summary: none (they read no event
    table: ``-``);

  each capped at the input's rows;
- ``ratio``: (peak - base) / needed; target <= 1.5 (pass/fail); a step with
  no needed size has no target.

Then, per model: ``predict/bare``, the predict step's wall time over the bare
inference's, at the same size, both whole processes; target <= 1.3. Both are
timed after the workflow, alone and interleaved (``--repeats`` times, default 3;
the best of each): the step rerun by Snakemake (``--forcerun`` of its output,
its ``benchmark:`` time), then the bare script. Inside the workflow a step
shares the two cores with this script's polling and Snakemake's, and the
machine's load varies from minute to minute: 10-25 % on the same step.

- The step's time (its ``benchmark:`` file) is its process from start to
  exit: interpreter start, imports, loading the model, reading the event and
  feature columns of the three prepared splits batch by batch, filling
  missing feature values, inference, metering the test split, and writing
  the prediction table (Parquet) and the record.
- The bare time is ``benchmarks/bare_predict.py``, run as a fresh process and
  timed here from start to exit: interpreter start, importing the model's
  library, loading the model with it alone (``xgb.Booster().load_model`` on
  ``model.ubj``; the MLP rebuilt as a ``torch.nn.Sequential`` from
  ``model_config.json`` and ``model.pt``; a model it cannot rebuild, e.g.
  another torch family, is loaded with hepml's registry and scored with its
  ``predict_score``, and the ``bare`` text says so), and, batch by batch
  (``evaluation.inference_batch_size`` events), reading the model's feature
  columns of the three splits with pyarrow into a float32 matrix and scoring
  it (``Booster.inplace_predict``; the torch module under ``inference_mode``),
  with ``training.threads`` threads as the step. Not in it: the event
  columns, missing-value filling, energy metering, writing anything.

With ``--bare-fit`` (it takes twice as long as training, ``--repeats`` times), per
model the fit time of the train record (``fit_seconds``: the family's fit; in memory
no I/O, streamed the reading of the file's batches too; the train step rerun alone,
as predict is) over the bare library fit (a fresh process each time) of
``benchmarks/overhead.py`` on the same training events in memory, as many trees /
epochs as the family ran; target <= 1.05. For a streamed fit the target is judged
against the library streaming alike, and the ratio to the fit in memory is printed
beside it (what streaming costs, not hepml): for XGBoost :func:`bare_stream_xgboost`
(a ``DataIter`` over the Parquet batches binned into the record's kind of matrix, the
validation split evaluated every round), for the MLP :func:`bare_stream_torch` (a
check pass, then per epoch the row groups in a random order through a shuffled
buffer of the record's size into Adam steps, and the validation loss). Without it, see ``benchmarks/overhead.py``
(``family fit`` column).

With two sizes or more: for each consecutive pair, every step's time ratio
and the end-to-end one (``snakemake`` wall time), against the goal of 1.1 ×
the events ratio (<= 11 from 1M to 10M: linear).

``--json FILE`` writes every number above.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".hepml-scale"
MODELS = ["bdt", "mlp"]
TARGET_RSS = 1.5
TARGET_PREDICT = 1.3
TARGET_FIT = 1.05
#: the MLP parameters :func:`bare_stream_torch` builds its network and loss with: another
#: record (a --configfile) is not compared with it
BARE_MLP = {"activation": "relu", "optimizer": "adam", "dropout": 0.0, "l2": 0.0, "loss": "cross_entropy"}
#: what the bare streamed fit of each model is (printed beside its ratio)
STREAMED_BARE = {
    "bdt": "xgb.train on a matrix binned from a DataIter over the Parquet batches, validation evaluated",
    "mlp": "a torch loop over the row groups through a shuffled buffer, validation loss per epoch",
}
MiB = 1024.0 * 1024.0
# step-module argv -> rule name (plots/track take a sub-command)
RULE_OF = {
    ("plots", "model"): "plots",
    ("plots", "summary"): "summary_plots",
    ("track", "model"): "track",
    ("track", "summary"): "track_summary",
    ("report", None): "report_front",
}
FIXED = {"leaderboard", "report_front", "track", "track_summary"}
ORDER = [
    "generate",
    "ingest",
    "split",
    "features",
    "tune",
    "train",
    "predict",
    "evaluate",
    "importance",
    "plots",
    "summary_plots",
    "leaderboard",
    "report_front",
    "track",
    "track_summary",
    "apply",
]


# -- peak memory of the step processes ---------------------------------------------------
class PeakPoller(threading.Thread):
    """Polls the process tree under ``pid`` and keeps every process's VmHWM (bytes), parent
    and step (:func:`job_name` of its argv), until stopped. A process is keyed by (pid, start
    time), so a reused pid is another process; its argv is read at every poll until it names
    a step (a forked shell becomes the step's python when it execs). A process whose argv is
    still its parent's (forked, not yet exec'd) is not counted: its RSS is its parent's pages."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.hwm: dict[tuple, int] = {}
        self.parent: dict[tuple, tuple] = {}
        self.job: dict[tuple, str] = {}
        self.cmd: dict[tuple, bytes] = {}
        self._halt = threading.Event()

    @staticmethod
    def _key(pid: int) -> tuple | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return pid, int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _children(pid: int) -> list[int]:
        out = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    out += [int(c) for c in f.read().split()]
        except OSError:
            pass
        return out

    def _sample(self) -> None:
        todo = [(self.pid, self._key(self.pid))]
        while todo:
            pid, key = todo.pop()
            for k in self._children(pid):
                kk = self._key(k)
                if kk is not None:
                    self.parent[kk] = key
                    todo.append((k, kk))
            if pid == self.pid or key is None:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    self.cmd[key] = f.read()
                if self.cmd[key] == self.cmd.get(self.parent.get(key)):
                    continue  # forked, not yet exec'd: its RSS is its parent's pages (ldconfig's fork, 57 MiB)
                if key not in self.job:
                    name = job_name([a.decode(errors="replace") for a in self.cmd[key].split(b"\0") if a])
                    if name:
                        self.job[key] = name
                with open(f"/proc/{pid}/status") as f:
                    text = f.read()
                if "VmHWM:" in text:
                    kib = int(text.split("VmHWM:")[1].split()[0])
                    self.hwm[key] = max(self.hwm.get(key, 0), kib * 1024)
            except (OSError, ValueError, IndexError):
                pass

    def run(self) -> None:
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def steps(self) -> dict[str, int]:
        """Job name (``rule`` or ``rule/model``) -> peak bytes: the step process's VmHWM
        plus the largest VmHWM of the processes it started. A step's helpers run one at a
        time (``ldconfig`` from ``ctypes.util.find_library``, a compiler): summing them
        counted a process started at every batch once per batch (before glibc was looked
        up once, the predict step's ~400 ``ldconfig`` runs added ~1.2 GiB at 10M events)."""
        own: dict[str, int] = {}
        child: dict[str, int] = {}
        for key, hwm in self.hwm.items():
            k = key
            while k in self.parent and k not in self.job:
                k = self.parent[k]
            if k not in self.job:
                continue
            name = self.job[k]
            if k == key:
                own[name] = own.get(name, 0) + hwm
            else:
                child[name] = max(child.get(name, 0), hwm)
        return {name: own.get(name, 0) + child.get(name, 0) for name in {*own, *child}}


def _arg(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1 :]
    return None


def job_name(argv: list[str]) -> str | None:
    """``rule`` or ``rule/model`` of a step process (``python -m hepml_steps.<step> ...``), else None."""
    if "-m" not in argv:
        return None
    i = argv.index("-m")
    module = argv[i + 1] if i + 1 < len(argv) else ""
    if not module.startswith("hepml_steps."):
        return None
    step = module.split(".", 1)[1]
    sub = argv[i + 2] if i + 2 < len(argv) and not argv[i + 2].startswith("-") else None
    rule = RULE_OF.get((step, sub), RULE_OF.get((step, None), step))
    model = _arg(argv, "--model")
    if model is None and _arg(argv, "--model-dir"):
        model = Path(_arg(argv, "--model-dir")).name
    if rule in ("train", "predict", "evaluate", "importance", "plots", "track", "tune") and model:
        return f"{rule}/{model}"
    return rule


# -- Parquet metadata ----------------------------------------------------------------------
def table_info(path: Path) -> dict:
    """rows, largest row group, and in-memory bytes per row of each column."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    md, schema = pf.metadata, pf.schema_arrow
    rows = md.num_rows
    width = {}
    for field in schema:
        try:
            width[field.name] = max(field.type.bit_width / 8, 1.0)  # numpy bools take a byte
        except ValueError:  # variable width: uncompressed bytes per row
            size = 0
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                for c in range(rg.num_columns):
                    if rg.column(c).path_in_schema == field.name:
                        size += rg.column(c).total_uncompressed_size
            width[field.name] = size / max(rows, 1)
    group = max((md.row_group(g).num_rows for g in range(md.num_row_groups)), default=0)
    return {"rows": rows, "row_group": group, "width": width}


def batch_bytes(path: Path, rows: int | None = None, columns=None) -> float:
    """In-memory bytes of ``rows`` events (default: the largest row group) of ``columns``
    (default: all) of a Parquet file, ``rows`` capped at the file's."""
    info = table_info(path)
    n = min(info["row_group"] if rows is None else rows, info["rows"])
    cols = info["width"] if columns is None else {c: info["width"][c] for c in columns if c in info["width"]}
    return n * sum(cols.values())


def columns_bytes(path: Path, keep) -> float:
    """In-memory bytes per row of the columns of a Parquet file for which ``keep(name)`` holds."""
    return sum(w for c, w in table_info(path)["width"].items() if keep(c))


def needed(job: str, res: Path, cfg: dict) -> tuple[float | None, int | None]:
    """(needed bytes, events handled) of a job; see the module docstring."""
    from hepml_steps.columns import EVENT_ID, LABEL, PROB, SCORE, SPLIT, TRUTH_LLR, WEIGHT, is_feature
    from hepml_steps.evaluate import PREDICTION_COLUMNS
    from hepml_steps.io import ROW_GROUP_EVENTS
    from hepml_steps.plots import MAX_SUMMARY_EVENTS

    rule, _, model = job.partition("/")
    feat = {s: res / "features" / f"{s}.parquet" for s in ("train", "validation", "test")}
    n_all = cfg["data"]["toy"]["n_events"]
    batch = cfg["evaluation"]["inference_batch_size"]
    rows = {s: table_info(p)["rows"] for s, p in feat.items() if p.exists()}
    if rule == "generate":
        return batch_bytes(res / "data" / "toy.parquet", cfg["data"]["toy"]["chunk_size"]), n_all
    if rule == "ingest":
        from hepml_steps.inputs import CHUNK_SIZE  # the toy input is read with ingest's default chunk

        chunk = cfg["data"]["files"]["chunk_size"] if cfg["data"]["source"] == "files" else CHUNK_SIZE
        events = res / "data" / "events.parquet"
        return batch_bytes(events, chunk) + 8.0 * table_info(events)["rows"], n_all
    if rule == "split":
        from hepml_steps.io import parquet_file
        from hepml_steps.split import batch_events, row_group_batches

        events = res / "data" / "events.parquet"
        md = parquet_file(events).metadata
        batches = row_group_batches(parquet_file(events), batch_events(md.num_rows))
        return batch_bytes(events, max(sum(md.row_group(g).num_rows for g in b) for b in batches)), n_all
    if rule == "features":
        transform = json.loads((res / "features" / "transform.json").read_text())
        return transform["n_fit_events"] * len(transform["columns"]) * 8.0, sum(rows.values())
    if rule in ("train", "tune"):
        rec = json.loads((res / "records" / f"{model}.train.json").read_text())
        return rec["n_train"] * len(rec["features"]) * 4.0, rec["n_train"]
    if rule in ("predict", "importance"):
        meta = json.loads((res / "models" / model / "hepml_model.json").read_text())
        cols = [*meta["features"], "event_id", "label", "weight", "truth_llr"]
        if rule == "predict":  # a batch, or a row group when larger (read_matrices holds its batches)
            group = max(table_info(p)["row_group"] for p in feat.values() if p.exists())
            return batch_bytes(feat["test"], max(batch, group), cols), sum(rows.values())
        sample = batch_bytes(feat["test"], 20_000, cols)  # importance's --max-events default
        group = max(ROW_GROUP_EVENTS, table_info(feat["test"])["row_group"])  # a whole row group is read
        return batch_bytes(feat["test"], group, cols) + sample, rows["test"]
    if rule in ("evaluate", "plots"):
        pred = res / "predictions" / f"{model}.parquet"
        n = table_info(pred)["rows"]
        return n * columns_bytes(pred, lambda c: c in PREDICTION_COLUMNS or c.startswith(PROB)), n
    if rule == "summary_plots":
        preds = [
            res / "predictions" / f"{m}.parquet" for m in MODELS if (res / "predictions" / f"{m}.parquet").exists()
        ]
        drawn = (SPLIT, LABEL, WEIGHT, SCORE, TRUTH_LLR)
        test = sum(rows["test"] * columns_bytes(p, lambda c: c in drawn) for p in preds)
        inputs = min(rows["train"], MAX_SUMMARY_EVENTS) * columns_bytes(
            feat["train"], lambda c: c in (LABEL, WEIGHT) or (c != EVENT_ID and is_feature(c))
        )
        return test + inputs, rows["train"]
    return None, None


# -- the run ---------------------------------------------------------------------------------
def write_config(path: Path, n_events: int, threads: int | None, tracking: bool) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = "results"
    cfg["data"]["toy"]["n_events"] = int(n_events)
    cfg["select_models"] = list(MODELS)
    cfg["tuning"]["enabled"] = False
    cfg["tracking"]["enabled"] = bool(tracking)
    if threads:
        cfg["training"]["threads"] = int(threads)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def merged_config(cfg: dict, extra: list[str]) -> dict:
    """``cfg`` with the ``--configfile`` files merged over it (as Snakemake merges them)."""

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    for f in extra:
        cfg = merge(cfg, yaml.safe_load(Path(f).read_text()) or {})
    return cfg


def fresh_dir(path: Path) -> None:
    if path.exists():
        if not (path / MARKER).exists():
            raise SystemExit(f"scale: {path} exists and was not made by this script; choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by benchmarks/scale.py; removed by its next run\n")


def run_workflow(wd: Path, n_events: int, a) -> dict:
    """Run the workflow at ``n_events`` in ``wd``; return wall time, per-job peaks and config."""
    fresh_dir(wd)
    cfg = write_config(wd / "config.yaml", n_events, a.threads, a.tracking)
    cfg = merged_config(cfg, a.configfile)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(wd)]
    cmd += ["--configfile", str(wd / "config.yaml"), *a.configfile, "--cores", str(a.cores)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    log = wd / "snakemake.log"
    print(f"# {n_events:,} events: snakemake in {wd} (log {log.name})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=wd)
        poller = PeakPoller(proc.pid)
        poller.start()
        rc = proc.wait()
        poller.stop()
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"scale: snakemake failed ({rc}) at {n_events} events; {log}:\n{tail}")
    return {"wall_s": wall, "peaks": poller.steps(), "config": cfg}


def read_tsv(path: Path) -> dict:
    """The row of a Snakemake ``benchmark:`` file (s, max_rss MiB, ...)."""
    with open(path) as f:
        return next(csv.DictReader(f, delimiter="\t"))


def read_benchmarks(res: Path) -> dict[str, dict]:
    """Job name -> its benchmark row (s, max_rss MiB)."""
    rows = {}
    for path in sorted((res / "benchmarks").rglob("*.tsv")):
        rel = path.relative_to(res / "benchmarks").with_suffix("")
        rows[rel.as_posix()] = read_tsv(path)
    return rows


def _num(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def job_key(job: str) -> tuple:
    rule, _, model = job.partition("/")
    return (ORDER.index(rule) if rule in ORDER else len(ORDER), model)


def measure(wd: Path, n_events: int, a, base: dict[str, float] | None) -> dict:
    run = run_workflow(wd, n_events, a)
    res, cfg = wd / "results", run["config"]
    steps = {}
    for job, row in sorted(read_benchmarks(res).items(), key=lambda kv: job_key(kv[0])):
        wall = _num(row.get("s"))
        peak = max(run["peaks"].get(job, 0) / MiB, _num(row.get("max_rss")) or 0.0)
        need, events = needed(job, res, cfg)
        b = (base or {}).get(job, 0.0)
        ratio = (peak - b) / (need / MiB) if need else None
        steps[job] = {
            "wall_s": wall,
            "events": events,
            "events_per_s": events / wall if events and wall else None,
            "peak_rss_mib": peak,
            "vmhwm_mib": run["peaks"].get(job, 0) / MiB,
            "snakemake_max_rss_mib": _num(row.get("max_rss")),
            "base_rss_mib": b,
            "needed_mib": need / MiB if need else None,
            "ratio": ratio,
            "target": TARGET_RSS if need else None,
            "pass": (ratio <= TARGET_RSS) if ratio is not None else None,
        }
    return {"events": n_events, "wall_s": run["wall_s"], "steps": steps, "config": cfg, "dir": str(wd)}


# -- bare inference ---------------------------------------------------------------------------
def bare_predict(res: Path, model: str, batch: int, threads: int) -> tuple[float, str]:
    """Wall seconds of ``benchmarks/bare_predict.py`` on the model, run as a fresh process
    (start to exit, see the module docstring); and what it timed (its ``how``).

    Raises
    ------
    SystemExit
        The bare script failed.
    """
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bare_predict.py"), str(res), model]
    cmd += ["--batch-size", str(batch), "--threads", str(threads)]
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)  # for the fallback
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"scale: bare_predict.py failed ({out.returncode}) for {model}:\n{out.stderr[-3000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])["how"]


def bare_fit(res: Path, model: str, threads: int) -> tuple[float, str, float | None]:
    """(bare library fit seconds, what was timed, bare streamed fit seconds or None): the
    bare fit of ``benchmarks/overhead.py`` (XGBoost ``xgb.train``
    on a DMatrix; a torch loop with Adam) on the same training events and features, in
    memory, as many trees / epochs as the family ran, unit weights; for a fit the record
    says was streamed, first (so that, as in the train step, it pays torch's first
    optimizer, which imports ``torch._dynamo``: about 1 s) :func:`bare_stream_xgboost` or
    :func:`bare_stream_torch`, the same work done with the library alone: the file read
    inside the timing, as hepml's is."""
    import importlib.util

    import numpy as np
    import pyarrow.parquet as pq

    spec = importlib.util.spec_from_file_location("hepml_overhead", ROOT / "benchmarks" / "overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    rec = json.loads((res / "records" / f"{model}.train.json").read_text())
    cols, params, info = rec["features"], rec["params"], rec.get("info", {})
    streamed = info.get("streamed")
    stream_s = None
    if rec["family"] == "xgboost":
        trees = int(info.get("n_trees") or params["n_estimators"])
        p = {"n_estimators": trees, "max_depth": params["max_depth"], "learning_rate": params["learning_rate"]}
        if streamed:
            external = streamed["matrix"].startswith("external")
            stream_s = bare_stream_xgboost(res, cols, p, int(params.get("max_bin", 256)), threads, external)
        fit, _ = overhead.bare_xgboost(p, threads)
        how = f"xgb.train, {trees} trees"
    else:
        epochs = int(info.get("epochs_run") or params["epochs"])
        if streamed and rec.get("task") == "classification" and all(params.get(k) == v for k, v in BARE_MLP.items()):
            stream_s = bare_stream_torch(res, cols, {**params, "epochs": epochs}, streamed["buffer_events"], threads)
        keys = ("hidden_layers", "batch_size", "learning_rate")
        fit, _ = overhead.bare_torch({**{k: params[k] for k in keys}, "epochs": epochs}, threads)
        how = f"torch loop, {epochs} epochs"
    table = pq.read_table(res / "features" / "train.parquet", columns=[*cols, "label"])
    X = np.column_stack([table.column(c).to_numpy().astype(np.float32, copy=False) for c in cols])
    y = table.column("label").to_numpy()
    del table
    t0 = time.perf_counter()
    fit(X, y, np.ones(len(y)))
    bare_s = time.perf_counter() - t0
    return bare_s, how, stream_s


def bare_fit_child(res: Path, model: str, threads: int) -> tuple[float, str, float | None]:
    """(bare in-memory fit seconds, what was timed, bare streamed seconds or None) of
    :func:`bare_fit`, run in a fresh process (``--bare-fit-child``): it pays the imports the
    train step pays, once."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-fit-child", str(res), model, str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"scale: the bare fit failed ({out.returncode}) for {model}:\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["bare_s"], got["how"], got["stream_s"]


def rerun_job(wd: Path, a, target: str, written: str) -> None:
    """Run the one job that writes ``target`` (relative to ``wd``) again, alone:
    ``snakemake TARGET --forcerun TARGET`` (its output is rewritten; nothing downstream runs).

    Raises SystemExit when Snakemake fails or leaves ``written`` (relative to ``wd``: the
    file the caller reads the new time from) as it was: no stale time is reported."""
    before = (wd / written).stat().st_mtime_ns if (wd / written).exists() else None
    cmd = [sys.executable, "-m", "snakemake", target, "-s", str(ROOT / "Snakefile"), "--directory", str(wd)]
    cmd += ["--configfile", str(wd / "config.yaml"), *a.configfile, "--cores", str(a.cores), "--forcerun", target]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=wd)
    if out.returncode != 0:
        raise SystemExit(f"scale: rerunning {target} failed ({out.returncode}):\n{out.stdout[-3000:]}")
    if not (wd / written).exists() or (wd / written).stat().st_mtime_ns == before:
        raise SystemExit(f"scale: rerunning {target} did not rewrite {written}:\n{out.stdout[-3000:]}")


def compare_alone(wd: Path, a, model: str, threads: int, batch: int) -> dict:
    """The predict (and with ``--bare-fit`` the fit) comparisons of ``model``, timed alone and
    interleaved ``a.repeats`` times: {"predict": {...}, "fit": {...} or None}, best of each."""
    res = wd / "results"
    step_s, bare_s, fit_s, bare_fit_s, stream_s, how_p, how_f = [], [], [], [], [], None, None
    for _ in range(a.repeats):
        tsv = f"results/benchmarks/predict/{model}.tsv"
        rerun_job(wd, a, f"results/predictions/{model}.parquet", tsv)
        step_s.append(_num(read_tsv(wd / tsv).get("s")))
        t, how_p = bare_predict(res, model, batch, threads)
        bare_s.append(t)
        if a.bare_fit:
            rerun_job(wd, a, f"results/records/{model}.train.json", f"results/records/{model}.train.json")
            fit_s.append(json.loads((res / "records" / f"{model}.train.json").read_text())["fit_seconds"])
            t, how_f, st = bare_fit_child(res, model, threads)
            bare_fit_s.append(t)
            if st is not None:
                stream_s.append(st)
    out = {
        "predict": {
            "step_s": min(step_s),
            "bare_s": min(bare_s),
            "bare": how_p,
            "ratio": min(step_s) / min(bare_s),
            "target": TARGET_PREDICT,
            "runs": {"step_s": step_s, "bare_s": bare_s},
        },
        "fit": None,
    }
    if a.bare_fit:
        out["fit"] = {
            "fit_s": min(fit_s),
            "bare_s": min(bare_fit_s),
            "bare": how_f,
            "ratio": min(fit_s) / min(bare_fit_s),
            "target": TARGET_FIT,
            "bare_stream_s": min(stream_s) if stream_s else None,
            "ratio_stream": min(fit_s) / min(stream_s) if stream_s else None,
            "runs": {"fit_s": fit_s, "bare_s": bare_fit_s, "bare_stream_s": stream_s},
        }
    return out


def bare_stream_xgboost(res: Path, cols: list, p: dict, max_bin: int, threads: int, external: bool) -> float:
    """Seconds of XGBoost alone doing what hepml's streamed fit does: an ``xgboost.DataIter``
    over pyarrow's record batches of the training split (pages of ``xgb.PAGE_BYTES`` of float32
    features, as hepml hands them), binned into an ``ExtMemQuantileDMatrix`` (disk cache in a
    temporary directory) or a ``QuantileDMatrix`` as the record says, with the event weights,
    read on the calling thread; the validation split binned with its bins (``ref``) and
    evaluated every round, ``p["n_estimators"]`` rounds."""
    import tempfile

    import numpy as np
    import pyarrow.parquet as pq
    import xgboost as xgb

    from hepml_steps.families.xgb import PAGE_BYTES

    class Batches(xgb.DataIter):
        def __init__(self, path, **kw):
            self.pf, self.batches = pq.ParquetFile(path, pre_buffer=False), None  # as hepml reads
            super().__init__(**kw)

        def reset(self):
            self.batches = None

        def next(self, input_data):
            if self.batches is None:
                rows = max(1, PAGE_BYTES // (4 * len(cols)))
                self.batches = self.pf.iter_batches(rows, columns=[*cols, "label", "weight"], use_threads=False)
            batch = next(self.batches, None)
            if batch is None:
                return False
            X = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in cols]).astype(np.float32)
            y, w = (batch.column(c).to_numpy(zero_copy_only=False) for c in ("label", "weight"))
            input_data(data=X, label=y, weight=w)
            return True

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        it = Batches(
            res / "features" / "train.parquet", cache_prefix=os.path.join(cache, "train") if external else None
        )
        dtrain = (xgb.ExtMemQuantileDMatrix if external else xgb.QuantileDMatrix)(it, max_bin=max_bin, nthread=threads)
        dval = xgb.QuantileDMatrix(Batches(res / "features" / "validation.parquet"), ref=dtrain, nthread=threads)
        params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": p["max_depth"]}
        params.update(eta=p["learning_rate"], max_bin=max_bin, nthread=threads, seed=0, eval_metric="logloss")
        xgb.train(params, dtrain, num_boost_round=p["n_estimators"], evals=[(dval, "validation")], verbose_eval=False)
        del dtrain, dval
    return time.perf_counter() - t0


def bare_stream_torch(res: Path, cols: list, params: dict, buffer_events: int, threads: int) -> float:
    """Seconds of torch alone doing what hepml's streamed MLP fit of a classifier does
    (``fit_stream``): a pass over the training split's row groups (pyarrow) checking that the
    features are finite and the labels 0 or 1 (hepml's first pass checks each chunk; the
    features step has standardized the inputs); then ``params["epochs"]`` epochs, each reading
    the row groups in a random order into a buffer of ``buffer_events`` events that is
    shuffled and cut into ``batch_size`` mini-batches of Adam steps on the event-weighted
    binary cross-entropy (a partial last batch carried into the next fill), followed by the
    validation split's weighted loss, evaluated row group by row group without gradients.
    Not done here but done by hepml: the initial training and validation losses, the
    validation AUC per epoch, the checks of each validation chunk and the loss buffers.
    The network and loss are those of the MLP's defaults (ReLU, Adam, no dropout, no l2,
    cross-entropy): :func:`bare_fit` compares only a record that has them."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from torch import nn

    def groups(path, order=None):
        pf = pq.ParquetFile(path, pre_buffer=False)
        for rg in range(pf.num_row_groups) if order is None else order(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=[*cols, "label", "weight"], use_threads=False)
            X = np.column_stack([t.column(c).to_numpy() for c in cols]).astype(np.float32, copy=False)
            yield X, t.column("label").to_numpy().astype(np.float32), t.column("weight").to_numpy().astype(np.float32)

    t0 = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    train, val = res / "features" / "train.parquet", res / "features" / "validation.parquet"
    for X, y, _ in groups(train):
        if not (np.isfinite(X).all() and np.isin(y, (0, 1)).all()):
            raise SystemExit(f"scale: {train} has non-finite features or labels other than 0 and 1")
    sizes = [len(cols), *params["hidden_layers"], 1]
    layers: list = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(net.parameters(), lr=params.get("learning_rate", 1e-3))
    bce = nn.functional.binary_cross_entropy_with_logits
    bs = int(params["batch_size"])
    bufs = None

    def descend(idx):
        xb, yb, wb = (torch.from_numpy(b[idx]) for b in bufs)
        loss = (bce(net(xb)[:, 0], yb, reduction="none") * wb).sum() / wb.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(int(params["epochs"])):
        net.train()
        held = 0
        for X, y, w in groups(train, rng.permutation):
            if bufs is None:
                bufs = [np.empty((buffer_events, *a.shape[1:]), np.float32) for a in (X, y, w)]
            start = 0
            while start < len(X):
                take = min(len(X) - start, buffer_events - held)
                for b, a in zip(bufs, (X, y, w)):
                    b[held : held + take] = a[start : start + take]
                held, start = held + take, start + take
                if held < buffer_events:
                    continue
                order = rng.permutation(held)
                stop = held - held % bs
                for s in range(0, stop, bs):
                    descend(order[s : s + bs])
                rest = order[stop:]
                for b in bufs:
                    b[: len(rest)] = b[rest]
                held = len(rest)
        order = rng.permutation(held)
        for s in range(0, held, bs):
            descend(order[s : s + bs])
        net.eval()
        with torch.no_grad():
            lw = ww = 0.0
            for X, y, w in groups(val):
                for s in range(0, len(X), 1024):
                    xb, yb, wb = (torch.from_numpy(a[s : s + 1024]) for a in (X, y, w))
                    lw += float((bce(net(xb)[:, 0], yb, reduction="none") * wb).sum())
                    ww += float(wb.sum())
    return time.perf_counter() - t0


# -- printing ---------------------------------------------------------------------------------
def _f(x, fmt: str, none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def print_table(m: dict) -> None:
    print(f"\n## {m['events']:,} events (end to end {m['wall_s']:.1f} s; {m['dir']})")
    head = (
        f"{'step':<22} {'wall s':>8} {'events/s':>10} {'peak MiB':>9} {'base MiB':>9} {'needed MiB':>10}"
        f" {'ratio':>6} {'target':>6}  result"
    )
    print(head)
    print("-" * len(head))
    for job, s in m["steps"].items():
        verdict = "-" if s["pass"] is None else ("pass" if s["pass"] else "FAIL")
        print(
            f"{job:<22} {_f(s['wall_s'], '8.2f'):>8} {_f(s['events_per_s'], '10.3g'):>10}"
            f" {s['peak_rss_mib']:>9.0f} {s['base_rss_mib']:>9.0f} {_f(s['needed_mib'], '10.1f'):>10}"
            f" {_f(s['ratio'], '6.2f'):>6} {_f(s['target'], '6.2f'):>6}  {verdict}"
        )
    if m.get("predict_vs_bare"):
        n = len(next(iter(m["predict_vs_bare"].values()))["runs"]["step_s"])
        print(f"rerun alone, step and bare interleaved, best of {n} (all runs in --json):")
    for model, p in m.get("predict_vs_bare", {}).items():
        verdict = "pass" if p["ratio"] <= TARGET_PREDICT else "FAIL"
        print(
            f"predict/{model}: step {p['step_s']:.2f} s, bare {p['bare_s']:.2f} s ({p['bare']}):"
            f" ratio {p['ratio']:.2f} (target <= {TARGET_PREDICT})  {verdict}"
        )
    for model, f in m.get("fit_vs_bare", {}).items():
        if f.get("bare_stream_s") is not None:  # a streamed fit: its overhead over the library streaming alike
            verdict = "pass" if f["ratio_stream"] <= TARGET_FIT else "FAIL"
            print(
                f"train/{model}: streamed fit {f['fit_s']:.2f} s (record), bare streamed {f['bare_stream_s']:.2f} s"
                f" ({STREAMED_BARE.get(model, 'the library streaming alike')}):"
                f" ratio {f['ratio_stream']:.2f} (target <= {TARGET_FIT})  {verdict};"
                f" against the bare fit in memory ({f['bare']}, {f['bare_s']:.2f} s): {f['ratio']:.2f}"
            )
            continue
        verdict = "pass" if f["ratio"] <= TARGET_FIT else "FAIL"
        print(
            f"train/{model}: fit {f['fit_s']:.2f} s (record), bare {f['bare_s']:.2f} s ({f['bare']}):"
            f" ratio {f['ratio']:.2f} (target <= {TARGET_FIT})  {verdict}"
        )
    if "fit_vs_bare" not in m:
        print("fit vs bare library fit (target <= 1.05): --bare-fit, or benchmarks/overhead.py ('family fit')")


def time_ratios(runs: list[dict]) -> list[dict]:
    out = []
    for a, b in zip(runs[:-1], runs[1:]):
        scale = b["events"] / a["events"]
        goal = 1.1 * scale
        steps = {}
        for job, s in b["steps"].items():
            t0 = a["steps"].get(job, {}).get("wall_s")
            if t0 and s["wall_s"] is not None:
                r = s["wall_s"] / t0
                steps[job] = {"ratio": r, "pass": r <= goal}
        e2e = b["wall_s"] / a["wall_s"]
        out.append(
            {
                "from": a["events"],
                "to": b["events"],
                "goal": goal,
                "steps": steps,
                "end_to_end": {"ratio": e2e, "pass": e2e <= goal},
            }
        )
    return out


def print_ratios(ratios: list[dict]) -> None:
    for r in ratios:
        print(f"\n## time ratio {r['to']:,} / {r['from']:,} events (goal <= {r['goal']:.1f}: linear)")
        for job, s in [*r["steps"].items(), ("end to end", r["end_to_end"])]:
            print(f"{job:<22} {s['ratio']:>8.2f}  {'pass' if s['pass'] else 'FAIL'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=float, nargs="+", default=[1e6, 1e7], help="sizes (events), e.g. 1e6 1e7 1e8")
    p.add_argument("--baseline-events", type=float, default=20_000, help="the baseline run's size (0: none)")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores")
    p.add_argument("--threads", type=int, help="training.threads (default: the config's)")
    p.add_argument("--out", help="scratch folder (default: a new temporary one, kept)")
    p.add_argument("--configfile", action="append", default=[], help="more config merged over the generated one")
    p.add_argument("--no-tracking", dest="tracking", action="store_false", help="tracking.enabled: false")
    p.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare-inference timing")
    p.add_argument("--bare-fit", action="store_true", help="also time the bare library fit (as long as train)")
    p.add_argument("--repeats", type=int, default=3, help="predict and fit comparisons: best of this many")
    p.add_argument("--bare-fit-child", nargs=3, metavar=("RES", "MODEL", "THREADS"), help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write every number to this JSON file")
    a = p.parse_args(argv)
    if a.bare_fit_child:  # one bare fit in this fresh process (bare_fit_child)
        res, model, threads = a.bare_fit_child
        bare_s, how, stream_s = bare_fit(Path(res), model, int(threads))
        print(json.dumps({"bare_s": bare_s, "how": how, "stream_s": stream_s}))
        return 0
    if a.bare_fit and not a.bare:
        p.error("--bare-fit needs the bare comparisons (drop --no-bare)")
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    a.configfile = [str(Path(f).resolve()) for f in a.configfile]
    sizes = sorted({int(n) for n in a.events})
    out = Path(a.out).resolve() if a.out else Path(tempfile.mkdtemp(prefix="hepml-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    base = None
    if a.baseline_events:
        b = measure(out / f"events_{int(a.baseline_events)}", int(a.baseline_events), a, None)
        base = {job: s["peak_rss_mib"] for job, s in b["steps"].items()}
    runs = []
    for n in sizes:
        m = measure(out / f"events_{n}", n, a, base)
        if a.bare:
            m["predict_vs_bare"], m["fit_vs_bare"] = {}, {}
            threads = m["config"]["training"]["threads"]
            batch = m["config"]["evaluation"]["inference_batch_size"]
            for model in MODELS:
                if f"predict/{model}" in m["steps"]:
                    got = compare_alone(Path(m["dir"]), a, model, threads, batch)
                    m["predict_vs_bare"][model] = got["predict"]
                    if got["fit"]:
                        m["fit_vs_bare"][model] = got["fit"]
            if not a.bare_fit:
                del m["fit_vs_bare"]
        print_table(m)
        runs.append(m)
    ratios = time_ratios(runs)
    print_ratios(ratios)
    if a.json:
        report = {"runs": [{k: v for k, v in r.items() if k != "config"} for r in runs], "time_ratios": ratios}
        report["baseline_rss_mib"] = base
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
