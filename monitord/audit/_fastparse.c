/* Optional accelerator of the parser: candidate audit lines found and read in C.
 *
 * line_json(line) returns exactly the bytes the pure-Python path produces
 * (parse_line + RecordEncoder, plus "\n"), the parser's NOT_VIRT / NOT_LIBVIRT
 * object for ignored lines, or None: "use the Python path for this line".
 * Only common shapes are handled here (printable ASCII, at most one 0x1D
 * after the stamp, small integers); anything else, and every line that would
 * be a ParseError, returns None, so the Python code stays the reference for
 * every unusual case and for the exact error reasons.
 *
 * The region_* functions do that for every candidate line of a buffer (found with
 * AVX2 where the CPU has it): as JSON lines (`monitord parse`), as AuditRecords
 * (the daemon), as the lines themselves (replay's forked reader) or applied straight
 * to a guest table (`monitord replay`; see region_apply).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX: the kind of member a __slots__ entry is */
#include <string.h>
/* MONITORD_NO_SIMD builds the portable loops only (how they are tested on x86-64); the
 * scans use AVX2 where the CPU has it, the portable loops elsewhere. */
#if defined(MONITORD_NO_SIMD)
#undef __SSE2__
#endif
#if defined(__SSE2__)
#include <emmintrin.h> /* baseline on x86-64; other machines take the portable loops */
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(MONITORD_NO_SIMD)
#include <immintrin.h> /* AVX2 versions of the two scans, chosen at run time */
#define HAVE_AVX2_DISPATCH 1
#endif

static PyObject *not_virt_obj = NULL;
static PyObject *not_libvirt_obj = NULL;
static PyObject *make_record_obj = NULL; /* record.make_record: AuditRecord's 12 arguments */
static PyObject *built_record = NULL;    /* the record convert() built (want_record) */

/* ---- a growable byte buffer ---------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = PyMem_Realloc(b->data, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define PUTS(b, lit) buf_put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

static Buf out_buf = {NULL, 0, 0};   /* the JSON line being built */
static Buf arena = {NULL, 0, 0};     /* decoded field values of the current line */

/* ---- JSON escaping (as json's c_encode_basestring_ascii) -------------------------------- */

static const char HEX[] = "0123456789abcdef";

static int put_escaped_cp(Buf *b, Py_UCS4 c) {
    char tmp[12];
    Py_ssize_t n = 0;
    if (c >= 0x10000) {
        Py_UCS4 v = c - 0x10000;
        Py_UCS4 hi = 0xd800 | ((v >> 10) & 0x3ff);
        Py_UCS4 lo = 0xdc00 | (v & 0x3ff);
        tmp[n++] = '\\'; tmp[n++] = 'u';
        tmp[n++] = HEX[(hi >> 12) & 0xf]; tmp[n++] = HEX[(hi >> 8) & 0xf];
        tmp[n++] = HEX[(hi >> 4) & 0xf]; tmp[n++] = HEX[hi & 0xf];
        c = lo;
    }
    switch (c) {
    case '\\': tmp[n++] = '\\'; tmp[n++] = '\\'; break;
    case '"': tmp[n++] = '\\'; tmp[n++] = '"'; break;
    case '\b': tmp[n++] = '\\'; tmp[n++] = 'b'; break;
    case '\f': tmp[n++] = '\\'; tmp[n++] = 'f'; break;
    case '\n': tmp[n++] = '\\'; tmp[n++] = 'n'; break;
    case '\r': tmp[n++] = '\\'; tmp[n++] = 'r'; break;
    case '\t': tmp[n++] = '\\'; tmp[n++] = 't'; break;
    default:
        if (c >= ' ' && c <= '~') {
            tmp[n++] = (char)c;
        } else {
            tmp[n++] = '\\'; tmp[n++] = 'u';
            tmp[n++] = HEX[(c >> 12) & 0xf]; tmp[n++] = HEX[(c >> 8) & 0xf];
            tmp[n++] = HEX[(c >> 4) & 0xf]; tmp[n++] = HEX[c & 0xf];
        }
    }
    return buf_put(b, tmp, n);
}

/* A JSON string of bytes that decode (utf-8, surrogateescape) to the value's text. */
static int put_json_string(Buf *b, const char *s, Py_ssize_t n) {
    Py_ssize_t i;
    int plain = 1;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e) {
            plain = 0;
            break;
        }
    }
    if (buf_reserve(b, 2 * n + 2) < 0)
        return -1;
    b->data[b->len++] = '"';
    if (plain) {
        char *d = b->data + b->len;
        for (i = 0; i < n; i++) {
            char c = s[i];
            if (c == '"' || c == '\\')
                *d++ = '\\';
            *d++ = c;
        }
        b->len = d - b->data;
    } else {
        PyObject *text = PyUnicode_DecodeUTF8(s, n, "surrogateescape");
        if (text == NULL)
            return -1;
        Py_ssize_t len = PyUnicode_GET_LENGTH(text);
        int kind = PyUnicode_KIND(text);
        const void *data = PyUnicode_DATA(text);
        for (i = 0; i < len; i++) {
            if (put_escaped_cp(b, PyUnicode_READ(kind, data, i)) < 0) {
                Py_DECREF(text);
                return -1;
            }
        }
        Py_DECREF(text);
    }
    if (buf_reserve(b, 1) < 0)
        return -1;
    b->data[b->len++] = '"';
    return 0;
}

/* ---- small helpers ---------------------------------------------------------------------- */

static Py_ssize_t find_byte(const char *s, Py_ssize_t from, Py_ssize_t to, char c) {
    if (from >= to)
        return -1;
    const char *p = memchr(s + from, c, (size_t)(to - from));
    return p ? (Py_ssize_t)(p - s) : -1;
}

