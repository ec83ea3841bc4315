// What the browser tests check on every state of the status page, at a
// phone's width (360 px) and a desktop's: a full-page screenshot, no
// horizontal scrolling, and the contrast of every line of text against
// the background it sits on (WCAG AA asks 4.5:1 for body text).
export const WIDTHS = [360, 1280];

// Records CSP violations from the first script on: the console does not
// always say which directive refused what.
export async function watch(page) {
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  return errors;
}

// Runs in the page: the lowest contrast ratio of visible text, and the
// lines below `min`.
function contrast(min) {
  const parse = (s) => {
    const m = s.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const lum = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0.5) return c;
    }
    return parse(getComputedStyle(document.documentElement).backgroundColor) || [255, 255, 255, 1];
  };
  let lowest = Infinity; const low = []; let checked = 0;
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg, script, style") || el.disabled || !el.getClientRects().length) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
    if (!own) continue;
    const fg = parse(getComputedStyle(el).color);
    if (!fg) continue;
    const [a, b] = [lum(fg), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    checked++;
    lowest = Math.min(lowest, ratio);
    if (ratio < min) low.push(`${el.tagName.toLowerCase()}.${el.className} "${el.textContent.trim().slice(0, 40)}" ${ratio.toFixed(2)}`);
  }
  return { lowest: Math.round(lowest * 100) / 100, low, checked };
}

// Screenshots `name` at each width and measures it.
export async function inspect(page, name, out) {
  const seen = {};
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: 900 });
    await page.waitForTimeout(150);
    await page.screenshot({ path: `${out}/${name}-${width}.png`, fullPage: true });
    seen[width] = await page.evaluate(() => ({
      horizontal_scroll: document.documentElement.scrollWidth > document.documentElement.clientWidth,
      scroll_width: document.documentElement.scrollWidth,
      csp: window.__csp || [],
    }));
    seen[width].contrast = await page.evaluate(contrast, 4.5);
  }
  return seen;
}
