/* The parser's optional C leaf: audit log bytes -> candidate lines, JSON lines, decoded parts.
 *
 * Pure functions over bytes that return bytes and builtin tuples, dicts, strs, ints and
 * floats; nothing here knows monitord's classes. Every name it matches (record types,
 * which keys are hex-encoded, the `path` rule, what a UUID looks like, the JSON document's
 * keys...) comes from the tables parser.py passes to setup(); none is written here. A line
 * this leaf does not read in full (non-ASCII or control bytes, a malformed line, numbers
 * too long for C) goes back to the Python path as a span, so parser.py stays the reference
 * for everything unusual and for every error; tests/audit/test_fastparse.py holds both
 * paths to the same bytes.
 *
 * region(buf, start, end, max_line_length, tails): the candidate lines of buf[start:end]
 *   (whole lines) as JSON lines, or read into tuples, as parser.Region describes.
 * setup(tables) / tables(): parser.TABLES.
 *
 * MONITORD_NO_SIMD builds the portable loops only; otherwise x86-64 uses AVX2 for the two
 * scans when the CPU has it (checked at run time). CI builds and tests both.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, memrchr */
#endif
#include <Python.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(MONITORD_NO_SIMD)
#include <immintrin.h>
#define HAVE_AVX2 1
#endif

#define MAX_FIELDS 128
#define MAX_ENRICH 64
#define MAX_OUTER 8
#define MAX_NEEDLES 8
enum { DONE, NOT_VIRT, NOT_LIBVIRT, PYTHON }; /* what reading a line came to; -1: error */

/* ---- growable byte buffers ------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
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

static int put(Buf *b, const char *s, Py_ssize_t n) {
    if (reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define PUTS(b, lit) put((b), (lit), (Py_ssize_t)sizeof(lit) - 1)

/* ---- the tables ---------------------------------------------------------------------- */

typedef struct {
    const char *s; /* the name's bytes (UTF-8 for a str), in obj */
    Py_ssize_t n;
    PyObject *obj; /* the name itself */
    PyObject *val; /* the value a dict maps it to (NULL: not a dict's) */
    long num;      /* an int value, or the document key's source */
} Name;

typedef struct {
    Name *v;
    Py_ssize_t n;
} Names;

static PyObject *given = NULL; /* the dict setup() got */
static Names raw_keys, encoded_keys, encoded_prefixes, encoded_path_resrc, libvirt_keys,
    outer_ints, needles, types, results, document;
static Name path_key, resrc_key, uuid_key, uuid_shape, uuid_digits, outer_text, unknown_prefix,
    result_key;
static long virt_first, virt_last, max_serial_digits, max_stamp_length;

/* the document's sources: what a key of record.DOCUMENT_KEYS is made of */
enum { D_FIELD, D_TYPE, D_TYPE_ID, D_TIME, D_SERIAL, D_NODE, D_RESULT, D_FIELDS, D_ENRICHMENT,
       D_SUBJ, D_OUTER_INT /* + index in outer_ints */ };

/* a str's UTF-8 (kept by the str) or a bytes' own buffer: valid while obj holds it */
static int name_of(PyObject *o, Name *out) {
    *out = (Name){NULL, 0, NULL, NULL, 0};
    if (PyBytes_Check(o)) {
        out->s = PyBytes_AS_STRING(o);
        out->n = PyBytes_GET_SIZE(o);
    } else if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "_fastparse.setup: %R is not str or bytes", o);
    } else {
        out->s = PyUnicode_AsUTF8AndSize(o, &out->n);
    }
    out->obj = out->s == NULL ? NULL : Py_NewRef(o);
    return out->s == NULL ? -1 : 0;
}

static void free_names(Names *ns) {
    for (Py_ssize_t i = 0; i < ns->n; i++) {
        Py_XDECREF(ns->v[i].obj);
        Py_XDECREF(ns->v[i].val);
    }
    PyMem_Free(ns->v);
    *ns = (Names){NULL, 0};
}

/* the names of an iterable of str/bytes; of a dict, its keys with their values in obj/num */
static int names_of(PyObject *o, Names *out) {
    PyObject *seq = PySequence_Fast(o, "_fastparse.setup: a table is not iterable");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    out->v = PyMem_Calloc((size_t)n + 1, sizeof(Name));
    out->n = 0;
    int rc = out->v == NULL ? (PyErr_NoMemory(), -1) : 0;
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        Name *nm = &out->v[i];
        rc = name_of(PySequence_Fast_GET_ITEM(seq, i), nm);
        if (rc < 0)
            break;
        out->n++;
        if (PyDict_Check(o)) {
            nm->val = Py_XNewRef(PyDict_GetItemWithError(o, nm->obj));
            if (nm->val == NULL)
                rc = -1;
            else if (PyLong_Check(nm->val))
                rc = (nm->num = PyLong_AsLong(nm->val)) == -1 && PyErr_Occurred() ? -1 : 0;
        }
    }
    Py_DECREF(seq);
    return rc;
}

static Py_ssize_t find_name(const Names *ns, const char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < ns->n; i++)
        if (ns->v[i].n == n && (n == 0 || (ns->v[i].s[0] == s[0] && !memcmp(ns->v[i].s, s, n))))
            return i;
    return -1;
}

static int is(const Name *nm, const char *s, Py_ssize_t n) {
    return nm->n == n && memcmp(nm->s, s, (size_t)n) == 0;
}

