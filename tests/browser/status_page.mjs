// Opens the status page in headless Chromium as a technician would: sees
// the anonymous page bounce to the login form, signs in, reads the state
// and the session list, opens a transcript, and takes screenshots.
// usage: node status_page.mjs BASE_URL TOKEN OUT_DIR
// Prints one JSON object with what it saw; exits non-zero on failure.
import { launch } from "./launch.mjs";

const [base, token, out] = process.argv.slice(2);
const browser = await launch();
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 420, height: 1000 } });
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));

  await page.goto(base + "/");
  seen.redirected_to = new URL(page.url()).pathname;
  await page.fill("#token", "wrong");
  await page.click("button[type=submit]");
  seen.wrong_token_message = (await page.textContent(".error"))?.trim();
  // The refused sign-in logged its 401; only errors from here on count.
  errors.length = 0;
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("#state");
  // Wait for one live refresh from /api/status so the script is known to run under the CSP.
  await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1, null, { timeout: 10000 });
  seen.state = (await page.textContent("#state")).trim();
  seen.sessions = await page.$$eval("#sessions tr", (rows) => rows.map((r) => r.innerText));
  await page.screenshot({ path: `${out}/status-page.png`, fullPage: true });
  await page.click("#sessions a");
  await page.waitForSelector("table");
  seen.transcript = await page.$$eval("table tr", (rows) => rows.map((r) => r.innerText.replace(/\s+/g, " ").trim()));
  await page.screenshot({ path: `${out}/session-page.png`, fullPage: true });
  seen.console_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
