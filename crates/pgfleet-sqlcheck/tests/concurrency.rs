//! libpg_query redirects fd 2 around each call; concurrent callers must not
//! leave the process's stderr pointing somewhere else.

#[cfg(target_os = "linux")]
#[test]
fn concurrent_analysis_leaves_stderr_alone() {
    let stderr_before = std::fs::read_link("/proc/self/fd/2").expect("fd 2 is open");
    let workers: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
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
        .collect();
    for worker in workers {
        worker.join().expect("worker finished");
    }
    assert_eq!(
        std::fs::read_link("/proc/self/fd/2").expect("fd 2 is open"),
        stderr_before
    );
}
