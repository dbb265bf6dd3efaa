"""Subjects sharded across devices with ``jax.sharding``.

Subjects are independent given the population parameters, so the subject axis (the leading axis
of every ``Events`` array, of per-subject parameters ``[S]`` / ``[S, C]`` and of random effects
``eta_<param>``) is the natural axis to split across devices. ``shard_subjects`` places such
arrays with a ``NamedSharding`` over a one-dimensional device mesh (axis ``"subjects"``) and
replicates everything else; a jitted computation on them (``simulate``, ``closed_form``, a log
density and its gradient) is then partitioned by XLA along that axis, each device solving its own
subjects, and the results are the same numbers as on one device (tests/test_sharding.py).

Several hosts: call ``jax.distributed.initialize(...)`` first on every host; ``jax.devices()``
then lists the devices of all hosts and ``subject_mesh()`` spans them (docs/scaling.md).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SUBJECTS = "subjects"
"""Name of the mesh axis over which subjects are split."""


def subject_mesh(devices=None) -> Mesh:
    """A one-dimensional mesh with axis ``"subjects"`` over ``devices`` (default: all devices,
    of every host after ``jax.distributed.initialize``)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("subject_mesh(devices=[]): expected at least one device, e.g. jax.devices().")
    return Mesh(np.asarray(devices), (SUBJECTS,))


def check_divisible(n_subjects: int, mesh: Mesh) -> None:
    n_dev = mesh.shape[SUBJECTS]
    if n_subjects % n_dev:
        raise ValueError(
            f"shard_subjects: received {n_subjects} subjects for a mesh of {n_dev} devices; expected a "
            f"multiple of {n_dev} so that every device gets the same number of subjects. Use a mesh over "
            f"fewer devices (subject_mesh(jax.devices()[:k]) with k dividing {n_subjects}), or add "
            f"subjects (e.g. simulate {n_subjects + (-n_subjects) % n_dev} virtual subjects)."
        )


def shard_subjects(tree, mesh: Mesh, n_subjects: int):
    """``tree`` (an ``Events``, a parameter dict, ...) with every array whose leading axis has
    length ``n_subjects`` split over the mesh axis ``"subjects"`` and every other array
    replicated. Host-side placement; inside ``jit`` use ``constrain_subjects``.

    With several processes (``jax.distributed``), every process passes the same ``tree`` and
    each fills only its own devices' shards from it (``jax.make_array_from_callback``; no
    cross-process comparison of the values, which ``jax.device_put`` makes and which fails on the
    NaN padding of ``Events``)."""
    check_divisible(n_subjects, mesh)
    split = NamedSharding(mesh, PartitionSpec(SUBJECTS))
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(x):
        x = np.asarray(jax.numpy.asarray(x))  # JAX's dtype (float32 unless x64 is enabled)
        sharding = split if x.ndim and x.shape[0] == n_subjects else replicated
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, tree)


def constrain_subjects(tree, mesh: Mesh, n_subjects: int):
    """Inside ``jit``: ask XLA to keep the subject axis of ``tree``'s arrays split over the mesh
    (``jax.lax.with_sharding_constraint``), e.g. for random effects unpacked from a flat vector."""
    check_divisible(n_subjects, mesh)
    split = NamedSharding(mesh, PartitionSpec(SUBJECTS))

    def constrain(x):
        if getattr(x, "ndim", 0) and x.shape[0] == n_subjects:
            return jax.lax.with_sharding_constraint(x, split)
        return x

    return jax.tree.map(constrain, tree)
