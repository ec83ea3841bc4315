// Follows a session as it happens (the demo's): signs in, waits until the
// page shows a conversation with transcript lines and an open call, and
// takes a screenshot.
// usage: node live_session.mjs OUT_DIR
// The browser starts first and says "browser ready" on stderr; then it reads
// one line "BASE_URL TOKEN" from stdin, so a slow browser start never eats
// into the session it is meant to watch.
// Prints one JSON object with what it saw; exits non-zero on failure.
import { createInterface } from "node:readline";
import { launch } from "./launch.mjs";
import { inspect, watch } from "./inspect.mjs";

const [out] = process.argv.slice(2);
const browser = await launch();
console.error("browser ready");
const input = createInterface({ input: process.stdin });
const [base, token] = (await input[Symbol.asyncIterator]().next()).value.trim().split(" ");
input.close();
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 420, height: 1400 } });
  const errors = await watch(page);
  await page.goto(base + "/login");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("#state");
  // The page refreshes itself every 2 s; wait for a call in progress with
  // at least one line of transcript and its round-trip time measured.
  await page.waitForFunction(() => {
    const text = (id) => document.getElementById(id).textContent.trim();
    return text("state") !== "Idle" && text("link-live") === "open" && text("link-rtt").endsWith("ms")
      && document.querySelectorAll("#session-lines li").length > 0;
  }, null, { timeout: 45000, polling: 200 });
  const text = async (sel) => (await page.textContent(sel)).trim();
  seen.state = await text("#state");
  seen.session = await text("#session");
  seen.lines = await page.$$eval("#session-lines li", (items) => items.map((i) => i.textContent));
  seen.link_rtt = await text("#link-rtt");
  seen.link_loss = await text("#link-loss");
  seen.link_playout = await text("#link-playout");
  seen.cloud = await page.$$eval("#cloud li", (items) => items.map((i) => i.textContent));
  seen.level = await page.$eval("#level", (m) => m.value);
  seen.components = await page.$$eval("#components li", (items) => items.map((i) => i.textContent));
  seen.events = await page.$$eval("#events li", (items) => items.map((i) => i.textContent));
  await page.screenshot({ path: `${out}/live-session.png`, fullPage: true });
  // The self-test is refused while a visitor is in a call, in words (the
  // browser logs the 409 as an error: errors are counted before it).
  seen.console_errors = errors.slice();
  await page.click("#self-test-run");
  await page.waitForFunction(() => document.getElementById("self-test-note").textContent.includes("session"), null, { timeout: 10000, polling: 100 });
  seen.self_test_note = await text("#self-test-note");
  seen.states = { live: await inspect(page, "live-session", out) };
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
