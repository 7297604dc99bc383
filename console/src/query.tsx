// The SQL page: target picker, editor, Validate, Run (streamed, one grid per
// target side by side), the dangerous-statement dialog, Cancel and export.
import { useEffect, useRef, useState } from "preact/hooks";
import { describeError, fleet, isCanceled, query } from "./api.js";
import type { Session } from "./app.js";
import { type Grid, cellText, download, toCsv, toJson } from "./cells.js";
import { type SqlEditor, createEditor } from "./editor.js";
import type { Cloud } from "./gen/pgfleet/v1/fleet_pb.js";
import { type DangerFinding, Role } from "./gen/pgfleet/v1/common_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ExecuteStreamRequestSchema } from "./gen/pgfleet/v1/query_pb.js";

type ScopeMode = "all" | "one" | "list";

type ParamInit = NonNullable<MessageInitShape<typeof ExecuteStreamRequestSchema>["params"]>[number];

/** `$1, $2, …` from a JSON array; throws a message fit for display. */
function parseParams(text: string): ParamInit[] {
  if (!text.trim()) return [];
  let values: unknown;
  try {
    values = JSON.parse(text);
  } catch {
    throw new Error("Parameters: not a JSON array, e.g. [1, \"text\", null]");
  }
  if (!Array.isArray(values)) throw new Error("Parameters: not a JSON array, e.g. [1, \"text\", null]");
  return values.map((value, i): ParamInit => {
    if (value === null) return { value: { case: "nullValue", value: 0 } };
    if (typeof value === "boolean") return { value: { case: "boolValue", value } };
    if (typeof value === "number")
      return Number.isInteger(value) ? { value: { case: "intValue", value: BigInt(value) } } : { value: { case: "doubleValue", value } };
    if (typeof value === "string") return { value: { case: "textValue", value } };
    throw new Error(`Parameters: $${i + 1} is neither a number, a string, a boolean nor null`);
  });
}

/** One target's part of a run, as it streams in. */
interface TargetRun {
  key: string;
  cloud: string;
  database: string;
  state: "running" | "succeeded" | "failed" | "cancelled";
  error: string;
  replica: string;
  /** Per statement: its grid, command tag and rows affected. */
  statements: { grid: Grid; tag: string; rowsAffected: string }[];
}

const targetKey = (t: { cloud: string; database: string } | undefined) =>
  t ? `${t.cloud}/${t.database}` : "";

