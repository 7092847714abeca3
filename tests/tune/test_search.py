"""Search algorithms: no point proposed twice, earlier results respected, the space exhausted."""

from __future__ import annotations

import pytest

from tdkit.tools.search import SEARCHES, make_searcher, point_key, space_size

SPACE = {"a": (1, 2, 3), "b": ("x", "y"), "c": (False, True)}


@pytest.mark.parametrize("name", SEARCHES)
def test_every_point_once_then_exhausted(name: str) -> None:
    s = make_searcher(name, SPACE, seed=3)
    seen = []
    while (p := s.ask()) is not None:
        assert set(p) == set(SPACE) and all(p[k] in SPACE[k] for k in SPACE)
        seen.append(point_key(p))
        s.tell(p, float(p["a"]) + (0.5 if p["c"] else 0.0))
    assert len(seen) == len(set(seen)) == space_size(SPACE)


@pytest.mark.parametrize("name", SEARCHES)
def test_observed_points_are_not_proposed_again(name: str) -> None:
    s = make_searcher(name, SPACE, seed=0)
    known = [{"a": 1, "b": "x", "c": False}, {"a": 2, "b": "y", "c": True}]
    for p in known:
        s.observe(p, 1.0)
    proposed = []
    while (p := s.ask()) is not None:
        proposed.append(point_key(p))
        s.tell(p, None)
    assert not {point_key(p) for p in known} & set(proposed)
    assert len(proposed) == space_size(SPACE) - len(known)


def test_grid_order_and_random_seeding() -> None:
    grid = make_searcher("grid", SPACE)
    assert grid.ask() == {"a": 1, "b": "x", "c": False}
    assert grid.ask() == {"a": 1, "b": "x", "c": True}
    first = [make_searcher("random", SPACE, seed=7).ask() for _ in range(2)]
    assert first[0] == first[1]


def test_tpe_concentrates_on_the_fast_region() -> None:
    space = {"x": tuple(range(12)), "y": tuple(range(12))}
    s = make_searcher("tpe", space, seed=1)
    values = []
    for _ in range(40):
        p = s.ask()
        v = (p["x"] - 9) ** 2 + (p["y"] - 2) ** 2
        values.append(v)
        s.tell(p, float(v))
    # after the random start-up trials, TPE finds points better than random sampling's median
    assert min(values[10:]) <= 2 and sorted(values[10:])[len(values[10:]) // 2] < 30


def test_unknown_search_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown search"):
        make_searcher("anneal", SPACE)