static long number(PyObject *tables, const char *key, Py_ssize_t index) {
    PyObject *o = PyDict_GetItemString(tables, key); /* borrowed */
    o = o == NULL ? NULL : index >= 0 ? PySequence_GetItem(o, index) : Py_NewRef(o);
    long v = o == NULL ? -1 : PyLong_AsLong(o);
    Py_XDECREF(o);
    if (v == -1 && !PyErr_Occurred())
        PyErr_Format(PyExc_KeyError, "_fastparse.setup: no number %s", key);
    return v;
}

/* parser.TABLES' entries: lists of names, single names */
static const struct {
    const char *key;
    Names *names;
    Name *one;
} SPEC[] = {
    {"raw_keys", &raw_keys, NULL},         {"encoded_keys", &encoded_keys, NULL},
    {"encoded_prefixes", &encoded_prefixes, NULL},
    {"encoded_path_resrc", &encoded_path_resrc, NULL},
    {"libvirt_keys", &libvirt_keys, NULL}, {"outer_ints", &outer_ints, NULL},
    {"needles", &needles, NULL},           {"types", &types, NULL},
    {"results", &results, NULL},           {"document", &document, NULL},
    {"path_key", NULL, &path_key},         {"resrc_key", NULL, &resrc_key},
    {"uuid_key", NULL, &uuid_key},         {"uuid_shape", NULL, &uuid_shape},
    {"uuid_digits", NULL, &uuid_digits},   {"outer_text", NULL, &outer_text},
    {"unknown_prefix", NULL, &unknown_prefix}, {"result_key", NULL, &result_key},
};

static PyObject *setup(PyObject *self, PyObject *tables) {
    (void)self;
    if (!PyDict_Check(tables))
        return PyErr_Format(PyExc_TypeError, "_fastparse.setup: tables must be a dict");
    Py_CLEAR(given); /* until every table is read, region() and tail() refuse to run */
    for (size_t i = 0; i < sizeof SPEC / sizeof *SPEC; i++) {
        if (SPEC[i].names != NULL)
            free_names(SPEC[i].names);
        else
            Py_CLEAR(SPEC[i].one->obj);
    }
    for (size_t i = 0; i < sizeof SPEC / sizeof *SPEC; i++) {
        PyObject *o = PyDict_GetItemString(tables, SPEC[i].key); /* borrowed */
        if (o == NULL)
            return PyErr_Format(PyExc_KeyError, "_fastparse.setup: no table %s", SPEC[i].key);
        if ((SPEC[i].names ? names_of(o, SPEC[i].names) : name_of(o, SPEC[i].one)) < 0)
            return NULL;
    }
    virt_first = number(tables, "virt_range", 0);
    virt_last = number(tables, "virt_range", 1);
    max_serial_digits = number(tables, "max_serial_digits", -1);
    max_stamp_length = number(tables, "max_stamp_length", -1);
    if (PyErr_Occurred())
        return NULL;
    int bad = outer_ints.n > MAX_OUTER || needles.n < 1 || needles.n > MAX_NEEDLES ||
              max_stamp_length > 64;
    for (Py_ssize_t k = 0; k < needles.n; k++)
        bad |= needles.v[k].n < 2;
    if (bad)
        return PyErr_Format(PyExc_ValueError, "_fastparse.setup: tables out of bounds");
    /* each document key: a record attribute this leaf reads from the line, or an inner field */
    static const char *const SOURCES[] = {"", "type", "type_id", "time", "serial", "node",
                                          "result", "fields", "enrichment"};
    for (Py_ssize_t i = 0; i < document.n; i++) {
        Name *k = &document.v[i];
        k->num = D_FIELD;
        for (long s = 1; s < (long)(sizeof SOURCES / sizeof *SOURCES); s++)
            if (is(k, SOURCES[s], (Py_ssize_t)strlen(SOURCES[s])))
                k->num = s;
        if (is(k, outer_text.s, outer_text.n))
            k->num = D_SUBJ;
        Py_ssize_t o = find_name(&outer_ints, k->s, k->n);
        if (o >= 0)
            k->num = D_OUTER_INT + o;
    }
    given = Py_NewRef(tables);
    Py_RETURN_NONE;
}

static PyObject *tables(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_NewRef(given != NULL ? given : Py_None);
}

/* ---- reading a line ------------------------------------------------------------------ */

typedef struct {
    const char *key;
    Py_ssize_t klen;
    int none;           /* `?`: None */
    Py_ssize_t off, len; /* the decoded value, in the arena */
} Field;

typedef struct {
    const char *key, *val;
    Py_ssize_t klen, vlen;
} Pair;

typedef struct {
    const char *node; /* NULL: none */
    Py_ssize_t node_len;
    const Name *type; /* a name of the types table, or NULL: tname as written */
    const char *tname;
    Py_ssize_t tlen;
    long type_id;
    double time;
    const char *stamp; /* the time as written */
    Py_ssize_t stamp_len;
    long long serial;
    Py_ssize_t tail; /* where `):` starts */
    long long ints[MAX_OUTER];
    int has_int[MAX_OUTER];
    const char *subj; /* NULL: None */
    Py_ssize_t subj_len;
    Field fields[MAX_FIELDS];
    int nf;
    Pair enr[MAX_ENRICH];
    int ne;
    Buf arena; /* decoded values */
} Line;

static Py_ssize_t find(const char *s, Py_ssize_t from, Py_ssize_t to, const char *needle,
                       Py_ssize_t n) {
    if (to - from < n)
        return -1;
    const char *p = memmem(s + from, (size_t)(to - from), needle, (size_t)n);
    return p == NULL ? -1 : p - s;
}

