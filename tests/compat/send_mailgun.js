/*
 * send_mailgun.js - send through mailgate with the official Mailgun client
 * ("mailgun.js" on npm, with "form-data"), configured only with the
 * username "api", the key and the base URL. Modes: send, bad-key,
 * bad-address. See common.js.
 */
'use strict';

const FormData = require('form-data');
const Mailgun = require('mailgun.js');
const c = require('./common');

const { base, key, mode } = c.args();
const mailgun = new Mailgun(FormData);
const mg = mailgun.client({ username: 'api', key, url: base });

async function main() {
  try {
    const r = await mg.messages.create('acme.example', {
      from: c.FROM,
      to: [mode === 'bad-address' ? 'not an address' : c.TO],
      cc: c.CC_NAME + ' <' + c.CC + '>',
      subject: c.subject('mailgun'),
      text: 'Your receipt is attached.',
      html: c.html(),
      attachment: [{ filename: 'receipt.pdf', data: c.PDF, contentType: 'application/pdf' }],
      inline: [{ filename: 'logo.png', data: c.PNG, contentType: 'image/png' }],
      'o:tag': ['receipt'],
      'o:tracking': 'no',           // a Mailgun option mailgate ignores
      'h:X-Campaign': 'q4',
      'h:Reply-To': 'support@acme.example',
      'v:order': '42',
      'v:provider': 'mailgun',
    });
    c.ok(r);
  } catch (err) {
    c.fail(err, { type: err.type, status: err.status, details: err.details });
  }
}

main();
