"""Layer L1: soluble-BCMA sink under quasi-equilibrium (QE) binding (science.md §2, L1).

Binding of drug to sBCMA is fast compared with PK (elranatamab BCMA-arm koff ~0.16 /h), so the
split of total drug and total sBCMA into free and bound species is the closed-form root of the
binding equilibrium; it never enters the ODE right-hand side as a fast reaction.

Two closed forms:

* ``complex_amount``: monovalent drug (n_B = 1), separate volumes of free drug (``vc``), free
  sBCMA (``v_s``) and complex (``v_x``), as in HIBMA26. In amounts (nmol)::

      Kd = [D][s]/[X],  [D] = (A_drug - X)/vc,  [s] = (A_sbcma - X)/v_s,  [X] = X/v_x
      X^2 - b X + A_drug A_sbcma = 0,   b = Kd vc v_s / v_x + A_drug + A_sbcma
      X = 2 A_drug A_sbcma / (b + sqrt(b^2 - 4 A_drug A_sbcma))      (the smaller root)

  One shared volume is the special case ``v_s = v_x = vc``.

* ``free_sbcma``: n_B identical, independent BCMA arms per drug molecule (per-arm dissociation
  constant Kd), one shared volume. With site occupancy theta = s / (Kd + s)::

      S_tot = s + n_B D_tot theta   =>   s^2 + (Kd + n_B D_tot - S_tot) s - S_tot Kd = 0

  and s is the positive root. Drug with no sBCMA bound: D_tot (1 - theta)^n_B; drug with at least
  one free BCMA arm ("functional"): D_tot (1 - theta^n_B); drug fully neutralised: D_tot theta^n_B.

Both roots are written in the rationalised form that has no cancellation (drug washed out,
sBCMA absent, or one species in large excess), so they and their gradients stay accurate.
"""

from __future__ import annotations

import jax.numpy as jnp


def quadratic_root(b, c):
    """The non-negative root of ``z^2 + b z - c = 0`` for ``c >= 0``, without cancellation."""
    root = jnp.sqrt(b * b + 4.0 * c)
    large_b = 2.0 * c / jnp.where(b > 0, b + root, 1.0)  # rationalised form, accurate for b > 0
    small_b = 0.5 * (root - b)  # accurate for b <= 0
    return jnp.where(b > 0, large_b, small_b)


def complex_amount(drug, sbcma, kd, vc, v_s, v_x):
    """Amount (nmol) of drug-sBCMA complex at QE, monovalent binding, separate volumes.

    Args:
        drug: total drug amount in the central compartment (free + complex), nmol.
        sbcma: total sBCMA amount (free + complex), nmol.
        kd: drug:sBCMA dissociation constant, nM.
        vc, v_s, v_x: volumes of free drug, free sBCMA and complex, L.
    """
    k = kd * vc * v_s / v_x
    b = k + drug + sbcma
    # b^2 - 4 drug sbcma, written without cancellation (> 0 whenever k > 0)
    disc = (drug - sbcma) ** 2 + k * (2.0 * (drug + sbcma) + k)
    return 2.0 * drug * sbcma / (b + jnp.sqrt(disc))


def free_amounts(drug, sbcma, kd, vc, v_s, v_x):
    """(free drug, free sBCMA, complex) amounts (nmol) at QE, monovalent binding, separate volumes.

    Each is computed from its own well-conditioned expression (free = total - complex where the
    complex is less than half the total, else the root of the free species' own quadratic), so all
    three keep full relative precision; free + complex = total to rounding. Without sBCMA the free
    drug is exactly the total drug.
    """
    k = kd * vc * v_s / v_x
    x = complex_amount(drug, sbcma, kd, vc, v_s, v_x)
    # free drug f: f^2 + (k + sbcma - drug) f - k drug = 0; free sBCMA g likewise
    f = jnp.where(x < 0.5 * drug, drug - x, quadratic_root(k + sbcma - drug, k * drug))
    g = jnp.where(x < 0.5 * sbcma, sbcma - x, quadratic_root(k + drug - sbcma, k * sbcma))
    return f, g, x


def free_sbcma(drug_conc, sbcma_conc, kd, valency):
    """Free sBCMA concentration s (nM) at QE with ``valency`` BCMA arms per drug (one volume):
    the positive root of ``s^2 + (Kd + n_B D_tot - S_tot) s - S_tot Kd = 0``.

    Args:
        drug_conc: total drug concentration D_tot, nM.
        sbcma_conc: total sBCMA concentration S_tot, nM.
        kd: per-arm dissociation constant, nM.
        valency: number of BCMA arms per drug molecule, n_B (1 or 2).
    """
    return quadratic_root(kd + valency * drug_conc - sbcma_conc, sbcma_conc * kd)


def occupancy(free_sbcma_conc, kd):
    """Fraction of drug BCMA arms occupied by sBCMA, theta = s / (Kd + s)."""
    return free_sbcma_conc / (kd + free_sbcma_conc)


def functional_fraction(theta, valency):
    """Fraction of drug with at least one BCMA arm free of sBCMA, 1 - theta^n_B."""
    return 1.0 - theta**valency


def marrow_excess_binding(c_full, c_part, c_bound, excess, kd, valency):
    """Marrow drug species after binding the marrow's local excess of free sBCMA (nM).

    ``c_full`` (all BCMA arms free), ``c_part`` (bivalent drug with one arm free) and ``c_bound``
    (drug carrying sBCMA on at least one arm, monovalent; neutralised drug, bivalent) are the marrow
    species before the excess ``excess`` (nM of free sBCMA shed locally) is added. The excess binds
    the free BCMA arms (concentration n_B c_full + c_part) at QE with per-arm ``kd``; each free arm
    is then occupied with probability theta' = s'/(kd + s'), s' the free excess (``free_sbcma``
    with one arm per site). Returns the new (c_full, c_part, c_bound); their sum is conserved, and
    ``excess = 0`` returns the inputs unchanged.
    """
    arms = valency * c_full + c_part
    s_free = free_sbcma(arms, excess, kd, 1)
    theta = occupancy(s_free, kd)
    keep = kd / (kd + s_free)  # 1 - theta without cancellation
    if valency == 1:
        return c_full * keep, c_part, c_bound + c_full * theta
    full = c_full * keep**2
    part = c_part * keep + 2.0 * c_full * theta * keep
    return full, part, c_bound + c_part * theta + c_full * theta**2
