"""PyTorch families: MLP (classification/regression) and autoencoder (anomaly)."""

import json
import logging
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score, roc_auc_score

from hepml_steps.errors import FamilyError
from hepml_steps.families.torch_nets import ACTIVATIONS, OPTIMIZERS, AutoencoderFamily, MLPFamily, Net, Step

# learning rates that suit each optimizer for a few epochs on small data
LR = {
    "sgd": 0.3,
    "momentum": 0.02,
    "nesterov": 0.02,
    "adagrad": 0.05,
    "adadelta": 1.0,
    "rmsprop": 0.003,
    "adam": 0.01,
    "amsgrad": 0.01,
}


def circle(n=3000, seed=0, n_features=4):
    """Signal inside a circle in (x0, x1): not linearly separable."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    y = ((X[:, 0] ** 2 + X[:, 1] ** 2) < 1.4).astype(np.int64)
    return X, y


def easy(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return X, y


def mlp(task="classification", seed=0, **params):
    base = {"epochs": 8, "batch_size": 128, "learning_rate": 0.01}
    return MLPFamily(task=task, params={**base, **params}, seed=seed)


def test_mlp_learns_a_nonlinear_boundary():
    X, y = circle()
    m = mlp(hidden_layers=[32, 32], epochs=15).fit(X[:2000], y[:2000], X_val=X[2000:], y_val=y[2000:])
    s = m.predict_score(X[2000:])
    assert s.dtype == np.float64 and s.shape == (1000,) and np.all((s >= 0) & (s <= 1))
    assert roc_auc_score(y[2000:], s) > 0.9
    n = m.info["epochs_run"]
    assert len(m.history["train_loss"]) == len(m.history["validation_loss"]) == len(m.history["validation_auc"]) == n
    assert m.history["validation_auc"][-1] > 0.9
    assert m.history["train_loss"][-1] < m.history["train_loss"][0]


def test_scoring_refuses_a_nonfinite_value_in_any_forward_pass(monkeypatch):
    """predict_score checks finiteness pass by pass (CPU_SCORE_BATCH events): a NaN or inf in
    a later pass than the first still stops it, and whole-batch scores equal pass-by-pass ones."""
    from hepml_steps.errors import DataError
    from hepml_steps.families import torch_nets

    X, y = easy()
    m = mlp(epochs=1).fit(X, y)
    monkeypatch.setattr(torch_nets, "CPU_SCORE_BATCH", 256)
    whole = m.predict_score(X)
    monkeypatch.setattr(torch_nets, "CPU_SCORE_BATCH", 4096)
    np.testing.assert_allclose(whole, m.predict_score(X), rtol=1e-6)
    monkeypatch.setattr(torch_nets, "CPU_SCORE_BATCH", 256)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[1500, 2] = bad  # in the sixth pass
        with pytest.raises(DataError, match="X contains NaN or infinite values"):
            m.predict_score(Xb)


def test_linear_activation_cannot_learn_the_circle():
    """With the identity activation the whole net is linear: no better than chance on a circle."""
    X, y = circle()
    m = mlp(activation="linear", epochs=10).fit(X[:2000], y[:2000])
    assert roc_auc_score(y[2000:], m.predict_score(X[2000:])) < 0.65


def _trains(m, X, y):
    m.fit(X, y)
    hist = m.history["train_loss"]
    assert len(hist) == m.params["epochs"] and np.all(np.isfinite(hist))
    s = m.predict_score(X)
    assert np.all(np.isfinite(s))
    final = m.loss(X, y)
    assert np.isfinite(final) and final < 0.97 * m.info["initial_train_loss"], (
        m.params["activation"],
        m.params["optimizer"],
        m.info["initial_train_loss"],
        final,
    )
    return s


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_every_activation_trains(activation, optimizer):
    X, y = easy()
    _trains(mlp(activation=activation, optimizer=optimizer, learning_rate=LR[optimizer], epochs=5), X, y)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains(optimizer):
    X, y = easy()
    s = _trains(mlp(optimizer=optimizer, learning_rate=LR[optimizer], epochs=5), X, y)
    assert roc_auc_score(y, s) > 0.85


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "absolute", "hinge"])
def test_every_classification_loss_trains(loss):
    X, y = easy()
    s = _trains(mlp(loss=loss, epochs=5), X, y)
    assert roc_auc_score(y, s) > 0.85
    assert np.all((s >= 0) & (s <= 1))  # the score is a probability whatever the loss


def test_loss_values_match_their_definitions():
    X, y = easy(300)
    for loss in ("cross_entropy", "mse", "absolute", "hinge"):
        m = mlp(loss=loss, epochs=0).fit(X, y)
        z = m.scorer.net(torch.from_numpy(X)).detach().double().numpy()[:, 0]
        p = 1 / (1 + np.exp(-z))
        expected = {
            "cross_entropy": -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)),
            "mse": np.mean((p - y) ** 2),
            "absolute": np.mean(np.abs(p - y)),
            "hinge": np.mean(np.maximum(0, 1 - (2 * y - 1) * z)),
        }[loss]
        assert m.loss(X, y) == pytest.approx(expected, rel=1e-5), loss


def test_step_activation_surrogate_gradient():
    x = torch.tensor([-2.0, -0.1, 0.0, 0.1, 2.0], requires_grad=True)
    step = Step(slope=5.0)
    out = step(x)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # the exact Heaviside step forward
    out.sum().backward()
    s = torch.sigmoid(5.0 * x.detach())
    assert torch.allclose(x.grad, 5.0 * s * (1 - s))
    assert x.grad[2] == pytest.approx(5.0 / 4)  # steepest at the threshold
    with torch.no_grad():  # inference: plain threshold
        assert step(x).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]

    net = Net([4, 16, 16, 1], "step", slope=5.0)
    X, y = easy(256)
    net(torch.from_numpy(X)).sum().backward()
    first = net.layers[0].weight.grad
    assert first is not None and torch.count_nonzero(first) > 0  # gradients reach the first layer

    m = mlp(activation="step", epochs=10).fit(*easy())
    Xt, yt = easy(1000, seed=9)
    assert roc_auc_score(yt, m.predict_score(Xt)) > 0.8


def test_sample_weights_shift_the_predicted_probability():
    X, y = easy(2000, seed=5)
    plain = mlp(epochs=5).fit(X, y, sample_weight=np.ones(len(y)))
    w = np.where(y == 1, 10.0, 1.0)
    heavy_sig = mlp(epochs=5).fit(X, y, sample_weight=w / w.mean())
    heavy_bkg = mlp(epochs=5).fit(X, y, sample_weight=(1 / w) / (1 / w).mean())
    p0, p1, p2 = (m.predict_score(X).mean() for m in (plain, heavy_sig, heavy_bkg))
    assert p1 > p0 + 0.05 and p2 < p0 - 0.05


def test_integer_weights_equal_duplicated_events():
    X, y = easy(500, seed=2)
    k = np.random.default_rng(3).integers(1, 4, size=len(y))
    Xd, yd = np.repeat(X, k, axis=0), np.repeat(y, k)
    weighted = mlp(epochs=0).fit(X, y, sample_weight=k.astype(float))
    duplicated = mlp(epochs=0).fit(Xd, yd)
    assert weighted.info["initial_train_loss"] == pytest.approx(duplicated.info["initial_train_loss"], rel=1e-6)
    assert weighted.loss(X, y, k) == pytest.approx(weighted.loss(Xd, yd), rel=1e-6)
    # full-batch gradient descent: weighted events and duplicated events take the same steps
    params = {"optimizer": "sgd", "learning_rate": 0.5, "batch_size": 10_000, "epochs": 5}
    a = mlp(**params).fit(X, y, sample_weight=k.astype(float))
    b = mlp(**params).fit(Xd, yd)
    np.testing.assert_allclose(a.predict_score(X), b.predict_score(X), atol=1e-5)
    unweighted = mlp(**params).fit(X, y)  # ...and differently from unweighted events
    assert np.abs(unweighted.predict_score(X) - a.predict_score(X)).max() > 1e-3


def test_early_stopping_restores_the_best_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    y = (X[:, 0] + 1.5 * rng.normal(size=300) > 0).astype(np.int64)  # noisy: a big net overfits
    Xv, yv = X[200:], y[200:]
    m = mlp(hidden_layers=[128, 128], epochs=300, batch_size=32, learning_rate=0.01, early_stopping_patience=5).fit(
        X[:200], y[:200], X_val=Xv, y_val=yv
    )
    n, best = m.info["epochs_run"], m.info["best_epoch"]
    assert n < 300 and m.info["early_stopped"]
    vl = m.history["validation_loss"]
    assert len(vl) == n and best == int(np.argmin(vl)) and n == best + 6
    assert m.loss(Xv, yv) == pytest.approx(vl[best], rel=1e-5)  # the weights are those of the best epoch
    assert m.loss(Xv, yv) < vl[-1]

    off = mlp(hidden_layers=[128, 128], epochs=20, batch_size=32, early_stopping_patience=0).fit(
        X[:200], y[:200], X_val=Xv, y_val=yv
    )
    assert off.info["epochs_run"] == 20 and off.info["best_epoch"] == 19
    assert off.loss(Xv, yv) == pytest.approx(off.history["validation_loss"][-1], rel=1e-5)


def test_validation_loss_uses_validation_weights():
    X, y = easy(1200)
    wv = np.where(y[800:] == 1, 5.0, 1.0)
    a = mlp(epochs=2).fit(X[:800], y[:800], X_val=X[800:], y_val=y[800:])
    b = mlp(epochs=2).fit(X[:800], y[:800], X_val=X[800:], y_val=y[800:], w_val=wv)
    assert a.history["train_loss"] == b.history["train_loss"]
    assert b.history["validation_loss"][-1] == pytest.approx(b.loss(X[800:], y[800:], wv), rel=1e-5)
    assert a.history["validation_loss"][-1] != pytest.approx(b.history["validation_loss"][-1], rel=1e-3)


def test_same_seed_identical_different_seed_different():
    X, y = circle(1500)
    params = {"dropout": 0.2, "epochs": 3}
    a = mlp(seed=7, **params).fit(X, y).predict_score(X)
    b = mlp(seed=7, **params).fit(X, y).predict_score(X)
    c = mlp(seed=8, **params).fit(X, y).predict_score(X)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # fitting does not disturb the caller's global torch RNG
    torch.manual_seed(123)
    r1 = torch.rand(3)
    torch.manual_seed(123)
    mlp(epochs=1).fit(X, y)
    assert torch.equal(torch.rand(3), r1)


def test_epoch_callback_sees_every_epoch_and_can_stop_training():
    X, y = easy(600)
    seen = []
    m = mlp(epochs=4, early_stopping_patience=0)
    m.epoch_callback = lambda epoch, metrics: seen.append((epoch, dict(metrics)))
    m.fit(X[:400], y[:400], X_val=X[400:], y_val=y[400:])
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert set(seen[0][1]) == {"train_loss", "validation_loss", "validation_auc"}
    assert seen[-1][1]["validation_loss"] == m.history["validation_loss"][-1]

    class Pruned(Exception):
        pass

    def prune(epoch, metrics):
        if epoch == 1:
            raise Pruned()

    m = mlp(epochs=10)
    m.epoch_callback = prune
    with pytest.raises(Pruned):
        m.fit(X[:400], y[:400], X_val=X[400:], y_val=y[400:])
    assert len(m.history["train_loss"]) == 2


def test_l2_shrinks_the_weights():
    X, y = easy(1000)
    norm = [
        sum(
            float((p.detach() ** 2).sum())
            for p in mlp(l2=l2, epochs=5, optimizer="sgd", learning_rate=0.1).fit(X, y).scorer.net.parameters()
        )
        for l2 in (0.0, 0.05)
    ]
    assert norm[1] < 0.8 * norm[0]


def test_regression_learns_a_nonlinear_function_in_target_units():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3)).astype(np.float32)
    y = 100.0 * (X[:, 0] ** 2 + X[:, 1]) + 1000.0 + rng.normal(scale=5.0, size=3000)
    m = mlp("regression", epochs=20, hidden_layers=[64, 64]).fit(X[:2000], y[:2000], X_val=X[2000:], y_val=y[2000:])
    assert m.params["loss"] == "mse" and "validation_auc" not in m.history
    scale = m.scaling
    assert scale["target_mean"] == pytest.approx(y[:2000].mean()) and scale["target_std"] == pytest.approx(
        y[:2000].std()
    )
    s = m.predict_score(X[2000:])
    assert r2_score(y[2000:], s) > 0.9
    assert abs(s.mean() - y[2000:].mean()) < 20  # predictions are in target units
    mae = mlp("regression", loss="absolute", epochs=20).fit(X[:2000], y[:2000])
    assert r2_score(y[2000:], mae.predict_score(X[2000:])) > 0.8


def manifold(n, seed):
    """6 features driven by 2 latent variables (plus a little noise)."""
    rng = np.random.default_rng(seed)
    A = np.random.default_rng(42).normal(size=(2, 6))
    return (rng.normal(size=(n, 2)) @ A + 0.05 * rng.normal(size=(n, 6))).astype(np.float32)


def test_autoencoder_flags_out_of_distribution_events():
    bkg = manifold(3000, 0)
    ae = AutoencoderFamily(
        task="anomaly",
        params={"hidden_layers": [16, 2], "epochs": 30, "batch_size": 128, "learning_rate": 0.01},
        seed=0,
    )
    ae.fit(bkg[:2000], None, X_val=bkg[2000:])
    assert ae.scaling["input_mean"] == pytest.approx(bkg[:2000].mean(axis=0).tolist(), abs=1e-5)
    assert [layer.out_features for layer in ae.scorer.net.layers] == [16, 2, 16, 6]
    rng = np.random.default_rng(1)
    ood = (rng.normal(size=(1000, 6)) * bkg.std(axis=0) + bkg.mean(axis=0)).astype(np.float32)
    s_in, s_out = ae.predict_score(bkg[2000:]), ae.predict_score(ood)
    assert s_in.mean() < s_out.mean()
    auc = roc_auc_score(np.r_[np.zeros(1000), np.ones(1000)], np.r_[s_in, s_out])
    assert auc > 0.8
    # the score is the per-event mean squared error of the (standardised) reconstruction
    z = (bkg[2000:2010] - np.array(ae.scaling["input_mean"], np.float32)) / np.array(
        ae.scaling["input_std"], np.float32
    )
    with torch.no_grad():
        rec = ae.scorer.net(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(s_in[:10], ((rec - z) ** 2).mean(axis=1), rtol=1e-5)


def test_save_load_gives_identical_scores(tmp_path):
    X, y = easy(800)
    yr = X[:, 0] * 3 + 2
    models = [
        mlp(activation="step", epochs=2).fit(X, y),
        mlp("regression", epochs=2, activation="tanh").fit(X, yr),
        AutoencoderFamily(task="anomaly", params={"epochs": 2}).fit(X),
    ]
    for i, m in enumerate(models):
        d = tmp_path / str(i)
        d.mkdir()
        assert sorted(m.save(d)) == ["model.pt", "model_config.json"]
        cfg = json.loads((d / "model_config.json").read_text())
        assert cfg["n_features"] == 4 and cfg["task"] == m.task and cfg["activation"] == m.params["activation"]
        state = torch.load(d / "model.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        loaded = type(m).load(d, {"task": m.task, "params": m.params, "seed": 0})
        assert np.array_equal(loaded.predict_score(X), m.predict_score(X))


class Payload:  # anything that is not a tensor: weights_only loading must refuse it
    pass


def test_load_refuses_pickled_objects(tmp_path):
    X, y = easy(300)
    mlp(epochs=1).fit(X, y).save(tmp_path)
    torch.save({"layers.0.weight": Payload()}, tmp_path / "model.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        MLPFamily.load(tmp_path, {"seed": 0})


def _onnx_scores(path, X):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["features"] and [o.name for o in model.graph.output] == ["score"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["score"], {"features": X})[0]


@pytest.mark.parametrize("case", ["classification", "step", "regression", "autoencoder"])
def test_onnx_export_matches_predict_score(case, tmp_path):
    X, y = easy(700)
    if case == "classification":
        m = mlp(epochs=3).fit(X, y)
    elif case == "step":
        m = mlp(epochs=3, activation="step").fit(X, y)
    elif case == "regression":
        m = mlp("regression", epochs=3).fit(X, 50 * X[:, 0] ** 2 + 10)
    else:
        m = AutoencoderFamily(task="anomaly", params={"epochs": 3}).fit(X)
    path = tmp_path / "model.onnx"
    m.to_onnx(path, n_features=4)
    for n in (1, 333):  # dynamic batch axis
        got = _onnx_scores(path, X[:n])
        assert got.shape == (n,)
        np.testing.assert_allclose(got, m.predict_score(X[:n]), rtol=1e-5, atol=1e-5)
    with pytest.raises(FamilyError, match="features"):
        m.to_onnx(path, n_features=5)


@pytest.mark.parametrize(
    "params, pattern",
    [
        ({"activation": "swish"}, r"'mlp'.*activation 'swish'.*allowed: linear, relu, softplus, step, logistic, tanh"),
        ({"optimizer": "lbfgs"}, r"'mlp'.*optimizer 'lbfgs'.*allowed: sgd, momentum, nesterov, adagrad, adadelta"),
        ({"loss": "huber"}, r"'mlp'.*loss 'huber'.*allowed: auto, cross_entropy, mse, absolute, hinge"),
        ({"hidden_layers": [8, 0]}, r"'mlp'.*hidden_layers"),
        ({"dropout": 1.0}, r"'mlp'.*dropout"),
        ({"epochs": 2.5}, r"'mlp'.*epochs"),
    ],
)
def test_invalid_params_name_the_culprit(params, pattern):
    with pytest.raises(FamilyError, match=pattern):
        MLPFamily(params=params)


@pytest.mark.parametrize("loss", ["cross_entropy", "hinge"])
def test_classification_losses_are_refused_for_regression(loss):
    with pytest.raises(FamilyError, match=rf"'mlp'.*loss '{loss}'.*task 'regression'.*allowed: mse, absolute"):
        MLPFamily(task="regression", params={"loss": loss})


def test_autoencoder_params_and_losses():
    with pytest.raises(FamilyError, match=r"'autoencoder'.*loss 'cross_entropy'.*allowed: auto, mse, absolute"):
        AutoencoderFamily(task="anomaly", params={"loss": "cross_entropy"})
    with pytest.raises(FamilyError, match=r"'autoencoder'.*activation 'gelu'"):
        AutoencoderFamily(task="anomaly", params={"activation": "gelu"})
    with pytest.raises(FamilyError, match=r"'autoencoder'.*task 'classification'"):
        AutoencoderFamily(task="classification")
    assert AutoencoderFamily(task="anomaly").params["loss"] == "mse"
    assert MLPFamily(task="classification").params["loss"] == "cross_entropy"
    assert MLPFamily(task="regression").params["loss"] == "mse"
    ae = AutoencoderFamily(task="anomaly", params={"loss": "absolute", "epochs": 2, "optimizer": "rmsprop"})
    X = manifold(500, 3)
    ae.fit(X, np.zeros(len(X)))  # y is accepted and ignored
    assert ae.loss(X) < ae.info["initial_train_loss"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_request_falls_back_to_cpu(caplog):
    X, y = easy(300)
    m = MLPFamily(params={"epochs": 1}, device="cuda")
    with caplog.at_level(logging.WARNING, logger="hepml.torch"):
        m.fit(X, y)
    assert m.info["device"] == "cpu" and "cuda.is_available() is False" in m.info["device_note"]
    assert any("device 'cuda' requested" in r.getMessage() for r in caplog.records)
    auto = MLPFamily(params={"epochs": 1}, device="auto").fit(X, y)
    assert auto.info["device"] == "cpu" and auto.info["device_note"]
    assert MLPFamily(params={"epochs": 1}, device="cpu").fit(X, y).info["device_note"] == "cpu requested"
    with pytest.raises(FamilyError, match="device 'tpu'"):
        MLPFamily(device="tpu")


PROGRESS = re.compile(r"^(mlp|autoencoder): epoch (\d+)/(\d+)((?: \w+ \S+)*) \((\d+\.\d) s\)$")


def _progress(caplog, logger="hepml.torch"):
    """(family, epoch, total, {metric: text}, seconds) of every progress line logged."""
    out = []
    for r in caplog.records:
        m = PROGRESS.match(r.getMessage())
        if r.name == logger and r.levelno == logging.INFO and m:
            pairs = m.group(4).split()
            out.append(
                (m.group(1), int(m.group(2)), int(m.group(3)), dict(zip(pairs[::2], pairs[1::2])), float(m.group(5)))
            )
    return out


def test_every_epoch_logs_a_progress_line(caplog):
    X, y = easy(600)
    with caplog.at_level(logging.INFO, logger="hepml.torch"):
        m = mlp(epochs=4, early_stopping_patience=0).fit(X[:400], y[:400], X_val=X[400:], y_val=y[400:])
    lines = _progress(caplog)
    assert [(f, e, n) for f, e, n, _, _ in lines] == [("mlp", e, 4) for e in (1, 2, 3, 4)]
    for i, (_, _, _, metrics, _) in enumerate(lines):
        assert metrics == {
            "train_loss": f"{m.history['train_loss'][i]:.4g}",
            "val_loss": f"{m.history['validation_loss'][i]:.4g}",
            "val_auc": f"{m.history['validation_auc'][i]:.4g}",
        }
    seconds = [s for *_, s in lines]
    assert seconds == sorted(seconds)  # elapsed since training started
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hepml.torch"):
        AutoencoderFamily(task="anomaly", params={"epochs": 3, "hidden_layers": [4, 2]}).fit(X)
    lines = _progress(caplog)
    assert [(f, e, n, set(mt)) for f, e, n, mt, _ in lines] == [
        ("autoencoder", e, 3, {"train_loss"}) for e in (1, 2, 3)
    ]


def test_early_stopping_logs_where_it_stopped(caplog):
    X, y = easy(600)
    # validation labels flipped: the better the net learns, the worse its validation loss
    with caplog.at_level(logging.INFO, logger="hepml.torch"):
        m = mlp(epochs=50, early_stopping_patience=2).fit(X[:400], y[:400], X_val=X[400:], y_val=1 - y[400:])
    n = m.info["epochs_run"]
    assert m.info["early_stopped"] and n < 50
    assert [e for _, e, *_ in _progress(caplog)] == list(range(1, n + 1))
    assert (
        f"mlp: stopped early after epoch {n}/50; best epoch {m.info['best_epoch'] + 1}"
        in caplog.records[-1].getMessage()
    )


def test_cpu_scores_come_in_cache_sized_passes_in_event_order(monkeypatch):
    """predict_score on the CPU runs CPU_SCORE_BATCH events per forward pass: the scores are those
    of one pass over every event to float32 rounding, row for row, whatever the pass size."""
    from hepml_steps.families import torch_nets

    X, y = circle(n=3000)
    m = mlp(hidden_layers=[16], epochs=2).fit(X, y)
    m.scorer.eval()
    with torch.no_grad():
        whole = m.scorer(torch.from_numpy(X)).numpy().astype(np.float64)
    for step in (1000, 7, torch_nets.CPU_SCORE_BATCH):
        monkeypatch.setattr(torch_nets, "CPU_SCORE_BATCH", step)
        got = m.predict_score(X)
        assert got.dtype == np.float64 and got.shape == whole.shape
        np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-7)


def test_fit_losses_are_evaluated_in_cpu_score_passes(monkeypatch):
    """The validation loss of every epoch is evaluated CPU_SCORE_BATCH events per forward pass on
    the CPU (not a 65,536-event pass, whose activations raised the train step's peak): the
    network never sees more events at once, and the loss is that of one pass over every event."""
    from hepml_steps.families import torch_nets

    X, y = circle(n=3000)
    Xv, yv = circle(n=2500, seed=5)
    monkeypatch.setattr(torch_nets, "CPU_SCORE_BATCH", 300)
    m = mlp(hidden_layers=[16], epochs=2, batch_size=256)
    seen = []
    real_build = m._build

    def build(*a, **k):
        scorer = real_build(*a, **k)
        scorer.net.register_forward_pre_hook(lambda mod, inp: seen.append((mod.training, len(inp[0]))))
        return scorer

    monkeypatch.setattr(m, "_build", build)
    m.fit(X, y, X_val=Xv, y_val=yv)
    evaluated = [n for training, n in seen if not training]
    assert evaluated and max(evaluated) == 300  # 2500 validation events in passes of 300
    loss, _ = m._evaluate(m.scorer.net, *m._as_tensors(Xv, yv, np.ones(len(Xv), np.float32), torch.device("cpu")))
    monkeypatch.setattr(torch_nets, "CPU_SCORE_BATCH", 10**6)
    whole, _ = m._evaluate(m.scorer.net, *m._as_tensors(Xv, yv, np.ones(len(Xv), np.float32), torch.device("cpu")))
    assert loss == pytest.approx(whole, rel=1e-6) and m.history["validation_loss"][-1] == pytest.approx(whole, rel=1e-6)


def test_epoch_training_loss_is_the_weighted_mean_of_the_batch_losses_whatever_the_flush(monkeypatch):
    """_descend keeps each batch's loss and weight in two preallocated buffers summed every
    LOSS_FLUSH batches (no list of small tensors between the batches' activations): the epoch's
    training loss is Σ loss_b · W_b / Σ W_b over the batches, the same for any flush size."""
    from hepml_steps.families import torch_nets

    X, y = circle(n=1000)
    w = np.random.default_rng(2).exponential(size=len(X)).astype(np.float32)
    got = {}
    for flush in (3, 1024):
        monkeypatch.setattr(torch_nets, "LOSS_FLUSH", flush)
        m = mlp(hidden_layers=[8], epochs=1, batch_size=64)
        seen = []
        real = m._weighted_mean

        def weighted_mean(per, wb, signed, _real=real, _seen=seen):
            loss, total = _real(per, wb, signed)
            _seen.append((float(loss.detach()), float(total)))
            return loss, total

        monkeypatch.setattr(m, "_weighted_mean", weighted_mean)
        m.fit(X, y, sample_weight=w)
        losses, totals = np.array(seen).T
        assert len(seen) == 16  # 1000 events in batches of 64
        assert m.history["train_loss"][0] == pytest.approx((losses * totals).sum() / totals.sum(), rel=1e-6)
        got[flush] = m.history["train_loss"][0]
    assert got[3] == pytest.approx(got[1024], rel=1e-12)


def test_validation_auc_of_each_epoch_is_that_of_evenly_spaced_validation_events(monkeypatch):
    """history["validation_auc"] is the weighted AUC of every k-th validation event, k the
    smallest step that keeps VALIDATION_AUC_EVENTS or fewer (a sampled learning curve); the
    validation loss, which early stopping watches, stays that of every event."""
    from hepml_steps.families import torch_nets

    X, y = circle(n=2000)
    Xv, yv = circle(n=2500, seed=5)
    wv = np.random.default_rng(1).exponential(size=len(Xv)).astype(np.float32)
    monkeypatch.setattr(torch_nets, "VALIDATION_AUC_EVENTS", 1000)
    m = mlp(hidden_layers=[16], epochs=1)
    m.fit(X, y, X_val=Xv, y_val=yv, w_val=wv)
    score = m.predict_score(Xv)
    assert m.history["validation_auc"][0] == pytest.approx(roc_auc_score(yv[::3], score[::3], sample_weight=wv[::3]))
    assert m.history["validation_auc"][0] != pytest.approx(roc_auc_score(yv, score, sample_weight=wv), abs=1e-9)
    whole, _ = m._evaluate(m.scorer.net, *m._as_tensors(Xv, yv, wv, torch.device("cpu")))
    assert m.history["validation_loss"][0] == pytest.approx(whole, rel=1e-6)


@pytest.mark.parametrize("streamed", [False, True])
def test_initial_losses_are_those_of_every_kth_event(monkeypatch, streamed):
    """info["initial_train_loss"] and ["initial_validation_loss"]: the untrained network's weighted
    loss on every k-th event of the split (k = ceil(n / INITIAL_LOSS_EVENTS)), in memory as
    streamed (across every chunk, not the first ones: a split in file order may hold one class
    first; the streamed training ones kept in the fit's first pass)."""
    from hepml_steps import dataset
    from hepml_steps.families import torch_nets

    X, y = circle(n=1500)
    order = np.argsort(y, kind="stable")  # the classes one after the other, as concatenated inputs
    X, y = X[order], y[order]
    Xv, yv = circle(n=1200, seed=5)
    order = np.argsort(yv, kind="stable")
    Xv, yv = Xv[order], yv[order]
    w = np.random.default_rng(2).exponential(size=len(X)).astype(np.float32)
    wv = np.random.default_rng(1).exponential(size=len(Xv)).astype(np.float32)
    monkeypatch.setattr(torch_nets, "INITIAL_LOSS_EVENTS", 400)
    m = mlp(hidden_layers=[8], epochs=1)
    untrained = {}
    real_build = m._build

    def build(*a, **k):
        scorer = real_build(*a, **k)
        untrained["state"] = {k: v.clone() for k, v in scorer.net.state_dict().items()}
        return scorer

    monkeypatch.setattr(m, "_build", build)
    if streamed:
        m.fit_stream(
            dataset.ArraySource(X, y, w, chunk_events=300), X_val=dataset.ArraySource(Xv, yv, wv, chunk_events=300)
        )
    else:
        m.fit(X, y, sample_weight=w, X_val=Xv, y_val=yv, w_val=wv)
    net = m.scorer.net
    net.load_state_dict(untrained["state"])
    cpu = torch.device("cpu")
    vpick = slice(None, None, 3)  # 1200 validation events, k = 3
    expected, _ = m._evaluate(net, *m._as_tensors(Xv[vpick], yv[vpick], wv[vpick], cpu))
    assert m.info["initial_validation_loss"] == pytest.approx(expected, rel=1e-6)
    pick = slice(None, None, 4)  # 1500 training events, k = 4: 375 events of both classes
    expected, _ = m._evaluate(net, *m._as_tensors(X[pick], y[pick], w[pick], cpu))
    assert m.info["initial_train_loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("epochs", [0, 1, 3])
def test_streamed_validation_is_read_once_per_epoch(epochs):
    """The streamed fit takes the untrained network's validation loss in the first epoch's
    read of the validation split (a pass of its own only when no epoch runs), and it is the
    same loss as a fit with the validation split in memory gives."""
    from hepml_steps import dataset

    X, y = circle(n=1200)
    Xv, yv = circle(n=900, seed=5)
    wv = np.random.default_rng(1).exponential(size=len(Xv)).astype(np.float32)

    class Counted(dataset.ArraySource):
        passes = 0

        def chunks(self, rng=None):
            Counted.passes += 1
            return super().chunks(rng)

    val = Counted(Xv, yv, wv, chunk_events=250)
    m = mlp(hidden_layers=[8], epochs=epochs).fit_stream(dataset.ArraySource(X, y, chunk_events=250), X_val=val)
    assert Counted.passes == max(epochs, 1)
    held = mlp(hidden_layers=[8], epochs=epochs).fit(X, y, X_val=Xv, y_val=yv, w_val=wv)
    assert m.info["initial_validation_loss"] == pytest.approx(held.info["initial_validation_loss"], rel=1e-6)
    assert len(m.history["validation_loss"]) == epochs


@pytest.mark.parametrize("case", ["classification", "autoencoder"])
def test_onnx_export_falls_back_to_the_dynamo_exporter(case, tmp_path, monkeypatch):
    """The TorchScript exporter is tried first (a fraction of the dynamo one's time); where it
    fails (a torch without it) the dynamo exporter writes a model that still equals predict_score."""
    X, y = easy(500)
    m = (
        mlp(epochs=2).fit(X, y)
        if case == "classification"
        else AutoencoderFamily(task="anomaly", params={"epochs": 2}).fit(X)
    )
    real, calls = torch.onnx.export, []

    def export(*a, dynamo=True, **k):
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("no TorchScript exporter in this torch")
        return real(*a, dynamo=dynamo, **k)

    monkeypatch.setattr(torch.onnx, "export", export)
    path = tmp_path / "model.onnx"
    m.to_onnx(path)
    assert calls == [False, True]
    np.testing.assert_allclose(_onnx_scores(path, X[:77]), m.predict_score(X[:77]), rtol=1e-5, atol=1e-5)