/* a[:n] == b[:n] for the short keys and values of a record: inline, no call to memcmp */
static inline int same(const char *a, const char *b, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* the next c in s[from:to] by a plain loop: tokens are short, a memchr call costs more */
static inline Py_ssize_t next_byte(const char *s, Py_ssize_t from, Py_ssize_t to, char c) {
    for (Py_ssize_t i = from; i < to; i++)
        if (s[i] == c)
            return i;
    return -1;
}

static Py_ssize_t find_str(const char *s, Py_ssize_t from, Py_ssize_t to, const char *needle,
                           Py_ssize_t nlen) {
    if (from < 0)
        from = 0;
    while (from + nlen <= to) {
        const char *p = memchr(s + from, needle[0], (size_t)(to - nlen + 1 - from));
        if (p == NULL)
            return -1;
        Py_ssize_t at = (Py_ssize_t)(p - s);
        if (memcmp(p, needle, (size_t)nlen) == 0)
            return at;
        from = at + 1;
    }
    return -1;
}

/* s[:n] equals the string literal lit */
#define EQ(s, n, lit) \
    ((n) == (Py_ssize_t)(sizeof(lit) - 1) && memcmp((s), (lit), sizeof(lit) - 1) == 0)

static int is_hex_digit(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hex_val(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return c - 'A' + 10;
}

/* An integer as Python's int() reads an ASCII token: 1 = number (in *out),
 * 0 = int() raises ValueError (None), -1 = not handled here (fall back). */
static int int_of(const char *s, Py_ssize_t n, long long *out) {
    Py_ssize_t i = 0;
    int neg = 0;
    if (n > 0 && (s[0] == '+' || s[0] == '-')) {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == n)
        return memchr(s, '_', (size_t)n) ? -1 : 0;
    long long v = 0;
    int digits = 0;
    for (; i < n; i++) {
        char c = s[i];
        if (c < '0' || c > '9')
            return memchr(s, '_', (size_t)n) ? -1 : 0;
        if (digits || c != '0')
            digits++;
        if (digits > 18)
            return -1;
        v = v * 10 + (c - '0');
    }
    *out = neg ? -v : v;
    return 1;
}

static int put_int(Buf *b, long long v) {
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[sizeof tmp - 1 - n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[sizeof tmp - 1 - n++] = '-';
    return buf_put(b, tmp + sizeof tmp - n, n);
}

/* ---- the inner fields ------------------------------------------------------------------- */

#define MAX_FIELDS 128
#define MAX_ENRICH 64

typedef struct {
    const char *key;
    Py_ssize_t klen;
    int is_none;
    Py_ssize_t off; /* value in the arena */
    Py_ssize_t vlen;
} Field;

/* parser.py's _ENCODED_KEYS (1) and _RAW_KEYS (0); other keys: 1 for old-* / new-* */
typedef struct {
    const char *name;
    Py_ssize_t len;
    int encoded;
} KeyRule;

#define RULE(lit, enc) {lit, (Py_ssize_t)(sizeof(lit) - 1), enc}
static const KeyRule KEY_RULES[] = {
    RULE("vm", 1), RULE("device", 1), RULE("disk", 1), RULE("chardev", 1), RULE("cgroup", 1),
    RULE("exe", 1), RULE("virt", 0), RULE("op", 0), RULE("reason", 0), RULE("resrc", 0),
    RULE("uuid", 0), RULE("vm-pid", 0), RULE("init-pid", 0), RULE("pid-ns", 0),
    RULE("old-mem", 0), RULE("new-mem", 0), RULE("old-vcpu", 0), RULE("new-vcpu", 0),
    RULE("old-iothread", 0), RULE("new-iothread", 0), RULE("net", 0), RULE("rdev", 0),
    RULE("bus", 0), RULE("class", 0), RULE("category", 0), RULE("maj", 0), RULE("acl", 0),
    RULE("size", 0), RULE("vm-ctx", 0), RULE("img-ctx", 0), RULE("model", 0), RULE("res", 0),
    RULE("hostname", 0), RULE("addr", 0), RULE("terminal", 0), RULE("user", 0),
    RULE("auid", 0), RULE("uid", 0), {NULL, 0, 0}};

static int is_encoded_key(const char *k, Py_ssize_t n) {
    for (const KeyRule *r = KEY_RULES; r->name; r++)
        if (r->len == n && r->name[0] == k[0] && same(r->name, k, n))
            return r->encoded;
    return n >= 4 && (same(k, "old-", 4) || same(k, "new-", 4));
}

/* decode_value(key, value, encoded) into the arena; sets f->is_none/off/vlen. */
static int decode_into(Field *f, const char *v, Py_ssize_t n, int encoded) {
    f->is_none = 0;
    f->off = arena.len;
    if (n > 0 && v[0] == '"') {
        const char *c = v + 1;
        Py_ssize_t cl = (n >= 2 && v[n - 1] == '"') ? n - 2 : n - 1;
        if (cl == 1 && c[0] == '?') {
            f->is_none = 1;
            f->vlen = 0;
            return 0;
        }
        f->vlen = cl;
        return buf_put(&arena, c, cl);
    }
    if (n == 1 && v[0] == '?') {
        f->is_none = 1;
        f->vlen = 0;
        return 0;
    }
    if (encoded && n > 0 && n % 2 == 0) {
        Py_ssize_t i;
        for (i = 0; i < n; i++)
            if (!is_hex_digit(v[i]))
                break;
        if (i == n) {
            if (buf_reserve(&arena, n / 2) < 0)
                return -1;
            for (i = 0; i < n; i += 2)
                arena.data[arena.len++] = (char)((hex_val(v[i]) << 4) | hex_val(v[i + 1]));
            f->vlen = n / 2;
            return 0;
        }
    }
    f->vlen = n;
    return buf_put(&arena, v, n);
}

/* _parse_fields_slow's semantics (which equal parse_fields' fast path where that applies).
 * Returns the number of fields, -1 on error, -2 to fall back. */
static int parse_fields(const char *s, Py_ssize_t n, Field *fields) {
    int nf = 0;
    int last = -1; /* index of last_key's field */
    int resrc_set = 0, resrc_none = 0;
    Py_ssize_t resrc_off = 0, resrc_len = 0;
    Py_ssize_t i = 0;
    arena.len = 0;
    /* tokens = inner.split(" "): n + 1 tokens for n spaces (empty ones included) */
    while (i <= n) {
        Py_ssize_t te = next_byte(s, i, n, ' ');
        if (te < 0)
            te = n;
        const char *tok = s + i;
        Py_ssize_t tl = te - i;
        i = te + 1;
        if (tl == 0)
            continue;
        Py_ssize_t eqi = next_byte(tok, 0, tl, '=');
        const char *eqp = eqi < 0 ? NULL : tok + eqi;
        if (eqp == NULL || eqp == tok) {
            /* a bare token continues the last raw value */
            if (last >= 0 && !fields[last].is_none) {
                /* the last field's value is the arena's end */
                if (buf_reserve(&arena, tl + 1) < 0)
                    return -1;
                arena.data[arena.len++] = ' ';
                memcpy(arena.data + arena.len, tok, (size_t)tl);
                arena.len += tl;
                fields[last].vlen += tl + 1;
            }
            continue;
        }
        Py_ssize_t kl = eqp - tok;
        const char *val = eqp + 1;
        Py_ssize_t vl = tl - kl - 1;
        int quoted = vl > 0 && val[0] == '"';
        if (quoted && (vl < 2 || val[vl - 1] != '"')) {
            /* a quoted value with spaces: up to the first later token ending in '"' */
            Py_ssize_t end = n;
            while (i <= n) {
                Py_ssize_t e2 = next_byte(s, i, n, ' ');
                if (e2 < 0)
                    e2 = n;
                Py_ssize_t start2 = i;
                i = e2 + 1;
                if (e2 > start2 && s[e2 - 1] == '"') {
                    end = e2;
                    break;
                }
                end = e2;
            }
            vl = (s + end) - val;
        }
        int dup = 0;
        for (int j = 0; j < nf; j++) {
            if (fields[j].klen == kl && fields[j].key[0] == tok[0] &&
                same(fields[j].key, tok, kl)) {
                dup = 1;
                break;
            }
        }
        if (dup) {
            last = -1;
            continue;
        }
        if (nf >= MAX_FIELDS)
            return -2;
        Field *f = &fields[nf];
        f->key = tok;
        f->klen = kl;
        int encoded;
        if (EQ(tok, kl, "path")) {
            encoded = resrc_set && !resrc_none &&
                      (EQ(arena.data + resrc_off, resrc_len, "net") ||
                       EQ(arena.data + resrc_off, resrc_len, "cgroup"));
        } else {
            encoded = is_encoded_key(tok, kl);
        }
        if (decode_into(f, val, vl, encoded) < 0)
            return -1;
        if (EQ(tok, kl, "resrc")) {
            resrc_set = 1;
            resrc_none = f->is_none;
            resrc_off = f->off;
            resrc_len = f->vlen;
        }
        last = quoted ? -1 : nf;
        nf++;
    }
    return nf;
}

static Field *get_field_n(Field *fields, int nf, const char *key, Py_ssize_t kl) {
    for (int j = 0; j < nf; j++)
        if (fields[j].klen == kl && fields[j].key[0] == key[0] &&
            same(fields[j].key, key, kl))
            return &fields[j];
    return NULL;
}

#define get_field(fields, nf, lit) get_field_n((fields), (nf), (lit), sizeof(lit) - 1)

static int put_value(Buf *b, Field *f) {
    if (f == NULL || f->is_none)
        return PUTS(b, "null");
    return put_json_string(b, arena.data + f->off, f->vlen);
}

/* ---- the line ----------------------------------------------------------------------------- */

/* types.py's VIRT_TYPES, 2500 + index */
static const KeyRule KNOWN[] = {
    RULE("VIRT_CONTROL", 0), RULE("VIRT_RESOURCE", 0), RULE("VIRT_MACHINE_ID", 0),
    RULE("VIRT_INTEGRITY_CHECK", 0), RULE("VIRT_CREATE", 0), RULE("VIRT_DESTROY", 0),
    RULE("VIRT_MIGRATE_IN", 0), RULE("VIRT_MIGRATE_OUT", 0)};

typedef struct {
    const char *key;
    Py_ssize_t klen;
    const char *val;
    Py_ssize_t vlen;
} Pair;

#define FALLBACK 1

/* Build the JSON line into out_buf. 0 = done, FALLBACK, -1 = Python error; an ignored line
 * sets *ignored. */
static int build_record(const char *type_name, Py_ssize_t type_len, long type_id, double t,
                        long long serial, const char *node, Py_ssize_t node_len, Field *fields,
                        int nf, const long long *ints, const int *has_int, const char *subj,
                        Py_ssize_t subj_len, const Pair *enr, int ne);
/* The record applied to the guest table (region_apply); same arguments as build_record. */
static int apply_line(const char *type_name, Py_ssize_t type_len, long type_id, double t,
                      long long serial, const char *node, Py_ssize_t node_len, Field *fields,
                      int nf, const long long *ints, const int *has_int, const char *subj,
                      Py_ssize_t subj_len, const Pair *enr, int ne);

/* convert()'s modes: the JSON line, an AuditRecord, or applied to the guest table */
#define WANT_JSON 0
#define WANT_RECORD 1
#define WANT_APPLY 2
#define WANT_LINES 3 /* region_lines: the candidate lines, unparsed */

static int convert(const char *s, Py_ssize_t n, PyObject **ignored, int want_record) {
    Py_ssize_t i, gs = -1;
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    i = 0;
    while (i < n) {
#if defined(__SSE2__)
        if (i + 16 <= n) { /* 16 bytes at once; on a non-printable one, go straight to it */
            __m128i x = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i odd = _mm_or_si128(_mm_cmplt_epi8(x, _mm_set1_epi8(0x20)),
                                       _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f)));
            int mask = _mm_movemask_epi8(odd);
            if (mask == 0) {
                i += 16;
                continue;
            }
            i += __builtin_ctz((unsigned)mask);
        }
#endif
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c <= 0x7e) {
            i++;
            continue;
        }
        if (c == 0x1d && gs < 0) {
            gs = i++;
            continue;
        }
        return FALLBACK;
    }
    /* header: [node=NAME ]type=TYPE msg=audit(STAMP:SERIAL): */
    Py_ssize_t pos = 0, node_len = -1;
    if (n >= 5 && memcmp(s, "node=", 5) == 0) {
        Py_ssize_t sp = find_byte(s, 0, n, ' ');
        if (sp < 0)
            return FALLBACK;
        node_len = sp - 5;
        pos = sp + 1;
    }
    if (n - pos < 5 || memcmp(s + pos, "type=", 5) != 0)
        return FALLBACK;
    Py_ssize_t mark = find_str(s, pos, n, " msg=audit(", 11);
    if (mark < 0)
        return FALLBACK;
    Py_ssize_t close = find_byte(s, mark, n, ')');
    if (close < 0 || close + 1 >= n || s[close + 1] != ':')
        return FALLBACK;
    const char *tname = s + pos + 5;
    Py_ssize_t tlen = mark - (pos + 5);
    if (tlen <= 0 || memchr(tname, ' ', (size_t)tlen))
        return FALLBACK;
    long type_id = -1;
    for (int k = 0; k < 8; k++) {
        if (tlen == KNOWN[k].len && memcmp(tname, KNOWN[k].name, (size_t)tlen) == 0) {
            type_id = 2500 + k;
            break;
        }
    }
    const char *type_name = tname;
    Py_ssize_t type_len = tlen;
    if (type_id < 0) {
        if (tlen > 9 && memcmp(tname, "UNKNOWN[", 8) == 0 && tname[tlen - 1] == ']') {
            long num = 0;
            int digits = 0;
            for (i = 8; i < tlen - 1; i++) {
                char c = tname[i];
                if (c < '0' || c > '9')
                    break;
                if (digits || c != '0')
                    digits++;
                if (digits <= 6)
                    num = num * 10 + (c - '0');
            }
            if (i < tlen - 1)
                return FALLBACK; /* not UNKNOWN[digits] */
            if (digits > 6 || num < 2500 || num > 2599) {
                *ignored = not_virt_obj;
                return 0;
            }
            type_id = num;
            if (num <= 2507) {
                type_name = KNOWN[num - 2500].name;
                type_len = KNOWN[num - 2500].len;
            }
        } else {
            *ignored = not_virt_obj;
            return 0;
        }
    }
    /* stamp: digits with at most one '.', serial: digits */
    Py_ssize_t st = mark + 11;
    Py_ssize_t colon = find_byte(s, st, close, ':');
    if (colon < 0)
        return FALLBACK;
    Py_ssize_t stamp_len = colon - st;
    if (stamp_len > 32 || stamp_len < 1)
        return FALLBACK;
    int dots = 0, sdigits = 0;
    for (i = st; i < colon; i++) {
        if (s[i] == '.')
            dots++;
        else if (s[i] >= '0' && s[i] <= '9')
            sdigits++;
        else
            return FALLBACK;
    }
    if (dots > 1 || sdigits == 0)
        return FALLBACK;
    long long serial = 0;
    if (colon + 1 >= close)
        return FALLBACK;
    if (int_of(s + colon + 1, close - colon - 1, &serial) != 1 || s[colon + 1] == '+' ||
        s[colon + 1] == '-')
        return FALLBACK;
    /* tail: `): outer msg='inner'` and the enrichment after 0x1D */
    if (gs >= 0 && gs < close)
        return FALLBACK;
    Py_ssize_t limit = gs >= 0 ? gs : n;
    Py_ssize_t start = find_str(s, close, limit, "msg='", 5);
    if (start < 0)
        return FALLBACK;
    Py_ssize_t end = -1;
    for (i = limit - 1; i >= start; i--) {
        if (s[i] == '\'') {
            end = i;
            break;
        }
    }
    if (end < start + 5)
        return FALLBACK;
    Field fields[MAX_FIELDS];
    int nf = parse_fields(s + start + 5, end - start - 5, fields);
    if (nf == -1)
        return -1;
    if (nf == -2)
        return FALLBACK;
    if (get_field(fields, nf, "virt") == NULL || get_field(fields, nf, "uuid") == NULL) {
        *ignored = not_libvirt_obj;
        return 0;
    }
    /* outer: first occurrence of each key among the whitespace-separated tokens */
    static const KeyRule OUTER[] = {RULE("pid", 0), RULE("uid", 0), RULE("auid", 0),
                                    RULE("ses", 0), RULE("subj", 0)};
    const char *ov[5] = {NULL, NULL, NULL, NULL, NULL};
    Py_ssize_t ol[5] = {0, 0, 0, 0, 0};
    i = close + 2;
    while (i < start) {
        if (s[i] == ' ') {
            i++;
            continue;
        }
        Py_ssize_t te = find_byte(s, i, start, ' ');
        if (te < 0)
            te = start;
        const char *eqp = memchr(s + i, '=', (size_t)(te - i));
        if (eqp != NULL) {
            Py_ssize_t kl = eqp - (s + i);
            for (int k = 0; k < 5; k++) {
                if (ov[k] == NULL && kl == OUTER[k].len &&
                    memcmp(s + i, OUTER[k].name, (size_t)kl) == 0) {
                    ov[k] = eqp + 1;
                    ol[k] = te - kl - 1 - i;
                }
            }
        }
        i = te;
    }
    long long ints[4];
    int has_int[4];
    for (int k = 0; k < 4; k++) {
        has_int[k] = 0;
        if (ov[k] != NULL) {
            int r = int_of(ov[k], ol[k], &ints[k]);
            if (r < 0)
                return FALLBACK;
            has_int[k] = r;
        }
    }
    /* enrichment */
    Pair enr[MAX_ENRICH];
    int ne = 0;
    if (gs >= 0) {
        i = gs + 1;
        while (i < n) {
            if (s[i] == ' ') {
                i++;
                continue;
            }
            Py_ssize_t te = find_byte(s, i, n, ' ');
            if (te < 0)
                te = n;
            const char *eqp = memchr(s + i, '=', (size_t)(te - i));
            if (eqp != NULL && eqp != s + i) {
                Py_ssize_t kl = eqp - (s + i);
                int dup = 0;
                for (int k = 0; k < ne; k++)
                    if (enr[k].klen == kl && memcmp(enr[k].key, s + i, (size_t)kl) == 0)
                        dup = 1;
                if (!dup) {
                    if (ne >= MAX_ENRICH)
                        return FALLBACK;
                    const char *v = eqp + 1;
                    Py_ssize_t vl = te - (v - s);
                    if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
                        v++;
                        vl -= 2;
                    }
                    enr[ne].key = s + i;
                    enr[ne].klen = kl;
                    enr[ne].val = v;
                    enr[ne].vlen = vl;
                    ne++;
                }
            }
            i = te;
        }
    }
    /* time: float(stamp), written as repr() */
    char stamp[40];
    memcpy(stamp, s + st, (size_t)stamp_len);
    stamp[stamp_len] = '\0';
    double t = PyOS_string_to_double(stamp, NULL, NULL);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (want_record) {
        const char *subj = ov[4];
        if (subj != NULL && ol[4] == 1 && subj[0] == '?')
            subj = NULL;
        if (want_record == WANT_APPLY)
            return apply_line(type_name, type_len, type_id, t, serial,
                              node_len < 0 ? NULL : s + 5, node_len, fields, nf, ints, has_int,
                              subj, ol[4], enr, ne);
        return build_record(type_name, type_len, type_id, t, serial, node_len < 0 ? NULL : s + 5,
                            node_len, fields, nf, ints, has_int, subj, ol[4], enr, ne);
    }
    char *trepr = PyOS_double_to_string(t, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (trepr == NULL)
        return -1;
    /* the document, in RecordEncoder's key order */
    Buf *b = &out_buf;
    b->len = 0;
    int rc = 0;
    rc |= PUTS(b, "{\"type\":");
    rc |= put_json_string(b, type_name, type_len);
    rc |= PUTS(b, ",\"type_id\":");
    rc |= put_int(b, type_id);
    rc |= PUTS(b, ",\"time\":");
    rc |= buf_put(b, trepr, (Py_ssize_t)strlen(trepr));
    PyMem_Free(trepr);
    rc |= PUTS(b, ",\"serial\":");
    rc |= put_int(b, serial);
    rc |= PUTS(b, ",\"node\":");
    if (node_len < 0)
        rc |= PUTS(b, "null");
    else
        rc |= put_json_string(b, s + 5, node_len);
    rc |= PUTS(b, ",\"virt\":");
    rc |= put_value(b, get_field(fields, nf, "virt"));
    rc |= PUTS(b, ",\"vm\":");
    rc |= put_value(b, get_field(fields, nf, "vm"));
    rc |= PUTS(b, ",\"uuid\":");
    rc |= put_value(b, get_field(fields, nf, "uuid"));
    rc |= PUTS(b, ",\"result\":");
    Field *res = get_field(fields, nf, "res");
    if (res != NULL && !res->is_none &&
        (EQ(arena.data + res->off, res->vlen, "success") ||
         EQ(arena.data + res->off, res->vlen, "1")))
        rc |= PUTS(b, "\"success\"");
    else if (res != NULL && !res->is_none &&
             (EQ(arena.data + res->off, res->vlen, "failed") ||
              EQ(arena.data + res->off, res->vlen, "0")))
        rc |= PUTS(b, "\"failed\"");
    else
        rc |= put_value(b, res);
    rc |= PUTS(b, ",\"op\":");
    rc |= put_value(b, get_field(fields, nf, "op"));
    rc |= PUTS(b, ",\"reason\":");
    rc |= put_value(b, get_field(fields, nf, "reason"));
    rc |= PUTS(b, ",\"resrc\":");
    rc |= put_value(b, get_field(fields, nf, "resrc"));
    static const char *const OUTER_JSON[] = {",\"pid\":", ",\"uid\":", ",\"auid\":",
                                             ",\"ses\":"};
    for (int k = 0; k < 4; k++) {
        rc |= buf_put(b, OUTER_JSON[k], (Py_ssize_t)strlen(OUTER_JSON[k]));
        if (has_int[k])
            rc |= put_int(b, ints[k]);
        else
            rc |= PUTS(b, "null");
    }
    rc |= PUTS(b, ",\"subj\":");
    if (ov[4] == NULL || (ol[4] == 1 && ov[4][0] == '?'))
        rc |= PUTS(b, "null");
    else
        rc |= put_json_string(b, ov[4], ol[4]);
    rc |= PUTS(b, ",\"exe\":");
    rc |= put_value(b, get_field(fields, nf, "exe"));
    rc |= PUTS(b, ",\"fields\":{");
    for (int j = 0; j < nf; j++) {
        if (j)
            rc |= PUTS(b, ",");
        rc |= put_json_string(b, fields[j].key, fields[j].klen);
        rc |= PUTS(b, ":");
        rc |= put_value(b, &fields[j]);
    }
    rc |= PUTS(b, "},\"enrichment\":{");
    for (int j = 0; j < ne; j++) {
        if (j)
            rc |= PUTS(b, ",");
        rc |= put_json_string(b, enr[j].key, enr[j].klen);
        rc |= PUTS(b, ":");
        rc |= put_json_string(b, enr[j].val, enr[j].vlen);
    }
    rc |= PUTS(b, "}}\n");
    return rc ? -1 : 0;
}

