;; A WASI preview 1 command written by hand: writes its second argument to stdout,
;; copies stdin to stderr, and exits with status 7. With "spin" as its argument it
;; loops forever instead (for the CPU limit).
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $argv1 i32) (local $len i32) (local $n i32)
    ;; argc at 0, buffer size at 4; argv pointers at 16; argument bytes at 256
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 16) (i32.const 256)))
    (local.set $argv1 (i32.load (i32.const 20)))
    ;; strlen of argv[1]
    (block $done (loop $scan
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $argv1) (local.get $len)))))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $scan)))
    (if (i32.eq (i32.load (local.get $argv1)) (i32.const 0x6e697073)) ;; "spin"
      (then (loop $forever (br $forever))))
    ;; iovec at 1024: (argv1, len) -> stdout
    (i32.store (i32.const 1024) (local.get $argv1))
    (i32.store (i32.const 1028) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 1024) (i32.const 1) (i32.const 1040)))
    ;; stdin -> stderr, 4 KiB at a time
    (i32.store (i32.const 1024) (i32.const 4096))
    (i32.store (i32.const 1028) (i32.const 4096))
    (block $eof (loop $copy
      (drop (call $fd_read (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 1040)))
      (local.set $n (i32.load (i32.const 1040)))
      (br_if $eof (i32.eqz (local.get $n)))
      (i32.store (i32.const 1048) (i32.const 4096))
      (i32.store (i32.const 1052) (local.get $n))
      (drop (call $fd_write (i32.const 2) (i32.const 1048) (i32.const 1) (i32.const 1040)))
      (br $copy)))
    (call $proc_exit (i32.const 7))))
