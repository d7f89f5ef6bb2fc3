"""Greedy decoding against the full forward: the check the TTT and attention tests share."""
import numpy as np


def assert_greedy_matches_forward(m, im, st, prompt: list[int], steps: int = 40, min_checked: int = 35) -> None:
    """Decode `steps` greedy tokens after `prompt` through `im` (state `st`) and check that each
    equals the argmax of the full forward of BitLlama `m` at its position; near ties (the top two
    within 1e-3 of the largest logit) are skipped, and at least `min_checked` positions count."""
    logits = im.feed(st, prompt)
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(np.argmax(logits)))
        logits = im.feed(st, [seq[-1]])
    full = m.forward(np.array(seq))
    top2 = np.sort(full, axis=-1)[:, -2:]
    checked = 0
    for t in range(len(prompt) - 1, len(seq) - 1):
        if top2[t, 1] - top2[t, 0] < 1e-3 * np.abs(full[t]).max():
            continue  # a near tie: either answer is right to float precision
        assert int(np.argmax(full[t])) == seq[t + 1], t
        checked += 1
    assert checked >= min_checked
