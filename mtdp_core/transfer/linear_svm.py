"""LinearSVC over a whole C grid and all CV folds at once: a batched Newton solver.

The paper's protocol fits a linear SVM for each of 11 values of C on each of 5 folds (and,
for k classes, k one-vs-rest problems each): 55 to 550 separate liblinear fits, each of
which re-copies the features into liblinear's own sparse format. Here every (fold, class)
problem of one C value is solved together, so the work is a few matrix products over all
of them; C values are solved in increasing order, each starting from the previous
solution (a regularisation path: the smallest C converge in one or two Newton steps, and
each solution is a good start for the next).

The problem is exactly LinearSVC's (``penalty="l2"``, ``loss="squared_hinge"``,
one-vs-rest, intercept as an extra constant feature that is regularised like the others,
``class_weight`` as liblinear applies it), and it is strictly convex, so the solution is
unique: this solver and liblinear reach the same classifier, up to their tolerances. Per
problem, with sample costs ``c_i`` (``C`` times class weight, 0 outside the fold)::

    min_w  0.5 ||w||^2 + sum_i c_i max(0, 1 - y_i w.x_i)^2

solved by Newton's method with the generalised Hessian ``I + 2 X_A^T diag(c_A) X_A``
(A: samples inside the margin), conjugate gradients for the Newton step, preconditioned
with the Hessian restricted to the top eigenvectors of ``X^T X`` (pooled CNN features are
strongly correlated: this takes about 3x fewer CG steps than a diagonal preconditioner),
and an exact line search (the objective is piecewise quadratic along a line). Converged
problems drop out of the computation. Float64 on CPU (float32 was not faster there),
float32 on CUDA. Runs on any torch device, and on numpy where torch is not installed (the
torch-free inference images: the same algorithm, through ``_NumpyOps``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from mtdp_core.errors import ConfigurationError
from mtdp_core.runtime import torch_available

logger = logging.getLogger(__name__)


class _TorchOps:
    """The array operations the solver needs that differ between torch and numpy: torch."""

    def __init__(self, device: Any, dtype: Any) -> None:
        import torch

        self.torch, self.device, self.dtype = torch, device, dtype

    def asarray(self, a: np.ndarray) -> Any:
        return self.torch.as_tensor(a, dtype=self.dtype, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.double().cpu().numpy()

    def tiny(self) -> float:
        return self.torch.finfo(self.dtype).tiny

    def arange(self, n: int) -> Any:
        return self.torch.arange(n, device=self.device)

    def zeros(self, *shape: int) -> Any:
        return self.torch.zeros(*shape, dtype=self.dtype, device=self.device)

    def ones(self, n: int) -> Any:
        return self.torch.ones(n, dtype=self.dtype, device=self.device)

    def copy(self, x: Any) -> Any:
        return x.clone()

    def contiguous(self, x: Any) -> Any:
        return x.contiguous()

    def norm0(self, x: Any) -> Any:
        return x.norm(dim=0)

    def clamp_min(self, x: Any, value: float) -> Any:
        return x.clamp_min(value)

    def abs(self, x: Any) -> Any:
        return x.abs()

    def einsum(self, spec: str, *xs: Any) -> Any:
        return self.torch.einsum(spec, *xs)

    def eigh(self, x: Any) -> tuple[Any, Any]:
        return self.torch.linalg.eigh(x)

    def factor_spd(self, M: Any) -> Any:
        """A factorisation of the SPD matrices M (P, k, k), in float64 whatever the working
        precision: with a large C they are far too ill-conditioned for float32 (the CUDA path)."""
        k = M.shape[-1]
        return self.torch.linalg.cholesky(self.torch.eye(k, dtype=self.torch.float64, device=M.device) + M.double())

    def solve_spd(self, factor: Any, B: Any) -> Any:
        """(I + M)^-1 b for each problem: factor (p, k, k) of ``factor_spd``, B (p, k) -> (p, k)."""
        return self.torch.cholesky_solve(B.double().unsqueeze(-1), factor).squeeze(-1).to(self.dtype)


class _NumpyOps:
    """The same operations with numpy (float64, CPU): the solver without torch."""

    def __init__(self) -> None:
        self.dtype = np.float64

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.float64)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def tiny(self) -> float:
        return float(np.finfo(np.float64).tiny)

    def arange(self, n: int) -> np.ndarray:
        return np.arange(n)

    def zeros(self, *shape: int) -> np.ndarray:
        return np.zeros(shape)

    def ones(self, n: int) -> np.ndarray:
        return np.ones(n)

    def copy(self, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def contiguous(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x)

    def norm0(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt((x * x).sum(0))

    def clamp_min(self, x: np.ndarray, value: float) -> np.ndarray:
        return np.maximum(x, value)

    def abs(self, x: np.ndarray) -> np.ndarray:
        return np.abs(x)

    def einsum(self, spec: str, *xs: np.ndarray) -> np.ndarray:
        return np.einsum(spec, *xs, optimize=True)

    def eigh(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.linalg.eigh(x)

    def factor_spd(self, M: np.ndarray) -> np.ndarray:
        # numpy has no batched triangular solve: the inverse, once per Newton step, is applied
        # by a product in every CG step (a preconditioner needs no more accuracy than this).
        return np.linalg.inv(np.eye(M.shape[-1]) + M)

    def solve_spd(self, factor: np.ndarray, B: np.ndarray) -> np.ndarray:
        return np.einsum("pij,pj->pi", factor, B)


class _Preconditioner:
    """Approximate inverse of the Hessians ``I + 2 X^T diag(a_p) X``, one per problem p.

    "lowrank" (default): pooled CNN features are strongly correlated (non-negative, with a
    large common mean and a fast-decaying spectrum), so the Hessians have a few huge
    eigenvalues that make plain CG slow. ``V`` (d, k) spans the top-k eigenvectors of
    ``X^T X`` (computed once per path); within that subspace the Hessian is represented
    exactly (``I + 2 (XV)^T diag(a) (XV)``, k x k, Cholesky-factored per problem), outside
    it by its average curvature ``mu``:  M^-1 r = V (I + 2B)^-1 V^T r + (r - V V^T r) / mu.
    "diagonal": Jacobi, the classic choice (kept for comparison).
    """

    def __init__(self, ops: Any, basis: _Basis | None, X2T: Any, A: Any) -> None:
        self.ops, self.basis = ops, basis
        if basis is None:
            self.diag = 1 + 2 * (X2T @ A)  # diagonal of the Hessians: (X**2)^T a
            return
        XV = basis.XV  # (n, k)
        k = XV.shape[1]
        # B_p = (XV)^T diag(a_p) (XV) for every problem p: (P, k, k), factored once per Newton step.
        B = ops.einsum("ni,np,nj->pij", XV, A, XV)
        self.factor = ops.factor_spd(2 * B)
        # Average curvature outside the subspace: (trace of X^T D X - trace of B) / (d - k).
        outside = (basis.row_sq - basis.row_sq_in) @ A  # (P,)
        self.mu = 1 + 2 * ops.clamp_min(outside, 0) / max(basis.V.shape[0] - k, 1)

    def apply(self, R: Any, cols: Any) -> Any:
        """M^-1 R for the problems ``cols`` (R: (d, len(cols)))."""
        if self.basis is None:
            return R / self.diag[:, cols]
        V = self.basis.V
        proj = V.T @ R  # (k, p)
        inside = self.ops.solve_spd(self.factor[cols], proj.T).T  # (k, p)
        return V @ inside + (R - V @ proj) / self.mu[cols]


class _Basis:
    """Top-k eigenvectors of X^T X and the quantities the preconditioners reuse."""

    def __init__(self, ops: Any, X: Any, k: int) -> None:
        gram = X.T @ X
        _, vectors = ops.eigh(gram)  # ascending eigenvalues
        self.V = ops.contiguous(vectors[:, -k:])  # (d, k)
        self.XV = X @ self.V  # (n, k)
        self.row_sq = (X * X).sum(1)  # ||x_i||^2
        self.row_sq_in = (self.XV * self.XV).sum(1)  # ||V^T x_i||^2


PRECONDITIONERS = ("lowrank", "diagonal")


def _newton(
    ops: Any,
    X: Any,
    XT: Any,
    X2T: Any,
    basis: _Basis | None,
    Y: Any,
    cost: Any,
    W: Any,
    *,
    tol: float,
    max_newton: int,
    max_cg: int,
) -> tuple[bool, int, int]:
    """Solve every column of ``W`` (d, P) in place, starting from its current value.

    X (n, d) features with the intercept column, XT its transpose (contiguous: products
    with it are 2x faster than with a transposed view), basis the low-rank preconditioner's
    subspace, or None and X2T = (X**2)^T for the diagonal one, Y (n, P) in {-1, +1}, cost
    (n, P) per-sample costs (C x weight, 0 for samples outside the problem). Returns
    (converged, Newton steps, CG steps); converged when every problem met
    ``||grad|| <= tol * ||grad at 0||``.
    """
    tiny = ops.tiny()
    g0 = ops.norm0(2 * (XT @ (cost * -Y)))  # gradient norm at w = 0: the reference scale
    idx = ops.arange(W.shape[1])
    Z = X @ W
    n_cg = 0
    for step_index in range(max_newton):
        Ws, Zs, Ys, Cs = W[:, idx], Z[:, idx], Y[:, idx], cost[:, idx]
        A = Cs * ((Ys * Zs) < 1)  # cost of the samples inside the margin, 0 elsewhere
        G = Ws + 2 * (XT @ (A * (Zs - Ys)))
        gnorm = ops.norm0(G)
        todo = gnorm > tol * g0[idx]
        if not bool(todo.any()):
            return True, step_index, n_cg
        # Converged problems leave the computation (the products get narrower).
        idx, Ws, Zs, Ys, Cs, A, G, gnorm = (t[..., todo] for t in (idx, Ws, Zs, Ys, Cs, A, G, gnorm))

        # Newton step: (I + 2 X^T diag(A) X) s = -G by preconditioned CG, to 10% of |G|.
        precond = _Preconditioner(ops, basis, X2T, A)
        S = ops.zeros(*Ws.shape)
        R = -G
        Zp = precond.apply(R, slice(None))
        Pd = ops.copy(Zp)
        rz = (R * Zp).sum(0)
        live = ops.arange(len(idx))
        for _ in range(max_cg):
            n_cg += 1
            P_live = Pd[:, live]
            Hp = P_live + 2 * (XT @ (A[:, live] * (X @ P_live)))
            alpha = rz[live] / ops.clamp_min((P_live * Hp).sum(0), tiny)
            S[:, live] += alpha * P_live
            R[:, live] -= alpha * Hp
            still = ops.norm0(R[:, live]) > 0.1 * gnorm[live]
            if not bool(still.any()):
                break
            live = live[still]
            Zp = precond.apply(R[:, live], live)
            rz_new = (R[:, live] * Zp).sum(0)
            beta = rz_new / ops.clamp_min(rz[live], tiny)
            rz[live] = rz_new
            Pd[:, live] = Zp + beta * Pd[:, live]

        # Exact line search: phi(t) is piecewise quadratic; Newton on phi'(t) = 0.
        U = X @ S
        ws, ss = (Ws * S).sum(0), (S * S).sum(0)
        t = ops.ones(len(idx))
        for _ in range(30):
            Zt = Zs + t * U
            At = Cs * ((Ys * Zt) < 1)
            dphi = ws + t * ss + 2 * (At * (Zt - Ys) * U).sum(0)
            d2phi = ss + 2 * (At * U * U).sum(0)
            step = dphi / ops.clamp_min(d2phi, tiny)
            t = t - step
            if bool((ops.abs(step) <= 1e-8 * ops.clamp_min(ops.abs(t), 1)).all()):
                break
        W[:, idx] = Ws + t * S
        Z[:, idx] = Zs + t * U
    return False, max_newton, n_cg


def linear_svm_path(
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[np.ndarray],
    Cs: Sequence[float],
    *,
    class_weight: dict | str | None = None,
    intercept_scaling: float = 1.0,
    tol: float = 1e-4,
    max_newton: int = 100,
    max_cg: int = 1000,
    device: Any = "cpu",
    dtype: Any = None,
    preconditioner: str = "lowrank",
    rank: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """LinearSVC coefficients for every C on the training rows of every fold.

    Args:
        X: features (n_samples, n_features).
        y: labels (n_samples,), at least two classes.
        folds: for each fold, the indices of its training rows.
        Cs: the C values (any order).
        class_weight: None, ``"balanced"`` or {label: weight}, as LinearSVC.
        intercept_scaling: LinearSVC's (the constant feature's value).
        tol: relative gradient-norm tolerance.
        device: where to compute (a CUDA device solves large grids much faster); on the CPU
            without torch installed, numpy computes (float64).
        dtype: a torch dtype; float64 by default on CPU, float32 on CUDA.
        preconditioner: ``"lowrank"`` (top-``rank`` eigenvectors of X^T X, see
            _Preconditioner: about 3x fewer CG steps on CNN features) or ``"diagonal"``.

    Returns:
        ``(coef, classes)``: coef (len(Cs), len(folds), n_problems, n_features + 1), the last
        column being the intercept; n_problems is 1 for two classes (positive class
        ``classes[1]``, as LinearSVC) and n_classes otherwise (one-vs-rest).
    """
    if preconditioner not in PRECONDITIONERS:
        raise ConfigurationError(f"Invalid preconditioner {preconditioner!r}: use one of {', '.join(PRECONDITIONERS)}.")
    ops = _ops(device, dtype)
    classes, y_index = np.unique(np.asarray(y), return_inverse=True)
    n, k = len(y_index), len(classes)
    problems = [1] if k == 2 else list(range(k))
    n_prob, n_folds = len(problems), len(folds)
    # Columns are (fold, problem) pairs, fold-major. One-vs-rest: liblinear weights the
    # positive class of each problem by its class weight and leaves the rest at C; with two
    # classes, each class has its own weight. "balanced" weights come from each training fold.
    Y_np = np.empty((n, n_folds * n_prob))
    cost_np = np.zeros((n, n_folds * n_prob))
    for f, train in enumerate(folds):
        train = np.asarray(train)
        weights = _class_weights(class_weight, classes, y_index[train])
        for p, j in enumerate(problems):
            col = f * n_prob + p
            pos = y_index == j
            Y_np[:, col] = np.where(pos, 1.0, -1.0)
            sample_weight = weights[y_index] if k == 2 else np.where(pos, weights[j], 1.0)
            cost_np[train, col] = sample_weight[train]

    # A private copy in the solver's dtype (the input may be a read-only memory map), with the
    # constant feature of the intercept.
    X_np = np.asarray(X, dtype=np.float64)
    Xt = ops.asarray(np.concatenate([X_np, np.full((n, 1), float(intercept_scaling))], axis=1))
    XT = ops.contiguous(Xt.T)
    if preconditioner == "lowrank":
        basis, X2T = _Basis(ops, Xt, max(1, min(rank, Xt.shape[1] - 1))), None
    else:
        basis, X2T = None, XT * XT
    Y = ops.asarray(Y_np)
    base_cost = ops.asarray(cost_np)
    W = ops.zeros(Xt.shape[1], n_folds * n_prob)

    order = np.argsort(np.asarray(Cs, dtype=float), kind="stable")
    out = np.empty((len(Cs), n_folds, n_prob, Xt.shape[1]))
    not_converged = []
    for i in order:  # increasing C: warm start from the previous solution
        converged, n_newton, n_cg = _newton(
            ops, Xt, XT, X2T, basis, Y, base_cost * float(Cs[i]), W, tol=tol, max_newton=max_newton, max_cg=max_cg
        )
        logger.debug("C=%g: %d Newton steps, %d CG steps", Cs[i], n_newton, n_cg)
        if not converged:
            not_converged.append(Cs[i])
        out[i] = ops.to_numpy(W.T).reshape(n_folds, n_prob, -1)
        out[i, ..., -1] *= intercept_scaling  # weight of the constant feature -> intercept
    if not_converged:
        warnings.warn(
            f"linear SVM path: C={not_converged} did not converge in {max_newton} Newton steps",
            ConvergenceWarning,
            stacklevel=2,
        )
    return out, classes


def _ops(device: Any, dtype: Any) -> _TorchOps | _NumpyOps:
    """torch on ``device`` (float64 on CPU, float32 on CUDA by default); numpy on a CPU without torch."""
    if not torch_available():
        if str(device) != "cpu" or dtype not in (None, "float64"):
            raise ConfigurationError(
                f"The SVM solver runs on {device} only with torch, which is not installed here: use device cpu."
            )
        return _NumpyOps()
    import torch

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cuda" else torch.float64
    return _TorchOps(device, dtype)


def _class_weights(class_weight: dict | str | None, classes: np.ndarray, y_index: np.ndarray) -> np.ndarray:
    """Weight of each class (as scikit-learn's compute_class_weight, on the training labels)."""
    if class_weight is None:
        return np.ones(len(classes))
    if isinstance(class_weight, str) and class_weight == "balanced":
        counts = np.bincount(y_index, minlength=len(classes)).astype(float)
        present = counts > 0
        out = np.ones(len(classes))
        out[present] = len(y_index) / (present.sum() * counts[present])
        return out
    if isinstance(class_weight, dict):
        return np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])
    raise ConfigurationError(
        f"Invalid class_weight {class_weight!r}: use None, 'balanced' or a dict {{label: weight}}."
    )


def decision_values(coef: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Decision values of one path entry: coef (n_problems, d + 1), X (m, d) -> (m, n_problems)."""
    return np.asarray(X, dtype=np.float64) @ coef[:, :-1].T + coef[:, -1]
