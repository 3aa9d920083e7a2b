//! Names for a profile's addresses, found in the process (a position-independent binary's
//! addresses mean nothing to a symbolizer outside it), from each module's ELF symbol table:
//! the executable's `.symtab`, a stripped library's `.dynsym`. Only the symbol tables are read
//! (never DWARF: parsing a library's detached debug info costs more than the memory budget of
//! a profile, `docs/performance.md`), only for the modules a profile's addresses fall in, and
//! all of it is freed before the profile is encoded. So a profile costs about the size of those
//! tables and leaves nothing behind. Names carry no file or line.

use std::collections::HashMap;
use std::fs::File;

use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable, SymbolKind};

/// A function as the profile names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Function {
    /// Demangled, without the hash: `example_axum::busy_work::busy_work`.
    pub(crate) name: String,
    /// As in the symbol table (mangled).
    pub(crate) system_name: String,
}

/// Each address's function (an index into `functions`).
#[derive(Debug, Default)]
pub(crate) struct Symbols {
    pub(crate) functions: Vec<Function>,
    pub(crate) addresses: HashMap<usize, usize>,
}

/// An executable mapping of a file, from `/proc/self/maps`.
#[derive(Debug)]
struct Mapping {
    start: usize,
    end: usize,
    offset: u64,
    path: String,
}

/// Symbolizes each of `addresses` (interrupted program counters and call sites, i.e. return
/// addresses minus one). Addresses no symbol covers are named by their hex value.
pub(crate) fn symbolize(addresses: impl IntoIterator<Item = usize>) -> Symbols {
    let mappings = executable_mappings();
    // Addresses by the module they fall in.
    let mut by_module: HashMap<&str, Vec<(usize, u64)>> = HashMap::new();
    let mut unknown = Vec::new();
    for address in addresses {
        match mappings
            .iter()
            .find(|m| m.start <= address && address < m.end)
        {
            Some(m) => by_module
                .entry(m.path.as_str())
                .or_default()
                .push((address, (address - m.start) as u64 + m.offset)),
            None => unknown.push(address),
        }
    }
    let mut symbols = Symbols::default();
    let mut ids: HashMap<Function, usize> = HashMap::new();
    let mut name = |symbols: &mut Symbols, address: usize, function: Function| {
        let next = symbols.functions.len();
        let id = *ids.entry(function.clone()).or_insert(next);
        if id == next {
            symbols.functions.push(function);
        }
        symbols.addresses.insert(address, id);
    };
    for (path, mut addresses) in by_module {
        addresses.sort_unstable();
        addresses.dedup();
        let named = names_in(path, &addresses).unwrap_or_default();
        for (address, _) in addresses {
            let function = match named.get(&address) {
                Some(system_name) => Function {
                    name: demangled(system_name),
                    system_name: system_name.clone(),
                },
                None => unnamed(address, Some(path)),
            };
            name(&mut symbols, address, function);
        }
    }
    for address in unknown {
        name(&mut symbols, address, unnamed(address, None));
    }
    symbols
}

fn unnamed(address: usize, module: Option<&str>) -> Function {
    let name = match module.and_then(|p| p.rsplit('/').next()) {
        Some(file) => format!("{file}+{address:#x}"),
        None => format!("{address:#x}"),
    };
    Function {
        system_name: name.clone(),
        name,
    }
}

