"""Design-space studies: `mtiasim sweep` (a full grid) and `mtiasim explore` (a multi-objective search with
Optuna), stored in Optuna's RDB storage and resumable; see `study` for how trials are made and run."""

from mtiasim.explore.metrics import EVALUATORS, evaluate_point
from mtiasim.explore.space import Objective, Param, parse_grid, parse_objective, parse_range
from mtiasim.explore.study import Study, StudySpec, open_study, run_study
from mtiasim.run.config import RunConfig

__all__ = [
    "EVALUATORS",
    "Objective",
    "Param",
    "RunConfig",
    "Study",
    "StudySpec",
    "evaluate_point",
    "open_study",
    "parse_grid",
    "parse_objective",
    "parse_range",
    "run_study",
]
