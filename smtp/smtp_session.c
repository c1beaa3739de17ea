/*
 * smtp_session.c - one SMTP client connection to one relay: connect,
 * greeting, EHLO (HELO fallback), STARTTLS or implicit TLS, AUTH, then any
 * number of transactions with or without PIPELINING (RFC 5321, RFC 2920,
 * RFC 3207, RFC 4954), and QUIT.
 *
 * Structure (read in this order):
 *   - the state enum and state_tab: name, timeout and stage of each state;
 *   - io_read/io_write/io_wait: the only code that touches the socket or the
 *     TLS layer (plain fd or SSL* over the same fd);
 *   - conn_*: connect, close, flush the write buffer, read one reply;
 *   - smtp_enter: the one function that queues a command for a state;
 *   - smtp_on_reply: the one function that handles the reply to a state;
 *   - session_setup, txn_run and smtp_session_send: the drivers; send
 *     loops over transactions (452 too many recipients, one retry of a
 *     421 at MAIL on a reused connection, max_msgs).
 *
 * Facts, not policy: a recipient's record says which reply (and to which
 * command) decided it, or which local cause left it without one.
 * smtp_trouble.c turns that into delivered / deferred / bounced. The two
 * exceptions decided here, before the message is sent, are facts about the
 * relay's capabilities: a message over its SIZE and a non-ASCII local part
 * without SMTPUTF8 (recorded as permanent local causes). Relay
 * configuration faults (TLS, AUTH) are flagged in one function,
 * relay_fault, for the caller to take the relay out of rotation.
 *
 * Limits: every wait is bounded by the state's timeout (struct
 * smtp_timeouts): a reply must arrive in full before it runs out; a write
 * must make progress at least that often. The read buffer holds at most one
 * maximal reply plus one read. Addresses longer than SMTP_ADDR_MAX, more
 * than SMTP_RCPTS_MAX recipients and a message that cannot be dot-stuffed
 * within BUF_HARD_MAX are refused before connecting. getaddrinfo has no
 * timeout of ours (the resolver's own applies).
 *
 * SECURITY: envelope addresses with CR, LF, '<', '>' or other control bytes
 * are refused before any byte is written (no command injection). Bytes the
 * server sent ahead of the TLS handshake are discarded (RFC 3207 §6:
 * STARTTLS response injection). Certificates and host names are checked
 * unless the relay says verify=false; AUTH is never sent in the clear
 * unless the relay says tls=none. AUTH lines are redacted from the debug
 * log and wiped from the write buffer once sent. A server's text is only
 * logged after smtp_reply_parse cleaned and capped it. SIGPIPE from a TLS
 * write to a closed peer is blocked and discarded in the writing thread.
 */
#include "smtp/smtp.h"
#include "common/log.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define RBUF_MAX ((SMTP_LINE_MAX + 2) * SMTP_REPLY_LINES_MAX + IO_CHUNK)
#define IO_CHUNK 16384        /* bytes per read, and per body write */
#define QUIT_MAX_MS 5000      /* QUIT is a courtesy: never wait long for it */

/* ---- states ------------------------------------------------------------ */

enum sess_state {
    ST_CLOSED,
    ST_CONNECT,
    ST_TLS,        /* TLS handshake: implicit, or after STARTTLS got 220 */
    ST_GREETING,
    ST_EHLO,
    ST_HELO,
    ST_STARTTLS,
    ST_AUTH_PLAIN, /* AUTH PLAIN <initial response> */
    ST_AUTH_LOGIN, /* AUTH LOGIN, then the user, then the password */
    ST_AUTH_USER,
    ST_AUTH_PASS,
    ST_READY,      /* idle between transactions */
    ST_MAIL,
    ST_RCPT,
    ST_DATA,
    ST_BODY,       /* writing the dot-stuffed body and "." */
    ST_DOT,        /* waiting for the reply to "." */
    ST_NODATA,     /* a lone "." ending a DATA that must carry no message */
    ST_RSET,
    ST_QUIT,
    ST_COUNT
};

#define TO(f) offsetof(struct smtp_timeouts, f)

/* Per state: name for logs, which timeout bounds its waits (cap_ms, when
 * set, shortens it), and the stage reported to a recipient decided while
 * waiting in it. */
static const struct state_info {
    const char *name;
    size_t timeout;
    int cap_ms;
    enum smtp_stage stage;
} state_tab[ST_COUNT] = {
    [ST_CLOSED] = {"closed", TO(connect_ms), 0, SMTP_STAGE_CONNECT},
    [ST_CONNECT] = {"connect", TO(connect_ms), 0, SMTP_STAGE_CONNECT},
    [ST_TLS] = {"tls", TO(connect_ms), 0, SMTP_STAGE_CONNECT},
    [ST_GREETING] = {"greeting", TO(greeting_ms), 0, SMTP_STAGE_CONNECT},
    [ST_EHLO] = {"ehlo", TO(ehlo_ms), 0, SMTP_STAGE_CONNECT},
    [ST_HELO] = {"helo", TO(ehlo_ms), 0, SMTP_STAGE_CONNECT},
    [ST_STARTTLS] = {"starttls", TO(ehlo_ms), 0, SMTP_STAGE_CONNECT},
    [ST_AUTH_PLAIN] = {"auth_plain", TO(ehlo_ms), 0, SMTP_STAGE_CONNECT},
    [ST_AUTH_LOGIN] = {"auth_login", TO(ehlo_ms), 0, SMTP_STAGE_CONNECT},
    [ST_AUTH_USER] = {"auth_user", TO(ehlo_ms), 0, SMTP_STAGE_CONNECT},
    [ST_AUTH_PASS] = {"auth_pass", TO(ehlo_ms), 0, SMTP_STAGE_CONNECT},
    [ST_READY] = {"ready", TO(mail_ms), 0, SMTP_STAGE_MAIL},
    [ST_MAIL] = {"mail", TO(mail_ms), 0, SMTP_STAGE_MAIL},
    [ST_RCPT] = {"rcpt", TO(rcpt_ms), 0, SMTP_STAGE_RCPT},
    [ST_DATA] = {"data", TO(data_ms), 0, SMTP_STAGE_DATA},
    [ST_BODY] = {"body", TO(block_ms), 0, SMTP_STAGE_DOT},
    [ST_DOT] = {"dot", TO(dot_ms), 0, SMTP_STAGE_DOT},
    [ST_NODATA] = {"nodata", TO(dot_ms), 0, SMTP_STAGE_DOT},
    [ST_RSET] = {"rset", TO(mail_ms), 0, SMTP_STAGE_DOT},
    [ST_QUIT] = {"quit", TO(mail_ms), QUIT_MAX_MS, SMTP_STAGE_DOT},
};

/* capabilities from EHLO */
enum {
    CAP_PIPELINING = 1 << 0,
    CAP_SIZE = 1 << 1,
    CAP_8BITMIME = 1 << 2,
    CAP_STARTTLS = 1 << 3,
    CAP_AUTH = 1 << 4,
    CAP_SMTPUTF8 = 1 << 5,
    CAP_ENHANCED = 1 << 6,
};
enum { AUTH_PLAIN = 1 << 0, AUTH_LOGIN = 1 << 1 };

/* what is known about one recipient during smtp_session_send */
enum rcpt_state {
    R_DONE,     /* decided: its record is final */
    R_WAIT,     /* RCPT queued or sent, reply not read yet */
    R_ACCEPTED, /* RCPT got 2yz: decided by the DATA or "." reply */
    R_LATER,    /* RCPT got "too many recipients": goes into the next
                   transaction; its record holds that reply meanwhile */
};

struct smtp_session {
    const struct smtp_relay *relay; /* borrowed, outlives the session */
    char *helo;                     /* owned */
    struct smtp_timeouts to;
    int fd;                         /* -1 when closed */
    enum sess_state st;             /* last state entered */
    struct buf rbuf;                /* received, not yet parsed (max RBUF_MAX) */
    struct buf wbuf;                /* queued commands, not yet written */
    int wbuf_secret;                /* wbuf holds AUTH data: wipe after writing */
    char peer[INET6_ADDRSTRLEN + 8];

    /* from the last EHLO on this connection */
    int esmtp;
    unsigned caps, auth;
    unsigned long long size_max;
    int greeted;                    /* greeting read on this connection */
    int starttls_refused;           /* opportunistic STARTTLS got no 220 */
    size_t reply_used;              /* raw bytes of the reply being handled */

