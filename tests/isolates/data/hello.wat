;; A worker component written by hand in the WebAssembly text format: any language
;; that targets the edgenode:guest worker world works the same way.
;;   /trap  -> executes `unreachable`
;;   /spin  -> loops forever (for the CPU limit)
;;   else   -> 200 "hello from wat"
(component
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 4096))
    ;; cabi_realloc: a bump allocator is enough for one request per instance.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p
        (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                 (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    ;; handle(method ptr/len, path ptr/len, query, headers, body) -> pointer to the result
    (func (export "handle") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      (if (i32.eq (local.get 3) (i32.const 5))
        (then
          (if (i32.eq (i32.load8_u (i32.add (local.get 2) (i32.const 1))) (i32.const 115))
            (then (loop $forever (br $forever))))
          (if (i32.eq (i32.load8_u (i32.add (local.get 2) (i32.const 1))) (i32.const 116))
            (then unreachable))))
      (i32.const 512))
    (data (i32.const 256) "content-type")
    (data (i32.const 272) "text/plain")
    ;; the one header: (ptr 256, len 12, ptr 272, len 10)
    (data (i32.const 288) "\00\01\00\00\0c\00\00\00\10\01\00\00\0a\00\00\00")
    (data (i32.const 320) "hello from wat")
    ;; result<http-response, guest-error>: ok, status 200, headers (288, 1), body (320, 14)
    (data (i32.const 512) "\00\00\00\00\c8\00\00\00\20\01\00\00\01\00\00\00\40\01\00\00\0e\00\00\00"))
  (core instance $i (instantiate $m))
  (type $request (record
    (field "method" string) (field "path" string)
    (field "query" (list (tuple string string))) (field "headers" (list (tuple string string)))
    (field "body" (list u8))))
  (export $request-t "http-request" (type $request))
  (type $response (record
    (field "status" u16) (field "headers" (list (tuple string string))) (field "body" (list u8))))
  (export $response-t "http-response" (type $response))
  (type $error (record (field "code" string) (field "message" string)))
  (export $error-t "guest-error" (type $error))
  (func $handle (param "req" $request-t) (result (result $response-t (error $error-t)))
    (canon lift (core func $i "handle") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc"))))
  (export "handle" (func $handle))
)
