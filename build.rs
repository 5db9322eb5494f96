//! Records what the binary was built from, so env.json says so: the commit (and whether
//! the tree had uncommitted changes), rustc, RUSTFLAGS and the profile. Asking git at run
//! time would record whatever checkout the current directory happens to be.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown (not built from a git checkout)".into(),
    };
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default().replace('\u{1f}', " ");
    println!("cargo:rustc-env=RINGBENCH_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=RINGBENCH_BUILD_RUSTC={version}");
    println!("cargo:rustc-env=RINGBENCH_BUILD_RUSTFLAGS={rustflags}");
    println!("cargo:rustc-env=RINGBENCH_BUILD_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
    // The commit and the dirty flag change with the sources and with git's own state.
    for p in ["src", "backends", "bench", "tests", "examples", "Cargo.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    for p in [".git/HEAD", ".git/index", ".git/refs"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
}
