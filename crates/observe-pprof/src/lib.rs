//! `/debug/pprof/*` for any Rust web framework: CPU profiles `go tool pprof` reads, flame
//! graphs, jemalloc heap profiles and an index page, with bounds, one profile at a time and an
//! access rule in front. `observe-tower` and `observe-actix` mount it with their `pprof`
//! feature; see `docs/pprof.md`.
//!
//! An adapter mounts [`Pprof`] under `/debug/pprof`, describes each request as an
//! [`AccessRequest`], and converts the [`Answer`] it gets back into its framework's response.
//! [`Pprof::answer`] does everything in between: the access rule, the parameters, the profile
//! on a blocking thread, and stopping it early when the client goes away.
//!
//! ```
//! use observe_pprof::{AccessRequest, Pprof};
//!
//! let pprof = Pprof::new(); // loopback clients only, at most 60 s, no cmdline
//! let req = AccessRequest::new("/debug/pprof/profile", Some([127, 0, 0, 1].into()));
//! let answer = futures_executor_block_on(pprof.answer(
//!     &req,
//!     "profile",
//!     Some("seconds=1&frequency=99"),
//!     // Where the blocking work runs: tokio's spawn_blocking, actix's web::block.
//!     |job| async move { std::thread::spawn(move || job.run()).join() .map_err(|_| "panicked") },
//!     std::future::pending(), // or a future that ends when the client has gone
//! ));
//! assert_eq!(answer.status, 200);
//! assert_eq!(answer.content_type, "application/octet-stream");
//! assert_eq!(&answer.body[..2], &[0x1f, 0x8b]); // gzip
//! # fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let waker = std::task::Waker::noop();
//! #     let mut cx = std::task::Context::from_waker(&waker);
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
//! | `/debug/pprof/heap` | gzipped pprof heap profile (`jemalloc-heap-profile` feature) |
//! | `/debug/pprof/tasks` | every tokio task's await points as text (`taskdump` feature and `--cfg tokio_unstable`) |
//! | `/debug/pprof/cmdline` | the command line, NUL-separated (off unless enabled) |

use std::fmt::Display;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::Poll;

use observe_core::adapter::{Answer, TEXT_PLAIN};

mod access;
mod budget;
mod continuous;
mod cpu;
mod error;
mod heap;
mod index;
mod job;
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
pub use continuous::{ContinuousProfiler, ContinuousProfiling, UPLOADS_METRIC};
pub use cpu::{CpuProfile, CpuProfiler};
pub use error::PprofError;
pub use params::{
    ProfileParams, DEFAULT_FREQUENCY, DEFAULT_MAX_SECONDS, DEFAULT_SECONDS, MAX_FREQUENCY,
};
pub use settings::ProfilingSettings;
pub use tasks::{MAX_TASK_DUMP_BYTES, TASK_DUMP_TIMEOUT};

/// What only a framework adapter needs: the steps of [`Pprof::answer`] one at a time, the
/// route templates to mount, and the error answer `go tool pprof` shows.
pub mod adapter {
    pub use crate::job::{CancelOnDrop, Handled, ProfileJob};
    pub use crate::response::error;

    /// The route templates adapters register, in the framework-neutral `{name}` syntax. They are
    /// among observe-core's default excluded routes, so profiles never count as traffic.
    pub const PPROF_ROUTES: [&str; 3] = ["/debug/pprof", "/debug/pprof/", "/debug/pprof/{profile}"];
}

use job::{Handled, ProfileJob, Work};

/// jemalloc as Rust's global allocator, built with its heap profiler (the
/// `jemalloc-heap-profile` feature):
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: observe_pprof::Jemalloc = observe_pprof::Jemalloc;
/// ```
#[cfg(feature = "jemalloc-heap-profile")]
pub use tikv_jemallocator::Jemalloc;

