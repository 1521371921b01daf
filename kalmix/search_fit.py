"""The regression of a mixture search: trial weights -> objective, its cross-validated R², and
the weighting it predicts best (RegMix's recipe: fit on a few proxy runs, rank many candidates).

Kept apart from `kalmix.search` (which runs trials) because `kalmix.attribution` fits the same
model per task-type mean: one fit, one notion of "what the regression says".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Ridge penalties tried (inner leave-one-out of RidgeCV): a few trials over many datasets need
# strong shrinkage, many trials over few datasets almost none.
ALPHAS = tuple(float(a) for a in np.logspace(-4, 2, 13))
# Candidates ranked by the fitted model, drawn from the same Dirichlet as the trials, and how
# many of the best are averaged into the proposal: a linear model's argmax is a corner of the
# simplex, far outside what the trials explored; the mean of the top candidates stays inside.
CANDIDATES = 20_000
TOP = 100


@dataclass(frozen=True)
class Fit:
    """A fitted ridge regression over dataset shares; `cv_r2` is out-of-fold R² (KFold, up to 5
    folds), the honest measure of how far its ranking of mixtures can be trusted."""

    model: str
    alpha: float
    intercept: float
    coef: dict[str, float]
    cv_r2: float | None
    trials: int

    def predict(self, weights: np.ndarray) -> np.ndarray:
        coef = np.array(list(self.coef.values()))
        return np.atleast_2d(weights) @ coef + self.intercept

    def to_dict(self) -> dict:
        return asdict(self)


def fit(*, names: list[str], weights: np.ndarray, y: np.ndarray) -> Fit:
    """Ridge (penalty chosen by RidgeCV) from normalised weights to `y`, with out-of-fold R²."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict

    weights = np.asarray(weights, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    model = RidgeCV(alphas=ALPHAS).fit(weights, y)
    cv_r2 = None
    if len(y) >= 3 and float(np.ptp(y)) > 0:
        folds = KFold(n_splits=min(5, len(y)), shuffle=True, random_state=0)
        predicted = cross_val_predict(RidgeCV(alphas=ALPHAS), weights, y, cv=folds)
        cv_r2 = float(r2_score(y, predicted))
    return Fit(
        model="ridge",
        alpha=float(model.alpha_),
        intercept=float(model.intercept_),
        coef={n: float(c) for n, c in zip(names, model.coef_, strict=True)},
        cv_r2=cv_r2,
        trials=len(y),
    )


def dirichlet(prior: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` weightings around `prior`: Dirichlet with concentration 2 per dataset (a uniform
    prior gives alpha 2 each: clearly different mixtures, rarely a dataset left at zero)."""
    alpha = np.maximum(prior * 2.0 * len(prior), 1e-3)
    return rng.dirichlet(alpha, size=n)


def propose(model: Fit, prior: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The mean of the `TOP` best of `CANDIDATES` Dirichlet draws under `model`, and its
    predicted objective."""
    candidates = dirichlet(prior, CANDIDATES, rng)
    order = np.argsort(-model.predict(candidates))
    best = candidates[order[:TOP]].mean(axis=0)
    best = best / best.sum()
    return best, float(model.predict(best)[0])
