// Replication jobs: the list, a run with its progress as it streams (MASTER),
// and each job's status per table and target (lag, row counts).
import { useEffect, useState } from "preact/hooks";
import { describeError, replication } from "./api.js";
import type { Session } from "./app.js";
import { Role } from "./gen/pgfleet/v1/common_pb.js";
import { type JobStatus, ReplicationOutcome, type ReplicationJob } from "./gen/pgfleet/v1/replication_pb.js";

const outcome = (o: ReplicationOutcome) => ReplicationOutcome[o] ?? "";
const REFRESH_MS = 10_000;
/** Lag samples kept per table and target (the last 60, 10 minutes at 10 s). */
const SAMPLES = 60;

/** Lag in seconds over the samples taken while the page was open. */
function LagChart(props: { samples: number[] }) {
  const { samples } = props;
  const width = 120;
  const height = 24;
  const max = Math.max(1, ...samples);
  const step = samples.length > 1 ? width / (samples.length - 1) : 0;
  const points = samples.map((v, i) => `${(i * step).toFixed(1)},${(height - (v / max) * height).toFixed(1)}`).join(" ");
  const last = samples.at(-1) ?? 0;
  return (
    <svg class="lag" width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img" aria-label={`Lag ${last} s, at most ${max} s while open`} data-samples={samples.length}>
      <polyline points={points} fill="none" stroke="#2563eb" stroke-width="1.5" />
    </svg>
  );
}
const where = (t: { cloud: string; database: string } | undefined) => (t ? `${t.cloud}/${t.database}` : "");

export function ReplicationPage(props: { session: Session }) {
  const [jobs, setJobs] = useState<ReplicationJob[]>([]);
  const [statuses, setStatuses] = useState<JobStatus[]>([]);
  const [progress, setProgress] = useState<Record<string, string[]>>({});
  const [running, setRunning] = useState<string | null>(null);
  const [error, setError] = useState("");
  // Lag samples by "job table target", appended at every status load.
  const [lags, setLags] = useState<Record<string, number[]>>({});

  async function load() {
    try {
      const [list, status] = await Promise.all([replication.listJobs({ pageSize: 100 }), replication.getStatus({})]);
      setJobs(list.jobs);
      setStatuses(status.jobs);
      setLags((before) => {
        const after = { ...before };
        for (const job of status.jobs)
          for (const t of job.tables) {
            const key = `${job.jobId} ${t.table} ${where(t.target)}`;
            const seconds = t.lag ? Number(t.lag.seconds) + t.lag.nanos / 1e9 : 0;
            after[key] = [...(after[key] ?? []), seconds].slice(-SAMPLES);
          }
        return after;
      });
    } catch (e) {
      setError(describeError(e));
    }
  }
  useEffect(() => {
    void load();
    const timer = setInterval(() => void load(), REFRESH_MS);
    return () => clearInterval(timer);
  }, []);

  async function run(job: ReplicationJob) {
    setError("");
    setRunning(job.id);
    const lines: string[] = [];
    const show = () => setProgress((p) => ({ ...p, [job.id]: [...lines] }));
    try {
      for await (const response of replication.runJob({ jobId: job.id })) {
        const event = response.event?.event;
        switch (event?.case) {
          case "runStarted":
            lines.push(`started run ${event.value.runId}`);
            break;
          case "tableProgress":
            lines.push(`${event.value.table} → ${where(event.value.target)}: ${event.value.rowsWritten} rows written`);
            break;
          case "tableFinished":
            lines.push(
              `${event.value.table} → ${where(event.value.target)}: ${outcome(event.value.outcome)}, ${event.value.rowsWritten} rows written` +
                (event.value.error ? ` (${event.value.error.message})` : ""),
            );
            break;
          case "error":
            lines.push(`${event.value.table} → ${where(event.value.target)}: ${event.value.error?.message ?? "error"}`);
            break;
          case "runFinished":
            lines.push(`finished: ${outcome(event.value.outcome)}, ${event.value.rowsWritten} rows written`);
            break;
        }
        show();
      }
    } catch (e) {
      setError(describeError(e));
    } finally {
      setRunning(null);
      await load();
    }
  }

  return (
    <section class="replication" aria-label="Replication jobs">
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      {jobs.length === 0 && <p>No replication jobs.</p>}
      {jobs.map((job) => {
        const status = statuses.find((s) => s.jobId === job.id);
        return (
          <article key={job.id} class="job" aria-label={`Job ${job.name}`} data-job={job.name}>
            <h2>{job.name}</h2>
            <p>
              {where(job.source)} → {job.targets.map(where).join(", ")}: {job.tables.join(", ")} by {job.syncKey || "key"},{" "}
              {job.enabled ? "scheduled" : "not scheduled"}
              {status && `; last run ${outcome(status.lastOutcome) || "never"}`}
            </p>
            {props.session.role === Role.MASTER && (
              <button type="button" disabled={running !== null} onClick={() => void run(job)}>
                Run {job.name}
              </button>
            )}
            {progress[job.id] && (
              <ol class="progress" aria-label="Progress" data-testid="progress">
                {progress[job.id].map((line, i) => (
                  <li key={i}>{line}</li>
                ))}
              </ol>
            )}
            {status && status.tables.length > 0 && (
              <table class="status">
                <thead>
                  <tr>
                    <th scope="col">Table</th>
                    <th scope="col">Target</th>
                    <th scope="col">Outcome</th>
                    <th scope="col">Lag</th>
                    <th scope="col">Lag while open</th>
                    <th scope="col">Source rows</th>
                    <th scope="col">Target rows</th>
                  </tr>
                </thead>
                <tbody>
                  {status.tables.map((t, i) => (
                    <tr key={i} data-target={where(t.target)}>
                      <td>{t.table}</td>
                      <td>{where(t.target)}</td>
                      <td>{outcome(t.lastOutcome)}</td>
                      <td>{t.lagText}</td>
                      <td>
                        <LagChart samples={lags[`${job.id} ${t.table} ${where(t.target)}`] ?? []} />
                      </td>
                      <td>{t.sourceRowCount?.toString() ?? ""}</td>
                      <td>{t.targetRowCount?.toString() ?? ""}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </article>
        );
      })}
    </section>
  );
}
