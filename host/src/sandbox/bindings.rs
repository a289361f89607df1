//! Host-side bindings for the `kiln:worker/job` world, generated from `wit/`
//! in this one place; the rest of the host uses the types from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "kiln:worker/job",
    // Exports are called with `call_async` so epoch yields can hand the
    // thread back to tokio; context imports are plain, quick host calls.
    exports: { default: async },
});

pub use self::kiln::worker::types::Job as WitJob;
