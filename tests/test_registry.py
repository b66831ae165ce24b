"""The registry: names, defaults per data set and profile, plug-ins through entry points."""

from __future__ import annotations

import logging

import pytest

from bench import registry
from bench.errors import UserError
from bench.model import BenchModel
from tests.conftest import spec_of


@pytest.fixture
def isolated(monkeypatch):
    """Registrations made in a test vanish after it."""
    registry.load_builtins()
    monkeypatch.setattr(registry, "_models", dict(registry._models))
    return registry


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(UserError) as info:
        registry.model_class("nope")
    assert "tf" in str(info.value) and "registered models" in str(info.value)


def test_duplicate_name_is_refused(isolated):
    @isolated.register_model("dup-test")
    class A(BenchModel):
        pass

    with pytest.raises(ValueError, match="already registered"):
        @isolated.register_model("dup-test")
        class B(BenchModel):
            pass


def test_a_model_must_follow_the_contract(isolated):
    with pytest.raises(TypeError, match="default_hparams"):
        @isolated.register_model("no-contract")
        class Plain:
            pass


def test_hyper_parameters_resolve_defaults_profile_overrides():
    spec = spec_of({"A": 10, "B": 10})
    paper = registry.resolve_hparams("tf", spec, profile="paper")
    quick = registry.resolve_hparams("tf", spec, profile="quick")
    assert paper["epochs"] == 50 and paper["lr"] == 1e-4 and paper["batch_size"] == 8
    assert quick["epochs"] == 10 and quick["lr"] == 1e-4  # the shared schedule, own lr
    assert registry.resolve_hparams("tf", spec, {"lr": 0.01}, "paper")["lr"] == 0.01
    with pytest.raises(UserError, match="accepts"):
        registry.resolve_hparams("tf", spec, {"learning_rate": 0.01})


def test_create_model_passes_only_constructor_arguments():
    spec = spec_of({"A": 10, "B": 10})
    model = registry.create_model("tf", spec, subnet_dim=4, lr=0.5)
    assert model.subnet_dim == 4


class _EntryPoint:
    def __init__(self, name, fn):
        self.name, self.value, self._fn = name, f"fake:{name}", fn

    def load(self):
        return self._fn()


def test_entry_point_plugins_register_and_broken_ones_are_reported(isolated, monkeypatch, caplog):
    def good():
        @isolated.register_model("from-entry-point")
        class FromEP(BenchModel):
            pass

    def broken():
        raise RuntimeError("plug-in bug")

    monkeypatch.setattr(isolated, "_loaded", False)
    monkeypatch.setattr(isolated, "entry_points",
                        lambda group: [_EntryPoint("good", good), _EntryPoint("bad", broken)])
    with caplog.at_level(logging.ERROR):
        names = isolated.list_models()
    assert "from-entry-point" in names and "tf" in names
    assert "plug-in bug" in caplog.text


def test_a_setting_added_later_stays_out_of_the_key_at_its_old_value(adni):
    """FuseMoE's released-behaviour options came after its runs were stored: at their
    defaults they are not in the configuration (the stored runs keep their keys); set, they
    are."""
    spec = adni.spec("IGCB")
    plain = registry.resolve_hparams("fusemoe", spec)
    assert not set(registry.model_class("fusemoe").hparams_added) & set(plain)
    noisy = registry.resolve_hparams("fusemoe", spec, {"eval_noise": True})
    assert noisy == {**plain, "eval_noise": True}


def test_hparams_added_must_hold_the_constructor_defaults(isolated):
    from bench.model import BenchModel

    class Late(BenchModel):
        hparams_added = {"width": 3}

        def __init__(self, spec, width: int = 2):
            super().__init__(spec)

    with pytest.raises(TypeError, match="hparams_added"):
        registry.register_model("late-test-only")(Late)


def test_parameter_counts_on_the_meta_device_are_the_real_ones(adni):
    from bench.training.complexity import count_params

    spec = adni.spec("IGCB")
    for name in ("flexmoe", "tf", "i2moe", "mult"):
        hp = registry.resolve_hparams(name, spec, profile="quick")
        assert registry.parameter_count(name, spec, hp) == count_params(
            registry.build_model(name, spec, hp)), name


def test_list_models_shows_a_profiles_settings_and_the_parameter_count(capsys):
    from bench.cli.main import main

    assert main(["list", "models", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    assert "settings of a paper-profile run and parameters on synthetic-adni IGCB" in out
    flexmoe = out.split("\nflexmoe: ")[1].split("\nflexmoe-")[0]
    assert "parameters; " in flexmoe and "epochs=50" in flexmoe
    assert main(["list", "models"]) == 0  # the quick profile: run's default
    quick = capsys.readouterr().out.split("\nflexmoe: ")[1].split("\nflexmoe-")[0]
    assert "epochs=10" in quick and "epochs=50" not in quick
