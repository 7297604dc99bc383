//! libpg_query's sources redirect fd 2 around each call (compiled out in
//! pg_query 18.1, see `src/engine.rs`); concurrent callers must not leave the
//! process's stderr pointing somewhere else, whether the crate runs
//! libpg_query on their thread (a large stack) or on its parser thread.

#[cfg(target_os = "linux")]
#[test]
fn concurrent_analysis_leaves_stderr_alone() {
    let stderr_before = std::fs::read_link("/proc/self/fd/2").expect("fd 2 is open");
    let workers = (0..8)
        .map(|i| {
            let stack = if i % 2 == 0 { 2 } else { 16 } * 1024 * 1024;
            std::thread::Builder::new().stack_size(stack).spawn(move || {
                for j in 0..150 {
                    let sql = if (i + j) % 3 == 0 {
                        "SELEC broken"
                    } else {
                        "SELECT nextval('s'); DELETE FROM t"
                    };
                    let _ = pgfleet_sqlcheck::analyze(sql);
                    let _ = pgfleet_sqlcheck::split(sql);
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("workers start");
    for worker in workers {
        worker.join().expect("worker finished");
    }
    assert_eq!(
        std::fs::read_link("/proc/self/fd/2").expect("fd 2 is open"),
        stderr_before
    );
}
