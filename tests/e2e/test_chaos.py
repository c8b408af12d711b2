"""The short chaos drill: orders of every kind while services are SIGKILLed; all settle and verify finds nothing.

``CHAOS_SEED=<n>`` repeats a failing run (the seed is printed and is in the assertion message).
"""

from __future__ import annotations

import os
import secrets

import pytest

from tests.e2e.conftest import System
from tools.drills.chaos.drill import drill
from tools.drills.chaos.plan import KINDS, Plan, schedule
from tools.fulfil.chaos import print_result

pytestmark = pytest.mark.e2e


def test_the_same_seed_gives_the_same_drill() -> None:
    plan = Plan.short(1234)

    first, second = schedule(plan, "P-"), schedule(plan, "P-")

    assert first == second
    assert len(first[0]) == int(plan.duration * plan.rate)
    assert [d.action for d in first[1]] == ["kill"] * plan.kills
    assert {o.kind for o in first[0]} == set(KINDS)


async def test_short_chaos_drill_settles_every_order_with_no_violations(system: System) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or secrets.randbelow(10**6))
    print(f"\nchaos seed {seed}")

    result = await drill(Plan.short(seed), say=print)

    print_result(result, Plan.short(seed))
    context = f"seed {seed} (repeat with CHAOS_SEED={seed}): {result.as_dict()}"
    assert result.kills, context
    assert not result.not_placed, context
    assert not result.unsettled, context
    assert result.report.violations == [], context