/* The module's buffers (arena, out_buf, run_buf) and region_apply's table are its
 * own, and records are built by calling back into Python, which may let another thread
 * run: a second caller meanwhile gets an error instead of overwriting them. */
static int busy = 0;

static int enter(void) {
    if (busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "_fastparse is parsing in another thread: one parsing thread only");
        return -1;
    }
    busy = 1;
    return 0;
}

static PyObject *leave(PyObject *result) {
    busy = 0;
    return result;
}

static PyObject *line_json(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg))
        Py_RETURN_NONE;
    if (not_virt_obj == NULL || not_libvirt_obj == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastparse.setup() was not called");
        return NULL;
    }
    if (busy) /* a region is being read (in another thread): this line takes the Python path */
        Py_RETURN_NONE;
    PyObject *ignored = NULL;
    int rc = convert(PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg), &ignored, 0);
    if (rc < 0)
        return NULL;
    if (rc == FALLBACK)
        Py_RETURN_NONE;
    if (ignored != NULL) {
        Py_INCREF(ignored);
        return ignored;
    }
    return PyBytes_FromStringAndSize(out_buf.data, out_buf.len);
}

/* ---- a whole region: parser.py's candidate_spans, the line count and line_json ---------- */

static int starts(const char *buf, Py_ssize_t at, Py_ssize_t size, const char *lit, Py_ssize_t n) {
    return at + n <= size && memcmp(buf + at, lit, (size_t)n) == 0;
}