static Py_ssize_t find_byte(const char *s, Py_ssize_t from, Py_ssize_t to, char c) {
    const char *p = from < to ? memchr(s + from, c, (size_t)(to - from)) : NULL;
    return p == NULL ? -1 : p - s;
}

/* the next space in s[i:n] (-1: none) by a plain loop: tokens are short, memchr costs more */
static Py_ssize_t space(const char *s, Py_ssize_t i, Py_ssize_t n) {
    while (i < n && s[i] != ' ')
        i++;
    return i < n ? i : -1;
}

static int starts(const char *s, Py_ssize_t at, Py_ssize_t to, const Name *nm) {
    return to - at >= nm->n && memcmp(s + at, nm->s, (size_t)nm->n) == 0;
}

static int hex(char c) {
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* the first byte of s[i:n] that is not printable ASCII (n: none), 8 bytes at a time */
static Py_ssize_t printable(const char *s, Py_ssize_t i, Py_ssize_t n) {
    const unsigned long long ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    for (unsigned long long x; i + 8 <= n; i += 8) {
        memcpy(&x, s + i, 8); /* a high bit for each byte under 0x20, or over 0x7e */
        if (((x - 0x20 * ones) | (x + 0x01 * ones) | x) & highs)
            break;
    }
    while (i < n && s[i] >= 0x20 && s[i] <= 0x7e)
        i++;
    return i;
}

/* Python's int() of an ASCII token: 1 = a number (*out), 0 = int() raises (None),
 * -1 = not for C (underscores, more digits than a long long holds) */
static int int_of(const char *s, Py_ssize_t n, long long *out) {
    Py_ssize_t i = n > 0 && (s[0] == '+' || s[0] == '-');
    long long v = 0;
    int digits = 0;
    if (i == n)
        return memchr(s, '_', (size_t)n) ? -1 : 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return memchr(s, '_', (size_t)n) ? -1 : 0;
        if ((digits += digits || s[i] != '0') > 18)
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = s[0] == '-' ? -v : v;
    return 1;
}

/* parser.decode_value into the arena */
static int decode(Line *L, Field *f, const char *v, Py_ssize_t n, int encoded) {
    Buf *a = &L->arena;
    f->none = 0;
    f->off = a->len;
    if (n > 0 && v[0] == '"') {
        Py_ssize_t cl = n >= 2 && v[n - 1] == '"' ? n - 2 : n - 1;
        f->none = cl == 1 && v[1] == '?';
        f->len = f->none ? 0 : cl;
        return f->none ? 0 : put(a, v + 1, cl);
    }
    if (n == 1 && v[0] == '?') {
        f->none = 1;
        f->len = 0;
        return 0;
    }
    Py_ssize_t i = 0;
    if (encoded && n % 2 == 0)
        while (i < n && hex(v[i]) >= 0)
            i++;
    if (encoded && n > 0 && n % 2 == 0 && i == n) {
        if (reserve(a, n / 2) < 0)
            return -1;
        for (i = 0; i < n; i += 2)
            a->data[a->len++] = (char)(hex(v[i]) << 4 | hex(v[i + 1]));
        f->len = n / 2;
        return 0;
    }
    f->len = n;
    return put(a, v, n);
}

static int is_encoded(const char *k, Py_ssize_t n) {
    if (find_name(&encoded_keys, k, n) >= 0)
        return 1;
    if (find_name(&raw_keys, k, n) >= 0)
        return 0;
    for (Py_ssize_t i = 0; i < encoded_prefixes.n; i++)
        if (starts(k, 0, n, &encoded_prefixes.v[i]))
            return 1;
    return 0;
}

static Field *field(Line *L, const char *k, Py_ssize_t n) {
    for (int j = 0; j < L->nf; j++)
        if (L->fields[j].klen == n && L->fields[j].key[0] == k[0] && !memcmp(L->fields[j].key, k, n))
            return &L->fields[j];
    return NULL;
}

static const char *value(Line *L, Field *f) { return L->arena.data + f->off; }

/* parser._parse_fields_slow (which equals parse_fields wherever its fast path applies):
 * 0, -1 on error, PYTHON for too many fields */
static int parse_fields(Line *L, const char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    int last = -1; /* the field a bare token continues */
    Field resrc = {0}; /* as first read: a bare token glued to it later does not count */
    resrc.none = 1;
    L->nf = 0;
    while (i <= n) { /* inner.split(" "): empty tokens included */
        Py_ssize_t te = space(s, i, n);
        te = te < 0 ? n : te;
        const char *tok = s + i;
        Py_ssize_t tl = te - i;
        i = te + 1;
        if (tl == 0)
            continue;
        const char *eq = memchr(tok, '=', (size_t)tl);
        if (eq == NULL || eq == tok) { /* glued to the last raw value, with its space */
            Field *f = last >= 0 && !L->fields[last].none ? &L->fields[last] : NULL;
            if (f != NULL) { /* the last value ends the arena */
                if (reserve(&L->arena, tl + 1) < 0)
                    return -1;
                L->arena.data[L->arena.len++] = ' ';
                if (put(&L->arena, tok, tl) < 0)
                    return -1;
                f->len += tl + 1;
            }
            continue;
        }
        Py_ssize_t kl = eq - tok, vl = tl - kl - 1;
        int quoted = vl > 0 && eq[1] == '"';
        if (quoted && (vl < 2 || tok[tl - 1] != '"')) { /* to the next token ending in '"' */
            Py_ssize_t end = n;
            while (i <= n) {
                Py_ssize_t e = space(s, i, n);
                e = e < 0 ? n : e;
                Py_ssize_t from = i;
                i = e + 1;
                end = e;
                if (e > from && s[e - 1] == '"')
                    break;
            }
            vl = s + end - (eq + 1);
        }
        if (field(L, tok, kl) != NULL) {
            last = -1;
            continue;
        }
        if (L->nf >= MAX_FIELDS)
            return PYTHON;
        Field *f = &L->fields[L->nf];
        f->key = tok;
        f->klen = kl;
        int encoded = is(&path_key, tok, kl)
                          ? !resrc.none &&
                                find_name(&encoded_path_resrc, value(L, &resrc), resrc.len) >= 0
                          : is_encoded(tok, kl);
        if (decode(L, f, eq + 1, vl, encoded) < 0)
            return -1;
        if (is(&resrc_key, tok, kl))
            resrc = *f;
        last = quoted ? -1 : L->nf;
        L->nf++;
    }
    return 0;
}

/* parser.parse_tail of s[:n] (which starts with `):`) into L */
static int read_tail(const char *s, Py_ssize_t n, Line *L) {
    Py_ssize_t gs = -1, i = 0;
    while ((i = printable(s, i, n)) < n) { /* printable ASCII, and one 0x1D before the enrichment */
        if (s[i] != 0x1d || gs >= 0)
            return PYTHON;
        gs = i++;
    }
    Py_ssize_t limit = gs >= 0 ? gs : n;
    Py_ssize_t start = find(s, 0, limit, "msg='", 5);
    const char *q = start < 0 ? NULL : memrchr(s + start, '\'', (size_t)(limit - start));
    if (q == NULL || q - s < start + 5)
        return PYTHON; /* no_message, unbalanced_quote */
    int rc = parse_fields(L, s + start + 5, q - s - start - 5);
    if (rc != 0)
        return rc;
    for (Py_ssize_t k = 0; k < libvirt_keys.n; k++)
        if (field(L, libvirt_keys.v[k].s, libvirt_keys.v[k].n) == NULL)
            return NOT_LIBVIRT;
    Field *uuid = field(L, uuid_key.s, uuid_key.n);
    if (uuid == NULL || uuid->none || uuid->len != uuid_shape.n)
        return PYTHON; /* bad_uuid */
    for (i = 0; i < uuid->len; i++) {
        char c = value(L, uuid)[i], want = uuid_shape.s[i];
        if (want == 'x' ? memchr(uuid_digits.s, c, (size_t)uuid_digits.n) == NULL : c != want)
            return PYTHON;
    }
    /* outer: the first of each key among the tokens between `): ` and msg=' */
    const char *ov[MAX_OUTER + 1] = {NULL};
    Py_ssize_t ol[MAX_OUTER + 1] = {0};
    Py_ssize_t nout = outer_ints.n;
    for (i = 2; i < start;) {
        Py_ssize_t te = space(s, i, start);
        te = te < 0 ? start : te;
        const char *eq = memchr(s + i, '=', (size_t)(te - i));
        if (eq != NULL) {
            Py_ssize_t k = find_name(&outer_ints, s + i, eq - s - i);
            k = k >= 0 ? k : is(&outer_text, s + i, eq - s - i) ? nout : -1;
            if (k >= 0 && ov[k] == NULL) {
                ov[k] = eq + 1;
                ol[k] = s + te - eq - 1;
            }
        }
        i = te + 1;
    }
    for (Py_ssize_t k = 0; k < nout; k++) {
        L->has_int[k] = ov[k] == NULL ? 0 : int_of(ov[k], ol[k], &L->ints[k]);
        if (L->has_int[k] < 0)
            return PYTHON;
    }
    L->subj = ov[nout] == NULL || (ol[nout] == 1 && ov[nout][0] == '?') ? NULL : ov[nout];
    L->subj_len = ol[nout];
    /* enrichment: the first of each key=value, a value's quotes removed */
    L->ne = 0;
    for (i = gs + 1; gs >= 0 && i < n;) {
        Py_ssize_t te = space(s, i, n);
        te = te < 0 ? n : te;
        const char *eq = memchr(s + i, '=', (size_t)(te - i));
        Py_ssize_t kl = eq == NULL ? 0 : eq - s - i;
        int dup = kl == 0;
        for (int k = 0; !dup && k < L->ne; k++)
            dup = L->enr[k].klen == kl && !memcmp(L->enr[k].key, s + i, (size_t)kl);
        if (!dup) {
            if (L->ne >= MAX_ENRICH)
                return PYTHON;
            Pair *p = &L->enr[L->ne++];
            p->key = s + i;
            p->klen = kl;
            p->val = eq + 1;
            p->vlen = s + te - eq - 1;
            if (p->vlen >= 2 && p->val[0] == '"' && p->val[p->vlen - 1] == '"') {
                p->val++;
                p->vlen -= 2;
            }
        }
        i = te + 1;
    }
    return DONE;
}

/* parser.split_header of a line without its \r\n (its tail: s[L->tail:n]): DONE, NOT_VIRT,
 * PYTHON or -1 */
static int read_header(const char *s, Py_ssize_t n, Line *L) {
    Py_ssize_t pos = 0, i;
    L->node = NULL;
    if (n >= 5 && !memcmp(s, "node=", 5)) {
        pos = find_byte(s, 0, n, ' ') + 1;
        if (pos <= 0)
            return PYTHON;
        L->node = s + 5;
        L->node_len = pos - 6;
    }
    Py_ssize_t mark = find(s, pos, n, " msg=audit(", 11);
    Py_ssize_t close = mark < 0 ? -1 : find_byte(s, mark, n, ')');
    if (n - pos < 5 || memcmp(s + pos, "type=", 5) || close < 0 || close + 1 >= n ||
        s[close + 1] != ':')
        return PYTHON;
    if (printable(s, 0, close) < close)
        return PYTHON;
    L->tname = s + pos + 5;
    L->tlen = mark - pos - 5;
    if (L->tlen == 0 || memchr(L->tname, ' ', (size_t)L->tlen))
        return PYTHON;
    Py_ssize_t t = find_name(&types, L->tname, L->tlen);
    L->type = t >= 0 ? &types.v[t] : NULL;
    if (t >= 0) {
        L->type_id = types.v[t].num;
    } else if (starts(L->tname, 0, L->tlen, &unknown_prefix) && L->tlen > unknown_prefix.n + 1 &&
               L->tname[L->tlen - 1] == ']') {
        long num = 0;
        int digits = 0;
        for (i = unknown_prefix.n; i < L->tlen - 1; i++) {
            char c = L->tname[i];
            if (c < '0' || c > '9')
                return NOT_VIRT;
            if ((digits += digits || c != '0') <= 6)
                num = num * 10 + (c - '0');
        }
        if (digits > 6)
            return NOT_VIRT;
        L->type_id = num;
        for (t = 0; t < types.n; t++)
            if (types.v[t].num == num)
                L->type = &types.v[t];
    } else {
        return NOT_VIRT;
    }
    if (L->type_id < virt_first || L->type_id > virt_last)
        return NOT_VIRT;
    /* STAMP:SERIAL: digits with at most one '.', then digits */
    char stamp[72];
    Py_ssize_t st = mark + 11, colon = find_byte(s, st, close, ':');
    if (colon < 0 || colon - st > max_stamp_length || colon + 1 == close)
        return PYTHON;
    int dots = 0, stamp_digits = 0;
    for (i = st; i < colon; i++) {
        dots += s[i] == '.';
        stamp_digits += s[i] >= '0' && s[i] <= '9';
    }
    if (dots > 1 || stamp_digits == 0 || dots + stamp_digits != colon - st)
        return PYTHON;
    const char *serial = s + colon + 1;
    while (serial < s + close - 1 && *serial == '0')
        serial++;
    if (s[colon + 1] < '0' || s[colon + 1] > '9' || s + close - serial > max_serial_digits ||
        int_of(serial, s + close - serial, &L->serial) != 1)
        return PYTHON; /* bad_timestamp, or a serial for Python's ints */
    L->stamp = s + st;
    L->stamp_len = colon - st;
    memcpy(stamp, s + st, (size_t)(colon - st));
    stamp[colon - st] = '\0';
    L->time = PyOS_string_to_double(stamp, NULL, NULL);
    if (L->time == -1.0 && PyErr_Occurred())
        return -1;
    L->tail = close;
    return DONE;
}

/* ---- JSON (json.dumps with ensure_ascii, compact) ------------------------------------------ */

static const char HEX[] = "0123456789abcdef";
static char plain[256]; /* printable ASCII but '"' and '\\': JSON writes it as it is */

static int put_u(Buf *b, unsigned c) {
    char u[6] = {'\\', 'u', HEX[c >> 12 & 15], HEX[c >> 8 & 15], HEX[c >> 4 & 15], HEX[c & 15]};
    return put(b, u, 6);
}

/* a JSON string of the text bytes decode to (utf-8, surrogateescape) */
static int put_string(Buf *b, const char *s, Py_ssize_t n) {
    if (reserve(b, 2 * n + 2) < 0)
        return -1;
    char *d = b->data + b->len; /* a local pointer: the compiler keeps it in a register */
    *d++ = '"';
    Py_ssize_t i = 0;
    while (i < n) { /* runs of plain bytes copied whole */
        Py_ssize_t j = i;
        while (j < n && plain[(unsigned char)s[j]])
            j++;
        memcpy(d, s + i, (size_t)(j - i));
        d += j - i;
        if (j == n || (s[j] != '"' && s[j] != '\\')) {
            i = j;
            break;
        }
        *d++ = '\\';
        *d++ = s[j];
        i = j + 1;
    }
    b->len = d - b->data;
    if (i < n) { /* control or non-ASCII bytes: escape the decoded text */
        PyObject *text = PyUnicode_DecodeUTF8(s + i, n - i, "surrogateescape");
        if (text == NULL)
            return -1;
        int kind = PyUnicode_KIND(text);
        const void *data = PyUnicode_DATA(text);
        int rc = 0;
        for (Py_ssize_t j = 0; rc == 0 && j < PyUnicode_GET_LENGTH(text); j++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, j);
            const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n"
                            : c == '\r' ? "\\r" : c == '\t' ? "\\t" : c == '\b' ? "\\b"
                            : c == '\f' ? "\\f" : NULL;
            if (esc != NULL)
                rc = put(b, esc, 2);
            else if (c >= 0x20 && c <= 0x7e)
                rc = put(b, (char[]){(char)c}, 1);
            else if (c >= 0x10000) /* a surrogate pair */
                rc = put_u(b, 0xd800 | ((c - 0x10000) >> 10)) ||
                     put_u(b, 0xdc00 | ((c - 0x10000) & 0x3ff));
            else
                rc = put_u(b, c);
        }
        Py_DECREF(text);
        if (rc < 0)
            return -1;
    }
    return PUTS(b, "\"");
}

