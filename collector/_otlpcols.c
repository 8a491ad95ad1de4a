/*
 * OTLP ExportTraceServiceRequest bytes -> per-span columns, without per-span Python objects.
 *
 * decode(data, keys, markers, vllm_name) walks the protobuf wire format of the OTLP trace
 * schema (ExportTraceServiceRequest > ResourceSpans > ScopeSpans > Span, with Resource,
 * InstrumentationScope, KeyValue, AnyValue, Event, Link, Status and EntityRef) and
 * returns, for the spans the old decoder would have kept (name == vllm_name, or an
 * attribute whose key is one of keys[markers]):
 *
 *   (total_spans, n, spans, n_res, res_attrs, span_attrs, strings)
 *
 *   spans:      n records of SpanRec (see SPAN_DTYPE in collector/columnar.py)
 *   span_attrs: n * len(keys) records of AttrRec, the span's value for each wanted key
 *   res_attrs:  n_res * len(keys) AttrRec, per ResourceSpans (SpanRec.res indexes them)
 *   strings:    list of the distinct string values; AttrRec.code indexes it (0 is "")
 *   str_offsets, str_data: the same strings as Arrow buffers (int32 offsets), for gather()
 *
 * It accepts a strict subset of what upb accepts: every string field of the schema is
 * checked to be valid UTF-8, lengths are bounds-checked, known fields must have their
 * declared wire type, unknown fields may not be groups, and nesting is limited. Anything
 * outside that subset returns None and the caller decodes with upb (the reference path),
 * so errors and their messages stay upb's. Values the fast path does not represent (an
 * empty AnyValue, bytes, kvlists, arrays of non-strings, a value field given twice) are
 * tagged T_OTHER so that span alone is mapped by the reference code.
 */
#include "_otlpcols.h"
#include <string.h>

#define MAX_ANY_DEPTH 24 /* upb allows 100 message levels in all; AnyValue nests below 8 */

typedef struct {
    char *data;
    size_t len, cap;
} Vec;

static int vec_grow(Vec *v, size_t add) {
    if (v->len + add <= v->cap) return 0;
    size_t cap = v->cap ? v->cap : 4096;
    while (cap < v->len + add) cap *= 2;
    char *d = PyMem_Realloc(v->data, cap);
    if (!d) return -1;
    v->data = d;
    v->cap = cap;
    return 0;
}

typedef struct {
    const uint8_t *p, *end;
} Buf;

#define MAX_KEYS 256
#define KEY_SLOTS 1024

typedef struct {
    /* wanted keys: open-addressing table of indexes into keys */
    const char *key_ptr[MAX_KEYS];
    Py_ssize_t key_len[MAX_KEYS];
    int nkeys;
    int key_table[KEY_SLOTS];
    uint8_t is_marker[MAX_KEYS];
    const char *vllm;
    Py_ssize_t vllm_len;
    /* outputs */
    Vec spans, attrs, res;
    int64_t total, n, nres;
    /* interned strings */
    PyObject *strings;
    uint64_t *hashes; /* slot -> hash (0 empty) */
    int32_t *codes;   /* slot -> code */
    size_t hcap, hcount;
    Vec scratch;
    Vec str_offsets, str_data; /* the strings again, as Arrow string buffers */
} Ctx;

/* --- wire primitives ------------------------------------------------------------------ */

