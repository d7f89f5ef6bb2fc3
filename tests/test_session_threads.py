"""A Session used from several threads (issue 21, point 5): one call at a time, a busy session
refuses a second caller at once with SessionBusyError (never a TypeError or a deadlock), and a
stream may be resumed from any thread, as the Studio's server iterates it."""
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_models import never_ending_checkpoint  # noqa: E402

import bitttt  # noqa: E402
from bitttt.generation import SessionBusyError  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return bitttt.load(str(never_ending_checkpoint(tmp_path_factory.mktemp("m"))))


def _same_state(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.arrays().values(), b.arrays().values())) and \
        (a.pos, a.n_tokens) == (b.pos, b.n_tokens)


def test_two_threads_hammering_one_session(model):
    """Every call either does its work or raises SessionBusyError; afterwards the state is the one
    a fresh session reaches reading the session's history in one go."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads often
    s = model.session()
    start = threading.Barrier(2)
    done = {0: 0, 1: 0}
    busy = {0: 0, 1: 0}
    other: list[BaseException] = []

    def work(k: int) -> None:
        rng = np.random.default_rng(k)
        start.wait()
        i = 0
        while done[k] < 20 and i < 20000:  # retried when busy: both threads get their work done
            i += 1
            try:
                if rng.random() < 0.5:
                    s.feed("the cat sat on a mat ")
                else:
                    s.generate("", max_tokens=3, temperature=0.8, seed=i)
                done[k] += 1
            except SessionBusyError as e:
                assert "in use by another thread" in str(e)
                busy[k] += 1
                time.sleep(0.001)
            except BaseException as e:  # noqa: BLE001 - the test fails on any other kind
                other.append(e)

    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(old)
    assert not other, other
    assert done == {0: 20, 1: 20}
    assert busy[0] + busy[1] > 0  # they did meet
    s.feed_ids([])  # read the last sampled token
    assert s.state.n_tokens == len(s.history)
    st = model.im.new_state()
    model.im.feed(st, s.history)
    assert _same_state(st, s.state)


def test_a_suspended_stream_holds_the_session(model):
    s = model.session()
    s.feed("the cat")
    g = s.stream(max_tokens=50, temperature=0)
    next(g)  # suspended: the session is held until the stream ends or is closed
    for call in (lambda: s.feed("red ball"), lambda: s.generate("x", max_tokens=2), s.reset,
                 lambda: s.feed_ids([5]), lambda: next(s.stream(max_tokens=2))):
        with pytest.raises(SessionBusyError, match="or by a stream not yet finished"):
            call()  # the same thread: a clear error, not a deadlock
    seen: list[BaseException] = []
    t = threading.Thread(target=lambda: seen.extend(_raises(lambda: s.feed("dog"))))
    t.start()
    t.join(30)
    assert len(seen) == 1 and isinstance(seen[0], SessionBusyError)
    n = s.state.n_tokens
    g.close()
    s.feed("red ball")  # free again
    assert s.state.n_tokens > n


def _raises(fn) -> list[BaseException]:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return [e]
    return []


def test_a_stream_resumed_from_other_threads(model):
    """The Studio's server takes each piece of an answer on whichever pool thread is free."""
    s = model.session()
    want = model.session().generate("the cat", max_tokens=6, temperature=0)
    g = s.stream("the cat", max_tokens=6, temperature=0)
    pieces: list[str] = []

    def take() -> None:
        try:
            pieces.append(next(g))
        except StopIteration:
            pass

    for _ in range(8):
        t = threading.Thread(target=take)
        t.start()
        t.join(30)
    assert "".join(pieces) == want
    s.feed("red")  # the stream ended on another thread: the session is free


def test_session_busy_error_is_exported():
    import bitttt
    from bitttt.generation import SessionBusyError

    assert bitttt.SessionBusyError is SessionBusyError and issubclass(SessionBusyError, RuntimeError)
    assert "SessionBusyError" in bitttt.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bitttt.nope  # noqa: B018
