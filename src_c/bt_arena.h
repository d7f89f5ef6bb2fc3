/*
 * bt_arena.h -- per-thread scratch buffers kept alive between calls.
 *
 * The float GEMM drivers need a few large temporaries per call (filled B panels, packed
 * blocks of A).  Allocating them per call faults the same pages in again every training
 * step; instead each thread keeps one buffer per slot, grown (never shrunk) to the largest
 * size asked for, 64-byte aligned.  A thread's buffers are freed when the thread exits
 * (OpenMP pool threads, Python threads) or by bt_scratch_release; the main thread's at exit.
 * A buffer is only valid until the next bt_scratch call of the same slot on the same thread,
 * so a slot must not be held across a call that uses the same slot (see the slot list).
 */
#ifndef BT_ARENA_H
#define BT_ARENA_H

#include <stddef.h>

enum {
    BT_SCRATCH_B = 0,    /* kernels.c: the filled B panels of a thread's group            */
    BT_SCRATCH_APACK,    /* kernels_avx512.c: a packed block of A                         */
    BT_SCRATCH_ATILES,   /* kernels.c: sgemm_tn's A tiles (tables without pack_a)         */
    BT_SCRATCH_S8,       /* kernels_avx512.c: the packed 48-row int8 panels (i8, head)    */
    BT_SCRATCH_SLOTS
};

/* At least `bytes` bytes of the calling thread's buffer `slot` (contents undefined), or
 * NULL when out of memory (the old buffer is then freed). */
void *bt_scratch(int slot, size_t bytes);

/* Frees the calling thread's buffers. */
void bt_scratch_release(void);

#endif /* BT_ARENA_H */
