/*
 * mime.h - RFC 5322 / MIME message building: addresses, encoded-words,
 * header folding, body transfer encodings, and the whole message.
 *
 * Everything here is pure (no I/O, no globals) and unit-tested in
 * tests/unit/test_mime.c. Output lines end in CRLF. No output line exceeds
 * 998 octets (RFC 5322 §2.1.1); header lines are folded to 78 where the
 * content allows.
 *
 * Ownership: structs below own their strings (malloc'd); the *_free
 * functions release them and are safe on zeroed structs.
 *
 * SECURITY: header values are checked for CR/LF by the caller (gateway) and
 * again by mime_build, which refuses to write any CR or LF it did not put
 * there itself.
 */
#ifndef MG_MIME_H
#define MG_MIME_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define MIME_ADDR_MAX 320          /* bytes of an addr-spec: 64 local + @ + 255 domain */
#define MIME_LOCAL_MAX 64          /* RFC 5321 §4.5.3.1.1 */
#define MIME_DOMAIN_MAX 255        /* RFC 5321 §4.5.3.1.2 */
#define MIME_NAME_MAX 1000         /* bytes of a display name */
#define MIME_ENCODED_WORD_MAX 75   /* RFC 2047 §2 */
#define MIME_LINE_SOFT 78          /* RFC 5322 §2.1.1 SHOULD */
#define MIME_LINE_HARD 998         /* RFC 5322 §2.1.1 MUST */
#define MIME_QP_LINE 76            /* RFC 2045 §6.7 rule 5 */
#define MIME_ADDR_LIST_MAX 1000    /* mailboxes in one list: bounds parser growth */
#define MIME_COMMENT_DEPTH_MAX 16  /* nesting of (comments) accepted by the parser */
#define MIME_FIELD_NAME_MAX 76     /* octets of a header field name: "Name: " fits in 78 */

/* One mailbox. email is the addr-spec "local@domain" (UTF-8 allowed, RFC
 * 6532); name is the display name as UTF-8 text, unquoted, or NULL. */
struct mime_addr {
    char *name;
    char *email;
};

struct mime_addr_list {
    struct mime_addr *v;
    size_t n, cap;
};

/* mime_addr_parse_list - parse an RFC 5322 address-list ("a@x, Name <b@y>",
 * quoted display names with commas and escapes, comments, groups) and
 * append each mailbox to out. Returns 0, or -1 with a human-readable reason
 * in err (out may hold the mailboxes parsed before the error). */
int mime_addr_parse_list(const char *s, struct mime_addr_list *out, char *err, size_t errlen);

/* mime_addr_parse_one - parse exactly one mailbox ("Name <a@x>" or "a@x").
 * Returns 0, or -1 with a reason in err (out is then zeroed). */
int mime_addr_parse_one(const char *s, struct mime_addr *out, char *err, size_t errlen);

/* mime_addr_check_email - validate an addr-spec: dot-atom or quoted-string
 * local part (<= 64 octets), dot-atom domain or address literal (<= 255),
 * no CR/LF/NUL, UTF-8 well-formed. Returns 0, or -1 with a reason. */
int mime_addr_check_email(const char *email, char *err, size_t errlen);

/* mime_addr_set - fill a from an {email, name} pair (name may be NULL);
 * email is validated as by mime_addr_check_email, name must have no CR/LF.
 * Copies both. Returns 0 or -1 with a reason. */
int mime_addr_set(struct mime_addr *a, const char *email, const char *name, char *err, size_t errlen);

/* mime_addr_list_push - append a copy of a to l. Returns 0 or -1 (ENOMEM). */
int mime_addr_list_push(struct mime_addr_list *l, const struct mime_addr *a);

void mime_addr_free(struct mime_addr *a);
void mime_addr_list_free(struct mime_addr_list *l);

/* mime_format_addr - append a as it appears in a header: the display name
 * as an atom phrase, a quoted-string (escaping " and \) or, when it is
 * not ASCII, RFC 2047 encoded-words (plain ASCII words of such a name stay
 * atoms between them); then " <email>". A bare "email" when
 * there is no name. col is the current column (for folding); it is updated.
 * Returns 0 or -1 when out is full. */
int mime_format_addr(const struct mime_addr *a, struct buf *out, size_t *col);

/* mime_encode_words - append text as RFC 2047 encoded-words
 * ("=?UTF-8?B?...?="), each at most 75 characters, split only between
 * whole UTF-8 characters, separated by CRLF SP folds so that no line
 * exceeds 78 characters. col is the column where the first word starts and
 * is updated. Returns 0 or -1 when out is full. */
int mime_encode_words(const char *utf8, size_t len, struct buf *out, size_t *col);

/* mime_header - append one header field "Name: value" CRLF, folding the
 * value at white space so lines stay within 78 characters where possible.
 * A value with non-ASCII or control characters, or "=?", or a run without
 * white space too long for 998, is written whole as encoded-words (which
 * fold anywhere), so no line ever exceeds 998. Returns 0, or -1 when the
 * name is not a field name, the value has CR/LF or bad UTF-8, or out is
 * full (out is then unchanged). */
int mime_header(struct buf *out, const char *name, const char *value);

/* mime_qp_encode - quoted-printable (RFC 2045 §6.7) of a UTF-8 text body.
 * Line ends in the input (LF, CRLF or CR) become CRLF hard breaks; soft
 * breaks "=" keep every line at most 76 characters; trailing white space
 * before a break is encoded. Returns 0 or -1 when out is full. */
int mime_qp_encode(const char *in, size_t len, struct buf *out);

/* mime_base64_lines - base64 of in, in lines of 76 characters ending in
 * CRLF (RFC 2045 §6.8). Returns 0 or -1 when out is full. */
int mime_base64_lines(const void *in, size_t len, struct buf *out);

/* mime_body_needs_encoding - 1 when a text body cannot go as 7bit: it has
 * non-ASCII bytes, a bare CR, NUL, or a line longer than 998 octets. */
int mime_body_needs_encoding(const char *in, size_t len);

/* mime_header_name_valid - 1 when name is an RFC 5322 field name: 1 to
 * MIME_FIELD_NAME_MAX printable ASCII characters (33..126) other than ':'. */
int mime_header_name_valid(const char *name);

struct mime_header_field {
    char *name;   /* validated RFC 5322 field name */
    char *value;  /* UTF-8, no CR/LF */
};

/* A message to render. Bcc recipients are never written: they exist only
 * in the envelope. */
struct mime_message {
    struct mime_addr from;
    struct mime_addr_list to, cc, reply_to;
    const char *subject;     /* UTF-8 or NULL */
    const char *text;        /* text/plain body or NULL */
    const char *html;        /* text/html body or NULL */
    const struct mime_header_field *headers; /* caller-supplied extra fields */
    size_t nheaders;
    const char *message_id;  /* without angle brackets: "id@host" */
    int64_t date_ms;         /* Date: header, ms since the epoch */
};

/* mime_build - render m as an RFC 5322 message with MIME-Version, Date,
 * Message-ID; a single text/plain or text/html part, or multipart/alternative
 * with text/plain first when both are given (RFC 2046 §5.1.4). Bodies go as
 * 7bit when they can, else quoted-printable. Output uses CRLF and is NOT
 * dot-stuffed (that is the SMTP client's job). Returns 0, or -1 with a
 * reason in err (message too large, bad header). */
int mime_build(const struct mime_message *m, struct buf *out, char *err, size_t errlen);

#endif
