//! `/debug/pprof/heap`: jemalloc's sampling heap profiler, through `jemalloc_pprof`.

use crate::error::PprofError;

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
    let gzipped = ctl
        .dump_pprof()
        .map_err(|e| PprofError::Encode(e.to_string()))?;
    drop(ctl);
    mark_symbolized(&gzipped)
}

/// Flags the mappings `jemalloc_pprof` symbolized in process as symbolized.
///
/// It leaves the flags off, so `go tool pprof` runs its own symbolizer over the binary again:
/// close to a minute for a debug build, and its names for a position-independent binary
/// mapped at 0 are wrong (`prof_log_emit_traces` for `prof_backtrace_impl`). The few
/// addresses the in-process symbolizer could not name stay addresses.
#[cfg(feature = "jemalloc-heap-profile")]
fn mark_symbolized(gzipped: &[u8]) -> Result<Vec<u8>, PprofError> {
    use std::io::{Read, Write};

    use pprof::protos::{Message, Profile};

    let encode = |e: &dyn std::fmt::Display| PprofError::Encode(format!("heap profile: {e}"));
    let mut raw = Vec::with_capacity(gzipped.len() * 4);
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut raw)
        .map_err(|e| encode(&e))?;
    let mut profile = Profile::decode(raw.as_slice()).map_err(|e| encode(&e))?;
    // jemalloc_pprof writes one mapping per segment of a file and `go tool pprof` merges
    // them, so a file counts as symbolized when any of its segments' locations is.
    let symbolized_files: std::collections::HashSet<i64> = profile
        .location
        .iter()
        .filter(|l| !l.line.is_empty())
        .filter_map(|l| profile.mapping.iter().find(|m| m.id == l.mapping_id))
        .map(|m| m.filename)
        .collect();
    for mapping in &mut profile.mapping {
        if symbolized_files.contains(&mapping.filename) {
            mapping.has_functions = true;
            mapping.has_filenames = true;
            mapping.has_line_numbers = true;
            mapping.has_inline_frames = true;
        }
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(gzipped.len()),
        flate2::Compression::default(),
    );
    gz.write_all(&profile.encode_to_vec())
        .and_then(|()| gz.finish())
        .map_err(|e| encode(&e))
}

#[cfg(not(feature = "jemalloc-heap-profile"))]
pub(crate) fn dump() -> Result<Vec<u8>, PprofError> {
    availability().map(|()| Vec::new())
}
