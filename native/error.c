/*
 * error.c - return codes and per-thread failure details.
 *
 * Every failing path calls tsm_fail(), which records the details for the
 * calling thread and returns the code, so a failure is reported in one line:
 *     return tsm_fail(TSM_ECORRUPT, 0, file, off, "bad page checksum");
 * The binding reads them with tsm_last_error() right after the failed call,
 * on the same thread.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Thread_local tsm_error last_error;

int tsm_fail(int code, int sys_errno, const char *file, int64_t offset,
             const char *fmt, ...)
{
    va_list ap;
    last_error.code = code;
    last_error.sys_errno = sys_errno;
    last_error.offset = offset;
    last_error.pid = 0;
    snprintf(last_error.file, sizeof last_error.file, "%s", file ? file : "");
    va_start(ap, fmt);
    vsnprintf(last_error.message, sizeof last_error.message, fmt, ap);
    va_end(ap);
    return code;
}

void tsm_fail_pid(int64_t pid)
{
    last_error.pid = pid;
}

void tsm_last_error(tsm_error *out)
{
    *out = last_error;
}

const char *tsm_strerror(int code)
{
    switch (code) {
    case TSM_OK: return "success";
    case TSM_EINVAL: return "invalid argument";
    case TSM_EBADARCHIVES: return "invalid archive list";
    case TSM_EBADAGG: return "unknown aggregation method";
    case TSM_EBADXFF: return "xFilesFactor not between 0 and 1";
    case TSM_EBADNAME: return "invalid metric name";
    case TSM_EBADPOINT: return "invalid point";
    case TSM_EBADTIME: return "invalid time interval";
    case TSM_ENOTFOUND: return "no such metric";
    case TSM_EEXISTS: return "metric already exists";
    case TSM_ELOCKED: return "database locked by another writer";
    case TSM_ECORRUPT: return "database corrupt";
    case TSM_EIO: return "I/O error";
    case TSM_ENOSPC: return "no space left on device";
    case TSM_EREADONLY: return "database opened read-only";
    case TSM_EFATAL: return "handle failed earlier; reopen the database";
    case TSM_ENOMEM: return "out of memory";
    case TSM_EVERSION: return "unsupported database format version";
    case TSM_ENODB: return "no database in directory";
    case TSM_ETOOBIG: return "request too large";
    case TSM_EBUSY: return "page left mid-update by a dead writer";
    case TSM_ECLOSED: return "database handle is closed";
    default: return "unknown error";
    }
}

void tsm_free(void *p)
{
    free(p);
}