    /* TLS over fd: ctx is kept for the session's life, ssl per connection */
    SSL_CTX *ctx;
    SSL *ssl;
    short want;                     /* POLLIN/POLLOUT io_* would block on */

    unsigned ntxn;                  /* transactions on this connection */
    char tls_version[16];           /* of the current or last connection; */
    char tls_cipher[64];            /* "" when it was plaintext */

    /* why set-up or the last step failed */
    struct smtp_reply fail_reply;
    enum smtp_local fail_local;
    int relay_fault;                /* that failure is the relay's configuration */

    /* outcome of the last smtp_session_send */
    int reused, retried;

    /* the transaction in progress, inside smtp_session_send only */
    struct smtp_txn *t;
    unsigned char *rst;             /* enum rcpt_state per recipient */
    size_t *order;                  /* indexes of recipients to send, in order */
    char (*wire)[SMTP_ADDR_MAX + 1];/* wire form of each recipient (A-labels) */
    char mail_wire[SMTP_ADDR_MAX + 1];
    size_t nsend;
    int mail_ok;
    int mail_lost;                  /* MAIL got 421, or the connection was lost
                                       before its reply: may be retried */
    size_t naccepted;
    size_t nlater;                  /* recipients put off to the next transaction */
    int later_first;                /* ... starting with the first RCPT: no progress */
    char mail_params[64];
};

/* ---- small helpers ----------------------------------------------------- */

static int state_timeout(const struct smtp_session *s, enum sess_state st)
{
    const struct state_info *si = &state_tab[st];
    int ms = *(const int *)(const void *)((const char *)&s->to + si->timeout);
    if (si->cap_ms && (ms <= 0 || ms > si->cap_ms))
        ms = si->cap_ms;
    return ms > 0 ? ms : 1;
}

static void itoa_buf(char *out, size_t n, long long v)
{
    snprintf(out, n, "%lld", v);
}

/* addr_ok - 1 when a can go between < and > on the wire. */
static int addr_ok(const char *a, int allow_empty)
{
    if (!a)
        return 0;
    size_t n = strlen(a);
    if ((n == 0 && !allow_empty) || n > SMTP_ADDR_MAX)
        return 0;
    for (; *a; a++) {
        unsigned char c = (unsigned char)*a;
        if (c < 0x20 || c == 0x7f || c == '<' || c == '>')
            return 0;
    }
    return 1;
}

static int has_8bit(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return 1;
    return 0;
}

static int is_ip_literal(const char *h)
{
    unsigned char a[16];
    return inet_pton(AF_INET, h, a) == 1 || inet_pton(AF_INET6, h, a) == 1;
}

/* ---- I/O: the only code that touches the fd or the SSL object ---------- */

/* io_read - read up to n bytes. Returns the count (> 0), 0 at end of
 * stream, -1 on error, or -2 when it would block (s->want tells which
 * poll event to wait for: TLS may need to write in order to read). */
static ssize_t io_read(struct smtp_session *s, void *p, size_t n)
{
    if (s->ssl) {
        ERR_clear_error();
        int r = SSL_read(s->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
        if (r > 0)
            return r;
        switch (SSL_get_error(s->ssl, r)) {
        case SSL_ERROR_WANT_READ:
            s->want = POLLIN;
            return -2;
        case SSL_ERROR_WANT_WRITE:
            s->want = POLLOUT;
            return -2;
        case SSL_ERROR_ZERO_RETURN:
            return 0;
        default:
            return -1;
        }
    }
    for (;;) {
        ssize_t r = recv(s->fd, p, n, 0);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            s->want = POLLIN;
            return -2;
        }
        return -1;
    }
}

/* sigpipe_block / sigpipe_restore - a TLS write to a closed peer raises
 * SIGPIPE (OpenSSL uses write(2)); block it in this thread for the call and
 * discard one that became pending, so no process-wide setting is needed. */
static void sigpipe_block(sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, old);
}

static void sigpipe_restore(const sigset_t *old)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (!sigismember(old, SIGPIPE) && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* io_write - write up to n bytes; as io_read (never 0). */
static ssize_t io_write(struct smtp_session *s, const void *p, size_t n)
{
    if (s->ssl) {
        sigset_t old;
        sigpipe_block(&old);
        ERR_clear_error();
        int r = SSL_write(s->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
        int e = r > 0 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, r);
        sigpipe_restore(&old);
        if (r > 0)
            return r;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            s->want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
            return -2;
        }
        return -1;
    }
    for (;;) {
        ssize_t r = send(s->fd, p, n, MSG_NOSIGNAL);
        if (r > 0)
            return r;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            s->want = POLLOUT;
            return -2;
        }
        return -1;
    }
}

/* io_wait - wait until the fd is ready for events or the deadline (mono
 * ms) passes. Returns 1 ready, 0 timed out, -1 error. Errors and hang-ups
 * count as ready: the next read or write reports them. */
static int io_wait(struct smtp_session *s, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - util_mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd = {.fd = s->fd, .events = events};
        int r = poll(&pfd, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* ---- connection -------------------------------------------------------- */

static void log_event(struct smtp_session *s, enum log_level lv, const char *event, const char *k1,
                      const char *v1, const char *k2, const char *v2)
{
    char ntxn[24];
    itoa_buf(ntxn, sizeof(ntxn), s->ntxn);
    log_kv(lv, event, "relay", s->relay->name, "peer", s->peer[0] ? s->peer : NULL, "state",
           state_tab[s->st].name, "transactions", ntxn, k1, v1, k2, v2, (const char *)NULL);
}

/* conn_close - drop the connection (no QUIT), logging why. */
static void conn_close(struct smtp_session *s, const char *why)
{
    if (s->fd < 0)
        return;
    log_event(s, LOG_INFO, "smtp_closed", "reason", why, NULL, NULL);
    if (s->ssl) {
        /* best effort close_notify; never wait for the peer's */
        sigset_t old;
        sigpipe_block(&old);
        ERR_clear_error();
        SSL_shutdown(s->ssl);
        sigpipe_restore(&old);
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    close(s->fd);
    s->fd = -1;
    s->st = ST_CLOSED;
    buf_reset(&s->rbuf);
    if (s->wbuf.data)
        memset(s->wbuf.data, 0, s->wbuf.len);
    buf_reset(&s->wbuf);
    s->wbuf_secret = 0;
    s->caps = s->auth = 0;
    s->esmtp = s->greeted = s->starttls_refused = 0;
    s->size_max = 0;
    s->ntxn = 0;
    s->peer[0] = '\0';
}

/* conn_fail - record a local cause in s and close. Returns -1. */
static int conn_fail(struct smtp_session *s, enum smtp_local l, const char *why)
{
    s->fail_local = l;
    memset(&s->fail_reply, 0, sizeof(s->fail_reply));
    conn_close(s, why);
    return -1;
}

/* relay_fault - the failure at hand is the relay's configuration (TLS or
 * AUTH), not the message's: flag it for smtp_session_relay_fault and raise
 * the alert, once per failure. r is the reply that showed it, or NULL.
 * Nothing secret is logged: the relay name, the state and the server's
 * (cleaned) reply. */
static void relay_fault(struct smtp_session *s, const char *why, const struct smtp_reply *r)
{
    char code[24] = "";
    if (s->relay_fault)
        return;
    s->relay_fault = 1;
    if (r && r->code)
        itoa_buf(code, sizeof(code), r->code);
    log_kv(LOG_ERROR, "relay_config_fault", "relay", s->relay->name, "peer", s->peer[0] ? s->peer : NULL,
           "state", state_tab[s->st].name, "reason", why, "code", code[0] ? code : NULL, "enhanced",
           r && r->enhanced[0] ? r->enhanced : NULL, "text", r && r->code ? r->text : NULL,
           "action", "take the relay out of rotation", (const char *)NULL);
}

/* tls_fail - a TLS step failed: a relay fault; record and close. -1. */
static int tls_fail(struct smtp_session *s, const char *why)
{
    relay_fault(s, why, NULL);
    return conn_fail(s, SMTP_LOCAL_TLS, why);
}

/* conn_connect - TCP connect to the relay, trying each address in turn,
 * each bounded by connect_ms. Returns 0 or -1 (fail_local set). */
static int conn_connect(struct smtp_session *s)
{
    struct addrinfo hints, *res = NULL;
    char port[24];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    itoa_buf(port, sizeof(port), s->relay->port);
    s->st = ST_CONNECT;
    int gai = getaddrinfo(s->relay->host, port, &hints, &res);
    if (gai != 0) {
        s->fail_local = SMTP_LOCAL_CONNECT;
        memset(&s->fail_reply, 0, sizeof(s->fail_reply));
        log_kv(LOG_WARN, "smtp_connect_failed", "relay", s->relay->name, "reason", "resolve", "error",
               gai_strerror(gai), (const char *)NULL);
        return -1;
    }
    const char *last_err = "no address";
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_err = strerror(errno);
            continue;
        }
        s->fd = fd;
        int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc < 0 && errno == EINPROGRESS) {
            int64_t deadline = util_mono_ms() + state_timeout(s, ST_CONNECT);
            int w = io_wait(s, POLLOUT, deadline);
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (w == 0) {
                rc = -1;
                errno = ETIMEDOUT;
            } else if (w < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) {
                rc = -1;
            } else if (soerr) {
                rc = -1;
                errno = soerr;
            } else {
                rc = 0;
            }
        }
        if (rc == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            char host[INET6_ADDRSTRLEN] = "";
            const void *a = ai->ai_family == AF_INET6
                                ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                                : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
            inet_ntop(ai->ai_family, a, host, sizeof(host));
            snprintf(s->peer, sizeof(s->peer), ai->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host,
                     port);
            freeaddrinfo(res);
            s->ntxn = 0;
            s->tls_version[0] = s->tls_cipher[0] = '\0';
            log_event(s, LOG_INFO, "smtp_connected", NULL, NULL, NULL, NULL);
            return 0;
        }
        last_err = strerror(errno);
        close(fd);
        s->fd = -1;
    }
    freeaddrinfo(res);
    s->fail_local = SMTP_LOCAL_CONNECT;
    memset(&s->fail_reply, 0, sizeof(s->fail_reply));
    log_kv(LOG_WARN, "smtp_connect_failed", "relay", s->relay->name, "reason", "connect", "error",
           last_err, (const char *)NULL);
    s->st = ST_CLOSED;
    return -1;
}

