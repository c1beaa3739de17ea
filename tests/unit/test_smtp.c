/*
 * test_smtp.c - unit tests for the SMTP client (smtp/): reply parsing,
 * dot-stuffing, relay URLs and the verdict table (table-driven), and golden
 * transcripts: a scripted server thread on 127.0.0.1 checks the exact bytes
 * the session writes, and how they were grouped into writes.
 *
 * The scripted server never asserts (cmocka is not thread-safe): it writes
 * the first mismatch into script.err, which the test checks after joining.
 * Where a test checks what was logged (alerts, no password), it captures
 * fd 2 into a temporary file around the call.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "smtp/smtp.h"

/* ---- replies --------------------------------------------------------------- */

struct reply_case {
    const char *in;
    int rc;
    int code;
    const char *enhanced;
    const char *text;
    size_t used; /* 0: all of in */
};

static const struct reply_case reply_cases[] = {
    {"250 OK\r\n", 1, 250, "", "OK", 0},
    {"250\r\n", 1, 250, "", "", 0},
    {"250\n", 1, 250, "", "", 0},
    {"250 ok\n", 1, 250, "", "ok", 0},
    {"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n", 1, 250, "", "mx.example PIPELINING SIZE 100", 0},
    {"250-first\n250 second\n", 1, 250, "", "first second", 0},
    {"550 5.1.1 No such user\r\n", 1, 550, "5.1.1", "No such user", 0},
    {"250 2.0.0\r\n", 1, 250, "2.0.0", "", 0},
    {"451-4.3.0 try\r\n451 4.3.0 later\r\n", 1, 451, "4.3.0", "try later", 0},
    /* class of the enhanced code must match the reply: kept as text */
    {"250 5.1.1 odd\r\n", 1, 250, "", "5.1.1 odd", 0},
    {"550 5.1 not a code\r\n", 1, 550, "", "5.1 not a code", 0},
    {"550 5.1.1234 too long detail\r\n", 1, 550, "", "5.1.1234 too long detail", 0},
    {"550 5.1.1x\r\n", 1, 550, "", "5.1.1x", 0},
    /* control bytes and non-ASCII cleaned */
    {"550 bad\tthing\x01\xc3\xa9\r\n", 1, 550, "", "bad thing ??", 0},
    /* only the first reply is consumed */
    {"250 a\r\n354 go\r\n", 1, 250, "", "a", 7},
    /* incomplete */
    {"", 0, 0, NULL, NULL, 0},
    {"25", 0, 0, NULL, NULL, 0},
    {"250 ok", 0, 0, NULL, NULL, 0},
    {"250-a\r\n", 0, 0, NULL, NULL, 0},
    {"250-a\r\n250", 0, 0, NULL, NULL, 0},
    /* garbage */
    {"hello\r\n", -1, 0, NULL, NULL, 0},
    {"h", -1, 0, NULL, NULL, 0},
    {"2x0 ok\r\n", -1, 0, NULL, NULL, 0},
    {"250x ok\r\n", -1, 0, NULL, NULL, 0},
    {"25\r\n", -1, 0, NULL, NULL, 0},
    {"150 prelim\r\n", -1, 0, NULL, NULL, 0},
    {"650 what\r\n", -1, 0, NULL, NULL, 0},
    {"\r\n", -1, 0, NULL, NULL, 0},
    {"250-a\r\n251 b\r\n", -1, 0, NULL, NULL, 0},
    {"250-a\r\n550 b\r\n", -1, 0, NULL, NULL, 0},
};

static void test_reply_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(reply_cases) / sizeof(reply_cases[0]); i++) {
        const struct reply_case *c = &reply_cases[i];
        struct smtp_reply r;
        size_t used = 12345;
        memset(&r, 0x55, sizeof(r));
        int rc = smtp_reply_parse(c->in, strlen(c->in), &r, &used);
        if (rc != c->rc)
            fail_msg("case %zu (%s): rc %d want %d", i, c->in, rc, c->rc);
        if (rc != 1)
            continue;
        assert_int_equal(r.code, c->code);
        assert_string_equal(r.enhanced, c->enhanced);
        assert_string_equal(r.text, c->text);
        assert_int_equal(used, c->used ? c->used : strlen(c->in));
    }
}

/* every strict prefix of a reply needs more bytes; the whole is one reply */
static void test_reply_split(void **state)
{
    (void)state;
    const char *in = "250-mx.example greets you\r\n250-8BITMIME\r\n250 2.0.0 ready\r\n";
    struct smtp_reply r;
    size_t used;
    for (size_t n = 0; n < strlen(in); n++)
        if (smtp_reply_parse(in, n, &r, &used) != 0)
            fail_msg("prefix of %zu bytes did not answer 0", n);
    assert_int_equal(smtp_reply_parse(in, strlen(in), &r, &used), 1);
    assert_int_equal(used, strlen(in));
    assert_string_equal(r.enhanced, "2.0.0");
    assert_string_equal(r.text, "mx.example greets you 8BITMIME ready");
}

static void test_reply_limits(void **state)
{
    (void)state;
    struct smtp_reply r;
    size_t used;
    /* a line of exactly SMTP_LINE_MAX is fine, one more byte is not */
    static char line[SMTP_LINE_MAX + 8];
    memcpy(line, "250 ", 4);
    memset(line + 4, 'a', SMTP_LINE_MAX - 4);
    memcpy(line + SMTP_LINE_MAX, "\r\n", 3);
    assert_int_equal(smtp_reply_parse(line, strlen(line), &r, &used), 1);
    assert_int_equal(strlen(r.text), SMTP_REPLY_TEXT_MAX - 1); /* capped */
    memset(line + 4, 'a', SMTP_LINE_MAX - 3);
    memcpy(line + SMTP_LINE_MAX + 1, "\r\n", 3);
    assert_int_equal(smtp_reply_parse(line, strlen(line), &r, &used), -1);
    /* too long without any line end yet: fail now, do not wait */
    assert_int_equal(smtp_reply_parse(line, SMTP_LINE_MAX + 1, &r, &used), 0);
    assert_int_equal(smtp_reply_parse(line, SMTP_LINE_MAX + 2, &r, &used), -1);

    /* too many lines */
    size_t n = (SMTP_REPLY_LINES_MAX + 1) * 7;
    static char many[(SMTP_REPLY_LINES_MAX + 1) * 7 + 1];
    for (int i = 0; i <= SMTP_REPLY_LINES_MAX; i++)
        memcpy(many + i * 7, i == SMTP_REPLY_LINES_MAX ? "250 x\r\n" : "250-x\r\n", 7);
    many[n] = '\0';
    assert_int_equal(smtp_reply_parse(many, n, &r, &used), -1);
    assert_int_equal(smtp_reply_parse(many + 7, n - 7, &r, &used), 1);
}

/* ---- dot-stuffing ------------------------------------------------------------ */

static const struct {
    const char *in, *out;
} dot_cases[] = {
    {"", ".\r\n"},
    {"a\r\n", "a\r\n.\r\n"},
    {"a", "a\r\n.\r\n"},
    {".\r\n", "..\r\n.\r\n"},
    {".a\r\n..b\r\nc.d\r\n", "..a\r\n...b\r\nc.d\r\n.\r\n"},
    {"a\nb\n", "a\r\nb\r\n.\r\n"},
    {".a\n.b", "..a\r\n..b\r\n.\r\n"},
    {"a\rb", "a\r\nb\r\n.\r\n"},
    {"a\r\n\r\n.", "a\r\n\r\n..\r\n.\r\n"},
    {"\n.\n", "\r\n..\r\n.\r\n"},
    {"x\r", "x\r\n.\r\n"},
};

static void test_dot_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(dot_cases) / sizeof(dot_cases[0]); i++) {
        struct buf b;
        buf_init(&b, 0);
        assert_int_equal(smtp_dot_stuff(dot_cases[i].in, strlen(dot_cases[i].in), &b), 0);
        if (b.len != strlen(dot_cases[i].out) || memcmp(b.data, dot_cases[i].out, b.len) != 0)
            fail_msg("dot case %zu: got [%s]", i, b.data);
        buf_free(&b);
    }
}

static void test_dot_full(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 8);
    buf_puts(&b, "ab");
    assert_int_equal(smtp_dot_stuff(".x\r\n", 4, &b), -1); /* needs 2 + 5 + 3 */
    assert_int_equal(b.len, 2);
    assert_string_equal(b.data, "ab");
    buf_free(&b);
}

/* ---- relays --------------------------------------------------------------------- */

