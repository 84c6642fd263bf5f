// C shim for Linux scheduling calls that glibc only declares under _GNU_SOURCE, which Swift's Glibc
// module does not define.
#ifndef EAAS_CPLATFORM_H
#define EAAS_CPLATFORM_H

/// Pins the calling thread (and the threads it creates afterwards) to the CPU it is running on.
/// Returns that CPU, or -1 with errno set.
int eaas_pin_to_current_cpu(void);

/// How many CPUs the calling thread may run on (its affinity mask), at least 1.
int eaas_allowed_cpu_count(void);

#endif
