//! `/debug/pprof/heap`: jemalloc's sampling heap profiler, through `jemalloc_pprof`.

use crate::error::PprofError;
#[cfg(feature = "jemalloc-heap-profile")]
use crate::proto::ProfileBuilder;

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

/// What a process needs for heap profiles; repeated in every "unavailable" answer.
pub(crate) const HOW_TO_ENABLE: &str = "build with observe's `jemalloc-heap-profile` feature \
and put `observe_tower::jemalloc_heap_profiling!();` (or `observe_actix::`, `observe_pprof::`) in \
the binary crate (it installs jemalloc as the global allocator with profiling on), or make \
`observe_pprof::Jemalloc` the #[global_allocator] and start the process with \
_RJEM_MALLOC_CONF=prof:true,prof_active:true,lg_prof_sample:19; see docs/pprof.md";

/// Whether this process can produce a heap profile now; `Err` says why not and what to do.
#[cfg(feature = "jemalloc-heap-profile")]
pub(crate) fn availability() -> Result<(), PprofError> {
    use tikv_jemalloc_ctl::{epoch, profiling, stats};

    let unavailable = |why: &str| {
        Err(PprofError::HeapUnavailable(format!(
            "heap profiling is unavailable: {why}; {HOW_TO_ENABLE}"
        )))
    };
    match profiling::prof::read() {
        Ok(true) => {}
        Ok(false) => return unavailable("jemalloc runs without `prof:true`"),
        Err(e) => return unavailable(&format!("jemalloc cannot report `opt.prof` ({e})")),
    }
    // jemalloc is linked, but is it the allocator? If Rust allocates elsewhere, jemalloc
    // has seen (almost) nothing and the profile would be empty.
    let allocated = epoch::advance().and_then(|_| stats::allocated::read());
    match allocated {
        Ok(bytes) if bytes > 0 => {}
        _ => return unavailable("jemalloc is linked but is not the global allocator"),
    }
    match jemalloc_pprof::PROF_CTL.as_ref() {
        Some(ctl) => match ctl.try_lock() {
            Ok(ctl) if ctl.activated() => Ok(()),
            Ok(_) => unavailable("jemalloc's sampling is inactive (`prof_active:false`)"),
            // Someone is dumping right now: it is available.
            Err(_) => Ok(()),
        },
        None => unavailable("jemalloc runs without `prof:true`"),
    }
}

#[cfg(not(feature = "jemalloc-heap-profile"))]
pub(crate) fn availability() -> Result<(), PprofError> {
    Err(PprofError::HeapUnavailable(format!(
        "heap profiling is unavailable: this binary was built without it; {HOW_TO_ENABLE}"
    )))
}

/// Dumps jemalloc's sampled live allocations as a gzipped pprof protobuf
/// (`inuse_space`, bytes), symbolized. Blocks: call it off the async workers.
#[cfg(feature = "jemalloc-heap-profile")]
pub(crate) fn dump() -> Result<Vec<u8>, PprofError> {
    availability()?;
    let ctl = jemalloc_pprof::PROF_CTL
        .as_ref()
        .ok_or_else(|| PprofError::HeapUnavailable(HOW_TO_ENABLE.to_owned()))?;
    // `try_lock`: never block (nor panic, as `blocking_lock` would on an async worker).
    let mut ctl = ctl.try_lock().map_err(|_| PprofError::HeapBusy)?;
    let profile = ctl
        .dump_profile()
        .map_err(|e| PprofError::Encode(e.to_string()))?;
    let period = 1i64 << ctl.lg_sample();
    drop(ctl);
    // jemalloc's stacks are outermost first and hold return addresses: innermost first, and
    // one less, inside the call, as the symbolizer and the CPU profile take them.
    let stacks: Vec<(Vec<usize>, i64)> = profile
        .stacks
        .iter()
        .map(|(stack, _)| {
            let addresses = stack
                .addrs
                .iter()
                .rev()
                .map(|a| a.saturating_sub(1))
                .collect();
            (addresses, stack.weight.trunc() as i64)
        })
        .collect();
    drop(profile);
    let symbols = crate::symbols::symbolize(stacks.iter().flat_map(|(s, _)| s.iter().copied()));
    let mut encoded = ProfileBuilder::new(
        &symbols,
        &[("inuse_space", "bytes")],
        ("space", "bytes"),
        period,
    );
    for (stack, bytes) in &stacks {
        encoded.sample(stack, vec![*bytes], &[]);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let raw = encoded.finish(now.as_nanos() as i64, 0);
    crate::proto::gzip(&raw).map_err(|e| PprofError::Encode(format!("heap profile: {e}")))
}

#[cfg(not(feature = "jemalloc-heap-profile"))]
pub(crate) fn dump() -> Result<Vec<u8>, PprofError> {
    availability().map(|()| Vec::new())
}