static void test_relay_ok(void **state)
{
    (void)state;
    struct smtp_relay *v;
    size_t n;
    char err[256] = "";
    int rc = smtp_relays_parse(
        " smtp://us%40er:p%3Ass@mail.example:2525?tls=required&verify=false&ca=/etc/ca%20x.pem&pool=64&name=primary ,"
        "smtps://relay.example?max_msgs=0&rate=50/s&idle=0,SMTP://[2001:db8::1]:587?tls=none&rate=7&idle=300,"
        "smtp://10.0.0.1?tls=opportunistic&pool=1&max_msgs=100000",
        &v, &n, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(n, 4);
    assert_string_equal(v[0].host, "mail.example");
    assert_int_equal(v[0].port, 2525);
    assert_string_equal(v[0].user, "us@er");
    assert_string_equal(v[0].pass, "p:ss");
    assert_int_equal(v[0].tls, SMTP_TLS_REQUIRED);
    assert_int_equal(v[0].verify, 0);
    assert_string_equal(v[0].ca, "/etc/ca x.pem");
    assert_int_equal(v[0].pool, 64);
    assert_string_equal(v[0].name, "primary");
    assert_int_equal(v[0].max_msgs, 100); /* defaults */
    assert_int_equal(v[0].rate, 0);
    assert_int_equal(v[0].idle_s, 30);

    assert_string_equal(v[1].host, "relay.example");
    assert_int_equal(v[1].port, 465);
    assert_int_equal(v[1].tls, SMTP_TLS_IMPLICIT);
    assert_int_equal(v[1].verify, 1);
    assert_null(v[1].ca);
    assert_null(v[1].user);
    assert_null(v[1].pass);
    assert_int_equal(v[1].pool, 4);
    assert_string_equal(v[1].name, "relay.example:465");
    assert_int_equal(v[1].max_msgs, 0);
    assert_int_equal(v[1].rate, 50);
    assert_int_equal(v[1].idle_s, 0);

    assert_string_equal(v[2].host, "2001:db8::1");
    assert_int_equal(v[2].port, 587);
    assert_int_equal(v[2].tls, SMTP_TLS_NONE);
    assert_string_equal(v[2].name, "[2001:db8::1]:587");
    assert_int_equal(v[2].rate, 7);
    assert_int_equal(v[2].idle_s, 300);
    assert_int_equal(v[2].max_msgs, 100);

    assert_string_equal(v[3].host, "10.0.0.1");
    assert_int_equal(v[3].port, 25);
    assert_int_equal(v[3].tls, SMTP_TLS_OPPORTUNISTIC);
    assert_int_equal(v[3].pool, 1);
    assert_int_equal(v[3].max_msgs, 100000);
    smtp_relays_free(v, n);
    smtp_relays_free(NULL, 0);

    /* defaults: smtp:// is opportunistic STARTTLS on 25; '@' in a password */
    rc = smtp_relays_parse("smtp://u:a@b@localhost/", &v, &n, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].pass, "a@b");
    assert_string_equal(v[0].host, "localhost");
    assert_int_equal(v[0].port, 25);
    assert_int_equal(v[0].tls, SMTP_TLS_OPPORTUNISTIC);
    assert_int_equal(v[0].verify, 1);
    assert_string_equal(v[0].name, "localhost:25");
    smtp_relays_free(v, n);
}

static void test_relay_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        " ",
        "http://u:s3cret@h",
        "smtp://",
        "smtp://u:s3cret@",
        "smtp://u:s3cret@h:0",
        "smtp://u:s3cret@h:65536",
        "smtp://u:s3cret@h:25x",
        "smtp://u:s3cret@h:",
        "smtp://u:s3cret@h?tls=maybe",
        "smtps://u:s3cret@h?tls=none",
        "smtp://u:s3cret@h?verify=yes",
        "smtp://u:s3cret@h?pool=0",
        "smtp://u:s3cret@h?pool=65",
        "smtp://u:s3cret@h?pool=x",
        "smtp://u:s3cret@h?name=",
        "smtp://u:s3cret@h?ca=",
        "smtp://u:s3cret@h?bogus=1",
        "smtp://u:s3cret@h?pool",
        "smtp://u:s3cret@h?pool=2&pool=3",
        "smtp://u:s3cret@h?pool=2&",
        "smtp://u:s3cret@h/path",
        "smtp://u:s3cret@h h",
        "smtp://u@h",
        "smtp://:s3cret@h",
        "smtp://u:s3cret%0d%0a@h",
        "smtp://u:s3cret%zz@h",
        "smtp://u:s3cret%2@h",
        "smtp://u:s3cret@[::1",
        "smtp://u:s3cret@[nothex]:25",
        "smtp://u:s3cret@[::1]x",
        "smtp://h1,,smtp://u:s3cret@h2",
        "smtp://h1,",
        "smtp://h1,smtp://u:s3cret@h2?name=a%01b",
        "smtp://u:s3cret@h?max_msgs=-1",
        "smtp://u:s3cret@h?max_msgs=100001",
        "smtp://u:s3cret@h?max_msgs=",
        "smtp://u:s3cret@h?max_msgs=1&max_msgs=2",
        "smtp://u:s3cret@h?rate=5/m",
        "smtp://u:s3cret@h?rate=/s",
        "smtp://u:s3cret@h?rate=x/s",
        "smtp://u:s3cret@h?rate=100001",
        "smtp://u:s3cret@h?rate=1/s/s",
        "smtp://u:s3cret@h?idle=86401",
        "smtp://u:s3cret@h?idle=5s",
        "smtp://u:s3cret@h?idle=",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct smtp_relay *v = (void *)1;
        size_t n = 99;
        char err[256] = "";
        if (smtp_relays_parse(bad[i], &v, &n, err, sizeof(err)) != -1)
            fail_msg("accepted bad relay list [%s]", bad[i]);
        assert_null(v);
        assert_int_equal(n, 0);
        if (!err[0])
            fail_msg("no error text for [%s]", bad[i]);
        if (strstr(err, "s3cret"))
            fail_msg("password in error text: %s", err);
    }
}

/* ---- verdicts ---------------------------------------------------------------------- */

static void test_verdict_table(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *enh;
        enum smtp_stage stage;
        enum smtp_local local;
        enum smtp_verdict want;
    } cases[] = {
        {250, "", SMTP_STAGE_DOT, SMTP_LOCAL_NONE, SMTP_DELIVERED},
        {250, "2.0.0", SMTP_STAGE_DOT, SMTP_LOCAL_NONE, SMTP_DELIVERED},
        {250, "", SMTP_STAGE_RCPT, SMTP_LOCAL_NONE, SMTP_DEFER}, /* RCPT ok, "." never answered */
        {250, "", SMTP_STAGE_DATA, SMTP_LOCAL_NONE, SMTP_DEFER},
        {250, "", SMTP_STAGE_DOT, SMTP_LOCAL_TIMEOUT, SMTP_DEFER},
        {550, "5.1.1", SMTP_STAGE_RCPT, SMTP_LOCAL_NONE, SMTP_BOUNCE},
        {554, "", SMTP_STAGE_DOT, SMTP_LOCAL_NONE, SMTP_BOUNCE},
        {554, "", SMTP_STAGE_DATA, SMTP_LOCAL_NONE, SMTP_BOUNCE},
        {550, "5.7.1", SMTP_STAGE_MAIL, SMTP_LOCAL_NONE, SMTP_BOUNCE},
        {552, "5.3.4", SMTP_STAGE_MAIL, SMTP_LOCAL_NONE, SMTP_BOUNCE},
        {552, "5.2.2", SMTP_STAGE_RCPT, SMTP_LOCAL_NONE, SMTP_DEFER}, /* read as 452 */
        {530, "5.7.0", SMTP_STAGE_MAIL, SMTP_LOCAL_NONE, SMTP_DEFER},
        {535, "", SMTP_STAGE_MAIL, SMTP_LOCAL_NONE, SMTP_DEFER},
        {550, "5.7.0", SMTP_STAGE_MAIL, SMTP_LOCAL_NONE, SMTP_DEFER},
        {554, "", SMTP_STAGE_CONNECT, SMTP_LOCAL_NONE, SMTP_DEFER}, /* relay's problem */
        {535, "5.7.8", SMTP_STAGE_CONNECT, SMTP_LOCAL_NONE, SMTP_DEFER},
        {450, "4.2.0", SMTP_STAGE_RCPT, SMTP_LOCAL_NONE, SMTP_DEFER},
        {421, "", SMTP_STAGE_DOT, SMTP_LOCAL_NONE, SMTP_DEFER},
        {451, "", SMTP_STAGE_MAIL, SMTP_LOCAL_NONE, SMTP_DEFER},
        {354, "", SMTP_STAGE_DATA, SMTP_LOCAL_NONE, SMTP_DEFER},
        {0, "", SMTP_STAGE_RCPT, SMTP_LOCAL_NONE, SMTP_DEFER},
        {0, "", SMTP_STAGE_CONNECT, SMTP_LOCAL_CONNECT, SMTP_DEFER},
        {0, "", SMTP_STAGE_DOT, SMTP_LOCAL_LOST, SMTP_DEFER},
        {0, "", SMTP_STAGE_RCPT, SMTP_LOCAL_BAD_ADDRESS, SMTP_DEFER},
        {0, "", SMTP_STAGE_CONNECT, SMTP_LOCAL_TLS, SMTP_DEFER},
        {0, "", SMTP_STAGE_MAIL, SMTP_LOCAL_PROTOCOL, SMTP_DEFER},
        {0, "", SMTP_STAGE_DOT, SMTP_LOCAL_TIMEOUT_AFTER_DOT, SMTP_DEFER}, /* may be delivered */
        {0, "5.3.4", SMTP_STAGE_MAIL, SMTP_LOCAL_SIZE_EXCEEDED, SMTP_BOUNCE},
        {0, "5.6.7", SMTP_STAGE_RCPT, SMTP_LOCAL_SMTPUTF8_REQUIRED, SMTP_BOUNCE},
        {0, "5.6.7", SMTP_STAGE_MAIL, SMTP_LOCAL_SMTPUTF8_REQUIRED, SMTP_BOUNCE},
        {452, "4.5.3", SMTP_STAGE_RCPT, SMTP_LOCAL_NONE, SMTP_DEFER}, /* limit never lifted */
        {552, "5.5.3", SMTP_STAGE_RCPT, SMTP_LOCAL_NONE, SMTP_DEFER},
        {554, "5.7.0", SMTP_STAGE_MAIL, SMTP_LOCAL_NONE, SMTP_DEFER},
        {454, "4.7.0", SMTP_STAGE_MAIL, SMTP_LOCAL_NONE, SMTP_DEFER},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct smtp_rcpt r;
        memset(&r, 0, sizeof(r));
        r.reply.code = cases[i].code;
        snprintf(r.reply.enhanced, sizeof(r.reply.enhanced), "%s", cases[i].enh);
        r.stage = cases[i].stage;
        r.local = cases[i].local;
        if (smtp_verdict_of(&r) != cases[i].want)
            fail_msg("verdict case %zu (%d at stage %d)", i, cases[i].code, (int)cases[i].stage);
    }
    assert_string_equal(smtp_local_reason(SMTP_LOCAL_TIMEOUT), "timeout");
    assert_string_equal(smtp_local_reason(SMTP_LOCAL_LOST), "connection_lost");
    assert_string_equal(smtp_local_reason(SMTP_LOCAL_BAD_ADDRESS), "bad_address");
    assert_string_equal(smtp_local_reason(SMTP_LOCAL_TIMEOUT_AFTER_DOT), "timeout_after_data");
    assert_string_equal(smtp_local_reason(SMTP_LOCAL_SIZE_EXCEEDED), "size_exceeded");
    assert_string_equal(smtp_local_reason(SMTP_LOCAL_SMTPUTF8_REQUIRED), "smtputf8_required");
    assert_string_equal(smtp_local_reason((enum smtp_local)99), "unknown");

    static const struct {
        int code;
        const char *enh;
        int want;
    } auth[] = {
        {530, "", 1}, {530, "5.7.0", 1}, {535, "5.7.8", 1}, {550, "5.7.0", 1},
        {550, "5.7.1", 0}, {454, "4.7.0", 0}, {250, "", 0}, {0, "", 0},
    };
    for (size_t i = 0; i < sizeof(auth) / sizeof(auth[0]); i++) {
        struct smtp_reply r;
        memset(&r, 0, sizeof(r));
        r.code = auth[i].code;
        snprintf(r.enhanced, sizeof(r.enhanced), "%s", auth[i].enh);
        if (smtp_reply_auth_required(&r) != auth[i].want)
            fail_msg("auth_required case %zu", i);
    }
}

