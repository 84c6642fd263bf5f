#define _GNU_SOURCE
#include <sched.h>
#include "CPlatform.h"
#include <limits.h>
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>

// The data plane's short sleeps (a client waiting for an answer due in a few hundred
// microseconds, a server between batches) would each overshoot by the default 50 µs timer slack:
// at batch 1 that is a tenth of a millisecond per MoE layer. Each sleeping thread asks for 1 µs
// once.
static void precise_timers(void) {
    static __thread int done;
    if (!done) {
        prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
        done = 1;
    }
}

long eaas_timer_slack_ns(void) {
    return (long)prctl(PR_GET_TIMERSLACK, 0UL, 0UL, 0UL, 0UL);
}

int eaas_set_timer_slack_ns(unsigned long nanoseconds) {
    return prctl(PR_SET_TIMERSLACK, nanoseconds, 0UL, 0UL, 0UL);
}

int eaas_sleep_ns(int64_t nanoseconds) {
    precise_timers();
    struct timespec request = {.tv_sec = nanoseconds / 1000000000, .tv_nsec = nanoseconds % 1000000000};
    return nanosleep(&request, NULL);
}

int eaas_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    precise_timers();
    struct timespec timeout = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    // Not FUTEX_PRIVATE: the word is in a MAP_SHARED region other processes write.
    return (int)syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, NULL, 0);
}

int eaas_futex_wake_all(uint32_t *word) {
    return (int)syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

int eaas_sleep_unless_readable(int fd, int64_t timeout_ns) {
    precise_timers();
    struct timespec timeout = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    struct pollfd watched = {.fd = fd, .events = POLLIN};
    int n = ppoll(&watched, 1, &timeout, NULL);
    if (n < 0) return errno == EINTR ? 0 : -1;
    return n > 0 ? 1 : 0;
}

int eaas_allowed_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

int eaas_allowed_cpus(int *ids, int capacity) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    int found = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        if (found < capacity) ids[found] = cpu;
        found++;
    }
    return found;
}

int eaas_pin_to_current_cpu(void) {
    int cpu = sched_getcpu();
    if (cpu < 0) return -1;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) return -1;
    return cpu;
}

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/mman.h>
#include <pthread.h>
#include <linux/close_range.h>
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

// What the child of eaas_spawn needs; it shares the parent's memory until it execs.
struct eaas_spawn_args {
    const char *path;
    char *const *argv;
    char *const *envp;
    int fds[3];
    int parent_death_signal;
    const int *cgroup_fds;
    int cgroup_fd_count;
    pid_t parent;
    volatile int error;
};

// Runs in the child on its own stack, in the parent's memory (CLONE_VM), with every signal
// blocked: only system calls from here to exec, and nothing written but `error`.
static int eaas_spawn_child(void *opaque) {
    struct eaas_spawn_args *args = opaque;
    struct sigaction deflt;
    memset(&deflt, 0, sizeof deflt);
    deflt.sa_handler = SIG_DFL;
    // Dispositions back to default before the mask is cleared, so no handler of the parent's
    // ever runs in the child.
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &deflt, NULL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (args->parent_death_signal > 0) {
        prctl(PR_SET_PDEATHSIG, args->parent_death_signal);
        // The parent may have died before prctl took effect.
        if (getppid() != args->parent) {
            args->error = ESRCH;
            _exit(127);
        }
    }
    // Into the pod's CPU groups before exec, as a container runtime places its init: writing "0"
    // to a cgroup.procs moves the writer, so nothing the program runs is ever outside its limit.
    for (int i = 0; i < args->cgroup_fd_count; i++) {
        if (write(args->cgroup_fds[i], "0", 1) != 1) goto failed;
    }
    for (int i = 0; i < 3; i++) {
        int fd = args->fds[i];
        if (fd >= 0 && fd != i) {
            if (dup2(fd, i) < 0) goto failed;
        } else if (fd == i) {
            fcntl(i, F_SETFD, 0);
        }
    }
    // Nothing else of the parent's (listening sockets, shared regions) goes with the child.
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        struct rlimit limit;
        long top = getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < 65536 ? (long)limit.rlim_cur : 65536;
        for (long fd = 3; fd < top; fd++) fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    }
    execve(args->path, args->argv, args->envp);
failed:
    args->error = errno != 0 ? errno : EINVAL;
    _exit(127);
}

pid_t eaas_spawn(const char *path, char *const argv[], char *const envp[],
                 int stdin_fd, int stdout_fd, int stderr_fd, int parent_death_signal,
                 const int *cgroup_fds, int cgroup_fd_count) {
    // clone(CLONE_VM | CLONE_VFORK), as glibc's posix_spawn does, and not fork(): fork runs the
    // atfork handlers libraries register, and OpenBLAS's joins its thread pool, which hangs the
    // forking thread while another thread is inside a BLAS call (eaas up's worker computes while
    // its local kubelet starts pods). The parent sleeps until the child has exec'd or exited, so
    // an exec failure is simply read from shared memory.
    struct eaas_spawn_args args = {
        .path = path, .argv = argv, .envp = envp, .fds = {stdin_fd, stdout_fd, stderr_fd},
        .parent_death_signal = parent_death_signal, .cgroup_fds = cgroup_fds, .cgroup_fd_count = cgroup_fd_count,
        .parent = getpid(), .error = 0,
    };
    const size_t stack_size = 256 << 10;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return -1;
    // Every signal blocked across the clone: a handler must not run in the child while it
    // shares our memory (the child unblocks once its dispositions are default).
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pid_t child = clone(eaas_spawn_child, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    munmap(stack, stack_size);
    if (child < 0) {
        errno = saved;
        return -1;
    }
    if (args.error != 0) {
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        errno = args.error;
        return -1;
    }
    return child;
}
