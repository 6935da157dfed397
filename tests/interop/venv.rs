//! The Python virtualenv with Twisted that the interop tests run their peers in, shared by
//! `tests/amp_interop.rs`, `tests/twisted_pb_interop.rs` and `pb-proto/tests/twisted_jelly.rs`
//! (included with `#[path]`).
//!
//! It is built under `target/pb-interop-venv` the first time (once per test process, reused
//! when complete, as its marker file says) from `python3`, or from `$PB_INTEROP_PYTHON`. If
//! python3, the virtualenv or the install is missing, the tests that need it fail; they never
//! skip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The pinned Twisted.
pub const TWISTED: &str = "twisted[tls]==26.10.0";

fn run_checked(cmd: &mut std::process::Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn bootstrap_venv() -> Result<PathBuf, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .ok_or("no target directory")?
        .to_path_buf();
    let venv = target.join("pb-interop-venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join(".pb-interop-complete");
    if python.exists()
        && let Ok(found) = std::fs::read_to_string(&marker)
        && found == TWISTED
    {
        return Ok(python);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).map_err(|e| format!("cannot clear {venv:?}: {e}"))?;
    }
    // PB_INTEROP_PYTHON picks another interpreter to build the virtualenv from.
    let base = std::env::var_os("PB_INTEROP_PYTHON").unwrap_or_else(|| "python3".into());
    run_checked(
        std::process::Command::new(&base)
            .args(["-m", "venv"])
            .arg(&venv),
        "python3 -m venv (python3 with the venv module is required for the interop tests)",
    )?;
    run_checked(
        std::process::Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            TWISTED,
        ]),
        "pip install twisted",
    )?;
    run_checked(
        std::process::Command::new(&python).args([
            "-c",
            "import twisted, OpenSSL; assert twisted.__version__ == '26.10.0', twisted.__version__",
        ]),
        "checking the installed twisted",
    )?;
    std::fs::write(&marker, TWISTED).map_err(|e| format!("cannot write {marker:?}: {e}"))?;
    Ok(python)
}

/// The virtualenv's python, built once per test process; a failure fails every caller.
pub fn python() -> PathBuf {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(bootstrap_venv) {
        Ok(p) => p.clone(),
        Err(e) => panic!("cannot set up the python environment with Twisted: {e}"),
    }
}
