//! Parsing ROS 2 `.msg` definitions (the rosidl grammar the agent needs: fields, arrays,
//! bounded strings and sequences, defaults and constants).

/// A primitive ROS 2 type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Bool,
    /// `byte` and `uint8` (and `char`, which ROS 2 maps to uint8).
    Octet,
    Int8,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float32,
    Float64,
    String,
}

impl Primitive {
    fn parse(name: &str) -> Option<Primitive> {
        Some(match name {
            "bool" => Primitive::Bool,
            "byte" | "uint8" | "char" => Primitive::Octet,
            "int8" => Primitive::Int8,
            "int16" => Primitive::Int16,
            "uint16" => Primitive::UInt16,
            "int32" => Primitive::Int32,
            "uint32" => Primitive::UInt32,
            "int64" => Primitive::Int64,
            "uint64" => Primitive::UInt64,
            "float32" => Primitive::Float32,
            "float64" => Primitive::Float64,
            "string" => Primitive::String,
            _ => return None,
        })
    }
}

/// What one element of a field is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseType {
    Primitive(Primitive),
    /// Another message, fully qualified as `package/Name`.
    Message(String),
}

/// How many elements a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Single,
    /// `T[N]`: exactly N, no length on the wire.
    Fixed(usize),
    /// `T[]` or `T[<=N]`: a length, then the elements.
    Sequence {
        max: Option<usize>,
    },
}

/// One field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDef {
    pub name: String,
    pub base: BaseType,
    pub arity: Arity,
}

/// A parsed `.msg` file: its fields in order (constants are checked and dropped: they are
/// not on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageDef {
    pub fields: Vec<FieldDef>,
}

/// A line of a `.msg` file that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Parses a `.msg` file of package `package`.
pub fn parse_msg(package: &str, text: &str) -> Result<MessageDef, ParseError> {
    let mut fields: Vec<FieldDef> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = number + 1;
        let fail = |reason: String| ParseError { line, reason };
        let content = strip_comment(raw).trim();
        if content.is_empty() {
            continue;
        }
        let (type_text, rest) = content
            .split_once(char::is_whitespace)
            .ok_or_else(|| fail(format!("`{content}` has a type but no field name")))?;
        let rest = rest.trim_start();
        // A constant: `TYPE NAME=VALUE` (spaces around `=` allowed).
        let (name, is_constant) = match rest.split_once('=') {
            Some((name, _value)) => (name.trim(), true),
            None => (
                rest.split_whitespace().next().unwrap_or_default(), // default value follows
                false,
            ),
        };
        if !valid_name(name) {
            return Err(fail(format!("`{name}` is not a valid field name")));
        }
        let (base, arity) = parse_type(package, type_text).map_err(fail)?;
        if is_constant {
            if arity != Arity::Single || !matches!(base, BaseType::Primitive(_)) {
                return Err(fail(format!(
                    "constant `{name}` must have a primitive, non-array type"
                )));
            }
            continue;
        }
        if fields.iter().any(|f| f.name == name) {
            return Err(fail(format!("field `{name}` is defined twice")));
        }
        fields.push(FieldDef {
            name: name.to_string(),
            base,
            arity,
        });
    }
    Ok(MessageDef { fields })
}

/// Drops a `#` comment, but not a `#` inside a quoted string value.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_type(package: &str, text: &str) -> Result<(BaseType, Arity), String> {
    let (element, arity) = match text.find('[') {
        None => (text, Arity::Single),
        Some(open) => {
            let inside = text[open + 1..]
                .strip_suffix(']')
                .ok_or_else(|| format!("`{text}`: an array type must end with `]`"))?;
            let arity = if inside.is_empty() {
                Arity::Sequence { max: None }
            } else if let Some(max) = inside.strip_prefix("<=") {
                Arity::Sequence {
                    max: Some(bound(text, max)?),
                }
            } else {
                Arity::Fixed(bound(text, inside)?)
            };
            (&text[..open], arity)
        }
    };
    // `string<=N`: a bounded string is still a string on the wire.
    let element = match element.split_once("<=") {
        Some(("string", max)) => {
            bound(text, max)?;
            "string"
        }
        Some(_) => return Err(format!("`{text}`: only strings take a `<=` bound")),
        None => element,
    };
    if element == "wstring" {
        return Err(format!(
            "`{text}`: wstring fields are not supported (ROS 2 publishers rarely use them)"
        ));
    }
    if let Some(primitive) = Primitive::parse(element) {
        return Ok((BaseType::Primitive(primitive), arity));
    }
    let qualified = match element.split('/').collect::<Vec<_>>().as_slice() {
        [name] if *name == "Header" => "std_msgs/Header".to_string(),
        [name] => format!("{package}/{name}"),
        [pkg, name] | [pkg, "msg", name] => format!("{pkg}/{name}"),
        _ => return Err(format!("`{text}` is not a type")),
    };
    let (pkg, name) = qualified.split_once('/').unwrap_or_default();
    if !valid_name(pkg) || !valid_name(name) {
        return Err(format!("`{text}` is not a type"));
    }
    Ok((BaseType::Message(qualified), arity))
}

fn bound(text: &str, digits: &str) -> Result<usize, String> {
    digits
        .parse::<usize>()
        .map_err(|_| format!("`{text}`: `{digits}` is not an array bound"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_arrays_constants_and_defaults() {
        let def = parse_msg(
            "pkg",
            "# comment\nint8 A = -1\nstring S=\"a#b\"  # tail\nfloat64[9] cov\nuint8[] data\n\
             string<=8[<=4] names\nHeader header\ngeometry_msgs/msg/Point p\nPoint q\nfloat64 w 1\n",
        )
        .unwrap();
        let arities: Vec<_> = def
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.arity))
            .collect();
        assert_eq!(
            arities,
            vec![
                ("cov", Arity::Fixed(9)),
                ("data", Arity::Sequence { max: None }),
                ("names", Arity::Sequence { max: Some(4) }),
                ("header", Arity::Single),
                ("p", Arity::Single),
                ("q", Arity::Single),
                ("w", Arity::Single),
            ]
        );
        assert_eq!(
            def.fields[3].base,
            BaseType::Message("std_msgs/Header".into())
        );
        assert_eq!(
            def.fields[4].base,
            BaseType::Message("geometry_msgs/Point".into())
        );
        assert_eq!(def.fields[5].base, BaseType::Message("pkg/Point".into()));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_msg("pkg", "int32 a\nfloat64[x] b\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("not an array bound"), "{e}");
        assert_eq!(parse_msg("pkg", "int32\n").unwrap_err().line, 1);
        assert!(parse_msg("pkg", "int32 a\nint32 a\n").is_err());
        assert!(parse_msg("pkg", "wstring w\n").is_err());
        assert!(parse_msg("pkg", "int32 9a\n").is_err());
    }
}
