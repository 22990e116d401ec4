/* The helper thread of src_c/threads.h (jx_helper_post / jx_helper_wait) under
   ThreadSanitizer: one caller posting 20,000 jobs (with pauses long enough for the helper
   to fall asleep), then two callers at once (one holds the helper, the other runs its job
   itself).  Every job's output is checked; tests/test_threads_helper.py builds and runs it. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include "threads.h"

typedef struct {
    double out[500];
    int seed;
} job;

static int bad = 0;

static void work(void *p)
{
    job *j = (job *)p;
    int k;
    for (k = 0; k < 500; k++) j->out[k] = j->seed + k;
}

static void run(job *j)
{
    int k;
    if (jx_helper_post(work, j))
        jx_helper_wait();
    else
        work(j);
    for (k = 0; k < 500; k++)
        if (j->out[k] != j->seed + k) __atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED);
}

static void *caller(void *arg)
{
    const int id = *(const int *)arg;
    job j;
    int it;
    for (it = 0; it < 20000; it++) {
        j.seed = 2 * it + id;
        run(&j);
    }
    return NULL;
}

int main(void)
{
    pthread_t a, b;
    int ia = 0, ib = 1, it;
    job j;
    for (it = 0; it < 20000; it++) {
        j.seed = it;
        run(&j);
        if (it % 5000 == 0) {   /* past the spin: the helper sleeps, and is woken */
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
    pthread_create(&a, NULL, caller, &ia);
    pthread_create(&b, NULL, caller, &ib);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("wrong outputs: %d\n", bad);
    return bad != 0;
}
