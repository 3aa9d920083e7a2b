//! Names, files and lines for a profile's addresses, found in the process (a
//! position-independent binary's addresses mean nothing to a symbolizer outside it). Each
//! module's ELF symbol table names the function an address is in; where the module carries
//! DWARF line tables (the executable built with `debug = "line-tables-only"`, or a debug
//! build), they give each address's file and line and the calls inlined there
//! (`dwarf.rs`). Modules are read through a read-only mapping of their file, so only the pages
//! of the tables and compilation units that hold the profile's addresses come into memory, as
//! the file's own pages; what is parsed is held only for those addresses, and the mappings
//! go before the profile is encoded. A module without DWARF (a stripped library, libc) gets
//! names only.

use std::collections::HashMap;
use std::sync::Arc;

mod dwarf;
mod elf;
mod mapped;

use mapped::MappedFile;

/// A function as the profile names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Function {
    /// Demangled, without the hash: `example_axum::busy_work::busy_work` (an inlined function
    /// whose build kept only its short name: `poll`).
    pub(crate) name: String,
    /// As in the symbol table or the debug info (mangled).
    pub(crate) system_name: String,
    /// Its source file, when the module's line tables give it.
    pub(crate) filename: Option<Arc<str>>,
}

/// One frame at an address: a function, and the line in it (0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) function: usize,
    pub(crate) line: u32,
}

/// Where an address is: its frames, innermost first (every one but the last inlined into the
/// next), and the module mapping it lies in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) frames: Vec<Frame>,
    pub(crate) mapping: Option<usize>,
}

/// An executable mapping of a module, as a profile's mappings describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModuleMapping {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) offset: u64,
    pub(crate) path: String,
    pub(crate) build_id: Option<String>,
    /// Whether its locations carry files and lines.
    pub(crate) has_lines: bool,
}

/// Each address's location, and the functions and mappings they refer to.
#[derive(Debug, Default)]
pub(crate) struct Symbols {
    pub(crate) functions: Vec<Function>,
    pub(crate) locations: HashMap<usize, Location>,
    pub(crate) mappings: Vec<ModuleMapping>,
}

impl Symbols {
    /// The function index of `function`, added if new.
    fn function(&mut self, ids: &mut HashMap<Function, usize>, function: Function) -> usize {
        let next = self.functions.len();
        let id = *ids.entry(function.clone()).or_insert(next);
        if id == next {
            self.functions.push(function);
        }
        id
    }

    /// The frames of `address`, innermost first (one frame for an unknown address).
    pub(crate) fn frames(&self, address: usize) -> &[Frame] {
        self.locations
            .get(&address)
            .map_or(&[], |location| &location.frames)
    }
}

/// The frame that stands for those a stack too deep to keep whole left out (between its
/// innermost and its outermost frames).
pub(crate) const TRUNCATED_NAME: &str = "[observe: frames truncated]";

/// An executable mapping of a file, from `/proc/self/maps`.
#[derive(Debug)]
struct Mapping {
    start: usize,
    end: usize,
    offset: u64,
    path: String,
    /// Where to read it: its path, or the mapping's link when the file was replaced.
    source: String,
}

