/* Optional accelerator for `monitord parse`: one candidate audit line -> its JSON line.
 *
 * line_json(line) returns exactly the bytes the pure-Python path produces
 * (parse_line + RecordEncoder, plus "\n"), the parser's NOT_VIRT / NOT_LIBVIRT
 * object for ignored lines, or None: "use the Python path for this line".
 * Only common shapes are handled here (printable ASCII, at most one 0x1D
 * after the stamp, small integers); anything else, and every line that would
 * be a ParseError, returns None, so the Python code stays the reference for
 * every unusual case and for the exact error reasons.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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
        if (r->len == n && r->name[0] == k[0] && memcmp(r->name, k, (size_t)n) == 0)
            return r->encoded;
    return n >= 4 && (memcmp(k, "old-", 4) == 0 || memcmp(k, "new-", 4) == 0);
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
        Py_ssize_t te = find_byte(s, i, n, ' ');
        if (te < 0)
            te = n;
        const char *tok = s + i;
        Py_ssize_t tl = te - i;
        i = te + 1;
        if (tl == 0)
            continue;
        const char *eqp = memchr(tok, '=', (size_t)tl);
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
                Py_ssize_t e2 = find_byte(s, i, n, ' ');
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
                memcmp(fields[j].key, tok, (size_t)kl) == 0) {
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
            memcmp(fields[j].key, key, (size_t)kl) == 0)
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

static int convert(const char *s, Py_ssize_t n, PyObject **ignored, int want_record) {
    Py_ssize_t i, gs = -1;
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c <= 0x7e)
            continue;
        if (c == 0x1d && gs < 0) {
            gs = i;
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

static PyObject *line_json(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_Check(arg))
        Py_RETURN_NONE;
    if (not_virt_obj == NULL || not_libvirt_obj == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastparse.setup() was not called");
        return NULL;
    }
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

/* bytes equal to '\n', eight at a time (exact: no carries between bytes) */
static Py_ssize_t count_newlines(const char *buf, Py_ssize_t n) {
    const unsigned long long ones7 = 0x7f7f7f7f7f7f7f7fULL, nl = 0x0a0a0a0a0a0a0a0aULL;
    Py_ssize_t count = 0, i = 0;
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

static PyObject *region(PyObject *args, int want_record) {
    Py_buffer view;
    Py_ssize_t end, max_len;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &end, &max_len))
        return NULL;
    if (not_virt_obj == NULL || not_libvirt_obj == NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "_fastparse.setup() was not called");
        return NULL;
    }
    const char *buf = view.buf;
    Py_ssize_t size = end < view.len ? end : view.len;
    Py_ssize_t nlines = 0, nspans = 0, nrec = 0, nvirt = 0, nlib = 0;
    PyObject *items = PyList_New(0);
    if (items == NULL)
        goto fail;
    /* newlines in the whole buffer, as parser.py counts them (buf[end:] holds none) */
    nlines = count_newlines(buf, view.len);
    run_buf.len = 0;
    Py_ssize_t from = 0, next1 = -2, next2 = -2; /* -2: not searched yet, -1: none left */
    while (from < size) {
        /* the leftmost match of either needle (the regex's alternation) */
        if (next1 == -2 || (next1 >= 0 && next1 < from))
            next1 = find_needle(buf, from, size, NEEDLE1, NLEN(NEEDLE1));
        if (next2 == -2 || (next2 >= 0 && next2 < from))
            next2 = find_needle(buf, from, size, NEEDLE2, NLEN(NEEDLE2));
        Py_ssize_t pos = next1 < 0 ? next2 : (next2 < 0 || next1 < next2 ? next1 : next2);
        if (pos < 0)
            break;
        /* the match runs to the end of its line; the next search starts there */
        Py_ssize_t line_end = find_byte(buf, pos, size, '\n');
        if (line_end < 0)
            line_end = size;
        from = line_end;
        Py_ssize_t line_start = pos;
        while (line_start > 0 && buf[line_start - 1] != '\n')
            line_start--;
        if (!(pos == line_start ||
              (starts(buf, line_start, size, "node=", 5) &&
               (find_byte(buf, line_start, pos, ' ') == pos - 1 ||
                other_needle_heads(buf, pos, line_start, line_end)))))
            continue;
        nspans++;
        int rc = FALLBACK;
        PyObject *ignored = NULL;
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
    return region(args, 0);
}

static PyObject *region_records(PyObject *self, PyObject *args) {
    (void)self;
    if (make_record_obj == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastparse.setup() got no make_record");
        return NULL;
    }
    return region(args, 1);
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
    {"setup", setup, METH_VARARGS, "setup(not_virt, not_libvirt[, make_record]): the parser's markers and record factory"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastparse", "C accelerator of monitord's parse path", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastparse(void) { return PyModule_Create(&module); }