/* ---- scripted server ------------------------------------------------------------------ */

/* One step of a dialogue: wait for exactly `expect` from the client (NULL:
 * expect nothing), then send `reply` (NULL: send nothing). one_write: the
 * expected bytes must arrive in a single read. reconnect: close this
 * connection, accept the next one and send the greeting again (or `reply`
 * when set, as that connection's greeting). */
struct step {
    const char *expect;
    const char *reply;
    int one_write;
    int reconnect;
    int starttls; /* after the reply, TLS handshake as server */
};

struct script {
    const char *greeting;
    const struct step *steps;
    size_t nsteps;
    int lfd, port, cfd;
    pthread_t th;
    char pending[65536]; /* bytes read but not yet matched */
    size_t npending;
    char err[1024];
    int connections;
    SSL_CTX *sctx;        /* server TLS context, when the script uses TLS */
    SSL *ssl;             /* TLS on cfd after a handshake */
    int implicit;         /* handshake right after accept (smtps) */
    int tls_fail_ok;      /* a failed handshake ends the script quietly */
    int tls_failed;
    char sni[64];         /* server name the client sent */
};

/* srv_handshake - TLS as server on cfd. 0 or -1. */
static int srv_handshake(struct script *sc)
{
    sc->ssl = SSL_new(sc->sctx);
    SSL_set_fd(sc->ssl, sc->cfd);
    if (SSL_accept(sc->ssl) != 1) {
        SSL_free(sc->ssl);
        sc->ssl = NULL;
        sc->tls_failed = 1;
        ERR_clear_error();
        return -1;
    }
    const char *sni = SSL_get_servername(sc->ssl, TLSEXT_NAMETYPE_host_name);
    snprintf(sc->sni, sizeof(sc->sni), "%s", sni ? sni : "");
    return 0;
}

