//! The texts both validator benchmarks measure (this crate's `analyze`
//! bench and the server's query bench, which includes this file): short and
//! long, reads and writes.

/// See the module docs.
pub const VALIDATED: &[&str] = &[
    "SELECT id, name FROM users WHERE id = 42",
    "SELECT c.name, sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id \
     WHERE o.created_at > now() - interval '7 days' GROUP BY c.name ORDER BY 2 DESC LIMIT 10",
    "INSERT INTO audit (who, what) VALUES (current_user, 'bench') ON CONFLICT DO NOTHING",
    "UPDATE accounts SET balance = balance - 10 WHERE id = 7 RETURNING balance",
    "WITH moved AS (DELETE FROM queue WHERE run_at < now() RETURNING *) \
     INSERT INTO queue_archive SELECT * FROM moved",
];
