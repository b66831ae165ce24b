"""The training loop (bench/training/train.py): which epoch is kept, what state is tested, the
guard on a diverging loss, and the class weights of the loss — on a linear model and tiny
data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import bench.training.train
from bench.data.core import Batch, DataSpec, MultimodalData, RunData
from bench.data.load import load_data
from bench.model import BenchModel
from bench.training.train import class_weight, fit, make_adam, train_step
from tests.conftest import toy_arrays

TRAIN = {"lr": 0.05, "batch_size": 32}


class Linear(BenchModel):
    """A linear classifier over the run's modalities side by side: cheap and dropout-free."""

    def __init__(self, spec: DataSpec, nan_at_step: int | None = None,
                 bad: float = float("nan")) -> None:
        super().__init__(spec)
        self.head = nn.Linear(sum(m.num_features for m in spec.modalities), spec.num_classes)
        self.nan_at_step, self.bad, self.steps = nan_at_step, bad, 0

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([batch.x[m.letter] for m in self.spec.modalities], dim=1)
        aux = x.new_zeros(())
        if self.training:
            if self.steps == self.nan_at_step:
                aux = aux + self.bad
            self.steps += 1
        return self.head(x), aux


def _data(num_classes: int = 3, weights: tuple[float, ...] | None = None) -> RunData:
    raw = replace(toy_arrays(n=120, num_classes=num_classes), class_weights=weights)
    return MultimodalData.from_arrays(raw, "toy", "custom").restrict("ABC")


def _model(data: RunData, **kwargs: object) -> Linear:
    torch.manual_seed(0)
    return Linear(data.spec, **kwargs)


def _script_val(monkeypatch: pytest.MonkeyPatch, accuracies: list[float]) -> None:
    """Make the per-epoch validation pass report ``accuracies`` (of 10 samples) in order;
    later calls (the final evaluation) are real."""
    real, left = bench.training.train.predict, list(accuracies)

    def scripted(model, data, split, batch_size=None):
        if split != "val" or not left:
            return real(model, data, split, batch_size)
        right = round(left.pop(0) * 10)
        y = np.zeros(10, dtype=np.int64)
        probs = np.tile([0.0, 1.0, 0.0], (10, 1))
        probs[:right] = [1.0, 0.0, 0.0]
        return probs, y

    monkeypatch.setattr(bench.training.train, "predict", scripted)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("curve", "best"), [
    ([0.2, 0.5, 0.5, 0.4], 1),  # a tie keeps the earlier epoch
    ([0.3, 0.3, 0.3], 0),
    ([0.1, 0.4, 0.6, 0.6, 0.7], 4),  # only a strictly higher accuracy moves the choice
])
def test_the_first_epoch_with_the_strictly_highest_val_accuracy_wins(monkeypatch, curve, best):
    _script_val(monkeypatch, curve)
    data = _data()
    result = fit(_model(data), data, epochs=len(curve), **TRAIN)
    assert result.best_epoch == best
    assert result.val_acc_curve == pytest.approx(curve)
    assert len(result.epoch_s) == len(curve)


def test_the_selected_epoch_state_is_restored_and_tested(monkeypatch):
    _script_val(monkeypatch, [0.2, 0.6, 0.6, 0.4])
    data = _data()
    model = _model(data)
    states: list[dict[str, torch.Tensor]] = []
    result = fit(model, data, epochs=4, on_epoch=lambda epoch: states.append(_state(model)),
                 **TRAIN)
    assert result.best_epoch == 1 and len(states) == 4
    after = _state(model)
    assert all(torch.equal(after[k], states[1][k]) for k in after)
    assert not all(torch.equal(after[k], states[3][k]) for k in after)  # not the last epoch
    assert not all(torch.equal(after[k], states[2][k]) for k in after)  # nor the tied one
    probs, y = bench.training.train.predict(model, data, "test")  # the metrics are of that state
    assert result.test["acc"] == pytest.approx(float((probs.argmax(1) == y).mean()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_training_naming_epoch_and_step(bad):
    data = _data()  # 3 training steps per epoch at batch 32: step 4 is epoch 1, step 1
    steps_per_epoch = -(-data.splits["train"].numel() // TRAIN["batch_size"])
    assert steps_per_epoch == 3
    model = _model(data, nan_at_step=4, bad=bad)
    with pytest.raises(FloatingPointError, match=rf"became {bad} at epoch 1, step 1; lower the "
                                                 "learning rate"):
        fit(model, data, epochs=3, **TRAIN)


def test_class_weights_of_the_data_set():
    mimic = load_data("synthetic-mimic", {"scale": 0.05}).restrict("LNC")
    weight = class_weight(mimic)
    assert weight is not None and weight.dtype == torch.float32
    assert weight.tolist() == [0.25, 0.75] and weight.device == mimic.device
    assert class_weight(load_data("synthetic-adni", {"scale": 0.05}).restrict("IG")) is None


def test_a_train_step_minimises_the_class_weighted_cross_entropy():
    data = _data(num_classes=2, weights=(0.25, 0.75))
    model = _model(data)
    batch = data.batch(data.splits["train"][:16])
    with torch.no_grad():
        logits, _ = model(batch)
    nll = -torch.log_softmax(logits, dim=1)[torch.arange(16), batch.y]
    w = torch.tensor([0.25, 0.75])[batch.y]
    by_hand = float((w * nll).sum() / w.sum())
    assert by_hand != pytest.approx(float(nll.mean()), abs=1e-4)  # the weights matter here
    loss = train_step(model, batch, make_adam(model, 0.01, 0.0), class_weight(data))
    assert float(loss) == pytest.approx(by_hand, rel=1e-6)


def test_fit_trains_on_the_data_sets_class_weights():
    """Weights (1, 1) train exactly like no weights; (0.25, 0.75) train differently."""
    runs = {}
    for weights in (None, (1.0, 1.0), (0.25, 0.75)):
        data = _data(num_classes=2, weights=weights)
        model = _model(data)
        fit(model, data, epochs=2, **TRAIN)
        runs[weights] = _state(model)["head.weight"]
    assert torch.allclose(runs[None], runs[(1.0, 1.0)], atol=1e-6)
    assert not torch.allclose(runs[None], runs[(0.25, 0.75)], atol=1e-4)