export function QueryPage(props: { session: Session }) {
  const { role } = props.session;
  const [clouds, setClouds] = useState<Cloud[]>([]);
  const [database, setDatabase] = useState("");
  const [mode, setMode] = useState<ScopeMode>("all");
  const [oneCloud, setOneCloud] = useState("");
  const [listed, setListed] = useState<string[]>([]);
  const [timeout, setTimeoutSecs] = useState("");
  // $1, $2, … as a JSON array: numbers, strings, booleans, null.
  const [params, setParams] = useState("");
  // A READER's statements always run read-only; the switch is not theirs.
  const [readOnly, setReadOnly] = useState(role === Role.READER);
  const [status, setStatus] = useState("");
  const [error, setError] = useState("");
  const [runs, setRuns] = useState<TargetRun[]>([]);
  const [executionId, setExecutionId] = useState("");
  const [running, setRunning] = useState(false);
  // Runs ended so far: lets a watcher (or a test) tell this run's end from the last.
  const [ended, setEnded] = useState(0);
  const [findings, setFindings] = useState<DangerFinding[] | null>(null);
  // One grid with a target column instead of a panel per target.
  const [mergedView, setMergedView] = useState(false);
  const editorHost = useRef<HTMLDivElement>(null);
  const editor = useRef<SqlEditor | null>(null);
  const abort = useRef<AbortController | null>(null);
  const runRef = useRef<() => void>(() => {});

  useEffect(() => {
    if (editorHost.current && !editor.current)
      editor.current = createEditor(editorHost.current, "SELECT 1", () => runRef.current());
    fleet
      .getConfiguration({})
      .then((config) => {
        setClouds(config.clouds);
        const first = config.clouds[0];
        setDatabase(first?.databases[0]?.name ?? "");
        setOneCloud(first?.name ?? "");
      })
      .catch((e) => setError(describeError(e)));
  }, []);

  const databases = [...new Set(clouds.flatMap((c) => c.databases.map((d) => d.name)))];
  const cloudsWithDatabase = clouds.filter((c) => c.databases.some((d) => d.name === database)).map((c) => c.name);

  function request(confirmDangerous: boolean): MessageInitShape<typeof ExecuteStreamRequestSchema> {
    const scope: MessageInitShape<typeof ExecuteStreamRequestSchema>["scope"] =
      mode === "all"
        ? { case: "allClouds", value: {} }
        : mode === "one"
          ? { case: "cloud", value: oneCloud }
          : {
              case: "targets",
              value: { targets: listed.map((cloud) => ({ cloud, database })) },
            };
    const seconds = Number(timeout);
    return {
      params: parseParams(params),
      query: editor.current?.text() ?? "",
      // An explicit list names each target's database itself.
      database: mode === "list" ? "" : database,
      scope,
      readOnly: role === Role.READER || readOnly,
      confirmDangerous,
      timeout: timeout && seconds > 0 ? { seconds: BigInt(Math.floor(seconds)), nanos: 0 } : undefined,
      batchSize: 500,
    };
  }

  /** Validate: the parse error underlined, or what the text holds. */
  async function validate(): Promise<{ valid: boolean; findings: DangerFinding[] } | null> {
    setError("");
    const text = editor.current?.text() ?? "";
    try {
      const result = await query.validate({ query: text });
      if (!result.valid && result.parseError) {
        editor.current?.showError({ byteOffset: result.parseError.byteOffset, message: result.parseError.message });
        setStatus(`Parse error at line ${result.parseError.line}, column ${result.parseError.column}: ${result.parseError.message}`);
        return { valid: false, findings: [] };
      }
      editor.current?.showError(null);
      const found = result.statements.flatMap((s) => s.findings);
      setStatus(
        `Valid: ${result.statements.length} statement(s), needs ${Role[result.requiredRole]}` +
          (found.length ? `, ${found.length} dangerous finding(s)` : ""),
      );
      return { valid: true, findings: found };
    } catch (e) {
      setError(describeError(e));
      return null;
    }
  }

  async function run() {
    if (running) return;
    try {
      parseParams(params);
    } catch (e) {
      setError(String(e instanceof Error ? e.message : e));
      return;
    }
    const checked = await validate();
    if (!checked?.valid) return;
    if (checked.findings.length > 0) {
      if (role !== Role.MASTER) {
        setError("This text has dangerous statements: only a MASTER may run them.");
        return;
      }
      // Asked first; Confirm in the dialog runs it.
      setFindings(checked.findings);
      return;
    }
    await execute(false);
  }
  runRef.current = () => void run();

  async function execute(confirmDangerous: boolean) {
    setFindings(null);
    setRuns([]);
    setExecutionId("");
    setError("");
    setRunning(true);
    setStatus("Running…");
    const controller = new AbortController();
    abort.current = controller;
    const byKey = new Map<string, TargetRun>();
    const publish = () => setRuns([...byKey.values()]);
    const target = (t: { cloud: string; database: string } | undefined) => {
      const key = targetKey(t);
      let entry = byKey.get(key);
      if (!entry) {
        entry = { key, cloud: t?.cloud ?? "", database: t?.database ?? "", state: "running", error: "", replica: "", statements: [] };
        byKey.set(key, entry);
      }
      return entry;
    };
    try {
      for await (const response of query.executeStream(request(confirmDangerous), { signal: controller.signal })) {
        const event = response.event;
        switch (event.case) {
          case "executionStarted":
            setExecutionId(event.value.executionId);
            for (const t of event.value.targets) target(t);
            break;
          case "targetStarted":
            target(event.value.target).replica = event.value.replica;
            break;
          case "resultHeader": {
            const entry = target(event.value.target);
            entry.statements[event.value.statementIndex] = {
              grid: { columns: event.value.columns.map((c) => c.name), rows: [] },
              tag: "",
              rowsAffected: "",
            };
            break;
          }
          case "rowBatch": {
            const statement = target(event.value.target).statements[event.value.statementIndex];
            if (statement) statement.grid.rows.push(...event.value.rows.map((row) => row.cells.map(cellText)));
            break;
          }
          case "statementSummary": {
            const entry = target(event.value.target);
            const statement = (entry.statements[event.value.statementIndex] ??= {
              grid: { columns: [], rows: [] },
              tag: "",
              rowsAffected: "",
            });
            statement.tag = event.value.commandTag;
            statement.rowsAffected = event.value.rowsAffected.toString();
            break;
          }
          case "targetSummary": {
            const entry = target(event.value.target);
            entry.state = event.value.success ? "succeeded" : "failed";
            entry.error = event.value.error?.message ?? "";
            break;
          }
          case "executionFinished":
            setStatus(event.value.success ? "Finished: every target succeeded" : "Finished: some targets failed");
            break;
        }
        publish();
      }
    } catch (e) {
      if (isCanceled(e) || controller.signal.aborted) {
        for (const entry of byKey.values()) if (entry.state === "running") entry.state = "cancelled";
        publish();
        setStatus("Cancelled");
      } else {
        setError(describeError(e));
        setStatus("");
      }
    } finally {
      abort.current = null;
      setRunning(false);
      setEnded((n) => n + 1);
    }
  }

  /** Every target's first grid merged, with the target first. */
  function merged(): Grid {
    const withRows = runs.filter((r) => r.statements.some((s) => s?.grid.columns.length));
    const lastGrid = (r: TargetRun) => [...r.statements].reverse().find((s) => s?.grid.columns.length)?.grid;
    const columns = withRows.length ? ["target", ...(lastGrid(withRows[0])?.columns ?? [])] : ["target"];
    const rows = withRows.flatMap((r) => (lastGrid(r)?.rows ?? []).map((row) => [r.key, ...row]));
    return { columns, rows };
  }

  return (
    <section class="query" aria-label="SQL">
      <form class="targets" onSubmit={(e) => e.preventDefault()}>
        <label>
          Database
          <select name="database" value={database} onChange={(e) => setDatabase(e.currentTarget.value)}>
            {databases.map((d) => (
              <option key={d} value={d}>
                {d}
              </option>
            ))}
          </select>
        </label>
        <fieldset>
          <legend>Targets</legend>
          <label>
            <input type="radio" name="scope" checked={mode === "all"} onChange={() => setMode("all")} /> All clouds
          </label>
          <label>
            <input type="radio" name="scope" checked={mode === "one"} onChange={() => setMode("one")} /> One cloud
          </label>
          {mode === "one" && (
            <select aria-label="Cloud" value={oneCloud} onChange={(e) => setOneCloud(e.currentTarget.value)}>
              {cloudsWithDatabase.map((c) => (
                <option key={c} value={c}>
                  {c}
                </option>
              ))}
            </select>
          )}
          <label>
            <input type="radio" name="scope" checked={mode === "list"} onChange={() => setMode("list")} /> A list
          </label>
          {mode === "list" &&
            cloudsWithDatabase.map((c) => (
              <label key={c}>
                <input
                  type="checkbox"
                  checked={listed.includes(c)}
                  onChange={(e) =>
                    setListed(e.currentTarget.checked ? [...listed, c] : listed.filter((x) => x !== c))
                  }
                />{" "}
                {c}
              </label>
            ))}
        </fieldset>
        <label>
          Parameters
          <input name="params" placeholder='[1, "text", null]' value={params} onInput={(e) => setParams(e.currentTarget.value)} />
        </label>
        <label>
          Timeout (s)
          <input name="timeout" type="number" min="1" size={5} value={timeout} onInput={(e) => setTimeoutSecs(e.currentTarget.value)} />
        </label>
        {role !== Role.READER && (
          <label>
            <input name="read-only" type="checkbox" checked={readOnly} onChange={(e) => setReadOnly(e.currentTarget.checked)} /> Read-only
          </label>
        )}
      </form>
      <div class="editor" ref={editorHost} />
      <div class="actions">
        <button type="button" onClick={() => void validate()} disabled={running}>
          Validate
        </button>
        <button type="button" onClick={() => void run()} disabled={running} title="Ctrl+Enter">
          Run
        </button>
        <button type="button" onClick={() => abort.current?.abort()} disabled={!running}>
          Cancel
        </button>
        <button type="button" disabled={running || runs.length === 0} onClick={() => download("result.csv", "text/csv", toCsv(merged()))}>
          Export CSV
        </button>
        <button type="button" disabled={running || runs.length === 0} onClick={() => download("result.json", "application/json", toJson(merged()))}>
          Export JSON
        </button>
        <label>
          <input name="merged" type="checkbox" checked={mergedView} onChange={(e) => setMergedView(e.currentTarget.checked)} /> One grid
        </label>
        <span role="status" data-testid="status" data-ended={ended}>
          {status}
        </span>
      </div>
      {error && (
        <p role="alert" class="error" data-testid="error">
          {error}
        </p>
      )}
      {executionId && <p class="execution">Audit record {executionId}</p>}
      {findings && (
        <Confirm
          findings={findings}
          onCancel={() => setFindings(null)}
          onConfirm={() => void execute(true)}
        />
      )}
      {mergedView ? <MergedGrid grid={merged()} /> : <Results runs={runs} />}
    </section>
  );
}

