//! Does the table still take what the ingester writes? RowBinary carries no
//! types: rows written into a column whose type changed are read as other
//! bytes, and the server either fails in ways that look like anything (a
//! string length of terabytes, "memory limit exceeded") or, worse, stores
//! garbage without a word (a `Float64` column made `Int64`). So the sink
//! compares each table's column types with the wire types of the rows it is
//! about to send (taken from a row by [`wire_types`]) before inserting, and
//! reports a mismatch as a schema problem, which stalls the partition
//! rather than dead-lettering or corrupting anything.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use serde::ser::{self, Impossible, Serialize};

/// How a value is written in RowBinary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wire {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Str,
    /// An array; `None` when the row's array was empty (any element).
    Array(Option<Box<Wire>>),
}

impl Wire {
    /// Whether a column of ClickHouse type `ty` reads this wire type.
    pub(crate) fn fits(&self, ty: &str) -> bool {
        let ty = unwrap(ty, "LowCardinality(").unwrap_or(ty);
        match self {
            Wire::Bool => ty == "Bool" || ty == "UInt8",
            Wire::U8 => ty == "UInt8" || ty == "Bool",
            Wire::I8 => ty == "Int8" || ty.starts_with("Enum8("),
            Wire::U16 => ty == "UInt16" || ty == "Date",
            Wire::I16 => ty == "Int16" || ty.starts_with("Enum16("),
            Wire::U32 => ty == "UInt32" || ty == "DateTime" || ty.starts_with("DateTime("),
            Wire::I32 => ty == "Int32" || ty == "Date32",
            Wire::U64 => ty == "UInt64",
            Wire::I64 => ty == "Int64" || ty.starts_with("DateTime64("),
            Wire::F32 => ty == "Float32",
            Wire::F64 => ty == "Float64",
            Wire::Str => ty == "String",
            Wire::Array(elem) => match unwrap(ty, "Array(") {
                Some(inner) => elem.as_ref().is_none_or(|e| e.fits(inner)),
                None => false,
            },
        }
    }
}

/// `inner` of `outer…inner)`.
fn unwrap<'a>(ty: &'a str, outer: &str) -> Option<&'a str> {
    ty.strip_prefix(outer)?.strip_suffix(')')
}

/// Columns of a table that do not take what the ingester writes, described
/// for a person: `columns` and `wires` are the row's, in order; `server`
/// the table's (name, type) pairs.
pub(crate) fn mismatches(
    columns: &[&str],
    wires: &[Wire],
    server: &[(String, String)],
) -> Vec<String> {
    columns
        .iter()
        .zip(wires)
        .filter_map(
            |(column, wire)| match server.iter().find(|(name, _)| name == column) {
                None => Some(format!(
                    "column `{column}` is missing (a migration not applied?)"
                )),
                Some((_, ty)) if !wire.fits(ty) => Some(format!(
                    "column `{column}` is {ty}; the ingester writes it as {wire:?}"
                )),
                Some(_) => None,
            },
        )
        .collect()
}

/// A value our rows do not use.
#[derive(Debug, thiserror::Error)]
#[error("describing a row: {0}")]
pub(crate) struct Error(String);

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, Error>;

/// The wire type of each field of `row`, in order.
pub(crate) fn wire_types<R: Serialize>(row: &R) -> Result<Vec<Wire>> {
    let mut fields = Fields(Vec::new());
    row.serialize(&mut fields)?;
    Ok(fields.0)
}

struct Fields(Vec<Wire>);

fn unsupported<T>(what: &str) -> Result<T> {
    Err(Error(format!("{what} is not supported")))
}

/// Serializes one value, remembering its wire type.
#[derive(Default)]
struct Value(Option<Wire>);

macro_rules! scalar {
    ($($method:ident: $t:ty => $wire:expr),* $(,)?) => {
        $(fn $method(self, _: $t) -> Result<()> {
            self.0 = Some($wire);
            Ok(())
        })*
    };
}

macro_rules! not_a_struct {
    ($($method:ident: $t:ty),* $(,)?) => {
        $(fn $method(self, _: $t) -> Result<()> {
            unsupported("a row that is not a struct")
        })*
    };
}

