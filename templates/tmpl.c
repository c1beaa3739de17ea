/*
 * tmpl.c - Mustache compiler and renderer (interface and rules: tmpl.h).
 *
 * Compiling makes three passes over a private copy of the source:
 *   1. scan        split it into tokens: text runs (each holding at most one
 *                  newline, at its end) and tags, following {{=<% %>=}}
 *                  delimiter changes. Errors inside a tag stop here.
 *   2. standalone  per source line, decide whether its tags stand alone
 *                  (nothing but whitespace around them); if so the line's
 *                  whitespace and newline are dropped. A line may hold
 *                  several tags only when one of them opens or closes a
 *                  parent ({{<p}}{{/p}}, {{<p}}{{$b}}, {{/b}}{{/p}}), as the
 *                  inheritance spec asks.
 *   3. build       turn the tokens into a tree, matching section ends and
 *                  removing block indentation (see "Indentation" below).
 * Rendering walks the tree with a context stack of json_t values. Partials
 * and parents are fetched through the caller's callback and compiled on
 * first use, once per name per render.
 *
 * Indentation. A standalone partial or parent tag indents every line of its
 * template by the whitespace before the tag; a block argument ({{$b}} inside
 * {{<p}}) loses its own indentation where it is defined and gets the
 * indentation of the {{$b}} it replaces. Both are done at render time with
 * one "current indentation" string that is written before the first output
 * of each template line (never inside an interpolated value), tracked by
 * the bol ("beginning of line") flag.
 *
 * Limits: TMPL_* in tmpl.h. Recursion in this file is bounded by
 * TMPL_DEPTH_MAX (tree depth) times TMPL_PARTIAL_DEPTH_MAX (templates).
 *
 * SECURITY: the source and the data are untrusted. Every loop is bounded
 * by the source length, the step budget or the output buffer's maximum;
 * names are looked up with explicit lengths (embedded NULs in JSON keys
 * cannot confuse a lookup); nothing is formatted with a tenant-supplied
 * format string.
 */
#include "templates/tmpl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors ------------------------------------------------------------ */

