"""Every config option composes and passes the model-free checks; bad input fails in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO, compose_cfg, steerexp_in_process

from steerexp import CONF_DIR
from steerexp.cli import check_args
from steerexp.config.errors import SteerexpError
from steerexp.pipeline import check_config
from steerexp.stages.fit.methods import METHODS

GROUPS = ["model", "module", "method", "loss", "dataset", "eval", "judge", "logger"]
#: Options that read a user file: checked with the shipped examples.
FILE_OPTIONS = {
    ("dataset", "file"): (f"dataset.path={REPO / 'examples' / 'organism_pairs.jsonl'}",),
    ("dataset", "caa"): (f"dataset.path={REPO / 'examples' / 'sycophancy.jsonl'}",),
    ("eval", "file"): (f"eval.path={REPO / 'examples' / 'organism_questions.jsonl'}",),
    ("eval", "caa"): (f"eval.path={REPO / 'examples' / 'refusal.jsonl'}",),
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_spec_options_exist() -> None:
    want = {
        "model": {
            "organism",
            "qwen3_4b_instruct",
            "qwen3_4b_thinking",
            "glm4_9b",
            "qwen3_8b",
            "qwen3_14b_bnb4",
        },
        "module": {
            "hs",
            "mlp",
            "down_proj",
            "gate_proj",
            "up_proj",
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
        },
        "method": {
            "mean_diff",
            "pca_diff",
            "pca_center",
            "svd_steer",
            "fisher_steer_emp_reg2",
            "fisher_steer_dual",
            "fisher_steer_dual_pos",
            "fisher_steer_dual_neg",
            "fisher_steer_dual_diff",
            "fisher_steer_dual_cov",
            "random",
            *(f"fisher_steer_reg{i}" for i in range(6)),
            *(f"fisher_steer_cov_reg{i}" for i in range(6)),
        },
        "loss": {"nll", "hs_diff", "reprpo_margin"},
        "dataset": {"honesty", "organism", "file", "caa"},
        "eval": {"white_lie", "dilemmas", "organism", "file", "caa"},
        "judge": {"logratio", "forced"},
        "logger": {"wandb", "none"},
    }
    for group, names in want.items():
        assert names <= set(options(group)), group


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_checks(group: str) -> None:
    for opt in options(group):
        cfg = compose_cfg(f"{group}={opt}", *FILE_OPTIONS.get((group, opt), ()))
        assert cfg[group].name == opt, f"{group}/{opt}.yaml must carry name: {opt}"
        check_config(cfg)
        if group == "method":
            assert cfg.method.kind in METHODS


def test_spec_keys_present() -> None:
    cfg = compose_cfg()
    for key in (
        "seed",
        "coeff_units",
        "logger",
        "module.template",
        "module.layers",
        "eval.coeffs",
        "eval.answer_regex",
        "eval.repeats",
        "eval.max_new_tokens",
        "loss.layer",
        "dataset.max_pairs",
    ):
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.coeffs=[1,2]", r"eval.coeffs=\[1.0, 2.0\] has no 0"),
        (
            "eval.coeffs=[0,inf]",
            r"eval.coeffs=\[0.0, inf\] must be a non-empty list of finite numbers",
        ),
        ("eval.answer_regex='Final choice: Yes|No'", r"has 0 capture groups; it needs exactly one"),
        ("eval.answer_regex='(Final) choice: (Yes|No)'", r"has 2 capture groups"),
        ("coeff_units=nats", r"unknown coeff_units 'nats'; valid: kl, norm, raw"),
        ("regress_x=log", r"unknown regress_x 'log'"),
        ("ranking.correction=bonferroni", r"unknown ranking.correction 'bonferroni'; valid: bh"),
        ("ranking.confirm=-1", r"ranking.confirm=-1 must be >= 0"),
        ("dataset.positive=''", r"empty side"),
        ("model.dtype=float8", r"unknown model.dtype 'float8'"),
        ("method.fisher=iefx", r"unknown method.fisher 'iefx'.*valid: cov"),
        ("extract.grad_tokens=first", r"unknown extract.grad_tokens 'first'; valid: all, last"),
        (
            "eval.questions.0.trait_answer=Maybe",
            r"trait_answer='Maybe'; it must be one of \['Yes', 'No'\]",
        ),
    ],
)
def test_bad_config_one_line_error(override: str, message: str) -> None:
    """A choice field's bad value is refused by the schema before Hydra composes (the command
    line check); a range or a file rule by check_config."""
    with pytest.raises(SteerexpError, match=message) as info:
        check_args([override])
        check_config(compose_cfg(override))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("eval.workers=many", r"^eval.workers='many' must be 'auto' or an integer >= 1$"),
        ("eval.workers=2,0", r"^eval.workers=0 must be 'auto' or an integer >= 1$"),
        ("eval.workers=[2]", r"^eval.workers=\[2\] must be 'auto' or an integer >= 1$"),
        (
            "loss=reprpo_margin loss.beta=abc",
            r"^loss.beta='abc' must be a finite number or 'auto'$",
        ),
        (
            "loss=reprpo_margin loss.beta=true",
            r"^loss.beta=True must be a finite number or 'auto'$",
        ),
    ],
)
def test_number_or_auto_fields_are_refused_before_composing(args: str, message: str) -> None:
    """``eval.workers`` and ``loss.beta`` (a number or ``auto``, which OmegaConf 2.3 cannot type)
    are checked by their schema rule on the command line, before Hydra composes: a sweep over a
    bad value fails up front, not job by job."""
    with pytest.raises(SteerexpError, match=message):
        check_args(["-m", *args.split()])
    check_args(["-m", "loss=reprpo_margin", "loss.beta=auto,0,1e3", "eval.workers=auto,3"])


_cli = steerexp_in_process


def test_cli_unknown_option_one_line_did_you_mean() -> None:
    out = _cli("method=pca_dif,mean_diff")
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "steerexp: error: unknown method option 'pca_dif'; did you mean 'pca_diff'"
    )
    assert "valid: " in line and "fisher_steer_cov_reg1" in line


def test_cli_bad_value_fails_before_model_load(tmp_path: Path) -> None:
    out = _cli("model=qwen3_14b_bnb4", "eval.coeffs=[1,2]", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "steerexp: error: eval.coeffs=[1.0, 2.0] has no 0; the unsteered reference is required"
    )
    assert '"status": "failed"' in (tmp_path / "status.json").read_text()


def test_gradient_method_on_modules_after_the_loss_layer_fails_clearly(tmp_path: Path) -> None:
    """hs_diff reads the loss layer; blocks after it get exactly zero gradient."""
    from steerexp.pipeline import run

    cfg = compose_cfg(
        "model=tiny_random",
        "dataset=honesty",
        "dataset.max_pairs=4",
        "eval=white_lie",
        "loss=hs_diff",
        "loss.layer=1",
        "module.layers=[3]",
        "method=svd_steer",
    )
    with pytest.raises(
        SteerexpError, match=r"all zero at 'model.layers.3' \(loss 'hs_diff' at loss.layer=1"
    ):
        run(cfg, tmp_path, progress=False)
    assert '"status": "failed"' in (tmp_path / "status.json").read_text()


def test_experiment_configs_sweep_existing_options() -> None:
    """``+experiment=journal_losses``: the journal's 17 methods x the three losses, every value an
    option of its group (the list the Makefile's journal sweeps and scripts/figures.py use)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["+experiment=journal_losses"], return_hydra_config=True
        )
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params["loss"] == ["nll", "hs_diff", "reprpo_margin"]
    assert len(params["method"]) == 17 and params["method"][:2] == ["mean_diff", "pca_diff"]
    for group, values in params.items():
        assert set(values) <= set(options(group)), group


