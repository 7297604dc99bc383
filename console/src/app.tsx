// The console's shell: who is logged in, the pages, logout.
import { useEffect, useState } from "preact/hooks";
import { auth, describeError, isUnauthenticated } from "./api.js";
import { Role } from "./gen/pgfleet/v1/common_pb.js";
import { AccessPage } from "./access.js";
import { BackupsPage } from "./backups.js";
import { HistoryPage } from "./history.js";
import { InsightsPage } from "./insights.js";
import { MigrationsPage } from "./migrations.js";
import { OverviewPage } from "./overview.js";
import { QueryPage } from "./query.js";
import { ReplicationPage } from "./replication.js";

/** The logged-in user as the pages need it. */
export interface Session {
  username: string;
  role: Role;
}

type Page = "query" | "history" | "fleet" | "replication" | "backups" | "migrations" | "insights" | "access";

function pageFromHash(): Page {
  const hash = window.location.hash;
  if (hash === "#/history") return "history";
  if (hash === "#/fleet") return "fleet";
  if (hash === "#/access") return "access";
  if (hash === "#/replication") return "replication";
  if (hash === "#/backups") return "backups";
  if (hash === "#/migrations") return "migrations";
  if (hash === "#/insights") return "insights";
  return "query";
}

export function App() {
  // undefined: not known yet; null: logged out.
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [page, setPage] = useState<Page>(pageFromHash());
  const [error, setError] = useState("");

  useEffect(() => {
    const onHash = () => setPage(pageFromHash());
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  async function whoAmI() {
    try {
      const me = await auth.me({});
      const username =
        me.principal.case === "user" ? me.principal.value.username : me.principal.value?.name ?? "";
      setSession({ username, role: me.role });
    } catch (e) {
      if (!isUnauthenticated(e)) setError(describeError(e));
      setSession(null);
    }
  }
  useEffect(() => {
    void whoAmI();
  }, []);

  async function logout() {
    try {
      await auth.logout({});
    } catch (e) {
      // Already gone on the server: logged out either way.
      if (!isUnauthenticated(e)) setError(describeError(e));
    }
    setSession(null);
  }

  if (session === undefined) return <p class="loading">Loading…</p>;
  if (session === null)
    return (
      <Login
        error={error}
        onLoggedIn={() => {
          setError("");
          void whoAmI();
        }}
      />
    );
  return (
    <div class="shell">
      <header>
        <strong>pgfleet</strong>
        <nav aria-label="Pages">
          <a href="#/" aria-current={page === "query" ? "page" : undefined}>
            Query
          </a>
          <a href="#/history" aria-current={page === "history" ? "page" : undefined}>
            History
          </a>
          <a href="#/fleet" aria-current={page === "fleet" ? "page" : undefined}>
            Fleet
          </a>
          <a href="#/replication" aria-current={page === "replication" ? "page" : undefined}>
            Replication
          </a>
          <a href="#/backups" aria-current={page === "backups" ? "page" : undefined}>
            Backups
          </a>
          <a href="#/migrations" aria-current={page === "migrations" ? "page" : undefined}>
            Migrations
          </a>
          <a href="#/insights" aria-current={page === "insights" ? "page" : undefined}>
            Insights
          </a>
          {session.role === Role.MASTER && (
            <a href="#/access" aria-current={page === "access" ? "page" : undefined}>
              Users and keys
            </a>
          )}
        </nav>
        <span class="who" data-testid="who">
          {session.username} ({Role[session.role]})
        </span>
        <button type="button" onClick={() => void logout()}>
          Log out
        </button>
      </header>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      <main>
        {page === "query" && <QueryPage session={session} />}
        {page === "history" && <HistoryPage session={session} />}
        {page === "fleet" && <OverviewPage />}
        {page === "replication" && <ReplicationPage session={session} />}
        {page === "backups" && <BackupsPage session={session} />}
        {page === "migrations" && <MigrationsPage />}
        {page === "insights" && <InsightsPage session={session} />}
        {page === "access" && session.role === Role.MASTER && <AccessPage />}
      </main>
    </div>
  );
}

function Login(props: { error: string; onLoggedIn: () => void }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState(props.error);
  const [busy, setBusy] = useState(false);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    try {
      // The response's cookie is the session; its token is not kept.
      await auth.login({ username, password });
      props.onLoggedIn();
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <form class="login" onSubmit={(e) => void submit(e)}>
      <h1>pgfleet console</h1>
      <label>
        Username
        <input name="username" autocomplete="username" required value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
      </label>
      <label>
        Password
        <input
          name="password"
          type="password"
          autocomplete="current-password"
          required
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
        />
      </label>
      <button type="submit" disabled={busy}>
        Log in
      </button>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
    </form>
  );
}
