// Users and API keys (MASTER only: the page is not offered to others, and
// the server refuses their calls anyway).
import { useEffect, useState } from "preact/hooks";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { auth, describeError } from "./api.js";
import type { ApiKey, User } from "./gen/pgfleet/v1/auth_pb.js";
import { Role } from "./gen/pgfleet/v1/common_pb.js";

const ROLES = [Role.READER, Role.USER, Role.MASTER];

function date(t: Timestamp | undefined): string {
  return t ? timestampDate(t).toISOString().replace("T", " ").slice(0, 16) : "";
}

export function AccessPage() {
  const [users, setUsers] = useState<User[]>([]);
  const [keys, setKeys] = useState<ApiKey[]>([]);
  const [error, setError] = useState("");
  const [secret, setSecret] = useState("");

  async function load() {
    try {
      const [u, k] = await Promise.all([auth.listUsers({ pageSize: 100 }), auth.listApiKeys({ pageSize: 100, includeInactive: true })]);
      setUsers(u.users);
      setKeys(k.apiKeys);
    } catch (e) {
      setError(describeError(e));
    }
  }
  useEffect(() => {
    void load();
  }, []);

  async function act(action: () => Promise<unknown>) {
    setError("");
    try {
      await action();
      await load();
    } catch (e) {
      setError(describeError(e));
    }
  }

  return (
    <section class="access" aria-label="Users and API keys">
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      <h2>Users</h2>
      <table class="users">
        <thead>
          <tr>
            <th scope="col">Username</th>
            <th scope="col">Name</th>
            <th scope="col">Email</th>
            <th scope="col">Role</th>
            <th scope="col">Active</th>
            <th scope="col">Last login</th>
          </tr>
        </thead>
        <tbody>
          {users.map((u) => (
            <tr key={u.id}>
              <td>{u.username}</td>
              <td>{u.name}</td>
              <td>{u.email}</td>
              <td>
                <RoleSelect
                  value={u.role}
                  label={`Role of ${u.username}`}
                  onChange={(role) => void act(() => auth.changeRole({ username: u.username, role }))}
                />
              </td>
              <td>
                {u.active ? "yes" : "no"}{" "}
                <button
                  type="button"
                  onClick={() =>
                    void act(async () => {
                      const request = { usernames: [u.username] };
                      const done = u.active ? await auth.deactivateUsers(request) : await auth.activateUsers(request);
                      const refused = done.results.find((r) => !r.success);
                      if (refused) throw new Error(`${refused.username}: ${refused.errorMessage}`);
                    })
                  }
                >
                  {u.active ? "Deactivate" : "Activate"} {u.username}
                </button>
              </td>
              <td>{date(u.lastLoginAt)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <CreateUser onCreate={(request) => act(() => auth.createUser(request))} />

      <h2>API keys</h2>
      <table class="keys">
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Prefix</th>
            <th scope="col">Role</th>
            <th scope="col">Targets</th>
            <th scope="col">Created</th>
            <th scope="col">Last used</th>
            <th scope="col">Revoked</th>
            <th scope="col" />
          </tr>
        </thead>
        <tbody>
          {keys.map((k) => (
            <tr key={k.id}>
              <td>{k.name}</td>
              <td>{k.keyPrefix}</td>
              <td>{Role[k.role]}</td>
              <td>{k.allowedTargets.map((t) => `${t.cloud}/${t.database}`).join(", ")}</td>
              <td>{date(k.createdAt)}</td>
              <td>{date(k.lastUsedAt)}</td>
              <td>{date(k.revokedAt)}</td>
              <td>
                {!k.revokedAt && (
                  <button type="button" onClick={() => void act(() => auth.revokeApiKey({ id: k.id }))} aria-label={`Revoke ${k.name}`}>
                    Revoke
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <CreateKey
        onCreate={(request) =>
          act(async () => {
            const created = await auth.createApiKey(request);
            setSecret(created.secret);
          })
        }
      />
      {secret && (
        <p class="secret">
          New key's secret, shown this once: <output data-testid="secret">{secret}</output>
        </p>
      )}
    </section>
  );
}

function RoleSelect(props: { value: Role; label?: string; onChange: (role: Role) => void }) {
  return (
    <select
      name="role"
      aria-label={props.label}
      value={String(props.value)}
      onChange={(e) => props.onChange(Number(e.currentTarget.value) as Role)}
    >
      {ROLES.map((r) => (
        <option key={r} value={String(r)}>
          {Role[r]}
        </option>
      ))}
    </select>
  );
}

function CreateUser(props: {
  onCreate: (request: { username: string; email: string; name: string; password: string; role: Role }) => Promise<void>;
}) {
  const [username, setUsername] = useState("");
  const [email, setEmail] = useState("");
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState(Role.READER);
  return (
    <form
      class="filters"
      aria-label="New user"
      onSubmit={(e) => {
        e.preventDefault();
        void props.onCreate({ username, email, name, password, role }).then(() => setPassword(""));
      }}
    >
      <label>
        New username <input required value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
      </label>
      <label>
        Email <input type="email" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
      </label>
      <label>
        Full name <input required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </label>
      <label>
        Initial password{" "}
        <input type="password" autocomplete="new-password" required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
      </label>
      <label>
        Role <RoleSelect value={role} onChange={setRole} />
      </label>
      <button type="submit">Create user</button>
    </form>
  );
}

function CreateKey(props: {
  onCreate: (request: { name: string; role: Role; allowedTargets: { cloud: string; database: string }[] }) => Promise<void>;
}) {
  const [name, setName] = useState("");
  const [role, setRole] = useState(Role.READER);
  const [targets, setTargets] = useState("*/*");
  return (
    <form
      class="filters"
      aria-label="New API key"
      onSubmit={(e) => {
        e.preventDefault();
        const allowedTargets = targets
          .split(",")
          .map((t) => t.trim())
          .filter(Boolean)
          .map((t) => {
            const [cloud, database = "*"] = t.split("/");
            return { cloud, database };
          });
        void props.onCreate({ name, role, allowedTargets });
      }}
    >
      <label>
        Key name <input required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </label>
      <label>
        Role <RoleSelect value={role} onChange={setRole} />
      </label>
      <label>
        Targets (cloud/database, …) <input value={targets} onInput={(e) => setTargets(e.currentTarget.value)} />
      </label>
      <button type="submit">Create key</button>
    </form>
  );
}
