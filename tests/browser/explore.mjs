// Drives the `kura serve` page in real headless Chromium.
//
//   node explore.mjs explore URL SCREENSHOT.png   expand the tree, select a cluster,
//                                                  open a conversation, search, and
//                                                  check that nothing from the data ran
//   node explore.mjs load URL SCREENSHOT.png COUNT time the page load of a large run
//
// Prints one JSON line of results on success; exits non-zero with a reason otherwise.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [mode, url, screenshot, expected] = process.argv.slice(2);
const executablePath = process.env.KURA_CHROMIUM || "/usr/bin/chromium";
const args = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function withPage(run) {
  const profile = mkdtempSync(join(tmpdir(), "kura-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath, args, headless: true, viewport: { width: 1400, height: 900 },
  });
  const events = { dialogs: [], errors: [], requests: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("dialog", (d) => { events.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
    page.on("pageerror", (e) => events.errors.push(String(e)));
    page.on("request", (r) => events.requests.push(r.url()));
    return await run(page, events);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

async function loaded(page) {
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 30000 });
  const ready = await page.evaluate(() => document.body.dataset.ready);
  check(ready === "true", `the page did not load: ${await page.textContent("#map-status")}`);
}

/// Every way the hostile fixture could have run code or fetched elsewhere.
async function assertNothingRan(page, events, origin) {
  const injected = await page.evaluate(() => ({
    xss: window.__xss,
    scripts: [...document.scripts].map((s) => s.src),
    images: document.images.length,
    handlers: [...document.querySelectorAll("*")].flatMap((e) =>
      [...e.attributes].filter((a) => a.name.startsWith("on")).map((a) => `${e.tagName}.${a.name}`)),
    links: [...document.querySelectorAll("a[href], iframe, object, embed, svg")].length,
  }));
  check(injected.xss === undefined, `injected code ran: window.__xss = ${injected.xss}`);
  check(events.dialogs.length === 0, `a dialog opened: ${events.dialogs.join(" | ")}`);
  check(injected.scripts.length === 1 && injected.scripts[0].endsWith("/app.js"), `unexpected scripts: ${injected.scripts}`);
  check(injected.images === 0, `${injected.images} images were created from the data`);
  check(injected.handlers.length === 0, `event handler attributes in the page: ${injected.handlers}`);
  check(injected.links === 0, "links or embedded content were created from the data");
  const foreign = events.requests.filter((r) => !r.startsWith(origin) && !r.startsWith("about:"));
  check(foreign.length === 0, `requests left the server: ${foreign}`);
  check(events.errors.length === 0, `page errors: ${events.errors.join(" | ")}`);
}

async function explore(page, events) {
  const started = Date.now();
  await page.goto(url);
  await loaded(page);
  const origin = new URL(url).origin;

  // Expand the first top-level cluster and select its first child (or itself).
  const firstRoot = page.locator("#tree > .tree-node").first();
  await firstRoot.locator(".toggle").first().click();
  const child = firstRoot.locator(".tree-children .tree-name").first();
  const target = (await child.count()) ? child : firstRoot.locator(".tree-name").first();
  const clusterName = await target.textContent();
  await target.click();
  await page.waitForSelector("#cluster-panel h2");
  check((await page.textContent("#cluster-panel h2")) === clusterName, "the cluster panel shows the selected cluster");
  check(await page.locator("#cluster-panel .facet").count() > 0, "the cluster panel shows facet breakdowns");
  check(/cluster=/.test(await page.evaluate(() => location.hash)), "the selected cluster is in the URL");

  // Open every conversation of the cluster in turn; hostile text must read literally.
  const items = page.locator("#cluster-panel .conv-item");
  const count = await items.count();
  check(count > 0, "the cluster lists its conversations");
  let literal = 0;
  for (let i = 0; i < count; i++) {
    await items.nth(i).click();
    await page.waitForFunction((n) => {
      const h = document.querySelector("#conversation-panel h2");
      return h && location.hash.includes(`conv=${n}`);
    }, await items.nth(i).getAttribute("data-index"));
    await page.waitForSelector("#conversation-panel .message .content");
    const text = await page.locator("#conversation-panel").innerText();
    if (text.includes("<script>") || text.includes("onerror=") || text.includes("javascript:")) literal++;
  }

  // Hover the open conversation's point on the map: the tooltip shows its summary.
  const box = await page.locator("#map").boundingBox();
  const open = Number(await page.evaluate(() => new URLSearchParams(location.hash.slice(1)).get("conv")));
  const [px, py] = await page.evaluate((i) => window.kuraMap.pointOnScreen(i), open);
  await page.mouse.move(box.x + px, box.y + py);
  await page.waitForSelector("#tooltip:not([hidden])", { timeout: 5000 }).catch(() => {});
  const tooltip = await page.isVisible("#tooltip") ? await page.textContent("#tooltip") : null;
  await page.mouse.move(box.x + 2, box.y + 2);

  // Search by keyword, then by meaning (the embedder loads on the first one).
  await page.fill("#q", "script");
  await page.selectOption("#mode", "keyword");
  await page.click("#search-form button[type=submit]");
  await page.waitForSelector("#search-results h2");
  const keywordHits = await page.locator("#search-results .hit").count();
  await page.fill("#q", "cooking recipe");
  await page.selectOption("#mode", "semantic");
  await page.click("#search-form button[type=submit]");
  await page.waitForFunction(() => {
    const h = document.querySelector("#search-results h2");
    return (h && h.textContent.includes("cooking recipe")) || document.querySelector("#search-results .error");
  }, null, { timeout: 120000 });
  const error = await page.locator("#search-results .error").count();
  check(error === 0, `semantic search failed: ${await page.textContent("#search-results")}`);
  const semanticHits = await page.locator("#search-results .hit").count();
  check(semanticHits > 0, "semantic search lists results");
  const hash = await page.evaluate(() => location.hash);
  check(hash.includes("q=cooking+recipe") || hash.includes("q=cooking%20recipe"), `the search is in the URL: ${hash}`);

  // The URL alone restores the view.
  const shared = page.url();
  await page.goto("about:blank");
  await page.goto(shared);
  await loaded(page);
  await page.waitForSelector("#search-results .hit");
  await page.waitForSelector("#conversation-panel .message");
  await page.waitForSelector("#cluster-panel h2");

  await page.screenshot({ path: screenshot, fullPage: false });
  await assertNothingRan(page, events, origin);
  check(literal > 0, "the hostile markup is shown as text");
  return { cluster: clusterName, conversations: count, literal, keywordHits, semanticHits, tooltip: tooltip != null && tooltip.length > 10, seconds: (Date.now() - started) / 1000 };
}

async function load(page) {
  await page.goto(url);
  await loaded(page);
  const timing = await page.evaluate(() => ({
    ready: window.kuraLoadedMs,
    points: document.getElementById("run-name").textContent,
    tree: document.querySelectorAll("#tree .tree-node").length,
  }));
  check(timing.points.includes(`${expected} conversations`), `the page shows ${expected} conversations: ${timing.points}`);
  check(timing.tree > 0, "the tree is drawn");
  // A name the model did not write is marked in the tree and explained in the panel.
  const marked = page.locator("#tree .tree-row:has(.borrowed)");
  const borrowed = await marked.count();
  let borrowedNote = false;
  if (borrowed > 0) {
    await marked.first().locator(".tree-name").click();
    await page.waitForSelector("#cluster-panel h2");
    borrowedNote = (await page.locator("#cluster-panel .borrowed-note").count()) === 1;
  }
  await page.screenshot({ path: screenshot });
  // Pan and zoom redraws: the average frame over a few wheel steps.
  const box = await page.locator("#map").boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  const frames = await page.evaluate(async () => {
    const canvas = document.getElementById("map");
    const t0 = performance.now();
    for (let i = 0; i < 10; i++) {
      canvas.dispatchEvent(new WheelEvent("wheel", { deltaY: -100, clientX: 300, clientY: 300, cancelable: true }));
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    }
    return (performance.now() - t0) / 10;
  });
  return { load_ms: Math.round(timing.ready), zoom_frame_ms: Math.round(frames), borrowed, borrowed_note: borrowedNote };
}

const run = { explore, load }[mode];
if (!run) {
  console.error("usage: node explore.mjs explore|load URL SCREENSHOT [COUNT]");
  process.exit(2);
}
withPage(run).then(
  (result) => console.log(JSON.stringify(result)),
  (e) => { console.error(`browser test failed: ${e.message || e}`); process.exit(1); },
);
