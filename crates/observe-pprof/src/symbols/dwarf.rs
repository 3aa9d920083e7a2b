//! Files, lines and inlined frames from a module's DWARF (an executable built with line
//! tables: `debug = "line-tables-only"` in its release profile, or a debug build).
//!
//! Only the compilation units that hold a profile's addresses are read, found through
//! `.debug_aranges`, and each is read as a stream: its line program row by row and its tree of
//! functions entry by entry, keeping only what lands on those addresses. Nothing is held per
//! unit but its file names while it is read, so the memory is the answer's, whatever the size
//! of the debug info.

use std::collections::HashMap;
use std::sync::Arc;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, Section, UnitOffset};
use object::{Object, ObjectSection};

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// One frame at an address, innermost first in a [`frames`] answer. Every frame but the last is
/// a function inlined into the next; the last is the function the code belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DwarfFrame {
    /// The function's name as DWARF gives it: a mangled linkage name when the build keeps it,
    /// else its short name (`poll`); `None` when there is none.
    pub(crate) name: Option<String>,
    /// The source file of the line, when known.
    pub(crate) file: Option<Arc<str>>,
    /// The line, 0 when unknown.
    pub(crate) line: u32,
}

/// The frames at each of `targets` (link-time addresses, sorted, without duplicates) in the
/// module parsed as `file`; `None` when it has no usable DWARF (none, or compressed: reading
/// compressed sections would copy them whole). `after_unit` runs after each compilation unit
/// is read (to give its pages back).
pub(crate) fn frames(
    file: &object::File<'_>,
    targets: &[u64],
    after_unit: &dyn Fn(),
) -> Option<HashMap<u64, Vec<DwarfFrame>>> {
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let mut usable = true;
    let load = |id: gimli::SectionId| -> Result<Reader<'_>, gimli::Error> {
        let data = match file.section_by_name(id.name()) {
            Some(section) => {
                let compressed = section
                    .compressed_file_range()
                    .map(|r| r.format != object::CompressionFormat::None)
                    .unwrap_or(true);
                if compressed {
                    usable = false;
                }
                section.data().unwrap_or(&[])
            }
            None => &[],
        };
        Ok(EndianSlice::new(data, endian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    if !usable || dwarf.debug_info.reader().is_empty() || dwarf.debug_line.reader().is_empty() {
        return None;
    }
    let mut answer = HashMap::with_capacity(targets.len());
    let mut other_units = OtherUnits::default();
    for (unit_offset, unit_targets) in targets_by_unit(&dwarf, targets) {
        let Ok(header) = dwarf.debug_info.header_from_offset(unit_offset) else {
            continue;
        };
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let files = FileNames::new(&dwarf, &unit);
        let leaves = leaf_lines(&unit, &files, &unit_targets);
        let chains = inline_chains(&dwarf, &unit, &files, &unit_targets, &mut other_units);
        for &target in &unit_targets {
            let (file, line) = leaves.get(&target).cloned().unwrap_or((None, 0));
            let chain = chains.get(&target).map(Vec::as_slice).unwrap_or(&[]);
            answer.insert(target, frames_of(chain, file, line));
        }
        after_unit();
    }
    Some(answer)
}

/// Each compilation unit holding some of `targets`, with those targets (sorted), from
/// `.debug_aranges`.
fn targets_by_unit(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    targets: &[u64],
) -> HashMap<gimli::DebugInfoOffset, Vec<u64>> {
    let mut ranges = Vec::new();
    let mut headers = dwarf.debug_aranges.headers();
    while let Ok(Some(header)) = headers.next() {
        let unit = header.debug_info_offset();
        let mut entries = header.entries();
        while let Ok(Some(entry)) = entries.next() {
            let range = entry.range();
            if range.begin < range.end {
                ranges.push((range.begin, range.end, unit));
            }
        }
    }
    ranges.sort_unstable_by_key(|(begin, _, _)| *begin);
    let mut by_unit: HashMap<_, Vec<u64>> = HashMap::new();
    for &target in targets {
        let i = ranges.partition_point(|(begin, _, _)| *begin <= target);
        if let Some(&(_, end, unit)) = i.checked_sub(1).map(|i| &ranges[i]) {
            if target < end {
                by_unit.entry(unit).or_default().push(target);
            }
        }
    }
    by_unit
}

/// A unit's file names, as they are asked for: the line program's table, joined with their
/// directories and the unit's compilation directory.
struct FileNames<'a> {
    dwarf: &'a gimli::Dwarf<Reader<'a>>,
    unit: &'a gimli::Unit<Reader<'a>>,
    known: std::cell::RefCell<HashMap<u64, Option<Arc<str>>>>,
}

impl<'a> FileNames<'a> {
    fn new(dwarf: &'a gimli::Dwarf<Reader<'a>>, unit: &'a gimli::Unit<Reader<'a>>) -> Self {
        FileNames {
            dwarf,
            unit,
            known: Default::default(),
        }
    }

    fn get(&self, index: u64) -> Option<Arc<str>> {
        if let Some(known) = self.known.borrow().get(&index) {
            return known.clone();
        }
        let name = self.resolve(index);
        self.known.borrow_mut().insert(index, name.clone());
        name
    }

    fn resolve(&self, index: u64) -> Option<Arc<str>> {
        let program = self.unit.line_program.as_ref()?;
        let header = program.header();
        let entry = header.file(index)?;
        let text = |value| {
            self.dwarf
                .attr_string(self.unit, value)
                .ok()
                .map(|s: Reader<'_>| String::from_utf8_lossy(s.slice()).into_owned())
        };
        let name = text(entry.path_name())?;
        if name.starts_with('/') {
            return Some(name.into());
        }
        let mut path = String::new();
        if let Some(dir) = entry.directory(header).and_then(text) {
            if !dir.starts_with('/') {
                if let Some(comp_dir) = &self.unit.comp_dir {
                    path.push_str(&String::from_utf8_lossy(comp_dir.slice()));
                    path.push('/');
                }
            }
            path.push_str(&dir);
            path.push('/');
        } else if let Some(comp_dir) = &self.unit.comp_dir {
            path.push_str(&String::from_utf8_lossy(comp_dir.slice()));
            path.push('/');
        }
        path.push_str(&name);
        Some(path.into())
    }
}

/// The file and line of each target, from the unit's line program: a target belongs to the
/// row at or before it, up to the next row of the same sequence.
fn leaf_lines(
    unit: &gimli::Unit<Reader<'_>>,
    files: &FileNames<'_>,
    targets: &[u64],
) -> HashMap<u64, (Option<Arc<str>>, u32)> {
    let mut found = HashMap::new();
    let Some(program) = unit.line_program.clone() else {
        return found;
    };
    let mut rows = program.rows();
    // The previous row of the current sequence: its address, file index and line.
    let mut previous: Option<(u64, u64, u32)> = None;
    while let Ok(Some((_, row))) = rows.next_row() {
        let address = row.address();
        if let Some((start, file, line)) = previous {
            if start < address {
                let mut i = targets.partition_point(|&t| t < start);
                while i < targets.len() && targets[i] < address {
                    found.insert(targets[i], (files.get(file), line));
                    i += 1;
                }
            }
        }
        previous = (!row.end_sequence()).then(|| {
            let line = row
                .line()
                .map_or(0, |l| l.get().min(u32::MAX as u64) as u32);
            (address, row.file_index(), line)
        });
    }
    found
}

/// One function in an inline chain: a concrete function or an inlined call of one, outermost
/// first.
#[derive(Debug, Clone)]
struct ChainLink {
    name: Option<String>,
    /// Where the next link in was called from (for an inlined call: its call site, in this
    /// link's function).
    call_file: Option<Arc<str>>,
    call_line: u32,
}

/// For each target, the functions whose code covers it, outermost first: the concrete
/// function, then each call inlined into it down to the innermost. A function that covers no
/// target is not looked into: its inlined calls cannot cover one either.
fn inline_chains<'a, 'u>(
    dwarf: &'a gimli::Dwarf<Reader<'u>>,
    unit: &'a gimli::Unit<Reader<'u>>,
    files: &'a FileNames<'a>,
    targets: &[u64],
    other_units: &'a mut OtherUnits<'u>,
) -> HashMap<u64, Vec<ChainLink>> {
    let mut found = Found {
        dwarf,
        unit,
        files,
        chains: HashMap::new(),
        names: HashMap::new(),
        other_units,
    };
    if let Ok(mut tree) = unit.entries_tree(None) {
        if let Ok(root) = tree.root() {
            found.children(root, targets);
        }
    }
    found.chains
}

/// What [`inline_chains`] gathers while it walks a unit's tree.
struct Found<'a, 'u> {
    dwarf: &'a gimli::Dwarf<Reader<'u>>,
    unit: &'a gimli::Unit<Reader<'u>>,
    files: &'a FileNames<'a>,
    chains: HashMap<u64, Vec<ChainLink>>,
    names: HashMap<UnitOffset, Option<String>>,
    other_units: &'a mut OtherUnits<'u>,
}

impl<'u> Found<'_, 'u> {
    /// Walks the children of `node` for the `targets` it covers (all of them at the root).
    fn children(&mut self, node: gimli::EntriesTreeNode<'_, '_, Reader<'u>>, targets: &[u64]) {
        let mut children = node.children();
        while let Ok(Some(child)) = children.next() {
            let entry = child.entry();
            let tag = entry.tag();
            if tag != gimli::DW_TAG_subprogram && tag != gimli::DW_TAG_inlined_subroutine {
                // Namespaces, lexical blocks and the like may hold functions.
                if entry.has_children() && tag != gimli::DW_TAG_subroutine_type {
                    self.children(child, targets);
                }
                continue;
            }
            let covered = self.covered(entry, targets);
            if covered.is_empty() {
                continue;
            }
            self.link(entry, tag, &covered);
            self.children(child, &covered);
        }
    }

    /// Those of `targets` (sorted) the code of `entry` covers, sorted.
    fn covered(
        &self,
        entry: &gimli::DebuggingInformationEntry<Reader<'u>>,
        targets: &[u64],
    ) -> Vec<u64> {
        let mut covered = Vec::new();
        let Ok(mut ranges) = self.dwarf.die_ranges(self.unit, entry) else {
            return covered;
        };
        while let Ok(Some(range)) = ranges.next() {
            let mut i = targets.partition_point(|&t| t < range.begin);
            while i < targets.len() && targets[i] < range.end {
                covered.push(targets[i]);
                i += 1;
            }
        }
        covered.sort_unstable();
        covered.dedup();
        covered
    }

    /// Adds `entry` to the chains of the targets it covers.
    fn link(
        &mut self,
        entry: &gimli::DebuggingInformationEntry<Reader<'u>>,
        tag: gimli::DwTag,
        covered: &[u64],
    ) {
        let name = function_name(
            self.dwarf,
            self.unit,
            entry,
            &mut self.names,
            self.other_units,
            0,
        );
        let call_file = match entry.attr_value(gimli::DW_AT_call_file) {
            Some(AttributeValue::FileIndex(i)) | Some(AttributeValue::Udata(i)) => {
                self.files.get(i)
            }
            _ => None,
        };
        let call_line = match entry.attr_value(gimli::DW_AT_call_line) {
            Some(AttributeValue::Udata(l)) => l.min(u32::MAX as u64) as u32,
            _ => 0,
        };
        for &target in covered {
            let chain = self.chains.entry(target).or_default();
            // An inlined call records its call site in the link it was inlined into.
            if tag == gimli::DW_TAG_inlined_subroutine {
                if let Some(outer) = chain.last_mut() {
                    outer.call_file = call_file.clone();
                    outer.call_line = call_line;
                }
            }
            chain.push(ChainLink {
                name: name.clone(),
                call_file: None,
                call_line: 0,
            });
        }
    }
}

/// The name of the function `entry` is, or is an inlined call of: its linkage name (mangled)
/// if the build kept it, else its short name, following `DW_AT_abstract_origin` and
/// `DW_AT_specification` within the unit and into others (a function inlined from another
/// crate, std's included, is described in that crate's unit).
fn function_name<'u>(
    dwarf: &gimli::Dwarf<Reader<'u>>,
    unit: &gimli::Unit<Reader<'u>>,
    entry: &gimli::DebuggingInformationEntry<Reader<'u>>,
    known: &mut HashMap<UnitOffset, Option<String>>,
    other_units: &mut OtherUnits<'u>,
    hops: u32,
) -> Option<String> {
    let text = |value| {
        dwarf
            .attr_string(unit, value)
            .ok()
            .map(|s: Reader<'_>| String::from_utf8_lossy(s.slice()).into_owned())
    };
    for attr in [gimli::DW_AT_linkage_name, gimli::DW_AT_MIPS_linkage_name] {
        if let Some(name) = entry.attr_value(attr).and_then(text) {
            return Some(name);
        }
    }
    let short = entry.attr_value(gimli::DW_AT_name).and_then(text);
    if hops >= 4 {
        return short;
    }
    for attr in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
        match entry.attr_value(attr) {
            Some(AttributeValue::UnitRef(offset)) => {
                if let Some(name) = known.get(&offset) {
                    return name.clone().or(short);
                }
                let origin = unit.entry(offset).ok().and_then(|origin| {
                    function_name(dwarf, unit, &origin, known, other_units, hops + 1)
                });
                known.insert(offset, origin.clone());
                return origin.or(short);
            }
            Some(AttributeValue::DebugInfoRef(offset)) => {
                return other_units.name(dwarf, offset, hops + 1).or(short);
            }
            _ => {}
        }
    }
    short
}

