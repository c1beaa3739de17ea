/*
 * smtp_idn.c - envelope addresses as they go on the wire: internationalized
 * domain names become A-labels (RFC 5890), local parts stay as they are.
 *
 * Why here and not in the session: it is a pure function of the address,
 * tested on its own. The session asks it for the wire form of MAIL FROM and
 * every RCPT TO, and learns from it whether the local part needs SMTPUTF8
 * (RFC 6531): a domain never does, since an A-label is plain ASCII and
 * every relay takes it.
 *
 * Mapping: libidn2's idn2_to_ascii_8z with IDN2_NONTRANSITIONAL, i.e.
 * IDNA2008 with the UTS #46 non-transitional mapping (case folding, NFC;
 * "ß" stays "ß" rather than becoming "ss"), which is what browsers and
 * current MTAs do. Only a domain that has a non-ASCII byte is passed to
 * libidn2: an ASCII domain is sent byte for byte as the caller gave it.
 *
 * Limits: the result must fit in the caller's buffer (the session uses
 * SMTP_ADDR_MAX + 1); libidn2 bounds a domain at 255 bytes and a label at
 * 63.
 *
 * SECURITY: input is checked to be well-formed UTF-8 before libidn2 sees
 * it. The address was already checked for CR, LF and '<' '>' by the
 * session; the A-label output is letters, digits, '-' and '.' only.
 */
#include "smtp/smtp.h"
#include "common/util.h"

#include <idn2.h>
#include <string.h>

static int any_8bit(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return 1;
    return 0;
}

/* put - out = a[0..an) b (NUL-terminated b). Returns 0, or -1 if it does
 * not fit in outlen. */
static int put(char *out, size_t outlen, const char *a, size_t an, const char *b)
{
    size_t bn = strlen(b);
    if (an + bn + 1 > outlen)
        return -1;
    memcpy(out, a, an);
    memcpy(out + an, b, bn + 1);
    return 0;
}

int smtp_addr_wire(const char *addr, char *out, size_t outlen, int *utf8_local)
{
    if (utf8_local)
        *utf8_local = 0;
    if (!addr || !out || outlen == 0)
        return -1;
    size_t n = strlen(addr);
    if (!util_utf8_valid(addr, n))
        return -1;
    const char *at = strrchr(addr, '@');
    if (!at) { /* "postmaster" or "" (the null sender): all local part */
        if (utf8_local)
            *utf8_local = any_8bit(addr, n);
        return put(out, outlen, "", 0, addr);
    }

    size_t ln = (size_t)(at - addr) + 1; /* local part and the '@' */
    const char *dom = at + 1;
    if (utf8_local)
        *utf8_local = any_8bit(addr, ln - 1);
    if (!any_8bit(dom, strlen(dom)))
        return put(out, outlen, addr, ln, dom);
    if (dom[0] == '[') /* an address literal is ASCII by definition */
        return -1;

    char *alabel = NULL;
    int rc = idn2_to_ascii_8z(dom, &alabel, IDN2_NONTRANSITIONAL);
    if (rc != IDN2_OK || !alabel) {
        idn2_free(alabel);
        return -1;
    }
    rc = put(out, outlen, addr, ln, alabel);
    idn2_free(alabel);
    return rc;
}
