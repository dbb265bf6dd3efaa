"""TOML fit configurations: the shipped ones load, and mistakes are explained."""

from pathlib import Path

import pytest

import popkpd
from popkpd._configfile import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_load():
    theo = load_config(ROOT / "fits" / "theophylline")
    assert theo.dataset.n_subjects == 12 and theo.dataset.n_observations == 132
    assert set(theo.population.parameters) == {"ka", "cl", "vc"}
    assert isinstance(theo.population.error["conc"], popkpd.Additive)
    warf = load_config(ROOT / "fits" / "warfarin" / "config.toml")
    assert warf.dataset.n_subjects == 32 and warf.dataset.n_observations == 247
    assert warf.rows_removed == 232  # the PCA rows (DVID 2)
    assert isinstance(warf.population.error["conc"], popkpd.Combined)
    assert warf.population.structural.lag_time


BASE = """
[data]
source = "theophylline"
[structural]
model = "OneCompartment"
[parameters]
ka = { median = 1.5, sd = 1.0, iiv = 0.5 }
cl = { median = 3.0, sd = 1.0, iiv = 0.5, covariates = [{ effect = "power", covariate = "WT", reference = 70, prior = { normal = [0.75, 0.2] } }] }
vc = { median = 35.0, sd = 1.0 }
[error]
conc = { type = "proportional", sigma = 0.5 }
"""


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_covariates_and_priors_are_built(tmp_path):
    cfg = load_config(write(tmp_path, BASE.replace('source = "theophylline"', 'source = "theophylline"\ncovariates = ["WT"]')))
    effect = cfg.population.parameters["cl"].covariates[0]
    assert isinstance(effect, popkpd.Power) and effect.reference == 70
    assert cfg.population.parameters["vc"].iiv is None
    assert cfg.name == tmp_path.name


@pytest.mark.parametrize(
    "change, match",
    [
        (('model = "OneCompartment"', 'model = "FourCompartment"'), r"\[structural.model\] received 'FourCompartment'"),
        (('type = "proportional"', 'type = "exotic"'), r"\[error.conc\].*type = one of"),
        (('vc = { median = 35.0, sd = 1.0 }', 'vc = { median = 35.0 }'), r"\[parameters.vc\].*'sd'"),
        (('effect = "power"', 'effect = "quadratic"'), r"covariates\[0\]\] received 'quadratic'"),
        (('source = "theophylline"', 'source = "nothere.csv"'), r"bundled dataset .* or an existing CSV"),
        (("[error]", "[fit]\nchainz = 3\n[error]"), r"\[fit\] received \['chainz'\]"),
        (("[error]\nconc", "[erorr]\nconc"), r"missing section \[error\]"),
        (("[error]", "[fit]\ncentered = [\"vc\"]\n[error]"), r"\[fit.centered\] received \['vc'\].*\['vc'\] have no IIV"),
        (("[error]", "[fit]\ncentered = { cl = 2.0 }\n[error]"), r"\[fit.centered\] received \{'cl': 2.0\}.*weights from 0"),
        (("[error]", "[fit]\niiv_shares = { pk = [\"cl\", \"vc\"] }\n[error]"),
         r"\[fit.iiv_shares\] received \{'pk': \['cl', 'vc'\]\}.*'vc' has no IIV"),
    ],
)
def test_config_mistakes_are_explained(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, BASE.replace(*change)))


def test_centered_names_or_weights(tmp_path):
    """``centered`` as in PopulationModel: a list centres those parameters only, a table gives weights."""
    names = load_config(write(tmp_path, BASE + '[fit]\ncentered = ["cl"]\n')).population
    assert names.centring("cl") == 1.0 and names.centring("ka") == 0.0
    weights = load_config(write(tmp_path, BASE + "[fit]\ncentered = { cl = 0.6, ka = 0.3 }\n")).population
    assert (weights.centring("cl"), weights.centring("ka")) == (0.6, 0.3)
    assert load_config(write(tmp_path, BASE + "[fit]\ncentered = true\n")).population.describe()["centered"] is True


