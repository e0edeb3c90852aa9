"""Experiment configs as objects: profiles, ``--set`` parsing, what metrics.json records.

No experiment is run here (the smoke runs live in the other files): the CLI is exercised with
``--print-config`` and the metrics writer with a tiny config of this file.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import json
import re
from typing import Literal

import pytest

from experiments import __main__ as reproduce_cli
from experiments import config as config_lib
from experiments import provenance as provenance_lib
from experiments.common import trained_seed_unet, write_metrics
from experiments.config import ConfigError, ExperimentConfig, apply_overrides, parse_value

#: The quick and default profiles as quoted in the docstrings and tests: they must not drift.
#: The U-Net output verdict's settings (experiments.unet_verdict), shared by two experiments.
QUICK_VERDICT = dict(init_keys=(0,), verdict_scenes=2)
DEFAULT_VERDICT = dict(init_keys=(0, 1, 2), verdict_scenes=6)
PINNED = {
    "linear_inversion": {
        "quick": dict(train_steps=3000, steps=2000, lr=1.0, path_points=12, seed=0),
        "default": dict(train_steps=3000, steps=3000, lr=1.0, path_points=24, seed=0),
    },
    "sigmoid_inversion": {
        "quick": dict(train_steps=1000, steps=2000, lr=2.0, tol=1e-10, seed=0),
        "default": dict(train_steps=3000, steps=5000, lr=2.0, tol=1e-10, seed=0),
    },
    "relu_preimage": {
        "quick": dict(
            n=10,
            ratios=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0),
            layers=4,
            inputs=12,
            sample=200,
            inj_layers=12,
            steps=300,
            split_inputs=6,
            seed=0,
        ),
        "default": dict(
            n=20,
            ratios=(1.0, 1.5, 1.8, 2.0, 2.2, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0),
            layers=10,
            inputs=25,
            sample=1000,
            inj_layers=30,
            steps=1000,
            split_inputs=20,
            seed=0,
        ),
    },
    "pooling_loss": {
        "quick": dict(image_size=32, steps=200),
        "default": dict(image_size=64, steps=1000),
    },
    "conv_spectrum": {"quick": dict(n=6, image_size=16), "default": dict(n=10, image_size=32)},
    "unet_inversion": {
        "quick": dict(
            targets=4, restarts=2, steps=150, lr=0.05, init_scale=0.1, seed=7, train_profile="quick"
        ),
        "default": dict(
            targets=16,
            restarts=4,
            steps=400,
            lr=0.05,
            init_scale=0.1,
            seed=7,
            train_profile="default",
        ),
    },
    "unet_layerwise": {
        "quick": dict(images=2, steps=200, lr=0.05, seed=0, train_profile="quick", **QUICK_VERDICT),
        "default": dict(
            images=6, steps=600, lr=0.05, seed=0, train_profile="default", **DEFAULT_VERDICT
        ),
    },
    "preimage_spread": {
        "quick": dict(
            restarts=4,
            controls=2,
            steps=3000,
            lr=0.03,
            image=0,
            seed=0,
            train_profile="quick",
            **QUICK_VERDICT,
        ),
        "default": dict(
            restarts=16,
            controls=4,
            steps=12000,
            lr=0.02,
            image=0,
            seed=0,
            train_profile="default",
            **DEFAULT_VERDICT,
        ),
    },
    "alternatives": {
        "quick": dict(targets=4, steps=60, train_steps=30, n_train=128, train_profile="quick"),
        "default": dict(
            targets=16, steps=400, train_steps=400, n_train=2000, train_profile="default"
        ),
    },
    "invertible_baselines": {
        "quick": dict(
            targets=4,
            train_steps=20,
            n_train=128,
            hidden=8,
            iresnet_iterations=60,
            plot_iterations=40,
            invert_steps=30,
            decoder_steps=30,
            decoder_n_train=128,
            train_profile="quick",
            networks=("Glow", "IRevNet", "IResNet", "InvertibleUNet", "Flow"),
            ablations=(),
            init_key=0,
            certify_scenes=1,
            inverse_penalty=1.0,
        ),
        "default": dict(
            targets=16,
            train_steps=200,
            n_train=2000,
            hidden=16,
            iresnet_iterations=100,
            plot_iterations=100,
            invert_steps=200,
            decoder_steps=400,
            decoder_n_train=2000,
            train_profile="default",
            networks=("Glow", "IRevNet", "IResNet", "InvertibleUNet", "Flow"),
            ablations=("Glow[no penalty]", "Glow[affine, no penalty]"),
            init_key=0,
            certify_scenes=2,
            inverse_penalty=1.0,
        ),
    },
    "visualisation": {
        "quick": dict(scenes=1, channels=4, bottleneck_channels=8, bins=40, train_profile="quick"),
        "default": dict(
            scenes=3, channels=8, bottleneck_channels=16, bins=40, train_profile="default"
        ),
    },
    "feature_visualisation": {
        "quick": dict(
            steps=8,
            channels=2,
            lr=0.05,
            detector_size=32,
            detector_layers=1,
            detector_channels=2,
            dense_train_steps=500,
            train_profile="quick",
            seed=0,
        ),
        "default": dict(
            steps=128,
            channels=8,
            lr=0.05,
            detector_size=64,
            detector_layers=3,
            detector_channels=8,
            dense_train_steps=3000,
            train_profile="default",
            seed=0,
        ),
    },
    "layer_probes": {
        "quick": dict(
            probe_train=64,
            probe_test=32,
            steps=100,
            lr=0.1,
            cert_images=1,
            train_profile="quick",
            decoder_steps=20,
            decoder_max_width=16,
            decoder_depth=0,
            decoder_images=2,
            decoder_layers=("pool1", "bottleneck", "out"),
        ),
        "default": dict(
            probe_train=128,
            probe_test=128,
            steps=150,
            lr=0.1,
            cert_images=2,
            train_profile="default",
            decoder_steps=200,
            decoder_max_width=32,
            decoder_depth=2,
            decoder_images=6,
            decoder_layers=(),
        ),
    },
    "real_network": {
        "quick": dict(
            sizes=(32,),
            scenes=1,
            layers=3,
            layer_steps=20,
            steps=30,
            lr=0.05,
            tv_weight=0.01,
            train_profile="quick",
            init_keys=(0,),
            verdict_scenes=2,
        ),  # fmt: skip
        "default": dict(
            sizes=(32,),
            scenes=1,
            layers=6,
            layer_steps=100,
            steps=200,
            lr=0.05,
            tv_weight=0.01,
            train_profile="default",
            init_keys=(0, 1, 2),
            verdict_scenes=6,
        ),  # fmt: skip
    },
}


def _fields(cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "profile"}


def test_every_experiment_is_pinned():
    assert set(PINNED) == set(reproduce_cli.EXPERIMENTS) == set(reproduce_cli.available())


@pytest.mark.parametrize("name", reproduce_cli.EXPERIMENTS)
def test_get_config_returns_each_profile(name):
    module = importlib.import_module(f"experiments.{name}")
    assert module.NAME == name
    cls = module.Config
    assert dataclasses.is_dataclass(cls) and issubclass(cls, ExperimentConfig)
    configs = {p: module.get_config(p) for p in config_lib.PROFILES}
    for profile, cfg in configs.items():
        assert type(cfg) is cls and cfg.profile == profile
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.profile = "x"  # type: ignore[misc]
    assert configs["default"] == cls()  # field defaults are the default profile
    for profile in ("quick", "default"):
        assert _fields(configs[profile]) == PINNED[name][profile], profile
    # --full is honoured: the full profile is a different, larger run than the default
    assert _fields(configs["full"]) != _fields(configs["default"])
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        module.get_config("huge")
    assert list(inspect.signature(module.run).parameters) == ["config", "out"]
    command = next(line for line in module.__doc__.splitlines() if line.startswith("Command:"))
    assert "[--quick | --full]" in command and "--set" in command, command


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Cfg(ExperimentConfig):
    steps: int = 10
    lr: float = 0.1
    jit: bool = True
    name: str = "adam"
    ratios: tuple[float, ...] = (1.0, 2.0)
    shape: tuple[int, int] = (4, 4)
    kernels: tuple[tuple[int, int, int, int], ...] = ((3, 3, 1, 16),)
    mode: Literal["quick", "default"] = "default"
    limit: int | None = None


def test_overrides_are_parsed_to_the_field_types():
    cfg = apply_overrides(
        _Cfg(),
        [
            "steps=800",
            "lr=5e-3",
            "jit=false",
            "name=sgd",
            "ratios=1, 2.5,4",
            "shape=8,16",
            "kernels=((3,3,1,16),(2,2,3,5))",
            "mode=quick",
            "limit=12",
        ],
    )
    assert cfg == _Cfg(
        steps=800,
        lr=0.005,
        jit=False,
        name="sgd",
        ratios=(1.0, 2.5, 4.0),
        shape=(8, 16),
        kernels=((3, 3, 1, 16), (2, 2, 3, 5)),
        mode="quick",
        limit=12,
    )
    assert type(cfg.lr) is float and type(cfg.ratios[0]) is float
    assert apply_overrides(cfg, ["limit=none", "ratios=", "ratios=[3]"]).limit is None
    assert apply_overrides(cfg, ["ratios="]).ratios == ()
    assert apply_overrides(cfg, ["ratios=[3]"]).ratios == (3.0,)
    assert apply_overrides(cfg, ["jit=1"]).jit is True
    assert apply_overrides(_Cfg(), []) == _Cfg()


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("stepz=3", r"unknown field 'stepz' of demo; fields: .*steps"),
        ("steps=8.5", r"field 'steps' of demo \(int\): '8.5' is not an int"),
        ("steps=", r"field 'steps' of demo \(int\)"),
        ("lr=fast", r"field 'lr' of demo \(float\): 'fast' is not a float"),
        ("jit=maybe", r"field 'jit' .*'maybe' is not a bool"),
        ("shape=1,2,3", r"field 'shape' .*3 items, tuple\[int, int\] needs 2"),
        ("kernels=((3,3,1),)", r"field 'kernels' .*is not a tuple\[int, int, int, int\]"),
        ("ratios=(1, 'a')", r"field 'ratios' .*'a' is not a float"),
        ("mode=full", r"field 'mode' .*'full' is not one of 'quick', 'default'"),
        ("profile=full", r"--quick or --full"),
        ("steps", r"--set expects field=value, got 'steps'"),
    ],
)
def test_bad_overrides_name_the_field(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(_Cfg(), [assignment], name="demo")


def test_parse_value_rejects_bool_for_int_in_literals():
    with pytest.raises(ValueError):
        parse_value("(True, 2)", tuple[int, int])


def test_cli_prints_the_overridden_config(capsys):
    from experiments import pooling_loss

    assert pooling_loss.main(["--quick", "--set", "steps=7", "--print-config"]) is None
    record = json.loads(capsys.readouterr().out)
    assert record == {"profile": "quick", "image_size": 32, "steps": 7, "overrides": {"steps": 7}}
    pooling_loss.main(["--full", "--set", "image_size=96", "steps=9", "--print-config"])
    record = json.loads(capsys.readouterr().out)
    assert record["profile"] == "full" and record["overrides"] == {"image_size": 96, "steps": 9}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "stepz=1"], "unknown field 'stepz' of pooling_loss"),
        (["--set", "steps=many"], "bad value for field 'steps' of pooling_loss (int)"),
        (["--quick", "--full"], "not allowed with argument"),
    ],
)
def test_cli_refuses_bad_settings(argv, message, capsys):
    from experiments import pooling_loss

    with pytest.raises(SystemExit) as exit_info:
        pooling_loss.main([*argv, "--print-config"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_fields(capsys):
    from experiments import conv_spectrum

    with pytest.raises(SystemExit):
        conv_spectrum.main(["--help"])
    out = capsys.readouterr().out
    assert "n: int = 10" in out and "image_size: int = 32" in out


def test_metrics_record_config_versions_commit_and_backend(tmp_path):
    cfg = dataclasses.replace(_Cfg(), profile="quick")
    write_metrics(tmp_path, {"value": 1.5}, cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["value"] == 1.5
    assert saved["config"]["profile"] == "quick" and saved["config"]["steps"] == 10
    assert saved["config"]["kernels"] == [[3, 3, 1, 16]]
    assert saved["config"]["overrides"] == {}  # no get_config here: nothing to compare with
    prov = saved["provenance"]
    assert set(prov["versions"]) == set(provenance_lib.PACKAGES)
    assert all(isinstance(v, str) and v for v in prov["versions"].values())
    assert prov["versions"]["numpy"] != "not installed"
    git = prov["git"]
    assert git["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", git["commit"])
    assert git["dirty"] in (True, False, None)
    assert prov["backend"]["name"] in ("cpu", "gpu", "tpu", "cuda", "rocm", "METAL")
    assert prov["backend"]["device_count"] >= 1 and prov["backend"]["device_kinds"]
    with pytest.raises(ValueError, match="config"):
        write_metrics(tmp_path, {"config": {}}, cfg)


def test_metrics_record_the_overrides_of_an_experiment_config(tmp_path):
    from experiments import pooling_loss

    cfg = apply_overrides(pooling_loss.get_config("full"), ["steps=5"])
    write_metrics(tmp_path, {}, cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert saved == {"profile": "full", "image_size": 128, "steps": 5, "overrides": {"steps": 5}}


def test_git_state_is_unknown_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance_lib.git_state(tmp_path) == {"commit": "unknown", "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert provenance_lib.git_state() == {"commit": "unknown", "dirty": None}


def test_describe_commit():
    sha = "0123456789abcdef" * 2 + "01234567"
    assert provenance_lib.describe_commit({"commit": sha, "dirty": True}) == "0123456789ab (dirty)"
    assert provenance_lib.describe_commit({"commit": sha, "dirty": False}) == "0123456789ab"
    assert provenance_lib.describe_commit({"commit": "unknown", "dirty": None}) == "unknown"


def test_trained_seed_unet_refuses_an_unknown_train_profile():
    with pytest.raises(ValueError, match="train_profile"):
        trained_seed_unet(train_profile="full")


def test_config_module_doctest():
    result = doctest.testmod(config_lib)
    assert result.attempted >= 1 and result.failed == 0


def _record_runs(monkeypatch, names):
    """Replace each experiment's ``run`` by one that records its config and writes nothing."""
    seen = {}
    for name in names:
        module = importlib.import_module(f"experiments.{name}")

        def fake(config, out, name=name):
            seen[name] = config
            return {"references": []}

        monkeypatch.setattr(module, "run", fake)
    return seen


