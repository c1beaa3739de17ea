/*
 * smtp.h - the SMTP client: relay URLs, reply parsing, one session to one
 * relay with pipelining (RFC 2920), dot-stuffing, and the reply policy.
 *
 * A session is a blocking connection used by one thread at a time; the
 * delivery agent (smtp_deliver.c) keeps a pool of them. Every network wait
 * has a timeout (RFC 5321 §4.5.3.2); a timed-out or broken session is
 * closed and never reused.
 *
 * Ownership: smtp_session_new copies nothing from the relay, which must
 * outlive the session. Transaction structs belong to the caller.
 *
 * TLS (OpenSSL) runs over the same fd: STARTTLS for smtp:// unless
 * tls=none, implicit for smtps://; SIGPIPE from a TLS write is blocked in
 * the writing thread, so callers need no process-wide setting.
 *
 * SECURITY: relay passwords never reach a log line. Text a server sent is
 * capped at SMTP_REPLY_TEXT_MAX and stripped of control bytes before it is
 * stored or logged. Envelope addresses with CR/LF are refused before any
 * byte is written.
 */
#ifndef MG_SMTP_H
#define MG_SMTP_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define SMTP_LINE_MAX 2048        /* longest reply line we accept (RFC 5321: 512) */
#define SMTP_REPLY_LINES_MAX 100  /* lines in one multi-line reply */
#define SMTP_REPLY_TEXT_MAX 512   /* bytes of reply text kept */
#define SMTP_RCPTS_MAX 1000       /* recipients in one transaction */

/* ---- relays (MAILGATE_RELAYS) ---------------------------------------- */

enum smtp_tls_mode { SMTP_TLS_NONE, SMTP_TLS_OPPORTUNISTIC, SMTP_TLS_REQUIRED, SMTP_TLS_IMPLICIT };

struct smtp_relay {
    char *name;        /* name= or "host:port"; shown in events */
    char *host;        /* host name or IP literal (no brackets) */
    int port;          /* 25 for smtp://, 465 for smtps:// by default */
    enum smtp_tls_mode tls;
    int verify;        /* verify certificate and host name (default 1) */
    char *ca;          /* CA file, or NULL for the system store */
    char *user, *pass; /* AUTH credentials (URL-decoded) or NULL */
    int pool;          /* connections to keep (default 4) */
};

/* smtp_relays_parse - parse a comma-separated list of relay URLs
 * (smtp://[user:pass@]host[:port][?params], smtps://...; params tls, verify,
 * ca, pool, name). Returns 0 with a malloc'd array in *out (free with
 * smtp_relays_free), or -1 with a reason in err that never contains the
 * password. */
int smtp_relays_parse(const char *spec, struct smtp_relay **out, size_t *n, char *err, size_t errlen);
void smtp_relays_free(struct smtp_relay *v, size_t n);

/* ---- replies ---------------------------------------------------------- */

/* One reply (RFC 5321 §4.2). code 0 means no reply: see local. */
struct smtp_reply {
    int code;                          /* 3-digit reply code, or 0 */
    char enhanced[16];                 /* "5.1.1" (RFC 3463) or "" */
    char text[SMTP_REPLY_TEXT_MAX];    /* text of all lines joined by " ",
                                          without codes; cleaned */
};

/* smtp_reply_parse - parse one complete reply from the start of in[0..len).
 * Returns 1 with *r filled and *used set to the bytes consumed (through the
 * last CRLF), 0 when more bytes are needed, -1 when the bytes are not an
 * SMTP reply (bad code, codes that differ between lines, line too long).
 * Accepts LF alone as a line end, a bare code with no text, and extracts an
 * enhanced status code when the text begins with one whose class matches
 * the reply code's first digit. */
int smtp_reply_parse(const char *in, size_t len, struct smtp_reply *r, size_t *used);

/* ---- dot-stuffing ------------------------------------------------------ */

/* smtp_dot_stuff - append the DATA payload for message bytes in[0..len):
 * line ends normalized to CRLF, every line starting with "." gets another
 * "." (RFC 5321 §4.5.2), a final CRLF is added if missing, then ".\r\n".
 * Returns 0 or -1 when out is full. */
int smtp_dot_stuff(const char *in, size_t len, struct buf *out);

/* ---- sessions ---------------------------------------------------------- */

/* Timeouts in ms, RFC 5321 §4.5.3.2 defaults. */
struct smtp_timeouts {
    int connect_ms;    /* 30 s */
    int greeting_ms;   /* 5 min */
    int ehlo_ms;       /* 5 min */
    int mail_ms;       /* 5 min */
    int rcpt_ms;       /* 5 min */
    int data_ms;       /* 2 min: the 354 */
    int block_ms;      /* 3 min: each write of the body */
    int dot_ms;        /* 10 min: reply to the final "." */
};

/* smtp_timeouts_default - fill t with the RFC 5321 §4.5.3.2 values. */
void smtp_timeouts_default(struct smtp_timeouts *t);

