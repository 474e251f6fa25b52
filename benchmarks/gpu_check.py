"""GPU check: train and score the MLP on CUDA through the pipeline's own steps.

Runs generate -> ingest -> split -> features -> train -> predict as plain
function calls (the same functions the rules call) on toy events, for an MLP
with ``gpus: 1`` (a CUDA request), then prints:

- the device each step used and the energy method of its record (``+nvml``
  when NVML measured the GPU; ``estimate:cpu-time`` when it could not);
- training and test-inference energy (J, J/event) and throughput (events/s);
- the bare inference throughput of the trained network on one large batch, to
  set beside the LHCb trigger network's 30 MHz (30 million events/s) on GPUs.

Usage (on a machine with an NVIDIA GPU; on a CPU-only machine it runs, warns
that it fell back to the CPU and says so in its last line):

    python benchmarks/gpu_check.py --events 400000 --inference-events 10000000

Nothing is written outside ``--out`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hepml_steps import features, generate, ingest, registry, split, train
from hepml_steps.predict import predict

SPEC = {
    "family": "mlp",
    "task": "classification",
    "gpus": 1,
    "device": "auto",
    "weighting": "balanced",
    "params": {"hidden_layers": [256, 256, 256], "epochs": 3, "batch_size": 4096},
}


def prepare(out: Path, n_events: int, seed: int) -> dict[str, str]:
    """The toy sample through ingest, split and features; returns the prepared splits."""
    toy = out / "toy.parquet"
    generate.generate(toy, n_events=n_events, seed=seed, chunk_size=min(n_events, 1_000_000))
    events = out / "events.parquet"
    ingest.ingest(
        [{"path": str(toy), "name": "toy"}],
        events,
        label_column="label",
        weight_column="weight",
        event_id_column="event_id",
    )
    raw = {s: str(out / f"split_{s}.parquet") for s in split.SPLITS}
    split.split(str(events), raw, {"train": 0.6, "validation": 0.2, "test": 0.2})
    prepared = {s: str(out / f"features_{s}.parquet") for s in split.SPLITS}
    features.features(raw, prepared, str(out / "transform.json"))
    return prepared


def bare_throughput(model_dir: Path, n_features: int, n_events: int, batch: int) -> tuple[str, float]:
    """Device and events/s of ``predict_score`` on ``n_events`` random events (warm-up excluded)."""
    model, meta = registry.load_model(str(model_dir))
    model.use_device(meta.get("device", "cpu"))
    X = np.random.default_rng(0).normal(size=(batch, n_features)).astype(np.float32)
    model.predict_score(X)  # warm-up: kernels, allocator
    n_batches = max(1, n_events // batch)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model.predict_score(X)
    return model.info.get("device", "cpu"), n_batches * batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=400_000, help="toy events generated (train is 60 %%)")
    p.add_argument("--inference-events", type=int, default=10_000_000, help="events of the bare throughput test")
    p.add_argument("--batch", type=int, default=1_000_000, help="events per inference batch")
    p.add_argument("--out", help="working folder (default: a temporary one)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        prepared = prepare(out, args.events, args.seed)
        model_dir = out / "model"
        rec = train.train(
            prepared["train"],
            prepared["validation"],
            "mlp_gpu",
            SPEC,
            str(model_dir),
            str(out / "train.json"),
            seed=args.seed,
            threads=4,
        )
        pred = predict(
            str(model_dir),
            prepared,
            str(out / "predictions.parquet"),
            batch_size=args.batch,
            threads=4,
            record_out=str(out / "predict.json"),
        )
        device, rate = bare_throughput(model_dir, len(rec["features"]), args.inference_events, args.batch)
        fit_e, inf_e = rec["energy"]["train"], pred["energy"]["inference"]
        summary = {
            "train": {
                "device": rec.get("device"),
                "method": fit_e["method"],
                "energy_j": fit_e["energy_j"],
                "j_per_event": fit_e["j_per_event"],
                "events_per_s": fit_e["events_per_s"],
            },
            "inference": {
                "device": pred["device"],
                "method": inf_e["method"],
                "energy_j": inf_e["energy_j"],
                "j_per_event": inf_e["j_per_event"],
                "events_per_s": inf_e["events_per_s"],
            },
            "bare_inference": {
                "device": device,
                "events": args.inference_events,
                "batch": args.batch,
                "events_per_s": rate,
                "fraction_of_30_MHz": rate / 30e6,
            },
        }
        print(json.dumps(summary, indent=2))
        on_gpu = str(device).startswith("cuda")
        print(
            f"gpu_check: MLP inference {rate / 1e6:.2f} M events/s on {device}"
            + ("" if on_gpu else " (no GPU visible: this was the CPU fallback)")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
