// Backups: each covered target's health (DEGRADED first and marked), the
// policies, recent backups with Verify, and, for a MASTER, a policy run now
// with its progress as it streams. Nothing destructive: restores and deletes
// stay with grpcurl and the CLI, where they ask for confirm_dangerous.
import { useEffect, useState } from "preact/hooks";
import { backup, describeError } from "./api.js";
import type { Session } from "./app.js";
import {
  type Backup,
  BackupFormat,
  BackupHealthState,
  type BackupPolicy,
  BackupStatus,
  type BackupTargets,
  type TargetBackupHealth,
} from "./gen/pgfleet/v1/backup_pb.js";
import { Role } from "./gen/pgfleet/v1/common_pb.js";
import { bytes, duration, when, where } from "./format.js";

const REFRESH_MS = 30_000;
const state = (s: BackupHealthState) => BackupHealthState[s] ?? "";

function policyTargets(targets: BackupTargets | undefined): string {
  const s = targets?.selection;
  switch (s?.case) {
    case "allCloudsDatabase":
      return `${s.value} on every cloud`;
    case "cloudDatabase":
      return where(s.value);
    case "targets":
      return s.value.targets.map(where).join(", ");
    default:
      return "";
  }
}

function retention(p: BackupPolicy): string {
  const r = p.retention;
  if (!r) return "";
  const parts = [
    r.keepLast && `last ${r.keepLast}`,
    r.keepWithin && `within ${duration(r.keepWithin)}`,
    r.keepDaily && `${r.keepDaily} daily`,
    r.keepWeekly && `${r.keepWeekly} weekly`,
    r.keepMonthly && `${r.keepMonthly} monthly`,
  ];
  return parts.filter(Boolean).join(", ");
}

