/*
 * The per-span rules of collector.genai.map_span over the decoder's columns, in one pass.
 *
 * map(spans, span_attrs, res_attrs, nkeys, plan, strings, nstr, non_inference,
 *     pool_by_model, default_pool, other_code)
 *   -> (bytes: one OutRec per span (OUT_DTYPE in collector/columnar.py),
 *       bytes: n rows of int32 string codes, the kept attributes (-1: absent))
 *
 * collector/columnar.py calls it with the buffers decode() returned and does the rest:
 * pricing and the trace-id policy in numpy, then the Arrow columns (the attributes map
 * through attr_map below). strings[:nstr] are decode()'s strings, followed by the
 * mapper's own (pool names, "_OTHER"). Decisions on a string's text are made once per
 * string code, and only for the codes that need them (a body's strings include
 * per-span ids): whether an operation name is in the non_inference set, whether a
 * service.name starts with "unknown_service", and the pool of a model (pool_by_model:
 * model -> index after nstr; default_pool when absent). default_pool and other_code are
 * indexes after nstr too.
 *
 * plan (int32): OP, SYS, E2E, SERVICE_NAME, SPAN_KIND (key indexes, -1 when absent),
 * kinds_ok[7] (1 when the mapping takes that span kind; index 6 is "out of range"), the
 * names of the 6 span kinds (indexes after nstr), then for each role in the order of enum
 * Role a count and that many key indexes (first match wins), then the kept attributes:
 * a count and that many key indexes. The kept row of a span has one code per kept key and
 * a last one for "span.kind" (the span's kind, unless a kept "span.kind" attribute holds
 * the kind at its own position: map_span's order).
 *
 * Values the rules do not handle here (see "Exactness rule" in collector/columnar.py) set
 * OutRec.ref: that span is mapped by the reference code instead, so its other fields are
 * not used.
 */
#include "_otlpcols.h"
#include <math.h>
#include <string.h>

enum Role {
    R_TTFT, R_QUEUE, R_PREFILL, R_DECODE, R_INPUT, R_OUTPUT, R_CACHED, R_USAGE,
    R_ERROR, R_FINISH, R_MODEL, R_POOL, R_REPLICA, R_TENANT, R_PRIORITY, N_ROLES
};
enum { P_OP, P_SYS, P_E2E, P_SVC, P_SPAN_KIND, P_KINDS, P_KIND_NAMES = P_KINDS + 7,
       P_ROLES = P_KIND_NAMES + 6 };
enum { F_NON_INFERENCE = 1, F_UNKNOWN_SERVICE = 2, F_OP_KNOWN = 4, F_SVC_KNOWN = 8 };

static PyObject *UNKNOWN_SERVICE; /* "unknown_service", made on first use */

/* Per-string decisions, made on first use. */
typedef struct {
    PyObject *strings, *non_inference, *pool_by_model;
    Py_ssize_t nstr;
    int32_t default_pool;
    uint8_t *flags;
    int32_t *fill; /* -1: not yet looked up */
} Strs;

/* 1 or 0 for the flag, -1 on a Python error. */
static int str_flag(Strs *st, int32_t code, int flag) {
    uint8_t known = flag == F_NON_INFERENCE ? F_OP_KNOWN : F_SVC_KNOWN;
    if (!(st->flags[code] & known)) {
        PyObject *s = PyList_GET_ITEM(st->strings, code);
        int yes = flag == F_NON_INFERENCE
                      ? PySet_Contains(st->non_inference, s)
                      : (int)PyUnicode_Tailmatch(s, UNKNOWN_SERVICE, 0, PY_SSIZE_T_MAX, -1);
        if (yes < 0) return -1;
        st->flags[code] |= known | (yes ? flag : 0);
    }
    return (st->flags[code] & flag) != 0;
}

