//! The configured `/debug/pprof` endpoints ([`Pprof`]): one async call per request, from the
//! access rule to the profile.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use observe_core::adapter::{race, EndpointResponse, Executor, TEXT_PLAIN};

use crate::access::{Access, AccessRequest};
use crate::budget::{self, DEFAULT_MEMORY_BUDGET};
use crate::cpu::CpuProfiler;
use crate::error::PprofError;
use crate::heap::MemoryProfile;
use crate::job::{Plan, ProfileJob, Work};
use crate::params::{HeapParams, ProfileParams, DEFAULT_MAX_SECONDS};
use crate::sampler;
use crate::{heap, index, response, tasks};

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

    /// What `GET /debug/pprof/{profile}` comes to; `profile` is `""` for the index. `query` is
    /// the raw query string. The access rule is checked first, before anything else happens.
    pub(crate) fn plan(&self, req: &AccessRequest<'_>, profile: &str, query: Option<&str>) -> Plan {
        if let Err(denied) = self.config.access.check(req) {
            return Plan::Respond(denied);
        }
        let work = match profile {
            "" => {
                return Plan::Respond(index::page(
                    self.config.max_seconds,
                    self.config.cmdline,
                    req.header("host"),
                ))
            }
            "profile" | "flamegraph" => {
                let params = match ProfileParams::parse(query, self.config.max_seconds)
                    .and_then(|p| sampler::check_frequency(p.frequency()).map(|()| p))
                {
                    Ok(params) => params,
                    Err(e) => return Plan::Respond(e.into()),
                };
                let budget = self.config.memory_budget;
                if let Err(e) = budget::check("CPU profile", budget::cpu_profile(), budget) {
                    return Plan::Respond(e.into());
                }
                match CpuProfiler::acquire() {
                    Ok(profiler) => Work::Cpu {
                        profiler,
                        params,
                        flamegraph: profile == "flamegraph",
                    },
                    Err(e) => return Plan::Respond(e.into()),
                }
            }
            "heap" | "allocs" => {
                let which = if profile == "heap" {
                    MemoryProfile::Heap
                } else {
                    MemoryProfile::Allocs
                };
                let budget = self.config.memory_budget;
                let checked =
                    HeapParams::parse(query, self.config.max_seconds).and_then(|params| {
                        heap::availability()?;
                        budget::check("heap profile", budget::heap_profile(), budget)?;
                        Ok(params)
                    });
                match checked {
                    Ok(params) => Work::Memory { which, params },
                    Err(e) => return Plan::Respond(e.into()),
                }
            }
            "tasks" => {
                let budget = self.config.memory_budget;
                let alive = tasks::alive();
                let need = budget::task_dump(alive);
                let fits = budget::check(&format!("task dump of {alive} tasks"), need, budget);
                if let Err(e) = tasks::availability().and(fits) {
                    return Plan::Respond(e.into());
                }
                // The same single-flight guard as CPU profiles: one profiling job at a time.
                match CpuProfiler::acquire() {
                    Ok(profiler) => Work::Tasks {
                        _profiler: profiler,
                    },
                    Err(e) => return Plan::Respond(e.into()),
                }
            }
            "cmdline" if self.config.cmdline => {
                let args: Vec<String> = std::env::args().collect();
                return Plan::Respond(EndpointResponse::ok(
                    TEXT_PLAIN,
                    args.join("\0").into_bytes(),
                ));
            }
            "cmdline" => return Plan::Respond(PprofError::CmdlineDisabled.into()),
            other => {
                let served = index::served(self.config.cmdline).join(", ");
                let name: String = other.chars().take(40).filter(|c| !c.is_control()).collect();
                return Plan::Respond(PprofError::UnknownProfile { name, served }.into());
            }
        };
        Plan::Profile(ProfileJob {
            work,
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The response to `GET /debug/pprof/{profile}` (`profile` is `""` for the index, `query`
    /// the raw query string): the access rule first, then the parameters, then any profile on
    /// `E`'s blocking threads. A profile stops early, answered 499, once `client_gone`
    /// completes (give `std::future::pending()` when the server cannot tell) or when this
    /// future is dropped (the server dropped the request); the CPU profiler is free again
    /// within ~25 ms either way.
    pub async fn respond<E: Executor>(
        &self,
        req: &AccessRequest<'_>,
        profile: &str,
        query: Option<&str>,
        client_gone: impl Future<Output = ()>,
    ) -> EndpointResponse {
        let job = match self.plan(req, profile, query) {
            Plan::Respond(response) => return response,
            Plan::Profile(job) => job,
        };
        let cancel = job.cancel_on_drop();
        let cancel_when_gone = async move {
            client_gone.await;
            // The job sees the flag within one sampling slice and returns 499.
            drop(cancel);
            std::future::pending().await
        };
        race(E::spawn_blocking(job), cancel_when_gone)
            .await
            .unwrap_or_else(|e| response::error(500, &format!("profiling failed: {e}")))
    }

    /// Where a request for the index without its trailing slash (`/debug/pprof`) is sent, so
    /// the page's relative links resolve.
    pub fn redirect_to_index() -> EndpointResponse {
        let mut response = EndpointResponse::ok(TEXT_PLAIN, b"see /debug/pprof/\n".to_vec());
        response.status = 308;
        response.headers.push(("location", "pprof/".to_owned()));
        response
    }
}

#[cfg(test)]
mod tests {
    use observe_core::adapter::BlockingWork;

    use super::*;
    use crate::cpu;

    fn local() -> AccessRequest<'static> {
        AccessRequest::new("/debug/pprof/x", Some([127, 0, 0, 1].into()))
    }

    fn ready(r: Plan) -> EndpointResponse {
        match r {
            Plan::Respond(r) => r,
            Plan::Profile(_) => panic!("expected an immediate answer"),
        }
    }

    fn has_go_pprof_header(r: &EndpointResponse) -> bool {
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
            let r = ready(pprof.plan(&local(), profile, Some(query)));
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
            let r = ready(pprof.plan(&local(), name, None));
            assert_eq!(r.status, 404, "{name}");
            assert!(has_go_pprof_header(&r));
        }
        let r = ready(pprof.plan(&local(), "goroutine", None));
        assert!(
            r.body_text().contains("profile, flamegraph"),
            "{}",
            r.body_text()
        );
    }

    #[cfg(not(tokio_unstable))]
    #[test]
    fn the_task_dump_without_tokio_unstable_is_501_naming_the_flags() {
        let r = ready(Pprof::new().plan(&local(), "tasks", None));
        assert_eq!(r.status, 501);
        assert!(has_go_pprof_header(&r));
        assert!(
            r.body_text()
                .contains("this one lacks: RUSTFLAGS=\"--cfg tokio_unstable\""),
            "{}",
            r.body_text()
        );
        let index = ready(Pprof::new().plan(&local(), "", None));
        let index = index.body_text();
        assert!(!index.contains(r#"href="tasks""#));
        assert!(index.contains("<b>tasks</b> is not available"));
    }

    #[test]
    fn cmdline_when_enabled_is_nul_separated() {
        let pprof = Pprof::builder().cmdline(true).build();
        let r = ready(pprof.plan(&local(), "cmdline", None));
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
            assert_eq!(ready(pprof.plan(&remote, profile, Some(query))).status, 401);
        }
        let remote = AccessRequest::new("/debug/pprof/", Some([192, 0, 2, 1].into()));
        assert_eq!(ready(Pprof::new().plan(&remote, "", None)).status, 403);
    }

    #[test]
    fn a_profile_whose_worst_case_exceeds_the_memory_budget_is_503_with_the_figures() {
        let pprof = Pprof::builder().memory_budget(1024 * 1024).build();
        for profile in ["profile", "flamegraph"] {
            let r = ready(pprof.plan(&local(), profile, Some("seconds=1")));
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
            Pprof::new().plan(&local(), "profile", Some("seconds=1")),
            Plan::Profile(_)
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
        let r = ready(pprof.plan(&local(), "tasks", None));
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
            Pprof::new().plan(&local(), "tasks", None),
            Plan::Profile(_)
        ));
    }

    #[test]
    fn the_routes_adapters_mount_are_excluded_from_the_red_metrics_by_default() {
        for route in crate::PPROF_ROUTES {
            assert!(
                observe_core::DEFAULT_EXCLUDED_ROUTES.contains(&route),
                "{route}"
            );
        }
    }

    #[test]
    fn max_seconds_is_configurable_and_never_zero() {
        let pprof = Pprof::builder().max_seconds(5).unwrap().build();
        let r = ready(pprof.plan(&local(), "profile", Some("seconds=6")));
        assert_eq!(r.status, 400);
        assert!(r.body_text().contains("from 1 to 5"), "{}", r.body_text());
        assert!(Pprof::builder().max_seconds(0).is_err());
    }

    #[test]
    fn a_second_cpu_profile_while_one_runs_is_409_and_cancel_frees_it() {
        let _serial = cpu::one_profiling_test_at_a_time();
        let pprof = Pprof::new();
        let Plan::Profile(job) = pprof.plan(&local(), "profile", Some("seconds=30")) else {
            panic!("a CPU profile is blocking work")
        };
        for profile in ["profile", "flamegraph"] {
            let r = ready(pprof.plan(&local(), profile, Some("seconds=1")));
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
            pprof.plan(&local(), "profile", Some("seconds=1")),
            Plan::Profile(_)
        ));
    }

    #[test]
    fn the_index_links_only_what_is_served() {
        let r = ready(Pprof::new().plan(&local(), "", None));
        let html = r.body_text();
        assert!(html.contains(r#"href="profile""#));
        assert!(html.contains(r#"href="flamegraph?seconds=10""#));
        assert!(!html.contains(r#"href="cmdline""#));
        assert_eq!(
            html.contains(r#"href="heap""#),
            heap::availability().is_ok()
        );
        let with_cmdline = Pprof::builder().cmdline(true).build();
        assert!(ready(with_cmdline.plan(&local(), "", None))
            .body_text()
            .contains(r#"href="cmdline""#));
    }
}
