"""The trial step behind the Train tab's estimate: `python -m bitttt.studio.trial` reads
{"config": TrainConfig dict, "steps": N} as JSON on stdin, builds the Trainer in a scratch run
folder (nothing is written into the project), times N optimizer steps (the first one is a
warm-up) and one validation batch, and prints one JSON line: step_s, eval_batch_s, peak_rss_mb,
params, tokens_per_step.  A fresh process, so its peak RSS is what the run itself will need."""
from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time


def trial(config: dict, steps: int = 3) -> dict:
    """Measure `steps` training steps and one validation batch of a run with `config`."""
    from ..trainer import TrainConfig, Trainer

    cfg = TrainConfig.from_dict(config)
    with tempfile.TemporaryDirectory(prefix="bitttt-trial-") as scratch:
        tr = Trainer(cfg, run_dir=scratch, progress=False)
        times = []
        for _ in range(max(2, steps)):
            t0 = time.perf_counter()
            tr.train_step()
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tr.evaluate(max_batches=1)
        t_eval = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"step_s": statistics.median(times[1:]), "first_step_s": times[0], "eval_batch_s": t_eval,
            "peak_rss_mb": round(peak_kib / 1024, 1), "params": tr.model.num_params(),
            "tokens_per_step": cfg.batch_size * cfg.seq_len * cfg.grad_accum}


def main() -> int:
    req = json.loads(sys.stdin.read())
    try:
        out = trial(req["config"], int(req.get("steps", 3)))
    except (ValueError, TypeError) as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