/// Symbolizes each of `addresses` (interrupted program counters and call sites, i.e. return
/// addresses minus one). Addresses no symbol covers are named by their module and offset.
pub(crate) fn symbolize(addresses: impl IntoIterator<Item = usize>) -> Symbols {
    let mappings = executable_mappings();
    // Addresses by the mapping they fall in.
    let mut by_mapping: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut unknown = Vec::new();
    let mut truncated = false;
    for address in addresses {
        if address == crate::sampler::TRUNCATED {
            truncated = true;
            continue;
        }
        match mappings
            .iter()
            .position(|m| m.start <= address && address < m.end)
        {
            Some(m) => by_mapping.entry(m).or_default().push(address),
            None => unknown.push(address),
        }
    }
    let mut symbols = Symbols::default();
    let mut ids: HashMap<Function, usize> = HashMap::new();
    // Mappings of one file are read together: it is mapped and parsed once.
    let mut by_path: HashMap<&str, Vec<usize>> = HashMap::new();
    for &m in by_mapping.keys() {
        by_path
            .entry(mappings[m].path.as_str())
            .or_default()
            .push(m);
    }
    // The executable's mappings first: pprof takes the first mapping for the main binary.
    let executable = std::env::current_exe()
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
        .unwrap_or_default();
    let mut by_path: Vec<(&str, Vec<usize>)> = by_path.into_iter().collect();
    by_path.sort_by_key(|(path, module_mappings)| {
        let is_executable = *path == executable;
        (
            !is_executable,
            module_mappings.iter().map(|&m| mappings[m].start).min(),
        )
    });
    for (path, mut module_mappings) in by_path {
        module_mappings.sort_unstable_by_key(|&m| mappings[m].start);
        let file = MappedFile::open(&mappings[module_mappings[0]].source);
        let elf = file
            .as_ref()
            .and_then(|f| object::File::parse(f.bytes()).ok());
        let build_id = elf.as_ref().and_then(elf::build_id);
        let has_lines = elf.as_ref().is_some_and(elf::has_line_tables);
        // Each address at its link-time address.
        let mut at: Vec<(usize, usize, u64, Option<u64>)> = Vec::new();
        for &m in &module_mappings {
            let mapping = &mappings[m];
            let index = symbols.mappings.len();
            symbols.mappings.push(ModuleMapping {
                start: mapping.start,
                end: mapping.end,
                offset: mapping.offset,
                path: mapping.path.clone(),
                build_id: build_id.clone(),
                has_lines,
            });
            let mut addresses = by_mapping.remove(&m).unwrap_or_default();
            addresses.sort_unstable();
            addresses.dedup();
            for address in addresses {
                let offset = (address - mapping.start) as u64 + mapping.offset;
                let link = elf.as_ref().and_then(|e| elf::link_address(e, offset));
                at.push((address, index, offset, link));
            }
        }
        let mut links: Vec<u64> = at.iter().filter_map(|(_, _, _, link)| *link).collect();
        links.sort_unstable();
        links.dedup();
        let names = elf
            .as_ref()
            .map(|e| elf::names(e, &links))
            .unwrap_or_default();
        let lines = match (&elf, &file, has_lines) {
            (Some(e), Some(f), true) => {
                dwarf::frames(e, &links, &|| f.release_pages()).unwrap_or_default()
            }
            _ => HashMap::new(),
        };
        for (address, mapping, offset, link) in at {
            let symbol = link.and_then(|l| names.get(&l));
            let dwarf = link.and_then(|l| lines.get(&l));
            let frames = frames_at(
                &mut symbols,
                &mut ids,
                address,
                (path, offset),
                symbol,
                dwarf,
            );
            symbols.locations.insert(
                address,
                Location {
                    frames,
                    mapping: Some(mapping),
                },
            );
        }
    }
    if truncated {
        let name = TRUNCATED_NAME.to_owned();
        let function = symbols.function(
            &mut ids,
            Function {
                system_name: name.clone(),
                name,
                filename: None,
            },
        );
        symbols.locations.insert(
            crate::sampler::TRUNCATED,
            Location {
                frames: vec![Frame { function, line: 0 }],
                mapping: None,
            },
        );
    }
    for address in unknown {
        let function = symbols.function(&mut ids, unnamed(address, None));
        symbols.locations.insert(
            address,
            Location {
                frames: vec![Frame { function, line: 0 }],
                mapping: None,
            },
        );
    }
    symbols
}

/// The frames of one address: the DWARF ones when the module has them (the outermost named by
/// the symbol table, which keeps the full name), else the symbol's function alone.
fn frames_at(
    symbols: &mut Symbols,
    ids: &mut HashMap<Function, usize>,
    address: usize,
    module: (&str, u64),
    symbol: Option<&String>,
    dwarf: Option<&Vec<dwarf::DwarfFrame>>,
) -> Vec<Frame> {
    let outermost = |filename: Option<Arc<str>>| match symbol {
        Some(system_name) => Function {
            name: demangled(system_name),
            system_name: system_name.clone(),
            filename,
        },
        None => Function {
            filename,
            ..unnamed(address, Some(module))
        },
    };
    let Some(dwarf) = dwarf.filter(|d| !d.is_empty()) else {
        let function = symbols.function(ids, outermost(None));
        return vec![Frame { function, line: 0 }];
    };
    let last = dwarf.len() - 1;
    dwarf
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let function = if i == last {
                outermost(frame.file.clone())
            } else {
                let system_name = frame.name.clone().unwrap_or_else(|| "[inlined]".to_owned());
                Function {
                    name: demangled(&system_name),
                    system_name,
                    filename: frame.file.clone(),
                }
            };
            Frame {
                function: symbols.function(ids, function),
                line: frame.line,
            }
        })
        .collect()
}

/// A function no symbol names: by its module and its offset in the module's file (the same in
/// every process of the binary, so profiles of two processes name it alike), else by its
/// address.
fn unnamed(address: usize, module: Option<(&str, u64)>) -> Function {
    let name = match module {
        Some((path, offset)) => {
            let file = path.rsplit('/').next().unwrap_or(path);
            format!("{file}+{offset:#x}")
        }
        None => format!("{address:#x}"),
    };
    Function {
        system_name: name.clone(),
        name,
        filename: None,
    }
}

