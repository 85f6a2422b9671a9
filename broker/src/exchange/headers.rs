//! Headers-exchange matching: compiling a binding's arguments into a matcher and testing a
//! message's headers against it, with RabbitMQ's rules.
//!
//! `x-match` selects the mode: `all` (the default), `any`, `all-with-x` or `any-with-x`.
//! Binding keys starting with `x-` take part only in the `-with-x` modes, and `x-match` itself
//! never does. A binding value of void asks only that the header be present; any other value
//! must equal the header's value. "all" over no keys matches every message, "any" over no keys
//! matches none, and a message without headers is matched as if its table were empty.
//!
//! Values are compared the way RabbitMQ compares them, which is by Erlang value rather than by
//! AMQP field type; see `values_equal` for what that means in practice.

use warren_amqp::{AMQPValue, FieldTable, ShortString};

const X_MATCH: &str = "x-match";

/// A compiled headers-exchange binding.
#[derive(Debug, Clone)]
pub struct HeadersBinding {
    /// True for `any`/`any-with-x`, false for `all`/`all-with-x`.
    any: bool,
    /// The keys that take part in matching, already filtered by mode, each with the value the
    /// header must equal, or `None` when the binding value was void (presence only).
    conditions: Vec<(ShortString, Option<AMQPValue>)>,
}

impl HeadersBinding {
    /// Compiles binding arguments. Errors with RabbitMQ's text for an invalid x-match value.
    ///
    /// The error text is what RabbitMQ puts after `PRECONDITION_FAILED - ` in the 406
    /// `channel.close` (adding that prefix, and keeping the whole reply text within a
    /// short string, is the caller's job). A string `x-match` with another value gives
    /// ``Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or any-with-x``;
    /// an `x-match` of any non-string type gives
    /// ``Invalid x-match field type signedint (value 5); expected longstr``, where the type is
    /// RabbitMQ's name for the field type and the value is printed as Erlang's `~tp` would.
    pub fn new(args: &FieldTable) -> Result<HeadersBinding, String> {
        let (any, with_x) = match args.inner().get(X_MATCH) {
            None => (false, false),
            // Off the wire a string is always a long string; a short string can only come from
            // inside the broker, and is taken as the string it is.
            Some(AMQPValue::LongString(s)) => x_match_mode(s.as_bytes())?,
            Some(AMQPValue::ShortString(s)) => x_match_mode(s.as_str().as_bytes())?,
            Some(other) => {
                return Err(format!(
                    "Invalid x-match field type {} (value {}); expected longstr",
                    rabbit_type(other),
                    erlang_term(other)
                ))
            }
        };
        let conditions = args
            .into_iter()
            .filter(|(key, _)| key.as_str() != X_MATCH)
            .filter(|(key, _)| with_x || !key.as_str().starts_with("x-"))
            .map(|(key, value)| {
                let expected = match value {
                    AMQPValue::Void => None,
                    v => Some(v.clone()),
                };
                (key.clone(), expected)
            })
            .collect();
        Ok(HeadersBinding { any, conditions })
    }

    /// True when a message with these headers matches.
    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let holds = |(key, expected): &(ShortString, Option<AMQPValue>)| match headers
            .and_then(|h| h.inner().get(key.as_str()))
        {
            None => false,
            Some(actual) => expected
                .as_ref()
                .is_none_or(|want| values_equal(want, actual)),
        };
        if self.any {
            self.conditions.iter().any(holds)
        } else {
            self.conditions.iter().all(holds)
        }
    }
}

/// Reads a string `x-match`: returns (any, with_x).
fn x_match_mode(value: &[u8]) -> Result<(bool, bool), String> {
    match value {
        b"all" => Ok((false, false)),
        b"any" => Ok((true, false)),
        b"all-with-x" => Ok((false, true)),
        b"any-with-x" => Ok((true, true)),
        other => Err(format!(
            "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
            erlang_binary(other)
        )),
    }
}

