/*
 * send_resend.js - send through mailgate with the official Resend client
 * ("resend" on npm), configured only with the key and RESEND_BASE_URL.
 * The Resend client does not throw: it returns {data, error}, and error
 * ({statusCode, message, name}) is its error type. Modes: send (then GET
 * /emails/{id} through the client), batch, bad-key, bad-address. See
 * common.js.
 */
'use strict';

const c = require('./common');

const { base, key, mode } = c.args();
// The client reads RESEND_BASE_URL when it is loaded (newer releases also
// take new Resend(key, {baseUrl})), so set it before requiring it.
process.env.RESEND_BASE_URL = base;
const { Resend } = require('resend');
const resend = new Resend(key);

function message(to) {
  return {
    from: c.FROM,
    to: [to],
    cc: c.CC_NAME + ' <' + c.CC + '>',
    replyTo: 'support@acme.example',
    subject: c.subject('resend'),
    text: 'Your receipt is attached.',
    html: c.html(),
    headers: { 'X-Campaign': 'q4' },
    tags: [{ name: 'category', value: 'receipt' }, { name: 'order', value: '42' }],
    attachments: [
      { filename: 'receipt.pdf', content: c.PDF, contentType: 'application/pdf' },
      { filename: 'logo.png', content: c.PNG, contentType: 'image/png', contentId: 'logo.png' },
    ],
  };
}

function report(r) {
  if (r.error) {
    process.stdout.write(JSON.stringify({
      ok: false,
      error: { class: 'ErrorResponse', name: r.error.name, message: r.error.message, status: r.error.statusCode },
    }) + '\n');
    return false;
  }
  return true;
}

async function main() {
  try {
    if (mode === 'batch') {
      const r = await resend.batch.send([message(c.TO), message(c.CC)]);
      if (report(r))
        c.ok(r.data);
      return;
    }
    const to = mode === 'bad-address' ? 'not an address' : c.TO;
    const r = await resend.emails.send(message(to), { idempotencyKey: 'compat-' + mode + '-' + process.pid });
    if (!report(r))
      return;
    const got = await resend.emails.get(r.data.id);
    if (report(got))
      c.ok({ id: r.data.id, email: got.data });
  } catch (err) {
    c.fail(err);
  }
}

main();
