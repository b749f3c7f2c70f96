// Signs in to toolgate's approvers' page and opens one proposal; prints one JSON line with
// what an approver sees of the model's request: the "Model" row, each "Changed" flag (its
// text, and whether it is shown and set apart in colour), and the exact payload.
// Driven by tests/it/model_reason.rs.
//   node proposal.mjs ADMIN_URL TOKEN PROPOSAL_ID
import { launch } from './chromium.mjs';

const [admin, token, proposal] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await page.goto(`${admin}/queue`);
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForURL('**/queue'), page.click('button')]);
  await page.goto(`${admin}/proposals/${proposal}`);
  const model = await page.locator('#model').innerText({ timeout: 10000 });
  const plain = await page.locator('#model').evaluate((e) => getComputedStyle(e).color);
  const changed = [];
  for (const flag of await page.locator('.flag.changed').all()) {
    const box = await flag.boundingBox();
    const colour = await flag.evaluate((e) => getComputedStyle(e).color);
    changed.push({ text: await flag.innerText(), shown: !!box && box.width > 0 && box.height > 0,
                   set_apart: colour !== plain });
  }
  const payload = await page.locator('pre').last().innerText();
  console.log(JSON.stringify({ model, changed, payload }));
} finally {
  await browser.close();
}
