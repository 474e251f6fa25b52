"""Every failure of a step CLI is one line naming the culprit (hepml_steps.cli, errors).

Each probe runs a step's CLI on a bad input and checks: exit status 1, the last
line of stderr is ``hepml: error: <culprit>: ...`` without a traceback, and no
advice to load a file unsafely anywhere (log included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numexpr
import numpy as np
import pandas as pd
import pytest

from hepml_steps import cli, expressions, features, ingest, predict, train
from hepml_steps.errors import ConfigError, StorageError, describe
from hepml_steps.io import write_parquet

from .conftest import ROOT, make_events

UNSAFE = re.compile(r"weights_only`?\s*(=|set to)\s*`?False|allow_pickle=`|safe_globals|unsafely", re.IGNORECASE)
SPLITS = ("train", "validation", "test")


def last_line(rc: int, stderr: str, *culprits) -> str:
    """Check the one-line error contract; return the line."""
    assert rc == 1, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("hepml: error: "), stderr
    assert "Traceback" not in line and not UNSAFE.search(stderr), stderr
    for c in culprits:
        assert str(c) in line, line
    return line


def run_cli(step: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"hepml_steps.{step}", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def call_main(main, argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# --------------------------------------------------------------------------- ingest


def _ingest_argv(path, out):
    return ["--inputs-json", json.dumps([{"path": str(path), "label": 1}]), "--out", out]


def _root_file(path, kind: str, n: int = 3000):
    import uproot

    rng = np.random.default_rng(0)
    arrays = {"pt": rng.exponential(30.0, n), "eta": rng.normal(size=n)}
    with uproot.recreate(path) as f:
        if kind == "rntuple":
            f["Events"] = arrays  # uproot 5.7 writes a dict as an RNTuple
        else:
            f.mktree("events", {k: v.dtype for k, v in arrays.items()})
            if n:
                f["events"].extend(arrays)
    return path


@pytest.mark.parametrize("kind", ["ttree", "rntuple"])
def test_truncated_root_file_is_named(kind, tmp_path):
    path = _root_file(tmp_path / f"{kind}.root", kind)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    proc = run_cli("ingest", *_ingest_argv(path, tmp_path / "out.parquet"))
    last_line(proc.returncode, proc.stderr, path)
    assert "Traceback" in proc.stderr  # the library's traceback is in the log, above the line
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("content", [b"not a parquet file at all", "truncated"])
def test_corrupt_parquet_is_named(content, tmp_path, capsys):
    path = tmp_path / "bad.parquet"
    make_events(200).to_parquet(path, index=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    rc, err = call_main(ingest.main, _ingest_argv(path, tmp_path / "out.parquet"), capsys)
    assert "cannot read as parquet" in last_line(rc, err, path)


@pytest.mark.parametrize("kind", ["csv", "ttree", "parquet"])
def test_empty_input_says_no_events(kind, tmp_path, capsys):
    if kind == "csv":
        path = tmp_path / "header_only.csv"
        path.write_text("label,weight,f0,f1\n")
    elif kind == "ttree":
        path = _root_file(tmp_path / "empty.root", "ttree", n=0)
    else:
        path = tmp_path / "empty.parquet"
        make_events(0).to_parquet(path, index=False)
    rc, err = call_main(ingest.main, _ingest_argv(path, tmp_path / "out.parquet"), capsys)
    assert last_line(rc, err, path).endswith(": no events")


def test_disk_full_names_output_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.parquet"
    make_events(200).to_parquet(src, index=False)
    out = tmp_path / "results" / "events.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the previous good output")

    import pyarrow.parquet as pq

    write_table = pq.ParquetWriter.write_table

    def full_disk(self, table, *args, **kw):  # ingest writes its table row group by row group
        write_table(self, table.slice(0, 10), *args, **kw)
        raise OSError(28, "No space left on device")  # ENOSPC names no path

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full_disk)
    argv = ["--inputs-json", json.dumps([{"path": str(src)}]), "--out", out, "--label-column", "label"]
    rc, err = call_main(ingest.main, argv, capsys)
    assert last_line(rc, err) == f"hepml: error: {out}: No space left on device"
    assert out.read_bytes() == b"the previous good output"
    assert sorted(p.name for p in out.parent.iterdir()) == ["events.parquet"]  # no temporary file left


def test_write_error_is_storage_error_naming_destination(tmp_path, monkeypatch):
    def full_disk(self, path, **kw):
        raise OSError(28, "No space left on device", str(path))  # the temporary file's name must not leak

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(StorageError, match=re.escape(f"{tmp_path / 'x.parquet'}: No space left on device")):
        write_parquet(tmp_path / "x.parquet", make_events(10))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- model files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Splits and one small trained model per on-disk format."""
    d = tmp_path_factory.mktemp("models")
    splits = {}
    for i, s in enumerate(SPLITS):
        splits[s] = d / f"{s}.parquet"
        make_events(400, seed=20 + i).to_parquet(splits[s], index=False)
    for family, params in [
        ("mlp", {"epochs": 1, "hidden_layers": [4]}),
        ("xgboost", {"n_estimators": 3}),
        ("logistic_regression", {}),
        ("knn", {"n_neighbors": 5}),
    ]:
        train.train(
            str(splits["train"]),
            str(splits["validation"]),
            family,
            {"family": family, "params": params},
            str(d / family),
            str(d / f"{family}.json"),
        )
    return d, splits


