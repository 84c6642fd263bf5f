// C shim for Linux scheduling calls that glibc only declares under _GNU_SOURCE, which Swift's Glibc
// module does not define.
#ifndef EAAS_CPLATFORM_H
#define EAAS_CPLATFORM_H

/// Pins the calling thread (and the threads it creates afterwards) to the CPU it is running on.
/// Returns that CPU, or -1 with errno set.
int eaas_pin_to_current_cpu(void);

/// How many CPUs the calling thread may run on (its affinity mask), at least 1.
/// The ids of the CPUs the calling thread may run on, ascending, at most `capacity` of them into
/// `ids`; returns how many there are (or -1 with errno set).
int eaas_allowed_cpus(int *ids, int capacity);
int eaas_allowed_cpu_count(void);

#include <stdint.h>

/// Sleeps while `*word == expected`, at most `timeout_ns` nanoseconds, on a futex that may live in
/// memory shared between processes. Returns 0 when woken (or the value already differed), -1 with
/// errno (ETIMEDOUT, EINTR, EAGAIN) otherwise.
int eaas_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);

/// Wakes every thread, in any process, sleeping on `word`. Returns how many woke, or -1.
int eaas_futex_wake_all(uint32_t *word);

/// Sleeps at most `timeout_ns` nanoseconds, or until `fd` is readable or hung up (ppoll, which
/// glibc declares only under _GNU_SOURCE). Returns 1 when `fd` woke it, 0 when the time passed or
/// a signal came, -1 with errno on any other error.
/// nanosleep with the calling thread's timer slack set to 1 µs (once per thread).
int eaas_sleep_ns(int64_t nanoseconds);
/// The calling thread's timer slack, in nanoseconds, and setting it (new threads inherit it).
long eaas_timer_slack_ns(void);
int eaas_set_timer_slack_ns(unsigned long nanoseconds);
int eaas_sleep_unless_readable(int fd, int64_t timeout_ns);

#include <sys/types.h>

/// Starts `path` with `argv` and `envp` (NULL-terminated) in a child whose signal dispositions are
/// all back to default and whose signal mask is empty (a parent that ignores SIGTERM to handle it
/// itself must not hand that on), whose descriptors are only 0, 1 and 2 (from `stdin_fd`,
/// `stdout_fd`, `stderr_fd`; -1 keeps the parent's), and which receives `parent_death_signal`
/// (0: none) when the calling thread's process dies, even by SIGKILL. Returns the child's pid, or
/// -1 with errno set (also when exec failed: the child's errno is reported). Before exec the child
/// writes "0" to each of `cgroup_fds` (open `cgroup.procs` files), joining those groups.
pid_t eaas_spawn(const char *path, char *const argv[], char *const envp[],
                 int stdin_fd, int stdout_fd, int stderr_fd, int parent_death_signal,
                 const int *cgroup_fds, int cgroup_fd_count);

#endif
