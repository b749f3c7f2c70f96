// A security reviewer in toolgate's admin pages, on a phone-sized screen: signs in, filters
// /traffic by agent and by validation_error, opens the refused call, finds the approved refund,
// tries an approver's page, reads a request carrying markup, and pages through the agent's
// traffic. Prints one JSON line of what it saw. Driven by tests/traffic.rs.
//   node review.mjs ADMIN_URL TOKEN
import { launch } from './chromium.mjs';

const [admin, token] = process.argv.slice(2);
const browser = await launch();
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  // Any dialog would mean markup ran.
  page.on('dialog', async (d) => { seen.dialog = d.message(); await d.dismiss(); });
  await page.goto(`${admin}/login`);
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForURL('**/traffic'), page.click('button')]);

  // Knowing only the agent's name: its refused calls.
  await page.fill('input[name=agent]', 'support-bot-staging');
  await page.fill('input[name=code]', 'validation_error');
  await Promise.all([page.waitForURL('**/traffic?**'), page.click('form.filters button')]);
  seen.refused_rows = await page.locator('tr.request').count();
  seen.phone_width = await page.evaluate(() => document.documentElement.scrollWidth);
  await Promise.all([page.waitForURL('**/traffic/req*'), page.locator('tr.request a').first().click()]);
  seen.why = await page.locator('#why').innerText();
  const html = await page.content();
  seen.secret_shown = html.includes('sk_live_agent_should_not_show') || html.includes('sk_test_toolgate_demo_placeholder');

  // The approved refund, and who approved it.
  await page.goto(`${admin}/traffic?agent=support-bot-staging&code=held`);
  await Promise.all([page.waitForURL('**/traffic/req*'), page.locator('tr.request a').first().click()]);
  seen.approvals = (await page.locator('li.approval').allInnerTexts()).join(' | ');

  // An approver's page is not a reviewer's.
  const queue = await page.goto(`${admin}/queue`);
  seen.queue_status = queue.status();

  // Markup an agent sent is text.
  await page.goto(`${admin}/traffic?tool=github.issues.create`);
  await Promise.all([page.waitForURL('**/traffic/req*'), page.locator('tr.request a').first().click()]);
  seen.markup_elements = await page.locator('#pwned').count();
  seen.markup_text = await page.locator('#recorded').innerText();

  // Every request of the agent once, page after page.
  await page.goto(`${admin}/traffic?agent=support-bot-staging`);
  const ids = new Set();
  let rows = 0;
  for (let i = 0; i < 20; i++) {
    for (const href of await page.locator('tr.request a').evaluateAll((as) => as.map((a) => a.getAttribute('href')))) {
      ids.add(href);
      rows++;
    }
    const older = page.locator('#older');
    if (await older.count() === 0) break;
    await Promise.all([page.waitForLoadState('load'), older.click()]);
  }
  seen.pages_rows = ids.size;
  seen.pages_duplicates = rows - ids.size;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