/* conn_write - write p[0..n) in full; each wait for progress is bounded by
 * the timeout of state st. Returns 0 or -1 (connection closed, fail_local
 * set). */
static int conn_write(struct smtp_session *s, enum sess_state st, const char *p, size_t n)
{
    int ms = state_timeout(s, st);
    while (n > 0) {
        ssize_t w = io_write(s, p, n > IO_CHUNK * 4 ? IO_CHUNK * 4 : n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w == -2) {
            int r = io_wait(s, s->want, util_mono_ms() + ms);
            if (r > 0)
                continue;
            if (r == 0)
                return conn_fail(s, SMTP_LOCAL_TIMEOUT, "write timeout");
        }
        return conn_fail(s, SMTP_LOCAL_LOST, "write error");
    }
    return 0;
}

/* conn_flush - write the queued commands in one go (for a pipelined group
 * that is one write(2) unless the socket buffer is full). */
static int conn_flush(struct smtp_session *s, enum sess_state st)
{
    int rc = conn_write(s, st, s->wbuf.data, s->wbuf.len);
    if (s->wbuf_secret && s->wbuf.data)
        memset(s->wbuf.data, 0, s->wbuf.len);
    s->wbuf_secret = 0;
    buf_reset(&s->wbuf);
    return rc;
}

/* conn_read_reply - wait for one complete reply to state st, within its
 * timeout. On 0, *r is the reply and its raw bytes are rbuf.data[0..*used)
 * (the caller consumes them). -1: connection closed, fail_local set. */
static int conn_read_reply(struct smtp_session *s, enum sess_state st, struct smtp_reply *r, size_t *used)
{
    int64_t deadline = util_mono_ms() + state_timeout(s, st);
    for (;;) {
        int pr = smtp_reply_parse(s->rbuf.data ? s->rbuf.data : "", s->rbuf.len, r, used);
        if (pr == 1) {
            char code[24];
            itoa_buf(code, sizeof(code), r->code);
            log_kv(LOG_DEBUG, "smtp_reply", "relay", s->relay->name, "state", state_tab[st].name, "code",
                   code, "enhanced", r->enhanced[0] ? r->enhanced : NULL, "text", r->text,
                   (const char *)NULL);
            return 0;
        }
        if (pr < 0)
            return conn_fail(s, SMTP_LOCAL_PROTOCOL, "not an SMTP reply");
        char chunk[IO_CHUNK];
        size_t room = RBUF_MAX - s->rbuf.len;
        if (room == 0)
            return conn_fail(s, SMTP_LOCAL_PROTOCOL, "reply too long");
        ssize_t n = io_read(s, chunk, room < sizeof(chunk) ? room : sizeof(chunk));
        if (n > 0) {
            if (buf_append(&s->rbuf, chunk, (size_t)n) < 0)
                return conn_fail(s, SMTP_LOCAL_PROTOCOL, "reply too long");
            continue;
        }
        if (n == 0)
            return conn_fail(s, SMTP_LOCAL_LOST, "closed by peer");
        if (n == -2) {
            int w = io_wait(s, s->want, deadline);
            if (w > 0)
                continue;
            if (w == 0)
                return conn_fail(s, SMTP_LOCAL_TIMEOUT, "read timeout");
        }
        return conn_fail(s, SMTP_LOCAL_LOST, "read error");
    }
}

/* conn_stale - 1 when an idle connection cannot be trusted for another
 * transaction: the peer closed it, or sent something unasked (often a 421
 * before an idle timeout). Costs one poll(2) with a zero timeout. */
static int conn_stale(struct smtp_session *s)
{
    if (s->rbuf.len > 0)
        return 1;
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) <= 0)
        return 0;
    char c[256];
    ssize_t n = io_read(s, c, sizeof(c));
    /* TLS 1.3 session tickets make the fd readable without any data */
    return n != -2;
}

/* ---- TLS ---------------------------------------------------------------- */

/* tls_error - log the reason a TLS step failed. */
static void tls_log_error(struct smtp_session *s, const char *what)
{
    char detail[256] = "";
    unsigned long e = ERR_peek_last_error();
    if (s->ssl && SSL_get_verify_result(s->ssl) != X509_V_OK)
        snprintf(detail, sizeof(detail), "certificate: %s",
                 X509_verify_cert_error_string(SSL_get_verify_result(s->ssl)));
    else if (e)
        ERR_error_string_n(e, detail, sizeof(detail));
    log_event(s, LOG_WARN, "smtp_tls_failed", "step", what, "error", detail[0] ? detail : NULL);
    ERR_clear_error();
}

/* tls_ctx - the session's SSL_CTX, made on first use: TLS 1.2 or later,
 * peer verification against ca= or the system store unless verify=false. */
static SSL_CTX *tls_ctx(struct smtp_session *s)
{
    if (s->ctx)
        return s->ctx;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (s->relay->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = s->relay->ca ? SSL_CTX_load_verify_locations(ctx, s->relay->ca, NULL)
                              : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    s->ctx = ctx;
    return ctx;
}

/* tls_handshake - start TLS on the connected fd (SNI, host name or IP
 * check) and finish the handshake within the ST_TLS timeout. Any bytes
 * read before it are discarded. Returns 0 or -1 (closed, fail_local TLS). */
static int tls_handshake(struct smtp_session *s)
{
    const char *host = s->relay->host;
    s->st = ST_TLS;
    if (s->rbuf.len > 0) {
        /* RFC 3207 §6: never act on plaintext that arrived after STARTTLS */
        log_event(s, LOG_WARN, "smtp_tls_discard", "reason", "bytes sent before the handshake", NULL, NULL);
        buf_reset(&s->rbuf);
    }
    SSL_CTX *ctx = tls_ctx(s);
    if (!ctx) {
        tls_log_error(s, "context");
        return tls_fail(s, "tls context");
    }
    s->ssl = SSL_new(ctx);
    if (!s->ssl || SSL_set_fd(s->ssl, s->fd) != 1) {
        tls_log_error(s, "setup");
        return tls_fail(s, "tls setup");
    }
    int ip = is_ip_literal(host);
    if (!ip)
        SSL_set_tlsext_host_name(s->ssl, host);
    if (s->relay->verify) {
        int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), host)
                    : SSL_set1_host(s->ssl, host);
        if (ok != 1) {
            tls_log_error(s, "setup");
            return tls_fail(s, "tls setup");
        }
    }
    int64_t deadline = util_mono_ms() + state_timeout(s, ST_TLS);
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(s->ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            int w = io_wait(s, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
            if (w > 0)
                continue;
            if (w == 0) {
                log_event(s, LOG_WARN, "smtp_tls_failed", "step", "handshake", "error", "timeout");
                return tls_fail(s, "tls handshake timeout");
            }
        }
        tls_log_error(s, "handshake");
        /* the peer may have spoken TLS badly or not at all: drop the SSL
         * without a close_notify */
        SSL_free(s->ssl);
        s->ssl = NULL;
        return tls_fail(s, "tls handshake failed");
    }
    util_strlcpy(s->tls_version, SSL_get_version(s->ssl), sizeof(s->tls_version));
    util_strlcpy(s->tls_cipher, SSL_get_cipher_name(s->ssl), sizeof(s->tls_cipher));
    log_event(s, LOG_INFO, "smtp_tls", "version", s->tls_version, "cipher", s->tls_cipher);
    /* RFC 3207 §4.2: forget everything learned before the handshake */
    s->caps = s->auth = 0;
    s->esmtp = 0;
    s->size_max = 0;
    return 0;
}

