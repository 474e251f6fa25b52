"""Deterministic train / validation / test split by a hash of ``event_id``.

Recipe (recorded in the split summary): ``u = splitmix64(event_id XOR
splitmix64(salt)) / 2**64``; an event goes to *train* if ``u < f_train``, to
*validation* if ``u < f_train + f_validation``, else to *test*. ``u`` depends
on nothing but the event's id and the salt, so an event's split never depends
on file order or on which other events are present. Streams the input by
record batches, so memory stays at one batch.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np

from . import cli
from .columns import EVENT_ID, LABEL, SPLITS
from .errors import ConfigError, DataError
from .io import atomic_path, write_json

log = logging.getLogger("hepml.split")

RECIPE = ("u = splitmix64(uint64(event_id) XOR splitmix64(uint64(salt))) / 2**64; "
          "train if u < f_train, validation if u < f_train + f_validation, else test")

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _M1
        z = (z ^ (z >> np.uint64(30))) * _M2
        z = (z ^ (z >> np.uint64(27))) * _M3
        return z ^ (z >> np.uint64(31))


def uniform_from_id(event_id: np.ndarray, salt: int = 0) -> np.ndarray:
    """Map event ids to reproducible uniforms in [0, 1)."""
    key = splitmix64(np.array([salt], dtype=np.uint64))[0]
    h = splitmix64(np.asarray(event_id).astype(np.int64).view(np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def check_fractions(fractions: dict) -> dict[str, float]:
    missing = [s for s in SPLITS if s not in fractions]
    if missing or set(fractions) - set(SPLITS):
        raise ConfigError(f"split.fractions must have exactly the keys {list(SPLITS)}; got {sorted(fractions)}")
    for s in SPLITS:
        if not (0 < float(fractions[s]) < 1):
            raise ConfigError(f"split.fractions.{s} = {fractions[s]} must lie strictly between 0 and 1")
    total = sum(float(fractions[s]) for s in SPLITS)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ConfigError(f"split.fractions must sum to 1; train + validation + test = {total:g}")
    return {s: float(fractions[s]) for s in SPLITS}


def assign(event_id: np.ndarray, fractions: dict, salt: int = 0) -> np.ndarray:
    """Index into SPLITS (0 train, 1 validation, 2 test) for each event."""
    f = check_fractions(fractions)
    u = uniform_from_id(event_id, salt)
    edges = np.array([f["train"], f["train"] + f["validation"]])
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def split(events: str, outs: dict[str, str], fractions: dict, salt: int = 0,
          summary_out: str | None = None, batch_size: int = 1_000_000) -> dict:
    """Split the canonical event table ``events`` into the files ``outs[split]``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fractions = check_fractions(fractions)
    if set(outs) != set(SPLITS):
        raise ConfigError(f"split outputs must be given for {list(SPLITS)}")
    if not Path(events).exists():
        raise DataError(f"missing input file: {events}")
    pf = pq.ParquetFile(events)
    if EVENT_ID not in pf.schema_arrow.names:
        raise DataError(f"{events}: no '{EVENT_ID}' column")
    counts = {s: 0 for s in SPLITS}
    signal = {s: 0 for s in SPLITS}
    has_label = LABEL in pf.schema_arrow.names
    with contextlib.ExitStack() as stack:
        tmps = {s: stack.enter_context(atomic_path(outs[s])) for s in SPLITS}
        writers = {s: stack.enter_context(pq.ParquetWriter(tmps[s], pf.schema_arrow, compression="zstd"))
                   for s in SPLITS}
        for batch in pf.iter_batches(batch_size=batch_size):
            idx = assign(batch.column(EVENT_ID).to_numpy(), fractions, salt)
            for i, s in enumerate(SPLITS):
                mask = idx == i
                n = int(mask.sum())
                if n:
                    part = batch.filter(pa.array(mask))
                    writers[s].write_batch(part)
                    counts[s] += n
                    if has_label:
                        signal[s] += int(np.asarray(part.column(LABEL)).sum())
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            raise DataError(
                f"split {empty} of {events} would be empty ({sum(counts.values())} events in all, "
                f"fractions {fractions}); use more events or larger fractions")
    summary = {
        "input": str(events), "fractions": fractions, "salt": int(salt), "recipe": RECIPE,
        "n_events": counts, "n_signal": signal if has_label else None,
    }
    for s in SPLITS:
        log.info("%s: %d events", s, counts[s])
    if summary_out:
        write_json(summary_out, summary)
    return summary


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--events", required=True)
        for s in SPLITS:
            p.add_argument(f"--{s}", required=True)
        p.add_argument("--fractions", type=cli.json_arg, required=True)
        p.add_argument("--salt", type=int, default=0)
        p.add_argument("--summary")

    return cli.run(build, lambda a: split(a.events, {s: getattr(a, s) for s in SPLITS}, a.fractions,
                                          a.salt, a.summary), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
