// Draws a 7 on the MNIST page in headless Chromium and checks that the page shows what the
// server's /predict answered. Prints the answer and the 784 values the page sent, for the
// caller to check the conversion and ask /predict itself.
// Usage: node draw-digit.mjs <page-url> <screenshot.png>
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const [url, screenshot] = process.argv.slice(2);
assert.ok(url, "usage: node draw-digit.mjs <page-url> [screenshot.png]");

const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "lancer-chromium-")), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  const pad = page.locator("#pad");
  const box = await pad.boundingBox();
  const at = (x, y) => [box.x + x * box.width / 280, box.y + y * box.height / 280];

  // A "7": the top bar, then the diagonal down to the bottom left.
  const strokes = [[[70, 60], [210, 60]], [[210, 60], [120, 240]]];
  // Every stroke's end asks /predict; under load the answers can come seconds apart.
  let asked = 0;
  const answers = [];
  page.on("request", (r) => { if (r.url().endsWith("/predict")) asked += 1; });
  page.on("requestfinished", async (r) => { if (r.url().endsWith("/predict")) answers.push(await r.response()); });
  page.on("requestfailed", (r) => { if (r.url().endsWith("/predict")) answers.push(null); });
  for (const stroke of strokes) {
    await page.mouse.move(...at(...stroke[0]));
    await page.mouse.down();
    for (let step = 1; step <= 12; step++) {
      const t = step / 12;
      await page.mouse.move(...at(stroke[0][0] + (stroke[1][0] - stroke[0][0]) * t,
                                 stroke[0][1] + (stroke[1][1] - stroke[0][1]) * t));
    }
    await page.mouse.up();
  }
  // The last answer to arrive is the one the page settles on: wait until every question
  // asked has its answer, and nothing new was asked for half a second.
  for (let quiet = 0, deadline = Date.now() + 30000; quiet < 5; ) {
    assert.ok(Date.now() < deadline, `/predict: ${asked} asked, ${answers.length} answered`);
    await page.waitForTimeout(100);
    quiet = asked > 0 && answers.length === asked ? quiet + 1 : 0;
  }
  const response = answers.at(-1);
  assert.ok(response, "the last /predict failed");
  assert.equal(response.status(), 200);
  const body = await response.json();
  await page.waitForFunction((expected) => document.getElementById("prediction").textContent === expected,
                             String(body.prediction));
  const bars = await page.locator("#bars .bar").count();
  assert.equal(bars, 10, "ten probability bars");
  const best = await page.locator("#bars .bar.best").getAttribute("data-digit");
  assert.equal(best, String(body.prediction), "the highlighted bar is the prediction");
  if (screenshot) await page.screenshot({ path: screenshot });
  const sent = response.request().postDataJSON();
  console.log(JSON.stringify({ prediction: body.prediction, confidence: body.confidence, image: sent.image }));
} finally {
  await browser.close();
}