/* b64 - malloc'd base64 of p[0..n), or NULL. */
static char *b64(const void *p, size_t n)
{
    if (n > 8192)
        return NULL;
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    return out;
}

static char *wipe_free(char *p)
{
    if (p) {
        memset(p, 0, strlen(p));
        free(p);
    }
    return NULL;
}

/* ---- commands ------------------------------------------------------------ */

/* smtp_enter - queue the command of state st (arg: the address for MAIL
 * and RCPT) and make st the current state. Nothing is written here: the
 * driver calls conn_flush, which is what lets a pipelined group leave in
 * one write. Returns 0, or -1 when the command does not fit (ENOMEM). */
static int smtp_enter(struct smtp_session *s, enum sess_state st, const char *arg)
{
    const struct smtp_relay *rl = s->relay;
    size_t start = s->wbuf.len;
    int secret = 0, rc = 0;
    char *tmp = NULL;

    s->st = st;
    switch (st) {
    case ST_EHLO:
        rc = buf_printf(&s->wbuf, "EHLO %s\r\n", s->helo);
        break;
    case ST_HELO:
        rc = buf_printf(&s->wbuf, "HELO %s\r\n", s->helo);
        break;
    case ST_STARTTLS:
        rc = buf_puts(&s->wbuf, "STARTTLS\r\n");
        break;
    case ST_AUTH_PLAIN: {
        /* RFC 4616: authzid NUL authcid NUL passwd */
        size_t ul = strlen(rl->user), pl = strlen(rl->pass);
        char *raw = malloc(ul + pl + 2);
        if (!raw)
            return -1;
        raw[0] = '\0';
        memcpy(raw + 1, rl->user, ul);
        raw[1 + ul] = '\0';
        memcpy(raw + 2 + ul, rl->pass, pl);
        tmp = b64(raw, ul + pl + 2);
        memset(raw, 0, ul + pl + 2);
        free(raw);
        rc = tmp ? buf_printf(&s->wbuf, "AUTH PLAIN %s\r\n", tmp) : -1;
        secret = 1;
        break;
    }
    case ST_AUTH_LOGIN:
        rc = buf_puts(&s->wbuf, "AUTH LOGIN\r\n");
        break;
    case ST_AUTH_USER:
    case ST_AUTH_PASS:
        tmp = b64(st == ST_AUTH_USER ? rl->user : rl->pass,
                  strlen(st == ST_AUTH_USER ? rl->user : rl->pass));
        rc = tmp ? buf_printf(&s->wbuf, "%s\r\n", tmp) : -1;
        secret = 1;
        break;
    case ST_MAIL:
        rc = buf_printf(&s->wbuf, "MAIL FROM:<%s>%s\r\n", arg, s->mail_params);
        break;
    case ST_RCPT:
        rc = buf_printf(&s->wbuf, "RCPT TO:<%s>\r\n", arg);
        break;
    case ST_DATA:
        rc = buf_puts(&s->wbuf, "DATA\r\n");
        break;
    case ST_NODATA:
        rc = buf_puts(&s->wbuf, ".\r\n");
        break;
    case ST_RSET:
        rc = buf_puts(&s->wbuf, "RSET\r\n");
        break;
    case ST_QUIT:
        rc = buf_puts(&s->wbuf, "QUIT\r\n");
        break;
    default:
        break;
    }
    wipe_free(tmp);
    if (rc < 0)
        return -1;
    s->wbuf_secret |= secret;
    if (secret) {
        log_kv(LOG_DEBUG, "smtp_cmd", "relay", rl->name, "state", state_tab[st].name, "line",
               st == ST_AUTH_PLAIN ? "AUTH PLAIN [redacted]" : "[redacted]", (const char *)NULL);
    } else {
        char line[SMTP_ADDR_MAX + 96];
        size_t n = s->wbuf.len - start - 2; /* without the CRLF */
        if (n >= sizeof(line))
            n = sizeof(line) - 1;
        memcpy(line, s->wbuf.data + start, n);
        line[n] = '\0';
        log_kv(LOG_DEBUG, "smtp_cmd", "relay", rl->name, "state", state_tab[st].name, "line", line,
               (const char *)NULL);
    }
    return 0;
}

/* ---- replies -------------------------------------------------------------- */

static int word_is(const char *p, size_t n, const char *w)
{
    return strlen(w) == n && strncasecmp(p, w, n) == 0;
}

/* ehlo_caps - read the EHLO keywords (RFC 5321 §4.1.1.1) from the raw
 * reply: every line but the first is "keyword [params]". */
static void ehlo_caps(struct smtp_session *s, const char *raw, size_t n)
{
    const char *p = raw, *end = raw + n;
    s->caps = s->auth = 0;
    s->size_max = 0;
    for (int first = 1; p < end; first = 0) {
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        const char *e = lf ? lf : end;
        const char *next = lf ? lf + 1 : end;
        if (e > p && e[-1] == '\r')
            e--;
        if (first || e - p <= 4) {
            p = next;
            continue;
        }
        const char *k = p + 4, *ke = k;
        while (ke < e && *ke != ' ' && *ke != '=')
            ke++;
        size_t kn = (size_t)(ke - k);
        if (word_is(k, kn, "PIPELINING"))
            s->caps |= CAP_PIPELINING;
        else if (word_is(k, kn, "8BITMIME"))
            s->caps |= CAP_8BITMIME;
        else if (word_is(k, kn, "STARTTLS"))
            s->caps |= CAP_STARTTLS;
        else if (word_is(k, kn, "SMTPUTF8"))
            s->caps |= CAP_SMTPUTF8;
        else if (word_is(k, kn, "ENHANCEDSTATUSCODES"))
            s->caps |= CAP_ENHANCED;
        else if (word_is(k, kn, "SIZE")) {
            s->caps |= CAP_SIZE;
            unsigned long long v = 0;
            for (const char *d = ke + (ke < e); d < e && *d >= '0' && *d <= '9' && v < (1ULL << 50); d++)
                v = v * 10 + (unsigned)(*d - '0');
            s->size_max = v;
        } else if (word_is(k, kn, "AUTH")) {
            /* "AUTH PLAIN LOGIN" or the old "AUTH=PLAIN LOGIN" */
            s->caps |= CAP_AUTH;
            for (const char *m = ke; m < e;) {
                while (m < e && (*m == ' ' || *m == '='))
                    m++;
                const char *me = m;
                while (me < e && *me != ' ')
                    me++;
                if (word_is(m, (size_t)(me - m), "PLAIN"))
                    s->auth |= AUTH_PLAIN;
                else if (word_is(m, (size_t)(me - m), "LOGIN"))
                    s->auth |= AUTH_LOGIN;
                m = me;
            }
        }
        p = next;
    }
}

/* after_hello - where set-up goes once EHLO/HELO succeeded: STARTTLS when
 * the relay wants TLS, AUTH when it has credentials, else ready. Policy
 * failures (TLS required but not offered, credentials but no TLS) end the
 * connection with SMTP_LOCAL_TLS. */
