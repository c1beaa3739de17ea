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

#define MIME_ATTACH_MAX 100         /* attachments in one message */
#define MIME_FILENAME_MAX 255       /* octets of an attachment's file name (UTF-8) */
#define MIME_CONTENT_ID_MAX 250     /* octets of a Content-ID, without the angle brackets */
#define MIME_CTYPE_MAX 255          /* octets of "type/subtype" */

/* One attachment. filename is UTF-8 without control characters;
 * content_type is "type/subtype" or NULL (then mime_type_for_filename
 * chooses); data holds len decoded octets (may be NULL when len is 0);
 * content_id (without angle brackets) makes the part inline, to be
 * referenced from the html as "cid:<content_id>".
 * Ownership: when filled by mime_attachment_set, the struct owns every
 * pointer and mime_attachment_free releases them (safe on a zeroed
 * struct); mime_build only reads it. */
struct mime_attachment {
    char *filename;
    char *content_type;
    unsigned char *data;
    size_t len;
    char *content_id;
};

/* mime_attachment_set - fill a from its parts, validating each (see
 * mime_filename_valid, mime_content_type_valid, mime_content_id_valid) and
 * decoding base64 (len octets at b64, as mime_base64_decode). filename is
 * copied; content_type and content_id may be NULL; a content_id given as
 * "<id>" loses its brackets. On error a is zeroed, *which names the input
 * at fault ("filename", "content_type", "content" or "content_id") and err
 * says why. Returns 0 or -1. */
int mime_attachment_set(struct mime_attachment *a, const char *filename, const char *content_type,
                        const char *b64, size_t b64len, const char *content_id, const char **which,
                        char *err, size_t errlen);

/* mime_attachment_free - release what a owns and zero it; NULL is ignored. */
void mime_attachment_free(struct mime_attachment *a);

/* mime_base64_decode - strict RFC 4648 §4 base64: the standard alphabet,
 * length a multiple of 4 once line breaks (CR, LF) are skipped, "=" only
 * as the final one or two padding characters. Any other character (spaces
 * included), a missing or misplaced "=" is refused. *out is malloc'd (the
 * caller frees it; non-NULL even for empty input) and *outlen set. Returns
 * 0, or -1 with a reason in err that names the offending position. */
int mime_base64_decode(const char *in, size_t len, unsigned char **out, size_t *outlen, char *err,
                       size_t errlen);

/* mime_type_for_filename - the media type for a file name's extension
 * (case-insensitive: "pdf" -> "application/pdf", "png" -> "image/png", ...),
 * else "application/octet-stream". Returns a static string. */
const char *mime_type_for_filename(const char *filename);

/* mime_content_type_valid - 1 when ct is "type/subtype": two RFC 2045
 * tokens of at most MIME_CTYPE_MAX octets in all, no parameters. */
int mime_content_type_valid(const char *ct);

/* mime_filename_valid - 1 when name is 1..MIME_FILENAME_MAX octets of
 * well-formed UTF-8 with no control characters (so no CR/LF). */
int mime_filename_valid(const char *name);

/* mime_content_id_valid - 1 when id is a dot-atom-text, optionally
 * "@" and another dot-atom-text (RFC 5322 msg-id without the brackets),
 * of at most MIME_CONTENT_ID_MAX octets. */
int mime_content_id_valid(const char *id);

/* A message to render. Bcc recipients are never written: they exist only
 * in the envelope. The struct borrows every pointer: the caller keeps
 * ownership of the strings, headers and attachments, and mime_build keeps
 * no reference to them after it returns. */
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
    const struct mime_attachment *attachments; /* nattachments items, in order */
    size_t nattachments;     /* at most MIME_ATTACH_MAX */
};

/* mime_build - render m as an RFC 5322 message with MIME-Version, Date,
 * Message-ID. The body is, from the inside out, and each layer only when
 * needed:
 *   - a single text/plain or text/html part, or multipart/alternative with
 *     text/plain first when both are given (RFC 2046 §5.1.4);
 *   - multipart/related (RFC 2387) around that and the inline attachments
 *     (those with a content_id), when there are some and there is html;
 *   - multipart/mixed around that and the other attachments (and inline
 *     ones when there is no html to refer to them).
 * Text bodies go as 7bit when they can, else quoted-printable; attachments
 * as base64 in 76-character lines, with name= (RFC 2047 words when not
 * ASCII) on Content-Type and filename (RFC 2231 filename*= when not
 * ASCII) on Content-Disposition. Output uses CRLF and is NOT dot-stuffed
 * (that is the SMTP client's job). out's maximum bounds the message.
 * Returns 0, or -1 with a reason in err ("message too large" exactly when
 * out's maximum was hit; a bad header, address or attachment otherwise);
 * out is then unchanged. */
int mime_build(const struct mime_message *m, struct buf *out, char *err, size_t errlen);

/* ---- DKIM signing (mime_dkim.c, RFC 6376, RFC 8463) --------------------- */

#define MIME_DKIM_KEYS_MAX 64      /* entries in MAILGATE_DKIM_KEYS */
#define MIME_DKIM_SELECTOR_MAX 63  /* octets of a selector */
#define MIME_DKIM_RSA_MIN_BITS 1024 /* RFC 8301 §3.2: smaller keys are refused */

struct mime_dkim_keys;             /* opaque: the loaded signing keys */
struct mime_dkim_key;              /* opaque: one domain's key */