/** The dangerous-statement dialog: each finding, then Confirm or Cancel. */
function Confirm(props: { findings: DangerFinding[]; onCancel: () => void; onConfirm: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    dialog.current?.showModal();
  }, []);
  return (
    <dialog ref={dialog} aria-labelledby="danger-title" onCancel={props.onCancel} data-testid="danger">
      <h2 id="danger-title">Dangerous statements</h2>
      <ul>
        {props.findings.map((f, i) => (
          <li key={i}>
            <code>{f.code}</code> (statement {f.statementIndex + 1}): {f.reason}
          </li>
        ))}
      </ul>
      <div class="actions">
        <button type="button" onClick={props.onCancel}>
          Cancel
        </button>
        <button type="button" class="danger" onClick={props.onConfirm}>
          Run anyway
        </button>
      </div>
    </dialog>
  );
}

/** Every target's rows in one grid, the target first; a row whose values
 *  (without the target) some other target lacks is marked. */
function MergedGrid(props: { grid: Grid }) {
  const { columns, rows } = props.grid;
  const targets = [...new Set(rows.map((r) => r[0]))];
  const valuesOf = new Map(targets.map((t) => [t, new Set(rows.filter((r) => r[0] === t).map((r) => JSON.stringify(r.slice(1))))]));
  const differs = (row: (string | null)[]) =>
    targets.some((t) => t !== row[0] && !valuesOf.get(t)?.has(JSON.stringify(row.slice(1))));
  return (
    <div class="grid merged" data-testid="merged">
      <table>
        <thead>
          <tr>
            {columns.map((c, i) => (
              <th key={i} scope="col">
                {c}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((row, i) => (
            <tr key={i} class={differs(row) ? "differs" : undefined}>
              {row.map((v, k) => (
                <td key={k} class={v === null ? "null" : undefined}>
                  {v ?? "NULL"}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** One panel per target, side by side; rows another target lacks marked. */
function Results(props: { runs: TargetRun[] }) {
  const rowSets = new Map(
    props.runs.map((r) => [r.key, new Set((r.statements.at(-1)?.grid.rows ?? []).map((row) => JSON.stringify(row)))]),
  );
  const differs = (key: string, row: (string | null)[]) => {
    const text = JSON.stringify(row);
    return props.runs.some((other) => other.key !== key && other.state === "succeeded" && !rowSets.get(other.key)?.has(text));
  };
  return (
    <div class="results">
      {props.runs.map((r) => (
        <section key={r.key} class={`target ${r.state}`} aria-label={`Result of ${r.key}`} data-target={r.key}>
          <h3>
            <span class={`dot ${r.state}`} aria-hidden="true" /> {r.key}
            {r.replica && <small> (replica {r.replica})</small>} <small data-testid="state">{r.state}</small>
          </h3>
          {r.error && <p class="error">{r.error}</p>}
          {r.statements.map((s, i) =>
            s ? (
              <div key={i}>
                {s.tag && (
                  <p class="tag">
                    {s.tag}
                    {s.rowsAffected && s.rowsAffected !== "0" ? ` (${s.rowsAffected} rows)` : ""}
                  </p>
                )}
                {s.grid.columns.length > 0 && (
                  <div class="grid">
                    <table>
                      <thead>
                        <tr>
                          {s.grid.columns.map((c, j) => (
                            <th key={j} scope="col">
                              {c}
                            </th>
                          ))}
                        </tr>
                      </thead>
                      <tbody>
                        {s.grid.rows.map((row, j) => (
                          <tr key={j} class={i === r.statements.length - 1 && differs(r.key, row) ? "differs" : undefined}>
                            {row.map((v, k) => (
                              <td key={k} class={v === null ? "null" : undefined}>
                                {v ?? "NULL"}
                              </td>
                            ))}
                          </tr>
                        ))}
                      </tbody>
                    </table>
                  </div>
                )}
              </div>
            ) : null,
          )}
        </section>
      ))}
    </div>
  );
}