static enum sess_state after_hello(struct smtp_session *s)
{
    const struct smtp_relay *rl = s->relay;
    if (!s->ssl && (rl->tls == SMTP_TLS_OPPORTUNISTIC || rl->tls == SMTP_TLS_REQUIRED) &&
        !s->starttls_refused) {
        if (s->caps & CAP_STARTTLS)
            return ST_STARTTLS;
        if (rl->tls == SMTP_TLS_REQUIRED) {
            log_event(s, LOG_WARN, "smtp_tls_failed", "step", "starttls", "error", "STARTTLS not offered");
            relay_fault(s, "tls=required but STARTTLS not offered", NULL);
            s->fail_local = SMTP_LOCAL_TLS;
            return ST_CLOSED;
        }
    }
    if (rl->user && rl->pass) {
        if (!s->ssl && rl->tls != SMTP_TLS_NONE) {
            log_event(s, LOG_WARN, "smtp_auth_refused", "reason", "no TLS: credentials not sent", NULL, NULL);
            relay_fault(s, "credentials configured but no TLS", NULL);
            s->fail_local = SMTP_LOCAL_TLS;
            return ST_CLOSED;
        }
        if (s->auth & AUTH_PLAIN)
            return ST_AUTH_PLAIN;
        if (s->auth & AUTH_LOGIN)
            return ST_AUTH_LOGIN;
        log_event(s, LOG_WARN, "smtp_auth_refused", "reason", "no AUTH PLAIN or LOGIN offered", NULL, NULL);
        relay_fault(s, "no usable AUTH mechanism", NULL);
        s->fail_local = SMTP_LOCAL_PROTOCOL;
        return ST_CLOSED;
    }
    return ST_READY;
}

/* decide - make reply r (or local cause l when r is NULL) the final record
 * of recipient i, answering a command of the given stage. */
static void decide(struct smtp_session *s, size_t i, const struct smtp_reply *r, enum smtp_local l,
                   enum smtp_stage stage)
{
    struct smtp_rcpt *rc = &s->t->rcpts[i];
    if (r)
        rc->reply = *r;
    else
        memset(&rc->reply, 0, sizeof(rc->reply));
    rc->local = r ? SMTP_LOCAL_NONE : l;
    rc->stage = stage;
    s->rst[i] = R_DONE;
}

/* decide_rest - every recipient of the current command group not decided
 * yet (waiting for its RCPT reply, or accepted) gets r or l. Recipients put
 * off to the next transaction (R_LATER) are not part of it. */
static void decide_rest(struct smtp_session *s, const struct smtp_reply *r, enum smtp_local l,
                        enum smtp_stage stage)
{
    for (size_t i = 0; i < s->t->nrcpts; i++)
        if (s->rst[i] == R_WAIT || s->rst[i] == R_ACCEPTED)
            decide(s, i, r, l, stage);
}

/* decide_all - as decide_rest, and the recipients put off as well: the
 * connection is gone, so there is no next transaction on it. */
static void decide_all(struct smtp_session *s, const struct smtp_reply *r, enum smtp_local l,
                       enum smtp_stage stage)
{
    for (size_t i = 0; i < s->t->nrcpts; i++)
        if (s->rst[i] != R_DONE)
            decide(s, i, r, l, stage);
}

/* decide_perm - recipient i fails for good for local cause l, found out
 * before any command was sent for it: enhanced code and text say why (the
 * reply code stays 0: no server said it). */
static void decide_perm(struct smtp_session *s, size_t i, enum smtp_local l, enum smtp_stage stage,
                        const char *enhanced, const char *text)
{
    decide(s, i, NULL, l, stage);
    struct smtp_reply *r = &s->t->rcpts[i].reply;
    util_strlcpy(r->enhanced, enhanced, sizeof(r->enhanced));
    util_strlcpy(r->text, text, sizeof(r->text));
}

/* too_many - 1 when a reply to RCPT means "too many recipients" (RFC 5321
 * §4.5.3.1.10): 452, or 552 which older servers send instead, with no
 * enhanced code or X.5.3 (RFC 3463); 452 4.2.2 (mailbox full) is not. */
static int too_many(const struct smtp_reply *r)
{
    if (r->code != 452 && r->code != 552)
        return 0;
    return r->enhanced[0] == '\0' || strcmp(r->enhanced + 1, ".5.3") == 0;
}

/* smtp_on_reply - handle reply r to state st and return the next state
 * (ST_CLOSED: give up; s->fail_* says why, unless recipients were decided).
 * For RCPT, idx is the recipient. Set-up states move the session forward;
 * transaction states record facts on recipients. A 421 anywhere means the
 * server is closing: it decides everyone still undecided. */
static enum sess_state smtp_on_reply(struct smtp_session *s, enum sess_state st, const struct smtp_reply *r,
                                     size_t idx)
{
    int ok = r->code >= 200 && r->code < 300;

    if (r->code == 421) {
        s->fail_reply = *r;
        s->fail_local = SMTP_LOCAL_NONE;
        if (st == ST_MAIL)
            s->mail_lost = 1;
        if (s->t && st >= ST_MAIL && st <= ST_NODATA)
            decide_all(s, r, SMTP_LOCAL_NONE, state_tab[st].stage);
        return ST_CLOSED;
    }
    switch (st) {
    case ST_GREETING:
        s->greeted = 1;
        return ok ? ST_EHLO : ST_CLOSED;
    case ST_EHLO:
        if (ok) {
            s->esmtp = 1;
            ehlo_caps(s, s->rbuf.data, s->reply_used);
            return after_hello(s);
        }
        /* RFC 5321 §4.1.4: fall back to HELO on "command not recognized" */
        return r->code == 500 || r->code == 502 ? ST_HELO : ST_CLOSED;
    case ST_HELO:
        s->esmtp = 0;
        s->caps = s->auth = 0;
        return ok ? after_hello(s) : ST_CLOSED;
    case ST_STARTTLS:
        if (r->code == 220)
            return ST_TLS;
        if (s->relay->tls == SMTP_TLS_REQUIRED) {
            relay_fault(s, "tls=required but STARTTLS refused", r);
            s->fail_local = SMTP_LOCAL_TLS;
            return ST_CLOSED;
        }
        s->starttls_refused = 1;
        return after_hello(s);
    case ST_AUTH_PLAIN:
    case ST_AUTH_LOGIN:
    case ST_AUTH_USER:
    case ST_AUTH_PASS: {
        enum sess_state want = st == ST_AUTH_LOGIN ? ST_AUTH_USER : st == ST_AUTH_USER ? ST_AUTH_PASS : ST_READY;
        if (r->code == (want == ST_READY ? 235 : 334))
            return want;
        /* 535 bad credentials, 530/5.7.0, 534 too weak ...: ours to fix;
         * 454 and other 4yz are the relay's passing trouble */
        if (r->code >= 500)
            relay_fault(s, "authentication failed", r);
        return ST_CLOSED;
    }

    case ST_MAIL:
        s->mail_ok = ok;
        if (!ok) /* every recipient is decided by the MAIL reply */
            decide_rest(s, r, SMTP_LOCAL_NONE, SMTP_STAGE_MAIL);
        if (!ok && smtp_reply_auth_required(r))
            relay_fault(s, "authentication required at MAIL FROM", r);
        return ok ? ST_RCPT : ST_RSET;
    case ST_RCPT:
        if (!s->mail_ok) /* already decided by MAIL: only keep in sync */
            return ST_RCPT;
        if (too_many(r)) {
            /* RFC 5321 §4.5.3.1.10: not a verdict, a limit; the reply is
             * kept in case no later transaction gets further */
            s->t->rcpts[idx].reply = *r;
            s->t->rcpts[idx].stage = SMTP_STAGE_RCPT;
            s->t->rcpts[idx].local = SMTP_LOCAL_NONE;
            s->rst[idx] = R_LATER;
            if (idx == s->order[0])
                s->later_first = 1;
            s->nlater++;
            return ST_RCPT;
        }
        if (ok) {
            s->t->rcpts[idx].reply = *r;
            s->t->rcpts[idx].stage = SMTP_STAGE_RCPT;
            s->rst[idx] = R_ACCEPTED;
            s->naccepted++;
        } else {
            decide(s, idx, r, SMTP_LOCAL_NONE, SMTP_STAGE_RCPT);
        }
        return ST_RCPT;
    case ST_DATA:
        if (r->code == 354)
            return s->mail_ok && s->naccepted > 0 ? ST_BODY : ST_NODATA;
        if (s->mail_ok) /* accepted recipients are decided by the DATA reply */
            decide_rest(s, r, SMTP_LOCAL_NONE, SMTP_STAGE_DATA);
        return ST_RSET;
    case ST_DOT:
        decide_rest(s, r, SMTP_LOCAL_NONE, SMTP_STAGE_DOT);
        return ok ? ST_READY : ST_RSET;
    case ST_NODATA:
        return ST_RSET;
    case ST_RSET:
        return ok ? ST_READY : ST_CLOSED;
    default:
        return ST_CLOSED;
    }
}

