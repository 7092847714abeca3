"""Search algorithms over a discrete knob space: grid, random, and optuna's TPE.

All three speak one ask/tell protocol over points (dicts knob -> value drawn from the space):
`ask()` proposes a point never proposed before (None when the space is exhausted), `tell()`
reports its median time in ms (None for a failure or a pruned point). Points already in the
results database are fed in with `observe()` first, so a resumed or widened sweep proposes only
new points and TPE learns from every earlier result.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from typing import Any

SEARCHES = ("tpe", "random", "grid")
Point = dict[str, Any]
Space = dict[str, tuple[Any, ...]]


def point_key(point: Point) -> str:
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def space_size(space: Space) -> int:
    return math.prod(len(v) for v in space.values())


def in_space(point: Point, space: Space) -> bool:
    return set(point) == set(space) and all(point[k] in space[k] for k in space)


class Searcher:
    """Base: remembers every point seen, so no point is proposed twice."""

    def __init__(self, space: Space, seed: int = 0) -> None:
        if not space:
            raise ValueError("empty knob space")
        self.space = space
        self.seed = seed
        self.seen: set[str] = set()

    def observe(self, point: Point, value: float | None) -> None:
        """A point evaluated earlier (from the database)."""
        self.seen.add(point_key(point))

    def ask(self) -> Point | None:
        raise NotImplementedError

    def tell(self, point: Point, value: float | None) -> None:
        """The outcome of a point this searcher proposed."""

    def _fresh(self, candidates: Iterator[Point]) -> Point | None:
        for point in candidates:
            key = point_key(point)
            if key not in self.seen:
                self.seen.add(key)
                return point
        return None

    def _all_points(self) -> Iterator[Point]:
        names = list(self.space)
        for values in itertools.product(*(self.space[n] for n in names)):
            yield dict(zip(names, values, strict=True))


class GridSearch(Searcher):
    """Every point, in the order of the declared values (first knob slowest)."""

    def __init__(self, space: Space, seed: int = 0) -> None:
        super().__init__(space, seed)
        self._it = self._all_points()

    def ask(self) -> Point | None:
        return self._fresh(self._it)


class RandomSearch(Searcher):
    """Uniform sampling without replacement (a seeded shuffle of the whole space)."""

    def __init__(self, space: Space, seed: int = 0) -> None:
        super().__init__(space, seed)
        rng = random.Random(seed)
        if space_size(space) <= 200_000:
            points = list(self._all_points())
            rng.shuffle(points)
            self._it: Iterator[Point] = iter(points)
        else:
            self._it = (({k: rng.choice(v) for k, v in space.items()})
                        for _ in itertools.count())

    def ask(self) -> Point | None:
        return self._fresh(self._it)


class TpeSearch(Searcher):
    """optuna's Tree-structured Parzen Estimator over categorical knobs, minimizing the time.

    optuna may propose a point it has already seen; then the known outcome is told at once and
    it is asked again, and after a few repeats an unseen random point is enqueued instead."""

    def __init__(self, space: Space, seed: int = 0, startup: int = 10) -> None:
        super().__init__(space, seed)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self._dists = {k: optuna.distributions.CategoricalDistribution(list(v))
                       for k, v in space.items()}
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                             multivariate=True)
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        self._values: dict[str, float | None] = {}
        self._trials: dict[str, Any] = {}
        self._random = RandomSearch(space, seed + 1)

    def observe(self, point: Point, value: float | None) -> None:
        super().observe(point, value)
        key = point_key(point)
        self._values[key] = value
        if not in_space(point, self.space):
            return
        state = self._optuna.trial.TrialState
        trial = self._optuna.trial.create_trial(
            params=point, distributions=self._dists, value=value,
            state=state.COMPLETE if value is not None else state.FAIL)
        self.study.add_trial(trial)

    def ask(self) -> Point | None:
        if len(self.seen) >= space_size(self.space):
            return None
        for attempt in range(20):
            if attempt == 10:
                # optuna keeps proposing known points: hand it an unseen one
                self._random.seen = set(self.seen)
                fresh = self._random.ask()
                if fresh is None:
                    return None
                self.study.enqueue_trial(fresh)
            trial = self.study.ask(self._dists)
            point = dict(trial.params)
            key = point_key(point)
            if key in self.seen:
                self._finish(trial, self._values.get(key))
                continue
            self.seen.add(key)
            self._trials[key] = trial
            return point
        return None

    def tell(self, point: Point, value: float | None) -> None:
        key = point_key(point)
        self._values[key] = value
        trial = self._trials.pop(key, None)
        if trial is not None:
            self._finish(trial, value)

    def _finish(self, trial: Any, value: float | None) -> None:
        if value is None:
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, value)


def make_searcher(name: str, space: Space, seed: int = 0) -> Searcher:
    if name == "grid":
        return GridSearch(space, seed)
    if name == "random":
        return RandomSearch(space, seed)
    if name == "tpe":
        return TpeSearch(space, seed)
    raise ValueError(f"unknown search {name!r}; expected one of {', '.join(SEARCHES)}")