static int srv_send(struct script *sc, const char *p)
{
    size_t n = strlen(p);
    while (n > 0) {
        ssize_t w = sc->ssl ? SSL_write(sc->ssl, p, (int)n) : send(sc->cfd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* srv_read - one read into pending, waiting at most 3 s. 1 read, 0 EOF, -1 */
static int srv_read(struct script *sc)
{
    struct pollfd pfd = {.fd = sc->cfd, .events = POLLIN};
    if ((!sc->ssl || SSL_pending(sc->ssl) == 0) && poll(&pfd, 1, 3000) <= 0)
        return -1;
    if (sc->ssl) {
        int r = SSL_read(sc->ssl, sc->pending + sc->npending, (int)(sizeof(sc->pending) - sc->npending));
        if (r <= 0) { /* close_notify, or EOF without one */
            ERR_clear_error();
            return 0;
        }
        sc->npending += (size_t)r;
        return 1;
    }
    ssize_t n = recv(sc->cfd, sc->pending + sc->npending, sizeof(sc->pending) - sc->npending, 0);
    if (n < 0)
        return -1;
    sc->npending += (size_t)n;
    return n > 0;
}

static int srv_accept(struct script *sc, const char *greeting)
{
    struct pollfd pfd = {.fd = sc->lfd, .events = POLLIN};
    if (poll(&pfd, 1, 3000) <= 0)
        return -1;
    sc->cfd = accept(sc->lfd, NULL, NULL);
    if (sc->cfd < 0)
        return -1;
    sc->connections++;
    sc->npending = 0;
    struct timeval tv = {3, 0};
    setsockopt(sc->cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (sc->implicit && srv_handshake(sc) < 0)
        return -2;
    return greeting ? srv_send(sc, greeting) : 0;
}

/* srv_close - end the client connection (TLS without close_notify). */
static void srv_close(struct script *sc)
{
    if (sc->ssl)
        SSL_free(sc->ssl);
    sc->ssl = NULL;
    close(sc->cfd);
}

static void *srv_main(void *arg)
{
    struct script *sc = arg;
    int ar = srv_accept(sc, sc->greeting);
    if (ar == -2 && sc->tls_fail_ok) {
        srv_close(sc);
        return NULL;
    }
    if (ar < 0) {
        snprintf(sc->err, sizeof(sc->err), "no connection");
        return NULL;
    }
    for (size_t i = 0; i < sc->nsteps; i++) {
        const struct step *st = &sc->steps[i];
        if (st->reconnect) {
            srv_close(sc);
            if (srv_accept(sc, st->reply ? st->reply : sc->greeting) < 0) {
                snprintf(sc->err, sizeof(sc->err), "step %zu: no reconnection", i);
                return NULL;
            }
            continue;
        }
        if (st->expect) {
            size_t want = strlen(st->expect);
            int reads = 0;
            while (sc->npending < want) {
                if (srv_read(sc) <= 0) {
                    snprintf(sc->err, sizeof(sc->err), "step %zu: wanted [%s], got [%.*s] then EOF/timeout", i,
                             st->expect, (int)sc->npending, sc->pending);
                    return NULL;
                }
                reads++;
            }
            if (memcmp(sc->pending, st->expect, want) != 0) {
                snprintf(sc->err, sizeof(sc->err), "step %zu: wanted [%s], got [%.*s]", i, st->expect,
                         (int)sc->npending, sc->pending);
                return NULL;
            }
            if (st->one_write && (reads != 1 || sc->npending != want)) {
                snprintf(sc->err, sizeof(sc->err), "step %zu: [%s] came in %d reads", i, st->expect, reads);
                return NULL;
            }
            memmove(sc->pending, sc->pending + want, sc->npending - want);
            sc->npending -= want;
        }
        if (st->reply && srv_send(sc, st->reply) < 0) {
            snprintf(sc->err, sizeof(sc->err), "step %zu: send failed", i);
            return NULL;
        }
        if (st->starttls) {
            if (sc->npending) {
                snprintf(sc->err, sizeof(sc->err), "step %zu: client pipelined after STARTTLS", i);
                return NULL;
            }
            if (srv_handshake(sc) < 0) {
                if (!sc->tls_fail_ok)
                    snprintf(sc->err, sizeof(sc->err), "step %zu: TLS handshake failed", i);
                srv_close(sc);
                return NULL;
            }
        }
    }
    /* the client must now close without writing anything more */
    for (;;) {
        int r = srv_read(sc);
        if (r == 0)
            break;
        if (r < 0) {
            snprintf(sc->err, sizeof(sc->err), "client did not close");
            break;
        }
    }
    if (sc->npending)
        snprintf(sc->err, sizeof(sc->err), "unexpected bytes at the end: [%.*s]", (int)sc->npending, sc->pending);
    srv_close(sc);
    return NULL;
}

static void script_start_tls(struct script *sc, const char *greeting, const struct step *steps, size_t n,
                             SSL_CTX *sctx, int implicit, int tls_fail_ok)
{
    memset(sc, 0, sizeof(*sc));
    sc->sctx = sctx;
    sc->implicit = implicit;
    sc->tls_fail_ok = tls_fail_ok;
    sc->greeting = greeting;
    sc->steps = steps;
    sc->nsteps = n;
    sc->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(sc->lfd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(sc->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(sc->lfd, 4), 0);
    socklen_t al = sizeof(a);
    assert_int_equal(getsockname(sc->lfd, (struct sockaddr *)&a, &al), 0);
    sc->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&sc->th, NULL, srv_main, sc), 0);
}

static void script_start(struct script *sc, const char *greeting, const struct step *steps, size_t n)
{
    script_start_tls(sc, greeting, steps, n, NULL, 0, 0);
}

static void script_finish(struct script *sc)
{
    pthread_join(sc->th, NULL);
    close(sc->lfd);
    if (sc->err[0])
        fail_msg("scripted server: %s", sc->err);
}

/* ---- log capture: what the session writes to stderr during a call ------------------------ */

struct capture {
    int saved, fd;
    char path[64];
};

static void capture_start(struct capture *c)
{
    strcpy(c->path, "/tmp/mailgate-test-log-XXXXXX");
    c->fd = mkstemp(c->path);
    assert_true(c->fd >= 0);
    fflush(stderr);
    c->saved = dup(STDERR_FILENO);
    dup2(c->fd, STDERR_FILENO);
}

/* capture_end - restore stderr; the captured text into out (NUL-terminated). */
static void capture_end(struct capture *c, char *out, size_t outlen)
{
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    ssize_t n = pread(c->fd, out, outlen - 1, 0);
    out[n > 0 ? n : 0] = '\0';
    close(c->fd);
    unlink(c->path);
}

/* ---- session tests ---------------------------------------------------------------------- */

struct fixture {
    char name[16], host[16];
    struct smtp_relay relay;
    struct smtp_timeouts to;
};

static void fixture_init(struct fixture *f, int port)
{
    memset(f, 0, sizeof(*f));
    strcpy(f->name, "test");
    strcpy(f->host, "127.0.0.1");
    f->relay.name = f->name;
    f->relay.host = f->host;
    f->relay.port = port;
    f->relay.tls = SMTP_TLS_NONE;
    f->relay.verify = 1;
    f->relay.pool = 1;
    smtp_timeouts_default(&f->to);
    f->to.connect_ms = f->to.greeting_ms = f->to.ehlo_ms = f->to.mail_ms = f->to.rcpt_ms = 2000;
    f->to.data_ms = f->to.block_ms = f->to.dot_ms = 2000;
}

#define BODY "Subject: hi\r\n\r\n.dot line\r\nend"
#define STUFFED "Subject: hi\r\n\r\n..dot line\r\nend\r\n.\r\n"
#define EHLO_PIPE "250-mx.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"

static void txn_init(struct smtp_txn *t, struct smtp_rcpt *r, const char **addrs, size_t n)
{
    memset(t, 0, sizeof(*t));
    memset(r, 0, n * sizeof(*r));
    for (size_t i = 0; i < n; i++)
        r[i].addr = addrs[i];
    t->mail_from = "a@x";
    t->rcpts = r;
    t->nrcpts = n;
    t->data = BODY;
    t->datalen = strlen(BODY);
}

/* golden: pipelined, two recipients, QUIT */
static void test_session_pipelined(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@z>\r\nDATA\r\n",
         "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n", 1, 0, 0},
        {STUFFED, "250 2.0.0 queued as X\r\n", 0, 0, 0},
        {"QUIT\r\n", "221 2.0.0 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test ESMTP\r\n", steps, 4);
    fixture_init(&f, sc.port);
    log_set_level(LOG_DEBUG); /* exercise the debug lines once */
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    assert_non_null(s);
    struct smtp_reply why;
    enum smtp_local local;
    assert_int_equal(smtp_session_open(s, &why, &local), 0);
    assert_true(smtp_session_is_open(s));
    assert_true(smtp_session_has_pipelining(s));

    const char *addrs[] = {"b@y", "c@z"};
    struct smtp_rcpt r[2];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 2);
    assert_int_equal(smtp_session_send(s, &t), 0);
    log_set_level(LOG_WARN);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(smtp_verdict_of(&r[i]), SMTP_DELIVERED);
        assert_int_equal(r[i].stage, SMTP_STAGE_DOT);
        assert_int_equal(r[i].reply.code, 250);
        assert_string_equal(r[i].reply.enhanced, "2.0.0");
        assert_string_equal(r[i].reply.text, "queued as X");
    }
    assert_int_equal(smtp_session_transactions(s), 1);
    assert_null(smtp_session_tls_version(s)); /* plaintext */
    assert_null(smtp_session_tls_cipher(s));
    assert_false(smtp_session_reused(s));
    assert_false(smtp_session_retried(s));
    assert_false(smtp_session_relay_fault(s));
    smtp_session_quit(s);
    assert_false(smtp_session_is_open(s));
    assert_null(smtp_session_tls_version(NULL));
    smtp_session_free(s);
    script_finish(&sc);
}

/* golden: no PIPELINING advertised, so one command per write */
static void test_session_lockstep(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", "250-mx.test\r\n250 HELP\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<b@y>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<c@z>\r\n", "250 ok\r\n", 1, 0, 0},
        {"DATA\r\n", "354 go\r\n", 1, 0, 0},
        {STUFFED, "250 queued\r\n", 0, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 7);
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y", "c@z"};
    struct smtp_rcpt r[2];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 2);
    /* send opens the session itself */
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_false(smtp_session_has_pipelining(s));
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
    assert_int_equal(smtp_verdict_of(&r[1]), SMTP_DELIVERED);
    assert_string_equal(r[1].reply.enhanced, ""); /* not advertised, not in text */
    smtp_session_quit(s);
    smtp_session_free(s);
    script_finish(&sc);
}

/* one recipient refused, the other delivered; then a second transaction
 * reuses the connection */
static void test_session_partial_and_reuse(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@z>\r\nDATA\r\n",
         "250 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 2.0.0 ok\r\n", 0, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<d@w>\r\nDATA\r\n", "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 5);
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y", "c@z"};
    struct smtp_rcpt r[2];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 2);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_BOUNCE);
    assert_int_equal(r[0].stage, SMTP_STAGE_RCPT);
    assert_int_equal(r[0].reply.code, 550);
    assert_string_equal(r[0].reply.enhanced, "5.1.1");
    assert_string_equal(r[0].reply.text, "no such user");
    assert_int_equal(smtp_verdict_of(&r[1]), SMTP_DELIVERED);

    const char *addrs2[] = {"d@w"};
    struct smtp_rcpt r2[1];
    txn_init(&t, r2, addrs2, 1);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r2[0]), SMTP_DELIVERED);
    assert_int_equal(smtp_session_transactions(s), 2);
    smtp_session_free(s); /* closes without QUIT */
    script_finish(&sc);
    assert_int_equal(sc.connections, 1);
}

/* MAIL refused (pipelined): the MAIL reply decides everyone, the other
 * replies are still read, then RSET; a bad recipient is never written */
static void test_session_mail_refused(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<c@z>\r\nDATA\r\n",
         "550 5.7.1 sender denied\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n", 1, 0, 0},
        {"RSET\r\n", "250 ok\r\n", 1, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 4);
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y>\r\nRSET", "c@z"};
    struct smtp_rcpt r[2];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 2);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(r[0].local, SMTP_LOCAL_BAD_ADDRESS);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DEFER);
    assert_int_equal(r[1].reply.code, 550);
    assert_int_equal(r[1].stage, SMTP_STAGE_MAIL);
    assert_int_equal(smtp_verdict_of(&r[1]), SMTP_BOUNCE);
    assert_true(smtp_session_is_open(s));
    smtp_session_quit(s);
    smtp_session_free(s);
    script_finish(&sc);
}

/* no recipient accepted but DATA got 354: a lone "." then RSET, never the body */
static void test_session_no_rcpt_but_354(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {"MAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n", "250 ok\r\n450 4.2.0 busy\r\n354 go\r\n", 1, 0, 0},
        {".\r\n", "554 5.5.1 no valid recipients\r\n", 1, 0, 0},
        {"RSET\r\n", "250 ok\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 4);
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y"};
    struct smtp_rcpt r[1];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 1);
    t.mail_from = "";
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(r[0].reply.code, 450);
    assert_int_equal(r[0].stage, SMTP_STAGE_RCPT);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DEFER);
    smtp_session_free(s);
    script_finish(&sc);
}

