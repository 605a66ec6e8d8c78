// Drives lancer's console in headless Chromium against a running `lancer serve`.
// Usage: node console.mjs <scenario> <server-url> <screenshot-dir> [args...]
//   watch  URL DIR TASK_ID        the running task's progress rises and its log grows on its
//                                 page; Cancel on the page cancels it; every view is drawn
//   tenant URL DIR KEY OWN FOREIGN with KEY, the list shows task OWN and not FOREIGN, and
//                                 FOREIGN's page says it was not found
//   markup URL DIR TASK_ID MARKUP  the task's params, log and result hold MARKUP, which
//                                 the pages show as text and never run
//   chart  URL DIR TASK_ID EPOCHS  the running task's loss chart gains a point per epoch
//   pipeline URL DIR PIPELINE_ID   the pipeline's steps in columns by depth, all completing
//   attempts URL DIR TASK_ID       a retried task's page shows the latest attempt's log, and
//                                 the first attempt's when its button is pressed
//   model  URL DIR MODEL           the model's saved versions in a table and a chart
//   upload URL DIR FOLDER          a file dropped on the upload page lands in raw/FOLDER/
//                                 and links the ingestion task it started
//   cells  URL DIR DATASET         the rows table's cells as text: long lists and binary
//                                 values summarised, short ones shown
//   mnist  URL DIR DATASET MODEL SERVE_TASK
//                                 the dataset's rows show digits as pictures, the model
//                                 its saved versions, the serving task a link to its
//                                 endpoint through the API
// Prints one JSON line of what it saw, for the Rust test to check against the API.
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const [scenario, url, shots, ...args] = process.argv.slice(2);
assert.ok(scenario && url && shots, "usage: node console.mjs <scenario> <url> <screenshot-dir> ...");

const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "lancer-chromium-")), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage();
const problems = [];
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
// Chromium logs every 4xx answer as an error; those the scenarios provoke are asserted on.
page.on("console", (message) => message.type() === "error" && !message.text().startsWith("Failed to load resource")
  && problems.push(`console: ${message.text()}`));
// The console must work offline: any request off this server fails the test.
await page.route("**/*", (route) =>
  route.request().url().startsWith(url) ? route.continue() : (problems.push(`off-site: ${route.request().url()}`), route.abort()));
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

try {
  if (scenario === "watch") await watch(...args);
  else if (scenario === "tenant") await tenant(...args);
  else if (scenario === "markup") await markup(...args);
  else if (scenario === "chart") await lossChart(...args);
  else if (scenario === "upload") await upload(...args);
  else if (scenario === "model") await model(...args);
  else if (scenario === "pipeline") await pipeline(...args);
  else if (scenario === "attempts") await attempts(...args);
  else if (scenario === "cells") await cells(...args);
  else if (scenario === "mnist") await mnist(...args);
  else throw new Error(`unknown scenario ${scenario}`);
  assert.deepEqual(problems, [], "the page logged no errors and loaded nothing off-site");
} finally {
  await browser.close();
}

async function watch(taskId) {
  await page.goto(`${url}/`);
  const row = page.locator(`tr[data-task="${taskId}"]`);
  await row.waitFor();
  await row.locator(".badge.running").waitFor();
  await shot("tasks");

  await row.locator("a").click();
  await page.waitForURL(`**/#/tasks/${taskId}`);
  const percent = async () => Number((await page.locator("#progress-text").textContent()).replace("%", ""));
  await page.locator("#progress-text").waitFor();
  const first = await percent();
  const logLines = async () => (await page.locator("#log").textContent()).split("\n").filter((l) => l.startsWith("step "));
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("step 3"));
  const linesBefore = (await logLines()).length;
  // Progress rises and log lines keep arriving without a reload.
  await page.waitForFunction((was) => Number(document.getElementById("progress-text").textContent.replace("%", "")) > was, first);
  await page.waitForFunction((was) => document.getElementById("log").textContent.split("\n")
    .filter((l) => l.startsWith("step ")).length > was + 2, linesBefore);
  const second = await percent();
  const linesAfter = (await logLines()).length;
  await shot("task-running");

  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("#cancel").click();
  await page.locator("h1 .badge.cancelled").waitFor({ timeout: 30000 });
  await page.locator("#run-again").waitFor();
  await shot("task-cancelled");
  // Run again submits the same spec as a new task and opens its page.
  await page.locator("#run-again").click();
  await page.waitForURL((address) => address.hash.startsWith("#/tasks/") && !address.hash.endsWith(taskId));
  const rerun = new URL(page.url()).hash.slice("#/tasks/".length);
  await page.locator("h1 .badge.pending, h1 .badge.running").waitFor();
  await shot("task-run-again");

  await page.goto(`${url}/#/tasks?status=cancelled`);
  await page.locator(`tr[data-task="${taskId}"] .badge.cancelled`).waitFor();
  // The name filter asks the server for the names that start with what was typed.
  await page.locator("#name-filter").fill("slow-st");
  await page.locator("#name-filter").press("Enter");
  await page.waitForURL(/name=slow-st/);
  await page.locator(`tr[data-task="${taskId}"]`).waitFor();
  await page.locator("#name-filter").fill("other");
  await page.locator("#name-filter").press("Enter");
  await page.locator("main p.muted", { hasText: "No task matches." }).waitFor();
  for (const section of ["pipelines", "datasets", "models"]) {
    await page.goto(`${url}/#/${section}`);
    await page.locator("main h1").waitFor();
    await shot(section);
  }
  // /docs draws the API reference from openapi.json, with nothing from a CDN.
  await page.goto(`${url}/docs`);
  await page.locator("details.endpoint summary code", { hasText: "POST /api/v1/tasks" }).first().waitFor();
  await shot("api");
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(`${url}/#/tasks/${taskId}`);
  await page.locator("h1 .badge.cancelled").waitFor();
  await shot("task-phone");
  const phone = { task: await phoneLayout() };
  await page.goto(`${url}/#/tasks`);
  await page.locator(`tr[data-task="${taskId}"]`).waitFor();
  await shot("tasks-phone");
  phone.list = await phoneLayout();
  console.log(JSON.stringify({ first, second, linesBefore, linesAfter, rerun, phone }));
}