@pytest.mark.parametrize("flag", ["--full", "--quick", None])
def test_reproduce_passes_the_profile_and_overrides(tmp_path, monkeypatch, flag):
    names = ["linear_inversion", "pooling_loss"]
    seen = _record_runs(monkeypatch, names)
    argv = ["reproduce", "--out", str(tmp_path), "--only", *names, "--set", "steps=7"]
    argv += ["--set", "image_size=48"] + ([flag] if flag else [])
    assert reproduce_cli.main(argv) == 0
    profile = {"--full": "full", "--quick": "quick", None: "default"}[flag]
    linear = importlib.import_module("experiments.linear_inversion")
    assert seen["linear_inversion"] == dataclasses.replace(linear.get_config(profile), steps=7)
    assert seen["pooling_loss"].profile == profile
    assert (seen["pooling_loss"].steps, seen["pooling_loss"].image_size) == (7, 48)
    report = (tmp_path / "report.md").read_text()
    assert f"Profile: {profile}. Commit: " in report
    assert f"Config: profile {profile}: " in report and "set: steps=7" in report


def test_reproduce_refuses_a_field_no_selected_experiment_has(tmp_path, monkeypatch, capsys):
    seen = _record_runs(monkeypatch, ["linear_inversion", "pooling_loss"])
    with pytest.raises(SystemExit):  # image_size is a pooling_loss field, not linear_inversion's
        reproduce_cli.main(
            [
                "reproduce",
                "--out",
                str(tmp_path),
                "--only",
                "linear_inversion",
                "--set",
                "image_size=48",
            ]
        )
    assert "no selected experiment has a field 'image_size'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce_cli.main(
            ["reproduce", "--out", str(tmp_path), "--only", "pooling_loss", "--set", "steps=lots"]
        )
    assert "bad value for field 'steps' of pooling_loss" in capsys.readouterr().err
    assert seen == {} and not (tmp_path / "report.md").exists()