/* DATA refused after an accepted RCPT (lock-step): the DATA reply decides */
static void test_session_data_refused(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", "250 mx.test\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<b@y>\r\n", "550 no\r\n", 1, 0, 0},
        {"RCPT TO:<c@z>\r\n", "250 ok\r\n", 1, 0, 0},
        {"DATA\r\n", "554 5.6.0 no thanks\r\n", 1, 0, 0},
        {"RSET\r\n", "250 ok\r\n", 1, 0, 0},
        /* all refused in lock-step: no DATA at all */
        {"MAIL FROM:<a@x>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<b@y>\r\n", "550 no\r\n", 1, 0, 0},
        {"RSET\r\n", "250 ok\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 9);
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y", "c@z"};
    struct smtp_rcpt r[2];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 2);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(r[0].stage, SMTP_STAGE_RCPT);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_BOUNCE);
    assert_int_equal(r[1].stage, SMTP_STAGE_DATA);
    assert_int_equal(r[1].reply.code, 554);
    assert_int_equal(smtp_verdict_of(&r[1]), SMTP_BOUNCE);
    txn_init(&t, r, addrs, 1);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_BOUNCE);
    smtp_session_free(s);
    script_finish(&sc);
}

/* 421 in the middle of the pipelined replies: undecided recipients get it,
 * the connection is closed and the next send reconnects */
static void test_session_421(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@z>\r\nRCPT TO:<d@w>\r\nDATA\r\n",
         "250 ok\r\n550 5.1.1 unknown\r\n421 4.3.2 shutting down\r\n", 1, 0, 0},
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", "250 mx.test\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<b@y>\r\n", "250 ok\r\n", 1, 0, 0},
        {"DATA\r\n", "354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 8);
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y", "c@z", "d@w"};
    struct smtp_rcpt r[3];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 3);
    assert_int_equal(smtp_session_send(s, &t), -1);
    assert_false(smtp_session_is_open(s));
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_BOUNCE);
    assert_int_equal(r[1].reply.code, 421);
    assert_int_equal(r[2].reply.code, 421);
    assert_int_equal(smtp_verdict_of(&r[1]), SMTP_DEFER);
    assert_int_equal(smtp_verdict_of(&r[2]), SMTP_DEFER);

    txn_init(&t, r, addrs, 1);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
    assert_int_equal(smtp_session_transactions(s), 1);
    smtp_session_free(s);
    script_finish(&sc);
    assert_int_equal(sc.connections, 2);
}

/* no reply to "." within dot_ms: a timeout told apart from the others
 * (the message may have been delivered), deferred, connection closed */
static void test_session_timeout(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n", "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, NULL, 0, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 3);
    fixture_init(&f, sc.port);
    f.to.dot_ms = 200;
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y"};
    struct smtp_rcpt r[1];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 1);
    assert_int_equal(smtp_session_send(s, &t), -1);
    assert_int_equal(r[0].local, SMTP_LOCAL_TIMEOUT_AFTER_DOT);
    assert_string_equal(smtp_local_reason(r[0].local), "timeout_after_data");
    assert_int_equal(r[0].reply.code, 0);
    assert_int_equal(r[0].stage, SMTP_STAGE_DOT);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DEFER);
    assert_false(smtp_session_is_open(s));
    smtp_session_free(s);
    script_finish(&sc);
}

/* EHLO refused: HELO, then lock-step; SIZE/8BITMIME only after EHLO */
static void test_session_helo_and_params(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", "502 5.5.2 what\r\n", 1, 0, 0},
        {"HELO client.test\r\n", "250 mx.test\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<b@y>\r\n", "250 ok\r\n", 1, 0, 0},
        {"DATA\r\n", "354 go\r\n", 1, 0, 0},
        {"caf\xc3\xa9\r\n.\r\n", "250 ok\r\n", 0, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", "250-mx.test\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 PIPELINING\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x> SIZE=5 BODY=8BITMIME\r\nRCPT TO:<b@y>\r\nDATA\r\n",
         "552 5.3.4 too big\r\n503 no\r\n503 no\r\n", 1, 0, 0},
        {"RSET\r\n", "250 ok\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 11);
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y"};
    struct smtp_rcpt r[1];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 1);
    t.data = "caf\xc3\xa9";
    t.datalen = 5;
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
    smtp_session_quit(s);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(r[0].stage, SMTP_STAGE_MAIL);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_BOUNCE);
    smtp_session_free(s);
    script_finish(&sc);
}

/* greeting refused: open fails with the reply, QUIT is sent; send reports
 * the reply at the connect stage for every recipient (deferred) */
static void test_session_greeting_refused(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "554 5.3.2 go away\r\n", steps, 1);
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    struct smtp_reply why;
    enum smtp_local local = SMTP_LOCAL_LOST;
    assert_int_equal(smtp_session_open(s, &why, &local), -1);
    assert_int_equal(why.code, 554);
    assert_string_equal(why.enhanced, "5.3.2");
    assert_int_equal(local, SMTP_LOCAL_NONE);
    assert_false(smtp_session_relay_fault(s)); /* the relay is busy, not misconfigured */
    assert_false(smtp_session_is_open(s));
    smtp_session_free(s);
    script_finish(&sc);
}

/* nothing listening: a local connect failure for everyone; a refused
 * sender is refused before connecting at all */
static void test_session_connect_failed(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t al = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    int port = ntohs(a.sin_port);
    close(fd); /* the port is now (very likely) closed */

    struct fixture f;
    fixture_init(&f, port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y", "c\n@z"};
    struct smtp_rcpt r[2];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 2);
    assert_int_equal(smtp_session_send(s, &t), -1);
    assert_int_equal(r[0].local, SMTP_LOCAL_CONNECT);
    assert_int_equal(r[0].stage, SMTP_STAGE_CONNECT);
    assert_int_equal(r[1].local, SMTP_LOCAL_BAD_ADDRESS);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DEFER);

    t.mail_from = "x@y>\r\nRCPT TO:<evil@z";
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(r[0].local, SMTP_LOCAL_BAD_ADDRESS);
    assert_int_equal(r[1].local, SMTP_LOCAL_BAD_ADDRESS);
    smtp_session_free(s);
    smtp_session_free(NULL);
}


/* ---- addresses and config strings ------------------------------------------------------ */

/* IDN domains become A-labels, local parts are untouched, and whether the
 * local part needs SMTPUTF8 is reported */
static void test_addr_wire(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        const char *out;
        int utf8;
    } cases[] = {
        {"user@b\xc3\xbc" "cher.example", 0, "user@xn--bcher-kva.example", 0},
        {"user@B\xc3\x9c" "CHER.example", 0, "user@xn--bcher-kva.example", 0}, /* UTS #46 mapping */
        {"a@fa\xc3\x9f.de", 0, "a@xn--fa-hia.de", 0},                         /* non-transitional */
        {"j\xc3\xb6@b\xc3\xbc" "cher.example", 0, "j\xc3\xb6@xn--bcher-kva.example", 1},
        {"j\xc3\xb6@x.example", 0, "j\xc3\xb6@x.example", 1},
        {"UsEr@ExAmple.COM", 0, "UsEr@ExAmple.COM", 0}, /* ASCII: byte for byte */
        {"a@xn--bcher-kva.example", 0, "a@xn--bcher-kva.example", 0},
        {"\"a@b\"@b\xc3\xbc" "cher.example", 0, "\"a@b\"@xn--bcher-kva.example", 0}, /* last '@' */
        {"postmaster", 0, "postmaster", 0},
        {"", 0, "", 0},
        {"a@[192.0.2.1]", 0, "a@[192.0.2.1]", 0},
        {"a@[\xc3\xbc]", -1, NULL, 0},
        {"a@\xe2\x98\x83.net", -1, NULL, 0},     /* U+2603 is not allowed in IDNA2008 */
        {"a@-\xc3\xbc.example", -1, NULL, 0},    /* leading hyphen */
        {"a@b\xff.example", -1, NULL, 0},        /* not UTF-8 */
        {"\xc3@x", -1, NULL, 0},                 /* truncated sequence */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[SMTP_ADDR_MAX + 1];
        int utf8 = 7;
        int rc = smtp_addr_wire(cases[i].in, out, sizeof(out), &utf8);
        if (rc != cases[i].rc)
            fail_msg("addr case %zu: rc %d want %d", i, rc, cases[i].rc);
        if (rc == 0 && (strcmp(out, cases[i].out) != 0 || utf8 != cases[i].utf8))
            fail_msg("addr case %zu: got [%s] utf8 %d", i, out, utf8);
    }
    /* the result must fit */
    char small[20];
    assert_int_equal(smtp_addr_wire("user@b\xc3\xbc" "cher.example", small, sizeof(small), NULL), -1);
    assert_int_equal(smtp_addr_wire("user@bucher.example", small, sizeof(small), NULL), 0);
    assert_int_equal(smtp_addr_wire("user@bucher.example1", small, sizeof(small), NULL), -1);
    assert_int_equal(smtp_addr_wire(NULL, small, sizeof(small), NULL), -1);
}

