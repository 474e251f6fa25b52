"""NanoAOD-like files written with uproot, as a TTree or as an RNTuple, for the ingest tests.

Like a CMS NanoAOD: run/luminosityBlock/event, jagged collections with
their counters (``nJet`` -> ``Jet_*``, ``nMuon`` -> ``Muon_*``), flat
branches of every common type (bool, char as int8, int32, float32, double),
a ``genWeight`` with about 15 % negative values and a truth branch
(``HTXS_Higgs_pt``) that is NaN in every event. Signal events have more and
harder jets, higher b-tag scores and more missing energy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: collection branch -> its awkward type as mktree takes it
COLLECTIONS = {
    "Jet_pt": "var * float32",
    "Jet_eta": "var * float32",
    "Jet_btagDeepB": "var * float32",
    "Jet_jetId": "var * int32",
    "Jet_isTight": "var * bool",
    "Muon_pt": "var * float32",
    "Muon_charge": "var * int32",
    "Muon_tightId": "var * bool",
}
FLAT = {
    "run": np.uint32,
    "luminosityBlock": np.uint32,
    "event": np.uint64,
    "genWeight": np.float32,
    "nJet": np.int32,
    "nMuon": np.int32,
    "MET_pt": np.float32,
    "PV_npvs": np.int32,
    "PV_chi2": np.float64,
    "HLT_IsoMu24": np.bool_,
    "Flag_goodVertices": np.int8,
    "HTXS_Higgs_pt": np.float32,
}
BOOKKEEPING = ["run", "luminosityBlock", "event"]


def nanoaod_arrays(n: int, seed: int, signal: bool, first_event: int = 0) -> dict:
    """Branch -> values (numpy for flat branches, awkward for collections), in NanoAOD's order."""
    import awkward as ak

    rng = np.random.default_rng(seed)
    n_jet = rng.poisson(4.0 if signal else 2.5, n).astype(np.int32)
    n_mu = rng.poisson(1.2, n).astype(np.int32)
    total_j, total_m = int(n_jet.sum()), int(n_mu.sum())

    def jets(values):
        return ak.unflatten(values, n_jet)

    def muons(values):
        return ak.unflatten(values, n_mu)

    pt = ak.sort(jets((rng.exponential(45.0 if signal else 28.0, total_j) + 15.0).astype(np.float32)), ascending=False)
    btag = np.where(
        rng.random(total_j) < (0.35 if signal else 0.1), rng.beta(5, 2, total_j), rng.beta(1.5, 6, total_j)
    ).astype(np.float32)
    sign = np.where(rng.random(n) < 0.15, -1.0, 1.0)
    return {
        "run": np.full(n, 1, dtype=np.uint32),
        "luminosityBlock": (np.arange(n) // 100 + 1).astype(np.uint32),
        "event": np.arange(first_event, first_event + n, dtype=np.uint64),
        "genWeight": (sign * np.abs(rng.normal(1.0, 0.2, n))).astype(np.float32),
        "nJet": n_jet,
        "Jet_pt": pt,
        "Jet_eta": jets(rng.normal(0.0, 1.4 if signal else 2.0, total_j).astype(np.float32)),
        "Jet_btagDeepB": jets(btag),
        "Jet_jetId": jets(rng.choice(np.array([2, 6], dtype=np.int32), total_j)),
        "Jet_isTight": jets(rng.random(total_j) < 0.8),
        "nMuon": n_mu,
        "Muon_pt": muons((rng.exponential(20.0, total_m) + 3.0).astype(np.float32)),
        "Muon_charge": muons(rng.choice(np.array([-1, 1], dtype=np.int32), total_m)),
        "Muon_tightId": muons(rng.random(total_m) < 0.7),
        "MET_pt": rng.exponential(55.0 if signal else 35.0, n).astype(np.float32),
        "PV_npvs": rng.poisson(20, n).astype(np.int32),
        "PV_chi2": rng.chisquare(3, n),
        "HLT_IsoMu24": rng.random(n) < 0.6,
        "Flag_goodVertices": (rng.random(n) < 0.99).astype(np.int8),
        "HTXS_Higgs_pt": np.full(n, np.nan, dtype=np.float32),
    }


def write(path: Path, arrays: dict, kind: str, tree: str = "Events") -> Path:
    """Write ``arrays`` as a TTree (``kind="ttree"``, one counter ``n<Prefix>``
    per collection ``<Prefix>_x``, made when not given) or an RNTuple
    (``kind="rntuple"``); ``tree`` may be ``dir/Events``."""
    import awkward as ak
    import uproot

    with uproot.recreate(path) as f:
        if kind == "rntuple":
            f[tree] = arrays  # uproot 5.7 writes a dict as an RNTuple
        else:
            types = {
                k: f"var * {ak.type(v).content.content}" if isinstance(v, ak.Array) else v.dtype
                for k, v in arrays.items()
            }
            f.mktree(tree, types, counter_name=lambda branch: "n" + branch.split("_")[0])
            f[tree].extend(arrays)
    return Path(path)


def sample(
    folder: Path, kind: str, signal: bool, n: int, n_files: int = 1, seed: int = 0, tree: str = "Events"
) -> list[Path]:
    """``n_files`` files ``{sig,bkg}_<i>.root`` of ``n`` events each in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "sig" if signal else "bkg"
    return [
        write(
            folder / f"{prefix}_{i}.root",
            nanoaod_arrays(n, seed=seed * 1000 + 10 * i + signal, signal=signal, first_event=i * n),
            kind,
            tree,
        )
        for i in range(n_files)
    ]
