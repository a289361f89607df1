//! Sandbox benchmarks: Kiln's `run_iteration` against bare wasmtime with the
//! same engine configuration, metering cost on a CPU-bound plugin,
//! cancellation latency, and plugin load time.
//!
//! Run: `cargo bench --bench sandbox` (add `-- --quick` for a short run).
//!
//! Variants are measured in interleaved rounds (A, B, A, B, ...) and each is
//! reported as the median over all rounds, with ratios between variants of
//! the same run: on a shared, noisy machine a ratio between two separate
//! measurement windows would also measure whatever load changed between
//! them.

use kiln::plugin::{self, ArtifactCache, Plugin};
use kiln::sandbox::{Budget, JobInput, Sandbox, engine_config};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::Engine;

/// The bare-wasmtime baseline: same WIT, same engine config, and per call
/// only what any embedding must do (new Store + instantiate from
/// InstancePre + call + drop). No log capture, no budgets beyond what the
/// engine config requires, no classification.
mod bare {
    use ::wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
    use wasmtime::{Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    wasmtime::component::bindgen!({
        path: "../wit",
        world: "kiln:worker/job",
        exports: { default: async },
    });

    pub use self::kiln::worker::types::Job as WitJob;

    pub struct State {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
        }
    }

    impl kiln::worker::context::Host for State {
        fn cancelled(&mut self) -> bool {
            false
        }
        fn time_left_ms(&mut self) -> u64 {
            u64::MAX
        }
        fn log(&mut self, _: kiln::worker::context::LogLevel, _: String) {}
        fn progress(&mut self, _: u8, _: Option<String>) {}
    }

    impl kiln::worker::types::Host for State {}

    pub struct Bare {
        engine: Engine,
        pre: JobPre<State>,
        fuel: bool,
        epoch: bool,
    }

    impl Bare {
        pub fn new(engine: &Engine, wasm: &[u8], fuel: bool, epoch: bool) -> Self {
            let mut linker = Linker::new(engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
            Job::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s).unwrap();
            let component = Component::new(engine, wasm).unwrap();
            let pre = JobPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
            Self { engine: engine.clone(), pre, fuel, epoch }
        }

        pub async fn run(&self, job: &WitJob) -> Vec<u8> {
            let mut store =
                Store::new(&self.engine, State { wasi: WasiCtx::builder().build(), table: ResourceTable::new() });
            if self.fuel {
                store.set_fuel(u64::MAX).unwrap();
            }
            if self.epoch {
                store.set_epoch_deadline(u64::MAX / 2);
            }
            let instance = self.pre.instantiate_async(&mut store).await.unwrap();
            instance.call_run(&mut store, job).await.unwrap().unwrap()
        }
    }
}

struct Settings {
    rounds: usize,
    per_round: usize,
    cpu_calls: usize,
    latency_samples: usize,
    load_rounds: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let s = if quick {
        Settings { rounds: 3, per_round: 300, cpu_calls: 3, latency_samples: 30, load_rounds: 3 }
    } else {
        Settings { rounds: 5, per_round: 2000, cpu_calls: 10, latency_samples: 200, load_rounds: 10 }
    };
    println!("# Kiln sandbox benchmarks ({})", if quick { "quick" } else { "full" });
    println!("machine: {} cores; figures are medians unless marked\n", std::thread::available_parallelism().map_or(0, |n| n.get()));
    fresh_iteration(&s);
    cpu_bound_metering(&s);
    cancellation_latency(&s);
    plugin_load(&s);
}

fn load(sandbox: &Sandbox, dir: &str) -> Plugin {
    plugin::load(sandbox, None, &plugin::resolve(dir, &[]).unwrap()).unwrap()
}

fn wasm(dir: &str) -> Vec<u8> {
    let p = Path::new(dir);
    std::fs::read(p.join(format!("{}.wasm", p.file_name().unwrap().to_string_lossy()))).unwrap()
}

fn job(kind: &str, payload: &[u8]) -> JobInput {
    JobInput {
        id: "bench".into(),
        kind: kind.into(),
        attempt: 1,
        max_attempts: 1,
        payload: payload.to_vec(),
        checkpoint: None,
        progress: Default::default(),
        traceparent: None,
    }
}

