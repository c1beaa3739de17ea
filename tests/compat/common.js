/*
 * common.js - what every provider script shares: the command line, the
 * message content (addresses, an attachment, an inline image, a custom
 * header, tags and metadata), and printing one JSON result line.
 *
 * Usage: node send_<provider>.js BASE_URL KEY MODE
 *   BASE_URL  mailgate's base URL (http://127.0.0.1:PORT)
 *   KEY       a mailgate API key, used as the provider's token
 *   MODE      send | bad-key | bad-address (and per-script extras)
 * Prints one line: {"ok": true, "result": ...} or
 * {"ok": false, "error": {"class", "name", "message", "status", ...}}.
 * Exit status 0 either way; 2 for a usage error.
 */
'use strict';

const FROM_EMAIL = 'noreply@acme.example';
const FROM = 'Acme <' + FROM_EMAIL + '>';
const TO = 'ann@example.com';
const CC = 'bob@example.org';
const CC_NAME = 'Bob';

/* A 1x1 PNG (the inline image) and a small binary "PDF" (the attachment). */
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
  'base64');
const PDF = Buffer.concat([
  Buffer.from('%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n'),
  Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
]);

function args() {
  const [base, key, mode] = process.argv.slice(2);
  if (!base || key === undefined || !mode) {
    process.stderr.write('usage: node ' + process.argv[1] + ' BASE_URL KEY MODE\n');
    process.exit(2);
  }
  return { base: base.replace(/\/+$/, ''), key, mode };
}

/* subject - a subject that names the provider, so the test can find the
 * message at the relay. */
function subject(provider) {
  return 'Receipt via ' + provider;
}

function html() {
  return '<p>Your receipt is attached.</p><img src="cid:logo.png" alt="logo">';
}

function ok(result) {
  process.stdout.write(JSON.stringify({ ok: true, result }) + '\n');
}

/* fail - print a caught error: its class and the fields clients use. */
function fail(err, extra) {
  const e = {
    class: err && err.constructor ? err.constructor.name : typeof err,
    name: err && err.name,
    message: err && err.message,
  };
  Object.assign(e, extra || {});
  process.stdout.write(JSON.stringify({ ok: false, error: e }) + '\n');
}

module.exports = { FROM, FROM_EMAIL, TO, CC, CC_NAME, PNG, PDF, args, subject, html, ok, fail };
