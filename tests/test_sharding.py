"""Subjects sharded over two (virtual CPU) devices give the same numbers as one device.

XLA_FLAGS=--xla_force_host_platform_device_count=2 must be set before JAX initialises, so the
check runs in a fresh Python process. The same holds for a fit (``fit(..., devices=...)``), on
two devices of one process and on two processes joined by ``jax.distributed`` (slow).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from popkpd._inference.fit import fit
from popkpd._ode.sharding import shard_subjects, subject_mesh

from .test_inference import make_dataset, population  # the small fit problem of those tests

CHILD = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    import popkpd
    from popkpd._ode.sharding import SUBJECTS, constrain_subjects, shard_subjects, subject_mesh

    assert len(jax.devices()) == 2, jax.devices()
    model = popkpd.TwoCompartment()
    n = 6
    events = popkpd.Regimen.every(7, popkpd.SC(100.0), start=0, count=4).to_events(
        model, np.array([1.0, 5.0, 9.0, 20.0, 30.0]), n_subjects=n, until=30.0)
    rng = np.random.default_rng(0)
    params = dict(cl=0.5 * np.exp(0.3 * rng.standard_normal(n)), vc=4.0 * np.exp(0.3 * rng.standard_normal(n)),
                  ka=0.3 * np.exp(0.3 * rng.standard_normal(n)), q=np.float64(0.5), vp=np.float64(3.0))
    params = {k: jnp.asarray(v) for k, v in params.items()}
    mesh = subject_mesh()

    def loss(p, ev, solver):
        p = constrain_subjects(p, mesh, n)
        pred = popkpd.simulate(model, p, ev, solver=solver, rtol=1e-8, atol=1e-10, throw=False).pred
        return jnp.sum(jnp.where(ev.obs_mask, jnp.log(pred) ** 2, 0.0))

    out = {}
    for solver in SOLVERS:
        one = popkpd.simulate(model, params, events, solver=solver).pred
        ps, es = shard_subjects(params, mesh, n), shard_subjects(events, mesh, n)
        sharded = popkpd.simulate(model, ps, es, solver=solver).pred
        g_one = jax.grad(loss)(params, events, solver) if solver in GRADIENTS else {}
        g_sharded = jax.jit(jax.grad(loss), static_argnums=2)(ps, es, solver) if solver in GRADIENTS else {}
        out[solver] = dict(
            pred_one=np.asarray(one).tolist(), pred_sharded=np.asarray(sharded).tolist(),
            grad_one={k: np.asarray(v).tolist() for k, v in g_one.items()},
            grad_sharded={k: np.asarray(v).tolist() for k, v in g_sharded.items()},
            pred_devices=len(sharded.sharding.device_set),
            pred_spec=str(getattr(sharded.sharding, "spec", "")),
            input_devices=len(es.obs_time.sharding.device_set),
        )
    print(json.dumps(out))
""")


def _run_child(solvers, gradients):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    code = f"SOLVERS = {solvers!r}\nGRADIENTS = {gradients!r}\n" + CHILD
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for solver, r in out.items():
        assert r["input_devices"] == 2 and r["pred_devices"] == 2, (solver, r)
        np.testing.assert_allclose(r["pred_sharded"], r["pred_one"], rtol=1e-12, err_msg=solver)
        assert set(r["grad_one"]) == ({"cl", "vc", "ka", "q", "vp"} if solver in gradients else set())
        for k in r["grad_one"]:
            np.testing.assert_allclose(r["grad_sharded"][k], r["grad_one"][k], rtol=1e-10, atol=1e-14, err_msg=f"{solver} {k}")


def test_subjects_sharded_over_two_devices_give_the_same_numbers():
    # the matrix-exponential path: values and gradients (the diffrax path in the slow test)
    _run_child(("expm",), ("expm",))


@pytest.mark.slow
def test_sharded_diffrax_path_values_and_gradients():
    _run_child(("tsit5",), ("tsit5",))


def test_subject_count_must_divide_over_devices():
    one = subject_mesh(jax.devices()[:1])
    assert shard_subjects({"cl": np.ones(3)}, one, 3)["cl"].shape == (3,)
    two = SimpleNamespace(shape={"subjects": 2})  # only the mesh's size is read before the check
    with pytest.raises(ValueError, match=r"received 3 subjects for a mesh of 2 devices; expected a multiple of 2"):
        shard_subjects({"cl": np.ones(3)}, two, 3)


