//! What a module's ELF headers and symbol tables give: the link-time address of a file offset,
//! the name of the function an address is in (the executable's `.symtab`, a stripped library's
//! `.dynsym`), the module's build id, and how large its symbol tables are.

use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable, SymbolKind};

/// The link-time address of file offset `offset`, through the loadable segment that holds it.
pub(crate) fn link_address(elf: &object::File<'_>, offset: u64) -> Option<u64> {
    elf.segments().find_map(|segment| {
        let (start, size) = segment.file_range();
        (start <= offset && offset < start + size).then(|| segment.address() + (offset - start))
    })
}

/// The symbol names covering each of `addresses` (link-time), by address.
pub(crate) fn names(elf: &object::File<'_>, addresses: &[u64]) -> HashMap<u64, String> {
    let text = |symbols: object::read::SymbolIterator<'_, '_>| {
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
    for &target in addresses {
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
            names.insert(target, name);
        }
    }
    names
}

/// The module's GNU build id, in lower-case hex, as `go tool pprof` matches binaries by it.
pub(crate) fn build_id(elf: &object::File<'_>) -> Option<String> {
    let id = elf.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// The size of the module's symbol tables: `.symtab` and `.strtab`, or `.dynsym` and
/// `.dynstr` of a stripped module.
pub(crate) fn table_bytes(elf: &object::File<'_>) -> u64 {
    let size = |name: &str| elf.section_by_name(name).map_or(0, |s| s.size());
    match size(".symtab") {
        0 => size(".dynsym") + size(".dynstr"),
        symtab => symtab + size(".strtab"),
    }
}

/// Whether the module carries DWARF line tables.
pub(crate) fn has_line_tables(elf: &object::File<'_>) -> bool {
    elf.section_by_name(".debug_line")
        .is_some_and(|s| s.size() > 0)
}
