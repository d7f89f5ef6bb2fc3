"""OpenMP settings that must be in place before the C core (and its libgomp) is loaded.

A thread that reaches an OpenMP barrier first spins GOMP_SPINCOUNT times before it sleeps
(libgomp's default: 300,000 spins, about a millisecond).  A decoded token crosses about ten
barriers per layer.  When another program holds one of the cores, a long spin keeps the
waiting thread on the core that the working thread needs: on 2 busy cores, 2-thread decoding
fell to 3 tokens/s with the default and ran at 29 with 10,000 spins (1 thread: 85).  On idle
cores the barriers are short and both settings run at the same speed.  A value the user sets
in the environment is kept.
"""
import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
