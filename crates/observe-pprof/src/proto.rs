//! The pprof `Profile` message (`profile.proto` of google/pprof), as prost types written out
//! by hand: no protoc, no build script. The CPU profile is encoded from them, and heap
//! profiles are decoded into them to flag their mappings symbolized.

/// A whole profile; strings are indexes into `string_table`, whose first entry is `""`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub(crate) sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub(crate) function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub(crate) string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub(crate) drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub(crate) keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub(crate) time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub(crate) duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub(crate) period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub(crate) period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub(crate) comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub(crate) default_sample_type: i64,
}

/// A sample's value kind and unit (`samples`/`count`, `cpu`/`nanoseconds`).
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct ValueType {
    #[prost(int64, tag = "1")]
    pub(crate) r#type: i64,
    #[prost(int64, tag = "2")]
    pub(crate) unit: i64,
}

/// One stack (innermost location first) and its values.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub(crate) location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub(crate) value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) label: Vec<Label>,
}

/// A sample label (unused by the CPU profile; kept so heap profiles round-trip).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Label {
    #[prost(int64, tag = "1")]
    pub(crate) key: i64,
    #[prost(int64, tag = "2")]
    pub(crate) str: i64,
    #[prost(int64, tag = "3")]
    pub(crate) num: i64,
    #[prost(int64, tag = "4")]
    pub(crate) num_unit: i64,
}

/// A mapped binary or library.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Mapping {
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub(crate) memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub(crate) file_offset: u64,
    #[prost(int64, tag = "5")]
    pub(crate) filename: i64,
    #[prost(int64, tag = "6")]
    pub(crate) build_id: i64,
    #[prost(bool, tag = "7")]
    pub(crate) has_functions: bool,
    #[prost(bool, tag = "8")]
    pub(crate) has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub(crate) has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub(crate) has_inline_frames: bool,
}

/// An address, with the (inlined, innermost first) source lines it belongs to.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Location {
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub(crate) address: u64,
    #[prost(message, repeated, tag = "4")]
    pub(crate) line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub(crate) is_folded: bool,
}

/// A function and a line in it.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct Line {
    #[prost(uint64, tag = "1")]
    pub(crate) function_id: u64,
    #[prost(int64, tag = "2")]
    pub(crate) line: i64,
    #[prost(int64, tag = "3")]
    pub(crate) column: i64,
}

/// A function: its name (demangled), system name (as in the binary) and source file.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Function {
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(int64, tag = "2")]
    pub(crate) name: i64,
    #[prost(int64, tag = "3")]
    pub(crate) system_name: i64,
    #[prost(int64, tag = "4")]
    pub(crate) filename: i64,
    #[prost(int64, tag = "5")]
    pub(crate) start_line: i64,
}

/// Builds a [`Profile`] from stacks of addresses, each address named by the symbolizer:
/// one location per distinct address, one function per distinct name, strings once. CPU and
/// heap profiles are both written through it.
pub(crate) struct ProfileBuilder<'a> {
    symbols: &'a crate::symbols::Symbols,
    strings: Vec<String>,
    string_ids: std::collections::HashMap<String, i64>,
    profile: Profile,
    locations: std::collections::HashMap<usize, u64>,
}