/* mime_dkim_keys_load - parse "domain:selector:/path/key.pem,..." and load
 * every PEM private key (RSA of at least MIME_DKIM_RSA_MIN_BITS, or
 * Ed25519; unencrypted PKCS#8 or traditional PEM). Domains compare
 * case-insensitively and may appear once. An empty spec gives an empty
 * set. *out is freed with mime_dkim_keys_free. The keys are read-only after
 * loading and may be used from several threads at once. Returns 0, or -1
 * with one line in err naming the entry at fault (never key material). */
int mime_dkim_keys_load(const char *spec, struct mime_dkim_keys **out, char *err, size_t errlen);

/* mime_dkim_keys_free - release the keys; NULL is ignored. */
void mime_dkim_keys_free(struct mime_dkim_keys *keys);

/* mime_dkim_keys_describe - "domain:selector:rsa-2048,..." (for the start-up
 * log; no paths or key material) into out, truncated to outlen. */
void mime_dkim_keys_describe(const struct mime_dkim_keys *keys, char *out, size_t outlen);

/* mime_dkim_key_for - the key for domain (case-insensitive), or NULL. The
 * pointer belongs to keys. keys may be NULL. */
const struct mime_dkim_key *mime_dkim_key_for(const struct mime_dkim_keys *keys, const char *domain);

/* mime_dkim_sign - sign the rendered message msg (CRLF line ends, not
 * dot-stuffed: exactly the bytes the SMTP client sends before stuffing)
 * with key, and prepend the folded DKIM-Signature field to it. Signature:
 * a=rsa-sha256 or ed25519-sha256, c=relaxed/relaxed, d= and s= of the key,
 * t=now_s (seconds since the epoch), bh= of the whole body, h= naming the
 * fields present among From, Reply-To, To, Cc, Subject, Date, Message-ID,
 * MIME-Version, Content-Type, Content-Transfer-Encoding, List-Unsubscribe
 * and List-Unsubscribe-Post, with From listed once more than it occurs so
 * that no From can be added later (RFC 6376 §8.15). msg's maximum still
 * applies. Returns 0, or -1 with a reason in err ("message too large" when
 * the maximum is hit); msg is then unchanged. */
int mime_dkim_sign(const struct mime_dkim_key *key, struct buf *msg, int64_t now_s, char *err,
                   size_t errlen);

/* mime_dkim_canon_body - append the relaxed body canonicalization (RFC 6376
 * §3.4.4) of len octets: white space runs become one SP, white space at
 * line ends and empty lines at the end go, a final CRLF is added to a
 * non-empty body without one; an empty result stays empty. Only CRLF ends
 * a line. Returns 0 or -1 when out is full (out unchanged). */
int mime_dkim_canon_body(const char *body, size_t len, struct buf *out);

/* mime_dkim_canon_header - append the relaxed header canonicalization
 * (RFC 6376 §3.4.2) of one field as it appears in the message ("Name:
 * value", folds included, with or without its final CRLF): the name in
 * lower case, unfolded, white space runs as one SP, none around the colon
 * or at the end, then CRLF. Returns 0, or -1 when field has no colon or
 * out is full (out unchanged). */
int mime_dkim_canon_header(const char *field, size_t len, struct buf *out);

/* ---- tracking rewrites (mime_track.c) ----------------------------------
 * Pure functions over the html part, used before mime_build when a message
 * is sent with open or click tracking. */

#define MIME_TRACK_URL_MAX 8192    /* bytes of a link URL that is tracked; longer ones are left alone */

/* mime_track_link_fn - asked for each http(s) link to track: url is the
 * decoded URL (len bytes, not NUL-terminated), exactly what a browser would
 * follow. Append the URL that replaces it to out (raw: the caller escapes
 * it) and return 0; return 1 to leave the link alone, -1 to fail the
 * rewrite. */
typedef int (*mime_track_link_fn)(void *ctx, const char *url, size_t len, struct buf *out);

/* mime_track_links - append html to out with the href of every <a> tag
 * (name and attribute ASCII case-insensitive, value quoted either way or
 * not) that holds an http: or https: URL replaced by what fn returns.
 * Links with a data-mailgate-notrack attribute, other schemes (mailto:,
 * relative, ...), links in comments and in raw-text elements (script,
 * style) are copied unchanged; so is everything else. The replacement is
 * written HTML-escaped in double quotes. Returns 0, or -1 when out is full
 * or fn failed. */
int mime_track_links(const char *html, size_t len, mime_track_link_fn fn, void *ctx, struct buf *out);

/* mime_track_pixel - append html to out with a 1x1 <img> of pixel_url
 * (escaped) inserted just before the last </body> (ASCII case-insensitive),
 * or at the end when there is none. Returns 0 or -1 when out is full. */
int mime_track_pixel(const char *html, size_t len, const char *pixel_url, struct buf *out);

/* mime_html_attr_decode - append the value of an HTML attribute with its
 * character references decoded as a browser does (numeric ones, and amp,
 * lt, gt, quot, apos, nbsp; legacy names without ';' only when not
 * followed by an alphanumeric or '='). Returns 0 or -1 when out is full. */
int mime_html_attr_decode(const char *in, size_t len, struct buf *out);

/* mime_html_attr_escape - append in with & " ' < > as character
 * references, safe inside a quoted attribute value. 0 or -1 (full). */
int mime_html_attr_escape(const char *in, size_t len, struct buf *out);

#endif
