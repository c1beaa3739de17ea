/*
 * test_tmpl.c - unit tests for templates/tmpl.c.
 *
 * 1. The official Mustache spec suite, read at run time from the JSON files
 *    in $MUSTACHE_SPEC_DIR (default tests/data/mustache-spec, a copy of ../shared/data/mustache-spec): every
 *    test of every *.json file there, partials served from each test's
 *    "partials" object. Prints one summary line; fails if any test fails or
 *    if none ran.
 * 2. Table tests of our own: compile errors with positions, escaping on
 *    and off, strict mode, every limit, layouts with parent and blocks, and
 *    the host-language choices tmpl.h documents (falsy "", number forms).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "templates/tmpl.h"

/* ---- helpers ---------------------------------------------------------- */

/* json_partial - tmpl_partial_fn serving strings from a JSON object. */
static const char *json_partial(void *ctx, const char *name, size_t *len)
{
    json_t *v = ctx ? json_object_get(ctx, name) : NULL;
    if (!json_is_string(v))
        return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

/* render_opts - compile src and render it with data (JSON text) and
 * partials (JSON object text or NULL). Returns a malloc'd result, or NULL
 * with *err filled in. max bounds the output (0: none). */
static char *render_opts(const char *src, const char *data, const char *partials, struct tmpl_opts o,
                         size_t max, struct tmpl_error *err)
{
    json_error_t je;
    json_t *d = data ? json_loads(data, JSON_DECODE_ANY, &je) : NULL;
    json_t *p = partials ? json_loads(partials, 0, &je) : NULL;
    if (data)
        assert_non_null(d);
    if (partials)
        assert_non_null(p);
    char *res = NULL;
    struct tmpl *t = tmpl_compile(src, strlen(src), err);
    if (t) {
        struct buf out;
        buf_init(&out, max);
        o.partial = json_partial;
        o.ctx = p;
        if (tmpl_render(t, d, &o, &out, err) == 0)
            res = buf_steal(&out);
        else
            assert_int_equal(out.len, 0); /* restored on error */
        buf_free(&out);
    }
    tmpl_free(t);
    json_decref(d);
    json_decref(p);
    return res;
}

static void expect_render(const char *src, const char *data, const char *partials, int escape,
                          const char *want)
{
    struct tmpl_error err;
    struct tmpl_opts o = {.escape_html = escape};
    char *got = render_opts(src, data, partials, o, 0, &err);
    if (!got)
        fail_msg("render of %s failed: %u:%u %s", src, err.line, err.column, err.message);
    assert_string_equal(got, want);
    free(got);
}

/* ---- 1. the spec suite ------------------------------------------------ */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* run_spec_file - run every test in one spec file; returns failures and
 * adds the number run to *ran. */
static int run_spec_file(const char *path, int *ran)
{
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc) {
        print_error("cannot read %s: %s\n", path, je.text);
        return 1;
    }
    int failed = 0;
    json_t *tests = json_object_get(doc, "tests");
    size_t i;
    json_t *tc;
    json_array_foreach(tests, i, tc) {
        const char *name = json_string_value(json_object_get(tc, "name"));
        json_t *tpl = json_object_get(tc, "template");
        const char *want = json_string_value(json_object_get(tc, "expected"));
        struct tmpl_error err;
        struct tmpl *t = tmpl_compile(json_string_value(tpl), json_string_length(tpl), &err);
        struct buf out;
        buf_init(&out, 0);
        struct tmpl_opts o = {.escape_html = 1, .partial = json_partial,
                              .ctx = json_object_get(tc, "partials")};
        int ok = t && tmpl_render(t, json_object_get(tc, "data"), &o, &out, &err) == 0;
        if (!ok) {
            print_error("FAIL %s: %s: error %u:%u %s\n", path, name, err.line, err.column, err.message);
            failed++;
        } else if (strcmp(out.data ? out.data : "", want) != 0) {
            print_error("FAIL %s: %s\n  want [%s]\n  got  [%s]\n", path, name, want, out.data ? out.data : "");
            failed++;
        }
        (*ran)++;
        buf_free(&out);
        tmpl_free(t);
    }
    json_decref(doc);
    return failed;
}

