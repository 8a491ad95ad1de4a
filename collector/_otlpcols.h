/* Records shared by the decoder (_otlpcols.c) and the mapping kernel (_otlpmap.c).
   Their layouts are mirrored by SPAN_DTYPE and ATTR_DTYPE in collector/columnar.py. */
#ifndef GOVERNOR_OTLPCOLS_H
#define GOVERNOR_OTLPCOLS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

enum { T_ABSENT = 0, T_STR = 1, T_INT = 2, T_DBL = 3, T_BOOL = 4, T_STRARR = 5, T_OTHER = 6 };

typedef struct {
    uint64_t start, end;
    int32_t kind, status, res;
    uint8_t vllm, trace_len, span_len, pad;
    uint8_t trace[16];
    uint8_t span[8];
} SpanRec; /* 56 bytes */

typedef struct {
    int64_t val;   /* int64, or the double's bits, or 0/1 for bool */
    int32_t code;  /* string code (T_STR), joined array text (T_STRARR) */
    int32_t code2; /* first array element (T_STRARR) */
    uint8_t type;
    uint8_t pad[7];
} AttrRec; /* 24 bytes */

/* One span's mapping results (OUT_DTYPE in collector/columnar.py). */
typedef struct {
    int64_t ttft_us, tpot_us, e2e_us, queue_us, prefill_us, decode_us;
    int64_t input, output, cached;
    double usage;
    float tps;
    int32_t error, finish, model, pool, replica, tenant, priority;
    uint8_t mapped, ref, failed, has_ttft, has_tpot, has_queue, has_prefill, has_decode,
        has_tps, has_usage;
    uint8_t pad[6];
} OutRec; /* 128 bytes */

/* map(...) and attr_map(...) of _otlpmap.c, methods of the _otlpcols module. */
PyObject *otlpmap_map(PyObject *self, PyObject *args);
PyObject *otlpmap_attr_map(PyObject *self, PyObject *args);

#endif