static inline int rd_varint(Buf *b, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (b->p >= b->end) return -1;
        uint8_t c = *b->p++;
        if (i == 9 && c > 1) return -1; /* more than 64 bits */
        v |= (uint64_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static inline int rd_tag(Buf *b, uint32_t *field, int *wt) {
    uint64_t t;
    if (rd_varint(b, &t) < 0 || t > 0xffffffffu) return -1;
    *field = (uint32_t)(t >> 3);
    *wt = (int)(t & 7);
    return *field == 0 ? -1 : 0;
}

static inline int rd_len(Buf *b, Buf *sub) {
    uint64_t n;
    if (rd_varint(b, &n) < 0) return -1;
    if (n > (uint64_t)(b->end - b->p) || n > 0x7fffffff) return -1;
    sub->p = b->p;
    sub->end = b->p + n;
    b->p += n;
    return 0;
}

static inline int rd_fixed64(Buf *b, uint64_t *out) {
    if (b->end - b->p < 8) return -1;
    memcpy(out, b->p, 8); /* little-endian hosts only (x86-64, aarch64) */
    b->p += 8;
    return 0;
}

static int skip_field(Buf *b, int wt) {
    uint64_t v;
    Buf sub;
    switch (wt) {
        case 0: return rd_varint(b, &v);
        case 1:
            if (b->end - b->p < 8) return -1;
            b->p += 8;
            return 0;
        case 2: return rd_len(b, &sub);
        case 5:
            if (b->end - b->p < 4) return -1;
            b->p += 4;
            return 0;
        default: return -1; /* groups and invalid wire types: leave them to upb */
    }
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), as upb checks proto3 strings. */
static int utf8_ok(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= n || (s[i + 1] & 0xc0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (i + 2 >= n) return 0;
            uint8_t c1 = s[i + 1];
            if ((c1 & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80) return 0;
            if (c == 0xe0 && c1 < 0xa0) return 0;
            if (c == 0xed && c1 > 0x9f) return 0;
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (i + 3 >= n) return 0;
            uint8_t c1 = s[i + 1];
            if ((c1 & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 || (s[i + 3] & 0xc0) != 0x80)
                return 0;
            if (c == 0xf0 && c1 < 0x90) return 0;
            if (c == 0xf4 && c1 > 0x8f) return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static inline int rd_string(Buf *b, Buf *sub) {
    if (rd_len(b, sub) < 0) return -1;
    return utf8_ok(sub->p, (size_t)(sub->end - sub->p)) ? 0 : -1;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h | 1; /* never 0: 0 marks an empty slot */
}

/* --- string interning ------------------------------------------------------------------ */

static int intern_grow(Ctx *c) {
    size_t ncap = c->hcap ? c->hcap * 2 : 1024;
    uint64_t *nh = PyMem_Calloc(ncap, sizeof(uint64_t));
    int32_t *nc = PyMem_Calloc(ncap, sizeof(int32_t));
    if (!nh || !nc) {
        PyMem_Free(nh);
        PyMem_Free(nc);
        return -1;
    }
    for (size_t i = 0; i < c->hcap; i++) {
        if (!c->hashes[i]) continue;
        size_t j = c->hashes[i] & (ncap - 1);
        while (nh[j]) j = (j + 1) & (ncap - 1);
        nh[j] = c->hashes[i];
        nc[j] = c->codes[i];
    }
    PyMem_Free(c->hashes);
    PyMem_Free(c->codes);
    c->hashes = nh;
    c->codes = nc;
    c->hcap = ncap;
    return 0;
}

/* Code of the string s[0:n] (valid UTF-8), adding it to c->strings when new; -1 on error. */
static int32_t intern(Ctx *c, const uint8_t *s, size_t n) {
    if ((c->hcount + 1) * 2 > c->hcap && intern_grow(c) < 0) return -1;
    uint64_t h = hash_bytes(s, n);
    size_t j = h & (c->hcap - 1);
    while (c->hashes[j]) {
        if (c->hashes[j] == h) {
            PyObject *o = PyList_GET_ITEM(c->strings, c->codes[j]);
            Py_ssize_t len;
            const char *u = PyUnicode_AsUTF8AndSize(o, &len);
            if (!u) return -1;
            if ((size_t)len == n && memcmp(u, s, n) == 0) return c->codes[j];
        }
        j = (j + 1) & (c->hcap - 1);
    }
    PyObject *o = PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, "strict");
    if (!o) return -1;
    Py_ssize_t code = PyList_GET_SIZE(c->strings);
    if (c->str_data.len + n > INT32_MAX || vec_grow(&c->str_data, n) < 0 ||
        vec_grow(&c->str_offsets, sizeof(int32_t)) < 0) {
        Py_DECREF(o);
        return -1;
    }
    memcpy(c->str_data.data + c->str_data.len, s, n);
    c->str_data.len += n;
    int32_t end = (int32_t)c->str_data.len;
    memcpy(c->str_offsets.data + c->str_offsets.len, &end, sizeof end);
    c->str_offsets.len += sizeof end;
    if (code >= INT32_MAX || PyList_Append(c->strings, o) < 0) {
        Py_DECREF(o);
        return -1;
    }
    Py_DECREF(o);
    c->hashes[j] = h;
    c->codes[j] = (int32_t)code;
    c->hcount++;
    return (int32_t)code;
}

/* --- messages --------------------------------------------------------------------------- */

/* Return codes: 0 ok, -1 outside the accepted subset (caller falls back), -2 Python error. */
#define TRY(x)                   \
    do {                         \
        int _r = (x);            \
        if (_r < 0) return _r;   \
    } while (0)
#define WIRE(w) \
    if (wt != (w)) return -1

static int any_value(Ctx *c, Buf *b, int depth, AttrRec *out);

static int kv(Ctx *c, Buf *b, int depth, AttrRec *slots, int *marker);

static int kvlist(Ctx *c, Buf *b, int depth) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(kv(c, &sub, depth + 1, NULL, NULL));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

/* ArrayValue; with out, records a non-empty all-string array as T_STRARR. */
static int array_value(Ctx *c, Buf *b, int depth, AttrRec *out) {
    int all_str = 1, count = 0;
    size_t start = c->scratch.len;
    int32_t first = -1;
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            AttrRec el;
            memset(&el, 0, sizeof el);
            el.type = T_OTHER;
            TRY(any_value(c, &sub, depth + 1, out ? &el : NULL));
            if (!out) continue;
            if (el.type != T_STR) {
                all_str = 0;
                continue;
            }
            if (!all_str) continue;
            if (count == 0) first = el.code;
            PyObject *o = PyList_GET_ITEM(c->strings, el.code);
            Py_ssize_t len;
            const char *u = PyUnicode_AsUTF8AndSize(o, &len);
            if (!u) return -2;
            if (vec_grow(&c->scratch, (size_t)len + 1) < 0) return -2;
            if (count) c->scratch.data[c->scratch.len++] = ',';
            memcpy(c->scratch.data + c->scratch.len, u, (size_t)len);
            c->scratch.len += (size_t)len;
            count++;
        } else {
            TRY(skip_field(b, wt));
        }
    }
    if (out) {
        if (all_str && count > 0) {
            int32_t joined = intern(c, (const uint8_t *)c->scratch.data + start,
                                    c->scratch.len - start);
            if (joined < 0) return -2;
            out->type = T_STRARR;
            out->code = joined;
            out->code2 = first;
        } else {
            out->type = T_OTHER;
        }
    }
    c->scratch.len = start;
    return 0;
}

static int any_value(Ctx *c, Buf *b, int depth, AttrRec *out) {
    if (depth > MAX_ANY_DEPTH) return -1;
    int arrays = 0;
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        uint64_t v;
        TRY(rd_tag(b, &f, &wt));
        switch (f) {
            case 1:
                WIRE(2);
                TRY(rd_string(b, &sub));
                if (out) {
                    int32_t code = intern(c, sub.p, (size_t)(sub.end - sub.p));
                    if (code < 0) return -2;
                    out->type = T_STR;
                    out->code = code;
                }
                break;
            case 2:
                WIRE(0);
                TRY(rd_varint(b, &v));
                if (out) {
                    out->type = T_BOOL;
                    out->val = v != 0;
                }
                break;
            case 3:
                WIRE(0);
                TRY(rd_varint(b, &v));
                if (out) {
                    out->type = T_INT;
                    out->val = (int64_t)v;
                }
                break;
            case 4:
                WIRE(1);
                TRY(rd_fixed64(b, &v));
                if (out) {
                    out->type = T_DBL;
                    out->val = (int64_t)v;
                }
                break;
            case 5:
                WIRE(2);
                TRY(rd_len(b, &sub));
                /* A second array_value merges into the first: leave that to upb. */
                TRY(array_value(c, &sub, depth, (out && !arrays) ? out : NULL));
                if (out && arrays) out->type = T_OTHER;
                arrays++;
                break;
            case 6:
                WIRE(2);
                TRY(rd_len(b, &sub));
                TRY(kvlist(c, &sub, depth));
                if (out) out->type = T_OTHER;
                break;
            case 7:
                WIRE(2);
                TRY(rd_len(b, &sub));
                if (out) out->type = T_OTHER;
                break;
            case 8: /* string_value_strindex: a oneof member the mapping reads as None */
                WIRE(0);
                TRY(rd_varint(b, &v));
                if (out) out->type = T_OTHER;
                break;
            default: TRY(skip_field(b, wt));
        }
    }
    return 0;
}

/* Cheap hash for the key table: length and three bytes; keys are compared in full anyway. */
static inline uint64_t key_hash(const uint8_t *k, size_t n) {
    if (n == 0) return 0;
    return n * 31u + k[0] * 7u + k[n - 1] * 131u + k[n / 2] * 1031u + k[(n * 3) / 4] * 17u;
}

static inline int key_index(Ctx *c, const uint8_t *k, size_t n) {
    uint64_t h = key_hash(k, n);
    size_t j = h & (KEY_SLOTS - 1);
    while (c->key_table[j] >= 0) {
        int i = c->key_table[j];
        if ((size_t)c->key_len[i] == n && memcmp(c->key_ptr[i], k, n) == 0) return i;
        j = (j + 1) & (KEY_SLOTS - 1);
    }
    return -1;
}

/* KeyValue; with slots, stores the value of a wanted key (the last occurrence wins). */
static int kv(Ctx *c, Buf *b, int depth, AttrRec *slots, int *marker) {
    Buf key = {NULL, NULL}, val = {NULL, NULL};
    int nval = 0;
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        uint64_t v;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1) {
            WIRE(2);
            TRY(rd_string(b, &key));
        } else if (f == 2) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            val = sub;
            nval++;
            /* Validate every occurrence; only the value of a single one is recorded. */
            TRY(any_value(c, &sub, depth + 1, NULL));
        } else if (f == 3) {
            WIRE(0);
            TRY(rd_varint(b, &v));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    if (!slots) return 0;
    size_t klen = key.p ? (size_t)(key.end - key.p) : 0;
    int i = key_index(c, key.p ? key.p : (const uint8_t *)"", klen);
    if (i < 0) return 0;
    if (marker && c->is_marker[i]) *marker = 1;
    AttrRec *out = &slots[i];
    memset(out, 0, sizeof *out);
    out->type = T_OTHER; /* no value, or a value given twice (merged by upb) */
    if (nval == 1) {
        Buf vb = val;
        TRY(any_value(c, &vb, depth + 1, out));
    }
    return 0;
}

static int m_scope(Ctx *c, Buf *b) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        uint64_t v;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1 || f == 2) {
            WIRE(2);
            TRY(rd_string(b, &sub));
        } else if (f == 3) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(kv(c, &sub, 4, NULL, NULL));
        } else if (f == 4) {
            WIRE(0);
            TRY(rd_varint(b, &v));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

/* Event (fields 1 fixed64, 2 string, 3 KeyValue, 4 varint) and Link. */
static int m_event(Ctx *c, Buf *b) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        uint64_t v;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1) {
            WIRE(1);
            TRY(rd_fixed64(b, &v));
        } else if (f == 2) {
            WIRE(2);
            TRY(rd_string(b, &sub));
        } else if (f == 3) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(kv(c, &sub, 6, NULL, NULL));
        } else if (f == 4) {
            WIRE(0);
            TRY(rd_varint(b, &v));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

static int m_link(Ctx *c, Buf *b) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        uint64_t v;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1 || f == 2) {
            WIRE(2);
            TRY(rd_len(b, &sub));
        } else if (f == 3) {
            WIRE(2);
            TRY(rd_string(b, &sub));
        } else if (f == 4) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(kv(c, &sub, 6, NULL, NULL));
        } else if (f == 5) {
            WIRE(0);
            TRY(rd_varint(b, &v));
        } else if (f == 6) {
            WIRE(5);
            TRY(skip_field(b, 5));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

static int m_status(Buf *b, SpanRec *s) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        uint64_t v;
        TRY(rd_tag(b, &f, &wt));
        if (f == 2) {
            WIRE(2);
            TRY(rd_string(b, &sub));
        } else if (f == 3) {
            WIRE(0);
            TRY(rd_varint(b, &v));
            if (v > 0x7fffffff) return -1;
            s->status = (int32_t)v;
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

static int m_span(Ctx *c, Buf *b, int32_t res) {
    size_t k = (size_t)c->nkeys;
    if (vec_grow(&c->spans, sizeof(SpanRec)) < 0) return -2;
    if (vec_grow(&c->attrs, k * sizeof(AttrRec)) < 0) return -2;
    SpanRec *s = (SpanRec *)(c->spans.data + c->spans.len);
    AttrRec *slots = (AttrRec *)(c->attrs.data + c->attrs.len);
    memset(s, 0, sizeof *s);
    memset(slots, 0, k * sizeof(AttrRec));
    s->res = res;
    int marker = 0;
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        uint64_t v;
        TRY(rd_tag(b, &f, &wt));
        switch (f) {
            case 1:
            case 2: {
                WIRE(2);
                TRY(rd_len(b, &sub));
                size_t n = (size_t)(sub.end - sub.p);
                size_t want = f == 1 ? 16 : 8;
                uint8_t *dst = f == 1 ? s->trace : s->span;
                /* A length other than 0 or the id size: the candidate check below falls
                   back, so the reference decoder reports it. */
                uint8_t len8 = n > 255 ? 255 : (uint8_t)n;
                if (f == 1) s->trace_len = len8; else s->span_len = len8;
                memset(dst, 0, want);
                if (n == want) memcpy(dst, sub.p, want);
                break;
            }
            case 4:
                WIRE(2);
                TRY(rd_len(b, &sub));
                break;
            case 3:
                WIRE(2);
                TRY(rd_string(b, &sub));
                break;
            case 5:
                WIRE(2);
                TRY(rd_string(b, &sub));
                s->vllm = (sub.end - sub.p) == c->vllm_len &&
                          memcmp(sub.p, c->vllm, (size_t)c->vllm_len) == 0;
                break;
            case 6:
                WIRE(0);
                TRY(rd_varint(b, &v));
                s->kind = v <= 5 ? (int32_t)v : 6; /* 6: invalid, the reference reports it */
                break;
            case 7:
                WIRE(1);
                TRY(rd_fixed64(b, &s->start));
                break;
            case 8:
                WIRE(1);
                TRY(rd_fixed64(b, &s->end));
                break;
            case 9:
                WIRE(2);
                TRY(rd_len(b, &sub));
                TRY(kv(c, &sub, 5, slots, &marker));
                break;
            case 10:
            case 12:
            case 14:
                WIRE(0);
                TRY(rd_varint(b, &v));
                break;
            case 11:
                WIRE(2);
                TRY(rd_len(b, &sub));
                TRY(m_event(c, &sub));
                break;
            case 13:
                WIRE(2);
                TRY(rd_len(b, &sub));
                TRY(m_link(c, &sub));
                break;
            case 15:
                WIRE(2);
                TRY(rd_len(b, &sub));
                TRY(m_status(&sub, s));
                break;
            case 16:
                WIRE(5);
                TRY(skip_field(b, 5));
                break;
            default: TRY(skip_field(b, wt));
        }
    }
    c->total++;
    if (!(s->vllm || marker)) return 0; /* not an LLM candidate: the slot is reused */
    if ((s->trace_len != 0 && s->trace_len != 16) || (s->span_len != 0 && s->span_len != 8) ||
        s->kind < 0 || s->kind > 5)
        return -1; /* the reference decoder raises the error that names the field */
    c->spans.len += sizeof(SpanRec);
    c->attrs.len += k * sizeof(AttrRec);
    c->n++;
    return 0;
}

static int m_scope_spans(Ctx *c, Buf *b, int32_t res) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(m_scope(c, &sub));
        } else if (f == 2) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(m_span(c, &sub, res));
        } else if (f == 3) {
            WIRE(2);
            TRY(rd_string(b, &sub));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

static int m_entity_ref(Buf *b) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        TRY(rd_tag(b, &f, &wt));
        if (f >= 1 && f <= 4) {
            WIRE(2);
            TRY(rd_string(b, &sub));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

static int m_resource(Ctx *c, Buf *b, AttrRec *slots) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        uint64_t v;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(kv(c, &sub, 3, slots, NULL));
        } else if (f == 2) {
            WIRE(0);
            TRY(rd_varint(b, &v));
        } else if (f == 3) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(m_entity_ref(&sub));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

static int m_resource_spans(Ctx *c, Buf *b) {
    size_t k = (size_t)c->nkeys;
    if (c->nres >= INT32_MAX) return -1;
    int32_t r = (int32_t)c->nres++;
    if (vec_grow(&c->res, k * sizeof(AttrRec)) < 0) return -2;
    size_t off = c->res.len;
    memset(c->res.data + off, 0, k * sizeof(AttrRec));
    c->res.len += k * sizeof(AttrRec);
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            /* c->res may move while spans grow it? No: only this function grows it. */
            TRY(m_resource(c, &sub, (AttrRec *)(c->res.data + off)));
        } else if (f == 2) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(m_scope_spans(c, &sub, r));
        } else if (f == 3) {
            WIRE(2);
            TRY(rd_string(b, &sub));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

static int m_request(Ctx *c, Buf *b) {
    while (b->p < b->end) {
        uint32_t f;
        int wt;
        Buf sub;
        TRY(rd_tag(b, &f, &wt));
        if (f == 1) {
            WIRE(2);
            TRY(rd_len(b, &sub));
            TRY(m_resource_spans(c, &sub));
        } else {
            TRY(skip_field(b, wt));
        }
    }
    return 0;
}

/* --- module ------------------------------------------------------------------------------ */

static void ctx_free(Ctx *c) {
    PyMem_Free(c->spans.data);
    PyMem_Free(c->attrs.data);
    PyMem_Free(c->res.data);
    PyMem_Free(c->scratch.data);
    PyMem_Free(c->str_offsets.data);
    PyMem_Free(c->str_data.data);
    PyMem_Free(c->hashes);
    PyMem_Free(c->codes);
    Py_XDECREF(c->strings);
}

static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    PyObject *keys, *markers;
    const char *vllm;
    Py_ssize_t vllm_len;
    if (!PyArg_ParseTuple(args, "y*O!O!s#", &data, &PyTuple_Type, &keys, &PyTuple_Type,
                          &markers, &vllm, &vllm_len))
        return NULL;
    Ctx c;
    memset(&c, 0, sizeof c);
    PyObject *result = NULL;
    Py_ssize_t nkeys = PyTuple_GET_SIZE(keys);
    if (nkeys > MAX_KEYS) {
        PyErr_SetString(PyExc_ValueError, "too many wanted keys");
        goto done;
    }
    c.nkeys = (int)nkeys;
    c.vllm = vllm;
    c.vllm_len = vllm_len;
    for (int j = 0; j < KEY_SLOTS; j++) c.key_table[j] = -1;
    for (int i = 0; i < c.nkeys; i++) {
        PyObject *k = PyTuple_GET_ITEM(keys, i);
        if (!PyUnicode_Check(k)) {
            PyErr_SetString(PyExc_TypeError, "keys must be str");
            goto done;
        }
        c.key_ptr[i] = PyUnicode_AsUTF8AndSize(k, &c.key_len[i]);
        if (!c.key_ptr[i]) goto done;
        size_t j = key_hash((const uint8_t *)c.key_ptr[i], (size_t)c.key_len[i]) &
                   (KEY_SLOTS - 1);
        while (c.key_table[j] >= 0) j = (j + 1) & (KEY_SLOTS - 1);
        c.key_table[j] = i;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(markers); i++) {
        long m = PyLong_AsLong(PyTuple_GET_ITEM(markers, i));
        if (m < 0 || m >= c.nkeys) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "marker index out of range");
            goto done;
        }
        c.is_marker[m] = 1;
    }
    if (vec_grow(&c.spans, 1) < 0 || vec_grow(&c.attrs, 1) < 0 || vec_grow(&c.res, 1) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (vec_grow(&c.str_offsets, sizeof(int32_t)) < 0 || vec_grow(&c.str_data, 1) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    memset(c.str_offsets.data, 0, sizeof(int32_t));
    c.str_offsets.len = sizeof(int32_t);
    c.strings = PyList_New(0);
    if (!c.strings || intern(&c, (const uint8_t *)"", 0) != 0) goto done;
    Buf b = {(const uint8_t *)data.buf, (const uint8_t *)data.buf + data.len};
    int rc = m_request(&c, &b);
    if (rc == -2) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    if (rc == -1) {
        PyErr_Clear(); /* e.g. a UnicodeDecodeError that utf8_ok should have caught */
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = Py_BuildValue("(LLy#Ly#y#Oy#y#)", (long long)c.total, (long long)c.n, c.spans.data,
                           (Py_ssize_t)c.spans.len, (long long)c.nres, c.res.data,
                           (Py_ssize_t)c.res.len, c.attrs.data, (Py_ssize_t)c.attrs.len,
                           c.strings, c.str_offsets.data, (Py_ssize_t)c.str_offsets.len,
                           c.str_data.data, (Py_ssize_t)c.str_data.len);
done:
    PyBuffer_Release(&data);
    ctx_free(&c);
    return result;
}

/* gather(offsets, data, codes) -> (offsets, data): the Arrow string buffers of
   [strings[i] for i in codes], where strings is given as Arrow buffers (int32 offsets). */
static PyObject *py_gather(PyObject *self, PyObject *args) {
    Py_buffer offs, data, codes;
    PyObject *result = NULL, *out_data = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*", &offs, &data, &codes)) return NULL;
    const int32_t *o = (const int32_t *)offs.buf;
    const int32_t *k = (const int32_t *)codes.buf;
    Py_ssize_t nstr = offs.len / 4 - 1, n = codes.len / 4;
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (k[i] < 0 || k[i] >= nstr || o[k[i]] > o[k[i] + 1] || o[k[i] + 1] > data.len) {
            PyErr_SetString(PyExc_IndexError, "string code out of range");
            goto done;
        }
        total += o[k[i] + 1] - o[k[i]];
    }
    if (total > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "strings exceed 2 GiB");
        goto done;
    }
    PyObject *out_offs = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
    out_data = PyBytes_FromStringAndSize(NULL, total);
    if (!out_offs || !out_data) {
        Py_XDECREF(out_offs);
        goto done;
    }
    int32_t *oo = (int32_t *)PyBytes_AS_STRING(out_offs);
    char *od = PyBytes_AS_STRING(out_data);
    const char *src = (const char *)data.buf;
    int32_t pos = 0;
    oo[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t a = o[k[i]], len = o[k[i] + 1] - a;
        memcpy(od + pos, src + a, (size_t)len);
        pos += len;
        oo[i + 1] = pos;
    }
    result = PyTuple_Pack(2, out_offs, out_data);
    Py_DECREF(out_offs);
done:
    Py_XDECREF(out_data);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&codes);
    return result;
}