def test_unknown_names_empty_lists_and_bad_counts_are_refused_by_field():
    """Silent before: networks=Glw trained nothing, ratios= ended in an IndexError, and
    train_steps=-1 failed inside TrainConfig naming 'steps'."""
    from experiments import invertible_baselines, relu_preimage

    quick = invertible_baselines.get_config("quick")
    with pytest.raises(ConfigError, match=r"'networks'.*'Glw' is not one of 'Glow', 'IRevNet'"):
        apply_overrides(quick, ["networks=Glw"], name="invertible_baselines")
    with pytest.raises(ConfigError, match=r"'networks'.*'Glw' not among the allowed 'Glow'"):
        dataclasses.replace(quick, networks=("Glw",))  # built in code, not from the CLI
    with pytest.raises(ConfigError, match="'networks' of invertible_baselines needs at least one"):
        apply_overrides(quick, ["networks="])
    with pytest.raises(
        ConfigError, match="'train_steps' of invertible_baselines must be an int >= 1, got -1"
    ):
        apply_overrides(quick, ["train_steps=-1"])
    both = apply_overrides(quick, ["networks=Glow,IRevNet", "ablations=('Glow[no penalty]',)"])
    assert both.networks == ("Glow", "IRevNet") and both.ablations == ("Glow[no penalty]",)
    ratios = relu_preimage.get_config("quick")
    with pytest.raises(ConfigError, match=r"'ratios' of relu_preimage needs at least one entry"):
        apply_overrides(ratios, ["ratios="])
    with pytest.raises(ConfigError, match=r"'ratios' .*every entry.* > 0, got \(1.0, 0.0\)"):
        apply_overrides(ratios, ["ratios=1,0"])