/** What a narrow screen shows: whether anything is wider than the screen, whether the
 * facts stack in one column, and how many of the list's wide columns are still drawn. */
function phoneLayout() {
  return page.evaluate(() => {
    const facts = [...document.querySelectorAll("dl.facts dt, dl.facts dd")].map((e) => e.getBoundingClientRect().left);
    return {
      overflows: document.documentElement.scrollWidth > window.innerWidth,
      factColumns: new Set(facts.map(Math.round)).size,
      wideShown: [...document.querySelectorAll("th.wide, td.wide")].filter((e) => e.getClientRects().length > 0).length,
      wideCells: document.querySelectorAll("th.wide, td.wide").length,
    };
  });
}

async function tenant(key, own, foreign) {
  await page.goto(`${url}/`);
  // No key yet: the console asks for one instead of showing anything.
  await page.locator("#key-dialog[open]").waitFor();
  await shot("key-prompt");
  await page.locator("#key-input").fill(key);
  await page.locator("#key-form button").click();
  await page.locator(`tr[data-task="${own}"]`).waitFor();
  const foreignRows = await page.locator(`tr[data-task="${foreign}"]`).count();
  await shot("tenant-tasks");
  await page.goto(`${url}/#/tasks/${foreign}`);
  await page.locator("main .error").waitFor();
  const error = await page.locator("main .error").textContent();
  await shot("tenant-foreign-task");
  const stored = await page.evaluate(() => sessionStorage.getItem("lancer.api-key"));
  // The endpoint routes' key cookies (task and alias endpoints): set by the server, out of
  // the page's scripts' reach.
  const keyCookies = (await page.context().cookies())
    .filter((c) => c.name === "lancer_key")
    .map((cookie) => ({
      path: cookie.path, httpOnly: cookie.httpOnly, sameSite: cookie.sameSite,
      session: cookie.expires === -1, holdsKey: decodeURIComponent(cookie.value) === key,
    }))
    .sort((a, b) => a.path.localeCompare(b.path));
  const scriptsSeeIt = await page.evaluate(() => document.cookie.includes("lancer_key"));
  await page.locator("#sign-out").click();
  await page.locator("#key-dialog[open]").waitFor();
  const afterSignOut = (await page.context().cookies()).some((c) => c.name === "lancer_key");
  console.log(JSON.stringify({ foreignRows, error, keyInSessionStorage: stored === key, keyCookies, scriptsSeeIt, afterSignOut }));
}

async function markup(taskId, text) {
  await page.goto(`${url}/#/tasks/${taskId}`);
  await page.locator("h1 .badge.completed").waitFor();
  await page.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text);
  await shot("markup-task");
  const seen = await page.evaluate((t) => ({
    ran: window.__lancer_pwned === true,
    // The CSP would keep `ran` false even if the page parsed the markup; the DOM would not
    // hide the elements, and text shown as text reads back escaped.
    elements: document.querySelectorAll("img[src='x'], b.injected, main img, main script").length,
    logEscaped: document.getElementById("log").innerHTML.includes("&lt;img src=x"),
    params: document.querySelector("main dl.facts").textContent.includes(JSON.stringify(t).slice(1, -1)),
    result: document.querySelector("main pre:not(.log)").textContent.includes(JSON.stringify(t).slice(1, -1)),
  }), text);
  await page.goto(`${url}/#/tasks`);
  await page.locator(`tr[data-task="${taskId}"]`).waitFor();
  seen.listElements = await page.locator("img[src='x'], b.injected, main img, main script").count();
  seen.listRan = await page.evaluate(() => window.__lancer_pwned === true);
  console.log(JSON.stringify(seen));
}

