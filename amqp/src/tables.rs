//! Checks on the encoded field tables of a method or of basic properties, run before they
//! are parsed or after they are written.
//!
//! amq-protocol parses nested tables and arrays recursively, so one frame of a few kilobytes
//! holding thousands of tables nested in each other would overflow the stack of the task
//! decoding it and abort the whole broker. The walk here never recurses deeper than
//! [`MAX_NESTING`] and allocates nothing; input nested deeper is refused before the parser
//! sees it. On the way out, the same walk catches values amq-protocol writes with a type
//! octet that no peer reads (a short-string table value is written as `_`).

use crate::frame::method_ids;

/// How many tables and arrays may enclose each other in one field table, counting the
/// outermost table. RabbitMQ's own `x-death` headers use 4 (headers, array, table, array);
/// amq-protocol's parser takes up to 15 KiB of stack per level in a debug build, so 32
/// levels stay well inside a 2 MiB task stack.
pub(crate) const MAX_NESTING: usize = 32;

/// Why an encoded field table is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableError {
    /// Tables and arrays nest deeper than [`MAX_NESTING`].
    TooDeep,
    /// The bytes are not a field table (truncated, unknown value type, ...).
    Malformed,
}

/// A field of a method that comes before its table.
#[derive(Clone, Copy)]
enum Field {
    Octet,
    Short,
    ShortStr,
}

/// The fields before the field table of the methods that carry one.
fn fields_before_table(class_id: u16, method_id: u16) -> Option<&'static [Field]> {
    use Field::*;
    Some(match (class_id, method_id) {
        // connection.start: version-major, version-minor, server-properties
        (10, 10) => &[Octet, Octet],
        // connection.start-ok: client-properties
        (10, 11) => &[],
        // exchange.declare: reserved, exchange, type, bits, arguments
        (40, 10) => &[Short, ShortStr, ShortStr, Octet],
        // exchange.bind, exchange.unbind, queue.bind: reserved, three names, bits, arguments
        (40, 30) | (40, 40) | (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet],
        // queue.declare: reserved, queue, bits, arguments
        (50, 10) => &[Short, ShortStr, Octet],
        // queue.unbind: reserved, queue, exchange, routing-key, arguments
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr],
        // basic.consume: reserved, queue, consumer-tag, bits, arguments
        (60, 20) => &[Short, ShortStr, ShortStr, Octet],
        _ => return None,
    })
}

/// Checks the field table of a method payload (class and method ids first), if it has one.
pub(crate) fn check_method(payload: &[u8]) -> Result<(), TableError> {
    let Some((class_id, method_id)) = method_ids(payload) else {
        return Ok(());
    };
    let Some(fields) = fields_before_table(class_id, method_id) else {
        return Ok(());
    };
    let mut rest = payload.get(4..).ok_or(TableError::Malformed)?;
    for field in fields {
        let len = match field {
            Field::Octet => 1,
            Field::Short => 2,
            Field::ShortStr => 1 + usize::from(*rest.first().ok_or(TableError::Malformed)?),
        };
        rest = rest.get(len..).ok_or(TableError::Malformed)?;
    }
    skip_nested(rest, 1, true).map(|_| ())
}

/// True unless the field table at the front of `bytes` (its 32-bit length first) nests
/// tables and arrays deeper than frames may. amq-protocol's `parse_field_table` recurses once
/// per level: check bytes from a peer with this first.
pub fn field_table_within_limit(bytes: &[u8]) -> bool {
    skip_nested(bytes, 1, true) != Err(TableError::TooDeep)
}

/// Checks the headers table of encoded basic properties (flags then values), if present.
pub(crate) fn check_properties(raw: &[u8]) -> Result<(), TableError> {
    let (Some(&hi), Some(&lo)) = (raw.first(), raw.get(1)) else {
        return Err(TableError::Malformed);
    };
    let flags = u16::from_be_bytes([hi, lo]);
    if flags & (1 << 13) == 0 {
        return Ok(());
    }
    let mut rest = &raw[2..];
    // content-type and content-encoding come before the headers.
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            let len = 1 + usize::from(*rest.first().ok_or(TableError::Malformed)?);
            rest = rest.get(len..).ok_or(TableError::Malformed)?;
        }
    }
    skip_nested(rest, 1, true).map(|_| ())
}

/// What the broker reads from every message's properties without parsing them.
pub(crate) struct Scanned {
    /// The delivery mode (0 when absent).
    pub delivery_mode: u8,
    /// The priority (0 when absent).
    pub priority: u8,
    /// The expiration text: its offset in the property bytes and its length.
    pub expiration: Option<(usize, usize)>,
}