static void test_spec_suite(void **state)
{
    const char *dir = getenv("MUSTACHE_SPEC_DIR");
    if (!dir || !*dir)
        dir = "tests/data/mustache-spec";
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("cannot open spec directory %s (set MUSTACHE_SPEC_DIR)", dir);
    char *names[64];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < 64) {
        size_t l = strlen(de->d_name);
        /* ~lambdas needs code in the data; the suite here does not ship it. */
        if (l > 5 && strcmp(de->d_name + l - 5, ".json") == 0 && de->d_name[0] != '~')
            names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], cmp_str);

    char summary[1024];
    size_t sl = 0;
    int total = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        int ran = 0;
        int f = run_spec_file(path, &ran);
        total += ran;
        failed += f;
        names[i][strlen(names[i]) - 5] = '\0';
        sl += (size_t)snprintf(summary + sl, sizeof summary - sl, "%s%s %d", i ? ", " : "", names[i], ran - f);
        if (f)
            sl += (size_t)snprintf(summary + sl, sizeof summary - sl, "/%d", ran);
        if (sl >= sizeof summary)
            sl = sizeof summary - 1;
        free(names[i]);
    }
    printf("mustache spec: %d/%d passed (%s)\n", total - failed, total, summary);
    if (total == 0)
        fail_msg("no spec tests ran from %s", dir);
    assert_int_equal(failed, 0);
}

/* ---- 2. compile errors ------------------------------------------------ */