/* buf.find(needle, lo, hi) >= 0 */
static int contains(const char *buf, Py_ssize_t lo, Py_ssize_t hi, const char *lit, Py_ssize_t n) {
    return find_str(buf, lo, hi, lit, n) >= 0;
}

#define NEEDLE1 "type=VIRT_"
#define NEEDLE2 "type=UNKNOWN[25"
#define NLEN(lit) ((Py_ssize_t)(sizeof(lit) - 1))

/* parser._other_needle_heads */
static int other_needle_heads(const char *buf, Py_ssize_t pos, Py_ssize_t line_start,
                              Py_ssize_t line_end) {
    Py_ssize_t head = find_byte(buf, line_start, line_end, ' ') + 1;
    if (head <= pos)
        return 0;
    if (starts(buf, pos, line_end, NEEDLE1, NLEN(NEEDLE1)))
        return starts(buf, head, line_end, NEEDLE2, NLEN(NEEDLE2)) &&
               !contains(buf, line_start, head, NEEDLE2, NLEN(NEEDLE2));
    return starts(buf, head, line_end, NEEDLE1, NLEN(NEEDLE1)) &&
           !contains(buf, line_start, head, NEEDLE1, NLEN(NEEDLE1));
}

/* buf.find(needle, from, size) for a needle "type=" + rarer text */
static Py_ssize_t find_needle(const char *buf, Py_ssize_t from, Py_ssize_t size,
                              const char *needle, Py_ssize_t n) {
    Py_ssize_t at = from + 5;
    while (at + (n - 5) <= size) {
        /* memchr on the rare part's first byte ('V', 'U') runs at memory speed */
        const char *hit = memchr(buf + at, needle[5], (size_t)(size - at - (n - 5) + 1));
        if (hit == NULL)
            return -1;
        Py_ssize_t h = hit - buf;
        if (memcmp(hit - 5, needle, (size_t)n) == 0)
            return h - 5;
        at = h + 1;
    }
    return -1;
}

static int flush_run(PyObject *items, Buf *run) {
    if (run->len == 0)
        return 0;
    PyObject *chunk = PyBytes_FromStringAndSize(run->data, run->len);
    if (chunk == NULL)
        return -1;
    run->len = 0;
    int rc = PyList_Append(items, chunk);
    Py_DECREF(chunk);
    return rc;
}

static Buf run_buf = {NULL, 0, 0};

#ifdef HAVE_AVX2_DISPATCH
static int use_avx2 = -1; /* -1: not asked yet */

static int avx2(void) {
    if (use_avx2 < 0) {
        __builtin_cpu_init();
        use_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return use_avx2;
}

/* count_newlines on 32 bytes at a time */
__attribute__((target("avx2"))) static Py_ssize_t count_newlines_avx2(const char *buf,
                                                                     Py_ssize_t n) {
    const __m256i nl = _mm256_set1_epi8('\n');
    Py_ssize_t count = 0, i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(buf + i));
        count += __builtin_popcount((unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(x, nl)));
    }
    for (; i < n; i++)
        count += buf[i] == '\n';
    return count;
}
#endif

/* bytes equal to '\n' in buf[:n] */
static Py_ssize_t count_newlines_portable(const char *buf, Py_ssize_t n);

static Py_ssize_t count_newlines(const char *buf, Py_ssize_t n) {
#ifdef HAVE_AVX2_DISPATCH
    if (avx2())
        return count_newlines_avx2(buf, n);
#endif
    return count_newlines_portable(buf, n);
}

static Py_ssize_t count_newlines_portable(const char *buf, Py_ssize_t n) {
    Py_ssize_t count = 0, i = 0;
    /* eight at a time (exact: no carries between bytes) */
    const unsigned long long ones7 = 0x7f7f7f7f7f7f7f7fULL, nl = 0x0a0a0a0a0a0a0a0aULL;
    for (; i + 8 <= n; i += 8) {
        unsigned long long x;
        memcpy(&x, buf + i, 8);
        x ^= nl; /* a newline byte is now zero */
        unsigned long long y = (x & ones7) + ones7;
        y = ~(y | x | ones7); /* 0x80 in each zero byte, nothing else */
        count += (Py_ssize_t)(((y >> 7) * 0x0101010101010101ULL) >> 56);
    }
    for (; i < n; i++)
        count += buf[i] == '\n';
    return count;
}

/* The scan of a region: where the next candidate line is (parser.candidate_spans). */
typedef struct {
    const char *buf;
    Py_ssize_t size; /* lines end at or before it */
    Py_ssize_t from; /* the search goes on here */
    Py_ssize_t next1, next2; /* portable scan: each needle's next match; -2 unknown, -1 none */
} Scan;

static void scan_init(Scan *sc, const char *buf, Py_ssize_t from, Py_ssize_t size) {
    sc->buf = buf;
    sc->size = size;
    sc->from = from;
    sc->next1 = sc->next2 = -2;
}

/* The leftmost start of either needle in [from, size), the whole needle before size; -1: none.
 * (parser.py's _CANDIDATE regex: `type=VIRT_|type=UNKNOWN\[25`) */
#ifdef HAVE_AVX2_DISPATCH
/* find_either's block loop on 32 starts at once; returns where the scalar tail begins */
__attribute__((target("avx2"))) static Py_ssize_t find_either_avx2(const char *buf,
                                                                  Py_ssize_t i,
                                                                  Py_ssize_t size,
                                                                  Py_ssize_t *found) {
    const __m256i v = _mm256_set1_epi8('V'), under = _mm256_set1_epi8('_');
    const __m256i u = _mm256_set1_epi8('U'), bracket = _mm256_set1_epi8('[');
    for (; i + 44 <= size; i += 32) {
        __m256i at5 = _mm256_loadu_si256((const __m256i *)(buf + i + 5));
        __m256i m1 = _mm256_and_si256(
            _mm256_cmpeq_epi8(at5, v),
            _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(buf + i + 9)), under));
        __m256i m2 = _mm256_and_si256(
            _mm256_cmpeq_epi8(at5, u),
            _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(buf + i + 12)), bracket));
        unsigned mask = (unsigned)_mm256_movemask_epi8(_mm256_or_si256(m1, m2));
        while (mask) {
            Py_ssize_t p = i + __builtin_ctz(mask);
            if (starts(buf, p, size, NEEDLE1, NLEN(NEEDLE1)) ||
                starts(buf, p, size, NEEDLE2, NLEN(NEEDLE2))) {
                *found = p;
                return i;
            }
            mask &= mask - 1;
        }
    }
    *found = -1;
    return i;
}
#endif

static Py_ssize_t find_either(Scan *sc) {
    const char *buf = sc->buf;
    Py_ssize_t i = sc->from, size = sc->size;
#ifdef HAVE_AVX2_DISPATCH
    if (avx2()) {
        Py_ssize_t found;
        i = find_either_avx2(buf, i, size, &found);
        if (found >= 0)
            return found;
        for (; i + NLEN(NEEDLE1) <= size; i++) /* the last few starts */
            if (starts(buf, i, size, NEEDLE1, NLEN(NEEDLE1)) ||
                starts(buf, i, size, NEEDLE2, NLEN(NEEDLE2)))
                return i;
        return -1;
    }
#endif
    /* a needle is searched again only once the scan has passed its last match */
    if (sc->next1 == -2 || (sc->next1 >= 0 && sc->next1 < i))
        sc->next1 = find_needle(buf, i, size, NEEDLE1, NLEN(NEEDLE1));
    if (sc->next2 == -2 || (sc->next2 >= 0 && sc->next2 < i))
        sc->next2 = find_needle(buf, i, size, NEEDLE2, NLEN(NEEDLE2));
    Py_ssize_t n1 = sc->next1, n2 = sc->next2;
    return n1 < 0 ? n2 : (n2 < 0 || n1 < n2 ? n1 : n2);
}

