"""Fitting the preset's `calibrated` constants to the public cases, and checking the fit out of sample.

Only this package (and `scripts/calibrate.py`, which calls it) reads published numbers.

The fit. Every calibrated constant has a physical range in the preset (`range = [lo, hi]`, with its source); the
search runs in u in [0, 1] per constant, log-spaced over the range. The objective is the mean over families of
each family's mean absolute log error |log(predicted / published)| (close to the MAPE, and no family traded
for another), plus a weak pull of every constant towards the middle of its range (a prior: it decides only
what the cases leave undetermined, e.g. a constant no training case depends on). The absolute error is fitted
by iteratively reweighted least squares with a damped Gauss-Newton (Levenberg-Marquardt) step: the Jacobian
comes from forward differences, each column one evaluation of every case; later steps update it from what
they see (Broyden) instead of re-evaluating it. The programs of the cases are built once and re-timed on a
chip with the trial values, in parallel over processes.

Cross-validation (`cross_validate`). Leave one group out, for several groupings of the public cases (family,
data type, placement, dimension, table size): re-fit on the other cases, warm-started from the preset's fit and
its Jacobian, then predict the held-out group. Each case is held out once per grouping it belongs to; a
family's out-of-sample MAPE and Pearson r pool all its held-out predictions.

Sensitivity (`sensitivity`): every prediction at each calibrated constant x 0.9 and x 1.1.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtiasim.validate import FAMILIES, Case, cases, pearson

PRIOR_WEIGHT = 1e-3  # weight of the pull to the middle of each range, against a family's mean |log error|
IRLS_FLOOR = 0.01  # errors below 1 % count as 1 % when reweighting (the absolute error is not smooth at 0)
DIFF_STEP = 0.02  # forward-difference step in u (2 % of a range's log width)
EDGE = 0.01  # a fitted value within 1 % of its range's (log) width from an edge sits on the edge

GROUPINGS = ("family", "dtype", "placement", "dimension", "table_size")


# ----------------------------------------------------------------------------------------- the cases


@dataclass
class Prepared:
    case: Case
    bench: Any
    resolved: Any
    memo: Any


def prepare(chip: Any, todo: Iterable[Case] | None = None) -> list[Prepared]:
    """Build every case's program once (their timing is redone per trial chip)."""
    from mtiasim.bench.gemm import prepare_gemm
    from mtiasim.bench.ops import prepare_op
    from mtiasim.bench.tbe import prepare_tbe
    from mtiasim.engine.resolve import resolve
    from mtiasim.engine.work import Memo

    out = []
    for case in cases() if todo is None else todo:
        if case.family.startswith("fc"):
            b = prepare_gemm(**case.args, chip=chip)
        elif case.family == "tbe":
            b = prepare_tbe(**case.args, chip=chip)
        else:
            b = prepare_op(**case.args, chip=chip)
        out.append(Prepared(case, b, resolve(b.program, chip), Memo()))
    return out


def run_prepared(p: Prepared, chip: Any) -> dict[str, Any]:
    """The benchmark's JSON fields for a prepared case on `chip` (timing only)."""
    from mtiasim.engine import ExecutionResult
    from mtiasim.engine.timing import TimingModel, simulate

    b = p.bench
    model = TimingModel(b.program, p.resolved, chip, b.inputs, p.memo)
    timing = simulate(model, "event")
    return b.summarize(ExecutionResult("timing", "event", None, timing, p.resolved))


_WORKER: dict[str, Any] = {}


def _chip_with(values: tuple[tuple[str, float], ...]) -> Any:
    cache = _WORKER.setdefault("chips", {})
    chip = cache.get(values)
    if chip is None:
        base = _WORKER["base"]
        chip = base.with_values(dict(values), provenance_kind="calibrated") if values else base
        if len(cache) > 64:
            cache.clear()
        cache[values] = chip
    return chip


def _predict_one(args: tuple[int, tuple[tuple[str, float], ...]]) -> tuple[int, float]:
    i, values = args
    p = _WORKER["preps"][i]
    return i, float(run_prepared(p, _chip_with(values))[p.case.metric])


