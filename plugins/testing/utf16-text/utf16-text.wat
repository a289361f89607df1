;; Fails with a `fatal` message its component lifts as UTF-16
;; (`string-encoding=utf16`), as a JavaScript toolchain may: the host reads
;; the message in that encoding, while the guest still owns it, and stores
;; it as UTF-8 ("a message in UTF-16: ü ✓ 😀").
;; Hand-written component text: assembled by host/build.rs.
(component
  (core module $m
    (memory (export "memory") 1)
    ;; The message, UTF-16LE, 27 code units.
    (data (i32.const 256) "\61\00\20\00\6d\00\65\00\73\00\73\00\61\00\67\00\65\00\20\00\69\00\6e\00\20\00\55\00\54\00\46\00\2d\00\31\00\36\00\3a\00\20\00\fc\00\20\00\13\27\20\00\3d\d8\00\de")
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
      ;; err(fatal(message)): the result's discriminant at 0, the job-error's
      ;; at 8, the string (ptr, length in code units) at 16.
      (i32.store8 (i32.const 0) (i32.const 1))
      (i32.store8 (i32.const 8) (i32.const 2))
      (i32.store (i32.const 16) (i32.const 256))
      (i32.store (i32.const 20) (i32.const 27))
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
    (canon lift (core func $main "run") (memory (core memory $main "memory")) (realloc (core func $main "cabi_realloc"))
      string-encoding=utf16))
  (export "run" (func $run))
)