/* set_err - fill err (if not NULL): position, optional name, message. */
__attribute__((format(printf, 6, 7)))
static void set_err(struct tmpl_error *err, unsigned line, unsigned col, const char *name, size_t nlen,
                    const char *fmt, ...)
{
    if (!err)
        return;
    err->line = line;
    err->column = col;
    err->name[0] = '\0';
    if (name) {
        if (nlen > TMPL_NAME_MAX)
            nlen = TMPL_NAME_MAX;
        memcpy(err->name, name, nlen);
        err->name[nlen] = '\0';
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* ---- pass 1: tokens ---------------------------------------------------- */

#define TK_TEXT '\0' /* tags use their sigil; a plain {{name}} is 'v' */

struct tok {
    char kind;                /* TK_TEXT, 'v', '&', '{', '#', '^', '/', '!', '=', '>', '<', '$' */
    unsigned char bol;        /* text: starts a source line */
    unsigned char eol;        /* text: ends with a newline */
    unsigned char dropped;    /* text: part of a standalone line, not output */
    unsigned char standalone; /* tag: stands alone on its line */
    size_t off, len;          /* text bytes, or the tag's trimmed name */
    size_t lws_off, lws_len;  /* tag: leading whitespace of its line */
    size_t nws_off, nws_len;  /* tag: leading whitespace of the next line */
    unsigned line, col;       /* position of the text, or of a tag's opening delimiter */
};

struct toks {
    struct tok *v;
    size_t n, cap;
};

struct scan {
    const char *s;
    size_t len;
    size_t cur;                /* line/col below are those of offset cur */
    unsigned line, col;
    char otag[TMPL_DELIM_MAX + 1], ctag[TMPL_DELIM_MAX + 1];
    size_t olen, clen;
    struct toks tk;
    struct tmpl_error *err;
};

/* tok_new - append a zeroed token; NULL when out of memory. */
static struct tok *tok_new(struct scan *sc)
{
    if (sc->tk.n == sc->tk.cap) {
        size_t cap = sc->tk.cap ? sc->tk.cap * 2 : 64;
        struct tok *v = realloc(sc->tk.v, cap * sizeof *v);
        if (!v) {
            set_err(sc->err, 0, 0, NULL, 0, "out of memory");
            return NULL;
        }
        sc->tk.v = v;
        sc->tk.cap = cap;
    }
    struct tok *t = &sc->tk.v[sc->tk.n++];
    memset(t, 0, sizeof *t);
    return t;
}

/* advance_to - move the line/column cursor forward to offset off. Columns
 * count UTF-8 characters (continuation bytes are skipped). */
static void advance_to(struct scan *sc, size_t off)
{
    for (; sc->cur < off; sc->cur++) {
        unsigned char c = (unsigned char)sc->s[sc->cur];
        if (c == '\n') {
            sc->line++;
            sc->col = 1;
        } else if ((c & 0xC0) != 0x80) {
            sc->col++;
        }
    }
}

/* push_text - add source bytes [a, b) as text tokens, split after each
 * newline so that a token never spans lines. */
static int push_text(struct scan *sc, size_t a, size_t b)
{
    while (a < b) {
        const char *nl = memchr(sc->s + a, '\n', b - a);
        size_t e = nl ? (size_t)(nl - sc->s) + 1 : b;
        struct tok *t = tok_new(sc);
        if (!t)
            return -1;
        advance_to(sc, a);
        t->kind = TK_TEXT;
        t->off = a;
        t->len = e - a;
        t->line = sc->line;
        t->col = sc->col;
        t->bol = a == 0 || sc->s[a - 1] == '\n';
        t->eol = nl != NULL;
        a = e;
    }
    return 0;
}

/* check_name - validate a trimmed tag name: not empty, bounded, no white
 * space or NUL, and for data names a "." or dot-separated non-empty parts. */
static int check_name(struct scan *sc, char kind, const char *p, size_t n, unsigned line, unsigned col)
{
    if (n == 0) {
        set_err(sc->err, line, col, NULL, 0, "empty tag name");
        return -1;
    }
    if (n > TMPL_NAME_MAX) {
        set_err(sc->err, line, col, p, n, "tag name too long (limit %d bytes)", TMPL_NAME_MAX);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (is_ws(p[i]) || p[i] == '\0') {
            set_err(sc->err, line, col, p, n, "invalid tag name '%.*s': white space inside", (int)n, p);
            return -1;
        }
    }
    int data = kind == 'v' || kind == '&' || kind == '{' || kind == '#' || kind == '^';
    if (data && !(n == 1 && p[0] == '.')) {
        int bad = p[0] == '.' || p[n - 1] == '.';
        for (size_t i = 1; i < n && !bad; i++)
            bad = p[i] == '.' && p[i - 1] == '.';
        if (bad) {
            set_err(sc->err, line, col, p, n, "invalid tag name '%.*s': empty part in dotted name", (int)n, p);
            return -1;
        }
    }
    return 0;
}

/* set_delims - parse the inside of {{=<% %>=}} (between the two '=') and
 * make it the current pair of delimiters. */
static int set_delims(struct scan *sc, size_t a, size_t b, unsigned line, unsigned col)
{
    const char *s = sc->s;
    size_t p[2], n[2], k = a;
    for (int i = 0; i < 2; i++) {
        while (k < b && is_ws(s[k]))
            k++;
        p[i] = k;
        while (k < b && !is_ws(s[k]))
            k++;
        n[i] = k - p[i];
    }
    while (k < b && is_ws(s[k]))
        k++;
    if (n[0] == 0 || n[1] == 0 || k != b || n[0] > TMPL_DELIM_MAX || n[1] > TMPL_DELIM_MAX) {
        set_err(sc->err, line, col, NULL, 0,
                "bad delimiter change: want two delimiters of 1 to %d characters, e.g. {{=<%% %%>=}}",
                TMPL_DELIM_MAX);
        return -1;
    }
    memcpy(sc->otag, s + p[0], n[0]);
    sc->otag[n[0]] = '\0';
    sc->olen = n[0];
    memcpy(sc->ctag, s + p[1], n[1]);
    sc->ctag[n[1]] = '\0';
    sc->clen = n[1];
    return 0;
}

/* scan_tag - read the tag whose opening delimiter is at offset t; returns
 * the offset just past it, or 0 on error. */
static size_t scan_tag(struct scan *sc, size_t t)
{
    const char *s = sc->s;
    advance_to(sc, t);
    unsigned line = sc->line, col = sc->col;
    size_t p = t + sc->olen;
    char kind = p < sc->len ? s[p] : '\0';
    if (kind && strchr("!={&#^/><$", kind))
        p++;
    else
        kind = 'v';

    /* {{{x}}} ends in "}" + close delimiter, {{=a b=}} in "=" + close. */
    char end[TMPL_DELIM_MAX + 2];
    size_t elen = 0;
    if (kind == '{' || kind == '=')
        end[elen++] = kind == '{' ? '}' : '=';
    memcpy(end + elen, sc->ctag, sc->clen);
    elen += sc->clen;
    const char *e = memmem(s + p, sc->len - p, end, elen);
    if (!e) {
        set_err(sc->err, line, col, NULL, 0, "unclosed tag: no closing %.*s", (int)elen, end);
        return 0;
    }
    size_t ce = (size_t)(e - s), next = ce + elen;

    if (kind == '!') {
        struct tok *tk = tok_new(sc);
        if (!tk)
            return 0;
        tk->kind = kind;
        tk->line = line;
        tk->col = col;
        return next;
    }
    if (kind == '=') {
        if (set_delims(sc, p, ce, line, col) < 0)
            return 0;
        struct tok *tk = tok_new(sc);
        if (!tk)
            return 0;
        tk->kind = kind;
        tk->line = line;
        tk->col = col;
        return next;
    }
    while (p < ce && is_ws(s[p]))
        p++;
    while (ce > p && is_ws(s[ce - 1]))
        ce--;
    if (check_name(sc, kind, s + p, ce - p, line, col) < 0)
        return 0;
    struct tok *tk = tok_new(sc);
    if (!tk)
        return 0;
    tk->kind = kind;
    tk->off = p;
    tk->len = ce - p;
    tk->line = line;
    tk->col = col;
    return next;
}

/* scan_all - pass 1 over the whole source. */
static int scan_all(struct scan *sc)
{
    size_t pos = 0;
    while (pos < sc->len) {
        const char *o = memmem(sc->s + pos, sc->len - pos, sc->otag, sc->olen);
        size_t t = o ? (size_t)(o - sc->s) : sc->len;
        if (push_text(sc, pos, t) < 0)
            return -1;
        if (t == sc->len)
            break;
        pos = scan_tag(sc, t);
        if (pos == 0)
            return -1;
    }
    return 0;
}

/* ---- pass 2: standalone lines ----------------------------------------- */

/* lead_ws - length of the run of spaces and tabs at p[0..n). */
static size_t lead_ws(const char *p, size_t n)
{
    size_t k = 0;
    while (k < n && (p[k] == ' ' || p[k] == '\t'))
        k++;
    return k;
}

/* blank_text - a text token holding only spaces, tabs and its line end. */
static int blank_text(const char *s, const struct tok *t)
{
    size_t n = t->len;
    if (t->eol) {
        n--;
        if (n > 0 && s[t->off + n - 1] == '\r')
            n--;
    }
    return lead_ws(s + t->off, n) == n;
}

/* mark_standalone - pass 2: for each line, record every tag's line
 * indentation (and the next line's), and drop the whitespace of lines whose
 * tags stand alone. The open-tag stack here only tells which closing tags
 * close a parent; pass 3 reports structural errors. */
static void mark_standalone(const char *s, struct toks *tk)
{
    char open[TMPL_DEPTH_MAX + 2];
    size_t nopen = 0, deep = 0;         /* deep: opens beyond the array, not tracked */
    size_t prev_a = 0, prev_b = 0;      /* tokens of the previous line, [prev_a, prev_b) */
    size_t i = 0;
    while (i < tk->n) {
        size_t a = i, b = i;
        while (b < tk->n && !(tk->v[b].kind == TK_TEXT && tk->v[b].eol))
            b++;
        b = b < tk->n ? b + 1 : tk->n;  /* line is [a, b) */
        i = b;

        size_t lws_off = tk->v[a].off, lws_len = 0;
        if (tk->v[a].kind == TK_TEXT)
            lws_len = lead_ws(s + tk->v[a].off, tk->v[a].len);
        for (size_t k = prev_a; k < prev_b; k++) {
            if (tk->v[k].kind != TK_TEXT) {
                tk->v[k].nws_off = lws_off;
                tk->v[k].nws_len = lws_len;
            }
        }
        prev_a = a;
        prev_b = b;

        size_t ntags = 0;
        int blank = 1, eligible = 1, parent = 0;
        for (size_t k = a; k < b; k++) {
            struct tok *t = &tk->v[k];
            if (t->kind == TK_TEXT) {
                blank = blank && blank_text(s, t);
                continue;
            }
            ntags++;
            t->lws_off = lws_off;
            t->lws_len = lws_len;
            if (strchr("v&{", t->kind))
                eligible = 0;
            if (strchr("#^<$", t->kind)) {
                if (nopen < sizeof open)
                    open[nopen++] = t->kind;
                else
                    deep++;
                parent = parent || t->kind == '<';
            } else if (t->kind == '/') {
                if (deep)
                    deep--;
                else if (nopen)
                    parent = parent || open[--nopen] == '<';
            }
        }
        if (ntags == 0 || !blank || !eligible || (ntags > 1 && !parent))
            continue;
        for (size_t k = a; k < b; k++) {
            if (tk->v[k].kind == TK_TEXT)
                tk->v[k].dropped = 1;
            else
                tk->v[k].standalone = 1;
        }
    }
}

/* ---- pass 3: the tree -------------------------------------------------- */

enum ntype { N_TEXT, N_VAR, N_SECTION, N_INVERTED, N_PARTIAL, N_PARENT, N_BLOCK };

struct node {
    enum ntype type;
    int escape;              /* N_VAR: {{x}} rather than {{{x}}} or {{&x}} */
    int standalone;          /* N_PARTIAL, N_PARENT, N_BLOCK: opening tag stood alone */
    const char *text;        /* N_TEXT: bytes inside the template's source copy */
    size_t len;              /* N_TEXT: bytes; others: length of name */
    char *name;              /* owned, NUL-terminated; NULL for N_TEXT */
    const char *indent;      /* N_PARTIAL, N_PARENT: standalone indentation; N_BLOCK: block indentation */
    size_t indent_len;
    struct node *kids;       /* owned: section body, block default, or a parent's block arguments */
    size_t nkids;
    unsigned line, col;
};

struct tmpl {
    char *src;               /* owned copy of the source; text nodes point into it */
    struct node *root;
    size_t nroot;
};

struct nlist {
    struct node *v;
    size_t n, cap;
};

struct build {
    const char *s;
    const struct toks *tk;
    size_t i;
    struct tmpl_error *err;
};

static void nodes_free(struct node *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        nodes_free(v[i].kids, v[i].nkids);
    }
    free(v);
}

/* nlist_add - append a copy of nd (which the list then owns). */
static int nlist_add(struct build *b, struct nlist *l, const struct node *nd)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        struct node *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            set_err(b->err, 0, 0, NULL, 0, "out of memory");
            return -1;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *nd;
    return 0;
}