fn wit_job(j: &JobInput) -> bare::WitJob {
    bare::WitJob {
        id: j.id.clone(),
        kind: j.kind.clone(),
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        payload: j.payload.clone(),
        checkpoint: j.checkpoint.clone(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50.0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().unwrap()
}

/// `run_iteration(echo)` vs bare wasmtime, one thread and all cores.
fn fresh_iteration(s: &Settings) {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let echo = Arc::new(load(&sandbox, plugin::built::ECHO));
    let bare = Arc::new(bare::Bare::new(sandbox.engine(), &wasm(plugin::built::ECHO), true, true));
    let input = Arc::new(job("echo", &[b'x'; 64]));
    let witjob = Arc::new(wit_job(&input));
    let budget = Arc::new(Budget::default());

    // One thread: per-call latency.
    let rt = current_thread();
    let (mut bare_t, mut kiln_t) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..s.per_round / 10 {
            bare.run(&witjob).await;
            sandbox.run_iteration(&echo.component, &input, &budget, &sandbox.stop_signal()).await;
        }
        for _ in 0..s.rounds {
            for _ in 0..s.per_round {
                let t = Instant::now();
                std::hint::black_box(bare.run(&witjob).await);
                bare_t.push(us(t.elapsed()));
            }
            for _ in 0..s.per_round {
                let t = Instant::now();
                let report = sandbox.run_iteration(&echo.component, &input, &budget, &sandbox.stop_signal()).await;
                kiln_t.push(us(t.elapsed()));
                assert!(report.outcome.is_ok());
            }
        }
    });
    let (b50, k50) = (median(&mut bare_t), median(&mut kiln_t));
    let (b99, k99) = (percentile(&mut bare_t, 99.0), percentile(&mut kiln_t, 99.0));
    println!("## Fresh iteration of `echo` (64-byte payload), one thread\n");
    println!("| variant | median | p99 | iterations/s | ratio to bare |");
    println!("|---|---|---|---|---|");
    println!("| bare wasmtime (same engine config) | {b50:.1} µs | {b99:.1} µs | {:.0} | 1.00 |", 1e6 / b50);
    println!("| Kiln `run_iteration` | {k50:.1} µs | {k99:.1} µs | {:.0} | {:.2} |\n", 1e6 / k50, k50 / b50);

    // All cores: aggregate throughput, one task per core.
    let rt = multi_thread();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (mut bare_rate, mut kiln_rate) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds {
        let t = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..cores)
                .map(|_| {
                    let (bare, witjob) = (bare.clone(), witjob.clone());
                    let n = s.per_round;
                    tokio::spawn(async move {
                        for _ in 0..n {
                            std::hint::black_box(bare.run(&witjob).await);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        bare_rate.push((cores * s.per_round) as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..cores)
                .map(|_| {
                    let (sandbox, echo, input, budget) = (sandbox.clone(), echo.clone(), input.clone(), budget.clone());
                    let n = s.per_round;
                    tokio::spawn(async move {
                        for _ in 0..n {
                            let r = sandbox.run_iteration(&echo.component, &input, &budget, &sandbox.stop_signal()).await;
                            assert!(r.outcome.is_ok());
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        kiln_rate.push((cores * s.per_round) as f64 / t.elapsed().as_secs_f64());
    }
    let (br, kr) = (median(&mut bare_rate), median(&mut kiln_rate));
    println!("## Fresh iteration of `echo`, all {cores} cores (tokio multi-thread, one task per core)\n");
    println!("| variant | iterations/s (aggregate) | ratio to bare (time per iteration) |");
    println!("|---|---|---|");
    println!("| bare wasmtime | {br:.0} | 1.00 |");
    println!("| Kiln `run_iteration` | {kr:.0} | {:.2} |\n", br / kr);
}

/// A CPU-bound plugin with metering on and off, on two kinds of loop.
fn cpu_bound_metering(s: &Settings) {
    let spin_wasm = wasm(plugin::built::SPIN);
    let variants: Vec<(&str, bare::Bare)> = [("no metering", false, false), ("epoch only", false, true), ("fuel only", true, false), ("epoch + fuel", true, true)]
        .into_iter()
        .map(|(name, fuel, epoch)| {
            let mut config = engine_config();
            config.consume_fuel(fuel).epoch_interruption(epoch);
            let engine = Engine::new(&config).unwrap();
            (name, bare::Bare::new(&engine, &spin_wasm, fuel, epoch))
        })
        .collect();
    let sandbox = Sandbox::new().unwrap();
    let spin = load(&sandbox, plugin::built::SPIN);
    let budget = Budget { fuel: u64::MAX / 2, timeout: Duration::from_secs(60), ..Budget::default() };
    let workloads = [
        ("multiply-add chain, 10M rounds", r#"{"iterations": 10000000}"#),
        ("loads and stores in 16 KiB, 2M rounds", r#"{"iterations": 2000000, "mode": "memory"}"#),
    ];
    let rt = current_thread();
    for (workload, payload) in workloads {
        let input = job("spin", payload.as_bytes());
        let witjob = wit_job(&input);
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len() + 1];
        rt.block_on(async {
            for _ in 0..s.rounds {
                for (i, (_, bare)) in variants.iter().enumerate() {
                    for _ in 0..s.cpu_calls {
                        let t = Instant::now();
                        std::hint::black_box(bare.run(&witjob).await);
                        times[i].push(us(t.elapsed()));
                    }
                }
                for _ in 0..s.cpu_calls {
                    let t = Instant::now();
                    let r = sandbox.run_iteration(&spin.component, &input, &budget, &sandbox.stop_signal()).await;
                    times[variants.len()].push(us(t.elapsed()));
                    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
                }
            }
        });
        let base = median(&mut times[0]);
        println!("## CPU-bound plugin (`spin`: {workload}), one thread\n");
        println!("| variant | median per call | ratio to no metering |");
        println!("|---|---|---|");
        for (i, (name, _)) in variants.iter().enumerate() {
            let m = median(&mut times[i]);
            println!("| bare wasmtime, {name} | {:.2} ms | {:.2} |", m / 1000.0, m / base);
        }
        let k = median(&mut times[variants.len()]);
        println!("| Kiln `run_iteration` (epoch + fuel, 1 ms ticks with yields) | {:.2} ms | {:.2} |\n", k / 1000.0, k / base);
    }
}

/// From `StopSignal::interrupt` (and from a deadline) to `run_iteration` returning.
fn cancellation_latency(s: &Settings) {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let rt = multi_thread();
    println!("## Cancellation latency\n");
    println!("| plugin | stopped by | median | p99 |");
    println!("|---|---|---|---|");
    for dir in [plugin::built::SPIN, plugin::built::IGNORE_CANCEL] {
        let plugin = Arc::new(load(&sandbox, dir));
        let name = plugin.manifest.name.clone();
        let mut latencies = Vec::new();
        rt.block_on(async {
            for _ in 0..s.latency_samples {
                let stop = sandbox.stop_signal();
                let task = {
                    let (sandbox, plugin, stop) = (sandbox.clone(), plugin.clone(), stop.clone());
                    tokio::spawn(async move {
                        let budget = Budget { fuel: u64::MAX / 2, timeout: Duration::from_secs(60), ..Budget::default() };
                        let r = sandbox.run_iteration(&plugin.component, &job("x", b""), &budget, &stop).await;
                        (Instant::now(), r.outcome)
                    })
                };
                tokio::time::sleep(Duration::from_millis(3)).await;
                let t0 = Instant::now();
                stop.interrupt();
                let (returned, outcome) = task.await.unwrap();
                assert_eq!(outcome.name(), "cancelled");
                latencies.push(us(returned - t0));
            }
        });
        let (m, p99) = (median(&mut latencies), percentile(&mut latencies, 99.0));
        println!("| `{name}` | `StopSignal::interrupt()` | {m:.0} µs | {p99:.0} µs |");
    }
    // Deadline: how far past its timeout a spinning plugin returns.
    let spin = load(&sandbox, plugin::built::SPIN);
    let timeout = Duration::from_millis(20);
    let mut overshoot = Vec::new();
    rt.block_on(async {
        for _ in 0..s.latency_samples / 2 {
            let budget = Budget { fuel: u64::MAX / 2, timeout, ..Budget::default() };
            let r = sandbox.run_iteration(&spin.component, &job("x", b""), &budget, &sandbox.stop_signal()).await;
            assert_eq!(r.outcome.name(), "timed_out");
            overshoot.push(us(r.duration.saturating_sub(timeout)));
        }
    });
    let (m, p99) = (median(&mut overshoot), percentile(&mut overshoot, 99.0));
    println!(
        "| `spin` | its 20 ms deadline (tick = {} ms) | {m:.0} µs past it | {p99:.0} µs past it |\n",
        kiln::sandbox::EPOCH_TICK.as_millis()
    );
}

/// Compiling a plugin vs loading it from the artifact cache.
fn plugin_load(s: &Settings) {
    let sandbox = Sandbox::new().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(cache_dir.path());
    println!("## Plugin load (validate + compile or load + pre-instantiate)\n");
    println!("| plugin | wasm size | compiled | from artifact cache | ratio |");
    println!("|---|---|---|---|---|");
    for dir in [plugin::built::ECHO, plugin::built::SEND_EMAIL] {
        let files = plugin::resolve(dir, &[]).unwrap();
        plugin::load(&sandbox, Some(&cache), &files).unwrap();
        let (mut compiled, mut cached) = (Vec::new(), Vec::new());
        for _ in 0..s.load_rounds {
            let t = Instant::now();
            plugin::load(&sandbox, None, &files).unwrap();
            compiled.push(us(t.elapsed()));
            let t = Instant::now();
            let p = plugin::load(&sandbox, Some(&cache), &files).unwrap();
            cached.push(us(t.elapsed()));
            assert_eq!(p.cache, plugin::CacheUse::Hit);
        }
        let (c, h) = (median(&mut compiled), median(&mut cached));
        let size = std::fs::metadata(&files.wasm).unwrap().len();
        println!(
            "| `{}` | {} KB | {:.1} ms | {:.0} µs | {:.0}× faster |",
            Path::new(dir).file_name().unwrap().to_string_lossy(),
            size / 1000,
            c / 1000.0,
            h,
            c / h
        );
    }
    println!();
}
