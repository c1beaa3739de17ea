/*
 * send_sendgrid.js - send through mailgate with the official SendGrid client
 * ("@sendgrid/mail" on npm), configured only with the key and the base URL.
 * Modes: send, sandbox, bad-key, bad-address. See common.js.
 */
'use strict';

const sgMail = require('@sendgrid/mail');
const c = require('./common');

const { base, key, mode } = c.args();
sgMail.setApiKey(key);                                // setApiKey resets the base URL,
sgMail.client.setDefaultRequest('baseUrl', base + '/'); // so set it afterwards

function message(to) {
  return {
    from: c.FROM,
    to,
    cc: { email: c.CC, name: c.CC_NAME },
    replyTo: 'support@acme.example',
    subject: c.subject('sendgrid'),
    text: 'Your receipt is attached.',
    html: c.html(),
    headers: { 'X-Campaign': 'q4' },
    categories: ['receipt'],
    customArgs: { order: '42', provider: 'sendgrid' },
    attachments: [
      { content: c.PDF.toString('base64'), filename: 'receipt.pdf', type: 'application/pdf', disposition: 'attachment' },
      // attachments go to the API as written, so the API's own key: content_id
      { content: c.PNG.toString('base64'), filename: 'logo.png', type: 'image/png', disposition: 'inline',
        content_id: 'logo.png' },
    ],
    mailSettings: { sandboxMode: { enable: mode === 'sandbox' } },
    asm: { groupId: 1 }, // a SendGrid field mailgate ignores
  };
}

async function main() {
  try {
    const [resp] = await sgMail.send(message(mode === 'bad-address' ? 'not an address' : c.TO));
    c.ok({ statusCode: resp.statusCode, messageId: resp.headers['x-message-id'] || null, body: resp.body });
  } catch (err) {
    c.fail(err, { code: err.code, status: err.code, body: err.response ? err.response.body : null });
  }
}

main();
