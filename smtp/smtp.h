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
#define SMTP_ADDR_MAX 254         /* RFC 5321 §4.5.3.1.3: path of 256 with the brackets */
#define SMTP_TIMEOUT_MAX_MS (24 * 3600 * 1000) /* longest timeout smtp_timeouts_parse takes */

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
    int max_msgs;      /* transactions per connection, then QUIT (max_msgs=N,
                          default 100, 0 = no limit); smtp_session_send
                          enforces it */
    int rate;          /* messages per second to this relay (rate=N/s or
                          rate=N, default 0 = no limit); smtp_deliver.c
                          enforces it */
    int idle_s;        /* seconds a pooled connection may stay idle before
                          QUIT (idle=N, default 30, 0 = no limit: only the
                          server's own timeout ends it); smtp_deliver.c
                          enforces it */
};

/* smtp_relays_parse - parse a comma-separated list of relay URLs
 * (smtp://[user:pass@]host[:port][?params], smtps://...; params tls, verify,
 * ca, pool, name, max_msgs, rate, idle). Returns 0 with a malloc'd array in
 * *out (free with smtp_relays_free), or -1 with a reason in err that never
 * contains the password. */
int smtp_relays_parse(const char *spec, struct smtp_relay **out, size_t *n, char *err, size_t errlen);
/* smtp_relays_free - free an array from smtp_relays_parse (passwords are
 * wiped first); NULL is safe. */
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

/* ---- addresses (smtp_idn.c) -------------------------------------------- */

/* smtp_addr_wire - the form of envelope address addr that goes on the wire:
 * the local part unchanged, the domain (after the last '@') converted to
 * A-labels ("bücher.example" -> "xn--bcher-kva.example") when it has
 * non-ASCII bytes (IDNA2008 with UTS #46 non-transitional mapping, libidn2;
 * RFC 5890, RFC 6531 §3.2). An all-ASCII domain, a domain literal ("[...]")
 * and an address without '@' are copied as they are. Writes the result,
 * NUL-terminated, into the caller's out[0..outlen). *utf8_local (may be
 * NULL) is set to 1 when the local part has non-ASCII bytes, i.e. the
 * address can only be sent with SMTPUTF8 (RFC 6531 §3.4). Returns 0, or -1
 * when addr is not well-formed UTF-8, the domain is not a valid IDN, or the
 * result does not fit in outlen. Thread-safe; no allocation survives. */
int smtp_addr_wire(const char *addr, char *out, size_t outlen, int *utf8_local);

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

/* smtp_timeouts_parse - apply a config string (MAILGATE_SMTP_TIMEOUTS) such
 * as "connect=30s,greeting=5m,mail=5m,rcpt=5m,data=2m,block=3m,dot=10m" to
 * t. Keys: connect, greeting, ehlo, mail, rcpt, data, block, dot; any
 * subset, in any order, each at most once; the others keep their value in
 * t. Values are a number with the suffix ms, s, m or h (no suffix: seconds),
 * from 1 ms to SMTP_TIMEOUT_MAX_MS. NULL or "" changes nothing. Returns 0,
 * or -1 with a reason in err (t unchanged). Pure function (smtp_relay.c). */
int smtp_timeouts_parse(const char *spec, struct smtp_timeouts *t, char *err, size_t errlen);

/* Why a recipient got no usable reply. */
enum smtp_local {
    SMTP_LOCAL_NONE = 0,       /* a reply decided */
    SMTP_LOCAL_CONNECT,        /* could not connect */
    SMTP_LOCAL_TIMEOUT,        /* a wait timed out */
    SMTP_LOCAL_LOST,           /* connection closed or I/O error */
    SMTP_LOCAL_PROTOCOL,       /* server sent something that is not SMTP */
    SMTP_LOCAL_TLS,            /* TLS handshake or policy failure */
    SMTP_LOCAL_BAD_ADDRESS,    /* address we refuse to send (CR/LF, bad IDN ...) */
    SMTP_LOCAL_TIMEOUT_AFTER_DOT, /* no reply to the final "." in time: the
                                     message may have been delivered */
    SMTP_LOCAL_SIZE_EXCEEDED,  /* PERMANENT: message larger than the relay's
                                  SIZE (RFC 1870); enhanced 5.3.4 */
    SMTP_LOCAL_SMTPUTF8_REQUIRED, /* PERMANENT: non-ASCII local part and no
                                     SMTPUTF8 (RFC 6531 §3.7.5); enhanced 5.6.7 */
};

