/*
 * threads.h -- threads for the C core: POSIX or Windows threads (no OpenMP: wheels must
 * build everywhere).  jx_thread_start / jx_thread_join: a thread per share (the batches,
 * batch.c; a single point's second half on Windows).  jx_helper_post / jx_helper_wait
 * (POSIX): one helper thread that stays, for a single point's second half (vm.c).
 */
#ifndef JACEXT_THREADS_H
#define JACEXT_THREADS_H

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN   /* (none of its macros near the VM's names) */
#endif
#include <windows.h>
#else
#include <pthread.h>
#include <time.h>
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

#ifndef _WIN32
/* One helper thread that stays (POSIX): a single point's second half (vm.c) is posted to
   it, where starting a thread per call cost about 40 us in the kernel here.  After each job
   it spins for JX_HELPER_SPIN_NS for the next (a loop of calls: a core spinning the Python
   between two calls), then sleeps on a condition variable; a caller waits the same way.
   One caller at a time (jx_helper_post fails for the others: they run the job
   themselves); a forked child starts with no helper (pthread_atfork). */
#define JX_HELPER_SPIN_NS 200000
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    void (*fn)(void *);
    void *arg;
    int state;     /* 0 idle, 1 posted, 2 done: atomic, and changed under lock */
    int owner;     /* a caller holds the helper */
    int started;
} jx_helper_t;

static jx_helper_t jx_helper = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                                NULL, NULL, 0, 0, 0};

/* Spins until *state is `until` (1) or JX_HELPER_SPIN_NS have passed (0). */
static inline int jx_spin_for(const int *state, int until)
{
    struct timespec t0, t1;
    long k;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        for (k = 0; k < 64; k++) {
            if (__atomic_load_n(state, __ATOMIC_ACQUIRE) == until) return 1;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if ((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) > JX_HELPER_SPIN_NS)
            return 0;
    }
}

static void *jx_helper_main(void *unused)
{
    (void)unused;
    for (;;) {
        jx_spin_for(&jx_helper.state, 1);
        pthread_mutex_lock(&jx_helper.lock);
        while (__atomic_load_n(&jx_helper.state, __ATOMIC_ACQUIRE) != 1)
            pthread_cond_wait(&jx_helper.cond, &jx_helper.lock);
        pthread_mutex_unlock(&jx_helper.lock);
        jx_helper.fn(jx_helper.arg);
        pthread_mutex_lock(&jx_helper.lock);
        __atomic_store_n(&jx_helper.state, 2, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&jx_helper.cond);
        pthread_mutex_unlock(&jx_helper.lock);
    }
    return NULL;
}

static void jx_helper_forget(void)   /* in a forked child: no helper thread there */
{
    pthread_mutex_init(&jx_helper.lock, NULL);
    pthread_cond_init(&jx_helper.cond, NULL);
    jx_helper.state = jx_helper.owner = jx_helper.started = 0;
}

/* Posts fn(arg) to the helper; 0 where it is taken or cannot start (run it yourself). */
static inline int jx_helper_post(void (*fn)(void *), void *arg)
{
    pthread_t h;
    if (__atomic_exchange_n(&jx_helper.owner, 1, __ATOMIC_ACQUIRE)) return 0;
    if (!jx_helper.started) {
        static int registered = 0;
        if (!registered) registered = pthread_atfork(NULL, NULL, jx_helper_forget) == 0;
        if (!registered || pthread_create(&h, NULL, jx_helper_main, NULL) != 0) {
            __atomic_store_n(&jx_helper.owner, 0, __ATOMIC_RELEASE);
            return 0;
        }
        pthread_detach(h);
        jx_helper.started = 1;
    }
    pthread_mutex_lock(&jx_helper.lock);
    jx_helper.fn = fn;
    jx_helper.arg = arg;
    __atomic_store_n(&jx_helper.state, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&jx_helper.cond);
    pthread_mutex_unlock(&jx_helper.lock);
    return 1;
}

/* Waits for the posted job (spinning a while, then asleep) and gives the helper back. */
static inline void jx_helper_wait(void)
{
    jx_spin_for(&jx_helper.state, 2);
    pthread_mutex_lock(&jx_helper.lock);
    while (__atomic_load_n(&jx_helper.state, __ATOMIC_ACQUIRE) != 2)
        pthread_cond_wait(&jx_helper.cond, &jx_helper.lock);
    __atomic_store_n(&jx_helper.state, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&jx_helper.lock);
    __atomic_store_n(&jx_helper.owner, 0, __ATOMIC_RELEASE);
}
#endif

#endif