def test_empty_device_list_is_explained():
    with pytest.raises(ValueError, match="expected at least one device"):
        subject_mesh([])


FIT_CHILD = textwrap.dedent("""
    import numpyro
    numpyro.set_host_device_count(2)  # before JAX initialises
    import json, sys
    sys.path.insert(0, TESTS)
    import jax, jax.numpy as jnp, numpy as np
    import popkpd
    from popkpd._inference.fit import FlatPosterior, fit
    from popkpd._ode.sharding import subject_mesh
    from test_inference import IV, make_dataset, population, simulate_table

    assert len(jax.devices()) == 2, jax.devices()
    data = make_dataset()  # 6 subjects: 3 per device
    out = {}
    for method, options in (("closed_form", None), ("ode", {"solver": "expm"})):
        pop = population(method, options)
        one = FlatPosterior(pop, data.events, data.covariate_names)
        two = FlatPosterior(pop, data.events, data.covariate_names, subject_mesh(jax.devices()))
        xs = one.x0 + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (3, len(one.x0)))
        f_one = jax.jit(jax.value_and_grad(one.potential))
        f_two = jax.jit(jax.value_and_grad(two.potential)).lower(xs[0]).compile()
        r = dict(all_reduce=f_two.as_text().count("all-reduce"), value_one=[], value_two=[], grad_one=[], grad_two=[])
        for x in xs:
            for name, f in (("one", f_one), ("two", f_two)):
                v, g = f(x)
                r["value_" + name].append(float(v))
                r["grad_" + name].append(np.asarray(g).tolist())
        for name, devices in (("one", None), ("two", jax.devices())):
            laplace = fit(pop, data, method="laplace", draws=20, devices=devices)
            r["map_" + name] = laplace.metadata["map"]["log_density"]
            r["draws_" + name] = np.asarray(laplace.tree["posterior"]["cl_pop"]).ravel().tolist()
            r["devices_" + name] = laplace.metadata["sampler"].get("devices")
        out[method] = r
    nuts = fit(population(), data, chains=2, warmup=20, draws=10, progress_bar=False, devices=jax.devices())
    cl = np.asarray(nuts.tree["posterior"]["cl_pop"])
    out["nuts"] = dict(shape=list(cl.shape), finite=bool(np.isfinite(cl).all()), devices=nuts.metadata["sampler"]["devices"],
                       chain_method=nuts.metadata["sampler"]["chain_method"])
    # running the chains on over the two devices, or on one, gives the same draws (up to sum order)
    on = {name: np.asarray(popkpd.continue_fit(nuts, population(), data, draws=5, progress_bar=False,
                                               devices=devices).tree["posterior"]["cl_pop"]).tolist()
          for name, devices in (("two", jax.devices()), ("one", None))}
    out["continued"] = on
    # checkpoint pieces run on in one compiled scan: the same draws as one run, with parallel chains
    # (a device per chain) and with the subjects split over the devices (whole: the fit above)
    same = {}
    for name, devices in (("parallel", None), ("sharded", jax.devices())):
        whole = nuts if devices else fit(population(), data, chains=2, warmup=20, draws=10, progress_bar=False)
        pieces = fit(population(), data, chains=2, warmup=20, draws=10, progress_bar=False, devices=devices,
                     checkpoint_every=4, on_checkpoint=lambda f: None)
        same[name] = [whole.metadata["sampler"]["chain_method"],
                      bool(np.array_equal(whole.tree["posterior"]["cl_pop"], pieces.tree["posterior"]["cl_pop"]))]
    out["pieces"] = same
    try:
        fit(population(), popkpd.read_nonmem(simulate_table(5, seed=3), IV, covariates=["WT"]), method="laplace",
            devices=jax.devices())
    except ValueError as e:
        out["error"] = str(e)
    print(json.dumps(out))
""")


