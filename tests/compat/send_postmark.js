/*
 * send_postmark.js - send through mailgate with the official Postmark client
 * ("postmark" on npm), configured only with the host and the key.
 * Modes: send, batch, template (TemplateAlias "receipt"), bad-key,
 * bad-address. See common.js for the command line and output.
 */
'use strict';

const postmark = require('postmark');
const c = require('./common');

const { base, key, mode } = c.args();
const url = new URL(base);
const client = new postmark.ServerClient(key, {
  requestHost: url.host,
  useHttps: url.protocol === 'https:',
});

function message(to) {
  return {
    From: c.FROM,
    To: to,
    Cc: c.CC_NAME + ' <' + c.CC + '>',
    Subject: c.subject('postmark'),
    TextBody: 'Your receipt is attached.',
    HtmlBody: c.html(),
    ReplyTo: 'support@acme.example',
    Headers: [{ Name: 'X-Campaign', Value: 'q4' }],
    Tag: 'receipt',
    Metadata: { order: '42', provider: 'postmark' },
    Attachments: [
      { Name: 'receipt.pdf', Content: c.PDF.toString('base64'), ContentType: 'application/pdf', ContentID: null },
      { Name: 'logo.png', Content: c.PNG.toString('base64'), ContentType: 'image/png', ContentID: 'cid:logo.png' },
    ],
    TrackOpens: false,
    TrackLinks: postmark.Models.LinkTrackingOptions.None,
    MessageStream: 'outbound', // a Postmark field mailgate ignores
  };
}

async function main() {
  try {
    if (mode === 'send' || mode === 'bad-key') {
      c.ok(await client.sendEmail(message(c.TO)));
    } else if (mode === 'bad-address') {
      c.ok(await client.sendEmail(message('not an address')));
    } else if (mode === 'batch') {
      c.ok(await client.sendEmailBatch([message(c.TO), message('not an address')]));
    } else if (mode === 'template') {
      c.ok(await client.sendEmailWithTemplate({
        From: c.FROM,
        To: c.TO,
        TemplateAlias: 'receipt',
        TemplateModel: { name: 'Ann' },
        Tag: 'templated',
        MessageStream: 'outbound',
      }));
    } else {
      throw new Error('unknown mode ' + mode);
    }
  } catch (err) {
    c.fail(err, { code: err.code, status: err.statusCode });
  }
}

main();
