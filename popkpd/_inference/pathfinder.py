"""Pathfinder: NUTS starting points from the L-BFGS path (``fit(init="pathfinder")``).

Single-path Pathfinder of Zhang, Carpenter, Gelman & Vehtari (2022), "Pathfinder: parallel
quasi-Newton variational inference", JMLR 23(306). Along the L-BFGS path of the potential
``U = -log p`` (unconstrained, the MAP optimisation ``fit`` already runs), each iterate ``x_l``
with the last ``history`` curvature pairs ``(s, y)`` defines a normal approximation

    q_l = N(x_l - H_l grad U(x_l), H_l),

``H_l`` the L-BFGS inverse Hessian: a diagonal (the paper's recursion) plus a rank-``2 history``
term (compact form of Byrd, Nocedal & Schnabel 1994). The iterate whose ``q_l`` has the
largest ELBO ``E_q[-U - log q]``, estimated from ``elbo_draws`` draws, is kept, and its draws
start the chains.

Why: for hierarchical models the Laplace approximation sits at the joint mode, where the
random-effect scales are shrunk towards zero (the neck of the funnel); an early iterate of the
path is usually a better picture of the bulk of the posterior, so chains start in it.
Deviations from the paper, all for simplicity or cost: the path is scipy's L-BFGS-B (its own
history of 10), not a separate L-BFGS; one path, no importance resampling; the ELBO is estimated
at up to 100 iterates spread over the path, not at every one.
"""

from __future__ import annotations

import numpy as np


def pathfinder(path, potential, key_seed: int, chains: int, *, history: int = 6, elbo_draws: int = 8,
               max_evaluated: int = 100):
    """Run Pathfinder on an optimisation ``path`` (list of ``(x, U(x), grad U(x))``).

    ``potential(x) -> float`` (``inf`` where the density is zero). The ELBO is estimated at no
    more than ``max_evaluated`` iterates, evenly spread over the path and including its end (a
    long path of a slow model would otherwise cost ``elbo_draws`` potentials per iterate); the
    curvature history uses every iterate. Returns ``(points [chains, dim], info)``: ``info``
    holds the chosen iterate, the number of iterates and the ELBO of each (``-inf`` where not
    evaluated).
    """
    rng = np.random.default_rng(key_seed)
    xs = np.array([p[0] for p in path])
    gs = np.array([p[2] for p in path])
    dim = xs.shape[1]
    alpha = np.ones(dim)
    pairs = []  # accepted (s, y), oldest first
    best = None
    elbos = []
    evaluated = set(np.linspace(0, len(path) - 1, min(len(path), max_evaluated)).round().astype(int).tolist())
    for l in range(len(path)):
        if l > 0:
            s, y = xs[l] - xs[l - 1], gs[l] - gs[l - 1]
            if s @ y > 1e-12 * (y @ y):  # curvature condition, else the pair is skipped
                alpha = _update_diagonal(alpha, s, y)
                pairs = (pairs + [(s, y)])[-history:]
        if l not in evaluated:
            elbos.append(-np.inf)
            continue
        approx = _Normal(xs[l], gs[l], alpha, pairs)
        u = rng.standard_normal((elbo_draws, dim))
        draws, log_q = approx.sample(u)
        log_p = -np.array([potential(x) for x in draws])
        elbo = float(np.mean(log_p - log_q)) if np.all(np.isfinite(log_p)) else -np.inf
        elbos.append(elbo)
        if best is None or elbo > best[0]:
            best = (elbo, l, approx)
    _, index, approx = best
    points = []
    for _ in range(50 * chains):  # draws of the chosen approximation with a finite density
        x, _ = approx.sample(rng.standard_normal((1, dim)))
        if np.isfinite(potential(x[0])):
            points.append(x[0])
        if len(points) == chains:
            break
    while len(points) < chains:  # only where the approximation keeps falling outside the support
        points.append(xs[index])
    info = {"iterate": int(index), "iterates": len(path), "elbo": elbos}
    return np.array(points), info


def _update_diagonal(alpha, s, y):
    """The paper's diagonal recursion (its Algorithm 3): the diagonal of the inverse Hessian
    after one scaled BFGS update of ``diag(1 / alpha)``; kept unchanged where that is not a
    positive finite number."""
    a, b, c = y @ (alpha * y), y @ s, s @ (s / alpha)
    inv = a / (b * alpha) + y**2 / b - a * s**2 / (b * c * alpha**2)
    new = 1.0 / inv
    return np.where(np.isfinite(new) & (new > 0), new, alpha)


class _Normal:
    """``N(x - H g, H)`` with ``H = diag(alpha) + B G B^T`` (L-BFGS compact form, rank 2m);
    sampled and evaluated in O(dim m^2)."""

    def __init__(self, x, g, alpha, pairs):
        self.alpha = alpha
        dim = len(x)
        # diagonal only, where there are no pairs or I + Rq G Rq^T is not positive definite in
        # floating point
        Q, L, B, G = np.zeros((dim, 0)), np.zeros((0, 0)), np.zeros((dim, 0)), np.zeros((0, 0))
        if pairs:
            S = np.stack([p[0] for p in pairs], axis=1)  # [dim, m]
            Y = np.stack([p[1] for p in pairs], axis=1)
            m = S.shape[1]
            SY = S.T @ Y
            Rinv = np.linalg.inv(np.triu(SY))
            D = np.diag(np.diag(SY))
            low_rank = np.concatenate([alpha[:, None] * Y, S], axis=1)  # [dim, 2m]
            middle = np.block([[np.zeros((m, m)), -Rinv],
                               [-Rinv.T, Rinv.T @ (D + Y.T @ (alpha[:, None] * Y)) @ Rinv]])
            # H = A + B G B^T = A^1/2 (I + Q (M - I) Q^T) A^1/2, A^-1/2 B = Q Rq, M = I + Rq G Rq^T = L L^T
            q, rq = np.linalg.qr(low_rank / np.sqrt(alpha)[:, None])
            M = np.eye(len(rq)) + rq @ middle @ rq.T
            try:
                L = np.linalg.cholesky(0.5 * (M + M.T))
                Q, B, G = q, low_rank, middle
            except np.linalg.LinAlgError:
                pass
        self.Q, self.L, self.B, self.G = Q, L, B, G
        self.mean = x - (alpha * g + B @ (G @ (B.T @ g)))
        self.log_det = float(np.sum(np.log(alpha)) + 2 * np.sum(np.log(np.diag(L))))

    def covariance(self):
        """``H`` as a dense matrix (for checks; the sampler never forms it)."""
        return np.diag(self.alpha) + self.B @ self.G @ self.B.T

    def sample(self, u):
        """Draws ``mean + F u`` (``F F^T = H``) and their log densities, for ``u`` ``[n, dim]``."""
        Qu = u @ self.Q  # [n, 2m]
        white = u + (Qu @ self.L.T - Qu) @ self.Q.T
        x = self.mean + np.sqrt(self.alpha) * white
        log_q = -0.5 * (np.sum(u**2, axis=1) + self.log_det + u.shape[1] * np.log(2 * np.pi))
        return x, log_q