/* The pool code for a model code: pool_by_model's, else the default pool. */
static int32_t pool_of(Strs *st, int32_t model) {
    if (st->fill[model] < 0) {
        PyObject *p = PyDict_GetItemWithError(st->pool_by_model, PyList_GET_ITEM(st->strings, model));
        if (!p) {
            if (PyErr_Occurred()) return -1;
            st->fill[model] = st->default_pool;
        } else {
            long off = PyLong_AsLong(p);
            if (off < 0 || st->nstr + off >= PyList_GET_SIZE(st->strings)) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "pool index out of range");
                return -1;
            }
            st->fill[model] = (int32_t)(st->nstr + off);
        }
    }
    return st->fill[model];
}


typedef struct {
    const int32_t *keys;
    int n;
} KeyList;

#define U32MAX 4294967295LL
#define MAX_SECONDS 1e9 /* larger durations are left to the reference */
#define MAX_EXACT 9007199254740992.0 /* 2**53: larger integers are not exact as doubles */
#define STATUS_ERROR 2

static inline double as_double(int64_t bits) {
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* genai's number reading: the first present key's value, a non-negative int or finite
   double <= limit; any other value of that key sends the span to the reference. */
static int first_number(const AttrRec *a, KeyList kl, double limit, uint8_t *ref, double *out) {
    *out = 0.0;
    for (int j = 0; j < kl.n; j++) {
        const AttrRec *r = &a[kl.keys[j]];
        if (r->type == T_ABSENT) continue;
        if (r->type == T_INT && r->val >= 0 && (double)r->val <= limit) {
            *out = (double)r->val;
        } else {
            double d = as_double(r->val);
            if (r->type == T_DBL && isfinite(d) && d >= 0 && d <= limit)
                *out = d;
            else
                *ref = 1;
        }
        return 1;
    }
    return 0;
}

/* Token counts: non-negative integers (integral doubles too), saturated at UInt32. */
static int64_t first_tokens(const AttrRec *a, KeyList kl, uint8_t *ref) {
    for (int j = 0; j < kl.n; j++) {
        const AttrRec *r = &a[kl.keys[j]];
        if (r->type == T_ABSENT) continue;
        if (r->type == T_INT && r->val >= 0) return r->val < U32MAX ? r->val : U32MAX;
        double d = as_double(r->val);
        if (r->type == T_DBL && isfinite(d) && d >= 0 && d == floor(d))
            return (int64_t)(d < 4294967295.0 ? d : 4294967295.0);
        *ref = 1;
        return 0;
    }
    return 0;
}

/* A span attribute read as text: a string, or an array of strings (joined, or its first
   element); another type goes to the reference. */
static int32_t text(const AttrRec *a, int32_t key, int first, uint8_t *ref) {
    if (key < 0) return 0;
    const AttrRec *r = &a[key];
    switch (r->type) {
    case T_ABSENT: return 0;
    case T_STR: return r->code;
    case T_STRARR: return first ? r->code2 : r->code;
    default: *ref = 1; return 0;
    }
}

/* genai._lookup: the first non-empty string, the span's attribute before the resource's. */
static int32_t lookup(const AttrRec *a, const AttrRec *res, KeyList kl, int32_t svc, Strs *st,
                      uint8_t *ref) {
    for (int j = 0; j < kl.n; j++) {
        int32_t k = kl.keys[j];
        const AttrRec *r = a[k].type != T_ABSENT ? &a[k] : &res[k];
        if (r->type == T_ABSENT) continue;
        if (r->type != T_STR) {
            *ref = 1;
            continue;
        }
        if (r->code == 0) continue;
        if (k == svc) {
            int unknown = str_flag(st, r->code, F_UNKNOWN_SERVICE);
            if (unknown < 0) return -1;
            if (unknown) continue;
        }
        return r->code;
    }
    return 0;
}

/* genai._us: round half up to whole microseconds, saturating at UInt32. */
static inline int64_t micros(double seconds, int present) {
    double x = seconds * 1e6 + 0.5;
    if (!(x < 4294967296.0)) return U32MAX;
    return present ? (int64_t)floor(x) : 0;
}

static int check_codes(const AttrRec *a, Py_ssize_t count, Py_ssize_t nstr) {
    for (Py_ssize_t i = 0; i < count; i++) {
        if (a[i].type != T_STR && a[i].type != T_STRARR) continue;
        if (a[i].code < 0 || a[i].code >= nstr || a[i].code2 < 0 || a[i].code2 >= nstr) {
            PyErr_SetString(PyExc_ValueError, "string code out of range");
            return -1;
        }
    }
    return 0;
}

PyObject *otlpmap_map(PyObject *self, PyObject *args) {
    Py_buffer spans, attrs, res, plan;
    Py_ssize_t nkeys;
    int default_pool, other;
    Strs st = {0};
    PyObject *result = NULL, *out_buf = NULL, *kept_buf = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*ny*O!nO!O!ii", &spans, &attrs, &res, &nkeys, &plan,
                          &PyList_Type, &st.strings, &st.nstr, &PyFrozenSet_Type,
                          &st.non_inference, &PyDict_Type, &st.pool_by_model, &default_pool,
                          &other))
        return NULL;
    const SpanRec *sp = spans.buf;
    const AttrRec *at = attrs.buf, *rs = res.buf;
    const int32_t *pl = plan.buf;
    Py_ssize_t n = spans.len / (Py_ssize_t)sizeof(SpanRec);
    Py_ssize_t nres = nkeys > 0 ? res.len / (Py_ssize_t)sizeof(AttrRec) / nkeys : 0;
    Py_ssize_t nstr = st.nstr, nplan = plan.len / 4, nall = PyList_GET_SIZE(st.strings);
    KeyList roles[N_ROLES];
    if (nkeys <= 0 || spans.len % (Py_ssize_t)sizeof(SpanRec) ||
        attrs.len != n * nkeys * (Py_ssize_t)sizeof(AttrRec) ||
        res.len != nres * nkeys * (Py_ssize_t)sizeof(AttrRec) || nplan < P_ROLES || nstr < 1 ||
        nstr > nall || default_pool < 0 || nstr + default_pool >= nall || other < 0 ||
        nstr + other >= nall || nstr + (Py_ssize_t)other > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "inconsistent sizes");
        goto done;
    }
    for (Py_ssize_t i = 0; i < nstr; i++) {
        if (!PyUnicode_Check(PyList_GET_ITEM(st.strings, i))) {
            PyErr_SetString(PyExc_TypeError, "strings must be str");
            goto done;
        }
    }
    st.default_pool = (int32_t)(nstr + default_pool);
    for (int j = 0; j < P_KINDS; j++) {
        if (pl[j] < -1 || pl[j] >= nkeys || (j < P_SVC && pl[j] < 0)) goto bad_plan;
    }
    for (int j = P_KIND_NAMES; j < P_ROLES; j++) {
        if (pl[j] < 0 || nstr + pl[j] >= nall) goto bad_plan;
    }
    Py_ssize_t pos = P_ROLES;
    for (int r = 0; r < N_ROLES; r++) {
        if (pos >= nplan || pl[pos] < 0 || pos + 1 + pl[pos] > nplan) goto bad_plan;
        roles[r].n = pl[pos];
        roles[r].keys = &pl[pos + 1];
        for (int j = 0; j < roles[r].n; j++)
            if (roles[r].keys[j] < 0 || roles[r].keys[j] >= nkeys) goto bad_plan;
        pos += 1 + pl[pos];
    }
    if ((roles[R_ERROR].n != 1 || roles[R_FINISH].n != 1)) goto bad_plan;
    if (pos >= nplan || pl[pos] < 0 || pos + 1 + pl[pos] != nplan) goto bad_plan;
    KeyList keep = {&pl[pos + 1], pl[pos]};
    for (int j = 0; j < keep.n; j++)
        if (keep.keys[j] < 0 || keep.keys[j] >= nkeys) goto bad_plan;
    Py_ssize_t ncols = keep.n + 1; /* kept keys, then span.kind */
    if (check_codes(at, n * nkeys, nstr) < 0 || check_codes(rs, nres * nkeys, nstr) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (sp[i].res < 0 || sp[i].res >= nres) {
            PyErr_SetString(PyExc_ValueError, "resource index out of range");
            goto done;
        }
    }
    if (!UNKNOWN_SERVICE && !(UNKNOWN_SERVICE = PyUnicode_InternFromString("unknown_service")))
        goto done;
    st.flags = PyMem_Calloc((size_t)nstr, 1);
    st.fill = PyMem_Malloc((size_t)nstr * sizeof(int32_t));
    if (!st.flags || !st.fill) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nstr; i++) st.fill[i] = -1;
    other = (int)(nstr + other);

    out_buf = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(OutRec));
    kept_buf = PyBytes_FromStringAndSize(NULL, n * ncols * (Py_ssize_t)sizeof(int32_t));
    if (!out_buf || !kept_buf) goto fail;
    OutRec *out = (OutRec *)PyBytes_AS_STRING(out_buf);
    int32_t *kept = (int32_t *)PyBytes_AS_STRING(kept_buf);
    memset(out, 0, (size_t)n * sizeof(OutRec));
    uint8_t kinds_ok[7];
    for (int j = 0; j < 7; j++) kinds_ok[j] = pl[P_KINDS + j] != 0;
    KeyList e2e_key = {&pl[P_E2E], 1};

    for (Py_ssize_t i = 0; i < n; i++) {
        const SpanRec *s = &sp[i];
        const AttrRec *a = &at[i * nkeys], *ra = &rs[(Py_ssize_t)s->res * nkeys];
        OutRec *o = &out[i];
        uint8_t ref = 0;

        /* is_llm_span, then the kind filter; a non-string operation name is the
           reference's to judge. */
        const AttrRec *op = &a[pl[P_OP]];
        int is_llm;
        if (op->type == T_STR) {
            int non_inference = str_flag(&st, op->code, F_NON_INFERENCE);
            if (non_inference < 0) goto fail;
            is_llm = !non_inference;
        } else
            is_llm = op->type == T_ABSENT &&
                     (a[pl[P_SYS]].type != T_ABSENT || a[pl[P_E2E]].type != T_ABSENT);
        is_llm = is_llm || s->vllm == 1;
        int unsure = op->type != T_ABSENT && op->type != T_STR;
        int kind = s->kind < 0 ? 0 : s->kind > 6 ? 6 : s->kind;
        o->mapped = (is_llm && kinds_ok[kind]) || unsure;
        ref |= (uint8_t)unsure;

        /* Durations (seconds). */
        double e2e, ttft, queue, prefill, decode;
        if (!first_number(a, e2e_key, MAX_SECONDS, &ref, &e2e))
            e2e = s->end > s->start ? (double)(s->end - s->start) / 1e9 : 0.0;
        int has_ttft = first_number(a, roles[R_TTFT], MAX_SECONDS, &ref, &ttft);
        int has_queue = first_number(a, roles[R_QUEUE], MAX_SECONDS, &ref, &queue);
        int has_prefill = first_number(a, roles[R_PREFILL], MAX_SECONDS, &ref, &prefill);
        int has_decode = first_number(a, roles[R_DECODE], MAX_SECONDS, &ref, &decode);
        if (!has_decode && has_ttft && e2e >= ttft) {
            decode = e2e - ttft;
            has_decode = 1;
        }

        /* Token counts. */
        int64_t in = first_tokens(a, roles[R_INPUT], &ref);
        int64_t outt = first_tokens(a, roles[R_OUTPUT], &ref);
        int64_t cached = first_tokens(a, roles[R_CACHED], &ref);
        if (in != 0 && cached > in) cached = in;

        int has_tpot = has_ttft && outt > 1 && e2e >= ttft;
        double tpot = has_tpot ? (e2e - ttft) / (double)(outt - 1 > 1 ? outt - 1 : 1) : 0.0;
        int has_tps = has_decode && decode > 0 && outt > 1;
        o->tps = has_tps ? (float)((double)(outt - 1) / decode) : 0.0f;

        /* Status and text columns. */
        int32_t err = text(a, roles[R_ERROR].keys[0], 0, &ref);
        int failed = s->status == STATUS_ERROR || err != 0;
        if (failed && err == 0) err = other;
        o->finish = text(a, roles[R_FINISH].keys[0], 1, &ref);
        int32_t svc = pl[P_SVC];
        if ((o->model = lookup(a, ra, roles[R_MODEL], svc, &st, &ref)) < 0 ||
            (o->pool = lookup(a, ra, roles[R_POOL], svc, &st, &ref)) < 0 ||
            (o->pool == 0 && (o->pool = pool_of(&st, o->model)) < 0) ||
            (o->replica = lookup(a, ra, roles[R_REPLICA], svc, &st, &ref)) < 0 ||
            (o->tenant = lookup(a, ra, roles[R_TENANT], svc, &st, &ref)) < 0 ||
            (o->priority = lookup(a, ra, roles[R_PRIORITY], svc, &st, &ref)) < 0)
            goto fail;

        /* A start time the store can hold; otherwise map_span raises. */
        if (s->start < 1 || s->start > (uint64_t)INT64_MAX) ref = 1;

        o->ttft_us = micros(ttft, has_ttft);
        o->tpot_us = micros(tpot, has_tpot);
        o->e2e_us = micros(e2e, 1);
        o->queue_us = micros(queue, has_queue);
        o->prefill_us = micros(prefill, has_prefill);
        o->decode_us = micros(decode, has_decode);
        o->input = in;
        o->output = outt;
        o->cached = cached;
        o->has_usage = (uint8_t)first_number(a, roles[R_USAGE], MAX_EXACT, &ref, &o->usage);
        o->error = err;
        o->failed = (uint8_t)failed;
        o->has_ttft = (uint8_t)has_ttft;
        o->has_tpot = (uint8_t)has_tpot;
        o->has_queue = (uint8_t)has_queue;
        o->has_prefill = (uint8_t)has_prefill;
        o->has_decode = (uint8_t)has_decode;
        o->has_tps = (uint8_t)has_tps;

        /* Kept attributes as text, then span.kind (map_span's order). */
        int32_t *row = &kept[i * ncols];
        int32_t kind_name = (int32_t)nstr + pl[P_KIND_NAMES + (s->kind < 0 ? 0 : s->kind > 5 ? 5 : s->kind)];
        for (int j = 0; j < keep.n; j++) {
            int32_t k = keep.keys[j];
            if (a[k].type == T_ABSENT) {
                row[j] = -1;
            } else if (k == pl[P_SPAN_KIND]) {
                row[j] = kind_name;
                kind_name = -1;
            } else {
                row[j] = text(a, k, 0, &ref);
            }
        }
        row[keep.n] = kind_name;
        o->ref = ref;
    }
    result = PyTuple_Pack(2, out_buf, kept_buf);
    goto done;
