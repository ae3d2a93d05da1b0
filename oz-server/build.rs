//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the files of
//! `migrations/`, and the compiler tracks only the files that existed at the last build.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
