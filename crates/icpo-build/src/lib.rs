//! Build-script helper shared by the icpo-rs crates that link libtorch.
//!
//! `cargo:rustc-link-arg` only reaches the targets of the package whose build script prints it,
//! so every crate with tests, examples or binaries on tch calls [`link_libtorch`] from its own
//! `build.rs`. It does two things torch-sys does not:
//!
//! * embeds an rpath to libtorch's `lib/` folder, so binaries run without `LD_LIBRARY_PATH`;
//! * links `libtorch_cuda` with `--no-as-needed`. Nothing in tch references a CUDA symbol, so the
//!   default `--as-needed` drops it, and then `tch::Cuda::is_available()` is false even on a GPU.

use std::path::Path;

/// Emits the link arguments described in the crate docs.
///
/// Reads `DEP_TCH_LIBTORCH_LIB`, which torch-sys exports to crates that depend on it directly, so
/// the calling crate must list `torch-sys` among its dependencies. Does nothing when the variable
/// is absent (for example with the `doc-only` feature).
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" && target_os != "macos" {
        return;
    }
    // Resolve symlinks so the rpath stays valid however the folder was reached.
    let lib = Path::new(&lib).canonicalize().unwrap_or_else(|_| Path::new(&lib).to_path_buf());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if target_os == "linux" && lib.join("libtorch_cuda.so").exists() {
        // Appended after rustc's own libraries; push/pop-state keeps the flag local to this lib.
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--pop-state");
    }
}