/* 1 and the next candidate line in [*line_start, *line_end), or 0 at the region's end */
static int scan_next(Scan *sc, Py_ssize_t *line_start_out, Py_ssize_t *line_end_out) {
    const char *buf = sc->buf;
    Py_ssize_t size = sc->size;
    while (sc->from < size) {
        /* the leftmost match of either needle (the regex's alternation) */
        Py_ssize_t pos = find_either(sc);
        if (pos < 0) {
            sc->from = size;
            return 0;
        }
        /* the match runs to the end of its line; the next search starts there */
        Py_ssize_t line_end = find_byte(buf, pos, size, '\n');
        if (line_end < 0)
            line_end = size;
        sc->from = line_end;
        Py_ssize_t line_start = pos;
        while (line_start > 0 && buf[line_start - 1] != '\n')
            line_start--;
        if (!(pos == line_start ||
              (starts(buf, line_start, size, "node=", 5) &&
               (find_byte(buf, line_start, pos, ' ') == pos - 1 ||
                other_needle_heads(buf, pos, line_start, line_end)))))
            continue;
        *line_start_out = line_start;
        *line_end_out = line_end;
        return 1;
    }
    return 0;
}

static PyObject *region(PyObject *args, int want_record) {
    Py_buffer view;
    Py_ssize_t end, max_len, start = 0;
    if (!PyArg_ParseTuple(args, "y*nn|n", &view, &end, &max_len, &start))
        return NULL;
    if (start < 0 || start > view.len)
        start = view.len;
    if (not_virt_obj == NULL || not_libvirt_obj == NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "_fastparse.setup() was not called");
        return NULL;
    }
    const char *buf = view.buf;
    Py_ssize_t size = end < view.len ? end : view.len;
    Py_ssize_t nlines = 0, nspans = 0, nrec = 0, nvirt = 0, nlib = 0;
    Py_ssize_t line_start, line_end;
    Scan sc;
    PyObject *items = PyList_New(0);
    if (items == NULL)
        goto fail;
    /* newlines from start to the buffer's end, as parser.py counts them (buf[end:] holds none) */
    nlines = count_newlines(buf + start, view.len - start);
    run_buf.len = 0;
    scan_init(&sc, buf, start, size);
    while (scan_next(&sc, &line_start, &line_end)) {
        nspans++;
        int rc = FALLBACK;
        PyObject *ignored = NULL;
        if (want_record == WANT_LINES && line_end - line_start <= max_len) {
            /* the candidate line itself, for a reader in another process to parse */
            if (buf_put(&run_buf, buf + line_start, line_end - line_start) < 0 ||
                buf_put(&run_buf, "\n", 1) < 0)
                goto fail;
            continue;
        }
        if (line_end - line_start <= max_len) {
            rc = convert(buf + line_start, line_end - line_start, &ignored, want_record);
            if (rc < 0)
                goto fail;
        }
        if (rc == FALLBACK) {
            if (flush_run(items, &run_buf) < 0)
                goto fail;
            PyObject *span = Py_BuildValue("(nn)", line_start, line_end);
            if (span == NULL)
                goto fail;
            int arc = PyList_Append(items, span);
            Py_DECREF(span);
            if (arc < 0)
                goto fail;
        } else if (ignored == not_virt_obj) {
            nvirt++;
        } else if (ignored == not_libvirt_obj) {
            nlib++;
        } else if (want_record) {
            nrec++;
            int arc = PyList_Append(items, built_record);
            Py_CLEAR(built_record);
            if (arc < 0)
                goto fail;
        } else {
            nrec++;
            if (buf_put(&run_buf, out_buf.data, out_buf.len) < 0)
                goto fail;
        }
    }
    if (flush_run(items, &run_buf) < 0)
        goto fail;
    PyBuffer_Release(&view);
    return Py_BuildValue("(nnnnnN)", nlines, nspans, nrec, nvirt, nlib, items);
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(items);
    return NULL;
}

static PyObject *region_json(PyObject *self, PyObject *args) {
    (void)self;
    return enter() < 0 ? NULL : leave(region(args, WANT_JSON));
}

static PyObject *region_lines(PyObject *self, PyObject *args) {
    (void)self;
    return enter() < 0 ? NULL : leave(region(args, WANT_LINES));
}

static PyObject *region_records(PyObject *self, PyObject *args) {
    (void)self;
    if (make_record_obj == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastparse.setup() got no make_record");
        return NULL;
    }
    return enter() < 0 ? NULL : leave(region(args, WANT_RECORD));
}

/* ---- records (parse_line's AuditRecord) -------------------------------------------------- */

/* str of bytes as parse_line has it: the line decoded utf-8/surrogateescape (ASCII here),
 * hex values decoded the same way; interned, so repeated keys and values share memory. */
static PyObject *text_of(const char *p, Py_ssize_t n) {
    PyObject *u = PyUnicode_DecodeUTF8(p, n, "surrogateescape");
    if (u != NULL)
        PyUnicode_InternInPlace(&u);
    return u;
}

/* pid, uid, auid and ses repeat from record to record (the daemon's): the last int object
 * of each is reused, as the Python path shares them through its cache of outer fields. */
static PyObject *last_int[4] = {NULL, NULL, NULL, NULL};
static long long last_val[4];

static PyObject *int_or_none(int k, int has, long long v) {
    if (!has)
        Py_RETURN_NONE;
    if (last_int[k] != NULL && last_val[k] == v)
        return Py_NewRef(last_int[k]);
    PyObject *obj = PyLong_FromLongLong(v);
    if (obj != NULL) {
        Py_XSETREF(last_int[k], Py_NewRef(obj));
        last_val[k] = v;
    }
    return obj;
}

static int build_record(const char *type_name, Py_ssize_t type_len, long type_id, double t,
                        long long serial, const char *node, Py_ssize_t node_len, Field *fields,
                        int nf, const long long *ints, const int *has_int, const char *subj,
                        Py_ssize_t subj_len, const Pair *enr, int ne) {
    PyObject *args[12] = {NULL};
    PyObject *fdict = NULL, *edict = NULL;
    int rc = -1;
    args[0] = text_of(type_name, type_len);
    args[1] = PyLong_FromLong(type_id);
    args[2] = PyFloat_FromDouble(t);
    args[3] = PyLong_FromLongLong(serial);
    if (node == NULL) {
        args[4] = Py_NewRef(Py_None);
    } else {
        args[4] = text_of(node, node_len);
    }
    for (int k = 0; k < 4; k++)
        args[5 + k] = int_or_none(k, has_int[k], ints[k]);
    args[9] = subj == NULL ? Py_NewRef(Py_None) : text_of(subj, subj_len);
    for (int k = 0; k < 10; k++)
        if (args[k] == NULL)
            goto done;
    fdict = PyDict_New();
    edict = PyDict_New();
    if (fdict == NULL || edict == NULL)
        goto done;
    for (int j = 0; j < nf; j++) {
        PyObject *key = text_of(fields[j].key, fields[j].klen);
        PyObject *val = fields[j].is_none ? Py_NewRef(Py_None)
                                          : text_of(arena.data + fields[j].off, fields[j].vlen);
        int drc = (key == NULL || val == NULL) ? -1 : PyDict_SetItem(fdict, key, val);
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (drc < 0)
            goto done;
    }
    for (int j = 0; j < ne; j++) {
        PyObject *key = text_of(enr[j].key, enr[j].klen);
        PyObject *val = text_of(enr[j].val, enr[j].vlen);
        int drc = (key == NULL || val == NULL) ? -1 : PyDict_SetItem(edict, key, val);
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (drc < 0)
            goto done;
    }
    args[10] = fdict;
    args[11] = edict;
    fdict = edict = NULL;
    built_record = PyObject_Vectorcall(make_record_obj, args, 12, NULL);
    rc = built_record == NULL ? -1 : 0;
done:
    for (int k = 0; k < 12; k++)
        Py_XDECREF(args[k]);
    Py_XDECREF(fdict);
    Py_XDECREF(edict);
    return rc;
}

/* ---- region_apply: records applied to the guest table straight from their fields ---------
 *
 * state.py's GuestTable._apply for the table `monitord replay` builds (no kept events):
 * the counters, the label bounds, the guest's place in the table and, for resource
 * records (most of a log), the guest's update, all without building an AuditRecord.
 * Every other record (lifecycle, security label, the rarer resource forms) is built as
 * an AuditRecord and handed to GuestTable._update, so the Python code stays the
 * reference; what stays here is checked against it record for record
 * (tests/test_fastapply.py). The tables it needs (which resrc changes which list, which
 * forms go to Python) come from GuestTable.fast_context(), not copies in C.
 */

typedef struct {
    PyObject *obj;
    Py_ssize_t len;
    char bytes[96];
} TextSlot;

/* text_of, remembering the last value of one field: uuid, vm and virt repeat a lot */
static PyObject *cached_text(TextSlot *slot, const char *p, Py_ssize_t n) {
    if (slot->obj != NULL && slot->len == n && same(slot->bytes, p, n))
        return Py_NewRef(slot->obj);
    PyObject *u = text_of(p, n);
    if (u != NULL && n <= (Py_ssize_t)sizeof slot->bytes) {
        Py_XSETREF(slot->obj, Py_NewRef(u));
        slot->len = n;
        memcpy(slot->bytes, p, (size_t)n);
    }
    return u;
}