/* step - flush what is queued for st, read its reply, handle it, consume
 * it. Returns the next state; ST_CLOSED when the connection is gone or
 * set-up failed (s->fail_* says why). */
static enum sess_state step(struct smtp_session *s, enum sess_state st, size_t idx, int flush)
{
    struct smtp_reply r;
    size_t used;
    if (flush && s->wbuf.len > 0 && conn_flush(s, st) < 0)
        return ST_CLOSED;
    if (conn_read_reply(s, st, &r, &used) < 0)
        return ST_CLOSED;
    s->reply_used = used;
    enum sess_state next = smtp_on_reply(s, st, &r, idx);
    buf_consume(&s->rbuf, used);
    if (next == ST_CLOSED && s->fail_local == SMTP_LOCAL_NONE)
        s->fail_reply = r;
    return next;
}

/* ---- set-up -------------------------------------------------------------- */

/* quit_and_close - best-effort QUIT, then close, logging why. */
static void quit_and_close(struct smtp_session *s, const char *why)
{
    struct smtp_reply r;
    size_t used;
    if (s->fd >= 0 && smtp_enter(s, ST_QUIT, NULL) == 0 && conn_flush(s, ST_QUIT) == 0)
        (void)conn_read_reply(s, ST_QUIT, &r, &used);
    conn_close(s, why);
}

/* session_setup - connect and run the set-up states until ready. */
static int session_setup(struct smtp_session *s)
{
    s->relay_fault = 0;
    s->fail_local = SMTP_LOCAL_NONE;
    memset(&s->fail_reply, 0, sizeof(s->fail_reply));
    if (conn_connect(s) < 0)
        return -1;
    enum sess_state st = s->relay->tls == SMTP_TLS_IMPLICIT ? ST_TLS : ST_GREETING;
    while (st != ST_READY) {
        if (st == ST_TLS) {
            if (tls_handshake(s) < 0)
                return -1;
            st = s->greeted ? ST_EHLO : ST_GREETING;
            continue;
        }
        if (st != ST_GREETING && smtp_enter(s, st, NULL) < 0)
            return conn_fail(s, SMTP_LOCAL_PROTOCOL, "out of memory");
        s->st = st;
        enum sess_state next = step(s, st, 0, 1);
        if (next == ST_CLOSED) {
            if (s->fd < 0) /* I/O failure: already closed */
                return -1;
            char code[24];
            itoa_buf(code, sizeof(code), s->fail_reply.code);
            log_event(s, LOG_WARN, "smtp_setup_failed", "code", s->fail_reply.code ? code : NULL,
                      "reason", s->fail_local ? smtp_local_reason(s->fail_local) : s->fail_reply.text);
            if (s->fail_reply.code == 421)
                conn_close(s, "421 from server");
            else
                quit_and_close(s, "set-up failed");
            return -1;
        }
        st = next;
    }
    s->st = ST_READY;
    log_event(s, LOG_INFO, "smtp_ready", "esmtp", s->esmtp ? "1" : "0", "pipelining",
              s->caps & CAP_PIPELINING ? "1" : "0");
    return 0;
}

/* ---- public ---------------------------------------------------------------- */

void smtp_timeouts_default(struct smtp_timeouts *t)
{
    t->connect_ms = 30 * 1000;
    t->greeting_ms = 5 * 60 * 1000;
    t->ehlo_ms = 5 * 60 * 1000;
    t->mail_ms = 5 * 60 * 1000;
    t->rcpt_ms = 5 * 60 * 1000;
    t->data_ms = 2 * 60 * 1000;
    t->block_ms = 3 * 60 * 1000;
    t->dot_ms = 10 * 60 * 1000;
}

struct smtp_session *smtp_session_new(const struct smtp_relay *relay, const char *helo,
                                      const struct smtp_timeouts *t)
{
    struct smtp_session *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->relay = relay;
    /* a HELO name with CR/LF or spaces would inject commands */
    const char *h = helo && *helo && !util_has_crlf(helo) && !strchr(helo, ' ') ? helo : "localhost";
    s->helo = strdup(h);
    if (!s->helo) {
        free(s);
        return NULL;
    }
    if (t)
        s->to = *t;
    else
        smtp_timeouts_default(&s->to);
    s->fd = -1;
    s->st = ST_CLOSED;
    buf_init(&s->rbuf, RBUF_MAX);
    buf_init(&s->wbuf, 0);
    return s;
}

int smtp_session_open(struct smtp_session *s, struct smtp_reply *why, enum smtp_local *local)
{
    int rc = 0;
    if (s->fd < 0)
        rc = session_setup(s);
    if (why) {
        if (rc < 0)
            *why = s->fail_reply;
        else
            memset(why, 0, sizeof(*why));
    }
    if (local)
        *local = rc < 0 ? s->fail_local : SMTP_LOCAL_NONE;
    return rc;
}

int smtp_session_is_open(const struct smtp_session *s)
{
    return s && s->fd >= 0;
}

int smtp_session_has_pipelining(const struct smtp_session *s)
{
    return s && s->fd >= 0 && (s->caps & CAP_PIPELINING) != 0;
}

unsigned smtp_session_transactions(const struct smtp_session *s)
{
    return s ? s->ntxn : 0;
}

/* txn_lost - the connection died mid-transaction: every undecided
 * recipient gets the local cause (or the 421 that ended it). A timeout
 * waiting for the reply to "." is told apart: the server may have taken
 * the message (RFC 5321 §4.5.3.2.6), so a retry can duplicate it.
 * Returns -1. */
static int txn_lost(struct smtp_session *s, enum sess_state st)
{
    if (st == ST_MAIL && s->fail_local == SMTP_LOCAL_LOST)
        s->mail_lost = 1;
    if (st == ST_DOT && s->fail_local == SMTP_LOCAL_TIMEOUT) {
        log_event(s, LOG_WARN, "smtp_timeout_after_dot", "note", "may have been delivered", NULL, NULL);
        decide_rest(s, NULL, SMTP_LOCAL_TIMEOUT_AFTER_DOT, SMTP_STAGE_DOT);
    }
    if (s->fail_local != SMTP_LOCAL_NONE)
        decide_all(s, NULL, s->fail_local, state_tab[st].stage);
    else
        decide_all(s, &s->fail_reply, SMTP_LOCAL_NONE, state_tab[st].stage);
    if (s->fd >= 0)
        conn_close(s, s->fail_reply.code == 421 ? "421 from server" : "transaction failed");
    return -1;
}

/* txn_run - the transaction proper, on an open connection.
 *
 * Pipelining invariants (RFC 2920), kept by the loop below:
 *   - the commands are cmd 0 = MAIL, cmd 1..nsend = RCPT for order[0..],
 *     cmd nsend+1 = DATA; sendpos is the next command to queue, recvpos
 *     the next command whose reply we wait for;
 *   - recvpos <= sendpos; the commands in [recvpos, sendpos) have been
 *     queued and are flushed before any read, and the server answers them
 *     one reply each, in that order, so reply k belongs to command recvpos;
 *   - every reply is read and consumed even when it no longer matters
 *     (MAIL failed), or the next read would be matched to the wrong command;
 *   - with PIPELINING the sender runs to the end before the first read: MAIL,
 *     every RCPT and DATA leave in one write, DATA last (RFC 2920 §3.1: it
 *     must end the group, as the body depends on its 354);
 *   - without it, sendpos - recvpos <= 1 (lock-step), and the sender stops
 *     early: no RCPT after a failed MAIL, no DATA when no RCPT got 2yz;
 *     after a definite "too many recipients" (452 X.5.3) the remaining
 *     RCPTs are not sent but put off (R_LATER) with that reply, which
 *     advances sendpos and recvpos together (no reply is owed for them);
 *   - a RCPT reply of "too many recipients" puts its recipient off to the
 *     next transaction (R_LATER); nothing else about the group changes.
 * Returns 0 with the connection usable, -1 when it was closed. */