class Evaluator:
    """Predictions of prepared cases on the base chip with some calibrated values replaced; the cases are
    shared out over forked processes (which inherit the prepared programs)."""

    def __init__(self, base: Any, preps: list[Prepared], processes: int = 2) -> None:
        self.base = base
        self.preps = preps
        self.processes = max(1, min(processes, os.cpu_count() or 1))
        self.evaluations = 0
        _WORKER.update(base=base, preps=preps, chips={})
        self.pool = mp.get_context("fork").Pool(self.processes) if self.processes > 1 else None
        # slowest first, so that the processes finish together
        self._order = sorted(range(len(preps)), key=lambda i: -_cost_guess(preps[i].case))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(self, values: dict[str, float], idx: Iterable[int] | None = None) -> np.ndarray:
        """Predicted metric of every case (NaN where not in `idx`)."""
        self.evaluations += 1
        key = tuple(sorted((k, float(v)) for k, v in values.items()))
        want = set(range(len(self.preps)) if idx is None else idx)
        tasks = [(i, key) for i in self._order if i in want]
        out = np.full(len(self.preps), np.nan)
        if self.pool is None:
            results = map(_predict_one, tasks)
        else:
            results = self.pool.imap_unordered(_predict_one, tasks, chunksize=1)
        for i, v in results:
            out[i] = v
        return out


def _cost_guess(case: Case) -> float:
    a = case.args
    if case.family == "tbe":
        return a["batch"] * a["pooling"] * (2 if a["rows"] > 1000 else 1)
    if case.family.startswith("fc"):
        return a["k"] * a["n"] / 1e3
    return 500.0


# ---------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Space:
    """The calibrated constants being fitted, each in [0, 1] over its physical range (log-spaced)."""

    keys: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, chip: Any, keys: Iterable[str] | None = None) -> Space:
        keys = tuple(sorted(keys if keys is not None else calibrated_keys(chip)))
        rng = [chip.provenance[k].range for k in keys]
        return cls(keys, np.array([r[0] for r in rng]), np.array([r[1] for r in rng]))

    def values(self, u: np.ndarray) -> dict[str, float]:
        u = np.clip(u, 0.0, 1.0)
        v = np.exp(np.log(self.lo) + u * (np.log(self.hi) - np.log(self.lo)))
        return {k: float(x) for k, x in zip(self.keys, v, strict=True)}

    def unit(self, values: dict[str, float]) -> np.ndarray:
        v = np.array([float(values[k]) for k in self.keys])
        return (np.log(v) - np.log(self.lo)) / (np.log(self.hi) - np.log(self.lo))


def calibrated_keys(chip: Any) -> list[str]:
    """The timing constants the preset marks `calibrated` (energy is fitted by scripts/calibrate_power.py, die
    area by scripts/calibrate_area.py)."""
    return sorted(
        k
        for k, p in chip.provenance.items()
        if p.kind == "calibrated" and not k.startswith(("energy.", "area."))
    )


def on_edge(chip: Any) -> list[str]:
    """Calibrated constants within `EDGE` of an end of their physical range (log width)."""
    out = []
    for k, p in chip.provenance.items():
        if p.kind != "calibrated" or p.range is None:
            continue
        lo, hi = p.range
        v = float(chip.value(k))
        u = (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) if lo > 0 else (v - lo) / (hi - lo)
        if u <= EDGE or u >= 1 - EDGE:
            out.append(k)
    return out


# ------------------------------------------------------------------------------------------- the fit


@dataclass
class FitResult:
    u: np.ndarray
    values: dict[str, float]
    predictions: np.ndarray  # every case at the fitted values (NaN where not evaluated)
    cost: float
    iterations: int
    evaluations: int
    jacobian: np.ndarray | None = None  # d log(prediction) / du at the start point, every case
    history: list[float] = field(default_factory=list)
    final_jacobian: np.ndarray | None = (
        None  # at the fitted point (Broyden-updated), every case (0: untrained)
    )


def log_errors(pred: np.ndarray, published: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(pred, 1e-30) / published)


def family_weights(families: list[str], idx: np.ndarray) -> np.ndarray:
    """Per case: 1 / (cases of its family among idx x families among idx), so each family counts equally."""
    fams = [families[i] for i in idx]
    count = {f: fams.count(f) for f in set(fams)}
    return np.array([1.0 / (count[f] * len(count)) for f in fams])


def objective(err: np.ndarray, weights: np.ndarray, u: np.ndarray) -> float:
    return float((weights * np.abs(err)).sum() + PRIOR_WEIGHT * ((u - 0.5) ** 2).sum())