enum { T_TYPE, T_RES, T_VIRT, T_OP, T_REASON, T_RESRC, T_MODEL, T_UUID, T_VM, T_VALUE, T_SLOTS };
static TextSlot slots[T_SLOTS];

/* fields.get(key) as the record's dict holds it: the str, or None for `?` and absent keys */
static PyObject *value_of(int slot, Field *f) {
    if (f == NULL || f->is_none)
        return Py_NewRef(Py_None);
    return cached_text(&slots[slot], arena.data + f->off, f->vlen);
}

#define VALUE_IS(f, lit) ((f) != NULL && !(f)->is_none && EQ(arena.data + (f)->off, (f)->vlen, lit))

/* GuestTable.fast_context(), unpacked for one region_apply call (borrowed references) */
typedef struct {
    PyObject *guests;   /* OrderedDict uuid -> Guest */
    PyObject *counters[4]; /* records, operations, resources, labels */
    PyObject *seen;     /* LabelBound.seen: label -> set of values */
    Py_ssize_t limit;   /* LabelBound.limit */
    PyObject *add;      /* GuestTable._add(uuid) -> Guest */
    PyObject *update;   /* GuestTable._update(guest, record, result) */
    PyObject *move;     /* guests.move_to_end */
    PyObject *lists;    /* resrc -> index of the device list its old-X/new-X change */
    PyObject *counts;   /* resrc -> (attribute, factor): mem, vcpu, iothread */
    PyObject *python;   /* resrc values whose update GuestTable._update does */
    PyObject *control;  /* GuestTable._control(guest, op, vm_pid, time, failed) */
    PyObject *share;    /* the table's _Packer.share: one object for equal labels */
    PyObject *last_uuid; /* owned: the guest moved to the end last in this call */
    double latest;
    int have_latest;
} Table;

static Table tab;

static PyObject *S_success, *S_failed, *S_absent, *S_other, *S_running;
static PyObject *L_virt, *L_op, *L_reason, *L_resrc, *L_model;
static PyObject *A_row, *A_events, *A_name, *A_virt, *A_last_event_time, *A_failures, *A_state,
    *A_phase_open, *A_devices, *A_last_op, *A_last_reason, *A_last_result, *M_begin_phase,
    *M_set_label;

static int intern_names(void) {
    if (S_success != NULL)
        return 0;
#define INTERN(var, text)                                     \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return -1;
    INTERN(S_success, "success")
    INTERN(S_failed, "failed")
    INTERN(S_absent, "")
    INTERN(S_other, "other")
    INTERN(S_running, "running")
    INTERN(L_virt, "virt")
    INTERN(L_op, "op")
    INTERN(L_reason, "reason")
    INTERN(L_resrc, "resrc")
    INTERN(L_model, "model")
    INTERN(A_row, "row")
    INTERN(A_events, "events")
    INTERN(A_name, "name")
    INTERN(A_virt, "virt")
    INTERN(A_last_event_time, "last_event_time")
    INTERN(A_failures, "failures")
    INTERN(A_state, "state")
    INTERN(A_phase_open, "phase_open")
    INTERN(A_devices, "devices")
    INTERN(A_last_op, "last_op")
    INTERN(A_last_reason, "last_reason")
    INTERN(A_last_result, "last_result")
    INTERN(M_begin_phase, "begin_phase")
    INTERN(M_set_label, "set_label")
#undef INTERN
    return 0;
}

/* LabelBound.__call__(label, value): a new reference */
static PyObject *bound(PyObject *label, PyObject *value) {
    if (value == Py_None)
        return Py_NewRef(S_absent);
    PyObject *values = PyDict_GetItemWithError(tab.seen, label);
    if (values == NULL) {
        if (PyErr_Occurred())
            return NULL;
        values = PySet_New(NULL);
        if (values == NULL)
            return NULL;
        int rc = PyDict_SetItem(tab.seen, label, values);
        Py_DECREF(values); /* the dict holds it */
        if (rc < 0)
            return NULL;
    }
    int has = PySet_Contains(values, value);
    if (has < 0)
        return NULL;
    if (has)
        return Py_NewRef(value);
    if (PySet_GET_SIZE(values) >= tab.limit)
        return Py_NewRef(S_other);
    if (PySet_Add(values, value) < 0)
        return NULL;
    return Py_NewRef(value);
}

/* counter[key] = counter.get(key, 0) + 1; steals key */
static int count_key(PyObject *counter, PyObject *key) {
    if (key == NULL)
        return -1;
    PyObject *old = PyDict_GetItemWithError(counter, key);
    PyObject *n;
    if (old != NULL) {
        long long v = PyLong_AsLongLong(old);
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        n = PyLong_FromLongLong(v + 1);
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    } else {
        n = PyLong_FromLong(1);
    }
    int rc = n == NULL ? -1 : PyDict_SetItem(counter, key, n);
    Py_XDECREF(n);
    Py_DECREF(key);
    return rc;
}

/* A Guest's attributes are __slots__ members: read and written at their offset (what their
 * member descriptors do, without the attribute lookup); anything else by name. */
#define SLOT_CACHE 32
static PyObject *slot_type = NULL; /* the type the offsets are for */
static PyObject *slot_names[SLOT_CACHE];
static Py_ssize_t slot_offsets[SLOT_CACHE]; /* -1: not a plain slot */
static int slot_count = 0;

static Py_ssize_t slot_offset(PyObject *g, PyObject *name) {
    if ((PyObject *)Py_TYPE(g) != slot_type) {
        Py_XSETREF(slot_type, Py_NewRef((PyObject *)Py_TYPE(g)));
        while (slot_count > 0)
            Py_CLEAR(slot_names[--slot_count]);
    }
    for (int i = 0; i < slot_count; i++)
        if (slot_names[i] == name) /* interned names */
            return slot_offsets[i];
    Py_ssize_t offset = -1;
    PyObject *descr = PyObject_GetAttr(slot_type, name);
    if (descr == NULL) {
        PyErr_Clear();
    } else {
        if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
                offset = m->offset;
        }
        Py_DECREF(descr);
    }
    if (slot_count < SLOT_CACHE) { /* held: the address is compared, so it must not be reused */
        slot_names[slot_count] = Py_NewRef(name);
        slot_offsets[slot_count++] = offset;
    }
    return offset;
}

/* getattr(g, name): a new reference */
static PyObject *get_attr(PyObject *g, PyObject *name) {
    Py_ssize_t off = slot_offset(g, name);
    if (off > 0) {
        PyObject *v = *(PyObject **)((char *)g + off);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(g, name);
}

/* setattr(g, name, value), stealing value */
static int set_attr(PyObject *g, PyObject *name, PyObject *value) {
    if (value == NULL)
        return -1;
    Py_ssize_t off = slot_offset(g, name);
    if (off > 0) {
        PyObject **slot = (PyObject **)((char *)g + off);
        Py_XSETREF(*slot, value);
        return 0;
    }
    int rc = PyObject_SetAttr(g, name, value);
    Py_DECREF(value);
    return rc;
}

/* Guest.add_device / remove_device: the device list at index, a sorted tuple, with value
 * joining (add) or leaving it; the guest's devices tuple is replaced only on a change. */
static int change_device(PyObject *g, Py_ssize_t index, Field *f, int add) {
    if (f == NULL || f->is_none)
        return 0;
    PyObject *value = value_of(T_VALUE, f);
    PyObject *devices = value == NULL ? NULL : get_attr(g, A_devices);
    PyObject *items2 = NULL, *devices2 = NULL;
    int rc = -1;
    if (devices == NULL)
        goto done;
    if (!PyTuple_Check(devices) || index >= PyTuple_GET_SIZE(devices) ||
        !PyTuple_Check(PyTuple_GET_ITEM(devices, index))) {
        PyErr_SetString(PyExc_RuntimeError, "Guest.devices is not a tuple of tuples");
        goto done;
    }
    PyObject *items = PyTuple_GET_ITEM(devices, index);
    Py_ssize_t n = PyTuple_GET_SIZE(items), at = n, found = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int cmp = PyUnicode_Compare(PyTuple_GET_ITEM(items, i), value);
        if (cmp == -1 && PyErr_Occurred())
            goto done;
        if (cmp == 0) {
            found = i;
            break;
        }
        if (cmp > 0 && at == n)
            at = i; /* the sorted place of a new value */
    }
    if (add ? found >= 0 : found < 0) {
        rc = 0; /* already there / not there: nothing changes */
        goto done;
    }
    items2 = PyTuple_New(add ? n + 1 : n - 1);
    if (items2 == NULL)
        goto done;
    for (Py_ssize_t i = 0, j = 0; i < n; i++) {
        if (add && i == at)
            PyTuple_SET_ITEM(items2, j++, Py_NewRef(value));
        if (!add && i == found)
            continue;
        PyTuple_SET_ITEM(items2, j++, Py_NewRef(PyTuple_GET_ITEM(items, i)));
    }
    if (add && at == n)
        PyTuple_SET_ITEM(items2, n, Py_NewRef(value));
    Py_ssize_t nd = PyTuple_GET_SIZE(devices);
    devices2 = PyTuple_New(nd);
    if (devices2 == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < nd; i++)
        PyTuple_SET_ITEM(devices2, i, Py_NewRef(i == index ? items2 : PyTuple_GET_ITEM(devices, i)));
    rc = PyObject_SetAttr(g, A_devices, devices2);
done:
    Py_XDECREF(items2);
    Py_XDECREF(devices2);
    Py_XDECREF(devices);
    Py_XDECREF(value);
    return rc;
}