/* strip_ws - how many leading bytes of p[0..n) match the whitespace
 * string S (the indentation being removed). */
static size_t strip_ws(const char *p, size_t n, const char *S, size_t slen)
{
    size_t k = 0;
    while (k < n && k < slen && p[k] == S[k] && (p[k] == ' ' || p[k] == '\t'))
        k++;
    return k;
}

/*
 * build_list - pass 3: read tokens into out until the tag closing `open`
 * (or the end, at the top, where open is NULL). S is the indentation
 * removed from the start of each source line: that of the innermost block
 * argument being read, if any.
 */
static int build_list(struct build *b, struct nlist *out, const struct tok *open, int depth, const char *S,
                      size_t slen)
{
    const char *s = b->s;
    while (b->i < b->tk->n) {
        const struct tok *t = &b->tk->v[b->i++];
        struct node nd;
        memset(&nd, 0, sizeof nd);
        nd.line = t->line;
        nd.col = t->col;

        if (t->kind == TK_TEXT) {
            if (t->dropped)
                continue;
            const char *p = s + t->off;
            size_t n = t->len;
            if (t->bol && slen) {
                size_t k = strip_ws(p, n, S, slen);
                p += k;
                n -= k;
            }
            if (n == 0)
                continue;
            struct node *last = out->n ? &out->v[out->n - 1] : NULL;
            if (last && last->type == N_TEXT && last->text + last->len == p) {
                last->len += n;
                continue;
            }
            nd.type = N_TEXT;
            nd.text = p;
            nd.len = n;
            if (nlist_add(b, out, &nd) < 0)
                return -1;
            continue;
        }
        if (t->kind == '!' || t->kind == '=')
            continue;
        if (t->kind == '/') {
            if (!open) {
                set_err(b->err, t->line, t->col, s + t->off, t->len, "unexpected closing tag for '%.*s'",
                        (int)t->len, s + t->off);
                return -1;
            }
            if (t->len != open->len || memcmp(s + t->off, s + open->off, t->len) != 0) {
                set_err(b->err, t->line, t->col, s + t->off, t->len,
                        "closing tag '%.*s' does not match '%c%.*s' opened on line %u column %u", (int)t->len,
                        s + t->off, open->kind, (int)open->len, s + open->off, open->line, open->col);
                return -1;
            }
            return 0;
        }

        nd.name = strndup(s + t->off, t->len);
        if (!nd.name) {
            set_err(b->err, 0, 0, NULL, 0, "out of memory");
            return -1;
        }
        nd.len = t->len;
        nd.standalone = t->standalone;
        /* Indentation of a standalone partial or parent: its line's white
         * space, less what an enclosing block argument removes. */
        size_t k = strip_ws(s + t->lws_off, t->lws_len, S, slen);
        nd.indent = s + t->lws_off + k;
        nd.indent_len = t->lws_len - k;

        switch (t->kind) {
        case 'v':
        case '&':
        case '{':
            nd.type = N_VAR;
            nd.escape = t->kind == 'v';
            break;
        case '>':
            nd.type = N_PARTIAL;
            break;
        default: { /* '#', '^', '<', '$' */
            if (depth >= TMPL_DEPTH_MAX) {
                set_err(b->err, t->line, t->col, nd.name, nd.len, "sections nested too deeply (limit %d)",
                        TMPL_DEPTH_MAX);
                free(nd.name);
                return -1;
            }
            nd.type = t->kind == '#' ? N_SECTION : t->kind == '^' ? N_INVERTED : t->kind == '<' ? N_PARENT : N_BLOCK;
            const char *kS = S;
            size_t kslen = slen;
            if (t->kind == '$') {
                /* A block's indentation is that of its first content line
                 * when the tag stands alone (the spec's "intrinsic
                 * indentation"), else that of the tag's own line. A block
                 * argument of a parent has it removed from its lines. */
                size_t ro = t->standalone ? t->nws_off : t->lws_off;
                size_t rl = t->standalone ? t->nws_len : t->lws_len;
                size_t rk = strip_ws(s + ro, rl, S, slen);
                nd.indent = s + ro + rk;
                nd.indent_len = rl - rk;
                if (open && open->kind == '<') {
                    kS = s + ro;
                    kslen = rl;
                }
            }
            struct nlist kids = {0};
            if (build_list(b, &kids, t, depth + 1, kS, kslen) < 0) {
                nodes_free(kids.v, kids.n);
                free(nd.name);
                return -1;
            }
            if (nd.type == N_PARENT) {
                /* Only blocks count inside a parent; the rest is ignored. */
                size_t w = 0;
                for (size_t r = 0; r < kids.n; r++) {
                    if (kids.v[r].type == N_BLOCK)
                        kids.v[w++] = kids.v[r];
                    else {
                        nodes_free(kids.v[r].kids, kids.v[r].nkids);
                        free(kids.v[r].name);
                    }
                }
                kids.n = w;
            }
            nd.kids = kids.v;
            nd.nkids = kids.n;
            break;
        }
        }
        if (nlist_add(b, out, &nd) < 0) {
            nodes_free(nd.kids, nd.nkids);
            free(nd.name);
            return -1;
        }
    }
    if (open) {
        set_err(b->err, open->line, open->col, b->s + open->off, open->len, "unclosed section '%c%.*s'",
                open->kind, (int)open->len, b->s + open->off);
        return -1;
    }
    return 0;
}

