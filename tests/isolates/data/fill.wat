;; Fills the scratch directory without end, for the disk-limit tests.
;; args[1] = "bytes": one file "big", written 64 KiB at a time.
;; args[1] = "files": empty files f0000000, f0000001, ... (names from a counter, in hex).
;; Which one is chosen by the first byte of args[1] ("b" or "f").
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (memory (export "memory") 4)
  ;; 0: "big"; 16: "f" + 7 hex digits; 64: opened fd; 96: iovec; 128: nwritten; 256: argv; 1024: argv buffer
  (data (i32.const 0) "big")
  (data (i32.const 16) "f0000000")
  (func $mode (result i32)
    (drop (call $args_sizes_get (i32.const 200) (i32.const 204)))
    (drop (call $args_get (i32.const 256) (i32.const 1024)))
    ;; argv[1]'s first byte
    (i32.load8_u (i32.load (i32.const 260))))
  (func $bytes
    (local $fd i32)
    (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 3) (i32.const 9)
      (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 64)))
    (local.set $fd (i32.load (i32.const 64)))
    (i32.store (i32.const 96) (i32.const 65536))
    (i32.store (i32.const 100) (i32.const 65536))
    (loop $again
      (drop (call $fd_write (local.get $fd) (i32.const 96) (i32.const 1) (i32.const 128)))
      (br $again)))
  (func $files
    (local $n i32) (local $k i32) (local $digit i32)
    (loop $again
      ;; name bytes 17..23 = hex digits of $n
      (local.set $k (i32.const 0))
      (loop $digits
        (local.set $digit (i32.and (i32.shr_u (local.get $n) (i32.mul (local.get $k) (i32.const 4))) (i32.const 15)))
        (i32.store8 (i32.sub (i32.const 23) (local.get $k))
          (i32.add (local.get $digit) (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $digit) (i32.const 10)))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br_if $digits (i32.lt_u (local.get $k) (i32.const 7))))
      (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 8) (i32.const 1)
        (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 64)))
      (drop (call $fd_close (i32.load (i32.const 64))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $again)))
  (func (export "_start")
    (if (i32.eq (call $mode) (i32.const 98)) (then (call $bytes)) (else (call $files)))))
