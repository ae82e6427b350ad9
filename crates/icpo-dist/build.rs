//! Links libtorch (see icpo-build) and compiles `csrc/store.cpp`, the C interface to c10d's
//! TCPStore, against the headers beside it (cfg `icpo_c10d`; without libtorch, as with the
//! `doc-only` feature, only world size 1 is available).

use std::path::Path;

fn main() {
    icpo_build::link_libtorch();
    println!("cargo::rustc-check-cfg=cfg(icpo_c10d)");
    println!("cargo::rustc-check-cfg=cfg(icpo_nccl)");
    for f in ["csrc/store.cpp", "csrc/store.h", "csrc/nccl.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let c10d = "torch/csrc/distributed/c10d/TCPStore.hpp";
    let Some(build) = icpo_build::shim_build(c10d, "only world size 1") else {
        return;
    };
    build.clone().file("csrc/store.cpp").compile("icpo_c10d");
    println!("cargo:rustc-cfg=icpo_c10d");
    // NCCL: the wheel's nccl.h and CUDA headers (with CCCL's and crt/, which
    // scripts/setup-libtorch installs), beside the torch package.
    let Some(root) =
        icpo_build::libtorch_include_dir().and_then(|i| i.parent().map(Path::to_path_buf))
    else {
        return;
    };
    let torch_dir = root.canonicalize().unwrap_or_else(|_| root.clone());
    let nvidia = torch_dir.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    let (cuda, nccl) = (nvidia.join("cu13/include"), nvidia.join("nccl/include"));
    println!("cargo:rerun-if-changed={}", cuda.join("nv/target").display());
    if !(cuda.join("nv/target").exists()
        && cuda.join("crt/host_config.h").exists()
        && nccl.join("nccl.h").exists())
    {
        println!("cargo:warning=no CUDA/NCCL headers under {}: icpo-dist built without NCCL (scripts/setup-libtorch installs them)", nvidia.display());
        return;
    }
    let mut build = build;
    build.file("csrc/nccl.cpp").include(&cuda).include(&nccl).compile("icpo_nccl");
    println!("cargo:rustc-cfg=icpo_nccl");
}
