// Signs in to toolgate's page through the company's identity provider (oidc-provider's
// devInteractions login and consent forms), lands on the queue, waits for a held request,
// approves it, and reports what it saw. Driven by tests/it/sso_browser.rs.
//   node sso.mjs ADMIN_URL PROVIDER_NAME EMAIL SUMMARY_TEXT
import { launch } from './chromium.mjs';

const [admin, provider, email, summary] = process.argv.slice(2);
const browser = await launch({ idp: true });
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await page.goto(`${admin}/login`);
  await page.click(`text=Sign in with ${provider}`);
  await page.waitForSelector('input[name=login]');
  await page.fill('input[name=login]', email);
  await page.fill('input[name=password]', 'any');
  await page.click('button[type=submit]');
  // The consent form, then back to toolgate.
  await page.waitForSelector('button[type=submit]');
  await Promise.all([page.waitForURL('**/queue', { timeout: 20000 }), page.click('button[type=submit]')]);
  console.log('READY');
  const item = page.locator('.proposal', { hasText: summary });
  await item.waitFor({ timeout: 20000 });
  console.log('SEEN');
  await Promise.all([page.waitForURL('**/proposals/*'), item.locator('a').click()]);
  await page.fill('form[action$="/approve"] textarea[name=comment]', 'approved after SSO');
  await Promise.all([page.waitForLoadState('load'), page.click('form[action$="/approve"] button')]);
  await page.waitForFunction(() => document.getElementById('state')?.textContent !== 'pending', null, { timeout: 10000 });
  console.log('STATE ' + await page.locator('#state').innerText());
} finally {
  await browser.close();
}