def _swapped(trained, tmp_path, family: str, file: str, write) -> tuple[list[str], os.PathLike]:
    d, splits = trained
    model = tmp_path / family
    shutil.copytree(d / family, model)
    write(model / file)
    argv = ["--model-dir", model, *[a for s in SPLITS for a in (f"--{s}", splits[s])], "--out", tmp_path / "p.parquet"]
    return [str(a) for a in argv], model / file


class _Payload:
    """A pickle that would call os.getpid on load."""

    def __reduce__(self):
        return os.getpid, ()


def test_swapped_torch_weights_with_a_payload_is_refused_by_name(trained, tmp_path):
    import torch

    argv, weights = _swapped(trained, tmp_path, "mlp", "model.pt", lambda p: torch.save({"w": _Payload()}, p))
    proc = run_cli("predict", *argv)
    line = last_line(proc.returncode, proc.stderr, weights)
    assert "not a hepml model weights file" in line and "refused to unpickle" in line
    assert "weights_only=False" not in proc.stderr and "Traceback" in proc.stderr  # the log keeps the trace


@pytest.mark.parametrize(
    "family, file, payload",
    [
        ("mlp", "model.pt", "namespace"),
        ("mlp", "model.pt", b"garbage" * 10),
        ("xgboost", "model.ubj", b"garbage" * 10),
        ("logistic_regression", "model.skops", b"garbage" * 10),
        ("knn", "model.npz", b"garbage" * 10),
        ("knn", "model.npz", "object_array"),
    ],
)
def test_garbage_model_file_is_named(family, file, payload, trained, tmp_path, capsys):
    def write(path):
        if payload == "namespace":
            import torch

            torch.save(argparse.Namespace(x=1), path)  # a pickled object, not a state dict
        elif payload == "object_array":
            np.savez(path, X=np.array([{"a": 1}], dtype=object), y=np.zeros(1), w=np.zeros(1))
        else:
            path.write_bytes(payload)

    argv, path = _swapped(trained, tmp_path, family, file, write)
    rc, err = call_main(predict.main, argv, capsys)
    line = last_line(rc, err, path)
    assert "Stack trace" not in line and "[bt]" not in line  # XGBoost's native trace stays out


# --------------------------------------------------------------------------- features.derived


@pytest.fixture
def splits(tmp_path):
    paths = {}
    for i, s in enumerate(SPLITS):
        df = make_events(300, seed=i).rename(columns={"f0": "j1_pt", "f1": "j2_pt"})
        df["j1_pt"] = df["j1_pt"].abs() * 50.0
        paths[s] = tmp_path / f"{s}.parquet"
        df.to_parquet(paths[s], index=False)
    return paths


def _features_argv(splits, tmp_path, derived: dict) -> list[str]:
    argv = [a for s in SPLITS for a in (f"--{s}", splits[s], f"--out-{s}", tmp_path / f"out_{s}.parquet")]
    return [str(a) for a in argv] + [
        "--transform",
        str(tmp_path / "t.json"),
        "--params",
        json.dumps({"derived": derived}),
    ]


def test_sqrt_of_a_column_works(splits, tmp_path, capsys):
    rc, err = call_main(features.main, _features_argv(splits, tmp_path, {"r": "sqrt(j1_pt)"}), capsys)
    assert rc == 0, err
    out, src = pd.read_parquet(tmp_path / "out_test.parquet"), pd.read_parquet(splits["test"])
    t = json.loads((tmp_path / "t.json").read_text())
    r = out["r"] * t["std"][t["columns"].index("r")] + t["mean"][t["columns"].index("r")]
    assert np.allclose(r, np.sqrt(src["j1_pt"]), rtol=1e-5)


