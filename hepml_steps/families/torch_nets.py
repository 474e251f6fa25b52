"""Neural networks with PyTorch: a feed-forward classifier/regressor (MLP) and
an autoencoder for anomaly detection.

Every choice discussed in the lecture is a hyper-parameter:

- ``activation``: ``linear`` (identity: the whole net stays linear), ``relu``,
  ``softplus``, ``step`` (Heaviside), ``logistic`` (sigmoid), ``tanh``.
  The step function has zero derivative almost everywhere, so gradient
  descent cannot train it as is. Its forward pass is the exact hard threshold
  ``(x > 0)``; its backward pass uses a *surrogate gradient*: the derivative
  of a steep sigmoid, ``k * s * (1 - s)`` with ``s = sigmoid(k * x)`` and
  ``k = step_surrogate_slope`` (a "straight-through" estimator). Inference
  and the ONNX export use only the hard threshold.
- ``optimizer``: ``sgd``, ``momentum`` (SGD with ``momentum``), ``nesterov``
  (SGD with Nesterov momentum), ``adagrad``, ``adadelta``, ``rmsprop``,
  ``adam``, ``amsgrad`` (Adam with the AMSGrad fix). Every optimizer uses
  ``learning_rate`` as given (note that Adadelta is conventionally run with a
  learning rate near 1.0) and ``l2`` as weight decay (L2 penalty).
- ``loss``: ``auto`` means ``cross_entropy`` for classification and ``mse``
  for regression. Classification also accepts ``mse`` and ``absolute`` (on
  the sigmoid output) and ``hinge`` (on the logit margin, labels mapped to
  +-1); regression accepts ``mse`` and ``absolute``; the autoencoder's
  reconstruction loss is ``mse`` or ``absolute``. Multiclass (K outputs,
  softmax probabilities): ``cross_entropy`` (softmax cross-entropy, the
  default), ``mse`` and ``absolute`` (summed over classes, between the
  softmax probabilities and the one-hot truth) and ``hinge`` (the multi-class
  margin loss of Weston and Watkins, as ``torch.nn.functional.multi_margin_loss``).
- ``hidden_layers``, ``dropout``, ``batch_size``, ``epochs``,
  ``early_stopping_patience`` (epochs without a better validation loss before
  stopping; 0 = off; the weights of the best epoch are restored),
  ``standardize_target`` (regression: the net learns ``(y - mean) / std`` of
  the training target; predictions are converted back to target units).

Training honours event weights: each mini-batch loss is the weighted mean of
the per-event losses (normalised by the batch's weight sum); the validation
loss uses the validation weights. Losses in ``history`` are those of the
training objective (for regression with ``standardize_target``: in
standardised target units). Every epoch logs them as one INFO line on
``hepml.torch``, e.g. ``mlp: epoch 3/20 train_loss 0.4123 val_loss 0.4301
(12.3 s)`` (seconds since training started), and early stopping says where
it stopped.

Reproducibility: all random numbers (initial weights, dropout, the shuffling
of events) come from ``seed`` through a forked torch RNG and a NumPy
generator, and ``torch.set_num_threads(n_threads)`` is applied during fit and
predict, so the same seed gives bit-identical predictions on CPU. (On CUDA,
cuBLAS/cuDNN may not be bit-reproducible.)

Device: ``device="auto"`` or ``"cuda"`` uses CUDA when
``torch.cuda.is_available()``, else CPU; if ``"cuda"`` was requested and is
not available, a warning is logged. The device used and the reason go into
``info["device"]`` and ``info["device_note"]``.

Files: ``model.pt`` is the network's ``state_dict`` (tensors only; loaded
with ``torch.load(weights_only=True)``, so nothing is unpickled) and
``model_config.json`` describes the architecture and the input/target scaling
needed to rebuild it. ``to_onnx`` writes an ONNX model whose input
``features`` is ``[N, n_features]`` float32 and whose output ``score`` is
``[N]`` (``[N, K]`` for multiclass) and equal to ``predict_score``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError, FamilyError, culprit, describe
from ..io import atomic_path, write_json
from .base import Family, is_source, log_progress

log = logging.getLogger("hepml.torch")

ACTIVATIONS = ("linear", "relu", "softplus", "step", "logistic", "tanh")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "amsgrad")
DEVICES = ("auto", "cpu", "cuda")
CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.pt"
CONFIG_FORMAT = "hepml-torch-net-1"
INFERENCE_BATCH = 65536
#: events per forward pass of ``predict_score`` on the CPU (finiteness is checked pass by
#: pass too): a 64-unit activation is 0.25 MiB, not 16 MiB; 65,536-event passes were 2x
#: slower at 2 threads. Against 8,192: the predict step's peak above a 20,000-event run,
#: at 10M events (131,072-event batches), 20 -> 12 MiB for 4% more time (8.4 s); the
#: scores differ by at most one float32 rounding (the GEMM blocks differ). On a GPU INFERENCE_BATCH.
#: A fit's validation losses and its initial training loss are evaluated in passes of this size too: in
#: 65,536-event passes, the train step at 1M events (200k validation events) peaked 60-80 MiB
#: higher at each evaluation (a pass's activations).
CPU_SCORE_BATCH = 1024
#: the epoch's training loss is summed every this many mini-batches
LOSS_FLUSH = 1024
#: the losses before training (``info["initial_train_loss"]``, ``info["initial_validation_loss"]``)
#: are evaluated on every k-th event, k the smallest stride that keeps at most this many (a
#: streamed fit keeps the training ones in its first pass): a pass over 2M validation events
#: took 0.7 s, 2 % of the streamed fit at 10M events
INITIAL_LOSS_EVENTS = 10_000
#: a classifier's validation AUC of each epoch (``history["validation_auc"]``, a learning
#: curve: early stopping watches the validation loss of every event) is computed on at most
#: about this many validation events, evenly spaced: on 200,000 events sklearn's weighted AUC
#: took 0.06 s, 5 % of an epoch of the streamed fit at 1M events (15 features, 64x64)
VALIDATION_AUC_EVENTS = 65_536


# --------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------
class _StepSurrogate(torch.autograd.Function):
    """Heaviside step forward; sigmoid-derivative surrogate gradient backward."""

    @staticmethod
    def forward(ctx, x, slope: float):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(ctx.slope * x)
        return grad_output * ctx.slope * s * (1 - s), None


class Step(nn.Module):
    """Hard threshold ``(x > 0)``; trains through a surrogate gradient of slope ``slope``.

    Without gradients (inference, ONNX export) it is the plain comparison, so
    the exported graph needs no custom operator.
    """

    def __init__(self, slope: float = 5.0):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad and not torch.onnx.is_in_onnx_export():
            return _StepSurrogate.apply(x, self.slope)
        return (x > 0).to(x.dtype)

    def extra_repr(self) -> str:
        return f"surrogate_slope={self.slope}"


def _tensor(array):
    """A tensor sharing memory with ``array``, copied first when it is read-only
    (memory-mapped Parquet columns), since torch cannot wrap a read-only array."""
    return torch.from_numpy(np.require(array, requirements="W"))


def make_activation(name: str, slope: float = 5.0) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`).

    Parameters
    ----------
    name : str
    slope : float, default 5.0
        The surrogate-gradient slope of ``step``.
    """
    return {
        "linear": nn.Identity,
        "relu": nn.ReLU,
        "softplus": nn.Softplus,
        "logistic": nn.Sigmoid,
        "tanh": nn.Tanh,
        "step": lambda: Step(slope),
    }[name]()


