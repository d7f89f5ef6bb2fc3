/*
 * bt_bandwidth.h -- a small STREAM-like read-bandwidth probe for the benchmarks.
 *
 * Reads `bytes` of a buffer (allocated and touched once, outside the timing)
 * `reps` times (buffers under 64 MiB several times per pass) with `threads` OpenMP threads, each thread streaming its own
 * contiguous slice with 32-byte loads, and returns the best rate in bytes/s.
 */
#ifndef BT_BANDWIDTH_H
#define BT_BANDWIDTH_H

#include <stdint.h>

/* Best read rate over `reps` passes in bytes/s; < 0 if allocation failed. */
double bt_read_bandwidth(int64_t bytes, int reps, int threads);

/* Monotonic clock in seconds. */
double bt_now(void);

#endif /* BT_BANDWIDTH_H */
