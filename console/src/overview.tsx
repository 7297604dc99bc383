// The fleet at a glance: clouds × databases, each copy's health as a dot,
// with latency, pool use, role and replicas; refreshed every 10 s.
import { useEffect, useState } from "preact/hooks";
import { describeError, fleet } from "./api.js";
import { HealthStatus, ServerRole, type TargetHealth } from "./gen/pgfleet/v1/fleet_pb.js";

const REFRESH_MS = 10_000;

function millis(health: TargetHealth): string {
  const d = health.latency;
  return d ? `${(Number(d.seconds) * 1000 + d.nanos / 1e6).toFixed(1)} ms` : "";
}

export function OverviewPage() {
  const [targets, setTargets] = useState<TargetHealth[]>([]);
  const [error, setError] = useState("");
  const [checkedAt, setCheckedAt] = useState("");

  async function refresh() {
    try {
      const health = await fleet.getHealth({});
      setTargets(health.targets);
      setError("");
      setCheckedAt(new Date().toLocaleTimeString());
    } catch (e) {
      setError(describeError(e));
    }
  }
  useEffect(() => {
    void refresh();
    const timer = setInterval(() => void refresh(), REFRESH_MS);
    return () => clearInterval(timer);
  }, []);

  // Primaries only in the grid; their replicas listed in the cell.
  const primaries = targets.filter((t) => !t.replica);
  const clouds = [...new Set(primaries.map((t) => t.target?.cloud ?? ""))];
  const databases = [...new Set(primaries.map((t) => t.target?.database ?? ""))];
  const cell = (cloud: string, database: string) =>
    primaries.find((t) => t.target?.cloud === cloud && t.target?.database === database);
  const replicas = (cloud: string, database: string) =>
    targets.filter((t) => t.replica && t.target?.cloud === cloud && t.target?.database === database);

  return (
    <section class="overview" aria-label="Fleet overview">
      <div class="actions">
        <button type="button" onClick={() => void refresh()}>
          Refresh
        </button>
        <span role="status">{checkedAt && `Checked ${checkedAt}`}</span>
      </div>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      <div class="grid">
        <table>
          <thead>
            <tr>
              <th scope="col">Database</th>
              {clouds.map((c) => (
                <th key={c} scope="col">
                  {c}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {databases.map((d) => (
              <tr key={d}>
                <th scope="row">{d}</th>
                {clouds.map((c) => {
                  const h = cell(c, d);
                  if (!h) return <td key={c}>—</td>;
                  const status = HealthStatus[h.status];
                  return (
                    <td key={c} class="health" data-target={`${c}/${d}`} data-health={status}>
                      <span class={`dot ${status.toLowerCase()}`} role="img" aria-label={status} title={h.lastError || status} />{" "}
                      {status.toLowerCase()} {millis(h)}
                      <br />
                      <small>
                        {ServerRole[h.role]?.toLowerCase()} · pool {h.pool?.size ?? 0}/{h.pool?.maxSize ?? 0}
                        {h.pool?.waiting ? `, ${h.pool.waiting} waiting` : ""}
                      </small>
                      {h.lastError && <p class="error">{h.lastError}</p>}
                      {replicas(c, d).map((r) => (
                        <div key={r.replica}>
                          <small>
                            <span class={`dot ${HealthStatus[r.status].toLowerCase()}`} aria-hidden="true" /> replica {r.replica}
                            {r.replayLag ? `, lag ${r.replayLag.seconds}s` : ""}
                          </small>
                        </div>
                      ))}
                    </td>
                  );
                })}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