def test_fit_with_subjects_split_over_two_devices():
    """``fit(..., devices=...)``: the log density is partitioned over the devices (XLA's compiled
    program sums across them) and equals the one-device log density and gradient; the MAP and
    the Laplace draws are the same; NUTS runs, and its chains run on (``continue_fit``) over the
    devices as on one; a subject count that does not divide is refused."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    code = f"TESTS = {os.path.dirname(__file__)!r}\n" + FIT_CHILD
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for method in ("closed_form", "ode"):
        r = out[method]
        assert r["all_reduce"] > 0, method  # partitioned, not gathered onto one device
        np.testing.assert_allclose(r["value_two"], r["value_one"], rtol=1e-12, err_msg=method)
        np.testing.assert_allclose(r["grad_two"], r["grad_one"], rtol=1e-10, atol=1e-12, err_msg=method)
        assert abs(r["map_two"] - r["map_one"]) < 1e-8, (method, r["map_one"], r["map_two"])
        np.testing.assert_allclose(r["draws_two"], r["draws_one"], rtol=1e-6, err_msg=method)
        assert r["devices_one"] is None and r["devices_two"] == ["cpu:0", "cpu:1"], method  # recorded with the fit
    assert out["nuts"] == dict(shape=[2, 10], finite=True, devices=["cpu:0", "cpu:1"], chain_method="vectorized")
    assert np.shape(out["continued"]["two"]) == (2, 15)
    np.testing.assert_allclose(out["continued"]["two"], out["continued"]["one"], rtol=1e-6)
    assert out["pieces"] == dict(parallel=["parallel", True], sharded=["vectorized", True]), out["pieces"]
    assert "received 5 subjects for a mesh of 2 devices" in out["error"], out["error"]


DISTRIBUTED_CHILD = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives between processes
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{PORT}", num_processes=2, process_id=int(sys.argv[1]),
                               initialization_timeout=300)
    sys.path.insert(0, TESTS)
    import numpy as np
    from popkpd._inference.fit import fit
    from test_inference import make_dataset, population

    assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    data = make_dataset()
    result = fit(population(), data, chains=2, warmup=20, draws=10, progress_bar=False, devices=jax.devices())
    print(json.dumps(dict(map=result.metadata["map"]["log_density"], devices=result.metadata["sampler"]["devices"],
                          cl=np.asarray(result.tree["posterior"]["cl_pop"]).tolist())))
""")


@pytest.mark.slow
def test_fit_over_two_processes_with_jax_distributed():
    """Two processes (two "hosts" on this machine), one CPU device each, joined by
    ``jax.distributed``: the same ``fit(..., devices=jax.devices())`` call in both splits the
    subjects across the processes; both get the same draws, and the MAP equals one process's."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    code = f"TESTS = {os.path.dirname(__file__)!r}\nPORT = {port}\n" + DISTRIBUTED_CHILD
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for k in (0, 1)]
    try:
        outs = [p.communicate(timeout=1500) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    r0, r1 = (json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outs)
    assert len(r0["devices"]) == 2 and r0["devices"] == r1["devices"]
    assert r0["cl"] == r1["cl"] and np.isfinite(r0["cl"]).all() and np.shape(r0["cl"]) == (2, 10)
    alone = fit(population(), make_dataset(), method="laplace", draws=5)
    assert abs(r0["map"] - alone.metadata["map"]["log_density"]) < 1e-8, (r0["map"], alone.metadata["map"])


def test_fit_refuses_parallel_chains_with_subjects_over_devices():
    with pytest.raises(ValueError, match=r"the devices already hold the subjects .*expected chain_method='vectorized'"):
        fit(population(), make_dataset(), chains=2, chain_method="parallel", devices=jax.devices())
    with pytest.raises(TypeError, match=r"fit\(devices=...\): received Device; expected a list of JAX devices"):
        fit(population(), make_dataset(), method="laplace", devices=jax.devices()[0])


def test_command_line_fit_splits_subjects_over_devices(tmp_path):
    """``popkpd fit CONFIG --devices all``: the command line asks XLA for one CPU device per chain,
    the config's 12 subjects are split over the two, and the saved fit records them."""
    import popkpd

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-m", "popkpd", "fit", os.path.join(root, "fits", "theophylline"),
                          "--devices", "all", "--chains", "2", "--warmup", "20", "--draws", "10", "--no-report",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    result = popkpd.load_fit(tmp_path / "fit.nc")
    assert result.metadata["sampler"]["devices"] == ["cpu:0", "cpu:1"]
    assert result.metadata["sampler"]["chain_method"] == "vectorized"
    assert result.posterior["cl_pop"].shape == (2, 10)