class Fitter:
    """Fits the constants of `space` on the cases `train` (indices into the evaluator's cases)."""

    def __init__(
        self,
        ev: Evaluator,
        space: Space,
        progress: Callable[[str], None] | None = None,
        fixed: dict[str, float] | None = None,
    ) -> None:
        self.ev = ev
        self.space = space
        self.fixed = dict(fixed or {})  # calibrated values held at these, not fitted
        self.published = np.array([p.case.published for p in ev.preps])
        self.families = [p.case.family for p in ev.preps]
        self.progress = progress or (lambda _m: None)

    def evaluate(self, u: np.ndarray, idx: Iterable[int] | None = None) -> np.ndarray:
        return self.ev.predict({**self.fixed, **self.space.values(u)}, idx)

    def jacobian(self, u: np.ndarray, base_pred: np.ndarray, idx: Iterable[int] | None = None) -> np.ndarray:
        """d log(prediction) / du by forward differences (backward at the top of a range)."""
        idx = list(range(len(self.published))) if idx is None else list(idx)
        jac = np.zeros((len(self.published), u.size))
        for j in range(u.size):
            h = DIFF_STEP if u[j] + DIFF_STEP <= 1.0 else -DIFF_STEP
            uj = u.copy()
            uj[j] += h
            pred = self.evaluate(uj, idx)
            jac[idx, j] = (np.log(pred[idx]) - np.log(base_pred[idx])) / h
            self.progress(f"jacobian {j + 1}/{u.size} ({self.space.keys[j]})")
        return jac

    def fit(
        self,
        train: Iterable[int],
        u0: np.ndarray,
        pred0: np.ndarray | None = None,
        jac0: np.ndarray | None = None,
        max_iter: int = 12,
        refresh_jacobian: bool = True,
        also: Iterable[int] = (),
    ) -> FitResult:
        """IRLS Levenberg-Marquardt from u0. `jac0` (every case) skips the first Jacobian; without
        `refresh_jacobian` later steps update it (Broyden) instead of re-evaluating it. Predictions of the
        cases in `also` are computed at every accepted point too (held-out cases)."""
        train = np.array(sorted(set(train)), dtype=np.int64)
        evals0 = self.ev.evaluations
        want = sorted(set(train.tolist()) | set(also))
        u = np.clip(np.asarray(u0, dtype=np.float64), 0.0, 1.0)
        pred = pred0 if pred0 is not None else self.evaluate(u, want)
        w_fam = family_weights(self.families, train)
        err = log_errors(pred[train], self.published[train])
        cost = objective(err, w_fam, u)
        jac = jac0[train] if jac0 is not None else self.jacobian(u, pred, train)[train]
        full_jac = jac0 if jac0 is not None else None
        lam = 1e-3
        history = [cost]
        it = 0
        for it in range(1, max_iter + 1):
            # reweighted least squares: |e| ~ e^2 / max(|e|, floor)
            a = w_fam / np.maximum(np.abs(err), IRLS_FLOOR)
            sq = np.sqrt(a)
            jw = jac * sq[:, None]
            rw = err * sq
            g = jw.T @ rw + PRIOR_WEIGHT * (u - 0.5)
            h = jw.T @ jw + PRIOR_WEIGHT * np.eye(u.size)
            improved = False
            for _ in range(6):
                step = -np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-12), g)
                u_new = np.clip(u + step, 0.0, 1.0)
                if np.max(np.abs(u_new - u)) < 1e-4:
                    break
                pred_new = self.evaluate(u_new, want)
                err_new = log_errors(pred_new[train], self.published[train])
                cost_new = objective(err_new, w_fam, u_new)
                if cost_new < cost:
                    # Broyden update of the Jacobian along the step actually taken
                    du = u_new - u
                    dy = err_new - err
                    jac = jac + np.outer(dy - jac @ du, du) / float(du @ du)
                    u, pred, err, cost = u_new, pred_new, err_new, cost_new
                    lam = max(lam / 3, 1e-6)
                    improved = True
                    break
                lam *= 8
            history.append(cost)
            self.progress(f"step {it}: objective {cost:.5f}")
            if not improved or (len(history) > 2 and history[-2] - history[-1] < 1e-5):
                break
            if refresh_jacobian and it < max_iter:
                jac = self.jacobian(u, pred, train)[train]
        final = np.zeros((len(self.published), u.size))
        final[train] = jac
        return FitResult(
            u,
            self.space.values(u),
            pred,
            cost,
            it,
            self.ev.evaluations - evals0,
            full_jac,
            history,
            final,
        )


# ---------------------------------------------------------------------------------- cross-validation


