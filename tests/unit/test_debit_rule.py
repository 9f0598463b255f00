"""The shared debit rule: its one-package shortcut decides exactly as the rule charge by charge."""
from __future__ import annotations

import random

import pytest

from app.store.contracts.ledger import Charge, Package, _plan_each, plan_debits


def reference(packages, charges):
    ordered = sorted(packages, key=lambda p: (p.granted_at, p.id))
    return _plan_each(ordered, charges, {p.id: p.used for p in ordered}, ordered[-1].id if ordered else None)


@pytest.mark.parametrize("seed", range(300))
def test_shortcut_agrees_with_the_rule(seed):
    rng = random.Random(seed)
    packages = []
    for i in range(rng.randint(0, 4)):
        tokens = rng.choice([100, 1000, 10_000])
        packages.append(Package(f"p{i}", "a", "pro", tokens, rng.choice([0, tokens // 2, tokens, tokens + 5]),
                                float(rng.randint(0, 50)), float(rng.randint(40, 200))))
    charges = [Charge(f"r{j}", rng.choice([0, 1, 50, 400, 3000]), float(rng.randint(30, 180))) for j in range(rng.randint(1, 12))]
    assert plan_debits(packages, charges) == reference(packages, charges)
