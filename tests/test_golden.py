"""Bit-identity with the code before the backends refactor: every array of golden_gen.cases()
hashes to the value recorded in tests/data/golden.json (made at commit a389299)."""
import json
import os

import golden_gen
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def golden():
    with open(os.path.join(HERE, "data", "golden.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def now():
    return golden_gen.cases()


def test_same_arrays(golden, now):
    assert sorted(golden["sha256"]) == sorted(now)


def test_same_bits(golden, now):
    bad = [k for k, h in golden["sha256"].items() if golden_gen.digest(now[k]) != h]
    assert not bad, f"{len(bad)} arrays differ from the recorded bits, first: {bad[:6]}"


def test_same_losses_and_tokens(golden, now):
    for k, v in golden["clear"].items():
        got = now[k].tobytes().decode() if k == "shipped/text" else now[k].tolist()
        assert got == v, k