def group_of(case: Case, grouping: str) -> str | None:
    """The group of a case under a grouping (None: the grouping does not apply; the case always trains)."""
    a = case.args
    if grouping == "family":
        return case.family
    if grouping == "dtype":
        if case.family.startswith("fc"):
            return a.get("dtype", "int8")
        if case.family == "tbe":
            return "int8 rows"
        return "fp32" if a["op"] in ("quantize", "dequantize") else "fp16"
    if grouping == "placement":
        return None if case.family == "tbe" else ("sram" if a["placement"] == "sram" else "dram")
    if grouping == "dimension":
        if case.family.startswith("fc"):
            return f"fc K=N={a['k']}"
        if case.family == "tbe":
            return f"tbe dim {a['dim']}"
        return None
    if grouping == "table_size":
        return f"tbe rows {a['rows']}" if case.family == "tbe" else None
    raise ValueError(grouping)


@dataclass
class CvResult:
    in_sample: np.ndarray  # prediction of every case at the preset's values
    # grouping -> prediction of every case when its group was held out (NaN: never)
    held_out: dict[str, np.ndarray]
    folds: list[dict[str, Any]]
    seconds: float
    evaluations: int


def cross_validate(
    ev: Evaluator,
    space: Space,
    groupings: Iterable[str] = GROUPINGS,
    max_iter: int = 4,
    progress: Callable[[str], None] | None = None,
) -> CvResult:
    """Leave-one-group-out re-fits, warm-started from the preset's values and their Jacobian."""
    t0 = time.time()
    fitter = Fitter(ev, space, progress)
    n = len(ev.preps)
    u0 = space.unit({k: float(ev.base.value(k)) for k in space.keys})
    pred0 = fitter.evaluate(u0)
    jac0 = fitter.jacobian(u0, pred0)
    held: dict[str, np.ndarray] = {}
    folds = []
    for grouping in groupings:
        out = np.full(n, np.nan)
        labels = [group_of(p.case, grouping) for p in ev.preps]
        for g in sorted({x for x in labels if x is not None}):
            test = [i for i in range(n) if labels[i] == g]
            train = [i for i in range(n) if labels[i] != g]
            if not train:
                continue
            if progress:
                progress(f"{grouping}: leaving out {g} ({len(test)} cases)")
            res = fitter.fit(train, u0, pred0, jac0, max_iter=max_iter, refresh_jacobian=False, also=test)
            out[test] = res.predictions[test]
            folds.append(
                {
                    "grouping": grouping,
                    "held_out": g,
                    "cases": len(test),
                    "values": {k: round(v, 6) for k, v in res.values.items()},
                    "iterations": res.iterations,
                    "evaluations": res.evaluations,
                    "held_out_mape_pct": round(
                        float(np.mean(np.abs(out[test] / fitter.published[test] - 1)) * 100), 3
                    ),
                }
            )
        held[grouping] = out
    return CvResult(pred0, held, folds, time.time() - t0, ev.evaluations)


def family_stats(
    published: np.ndarray, pred: np.ndarray, families: list[str]
) -> dict[str, tuple[float, float]]:
    """Per family: (MAPE %, Pearson r) over the cases with a prediction."""
    out = {}
    for fam in FAMILIES:
        idx = [i for i, f in enumerate(families) if f == fam and np.isfinite(pred[i])]
        if not idx:
            continue
        p, q = published[idx], pred[idx]
        out[fam] = (float(np.mean(np.abs(q / p - 1)) * 100), pearson(list(p), list(q)))
    return out


def cv_family_stats(
    published: np.ndarray, cv: CvResult, families: list[str]
) -> dict[str, tuple[float, float]]:
    """Per family: out-of-sample (MAPE %, Pearson r) pooling every held-out prediction of every grouping."""
    pub, pred, fam = [], [], []
    for arr in cv.held_out.values():
        for i, v in enumerate(arr):
            if np.isfinite(v):
                pub.append(published[i])
                pred.append(v)
                fam.append(families[i])
    return family_stats(np.array(pub), np.array(pred), fam)


# ----------------------------------------------------------------------------------------- sensitivity


def sensitivity(ev: Evaluator, keys: Iterable[str], factor: float = 0.1) -> dict[str, dict[str, np.ndarray]]:
    """Per calibrated constant: every prediction with it x (1 - factor) and x (1 + factor), as the relative
    change of the prediction (the other constants at the preset's values)."""
    base_values = {}
    base = ev.predict(base_values)
    out = {}
    for k in keys:
        v = float(ev.base.value(k))
        lo = ev.predict({k: v * (1 - factor)})
        hi = ev.predict({k: v * (1 + factor)})
        out[k] = {"minus": lo / base - 1, "plus": hi / base - 1}
    out["_base"] = {"pred": base}
    return out