fail:
    Py_CLEAR(result);
    goto done;
bad_plan:
    PyErr_SetString(PyExc_ValueError, "malformed mapping plan");
done:
    Py_XDECREF(out_buf);
    Py_XDECREF(kept_buf);
    PyMem_Free(st.flags);
    PyMem_Free(st.fill);
    PyBuffer_Release(&spans);
    PyBuffer_Release(&attrs);
    PyBuffer_Release(&res);
    PyBuffer_Release(&plan);
    return result;
}

/* attr_map(str_offsets, str_data, kept, ncols, names, rows)
     -> (offsets, key_offsets, key_data, value_offsets, value_data)
   The Arrow buffers of a Map(String, String) column: for each row index in rows (int64),
   the entries of that row of kept (int32 codes, ncols per row, -1: absent) named by
   names[column]; strings given as Arrow buffers (int32 offsets). */
PyObject *otlpmap_attr_map(PyObject *self, PyObject *args) {
    Py_buffer offs, data, kept, names, rows;
    Py_ssize_t ncols;
    PyObject *result = NULL, *bufs[5] = {NULL};
    if (!PyArg_ParseTuple(args, "y*y*y*ny*y*", &offs, &data, &kept, &ncols, &names, &rows))
        return NULL;
    const int32_t *o = offs.buf, *k = kept.buf, *nm = names.buf;
    const int64_t *r = rows.buf;
    Py_ssize_t nstr = offs.len / 4 - 1, nrows = rows.len / 8;
    Py_ssize_t nspans = ncols > 0 ? kept.len / 4 / ncols : 0;
    if (ncols <= 0 || nstr < 0 || kept.len != nspans * ncols * 4 || names.len != ncols * 4 ||
        rows.len % 8) {
        PyErr_SetString(PyExc_ValueError, "inconsistent sizes");
        goto done;
    }
    for (Py_ssize_t j = 0; j < nstr; j++) {
        if (o[j] < 0 || o[j] > o[j + 1] || o[j + 1] > data.len) {
            PyErr_SetString(PyExc_ValueError, "bad string offsets");
            goto done;
        }
    }
    for (Py_ssize_t c = 0; c < ncols; c++) {
        if (nm[c] < 0 || nm[c] >= nstr) goto bad_code;
    }
    /* Count entries and bytes. */
    int64_t entries = 0, key_bytes = 0, val_bytes = 0;
    for (Py_ssize_t i = 0; i < nrows; i++) {
        if (r[i] < 0 || r[i] >= nspans) goto bad_code;
        const int32_t *row = &k[r[i] * ncols];
        for (Py_ssize_t c = 0; c < ncols; c++) {
            if (row[c] < 0) continue;
            if (row[c] >= nstr) goto bad_code;
            entries++;
            key_bytes += o[nm[c] + 1] - o[nm[c]];
            val_bytes += o[row[c] + 1] - o[row[c]];
        }
    }
    if (entries > INT32_MAX || key_bytes > INT32_MAX || val_bytes > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "attributes exceed 2 GiB");
        goto done;
    }
    Py_ssize_t sizes[5] = {(nrows + 1) * 4, (entries + 1) * 4, key_bytes, (entries + 1) * 4,
                           val_bytes};
    for (int b = 0; b < 5; b++) {
        if (!(bufs[b] = PyBytes_FromStringAndSize(NULL, sizes[b]))) goto done;
    }
    int32_t *mo = (int32_t *)PyBytes_AS_STRING(bufs[0]);
    int32_t *ko = (int32_t *)PyBytes_AS_STRING(bufs[1]), *vo = (int32_t *)PyBytes_AS_STRING(bufs[3]);
    char *kd = PyBytes_AS_STRING(bufs[2]), *vd = PyBytes_AS_STRING(bufs[4]);
    const char *src = data.buf;
    int32_t e = 0, kp = 0, vp = 0;
    mo[0] = ko[0] = vo[0] = 0;
    for (Py_ssize_t i = 0; i < nrows; i++) {
        const int32_t *row = &k[r[i] * ncols];
        for (Py_ssize_t c = 0; c < ncols; c++) {
            if (row[c] < 0) continue;
            int32_t kl = o[nm[c] + 1] - o[nm[c]], vl = o[row[c] + 1] - o[row[c]];
            memcpy(kd + kp, src + o[nm[c]], (size_t)kl);
            memcpy(vd + vp, src + o[row[c]], (size_t)vl);
            kp += kl;
            vp += vl;
            e++;
            ko[e] = kp;
            vo[e] = vp;
        }
        mo[i + 1] = e;
    }
    result = PyTuple_Pack(5, bufs[0], bufs[1], bufs[2], bufs[3], bufs[4]);
    goto done;
bad_code:
    PyErr_SetString(PyExc_IndexError, "string code or row out of range");
done:
    for (int b = 0; b < 5; b++) Py_XDECREF(bufs[b]);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&kept);
    PyBuffer_Release(&names);
    PyBuffer_Release(&rows);
    return result;
}
