// Insights on one database's copies: pgfleet's slow-query log (filtered by
// text), pg_stat_statements merged across the copies, live activity with
// Cancel (MASTER), and the recommendations drawn from the catalogs.
import { useEffect, useState } from "preact/hooks";
import { describeError, insights } from "./api.js";
import type { Session } from "./app.js";
import { Role } from "./gen/pgfleet/v1/common_pb.js";
import {
  type Backend,
  type GetRecommendationsResponse,
  type GetStatementStatsResponse,
  RecommendationKind,
  type SlowQuery,
  StatementOrder,
  type TargetActivity,
} from "./gen/pgfleet/v1/insights_pb.js";
import { DatabasePicker, duration, useDatabase, when, where } from "./format.js";

const REFRESH_MS = 10_000;

export function InsightsPage(props: { session: Session }) {
  const [error, setError] = useState("");
  const { databases, database, setDatabase } = useDatabase(setError);
  const [slow, setSlow] = useState<SlowQuery[]>([]);
  const [contains, setContains] = useState("");
  const [stats, setStats] = useState<GetStatementStatsResponse | null>(null);
  const [order, setOrder] = useState(StatementOrder.TOTAL_TIME);
  const [activity, setActivity] = useState<TargetActivity[]>([]);
  const [recommendations, setRecommendations] = useState<GetRecommendationsResponse | null>(null);
  const [signal, setSignal] = useState("");
  // CancelBackend is MASTER's (auth/access.rs): nobody else sees the button.
  const mayCancel = props.session.role === Role.MASTER;

  const report = (e: unknown) => setError(describeError(e));

  async function loadSlow(name: string) {
    try {
      // Newest first; USER and READER get their own only (the server's rule).
      setSlow((await insights.searchSlowQueries({ database: name, pageSize: 200 })).slowQueries);
    } catch (e) {
      report(e);
    }
  }
  async function loadStats(name: string, by: StatementOrder) {
    try {
      setStats(await insights.getStatementStats({ database: name, top: 20, orderBy: by }));
    } catch (e) {
      report(e);
    }
  }
  async function loadActivity(name: string) {
    try {
      setActivity((await insights.listActivity({ database: name })).targets);
    } catch (e) {
      report(e);
    }
  }
  async function loadRecommendations(name: string) {
    try {
      setRecommendations(await insights.getRecommendations({ database: name }));
    } catch (e) {
      report(e);
    }
  }

  useEffect(() => {
    if (!database) return;
    setError("");
    setSignal("");
    void loadSlow(database);
    void loadStats(database, order);
    void loadActivity(database);
    void loadRecommendations(database);
    // Activity is the live part; the rest changes only when asked.
    const timer = setInterval(() => void loadActivity(database), REFRESH_MS);
    return () => clearInterval(timer);
  }, [database]);

  async function cancel(target: TargetActivity, backend: Backend) {
    try {
      const done = await insights.cancelBackend({ target: target.target, pid: backend.pid });
      setSignal(
        done.signalled
          ? `Cancel sent to ${backend.pid} on ${where(target.target)}`
          : `${backend.pid} on ${where(target.target)} was gone already`,
      );
    } catch (e) {
      report(e);
    }
    await loadActivity(database);
  }

  const needle = contains.trim().toLowerCase();
  const shownSlow = needle ? slow.filter((q) => q.normalizedQuery.toLowerCase().includes(needle)) : slow;

  return (
    <section class="insights" aria-label="Insights">
      <div class="actions">
        <DatabasePicker databases={databases} database={database} onPick={setDatabase} />
      </div>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}

      <h2>Slow queries</h2>
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          void loadSlow(database);
        }}
      >
        <label>
          Query contains <input name="slow-contains" value={contains} onInput={(e) => setContains(e.currentTarget.value)} />
        </label>
        <button type="submit">Reload</button>
      </form>
      {shownSlow.length === 0 ? (
        <p>No slow queries{needle && " matching"}.</p>
      ) : (
        <div class="grid">
          <table data-testid="slow-queries">
            <thead>
              <tr>
                <th scope="col">Recorded</th>
                <th scope="col">Target</th>
                <th scope="col">Duration</th>
                <th scope="col">Rows</th>
                <th scope="col">Caller</th>
                <th scope="col">Query</th>
              </tr>
            </thead>
            <tbody>
              {shownSlow.map((q) => (
                <tr key={q.id.toString()} data-target={where(q.target)} class={q.success ? undefined : "failed"}>
                  <td>{when(q.recordedAt)}</td>
                  <td>
                    {where(q.target)}
                    {q.replica && ` (${q.replica})`}
                  </td>
                  <td>{duration(q.duration)}</td>
                  <td>{q.rows.toString()}</td>
                  <td>{q.actor}</td>
                  <td class="query" title={q.fingerprint}>
                    {q.normalizedQuery}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}

      <h2>Statements across the copies</h2>
      <div class="actions">
        <label>
          Order by{" "}
          <select
            name="order"
            value={order}
            onChange={(e) => {
              const by = Number(e.currentTarget.value) as StatementOrder;
              setOrder(by);
              void loadStats(database, by);
            }}
          >
            <option value={StatementOrder.TOTAL_TIME}>total time</option>
            <option value={StatementOrder.MEAN_TIME}>mean time</option>
            <option value={StatementOrder.CALLS}>calls</option>
            <option value={StatementOrder.ROWS}>rows</option>
            <option value={StatementOrder.SHARED_BLOCKS_READ}>blocks read</option>
          </select>
        </label>
      </div>
      {stats && (
        <>
          {stats.targets
            .filter((t) => !t.available)
            .map((t) => (
              <p key={where(t.target)} class="unavailable" data-target={where(t.target)}>
                No statistics from {where(t.target)}: {t.reason}
              </p>
            ))}
          {stats.statements.length === 0 ? (
            <p>No statements.</p>
          ) : (
            <div class="grid">
              <table data-testid="statements">
                <thead>
                  <tr>
                    <th scope="col">Query</th>
                    <th scope="col">Calls</th>
                    <th scope="col">Total time</th>
                    <th scope="col">Per copy (calls, mean)</th>
                    <th scope="col">Slowest</th>
                  </tr>
                </thead>
                <tbody>
                  {stats.statements.map((s) => (
                    <tr key={s.fingerprint} class={s.highlight ? "differs" : undefined}>
                      <td class="query">{s.query}</td>
                      <td>{s.totalCalls.toString()}</td>
                      <td>{duration(s.totalTime)}</td>
                      <td>
                        {s.perTarget.map((p) => `${where(p.target)}: ${p.calls}, ${duration(p.meanTime)}`).join("; ")}
                      </td>
                      <td>{s.highlight || where(s.slowest)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}

      <h2>Activity</h2>
      <div class="actions">
        <button type="button" disabled={!database} onClick={() => void loadActivity(database)}>
          Refresh activity
        </button>
        <span role="status" data-testid="signal">
          {signal}
        </span>
      </div>
      {activity.map((t) => (
        <article key={where(t.target)} class="activity" aria-label={`Activity on ${where(t.target)}`} data-target={where(t.target)}>
          <h3>{where(t.target)}</h3>
          {t.error && <p class="error">{t.error.message}</p>}
          {!t.error && t.backends.length === 0 && <p>Nothing running.</p>}
          {t.backends.length > 0 && (
            <div class="grid">
              <table>
                <thead>
                  <tr>
                    <th scope="col">Pid</th>
                    <th scope="col">User</th>
                    <th scope="col">Application</th>
                    <th scope="col">State</th>
                    <th scope="col">Waiting on</th>
                    <th scope="col">Age</th>
                    <th scope="col">Blocked by</th>
                    <th scope="col">Query</th>
                    {mayCancel && <th scope="col">Cancel</th>}
                  </tr>
                </thead>
                <tbody>
                  {t.backends.map((b) => (
                    <tr key={b.pid} data-pid={b.pid} data-application={b.applicationName} class={b.blockedBy.length > 0 ? "differs" : undefined}>
                      <td>{b.pid}</td>
                      <td>{b.user}</td>
                      <td>
                        {b.applicationName}
                        {b.pgfleetOwn && " (pgfleet)"}
                      </td>
                      <td>{b.state}</td>
                      <td>
                        {[b.waitEventType, b.waitEvent].filter(Boolean).join(": ")}
                        {b.waitingFor.map((w) => ` ${w.mode} on ${w.relation || w.lockType}`).join(",")}
                      </td>
                      <td>{duration(b.queryAge ?? b.transactionAge)}</td>
                      <td>{b.blockedBy.join(", ")}</td>
                      <td class="query">{b.query}</td>
                      {mayCancel && (
                        <td>
                          {/* The server refuses pgfleet's own history-store connections. */}
                          {!b.pgfleetOwn && (
                            <button type="button" aria-label={`Cancel ${b.pid} on ${where(t.target)}`} onClick={() => void cancel(t, b)}>
                              Cancel
                            </button>
                          )}
                        </td>
                      )}
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </article>
      ))}

      <h2>Recommendations</h2>
      {recommendations && (
        <>
          {recommendations.unread.map((u) => (
            <p key={where(u.target)} class="error">
              {where(u.target)} not read: {u.error?.message ?? ""}
            </p>
          ))}
          {recommendations.recommendations.length === 0 ? (
            <p>No recommendations.</p>
          ) : (
            <div class="grid">
              <table data-testid="recommendations">
                <thead>
                  <tr>
                    <th scope="col">Target</th>
                    <th scope="col">Kind</th>
                    <th scope="col">Object</th>
                    <th scope="col">Advice</th>
                    <th scope="col">Evidence</th>
                  </tr>
                </thead>
                <tbody>
                  {recommendations.recommendations.map((r, i) => (
                    <tr key={i}>
                      <td>{where(r.target)}</td>
                      <td>{RecommendationKind[r.kind]?.toLowerCase().replaceAll("_", " ") ?? ""}</td>
                      <td>{r.object}</td>
                      <td>{r.advice}</td>
                      <td>{r.evidence}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
    </section>
  );
}
