"""fits/majestec_virtual/fit.py: its configuration, the fitted model's sites, and the statistics of
the recovery and classification report (checked against independent references); the end-to-end
run on a tiny trial is ``slow``."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

REPOSITORY = Path(__file__).resolve().parent.parent
SCRIPT = REPOSITORY / "fits" / "majestec_virtual" / "fit.py"


def _load(script=SCRIPT, name="majestec_virtual_fit"):
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mv = _load()

FULL_TRIAL = '[trial]\nwithout_iiv = []\npanel = []\n[data]\ndvid = [1, 2, 3, 4]\n[fit]\nwithout_iiv = []\n'
"""The trial with all its IIV and no exhaustion panel, fitted with cl2's IIV (the shipped config until run 34)."""


def full_trial(tmp_path) -> Path:
    path = tmp_path / "full_trial.toml"
    path.write_text(FULL_TRIAL)
    return path


def test_shipped_config_is_the_documented_default():
    assert mv.load_config(SCRIPT.parent / "config.toml") == mv.DEFAULTS


def test_fixed_and_typical_only_parameters():
    """``fixed`` holds a parameter at its prior's centre (cl2 in runs 1-6 of README.md, tau50_n in
    the shipped config); listing it nowhere estimates it (cl2 with IIV); ``without_iiv`` keeps the
    typical value estimated without a random effect."""
    held = mv.population(fixed=["cl2"]).parameters["cl2"]
    assert isinstance(held.typical, mv.popkpd.Fixed) and held.iiv is None
    assert float(held.typical.value) == pytest.approx(mv.teclistamab.TYPICAL["cl2"])
    shipped = mv.population(fixed=mv.DEFAULTS["fit"]["fixed"]).parameters
    assert isinstance(shipped["tau50_n"].typical, mv.popkpd.Fixed)
    assert float(shipped["tau50_n"].typical.value) == pytest.approx(mv.centres()["tau50_n"])
    assert isinstance(shipped["cl2"].typical, mv.popkpd.LogNormal) and shipped["cl2"].iiv is not None
    typical_only = mv.population(without_iiv=["kmax"]).parameters["kmax"]
    assert isinstance(typical_only.typical, mv.popkpd.LogNormal) and typical_only.iiv is None


def test_centred_list_or_table_of_weights(tmp_path):
    """``[fit] centred``: a list centres fully, a table gives centring weights (0 drops a name)."""
    path = tmp_path / "partly.toml"
    path.write_text("[fit]\ncentred = {s0 = 1.0, kg = 0.6, cl = 0}\n")
    pop = mv.fitted_population(mv.load_config(path))
    assert (pop.centring("s0"), pop.centring("kg"), pop.centring("cl"), pop.centring("m0")) == (1.0, 0.6, 0.0, 0.0)
    shipped = mv.fitted_population(mv.load_config(None))
    assert dict(shipped.centered) == {"s0": 1.0, "m0": 1.0}


def test_iiv_shares_group(tmp_path):
    """``[fit] iiv_shares``: the group's omegas are sampled as a total and its shares (run 24)."""
    path = tmp_path / "shares.toml"
    path.write_text('[fit]\niiv_shares = {kill = ["kmax", "k_exh"]}\n')
    pop = mv.fitted_population(mv.load_config(path))
    assert pop.iiv_shares == (("kill", ("kmax", "k_exh")),)
    assert {"iiv_total_kill", "iiv_share_kill"} <= set(pop.init_values(2)) and "omega_kmax" not in pop.init_values(2)


def test_priors_override_the_estimated_defaults(tmp_path):
    """``[priors]`` replaces the prior of the keys it gives and leaves the rest as ``ESTIMATED``."""
    path = tmp_path / "priors.toml"
    path.write_text("[priors]\ncl = {sd = 0.5, iiv = 1.0}\nkg = {iiv = 0.3}\n")  # cl: runs 1-8's
    config = mv.load_config(path)
    pop = mv.population(priors=config["priors"])
    cl, kg, vc = (pop.parameters[name] for name in ("cl", "kg", "vc"))
    assert mv.ESTIMATED["cl"] == (0.2, 0.50)  # science.md §2's MIAO23 prior, replaced here
    assert (float(cl.typical.sd), float(cl.iiv.scale)) == (0.5, 1.0)
    assert (float(kg.typical.sd), float(kg.iiv.scale)) == (mv.ESTIMATED["kg"][0], 0.3)
    assert (float(vc.typical.sd), float(vc.iiv.scale)) == mv.ESTIMATED["vc"]