/* Why a recipient got no usable reply. */
enum smtp_local {
    SMTP_LOCAL_NONE = 0,       /* a reply decided */
    SMTP_LOCAL_CONNECT,        /* could not connect */
    SMTP_LOCAL_TIMEOUT,        /* a wait timed out */
    SMTP_LOCAL_LOST,           /* connection closed or I/O error */
    SMTP_LOCAL_PROTOCOL,       /* server sent something that is not SMTP */
    SMTP_LOCAL_TLS,            /* TLS handshake or policy failure */
    SMTP_LOCAL_BAD_ADDRESS,    /* address we refuse to send (CR/LF ...) */
};

/* Which command's reply decided a recipient. */
enum smtp_stage { SMTP_STAGE_CONNECT, SMTP_STAGE_MAIL, SMTP_STAGE_RCPT, SMTP_STAGE_DATA, SMTP_STAGE_DOT };

struct smtp_rcpt {
    const char *addr;          /* RCPT TO address, borrowed */
    struct smtp_reply reply;   /* the reply that decided this recipient */
    enum smtp_stage stage;     /* the command that reply answered */
    enum smtp_local local;     /* set when no reply decided */
};

struct smtp_txn {
    const char *mail_from;     /* envelope sender ("" for <>), borrowed */
    struct smtp_rcpt *rcpts;   /* borrowed, filled in by smtp_session_send */
    size_t nrcpts;
    const char *data;          /* message bytes, CRLF, NOT dot-stuffed */
    size_t datalen;
};

struct smtp_session;

/* smtp_session_new - a closed session for relay. helo is the EHLO name.
 * Returns NULL on ENOMEM. */
struct smtp_session *smtp_session_new(const struct smtp_relay *relay, const char *helo,
                                      const struct smtp_timeouts *t);

/* smtp_session_open - connect, read the greeting, EHLO (HELO when EHLO is
 * refused) and parse the capabilities. Does nothing when already open.
 * Returns 0, or -1 with the reason in *why (reply or local cause). */
int smtp_session_open(struct smtp_session *s, struct smtp_reply *why, enum smtp_local *local);

/* smtp_session_is_open - 1 when the session holds a usable connection. */
int smtp_session_is_open(const struct smtp_session *s);

/* smtp_session_send - run one transaction: MAIL FROM, RCPT TO for each
 * recipient, DATA, the dot-stuffed body and "."; with PIPELINING, MAIL,
 * every RCPT and DATA go out in one write and their replies are matched in
 * order (RFC 2920 §3.1). Opens the session first when needed. Fills every
 * t->rcpts[i] with the reply (or local cause) that decided it. After a
 * failed transaction on a live connection it sends RSET. Returns 0 when
 * the connection is still usable, -1 when it was closed.
 * Refused before anything is written, with SMTP_LOCAL_BAD_ADDRESS: a
 * recipient whose address has CR, LF, '<', '>' or another control byte or
 * is longer than 254 bytes; every recipient when mail_from is such an
 * address or there are more than SMTP_RCPTS_MAX. When no recipient is left
 * to send, nothing is written and 0 is returned. An idle connection the
 * server closed (or spoke on unasked, e.g. a 421) is replaced silently.
 * Adds SIZE=, BODY=8BITMIME and SMTPUTF8 to MAIL when advertised and
 * relevant. */
int smtp_session_send(struct smtp_session *s, struct smtp_txn *t);

/* smtp_session_quit - send QUIT (best effort, short timeout) and close. */
void smtp_session_quit(struct smtp_session *s);

/* smtp_session_free - close without QUIT and free; NULL is safe. */
void smtp_session_free(struct smtp_session *s);

/* smtp_session_has_pipelining - 1 when the relay advertised PIPELINING. */
int smtp_session_has_pipelining(const struct smtp_session *s);

/* smtp_session_transactions - transactions run on the current connection. */
unsigned smtp_session_transactions(const struct smtp_session *s);

/* ---- policy (smtp_trouble.c) ------------------------------------------- */

enum smtp_verdict { SMTP_DELIVERED, SMTP_DEFER, SMTP_BOUNCE };

/* smtp_verdict_of - the one place that turns what happened to a recipient
 * into delivered, retry later or bounce (RFC 5321 §4.2.1: 2yz ok, 4yz
 * transient, 5yz permanent; local failures are transient). 2yz counts only
 * at SMTP_STAGE_DOT; any reply at SMTP_STAGE_CONNECT (greeting, EHLO,
 * STARTTLS, AUTH) defers; 552 to RCPT and 530/535/5.7.0 to MAIL defer. */
enum smtp_verdict smtp_verdict_of(const struct smtp_rcpt *r);

/* smtp_local_reason - short stable name of a local cause ("timeout",
 * "connection_lost", "connect_failed", "protocol_error", "tls_failed",
 * "bad_address"), for events and logs. */
const char *smtp_local_reason(enum smtp_local l);

#endif
