//! `sqlx::migrate!` embeds `migrations/` at compile time; rebuild when a
//! migration is added or changed.
//!
//! The web console's built files (`console/dist`, src/console.rs) are
//! embedded in release builds: rebuild when they change, or, while there
//! are none, when `console/` changes (a first `npm run build` creates them).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
    if std::path::Path::new("../../console/dist").is_dir() {
        println!("cargo:rerun-if-changed=../../console/dist");
    } else {
        println!("cargo:rerun-if-changed=../../console");
    }
}
