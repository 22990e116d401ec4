/*
 * threads.h -- start a helper thread and join it: POSIX or Windows threads (no OpenMP:
 * wheels must build everywhere).  The batches' shares (batch.c) and a single point's
 * halves (vm.c) run on them.
 */
#ifndef JACEXT_THREADS_H
#define JACEXT_THREADS_H

#ifdef _WIN32
#include <windows.h>
#else
#include <pthread.h>
#endif

typedef struct {
    void (*fn)(void *);
    void *arg;
    int started;
#ifdef _WIN32
    HANDLE handle;
#else
    pthread_t handle;
#endif
} jx_thread;

#ifdef _WIN32
static DWORD WINAPI jx_thread_entry(LPVOID p)
{
    jx_thread *th = (jx_thread *)p;
    th->fn(th->arg);
    return 0;
}
#else
static void *jx_thread_entry(void *p)
{
    jx_thread *th = (jx_thread *)p;
    th->fn(th->arg);
    return NULL;
}
#endif

/* Runs fn(arg) on a new thread; where none can be started, fn(arg) runs at the join. */
static inline void jx_thread_start(jx_thread *th, void (*fn)(void *), void *arg)
{
    th->fn = fn;
    th->arg = arg;
#ifdef _WIN32
    th->handle = CreateThread(NULL, 0, jx_thread_entry, th, 0, NULL);
    th->started = th->handle != NULL;
#else
    th->started = pthread_create(&th->handle, NULL, jx_thread_entry, th) == 0;
#endif
}

static inline void jx_thread_join(jx_thread *th)
{
    if (!th->started) {
        th->fn(th->arg);
        return;
    }
#ifdef _WIN32
    WaitForSingleObject(th->handle, INFINITE);
    CloseHandle(th->handle);
#else
    pthread_join(th->handle, NULL);
#endif
}

#endif
