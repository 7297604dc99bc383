// The audit trail: filters, pages, a record's detail with per-target outcomes.
import { useEffect, useState } from "preact/hooks";
import { toJsonString } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { describeError, history } from "./api.js";
import type { Session } from "./app.js";
import { download } from "./cells.js";
import { Role } from "./gen/pgfleet/v1/common_pb.js";
import { ExecutionRecordSchema, ExecutionStatus, type ExecutionRecord } from "./gen/pgfleet/v1/history_pb.js";

const PAGE_SIZE = 20;

function actor(record: ExecutionRecord): string {
  const p = record.actor?.principal;
  if (!p || p.case === undefined) return "";
  return p.case === "apiKey" ? `key ${p.value.name}` : p.value;
}

function when(record: ExecutionRecord): string {
  return record.startedAt ? timestampDate(record.startedAt).toISOString().replace("T", " ").slice(0, 19) : "";
}

export function HistoryPage(props: { session: Session }) {
  const [database, setDatabase] = useState("");
  const [contains, setContains] = useState("");
  const [username, setUsername] = useState("");
  const [records, setRecords] = useState<ExecutionRecord[]>([]);
  const [total, setTotal] = useState(0n);
  // Tokens of the pages seen so far: [0] is the first page's ("").
  const [tokens, setTokens] = useState<string[]>([""]);
  const [nextToken, setNextToken] = useState("");
  const [selected, setSelected] = useState<ExecutionRecord | null>(null);
  const [error, setError] = useState("");
  const [chain, setChain] = useState<{ ok: boolean; text: string } | null>(null);
  const [exporting, setExporting] = useState(false);

  const filter = () => ({ database, queryContains: contains, username });

  /** Every record the filter matches, one JSON object per line. */
  async function exportRecords() {
    setExporting(true);
    setError("");
    try {
      const lines: string[] = [];
      for await (const response of history.exportExecutions({ filter: filter() })) {
        if (response.execution) lines.push(toJsonString(ExecutionRecordSchema, response.execution));
      }
      download("history.jsonl", "application/x-ndjson", lines.map((l) => l + "\n").join(""));
    } catch (e) {
      setError(describeError(e));
    } finally {
      setExporting(false);
    }
  }

  async function verifyChain() {
    try {
      const result = await history.verifyChain({});
      setChain(
        result.ok
          ? { ok: true, text: `Chain verified: ${result.recordsChecked} records` }
          : {
              ok: false,
              text: `Chain broken at record ${result.firstBroken?.sequence ?? "?"}: ${result.firstBroken?.reason ?? ""}`,
            },
      );
    } catch (e) {
      setError(describeError(e));
    }
  }

  async function load(pageTokens: string[]) {
    setError("");
    try {
      const page = await history.listExecutions({
        filter: filter(),
        pageSize: PAGE_SIZE,
        pageToken: pageTokens[pageTokens.length - 1],
      });
      setRecords(page.executions);
      setTotal(page.totalCount);
      setNextToken(page.nextPageToken);
      setTokens(pageTokens);
    } catch (e) {
      setError(describeError(e));
    }
  }
  useEffect(() => {
    void load([""]);
  }, []);

  return (
    <section class="history" aria-label="History">
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          void load([""]);
        }}
      >
        <label>
          Database <input name="database" value={database} onInput={(e) => setDatabase(e.currentTarget.value)} />
        </label>
        <label>
          Text contains <input name="contains" value={contains} onInput={(e) => setContains(e.currentTarget.value)} />
        </label>
        <label>
          User <input name="username" value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
        </label>
        <button type="submit">Search</button>
        <button type="button" disabled={exporting} onClick={() => void exportRecords()}>
          Export
        </button>
        {props.session.role === Role.MASTER && (
          <button type="button" onClick={() => void verifyChain()}>
            Verify chain
          </button>
        )}
        {chain && (
          <span class={`badge ${chain.ok ? "ok" : "broken"}`} role="status" data-testid="chain">
            {chain.text}
          </span>
        )}
      </form>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      <p>
        {total.toString()} record(s), page {tokens.length}
      </p>
      <table class="records">
        <thead>
          <tr>
            <th scope="col">Started</th>
            <th scope="col">Who</th>
            <th scope="col">Database</th>
            <th scope="col">Status</th>
            <th scope="col">Query</th>
          </tr>
        </thead>
        <tbody>
          {records.map((r) => (
            <tr key={r.id}>
              <td>{when(r)}</td>
              <td>{actor(r)}</td>
              <td>{r.database}</td>
              <td>{ExecutionStatus[r.status]}</td>
              <td>
                <button type="button" class="link" onClick={() => setSelected(r)}>
                  {r.query.length > 80 ? r.query.slice(0, 80) + "…" : r.query}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <div class="actions">
        <button type="button" disabled={tokens.length <= 1} onClick={() => void load(tokens.slice(0, -1))}>
          Previous
        </button>
        <button type="button" disabled={!nextToken} onClick={() => void load([...tokens, nextToken])}>
          Next
        </button>
      </div>
      {selected && (
        <article class="record" aria-label="Record" data-testid="record">
          <h2>Record {selected.id}</h2>
          <pre>{selected.query}</pre>
          <p>
            {actor(selected)} from {selected.clientAddress || "?"} at {when(selected)}: {ExecutionStatus[selected.status]}
            {selected.confirmedDangerous ? ", dangerous statements confirmed" : ""}
          </p>
          <table>
            <thead>
              <tr>
                <th scope="col">Target</th>
                <th scope="col">Outcome</th>
                <th scope="col">Rows</th>
                <th scope="col">Error</th>
              </tr>
            </thead>
            <tbody>
              {selected.outcomes.map((o, i) => (
                <tr key={i}>
                  <td>
                    {o.target?.cloud}/{o.target?.database}
                  </td>
                  <td>{o.outcomeUnknown ? "unknown" : o.success ? "succeeded" : "failed"}</td>
                  <td>{o.rowsAffected.toString()}</td>
                  <td>{o.error?.message ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <button type="button" onClick={() => setSelected(null)}>
            Close
          </button>
        </article>
      )}
    </section>
  );
}