/// Names of functions described in other units than the one being read, by offset, and where
/// each unit starts: read once per profile, as they are asked for.
#[derive(Default)]
struct OtherUnits<'u> {
    headers: Option<Vec<gimli::UnitHeader<Reader<'u>>>>,
    names: HashMap<gimli::DebugInfoOffset, Option<String>>,
}

impl<'u> OtherUnits<'u> {
    fn name(
        &mut self,
        dwarf: &gimli::Dwarf<Reader<'u>>,
        offset: gimli::DebugInfoOffset,
        hops: u32,
    ) -> Option<String> {
        if let Some(name) = self.names.get(&offset) {
            return name.clone();
        }
        let headers = self.headers.get_or_insert_with(|| {
            let mut all = Vec::new();
            let mut units = dwarf.units();
            while let Ok(Some(header)) = units.next() {
                all.push(header);
            }
            all
        });
        // The units of `.debug_info`, whose offsets are that section's.
        let start = |h: &gimli::UnitHeader<Reader<'u>>| h.offset().0;
        let i = headers.partition_point(|h| start(h) <= offset.0);
        let header = i.checked_sub(1).map(|i| headers[i]);
        let name = header.and_then(|header| {
            let unit = dwarf.unit(header).ok()?;
            let at = offset.to_unit_offset(&unit.header)?;
            let entry = unit.entry(at).ok()?;
            function_name(dwarf, &unit, &entry, &mut HashMap::new(), self, hops)
        });
        self.names.insert(offset, name.clone());
        name
    }
}

/// The frames at one address, innermost first: the innermost function's line is the line
/// table's; each function around it is at the line its inner call was made from.
fn frames_of(chain: &[ChainLink], file: Option<Arc<str>>, line: u32) -> Vec<DwarfFrame> {
    let Some((innermost, outer)) = chain.split_last() else {
        return vec![DwarfFrame {
            name: None,
            file,
            line,
        }];
    };
    let mut frames = vec![DwarfFrame {
        name: innermost.name.clone(),
        file,
        line,
    }];
    for link in outer.iter().rev() {
        frames.push(DwarfFrame {
            name: link.name.clone(),
            file: link.call_file.clone(),
            line: link.call_line,
        });
    }
    frames
}