macro_rules! unsupported_rest {
    () => {
        fn serialize_char(self, _: char) -> Result<()> {
            unsupported("char")
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<()> {
            unsupported("bytes")
        }
        fn serialize_none(self) -> Result<()> {
            unsupported("Option")
        }
        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<()> {
            unsupported("Option")
        }
        fn serialize_unit(self) -> Result<()> {
            unsupported("unit")
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
            unsupported("unit struct")
        }
        fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<()> {
            unsupported("enum")
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<()> {
            unsupported("newtype struct")
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<()> {
            unsupported("enum")
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
            unsupported("tuple")
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct> {
            unsupported("tuple struct")
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant> {
            unsupported("enum")
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
            unsupported("map")
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant> {
            unsupported("enum")
        }
    };
}

impl<'a> ser::Serializer for &'a mut Value {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Elements<'a>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    scalar! {
        serialize_bool: bool => Wire::Bool,
        serialize_i8: i8 => Wire::I8,
        serialize_i16: i16 => Wire::I16,
        serialize_i32: i32 => Wire::I32,
        serialize_i64: i64 => Wire::I64,
        serialize_u8: u8 => Wire::U8,
        serialize_u16: u16 => Wire::U16,
        serialize_u32: u32 => Wire::U32,
        serialize_u64: u64 => Wire::U64,
        serialize_f32: f32 => Wire::F32,
        serialize_f64: f64 => Wire::F64,
        serialize_str: &str => Wire::Str,
    }
    unsupported_rest!();

    fn serialize_seq(self, _: Option<usize>) -> Result<Elements<'a>> {
        Ok(Elements {
            value: self,
            elem: None,
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
        unsupported("nested struct")
    }
}

/// An array's elements: the first one names the element type.
struct Elements<'a> {
    value: &'a mut Value,
    elem: Option<Wire>,
}

impl ser::SerializeSeq for Elements<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<()> {
        if self.elem.is_none() {
            let mut e = Value::default();
            v.serialize(&mut e)?;
            self.elem = e.0;
        }
        Ok(())
    }
    fn end(self) -> Result<()> {
        self.value.0 = Some(Wire::Array(self.elem.map(Box::new)));
        Ok(())
    }
}

impl ser::Serializer for &mut Fields {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), Error>;

    not_a_struct! {
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_f32: f32, serialize_f64: f64, serialize_str: &str,
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
        unsupported("a row that is not a struct")
    }
    unsupported_rest!();

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }
}

impl ser::SerializeStruct for &mut Fields {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, v: &T) -> Result<()> {
        let mut value = Value::default();
        v.serialize(&mut value)?;
        let wire = value
            .0
            .ok_or_else(|| Error(format!("field {key} wrote nothing")))?;
        self.0.push(wire);
        Ok(())
    }
    fn end(self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::rows::{SampleRow, StatusRow};

    fn sample() -> SampleRow {
        SampleRow {
            time: 1,
            time_ms: 1000,
            host_id: "h".into(),
            hostname: "h".into(),
            metric: "cpu.busy".into(),
            labels: String::new(),
            value: 1.5,
            kind: 1,
            unit: "%".into(),
            instance_id: "i".into(),
            seq: 7,
        }
    }

    fn server(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    /// The `samples` columns of both migration profiles.
    const LEGACY: &[(&str, &str)] = &[
        ("time", "DateTime"),
        ("time_ms", "UInt64"),
        ("host_id", "String"),
        ("hostname", "String"),
        ("metric", "String"),
        ("labels", "String"),
        ("value", "Float64"),
        ("kind", "Enum8('gauge' = 1, 'counter' = 2)"),
        ("unit", "String"),
        ("instance_id", "String"),
        ("seq", "UInt64"),
        ("label_keys", "Array(String)"),
    ];

    #[test]
    fn a_row_is_described_field_by_field() {
        let wires = wire_types(&sample()).unwrap();
        assert_eq!(
            wires.len(),
            <SampleRow as clickhouse::Row>::COLUMN_NAMES.len()
        );
        assert_eq!(wires[0], Wire::U32);
        assert_eq!(wires[6], Wire::F64);
        assert_eq!(wires[7], Wire::I8);
        assert_eq!(wires[10], Wire::U64);
    }

    #[test]
    fn both_profiles_take_the_samples_rows_and_a_changed_type_does_not() {
        let columns = <SampleRow as clickhouse::Row>::COLUMN_NAMES;
        let wires = wire_types(&sample()).unwrap();
        assert!(mismatches(columns, &wires, &server(LEGACY)).is_empty());
        let modern: Vec<(String, String)> = server(LEGACY)
            .into_iter()
            .map(|(n, t)| match t.as_str() {
                "String" => (n, "LowCardinality(String)".to_owned()),
                "DateTime" => (n, "DateTime('UTC')".to_owned()),
                _ => (n, t),
            })
            .collect();
        assert!(mismatches(columns, &wires, &modern).is_empty());

        let mut changed = server(LEGACY);
        changed[10].1 = "UInt32".into();
        changed[6].1 = "Int64".into();
        changed.retain(|(n, _)| n != "unit");
        let found = mismatches(columns, &wires, &changed);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().any(|m| m.contains("`seq` is UInt32")));
        assert!(found.iter().any(|m| m.contains("`value` is Int64")));
        assert!(found.iter().any(|m| m.contains("`unit` is missing")));
    }

    #[test]
    fn arrays_match_by_element_and_an_empty_one_by_shape() {
        let full = Wire::Array(Some(Box::new(Wire::U64)));
        assert!(full.fits("Array(UInt64)"));
        assert!(!full.fits("Array(UInt32)"));
        assert!(!full.fits("UInt64"));
        assert!(Wire::Array(None).fits("Array(UInt32)"));
        let status = StatusRow {
            time: 1,
            time_ms: 1,
            host_id: "h".into(),
            hostname: "h".into(),
            instance_id: "i".into(),
            agent_version: "v".into(),
            uptime_ms: 1,
            last_seq: -1,
            spool_bytes: 0,
            spool_records: 0,
            dropped_first: vec![3],
            dropped_last: Vec::new(),
            last_error: String::new(),
        };
        let wires = wire_types(&status).unwrap();
        assert_eq!(wires[10], full);
        assert_eq!(wires[11], Wire::Array(None));
    }
}