/* a count as to_int() reads it, for plain decimal text only: 1 = number, 0 = ask Python */
static int plain_count(Field *f, long long *out) {
    const char *v = arena.data + f->off;
    Py_ssize_t n = f->vlen;
    if (n < 1 || n > 15)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    return int_of(v, n, out) == 1;
}

/* GuestTable._update up to the record's kind (no events kept): 1 = go on, 0 = done, -1 */
static int update_common(PyObject *g, double t, PyObject *result, PyObject *virt_raw,
                         Field *fields, int nf, int control) {
    if (set_attr(g, A_row, Py_NewRef(Py_None)) < 0)
        return -1;
    PyObject *events = get_attr(g, A_events);
    if (events == NULL)
        return -1;
    int rc = PyList_Check(events) && PyList_GET_SIZE(events) > 0
                 ? PyList_SetSlice(events, 0, PyList_GET_SIZE(events), NULL)
                 : 0;
    Py_DECREF(events);
    if (rc < 0)
        return -1;
    Field *vm = get_field(fields, nf, "vm");
    if (vm != NULL && !vm->is_none && set_attr(g, A_name, value_of(T_VM, vm)) < 0)
        return -1;
    if (virt_raw != Py_None && set_attr(g, A_virt, Py_NewRef(virt_raw)) < 0)
        return -1;
    PyObject *last = get_attr(g, A_last_event_time);
    if (last == NULL)
        return -1;
    int later = 1;
    if (last != Py_None) {
        double lt = PyFloat_AsDouble(last);
        later = !(lt == -1.0 && PyErr_Occurred()) && t > lt;
    }
    Py_DECREF(last);
    if (PyErr_Occurred())
        return -1;
    if (later && set_attr(g, A_last_event_time, PyFloat_FromDouble(t)) < 0)
        return -1;
    if (result == S_failed) {
        PyObject *n = get_attr(g, A_failures);
        PyObject *one = PyLong_FromLong(1);
        PyObject *sum = (n && one) ? PyNumber_Add(n, one) : NULL;
        Py_XDECREF(n);
        Py_XDECREF(one);
        if (set_attr(g, A_failures, sum) < 0)
            return -1;
    }
    /* a failed resource or label record changes nothing more; a lifecycle one goes on */
    return control || result == S_success;
}

/* the rest of GuestTable._update for VIRT_CONTROL: last op, reason and result; _control */
static int update_control(PyObject *g, double t, PyObject *result, PyObject *op,
                          PyObject *reason, PyObject *vm_pid) {
    if (set_attr(g, A_last_op, Py_NewRef(op)) < 0 ||
        set_attr(g, A_last_reason, Py_NewRef(reason)) < 0 ||
        set_attr(g, A_last_result, Py_NewRef(result == S_absent ? Py_None : result)) < 0)
        return -1;
    PyObject *when = PyFloat_FromDouble(t);
    if (when == NULL)
        return -1;
    PyObject *out = PyObject_CallFunctionObjArgs(tab.control, g, op, vm_pid, when,
                                                 result == S_success ? Py_False : Py_True, NULL);
    Py_DECREF(when);
    Py_XDECREF(out);
    return out == NULL ? -1 : 0;
}

/* the rest of GuestTable._update for VIRT_MACHINE_ID: the model's label */
static int update_label(PyObject *g, Field *fields, int nf) {
    PyObject *triple = PyTuple_New(3);
    if (triple == NULL)
        return -1;
    PyTuple_SET_ITEM(triple, 0, value_of(T_MODEL, get_field(fields, nf, "model")));
    PyTuple_SET_ITEM(triple, 1, value_of(T_VALUE, get_field(fields, nf, "vm-ctx")));
    PyTuple_SET_ITEM(triple, 2, value_of(T_VALUE, get_field(fields, nf, "img-ctx")));
    for (int k = 0; k < 3; k++)
        if (PyTuple_GET_ITEM(triple, k) == NULL) {
            Py_DECREF(triple);
            return -1;
        }
    PyObject *shared = PyObject_CallOneArg(tab.share, triple);
    Py_DECREF(triple);
    if (shared == NULL)
        return -1;
    PyObject *out = PyObject_CallMethodOneArg(g, M_set_label, shared);
    Py_DECREF(shared);
    Py_XDECREF(out);
    return out == NULL ? -1 : 0;
}

