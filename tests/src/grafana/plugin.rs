//! The ClickHouse data source plugin (grafana/clickhouse-datasource v4.20.0,
//! the version docker-compose.yml installs), as far as Spillway's queries
//! meet it: the macros its backend expands and the field types it gives
//! each column of a result.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};

/// The time range a query runs over, in Unix seconds.
#[derive(Debug, Clone, Copy)]
pub struct TimeRange {
    /// Start of the range.
    pub from: u64,
    /// End of the range.
    pub to: u64,
}

/// Expands the backend's macros the way `macros.Interpolate` does
/// (`pkg/macros/macros.go`: `ClickHouseMacros` over macropro's defaults).
/// Only the macros below are modelled; any other `$__name` is left as it is,
/// as macropro leaves an unknown macro, and then reaches ClickHouse, which
/// [`ensure_no_reference`] reports.
pub fn expand_macros(sql: &str, range: TimeRange) -> Result<String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let tail = &after[name.len()..];
        let (args, tail) = match tail.strip_prefix('(') {
            Some(inner) => {
                let end = inner
                    .find(')')
                    .with_context(|| format!("unclosed $__{name}("))?;
                let args: Vec<String> = inner[..end]
                    .split(',')
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect();
                (Some(args), &inner[end + 1..])
            }
            None => (None, tail),
        };
        let one_arg = |args: &Option<Vec<String>>| -> Result<String> {
            match args.as_deref() {
                Some([col]) => Ok(col.clone()),
                Some(other) => bail!("$__{name} expected 1 argument(s), received {}", other.len()),
                None => bail!("$__{name} needs a column argument"),
            }
        };
        let (from, to) = (
            format!("toDateTime({})", range.from),
            format!("toDateTime({})", range.to),
        );
        let expanded = match name.as_str() {
            // TimeFilter: `col >= toDateTime(<from>) AND col <= toDateTime(<to>)`.
            "timeFilter" => {
                let col = one_arg(&args)?;
                Some(format!("{col} >= {from} AND {col} <= {to}"))
            }
            "fromTime" if args.is_none() => Some(from),
            "toTime" if args.is_none() => Some(to),
            _ => None,
        };
        match expanded {
            Some(text) => {
                out.push_str(&text);
                rest = tail;
            }
            None => {
                // Unknown to this model: left in place, as macropro does.
                out.push_str("$__");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Fails if a `$` survived every expansion: ClickHouse would get it
/// literally (a syntax error, or worse, a string that matches nothing), or
/// a notification would show it.
pub fn ensure_no_reference(sql: &str, what: &str) -> Result<()> {
    if let Some(at) = sql.find('$') {
        let end = sql[at..]
            .find(|c: char| c.is_whitespace() || c == ')' || c == ',')
            .map_or(sql.len(), |e| at + e);
        bail!(
            "{what}: `{}` is left as written by Grafana and the ClickHouse plugin",
            &sql[at..end]
        );
    }
    Ok(())
}

/// A column's field type as the plugin's converters give it
/// (`pkg/converters/registry.go`); Grafana's server-side expressions
/// treat the three kinds differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `String`, `LowCardinality(String)`, `FixedString`, `Enum`, IPs and
    /// their `Nullable` forms.
    String,
    /// (U)Int8..64, Float32/64, Decimal and their `Nullable` forms.
    Number,
    /// Everything else: dates and times, arrays, maps, `Bool`...
    Other,
}

impl FieldKind {
    /// The kind of a ClickHouse type name.
    pub fn of(clickhouse_type: &str) -> Self {
        let mut t = clickhouse_type.trim();
        for wrapper in ["LowCardinality(", "Nullable("] {
            if let Some(inner) = t.strip_prefix(wrapper).and_then(|s| s.strip_suffix(')')) {
                t = inner;
            }
        }
        let numeric = [
            "UInt8", "UInt16", "UInt32", "UInt64", "Int8", "Int16", "Int32", "Int64", "Float32",
            "Float64",
        ];
        if numeric.contains(&t) || t.starts_with("Decimal") {
            FieldKind::Number
        } else if t == "String"
            || t.starts_with("FixedString(")
            || t.starts_with("Enum8(")
            || t.starts_with("Enum16(")
            || t == "IPv4"
            || t == "IPv6"
        {
            FieldKind::String
        } else {
            FieldKind::Other
        }
    }
}

/// One query result as a data frame: named, typed columns.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// Column names.
    pub names: Vec<String>,
    /// ClickHouse type of each column.
    pub types: Vec<String>,
    /// Rows of cells; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl Frame {
    /// Parses ClickHouse's `TSVWithNamesAndTypes` output.
    pub fn from_tsv_with_names_and_types(text: &str) -> Result<Self> {
        let mut lines = text.lines();
        let names: Vec<String> = lines
            .next()
            .context("no header line")?
            .split('\t')
            .map(unescape)
            .collect();
        let types: Vec<String> = lines
            .next()
            .context("no types line")?
            .split('\t')
            .map(unescape)
            .collect();
        ensure!(
            names.len() == types.len(),
            "names and types differ in length"
        );
        let mut rows = Vec::new();
        for line in lines {
            let cells: Vec<Option<String>> = line
                .split('\t')
                .map(|c| (c != "\\N").then(|| unescape(c)))
                .collect();
            ensure!(
                cells.len() == names.len(),
                "row of {} cells: {line}",
                cells.len()
            );
            rows.push(cells);
        }
        Ok(Frame { names, types, rows })
    }

    /// The kind of each column.
    pub fn kinds(&self) -> Vec<FieldKind> {
        self.types.iter().map(|t| FieldKind::of(t)).collect()
    }
}

/// TSV's escapes (`\t`, `\n`, `\\`, ...).
fn unescape(cell: &str) -> String {
    let mut out = String::with_capacity(cell.len());
    let mut chars = cell.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Labels of one alert instance: string column name to value.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_expand_as_the_plugin_does() -> Result<()> {
        let range = TimeRange { from: 100, to: 200 };
        assert_eq!(
            expand_macros("WHERE $__timeFilter(time) AND x < $__toTime", range)?,
            "WHERE time >= toDateTime(100) AND time <= toDateTime(200) AND x < toDateTime(200)"
        );
        // Unknown macros stay, and are then reported.
        let kept = expand_macros("WHERE $__unknown(time)", range)?;
        assert_eq!(kept, "WHERE $__unknown(time)");
        assert!(ensure_no_reference(&kept, "q").is_err());
        assert!(expand_macros("$__timeFilter(a, b)", range).is_err());
        Ok(())
    }

    #[test]
    fn field_kinds_follow_the_plugin_converters() {
        assert_eq!(FieldKind::of("LowCardinality(String)"), FieldKind::String);
        assert_eq!(FieldKind::of("Nullable(Float64)"), FieldKind::Number);
        assert_eq!(FieldKind::of("UInt64"), FieldKind::Number);
        assert_eq!(FieldKind::of("DateTime"), FieldKind::Other);
        assert_eq!(FieldKind::of("Array(String)"), FieldKind::Other);
    }
}