/// The value a field holds once RabbitMQ has decoded it into an Erlang term. Matching compares
/// these terms, not the AMQP field types: every integer width (and a timestamp) decodes to an
/// Erlang integer, both float widths to an Erlang float, and long strings and byte arrays to
/// binaries.
enum Term<'a> {
    Int(i128),
    Float(f64),
    Binary(&'a [u8]),
    Bool(bool),
    Decimal(u8, u32),
    /// Void decodes to the atom `undefined`.
    Undefined,
    /// A table decodes to a list of `{Key, Type, Value}`.
    Table(&'a FieldTable),
    /// An array decodes to a list of `{Type, Value}`.
    Array(&'a [AMQPValue]),
}

fn term(value: &AMQPValue) -> Term<'_> {
    match value {
        AMQPValue::Boolean(b) => Term::Bool(*b),
        AMQPValue::ShortShortInt(i) => Term::Int(i128::from(*i)),
        AMQPValue::ShortShortUInt(i) => Term::Int(i128::from(*i)),
        AMQPValue::ShortInt(i) => Term::Int(i128::from(*i)),
        AMQPValue::ShortUInt(i) => Term::Int(i128::from(*i)),
        AMQPValue::LongInt(i) => Term::Int(i128::from(*i)),
        AMQPValue::LongUInt(i) => Term::Int(i128::from(*i)),
        AMQPValue::LongLongInt(i) => Term::Int(i128::from(*i)),
        AMQPValue::Timestamp(t) => Term::Int(i128::from(*t)),
        // RabbitMQ decodes a 32-bit float into an Erlang (64-bit) float.
        AMQPValue::Float(f) => Term::Float(f64::from(*f)),
        AMQPValue::Double(d) => Term::Float(*d),
        AMQPValue::DecimalValue(d) => Term::Decimal(d.scale, d.value),
        AMQPValue::ShortString(s) => Term::Binary(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Term::Binary(s.as_bytes()),
        AMQPValue::ByteArray(b) => Term::Binary(b.as_slice()),
        AMQPValue::FieldArray(a) => Term::Array(a.as_slice()),
        AMQPValue::FieldTable(t) => Term::Table(t),
        AMQPValue::Void => Term::Undefined,
    }
}

/// Whether a binding value equals a header value, as RabbitMQ 3.10 decides it: the decoded
/// Erlang terms compared with `==`. So `LongInt(1)`, `LongLongInt(1)`, `Timestamp(1)` and
/// `Double(1.0)` are equal, a long string equals a byte array with the same bytes, but the long
/// string "1" is not the integer 1. Inside tables and arrays each element carries its type tag,
/// so nested values must also agree on type.
///
/// Two places where Warren does not copy RabbitMQ: RabbitMQ 4.x multiplies a message's
/// timestamp headers (not the binding's) by 1000 before comparing, which stops a timestamp
/// binding value from ever equalling the same timestamp header; Warren compares them as they
/// are, as RabbitMQ 3.x did. And Warren's tables are sorted by key, so two tables with the same
/// entries in a different wire order are equal here, where RabbitMQ compares them in order.
fn values_equal(binding: &AMQPValue, header: &AMQPValue) -> bool {
    match (term(binding), term(header)) {
        (Term::Int(a), Term::Int(b)) => a == b,
        (Term::Float(a), Term::Float(b)) => a == b,
        // RabbitMQ 3.10 compares with Erlang's `==`, under which 1 == 1.0.
        (Term::Int(i), Term::Float(f)) | (Term::Float(f), Term::Int(i)) => (i as f64) == f,
        (Term::Binary(a), Term::Binary(b)) => a == b,
        (Term::Bool(a), Term::Bool(b)) => a == b,
        (Term::Decimal(sa, va), Term::Decimal(sb, vb)) => sa == sb && va == vb,
        (Term::Undefined, Term::Undefined) => true,
        (Term::Table(a), Term::Table(b)) => {
            a.inner().len() == b.inner().len()
                && a.inner()
                    .iter()
                    .zip(b.inner())
                    .all(|((ka, va), (kb, vb))| ka == kb && typed_equal(va, vb))
        }
        (Term::Array(a), Term::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| typed_equal(x, y))
        }
        // Both are Erlang lists, and the empty table and the empty array are the same `[]`.
        (Term::Table(t), Term::Array(a)) | (Term::Array(a), Term::Table(t)) => {
            t.inner().is_empty() && a.is_empty()
        }
        _ => false,
    }
}

/// Equality of nested values, which RabbitMQ keeps tagged with their field type.
fn typed_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    rabbit_type(a) == rabbit_type(b) && values_equal(a, b)
}