def test_trial_without_iiv_keeps_the_patients(tmp_path):
    """``[trial] without_iiv``: those parameters at their typical value for every patient; the
    covariates and the other random effects are the design's trial's, draw for draw."""
    path = tmp_path / "well_specified.toml"
    path.write_text('[trial]\nwithout_iiv = ["chi", "k_rec"]\n')
    design = mv.trial_design(mv.load_config(path)["trial"])
    shipped = mv.trial_design(mv.load_config(full_trial(tmp_path))["trial"])
    assert shipped is mv.virtual_populations.DESIGNS["majestec1"]
    assert design.population.iiv["chi"] == 0.0 and design.population.iiv["kmax"] == shipped.population.iiv["kmax"]
    cov, eta = mv.popkpd.sample_population(design.population, 24, 11)
    cov0, eta0 = mv.popkpd.sample_population(shipped.population, 24, 11)
    pd.testing.assert_frame_equal(cov, cov0)
    assert (eta["chi"] == 0).all() and (eta["k_rec"] == 0).all() and not (eta0["chi"] == 0).any()
    pd.testing.assert_frame_equal(eta.drop(columns=["chi", "k_rec"]), eta0.drop(columns=["chi", "k_rec"]))
    assert mv.population_truth(design) == mv.population_truth(shipped)  # chi, k_rec are not fitted


