//! Statements validated per second: parse, split, classify and fingerprint.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SHORT: &str = "SELECT id, name FROM users WHERE id = 42";

const LONG_MIXED: &str = r#"
BEGIN;
WITH recent AS (
    SELECT o.id, o.customer_id, sum(l.amount) AS total
    FROM orders o JOIN order_lines l ON l.order_id = o.id
    WHERE o.created_at > now() - interval '7 days'
    GROUP BY o.id, o.customer_id
)
SELECT c.name, r.total, rank() OVER (ORDER BY r.total DESC)
FROM recent r JOIN customers c ON c.id = r.customer_id
WHERE r.total > 100 ORDER BY r.total DESC LIMIT 50;
WITH moved AS (DELETE FROM queue WHERE run_at < now() RETURNING *)
INSERT INTO queue_archive SELECT * FROM moved;
UPDATE accounts SET balance = balance - 10 WHERE id = 7 RETURNING balance;
INSERT INTO audit (who, what) VALUES (current_user, 'bench') ON CONFLICT DO NOTHING;
SELECT * FROM jobs WHERE state = 'ready' ORDER BY priority FOR UPDATE SKIP LOCKED LIMIT 1;
CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT a + b; END;
ALTER TABLE customers ADD COLUMN IF NOT EXISTS tier text DEFAULT 'basic';
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_tier ON customers (tier);
SELECT nextval('invoice_seq'), set_config('search_path', 'app', true);
EXPLAIN ANALYZE SELECT count(*) FROM orders;
COPY (SELECT * FROM customers) TO STDOUT WITH (FORMAT csv, HEADER);
DELETE FROM sessions;
COMMIT;
"#;

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    for (name, sql) in [("short", SHORT), ("long_mixed", LONG_MIXED)] {
        let statements = pgfleet_sqlcheck::split(sql).len();
        group.throughput(Throughput::Elements(statements as u64));
        group.bench_function(name, |b| b.iter(|| pgfleet_sqlcheck::analyze(black_box(sql))));
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