/// `name` demangled (Rust v0 or legacy), without the legacy hash; C names as they are.
fn demangled(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

/// The symbol names covering `addresses` (runtime address, file offset) in the ELF file at
/// `path`, reading only its headers and symbol table.
fn names_in(path: &str, addresses: &[(usize, u64)]) -> Option<HashMap<usize, String>> {
    let cache = ReadCache::new(File::open(path).ok()?);
    let elf = object::File::parse(&cache).ok()?;
    // File offset -> link-time address, through the loadable segment that holds it.
    let segments: Vec<(u64, u64, u64)> = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, size, s.address())
        })
        .collect();
    let link_address = |offset: u64| {
        segments
            .iter()
            .find(|(start, size, _)| *start <= offset && offset < start + size)
            .map(|(start, _, address)| address + (offset - start))
    };
    let text = |symbols: object::read::SymbolIterator<'_, '_, &ReadCache<File>>| {
        symbols
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .map(|s| (s.address(), s.size(), s.index()))
            .collect::<Vec<_>>()
    };
    let mut table = text(elf.symbols());
    // A stripped library keeps only its dynamic symbols (indexes into another table).
    let dynamic = table.is_empty();
    if dynamic {
        table = text(elf.dynamic_symbols());
    }
    table.sort_unstable_by_key(|(address, _, _)| *address);
    let mut names = HashMap::with_capacity(addresses.len());
    for &(runtime, offset) in addresses {
        let Some(target) = link_address(offset) else {
            continue;
        };
        let i = table.partition_point(|(address, _, _)| *address <= target);
        let Some(&(start, size, index)) = i.checked_sub(1).map(|i| &table[i]) else {
            continue;
        };
        // A sized symbol must cover the address; an unsized one (hand-written assembly)
        // reaches to the next symbol.
        let next = table.get(i).map_or(u64::MAX, |(a, _, _)| *a);
        if (size > 0 && target >= start + size) || (size == 0 && target >= next) {
            continue;
        }
        let name = if dynamic {
            elf.dynamic_symbol_table()
                .and_then(|t| t.symbol_by_index(index).ok())
                .and_then(|s| s.name().ok().map(str::to_owned))
        } else {
            elf.symbol_by_index(index)
                .ok()
                .and_then(|s| s.name().ok().map(str::to_owned))
        };
        if let Some(name) = name {
            names.insert(runtime, name);
        }
    }
    Some(names)
}

/// What reading the symbol tables of every module mapped in this process takes: the
/// `.symtab` and `.strtab` sections (or `.dynsym` and `.dynstr` of a stripped module), from
/// the section headers alone.
pub(crate) fn table_bytes() -> u64 {
    let mut paths: Vec<String> = executable_mappings().into_iter().map(|m| m.path).collect();
    paths.sort_unstable();
    paths.dedup();
    paths.iter().map(|path| module_table_bytes(path)).sum()
}

fn module_table_bytes(path: &str) -> u64 {
    let Ok(file) = File::open(path) else { return 0 };
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return 0;
    };
    let size = |name: &str| elf.section_by_name(name).map_or(0, |s| s.size());
    match size(".symtab") {
        0 => size(".dynsym") + size(".dynstr"),
        symtab => symtab + size(".strtab"),
    }
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
            let path = fields.nth(2)?;
            if !perms.contains('x') || !path.starts_with('/') {
                return None;
            }
            Some(Mapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: path.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_name() -> usize {
        a_function_with_a_name as *const () as usize
    }

    #[test]
    fn each_address_is_named_once_and_unknown_ones_by_their_value() {
        let known = a_function_with_a_name() + 1;
        let in_libc = libc::getpid as *const () as usize;
        let symbols = symbolize([known, known, 8, in_libc]);
        assert_eq!(symbols.addresses.len(), 3);
        let function = &symbols.functions[symbols.addresses[&known]];
        assert!(
            function
                .name
                .ends_with("symbols::tests::a_function_with_a_name"),
            "{function:?}"
        );
        assert!(function.system_name.starts_with("_R") || function.system_name.starts_with("_ZN"));
        assert_eq!(symbols.functions[symbols.addresses[&8]].name, "0x8");
        let libc = &symbols.functions[symbols.addresses[&in_libc]];
        assert!(libc.name.contains("getpid"), "{libc:?}");
    }

    #[test]
    fn the_symbol_tables_of_this_test_binary_are_counted() {
        // This binary's own .symtab alone is well over 100 KiB.
        assert!(table_bytes() > 100 * 1024, "{}", table_bytes());
    }
}