static void test_timeouts_parse(void **state)
{
    (void)state;
    struct smtp_timeouts t, d;
    char err[256];
    smtp_timeouts_default(&d);

    t = d;
    assert_int_equal(smtp_timeouts_parse("connect=30s,greeting=5m,mail=5m,rcpt=5m,data=2m,block=3m,dot=10m",
                                         &t, err, sizeof(err)), 0);
    assert_memory_equal(&t, &d, sizeof(t)); /* the RFC values, spelled out */

    assert_int_equal(smtp_timeouts_parse(" dot = 1h , connect=250ms,EHLO=7,data=1m ", &t, err, sizeof(err)), 0);
    assert_int_equal(t.dot_ms, 3600 * 1000);
    assert_int_equal(t.connect_ms, 250);
    assert_int_equal(t.ehlo_ms, 7000);
    assert_int_equal(t.data_ms, 60 * 1000);
    assert_int_equal(t.greeting_ms, d.greeting_ms); /* untouched */
    assert_int_equal(t.block_ms, d.block_ms);

    struct smtp_timeouts keep = t;
    assert_int_equal(smtp_timeouts_parse(NULL, &t, err, sizeof(err)), 0);
    assert_int_equal(smtp_timeouts_parse("", &t, err, sizeof(err)), 0);
    assert_int_equal(smtp_timeouts_parse("  ", &t, err, sizeof(err)), 0);
    assert_int_equal(smtp_timeouts_parse("rcpt=24h", &t, err, sizeof(err)), 0);
    assert_int_equal(t.rcpt_ms, SMTP_TIMEOUT_MAX_MS);
    t = keep;

    static const char *const bad[] = {
        "dot",          "dot=",          "=5m",          "dot=5x",       "dot=0",        "dot=0ms",
        "dot=25h",      "dot=2d",        "dot=-1s",      "dot=1.5m",     "quit=5m",      "dot=1m,dot=2m",
        "dot=1m,",      ",dot=1m",       "dot=1m,,rcpt=1m", "dot=ms",    "dot=86400001ms", "dot=5 m",
        "dot=99999999999999999999s",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (smtp_timeouts_parse(bad[i], &t, err, sizeof(err)) != -1)
            fail_msg("accepted bad timeouts [%s]", bad[i]);
        if (!err[0])
            fail_msg("no error text for [%s]", bad[i]);
        assert_memory_equal(&t, &keep, sizeof(t)); /* unchanged on error */
    }
    /* a bad item after good ones changes nothing either */
    assert_int_equal(smtp_timeouts_parse("mail=1s,bogus=2s", &t, err, sizeof(err)), -1);
    assert_int_equal(t.mail_ms, keep.mail_ms);
}

/* ---- policy in the session ------------------------------------------------------------- */

/* 421 on a reused connection: MAIL gets 421 -> retried once at once on a
 * fresh connection; a connection closed at MAIL -> the same; the fresh
 * connection's 421 greeting is final (no second retry); a 421 to MAIL on a
 * fresh connection is final too. */
static void test_session_421_reused_retry(void **state)
{
    (void)state;
#define TXN1 "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {TXN1, "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok 1\r\n", 0, 0, 0},
        /* send 2: the pooled connection is being closed by the server */
        {TXN1, "421 4.4.2 idle too long\r\n", 1, 0, 0},
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {TXN1, "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok 2\r\n", 0, 0, 0},
        /* send 3: closed without a word; the fresh one greets with 421 */
        {TXN1, NULL, 1, 0, 0},
        {NULL, "421 4.3.2 too busy\r\n", 0, 1, 0},
        /* send 4: a 421 to MAIL on a fresh connection */
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {TXN1, "421 4.3.2 shutting down\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, sizeof(steps) / sizeof(steps[0]));
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y"};
    struct smtp_rcpt r[1];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 1);

    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
    assert_false(smtp_session_reused(s));

    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
    assert_string_equal(r[0].reply.text, "ok 2");
    assert_true(smtp_session_retried(s));
    assert_false(smtp_session_reused(s)); /* it ended on the fresh one */
    assert_int_equal(smtp_session_transactions(s), 1);

    assert_int_equal(smtp_session_send(s, &t), -1);
    assert_true(smtp_session_retried(s));
    assert_int_equal(r[0].reply.code, 421);
    assert_string_equal(r[0].reply.text, "too busy");
    assert_int_equal(r[0].stage, SMTP_STAGE_CONNECT);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DEFER);
    assert_false(smtp_session_is_open(s));

    assert_int_equal(smtp_session_send(s, &t), -1);
    assert_false(smtp_session_retried(s));
    assert_int_equal(r[0].reply.code, 421);
    assert_int_equal(r[0].stage, SMTP_STAGE_MAIL);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DEFER);
    assert_false(smtp_session_relay_fault(s)); /* the relay stays in rotation */
    smtp_session_free(s);
    script_finish(&sc);
    assert_int_equal(sc.connections, 4);
}

/* golden: 452 4.5.3 / 552 to RCPT put the recipient off to another
 * transaction on the same connection; 452 4.2.2 (mailbox full) does not;
 * when the first RCPT of a transaction gets it, the rest is deferred */
static void test_session_rcpt_limit_pipelined(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@z>\r\nRCPT TO:<d@w>\r\nRCPT TO:<e@v>\r\n"
         "RCPT TO:<f@u>\r\nDATA\r\n",
         "250 ok\r\n250 ok\r\n452 4.5.3 too many recipients\r\n552 too many\r\n452 4.5.3 too many recipients\r\n"
         "452 4.2.2 mailbox full\r\n354 go\r\n",
         1, 0, 0},
        {STUFFED, "250 2.0.0 ok 1\r\n", 0, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<c@z>\r\nRCPT TO:<d@w>\r\nRCPT TO:<e@v>\r\nDATA\r\n",
         "250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n452 4.5.3 too many\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 2.0.0 ok 2\r\n", 0, 0, 0},
        {"MAIL FROM:<a@x>\r\nRCPT TO:<e@v>\r\nDATA\r\n",
         "250 ok\r\n452 4.5.3 still too many\r\n554 5.5.1 no valid recipients\r\n", 1, 0, 0},
        {"RSET\r\n", "250 ok\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, sizeof(steps) / sizeof(steps[0]));
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y", "c@z", "d@w", "e@v", "f@u"};
    struct smtp_rcpt r[5];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 5);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
    assert_string_equal(r[0].reply.text, "ok 1");
    assert_int_equal(smtp_verdict_of(&r[1]), SMTP_BOUNCE);
    assert_int_equal(r[1].reply.code, 550);
    assert_int_equal(smtp_verdict_of(&r[2]), SMTP_DELIVERED); /* the 552 one */
    assert_string_equal(r[2].reply.text, "ok 2");
    assert_int_equal(smtp_verdict_of(&r[3]), SMTP_DEFER);
    assert_int_equal(r[3].reply.code, 452);
    assert_string_equal(r[3].reply.enhanced, "4.5.3");
    assert_string_equal(r[3].reply.text, "still too many");
    assert_int_equal(r[3].stage, SMTP_STAGE_RCPT);
    assert_int_equal(r[3].local, SMTP_LOCAL_NONE);
    assert_int_equal(smtp_verdict_of(&r[4]), SMTP_DEFER);
    assert_string_equal(r[4].reply.enhanced, "4.2.2");
    assert_int_equal(smtp_session_transactions(s), 3);
    assert_true(smtp_session_is_open(s));
    smtp_session_free(s);
    script_finish(&sc);
    assert_int_equal(sc.connections, 1);
}

/* golden, lock-step: after 452 4.5.3 no further RCPT is sent in that
 * transaction; the rest follow in the next one. With max_msgs=1 the split
 * message is still finished on its connection, then QUIT. */
static void test_session_rcpt_limit_lockstep(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", "250 mx.test\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<b@y>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<c@z>\r\n", "452 4.5.3 too many recipients\r\n", 1, 0, 0},
        {"DATA\r\n", "354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok 1\r\n", 0, 0, 0},
        {"MAIL FROM:<a@x>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<c@z>\r\n", "250 ok\r\n", 1, 0, 0},
        {"RCPT TO:<d@w>\r\n", "250 ok\r\n", 1, 0, 0},
        {"DATA\r\n", "354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok 2\r\n", 0, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, sizeof(steps) / sizeof(steps[0]));
    fixture_init(&f, sc.port);
    f.relay.max_msgs = 1;
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y", "c@z", "d@w"};
    struct smtp_rcpt r[3];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 3);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_string_equal(r[0].reply.text, "ok 1");
    assert_string_equal(r[1].reply.text, "ok 2");
    assert_string_equal(r[2].reply.text, "ok 2");
    for (int i = 0; i < 3; i++)
        assert_int_equal(smtp_verdict_of(&r[i]), SMTP_DELIVERED);
    assert_false(smtp_session_is_open(s)); /* max_msgs reached: QUIT sent */
    smtp_session_free(s);
    script_finish(&sc);
}

/* RFC 1870: a message over SIZE n bounces at once with 5.3.4 and is never
 * sent; SIZE equal to the message, and SIZE 0, let it through */