def test_choice_enums_match_the_registries_that_implement_them() -> None:
    """Each choice field's Enum (what OmegaConf enforces) lists exactly what the code runs."""
    from steerexp.config import schema
    from steerexp.data.transforms import X_TRANSFORMS
    from steerexp.models.loading import DTYPES
    from steerexp.pipeline.tracking import WANDB_MODES
    from steerexp.stages.extract.vjp import TOKENS
    from steerexp.stages.fit.fisher import FISHERS, REG_SCALES
    from steerexp.stages.intervene.scales import COEFF_UNITS
    from steerexp.sweep.rows import CORRECTIONS

    pairs = [
        (schema.CoeffUnits, COEFF_UNITS),
        (schema.RegressX, X_TRANSFORMS),
        (schema.Correction, CORRECTIONS),
        (schema.Fisher, FISHERS),
        (schema.RegScale, REG_SCALES),
        (schema.RowTokens, TOKENS),
        (schema.WandbMode, WANDB_MODES),
        (schema.Dtype, [*DTYPES, "auto"]),
    ]
    for enum, implemented in pairs:
        assert {m.value for m in enum} == set(implemented), enum.__name__


def test_range_rules_run_for_composed_and_plain_configs() -> None:
    """The schemas' own rules: config.validate on a composed config, typed() on a plain dict (the
    public API), one-line errors naming the key; a valid config converts to typed objects."""
    from steerexp.config.compose import typed, validate
    from steerexp.config.schema import CoeffUnits, Config, FisherMethod

    ok = validate(compose_cfg("method=fisher_steer_reg2"))
    assert isinstance(ok, Config) and isinstance(ok.method, FisherMethod)
    assert ok.coeff_units is CoeffUnits.norm and ok.coeff_units == "norm"
    with pytest.raises(SteerexpError, match=r"^random_null.k=1 must be 0 \(no null\) or >= 2"):
        validate(compose_cfg("random_null.k=1"))
    with pytest.raises(SteerexpError, match=r"^eval.min_p=2.0 must be between 0 and 1"):
        typed("eval", {"name": "mine", "min_p": 2})
    with pytest.raises(
        SteerexpError, match=r"^unknown method.combine 'max';.* valid: diff, mean, neg, pos$"
    ):
        typed("method", {"name": "d", "kind": "fisher_dual", "combine": "max"})


def test_the_run_types_its_config_once() -> None:
    """``typed_run``: a composed config is typed already and comes back as it is (no copy, no
    re-typing); a config of plain sections (a confirmation's, read back from config.yaml) gets
    each section typed by its variant's schema, defaults filled in, the input left alone."""
    from omegaconf import OmegaConf

    from steerexp.config.compose import typed_run
    from steerexp.config.schema import LossConfig, RandomMethod

    composed = compose_cfg("method=random")
    assert typed_run(composed) is composed
    loose = OmegaConf.create(OmegaConf.to_container(composed, resolve=True))
    del loose.method["seed"]
    out = typed_run(loose)
    assert OmegaConf.get_type(out.method) is RandomMethod and out.method.seed is None
    assert OmegaConf.get_type(out.loss) is LossConfig and out.loss.tokens == "suffix"
    assert "seed" not in loose.method and OmegaConf.get_type(loose.method) is dict