/// Makes jemalloc the global allocator with its heap profiler switched on at start-up, so
/// `/debug/pprof/heap` has samples: one allocation per 512 KiB allocated on average
/// (`lg_prof_sample:19`), cheap enough for production. `_RJEM_MALLOC_CONF` in the environment
/// still overrides it (`prof:false` turns it off). Use it once, in the binary crate (the
/// adapters re-export it: `observe_tower::jemalloc_heap_profiling!()`):
///
/// ```ignore
/// observe_pprof::jemalloc_heap_profiling!();
/// ```
#[cfg(feature = "jemalloc-heap-profile")]
#[macro_export]
macro_rules! jemalloc_heap_profiling {
    () => {
        /// jemalloc, built with its heap profiler, serves every allocation.
        #[global_allocator]
        static OBSERVE_JEMALLOC: $crate::Jemalloc = $crate::Jemalloc;

        // jemalloc reads this symbol as a `const char *`: a thin pointer to NUL-terminated
        // options, which is exactly the layout of `&u8` (a `&[u8]` would be a fat pointer).
        // Exporting a symbol under a fixed name is unsafe code because rustc cannot check
        // the type the C side expects.
        /// jemalloc's start-up options: heap profiling on, `lg_prof_sample:19`.
        #[allow(unsafe_code, non_upper_case_globals)]
        #[export_name = "_rjem_malloc_conf"]
        pub static observe_jemalloc_options: &u8 =
            &b"prof:true,prof_active:true,lg_prof_sample:19\0"[0];
    };
}

/// The configured `/debug/pprof` endpoints. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Pprof {
    config: Arc<Config>,
}

#[derive(Debug, Clone)]
struct Config {
    max_seconds: u64,
    cmdline: bool,
    access: Access,
    memory_budget: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_seconds: DEFAULT_MAX_SECONDS,
            cmdline: false,
            access: Access::default(),
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Configures [`Pprof`].
///
/// ```
/// use observe_pprof::{Access, Pprof};
///
/// let pprof = Pprof::builder()
///     .access(Access::bearer_token("s3cret")?)
///     .max_seconds(120)?
///     .cmdline(true)
///     .build();
/// # Ok::<(), observe_pprof::PprofError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PprofBuilder {
    config: Config,
}

impl PprofBuilder {
    /// Who may use the endpoints; default [`Access::loopback_only`].
    pub fn access(mut self, access: Access) -> Self {
        self.config.access = access;
        self
    }

    /// Shorthand for `.access(Access::anyone())`: for routes already only reachable by the
    /// people who should use them (a loopback admin listener, a private port).
    pub fn anyone(self) -> Self {
        self.access(Access::anyone())
    }

    /// The longest CPU profile a request may ask for (default 60 s).
    pub fn max_seconds(mut self, seconds: u64) -> Result<Self, PprofError> {
        if seconds == 0 {
            return Err(PprofError::InvalidMaxSeconds(seconds));
        }
        self.config.max_seconds = seconds;
        Ok(self)
    }

    /// What a CPU or heap profile or a task dump may add to the process's memory at worst
    /// (default 32 MiB). A request whose worst case would not fit is answered `503` with the
    /// figures, so that profiling a small container never gets it killed; `docs/pprof.md`
    /// gives the worst case and what profiles use in practice.
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.config.memory_budget = bytes;
        self
    }

    /// Serves `/debug/pprof/cmdline` (default off: arguments can hold secrets).
    pub fn cmdline(mut self, enabled: bool) -> Self {
        self.config.cmdline = enabled;
        self
    }

    /// The configured endpoints.
    pub fn build(self) -> Pprof {
        Pprof {
            config: Arc::new(self.config),
        }
    }
}

impl Pprof {
    /// The defaults: loopback clients only, CPU profiles up to 60 s, no `cmdline`.
    pub fn new() -> Self {
        Pprof::default()
    }

    /// Configures access, bounds and `cmdline`.
    pub fn builder() -> PprofBuilder {
        PprofBuilder::default()
    }

    /// The longest CPU profile a request may ask for, in seconds.
    pub fn max_seconds(&self) -> u64 {
        self.config.max_seconds
    }