static void test_session_size(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 28\r\n", 1, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 29\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x> SIZE=29\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@z>\r\nDATA\r\n",
         "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 0\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x> SIZE=29\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@z>\r\nDATA\r\n",
         "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, sizeof(steps) / sizeof(steps[0]));
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y", "c@z"};
    struct smtp_rcpt r[2];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 2);
    assert_int_equal(strlen(BODY), 29);
    assert_int_equal(smtp_session_send(s, &t), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].local, SMTP_LOCAL_SIZE_EXCEEDED);
        assert_string_equal(smtp_local_reason(r[i].local), "size_exceeded");
        assert_int_equal(r[i].reply.code, 0);
        assert_string_equal(r[i].reply.enhanced, "5.3.4");
        assert_non_null(strstr(r[i].reply.text, "28"));
        assert_int_equal(r[i].stage, SMTP_STAGE_MAIL);
        assert_int_equal(smtp_verdict_of(&r[i]), SMTP_BOUNCE);
    }
    assert_true(smtp_session_is_open(s));
    assert_int_equal(smtp_session_transactions(s), 0);
    smtp_session_quit(s);
    for (int round = 0; round < 2; round++) {
        assert_int_equal(smtp_session_send(s, &t), 0);
        assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
        assert_int_equal(smtp_verdict_of(&r[1]), SMTP_DELIVERED);
        if (round == 0)
            smtp_session_quit(s);
    }
    smtp_session_free(s);
    script_finish(&sc);
}

/* RFC 6531: IDN domains go out as A-labels with or without SMTPUTF8; a
 * non-ASCII local part without SMTPUTF8 bounces with 5.6.7 (the sender's:
 * every recipient, nothing written); with SMTPUTF8 it goes out as UTF-8
 * with the SMTPUTF8 parameter; an invalid IDN is refused */
static void test_session_smtputf8_idn(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {"MAIL FROM:<a@xn--bcher-kva.example>\r\nRCPT TO:<b@xn--bcher-kva.example>\r\nRCPT TO:<c@z>\r\n"
         "DATA\r\n",
         "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", "250-mx.test\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n", 1, 0, 0},
        {"MAIL FROM:<j\xc3\xb6@x> SMTPUTF8\r\nRCPT TO:<\xc3\xbc@xn--bcher-kva.example>\r\nDATA\r\n",
         "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, sizeof(steps) / sizeof(steps[0]));
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"j\xc3\xb6@y", "b@b\xc3\xbc" "cher.example", "c@z", "d@\xe2\x98\x83.net"};
    struct smtp_rcpt r[4];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 4);
    t.mail_from = "a@b\xc3\xbc" "cher.example";
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(r[0].local, SMTP_LOCAL_SMTPUTF8_REQUIRED);
    assert_string_equal(smtp_local_reason(r[0].local), "smtputf8_required");
    assert_string_equal(r[0].reply.enhanced, "5.6.7");
    assert_int_equal(r[0].stage, SMTP_STAGE_RCPT);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_BOUNCE);
    assert_int_equal(smtp_verdict_of(&r[1]), SMTP_DELIVERED);
    assert_string_equal(r[1].addr, "b@b\xc3\xbc" "cher.example"); /* the caller's, untouched */
    assert_int_equal(smtp_verdict_of(&r[2]), SMTP_DELIVERED);
    assert_int_equal(r[3].local, SMTP_LOCAL_BAD_ADDRESS);

    /* a non-ASCII sender: every recipient bounces, nothing is written */
    txn_init(&t, r, addrs + 1, 2);
    t.mail_from = "j\xc3\xb6@x";
    assert_int_equal(smtp_session_send(s, &t), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].local, SMTP_LOCAL_SMTPUTF8_REQUIRED);
        assert_int_equal(r[i].stage, SMTP_STAGE_MAIL);
        assert_int_equal(smtp_verdict_of(&r[i]), SMTP_BOUNCE);
    }
    assert_int_equal(smtp_session_transactions(s), 1);
    smtp_session_quit(s);

    /* SMTPUTF8 offered */
    const char *addrs2[] = {"\xc3\xbc@b\xc3\xbc" "cher.example"};
    txn_init(&t, r, addrs2, 1);
    t.mail_from = "j\xc3\xb6@x";
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);

    /* an invalid IDN sender refuses the whole transaction up front */
    t.mail_from = "a@\xe2\x98\x83.net";
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(r[0].local, SMTP_LOCAL_BAD_ADDRESS);
    assert_int_equal(r[0].stage, SMTP_STAGE_MAIL);
    smtp_session_free(s);
    script_finish(&sc);
}

/* 530 5.7.0 to MAIL: deferred, a relay fault with an alert; the next send
 * starts clean, and a 550 5.7.1 to MAIL is the message's (bounce) */
static void test_session_mail_auth_required(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {TXN1, "530 5.7.0 Authentication required\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n", 1, 0, 0},
        {"RSET\r\n", "250 ok\r\n", 1, 0, 0},
        {TXN1, "550 5.7.1 sender denied\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n", 1, 0, 0},
        {"RSET\r\n", "250 ok\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, sizeof(steps) / sizeof(steps[0]));
    fixture_init(&f, sc.port);
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y"};
    struct smtp_rcpt r[1];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 1);
    struct capture cap;
    static char logs[16384];
    capture_start(&cap);
    int rc = smtp_session_send(s, &t);
    capture_end(&cap, logs, sizeof(logs));
    assert_int_equal(rc, 0);
    assert_int_equal(r[0].reply.code, 530);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DEFER);
    assert_true(smtp_session_relay_fault(s));
    assert_non_null(strstr(logs, "\"event\":\"relay_config_fault\""));
    assert_non_null(strstr(logs, "\"enhanced\":\"5.7.0\""));

    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_BOUNCE);
    assert_false(smtp_session_relay_fault(s));
    smtp_session_free(s);
    script_finish(&sc);
}

/* max_msgs: QUIT after that many transactions; the next send reconnects.
 * reused tells a pooled connection from a fresh one. */
static void test_session_max_msgs(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {TXN1, "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
        {TXN1, "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", EHLO_PIPE, 1, 0, 0},
        {TXN1, "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 ok\r\n", 0, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, sizeof(steps) / sizeof(steps[0]));
    fixture_init(&f, sc.port);
    f.relay.max_msgs = 2;
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y"};
    struct smtp_rcpt r[1];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 1);
    static const int reused[] = {0, 1, 0}, open[] = {1, 0, 1};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(smtp_session_send(s, &t), 0);
        assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
        assert_int_equal(smtp_session_reused(s), reused[i]);
        assert_int_equal(smtp_session_is_open(s), open[i]);
    }
    assert_int_equal(smtp_session_transactions(s), 1);
    smtp_session_free(s);
    script_finish(&sc);
    assert_int_equal(sc.connections, 2);
#undef TXN1
}

/* ---- TLS and AUTH ------------------------------------------------------------------------ */

/* A self-signed certificate for DNS:localhost only, made at start-up and
 * written to a temporary file that the relay names with ca=. */
static SSL_CTX *tls_sctx;
static char tls_ca[64];

static int tls_setup(void **state)
{
    (void)state;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!k || !x)
        return -1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"mailgate test", -1, -1, 0);
    X509_set_issuer_name(x, nm);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    X509_sign(x, k, EVP_sha256());

    strcpy(tls_ca, "/tmp/mailgate-test-ca-XXXXXX");
    int fd = mkstemp(tls_ca);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f)
        return -1;
    PEM_write_X509(f, x);
    fclose(f);

    tls_sctx = SSL_CTX_new(TLS_server_method());
    if (!tls_sctx || SSL_CTX_use_certificate(tls_sctx, x) != 1 || SSL_CTX_use_PrivateKey(tls_sctx, k) != 1)
        return -1;
    X509_free(x);
    EVP_PKEY_free(k);
    return 0;
}

static int tls_teardown(void **state)
{
    (void)state;
    SSL_CTX_free(tls_sctx);
    unlink(tls_ca);
    return 0;
}

#define EHLO_TLS "250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
#define EHLO_AUTH "250-mx.test\r\n250-PIPELINING\r\n250-AUTH LOGIN PLAIN\r\n250 SIZE\r\n"

/* STARTTLS with host name verification against ca=, re-EHLO, AUTH PLAIN,
 * one pipelined transaction. The plaintext the server sent after its 220
 * (a response-injection attempt) must be discarded, not read as the EHLO
 * reply. */