/// `name` demangled (Rust v0 or legacy), without the legacy hash; C names as they are.
fn demangled(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

/// Whether this process's executable carries DWARF line tables (read once).
pub(crate) fn executable_has_lines() -> bool {
    static HAS_LINES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS_LINES.get_or_init(|| {
        let Some(file) = MappedFile::open("/proc/self/exe") else {
            return false;
        };
        object::File::parse(file.bytes())
            .ok()
            .is_some_and(|elf| elf::has_line_tables(&elf))
    })
}

/// What reading the symbol tables of every module mapped in this process touches: the
/// `.symtab` and `.strtab` sections (or `.dynsym` and `.dynstr` of a stripped module).
pub(crate) fn table_bytes() -> u64 {
    let mut paths: Vec<String> = executable_mappings()
        .into_iter()
        .map(|m| m.source)
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
        .iter()
        .filter_map(|path| {
            let file = MappedFile::open(path)?;
            let elf = object::File::parse(file.bytes()).ok()?;
            Some(elf::table_bytes(&elf))
        })
        .sum()
}

/// The executable mappings of files in this process.
fn executable_mappings() -> Vec<Mapping> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            // The path is the rest of the line (it may hold spaces).
            let path = line.splitn(6, char::is_whitespace).nth(5)?.trim_start();
            if !perms.contains('x') || !path.starts_with('/') {
                return None;
            }
            // A file replaced since it was mapped (a binary upgraded in place) is read through
            // the mapping's own link, not the new file at its path.
            let (path, source) = match path.strip_suffix(" (deleted)") {
                Some(path) => (path, format!("/proc/self/map_files/{start}-{end}")),
                None => (path, path.to_owned()),
            };
            Some(Mapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: path.to_owned(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_name() -> usize {
        std::hint::black_box(a_function_with_a_name as *const () as usize)
    }

    /// Inlined into its caller (a debug build inlines nothing it is not told to).
    #[inline(always)]
    fn an_inlined_helper(x: usize) -> usize {
        std::hint::black_box(x.wrapping_mul(31))
    }

    #[inline(never)]
    fn a_caller_of_the_helper(x: usize) -> (usize, usize) {
        // The address of the helper's code, inside this function.
        let here = a_caller_of_the_helper as *const () as usize;
        (an_inlined_helper(x), here)
    }

    #[test]
    fn each_address_is_named_once_and_unknown_ones_by_their_value() {
        let known = a_function_with_a_name() + 1;
        let in_libc = libc::getpid as *const () as usize;
        let symbols = symbolize([known, known, 8, in_libc]);
        assert_eq!(symbols.locations.len(), 3);
        let outermost = |a: usize| {
            let frames = symbols.frames(a);
            &symbols.functions[frames[frames.len() - 1].function]
        };
        let function = outermost(known);
        assert!(
            function
                .name
                .ends_with("symbols::tests::a_function_with_a_name"),
            "{function:?}"
        );
        assert!(function.system_name.starts_with("_R") || function.system_name.starts_with("_ZN"));
        assert_eq!(outermost(8).name, "0x8");
        assert!(
            outermost(in_libc).name.contains("getpid"),
            "{:?}",
            outermost(in_libc)
        );
    }

    #[test]
    fn a_test_binary_with_debug_info_gets_files_lines_and_its_mapping() {
        let known = a_function_with_a_name() + 1;
        let in_libc = libc::getpid as *const () as usize;
        let symbols = symbolize([in_libc, known]);
        let location = &symbols.locations[&known];
        // The executable's mapping comes first, whatever the order of the addresses.
        assert_eq!(location.mapping, Some(0));
        let frame = location.frames.last().unwrap();
        let function = &symbols.functions[frame.function];
        assert!(
            function
                .filename
                .as_deref()
                .is_some_and(|f| f.ends_with("src/symbols/mod.rs")),
            "{function:?}"
        );
        assert!(frame.line > 0, "{frame:?}");
        let mapping = &symbols.mappings[location.mapping.unwrap()];
        assert!(mapping.has_lines);
        assert!(
            mapping.build_id.as_ref().is_some_and(|id| id.len() >= 16),
            "{mapping:?}"
        );
        assert!(mapping.start <= known && known < mapping.end);
    }

    #[test]
    fn this_test_binary_has_line_tables() {
        assert!(executable_has_lines());
    }

    #[test]
    fn the_symbol_tables_of_this_test_binary_are_counted() {
        // This binary's own .symtab alone is well over 100 KiB.
        assert!(table_bytes() > 100 * 1024, "{}", table_bytes());
    }

    #[test]
    fn a_function_inlined_at_an_address_is_a_frame_of_its_own() {
        let (_, start) = a_caller_of_the_helper(3);
        // Some address inside the caller is in the inlined helper: look through its code.
        let symbols = symbolize(start..start + 256);
        let inlined = symbols.locations.values().find(|l| {
            l.frames.len() >= 2
                && symbols.functions[l.frames[0].function]
                    .name
                    .contains("an_inlined_helper")
        });
        let location = inlined.expect("an address in the inlined helper");
        let outer = &symbols.functions[location.frames.last().unwrap().function];
        assert!(outer.name.ends_with("a_caller_of_the_helper"), "{outer:?}");
    }
}