static void test_compile_errors(void **state)
{
    static const struct {
        const char *src;
        unsigned line, col;
        const char *msg; /* substring of the message */
    } cases[] = {
        {"Hello {{name", 1, 7, "unclosed tag"},
        {"a\nb {{{x}}", 2, 3, "unclosed tag"},
        {"{{#a}}\n  {{b}}\n", 1, 1, "unclosed section '#a'"},
        {"x\n  {{^list}}", 2, 3, "unclosed section '^list'"},
        {"{{#a}}{{/b}}", 1, 7, "does not match"},
        {"{{#a}}{{#b}}{{/a}}{{/b}}", 1, 13, "does not match"},
        {"text {{/a}}", 1, 6, "unexpected closing tag"},
        {"{{}}", 1, 1, "empty tag name"},
        {"ok\n {{# }}", 2, 2, "empty tag name"},
        {"{{=<% %>=}}<%%>", 1, 12, "empty tag name"},
        {"{{= x =}}", 1, 1, "bad delimiter change"},
        {"{{=a b c=}}", 1, 1, "bad delimiter change"},
        {"{{=<% %>}}", 1, 1, "unclosed tag"},
        {"{{first name}}", 1, 1, "white space inside"},
        {"{{a..b}}", 1, 1, "empty part"},
        {"{{.a}}", 1, 1, "empty part"},
        {"{{<layout}}{{$body}}{{/layout}}", 1, 21, "does not match"},
        {"{{$body}}", 1, 1, "unclosed section '$body'"},
        {"h\xc3\xa9llo {{x", 1, 7, "unclosed tag"}, /* columns count characters */
        {"{{!\ncomment\n}} {{#x}}", 3, 4, "unclosed section"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct tmpl_error err;
        struct tmpl *t = tmpl_compile(cases[i].src, strlen(cases[i].src), &err);
        if (t)
            fail_msg("case %zu compiled: %s", i, cases[i].src);
        if (err.line != cases[i].line || err.column != cases[i].col || !strstr(err.message, cases[i].msg))
            fail_msg("case %zu (%s): got %u:%u \"%s\", want %u:%u \"%s\"", i, cases[i].src, err.line,
                     err.column, err.message, cases[i].line, cases[i].col, cases[i].msg);
    }
    /* Names of the offending section are reported. */
    struct tmpl_error err;
    assert_null(tmpl_compile("{{#items}}x", 11, &err));
    assert_string_equal(err.name, "items");
    /* err may be NULL; a good template compiles; NULL is free-safe. */
    assert_null(tmpl_compile("{{", 2, NULL));
    struct tmpl *t = tmpl_compile("{{#a}}{{b}}{{/a}}", 17, NULL);
    assert_non_null(t);
    tmpl_free(t);
    tmpl_free(NULL);
    t = tmpl_compile("", 0, &err);
    assert_non_null(t);
    tmpl_free(t);
}

/* ---- escaping, strict, data forms ------------------------------------- */

static void test_escaping(void **state)
{
    const char *data = "{\"x\": \"<a href='q'>&\\\"</a>\"}";
    expect_render("{{x}}", data, NULL, 1, "&lt;a href=&#39;q&#39;&gt;&amp;&quot;&lt;/a&gt;");
    expect_render("{{{x}}}|{{&x}}", data, NULL, 1, "<a href='q'>&\"</a>|<a href='q'>&\"</a>");
    expect_render("{{x}}|{{{x}}}", data, NULL, 0, "<a href='q'>&\"</a>|<a href='q'>&\"</a>");
    /* Escaping is applied inside partials too, and to JSON-dumped values. */
    expect_render("{{>p}}", "{\"o\": {\"k\": \"<\"}}", "{\"p\": \"{{o}}\"}", 1, "{&quot;k&quot;:&quot;&lt;&quot;}");
    /* NULL opts mean escaping on. */
    struct tmpl *t = tmpl_compile("{{x}}", 5, NULL);
    json_t *d = json_pack("{s:s}", "x", "<b>");
    struct buf out;
    buf_init(&out, 0);
    assert_int_equal(tmpl_render(t, d, NULL, &out, NULL), 0);
    assert_string_equal(out.data, "&lt;b&gt;");
    buf_free(&out);
    json_decref(d);
    tmpl_free(t);
}

static void test_values(void **state)
{
    expect_render("{{a}} {{b}} {{c}} {{d}} {{e}} {{f}} {{g}}",
                  "{\"a\": 1.5, \"b\": 2.0, \"c\": -7, \"d\": 0.1, \"e\": 1e21, \"f\": true, \"g\": false}",
                  NULL, 1, "1.5 2 -7 0.1 1e+21 true false");
    expect_render("[{{n}}][{{l}}]", "{\"n\": null, \"l\": [1, \"a\"]}", NULL, 0, "[][[1,\"a\"]]");
    /* Product choice: "" is falsy, 0 and {} are truthy. */
    expect_render("{{#s}}S{{/s}}{{^s}}no-s{{/s}} {{#z}}Z{{/z}} {{#o}}O{{/o}}",
                  "{\"s\": \"\", \"z\": 0, \"o\": {}}", NULL, 1, "no-s Z O");
    /* Data may be any JSON value, or NULL. */
    expect_render("{{.}}!", "\"hi\"", NULL, 1, "hi!");
    expect_render("[{{x}}]{{^x}}none{{/x}}", NULL, NULL, 1, "[]none");
    /* Dotted names and the implicit iterator. */
    expect_render("{{#items}}{{name}}={{price.eur}};{{/items}}",
                  "{\"items\": [{\"name\": \"a\", \"price\": {\"eur\": 3}}, {\"name\": \"b\"}]}", NULL, 1,
                  "a=3;b=;");
}

static void test_strict(void **state)
{
    struct tmpl_error err;
    struct tmpl_opts strict = {.escape_html = 1, .strict = 1};
    struct tmpl_opts lax = {.escape_html = 1};
    const char *src = "Hi {{user.first}}\n{{#user}}{{user.last}}{{/user}}";
    const char *data = "{\"user\": {\"first\": \"Ann\"}}";

    char *got = render_opts(src, data, NULL, lax, 0, &err);
    assert_non_null(got);
    assert_string_equal(got, "Hi Ann\n");
    free(got);

    assert_null(render_opts(src, data, NULL, strict, 0, &err));
    assert_string_equal(err.name, "user.last");
    assert_non_null(strstr(err.message, "user.last"));
    assert_int_equal(err.line, 2);
    assert_int_equal(err.column, 10);
    assert_string_equal(err.partial, "");

    /* null is present, not missing; sections on missing names are falsy. */
    got = render_opts("[{{n}}]{{#nope}}x{{/nope}}{{^nope}}y{{/nope}}", "{\"n\": null}", NULL, strict, 0, &err);
    assert_non_null(got);
    assert_string_equal(got, "[]y");
    free(got);

    /* Inside a partial the error names the partial. */
    assert_null(render_opts("a\n{{>footer}}", "{}", "{\"footer\": \"x\\n {{unsub_url}}\"}", strict, 0, &err));
    assert_string_equal(err.name, "unsub_url");
    assert_string_equal(err.partial, "footer");
    assert_int_equal(err.line, 2);
    assert_int_equal(err.column, 2);
}

/* ---- partials and layouts --------------------------------------------- */

static void test_partials(void **state)
{
    /* Partials are compiled with default delimiters and indented when
     * standalone; a missing partial is empty. */
    expect_render("{{=<% %>=}}<ul>\n  <%> item %>\n</ul>\n<%>missing%>.", "{\"x\": 1}",
                  "{\"item\": \"<li>{{x}}</li>\\n<li>2</li>\\n\"}", 1, "<ul>\n  <li>1</li>\n  <li>2</li>\n</ul>\n.");
    /* A partial that does not compile is a render error naming it. */
    struct tmpl_error err;
    struct tmpl_opts o = {.escape_html = 1};
    assert_null(render_opts("x {{>bad}}", "{}", "{\"bad\": \"ok\\n{{#open}}\"}", o, 0, &err));
    assert_string_equal(err.partial, "bad");
    assert_int_equal(err.line, 2);
    assert_int_equal(err.column, 1);
    assert_non_null(strstr(err.message, "partial 'bad'"));
}

static void test_layout(void **state)
{
    const char *partials =
        "{\"layout\": \"<html>\\n<head><title>{{$title}}Acme{{/title}}</title></head>\\n<body>\\n"
        "  {{$body}}\\n  <p>default body</p>\\n  {{/body}}\\n"
        "  {{>footer}}\\n</body>\\n</html>\\n\","
        " \"footer\": \"<p>{{$footer}}Bye, {{company}}{{/footer}}</p>\\n\"}";
    const char *child = "{{<layout}}\n"
                        "{{$title}}Receipt for {{name}}{{/title}}\n"
                        "{{$body}}\n"
                        "<p>Hello {{name}},</p>\n"
                        "<p>You paid {{amount}}.</p>\n"
                        "{{/body}}\n"
                        "{{$footer}}Thanks, {{company}}{{/footer}}\n"
                        "{{/layout}}\n";
    expect_render(child, "{\"name\": \"<Ann>\", \"amount\": 9.5, \"company\": \"Acme & Co\"}", partials, 1,
                  "<html>\n<head><title>Receipt for &lt;Ann&gt;</title></head>\n<body>\n"
                  "  <p>Hello &lt;Ann&gt;,</p>\n  <p>You paid 9.5.</p>\n"
                  "  <p>Thanks, Acme &amp; Co</p>\n</body>\n</html>\n");
    /* Without overrides the defaults show. */
    expect_render("{{<layout}}{{/layout}}", "{\"company\": \"Acme\"}", partials, 1,
                  "<html>\n<head><title>Acme</title></head>\n<body>\n  <p>default body</p>\n"
                  "  <p>Bye, Acme</p>\n</body>\n</html>\n");
    /* A missing parent renders as nothing. */
    expect_render("a{{<nope}}{{$x}}y{{/x}}{{/nope}}b", "{}", NULL, 1, "ab");
}

/* ---- limits ----------------------------------------------------------- */

static void test_limit_source(void **state)
{
    size_t n = TMPL_SOURCE_MAX + 1;
    char *src = malloc(n);
    memset(src, 'x', n);
    struct tmpl_error err;
    assert_null(tmpl_compile(src, n, &err));
    assert_non_null(strstr(err.message, "too large"));
    struct tmpl *t = tmpl_compile(src, n - 1, &err);
    assert_non_null(t);
    tmpl_free(t);
    free(src);
    /* A too long name. */
    char name[TMPL_NAME_MAX + 8];
    memset(name, 'a', sizeof name);
    memcpy(name, "{{", 2);
    memcpy(name + sizeof name - 2, "}}", 2);
    assert_null(tmpl_compile(name, sizeof name, &err));
    assert_non_null(strstr(err.message, "too long"));
}

static void test_limit_nesting(void **state)
{
    struct buf b;
    buf_init(&b, 0);
    for (int i = 0; i < TMPL_DEPTH_MAX; i++)
        buf_puts(&b, "{{#a}}");
    for (int i = 0; i < TMPL_DEPTH_MAX; i++)
        buf_puts(&b, "{{/a}}");
    struct tmpl_error err;
    struct tmpl *t = tmpl_compile(b.data, b.len, &err);
    assert_non_null(t); /* exactly the limit is fine */
    tmpl_free(t);
    buf_reset(&b);
    for (int i = 0; i <= TMPL_DEPTH_MAX; i++)
        buf_puts(&b, "{{#a}}");
    for (int i = 0; i <= TMPL_DEPTH_MAX; i++)
        buf_puts(&b, "{{/a}}");
    assert_null(tmpl_compile(b.data, b.len, &err));
    assert_non_null(strstr(err.message, "nested too deeply"));
    assert_int_equal(err.line, 1);
    assert_int_equal(err.column, TMPL_DEPTH_MAX * 6 + 1);
    buf_free(&b);
}

static void test_limit_recursion(void **state)
{
    struct tmpl_error err;
    struct tmpl_opts o = {.escape_html = 1};
    /* A partial that includes itself without end. */
    assert_null(render_opts("{{>a}}", "{}", "{\"a\": \"x{{>a}}\"}", o, 0, &err));
    assert_non_null(strstr(err.message, "nested too deeply"));
    assert_string_equal(err.name, "a");
    /* Bounded recursion (the spec's tree walk) works within the limit. */
    expect_render("{{>node}}", "{\"c\": 1, \"kids\": [{\"c\": 2, \"kids\": [{\"c\": 3, \"kids\": []}]}]}",
                  "{\"node\": \"{{c}}({{#kids}}{{>node}}{{/kids}})\"}", 1, "1(2(3()))");
    /* Parents that call each other, and a block that fills itself. */
    assert_null(render_opts("{{<p}}{{/p}}", "{}", "{\"p\": \"{{<q}}{{/q}}\", \"q\": \"{{<p}}{{/p}}\"}", o, 0, &err));
    assert_non_null(strstr(err.message, "nested too deeply"));
    assert_null(render_opts("{{<p}}{{$b}}[{{$b}}{{/b}}]{{/b}}{{/p}}", "{}", "{\"p\": \"{{$b}}{{/b}}\"}", o, 0, &err));
    assert_non_null(strstr(err.message, "nested too deeply"));
    /* The caller may lower the limit. */
    o.max_partial_depth = 2;
    assert_null(render_opts("{{>a}}", "{}", "{\"a\": \"{{>b}}\", \"b\": \"{{>c}}\", \"c\": \"c\"}", o, 0, &err));
    assert_non_null(strstr(err.message, "limit 2"));
}

static void test_limit_bomb(void **state)
{
    /* A partial calling itself ten times is stopped by the depth limit at
     * once; nine levels of ten calls each (10^9 calls, no output) stay
     * under it and are stopped by the step budget instead. */
    struct tmpl_error err;
    struct tmpl_opts o = {.escape_html = 1};
    assert_null(render_opts("{{>a}}", "{}", "{\"a\": \"{{>a}}{{>a}}{{>a}}{{>a}}{{>a}}{{>a}}{{>a}}{{>a}}{{>a}}{{>a}}\"}",
                            o, 0, &err));
    assert_non_null(strstr(err.message, "nested too deeply"));
    struct buf p;
    buf_init(&p, 0);
    buf_puts(&p, "{");
    for (int lvl = 0; lvl < 9; lvl++) {
        buf_printf(&p, "\"p%d\": \"", lvl);
        for (int k = 0; k < 10; k++)
            buf_printf(&p, "{{>p%d}}", lvl + 1);
        buf_puts(&p, "\", ");
    }
    buf_puts(&p, "\"p9\": \"\"}");
    assert_null(render_opts("{{>p0}}", "{}", p.data, o, 0, &err));
    assert_non_null(strstr(err.message, "too complex"));
    buf_free(&p);
    /* Nested loops over a long list. */
    json_t *list = json_array();
    for (int i = 0; i < 1000; i++)
        json_array_append_new(list, json_integer(i));
    json_t *d = json_pack("{s:o}", "l", list);
    char *data = json_dumps(d, 0);
    o.max_steps = 100000;
    assert_null(render_opts("{{#l}}{{#l}}{{#l}}.{{/l}}{{/l}}{{/l}}", data, NULL, o, 0, &err));
    assert_non_null(strstr(err.message, "too complex"));
    free(data);
    json_decref(d);
}

static void test_limit_output(void **state)
{
    struct tmpl_error err;
    struct tmpl_opts o = {.escape_html = 1};
    char *got = render_opts("{{x}}{{x}}", "{\"x\": \"12345\"}", NULL, o, 10, &err);
    assert_non_null(got);
    assert_string_equal(got, "1234512345");
    free(got);
    assert_null(render_opts("{{x}}{{x}}!", "{\"x\": \"12345\"}", NULL, o, 10, &err));
    assert_non_null(strstr(err.message, "output too large"));
    assert_int_equal(err.line, 1);
    assert_int_equal(err.column, 11);
    /* Escaping counts: "<" becomes four bytes. */
    assert_null(render_opts("{{x}}", "{\"x\": \"<<<\"}", NULL, o, 10, &err));
    assert_non_null(strstr(err.message, "output too large"));
    /* The output buffer is restored to its length before the call. */
    struct tmpl *t = tmpl_compile("{{x}}{{x}}", 10, NULL);
    json_t *d = json_pack("{s:s}", "x", "abcdef");
    struct buf out;
    buf_init(&out, 14);
    buf_puts(&out, "keep");
    assert_int_equal(tmpl_render(t, d, &o, &out, &err), -1);
    assert_int_equal(out.len, 4);
    assert_string_equal(out.data, "keep");
    buf_free(&out);
    json_decref(d);
    tmpl_free(t);
}

static void test_limit_context(void **state)
{
    /* Each level of the partial pushes 20 contexts; 16 levels would need
     * 320, more than TMPL_CONTEXT_MAX. */
    struct buf p;
    buf_init(&p, 0);
    buf_puts(&p, "{\"p\": \"");
    for (int i = 0; i < 20; i++)
        buf_puts(&p, "{{#x}}");
    buf_puts(&p, "{{>p}}");
    for (int i = 0; i < 20; i++)
        buf_puts(&p, "{{/x}}");
    buf_puts(&p, "\"}");
    struct tmpl_error err;
    struct tmpl_opts o = {.escape_html = 1};
    assert_null(render_opts("{{>p}}", "{\"x\": true}", p.data, o, 0, &err));
    assert_non_null(strstr(err.message, "context stack too deep"));
    buf_free(&p);
}

static void test_limit_partials(void **state)
{
    /* More distinct partial names than TMPL_PARTIALS_MAX in one render. */
    struct buf b;
    buf_init(&b, 0);
    for (int i = 0; i <= TMPL_PARTIALS_MAX; i++)
        buf_printf(&b, "{{>p%d}}", i);
    struct tmpl_error err;
    struct tmpl_opts o = {.escape_html = 1};
    assert_null(render_opts(b.data, "{}", "{}", o, 0, &err));
    assert_non_null(strstr(err.message, "too many"));
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_suite),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_strict),
        cmocka_unit_test(test_partials),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_limit_source),
        cmocka_unit_test(test_limit_nesting),
        cmocka_unit_test(test_limit_recursion),
        cmocka_unit_test(test_limit_bomb),
        cmocka_unit_test(test_limit_output),
        cmocka_unit_test(test_limit_context),
        cmocka_unit_test(test_limit_partials),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