static int txn_run(struct smtp_session *s, const struct buf *body)
{
    struct smtp_txn *t = s->t;
    size_t ncmd = s->nsend + 2, sendpos = 0, recvpos = 0;
    int pipe = (s->caps & CAP_PIPELINING) != 0;
    enum sess_state next = ST_RSET;
    const struct smtp_reply *limit = NULL; /* the definite 452 X.5.3, lock-step */

    s->mail_ok = 0;
    s->mail_lost = 0;
    s->naccepted = 0;
    s->nlater = 0;
    s->later_first = 0;
    while (recvpos < ncmd) {
        while (sendpos < ncmd && (pipe || sendpos == recvpos)) {
            if (!pipe && sendpos > 0 && !s->mail_ok)
                break;
            if (!pipe && sendpos > 0 && sendpos < ncmd - 1 && limit) {
                size_t i = s->order[sendpos - 1];
                t->rcpts[i].reply = *limit;
                t->rcpts[i].stage = SMTP_STAGE_RCPT;
                s->rst[i] = R_LATER;
                s->nlater++;
                sendpos++;
                recvpos++;
                continue;
            }
            if (!pipe && sendpos == ncmd - 1 && s->naccepted == 0)
                break;
            enum sess_state cst = sendpos == 0 ? ST_MAIL : sendpos == ncmd - 1 ? ST_DATA : ST_RCPT;
            const char *arg = cst == ST_MAIL ? s->mail_wire : cst == ST_RCPT ? s->wire[s->order[sendpos - 1]] : NULL;
            if (smtp_enter(s, cst, arg) < 0) {
                conn_fail(s, SMTP_LOCAL_PROTOCOL, "out of memory");
                return txn_lost(s, cst);
            }
            if (sendpos == 0)
                s->ntxn++;
            sendpos++;
        }
        if (recvpos == sendpos) /* lock-step stopped early */
            break;
        enum sess_state rst = recvpos == 0 ? ST_MAIL : recvpos == ncmd - 1 ? ST_DATA : ST_RCPT;
        size_t idx = rst == ST_RCPT ? s->order[recvpos - 1] : 0;
        next = step(s, rst, idx, 1);
        if (next == ST_CLOSED)
            return txn_lost(s, rst);
        if (rst == ST_RCPT && s->rst[idx] == R_LATER && !limit && t->rcpts[idx].reply.enhanced[0])
            limit = &t->rcpts[idx].reply;
        recvpos++;
    }

    if (next == ST_BODY) {
        s->st = ST_BODY;
        if (conn_write(s, ST_BODY, body->data, body->len) < 0)
            return txn_lost(s, ST_BODY);
        s->st = ST_DOT;
        next = step(s, ST_DOT, 0, 0);
        if (next == ST_CLOSED)
            return txn_lost(s, ST_DOT);
    } else if (next == ST_NODATA) {
        /* DATA got 354 although no recipient was accepted (pipelined): end
         * the empty data with a lone "." - never send the message */
        if (smtp_enter(s, ST_NODATA, NULL) < 0)
            {
                conn_fail(s, SMTP_LOCAL_PROTOCOL, "out of memory");
                return txn_lost(s, ST_NODATA);
            }
        next = step(s, ST_NODATA, 0, 1);
        if (next == ST_CLOSED)
            return txn_lost(s, ST_NODATA);
    } else if (next != ST_READY) {
        next = ST_RSET;
    }
    /* anything of this group still undecided here (cannot happen) must not
     * look delivered; recipients put off stay for the next transaction */
    decide_rest(s, NULL, SMTP_LOCAL_PROTOCOL, SMTP_STAGE_DOT);

    if (next == ST_RSET) {
        if (smtp_enter(s, ST_RSET, NULL) < 0)
            {
                conn_fail(s, SMTP_LOCAL_PROTOCOL, "out of memory");
                return txn_lost(s, ST_RSET);
            }
        next = step(s, ST_RSET, 0, 1);
        if (next != ST_READY) {
            if (s->fd >= 0)
                conn_close(s, "RSET refused");
            return -1;
        }
    }
    s->st = ST_READY;
    return 0;
}

/* txn_fit - before a transaction on this connection, decide the recipients
 * it cannot carry, from what the relay advertised, and set the MAIL
 * parameters. Facts about the relay, found without sending the message:
 *   - a message over SIZE n > 0 (RFC 1870 §6): every recipient, 5.3.4;
 *   - no SMTPUTF8 (RFC 6531 §3.7.5): a non-ASCII local part cannot be
 *     written at all; the sender's sinks every recipient, a recipient's
 *     only that one; 5.6.7.
 * Domains are already A-labels, so only local parts can be non-ASCII in
 * the wire forms. Returns the number of recipients still to send. */
static size_t txn_fit(struct smtp_session *s)
{
    struct smtp_txn *t = s->t;
    size_t datalen = t->data ? t->datalen : 0, left = 0;
    char text[160];
    int utf8 = has_8bit(s->mail_wire, strlen(s->mail_wire));

    if ((s->caps & CAP_SIZE) && s->size_max > 0 && datalen > s->size_max) {
        char sz[24], lim[24];
        snprintf(text, sizeof(text), "message size %zu exceeds the relay's fixed limit of %llu bytes", datalen,
                 s->size_max);
        itoa_buf(sz, sizeof(sz), (long long)datalen);
        itoa_buf(lim, sizeof(lim), (long long)s->size_max);
        log_event(s, LOG_WARN, "smtp_size_exceeded", "size", sz, "limit", lim);
        for (size_t i = 0; i < t->nrcpts; i++)
            if (s->rst[i] == R_WAIT)
                decide_perm(s, i, SMTP_LOCAL_SIZE_EXCEEDED, SMTP_STAGE_MAIL, "5.3.4", text);
        return 0;
    }
    if (!(s->caps & CAP_SMTPUTF8)) {
        for (size_t i = 0; i < t->nrcpts; i++) {
            if (s->rst[i] != R_WAIT || (!utf8 && !has_8bit(s->wire[i], strlen(s->wire[i]))))
                continue;
            snprintf(text, sizeof(text), "non-ASCII %s address, and the relay does not offer SMTPUTF8",
                     utf8 ? "sender" : "recipient");
            decide_perm(s, i, SMTP_LOCAL_SMTPUTF8_REQUIRED, utf8 ? SMTP_STAGE_MAIL : SMTP_STAGE_RCPT, "5.6.7",
                        text);
        }
        if (utf8) {
            log_event(s, LOG_WARN, "smtp_smtputf8_required", "which", "sender", NULL, NULL);
            return 0;
        }
    }
    for (size_t i = 0; i < t->nrcpts; i++)
        if (s->rst[i] == R_WAIT) {
            left++;
            utf8 |= has_8bit(s->wire[i], strlen(s->wire[i]));
        }

    /* RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8 */
    size_t pl = 0;
    s->mail_params[0] = '\0';
    if (s->caps & CAP_SIZE)
        pl += (size_t)snprintf(s->mail_params + pl, sizeof(s->mail_params) - pl, " SIZE=%zu", datalen);
    if ((s->caps & CAP_8BITMIME) && t->data && has_8bit(t->data, t->datalen))
        pl += (size_t)snprintf(s->mail_params + pl, sizeof(s->mail_params) - pl, " BODY=8BITMIME");
    if ((s->caps & CAP_SMTPUTF8) && utf8)
        snprintf(s->mail_params + pl, sizeof(s->mail_params) - pl, " SMTPUTF8");
    return left;
}

/* txn_order - the recipients of the next transaction: those waiting, in
 * the caller's order. Returns how many. */
static size_t txn_order(struct smtp_session *s)
{
    size_t k = 0;
    for (size_t i = 0; i < s->t->nrcpts; i++)
        if (s->rst[i] == R_WAIT)
            s->order[k++] = i;
    s->nsend = k;
    return k;
}

/* txn_requeue - put recipients back to waiting, their records cleared:
 * from is R_LATER (the next transaction of a split) or R_DONE for the
 * recipients of the transaction just tried (a retry on a fresh
 * connection). */
static void txn_requeue(struct smtp_session *s, int retry)
{
    for (size_t k = 0, n = retry ? s->nsend : s->t->nrcpts; k < n; k++) {
        size_t i = retry ? s->order[k] : k;
        if (!retry && s->rst[i] != R_LATER)
            continue;
        struct smtp_rcpt *r = &s->t->rcpts[i];
        memset(&r->reply, 0, sizeof(r->reply));
        r->stage = SMTP_STAGE_CONNECT;
        r->local = SMTP_LOCAL_NONE;
        s->rst[i] = R_WAIT;
    }
}

