/* arena.c -- per-thread scratch buffers (bt_arena.h). */
#include "bt_arena.h"
#include "bt_common.h"

#include <pthread.h>
#include <stdlib.h>

#define BT_SCRATCH_ALIGN 64

typedef struct {
    void *p[BT_SCRATCH_SLOTS];
    size_t n[BT_SCRATCH_SLOTS];
} bt_scratch_set;

static _Thread_local bt_scratch_set tls_set;
static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_key_ok;

static void free_set(bt_scratch_set *s) {
    for (int i = 0; i < BT_SCRATCH_SLOTS; i++) {
        free(s->p[i]);
        s->p[i] = NULL;
        s->n[i] = 0;
    }
}

/* Thread exit: the key's value is the exiting thread's set. */
static void on_thread_exit(void *set) { free_set((bt_scratch_set *)set); }

static void release_at_exit(void) { free_set(&tls_set); }

static void make_key(void) {
    g_key_ok = pthread_key_create(&g_key, on_thread_exit) == 0;
    atexit(release_at_exit); /* the main thread's set (key destructors do not run at exit) */
}

void *bt_scratch(int slot, size_t bytes) {
    bt_scratch_set *const s = &tls_set;
    if (bytes == 0) bytes = 1;
    if (s->n[slot] >= bytes) return s->p[slot];
    pthread_once(&g_once, make_key);
    free(s->p[slot]);
    const size_t rounded = (bytes + BT_SCRATCH_ALIGN - 1) / BT_SCRATCH_ALIGN * BT_SCRATCH_ALIGN;
    s->p[slot] = aligned_alloc(BT_SCRATCH_ALIGN, rounded);
    s->n[slot] = s->p[slot] ? rounded : 0;
    if (g_key_ok && s->p[slot]) pthread_setspecific(g_key, s);
    return s->p[slot];
}

void bt_scratch_release(void) { free_set(&tls_set); }
