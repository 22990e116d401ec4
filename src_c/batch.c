/*
 * batch.c -- many points in one call: the rows of a batch split over threads.
 *
 * Each thread owns its work memory and writes its own rows of the output, so
 * results do not depend on the thread count (bit for bit).  Threads are plain
 * POSIX or Windows threads (no OpenMP: wheels must build everywhere); the
 * calling thread takes the first share itself.
 */
#include <stdlib.h>

#include "vm.h"

#ifdef _WIN32
#include <windows.h>
#else
#include <pthread.h>
#endif

typedef struct {
    const jx_tape *tape;
    const jx_batch *job;
    ptrdiff_t lo, hi;
    int status;
} jx_share;

static int jx_lanes_for(const jx_tape *t, const jx_batch *job)
{
    int32_t need = 1;
    if (job->task == JX_TASK_JACOBIAN)
        need = (job->mode == JX_MODE_FORWARD) ? job->n_cols : t->n_out;
    if (need > JX_MAX_LANES) need = JX_MAX_LANES;
    return need < 1 ? 1 : need;
}

static void jx_run_share(jx_share *sh)
{
    const jx_tape *t = sh->tape;
    const jx_batch *job = sh->job;
    const size_t n_in = (size_t)t->n_in, n_out = (size_t)t->n_out;
    jx_work w;
    ptrdiff_t p;
    int st = jx_work_init(&w, t, jx_lanes_for(t, job));
    if (st != JX_OK) {
        sh->status = st;
        return;
    }
    for (p = sh->lo; p < sh->hi && st == JX_OK; p++) {
        const double *x = job->x + (size_t)p * n_in;
        double *y = job->y ? job->y + (size_t)p * n_out : NULL;
        switch (job->task) {
        case JX_TASK_VALUE:
            st = jx_point_value(t, &w, x, y);
            break;
        case JX_TASK_JACOBIAN:
            st = jx_point_jacobian(t, &w, x, y,
                                   job->out + (size_t)p * n_out * (size_t)job->n_cols,
                                   job->cols, job->n_cols, job->mode);
            break;
        case JX_TASK_JVP:
            st = jx_point_jvp(t, &w, x, job->seed + (size_t)p * n_in, y,
                              job->out + (size_t)p * n_out);
            break;
        case JX_TASK_VJP:
            st = jx_point_vjp(t, &w, x, job->seed + (size_t)p * n_out, y,
                              job->out + (size_t)p * n_in);
            break;
        default:
            st = JX_EARG;
        }
    }
    jx_work_free(&w);
    sh->status = st;
}

#ifdef _WIN32
static DWORD WINAPI jx_thread_main(LPVOID arg)
{
    jx_run_share((jx_share *)arg);
    return 0;
}
#else
static void *jx_thread_main(void *arg)
{
    jx_run_share((jx_share *)arg);
    return NULL;
}
#endif

#define JX_MAX_THREADS 256

int jx_batch_run(const jx_tape *t, const jx_batch *job, int n_threads)
{
    jx_share shares[JX_MAX_THREADS];
#ifdef _WIN32
    HANDLE handles[JX_MAX_THREADS];
#else
    pthread_t handles[JX_MAX_THREADS];
#endif
    int started[JX_MAX_THREADS];
    int i, status = JX_OK;
    ptrdiff_t n = job->n_points;
    if (n < 0) return JX_EARG;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > JX_MAX_THREADS) n_threads = JX_MAX_THREADS;
    if ((ptrdiff_t)n_threads > n) n_threads = (int)(n > 0 ? n : 1);
    for (i = 0; i < n_threads; i++) {
        shares[i].tape = t;
        shares[i].job = job;
        shares[i].lo = n * i / n_threads;
        shares[i].hi = n * (i + 1) / n_threads;
        shares[i].status = JX_OK;
        started[i] = 0;
    }
    for (i = 1; i < n_threads; i++) {
#ifdef _WIN32
        handles[i] = CreateThread(NULL, 0, jx_thread_main, &shares[i], 0, NULL);
        started[i] = handles[i] != NULL;
#else
        started[i] = pthread_create(&handles[i], NULL, jx_thread_main, &shares[i]) == 0;
#endif
    }
    jx_run_share(&shares[0]);
    for (i = 1; i < n_threads; i++) {
        if (started[i]) {
#ifdef _WIN32
            WaitForSingleObject(handles[i], INFINITE);
            CloseHandle(handles[i]);
#else
            pthread_join(handles[i], NULL);
#endif
        } else {
            /* no thread could be started: do its share here */
            jx_run_share(&shares[i]);
        }
    }
    for (i = 0; i < n_threads; i++)
        if (shares[i].status != JX_OK) status = shares[i].status;
    return status;
}
