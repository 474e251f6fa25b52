"""Shared fixtures: small canonical event tables built in a temp directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.slurm_cluster import LIVE_SKIP_REASON, live_slurm_requested

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses (snakemake, CLIs) must find this venv's python first.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


def make_events(n: int = 2000, seed: int = 0, n_features: int = 4) -> pd.DataFrame:
    """A canonical event table where feature f0 separates signal from background."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.5).astype(np.int8)
    df = pd.DataFrame(
        {
            "event_id": np.arange(n, dtype=np.int64) * 7 + 3,
            "label": label,
            "weight": rng.uniform(0.5, 2.0, n),
        }
    )
    for i in range(n_features):
        shift = 1.5 if i == 0 else 0.0
        df[f"f{i}"] = rng.normal(size=n) + shift * label
    return df


@pytest.fixture
def events(tmp_path) -> Path:
    path = tmp_path / "events.parquet"
    make_events().to_parquet(path, index=False)
    return path


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``slurm_live`` unless HEPML_LIVE_SLURM=1: they run as root,
    start SLURM daemons and may apt-install packages, so they run only when asked."""
    if live_slurm_requested():
        return
    skip = pytest.mark.skip(reason=LIVE_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("slurm_live"):
            item.add_marker(skip)
