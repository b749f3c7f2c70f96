// Headless Debian Chromium as every browser test here starts it (playwright-core): the
// executable from CHROMIUM (default /usr/bin/chromium), no sandbox, no background traffic.
// `idp`: the test's identity provider (idp.acme.test) is on loopback with the test PKI's
// certificate, so its name maps there and its certificate is taken.
import { chromium } from 'playwright-core';

export function launch({ idp = false } = {}) {
  const args = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync'];
  if (idp) {
    args.push('--host-resolver-rules=MAP idp.acme.test 127.0.0.1', '--ignore-certificate-errors');
  }
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args,
  });
}