static int put_int(Buf *b, long long v) {
    char tmp[24], *p = tmp + sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do
        *--p = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        *--p = '-';
    return put(b, p, tmp + sizeof tmp - p);
}

static int put_value(Buf *b, Line *L, Field *f) {
    return f == NULL || f->none ? PUTS(b, "null") : put_string(b, value(L, f), f->len);
}

static int put_pairs(Buf *b, Line *L, int fields) {
    int n = fields ? L->nf : L->ne, rc = PUTS(b, "{");
    for (int j = 0; j < n; j++) {
        if (j)
            rc |= PUTS(b, ",");
        rc |= fields ? put_string(b, L->fields[j].key, L->fields[j].klen)
                     : put_string(b, L->enr[j].key, L->enr[j].klen);
        rc |= PUTS(b, ":");
        rc |= fields ? put_value(b, L, &L->fields[j])
                     : put_string(b, L->enr[j].val, L->enr[j].vlen);
    }
    return rc | PUTS(b, "}");
}

/* json.dumps(time), which is repr(): the stamp as written, less its leading and trailing
 * zeros, when it has at most 15 significant digits (DBL_DIG: they are then the shortest
 * repr of its double) and repr writes it without exponent; else PyOS_double_to_string */
static int put_time(Buf *b, Line *L) {
    const char *s = L->stamp, *end = s + L->stamp_len, *dot = memchr(s, '.', L->stamp_len);
    const char *i = s, *ie = dot != NULL ? dot : end, *f = dot != NULL ? dot + 1 : end, *fe = end;
    while (i < ie && *i == '0')
        i++;
    while (fe > f && fe[-1] == '0')
        fe--;
    const char *sig = f; /* 0.000ddd: the fraction's first significant digit */
    while (i == ie && sig < fe && *sig == '0')
        sig++;
    if ((ie - i) + (fe - sig) <= 15 && (i < ie || sig - f <= 3 || sig == fe))
        return (i < ie ? put(b, i, ie - i) : PUTS(b, "0")) | PUTS(b, ".") |
               (fe > f ? put(b, f, fe - f) : PUTS(b, "0"));
    char *r = PyOS_double_to_string(L->time, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    int rc = r == NULL ? -1 : put(b, r, (Py_ssize_t)strlen(r));
    PyMem_Free(r);
    return rc;
}

/* the line's document (record.DOCUMENT_KEYS) and a newline */
static int put_document(Buf *b, Line *L) {
    int rc = 0;
    for (Py_ssize_t k = 0; k < document.n; k++) {
        const Name *key = &document.v[k];
        rc |= put(b, k ? "," : "{", 1);
        rc |= put_string(b, key->s, key->n);
        rc |= PUTS(b, ":");
        long src = key->num;
        if (src == D_TYPE) {
            rc |= L->type != NULL ? put_string(b, L->type->s, L->type->n)
                                  : put_string(b, L->tname, L->tlen);
        } else if (src == D_TYPE_ID) {
            rc |= put_int(b, L->type_id);
        } else if (src == D_TIME) {
            rc |= put_time(b, L);
        } else if (src == D_SERIAL) {
            rc |= put_int(b, L->serial);
        } else if (src == D_NODE) {
            rc |= L->node == NULL ? PUTS(b, "null") : put_string(b, L->node, L->node_len);
        } else if (src == D_RESULT) {
            Field *res = field(L, result_key.s, result_key.n);
            Py_ssize_t r = res == NULL || res->none ? -1 : find_name(&results, value(L, res), res->len);
            if (r >= 0) {
                Py_ssize_t len;
                const char *s = PyUnicode_AsUTF8AndSize(results.v[r].val, &len);
                rc |= s == NULL ? -1 : put_string(b, s, len);
            } else {
                rc |= put_value(b, L, res);
            }
        } else if (src == D_FIELDS || src == D_ENRICHMENT) {
            rc |= put_pairs(b, L, src == D_FIELDS);
        } else if (src == D_SUBJ) {
            rc |= L->subj == NULL ? PUTS(b, "null") : put_string(b, L->subj, L->subj_len);
        } else if (src >= D_OUTER_INT) {
            int o = (int)(src - D_OUTER_INT);
            rc |= L->has_int[o] ? put_int(b, L->ints[o]) : PUTS(b, "null");
        } else {
            rc |= put_value(b, L, field(L, key->s, key->n));
        }
    }
    return rc | PUTS(b, "}\n");
}

/* ---- Python objects ------------------------------------------------------------------ */

static PyObject *text(const char *s, Py_ssize_t n) {
    return PyUnicode_DecodeUTF8(s, n, "surrogateescape");
}

static PyObject *tail_of(Line *L);

/* (type name, type number, time, serial, node, tail, new): a line read. tail is its
 * decoded parser.Tail: `known` (what the caller's tails hold for it), or made here from L;
 * new is the tail's bytes when made here, else None. */
static PyObject *head_of(Line *L, PyObject *known, PyObject *raw) {
    PyObject *items[7] = {
        L->type != NULL ? Py_NewRef(L->type->obj) : text(L->tname, L->tlen),
        L->type != NULL && L->type->num == L->type_id ? Py_NewRef(L->type->val)
                                                      : PyLong_FromLong(L->type_id),
        PyFloat_FromDouble(L->time),
        PyLong_FromLongLong(L->serial),
        L->node != NULL ? text(L->node, L->node_len) : Py_NewRef(Py_None),
        known != NULL ? Py_NewRef(known) : tail_of(L),
        Py_NewRef(known != NULL ? Py_None : raw),
    };
    PyObject *h = PyTuple_New(7);
    for (int k = 0; k < 7; k++)
        if (items[k] == NULL)
            Py_CLEAR(h);
    for (int k = 0; k < 7; k++) {
        if (h != NULL)
            PyTuple_SET_ITEM(h, k, items[k]);
        else
            Py_XDECREF(items[k]);
    }
    return h;
}

/* a field's key: the tables' own str when they name it (they name most) */
static PyObject *key_of(const char *k, Py_ssize_t n) {
    Py_ssize_t i = find_name(&raw_keys, k, n);
    if (i >= 0)
        return Py_NewRef(raw_keys.v[i].obj);
    i = find_name(&encoded_keys, k, n);
    return i >= 0 ? Py_NewRef(encoded_keys.v[i].obj) : text(k, n);
}

/* (ints of outer_ints..., subj, fields, enrichment): parser's Tail */
static PyObject *tail_of(Line *L) {
    Py_ssize_t nout = outer_ints.n;
    PyObject *t = PyTuple_New(nout + 3);
    int ok = t != NULL;
    for (Py_ssize_t k = 0; ok && k < nout; k++)
        PyTuple_SET_ITEM(t, k, L->has_int[k] ? PyLong_FromLongLong(L->ints[k]) : Py_NewRef(Py_None));
    if (ok)
        PyTuple_SET_ITEM(t, nout, L->subj ? text(L->subj, L->subj_len) : Py_NewRef(Py_None));
    for (int which = 0; ok && which < 2; which++) {
        PyObject *d = PyDict_New();
        PyTuple_SET_ITEM(t, nout + 1 + which, d);
        for (int j = 0; d != NULL && j < (which ? L->ne : L->nf); j++) {
            Field *f = &L->fields[j];
            PyObject *k = which ? text(L->enr[j].key, L->enr[j].klen) : key_of(f->key, f->klen);
            PyObject *v = which ? text(L->enr[j].val, L->enr[j].vlen)
                          : f->none ? Py_NewRef(Py_None)
                                    : text(value(L, f), f->len);
            ok = k != NULL && v != NULL && PyDict_SetItem(d, k, v) == 0;
            Py_XDECREF(k);
            Py_XDECREF(v);
            if (!ok)
                break;
        }
    }
    for (Py_ssize_t k = 0; ok && k < nout + 3; k++)
        ok = PyTuple_GET_ITEM(t, k) != NULL;
    if (!ok)
        Py_CLEAR(t);
    return t;
}

static int ready(void) {
    if (given == NULL)
        PyErr_SetString(PyExc_RuntimeError, "_fastparse.setup() has not been called");
    return given != NULL;
}

/* ---- candidate lines ------------------------------------------------------------------- */

/* parser.candidate_spans' rule for the line buf[ls:le]: a needle is its header (at its start
 * or right after `node=NAME `) and does not occur before it */
static int is_candidate(const char *buf, Py_ssize_t ls, Py_ssize_t le) {
    Py_ssize_t h = ls;
    if (le - ls >= 5 && !memcmp(buf + ls, "node=", 5) && (h = find_byte(buf, ls, le, ' ') + 1) == 0)
        return 0;
    for (Py_ssize_t k = 0; k < needles.n; k++)
        if (starts(buf, h, le, &needles.v[k]) &&
            (h == ls || find(buf, ls, h, needles.v[k].s, needles.v[k].n) < 0))
            return 1;
    return 0;
}

#ifdef HAVE_AVX2
static int avx2(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") != 0;
    }
    return have;
}