/* Which command's reply decided a recipient. */
enum smtp_stage { SMTP_STAGE_CONNECT, SMTP_STAGE_MAIL, SMTP_STAGE_RCPT, SMTP_STAGE_DATA, SMTP_STAGE_DOT };

struct smtp_rcpt {
    const char *addr;          /* RCPT TO address, borrowed */
    struct smtp_reply reply;   /* the reply that decided this recipient; for
                                  a permanent local cause code is 0 and
                                  enhanced/text say why */
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

/* smtp_session_send - deliver one message: MAIL FROM, RCPT TO for each
 * recipient, DATA, the dot-stuffed body and "."; with PIPELINING, MAIL,
 * every RCPT and DATA go out in one write and their replies are matched in
 * order (RFC 2920 §3.1). Opens the session first when needed. Fills every
 * t->rcpts[i] with the reply (or local cause) that decided it. After a
 * failed transaction on a live connection it sends RSET. Returns 0 when
 * the transaction ended without losing the connection (it may still have
 * been closed on purpose: max_msgs, see below), -1 when the connection was
 * lost or set-up failed; smtp_session_is_open tells which.
 *
 * Refused before anything is written, with SMTP_LOCAL_BAD_ADDRESS: a
 * recipient whose address has CR, LF, '<', '>' or another control byte, is
 * not UTF-8, has a domain that is not a valid IDN, or is longer than
 * SMTP_ADDR_MAX bytes once its domain is in A-labels; every recipient when
 * mail_from is such an address or there are more than SMTP_RCPTS_MAX. When
 * no recipient is left to send, nothing is written and 0 is returned. An
 * idle connection the server closed (or spoke on unasked, e.g. a 421) is
 * replaced silently.
 *
 * Addresses go out with IDN domains as A-labels (smtp_addr_wire). Adds
 * SIZE=, BODY=8BITMIME and SMTPUTF8 to MAIL when advertised and relevant.
 * Decided without sending the message, once the capabilities are known:
 *   - SIZE (RFC 1870): a message larger than an advertised SIZE n > 0 ->
 *     every recipient SMTP_LOCAL_SIZE_EXCEEDED (permanent, 5.3.4);
 *   - SMTPUTF8 (RFC 6531 §3.7.5): without it, a recipient whose local part
 *     is non-ASCII -> SMTP_LOCAL_SMTPUTF8_REQUIRED (permanent, 5.6.7), and
 *     every recipient when it is the sender's.
 *
 * Several transactions for one message:
 *   - too many recipients (RFC 5321 §4.5.3.1.10): the recipients that got
 *     452 (with no enhanced code or X.5.3), or 552 read as 452, to RCPT are
 *     sent in another transaction on the same connection right after,
 *     until every recipient has a verdict; when the FIRST RCPT of a
 *     transaction gets it (no progress), the rest are left with that reply
 *     (deferred). Without PIPELINING, no further RCPT is sent in a
 *     transaction after a 452 X.5.3.
 *   - 421 on a reused connection: when the message's first transaction
 *     runs on a connection that had carried an earlier one and MAIL FROM
 *     gets 421 (or the connection turns out closed before the MAIL reply:
 *     the same race with the server's idle close, and nothing was
 *     accepted), it is retried once at once on a fresh connection
 *     (smtp_session_retried). The fresh connection is not retried again,
 *     whatever its greeting or MAIL reply. Any other 421 closes the
 *     connection and defers the recipients still undecided.
 *
 * max_msgs: when the relay's max_msgs > 0 and the connection has carried
 * that many transactions, it is closed with QUIT after the message (a
 * message split by a 452 is finished on its connection first); the next
 * send reconnects.
 *
 * A timeout waiting for the reply to the final "." gives the recipients
 * accepted at RCPT SMTP_LOCAL_TIMEOUT_AFTER_DOT (deferred; logged as "may
 * have been delivered"). */
int smtp_session_send(struct smtp_session *s, struct smtp_txn *t);

/* smtp_session_quit - send QUIT (best effort, short timeout) and close. */
void smtp_session_quit(struct smtp_session *s);

/* smtp_session_free - close without QUIT and free; NULL is safe. */
void smtp_session_free(struct smtp_session *s);

/* smtp_session_has_pipelining - 1 when the relay advertised PIPELINING. */
int smtp_session_has_pipelining(const struct smtp_session *s);

/* smtp_session_transactions - transactions run on the current connection. */
unsigned smtp_session_transactions(const struct smtp_session *s);

/* smtp_session_tls_version - TLS protocol version ("TLSv1.3") of the
 * current connection, or of the last one when it has been closed since (so
 * it can be put on the events of the transaction that just ran); NULL when
 * that connection is plaintext or there was none. The string belongs to
 * the session and is valid until the next open, send or free. */
const char *smtp_session_tls_version(const struct smtp_session *s);

/* smtp_session_tls_cipher - cipher suite name ("TLS_AES_256_GCM_SHA384")
 * of the same connection as smtp_session_tls_version; NULL when plaintext.
 * Same lifetime. */
const char *smtp_session_tls_cipher(const struct smtp_session *s);

/* smtp_session_reused - 1 when the last smtp_session_send ran its last
 * transaction on a connection that had already carried one (a pooled,
 * reused connection), 0 on a fresh one. */
int smtp_session_reused(const struct smtp_session *s);

/* smtp_session_retried - 1 when the last smtp_session_send met a 421 (or a
 * closed connection) at MAIL FROM on a reused connection and retried the
 * transaction on a fresh connection. */
int smtp_session_retried(const struct smtp_session *s);

/* smtp_session_relay_fault - 1 when the last smtp_session_open or
 * smtp_session_send failed because of the relay's configuration, not the
 * message: 530, 535 or a 5xx with 5.7.0 (authentication required) to AUTH
 * or MAIL FROM, another 5xx to AUTH, no usable AUTH mechanism for the
 * configured credentials, TLS required (tls=required, or credentials
 * without tls=none) but STARTTLS not offered or refused, or the TLS
 * handshake or certificate verification failed. The caller should take the
 * relay out of rotation for a while. Each such failure is also logged once
 * at LOG_ERROR as event "relay_config_fault" (never with the password). */
int smtp_session_relay_fault(const struct smtp_session *s);

/* ---- policy (smtp_trouble.c) ------------------------------------------- */

enum smtp_verdict { SMTP_DELIVERED, SMTP_DEFER, SMTP_BOUNCE };

/* smtp_verdict_of - the one place that turns what happened to a recipient
 * into delivered, retry later or bounce (RFC 5321 §4.2.1: 2yz ok, 4yz
 * transient, 5yz permanent; local failures are transient except
 * SMTP_LOCAL_SIZE_EXCEEDED and SMTP_LOCAL_SMTPUTF8_REQUIRED, which bounce).
 * 2yz counts only at SMTP_STAGE_DOT; any reply at SMTP_STAGE_CONNECT
 * (greeting, EHLO, STARTTLS, AUTH) defers; 552 to RCPT and 530/535/5.7.0
 * to MAIL defer. */
enum smtp_verdict smtp_verdict_of(const struct smtp_rcpt *r);

/* smtp_reply_auth_required - 1 when r is 530, 535, or a 5yz with enhanced
 * code 5.7.0: the relay wants (other) credentials or TLS (RFC 4954 §6,
 * RFC 3463). A relay configuration fault, never the recipient's. */
int smtp_reply_auth_required(const struct smtp_reply *r);

/* smtp_local_reason - short stable name of a local cause ("timeout",
 * "connection_lost", "connect_failed", "protocol_error", "tls_failed",
 * "bad_address", "timeout_after_data", "size_exceeded",
 * "smtputf8_required"), for events and logs; "unknown" for a value out of
 * range. The string is static. */
const char *smtp_local_reason(enum smtp_local l);

#endif
