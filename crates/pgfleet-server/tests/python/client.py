#!/usr/bin/env python3
"""End-to-end check of a running pgfleet server from another language.

Generates Python stubs (grpcio) from the repository's proto files at run time,
then drives the real server: AuthService.Login and Me, QueryService.Validate,
Execute and ExecuteStream, HistoryService.GetExecution and ListExecutions for
the Execute (the server records reads), and a CreateUser that a READER must be
refused.

Usage: client.py [ADDRESS]
  ADDRESS             host:port of the server (default: $PGFLEET_ADDR)
  $PGFLEET_USERNAME   a READER user's username
  $PGFLEET_PASSWORD   that user's password

Prints a JSON summary on stdout; exits 1 with a message on stderr when a
check fails.
"""

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO_ROOT = (Path(__file__).resolve().parent / "../../../../proto").resolve()
CALL_TIMEOUT = 60.0  # seconds, per RPC


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def generate_stubs(out_dir):
    """Runs grpc_tools.protoc on every pgfleet proto into `out_dir`."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "pgfleet" / "v1").glob("*.proto"))
    check(protos, f"no .proto files under {PROTO_ROOT}/pgfleet/v1")
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    code = protoc.main(args)
    check(code == 0, f"grpc_tools.protoc failed with exit code {code}: {' '.join(args)}")
    return protos


def load(module):
    return importlib.import_module(module)


def target_key(target):
    return f"{target.cloud}/{target.database}"


def run(address, username, password):
    summary = {"address": address}
    with tempfile.TemporaryDirectory(prefix="pgfleet-py-") as out_dir:
        summary["generated_from"] = generate_stubs(out_dir)
        sys.path.insert(0, out_dir)
        try:
            auth_pb2 = load("pgfleet.v1.auth_pb2")
            auth_grpc = load("pgfleet.v1.auth_pb2_grpc")
            common_pb2 = load("pgfleet.v1.common_pb2")
            query_pb2 = load("pgfleet.v1.query_pb2")
            query_grpc = load("pgfleet.v1.query_pb2_grpc")
            history_pb2 = load("pgfleet.v1.history_pb2")
            history_grpc = load("pgfleet.v1.history_pb2_grpc")
        finally:
            sys.path.remove(out_dir)

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        auth = auth_grpc.AuthServiceStub(channel)
        query = query_grpc.QueryServiceStub(channel)
        history = history_grpc.HistoryServiceStub(channel)

        # --- AuthService.Login / Me ----------------------------------------
        login = auth.Login(auth_pb2.LoginRequest(username=username, password=password), timeout=CALL_TIMEOUT)
        check(login.token, "Login returned an empty token")
        check(login.user.username == username, f"Login user is {login.user.username!r}, not {username!r}")
        check(login.HasField("expires_at"), "Login has no expires_at")
        creds = [("authorization", f"Bearer {login.token}")]

        me = auth.Me(auth_pb2.MeRequest(), metadata=creds, timeout=CALL_TIMEOUT)
        check(me.WhichOneof("principal") == "user", f"Me principal is {me.WhichOneof('principal')!r}")
        check(me.user.username == username, f"Me says {me.user.username!r}, not {username!r}")
        check(me.role == common_pb2.ROLE_READER, f"Me role is {common_pb2.Role.Name(me.role)}")
        check(me.HasField("session_expires_at"), "Me has no session_expires_at for a session")
        summary["me"] = {"username": me.user.username, "role": common_pb2.Role.Name(me.role)}

        # --- QueryService.Validate -----------------------------------------
        validated = query.Validate(
            query_pb2.ValidateRequest(query="SELECT 1;\nSELEC 2"), metadata=creds, timeout=CALL_TIMEOUT
        )
        check(not validated.valid, "Validate said 'SELECT 1; SELEC 2' is valid")
        error = validated.parse_error
        check(
            (error.line, error.column) == (2, 1),
            f"parse error at line {error.line}, column {error.column}, expected 2, 1: {error.message!r}",
        )
        check("SELEC" in error.message, f"parse error message does not name SELEC: {error.message!r}")
        check(not validated.statements, "an invalid query listed statements")
        summary["validate"] = {"line": error.line, "column": error.column, "message": error.message}

        # --- QueryService.Execute --------------------------------------------
        executed = query.Execute(
            query_pb2.ExecuteRequest(
                query="SELECT 41 + 1 AS answer, now()::date AS today",
                database="app",
                all_clouds=query_pb2.AllClouds(),
            ),
            metadata=creds,
            timeout=CALL_TIMEOUT,
        )
        check(executed.execution_id, "Execute returned no execution_id")
        targets = [target_key(r.target) for r in executed.results]
        check(sorted(targets) == ["aws/app", "gcp/app"], f"Execute ran on {targets}")
        for result in executed.results:
            key = target_key(result.target)
            check(result.success, f"Execute failed on {key}: {result.error}")
            check(len(result.statements) == 1, f"{key}: {len(result.statements)} statement results")
            statement = result.statements[0]
            check(statement.command_tag == "SELECT 1", f"{key}: command tag {statement.command_tag!r}")
            names = [c.name for c in statement.columns]
            check(names == ["answer", "today"], f"{key}: columns {names}")
            check(len(statement.rows) == 1, f"{key}: {len(statement.rows)} rows")
            answer, today = statement.rows[0].cells
            check(
                answer.WhichOneof("kind") == "int_value" and answer.int_value == 42,
                f"{key}: answer cell is {answer}",
            )
            check(
                today.WhichOneof("kind") == "formatted_value"
                and re.fullmatch(r"\d{4}-\d{2}-\d{2}", today.formatted_value),
                f"{key}: today cell is {today}",
            )
        check(executed.success, "Execute: every target succeeded but success is false")
        summary["execute"] = {
            "execution_id": executed.execution_id,
            "targets": targets,
            "today": executed.results[0].statements[0].rows[0].cells[1].formatted_value,
        }

        # --- HistoryService: the Execute above is on record ------------------
        record = history.GetExecution(
            history_pb2.GetExecutionRequest(id=executed.execution_id), metadata=creds, timeout=CALL_TIMEOUT
        ).execution
        check(record.id == executed.execution_id, f"GetExecution returned {record.id!r}")
        check(record.actor.username == username, f"recorded actor {record.actor}")
        check(
            record.status == history_pb2.EXECUTION_STATUS_SUCCEEDED,
            f"recorded status {history_pb2.ExecutionStatus.Name(record.status)}",
        )
        recorded = sorted(target_key(o.target) for o in record.outcomes)
        check(recorded == ["aws/app", "gcp/app"], f"recorded outcomes for {recorded}")
        check(all(o.command_tags == ["SELECT 1"] for o in record.outcomes), f"outcomes {record.outcomes}")
        check(record.opened.sequence > 0 and len(record.closed.hash) == 64, f"chain links {record.opened} {record.closed}")
        listed = history.ListExecutions(
            history_pb2.ListExecutionsRequest(page_size=10), metadata=creds, timeout=CALL_TIMEOUT
        )
        check(
            [r.id for r in listed.executions] == [executed.execution_id],
            f"ListExecutions shows {[r.id for r in listed.executions]}",
        )
        summary["history"] = {
            "status": history_pb2.ExecutionStatus.Name(record.status),
            "total_count": listed.total_count,
        }

        # --- QueryService.ExecuteStream --------------------------------------
        events = query.ExecuteStream(
            query_pb2.ExecuteStreamRequest(
                query="SELECT g FROM generate_series(1, 2000) g",
                database="app",
                all_clouds=query_pb2.AllClouds(),
                batch_size=100,
            ),
            metadata=creds,
            timeout=CALL_TIMEOUT,
        )
        kinds = []
        finished = None
        per_target = {}  # key -> {"phases": [...], "values": [...], "batches": n, ...}

        def state(target):
            return per_target.setdefault(
                target_key(target), {"phases": [], "values": [], "batches": 0, "summary": None}
            )

        for event in events:
            kind = event.WhichOneof("event")
            kinds.append(kind)
            if kind == "execution_started":
                started = [target_key(t) for t in event.execution_started.targets]
                check(sorted(started) == ["aws/app", "gcp/app"], f"ExecutionStarted targets {started}")
            elif kind == "target_started":
                state(event.target_started.target)["phases"].append("started")
            elif kind == "result_header":
                s = state(event.result_header.target)
                s["phases"].append("header")
                names = [c.name for c in event.result_header.columns]
                check(names == ["g"], f"ResultHeader columns {names}")
            elif kind == "row_batch":
                batch = event.row_batch
                s = state(batch.target)
                s["phases"].append("rows")
                s["batches"] += 1
                check(
                    0 < len(batch.rows) <= 100,
                    f"{target_key(batch.target)}: a RowBatch of {len(batch.rows)} rows (batch_size 100)",
                )
                for row in batch.rows:
                    (cell,) = row.cells
                    check(cell.WhichOneof("kind") == "int_value", f"row cell is {cell}")
                    s["values"].append(cell.int_value)
            elif kind == "statement_summary":
                summary_event = event.statement_summary
                s = state(summary_event.target)
                s["phases"].append("statement_summary")
                check(
                    summary_event.command_tag == "SELECT 2000" and summary_event.rows_affected == 2000,
                    f"{target_key(summary_event.target)}: StatementSummary {summary_event}",
                )
            elif kind == "target_summary":
                s = state(event.target_summary.target)
                s["phases"].append("target_summary")
                s["summary"] = event.target_summary
            elif kind == "execution_finished":
                finished = event.execution_finished
            else:
                raise CheckFailed(f"unknown stream event {kind!r}")

        check(kinds, "ExecuteStream sent no event")
        check(kinds[0] == "execution_started", f"first event is {kinds[0]!r}")
        check(kinds[-1] == "execution_finished", f"last event is {kinds[-1]!r}")
        check(kinds.count("execution_started") == 1, "more than one ExecutionStarted")
        check(kinds.count("execution_finished") == 1, "more than one ExecutionFinished")
        check(sorted(per_target) == ["aws/app", "gcp/app"], f"stream events for {sorted(per_target)}")
        rows = {}
        for key, s in per_target.items():
            # Collapse consecutive row batches: the per-target order must be
            # started, header, rows..., statement summary, target summary.
            phases = s["phases"]
            phases = [p for i, p in enumerate(phases) if p != "rows" or i == 0 or phases[i - 1] != "rows"]
            check(
                phases == ["started", "header", "rows", "statement_summary", "target_summary"],
                f"{key}: events in order {s['phases']}",
            )
            check(
                s["values"] == list(range(1, 2001)),
                f"{key}: {len(s['values'])} rows, expected 1..2000 in order",
            )
            check(s["summary"].success, f"{key}: TargetSummary not successful: {s['summary'].error}")
            rows[key] = len(s["values"])
        check(finished.success, "ExecutionFinished.success is false although every target succeeded")
        summary["stream"] = {
            "events": len(kinds),
            "rows": rows,
            "batches": {k: s["batches"] for k, s in per_target.items()},
        }

        # --- AuthService.CreateUser as a READER ----------------------------
        try:
            auth.CreateUser(
                auth_pb2.CreateUserRequest(
                    username="py-not-allowed",
                    email="py-not-allowed@example.com",
                    name="Not Allowed",
                    password="Long-enough-password-1",
                    role=common_pb2.ROLE_READER,
                ),
                metadata=creds,
                timeout=CALL_TIMEOUT,
            )
        except grpc.RpcError as denied:
            check(
                denied.code() == grpc.StatusCode.PERMISSION_DENIED,
                f"CreateUser as READER gave {denied.code().name}: {denied.details()}",
            )
            summary["create_user_as_reader"] = denied.code().name
        else:
            raise CheckFailed("CreateUser as READER succeeded")

    return summary


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("address", nargs="?", default=os.environ.get("PGFLEET_ADDR"))
    args = parser.parse_args()
    username = os.environ.get("PGFLEET_USERNAME")
    password = os.environ.get("PGFLEET_PASSWORD")
    given = [
        ("ADDRESS or $PGFLEET_ADDR", args.address),
        ("$PGFLEET_USERNAME", username),
        ("$PGFLEET_PASSWORD", password),
    ]
    missing = [name for name, value in given if not value]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    try:
        summary = run(args.address, username, password)
    except CheckFailed as failure:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"RPC FAILED: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