/* the first start of a needle in [from, size): 32 starts at once, by each needle's middle
 * and last byte (rarer in a log than its first: every line has `type=`), confirmed by
 * memcmp; -1: none */
__attribute__((target("avx2"))) static Py_ssize_t next_needle_avx2(const char *s,
                                                                  Py_ssize_t from,
                                                                  Py_ssize_t size) {
    Py_ssize_t longest = 0, i = from;
    for (Py_ssize_t k = 0; k < needles.n; k++)
        longest = needles.v[k].n > longest ? needles.v[k].n : longest;
    for (; i + 32 + longest <= size; i += 32) {
        unsigned mask = 0;
        for (Py_ssize_t k = 0; k < needles.n; k++) {
            const Name *nd = &needles.v[k];
            __m256i mid = _mm256_cmpeq_epi8(
                _mm256_loadu_si256((const __m256i *)(s + i + nd->n / 2)),
                _mm256_set1_epi8(nd->s[nd->n / 2]));
            __m256i last = _mm256_cmpeq_epi8(
                _mm256_loadu_si256((const __m256i *)(s + i + nd->n - 1)),
                _mm256_set1_epi8(nd->s[nd->n - 1]));
            mask |= (unsigned)_mm256_movemask_epi8(_mm256_and_si256(mid, last));
        }
        for (; mask; mask &= mask - 1) {
            Py_ssize_t p = i + __builtin_ctz(mask);
            for (Py_ssize_t k = 0; k < needles.n; k++)
                if (starts(s, p, size, &needles.v[k]))
                    return p;
        }
    }
    for (; i < size; i++)
        for (Py_ssize_t k = 0; k < needles.n; k++)
            if (starts(s, i, size, &needles.v[k]))
                return i;
    return -1;
}
#endif

