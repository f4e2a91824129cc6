//! Rows to ClickHouse's RowBinary format, into one buffer.
//!
//! The `clickhouse` crate streams an INSERT's rows in compressed chunks of
//! 256 KiB. A member killed between two chunks leaves the server a body that
//! ends cleanly after a chunk, and ClickHouse 18.16 stores that prefix as an
//! INSERT of its own; its rows differ from the whole batch's, so the batch
//! built again by the next owner is not recognised as a duplicate. Sending
//! the whole batch as one compressed block closes that gap: a body cut
//! anywhere is an incomplete block, which the server rejects. The crate's
//! serializer is private, hence this one: the types our rows use, written
//! as the crate writes them (checked against it in the tests).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use serde::ser::{self, Impossible, Serialize};
use tokio_util::bytes::BufMut;

/// A value our rows do not use.
#[derive(Debug, thiserror::Error)]
#[error("RowBinary: {0}")]
pub(crate) struct Error(String);

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, Error>;

/// Appends `rows` to `buf` in RowBinary.
pub(crate) fn write_rows<R: Serialize>(buf: &mut Vec<u8>, rows: &[R]) -> Result {
    let mut s = RowBinary { buf };
    for row in rows {
        row.serialize(&mut s)?;
    }
    Ok(())
}

struct RowBinary<'a> {
    buf: &'a mut Vec<u8>,
}

impl RowBinary<'_> {
    fn leb128(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.put_u8(byte);
                return;
            }
            self.buf.put_u8(byte | 0x80);
        }
    }
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(Error(format!("{what} is not supported")))
}

impl<'a, 'b> ser::Serializer for &'a mut RowBinary<'b> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeStruct = Self;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_bool(self, v: bool) -> Result {
        self.buf.put_u8(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.buf.put_i8(v);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.buf.put_i16_le(v);
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.buf.put_i32_le(v);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result {
        self.buf.put_i64_le(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result {
        self.buf.put_u8(v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.buf.put_u16_le(v);
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.buf.put_u32_le(v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result {
        self.buf.put_u64_le(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result {
        self.buf.put_f32_le(v);
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result {
        self.buf.put_f64_le(v);
        Ok(())
    }
    fn serialize_char(self, _v: char) -> Result {
        unsupported("char")
    }
    fn serialize_str(self, v: &str) -> Result {
        self.serialize_bytes(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.leb128(v.len() as u64);
        self.buf.put_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result {
        unsupported("Option")
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _v: &T) -> Result {
        unsupported("Option")
    }
    fn serialize_unit(self) -> Result {
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> Result {
        unsupported(v)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> Result {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
        _: &T,
    ) -> Result {
        unsupported(v)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self> {
        let Some(len) = len else {
            return unsupported("a sequence of unknown length");
        };
        self.leb128(len as u64);
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        unsupported(name)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        unsupported(name)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap> {
        unsupported("a map")
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        unsupported(name)
    }
}

impl ser::SerializeSeq for &mut RowBinary<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result {
        v.serialize(&mut **self)
    }
    fn end(self) -> Result {
        Ok(())
    }
}

impl ser::SerializeTuple for &mut RowBinary<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result {
        v.serialize(&mut **self)
    }
    fn end(self) -> Result {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut RowBinary<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, _: &'static str, v: &T) -> Result {
        v.serialize(&mut **self)
    }
    fn end(self) -> Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::rows::StatusRow;

    #[test]
    fn a_status_row_byte_for_byte() {
        let row = StatusRow {
            time: 1,
            time_ms: 2,
            host_id: "h".into(),
            hostname: "n".into(),
            instance_id: "i".into(),
            agent_version: String::new(),
            uptime_ms: 3,
            last_seq: -1,
            spool_bytes: 4,
            spool_records: 5,
            dropped_first: vec![6, 7],
            dropped_last: vec![300],
            last_error: "e".repeat(200),
        };
        let mut buf = Vec::new();
        write_rows(&mut buf, &[row]).unwrap();
        let mut want = Vec::new();
        want.extend(1u32.to_le_bytes());
        want.extend(2u64.to_le_bytes());
        want.extend(b"\x01h\x01n\x01i\x00");
        want.extend(3u64.to_le_bytes());
        want.extend((-1i64).to_le_bytes());
        want.extend(4u64.to_le_bytes());
        want.extend(5u64.to_le_bytes());
        want.push(2);
        want.extend(6u64.to_le_bytes());
        want.extend(7u64.to_le_bytes());
        want.push(1);
        want.extend(300u64.to_le_bytes());
        // 200 = 0xc8: LEB128 0xc8 0x01.
        want.extend([0xc8, 0x01]);
        want.extend("e".repeat(200).as_bytes());
        assert_eq!(buf, want);
    }
}
