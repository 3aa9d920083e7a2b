//! `/debug/pprof/*` for any Rust web framework: CPU profiles `go tool pprof` reads, flame
//! graphs, heap and allocation profiles over any allocator, and an index page, with bounds, one profile at a time and an
//! access rule in front. `observe-tower` and `observe-actix` mount it with their `pprof`
//! feature; see `docs/pprof.md`.
//!
//! An adapter mounts [`Pprof`] under [`PPROF_ROUTES`], describes each request as an
//! [`AccessRequest`], and converts the `EndpointResponse` it gets back into its framework's
//! response. [`Pprof::respond`] does everything in between: the access rule, the parameters,
//! the profile on a blocking thread of the adapter's `Executor`, and stopping it early when
//! the client goes away.
//!
//! ```
//! # use std::future::Future;
//! # use observe_core::adapter::{BlockingWork, EndpointResponse, Executor};
//! use observe_pprof::{AccessRequest, Pprof};
//!
//! /// What an adapter lends the endpoints: here a thread per profile (tokio's spawn_blocking,
//! /// actix's blocking pool in the adapters).
//! struct Threads;
//! # impl Executor for Threads {
//! #     fn spawn_blocking<W: BlockingWork>(work: W) -> impl Future<Output = Result<EndpointResponse, String>> + Send {
//! #         let job = std::thread::spawn(move || work.run());
//! #         async move { job.join().map_err(|_| "the profile panicked".to_owned()) }
//! #     }
//! #     fn sleep(duration: std::time::Duration) -> impl Future<Output = ()> + Send {
//! #         async move { std::thread::sleep(duration) }
//! #     }
//! # }
//!
//! let pprof = Pprof::new(); // loopback clients only, at most 60 s, no cmdline
//! let req = AccessRequest::new("/debug/pprof/profile", Some([127, 0, 0, 1].into()));
//! let response = block_on(pprof.respond::<Threads>(
//!     &req,
//!     "profile",
//!     Some("seconds=1&frequency=99"),
//!     std::future::pending(), // or a future that ends when the client has gone
//! ));
//! assert_eq!(response.status, 200);
//! assert_eq!(response.content_type, "application/octet-stream");
//! assert_eq!(&response.body[..2], &[0x1f, 0x8b]); // gzip
//! # fn block_on<F: Future>(f: F) -> F::Output {
//! #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
//! #     let mut f = std::pin::pin!(f);
//! #     loop {
//! #         if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) { return out; }
//! #     }
//! # }
//! ```
//!
//! | path | answer |
//! | --- | --- |
//! | `/debug/pprof/` | HTML index of what this process serves |
//! | `/debug/pprof/profile?seconds=30&frequency=99` | gzipped pprof CPU profile |
//! | `/debug/pprof/flamegraph?seconds=30&frequency=99` | SVG flame graph of a CPU profile |
//! | `/debug/pprof/heap?seconds=N` | gzipped pprof heap profile: Go's four sample types, `inuse_space` first (with [`ProfiledAllocator`] as the global allocator) |
//! | `/debug/pprof/allocs?seconds=N` | the same samples, `alloc_space` first |
//! | `/debug/pprof/tasks` | every tokio task's await points as text (`taskdump` feature and `--cfg tokio_unstable`) |
//! | `/debug/pprof/cmdline` | the command line, NUL-separated (off unless enabled) |

mod access;
mod budget;
mod continuous;
mod cpu;
mod endpoints;
mod error;
mod heap;
mod index;
mod job;
mod labels;
mod params;
mod proto;
mod pyroscope;
mod response;
mod sampler;
mod settings;
mod symbols;
mod tasks;

pub use access::{Access, AccessRequest};
pub use budget::DEFAULT_MEMORY_BUDGET;
pub use continuous::{ContinuousProfiling, ContinuousProfilingGuard, UPLOADS_METRIC};
pub use cpu::{CpuProfile, CpuProfiler};
pub use endpoints::{Pprof, PprofBuilder};
pub use error::PprofError;
pub use heap::{ProfiledAllocator, DEFAULT_HEAP_SAMPLE_BYTES};
pub use labels::LabelFilter;
pub use params::{
    ProfileParams, DEFAULT_FREQUENCY, DEFAULT_MAX_SECONDS, DEFAULT_SECONDS, MAX_FREQUENCY,
};
pub use settings::ProfilingSettings;
pub use tasks::{MAX_TASK_DUMP_BYTES, TASK_DUMP_TIMEOUT};

/// The route templates an adapter registers, in the `{name}` syntax axum and actix-web share.
/// They are among observe-core's default excluded routes, so profiles never count as traffic.
pub const PPROF_ROUTES: [&str; 3] = ["/debug/pprof", "/debug/pprof/", "/debug/pprof/{profile}"];