static PyMethodDef methods[] = {
    {"map", otlpmap_map, METH_VARARGS,
     "map(spans, span_attrs, res_attrs, nkeys, plan, strings, nstr, non_inference, "
     "pool_by_model, default_pool, other_code) -> (per-span results, kept attribute codes) "
     "(_otlpmap.c)."},
    {"attr_map", otlpmap_attr_map, METH_VARARGS,
     "attr_map(str_offsets, str_data, kept, ncols, names, rows) -> the Arrow buffers of a "
     "Map(String, String) column (_otlpmap.c)."},
    {"gather", py_gather, METH_VARARGS,
     "gather(offsets, data, codes) -> (offsets, data) of the strings at codes."},
    {"decode", py_decode, METH_VARARGS,
     "decode(data, keys, markers, vllm_name) -> (total, n, spans, n_res, res_attrs, "
     "span_attrs, strings, str_offsets, str_data) or None when the body needs the reference decoder."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_otlpcols",
                                    "Columnar OTLP trace decoder (see collector/columnar.py).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__otlpcols(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "MAX_KEYS", MAX_KEYS) < 0 ||
        PyModule_AddIntConstant(m, "SPAN_SIZE", (long)sizeof(SpanRec)) < 0 ||
        PyModule_AddIntConstant(m, "ATTR_SIZE", (long)sizeof(AttrRec)) < 0 ||
        PyModule_AddIntConstant(m, "OUT_SIZE", (long)sizeof(OutRec)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