/// RabbitMQ's name for a field's type (the atom its table parser tags values with).
fn rabbit_type(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        // There is no short-string field type on the wire; a string is a longstr.
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A field value printed as Erlang's `~tp` prints the term RabbitMQ decodes it to, so that
/// error texts read as RabbitMQ's do. Erlang's pretty printer would also break terms longer
/// than its 80-column line; that is not reproduced.
fn erlang_term(value: &AMQPValue) -> String {
    let mut out = String::new();
    write_term(&mut out, value);
    out
}

fn write_term(out: &mut String, value: &AMQPValue) {
    match term(value) {
        Term::Int(i) => out.push_str(&i.to_string()),
        Term::Float(f) => out.push_str(&erlang_float(f)),
        Term::Binary(b) => out.push_str(&erlang_binary(b)),
        Term::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Term::Decimal(scale, v) => out.push_str(&format!("{{{scale},{v}}}")),
        Term::Undefined => out.push_str("undefined"),
        Term::Table(t) => {
            out.push('[');
            for (i, (key, v)) in t.inner().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('{');
                out.push_str(&erlang_binary(key.as_str().as_bytes()));
                out.push(',');
                out.push_str(rabbit_type(v));
                out.push(',');
                write_term(out, v);
                out.push('}');
            }
            out.push(']');
        }
        Term::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('{');
                out.push_str(rabbit_type(v));
                out.push(',');
                write_term(out, v);
                out.push('}');
            }
            out.push(']');
        }
    }
}

/// Characters Erlang prints inside a string under its default (latin1) printable range.
fn erlang_printable(c: u32) -> bool {
    (0x20..=0x7e).contains(&c)
        || (0xa0..=0xff).contains(&c)
        || (0x08..=0x0d).contains(&c)
        || c == 0x1b
}

fn push_erlang_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{0b}' => out.push_str("\\v"),
        '\u{08}' => out.push_str("\\b"),
        '\u{0c}' => out.push_str("\\f"),
        '\u{1b}' => out.push_str("\\e"),
        c => out.push(c),
    }
}

/// A binary as `~tp` prints it: `<<"text">>` when every byte is printable, `<<"text"/utf8>>`
/// for UTF-8 text whose characters are all printable latin1, else the bytes as `<<1,2,3>>`.
fn erlang_binary(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "<<>>".to_owned();
    }
    let quoted = |chars: &mut dyn Iterator<Item = char>, suffix: &str| {
        let mut out = String::from("<<\"");
        for c in chars {
            push_erlang_char(&mut out, c);
        }
        out.push('"');
        out.push_str(suffix);
        out.push_str(">>");
        out
    };
    if bytes.is_ascii() && bytes.iter().all(|b| erlang_printable(u32::from(*b))) {
        return quoted(&mut bytes.iter().map(|b| char::from(*b)), "");
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text.chars().all(|c| erlang_printable(u32::from(c))) {
            return quoted(&mut text.chars(), "/utf8");
        }
    }
    // Not UTF-8 but printable as latin1 bytes.
    if bytes.iter().all(|b| erlang_printable(u32::from(*b))) {
        return quoted(&mut bytes.iter().map(|b| char::from(*b)), "");
    }
    let list: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
    format!("<<{}>>", list.join(","))
}

