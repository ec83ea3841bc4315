// The status page in each state a technician meets, at a phone's and a
// desktop's width (see inspect.mjs for what is checked):
//   idle      a healthy kiosk with sessions in its history;
//   degraded  the Daily API answering with errors (the test injects them
//             when told "degrade" on stdin, after "idle done" on stderr);
//   selftest  the self-test run from the page's button, failing (the
//             kiosk under test has no devices).
// usage: node page_states.mjs BASE_URL TOKEN OUT_DIR
// Prints one JSON object with what it saw; exits non-zero on failure.
import { createInterface } from "node:readline";
import { launch } from "./launch.mjs";
import { inspect, watch } from "./inspect.mjs";

const [base, token, out] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const input = lines[Symbol.asyncIterator]();
const browser = await launch();
const seen = { states: {} };
try {
  const page = await browser.newPage({ viewport: { width: 360, height: 900 } });
  const errors = await watch(page);
  await page.goto(base + "/login");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("#banner.healthy", { timeout: 30000 });
  seen.states.idle = await inspect(page, "idle", out);
  seen.idle_banner = (await page.textContent("#banner")).replace(/\s+/g, " ").trim();
  seen.pictures = await page.$$eval("#pictures figure", (f) => f.map((e) => e.querySelector("figcaption").textContent));

  console.error("idle done");
  await input.next();
  await page.waitForSelector("#banner.degraded", { timeout: 30000 });
  seen.states.degraded = await inspect(page, "degraded", out);
  seen.degraded_banner = (await page.textContent("#banner")).replace(/\s+/g, " ").trim();

  await page.waitForSelector("#banner.healthy", { timeout: 30000 });
  await page.click("#self-test-run");
  await page.waitForSelector("#self-test-summary", { timeout: 20000 });
  seen.states.selftest = await inspect(page, "selftest-failed", out);
  seen.self_test = (await page.textContent("#self-test-summary")).trim();
  seen.console_errors = errors;
} finally {
  lines.close();
  await browser.close();
}
console.log(JSON.stringify(seen));