struct tmpl *tmpl_compile(const char *src, size_t len, struct tmpl_error *err)
{
    if (err)
        memset(err, 0, sizeof *err);
    if (!src && len) {
        set_err(err, 0, 0, NULL, 0, "no source");
        return NULL;
    }
    if (len > TMPL_SOURCE_MAX) {
        set_err(err, 0, 0, NULL, 0, "template too large: %zu bytes (limit %zu)", len, TMPL_SOURCE_MAX);
        return NULL;
    }
    struct tmpl *t = calloc(1, sizeof *t);
    char *copy = malloc(len + 1);
    if (!t || !copy) {
        free(t);
        free(copy);
        set_err(err, 0, 0, NULL, 0, "out of memory");
        return NULL;
    }
    if (len)
        memcpy(copy, src, len);
    copy[len] = '\0';
    t->src = copy;

    struct scan sc = {.s = copy, .len = len, .line = 1, .col = 1, .otag = "{{", .ctag = "}}",
                      .olen = 2, .clen = 2, .err = err};
    if (scan_all(&sc) < 0) {
        free(sc.tk.v);
        tmpl_free(t);
        return NULL;
    }
    mark_standalone(copy, &sc.tk);
    struct build b = {.s = copy, .tk = &sc.tk, .err = err};
    struct nlist root = {0};
    int rc = build_list(&b, &root, NULL, 0, NULL, 0);
    free(sc.tk.v);
    t->root = root.v;
    t->nroot = root.n;
    if (rc < 0) {
        tmpl_free(t);
        return NULL;
    }
    return t;
}

