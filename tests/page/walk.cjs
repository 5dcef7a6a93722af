// A person's walk through the host service's page, driven by Playwright on Debian's Chromium.
// usage: node walk.cjs BASE_URL  (env: PLAYWRIGHT_CORE = the playwright-core package directory,
// ARTIFACTS = where screenshots go, PROVIDER, CODE, PROMPT). The service seals credentials to
// the user's key (sealing = "user"): the page makes the key, delivers, and carries it to another
// browser with its recovery file.
// Prints one JSON line with what it saw; exits 1 on the first failed step (with a screenshot).
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const path = require("path");

const base = process.argv[2];
const out = process.env.ARTIFACTS;
const provider = process.env.PROVIDER || "claude_code";
const code = process.env.CODE || "fake-auth-code-0001";
const prompt = process.env.PROMPT || "what is the answer?";
const seen = { steps: [] };

// Polls `fn(arg)` in `frame` until it is true. (Playwright's waitForFunction evaluates a string,
// which the page's Content-Security-Policy rightly forbids; evaluate does not.)
async function until(frame, fn, arg, timeout) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await frame.evaluate(fn, arg)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${fn}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
  seen.consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") seen.consoleErrors.push(m.text()); });
  let n = 0;
  const shot = async (name) => { await page.screenshot({ path: path.join(out, `${String(++n).padStart(2, "0")}-${name}.png`) }); seen.steps.push(name); };
  try {
    // A link to the viewer with another origin's signalling URL is refused, and nothing is sent.
    const elsewhere = [];
    page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("data:") && !r.url().startsWith("about:")) elsewhere.push(r.url()); });
    await page.goto(`${base}/viewer?signal=http://attacker.invalid/offer`);
    await until(page, () => window.viewer && String(window.viewer.error || "").includes("origin"), null, 10000);
    seen.foreignSignalRefused = elsewhere.length === 0;

    await page.goto(base);
    await shot("sign-in");

    await page.fill("#email", "person@example.test");
    await page.fill("#password", "a long enough password");
    await page.click("#signup");
    const row = page.locator(`tr[data-provider="${provider}"]`);
    await row.waitFor({ timeout: 20000 });
    seen.statusBefore = await row.locator("td").nth(1).innerText();
    await shot("providers");

    await row.locator('button[data-action="link"]').click();
    await page.locator("#timeline li", { hasText: "awaiting_user_auth" }).waitFor({ timeout: 120000 });
    seen.url = await page.locator("#timeline li", { hasText: "login URL" }).first().innerText();
    // The desktop, live in the page: frames decode and what they show changes.
    const viewer = await (async () => {
      for (let i = 0; i < 200; i++) {
        const f = page.frames().find((fr) => fr.url().includes("/viewer"));
        if (f) return f;
        await page.waitForTimeout(100);
      }
      throw new Error("no desktop viewer in the page");
    })();
    await until(viewer, () => window.viewer && window.viewer.frames > 3, null, 60000);
    const first = await viewer.evaluate(() => window.viewer.sample(20, 20));
    await until(viewer, (f) => { const s = window.viewer.sample(20, 20); return !!(s && f && s.some((v, i) => Math.abs(v - f[i]) > 40)); }, first, 30000);
    seen.frames = await viewer.evaluate(() => window.viewer.frames);
    seen.desktopChanged = true;
    await shot("desktop");

    await page.fill("#code", code);
    await page.click("#sendcode");
    await page.locator("#linkstate", { hasText: "completed" }).waitFor({ timeout: 120000 });
    await row.locator("td.status-linked").waitFor({ timeout: 20000 });
    seen.statusLinked = await row.locator("td").nth(1).innerText();
    await shot("linked");

    const box = page.locator(`.prompt[data-provider="${provider}"]`);
    await box.locator("textarea").fill(prompt);
    await box.locator("button", { hasText: "Run" }).click();
    await box.locator("span", { hasText: "exited with 0" }).waitFor({ timeout: 60000 });
    seen.answer = await box.locator("pre").innerText();
    await shot("prompt");

    // Zero-knowledge mode: this browser made the user's key; its recovery file carries it.
    seen.keyHeld = await page.locator("#keystatus").getAttribute("data-held");
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#keydownload")]);
    const recovery = path.join(out, "recovery.json");
    await download.saveAs(recovery);
    seen.recoveryFile = download.suggestedFilename();
    seen.error = await page.locator("#error").innerText();

    // Another browser (no key in it): the page says what to do and nothing stored is lost.
    const other = await browser.newContext({ viewport: { width: 1366, height: 800 } });
    const page2 = await other.newPage();
    page2.on("console", (m) => { if (m.type() === "error") seen.consoleErrors.push(m.text()); });
    await page2.goto(base);
    await page2.fill("#email", "person@example.test");
    await page2.fill("#password", "a long enough password");
    await page2.click("#signin");
    await page2.locator('#keystatus[data-held="no"]').waitFor({ timeout: 20000 });
    seen.otherBrowserSays = await page2.locator("#keystatus").innerText();
    const row2 = page2.locator(`tr[data-provider="${provider}"]`);
    seen.statusInOtherBrowser = await row2.locator("td").nth(1).innerText();
    await page2.screenshot({ path: path.join(out, `${String(++n).padStart(2, "0")}-other-browser.png`) }); seen.steps.push("other-browser");
    await page2.setInputFiles("#keyimport", recovery);
    await page2.locator('#keystatus[data-held="yes"]').waitFor({ timeout: 20000 });
    await page2.screenshot({ path: path.join(out, `${String(++n).padStart(2, "0")}-key-imported.png`) }); seen.steps.push("key-imported");

    await row2.locator('button[data-action="revoke"]').click();
    await page2.locator(`tr[data-provider="${provider}"] td:nth-child(2)`, { hasText: "not linked" }).waitFor({ timeout: 60000 });
    seen.statusAfterRevoke = await page2.locator(`tr[data-provider="${provider}"] td`).nth(1).innerText();
    await page2.screenshot({ path: path.join(out, `${String(++n).padStart(2, "0")}-revoked.png`) }); seen.steps.push("revoked");
    seen.error2 = await page2.locator("#error").innerText();
    console.log(JSON.stringify(seen));
    await browser.close();
  } catch (e) {
    seen.failure = String(e && e.message || e);
    try { await page.screenshot({ path: path.join(out, "failure.png") }); } catch (_) {}
    console.log(JSON.stringify(seen));
    await browser.close();
    process.exit(1);
  }
})();
