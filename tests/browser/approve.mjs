// Signs in to toolgate's approvers' page, waits for a held request to appear in the queue,
// opens it, approves it, and reports what it saw. Driven by tests/approvals_browser.rs.
//   node approve.mjs ADMIN_URL TOKEN SUMMARY_TEXT
import { launch } from './chromium.mjs';

const [admin, token, summary] = process.argv.slice(2);
const browser = await launch();
try {
  // A phone-sized screen.
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await page.goto(`${admin}/queue`);
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForURL('**/queue'), page.click('button')]);
  console.log('READY');
  // The queue updates by itself: wait for the held request without reloading.
  const item = page.locator('.proposal', { hasText: summary });
  await item.waitFor({ timeout: 20000 });
  console.log('SEEN');
  await Promise.all([page.waitForURL('**/proposals/*'), item.locator('a').click()]);
  const payload = await page.locator('pre').innerText();
  console.log('PAYLOAD ' + JSON.stringify(payload));
  const shots = process.env.SCREENSHOT_DIR;
  if (shots) await page.screenshot({ path: `${shots}/detail.png`, fullPage: true });
  await page.fill('form[action$="/approve"] textarea[name=comment]', 'approved in the browser');
  await Promise.all([page.waitForLoadState('load'), page.click('form[action$="/approve"] button')]);
  await page.waitForFunction(() => document.getElementById('state')?.textContent !== 'pending', null, { timeout: 10000 });
  console.log('STATE ' + await page.locator('#state').innerText());
  if (shots) await page.screenshot({ path: `${shots}/approved.png`, fullPage: true });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  console.log('WIDTH ' + width);
} finally {
  await browser.close();
}
