;; A job component that imports outbound HTTP (`wasi:http/outgoing-handler`)
;; with no grant for it: refused at load, the error naming the import and
;; the manifest key that would grant it.
;; Hand-written component text: assembled by host/build.rs.
(component
  ;; What a plugin built for Spin or wasmCloud imports to make HTTP calls.
  (import "wasi:http/outgoing-handler@0.2.6" (instance
    (export "handle" (func))))
  (core module $m
    (memory (export "memory") 1)
    ;; A bump allocator: the host copies the job in through it.
    (global $bump (mut i32) (i32.const 1024))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536)))
        (then (drop (memory.grow (i32.add (i32.shr_u (global.get $bump) (i32.const 16)) (i32.const 1))))))
      (local.get $p))
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      ;; ok(empty list): discriminant at 0, the list (ptr, len) at 8.
      (i32.store8 (i32.const 0) (i32.const 0))
      (i32.store (i32.const 8) (i32.const 0))
      (i32.store (i32.const 12) (i32.const 0))
      (i32.const 0))
  )
  (core instance $main (instantiate $m))
  ;; The job world's types, exported so `run` may use them.
  (type $job' (record (field "id" string) (field "kind" string) (field "attempt" u32)
    (field "max-attempts" u32) (field "payload" (list u8)) (field "checkpoint" (option (list u8)))))
  (export $job "job-record" (type $job'))
  (type $retry' (record (field "message" string) (field "delay-ms" (option u64))))
  (export $retry "retry-request" (type $retry'))
  (type $error' (variant (case "retry" $retry) (case "invalid-input" string) (case "fatal" string)))
  (export $error "job-error" (type $error'))
  (func $run (param "job" $job) (result (result (list u8) (error $error)))
    (canon lift (core func $main "run") (memory (core memory $main "memory")) (realloc (core func $main "cabi_realloc"))))
  (export "run" (func $run))
)
