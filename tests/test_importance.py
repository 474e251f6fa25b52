"""importance.read_sample: the drawn events read batch by batch are those of sampling the whole split."""

import numpy as np
import pytest

from hepml_steps import dataset, importance
from hepml_steps import io as hio
from hepml_steps.columns import WEIGHT
from hepml_steps.generate import FEATURES, generate_chunk


@pytest.mark.parametrize("max_events", [50, 999, 2999, 10_000])
def test_read_sample_equals_sampling_the_whole_split(tmp_path, monkeypatch, max_events):
    df = generate_chunk(3000, 1500, seed=1, chunk_index=0, event_id_start=0)
    df.insert(2, WEIGHT, np.linspace(0.5, 1.5, len(df)))
    path = tmp_path / "test.parquet"
    df.to_parquet(path, index=False, row_group_size=400)
    meta = {"model": "m", "task": "classification", "features": list(FEATURES[:5]), "family": "xgboost"}
    monkeypatch.setattr(hio, "ROW_GROUP_EVENTS", 700)  # several record batches
    want = importance._sample(dataset.read_scoring(str(path), meta), max_events, seed=3)
    got = importance.read_sample(str(path), meta, max_events, seed=3)
    assert len(got.X) == min(max_events, len(df))
    for field in ("X", "y", "weights", "event_ids", "labels", "truth_llr"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    assert got.columns == want.columns and got.fit_weights is None


def test_rows_draw_distinct_events_reproducibly():
    rows = importance._rows(2_000_000, 20_000, seed=5)
    assert rows.dtype == np.int64 and len(np.unique(rows)) == 20_000
    assert rows.min() >= 0 and rows.max() < 2_000_000
    np.testing.assert_array_equal(rows, importance._rows(2_000_000, 20_000, seed=5))
    assert not np.array_equal(rows, importance._rows(2_000_000, 20_000, seed=6))
    assert importance._rows(20_000, 20_000, seed=5) is None  # every event: no draw
    # drawn over the whole split, not its start: each tenth holds about a tenth of the sample
    counts = np.bincount(rows // 200_000, minlength=10)
    assert counts.min() > 1800 and counts.max() < 2200
