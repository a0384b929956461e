// The admin page's port-mapping panel in a real browser (tests/test_portmap.py): the result per
// port as the relay last saw it, then "Retry" and the new result. Runs inside the relay's
// network namespace; prints one JSON line.
//
//   node portmap.mjs '{"https":"https://192.168.77.2","password":"…","shots":"/dir"}'
import { chromium } from "playwright-core";
import { run } from "./run.mjs";
import path from "node:path";

const args = JSON.parse(process.argv[2]);
const { result, step, shot } = run(args);

// The panel alone (the admin page is long): scrolled to the top of the window.
async function panelShot(pg, file) {
  await pg.evaluate(() => document.querySelector("#portmap-note").previousElementSibling.scrollIntoView({ block: "start" }));
  await pg.screenshot({ path: file });
}

const rows = (pg) => pg.$$eval("#portmap tbody tr", (trs) =>
  Object.fromEntries(trs.map((tr) => [tr.dataset.port, tr.dataset.result])));

const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 390, height: 844 } });
const page = await context.newPage();
try {
  await page.goto(args.https + "/admin");
  await page.fill("#password", args.password);
  await page.click("#login");
  await page.locator("#portmap tbody tr").first().waitFor({ state: "visible", timeout: 20000 });
  step("admin");
  result.before = await rows(page);
  result.before_text = await page.textContent("#portmap");
  result.before_note = await page.textContent("#portmap-note");
  await page.locator("#portmap").scrollIntoViewIfNeeded();
  await panelShot(page, path.join(args.shots, "panel-no-router.png"));
  await page.click("#portmap-retry");
  await page.waitForFunction(() => document.querySelector("#portmap tbody tr[data-result=mapped]"), null, { timeout: 30000 });
  step("retry");
  result.after = await rows(page);
  result.after_facts = await page.textContent("#portmap-facts");
  result.after_note = await page.textContent("#portmap-note");
  await panelShot(page, path.join(args.shots, "panel-mapped.png"));
  result.overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack || e);
  await shot(page, "portmap-error").catch(() => {});
} finally {
  await browser.close();
  console.log(JSON.stringify(result));
}
