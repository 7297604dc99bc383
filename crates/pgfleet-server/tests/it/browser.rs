//! grpc-web from a real browser, end to end: a page in headless Chromium
//! (Debian's, installed by scripts/bootstrap) calls pgfleet through
//! grpc-web from another origin and gets a result. The page
//! (tests/web/grpc_web_page.html) logs in, runs `SELECT 1+1` with the
//! bearer token, tries the same call without it, and writes what it got
//! into the DOM; Chromium's `--dump-dom` hands the DOM back. Virtual time
//! stands still while fetches are pending, so the dump comes after the
//! page's calls however long they take.

use std::convert::Infallible;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pgfleet_engine::identity::Role;
use tokio::net::TcpListener;

use crate::support::Fleet;

const PAGE: &str = include_str!("../web/grpc_web_page.html");

/// Debian's Chromium: on PATH, or where the package puts it.
fn chromium() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file());
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")).filter(|path| path.is_file()))
        .unwrap_or_else(|| {
            panic!("chromium not found: run scripts/bootstrap (it installs Debian's chromium)")
        })
}

/// Serves `page` at every path on `listener` (a tiny origin of its own).
fn serve_page(listener: TcpListener, page: String) {
    let page = Bytes::from(page);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let page = page.clone();
                    async move {
                        let response = if request.uri().path() == "/" {
                            Response::builder()
                                .header("content-type", "text/html; charset=utf-8")
                                .body(Full::new(page))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::new()))
                        };
                        Ok::<_, Infallible>(response.expect("static response"))
                    }
                });
                // A browser closing a connection early is not a test failure.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The text of the element with `id` in a dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{id}\">"))? + id.len() + 6;
    let length = dom[start..].find('<')?;
    Some(&dom[start..start + length])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_in_headless_chromium_logs_in_and_runs_sql_through_grpc_web() -> anyhow::Result<()> {
    let chromium = chromium();
    // The page's origin must be known before the server starts: it is the
    // one CORS allows.
    let page_listener = TcpListener::bind("127.0.0.1:0").await?;
    let page_origin = format!("http://{}", page_listener.local_addr()?);

    let fleet = Fleet::create().await?;
    let server = fleet
        .start(&format!("[server.cors]\nallowed_origins = ['{page_origin}']\n"))
        .await?;
    let password = fleet.create_user("browser-user", Role::Reader).await?;

    let page = PAGE
        .replace(
            "__SERVER__",
            &serde_json::to_string(&format!("http://{}", server.local_addr()))?,
        )
        .replace("__USERNAME__", &serde_json::to_string("browser-user")?)
        .replace("__PASSWORD__", &serde_json::to_string(&password)?);
    serve_page(page_listener, page);

    let profile = tempfile::tempdir()?;
    let output = tokio::process::Command::new(&chromium)
        .args([
            "--headless=new",
            // Tests run as root in CI containers, where the sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            // No traffic of Chromium's own: the machine's network is closed.
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Virtual milliseconds, spent only while the page is idle: the page
        // itself sets no timers, so the dump follows its last call.
        .arg("--virtual-time-budget=30000")
        .arg("--dump-dom")
        .arg(format!("{page_origin}/"))
        .kill_on_drop(true)
        .output()
        .await?;
    let dom = String::from_utf8_lossy(&output.stdout);
    let context = || {
        format!(
            "chromium exit {:?}\nDOM:\n{dom}\nstderr (last lines):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    assert!(output.status.success(), "{}", context());
    assert_eq!(element_text(&dom, "state"), Some("done"), "{}", context());
    assert_eq!(element_text(&dom, "error"), Some(""), "{}", context());
    assert_eq!(element_text(&dom, "user"), Some("browser-user"), "{}", context());
    assert_eq!(element_text(&dom, "success"), Some("true"), "{}", context());
    assert_eq!(element_text(&dom, "sum"), Some("2"), "{}", context());
    // Read from the exposed grpc-status header of a trailers-only response.
    assert_eq!(element_text(&dom, "denied"), Some("16"), "{}", context());

    server.shutdown().await?;
    Ok(())
}
