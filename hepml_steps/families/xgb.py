"""Gradient-boosted decision trees (BDT) with XGBoost.

Saved as XGBoost's own UBJSON format (``model.ubj``): no pickle. Trains with
the native API so event weights, a validation set (learning curve, optional
early stopping) and a per-iteration callback (used for pruning while tuning)
are all first-class. Early stopping (``early_stopping_rounds`` > 0) watches
the validation log-loss, the metric of the learning curves and of pruning.
``device="cuda"`` uses the GPU when this XGBoost build has CUDA and a device
is visible; otherwise it falls back to CPU and says so.
"""
from __future__ import annotations

import logging

import numpy as np

from .base import Family

log = logging.getLogger("hepml.xgboost")


def _cuda_usable(xgb) -> tuple[bool, str]:
    if not xgb.build_info().get("USE_CUDA", False):
        return False, "this XGBoost build has no CUDA support (xgboost-cpu); install 'xgboost' for GPUs"
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False, "CUDA_VISIBLE_DEVICES hides every GPU"
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no CUDA driver (libcuda.so.1) on this node"
    return True, "CUDA available"


class XGBoostFamily(Family):
    name = "xgboost"
    tasks = ("classification", "multiclass", "regression")
    default_params = {
        "n_estimators": 200,
        "max_depth": 6,
        "learning_rate": 0.1,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "min_child_weight": 1.0,
        "reg_lambda": 1.0,
        "reg_alpha": 0.0,
        "gamma": 0.0,
        "max_bin": 256,
        "early_stopping_rounds": 0,
    }
    search_space = {
        "n_estimators": {"type": "int", "low": 50, "high": 600, "log": True},
        "max_depth": {"type": "int", "low": 2, "high": 10},
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
        "subsample": {"type": "float", "low": 0.5, "high": 1.0},
        "colsample_bytree": {"type": "float", "low": 0.5, "high": 1.0},
        "min_child_weight": {"type": "float", "low": 0.1, "high": 20.0, "log": True},
        "reg_lambda": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
    }
    gpu_capable = True
    file_format = "xgboost-ubj"
    iterative = True
    exports_onnx = True

    def _booster_params(self) -> dict:
        p = self.params
        # the learning curves need the loss only; an "auc" eval metric would sort the
        # training set every iteration and triple the fit time (benchmarks/overhead.py)
        objective, metric = {"classification": ("binary:logistic", ["logloss"]),
                             "multiclass": ("multi:softprob", ["mlogloss"]),
                             "regression": ("reg:squarederror", ["rmse"])}[self.task]
        extra = {"num_class": self.n_classes} if self.task == "multiclass" else {}
        return {
            "objective": objective, "eval_metric": metric, "tree_method": "hist", **extra,
            "max_depth": int(p["max_depth"]), "eta": float(p["learning_rate"]),
            "subsample": float(p["subsample"]), "colsample_bytree": float(p["colsample_bytree"]),
            "min_child_weight": float(p["min_child_weight"]), "lambda": float(p["reg_lambda"]),
            "alpha": float(p["reg_alpha"]), "gamma": float(p["gamma"]), "max_bin": int(p["max_bin"]),
            "seed": self.seed, "nthread": self.n_threads, "device": self._device,
        }

    def _select_device(self, xgb, step: str) -> None:
        """CUDA when asked for (or ``auto``) and usable, else the CPU (warned
        about when CUDA was asked for)."""
        self._device = "cpu"
        if self.device in ("cuda", "auto"):
            ok, why = _cuda_usable(xgb)
            if ok:
                self._device = "cuda"
            elif self.device == "cuda":
                log.warning("GPU requested for xgboost but not usable (%s): %s on CPU", why, step)
            self.info["device_note"] = why
        self.info["device"] = self._device

    def use_device(self, device: str) -> None:
        import xgboost as xgb

        self.device = device
        self._select_device(xgb, "inference")
        self.booster.set_param({"device": self._device})

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        import xgboost as xgb

        self._select_device(xgb, "training")
        if self.task == "multiclass":
            self.n_classes = self.classes_count(y)
        dtrain = xgb.DMatrix(X, label=y, weight=sample_weight, nthread=self.n_threads)
        evals = [(dtrain, "train")]
        if X_val is not None:
            evals.append((xgb.DMatrix(X_val, label=y_val, weight=w_val, nthread=self.n_threads), "validation"))
        record: dict = {}
        callbacks = []
        if self.epoch_callback is not None and X_val is not None:
            callbacks.append(_IterationHook(self.report_epoch, self._loss_metric))
        esr = int(self.params["early_stopping_rounds"]) or None
        self.booster = xgb.train(
            self._booster_params(), dtrain, num_boost_round=int(self.params["n_estimators"]),
            evals=evals, evals_result=record, verbose_eval=False,
            early_stopping_rounds=esr if X_val is not None else None, callbacks=callbacks)
        for split, metrics in record.items():
            for metric, values in metrics.items():
                key = {"logloss": "loss", "mlogloss": "loss", "rmse": "loss"}.get(metric, metric)
                self.history[f"{split}_{key}"] = [float(v) for v in values]
        if esr and X_val is not None:
            self.info["best_iteration"] = int(self.booster.best_iteration)
        self.info["n_trees"] = int(self.booster.num_boosted_rounds())
        return self

    @property
    def _loss_metric(self) -> str:
        return {"classification": "logloss", "multiclass": "mlogloss"}.get(self.task, "rmse")

    def _iteration_range(self):
        best = self.info.get("best_iteration")
        return (0, best + 1) if best is not None else (0, 0)

    def predict_score(self, X):
        import xgboost as xgb

        dm = xgb.DMatrix(X, nthread=self.n_threads)
        out = self.booster.predict(dm, iteration_range=self._iteration_range()).astype(np.float64)
        return out.reshape(len(X), -1) if self.task == "multiclass" else out

    def native_importance(self) -> dict[int, float]:
        """Total gain per feature column index (a feature no tree splits on is left out)."""
        gains = self.booster.get_score(importance_type="total_gain")  # keyed "f0", "f1", ...
        return {int(k[1:]): float(v) for k, v in gains.items()}

    def save(self, directory) -> list[str]:
        from pathlib import Path

        if self.info.get("best_iteration") is not None:
            # keep only the trees up to the best iteration so the file is the model
            self.booster = self.booster[: self.info["best_iteration"] + 1]
            self.info["best_iteration"] = None
        self.booster.save_model(str(Path(directory) / "model.ubj"))
        return ["model.ubj"]

    @classmethod
    def load(cls, directory, meta: dict) -> "XGBoostFamily":
        from pathlib import Path

        import xgboost as xgb

        from ..errors import FamilyError, culprit

        self = cls(task=meta["task"], params=meta.get("params", {}), seed=meta.get("seed", 0))
        self.booster = xgb.Booster()
        path = Path(directory) / "model.ubj"
        with culprit(path, FamilyError, "not a readable XGBoost model"):
            self.booster.load_model(str(path))
        return self

    def to_onnx(self, path, n_features: int) -> None:
        """Write the BDT as ONNX (onnxmltools); output "score" = predict_score."""
        from .onnx_export import export_xgboost

        export_xgboost(self.booster, self.task, n_features, path)


class _IterationHook:
    """XGBoost callback forwarding the validation loss after every iteration."""

    def __new__(cls, fn, metric):
        import xgboost as xgb

        class Hook(xgb.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):
                values = evals_log.get("validation", {}).get(metric)
                if values:
                    fn(epoch, {"validation_loss": float(values[-1])})
                return False

        return Hook()
