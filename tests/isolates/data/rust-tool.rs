//! rust-tool: a small command-line program for WASI preview 1, in plain Rust std.
//!
//! The test suite runs it through /v1/wasi/run to check that a Rust program built
//! with the ordinary toolchain (target wasm32-wasi, i.e. preview 1) runs unchanged:
//! arguments, environment, stdin/stdout/stderr, files, directories and exit codes.
//! go-tool.go implements the same commands in Go.
//!
//!   args A B ...      print each argument (argv[0] included) on its own line
//!   env NAME ...      print NAME=value for each name; exit 3 if one is unset
//!   upper             copy stdin to stdout in upper case
//!   upper SRC DST     write SRC in upper case to DST, creating DST's directories
//!   cat PATH          print a file; exit 1 with a message on stderr if it can't
//!   ls [DIR]          print a directory's entries, sorted, one per line
//!   rm PATH           remove a file
//!   exit N [MSG]      print MSG on stderr and exit with status N

use std::env;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process;

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("rust-tool: {}", msg);
    process::exit(code);
}

fn upper(data: &[u8]) -> Vec<u8> {
    data.to_ascii_uppercase()
}

fn main() {
    let args: Vec<String> = env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let rest = if args.len() > 2 { &args[2..] } else { &[] };
    let mut out = io::stdout().lock();
    match (cmd, rest.len()) {
        ("args", _) => {
            for a in &args {
                writeln!(out, "{}", a).unwrap();
            }
        }
        ("env", _) => {
            let mut missing = false;
            for name in rest {
                match env::var(name) {
                    Ok(v) => writeln!(out, "{}={}", name, v).unwrap(),
                    Err(_) => missing = true,
                }
            }
            if missing {
                out.flush().unwrap();
                fail(3, "some variables are unset");
            }
        }
        ("upper", 0) => {
            let mut data = Vec::new();
            io::stdin().read_to_end(&mut data).unwrap_or_else(|e| fail(1, &format!("stdin: {}", e)));
            out.write_all(&upper(&data)).unwrap();
        }
        ("upper", 2) => {
            let data = fs::read(&rest[0]).unwrap_or_else(|e| fail(1, &format!("{}: {}", rest[0], e)));
            if let Some(dir) = Path::new(&rest[1]).parent() {
                fs::create_dir_all(dir).unwrap_or_else(|e| fail(1, &format!("{}: {}", dir.display(), e)));
            }
            fs::write(&rest[1], upper(&data)).unwrap_or_else(|e| fail(1, &format!("{}: {}", rest[1], e)));
        }
        ("cat", 1) => {
            let data = fs::read(&rest[0]).unwrap_or_else(|e| fail(1, &format!("{}: {}", rest[0], e)));
            out.write_all(&data).unwrap();
        }
        ("ls", 0) | ("ls", 1) => {
            let dir = rest.get(0).map(String::as_str).unwrap_or(".");
            let entries = fs::read_dir(dir).unwrap_or_else(|e| fail(1, &format!("{}: {}", dir, e)));
            let mut names: Vec<String> = entries
                .map(|e| e.unwrap_or_else(|e| fail(1, &format!("{}: {}", dir, e))))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                writeln!(out, "{}", n).unwrap();
            }
        }
        ("rm", 1) => {
            fs::remove_file(&rest[0]).unwrap_or_else(|e| fail(1, &format!("{}: {}", rest[0], e)));
        }
        ("exit", 1) | ("exit", 2) => {
            let code: i32 = rest[0].parse().unwrap_or_else(|_| fail(2, "exit needs a number"));
            if let Some(msg) = rest.get(1) {
                eprintln!("{}", msg);
            }
            out.flush().unwrap();
            process::exit(code);
        }
        _ => fail(2, "usage: rust-tool args|env|upper|cat|ls|rm|exit ..."),
    }
}