@pytest.mark.parametrize(
    "expr, reason",
    [
        ("j1_pt & j2_pt", "'&' applies to booleans"),
        ("j1_pt | 1", "'|' applies to booleans"),
        ("~j1_pt", "'~' applies to booleans"),
        ("sqr(j1_pt)", "unknown function 'sqr' (did you mean 'sqrt'?)"),
        ("j3_pt + 1", "unknown column 'j3_pt'"),
        ("__import__('os')", "unknown function '__import__'"),
        ("j1_pt.real", "attribute access '.real' is not allowed"),
        ("j1_pt > 1 and j2_pt > 1", "'and' is not supported"),
        ("0 < j1_pt < 1", "chained comparison"),
        ("sum(j1_pt)", "reduction"),
        ("j1_pt ** 100", "exponent too large"),
        ("((9 ** 64) ** 64) ** 64", "exponent too large"),
        ("j1_pt + 1/0", "division by zero"),
    ],
)
def test_bad_derived_expression_names_the_column(expr, reason, splits, tmp_path, capsys):
    rc, err = call_main(features.main, _features_argv(splits, tmp_path, {"x": expr}), capsys)
    line = last_line(rc, err, "features.derived.x")
    assert reason in line
    assert not (tmp_path / "t.json").exists()


def test_corrupt_split_is_named_by_the_features_step(splits, tmp_path, capsys):
    data = splits["validation"].read_bytes()
    splits["validation"].write_bytes(data[: len(data) // 3])
    rc, err = call_main(features.main, _features_argv(splits, tmp_path, {}), capsys)
    assert "cannot read as parquet" in last_line(rc, err, splits["validation"])


def test_power_tower_fails_fast(splits, tmp_path):
    proc = run_cli("features", *_features_argv(splits, tmp_path, {"x": "j1_pt ** 9 ** 9 ** 9"}), timeout=60)
    assert "exponent too large" in last_line(proc.returncode, proc.stderr, "features.derived.x")


def test_checker_knows_every_numexpr_function():
    """Each numexpr function is either allowed (with its arity) or refused with a reason."""
    known = set(expressions.FUNCTIONS) | set(expressions.REFUSED) | {"where"}
    assert known == set(numexpr.expressions.functions)


@pytest.mark.parametrize("fn", sorted(expressions.FUNCTIONS))
def test_allowed_functions_really_evaluate(fn):
    n_args, kind = expressions.FUNCTIONS[fn]
    expr = f"{fn}({', '.join(['a', 'b'][:n_args])})"
    assert expressions.check_expression("x", expr, ["a", "b"]) == ["a", "b"][:n_args]
    a, b = np.linspace(0.1, 0.9, 7), np.linspace(0.2, 0.8, 7)
    out = numexpr.evaluate(expr, local_dict={"a": a, "b": b}, global_dict={})
    assert out.shape == a.shape and (out.dtype == bool) == (kind == expressions.BOOLEAN)


@pytest.mark.parametrize(
    "expr",
    [
        "(a > 1) & (b < 0) | ~(a == b)",
        "where(a > b, a, b)",
        "(a > 0.5) * b",
        "a ** -2 + b ** (1/3)",
        "-a % 2",
        "isnan(a) | isinf(b)",
        "sqrt(a**2 + b**2)",
        "arctan2(a, b) * 2",
    ],
)
def test_accepted_expressions_evaluate_in_numexpr(expr):
    expressions.check_expression("x", expr, ["a", "b"])
    a, b = np.linspace(0.1, 0.9, 7), np.linspace(0.2, 0.8, 7)
    assert numexpr.evaluate(expr, local_dict={"a": a, "b": b}, global_dict={}).shape == a.shape


@pytest.mark.parametrize(
    "expr, reason",
    [
        ("a" + " + a" * 400, "too long"),
        ("-" * 100 + "a", "too large"),
        ("a ** (b ** 2)", "holds a power"),
        ("where(a, 1, 0)", "needs a comparison"),
        ("sqrt(a > 1)", "applies to numbers"),
        ("(a > 1) + (b > 1)", "two booleans"),
        ("arctan2(a)", "takes 2"),
        ("maximum(a, b=1)", "takes 2"),
    ],
)
def test_checker_refuses(expr, reason):
    with pytest.raises(ConfigError, match=re.escape(reason)):
        expressions.check_expression("x", expr, ["a", "b"])


# --------------------------------------------------------------------------- the CLI wrapper


def _step(call):
    def build(p):
        pass

    return cli.run(build, lambda a: call(), [])


def test_unexpected_error_is_one_line_naming_the_step(capsys, caplog):
    def boom():
        raise RuntimeError("first line\n  second line")

    assert _step(boom) == 1
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "hepml: error: test_errors: RuntimeError: first line second line"
    )
    assert "Traceback" in caplog.text and "second line" in caplog.text


def test_oserror_names_its_file(capsys):
    def denied():
        raise PermissionError(13, "Permission denied", "/data/x.root")

    assert _step(denied) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "hepml: error: /data/x.root: Permission denied"


def test_finished_step_ends_with_its_one_line_summary(capsys):
    def build(p):
        p.add_argument("--model")

    ok = cli.run(build, lambda a: {"auc": 0.9}, ["--model", "bdt"], summary=lambda r: f"auc {r['auc']}\nmore")
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ok == 0
    assert re.fullmatch(r"hepml: test_errors bdt: done in \d+\.\d s, peak RSS \d+ MiB; auc 0\.9 more", last), last


def test_a_failing_summary_never_fails_the_step(capsys):
    assert cli.run(lambda p: None, lambda a: None, [], summary=lambda r: r["missing"]) == 0
    assert re.fullmatch(r"hepml: test_errors: done in \S+ s, peak RSS \d+ MiB", capsys.readouterr().err.strip())


def test_describe_is_one_line_without_unsafe_advice():
    msg = (
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
        "succeed.\n\tWeightsUnpickler error: Unsupported global: GLOBAL argparse.Namespace was not allowed"
    )
    assert describe(ValueError(msg)) == "refused to unpickle arbitrary objects (it asks for argparse.Namespace)"
    assert describe(ValueError("a\n\n  b")) == "a b"
    assert (
        describe(ValueError("[14:26:47] /src/c_api.cc:12: Check failed: x\nStack trace:\n [bt] (0)"))
        == "Check failed: x"
    )
    assert describe(KeyError()) == "KeyError"


def test_sigterm_in_a_steps_own_process_unwinds_and_exits_143(tmp_path, capsys):
    """In a step's own process (no argv) SIGTERM raises stopping.Terminated where the step is,
    so its atomic outputs are removed, and the step exits 128 + 15 with one ``hepml: error:``
    line; the handler is the one before afterwards, and a call with argv (a caller's process)
    keeps the caller's handler throughout."""
    import signal

    from hepml_steps.io import atomic_path

    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def call(_):
        seen.append(signal.getsignal(signal.SIGTERM))
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the step's handler, checked first
            seen.append("not reached")

    old_argv = sys.argv
    try:
        sys.argv = ["step"]
        assert cli.run(lambda p: None, call, None) == 128 + signal.SIGTERM
    finally:
        sys.argv = old_argv
    assert seen[0] not in (before, signal.SIG_DFL) and len(seen) == 1
    assert signal.getsignal(signal.SIGTERM) == before
    assert list(tmp_path.iterdir()) == []  # the temporary output went with the stop
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("hepml: error: test_errors: terminated by SIGTERM")

    def check(_):
        seen.append(signal.getsignal(signal.SIGTERM))

    cli.run(lambda p: None, check, [])
    assert seen[-1] == before


@pytest.fixture
def interactive_signals():
    """SIGINT and SIGTERM as an interactive Python process has them (a shell starts a background
    job, e.g. ``pytest &``, with SIGINT ignored, which stopping rightly leaves ignored), restored
    after the test."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def test_a_stop_inside_a_deferred_block_is_held_then_raised_on_leaving_it(interactive_signals):
    """stopping.deferred: a SIGTERM that comes while C code may call back into Python is only
    recorded (pending), raised as Terminated on leaving the outermost block, also over an
    exception the block raised meanwhile; outside a block it is raised at once."""
    import signal

    from hepml_steps import stopping

    before = signal.getsignal(signal.SIGINT)
    with stopping.stoppable(True):
        with pytest.raises(stopping.Terminated) as stop:
            with stopping.deferred():
                with stopping.deferred():
                    os.kill(os.getpid(), signal.SIGTERM)
                    assert stopping.pending()
                assert stopping.pending()  # the inner block does not raise it
        assert stop.value.signum == signal.SIGTERM and not stopping.pending()
    with stopping.stoppable(True):
        with pytest.raises(stopping.Terminated) as stop:
            with stopping.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                raise ValueError("the C code's complaint about the iteration ended early")
        assert isinstance(stop.value.__context__, ValueError) and stop.value.signum == signal.SIGINT
    with stopping.stoppable(True), pytest.raises(stopping.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) == before


def test_after_a_stop_either_signal_kills_and_an_ignored_signal_stays_ignored(interactive_signals):
    """Once a stop is raised, SIGTERM and SIGINT are both back to the default action (a second
    one kills while the first unwinds); a signal the process was started ignoring is left so."""
    import signal

    from hepml_steps import stopping

    before = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    try:
        with stopping.stoppable(True):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except stopping.Terminated:
                assert all(signal.getsignal(s) == signal.SIG_DFL for s in stopping.SIGNALS)
        assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == before
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with stopping.stoppable(True):
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (before[signal.SIGTERM], signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