/* the rest of GuestTable._update for a resource record that succeeded */
static int update_resource(PyObject *g, Field *fields, int nf, Field *resrc_f, PyObject *resrc,
                           PyObject *counted, long long count) {
    Field *reason = get_field(fields, nf, "reason");
    if (VALUE_IS(reason, "start")) {
        PyObject *state = get_attr(g, A_state);
        if (state == NULL)
            return -1;
        int running = PyUnicode_Check(state) && PyUnicode_Compare(state, S_running) == 0;
        Py_DECREF(state);
        if (!running) {
            PyObject *phase = get_attr(g, A_phase_open);
            int open = phase == NULL ? -1 : PyObject_IsTrue(phase);
            Py_XDECREF(phase);
            if (open < 0)
                return -1;
            if (!open) {
                PyObject *out = PyObject_CallMethodNoArgs(g, M_begin_phase);
                if (out == NULL)
                    return -1;
                Py_DECREF(out);
            }
        }
    }
    if (resrc_f == NULL || resrc_f->is_none)
        return 0; /* OtherResource */
    if (VALUE_IS(resrc_f, "net") && get_field(fields, nf, "net") != NULL &&
        get_field(fields, nf, "old-net") == NULL)
        return 0; /* NetOpen */
    if (counted != NULL) { /* (attribute, factor); count < 0: new-X absent or `?` */
        if (count < 0)
            return 0;
        long long factor = PyLong_AsLongLong(PyTuple_GET_ITEM(counted, 1));
        if (factor == -1 && PyErr_Occurred())
            return -1;
        return set_attr(g, PyTuple_GET_ITEM(counted, 0), PyLong_FromLongLong(count * factor));
    }
    if (VALUE_IS(resrc_f, "cgroup"))
        return 0; /* CgroupAcl */
    /* DeviceChange: old-X leaves its list, new-X joins it */
    char key[80];
    Py_ssize_t rl = resrc_f->vlen;
    if (rl > (Py_ssize_t)sizeof key - 4)
        return 0; /* no list has so long a name */
    PyObject *index = PyDict_GetItemWithError(tab.lists, resrc);
    if (index == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t i = PyLong_AsSsize_t(index);
    if (i < 0)
        return PyErr_Occurred() ? -1 : 0;
    memcpy(key, "old-", 4);
    memcpy(key + 4, arena.data + resrc_f->off, (size_t)rl);
    Field *old = get_field_n(fields, nf, key, rl + 4);
    memcpy(key, "new-", 4);
    Field *new = get_field_n(fields, nf, key, rl + 4);
    if (change_device(g, i, old, 0) < 0)
        return -1;
    return change_device(g, i, new, 1);
}

/* the value of f as to_int() reads plain decimal text; 0 with *out = -1 for None (absent,
 * `?`); -2: anything else, for Python to read */
static int field_int(Field *f, long long *out) {
    *out = -1;
    if (f == NULL || f->is_none)
        return 0;
    return plain_count(f, out) ? 0 : -2;
}

static int apply_line(const char *type_name, Py_ssize_t type_len, long type_id, double t,
                      long long serial, const char *node, Py_ssize_t node_len, Field *fields,
                      int nf, const long long *ints, const int *has_int, const char *subj,
                      Py_ssize_t subj_len, const Pair *enr, int ne) {
    int rc = -1;
    PyObject *result = NULL, *tname = NULL, *virt_raw = NULL, *virt = NULL, *a = NULL;
    PyObject *b = NULL, *c = NULL, *resrc = NULL, *uuid = NULL, *g = NULL, *out = NULL;
    PyObject *a_raw = NULL; /* op, as the record has it */
    if (!tab.have_latest || t > tab.latest) {
        tab.latest = t;
        tab.have_latest = 1;
    }
    /* AuditRecord.result */
    Field *res = get_field(fields, nf, "res");
    if (VALUE_IS(res, "success") || VALUE_IS(res, "1"))
        result = Py_NewRef(S_success);
    else if (VALUE_IS(res, "failed") || VALUE_IS(res, "0"))
        result = Py_NewRef(S_failed);
    else if (res == NULL || res->is_none)
        result = Py_NewRef(S_absent);
    else
        result = value_of(T_RES, res);
    tname = cached_text(&slots[T_TYPE], type_name, type_len);
    virt_raw = value_of(T_VIRT, get_field(fields, nf, "virt"));
    if (result == NULL || tname == NULL || virt_raw == NULL)
        goto done;
    if ((virt = bound(L_virt, virt_raw)) == NULL)
        goto done;
    if (count_key(tab.counters[0], PyTuple_Pack(3, tname, virt, result)) < 0)
        goto done;
    Field *resrc_f = get_field(fields, nf, "resrc");
    if (type_id == 2500 || type_id == 2501) {
        int control = type_id == 2500;
        a = control ? value_of(T_OP, get_field(fields, nf, "op")) : value_of(T_RESRC, resrc_f);
        c = a == NULL ? NULL : value_of(T_REASON, get_field(fields, nf, "reason"));
        if (c == NULL)
            goto done;
        if (control)
            a_raw = Py_NewRef(a);
        else
            resrc = Py_NewRef(a);
        Py_SETREF(a, bound(control ? L_op : L_resrc, a));
        if (a == NULL)
            goto done;
        if ((b = bound(L_reason, c)) == NULL)
            goto done;
        if (count_key(tab.counters[control ? 1 : 2], PyTuple_Pack(4, virt, a, b, result)) < 0)
            goto done;
    } else if (type_id == 2502) {
        if ((c = value_of(T_MODEL, get_field(fields, nf, "model"))) == NULL)
            goto done;
        if ((a = bound(L_model, c)) == NULL)
            goto done;
        if (count_key(tab.counters[3], PyTuple_Pack(3, virt, a, result)) < 0)
            goto done;
    }
    if ((uuid = value_of(T_UUID, get_field(fields, nf, "uuid"))) == NULL)
        goto done;
    if (uuid == Py_None) {
        rc = 0;
        goto done;
    }
    g = PyDict_GetItemWithError(tab.guests, uuid);
    if (g != NULL) {
        Py_INCREF(g);
        /* already last when the previous record was this guest's */
        if (uuid != tab.last_uuid) {
            if ((out = PyObject_CallOneArg(tab.move, uuid)) == NULL)
                goto done;
        }
    } else if (PyErr_Occurred() || (g = PyObject_CallOneArg(tab.add, uuid)) == NULL) {
        goto done;
    }
    Py_XSETREF(tab.last_uuid, Py_NewRef(uuid));
    /* the guest's update here, unless the record's form is one GuestTable._update must read */
    PyObject *counted = NULL;
    long long number = -1;
    int here = type_id >= 2500 && type_id <= 2502;
    if (type_id == 2500) {
        here = field_int(get_field(fields, nf, "vm-pid"), &number) == 0;
    } else if (type_id == 2501 && resrc != Py_None) {
        int slow = PySet_Contains(tab.python, resrc);
        if (slow < 0)
            goto done;
        here = !slow;
        counted = here ? PyDict_GetItemWithError(tab.counts, resrc) : NULL;
        if (counted == NULL && PyErr_Occurred())
            goto done;
        if (counted != NULL) {
            char key[24];
            Py_ssize_t rl = resrc_f->vlen;
            Field *nv = NULL;
            if (rl <= 16) {
                memcpy(key, "new-", 4);
                memcpy(key + 4, arena.data + resrc_f->off, (size_t)rl);
                nv = get_field_n(fields, nf, key, rl + 4);
            }
            here = field_int(nv, &number) == 0; /* signs, spaces, huge numbers: to_int decides */
        }
    }
    if (here) {
        int go = update_common(g, t, result, virt_raw, fields, nf, type_id == 2500);
        if (go <= 0) {
            rc = go;
            goto done;
        }
        if (type_id == 2500) {
            PyObject *pid = number < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(number);
            rc = pid == NULL ? -1 : update_control(g, t, result, a_raw, c, pid);
            Py_XDECREF(pid);
        } else if (type_id == 2502) {
            rc = update_label(g, fields, nf);
        } else {
            rc = update_resource(g, fields, nf, resrc_f, resrc, counted, number);
        }
        goto done;
    }
    if (build_record(type_name, type_len, type_id, t, serial, node, node_len, fields, nf, ints,
                     has_int, subj, subj_len, enr, ne) < 0)
        goto done;
    out = PyObject_CallFunctionObjArgs(tab.update, g, built_record, result, NULL);
    Py_CLEAR(built_record);
    rc = out == NULL ? -1 : 0;
done:
    Py_XDECREF(result);
    Py_XDECREF(tname);
    Py_XDECREF(virt_raw);
    Py_XDECREF(virt);
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    Py_XDECREF(resrc);
    Py_XDECREF(a_raw);
    Py_XDECREF(uuid);
    Py_XDECREF(g);
    Py_XDECREF(out);
    return rc;
}

/* region_apply(buf, start, end, max_line_length, context) */
static PyObject *region_apply_body(PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end, max_len;
    PyObject *ctx;
    if (!PyArg_ParseTuple(args, "y*nnnO!", &view, &start, &end, &max_len, &PyTuple_Type, &ctx))
        return NULL;
    PyObject *result = NULL;
    if (not_virt_obj == NULL || make_record_obj == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastparse.setup() was not called");
        goto out;
    }
    if (PyTuple_GET_SIZE(ctx) != 14) {
        PyErr_SetString(PyExc_TypeError, "region_apply: context is not GuestTable.fast_context()");
        goto out;
    }
    if (intern_names() < 0)
        goto out;
    tab.guests = PyTuple_GET_ITEM(ctx, 0);
    for (int k = 0; k < 4; k++)
        tab.counters[k] = PyTuple_GET_ITEM(ctx, 1 + k);
    tab.seen = PyTuple_GET_ITEM(ctx, 5);
    tab.limit = PyLong_AsSsize_t(PyTuple_GET_ITEM(ctx, 6));
    tab.add = PyTuple_GET_ITEM(ctx, 7);
    tab.update = PyTuple_GET_ITEM(ctx, 8);
    tab.lists = PyTuple_GET_ITEM(ctx, 9);
    tab.counts = PyTuple_GET_ITEM(ctx, 10);
    tab.python = PyTuple_GET_ITEM(ctx, 11);
    tab.control = PyTuple_GET_ITEM(ctx, 12);
    tab.share = PyTuple_GET_ITEM(ctx, 13);
    if (tab.limit == -1 && PyErr_Occurred())
        goto out;
    for (int k = 0; k < 4; k++)
        if (!PyDict_Check(tab.counters[k]))
            goto bad;
    if (!PyDict_Check(tab.guests) || !PyDict_Check(tab.seen) || !PyDict_Check(tab.lists) ||
        !PyDict_Check(tab.counts) || !PyAnySet_Check(tab.python))
        goto bad;
    tab.move = PyObject_GetAttrString(tab.guests, "move_to_end");
    if (tab.move == NULL)
        goto out;
    tab.have_latest = 0;
    tab.latest = 0.0;
    tab.last_uuid = NULL;
    const char *buf = view.buf;
    Py_ssize_t size = end < view.len ? end : view.len;
    Py_ssize_t nspans = 0, nrec = 0, nvirt = 0, nlib = 0, stop = -1, stop_end = -1;
    Py_ssize_t line_start, line_end;
    Scan sc;
    scan_init(&sc, buf, start < 0 ? 0 : start, size);
    while (scan_next(&sc, &line_start, &line_end)) {
        nspans++;
        int rc = FALLBACK;
        PyObject *ignored = NULL;
        if (line_end - line_start <= max_len) {
            rc = convert(buf + line_start, line_end - line_start, &ignored, WANT_APPLY);
            if (rc < 0)
                goto out;
        }
        if (rc == FALLBACK) {
            /* the Python path reads this line; the caller comes back after it */
            stop = line_start;
            stop_end = line_end;
            break;
        }
        if (ignored == not_virt_obj)
            nvirt++;
        else if (ignored == not_libvirt_obj)
            nlib++;
        else
            nrec++;
    }
    PyObject *latest = tab.have_latest ? PyFloat_FromDouble(tab.latest) : Py_NewRef(Py_None);
    if (latest != NULL)
        result = Py_BuildValue("(nnnnnnN)", nspans, nrec, nvirt, nlib, stop, stop_end, latest);
    goto out;
bad:
    PyErr_SetString(PyExc_TypeError, "region_apply: context is not GuestTable.fast_context()");
out:
    Py_CLEAR(tab.move);
    Py_CLEAR(tab.last_uuid);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *region_apply(PyObject *self, PyObject *args) {
    (void)self;
    return enter() < 0 ? NULL : leave(region_apply_body(args));
}

static PyObject *count_lines(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &end))
        return NULL;
    if (start < 0)
        start = 0;
    if (end > view.len)
        end = view.len;
    Py_ssize_t n = end > start ? count_newlines((const char *)view.buf + start, end - start) : 0;
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
}

static PyObject *setup(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *nv, *nl, *mk = NULL;
    if (!PyArg_ParseTuple(args, "OO|O", &nv, &nl, &mk))
        return NULL;
    if (mk != NULL) {
        Py_INCREF(mk);
        Py_XSETREF(make_record_obj, mk);
    }
    Py_INCREF(nv);
    Py_INCREF(nl);
    Py_XSETREF(not_virt_obj, nv);
    Py_XSETREF(not_libvirt_obj, nl);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"line_json", line_json, METH_O,
     "line_json(line) -> JSON line bytes, the ignored marker, or None (use the Python path)"},
    {"region_json", region_json, METH_VARARGS,
     "region_json(buf, end, max_line_length) -> (lines, candidates, records, not_virt, "
     "not_libvirt, items): items are runs of JSON lines (bytes) and (start, stop) spans of "
     "the lines the Python path must convert"},
    {"region_records", region_records, METH_VARARGS,
     "region_records(buf, end, max_line_length): region_json's result with AuditRecords "
     "(built by make_record) for the JSON runs"},
    {"region_lines", region_lines, METH_VARARGS,
     "region_lines(buf, end, max_line_length): region_json's result with runs of the candidate "
     "lines themselves (each with its newline); spans only for lines over max_line_length"},
    {"region_apply", region_apply, METH_VARARGS,
     "region_apply(buf, start, end, max_line_length, context) -> (candidates, records, "
     "not_virt, not_libvirt, stop, stop_end, latest): candidate lines from start applied to "
     "the guest table of context (GuestTable.fast_context()); stops before the first line the "
     "Python path must read ([stop, stop_end), -1 when none); latest: the newest record time"},
    {"count_lines", count_lines, METH_VARARGS,
     "count_lines(buf, start, end) -> the number of newline bytes in buf[start:end]"},
    {"setup", setup, METH_VARARGS, "setup(not_virt, not_libvirt[, make_record]): the parser's markers and record factory"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastparse", "C accelerator of monitord's parse path", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastparse(void) { return PyModule_Create(&module); }
