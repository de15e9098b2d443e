"""A design study stored in Optuna's RDB storage (SQLite by default): a grid sweep or a multi-objective search.

One coordinator (this process) owns the study: it asks a batch of trials, has the workers simulate them (here,
in K processes, or as Ray tasks), and tells the results in trial-number order. Only the simulation is farmed
out, so one worker, K workers and Ray make the same trials:

- trial n's values come from a sampler seeded from (seed, n) and the study's finished trials alone (a fresh
  NSGA-II sampler per trial, or the n-th point of the grid), never from the order workers finish in;
- a batch is one NSGA-II generation (`population` trials, trial numbers [g*P, (g+1)*P)), asked in full before
  any of it runs, so its trials are children of the same parents.

Resuming: the store is the state. Every write (a new trial, a parameter, the metrics, the final values and
state) is one SQL transaction, so a process killed at any moment (kill -9 included) leaves whole records. A
trial it left RUNNING is simulated again with the values it stored (a value it had not stored yet is sampled
now, as it would have been), then told; so re-running the same command ends with exactly N finished trials,
none lost or twice. Two coordinators must not run one study at once: the second would re-run the first's
RUNNING trials.

A study remembers what made it (workload, run options, space, objectives, sampler, seed): the same command
resumes it; a different one on the same `--study` name is refused. The default name is derived from those, so
a different command starts a study of its own in the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, NSGAIISampler
from optuna.trial import FrozenTrial, TrialState

from mtiasim.errors import UsageError
from mtiasim.explore.metrics import evaluate_point, evaluator, objective_values
from mtiasim.explore.space import Objective, Param, grid_points
from mtiasim.run.config import RunConfig

SPEC_ATTR = "mtiasim.spec"
METRICS_ATTR = "mtiasim.metrics"
ERROR_ATTR = "mtiasim.error"
SIM_S_ATTR = "mtiasim.sim_s"
DEFAULT_STORAGE = "sqlite:///study.db"
SAMPLERS = ("nsga2", "random")


@dataclass(frozen=True)
class StudySpec:
    """What a study is: it decides its trials. `kind` is "sweep" (the full grid of `params`' choices, in order)
    or "explore" (`sampler` over `params`' ranges)."""

    kind: str
    over: str
    run: RunConfig
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    sampler: str = "nsga2"
    seed: int = 0
    # trials asked (and run in parallel) at once: an NSGA-II generation; for a sweep only a batch size, which
    # changes no trial and so is not part of what the study is
    population: int = 8

    def to_json(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "over": self.over,
            "run": self.run.to_json(),
            "params": [p.to_json() for p in self.params],
            "objectives": [o.text for o in self.objectives],
            "sampler": self.sampler if self.kind == "explore" else "grid",
        }
        if self.kind == "explore":
            out |= {"seed": self.seed, "population": self.population}
        return out

    def default_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.kind}-{self.run.workload}-{digest}"

    def distributions(self) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {}
        for p in self.params:
            if p.choices is not None:
                out[p.key] = CategoricalDistribution(p.choices)
            elif p.integer:
                out[p.key] = IntDistribution(int(p.low), int(p.high))
            else:
                out[p.key] = FloatDistribution(p.low, p.high)
        return out


class _GridSampler(BaseSampler):
    """Trial n takes the n-th grid point: the order is the grid's, whatever ran before."""

    def __init__(self, points: list[dict[str, float]]) -> None:
        self._points = points

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return {}

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return self._points[trial.number][param_name]


def _trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


@dataclass
class TrialRecord:
    """One finished trial as the outputs show it."""

    number: int
    state: str  # COMPLETE or FAIL
    params: dict[str, float]
    values: list[float] | None
    metrics: dict[str, float | None]
    error: str | None = None
    sim_s: float | None = None

    def to_json(self, objectives: list[Objective]) -> dict[str, Any]:
        out: dict[str, Any] = {"trial": self.number, "state": self.state, "params": self.params}
        if self.values is not None:
            out["objectives"] = {o.metric: v for o, v in zip(objectives, self.values, strict=True)}
        out["metrics"] = self.metrics
        if self.error is not None:
            out["error"] = self.error
        return out


def record(t: FrozenTrial) -> TrialRecord:
    params = {k: (int(v) if isinstance(v, int) else float(v)) for k, v in t.params.items()}
    return TrialRecord(
        t.number,
        t.state.name,
        params,
        list(t.values) if t.values is not None else None,
        dict(t.user_attrs.get(METRICS_ATTR) or {}),
        t.user_attrs.get(ERROR_ATTR),
        t.user_attrs.get(SIM_S_ATTR),
    )


# ------------------------------------------------------------------------------------------------ executors


class Executor:
    """Simulates a batch of trials; yields the results in the order given, each as soon as it and those before
    it are done (so the coordinator tells each trial as early as the order allows)."""

    def map(self, spec: StudySpec, batch: list[dict[str, float]]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InlineExecutor(Executor):
    def map(self, spec: StudySpec, batch: list[dict[str, float]]) -> Iterator[dict[str, Any]]:
        return (evaluate_point(spec.over, spec.run, values) for values in batch)


class ProcessExecutor(Executor):
    """K local worker processes (spawned: a fresh interpreter each, no forked torch state)."""

    def __init__(self, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, spec: StudySpec, batch: list[dict[str, float]]) -> Iterator[dict[str, Any]]:
        n = len(batch)
        return self._pool.map(evaluate_point, [spec.over] * n, [spec.run] * n, batch)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayExecutor(Executor):
    """Ray tasks on the cluster at `address` (ray.init's address: "auto", "HOST:PORT", "ray://HOST:PORT", or
    "local" to start one here); a cluster this process already joined is used as it is."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--ray needs Ray: pip install 'mtiasim[ray]'") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            # a local cluster's workers import mtiasim from where this process does
            local = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            try:
                ray.init(
                    address=None if address == "local" else address,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    runtime_env=local if address == "local" else None,
                )
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise UsageError(f"--ray {address}: cannot join the cluster: {err}") from None
        self._task = ray.remote(num_cpus=1)(evaluate_point)

    def map(self, spec: StudySpec, batch: list[dict[str, float]]) -> Iterator[dict[str, Any]]:
        refs = [self._task.remote(spec.over, spec.run, values) for values in batch]
        return (self._ray.get(ref) for ref in refs)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_executor(workers: int, ray_address: str | None) -> Executor:
    if ray_address is not None:
        return RayExecutor(ray_address)
    if isinstance(workers, bool) or workers < 1 or workers > 256:
        raise UsageError(f"--workers: expected 1..256, got {workers}")
    return InlineExecutor() if workers == 1 else ProcessExecutor(workers)


# ------------------------------------------------------------------------------------------------ the study


@dataclass
class Study:
    spec: StudySpec
    optuna_study: optuna.Study
    name: str
    storage: str
    _grid: list[dict[str, float]] = field(default_factory=list)

    @property
    def objectives(self) -> list[Objective]:
        return list(self.spec.objectives)

    def finished(self) -> list[FrozenTrial]:
        states = (TrialState.COMPLETE, TrialState.FAIL)
        return sorted(self.optuna_study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)

    def pareto(self) -> list[FrozenTrial]:
        """The non-dominated complete trials, by number."""
        if not any(t.state == TrialState.COMPLETE for t in self.finished()):
            return []
        return sorted(self.optuna_study.best_trials, key=lambda t: t.number)

    def _sampler(self, number: int) -> BaseSampler:
        if self.spec.kind == "sweep":
            return _GridSampler(self._grid)
        seed = _trial_seed(self.spec.seed, number)
        if self.spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return NSGAIISampler(population_size=self.spec.population, seed=seed)

    def _suggest_all(self, trial: optuna.trial.Trial) -> dict[str, float]:
        """The trial's value of every parameter: stored ones as they are, the others sampled (and stored)."""
        out: dict[str, float] = {}
        for key, dist in self.spec.distributions().items():
            if isinstance(dist, CategoricalDistribution):
                out[key] = trial.suggest_categorical(key, dist.choices)  # type: ignore[arg-type]
            elif isinstance(dist, IntDistribution):
                out[key] = trial.suggest_int(key, dist.low, dist.high)
            else:
                assert isinstance(dist, FloatDistribution)
                out[key] = trial.suggest_float(key, dist.low, dist.high)
        return out

    def _ask(self, number: int) -> dict[str, float]:
        """A new trial numbered `number`, its values sampled and stored; its values."""
        self.optuna_study.sampler = self._sampler(number)
        trial = self.optuna_study.ask()
        if trial.number != number:  # another process added trials: not a study this coordinator owns alone
            raise UsageError(
                f"study {self.name!r}: trial {trial.number} appeared where {number} was expected: "
                "is another mtiasim process running it?"
            )
        return self._suggest_all(trial)

    def _resume(self, t: FrozenTrial) -> dict[str, float]:
        """The values of a trial a killed run left RUNNING: those it stored, any it had not stored yet sampled
        now (with the sampler it would have used)."""
        self.optuna_study.sampler = self._sampler(t.number)
        return self._suggest_all(optuna.trial.Trial(self.optuna_study, t._trial_id))

    def _tell(self, number: int, result: dict[str, Any]) -> FrozenTrial:
        st = self.optuna_study
        trial_id = st._storage.get_trial_id_from_study_id_trial_number(st._study_id, number)
        st._storage.set_trial_user_attr(trial_id, SIM_S_ATTR, round(float(result["sim_s"]), 3))
        values = None
        if "metrics" in result:
            st._storage.set_trial_user_attr(trial_id, METRICS_ATTR, result["metrics"])
            values = objective_values(result["metrics"], [o.metric for o in self.objectives])
            if values is None:
                missing = [o.metric for o in self.objectives if result["metrics"].get(o.metric) is None]
                result = {"error": f"no value for {', '.join(missing) or 'an objective (not finite)'}"}
        if values is None:
            st._storage.set_trial_user_attr(trial_id, ERROR_ATTR, result["error"])
            st.tell(number, state=TrialState.FAIL)
        else:
            st.tell(number, values)
        return st._storage.get_trial(trial_id)

    def run(self, trials: int, executor: Executor) -> Iterator[FrozenTrial]:
        """Run until `trials` trials have finished (COMPLETE or FAIL) in the store; yield each finished trial in
        number order: first those finished before, then each new one as it is told."""
        done = self.finished()
        yield from done
        population = self.spec.population
        while True:
            all_trials = self.optuna_study.get_trials(deepcopy=False)
            running = sorted((t for t in all_trials if t.state == TrialState.RUNNING), key=lambda t: t.number)
            n_done = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in all_trials)
            todo = trials - n_done
            if todo <= 0:
                return
            resume = running[:todo]  # left RUNNING by a killed run: simulated again
            numbers = [t.number for t in resume]
            values = [self._resume(t) for t in resume]
            nxt = len(all_trials)
            # new trials up to the end of this generation; none after resumed ones that end a generation (the
            # next one is asked when they are told)
            room = 0 if resume and nxt % population == 0 else population - nxt % population
            for number in range(nxt, nxt + max(0, min(room, todo - len(resume)))):
                numbers.append(number)
                values.append(self._ask(number))
            results = executor.map(self.spec, values)
            for number, result in zip(numbers, results, strict=True):  # told in number order
                yield self._tell(number, result)


def open_study(spec: StudySpec, storage: str | None, name: str | None) -> Study:
    """Create the study, or load it when it exists and was made by the same spec (else a UsageError)."""
    evaluator(spec.over).check(
        spec.run
    )  # an evaluator that does not exist (yet), a workload no trial can run
    if spec.kind == "explore" and spec.sampler not in SAMPLERS:
        raise UsageError(f"--sampler {spec.sampler}: unknown (known: {', '.join(SAMPLERS)})")
    if spec.population < 2 or spec.population > 10_000:
        raise UsageError(f"--population: expected 2..10000, got {spec.population}")
    storage = storage or DEFAULT_STORAGE
    name = name or spec.default_name()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        rdb = optuna.storages.RDBStorage(storage)
    except Exception as err:  # SQLAlchemy's errors for a bad URL or a file it cannot open, in one line
        raise UsageError(f"--storage {storage}: cannot open: {str(err).splitlines()[0]}") from None
    directions = [o.direction for o in spec.objectives]
    mine = json.loads(json.dumps(spec.to_json()))
    try:
        st = optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        st = optuna.create_study(storage=rdb, study_name=name, directions=directions)
        st.set_user_attr(SPEC_ATTR, mine)
    else:
        theirs = st.user_attrs.get(SPEC_ATTR)
        if theirs != mine:
            diff = _first_difference(theirs, mine)
            raise UsageError(
                f"--study {name}: the study in {storage} was made by another command ({diff}); "
                "use another --study name, or rerun the command that made it"
            )
    points = grid_points(list(spec.params)) if spec.kind == "sweep" else []
    return Study(spec, st, name, storage, points)


def _first_difference(theirs: Any, mine: dict[str, Any]) -> str:
    if not isinstance(theirs, dict):
        return "it is not an mtiasim study"
    for key in mine:
        if theirs.get(key) != mine[key]:
            return f"{key}: {json.dumps(theirs.get(key))} there, {json.dumps(mine[key])} here"
    return "its description differs"


def run_study(
    spec: StudySpec,
    trials: int,
    *,
    storage: str | None = None,
    name: str | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> Study:
    """Open (or resume) the study and run it to `trials` finished trials; `on_trial` sees each finished trial."""
    if isinstance(trials, bool) or trials < 1 or trials > 1_000_000:
        raise UsageError(f"--trials: expected 1..1000000, got {trials}")
    study = open_study(spec, storage, name)
    executor = make_executor(workers, ray_address)
    try:
        for t in study.run(trials, executor):
            if on_trial is not None:
                on_trial(t)
    finally:
        executor.close()
    return study