/* max_reached - 1 when the connection has carried max_msgs transactions. */
static int max_reached(const struct smtp_session *s)
{
    return s->relay->max_msgs > 0 && s->fd >= 0 && s->ntxn >= (unsigned)s->relay->max_msgs;
}

/* send_prepare - check and convert the envelope, and mark every recipient
 * R_WAIT (to send) or R_DONE (refused, SMTP_LOCAL_BAD_ADDRESS). Requires
 * s->t and the per-send arrays. Returns how many are to be sent. */
static size_t send_prepare(struct smtp_session *s)
{
    struct smtp_txn *t = s->t;
    size_t nsend = 0;
    for (size_t i = 0; i < t->nrcpts; i++) {
        struct smtp_rcpt *r = &t->rcpts[i];
        if (addr_ok(r->addr, 0) && smtp_addr_wire(r->addr, s->wire[i], sizeof(s->wire[i]), NULL) == 0 &&
            strlen(s->wire[i]) <= SMTP_ADDR_MAX) {
            s->rst[i] = R_WAIT;
            nsend++;
            continue;
        }
        s->rst[i] = R_DONE;
        r->local = SMTP_LOCAL_BAD_ADDRESS;
        r->stage = SMTP_STAGE_RCPT;
        log_kv(LOG_WARN, "smtp_address_refused", "relay", s->relay->name, "which", "recipient",
               (const char *)NULL);
    }
    return nsend;
}

/* smtp_session_send - the driver over transactions (see smtp.h).
 *
 * Invariants of the loop:
 *   - on entry to each pass, every recipient is R_DONE (final record) or
 *     R_WAIT (to go into this transaction); R_LATER only exists between
 *     txn_run and the end of its pass;
 *   - each pass that goes on to another transaction on the same connection
 *     decided at least one recipient (the first RCPT did not get "too many
 *     recipients"), so the loop ends;
 *   - at most one retry on a fresh connection (retried), and only when
 *     nothing of the transaction was accepted (MAIL got 421 or no reply). */
int smtp_session_send(struct smtp_session *s, struct smtp_txn *t)
{
    s->relay_fault = 0;
    s->reused = s->retried = 0;
    if (t->nrcpts == 0)
        return 0;
    if (!t->rcpts)
        return s->fd >= 0 ? 0 : -1;
    for (size_t i = 0; i < t->nrcpts; i++) {
        struct smtp_rcpt *r = &t->rcpts[i];
        memset(&r->reply, 0, sizeof(r->reply));
        r->stage = SMTP_STAGE_CONNECT;
        r->local = SMTP_LOCAL_NONE;
    }
    if (!addr_ok(t->mail_from, 1) || t->nrcpts > SMTP_RCPTS_MAX ||
        smtp_addr_wire(t->mail_from, s->mail_wire, sizeof(s->mail_wire), NULL) < 0 ||
        strlen(s->mail_wire) > SMTP_ADDR_MAX) {
        /* refused before anything is written, session unchanged */
        for (size_t i = 0; i < t->nrcpts; i++) {
            t->rcpts[i].local = SMTP_LOCAL_BAD_ADDRESS;
            t->rcpts[i].stage = SMTP_STAGE_MAIL;
        }
        log_kv(LOG_WARN, "smtp_address_refused", "relay", s->relay->name, "which", "transaction",
               (const char *)NULL);
        return 0;
    }

    int rc = -1;
    struct buf body;
    buf_init(&body, 0);
    s->t = t;
    s->rst = calloc(t->nrcpts, 1);
    s->order = calloc(t->nrcpts, sizeof(*s->order));
    s->wire = calloc(t->nrcpts, sizeof(*s->wire));
    if (!s->rst || !s->order || !s->wire) {
        for (size_t i = 0; i < t->nrcpts; i++)
            t->rcpts[i].local = SMTP_LOCAL_PROTOCOL;
        rc = s->fd >= 0 ? 0 : -1;
        goto out;
    }
    if (send_prepare(s) == 0) { /* nothing to send: no byte written */
        rc = 0;
        goto out;
    }
    if (smtp_dot_stuff(t->data ? t->data : "", t->data ? t->datalen : 0, &body) < 0) {
        /* out of memory, or a message beyond BUF_HARD_MAX once stuffed */
        decide_all(s, NULL, SMTP_LOCAL_PROTOCOL, SMTP_STAGE_CONNECT);
        rc = s->fd >= 0 ? 0 : -1;
        goto out;
    }

    int first = 1; /* the message's first transaction on this connection */
    for (;;) {
        if (first && s->fd >= 0 && conn_stale(s))
            conn_close(s, "stale");
        if (first && max_reached(s))
            quit_and_close(s, "max_msgs reached");
        if (s->fd < 0 && session_setup(s) < 0) {
            /* set-up failed: the reply or local cause decides everyone */
            if (s->fail_local != SMTP_LOCAL_NONE)
                decide_all(s, NULL, s->fail_local, SMTP_STAGE_CONNECT);
            else
                decide_all(s, &s->fail_reply, SMTP_LOCAL_NONE, SMTP_STAGE_CONNECT);
            rc = -1;
            break;
        }
        if (first)
            s->reused = s->ntxn > 0;
        if (txn_fit(s) == 0 || txn_order(s) == 0) {
            rc = 0;
            break;
        }
        rc = txn_run(s, &body);
        if (rc < 0 && first && s->reused && !s->retried && s->mail_lost) {
            /* RFC 5321 §3.8: a pooled connection the server was closing;
             * nothing was accepted, so try once more on a fresh one */
            log_kv(LOG_INFO, "smtp_retry_fresh", "relay", s->relay->name, "reason",
                   s->fail_reply.code == 421 ? "421 at MAIL on a reused connection"
                                             : "connection closed at MAIL on a reused connection",
                   (const char *)NULL);
            txn_requeue(s, 1);
            s->retried = 1;
            s->reused = 0;
            continue; /* first stays 1: the fresh connection's checks */
        }
        first = 0;
        if (rc < 0 || s->nlater == 0)
            break;
        if (s->later_first) {
            /* no progress: the relay takes no recipient now; keep the
             * "too many recipients" reply on the rest (deferred) */
            for (size_t i = 0; i < t->nrcpts; i++)
                if (s->rst[i] == R_LATER)
                    s->rst[i] = R_DONE;
            break;
        }
        char n[24];
        itoa_buf(n, sizeof(n), (long long)s->nlater);
        log_event(s, LOG_INFO, "smtp_rcpt_limit", "postponed", n, "action", "another transaction");
        txn_requeue(s, 0);
    }
    if (rc == 0 && max_reached(s))
        quit_and_close(s, "max_msgs reached");
out:
    if (s->rst) {
        /* no record may be left half-way: put-off recipients keep their
         * "too many recipients" reply; anything else cannot happen */
        for (size_t i = 0; i < t->nrcpts; i++)
            if (s->rst[i] == R_LATER)
                s->rst[i] = R_DONE;
        decide_rest(s, NULL, SMTP_LOCAL_PROTOCOL, SMTP_STAGE_CONNECT);
    }
    buf_free(&body);
    free(s->rst);
    free(s->order);
    free(s->wire);
    s->rst = NULL;
    s->order = NULL;
    s->wire = NULL;
    s->t = NULL;
    return rc;
}

const char *smtp_session_tls_version(const struct smtp_session *s)
{
    return s && s->tls_version[0] ? s->tls_version : NULL;
}

const char *smtp_session_tls_cipher(const struct smtp_session *s)
{
    return s && s->tls_cipher[0] ? s->tls_cipher : NULL;
}

int smtp_session_reused(const struct smtp_session *s)
{
    return s ? s->reused : 0;
}

int smtp_session_retried(const struct smtp_session *s)
{
    return s ? s->retried : 0;
}

int smtp_session_relay_fault(const struct smtp_session *s)
{
    return s ? s->relay_fault : 0;
}

void smtp_session_quit(struct smtp_session *s)
{
    if (s && s->fd >= 0)
        quit_and_close(s, "quit");
}

void smtp_session_free(struct smtp_session *s)
{
    if (!s)
        return;
    conn_close(s, "freed");
    SSL_CTX_free(s->ctx);
    buf_free(&s->rbuf);
    buf_free(&s->wbuf);
    free(s->helo);
    free(s);
}
