"""The server's session manager on its own (no HTTP): prefix matching, forks, snapshots, the
LRU byte budget and spilling to memory files."""
import numpy as np
import pytest

from bitttt import BitLlama, BitLlamaConfig
from bitttt.serve.sessions import SUFFIX, SessionManager
from bitttt.session import InferenceModel

STATE = ("W0", "b0", "Kb", "Gb", "Sb")


@pytest.fixture(scope="module")
def im():
    cfg = BitLlamaConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96,
                         mini_batch_size=8, ternary=True)
    m = BitLlama(cfg)
    m.init_weights(0)
    return InferenceModel.from_model(m)


def _read(mgr, s, ids):
    """What the scheduler does for a request: feed the unread part, snapshot, release."""
    s.logits = mgr.im.feed(s.state, ids)
    s.ids.extend(ids)
    s.snapshot(mgr.max_snapshots)


def _same(a, b):
    return all(np.array_equal(getattr(a, n), getattr(b, n)) for n in STATE) and a.pos == b.pos


def test_prefix_match_continue_and_fork(im):
    mgr = SessionManager(im)
    p1 = list(range(10, 30))
    s, cached = mgr.acquire(None, p1)
    assert cached == 0
    _read(mgr, s, p1)
    _read(mgr, s, [40, 41, 42])  # the "reply"
    mgr.release(s)
    # the history grows: continued in place, only the new part unread
    p2 = p1 + [40, 41, 42] + [50, 51]
    s2, cached = mgr.acquire(None, p2)
    assert s2 is s and cached == 23
    mgr.release(s2)
    before = s.state.copy()
    # an edited turn: forked from the snapshot after p1, the original untouched
    p3 = p1 + [60, 61]
    s3, cached = mgr.acquire(None, p3)
    assert s3 is not s and cached == 20 and s3.ids == p1 and not s3.named
    ref = im.new_state()
    im.feed(ref, p1)
    assert _same(s3.state, ref)
    assert _same(s.state, before) and len(s.ids) == 23
    mgr.release(s3)
    # nothing in common: a fresh session
    s4, cached = mgr.acquire(None, [7, 8, 9])
    assert cached == 0 and s4 not in (s, s3)


def test_named_session_rewinds_in_place(im):
    mgr = SessionManager(im, max_snapshots=3)
    s, _ = mgr.acquire("bob", [1, 2, 3])
    for k in range(5):  # five turns, three snapshots kept
        _read(mgr, s, [10 + k, 11 + k])
    assert [x.n for x in s.snapshots] == [6, 8, 10]
    mgr.release(s)
    s2, cached = mgr.acquire("bob", s.ids[:9] + [99])
    assert s2 is s and cached == 8 and s.ids == s2.ids[:8] and len(s.ids) == 8
    assert [x.n for x in s.snapshots] == [6, 8]
    ref = im.new_state()
    im.feed(ref, s.ids)
    assert _same(s.state, ref)
    # before the oldest snapshot: back to a fresh state
    mgr.release(s2)
    s3, cached = mgr.acquire("bob", [1, 2])
    assert cached == 0 and s3.ids == [] and _same(s3.state, im.new_state())


def test_lru_budget_spills_and_reloads(im, tmp_path):
    one = im.new_state().nbytes
    d = tmp_path / "s"
    mgr = SessionManager(im, budget=int(2.5 * one), directory=str(d))
    for name in ("a", "b", "c"):
        s, _ = mgr.acquire(name, [5, 6, 7])
        s.logits = im.feed(s.state, [5, 6, 7])  # read, no snapshot: one state each
        s.ids += [5, 6, 7]
        mgr.release(s)
    assert list(mgr.live) == ["b", "c"] and set(mgr.spilled) == {"a"}  # the least recently used left
    assert (d / ("a" + SUFFIX)).exists() and not (d / ("b" + SUFFIX)).exists()
    s, cached = mgr.acquire("a", [5, 6, 7, 8])  # read back from its file, continued in place
    assert cached == 3 and s.ids == [5, 6, 7] and s.state.n_tokens == 3
    ref = im.new_state()
    im.feed(ref, [5, 6, 7])
    assert _same(s.state, ref)
    mgr.release(s)
    assert list(mgr.live) == ["c", "a"] and set(mgr.spilled) == {"b"}
    # without a folder the evicted are dropped
    mgr2 = SessionManager(im, budget=1)
    s, _ = mgr2.acquire(None, [1, 2])
    mgr2.release(s)
    assert not mgr2.live and not mgr2.spilled and mgr2.evicted == 1
    # a folder left by an earlier server is found again
    assert set(SessionManager(im, directory=str(d)).spilled) >= {"b", "c"} - set(mgr.live)


def test_erase_and_restore(im, tmp_path):
    mgr = SessionManager(im, directory=str(tmp_path))
    s, _ = mgr.acquire("z", [3, 4])
    _read(mgr, s, [3, 4])
    mgr.release(s)
    path = mgr.write(s)
    saved = s.state.copy()
    s.state = im.new_state()
    r = mgr.restore("z")
    assert _same(r.state, saved) and r.ids == [3, 4]
    assert mgr.erase("z") and not (tmp_path / ("z" + SUFFIX)).exists() and path
    assert not mgr.erase("z")