# --------------------------------------------------------------------------------------------- reports


def _space_or_error(chip: Any) -> Space:
    from mtiasim.errors import UsageError

    space = Space.of(chip)
    if not space.keys:
        raise UsageError(
            f"chip {chip.name}: no calibrated constants to re-fit (cross-validation and sensitivity need "
            "values marked `calibrated` with a range)"
        )
    return space


def cv_report(
    chip: Any,
    processes: int = 2,
    groupings: Iterable[str] = GROUPINGS,
    max_iter: int = 4,
    todo: Iterable[Case] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Out-of-sample figures: per family the in-sample MAPE and Pearson r at the preset's values and the
    pooled held-out ones (`cv_mape_pct`, `cv_pearson_r`), per grouping, per fold and per case."""
    groupings = tuple(groupings)
    space = _space_or_error(chip)
    preps = prepare(chip, todo)
    with Evaluator(chip, preps, processes) as ev:
        cv = cross_validate(ev, space, groupings, max_iter, progress)
    published = np.array([p.case.published for p in preps])
    families = [p.case.family for p in preps]
    ins = family_stats(published, cv.in_sample, families)
    out = cv_family_stats(published, cv, families)
    fam_doc = {}
    for fam in FAMILIES:
        if fam not in ins:
            continue
        m, r = ins[fam]
        cm, cr = out.get(fam, (float("nan"), float("nan")))
        fam_doc[fam] = {
            "mape_pct": round(m, 3),
            "pearson_r": round(r, 4),
            "cv_mape_pct": None if math.isnan(cm) else round(cm, 3),
            "cv_pearson_r": None if math.isnan(cr) else round(cr, 4),
            "cases": families.count(fam),
        }
    by_grouping = {}
    for g in groupings:
        st = family_stats(published, cv.held_out[g], families)
        by_grouping[g] = {
            fam: {"cv_mape_pct": round(m, 3), "cv_pearson_r": None if math.isnan(r) else round(r, 4)}
            for fam, (m, r) in st.items()
        }
    case_doc = []
    for i, p in enumerate(preps):
        case_doc.append(
            {
                "family": p.case.family,
                "case": p.case.label,
                "published": p.case.published,
                "predicted": round(float(cv.in_sample[i]), 4),
                "cv_predicted": {
                    g: round(float(v[i]), 4) for g, v in cv.held_out.items() if np.isfinite(v[i])
                },
            }
        )
    return {
        "families": fam_doc,
        "groupings": by_grouping,
        "folds": cv.folds,
        "cases": case_doc,
        "constants": {
            k: {"value": float(chip.value(k)), "range": list(chip.provenance[k].range)} for k in space.keys
        },
        "max_iterations": max_iter,
        "evaluations": cv.evaluations,
        "seconds": round(cv.seconds, 1),
    }


def sensitivity_report(
    chip: Any, processes: int = 2, factor: float = 0.1, todo: Iterable[Case] | None = None
) -> dict[str, Any]:
    """How every prediction moves with each calibrated constant x (1 -+ factor)."""
    space = _space_or_error(chip)
    preps = prepare(chip, todo)
    with Evaluator(chip, preps, processes) as ev:
        sens = sensitivity(ev, space.keys, factor)
    families = [p.case.family for p in preps]
    doc: dict[str, Any] = {"factor": factor, "constants": {}}
    for k in space.keys:
        minus, plus = sens[k]["minus"] * 100, sens[k]["plus"] * 100
        fams = {}
        for fam in FAMILIES:
            idx = [i for i, f in enumerate(families) if f == fam]
            if not idx:
                continue
            j = idx[int(np.argmax(np.abs(minus[idx]) + np.abs(plus[idx])))]
            fams[fam] = {
                "mean_abs_minus_pct": round(float(np.mean(np.abs(minus[idx]))), 3),
                "mean_abs_plus_pct": round(float(np.mean(np.abs(plus[idx]))), 3),
                "most_moved": preps[j].case.label,
                "most_moved_pct": [round(float(minus[j]), 3), round(float(plus[j]), 3)],
            }
        doc["constants"][k] = {
            "value": float(chip.value(k)),
            "range": list(chip.provenance[k].range),
            "families": fams,
            "cases": {
                p.case.label: [round(float(minus[i]), 3), round(float(plus[i]), 3)]
                for i, p in enumerate(preps)
            },
        }
    return doc