    /// Answers `GET /debug/pprof/{profile}`; `profile` is `""` for the index. `query` is the
    /// raw query string. The access rule is checked first, before anything else happens.
    pub fn handle(&self, req: &AccessRequest<'_>, profile: &str, query: Option<&str>) -> Handled {
        if let Err(denied) = self.config.access.check(req) {
            return Handled::Ready(denied);
        }
        let work = match profile {
            "" => return Handled::Ready(self.index(req.header("host"))),
            "profile" | "flamegraph" => {
                let params = match ProfileParams::parse(query, self.config.max_seconds) {
                    Ok(params) => params,
                    Err(e) => return Handled::Ready(e.into()),
                };
                let budget = self.config.memory_budget;
                if let Err(e) = budget::check("CPU profile", budget::cpu_profile(), budget) {
                    return Handled::Ready(e.into());
                }
                match CpuProfiler::acquire() {
                    Ok(profiler) => Work::Cpu {
                        profiler,
                        params,
                        flamegraph: profile == "flamegraph",
                    },
                    Err(e) => return Handled::Ready(e.into()),
                }
            }
            "heap" => {
                let budget = self.config.memory_budget;
                let fits = budget::check("heap profile", budget::heap_profile(), budget);
                match heap::availability().and(fits) {
                    Ok(()) => Work::Heap,
                    Err(e) => return Handled::Ready(e.into()),
                }
            }
            "tasks" => {
                let budget = self.config.memory_budget;
                let alive = tasks::alive();
                let need = budget::task_dump(alive);
                let fits = budget::check(&format!("task dump of {alive} tasks"), need, budget);
                if let Err(e) = tasks::availability().and(fits) {
                    return Handled::Ready(e.into());
                }
                // The same single-flight guard as CPU profiles: one profiling job at a time.
                match CpuProfiler::acquire() {
                    Ok(profiler) => Work::Tasks {
                        _profiler: profiler,
                    },
                    Err(e) => return Handled::Ready(e.into()),
                }
            }
            "cmdline" if self.config.cmdline => {
                let args: Vec<String> = std::env::args().collect();
                return Handled::Ready(Answer::ok(TEXT_PLAIN, args.join("\0").into_bytes()));
            }
            "cmdline" => return Handled::Ready(PprofError::CmdlineDisabled.into()),
            other => {
                let served = self.served().join(", ");
                let name: String = other.chars().take(40).filter(|c| !c.is_control()).collect();
                return Handled::Ready(PprofError::UnknownProfile { name, served }.into());
            }
        };
        Handled::Blocking(ProfileJob {
            work,
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Answers `GET /debug/pprof/{profile}` whole: [`handle`](Self::handle), then any
    /// blocking work on the thread `run_blocking` puts it on (tokio's `spawn_blocking`,
    /// actix's `web::block`). A profile stops early, answered 499, once `client_gone`
    /// completes (give `std::future::pending()` when the server cannot tell) or when this
    /// future is dropped (the server dropped the request); the CPU profiler is free again
    /// within ~25 ms either way.
    pub async fn answer<Run, Ran, E>(
        &self,
        req: &AccessRequest<'_>,
        profile: &str,
        query: Option<&str>,
        run_blocking: Run,
        client_gone: impl Future<Output = ()>,
    ) -> Answer
    where
        Run: FnOnce(ProfileJob) -> Ran,
        Ran: Future<Output = Result<Answer, E>>,
        E: Display,
    {
        let job = match self.handle(req, profile, query) {
            Handled::Ready(answer) => return answer,
            Handled::Blocking(job) => job,
        };
        let mut cancel = Some(job.cancel_on_drop());
        let mut work = pin!(run_blocking(job));
        let mut client_gone = pin!(client_gone);
        let ran = std::future::poll_fn(|cx| {
            if let Poll::Ready(ran) = work.as_mut().poll(cx) {
                return Poll::Ready(ran);
            }
            if cancel.is_some() && client_gone.as_mut().poll(cx).is_ready() {
                // The job sees the flag within one sampling slice and returns 499.
                cancel = None;
            }
            Poll::Pending
        })
        .await;
        ran.unwrap_or_else(|e| response::error(500, &format!("profiling failed: {e}")))
    }

    /// Where a request for the index without its trailing slash (`/debug/pprof`) is sent, so
    /// the page's relative links resolve.
    pub fn redirect_to_index() -> Answer {
        let mut response = Answer::ok(TEXT_PLAIN, b"see /debug/pprof/\n".to_vec());
        response.status = 308;
        response.headers.push(("location", "pprof/".to_owned()));
        response
    }

    fn served(&self) -> Vec<&'static str> {
        let mut names = vec!["profile", "flamegraph"];
        if heap::availability().is_ok() {
            names.push("heap");
        }
        if tasks::availability().is_ok() {
            names.push("tasks");
        }
        if self.config.cmdline {
            names.push("cmdline");
        }
        names
    }

    fn index(&self, host: Option<&str>) -> Answer {
        let max = self.config.max_seconds;
        let cpu_seconds = DEFAULT_SECONDS.min(max);
        let flame_seconds = 10.min(max);
        let mut entries = vec![
            index::Entry {
                name: "profile",
                href: "profile",
                description: "CPU profile in pprof format (30 s by default). Open with <code>go tool pprof</code>.",
                seconds: Some(cpu_seconds),
            },
            index::Entry {
                name: "flamegraph",
                href: "flamegraph?seconds=10",
                description: "The same CPU profile as an interactive SVG flame graph: click to zoom, Ctrl+F to search.",
                seconds: Some(flame_seconds),
            },
        ];
        let heap = heap::availability();
        if heap.is_ok() {
            entries.push(index::Entry {
                name: "heap",
                href: "heap",
                description: "Live heap allocations sampled by jemalloc, in pprof format (<code>inuse_space</code>).",
                seconds: None,
            });
        }
        let tasks = tasks::availability();
        if tasks.is_ok() {
            entries.push(index::Entry {
                name: "tasks",
                href: "tasks",
                description: "Every tokio task's await points as text, like Go's <code>goroutine?debug=2</code>.",
                seconds: None,
            });
        }
        if self.config.cmdline {
            entries.push(index::Entry {
                name: "cmdline",
                href: "cmdline",
                description: "The command line of this process, arguments separated by NUL bytes.",
                seconds: None,
            });
        }
        let notes: Vec<(&str, String)> = [("heap", heap.err()), ("tasks", tasks.err())]
            .into_iter()
            .filter_map(|(name, e)| Some((name, e?.to_string())))
            .collect();
        let html = index::render(&entries, max, &notes, host);
        Answer::ok("text/html; charset=utf-8", html.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> AccessRequest<'static> {
        AccessRequest::new("/debug/pprof/x", Some([127, 0, 0, 1].into()))
    }

    fn ready(r: Handled) -> Answer {
        match r {
            Handled::Ready(r) => r,
            Handled::Blocking(_) => panic!("expected an immediate answer"),
        }
    }

    fn has_go_pprof_header(r: &Answer) -> bool {
        r.headers
            .iter()
            .any(|(k, v)| *k == "x-go-pprof" && v == "1")
    }

    #[test]
    fn bad_parameters_are_400_plain_text_for_go_tool_pprof() {
        let pprof = Pprof::new();
        for (profile, query) in [
            ("profile", "seconds=0"),
            ("profile", "seconds=61"),
            ("profile", "seconds=x"),
            ("flamegraph", "frequency=1001"),
            ("flamegraph", "frequency=0.5"),
        ] {
            let r = ready(pprof.handle(&local(), profile, Some(query)));
            assert_eq!(r.status, 400, "{profile}?{query}");
            assert_eq!(r.content_type, "text/plain; charset=utf-8");
            assert!(has_go_pprof_header(&r));
            assert_eq!(r.body_text().lines().count(), 1, "{}", r.body_text());
        }
    }

    #[test]
    fn unknown_profiles_and_disabled_cmdline_are_404() {
        let pprof = Pprof::new();
        for name in ["goroutine", "symbol", "trace", "cmdline", "../metrics"] {
            let r = ready(pprof.handle(&local(), name, None));
            assert_eq!(r.status, 404, "{name}");
            assert!(has_go_pprof_header(&r));
        }
        let r = ready(pprof.handle(&local(), "goroutine", None));
        assert!(
            r.body_text().contains("profile, flamegraph"),
            "{}",
            r.body_text()
        );
    }

    #[cfg(not(tokio_unstable))]
    #[test]
    fn the_task_dump_without_tokio_unstable_is_501_naming_the_flags() {
        let r = ready(Pprof::new().handle(&local(), "tasks", None));
        assert_eq!(r.status, 501);
        assert!(has_go_pprof_header(&r));
        assert!(
            r.body_text()
                .contains("this one lacks: RUSTFLAGS=\"--cfg tokio_unstable\""),
            "{}",
            r.body_text()
        );
        let index = ready(Pprof::new().handle(&local(), "", None));
        let index = index.body_text();
        assert!(!index.contains(r#"href="tasks""#));
        assert!(index.contains("<b>tasks</b> is not available"));
    }

    #[test]
    fn cmdline_when_enabled_is_nul_separated() {
        let pprof = Pprof::builder().cmdline(true).build();
        let r = ready(pprof.handle(&local(), "cmdline", None));
        assert_eq!(r.status, 200);
        assert_eq!(r.body.split(|b| *b == 0).count(), std::env::args().count());
    }

    #[test]
    fn access_is_checked_before_anything_else() {
        let pprof = Pprof::builder()
            .access(Access::bearer_token("t").unwrap())
            .build();
        let remote = AccessRequest::new("/debug/pprof/profile", Some([192, 0, 2, 1].into()));
        // Even a request that would be a 400 or 404 learns nothing but 401.
        for (profile, query) in [("profile", "seconds=0"), ("nope", ""), ("", "")] {
            assert_eq!(
                ready(pprof.handle(&remote, profile, Some(query))).status,
                401
            );
        }
        let remote = AccessRequest::new("/debug/pprof/", Some([192, 0, 2, 1].into()));
        assert_eq!(ready(Pprof::new().handle(&remote, "", None)).status, 403);
    }

    #[test]
    fn a_profile_whose_worst_case_exceeds_the_memory_budget_is_503_with_the_figures() {
        let pprof = Pprof::builder().memory_budget(1024 * 1024).build();
        for profile in ["profile", "flamegraph"] {
            let r = ready(pprof.handle(&local(), profile, Some("seconds=1")));
            assert_eq!(r.status, 503, "{}", r.body_text());
            assert!(
                r.body_text().contains("1.0 MiB memory budget"),
                "{}",
                r.body_text()
            );
            assert!(has_go_pprof_header(&r));
        }
        // The default budget fits a CPU profile of this process.
        let _serial = cpu::one_profiling_test_at_a_time();
        assert!(matches!(
            Pprof::new().handle(&local(), "profile", Some("seconds=1")),
            Handled::Blocking(_)
        ));
    }

    #[cfg(all(
        tokio_unstable,
        feature = "taskdump",
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn a_task_dump_whose_tasks_exceed_the_memory_budget_is_503_with_the_count() {
        let _serial = cpu::one_profiling_test_at_a_time();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(observe_core::runtime::watch(rt.handle().clone()));
        for _ in 0..1000 {
            rt.spawn(std::future::pending::<()>());
        }
        let pprof = Pprof::builder().memory_budget(1024 * 1024).build();
        let r = ready(pprof.handle(&local(), "tasks", None));
        assert_eq!(r.status, 503, "{}", r.body_text());
        assert_eq!(
            r.body_text(),
            "a task dump of 1000 tasks may need up to 2.0 MiB here, more than the 1.0 MiB \
             memory budget; raise it with Pprof::builder().memory_budget(bytes) if the process \
             can afford it\n"
        );
        assert!(has_go_pprof_header(&r));
        // The default budget fits them.
        assert!(matches!(
            Pprof::new().handle(&local(), "tasks", None),
            Handled::Blocking(_)
        ));
    }

    #[test]
    fn the_routes_adapters_mount_are_excluded_from_the_red_metrics_by_default() {
        for route in adapter::PPROF_ROUTES {
            assert!(
                observe_core::DEFAULT_EXCLUDED_ROUTES.contains(&route),
                "{route}"
            );
        }
    }

    #[test]
    fn max_seconds_is_configurable_and_never_zero() {
        let pprof = Pprof::builder().max_seconds(5).unwrap().build();
        let r = ready(pprof.handle(&local(), "profile", Some("seconds=6")));
        assert_eq!(r.status, 400);
        assert!(r.body_text().contains("from 1 to 5"), "{}", r.body_text());
        assert!(Pprof::builder().max_seconds(0).is_err());
    }

    #[test]
    fn a_second_cpu_profile_while_one_runs_is_409_and_cancel_frees_it() {
        let _serial = cpu::one_profiling_test_at_a_time();
        let pprof = Pprof::new();
        let Handled::Blocking(job) = pprof.handle(&local(), "profile", Some("seconds=30")) else {
            panic!("a CPU profile is blocking work")
        };
        for profile in ["profile", "flamegraph"] {
            let r = ready(pprof.handle(&local(), profile, Some("seconds=1")));
            assert_eq!(r.status, 409);
            assert!(r.body_text().contains("profiling is already in use"));
            assert!(has_go_pprof_header(&r));
        }
        let cancel = job.cancel_on_drop();
        let running = std::thread::spawn(move || job.run());
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(cancel);
        assert_eq!(running.join().unwrap().status, 499);
        // Free again: the next request gets the profiler.
        assert!(matches!(
            pprof.handle(&local(), "profile", Some("seconds=1")),
            Handled::Blocking(_)
        ));
    }

    #[test]
    fn the_index_links_only_what_is_served() {
        let r = ready(Pprof::new().handle(&local(), "", None));
        let html = r.body_text();
        assert!(html.contains(r#"href="profile""#));
        assert!(html.contains(r#"href="flamegraph?seconds=10""#));
        assert!(!html.contains(r#"href="cmdline""#));
        assert_eq!(
            html.contains(r#"href="heap""#),
            heap::availability().is_ok()
        );
        let with_cmdline = Pprof::builder().cmdline(true).build();
        assert!(ready(with_cmdline.handle(&local(), "", None))
            .body_text()
            .contains(r#"href="cmdline""#));
    }
}