class Net(nn.Module):
    """Fully connected layers ``sizes[0] -> ... -> sizes[-1]``.

    The activation (and dropout) follow every layer but the last. Layers live
    in ``layers`` so the ``state_dict`` keys do not depend on the activation
    or on dropout.
    """

    def __init__(self, sizes: list[int], activation: str, slope: float = 5.0, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = make_activation(activation, slope)
        self.dropout = float(dropout)

    def forward(self, x):
        *hidden, last = self.layers  # attributes looked up once: this runs per mini-batch
        act, dropout = self.act, self.dropout
        for layer in hidden:
            x = act(layer(x))
            if dropout > 0:
                x = F.dropout(x, dropout, self.training)
        return last(x)


class Scorer(nn.Module):
    """The net plus what turns its output into ``predict_score`` (exported as is to ONNX).

    - ``classification``: sigmoid of the logit (probability of signal);
    - ``multiclass``: softmax of the K logits (class probabilities);
    - ``regression``: output * target_std + target_mean (target units);
    - ``anomaly``: inputs standardised, then the per-event mean squared
      reconstruction error over features.
    """

    def __init__(
        self, net: Net, kind: str, target_mean: float = 0.0, target_std: float = 1.0, input_mean=None, input_std=None
    ):
        super().__init__()
        self.net = net
        self.kind = kind
        self.register_buffer("target_mean", torch.tensor(float(target_mean)), persistent=False)
        self.register_buffer("target_std", torch.tensor(float(target_std)), persistent=False)
        n = net.layers[0].in_features
        mean = torch.zeros(n) if input_mean is None else torch.as_tensor(np.asarray(input_mean, np.float32))
        std = torch.ones(n) if input_std is None else torch.as_tensor(np.asarray(input_std, np.float32))
        self.register_buffer("input_mean", mean.float(), persistent=False)
        self.register_buffer("input_std", std.float(), persistent=False)

    def standardize(self, x):
        return (x - self.input_mean) / self.input_std

    def forward(self, x):
        if self.kind == "anomaly":
            z = self.standardize(x)
            return ((self.net(z) - z) ** 2).mean(dim=1)
        if self.kind == "multiclass":
            return torch.softmax(self.net(x), dim=1)
        out = self.net(x)[:, 0]
        if self.kind == "classification":
            return torch.sigmoid(out)
        return out * self.target_std + self.target_mean


@contextlib.contextmanager
def _threads(n: int):
    """Use ``n`` intra-op threads inside the block; restore the previous number after."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the ONNX exporter's internal notices (optional torchvision ops, deprecations)."""
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _weighted_moments(X: np.ndarray, w: np.ndarray | None):
    """Mean and standard deviation along axis 0 (weighted when the weights allow it)."""
    X = np.asarray(X, dtype=np.float64)
    if w is not None and np.all(w >= 0) and w.sum() > 0:
        mean = np.average(X, axis=0, weights=w)
        var = np.average((X - mean) ** 2, axis=0, weights=w)
    else:
        mean, var = X.mean(axis=0), X.var(axis=0)
    std = np.sqrt(var)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return mean, std


# --------------------------------------------------------------------------
# shared machinery
# --------------------------------------------------------------------------
class TorchFamily(Family):
    """What the MLP and the autoencoder share: parameters, devices, training loop, files.

    Subclasses define ``kind`` (the :class:`Scorer` mode), ``losses``
    (task -> allowed losses, the first being the ``auto`` default) and the
    hooks ``_layer_sizes``, ``_fit_scaling``, ``_training_tensors`` and
    ``_per_event_loss``.
    """

    gpu_capable = True
    score_dtype = "float32"  # the float32 network's
    # the loss is a weighted mean, a correct (signed) estimate of the expected
    # loss; a batch whose weights sum to <= 0 is normalised by its |weights|
    accepts_negative_weights = True
    file_format = "torch-state-dict"
    iterative = True  # every epoch reports train_loss, validation_loss (and validation_auc)
    exports_onnx = True
    streams_training = True  # fit_stream: shuffled mini-batches from a FitSource
    streams_validation = True  # and the validation split as a FitSource, evaluated chunk by chunk
    #: events held (and shuffled) at once by :meth:`fit_stream`
    shuffle_buffer_events: ClassVar[int] = 1 << 20
    losses: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(
        self,
        task: str = "classification",
        params: dict | None = None,
        seed: int = 0,
        n_threads: int = 1,
        device: str = "cpu",
    ):
        super().__init__(task=task, params=params, seed=seed, n_threads=n_threads, device=device)
        self._validate()
        self.n_features: int | None = None
        self.scorer: Scorer | None = None
        self.scaling: dict[str, Any] = {}
        self._signed = True  # whether a fit weight is negative (set by fit)

    # -- parameter checks ----------------------------------------------------
    def _bad(self, param: str, value, allowed, extra: str = "") -> FamilyError:
        return FamilyError(
            f"family '{self.name}': {param} {value!r} is not allowed{extra}; allowed: {', '.join(map(str, allowed))}"
        )

    def _validate(self) -> None:
        p = self.params
        if p["activation"] not in ACTIVATIONS:
            raise self._bad("activation", p["activation"], ACTIVATIONS)
        if p["optimizer"] not in OPTIMIZERS:
            raise self._bad("optimizer", p["optimizer"], OPTIMIZERS)
        allowed = self.losses[self.task]
        if p["loss"] == "auto":
            p["loss"] = allowed[0]
        if p["loss"] not in allowed:
            every = sorted({name for names in self.losses.values() for name in names})
            if p["loss"] in every:
                raise self._bad("loss", p["loss"], allowed, f" for task '{self.task}'")
            raise self._bad("loss", p["loss"], ("auto",) + allowed)
        if str(self.device).split(":")[0] not in DEVICES:
            raise self._bad("device", self.device, DEVICES)
        hl = p["hidden_layers"]
        if isinstance(hl, int) and not isinstance(hl, bool):
            hl = [hl]
        if not isinstance(hl, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in hl
        ):
            raise FamilyError(
                f"family '{self.name}': hidden_layers must be a list of positive integers (got {p['hidden_layers']!r})"
            )
        if self.kind == "anomaly" and not hl:
            raise FamilyError(f"family '{self.name}': hidden_layers needs at least one layer (the latent one)")
        p["hidden_layers"] = [int(n) for n in hl]

        def number(name, low, *, integer=False, strict=False, high=None):
            v = p[name]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if strict else v >= low) and (high is None or v < high)
            if integer:
                ok = ok and float(v).is_integer()
            if not ok:
                rng = f"{'>' if strict else '>='} {low}" + (f" and < {high}" if high is not None else "")
                raise FamilyError(
                    f"family '{self.name}': {name} must be {'an integer' if integer else 'a number'} {rng} (got {v!r})"
                )
            p[name] = int(v) if integer else float(v)

        number("learning_rate", 0, strict=True)
        number("l2", 0)
        number("momentum", 0, high=1)
        number("batch_size", 1, integer=True)
        number("epochs", 0, integer=True)
        number("early_stopping_patience", 0, integer=True)
        number("dropout", 0, high=1)
        number("step_surrogate_slope", 0, strict=True)

    # -- hooks ------------------------------------------------------------------
    kind: ClassVar[str] = ""

    @abstractmethod
    def _layer_sizes(self, n_features: int) -> list[int]:
        """Widths of every layer, input and output included."""

    def _fit_scaling(self, X, y, w) -> dict:
        """Scaling constants fitted on the training data (stored in the JSON config)."""
        return {}

    @abstractmethod
    def _training_tensors(self, X, y):
        """(network input, target) as numpy float32 arrays for these events."""

    @abstractmethod
    def _per_event_loss(self, out, target):
        """Unweighted loss of each event (a 1-d tensor)."""

    # -- device ------------------------------------------------------------------
    def _resolve_device(self) -> torch.device:
        requested = str(self.device)
        if requested == "cpu":
            dev, note = "cpu", "cpu requested"
        elif torch.cuda.is_available():
            dev, note = (requested if requested.startswith("cuda:") else "cuda"), "CUDA available"
        else:
            dev = "cpu"
            note = (
                "torch.cuda.is_available() is False (no visible GPU, no driver, or a CPU-only "
                f"torch build {torch.__version__}); using cpu"
            )
            if requested.startswith("cuda"):
                log.warning("family '%s': device '%s' requested but %s", self.name, requested, note)
        self.info["device"] = dev
        self.info["device_note"] = note
        return torch.device(dev)

    # -- building --------------------------------------------------------------
    def _build(self, n_features: int, scaling: dict) -> Scorer:
        p = self.params
        net = Net(self._layer_sizes(n_features), p["activation"], p["step_surrogate_slope"], p["dropout"])
        return Scorer(
            net,
            self.kind,
            scaling.get("target_mean", 0.0),
            scaling.get("target_std", 1.0),
            scaling.get("input_mean"),
            scaling.get("input_std"),
        )

    def _make_optimizer(self, parameters):
        p = self.params
        lr, wd, opt = p["learning_rate"], p["l2"], p["optimizer"]
        optim = torch.optim
        if opt == "sgd":
            return optim.SGD(parameters, lr=lr, weight_decay=wd)
        if opt == "momentum":
            return optim.SGD(parameters, lr=lr, momentum=p["momentum"], weight_decay=wd)
        if opt == "nesterov":
            return optim.SGD(parameters, lr=lr, momentum=p["momentum"], nesterov=True, weight_decay=wd)
        if opt == "adagrad":
            return optim.Adagrad(parameters, lr=lr, weight_decay=wd)
        if opt == "adadelta":
            return optim.Adadelta(parameters, lr=lr, weight_decay=wd)
        if opt == "rmsprop":
            return optim.RMSprop(parameters, lr=lr, weight_decay=wd)
        if opt == "adam":
            return optim.Adam(parameters, lr=lr, weight_decay=wd)
        return optim.Adam(parameters, lr=lr, weight_decay=wd, amsgrad=True)  # amsgrad

    # -- data checks -------------------------------------------------------------
    def _as_X(self, X, what: str, check_finite: bool = True) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise DataError(f"family '{self.name}': {what} must be 2-D (events x features), got shape {X.shape}")
        if self.n_features is not None and X.shape[1] != self.n_features:
            raise DataError(f"family '{self.name}': {what} has {X.shape[1]} features, the model {self.n_features}")
        if check_finite:
            self._check_finite(X, what)
        return X

    def _check_finite(self, X, what: str) -> None:
        if not np.all(np.isfinite(X)):
            raise DataError(f"family '{self.name}': {what} contains NaN or infinite values")

    def _as_w(self, w, n: int, what: str) -> np.ndarray:
        if w is None:
            return np.ones(n, dtype=np.float32)
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if len(w) != n or not np.all(np.isfinite(w)):
            raise DataError(f"family '{self.name}': {what} must be {n} finite numbers")
        return w.astype(np.float32)

    # -- losses ------------------------------------------------------------------
    @staticmethod
    def _weighted_mean(per_event, w, signed: bool = True):
        """The weighted mean of ``per_event`` and the weight sum it divides by (|w|'s
        when the sum is <= 0; only ``signed`` weights need that check: it costs two
        tensor operations per mini-batch)."""
        total = w.sum()
        if signed:
            total = torch.where(total > 0, total, w.abs().sum())
        total = total.clamp_min(1e-30)
        return (per_event * w).sum() / total, total

    def _evaluate(self, net, Xt, Tt, Wt):
        """Weighted mean loss over all events (eval mode, no grad) and the raw outputs.

        The outputs go into one tensor of all events, allocated at the first batch: kept
        batch by batch (a list concatenated at the end), each small output sat on the heap
        above its batch's freed activations, and glibc could not reuse them: RSS grew by a
        batch's activations per batch (580 MiB over 2M validation events, 64-unit layers).
        """
        loss_sum, w_sum, res = self._evaluate_sums(net, Xt, Tt, Wt)
        loss = loss_sum / w_sum if w_sum > 0 else float("nan")
        return loss, res

    def _every_kth_loss(self, net, tensors) -> float:
        """:meth:`_evaluate`'s loss of every k-th event of ``tensors`` (input, target, weight),
        k the smallest stride that keeps at most :data:`INITIAL_LOSS_EVENTS`."""
        step = max(1, math.ceil(len(tensors[0]) / INITIAL_LOSS_EVENTS))
        return self._evaluate(net, *(t[::step] for t in tensors))[0]

    def _evaluate_sums(self, net, Xt, Tt, Wt):
        """:meth:`_evaluate`'s sums: (Σ w·loss, Σ w, outputs)."""
        net.eval()
        loss_sum, w_sum, res = 0.0, 0.0, None
        step = CPU_SCORE_BATCH if Xt.device.type == "cpu" else INFERENCE_BATCH
        with torch.no_grad():
            for i in range(0, len(Xt), step):
                out = net(Xt[i : i + step])
                per = self._per_event_loss(out, Tt[i : i + step])
                wb = Wt[i : i + step]
                loss_sum += float((per * wb).sum())
                w_sum += float(wb.sum())
                if res is None:
                    res = torch.empty((len(Xt), *out.shape[1:]), dtype=out.dtype, device=out.device)
                res[i : i + len(out)] = out
                del out, per
        return loss_sum, w_sum, res

    def loss(self, X, y=None, sample_weight=None) -> float:
        """The training objective (weighted mean per-event loss) of the fitted net on these events."""
        if self.scorer is None:
            raise FamilyError(f"family '{self.name}': the model is not fitted")
        X = self._as_X(X, "X")
        inp, tgt = self._training_tensors(X, y)
        dev = next(self.scorer.parameters()).device
        w = _tensor(self._as_w(sample_weight, len(X), "sample_weight")).to(dev)
        with _threads(self.n_threads):
            loss, _ = self._evaluate(self.scorer.net, _tensor(inp).to(dev), _tensor(tgt).to(dev), w)
        return loss

    def _validation_extras(self, out, y_val, w_val) -> dict:
        return {}

    # -- training ----------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None, X_val=None, y_val=None, w_val=None):
        """Train by weighted mini-batch gradient descent (see the module docstring); return ``self``.

        Every epoch's losses go to ``history`` and to :meth:`report_epoch`;
        with a validation set and ``early_stopping_patience`` > 0 training stops
        when the validation loss has not improved for that many epochs and the
        best epoch's weights are restored.

        Raises
        ------
        DataError
            When the events, targets or weights are unusable (naming which).
        FamilyError
            When training diverges (a non-finite training loss).
        """
        X, w, X_val, w_val = self._checked_inputs(X, sample_weight, X_val, w_val)
        self._signed = bool(np.any(w < 0))
        device = self._resolve_device()
        self.history = {"train_loss": [], "validation_loss": []}
        if X_val is not None and self.task == "classification":
            self.history["validation_auc"] = []
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with _threads(self.n_threads), torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(self.seed)
            self.scaling = self._fit_scaling(X, y, w)
            scorer = self._build(self.n_features, self.scaling).to(device)
            train = self._as_tensors(X, y, w, device)
            val = (
                None
                if X_val is None
                else _HeldValidation(self, self._as_tensors(X_val, y_val, w_val, device), y_val, w_val)
            )
            self._train(scorer.net, train, val)
        self.scorer = scorer
        self.info["n_parameters"] = int(sum(t.numel() for t in scorer.net.parameters()))
        return self

    def fit_stream(self, source, X_val=None, y_val=None, w_val=None):
        """Train from a :class:`~hepml_steps.dataset.FitSource` (data larger than memory).

        A first pass over the chunks checks them and fits the scaling
        (target or input moments, weighted as in :meth:`fit`); every epoch then
        reads the chunks in a random order through a shuffled buffer of
        :attr:`shuffle_buffer_events` events (:meth:`FitSource.shuffled_batches`),
        so only the buffer, one chunk and the validation split are in memory;
        ``X_val`` may be a FitSource of the validation split (``y_val`` and
        ``w_val`` None, ``streams_validation``): it is then evaluated chunk by
        chunk (:class:`_StreamedValidation`), holding its outputs, targets and
        weights, not its features.
        Deterministic for a seed; the events of a mini-batch differ from
        :meth:`fit`'s, so the result is statistically equivalent to it, not
        identical. Raises as :meth:`fit`.
        """
        self.n_features = None
        if source.n_events == 0:
            raise DataError(f"family '{self.name}': no training events")
        self.n_features = int(source.n_features)
        if X_val is not None and len(X_val) == 0:
            X_val = None
        if X_val is not None and not is_source(X_val):
            X_val = self._as_X(X_val, "X_val")
            w_val = self._as_w(w_val, len(X_val), "w_val")
        device = self._resolve_device()
        self.history = {"train_loss": [], "validation_loss": []}
        if X_val is not None and self.task == "classification":
            self.history["validation_auc"] = []
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        with _threads(self.n_threads), torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(self.seed)
            self.scaling, self._signed, sample = self._fit_scaling_stream(source)
            scorer = self._build(self.n_features, self.scaling).to(device)
            train = _Streamed(self, source, device, sample)
            if X_val is None:
                val = None
            elif is_source(X_val):
                val = _StreamedValidation(self, X_val, device)
            else:
                val = _HeldValidation(self, self._as_tensors(X_val, y_val, w_val, device), y_val, w_val)
            self._train(scorer.net, train, val)
        self.scorer = scorer
        self.info["n_parameters"] = int(sum(t.numel() for t in scorer.net.parameters()))
        self.info["streamed"] = {"events": int(source.n_events), "buffer_events": int(self.shuffle_buffer_events)}
        return self

    def _fit_scaling_stream(self, source) -> tuple[dict, bool, tuple]:
        """:meth:`_fit_scaling` over the chunks of ``source`` (each checked as :meth:`fit`
        checks ``X``, ``w``), whether any fit weight is negative, and the events of the
        initial training loss: every k-th event of the split (``X, y, w``; k the smallest
        stride that keeps :data:`INITIAL_LOSS_EVENTS` or fewer), as :meth:`fit` takes them.
        The sample is copied into arrays allocated once (small copies kept per chunk would
        sit on the heap between the freed chunks)."""
        moments = _Moments()
        out: dict = {}
        signed = False
        sample = _EveryKth(source.n_events, INITIAL_LOSS_EVENTS)
        for X, y, w in source.chunks():
            X = self._as_X(X, "X")
            w = self._as_w(w, len(X), "sample_weight")
            sample.add(X, y, w)
            part = self._fit_scaling(X, y, w)  # checks the targets of the chunk
            if "n_classes" in part:
                out["n_classes"] = max(out.get("n_classes", 0), part["n_classes"])
            column = self._scaling_column(X, y)
            if column is not None:
                moments.add(column, w)
            signed = signed or bool(np.any(w < 0))
        if self.task == "multiclass" and self.n_classes:
            out["n_classes"] = int(self.n_classes)
        return {**out, **self._scaling_from_moments(moments)}, signed, sample.result()

    def _scaling_column(self, X, y):
        """What :meth:`_fit_scaling` takes moments of (``None``: nothing), for the streamed fit."""
        return None

    def _scaling_from_moments(self, moments) -> dict:
        """The scaling constants from the streamed moments (see :meth:`_scaling_column`)."""
        return {}

    def _checked_inputs(self, X, w, X_val, w_val):
        """(X, w, X_val, w_val) as float32 arrays; ``X_val`` None when there is no validation event."""
        self.n_features = None
        X = self._as_X(X, "X")
        if len(X) == 0:
            raise DataError(f"family '{self.name}': no training events")
        self.n_features = X.shape[1]
        w = self._as_w(w, len(X), "sample_weight")
        if X_val is None or len(X_val) == 0:
            return X, w, None, None
        X_val = self._as_X(X_val, "X_val")
        return X, w, X_val, self._as_w(w_val, len(X_val), "w_val")

    def _as_tensors(self, X, y, w, device) -> tuple:
        """(network input, target, weights) as tensors on ``device``."""
        inp, tgt = self._training_tensors(X, y)
        return _tensor(inp).to(device), _tensor(tgt).to(device), _tensor(w).to(device)

    def _train(self, net, train, val) -> None:
        """The epoch loop: train, validate (``val``: a :class:`_HeldValidation`, a
        :class:`_StreamedValidation` or None), report, stop early; records in
        ``history`` and ``info``."""
        p = self.params
        optimizer = self._make_optimizer(net.parameters())
        streamed = isinstance(train, _Streamed)
        if streamed:
            self.info["initial_train_loss"] = train.initial_loss(net)
        else:
            self.info["initial_train_loss"] = self._every_kth_loss(net, train)
        if val is not None:
            val.begin(net)
        stop = _EarlyStopping(p["early_stopping_patience"] if val is not None else 0)
        rng = np.random.default_rng(self.seed)
        epoch, started = -1, time.perf_counter()
        for epoch in range(p["epochs"]):
            if streamed:
                metrics = {"train_loss": train.epoch(net, optimizer, rng, epoch)}
            else:
                metrics = {"train_loss": self._train_epoch(net, optimizer, train, rng, epoch)}
            if val is not None:
                val_loss, out = val.evaluate(net)
                metrics = {**metrics, "validation_loss": val_loss, **self._validation_extras(out, val.y, val.w)}
                stop.update(val_loss, epoch, net)
            for k, v in metrics.items():
                self.history[k].append(v)
            log_progress(log, self.name, "epoch", epoch + 1, p["epochs"], metrics, time.perf_counter() - started)
            self.report_epoch(epoch, metrics)  # a pruning callback raises out of fit
            if stop.triggered:
                break
        if val is not None:
            self.info["initial_validation_loss"] = val.initial_loss()
        self.info["epochs_run"] = epoch + 1
        self.info["early_stopped"] = bool(stop.triggered and epoch + 1 < p["epochs"])
        if self.info["early_stopped"]:
            log.info(
                "%s: stopped early after epoch %d/%d; best epoch %d (val_loss %.4g)",
                self.name,
                epoch + 1,
                p["epochs"],
                stop.best_epoch + 1,
                stop.best_loss,
            )
        if stop.best_state is not None:
            net.load_state_dict(stop.best_state)
            self.info["best_epoch"] = stop.best_epoch
            self.info["best_validation_loss"] = stop.best_loss
        else:  # no early stopping: the last epoch's weights are kept
            self.info["best_epoch"] = epoch if epoch >= 0 else None
            if val is not None and stop.best_epoch is not None:
                self.info["lowest_validation_loss_epoch"] = stop.best_epoch
        net.eval()

    def _train_epoch(self, net, optimizer, train, rng, epoch: int) -> float:
        """One pass over the shuffled training events; the weighted mean training loss."""
        Xt, Tt, Wt = train
        net.train()
        order = _tensor(rng.permutation(len(Xt))).to(Xt.device)
        bs = self.params["batch_size"]
        batches = ((Xt[idx], Tt[idx], Wt[idx]) for idx in (order[s : s + bs] for s in range(0, len(Xt), bs)))
        return self._descend(net, optimizer, batches, Xt.device, epoch)

    def _descend(self, net, optimizer, batches, device, epoch: int) -> float:
        """One gradient step per ``(input, target, weight)`` mini-batch; the weighted mean training loss.

        Raises
        ------
        FamilyError
            A non-finite training loss (divergence).
        """
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        w_sum = torch.zeros((), device=device, dtype=torch.float64)
        # each batch's loss and weight copied into two buffers, summed every LOSS_FLUSH batches (no
        # host sync per batch); kept as a list of small tensors, they sat on the heap between the
        # batches' freed activations: the train step at 1M events (147 batches an epoch) grew 46
        # MiB in its first epoch
        buffers, n = None, 0

        def flush():
            nonlocal loss_sum, w_sum, n
            if n:
                t = buffers[1][:n].double()
                loss_sum, w_sum = loss_sum + (buffers[0][:n].double() * t).sum(), w_sum + t.sum()
                n = 0

        for xb, tb, wb in batches:
            per = self._per_event_loss(net(xb), tb)
            loss, total = self._weighted_mean(per, wb, self._signed)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if buffers is None:
                buffers = tuple(torch.empty(LOSS_FLUSH, dtype=v.dtype, device=v.device) for v in (loss, total))
            buffers[0][n] = loss.detach()
            buffers[1][n] = total.detach()
            n += 1
            if n >= LOSS_FLUSH:
                flush()
        flush()
        train_loss = float(loss_sum / w_sum)
        if not math.isfinite(train_loss):
            raise FamilyError(
                f"family '{self.name}': training diverged (training loss {train_loss}) in epoch {epoch}; "
                f"try a lower learning_rate (now {self.params['learning_rate']:g}) or another optimizer"
            )
        return train_loss

    # -- inference ---------------------------------------------------------------
    def predict_score(self, X):
        if self.scorer is None:
            raise FamilyError(f"family '{self.name}': the model is not fitted")
        X = self._as_X(X, "X", check_finite=False)  # checked pass by pass: no mask of the whole batch
        if len(X) == 0:
            return np.empty(0, dtype=np.float64)
        dev = next(self.scorer.parameters()).device
        self.scorer.eval()
        res = None  # one array of all events, as in _evaluate (no list of parts on the heap)
        step = CPU_SCORE_BATCH if dev.type == "cpu" else INFERENCE_BATCH
        with _threads(self.n_threads), torch.no_grad():
            for i in range(0, len(X), step):
                self._check_finite(X[i : i + step], "X")
                part = self.scorer(_tensor(X[i : i + step]).to(dev)).cpu().numpy()
                if res is None:
                    res = np.empty((len(X), *part.shape[1:]), dtype=np.float64)
                res[i : i + len(part)] = part
                del part
        return res

    def use_device(self, device: str) -> None:
        self.device = device
        if self.scorer is not None:
            self.scorer.to(self._resolve_device())

    # -- files ---------------------------------------------------------------------
    def _config(self) -> dict:
        return {
            "format": CONFIG_FORMAT,
            "family": self.name,
            "task": self.task,
            "n_features": self.n_features,
            "layer_sizes": self._layer_sizes(self.n_features),
            "hidden_layers": self.params["hidden_layers"],
            "activation": self.params["activation"],
            "step_surrogate_slope": self.params["step_surrogate_slope"],
            "scaling": self.scaling,
            "params": self.params,
            "torch_version": torch.__version__,
        }

    def save(self, directory) -> list[str]:
        if self.scorer is None:
            raise FamilyError(f"family '{self.name}': cannot save a model that is not fitted")
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.scorer.net.state_dict().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            torch.save(state, tmp)
        write_json(directory / CONFIG_FILE, self._config())
        return [WEIGHTS_FILE, CONFIG_FILE]

    @classmethod
    def load(cls, directory, meta: dict) -> TorchFamily:
        directory = Path(directory)
        cfg_path = directory / CONFIG_FILE
        if not cfg_path.exists():
            raise DataError(f"missing input file: {cfg_path}")
        with culprit(cfg_path, FamilyError, "not a hepml model config"):
            cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != CONFIG_FORMAT or cfg.get("family") != cls.name:
            raise FamilyError(f"{cfg_path} is not a '{cls.name}' model config ({CONFIG_FORMAT})")
        self = cls(task=cfg["task"], params=cfg["params"], seed=meta.get("seed", 0), device="cpu")
        self.n_features = int(cfg["n_features"])
        self.scaling = cfg.get("scaling") or {}
        if self._layer_sizes(self.n_features) != list(cfg["layer_sizes"]):
            raise FamilyError(f"{cfg_path}: layer sizes {cfg['layer_sizes']} do not match its params")
        scorer = self._build(self.n_features, self.scaling)
        # weights_only=True: only tensors and plain containers are accepted, nothing is unpickled
        with culprit(directory / WEIGHTS_FILE, FamilyError, "not a hepml model weights file"):
            state = torch.load(directory / WEIGHTS_FILE, weights_only=True, map_location="cpu")
        try:
            scorer.net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:  # not a state dict, or not this net's
            raise FamilyError(
                f"{directory / WEIGHTS_FILE} does not fit the architecture in {cfg_path}: {describe(exc)}"
            ) from exc
        scorer.eval()
        self.scorer = scorer
        self.info["device"], self.info["device_note"] = "cpu", "loaded on cpu"
        return self

    def to_onnx(self, path, n_features: int | None = None) -> None:
        """Write the model as ONNX: input ``features`` [N, n_features] -> output ``score`` [N] (= predict_score).

        Uses torch's TorchScript exporter (``dynamo=False``, opset 17): for a
        64-64 MLP of 15 inputs it took 0.16 s where the dynamo exporter took 1.9
        s, a fixed cost of every torch train job. The dynamo exporter (it needs
        onnxscript) is the fallback, where the TorchScript one is missing or fails.
        """
        import onnx

        if self.scorer is None:
            raise FamilyError(f"family '{self.name}': cannot export a model that is not fitted")
        if n_features is not None and int(n_features) != self.n_features:
            raise FamilyError(
                f"family '{self.name}': export asked for {n_features} features, the model has {self.n_features}"
            )
        model = copy.deepcopy(self.scorer).cpu().eval()
        example = (torch.zeros(2, self.n_features, dtype=torch.float32),)
        with torch.no_grad(), _threads(self.n_threads), _quiet_exporter():
            try:
                buf = io.BytesIO()
                torch.onnx.export(
                    model,
                    example,
                    buf,
                    dynamo=False,
                    input_names=["features"],
                    output_names=["score"],
                    opset_version=17,
                    dynamic_axes={"features": {0: "batch"}, "score": {0: "batch"}},
                )
                proto = onnx.load_from_string(buf.getvalue())
            except Exception as legacy_error:
                try:
                    import onnxscript  # noqa: F401  (needed by the dynamo exporter)
                except ImportError:
                    raise legacy_error from None
                program = torch.onnx.export(
                    model,
                    example,
                    dynamo=True,
                    input_names=["features"],
                    output_names=["score"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    verbose=False,
                )
                proto = program.model_proto
        onnx.checker.check_model(proto)
        names = ([i.name for i in proto.graph.input], [o.name for o in proto.graph.output])
        if names != (["features"], ["score"]):
            raise FamilyError(f"family '{self.name}': ONNX export gave inputs/outputs {names}")
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(proto.SerializeToString())


class _Streamed:
    """The training events of :meth:`TorchFamily.fit_stream`: mini-batches of a
    shuffled pass over a FitSource (each chunk converted once, as the shuffle buffer
    holds it), and the evenly spaced ``sample`` ``(X, y, w)`` of the initial loss."""

    def __init__(self, family: TorchFamily, source, device, sample=None):
        self.family, self.source, self.device, self.sample = family, source, device, sample

    def _tensors(self, X, y, w):
        """(input, target, weight) tensors on the device of :meth:`_training_arrays`' arrays."""
        inp, tgt, w = (None if a is None else _tensor(a).to(self.device) for a in self._training_arrays(X, y, w))
        return inp, (inp if tgt is None else tgt), w

    def initial_loss(self, net) -> float:
        """The weighted mean loss (eval mode, no grad) of the evenly spaced ``sample``."""
        return self.family._evaluate(net, *self._tensors(*self.sample))[0]

    def _training_arrays(self, X, y, w):
        """A chunk's (network input, target or None when it is the input, weights) as the
        shuffle buffer holds them: converted once per chunk, not per mini-batch."""
        inp, tgt = self.family._training_tensors(np.asarray(X, dtype=np.float32), y)
        return inp, (None if tgt is inp else tgt), np.asarray(w, dtype=np.float32)

    def epoch(self, net, optimizer, rng, epoch: int) -> float:
        """One shuffled pass of gradient steps; the weighted mean training loss."""
        net.train()
        fam = self.family
        shuffled = self.source.shuffled_batches(
            fam.params["batch_size"], fam.shuffle_buffer_events, rng, prepare=self._training_arrays
        )
        on_cpu = self.device.type == "cpu"

        def batches():  # a batch's arrays are fresh copies (shuffled_batches): wrapped, not copied
            for inp, tgt, w in shuffled:
                t = [torch.from_numpy(inp), None if tgt is None else torch.from_numpy(tgt), torch.from_numpy(w)]
                if not on_cpu:
                    t = [None if a is None else a.to(self.device) for a in t]
                yield t[0], (t[0] if t[1] is None else t[1]), t[2]

        return fam._descend(net, optimizer, batches(), self.device, epoch)


class _HeldValidation:
    """The validation split in memory: its tensors (input, target, weight) and its
    targets ``y`` and weights ``w`` as given (for :meth:`TorchFamily._validation_extras`)."""

    def __init__(self, family: TorchFamily, tensors, y, w):
        self.family, self.tensors, self.y, self.w = family, tensors, y, w

    def evaluate(self, net):
        """(weighted mean loss, outputs of every event): :meth:`TorchFamily._evaluate`."""
        return self.family._evaluate(net, *self.tensors)

    def begin(self, net) -> None:
        """Keep the untrained ``net``'s weighted mean loss of every k-th event (:data:`INITIAL_LOSS_EVENTS`)."""
        self._initial = self.family._every_kth_loss(net, self.tensors)

    def initial_loss(self) -> float:
        """The loss :meth:`begin` kept."""
        return self._initial


class _StreamedValidation(_Streamed):
    """The validation split as a FitSource, evaluated chunk by chunk (file order).

    Holds the outputs of every event (one tensor, n_events × outputs) and the
    targets ``y`` and fit weights ``w`` of every event (for the validation
    AUC), filled at each evaluation: 20 bytes per event with one output
    (40 MiB at 2M events) where the split held as arrays (15 float32
    features) cost 146 MiB throughout the fit.
    """

    def __init__(self, family: TorchFamily, source, device):
        super().__init__(family, source, device)
        self.y = self.w = None
        self._untrained = self._initial = None

    def begin(self, net) -> None:
        """Keep a copy of the untrained ``net``: the first :meth:`evaluate` takes its loss
        of every k-th event (:data:`INITIAL_LOSS_EVENTS`) in the same read of the split
        (a pass of its own cost as much as an epoch's validation: 0.34 s at 2M events).
        A non-finite validation value is therefore reported after the first epoch, not
        before it (the training split is checked before training, in its own first pass)."""
        self._untrained, self._initial = copy.deepcopy(net), None

    def initial_loss(self) -> float:
        """The untrained network's loss of every k-th event (a pass of its own when no
        :meth:`evaluate` has run since :meth:`begin`: no epoch)."""
        if self._untrained is not None:
            sample = _EveryKth(self.source.n_events, INITIAL_LOSS_EVENTS)
            for X, y, w in self.source.chunks():
                X = self.family._as_X(X, "X_val")
                sample.add(X, y, self.family._as_w(w, len(X), "w_val"))
            self._take_initial(sample)
        return self._initial

    def _take_initial(self, sample) -> None:
        self._initial = self.family._evaluate(self._untrained, *self._tensors(*sample.result()))[0]
        self._untrained = None

    def evaluate(self, net):
        """(weighted mean loss, outputs of every event), as :meth:`TorchFamily._evaluate`
        over the whole split gives them up to the order of summation; the first after
        :meth:`begin` also takes the initial loss."""
        n, start, loss_sum, w_sum, res = self.source.n_events, 0, 0.0, 0.0, None
        sample = None if self._untrained is None else _EveryKth(n, INITIAL_LOSS_EVENTS)
        for X, y, w in self.source.chunks():
            X = self.family._as_X(X, "X_val")
            w = self.family._as_w(w, len(X), "w_val")
            if sample is not None:
                sample.add(X, y, w)
            part_loss, part_w, out = self.family._evaluate_sums(net, *self._tensors(X, y, w))
            loss_sum, w_sum = loss_sum + part_loss, w_sum + part_w
            if res is None:
                res = torch.empty((n, *out.shape[1:]), dtype=out.dtype, device=out.device)
                self.y = None if y is None else np.empty(n, dtype=np.asarray(y).dtype)
                self.w = np.empty(n, dtype=np.float32)
            res[start : start + len(out)] = out
            if self.y is not None:
                self.y[start : start + len(out)] = y
            self.w[start : start + len(out)] = w
            start += len(out)
            del out
        if sample is not None:
            self._take_initial(sample)
        return (loss_sum / w_sum if w_sum > 0 else float("nan")), res


class _EveryKth:
    """Every k-th event of a pass over chunks ``(X, y, w)`` (``y`` may be None), k the smallest
    stride that keeps at most ``at_most`` of ``n_events``: the events ``[::k]`` of the
    concatenated chunks, copied into arrays allocated at the first chunk (small copies kept
    per chunk would sit on the heap between the freed chunks)."""

    def __init__(self, n_events: int, at_most: int):
        self.step = max(1, math.ceil(n_events / at_most))
        self.size = len(range(0, n_events, self.step))
        self.kept, self.n, self.offset = None, 0, 0

    def add(self, X, y, w) -> None:
        first = (-self.offset) % self.step
        part = (X[first :: self.step], None if y is None else np.asarray(y)[first :: self.step], w[first :: self.step])
        if self.kept is None:
            self.kept = tuple(None if a is None else np.empty((self.size, *a.shape[1:]), a.dtype) for a in part)
        for kept, a in zip(self.kept, part):
            if kept is not None:
                kept[self.n : self.n + len(a)] = a
        self.n += len(part[0])
        self.offset += len(X)

    def result(self) -> tuple:
        """(X, y or None, w) of the events kept."""
        return tuple(None if a is None else a[: self.n] for a in self.kept)


class _Moments:
    """Running mean and variance per column, weighted and unweighted (Chan et al.'s
    pairwise update), for the streamed :func:`_weighted_moments`."""

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = None
        self.w_sum, self.w_mean, self.w_m2, self.negative = 0.0, None, None, False

    def add(self, X, w) -> None:
        X = np.asarray(X, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if len(X) == 0:
            return
        self.negative = self.negative or bool(np.any(w < 0))
        self.n, self.mean, self.m2 = _merge(self.n, self.mean, self.m2, len(X), X.mean(axis=0), X.var(axis=0) * len(X))
        ws = float(w.sum())
        if ws > 0 and not self.negative:
            mu = np.average(X, axis=0, weights=w)
            m2 = (w[:, None] * (X - mu) ** 2).sum(axis=0)
            self.w_sum, self.w_mean, self.w_m2 = _merge(self.w_sum, self.w_mean, self.w_m2, ws, mu, m2)

    def result(self):
        """(mean, std) as :func:`_weighted_moments` gives them for all the events added."""
        if not self.negative and self.w_sum > 0:
            mean, var = self.w_mean, self.w_m2 / self.w_sum
        else:
            mean, var = self.mean, self.m2 / self.n
        std = np.sqrt(var)
        return mean, np.where(np.isfinite(std) & (std > 0), std, 1.0)


def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Combine the (count or weight sum, mean, sum of squared deviations) of two samples."""
    if mean_a is None or n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)


class _EarlyStopping:
    """The best validation loss so far, its epoch, and (with patience > 0) its weights."""

    def __init__(self, patience: int):
        self.patience = int(patience)
        self.best_loss, self.best_epoch, self.best_state, self.stale = math.inf, None, None, 0

    def update(self, loss: float, epoch: int, net) -> None:
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.stale = loss, epoch, 0
            if self.patience:
                self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            self.stale += 1

    @property
    def triggered(self) -> bool:
        return bool(self.patience and self.stale >= self.patience)


_COMMON = {
    "activation": "relu",
    "step_surrogate_slope": 5.0,
    "optimizer": "adam",
    "momentum": 0.9,
    "l2": 0.0,
    "learning_rate": 1e-3,
    "batch_size": 512,
    "epochs": 20,
    "early_stopping_patience": 5,
    "dropout": 0.0,
}
_COMMON_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "l2": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [128, 256, 512, 1024]},
    "activation": {"type": "categorical", "choices": ["relu", "tanh", "softplus", "logistic"]},
}


# --------------------------------------------------------------------------
# the families
# --------------------------------------------------------------------------
class MLPFamily(TorchFamily):
    """Feed-forward network: one output (logit for classification, value for
    regression) or K logits (multiclass)."""

    name = "mlp"
    tasks = ("classification", "multiclass", "regression")
    kind = ""  # set per instance: the task
    losses = {
        "classification": ("cross_entropy", "mse", "absolute", "hinge"),
        "multiclass": ("cross_entropy", "mse", "absolute", "hinge"),
        "regression": ("mse", "absolute"),
    }
    default_params = {"hidden_layers": [64, 64], **_COMMON, "loss": "auto", "standardize_target": True}
    search_space = {
        **_COMMON_SPACE,
        "hidden_layers": {"type": "categorical", "choices": [[32], [64, 64], [128, 64], [64, 64, 64]]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    }

    def __init__(
        self,
        task: str = "classification",
        params: dict | None = None,
        seed: int = 0,
        n_threads: int = 1,
        device: str = "cpu",
    ):
        self.kind = task
        super().__init__(task=task, params=params, seed=seed, n_threads=n_threads, device=device)

    def _layer_sizes(self, n_features):
        n_out = int(self.scaling.get("n_classes", 1)) if self.task == "multiclass" else 1
        return [int(n_features), *self.params["hidden_layers"], n_out]

    def _fit_scaling(self, X, y, w):
        if y is None:
            raise DataError(f"family '{self.name}': task '{self.task}' needs targets y")
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(y) != len(X) or not np.all(np.isfinite(y)):
            raise DataError(f"family '{self.name}': y must be {len(X)} finite numbers")
        if self.task == "classification":
            if not np.all(np.isin(y, (0, 1))):
                raise DataError(f"family '{self.name}': classification labels must be 0 or 1")
            return {}
        if self.task == "multiclass":
            if np.any(y < 0) or np.any(y != np.round(y)):
                raise DataError(f"family '{self.name}': multiclass labels must be class indices 0..K-1")
            return {"n_classes": self.classes_count(y)}
        if not self.params["standardize_target"]:
            return {"target_mean": 0.0, "target_std": 1.0}
        mean, std = _weighted_moments(y[:, None], w)
        return {"target_mean": float(mean[0]), "target_std": float(std[0])}

    def _scaling_column(self, X, y):
        if self.task == "regression" and self.params["standardize_target"]:
            return np.asarray(y, dtype=np.float64).reshape(-1, 1)
        return None

    def _scaling_from_moments(self, moments) -> dict:
        if self.task != "regression":
            return {}
        if not self.params["standardize_target"]:
            return {"target_mean": 0.0, "target_std": 1.0}
        mean, std = moments.result()
        return {"target_mean": float(mean[0]), "target_std": float(std[0])}

    def _training_tensors(self, X, y):
        if y is None:
            raise DataError(f"family '{self.name}': task '{self.task}' needs targets y (also for validation)")
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(y) != len(X):
            raise DataError(f"family '{self.name}': {len(y)} targets for {len(X)} events")
        if self.task == "regression":
            y = (y - self.scaling.get("target_mean", 0.0)) / self.scaling.get("target_std", 1.0)
        if self.task == "multiclass":
            return X, y.astype(np.int64)
        return X, y.astype(np.float32)

    def _per_event_loss(self, out, target):
        loss = self.params["loss"]
        if self.task == "multiclass":
            if loss == "cross_entropy":
                return F.cross_entropy(out, target, reduction="none")
            if loss == "hinge":
                return F.multi_margin_loss(out, target, reduction="none")
            d = torch.softmax(out, dim=1) - F.one_hot(target, out.shape[1]).to(out.dtype)
            return (d**2).sum(dim=1) if loss == "mse" else d.abs().sum(dim=1)
        z = out[:, 0]
        if self.task == "classification":
            if loss == "cross_entropy":
                return F.binary_cross_entropy_with_logits(z, target, reduction="none")
            if loss == "hinge":
                return F.relu(1 - (2 * target - 1) * z)
            z = torch.sigmoid(z)
        return (z - target) ** 2 if loss == "mse" else (z - target).abs()

    def _validation_extras(self, out, y_val, w_val):
        if self.task != "classification":
            return {}
        from sklearn.metrics import roc_auc_score

        step = max(1, math.ceil(len(out) / VALIDATION_AUC_EVENTS))  # evenly spaced: see VALIDATION_AUC_EVENTS
        score = torch.sigmoid(out[::step, 0]).cpu().numpy()
        w = None if w_val is None else np.asarray(w_val)[::step]
        try:
            auc = float(roc_auc_score(np.asarray(y_val)[::step], score, sample_weight=w))
        except ValueError:  # a single class in the validation set
            auc = float("nan")
        return {"validation_auc": auc}


class AutoencoderFamily(TorchFamily):
    """Autoencoder: encoder ``hidden_layers`` (latent = last), mirrored decoder.

    Inputs are standardised internally with the training mean/std; the
    anomaly score is the per-event mean squared reconstruction error over the
    (standardised) features. Fit on background only (``y`` is ignored).
    """

    name = "autoencoder"
    tasks = ("anomaly",)
    kind = "anomaly"
    losses = {"anomaly": ("mse", "absolute")}
    default_params = {"hidden_layers": [32, 8], **_COMMON, "loss": "auto"}
    search_space = {
        **_COMMON_SPACE,
        "hidden_layers": {"type": "categorical", "choices": [[16, 4], [32, 8], [64, 16], [32, 16, 4]]},
    }

    def _layer_sizes(self, n_features):
        hl = self.params["hidden_layers"]
        return [int(n_features), *hl, *hl[-2::-1], int(n_features)]

    def _fit_scaling(self, X, y, w):
        mean, std = _weighted_moments(X, w)
        return {"input_mean": [float(v) for v in mean], "input_std": [float(v) for v in std]}

    def _scaling_column(self, X, y):
        return X

    def _scaling_from_moments(self, moments) -> dict:
        mean, std = moments.result()
        return {"input_mean": [float(v) for v in mean], "input_std": [float(v) for v in std]}

    def _training_tensors(self, X, y):
        mean = np.asarray(self.scaling["input_mean"], dtype=np.float32)
        std = np.asarray(self.scaling["input_std"], dtype=np.float32)
        z = ((X - mean) / std).astype(np.float32)
        return z, z

    def _per_event_loss(self, out, target):
        d = out - target
        return (d**2).mean(dim=1) if self.params["loss"] == "mse" else d.abs().mean(dim=1)
