//! Prints Climatik's CRDs as YAML, or writes them into a directory.
//!
//! `crdgen` prints every document to stdout; `crdgen --out-dir DIR` writes
//! one file per CRD (the chart's `crds/` folder).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out_dir = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--out-dir" => Some(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: crdgen [--out-dir DIR]");
            return ExitCode::from(2);
        }
    };
    for (file, crd) in climatik_api::crd::all() {
        let yaml = match climatik_api::crd::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!("crdgen: cannot render {file}: {err}");
                return ExitCode::FAILURE;
            }
        };
        match &out_dir {
            Some(dir) => {
                let path = dir.join(file);
                if let Err(err) = std::fs::write(&path, yaml) {
                    eprintln!("crdgen: cannot write {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}