/// A float as Erlang prints it (`io_lib_format:fwrite_g/1`, OTP 25+): the shortest digits that
/// read back to the same float, in plain notation unless scientific is shorter, and always
/// scientific from 2^53 up.
fn erlang_float(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    if !f.is_finite() {
        // Erlang has no such floats (RabbitMQ would reject the frame); print something.
        return f.to_string();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: "d.ddde-x".
    let sci = format!("{:e}", f.abs());
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return f.to_string();
    };
    let Ok(exp) = exp.parse::<i64>() else {
        return f.to_string();
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let len = digits.len() as i64;
    // The value is digits × 10^place.
    let place = exp - (len - 1);
    let exp_text = exp.to_string();
    let exp_cost = exp_text.len() as i64 + 2;
    let scientific = || {
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}.0e{exp_text}")
        } else {
            format!("{first}.{rest}e{exp_text}")
        }
    };
    let body = if place < 0 {
        if exp >= 0 {
            let (int, frac) = digits.split_at((len + place) as usize);
            format!("{int}.{frac}")
        } else if 2 - place - len <= exp_cost {
            format!("0.{}{digits}", "0".repeat((-place - len) as usize))
        } else {
            scientific()
        }
    } else {
        let dot = i64::from(len == 1);
        if exp_cost + dot >= place + 2 && f.abs() < 9_007_199_254_740_992.0 {
            format!("{digits}{}.0", "0".repeat(place as usize))
        } else {
            scientific()
        }
    };
    if f < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_amqp::{ByteArray, DecimalValue, FieldArray, LongString};

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text))
    }

    fn binding(entries: &[(&str, AMQPValue)]) -> HeadersBinding {
        HeadersBinding::new(&table(entries)).expect("valid binding")
    }

    fn matches(b: &HeadersBinding, headers: &[(&str, AMQPValue)]) -> bool {
        b.matches(Some(&table(headers)))
    }

    fn error(entries: &[(&str, AMQPValue)]) -> String {
        HeadersBinding::new(&table(entries)).expect_err("invalid binding")
    }

    #[test]
    fn all_is_the_default() {
        let b = binding(&[("a", s("1")), ("b", s("2"))]);
        assert!(matches(&b, &[("a", s("1")), ("b", s("2"))]));
        assert!(matches(&b, &[("a", s("1")), ("b", s("2")), ("c", s("3"))]));
        assert!(!matches(&b, &[("a", s("1"))]));
        assert!(!matches(&b, &[("a", s("1")), ("b", s("3"))]));
        assert!(!matches(&b, &[]));
        assert!(!b.matches(None));

        let explicit = binding(&[("x-match", s("all")), ("a", s("1")), ("b", s("2"))]);
        assert!(matches(&explicit, &[("a", s("1")), ("b", s("2"))]));
        assert!(!matches(&explicit, &[("a", s("1"))]));
    }

    #[test]
    fn any_needs_one_match() {
        let b = binding(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]);
        assert!(matches(&b, &[("a", s("1"))]));
        assert!(matches(&b, &[("b", s("2")), ("a", s("wrong"))]));
        assert!(!matches(&b, &[("a", s("2")), ("b", s("1"))]));
        assert!(!matches(&b, &[("c", s("1"))]));
        assert!(!matches(&b, &[]));
        assert!(!b.matches(None));
    }

    #[test]
    fn no_keys_all_matches_everything_any_nothing() {
        let all = binding(&[]);
        assert!(all.matches(None));
        assert!(matches(&all, &[]));
        assert!(matches(&all, &[("a", s("1"))]));

        let any = binding(&[("x-match", s("any"))]);
        assert!(!any.matches(None));
        assert!(!matches(&any, &[]));
        assert!(!matches(&any, &[("a", s("1"))]));
    }

    #[test]
    fn x_keys_are_ignored_without_with_x() {
        let all = binding(&[("x-match", s("all")), ("x-foo", s("1"))]);
        assert!(all.matches(None));
        assert!(matches(&all, &[("x-foo", s("2"))]));

        let any = binding(&[("x-match", s("any")), ("x-foo", s("1"))]);
        assert!(!matches(&any, &[("x-foo", s("1"))]));

        let mixed = binding(&[("x-foo", s("1")), ("a", s("1"))]);
        assert!(matches(&mixed, &[("a", s("1"))]));
        assert!(matches(&mixed, &[("a", s("1")), ("x-foo", s("other"))]));
        // Only a literal "x-" prefix is special.
        let x_without_dash = binding(&[("xfoo", s("1"))]);
        assert!(!matches(&x_without_dash, &[]));
    }

    #[test]
    fn with_x_modes_match_x_keys() {
        let all = binding(&[
            ("x-match", s("all-with-x")),
            ("x-foo", s("1")),
            ("a", s("1")),
        ]);
        assert!(matches(&all, &[("x-foo", s("1")), ("a", s("1"))]));
        assert!(!matches(&all, &[("a", s("1"))]));
        assert!(!matches(&all, &[("x-foo", s("2")), ("a", s("1"))]));

        let any = binding(&[
            ("x-match", s("any-with-x")),
            ("x-foo", s("1")),
            ("a", s("1")),
        ]);
        assert!(matches(&any, &[("x-foo", s("1"))]));
        assert!(matches(&any, &[("a", s("1"))]));
        assert!(!matches(&any, &[("x-foo", s("2")), ("a", s("2"))]));
    }

    #[test]
    fn x_match_itself_never_takes_part() {
        let all = binding(&[("x-match", s("all-with-x"))]);
        assert!(all.matches(None));
        assert!(matches(&all, &[("x-match", s("any"))]));

        let any = binding(&[("x-match", s("any-with-x"))]);
        assert!(!matches(&any, &[("x-match", s("any-with-x"))]));
    }

    #[test]
    fn void_means_present_with_any_value() {
        let b = binding(&[("a", AMQPValue::Void)]);
        assert!(matches(&b, &[("a", s("anything"))]));
        assert!(matches(&b, &[("a", AMQPValue::LongInt(3))]));
        assert!(matches(&b, &[("a", AMQPValue::Void)]));
        assert!(matches(
            &b,
            &[("a", AMQPValue::FieldTable(FieldTable::default()))]
        ));
        assert!(!matches(&b, &[("b", s("x"))]));
        assert!(!b.matches(None));

        let any = binding(&[("x-match", s("any")), ("a", AMQPValue::Void), ("b", s("1"))]);
        assert!(matches(&any, &[("a", AMQPValue::Boolean(false))]));
        assert!(!matches(&any, &[("b", s("2"))]));

        // A void header is not equal to a non-void binding value.
        let valued = binding(&[("a", s(""))]);
        assert!(!matches(&valued, &[("a", AMQPValue::Void)]));
    }

    #[test]
    fn strings_and_numbers_differ() {
        let b = binding(&[("a", s("1"))]);
        assert!(!matches(&b, &[("a", AMQPValue::LongInt(1))]));
        let b = binding(&[("a", AMQPValue::LongInt(1))]);
        assert!(!matches(&b, &[("a", s("1"))]));
        assert!(!matches(&b, &[("a", AMQPValue::Boolean(true))]));
        assert!(!matches(&b, &[("a", AMQPValue::LongInt(2))]));
    }

    #[test]
    fn integers_compare_by_value_across_widths() {
        let b = binding(&[("n", AMQPValue::LongInt(7))]);
        for header in [
            AMQPValue::ShortShortInt(7),
            AMQPValue::ShortShortUInt(7),
            AMQPValue::ShortInt(7),
            AMQPValue::ShortUInt(7),
            AMQPValue::LongInt(7),
            AMQPValue::LongUInt(7),
            AMQPValue::LongLongInt(7),
            AMQPValue::Timestamp(7),
        ] {
            assert!(matches(&b, &[("n", header.clone())]), "{header:?}");
        }
        let negative = binding(&[("n", AMQPValue::ShortShortInt(-1))]);
        assert!(matches(&negative, &[("n", AMQPValue::LongLongInt(-1))]));
        assert!(!matches(
            &negative,
            &[("n", AMQPValue::ShortShortUInt(255))]
        ));
        let big = binding(&[("n", AMQPValue::Timestamp(u64::MAX))]);
        assert!(!matches(&big, &[("n", AMQPValue::LongLongInt(-1))]));
    }

    #[test]
    fn floats_compare_by_value_and_equal_integers_of_the_same_value() {
        let b = binding(&[("f", AMQPValue::Double(0.5))]);
        assert!(matches(&b, &[("f", AMQPValue::Float(0.5))]));
        assert!(matches(&b, &[("f", AMQPValue::Double(0.5))]));
        assert!(!matches(&b, &[("f", AMQPValue::Double(0.25))]));
        // 0.1f32 widens to 0.10000000149011612, not 0.1.
        let tenth = binding(&[("f", AMQPValue::Double(0.1))]);
        assert!(!matches(&tenth, &[("f", AMQPValue::Float(0.1))]));
        // RabbitMQ 3.10 compares with Erlang's ==, under which 1 == 1.0.
        let one = binding(&[("f", AMQPValue::Double(1.0))]);
        assert!(matches(&one, &[("f", AMQPValue::LongInt(1))]));
        assert!(!matches(&one, &[("f", AMQPValue::LongInt(2))]));
    }

    #[test]
    fn binaries_compare_by_bytes() {
        let b = binding(&[("k", s("abc"))]);
        assert!(matches(
            &b,
            &[("k", AMQPValue::ByteArray(ByteArray::from(b"abc".to_vec())))]
        ));
        assert!(matches(&b, &[("k", AMQPValue::ShortString("abc".into()))]));
        assert!(!matches(&b, &[("k", s("abcd"))]));
        assert!(!matches(&b, &[("k", s("ABC"))]));
    }

    #[test]
    fn other_scalars() {
        let b = binding(&[("t", AMQPValue::Boolean(true))]);
        assert!(matches(&b, &[("t", AMQPValue::Boolean(true))]));
        assert!(!matches(&b, &[("t", AMQPValue::Boolean(false))]));
        assert!(!matches(&b, &[("t", AMQPValue::ShortShortUInt(1))]));

        let d = |scale, value| AMQPValue::DecimalValue(DecimalValue { scale, value });
        let b = binding(&[("d", d(2, 150))]);
        assert!(matches(&b, &[("d", d(2, 150))]));
        // {1,15} is not {2,150} even though both are 1.5.
        assert!(!matches(&b, &[("d", d(1, 15))]));
    }

    #[test]
    fn nested_values_keep_their_types() {
        let inner = |v: AMQPValue| AMQPValue::FieldTable(table(&[("x", v), ("y", s("z"))]));
        let b = binding(&[("t", inner(AMQPValue::LongInt(1)))]);
        assert!(matches(&b, &[("t", inner(AMQPValue::LongInt(1)))]));
        assert!(!matches(&b, &[("t", inner(AMQPValue::LongLongInt(1)))]));
        assert!(!matches(&b, &[("t", inner(AMQPValue::LongInt(2)))]));
        assert!(!matches(
            &b,
            &[(
                "t",
                AMQPValue::FieldTable(table(&[("x", AMQPValue::LongInt(1))]))
            )]
        ));

        let array = |vals: Vec<AMQPValue>| AMQPValue::FieldArray(FieldArray::from(vals));
        let b = binding(&[("a", array(vec![s("p"), AMQPValue::ShortInt(3)]))]);
        assert!(matches(
            &b,
            &[("a", array(vec![s("p"), AMQPValue::ShortInt(3)]))]
        ));
        assert!(!matches(
            &b,
            &[("a", array(vec![s("p"), AMQPValue::LongInt(3)]))]
        ));
        assert!(!matches(&b, &[("a", array(vec![s("p")]))]));
        assert!(!matches(
            &b,
            &[("a", array(vec![AMQPValue::ShortInt(3), s("p")]))]
        ));
        // The same bytes as a byte array carry another type tag inside an array.
        let bytes = AMQPValue::ByteArray(ByteArray::from(b"p".to_vec()));
        assert!(!matches(
            &b,
            &[("a", array(vec![bytes, AMQPValue::ShortInt(3)]))]
        ));

        // Both decode to the empty Erlang list.
        let empty_table = binding(&[("e", AMQPValue::FieldTable(FieldTable::default()))]);
        assert!(matches(&empty_table, &[("e", array(vec![]))]));
        assert!(!matches(&empty_table, &[("e", array(vec![s("x")]))]));
    }

    #[test]
    fn invalid_x_match_value() {
        assert_eq!(
            error(&[("x-match", s("foo"))]),
            "Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x"
        );
        assert_eq!(
            error(&[("x-match", s("ALL"))]),
            "Invalid x-match field value <<\"ALL\">>; expected all, any, all-with-x, or any-with-x"
        );
        assert_eq!(
            error(&[("x-match", s(""))]),
            "Invalid x-match field value <<>>; expected all, any, all-with-x, or any-with-x"
        );
        assert_eq!(
            error(&[("x-match", s("say \"hi\"\\\n"))]),
            "Invalid x-match field value <<\"say \\\"hi\\\"\\\\\\n\">>; \
             expected all, any, all-with-x, or any-with-x"
        );
        assert_eq!(
            error(&[("x-match", s("café"))]),
            "Invalid x-match field value <<\"café\"/utf8>>; \
             expected all, any, all-with-x, or any-with-x"
        );
        assert_eq!(
            error(&[(
                "x-match",
                AMQPValue::LongString(LongString::from(vec![0u8, 255]))
            )]),
            "Invalid x-match field value <<0,255>>; expected all, any, all-with-x, or any-with-x"
        );
        assert_eq!(
            error(&[("x-match", s("any-with-X"))]),
            "Invalid x-match field value <<\"any-with-X\">>; \
             expected all, any, all-with-x, or any-with-x"
        );
    }

    #[test]
    fn invalid_x_match_type() {
        let cases: Vec<(AMQPValue, &str)> = vec![
            (AMQPValue::LongInt(5), "signedint (value 5)"),
            (AMQPValue::ShortShortInt(-3), "byte (value -3)"),
            (
                AMQPValue::LongLongInt(1 << 40),
                "long (value 1099511627776)",
            ),
            (AMQPValue::Timestamp(17), "timestamp (value 17)"),
            (AMQPValue::Boolean(true), "bool (value true)"),
            (AMQPValue::Void, "void (value undefined)"),
            (AMQPValue::Double(1.5), "double (value 1.5)"),
            (
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 12345,
                }),
                "decimal (value {2,12345})",
            ),
            (
                AMQPValue::ByteArray(ByteArray::from(b"any".to_vec())),
                "binary (value <<\"any\">>)",
            ),
            (
                AMQPValue::FieldTable(table(&[("a", AMQPValue::LongInt(1)), ("b", s("c"))])),
                "table (value [{<<\"a\">>,signedint,1},{<<\"b\">>,longstr,<<\"c\">>}])",
            ),
            (
                AMQPValue::FieldArray(FieldArray::from(vec![s("any"), AMQPValue::Void])),
                "array (value [{longstr,<<\"any\">>},{void,undefined}])",
            ),
            (
                AMQPValue::FieldArray(FieldArray::default()),
                "array (value [])",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                error(&[("x-match", value)]),
                format!("Invalid x-match field type {expected}; expected longstr")
            );
        }
    }

    #[test]
    fn short_string_x_match_is_read_as_a_string() {
        let b = binding(&[
            ("x-match", AMQPValue::ShortString("any".into())),
            ("a", s("1")),
        ]);
        assert!(matches(&b, &[("a", s("1"))]));
        assert!(!matches(&b, &[]));
        assert!(HeadersBinding::new(&table(&[(
            "x-match",
            AMQPValue::ShortString("nope".into())
        )]))
        .is_err());
    }

    #[test]
    fn erlang_float_formatting() {
        for (f, text) in [
            (1.5, "1.5"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (10.0, "10.0"),
            (100.0, "100.0"),
            (1000.0, "1.0e3"),
            (12345.0, "12345.0"),
            (123456.789, "123456.789"),
            (0.1, "0.1"),
            (0.001, "0.001"),
            (0.0001, "1.0e-4"),
            (1.0e-10, "1.0e-10"),
            (1.25e-7, "1.25e-7"),
            (1.0e20, "1.0e20"),
            (9_007_199_254_740_992.0, "9.007199254740992e15"),
            (f64::from(0.1f32), "0.10000000149011612"),
        ] {
            assert_eq!(erlang_float(f), text, "{f:e}");
        }
    }
}