export function BackupsPage(props: { session: Session }) {
  const [health, setHealth] = useState<TargetBackupHealth[]>([]);
  const [policies, setPolicies] = useState<BackupPolicy[]>([]);
  const [backups, setBackups] = useState<Backup[]>([]);
  const [error, setError] = useState("");
  const [progress, setProgress] = useState<Record<string, string[]>>({});
  const [running, setRunning] = useState<string | null>(null);
  // By backup id: "Verified: …" or the server's refusal.
  const [verified, setVerified] = useState<Record<string, string>>({});
  const [verifying, setVerifying] = useState<string | null>(null);
  const [loadedAt, setLoadedAt] = useState("");
  // RunBackup is MASTER's; VerifyBackup everyone's (auth/access.rs).
  const mayRun = props.session.role === Role.MASTER;

  async function load() {
    try {
      const [h, p, b] = await Promise.all([
        backup.getBackupHealth({}),
        backup.listPolicies({ pageSize: 100 }),
        backup.listBackups({ includeFailed: true, pageSize: 50 }),
      ]);
      // The targets that need someone first.
      setHealth(
        [...h.targets].sort(
          (x, y) =>
            Number(y.state === BackupHealthState.DEGRADED) - Number(x.state === BackupHealthState.DEGRADED) ||
            where(x.target).localeCompare(where(y.target)),
        ),
      );
      setPolicies(p.policies);
      setBackups(b.backups);
      setError("");
      setLoadedAt(new Date().toLocaleTimeString());
    } catch (e) {
      setError(describeError(e));
    }
  }
  useEffect(() => {
    void load();
    const timer = setInterval(() => void load(), REFRESH_MS);
    return () => clearInterval(timer);
  }, []);

  async function runNow(policy: BackupPolicy) {
    setError("");
    setRunning(policy.id);
    const lines: string[] = [];
    const show = () => setProgress((p) => ({ ...p, [policy.id]: [...lines] }));
    // One line per target, replaced as its bytes grow: a stream of progress
    // events would otherwise bury the outcomes.
    const progressLine = new Map<string, number>();
    try {
      for await (const response of backup.runBackup({ policyId: policy.id })) {
        const event = response.event;
        switch (event.case) {
          case "started":
            progressLine.set(where(event.value.target), lines.length);
            lines.push(`${where(event.value.target)}: started`);
            break;
          case "progress": {
            const text = `${where(event.value.target)}: ${bytes(event.value.bytesRead)} read, ${bytes(event.value.bytesWritten)} written`;
            const at = progressLine.get(where(event.value.target));
            if (at === undefined) lines.push(text);
            else lines[at] = text;
            break;
          }
          case "finished":
            lines.push(
              event.value.error
                ? `${where(event.value.target)}: FAILED (${event.value.error})`
                : `${where(event.value.target)}: SUCCEEDED, ${bytes(event.value.backup?.storedBytes ?? 0n)} stored`,
            );
            break;
          case "done":
            lines.push(`done: ${event.value.succeeded} succeeded, ${event.value.failed} failed`);
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

  async function verify(b: Backup) {
    setVerifying(b.id);
    let text: string;
    try {
      const v = await backup.verifyBackup({ id: b.id });
      text = `Verified: ${bytes(v.storedBytes)} stored, ${bytes(v.rawBytes)} raw`;
    } catch (e) {
      text = describeError(e);
    }
    setVerified((before) => ({ ...before, [b.id]: text }));
    setVerifying(null);
  }

  return (
    <section class="backups" aria-label="Backups">
      <div class="actions">
        <button type="button" onClick={() => void load()}>
          Refresh
        </button>
        <span role="status">{loadedAt && `Loaded ${loadedAt}`}</span>
      </div>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}

      <h2>Health</h2>
      {health.length === 0 ? (
        <p>No target is covered by a policy.</p>
      ) : (
        <div class="grid">
          <table data-testid="backup-health">
            <thead>
              <tr>
                <th scope="col">Target</th>
                <th scope="col">State</th>
                <th scope="col">Last success</th>
                <th scope="col">Age</th>
                <th scope="col">Max age</th>
                <th scope="col">Failures since</th>
              </tr>
            </thead>
            <tbody>
              {health.map((h) => (
                <tr
                  key={where(h.target)}
                  data-target={where(h.target)}
                  data-state={state(h.state)}
                  class={h.state === BackupHealthState.DEGRADED ? "degraded" : undefined}
                >
                  <td>{where(h.target)}</td>
                  <td>
                    <span class={`dot ${state(h.state).toLowerCase()}`} aria-hidden="true" /> {state(h.state)}
                  </td>
                  <td>{h.lastSuccess ? when(h.lastSuccess.finishTime) : "never"}</td>
                  <td>{h.lastSuccess ? duration(h.age) : ""}</td>
                  <td>{duration(h.maxAge)}</td>
                  <td>{h.failuresSinceSuccess.toString()}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}

      <h2>Policies</h2>
      {policies.length === 0 && <p>No backup policies.</p>}
      {policies.map((p) => (
        <article key={p.id} class="policy" aria-label={`Policy ${p.name}`} data-policy={p.name}>
          <h3>{p.name}</h3>
          <p>
            {policyTargets(p.targets)}; {p.enabled ? `schedule ${p.schedule} (${p.timeZone || "UTC"})` : "not scheduled"};{" "}
            {BackupFormat[p.format]?.toLowerCase() ?? ""}
            {retention(p) && `; keeps ${retention(p)}`}
            {p.maxAge && `; max age ${duration(p.maxAge)}`}
            {p.enabled && p.nextRunTime && `; next ${when(p.nextRunTime)}`}
          </p>
          {mayRun && (
            <button type="button" disabled={running !== null} onClick={() => void runNow(p)}>
              Run {p.name} now
            </button>
          )}
          {progress[p.id] && (
            <ol class="progress" aria-label="Progress" data-testid="backup-progress">
              {progress[p.id].map((line, i) => (
                <li key={i}>{line}</li>
              ))}
            </ol>
          )}
        </article>
      ))}

      <h2>Recent backups</h2>
      {backups.length === 0 ? (
        <p>No backups yet.</p>
      ) : (
        <div class="grid">
          <table data-testid="backups">
            <thead>
              <tr>
                <th scope="col">Finished</th>
                <th scope="col">Target</th>
                <th scope="col">Policy</th>
                <th scope="col">Status</th>
                <th scope="col">Stored</th>
                <th scope="col">Encrypted</th>
                <th scope="col">Id</th>
                <th scope="col">Verify</th>
              </tr>
            </thead>
            <tbody>
              {backups.map((b) => (
                <tr key={b.id} data-backup={b.id} data-target={where(b.target)} class={b.status === BackupStatus.FAILED ? "failed" : undefined}>
                  <td>{when(b.finishTime || b.startTime)}</td>
                  <td>{where(b.target)}</td>
                  <td>{b.policyName || "—"}</td>
                  <td title={b.error || undefined}>{BackupStatus[b.status] ?? ""}</td>
                  <td>{b.status === BackupStatus.SUCCEEDED ? bytes(b.storedBytes) : ""}</td>
                  <td>{b.encrypted ? "yes" : "no"}</td>
                  <td>{b.id}</td>
                  <td>
                    {b.status === BackupStatus.SUCCEEDED && (
                      <button type="button" aria-label={`Verify ${b.id}`} disabled={verifying !== null} onClick={() => void verify(b)}>
                        Verify
                      </button>
                    )}{" "}
                    {verified[b.id] && (
                      <span
                        role="status"
                        data-testid="verified"
                        class={verified[b.id].startsWith("Verified") ? "badge ok" : "badge broken"}
                      >
                        {verified[b.id]}
                      </span>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