void tmpl_free(struct tmpl *t)
{
    if (!t)
        return;
    nodes_free(t->root, t->nroot);
    free(t->src);
    free(t);
}

/* ---- rendering --------------------------------------------------------- */

struct pentry {
    char *name;              /* owned */
    struct tmpl *t;          /* owned; NULL: the callback had no such partial */
};

/* One active parent call: its block arguments, and the template it is in
 * (for error positions inside those arguments). Frames live on the C stack
 * and form a chain to the outermost call. */
struct scope {
    const struct node *call;
    const char *where;
    const struct scope *up;
};

struct render {
    const struct tmpl_opts *o;
    struct buf *out;
    struct tmpl_error *err;
    json_t *stack[TMPL_CONTEXT_MAX];   /* borrowed references */
    size_t nstack;
    char indent[TMPL_INDENT_MAX];
    size_t indent_len;
    int bol;                           /* next template output starts a line */
    struct pentry cache[TMPL_PARTIALS_MAX];
    size_t ncache;
    unsigned depth, max_depth;
    unsigned long steps, max_steps;
    const struct node *at;             /* node being rendered, for error positions */
    const char *where;                 /* partial being rendered; NULL: the main template */
};

/* rerr - record a render error at the current node. */
__attribute__((format(printf, 3, 4)))
static void rerr(struct render *r, const char *name, const char *fmt, ...)
{
    struct tmpl_error *e = r->err;
    e->line = r->at ? r->at->line : 0;
    e->column = r->at ? r->at->col : 0;
    snprintf(e->partial, sizeof e->partial, "%s", r->where ? r->where : "");
    snprintf(e->name, sizeof e->name, "%s", name ? name : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

static int out_raw(struct render *r, const char *p, size_t n)
{
    if (buf_append(r->out, p, n) == 0)
        return 0;
    size_t max = r->out->max ? r->out->max : BUF_HARD_MAX;
    if (r->out->len + n > max)
        rerr(r, NULL, "output too large (limit %zu bytes)", max);
    else
        rerr(r, NULL, "out of memory");
    return -1;
}

/* emit_text - write template text, indenting each line it starts. */
static int emit_text(struct render *r, const char *p, size_t n)
{
    while (n) {
        if (r->bol && r->indent_len && out_raw(r, r->indent, r->indent_len) < 0)
            return -1;
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl ? (size_t)(nl - p) + 1 : n;
        if (out_raw(r, p, seg) < 0)
            return -1;
        r->bol = nl != NULL;
        p += seg;
        n -= seg;
    }
    return 0;
}

/* emit_value - write interpolated bytes, HTML-escaped if esc. Newlines in
 * values are data, so they neither start lines nor get indented. */
static int emit_value(struct render *r, const char *p, size_t n, int esc)
{
    if (n == 0)
        return 0;
    if (r->bol && r->indent_len && out_raw(r, r->indent, r->indent_len) < 0)
        return -1;
    r->bol = 0;
    if (!esc)
        return out_raw(r, p, n);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        const char *rep;
        switch (p[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        default: continue;
        }
        if (out_raw(r, p + run, i - run) < 0 || out_raw(r, rep, strlen(rep)) < 0)
            return -1;
        run = i + 1;
    }
    return out_raw(r, p + run, n - run);
}

struct dump_sink {
    struct render *r;
    int esc;
};

static int dump_cb(const char *p, size_t n, void *data)
{
    struct dump_sink *d = data;
    return emit_value(d->r, p, n, d->esc);
}

/* emit_json - interpolate one value (see tmpl.h for the forms). */
static int emit_json(struct render *r, json_t *v, int esc)
{
    char num[64];
    switch (json_typeof(v)) {
    case JSON_STRING:
        return emit_value(r, json_string_value(v), json_string_length(v), esc);
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return emit_value(r, num, strlen(num), esc);
    case JSON_REAL: {
        /* Shortest of %.15g..%.17g that reads back exactly: 1.21 stays
         * "1.21" and 2.0 is "2". */
        double d = json_real_value(v);
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(num, sizeof num, "%.*g", prec, d);
            if (strtod(num, NULL) == d)
                break;
        }
        return emit_value(r, num, strlen(num), esc);
    }
    case JSON_TRUE:
        return emit_value(r, "true", 4, esc);
    case JSON_FALSE:
        return emit_value(r, "false", 5, esc);
    case JSON_NULL:
        return 0;
    default: {
        struct dump_sink d = {r, esc};
        if (json_dump_callback(v, dump_cb, &d, JSON_COMPACT | JSON_ENCODE_ANY) == 0)
            return 0;
        if (!r->err->message[0])
            rerr(r, NULL, "cannot write value as JSON");
        return -1;
    }
    }
}

/* lookup - resolve a (possibly dotted) name against the context stack, as
 * the spec says: the first part walks the stack from the top, each further
 * part looks only inside the previous result. *found tells a missing name
 * from a null value. */
static json_t *lookup(const struct render *r, const char *name, size_t len, int *found)
{
    *found = 0;
    if (len == 1 && name[0] == '.') {
        if (r->nstack == 0)
            return NULL;
        *found = 1;
        return r->stack[r->nstack - 1];
    }
    const char *dot = memchr(name, '.', len);
    size_t plen = dot ? (size_t)(dot - name) : len;
    json_t *v = NULL;
    for (size_t i = r->nstack; i-- > 0 && !v;)
        if (json_is_object(r->stack[i]))
            v = json_object_getn(r->stack[i], name, plen);
    if (!v)
        return NULL;
    while (dot) {
        const char *p = dot + 1;
        size_t rest = len - (size_t)(p - name);
        dot = memchr(p, '.', rest);
        plen = dot ? (size_t)(dot - p) : rest;
        if (!json_is_object(v) || !(v = json_object_getn(v, p, plen)))
            return NULL;
    }
    *found = 1;
    return v;
}

/* truthy - the section test: missing, null, false, [] and "" are falsy. */
static int truthy(const json_t *v)
{
    if (!v)
        return 0;
    switch (json_typeof(v)) {
    case JSON_NULL:
    case JSON_FALSE:
        return 0;
    case JSON_ARRAY:
        return json_array_size(v) > 0;
    case JSON_STRING:
        return json_string_length(v) > 0;
    default:
        return 1;
    }
}

static int push_ctx(struct render *r, json_t *v)
{
    if (r->nstack == TMPL_CONTEXT_MAX) {
        rerr(r, r->at ? r->at->name : NULL, "context stack too deep (limit %d)", TMPL_CONTEXT_MAX);
        return -1;
    }
    r->stack[r->nstack++] = v;
    return 0;
}

/* get_partial - the compiled template called n->name, from the cache or
 * through the callback. *out is NULL when there is none. */
static int get_partial(struct render *r, const struct node *n, const struct tmpl **out)
{
    for (size_t i = 0; i < r->ncache; i++) {
        if (strcmp(r->cache[i].name, n->name) == 0) {
            *out = r->cache[i].t;
            return 0;
        }
    }
    if (r->ncache == TMPL_PARTIALS_MAX) {
        rerr(r, n->name, "too many different partials (limit %d)", TMPL_PARTIALS_MAX);
        return -1;
    }
    size_t len = 0;
    const char *src = r->o->partial ? r->o->partial(r->o->ctx, n->name, &len) : NULL;
    struct tmpl *t = NULL;
    if (src) {
        struct tmpl_error pe;
        t = tmpl_compile(src, len, &pe);
        if (!t) {
            struct tmpl_error *e = r->err;
            e->line = pe.line;
            e->column = pe.column;
            snprintf(e->partial, sizeof e->partial, "%s", n->name);
            snprintf(e->name, sizeof e->name, "%s", pe.name);
            snprintf(e->message, sizeof e->message, "partial '%.64s': %.170s", n->name, pe.message);
            return -1;
        }
    }
    char *name = strdup(n->name);
    if (!name) {
        tmpl_free(t);
        rerr(r, NULL, "out of memory");
        return -1;
    }
    r->cache[r->ncache].name = name;
    r->cache[r->ncache].t = t;
    r->ncache++;
    *out = t;
    return 0;
}

static int render_list(struct render *r, const struct node *v, size_t n, const struct scope *sc);

/*
 * render_nested - render kids under an extra indentation (a standalone
 * partial's or parent's, or a substituted block's), one level deeper in the
 * partial/parent/block recursion, with where naming their template.
 */
static int render_nested(struct render *r, const struct node *n, const struct node *kids, size_t nkids,
                         const struct scope *sc, const char *where, int indent)
{
    if (r->depth >= r->max_depth) {
        rerr(r, n->name, "partials, parents or blocks nested too deeply (limit %u) at '%s'", r->max_depth,
             n->name);
        return -1;
    }
    size_t saved_len = r->indent_len;
    const char *saved_where = r->where;
    if (indent) {
        if (r->indent_len + n->indent_len > TMPL_INDENT_MAX) {
            rerr(r, n->name, "indentation too deep (limit %d bytes)", TMPL_INDENT_MAX);
            return -1;
        }
        memcpy(r->indent + r->indent_len, n->indent, n->indent_len);
        r->indent_len += n->indent_len;
    }
    if (n->standalone)
        r->bol = 1;
    r->where = where;
    r->depth++;
    int rc = render_list(r, kids, nkids, sc);
    r->depth--;
    r->where = saved_where;
    r->indent_len = saved_len;
    return rc;
}

/* find_arg - the argument for block name: the outermost parent call that
 * passes one wins ("top-level substitutions take precedence"). */
static const struct node *find_arg(const struct scope *sc, const char *name, const struct scope **in)
{
    const struct node *arg = NULL;
    for (; sc; sc = sc->up) {
        for (size_t i = 0; i < sc->call->nkids; i++) {
            if (strcmp(sc->call->kids[i].name, name) == 0) {
                arg = &sc->call->kids[i];
                *in = sc;
                break;
            }
        }
    }
    return arg;
}

static int render_node(struct render *r, const struct node *n, const struct scope *sc)
{
    int found;
    json_t *v;
    const struct tmpl *t;

    switch (n->type) {
    case N_TEXT:
        return emit_text(r, n->text, n->len);
    case N_VAR:
        v = lookup(r, n->name, n->len, &found);
        if (!found) {
            if (r->o->strict) {
                rerr(r, n->name, "missing variable '%s'", n->name);
                return -1;
            }
            return 0;
        }
        return emit_json(r, v, n->escape && r->o->escape_html);
    case N_SECTION:
    case N_INVERTED:
        v = lookup(r, n->name, n->len, &found);
        if (n->type == N_INVERTED)
            return truthy(v) ? 0 : render_list(r, n->kids, n->nkids, sc);
        if (!truthy(v))
            return 0;
        if (!json_is_array(v)) {
            if (push_ctx(r, v) < 0)
                return -1;
            int rc = render_list(r, n->kids, n->nkids, sc);
            r->nstack--;
            return rc;
        }
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (++r->steps > r->max_steps) {
                rerr(r, n->name, "template too complex (limit %lu steps)", r->max_steps);
                return -1;
            }
            r->at = n;
            if (push_ctx(r, json_array_get(v, i)) < 0)
                return -1;
            int rc = render_list(r, n->kids, n->nkids, sc);
            r->nstack--;
            if (rc < 0)
                return -1;
        }
        return 0;
    case N_PARTIAL:
        if (get_partial(r, n, &t) < 0)
            return -1;
        /* A partial is a parent without arguments: blocks in it can still
         * be filled by the parent calls around it. */
        return t ? render_nested(r, n, t->root, t->nroot, sc, n->name, n->standalone) : 0;
    case N_PARENT: {
        if (get_partial(r, n, &t) < 0)
            return -1;
        if (!t)
            return 0;
        struct scope frame = {n, r->where, sc};
        return render_nested(r, n, t->root, t->nroot, &frame, n->name, n->standalone);
    }
    case N_BLOCK: {
        const struct scope *in = NULL;
        const struct node *arg = find_arg(sc, n->name, &in);
        if (!arg)
            return render_list(r, n->kids, n->nkids, sc);
        return render_nested(r, n, arg->kids, arg->nkids, sc, in->where, 1);
    }
    }
    return 0;
}