/// Validates encoded basic properties (flags then values) exactly as far as the parser
/// would, without allocating, and returns the fields every message needs (delivery mode,
/// priority, where its expiration is). Everything else stays as bytes until someone asks.
pub(crate) fn scan_properties(raw: &[u8]) -> Result<Scanned, TableError> {
    let (Some(&hi), Some(&lo)) = (raw.first(), raw.get(1)) else {
        return Err(TableError::Malformed);
    };
    let flags = u16::from_be_bytes([hi, lo]);
    let mut rest = &raw[2..];
    let (mut delivery_mode, mut priority) = (0, 0);
    let mut expiration = None;
    let short_str = |buf: &[u8]| -> Result<usize, TableError> {
        let len = usize::from(*buf.first().ok_or(TableError::Malformed)?);
        let s = buf.get(1..1 + len).ok_or(TableError::Malformed)?;
        std::str::from_utf8(s).map_err(|_| TableError::Malformed)?;
        Ok(1 + len)
    };
    for bit in (2..=15).rev() {
        if flags & (1 << bit) == 0 {
            continue;
        }
        rest = match bit {
            // headers
            13 => skip_nested(rest, 1, true)?,
            // delivery-mode, priority
            12 | 11 => {
                let (&v, after) = rest.split_first().ok_or(TableError::Malformed)?;
                if bit == 12 {
                    delivery_mode = v;
                } else {
                    priority = v;
                }
                after
            }
            // timestamp
            6 => rest.get(8..).ok_or(TableError::Malformed)?,
            // every other property is a short string
            _ => {
                let n = short_str(rest)?;
                if bit == 8 {
                    // expiration: where its text starts in `raw`, and its length
                    expiration = Some((raw.len() - rest.len() + 1, n - 1));
                }
                &rest[n..]
            }
        };
    }
    if rest.is_empty() {
        Ok(Scanned {
            delivery_mode,
            priority,
            expiration,
        })
    } else {
        Err(TableError::Malformed)
    }
}

/// A 32-bit length and the bytes after it.
fn split_len(buf: &[u8]) -> Result<(usize, &[u8]), TableError> {
    match buf {
        [a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]) as usize, rest)),
        _ => Err(TableError::Malformed),
    }
}

/// Skips a table (`table`) or an array at the front of `buf`, which `depth - 1` tables or
/// arrays enclose; returns the bytes after it.
fn skip_nested(buf: &[u8], depth: usize, table: bool) -> Result<&[u8], TableError> {
    if depth > MAX_NESTING {
        return Err(TableError::TooDeep);
    }
    let (len, rest) = split_len(buf)?;
    let mut entries = rest.get(..len).ok_or(TableError::Malformed)?;
    while !entries.is_empty() {
        if table {
            let key_len = 1 + usize::from(entries[0]);
            let key = entries.get(1..key_len).ok_or(TableError::Malformed)?;
            // Keys are short strings: UTF-8, as the parser requires.
            std::str::from_utf8(key).map_err(|_| TableError::Malformed)?;
            entries = &entries[key_len..];
        }
        let (&kind, value) = entries.split_first().ok_or(TableError::Malformed)?;
        entries = skip_value(kind, value, depth)?;
    }
    Ok(&rest[len..])
}

/// Skips a value of type `kind` at the front of `buf` (the type octets amq-protocol reads).
fn skip_value(kind: u8, buf: &[u8], depth: usize) -> Result<&[u8], TableError> {
    let len = match kind {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'S' | b'x' => {
            let (len, rest) = split_len(buf)?;
            return rest.get(len..).ok_or(TableError::Malformed);
        }
        b'F' => return skip_nested(buf, depth + 1, true),
        b'A' => return skip_nested(buf, depth + 1, false),
        _ => return Err(TableError::Malformed),
    };
    buf.get(len..).ok_or(TableError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table holding `depth - 1` tables nested in each other.
    fn nested_table(depth: usize) -> Vec<u8> {
        let mut table = 0u32.to_be_bytes().to_vec();
        for _ in 1..depth {
            let mut outer = Vec::with_capacity(table.len() + 7);
            outer.extend_from_slice(&((table.len() + 3) as u32).to_be_bytes());
            outer.extend_from_slice(&[1, b'k', b'F']);
            outer.extend_from_slice(&table);
            table = outer;
        }
        table
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted_and_one_more_is_refused() {
        assert_eq!(
            skip_nested(&nested_table(MAX_NESTING), 1, true),
            Ok(&[][..])
        );
        assert_eq!(
            skip_nested(&nested_table(MAX_NESTING + 1), 1, true),
            Err(TableError::TooDeep)
        );
    }

    #[test]
    fn short_string_type_octet_is_malformed() {
        let table = [0, 0, 0, 5, 1, b'k', b'_', 0, 0];
        assert_eq!(skip_nested(&table, 1, true), Err(TableError::Malformed));
    }

    #[test]
    fn table_longer_than_its_bytes_is_malformed() {
        assert_eq!(
            skip_nested(&[0, 0, 0, 9, 1, b'k'], 1, true),
            Err(TableError::Malformed)
        );
    }
}
