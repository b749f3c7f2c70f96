// A person connects their account through toolgate's one-time link: the link sends the
// browser to the authorization server (oidc-provider's devInteractions login and consent
// forms), which sends it back to toolgate's callback, which says "Connected". Driven by
// tests/it/connections.rs.
//   node connect.mjs LINK EMAIL
import { launch } from './chromium.mjs';

const [link, email] = process.argv.slice(2);
const browser = await launch({ idp: true });
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await page.goto(link);
  await page.waitForSelector('input[name=login]');
  await page.fill('input[name=login]', email);
  await page.fill('input[name=password]', 'any');
  await page.click('button[type=submit]');
  // The consent form, then back to toolgate.
  await page.waitForSelector('button[type=submit]');
  await Promise.all([page.waitForURL('**/connect/callback**', { timeout: 20000 }), page.click('button[type=submit]')]);
  await page.waitForSelector('#connected', { timeout: 10000 });
  console.log('CONNECTED ' + (await page.locator('body').innerText()).replace(/\s+/g, ' '));
  // The link is good once: opening it again says so.
  await page.goto(link);
  console.log('AGAIN ' + (await page.locator('body').innerText()).replace(/\s+/g, ' '));
} finally {
  await browser.close();
}