async function lossChart(taskId, epochs) {
  await page.goto(`${url}/#/tasks/${taskId}`);
  const points = () => page.locator("#chart-loss").getAttribute("data-points").then(Number);
  await page.locator("#chart-loss").waitFor();
  const first = await points();
  // A new epoch's report adds a point without a reload.
  await page.waitForFunction((was) => Number(document.getElementById("chart-loss")?.dataset.points) > was, first,
                             { timeout: 30000 });
  const second = await points();
  await shot("task-loss-chart");
  await page.locator("h1 .badge.completed").waitFor({ timeout: 60000 });
  // The page reads the history once more after completion: it ends with every epoch.
  await page.waitForFunction((all) => Number(document.getElementById("chart-loss").dataset.points) >= all,
                             Number(epochs), { timeout: 15000 });
  const last = await points();
  const circles = await page.locator("#chart-loss circle").count();
  await shot("task-loss-chart-done");
  console.log(JSON.stringify({ first, second, last, circles }));
}

async function cells(dataset) {
  await page.goto(`${url}/#/datasets/${dataset}`);
  await page.locator("#rows td").first().waitFor();
  await shot("dataset-cells");
  const shown = await page.evaluate(() => {
    const heads = [...document.querySelectorAll("#rows th")].map((th) => th.textContent);
    const cells = [...document.querySelectorAll("#rows tbody tr:first-child td")].map((td) => td.textContent);
    return Object.fromEntries(heads.map((head, i) => [head, cells[i]]));
  });
  console.log(JSON.stringify(shown));
}

async function mnist(dataset, model, serveTask) {
  await page.goto(`${url}/#/datasets/${dataset}`);
  await page.locator("#rows canvas.picture").first().waitFor();
  const pictures = await page.locator("#rows canvas.picture").count();
  // Every drawn digit has ink: some pixel of each canvas is lit.
  const inked = await page.evaluate(() => [...document.querySelectorAll("#rows canvas.picture")].filter((c) => {
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    return data.some((v, i) => i % 4 !== 3 && v > 128);
  }).length);
  await shot("dataset-digits");
  await page.locator("#rows-next").click();
  await page.locator("#rows .muted", { hasText: "rows 21–40" }).waitFor();
  await page.goto(`${url}/#/models/${model}`);
  await page.locator("tr.saved-version").first().waitFor();
  const savedVersions = await page.locator("tr.saved-version").count();
  const accuracyShown = await page.locator("#model-versions th", { hasText: "accuracy" }).count();
  await shot("model-versions");
  await page.goto(`${url}/#/tasks/${serveTask}`);
  await page.locator("#endpoint-link").waitFor();
  const endpointHref = await page.locator("#endpoint-link").getAttribute("href");
  await shot("task-serving");
  console.log(JSON.stringify({ pictures, inked, savedVersions, accuracyShown, endpointHref }));
}

async function upload(folder) {
  await page.goto(`${url}/#/upload`);
  await page.locator("#upload-folder").fill(folder);
  await page.locator("#upload-files").setInputFiles({ name: "notes.txt", mimeType: "text/plain",
                                                     buffer: Buffer.from("seven\n") });
  const started = page.locator("tr.upload td.started a");
  await started.waitFor();
  const stored = await page.locator("tr.upload code").textContent();
  const href = await started.getAttribute("href");
  await shot("upload");
  await started.click();
  await page.locator("h1 .badge.completed, h1 .badge.failed").waitFor({ timeout: 60000 });
  await shot("upload-task");
  console.log(JSON.stringify({ stored, href }));
}

async function model(name) {
  await page.goto(`${url}/#/models/${name}`);
  await page.locator("#versions-accuracy").waitFor();
  const savedVersions = await page.locator("tr.saved-version").count();
  const chartPoints = Number(await page.locator("#versions-accuracy").getAttribute("data-points"));
  const header = await page.locator("#model-versions th").allTextContents();
  const cells = await page.locator("tr.saved-version").first().locator("td").allTextContents();
  await shot("model-compare");
  console.log(JSON.stringify({ savedVersions, chartPoints, newest: cells[header.indexOf("accuracy")] }));
}

async function pipeline(id) {
  await page.goto(`${url}/#/pipelines/${id}`);
  await page.locator("h1 .badge.completed").waitFor({ timeout: 60000 });
  await page.waitForFunction(() => document.querySelectorAll("#dag .card .badge.completed").length === 4);
  const columns = await page.evaluate(() => [...document.querySelectorAll("#dag .dag-level")]
    .map((level) => [...level.querySelectorAll(".card")].map((card) => card.dataset.step)));
  const completed = await page.locator("#dag .card .badge.completed").count();
  await shot("pipeline");
  console.log(JSON.stringify({ columns, completed }));
}

async function attempts(taskId) {
  await page.goto(`${url}/#/tasks/${taskId}`);
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("attempt 2 starting"));
  const buttons = await page.locator("#attempts button.attempt").count();
  const latest = await page.locator("#log").textContent();
  await page.locator("#attempts button.attempt", { hasText: "1" }).click();
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("attempt 1 starting"));
  await page.locator('#attempts button.attempt[aria-pressed="true"]', { hasText: "1" }).waitFor();
  const first = await page.locator("#log").textContent();
  await shot("task-attempts");
  console.log(JSON.stringify({ buttons, latest, first }));
}
