// The port-mapping and dynamic DNS panels in a real browser (tests/test_portmap.py): first the
// wizard's DNS step (setup code, domain mode) with the result per port as the relay last saw it,
// then "Retry", the new result and the dynamic DNS update the router's address brings; then the
// admin page on HTTPS showing both. Runs inside the relay's network namespace; prints one JSON
// line.
//
//   node portmap.mjs '{"http":"http://192.168.77.2","https":"https://192.168.77.2","code":"…",
//     "domain":"relay.test","ext":"81.2.69.2","password":"…","shots":"/dir"}'
import { chromium } from "playwright-core";
import { run } from "./run.mjs";
import path from "node:path";

const args = JSON.parse(process.argv[2]);
const { result, step, shot } = run(args);

// The panel alone (the pages are long): scrolled to the top of the window.
async function panelShot(pg, file, note = "#portmap-note") {
  await pg.evaluate((n) => document.querySelector(n).previousElementSibling.scrollIntoView({ block: "start" }), note);
  await pg.screenshot({ path: file });
}

const rows = (pg) => pg.$$eval("#portmap tbody tr", (trs) =>
  Object.fromEntries(trs.map((tr) => [tr.dataset.port, tr.dataset.result])));
const ddns = async (pg) => ({
  note: await pg.textContent("#ddns-note"),
  rows: await pg.$$eval("#ddns tbody tr", (trs) =>
    Object.fromEntries(trs.map((tr) => [tr.dataset.key, tr.cells[1].textContent]))),
});
// Waits until the dynamic DNS panel says the router's address was published.
const published = (pg) => pg.waitForFunction((ext) => {
  const r = document.querySelector("#ddns tbody tr[data-key=published]");
  return r && r.cells[1].textContent.includes(ext);
}, args.ext, { timeout: 30000 });

const browser = await chromium.launch({
  executablePath: args.chromium || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 390, height: 844 } });
let page = await context.newPage();
try {
  // The wizard, up to its DNS step.
  await page.goto(args.http + "/");
  await page.fill("#setup-code", args.code);
  await page.click("#login");
  await page.check("#mode-domain");
  await page.fill("#domain", args.domain);
  await page.click("#save-mode");
  await page.locator("#portmap tbody tr").first().waitFor({ state: "visible", timeout: 20000 });
  await page.locator("#ddns tbody tr").first().waitFor({ state: "visible", timeout: 20000 });
  step("wizard dns");
  result.before = await rows(page);
  result.before_text = await page.textContent("#portmap");
  result.before_ddns = await ddns(page);
  await panelShot(page, path.join(args.shots, "wizard-no-router.png"));
  await page.click("#portmap-retry");
  await page.waitForFunction(() => document.querySelector("#portmap tbody tr[data-result=mapped]"), null, { timeout: 30000 });
  await published(page);
  step("retry");
  result.after = await rows(page);
  result.after_facts = await page.textContent("#portmap-facts");
  result.after_ddns = await ddns(page);
  await panelShot(page, path.join(args.shots, "wizard-mapped.png"));
  await panelShot(page, path.join(args.shots, "wizard-ddns.png"), "#ddns-note");
  result.overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);

  // Set-up finished (an admin password): the admin page on HTTPS shows the same.
  await page.evaluate((pw) => api("POST", "password", { password: pw }), args.password);
  // A fresh context: the wizard's session cookie would log the admin page in by itself.
  const admin = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 390, height: 844 } });
  page = await admin.newPage();
  await page.goto(args.https + "/admin");
  await page.fill("#password", args.password);
  await page.click("#login");
  await page.locator("#portmap tbody tr[data-result=mapped]").first().waitFor({ state: "visible", timeout: 20000 });
  await published(page);
  step("admin");
  result.admin = await rows(page);
  result.admin_ddns = await ddns(page);
  result.admin_status = await page.textContent("#status");
  await panelShot(page, path.join(args.shots, "admin-mapped.png"));
  await panelShot(page, path.join(args.shots, "admin-ddns.png"), "#ddns-note");
  result.admin_overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack || e);
  await shot(page, "portmap-error").catch(() => {});
} finally {
  await browser.close();
  console.log(JSON.stringify(result));
}