impl<'a> ProfileBuilder<'a> {
    /// A profile whose samples carry `sample_types` (`(type, unit)` each, in value order).
    pub(crate) fn new(
        symbols: &'a crate::symbols::Symbols,
        sample_types: &[(&str, &str)],
        period_type: (&str, &str),
        period: i64,
    ) -> Self {
        let mut builder = ProfileBuilder {
            symbols,
            strings: vec![String::new()],
            string_ids: [(String::new(), 0)].into(),
            profile: Profile::default(),
            locations: std::collections::HashMap::new(),
        };
        // Function i of the symbols is function id i + 1, mapping i mapping id i + 1.
        for (i, f) in symbols.functions.iter().enumerate() {
            let function = Function {
                id: i as u64 + 1,
                name: builder.string(&f.name),
                system_name: builder.string(&f.system_name),
                filename: f.filename.as_deref().map_or(0, |name| builder.string(name)),
                start_line: 0,
            };
            builder.profile.function.push(function);
        }
        for (i, m) in symbols.mappings.iter().enumerate() {
            let mapping = Mapping {
                id: i as u64 + 1,
                memory_start: m.start as u64,
                memory_limit: m.end as u64,
                file_offset: m.offset,
                filename: builder.string(&m.path),
                build_id: m.build_id.as_deref().map_or(0, |id| builder.string(id)),
                // Every location comes named: `go tool pprof` need not read the binary.
                has_functions: true,
                has_filenames: m.has_lines,
                has_line_numbers: m.has_lines,
                has_inline_frames: m.has_lines,
            };
            builder.profile.mapping.push(mapping);
        }
        builder.profile.sample_type = sample_types
            .iter()
            .map(|&(t, u)| builder.value_type(t, u))
            .collect();
        builder.profile.period_type = Some(builder.value_type(period_type.0, period_type.1));
        builder.profile.period = period;
        builder
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn value_type(&mut self, r#type: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(r#type),
            unit: self.string(unit),
        }
    }

    fn location(&mut self, address: usize) -> u64 {
        if let Some(&id) = self.locations.get(&address) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let located = self.symbols.locations.get(&address);
        self.profile.location.push(Location {
            id,
            mapping_id: located.and_then(|l| l.mapping).map_or(0, |m| m as u64 + 1),
            address: address as u64,
            // Innermost first, the function they are inlined into last.
            line: self
                .symbols
                .frames(address)
                .iter()
                .map(|frame| Line {
                    function_id: frame.function as u64 + 1,
                    line: i64::from(frame.line),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        self.locations.insert(address, id);
        id
    }

    /// A sample: `stack` innermost address first (each one the symbolizer named), with string
    /// `labels` (`http_route` and its value, ...).
    pub(crate) fn sample(&mut self, stack: &[usize], value: Vec<i64>, labels: &[(&str, String)]) {
        let location_id = stack.iter().map(|&a| self.location(a)).collect();
        let label = labels
            .iter()
            .map(|(key, value)| Label {
                key: self.string(key),
                str: self.string(value),
                ..Default::default()
            })
            .collect();
        self.profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }

    /// A sample whose stack is one made-up frame, `name` (samples observe could not keep).
    pub(crate) fn named_sample(&mut self, name: &str, value: Vec<i64>) {
        let function_id = self.profile.function.len() as u64 + 1;
        let name = self.string(name);
        self.profile.function.push(Function {
            id: function_id,
            name,
            system_name: name,
            ..Default::default()
        });
        let location_id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id: location_id,
            line: vec![Line {
                function_id,
                ..Default::default()
            }],
            ..Default::default()
        });
        self.profile.sample.push(Sample {
            location_id: vec![location_id],
            value,
            label: Vec::new(),
        });
    }

    /// The sample type `go tool pprof` shows unless told otherwise (by default the last).
    pub(crate) fn default_sample_type(&mut self, name: &str) {
        self.profile.default_sample_type = self.string(name);
    }

    /// A line of the profile's comments (`go tool pprof -comments` prints them).
    pub(crate) fn comment(&mut self, text: &str) {
        let id = self.string(text);
        self.profile.comment.push(id);
    }

    /// The protobuf, uncompressed; `time_nanos`/`duration_nanos` as the format defines them.
    pub(crate) fn finish(mut self, time_nanos: i64, duration_nanos: i64) -> Vec<u8> {
        use prost::Message;

        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
        self.profile.string_table = self.strings;
        self.profile.encode_to_vec()
    }
}

/// Gzips an encoded profile, as `go tool pprof` and Pyroscope expect it.
pub(crate) fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;

    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 3),
        flate2::Compression::default(),
    );
    gz.write_all(raw)?;
    gz.finish()
}