/* the newlines in s[:n]: libc's memchr is vectorised already */
static Py_ssize_t newlines(const char *s, Py_ssize_t n) {
    Py_ssize_t count = 0;
    for (const char *p = s, *end = s + n; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        count++;
    return count;
}

/* the first start of a needle in [from, size); next[k]: needle k's next start, or -2: look */
static Py_ssize_t next_needle(const char *s, Py_ssize_t from, Py_ssize_t size, Py_ssize_t *next) {
#ifdef HAVE_AVX2
    if (avx2())
        return next_needle_avx2(s, from, size);
#endif
    Py_ssize_t best = -1;
    for (Py_ssize_t k = 0; k < needles.n; k++) {
        if (next[k] == -2 || (next[k] >= 0 && next[k] < from))
            next[k] = find(s, from, size, needles.v[k].s, needles.v[k].n);
        if (next[k] >= 0 && (best < 0 || next[k] < best))
            best = next[k];
    }
    return best;
}

static int flush(PyObject *items, Buf *run) {
    if (run->len == 0)
        return 0;
    PyObject *b = PyBytes_FromStringAndSize(run->data, run->len);
    run->len = 0;
    int rc = b == NULL ? -1 : PyList_Append(items, b);
    Py_XDECREF(b);
    return rc;
}

static int append(PyObject *items, PyObject *item) {
    int rc = item == NULL ? -1 : PyList_Append(items, item);
    Py_XDECREF(item);
    return rc;
}

static PyObject *region(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t start, end, max_len;
    PyObject *tails;
    if (!ready() || !PyArg_ParseTuple(args, "y*nnnO", &view, &start, &end, &max_len, &tails))
        return NULL;
    if (tails != Py_None && !PyDict_Check(tails)) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_TypeError, "region(): tails must be None or a dict");
    }
    int json = tails == Py_None;
    const char *buf = view.buf;
    start = start < 0 ? 0 : start > view.len ? view.len : start;
    end = end > view.len ? view.len : end < start ? start : end;
    Py_ssize_t nspans = 0, nrec = 0, nvirt = 0, nlib = 0;
    Py_ssize_t next[MAX_NEEDLES];
    for (int k = 0; k < MAX_NEEDLES; k++)
        next[k] = -2;
    Buf run = {0};
    Line *L = PyMem_Calloc(1, sizeof(Line));
    PyObject *items = PyList_New(0), *result = NULL;
    if (L == NULL || items == NULL)
        goto done;
    Py_ssize_t from = start, pos;
    while (from < end && (pos = next_needle(buf, from, end, next)) >= 0) {
        Py_ssize_t ls = pos, le = find_byte(buf, pos, end, '\n');
        le = le < 0 ? end : le;
        while (ls > start && buf[ls - 1] != '\n')
            ls--;
        from = le + 1;
        if (!is_candidate(buf, ls, le))
            continue;
        nspans++;
        L->arena.len = 0;
        Py_ssize_t end = le; /* the line without \r */
        while (end > ls && buf[end - 1] == '\r')
            end--;
        int rc = le - ls > max_len ? PYTHON : read_header(buf + ls, end - ls, L);
        const char *tail = buf + ls + L->tail;
        PyObject *raw = NULL, *known = NULL; /* the tail's bytes; what tails hold for them */
        if (rc == DONE && !json) {
            raw = PyBytes_FromStringAndSize(tail, end - ls - L->tail);
            known = raw == NULL ? NULL : PyDict_GetItemWithError(tails, raw); /* borrowed */
            rc = raw == NULL || PyErr_Occurred() ? -1 : DONE;
        }
        if (rc == DONE && known == NULL) /* a tail the caller decoded already is not read */
            rc = read_tail(tail, end - ls - L->tail, L);
        if (rc == DONE && json) {
            nrec++;
            rc = put_document(&run, L);
        } else if (rc == DONE) {
            rc = append(items, head_of(L, known, raw));
        } else if (rc == PYTHON) {
            rc = flush(items, &run) < 0 ? -1 : append(items, Py_BuildValue("(nn)", ls, le));
        } else if (rc >= 0) {
            nvirt += rc == NOT_VIRT;
            nlib += rc == NOT_LIBVIRT;
            rc = 0;
        }
        Py_XDECREF(raw);
        if (rc < 0)
            goto done;
    }
    if (flush(items, &run) == 0) /* lines: every newline from start on (buf[end:] has none) */
        result = Py_BuildValue("(nnnnnO)", newlines(buf + start, view.len - start), nspans, nrec,
                               nvirt, nlib, items);
done:
    if (L != NULL)
        PyMem_Free(L->arena.data);
    PyMem_Free(L);
    PyMem_Free(run.data);
    Py_XDECREF(items);
    PyBuffer_Release(&view);
    return result == NULL && !PyErr_Occurred() ? PyErr_NoMemory() : result;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_O, "setup(tables): parser.TABLES, every name this module matches"},
    {"tables", tables, METH_NOARGS, "tables() -> the dict setup() was given (None before)"},
    {"region", region, METH_VARARGS,
     "region(buf, start, end, max_line_length, tails) -> (lines, candidates, records, "
     "not_virt, not_libvirt, items): the candidate lines of buf[start:end] as JSON lines "
     "(tails None) or read (tails: a dict of tails already decoded), as parser.Region says"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastparse", "monitord's optional C leaf of the parser", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastparse(void) {
    for (int c = 0x20; c <= 0x7e; c++)
        plain[c] = c != '"' && c != '\\';
    return PyModule_Create(&module);
}