def test_iiv_shares(tmp_path):
    """``iiv_shares`` as in PopulationModel: the group's omegas become one total and its shares."""
    population = load_config(write(tmp_path, BASE + '[fit]\niiv_shares = { pk = ["cl", "ka"] }\n')).population
    assert population.iiv_shares == (("pk", ("cl", "ka")),)
    assert {"iiv_total_pk", "iiv_share_pk"} <= set(population.init_values(2))


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="No fit configuration"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[data\nsource="))


def test_devices_setting(tmp_path):
    import jax

    cfg = load_config(write(tmp_path, BASE + '[fit]\ndevices = "all"\n'))
    assert cfg.fit_options["devices"] == jax.devices()
    cfg = load_config(write(tmp_path, BASE + "[fit]\ndevices = 1\n"))
    assert cfg.fit_options["devices"] == jax.devices()[:1]
    for bad, match in (('"gpu"', r"devices = 'gpu'; expected \"all\" or a whole number"),
                       ("0", r"devices = 0; expected"), ("true", r"devices = True; expected"),
                       ("4096", r"devices = 4096, but JAX sees \d+ device")):
        with pytest.raises(ConfigError, match=match):
            load_config(write(tmp_path, BASE + f"[fit]\ndevices = {bad}\n"))


def test_popkpd_fit_saves_checkpoints_and_continues(tmp_path, monkeypatch):
    """``[fit] checkpoint_every``: fit.nc holds the draws so far after every piece; ``popkpd fit
    --continue`` runs the saved fit on to ``--draws``, ending with one longer run's draws; it
    refuses a changed config and a target it has already reached."""
    import numpy as np

    from popkpd import cli

    shipped = (ROOT / "fits" / "theophylline" / "config.toml").read_text()
    config = write(tmp_path, shipped[:shipped.index("[fit]")]
                   + "[fit]\nchains = 2\nwarmup = 60\ndraws = 12\nseed = 2\ncheckpoint_every = 5\n")
    saved = []
    real_save = popkpd.Fit.save
    monkeypatch.setattr(popkpd.Fit, "save", lambda self, path: saved.append(self.metadata["sampler"]["draws"])
                        or real_save(self, path))
    assert cli.main(["fit", str(config), "--out", str(tmp_path / "a"), "--no-report"]) == 0
    assert saved == [5, 10, 12]  # each checkpoint, the last one the finished fit
    assert cli.main(["fit", str(config), "--out", str(tmp_path / "a"), "--no-report", "--continue",
                     "--draws", "20"]) == 0
    assert saved[3:] == [17, 20]
    assert cli.main(["fit", str(config), "--out", str(tmp_path / "b"), "--no-report", "--draws", "20"]) == 0
    a, b = (popkpd.load_fit(tmp_path / name / "fit.nc") for name in ("a", "b"))
    np.testing.assert_array_equal(a.tree["posterior"]["cl_pop"].values, b.tree["posterior"]["cl_pop"].values)
    assert [c["draws"] for c in a.metadata["continued"]] == [8]
    with pytest.raises(SystemExit, match="has 20 draws per chain, .* asks for 20"):
        cli.main(["fit", str(config), "--out", str(tmp_path / "a"), "--continue", "--draws", "20"])
    config.write_text(config.read_text().replace("warmup = 60", "warmup = 70"))
    with pytest.raises(SystemExit, match="was made with another config"):
        cli.main(["fit", str(config), "--out", str(tmp_path / "a"), "--continue", "--draws", "30"])
    with pytest.raises(SystemExit, match="no saved fit"):
        cli.main(["fit", str(config), "--out", str(tmp_path / "c"), "--continue"])
    with pytest.raises(SystemExit, match="--chains, --warmup, --seed and --method are the saved fit's"):
        cli.main(["fit", str(config), "--out", str(tmp_path / "a"), "--continue", "--warmup", "10"])