static void test_tls_starttls_auth_plain(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_TLS, 1, 0, 0},
        {"STARTTLS\r\n", "220 2.0.0 go\r\n250-injected\r\n250 AUTH PLAIN\r\n", 1, 0, 1},
        {"EHLO client.test\r\n", EHLO_AUTH, 1, 0, 0},
        {"AUTH PLAIN AHVzZXIAcMOkc3M=\r\n", "235 2.7.0 ok\r\n", 1, 0, 0},
        {"MAIL FROM:<a@x> SIZE=29\r\nRCPT TO:<b@y>\r\nDATA\r\n", "250 ok\r\n250 ok\r\n354 go\r\n", 1, 0, 0},
        {STUFFED, "250 2.0.0 ok\r\n", 0, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start_tls(&sc, "220 mx.test\r\n", steps, 7, tls_sctx, 0, 0);
    fixture_init(&f, sc.port);
    strcpy(f.host, "localhost");
    char user[] = "user", pass[] = "p\xc3\xa4ss";
    f.relay.tls = SMTP_TLS_REQUIRED;
    f.relay.ca = tls_ca;
    f.relay.user = user;
    f.relay.pass = pass;
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    const char *addrs[] = {"b@y"};
    struct smtp_rcpt r[1];
    struct smtp_txn t;
    txn_init(&t, r, addrs, 1);
    assert_int_equal(smtp_session_send(s, &t), 0);
    assert_int_equal(smtp_verdict_of(&r[0]), SMTP_DELIVERED);
    assert_false(smtp_session_relay_fault(s));
    /* the delivery event gets the TLS of the connection used */
    assert_non_null(smtp_session_tls_version(s));
    assert_true(strncmp(smtp_session_tls_version(s), "TLSv1.", 6) == 0);
    assert_non_null(smtp_session_tls_cipher(s));
    assert_true(strlen(smtp_session_tls_cipher(s)) > 4);
    smtp_session_quit(s);
    /* still there after the close, for the events of the last message */
    assert_non_null(smtp_session_tls_version(s));
    smtp_session_free(s);
    script_finish(&sc);
    assert_string_equal(sc.sni, "localhost");
}

/* implicit TLS (smtps) and AUTH LOGIN */
static void test_tls_implicit_auth_login(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_AUTH, 1, 0, 0},
        {"AUTH PLAIN AHVAeABwQHNz\r\n", "535 5.7.8 bad credentials\r\n", 1, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start_tls(&sc, "220 mx.test\r\n", steps, 3, tls_sctx, 1, 0);
    fixture_init(&f, sc.port);
    strcpy(f.host, "localhost");
    char user[] = "u@x", pass[] = "p@ss";
    f.relay.tls = SMTP_TLS_IMPLICIT;
    f.relay.ca = tls_ca;
    f.relay.user = user;
    f.relay.pass = pass;
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    struct smtp_reply why;
    enum smtp_local local;
    struct capture cap;
    static char logs[65536];
    log_set_level(LOG_DEBUG); /* even the debug lines must not show the password */
    capture_start(&cap);
    int rc = smtp_session_open(s, &why, &local);
    capture_end(&cap, logs, sizeof(logs));
    log_set_level(LOG_WARN);
    assert_int_equal(rc, -1);
    assert_int_equal(why.code, 535);
    assert_int_equal(local, SMTP_LOCAL_NONE);
    /* 535: the relay's configuration, with an alert */
    assert_true(smtp_session_relay_fault(s));
    assert_non_null(strstr(logs, "\"level\":\"error\",\"event\":\"relay_config_fault\""));
    assert_non_null(strstr(logs, "\"code\":\"535\""));
    assert_null(strstr(logs, "p@ss"));
    assert_null(strstr(logs, "AHVAeABwQHNz")); /* nor its base64 */
    assert_non_null(strstr(logs, "AUTH PLAIN [redacted]"));
    smtp_session_free(s);
    script_finish(&sc);
}

/* AUTH LOGIN in the clear is allowed only with tls=none */
static void test_auth_login_plaintext(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", "250-mx.test\r\n250 AUTH=LOGIN\r\n", 1, 0, 0},
        {"AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n", 1, 0, 0},
        {"dXNlcg==\r\n", "334 UGFzc3dvcmQ6\r\n", 1, 0, 0},
        {"c2VjcmV0\r\n", "235 ok\r\n", 1, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 5);
    fixture_init(&f, sc.port);
    char user[] = "user", pass[] = "secret";
    f.relay.user = user;
    f.relay.pass = pass;
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    assert_int_equal(smtp_session_open(s, NULL, NULL), 0);
    smtp_session_quit(s);
    smtp_session_free(s);
    script_finish(&sc);
}

/* policy failures: tls=required without STARTTLS; credentials but no TLS
 * offered (opportunistic): QUIT, never AUTH */
static void test_tls_policy(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", "250-mx.test\r\n250 AUTH PLAIN\r\n", 1, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
        {NULL, NULL, 0, 1, 0},
        {"EHLO client.test\r\n", "250-mx.test\r\n250 AUTH PLAIN\r\n", 1, 0, 0},
        {"QUIT\r\n", "221 bye\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    script_start(&sc, "220 mx.test\r\n", steps, 5);
    fixture_init(&f, sc.port);
    f.relay.tls = SMTP_TLS_REQUIRED;
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    struct smtp_reply why;
    enum smtp_local local;
    assert_int_equal(smtp_session_open(s, &why, &local), -1);
    assert_int_equal(local, SMTP_LOCAL_TLS);
    assert_true(smtp_session_relay_fault(s));
    smtp_session_free(s);

    char user[] = "user", pass[] = "secret";
    f.relay.tls = SMTP_TLS_OPPORTUNISTIC;
    f.relay.user = user;
    f.relay.pass = pass;
    s = smtp_session_new(&f.relay, "client.test", &f.to);
    assert_int_equal(smtp_session_open(s, &why, &local), -1);
    assert_int_equal(local, SMTP_LOCAL_TLS);
    assert_true(smtp_session_relay_fault(s));
    smtp_session_free(s);
    script_finish(&sc);
}

/* certificate checks: an untrusted certificate, and a name mismatch (the
 * certificate is for localhost, we connect to 127.0.0.1) fail; verify=false
 * accepts both */
static void test_tls_verify(void **state)
{
    (void)state;
    static const struct step steps[] = {
        {"EHLO client.test\r\n", EHLO_TLS, 1, 0, 0},
        {"STARTTLS\r\n", "220 go\r\n", 1, 0, 1},
    };
    static const struct step ok_steps[] = {
        {"EHLO client.test\r\n", EHLO_TLS, 1, 0, 0},
        {"STARTTLS\r\n", "220 go\r\n", 1, 0, 1},
        {"EHLO client.test\r\n", "250 mx.test\r\n", 1, 0, 0},
    };
    struct script sc;
    struct fixture f;
    struct smtp_reply why;
    enum smtp_local local;

    for (int round = 0; round < 2; round++) {
        script_start_tls(&sc, "220 mx.test\r\n", steps, 2, tls_sctx, 0, 1);
        fixture_init(&f, sc.port);
        f.relay.tls = SMTP_TLS_OPPORTUNISTIC;
        if (round == 0) {
            strcpy(f.host, "localhost"); /* system store: not trusted */
        } else {
            f.relay.ca = tls_ca; /* trusted, but not for 127.0.0.1 */
        }
        struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
        assert_int_equal(smtp_session_open(s, &why, &local), -1);
        assert_int_equal(local, SMTP_LOCAL_TLS);
        assert_true(smtp_session_relay_fault(s));
        assert_false(smtp_session_is_open(s));
        smtp_session_free(s);
        script_finish(&sc);
        assert_true(sc.tls_failed);
    }

    script_start_tls(&sc, "220 mx.test\r\n", ok_steps, 3, tls_sctx, 0, 0);
    fixture_init(&f, sc.port);
    f.relay.tls = SMTP_TLS_OPPORTUNISTIC;
    f.relay.verify = 0;
    struct smtp_session *s = smtp_session_new(&f.relay, "client.test", &f.to);
    assert_int_equal(smtp_session_open(s, &why, &local), 0);
    smtp_session_free(s);
    script_finish(&sc);
    assert_string_equal(sc.sni, ""); /* no SNI for an IP literal */
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_table),
        cmocka_unit_test(test_reply_split),
        cmocka_unit_test(test_reply_limits),
        cmocka_unit_test(test_dot_table),
        cmocka_unit_test(test_dot_full),
        cmocka_unit_test(test_relay_ok),
        cmocka_unit_test(test_relay_bad),
        cmocka_unit_test(test_verdict_table),
        cmocka_unit_test(test_session_pipelined),
        cmocka_unit_test(test_session_lockstep),
        cmocka_unit_test(test_session_partial_and_reuse),
        cmocka_unit_test(test_session_mail_refused),
        cmocka_unit_test(test_session_no_rcpt_but_354),
        cmocka_unit_test(test_session_data_refused),
        cmocka_unit_test(test_session_421),
        cmocka_unit_test(test_session_timeout),
        cmocka_unit_test(test_session_helo_and_params),
        cmocka_unit_test(test_session_greeting_refused),
        cmocka_unit_test(test_session_connect_failed),
        cmocka_unit_test(test_addr_wire),
        cmocka_unit_test(test_timeouts_parse),
        cmocka_unit_test(test_session_421_reused_retry),
        cmocka_unit_test(test_session_rcpt_limit_pipelined),
        cmocka_unit_test(test_session_rcpt_limit_lockstep),
        cmocka_unit_test(test_session_size),
        cmocka_unit_test(test_session_smtputf8_idn),
        cmocka_unit_test(test_session_mail_auth_required),
        cmocka_unit_test(test_session_max_msgs),
    };
    const struct CMUnitTest tls_tests[] = {
        cmocka_unit_test(test_tls_starttls_auth_plain),
        cmocka_unit_test(test_tls_implicit_auth_login),
        cmocka_unit_test(test_auth_login_plaintext),
        cmocka_unit_test(test_tls_policy),
        cmocka_unit_test(test_tls_verify),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rc |= cmocka_run_group_tests(tls_tests, tls_setup, tls_teardown);
    return rc;
}
