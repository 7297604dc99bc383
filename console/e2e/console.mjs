// Drives the console in Debian's headless Chromium (never a downloaded one)
// for crates/pgfleet-server/tests/it/console.rs, which starts the server and
// databases, runs this script and checks what it prints (one JSON object)
// against the databases. Waits are for what the page shows; assertions live
// in the Rust test, except where the page must be in a state to go on.
//
// Environment: CONSOLE_URL, MASTER_USER, MASTER_PASSWORD, READER_USER,
// READER_PASSWORD, SCREENSHOTS (a directory), BACKUP_ID (a backup of aws/app
// the test made), CHROMIUM (default /usr/bin/chromium).
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("CONSOLE_URL");
const shots = env("SCREENSHOTS");
// Every wait is bounded: a console that never shows something fails here.
const WAIT = 30_000;

const profile = mkdtempSync(join(tmpdir(), "pgfleet-console-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  acceptDownloads: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const out = {};
const problems = [];
let page;

try {
  page = browser.pages()[0] ?? (await browser.newPage());
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.setDefaultTimeout(WAIT);

  const logIn = async (p, username, password) => {
    await p.goto(url);
    await p.getByLabel("Username", { exact: true }).fill(username);
    await p.getByLabel("Password", { exact: true }).fill(password);
    await p.getByRole("button", { name: "Log in" }).click();
    await p.getByTestId("who").waitFor();
  };
  const setSql = async (p, text) => {
    await p.locator(".cm-content").click();
    await p.keyboard.press("Control+A");
    await p.keyboard.press("Delete");
    await p.keyboard.insertText(text);
    // Closes the completion popup typing may have opened.
    await p.keyboard.press("Escape");
  };
  const status = (p) => p.getByTestId("status").innerText();
  const waitStatus = (p, prefix) =>
    p.waitForFunction(
      (prefix) => document.querySelector("[data-testid=status]")?.textContent?.startsWith(prefix),
      prefix,
    );
  /** Every target panel: its key, state and the rows of its last grid. */
  const panels = (p) =>
    p.$$eval("section[data-target]", (sections) =>
      sections.map((s) => ({
        target: s.getAttribute("data-target"),
        state: s.querySelector("[data-testid=state]")?.textContent,
        tags: [...s.querySelectorAll(".tag")].map((t) => t.textContent),
        error: s.querySelector(".error")?.textContent ?? "",
        rows: [...s.querySelectorAll("tbody tr")].map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)),
        differing: s.querySelectorAll("tbody tr.differs").length,
      })),
    );
  const ended = (p) => p.getByTestId("status").getAttribute("data-ended").then(Number);
  /** Waits for the run after `before` ended runs to end, as `prefix` says. */
  const waitEnd = (p, before, prefix) =>
    p.waitForFunction(
      ([before, prefix]) => {
        const status = document.querySelector("[data-testid=status]");
        return Number(status?.getAttribute("data-ended")) > before && status?.textContent?.startsWith(prefix);
      },
      [before, prefix],
    );
  const run = async (p) => {
    const before = await ended(p);
    await p.getByRole("button", { name: "Run", exact: true }).click();
    await waitEnd(p, before, "Finished");
    return panels(p);
  };

  // Login page, then a MASTER's session.
  await page.goto(url);
  await page.getByLabel("Username", { exact: true }).waitFor();
  await page.screenshot({ path: join(shots, "login.png") });
  await logIn(page, env("MASTER_USER"), env("MASTER_PASSWORD"));
  out.who = await page.getByTestId("who").innerText();
  out.masterReadOnlySwitch = await page.locator("input[name=read-only]").count();

  // A fan-out read: one panel per cloud, the copies' differences marked.
  await setSql(page, "SELECT id, name FROM items ORDER BY id");
  out.fanOut = await run(page);
  await page.screenshot({ path: join(shots, "query.png"), fullPage: true });

  // The same as one grid with a target column, differing rows marked.
  await page.getByLabel("One grid").check();
  out.merged = await page.getByTestId("merged").evaluate((grid) => ({
    rows: [...grid.querySelectorAll("tbody tr")].map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)),
    differing: grid.querySelectorAll("tbody tr.differs").length,
  }));
  await page.screenshot({ path: join(shots, "query-merged.png") });
  await page.getByLabel("One grid").uncheck();

  // The merged grid as CSV, through the browser's download.
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Export CSV" }).click(),
  ]);
  out.csvName = download.suggestedFilename();
  out.csv = readFileSync(await download.path(), "utf8");

  // From the keyboard: Ctrl+Enter in the editor runs the text.
  await setSql(page, "SELECT 41 + 1 AS answer");
  const beforeKeyboard = await ended(page);
  await page.keyboard.press("Control+Enter");
  await waitEnd(page, beforeKeyboard, "Finished");
  out.keyboard = (await panels(page)).map((p) => `${p.target}=${p.rows.map((r) => r.join(",")).join(";")}`);

  // One cloud, then a list of one: one panel each.
  await setSql(page, "SELECT current_database() LIKE '%gcp%' AS on_gcp");
  await page.getByLabel("One cloud").check();
  await page.getByLabel("Cloud", { exact: true }).selectOption("gcp");
  out.oneCloud = (await run(page)).map((p) => `${p.target}=${p.rows.map((r) => r.join(",")).join(";")}`);
  await page.getByLabel("A list").check();
  await page.getByLabel("aws", { exact: true }).check();
  out.listed = (await run(page)).map((p) => `${p.target}=${p.rows.map((r) => r.join(",")).join(";")}`);
  await page.getByLabel("All clouds").check();

  // The read-only switch: a write refused by the server.
  await page.getByLabel("Read-only").check();
  await setSql(page, "UPDATE items SET name = 'ro' WHERE id = 1");
  await page.getByRole("button", { name: "Run", exact: true }).click();
  await page.getByTestId("error").waitFor();
  out.readOnlyError = await page.getByTestId("error").innerText();
  await page.getByLabel("Read-only").uncheck();

  // Parameters: $1 from the JSON array.
  await setSql(page, "SELECT name FROM items WHERE id = $1");
  await page.getByLabel("Parameters").fill("[2]");
  out.withParams = (await run(page)).map((p) => `${p.target}=${p.rows.map((r) => r.join(",")).join(";")}`);
  await page.getByLabel("Parameters").fill("");

  // Validate: the parse error underlined where it is.
  await setSql(page, "SELECT 1;\nSELEC 2");
  await page.getByRole("button", { name: "Validate" }).click();
  await page.locator(".cm-lintRange-error").waitFor();
  out.underlined = await page.locator(".cm-lintRange-error").innerText();
  out.parseStatus = await status(page);
  await page.screenshot({ path: join(shots, "parse-error.png") });

  // A dangerous statement: asked first, each finding listed, then run.
  await setSql(page, "UPDATE items SET name = upper(name)");
  await page.getByRole("button", { name: "Run", exact: true }).click();
  const dialog = page.getByTestId("danger");
  await dialog.waitFor();
  out.dangerDialog = await dialog.innerText();
  await page.screenshot({ path: join(shots, "dangerous.png") });
  const beforeDangerous = await ended(page);
  await dialog.getByRole("button", { name: "Run anyway" }).click();
  await waitEnd(page, beforeDangerous, "Finished");
  out.dangerous = await panels(page);
  out.executionText = await page.locator(".execution").innerText();

  // The write in history, with its per-target outcomes.
  await page.getByRole("link", { name: "History" }).click();
  await page.getByLabel("Text contains").fill("upper(name)");
  await page.getByRole("button", { name: "Search" }).click();
  await page.getByRole("button", { name: /upper\(name\)/ }).first().click();
  const record = page.getByTestId("record");
  await record.waitFor();
  out.historyRecord = await record.innerText();
  await page.getByRole("button", { name: "Verify chain" }).click();
  out.chain = await page.getByTestId("chain").innerText();
  const [exported] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Export", exact: true }).click(),
  ]);
  out.historyExport = readFileSync(await exported.path(), "utf8");
  await page.screenshot({ path: join(shots, "history.png"), fullPage: true });
  await page.getByRole("link", { name: "Query" }).click();

  // A slow query, seen running on both copies from a second tab, cancelled,
  // then gone.
  const watcher = await browser.newPage();
  watcher.setDefaultTimeout(WAIT);
  await watcher.goto(url);
  await watcher.getByTestId("who").waitFor();
  await setSql(
    watcher,
    // By wait event: a streamed read runs through a cursor, so the text
    // PostgreSQL shows for it is a FETCH.
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'",
  );
  const sleeping = async () => (await run(watcher)).map((p) => `${p.target}=${p.rows[0]?.[0]}`).sort().join(" ");
  await setSql(page, "SELECT pg_sleep(600.25)");
  // The longest timeout the server allows: only the cancel can end it soon.
  await page.getByLabel("Timeout (s)").fill("300");
  const beforeSleep = await ended(page);
  await page.getByRole("button", { name: "Run", exact: true }).click();
  await waitStatus(page, "Running");
  const deadline = Date.now() + WAIT;
  out.sleepingBefore = await sleeping();
  while (out.sleepingBefore !== "aws/app=1 gcp/app=1" && Date.now() < deadline) {
    await watcher.waitForTimeout(200);
    out.sleepingBefore = await sleeping();
  }
  out.statusWhileSleeping = await status(page);
  await page.getByRole("button", { name: "Cancel" }).click();
  await waitEnd(page, beforeSleep, "Cancelled");
  out.cancelled = await panels(page);
  await page.screenshot({ path: join(shots, "cancelled.png") });
  await watcher.close();

  // The fleet overview: every copy's dot, once the monitor has checked it.
  await page.getByRole("link", { name: "Fleet" }).click();
  const health = () =>
    page.$$eval("td[data-health]", (cells) =>
      cells.map((c) => `${c.getAttribute("data-target")}=${c.getAttribute("data-health")}`).sort().join(" "),
    );
  const healthDeadline = Date.now() + WAIT;
  await page.locator("td[data-health]").first().waitFor();
  out.fleet = await health();
  while (out.fleet.includes("UNSPECIFIED") && Date.now() < healthDeadline) {
    await page.getByRole("button", { name: "Refresh" }).click();
    await page.waitForTimeout(500);
    out.fleet = await health();
  }
  await page.screenshot({ path: join(shots, "fleet.png"), fullPage: true });

  // A replication job run from the page, its progress streamed, then its status.
  await page.getByRole("link", { name: "Replication" }).click();
  const job = page.locator("article[data-job=orders-to-analytics]");
  await job.getByRole("button", { name: "Run orders-to-analytics" }).click();
  await job.getByTestId("progress").getByText(/^finished:/).waitFor();
  out.replicationProgress = await job.getByTestId("progress").locator("li").allInnerTexts();
  // The status as reloaded after the run (before it, the row says UNSPECIFIED).
  const copied = job.locator("table.status tr[data-target='gcp/analytics']", { hasText: "SUCCEEDED" });
  await copied.waitFor();
  out.replicationStatus = await copied.innerText();
  out.lagSamples = Number(await copied.locator("svg.lag").getAttribute("data-samples"));
  await page.screenshot({ path: join(shots, "replication.png"), fullPage: true });

  // Backups: each covered target's health (DEGRADED first, marked), the
  // test's backup verified, then the policy run now with its progress.
  await page.getByRole("link", { name: "Backups" }).click();
  const healthRows = () =>
    page.$$eval("[data-testid=backup-health] tbody tr", (rows) =>
      rows.map((r) => `${r.getAttribute("data-target")}=${r.getAttribute("data-state")}`).join(" "),
    );
  await page.locator("[data-testid=backup-health] tbody tr").first().waitFor();
  out.backupHealth = await healthRows();
  out.degradedMarked = await page.locator("[data-testid=backup-health] tr.degraded").count();
  const listed = page.locator(`tr[data-backup='${env("BACKUP_ID")}']`);
  out.listedBackup = await listed.getAttribute("data-target");
  await listed.getByRole("button", { name: `Verify ${env("BACKUP_ID")}` }).click();
  await listed.getByTestId("verified").waitFor();
  out.verified = await listed.getByTestId("verified").innerText();
  const policy = page.locator("article[data-policy=app-hourly]");
  await policy.getByRole("button", { name: "Run app-hourly now" }).click();
  await policy.getByTestId("backup-progress").getByText(/^done:/).waitFor();
  out.backupProgress = await policy.getByTestId("backup-progress").locator("li").allInnerTexts();
  // Reloaded after the run: no DEGRADED left.
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=backup-health] tr.degraded").length === 0);
  out.backupHealthAfter = await healthRows();
  await page.screenshot({ path: join(shots, "backups.png"), fullPage: true });

  // Migrations: app's status per copy, then the drift between the copies.
  await page.getByRole("link", { name: "Migrations" }).click();
  await page.getByLabel("Database").selectOption("app");
  await page.locator("article[data-target='gcp/app'] [data-testid=target-summary]").waitFor();
  out.migrationSummary = await page.getByTestId("migration-summary").innerText();
  out.migrationTargets = await page.$$eval("article.target-status", (articles) =>
    articles.map((a) => `${a.getAttribute("data-target")}: ${a.querySelector("[data-testid=target-summary]")?.textContent}`),
  );
  await page.getByRole("button", { name: "Check drift" }).click();
  await page.getByTestId("drift").waitFor();
  out.driftStatus = await page.getByTestId("drift").getByRole("status").innerText();
  out.drift = await page.$$eval("[data-testid=drift] div[data-target]", (targets) =>
    targets.flatMap((t) =>
      [...t.querySelectorAll("tbody tr")].map((tr) =>
        [t.getAttribute("data-target"), ...[...tr.querySelectorAll("td")].map((td) => td.textContent)].join("\t"),
      ),
    ),
  );
  await page.screenshot({ path: join(shots, "migrations.png"), fullPage: true });

  // Insights: the slow log filtered by text, and a waiting backend cancelled.
  await page.getByRole("link", { name: "Insights" }).click();
  await page.getByLabel("Database").selectOption("app");
  const slowRows = () =>
    page.$$eval("[data-testid=slow-queries] tbody tr", (rows) =>
      rows.map((r) => ({
        target: r.getAttribute("data-target"),
        caller: r.querySelectorAll("td")[4]?.textContent,
        query: r.querySelector("td.query")?.textContent,
      })),
    );
  await page.locator("[data-testid=slow-queries] tbody tr").first().waitFor();
  out.slowUnfiltered = (await slowRows()).length;
  await page.getByLabel("Query contains").fill("console_slow_marker");
  await page.waitForFunction(() =>
    [...document.querySelectorAll("[data-testid=slow-queries] td.query")].every((td) =>
      td.textContent.includes("console_slow_marker"),
    ),
  );
  out.slowFiltered = await slowRows();
  const waiter = page.locator("article[data-target='aws/app'] tr[data-application=console-waiter]");
  await waiter.waitFor();
  await waiter.getByRole("button", { name: /^Cancel \d+ on aws\/app$/ }).click();
  await page.getByTestId("signal").getByText(/^Cancel sent to/).waitFor();
  out.cancelSignal = await page.getByTestId("signal").innerText();
  await page.screenshot({ path: join(shots, "insights.png"), fullPage: true });

  // Users and API keys: a user, a key kept and a key revoked.
  await page.getByRole("link", { name: "Users and keys" }).click();
  const newUser = page.getByRole("form", { name: "New user" });
  await newUser.getByLabel("New username").fill("console-new");
  await newUser.getByLabel("Email").fill("console-new@example.com");
  await newUser.getByLabel("Full name").fill("Console New");
  await newUser.getByLabel("Initial password").fill("Harbor-lamp-7781");
  await newUser.getByLabel("Role").selectOption({ label: "USER" });
  await newUser.getByRole("button", { name: "Create user" }).click();
  await page.getByRole("cell", { name: "console-new", exact: true }).waitFor();
  await newUser.getByLabel("New username").fill("console-gone");
  await newUser.getByLabel("Email").fill("console-gone@example.com");
  await newUser.getByLabel("Full name").fill("Console Gone");
  await newUser.getByLabel("Initial password").fill("Harbor-lamp-7781");
  await newUser.getByRole("button", { name: "Create user" }).click();
  await page.getByRole("button", { name: "Deactivate console-gone" }).click();
  await page.getByRole("button", { name: "Activate console-gone" }).waitFor();
  await page.getByLabel("Role of console-new").selectOption({ label: "MASTER" });
  await page.waitForFunction(() => {
    const select = document.querySelector("select[aria-label='Role of console-new']");
    return select?.selectedOptions[0]?.textContent === "MASTER";
  });
  // Reloaded from the server, not just what was picked.
  await page.getByRole("link", { name: "Fleet" }).click();
  await page.getByRole("link", { name: "Users and keys" }).click();
  out.newUserRole = await page.getByLabel("Role of console-new").evaluate((s) => s.selectedOptions[0]?.textContent);
  const newKey = page.getByRole("form", { name: "New API key" });
  const createKey = async (name) => {
    await newKey.getByLabel("Key name").fill(name);
    await newKey.getByLabel("Targets (cloud/database, …)").fill("*/app");
    await newKey.getByRole("button", { name: "Create key" }).click();
    await page.getByRole("cell", { name, exact: true }).waitFor();
    return page.getByTestId("secret").innerText();
  };
  out.keptKey = await createKey("console-etl");
  out.revokedKey = await createKey("console-tmp");
  await page.getByRole("button", { name: "Revoke console-tmp" }).click();
  await page.getByRole("button", { name: "Revoke console-tmp" }).waitFor({ state: "detached" });
  await page.screenshot({ path: join(shots, "access.png"), fullPage: true });

  // Log out: back to the login form, and the session is gone.
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByLabel("Username", { exact: true }).waitFor();
  out.afterLogout = await page.locator("form.login").count();

  // A READER: no write controls, and a write sent anyway is refused.
  await logIn(page, env("READER_USER"), env("READER_PASSWORD"));
  out.readerWho = await page.getByTestId("who").innerText();
  out.readerReadOnlySwitch = await page.locator("input[name=read-only]").count();
  out.readerAccessLink = await page.getByRole("link", { name: "Users and keys" }).count();
  await page.getByRole("link", { name: "Replication" }).click();
  await page.locator("article[data-job=orders-to-analytics]").waitFor();
  out.readerRunButtons = await page.getByRole("button", { name: /^Run / }).count();
  // Backups: Verify (a READER may), no Run now.
  await page.getByRole("link", { name: "Backups" }).click();
  await page.locator("article[data-policy=app-hourly]").waitFor();
  out.readerBackupRunButtons = await page.getByRole("button", { name: /^Run / }).count();
  const readerListed = page.locator(`tr[data-backup='${env("BACKUP_ID")}']`);
  await readerListed.getByRole("button", { name: `Verify ${env("BACKUP_ID")}` }).click();
  await readerListed.getByTestId("verified").waitFor();
  out.readerVerified = await readerListed.getByTestId("verified").innerText();
  await page.screenshot({ path: join(shots, "reader-backups.png"), fullPage: true });
  // Insights: the backends, but no Cancel.
  await page.getByRole("link", { name: "Insights" }).click();
  await page.getByLabel("Database").selectOption("app");
  await page.locator("article.activity tr[data-pid]").first().waitFor();
  out.readerBackends = await page.locator("article.activity tr[data-pid]").count();
  out.readerCancelButtons = await page.getByRole("button", { name: /^Cancel/ }).count();
  await page.screenshot({ path: join(shots, "reader-insights.png"), fullPage: true });
  await page.getByRole("link", { name: "Query" }).click();
  await setSql(page, "UPDATE items SET name = 'reader' WHERE id = 1");
  await page.getByRole("button", { name: "Run", exact: true }).click();
  await page.getByTestId("error").waitFor();
  out.readerError = await page.getByTestId("error").innerText();
  await page.screenshot({ path: join(shots, "reader.png") });
  // Narrow screens get the same page, one column.
  await page.setViewportSize({ width: 420, height: 800 });
  await page.screenshot({ path: join(shots, "reader-narrow.png"), fullPage: true });
} catch (error) {
  problems.push(String(error?.stack ?? error));
  // What the page showed when it went wrong.
  try {
    await page.screenshot({ path: join(shots, "failure.png"), fullPage: true });
    out.failedAt = {
      url: page.url(),
      alerts: await page.getByRole("alert").allInnerTexts(),
      main: (await page.locator("main").allInnerTexts()).join("\n").slice(0, 2000),
    };
  } catch (inner) {
    problems.push(`no state of the failure: ${inner}`);
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
out.problems = problems;
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(problems.length === 0 ? 0 : 1);