@pytest.mark.parametrize("text, message", [
    ('[trial]\ndesign = "majestec"\n', r"\[trial\] design = 'majestec'; expected one of \['magnetismm3', 'majestec1'\]"),
    ('[trial]\nwithout_iiv = ["cl3"]\n', r"\[trial\] without_iiv = \['cl3'\]; expected a list of parameters with IIV"),
    ('[trial]\nwithout_iiv = "chi"\n', r"\[trial\] without_iiv = 'chi'; expected a list"),
    ("[fit]\nchain = 2\n", r"\[fit\] has unknown keys \['chain'\]"),
    ("[sampler]\nchains = 2\n", r"section \[sampler\] is not known"),
    ("[fit]\nchains = 0\n", r"\[fit\] chains = 0; expected a whole number from 1 to 1000"),
    ("[fit]\nchains = 2.5\n", r"\[fit\] chains = 2.5; expected a whole number"),
    ("[data]\ndvid = [1, 5]\n", r"dvid has \[5\]"),
    ("[trial]\npanel = []\n[data]\ndvid = [1, 2, 3, 4, 6]\n", r"dvid has 6 .* that list is empty"),
    ("[trial]\npanel = [0, 28]\n", r"\[trial\] panel = \[0, 28\]; expected a list of days after the first dose"),
    ("[trial]\npanel = [28, 400]\n", r"panel = \[28, 400\]; .*before the horizon \(336\)"),
    ('[trial]\npanel = "28"\n', r"panel = '28'; expected a list"),
    ('[fit]\nprocesses = "yes"\n', r"processes = 'yes'; expected true, false or \"auto\""),
    ('[fit]\ndense_mass = "yes"\n', r"dense_mass = 'yes'; expected true or false"),
    ("[fit]\ncheckpoint = -100\n", r"checkpoint = -100; expected a whole number >= 0"),
    ("[data]\nmarrow_t_cells = -0.4\n", r"marrow_t_cells = -0.4; expected false, true"),
    ('[data]\nmarrow_t_cells = "yes"\n', r"marrow_t_cells = 'yes'; expected false, true"),
    ('[data]\nmarrow_t_cells = 0.4\n[fit]\nwithout_iiv = ["e0"]\n', r"fixes e0's IIV .* but \[fit\] without_iiv"),
    ('[fit]\nfixed = ["chi"]\n', r"fixed = \['chi'\]; expected a list of estimated parameters"),
    ('[fit]\nfixed = ["s0"]\ncentred = ["s0"]\n', r"\['s0'\] both centred and fixed"),
    ('[fit]\nwithout_iiv = ["tau50_n"]\n', r"without_iiv = \['tau50_n'\]; expected a list of parameters with a random"),
    ('[fit]\nwithout_iiv = ["kg"]\ncentred = ["kg"]\n', r"\['kg'\] in without_iiv and in centred or fixed"),
    ('[fit]\ninit = "median"\n', r"init = 'median'; expected one of \['laplace', 'pathfinder'"),
    ('[fit]\ncentred = ["s0", "tau50_n"]\n', r"centred = \['s0', 'tau50_n'\]; expected a list of parameters with a random"),
    ("[fit]\ncentred = {s0 = 1.0, kg = 1.5}\n", r"centred = \{'s0': 1.0, 'kg': 1.5\}; .* centring weights from 0"),
    ("[fit]\ncentred = {tau50_n = 0.5}\n", r"centred = \{'tau50_n': 0.5\}; expected a list"),
    ('[fit]\niiv_shares = {kill = ["kmax"]}\n', r"iiv_shares = \{'kill': \['kmax'\]\}; expected a table of groups of two"),
    ('[fit]\niiv_shares = {kill = ["kmax", "tau50_n"]}\n', r"iiv_shares = .*expected a table of groups"),
    ('[fit]\nwithout_iiv = ["kmax"]\niiv_shares = {kill = ["kmax", "k_exh"]}\n', r"iiv_shares = .*expected a table"),
    ('[fit]\niiv_shares = {a = ["kmax", "kg"], b = ["kmax", "k_exh"]}\n', r"each in one group at most"),
    ('[fit]\niiv_shares = ["kmax", "k_exh"]\n', r"iiv_shares = \['kmax', 'k_exh'\]; expected a table"),
    ("[priors]\nchi = {sd = 0.2}\n", r"\[priors\] chi is not an estimated parameter"),
    ("[priors]\ncl = 0.2\n", r"\[priors\] cl = 0.2; expected a table with keys sd and/or iiv"),
    ("[priors]\ncl = {sd = 0.2, scale = 1}\n", r"expected a table with keys sd and/or iiv"),
    ("[priors]\ncl = {iiv = -0.5}\n", r"\[priors\] cl.iiv = -0.5; expected a positive number"),
    ("[priors]\ntau50_n = {iiv = 0.5}\n", r"tau50_n has no random effect in the fitted model"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        mv.load_config(bad)


def test_every_estimated_population_site_has_a_true_value():
    """Recovery is judged on every population site the fit samples, no more, no fewer."""
    pop = mv.population()
    design = mv.virtual_populations.DESIGNS["majestec1"]
    truth = mv.population_truth(design)
    assert set(truth) == set(pop.population_sites())
    # the fit's covariates reproduce the trial's link at the reference patient (74 kg, ISS I)
    assert truth["cl_pop"] == pytest.approx(mv.teclistamab.TYPICAL["cl"])
    assert truth["tau50_n_pop"] == pytest.approx(mv.teclistamab.TYPICAL["tau50_n"] * 301.0)
    assert truth["omega_s0"] == design.population.covariates["sbcma"].log_sd


def test_measured_marrow_t_cells_make_e0s_random_effect_the_measurement_error():
    """With ``[data] marrow_t_cells`` e0 = e0_pop x T_MARROW_MEASURED x exp(eta): the trial's
    e0 = E0_typ x T_MARROW and T_MARROW_MEASURED = T_MARROW x exp(0.4 z), so e0_pop's true value
    stays E0_typ and omega_e0's is the measurement's log-sd; the other sites are unchanged. A number
    fixes omega_e0 at it (the assay's log-sd)."""
    design = mv.virtual_populations.DESIGNS["majestec1"]
    with_marrow, without = mv.population(marrow_t_cells=True), mv.population()
    (effect,) = with_marrow.parameters["e0"].covariates
    assert isinstance(effect, mv.popkpd.Power) and effect.covariate == "T_MARROW_MEASURED"
    assert effect.reference == 1.0 and float(effect.prior.value) == 1.0
    assert without.parameters["e0"].covariates == ()
    assert set(with_marrow.population_sites()) == set(without.population_sites())
    truth, truth_without = mv.population_truth(design, marrow_t_cells=True), mv.population_truth(design)
    assert truth["omega_e0"] == design.baseline_errors["t_marrow"] == 0.4
    known = mv.population(marrow_t_cells=0.4)
    assert known.parameters["e0"].covariates == with_marrow.parameters["e0"].covariates
    assert isinstance(known.parameters["e0"].iiv, mv.popkpd.Fixed) and float(known.parameters["e0"].iiv.value) == 0.4
    assert set(known.population_sites()) == set(with_marrow.population_sites()) - {"omega_e0"}
    assert truth_without["omega_e0"] == design.population.covariates["t_marrow"].log_sd == 0.7
    assert {k: v for k, v in truth.items() if k != "omega_e0"} == {
        k: v for k, v in truth_without.items() if k != "omega_e0"}


def _load_information():
    return _load(SCRIPT.parent / "information.py", "majestec_virtual_information")


def test_information_takes_each_patients_true_random_effects_from_the_trial(tmp_path):
    """information.py evaluates the design at the patients' true parameters: the fitted model's
    deviation of each patient is the trial's own log-scale eta (the fit's covariate effects are the
    trial's), for e0 the measurement error of T_MARROW_MEASURED, for s0 and m0 the patient's
    baseline over the fitted model's typical value."""
    info = _load_information()
    config = mv.load_config(full_trial(tmp_path))
    config["trial"]["without_iiv"] = ["chi", "tau50_n", "k_rec"]
    design = mv.trial_design(config["trial"])
    trial = mv.simulate_trial(design, n=6, seed=11)
    pop = mv.fitted_population(config)
    truth = mv.population_truth(design, config["data"]["marrow_t_cells"])
    values = {s: truth[s] for s in pop.population_sites()}
    dataset, _ = mv.cut_dataset(pop, trial.dataset, 28.0, config["data"]["dvid"])
    got = info.true_deviations(pop, dataset, values, trial.params)
    assert set(got) == set(pop.iiv_names)
    eta = trial.eta.set_index("ID").loc[list(dataset.ids)]
    for name in ("cl", "cl2", "vc", "ka", "kg", "kmax", "k_exh"):
        np.testing.assert_allclose(got[name], eta[name], rtol=1e-9, atol=1e-12, err_msg=name)
    base = dataset.baseline_covariates()
    cov = trial.covariates.set_index("ID").loc[list(dataset.ids)]
    np.testing.assert_allclose(got["e0"], np.log(cov["t_marrow"].to_numpy() / base["T_MARROW_MEASURED"].to_numpy()))
    np.testing.assert_allclose(got["m0"], np.log(cov["m0"].to_numpy() / 20.0))
    s0 = mv.popkpd.ng_per_ml_to_nm(cov["sbcma"].to_numpy(), mv.popkpd.SBCMA_MW_KDA)
    np.testing.assert_allclose(got["s0"], np.log(s0 / mv.popkpd.ng_per_ml_to_nm(90.0, mv.popkpd.SBCMA_MW_KDA)))


def test_realised_noise_is_the_rms_of_the_standardised_residuals():
    """DVs set to the noise-free value times exp(+-c sd) give rms c exactly; the 90 % interval is
    chi-square's; censored rows and rows after the cut do not count."""
    import dataclasses

    info = _load_information()
    design = mv.trial_design(mv.load_config(None)["trial"])
    trial = mv.simulate_trial(design, n=3, seed=11)
    frame = trial.dataset.copy()
    conc = np.flatnonzero(((frame.EVID == 0) & (frame.DVID == 1) & (frame.TIME <= 56.0)).to_numpy())
    sign = np.where(np.arange(conc.size) % 2 == 0, 1.0, -1.0)
    truth = np.array([np.interp(frame.TIME.iloc[k], trial.times, trial.outputs["conc"][frame.ID.iloc[k] - 1])
                      for k in conc])
    frame.loc[frame.index[conc], "DV"] = truth * np.exp(1.3 * 0.417 * sign)
    frame.loc[frame.index[conc], "CENS"] = 0
    frame.loc[frame.index[conc[:2]], ["DV", "CENS"]] = [1e9, 1]  # censored: left out
    table = info.realised_noise(dataclasses.replace(trial, dataset=frame), 56.0, [1, 3]).set_index("output")
    row = table.loc["conc"]
    n = conc.size - 2
    assert row.observations == n and row.site == "sigma_conc" and row.sd == 0.417
    assert row.rms == pytest.approx(1.3, rel=1e-9) and row.realised_sd == pytest.approx(1.3 * 0.417, rel=1e-9)
    assert row.rms_q05 == pytest.approx(1.3 * np.sqrt(n / scipy.stats.chi2.ppf(0.95, n)), rel=1e-12)
    assert row.rms_q95 == pytest.approx(1.3 * np.sqrt(n / scipy.stats.chi2.ppf(0.05, n)), rel=1e-12)
    assert np.isnan(table.loc["m_protein", "sd"])  # two sds (combined error): only the rms
    assert table.loc["m_protein", "observations"] == (
        (frame.EVID == 0) & (frame.DVID == 3) & (frame.TIME <= 56.0) & (frame.CENS == 0)).sum()


def test_only_the_fitted_outputs_have_residual_sds(tmp_path):
    """``[data] dvid`` sets the fitted outputs and their residual sds: an output left out has no
    sd to sample (its prior would be all the fit says of it), and the truth table agrees."""
    path = tmp_path / "no_m_protein.toml"
    path.write_text("[data]\ndvid = [1, 2, 4]\n")
    config = mv.load_config(path)
    sites = mv.fitted_population(config).population_sites()
    sigmas = {site for site in sites if site.startswith("sigma_")}
    assert sigmas == {"sigma_conc", "sigma_sbcma_total", "sigma_t_cells"}
    truth = mv.population_truth(mv.trial_design(config["trial"]), config["data"]["marrow_t_cells"], [1, 2, 4])
    assert sigmas == {site for site in truth if site.startswith("sigma_")}
    shipped = mv.fitted_population(mv.load_config(None)).population_sites()
    assert {"sigma_m_protein_add", "sigma_m_protein_prop"} <= set(shipped)


def test_an_exhaustion_panel_is_measured_and_fitted(tmp_path, capsys):
    """``[trial] panel`` adds DVID 6 rows on its days (the rest of the trial unchanged); with 6 in
    ``[data] dvid`` the fit sees those up to the cut and estimates their residual sd, whose true
    value is the trial's; information.py's ``--panel`` makes that config."""
    path = tmp_path / "panel.toml"
    path.write_text(FULL_TRIAL.replace("panel = []", "panel = [7, 28, 84]").replace("[1, 2, 3, 4]", "[1, 2, 3, 4, 6]"))
    config, full = mv.load_config(path), mv.load_config(full_trial(tmp_path))
    design = mv.trial_design(config["trial"])
    trial = mv.simulate_trial(design, n=2, seed=11)
    plain = mv.simulate_trial(mv.trial_design(full["trial"]), n=2, seed=11)
    rows = trial.dataset[trial.dataset.DVID == 6]
    assert sorted(set(rows.TIME)) == [7.0, 28.0, 84.0] and len(rows) == 6
    pd.testing.assert_frame_equal(trial.dataset[trial.dataset.DVID != 6].reset_index(drop=True), plain.dataset)
    pop = mv.fitted_population(config)
    dataset, frame = mv.cut_dataset(pop, trial.dataset, 56.0, config["data"]["dvid"])
    assert sorted(set(frame[frame.DVID == 6].TIME)) == [7.0, 28.0]
    assert "sigma_t_exhausted_fraction" in pop.population_sites()
    assert "sigma_t_exhausted_fraction" not in mv.fitted_population(full).population_sites()
    truth = mv.population_truth(design, config["data"]["marrow_t_cells"], config["data"]["dvid"])
    assert truth["sigma_t_exhausted_fraction"] == 0.3 and set(pop.population_sites()) <= set(truth)
    info = _load_information()
    made = info.with_panel(full, [84, 7, 28])
    assert made["trial"]["panel"] == [7.0, 28.0, 84.0] and made["data"]["dvid"] == [1, 2, 3, 4, 6]
    assert info.with_panel(full, []) == full
    shipped = info.with_panel(mv.load_config(None), [84])  # the shipped config has a panel on days 7, 28, 56
    assert shipped["trial"]["panel"] == [7.0, 28.0, 56.0, 84.0] and shipped["data"]["dvid"] == [1, 2, 3, 4, 6]
    with pytest.raises(ValueError, match=r"--panel: \[trial\] panel = \[0.0\]; expected a list of days"):
        info.with_panel(full, [0])
    with pytest.raises(SystemExit):  # the command line says the same, without a traceback
        info.main(["--config", str(full_trial(tmp_path)), "--panel", "0", "--until", "28", "--out", str(tmp_path)])
    assert "--panel: [trial] panel = [0.0]; expected a list of days" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        info.main(["--observed", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert "no " + str(tmp_path / "nowhere" / "fit.nc") + "; expected the output folder of a " \
           "fit.py run" in capsys.readouterr().err


@pytest.mark.slow
def test_information_script_runs_and_more_data_shrink_less(tmp_path):
    """The script end to end on the full trial (``FULL_TRIAL``) at two data cuts, without and with an
    exhaustion panel: more observations of the same patients (a later cut, a panel) never raise
    the expected shrinkage."""
    info = _load_information()
    full = ["--config", str(full_trial(tmp_path))]
    assert info.main(full + ["--until", "28", "56", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "expected_shrinkage.csv")
    assert set(table.parameter) == set(mv.fitted_population(mv.load_config(full_trial(tmp_path))).iiv_names)
    early, late = (table[table["until"] == u].set_index("parameter") for u in (28.0, 56.0))
    assert (late.observations > early.observations).all()
    assert (late.shrinkage <= early.shrinkage + 1e-9).all() and (late.shrinkage >= 0).all()
    assert (late.shrinkage_others_known <= late.shrinkage + 1e-9).all()
    assert info.main(full + ["--until", "56", "--panel", "28", "--out", str(tmp_path / "panel")]) == 0
    panel = pd.read_csv(tmp_path / "panel" / "expected_shrinkage.csv").set_index("parameter")
    assert (panel.observations == late.observations + 24).all()
    assert (panel.shrinkage <= late.shrinkage + 1e-9).all()
    assert panel.loc["k_exh", "shrinkage"] < late.loc["k_exh", "shrinkage"] - 0.3


@pytest.mark.parametrize("fixed, without", [(["tau50_n"], []), (["tau50_n", "cl2"], ["kmax"]), ([], [])])
def test_summary_names_what_the_fit_holds_fixed_or_without_iiv(fixed, without):
    config = mv.load_config(None)
    config["fit"].update(fixed=fixed, without_iiv=without)
    summary = {"config": config, "n_patients": 24, "n_observations": 576, "responders": 11, "classification": {},
               "convergence": "", "pooled_from": [], "fit_timing_s": {},
               "timing_s": {"trial_s": 1.0, "fit_s": 2.0, "report_s": 3.0, "analysis_s": 4.0, "total_s": 10.0}}
    empty = pd.DataFrame({"parameter": []})
    first = mv._summary_markdown(summary, empty, empty, mv.trial_design(config["trial"])).split("\n")[2]
    assert (f"Held at their prior's centre ([fit] fixed): {', '.join(fixed)}." in first) == bool(fixed)
    assert (f"Estimated without IIV ([fit] without_iiv): {', '.join(without)}." in first) == bool(without)
    assert ("prior's centre" in first) == bool(fixed) and ("without IIV" in first) == bool(without)
    design = mv.trial_design(config["trial"])
    assert "metric against the posterior" not in mv._summary_markdown(summary, empty, empty, design)
    summary["geometry"] = {"not_computed": "too few draws"}
    assert "Not computed: too few draws" in mv._summary_markdown(summary, empty, empty, design)
    summary["geometry"] = {"metric": [{"chain": 0, "min": 0.5, "median": 1.0, "max": 66.0, "condition": 132.0,
                                       "condition_diagonal": 25.0, "directions": "66: eta_kmax[ID 3] +1.00"}]}
    assert "| 0 | 0.5 | 1 | 66 | 132 | 25 | 66: eta_kmax[ID 3] +1.00 |" in mv._summary_markdown(summary, empty, empty,
                                                                                                design)
    assert "whose data curve" not in mv._summary_markdown(summary, empty, empty, design)
    summary["geometry"]["curvature"] = [{"chain": 0, "draw": 9, "min": -0.5, "median": 1.0, "max": 109.0, "negative": 3,
                                         "directions": "109: eta_kg[ID 3] +1.00",
                                         "sources": "100% data: ID 3 87%; m_protein 95%"}]
    assert ("| 0 | 9 | -0.5 | 1 | 109 | 3 | 109: eta_kg[ID 3] +1.00 | 100% data: ID 3 87%; m_protein 95% |"
            in mv._summary_markdown(summary, empty, empty, design))


def test_runs_with_different_fit_seeds_share_no_chain():
    """Chain seeds of fit seeds 0-4 with up to CHAIN_SEEDS chains are all different (until run 13 a
    chain seed was fit seed + k, so that fit seeds 0 and 1 shared one); fit seed 0 keeps 0, 1, ..."""
    n = mv.CHAIN_SEEDS
    seeds = [mv.chain_seed(s, k) for s in range(5) for k in range(n)]
    assert len(set(seeds)) == len(seeds)
    assert [mv.chain_seed(0, k) for k in range(3)] == [0, 1, 2]


def test_pool_merges_the_chains_of_runs_that_differ_only_in_seed(tmp_path, monkeypatch):
    """``pooled_fit`` takes each run's chain files (else its fit.nc), in order, and refuses a run
    made with another config; the returned config counts the pooled chains and lists the seeds."""
    made = {}

    class Saved:
        def __init__(self, path):
            self.path, self.metadata = path, {"majestec_virtual": {"config": made.get(path)}}

    def write_run(name, seed, n_chains, **fit):
        run_dir = tmp_path / name
        (run_dir / "chains").mkdir(parents=True)
        config = mv.load_config(None)
        config["fit"].update(seed=seed, **fit)
        made[run_dir / "fit.nc"] = config
        for k in range(n_chains):
            (run_dir / "chains" / f"chain_{k}.nc").touch()
        return run_dir

    merged = []
    monkeypatch.setattr(mv.popkpd, "load_fit", Saved)
    monkeypatch.setattr(mv.popkpd, "merge_chains",
                        lambda fits: merged.append([f.path.relative_to(tmp_path).as_posix() for f in fits])
                        or type("Merged", (), {"metadata": {"sampler": {"chains": len(fits)}}})())
    # how the chains ran does not matter; run d ran its chains in one process (no chain files)
    runs = [write_run("a", 0, 2), write_run("b", 1, 2, processes=False), write_run("d", 3, 0)]
    config = mv.load_config(None)
    _, pooled = mv.pooled_fit(config, runs)
    assert merged == [["a/chains/chain_0.nc", "a/chains/chain_1.nc", "b/chains/chain_0.nc", "b/chains/chain_1.nc",
                       "d/fit.nc"]]
    assert pooled["fit"]["chains"] == 5 and pooled["fit"]["seed"] == [0, 1, 3]
    assert config["fit"]["chains"] == 2  # the given config is not changed
    other = write_run("c", 2, 2, warmup=100)
    with pytest.raises(ValueError, match=r"--pool: .*c/fit.nc was made with another config"):
        mv.pooled_fit(config, [runs[0], other])
    # a run saved before [fit] iiv_shares and [trial] without_iiv existed ran with their defaults
    older = write_run("e", 4, 1)
    del made[older / "fit.nc"]["fit"]["iiv_shares"], made[older / "fit.nc"]["trial"]["without_iiv"]
    assert mv.pooled_fit(config, [runs[0], older])[1]["fit"]["seed"] == [0, 4]
    fewer = write_run("f", 5, 1)
    made[fewer / "fit.nc"]["trial"]["without_iiv"] = ["chi"]
    with pytest.raises(ValueError, match=r"--pool: .*f/fit.nc was made with another config"):
        mv.pooled_fit(config, [runs[0], fewer])


def test_continue_takes_a_saved_fit_of_the_same_config_but_its_draws(tmp_path, monkeypatch):
    """``--continue``: the saved chain's config may differ in ``[fit] draws``, ``checkpoint`` and
    ``processes`` only; a missing file, another config or more draws than asked are refused."""
    made = mv.load_config(None)

    class Saved:
        def __init__(self, path):
            self.metadata = {"majestec_virtual": {"config": made}, "sampler": {"draws": 400}}

    monkeypatch.setattr(mv.popkpd, "load_fit", Saved)
    path = tmp_path / "chain_0.nc"
    with pytest.raises(FileNotFoundError, match="--continue: no saved fit .*chain_0.nc"):
        mv._saved_for_continuing(made, path)
    path.touch()
    config = mv.load_config(None)
    config["fit"].update(draws=1000, checkpoint=50, processes=False)
    assert mv._saved_for_continuing(config, path).metadata["sampler"]["draws"] == 400
    config["fit"]["warmup"] += 100
    with pytest.raises(ValueError, match="was made with another config; expected the run's config with only"):
        mv._saved_for_continuing(config, path)
    config["fit"].update(warmup=made["fit"]["warmup"], draws=300)
    with pytest.raises(ValueError, match="already has 400 draws per chain, more than \\[fit\\] draws = 300"):
        mv._saved_for_continuing(config, path)


def test_so_far_merges_the_saved_chains_cut_to_the_shortest(tmp_path):
    """``--so-far``: the chains a running run has saved so far (checkpoints of unequal lengths),
    each cut to the shortest and merged, their metrics kept; a chain saved by another config is refused."""
    from .test_inference import line_problem

    pm, events, _, _ = line_problem()
    config = mv.load_config(None)
    (tmp_path / "chains").mkdir()
    saved = []
    for k, draws in enumerate((30, 20)):
        fit = mv.popkpd.fit(pm, events, chains=1, warmup=50, draws=draws, init="prior_median", seed=k,
                            progress_bar=False)
        mv._save_piece(fit, config, tmp_path / "chains" / f"chain_{k}.nc")
        saved.append(fit.tree["posterior"]["a_pop"].values[0])
    merged, cut = mv.saved_so_far(config, tmp_path)
    assert cut["fit"]["draws"] == 20 and config["fit"]["draws"] == mv.DEFAULTS["fit"]["draws"]
    np.testing.assert_array_equal(merged.tree["posterior"]["a_pop"].values, np.stack([saved[0][:20], saved[1]]))
    assert merged.tree["sample_stats"].sizes["draw"] == 20
    # the chains' metrics are kept for the geometry table; one cut draw each is too few for it
    geometry = mv.metric_geometry(merged, pm, events)
    assert [row["chain"] for row in geometry["metric"]] == [0, 1]
    assert all(np.isfinite(row["condition"]) and row["condition"] >= 1 for row in geometry["metric"])
    expected = []  # each chain's last draw, and the middle divergent draw of its most divergent 100 (all 20 here)
    for chain, diverging in enumerate(merged.tree["sample_stats"]["diverging"].values):
        hits = np.flatnonzero(diverging)
        expected += [(chain, 19)] + ([(chain, int(hits[hits.size // 2]))] if hits.size else [])
    assert [(row["chain"], row["draw"]) for row in geometry["curvature"]] == expected
    for row in geometry["curvature"]:  # one subject, one output: all the data's share is theirs
        share = re.fullmatch(r"(\d+)% data: ID 1 \1%; y \1%", row["sources"])
        assert share and 90 <= int(share[1]) <= 100, row["sources"]  # line_problem: its data outweigh its priors
    one = mv.saved_so_far(config, tmp_path)[0]
    one.tree["posterior"] = one.tree["posterior"].to_dataset().isel(draw=slice(0, 1))
    assert mv.metric_geometry(one, pm, events) == {
        "not_computed": "sampler_geometry: 2 chain(s) x 1 draws for 2 coordinates; expected more draws than "
                        "coordinates, for their covariance. Draw more (continue_fit)."}
    laplace = mv.popkpd.fit(pm, events, method="laplace", draws=20, posterior_predictive=False)
    assert "no sampler_state group" in mv.metric_geometry(laplace, pm, events)["not_computed"]
    other = mv.load_config(None)
    other["fit"]["warmup"] += 100
    with pytest.raises(ValueError, match="--so-far: .*chain_0.nc was made with another config"):
        mv.saved_so_far(other, tmp_path)


def test_convergence_by_draws_takes_each_chains_first_n_draws():
    """Two chains that disagree over their first 100 draws only (chain 1 of ``a`` shifted by 1.5 sd,
    chain 0 of one element of ``b`` by 5): R-hat is large over the first 200 draws and near 1 over
    all 2,000 (the shifted draws' share is 5 %); divergences are counted per chain up to n."""
    import xarray as xr

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 2000)), rng.normal(size=(2, 2000, 3))
    a[1, :100] += 1.5
    b[0, :100, 2] += 5.0
    diverging = np.zeros((2, 2000), bool)
    diverging[0, [5, 150, 1999]] = diverging[1, 300] = True
    tree = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"a": (("chain", "draw"), a), "b": (("chain", "draw", "i"), b),
                                 "c": (("chain", "draw"), rng.normal(size=(2, 2000)))}),
        "sample_stats": xr.Dataset({"diverging": (("chain", "draw"), diverging)})})
    table = mv.convergence_by_draws(tree, ["a", "b"])
    assert table["draws"].tolist() == list(range(200, 2001, 200))
    first, last = table.iloc[0], table.iloc[-1]
    assert first["worst R-hat site"] == "b" and first["max R-hat"] > 1.4 and first["sites above 1.1"] == 2
    assert last["max R-hat"] < 1.05 and last["sites above 1.1"] == 0
    assert table["divergences per chain"].tolist()[:2] == ["2 / 0", "2 / 1"] and last["divergences per chain"] == "3 / 1"
    full = mv.popkpd._inference.check_convergence(tree, ["a", "b"], loo=False).table
    assert last["max R-hat"] == full.r_hat.max() and last["min bulk ESS"] == full.ess_bulk.min()
    assert last["median R-hat"] == full.r_hat.median() and last["slowest site"] == full.ess_bulk.idxmin()
    short = mv.convergence_by_draws(tree.isel(draw=slice(0, 60)), ["a"])
    assert short["draws"].tolist() == [60] and short["divergences per chain"].tolist() == ["1 / 0"]
    config = mv.load_config(None)
    summary = {"config": config, "n_patients": 24, "n_observations": 576, "responders": 11, "classification": {},
               "convergence": "", "pooled_from": [], "fit_timing_s": {}, "convergence_by_draws": table.to_dict("records"),
               "timing_s": {"trial_s": 1.0, "fit_s": 2.0, "report_s": 3.0, "analysis_s": 4.0, "total_s": 10.0}}
    empty = pd.DataFrame({"parameter": []})
    text = mv._summary_markdown(summary, empty, empty, mv.trial_design(config["trial"]))
    section = text.split("## Convergence over the chains' first n draws (population sites)")[1].split("##")[0]
    assert section.count("\n| ") == 1 + 10 and "| 2000 | " in section and "| 3 / 1 |" in section


def test_data_cut_keeps_doses_and_fitted_outputs_up_to_the_cut():
    frame = pd.DataFrame({"ID": [1] * 6, "TIME": [0.0, 0.0, 7.0, 56.0, 56.5, 60.0], "EVID": [0, 1, 1, 0, 0, 1],
                          "DVID": [2, 0, 0, 3, 5, 0]})
    cut = mv.trial_data(frame, 56.0, [1, 2, 3, 4])
    assert cut.TIME.max() == 56.0 and list(cut.EVID) == [0, 1, 1, 0] and 5 not in set(cut.DVID)


def test_auc_is_the_mann_whitney_statistic():
    rng = np.random.default_rng(0)
    for _ in range(5):
        label = rng.random(30) < 0.6
        score = np.round(rng.normal(label * 0.8, 1.0), 1)  # rounding makes ties
        u = scipy.stats.mannwhitneyu(score[label], score[~label]).statistic
        assert mv.auc(score, label) == pytest.approx(u / (label.sum() * (~label).sum()), abs=1e-12)
    assert mv.auc([3, 2, 1], [True, False, False]) == 1.0
    with pytest.raises(ValueError, match="0 non-responders"):
        mv.auc([1.0, 2.0], [True, True])


def test_bootstrap_auc_intervals_and_paired_differences():
    rng = np.random.default_rng(1)
    label = rng.random(40) < 0.5
    good = rng.normal(2.0 * label, 1.0)
    out = mv.bootstrap_auc({"reference": good, "same": good.copy(), "noise": rng.normal(size=40)}, label, n_boot=500)
    for v in out.values():
        assert v["lo"] <= v["auc"] <= v["hi"]
    assert out["same"]["diff_lo"] == out["same"]["diff_hi"] == 0.0
    assert out["noise"]["diff_hi"] < 0  # a much better score is detected as better


@pytest.mark.slow
def test_the_script_runs_end_to_end_on_a_tiny_trial(tmp_path):
    """4 patients, 4 weeks, Laplace: every output file, one row per estimated site, finite tables."""
    config = mv.load_config(None)
    config["trial"]["patients"] = 4
    config["data"]["until"] = 28.0
    config["fit"].update(method="laplace", draws=20)
    config["classify"]["draws"] = 5
    out = mv.run(config, tmp_path, report_sims=10)
    for name in ("trial.csv", "truth.csv", "fit.nc", "population_recovery.csv", "individual_recovery.csv",
                 "classification.csv", "results.json", "summary.md", "report/summary.md", "recovery.png"):
        assert (tmp_path / name).is_file(), name
    assert set(out["population"].parameter) == set(mv.fitted_population(config).population_sites())
    assert np.all(np.isfinite(out["individual"][["spearman", "coverage_90"]].to_numpy()))


def test_recovery_plot_with_a_parameter_without_iiv(tmp_path):
    """``[fit] without_iiv = ["k_exh"]`` leaves no per-patient k_exh in the posterior: the plot says
    so in that panel instead of failing after the fit."""
    import types

    import xarray as xr

    rng = np.random.default_rng(3)
    ids = [1, 2, 3, 4, 5, 6]
    dims = ("chain", "draw", "subject")
    posterior = xr.Dataset({n: (dims, rng.lognormal(size=(2, 10, 6))) for n in ("s0", "e0", "n0")})
    fit = types.SimpleNamespace(tree={"posterior": posterior})
    truth = pd.DataFrame({"ID": ids, **{n: rng.lognormal(size=6) for n in ("s0", "e0", "n0", "k_exh")}})
    label = np.array([True, False, True, False, True, False])
    path = mv.plot_recovery(fit, truth, ids, {"score": rng.normal(size=6)}, label, 56.0, tmp_path / "recovery.png")
    assert path.is_file() and path.stat().st_size > 0
    assert list(mv.individual_recovery(fit, truth, ids).quantity) == ["s0", "et", "e0"]  # no k_exh row


def test_roc_curve_area_is_the_auc():
    rng = np.random.default_rng(2)
    label = rng.random(25) < 0.5
    score = np.round(rng.normal(label * 1.0, 1.0), 1)
    fpr, tpr = mv.roc_curve(score, label)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.trapezoid(tpr, fpr) == pytest.approx(mv.auc(score, label), abs=1e-12)  # ties: the diagonal step