static int render_list(struct render *r, const struct node *v, size_t n, const struct scope *sc)
{
    for (size_t i = 0; i < n; i++) {
        r->at = &v[i];
        if (++r->steps > r->max_steps) {
            rerr(r, NULL, "template too complex (limit %lu steps)", r->max_steps);
            return -1;
        }
        if (render_node(r, &v[i], sc) < 0)
            return -1;
    }
    return 0;
}

int tmpl_render(const struct tmpl *t, json_t *data, const struct tmpl_opts *o, struct buf *out,
                struct tmpl_error *err)
{
    struct tmpl_error local;
    if (!err)
        err = &local;
    memset(err, 0, sizeof *err);
    if (!t || !out) {
        set_err(err, 0, 0, NULL, 0, "no template or no output buffer");
        return -1;
    }
    static const struct tmpl_opts defaults = {.escape_html = 1};
    if (!o)
        o = &defaults;
    struct render *r = calloc(1, sizeof *r);
    if (!r) {
        set_err(err, 0, 0, NULL, 0, "out of memory");
        return -1;
    }
    r->o = o;
    r->out = out;
    r->err = err;
    r->bol = 1;
    r->max_depth = o->max_partial_depth && o->max_partial_depth < TMPL_PARTIAL_DEPTH_MAX
                       ? o->max_partial_depth : TMPL_PARTIAL_DEPTH_MAX;
    r->max_steps = o->max_steps && o->max_steps < TMPL_STEPS_MAX ? o->max_steps : TMPL_STEPS_MAX;
    if (data)
        r->stack[r->nstack++] = data;

    size_t start = out->len;
    int rc = render_list(r, t->root, t->nroot, NULL);
    for (size_t i = 0; i < r->ncache; i++) {
        free(r->cache[i].name);
        tmpl_free(r->cache[i].t);
    }
    free(r);
    if (rc < 0 && out->data) {
        out->len = start;
        out->data[start] = '\0';
    }
    return rc;
}
