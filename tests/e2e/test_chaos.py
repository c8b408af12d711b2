"""The short chaos drill: orders of every kind while services are SIGKILLed; all settle and verify finds nothing.

``CHAOS_SEED=<n>`` repeats a failing run (the seed is printed and is in the assertion message).
"""

from __future__ import annotations

import os
import secrets

import pytest

from tests.e2e.conftest import System
from tools.drills.chaos import drill as chaos
from tools.fulfil.chaos import print_result

pytestmark = pytest.mark.e2e


def test_the_same_seed_gives_the_same_drill() -> None:
    plan = chaos.Plan.short(1234)

    first, second = chaos.schedule(plan, "P-"), chaos.schedule(plan, "P-")

    assert first == second
    assert len(first[0]) == int(plan.duration * plan.rate)
    assert [d.action for d in first[1]] == ["kill"] * plan.kills
    assert {o.kind for o in first[0]} == set(chaos.KINDS)


async def test_short_chaos_drill_settles_every_order_with_no_violations(system: System) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or secrets.randbelow(10**6))
    print(f"\nchaos seed {seed}")

    result = await chaos.drill(chaos.Plan.short(seed), say=print)

    print_result(result, chaos.Plan.short(seed))
    context = f"seed {seed} (repeat with CHAOS_SEED={seed}): {result.as_dict()}"
    assert result.kills, context
    assert not result.not_placed, context
    assert not result.unsettled, context
    assert result.report.violations == [], context
