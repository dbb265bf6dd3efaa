"""Subjects sharded over two (virtual CPU) devices give the same numbers as one device.

XLA_FLAGS=--xla_force_host_platform_device_count=2 must be set before JAX initialises, so the
check runs in a fresh Python process.
"""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from popkpd._ode.sharding import shard_subjects, subject_mesh

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
