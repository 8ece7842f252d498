//! Decoding CDR into JSON through a serde seed driven by a resolved message type.
//!
//! The DDS layer hands the seed a CDR deserializer (`cdr-encoding`, XCDR1 alignment, the
//! byte order from the encapsulation header); the seed asks it for exactly the wire shape
//! the `.msg` definition declares.
//!
//! JSON shape: a message is an object with its fields in definition order; arrays are JSON
//! arrays, except arrays of `uint8`/`byte`/`char` (fixed or sequence), which become one
//! standard base64 string (padded), so a 1 MiB point cloud is 1.33 MiB of JSON, not 4.
//! Floats keep their exact value (float32 widened to float64, as Python does); NaN and
//! ±infinity, which JSON cannot hold, become the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use serde::de::{DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::parse::{Arity, Primitive};
use super::registry::{Element, Field, MsgType};

/// A decoded message: its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded(pub Map<String, Value>);

/// Decodes one message of a type.
#[derive(Debug, Clone)]
pub struct MessageSeed(pub Arc<MsgType>);

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = Decoded;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Decoded, D::Error> {
        StructSeed(&self.0).deserialize(deserializer).map(Decoded)
    }
}

/// Decodes a CDR payload without its 4-byte encapsulation header (tests, the fuzz target).
pub fn decode_cdr_le(ty: &Arc<MsgType>, body: &[u8]) -> Result<Decoded, cdr_encoding::Error> {
    let mut deserializer = cdr_encoding::CdrDeserializer::<byteorder::LittleEndian>::new(body);
    MessageSeed(ty.clone()).deserialize(&mut deserializer)
}

struct StructSeed<'t>(&'t MsgType);

impl<'de> DeserializeSeed<'de> for StructSeed<'_> {
    type Value = Map<String, Value>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if self.0.fields.is_empty() {
            // An empty ROS 2 message carries one placeholder octet on the wire.
            let _ = deserializer.deserialize_u8(PrimitiveVisitor(Primitive::Octet))?;
            return Ok(Map::new());
        }
        deserializer.deserialize_tuple(self.0.fields.len(), StructVisitor(self.0))
    }
}

struct StructVisitor<'t>(&'t MsgType);

impl<'de> Visitor<'de> for StructVisitor<'_> {
    type Value = Map<String, Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} message", self.0.name)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        for field in &self.0.fields {
            let value = seq.next_element_seed(FieldSeed(field))?.ok_or_else(|| {
                A::Error::custom(format!(
                    "{}: field `{}` is missing",
                    self.0.name, field.name
                ))
            })?;
            map.insert(field.name.clone(), value);
        }
        Ok(map)
    }
}

struct FieldSeed<'t>(&'t Field);

fn is_octet(element: &Element) -> bool {
    matches!(element, Element::Primitive(Primitive::Octet))
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        let element = &self.0.element;
        match self.0.arity {
            Arity::Single => ElementSeed(element).deserialize(deserializer),
            Arity::Fixed(n) if is_octet(element) => {
                deserializer.deserialize_tuple(n, OctetTupleVisitor(n))
            }
            Arity::Fixed(n) => deserializer.deserialize_tuple(
                n,
                ArrayVisitor {
                    element,
                    expected: Some(n),
                    max: Some(n),
                },
            ),
            Arity::Sequence { max } if is_octet(element) => {
                deserializer.deserialize_bytes(OctetSequenceVisitor { max })
            }
            Arity::Sequence { max } => deserializer.deserialize_seq(ArrayVisitor {
                element,
                expected: None,
                max,
            }),
        }
    }
}

struct ElementSeed<'t>(&'t Element);

impl<'de> DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.0 {
            Element::Message(ty) => StructSeed(ty).deserialize(deserializer).map(Value::Object),
            Element::Primitive(p) => {
                let visitor = PrimitiveVisitor(*p);
                match p {
                    Primitive::Bool => deserializer.deserialize_bool(visitor),
                    Primitive::Octet => deserializer.deserialize_u8(visitor),
                    Primitive::Int8 => deserializer.deserialize_i8(visitor),
                    Primitive::Int16 => deserializer.deserialize_i16(visitor),
                    Primitive::UInt16 => deserializer.deserialize_u16(visitor),
                    Primitive::Int32 => deserializer.deserialize_i32(visitor),
                    Primitive::UInt32 => deserializer.deserialize_u32(visitor),
                    Primitive::Int64 => deserializer.deserialize_i64(visitor),
                    Primitive::UInt64 => deserializer.deserialize_u64(visitor),
                    Primitive::Float32 => deserializer.deserialize_f32(visitor),
                    Primitive::Float64 => deserializer.deserialize_f64(visitor),
                    Primitive::String => deserializer.deserialize_string(visitor),
                }
            }
        }
    }
}

struct PrimitiveVisitor(Primitive);

/// A float as JSON: its exact value, or a string for what JSON cannot hold.
pub fn float_value(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None if x.is_nan() => Value::String("NaN".into()),
        None if x > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

impl<'de> Visitor<'de> for PrimitiveVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {:?}", self.0)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f32<E>(self, v: f32) -> Result<Value, E> {
        Ok(float_value(f64::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(float_value(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
}

struct ArrayVisitor<'t> {
    element: &'t Element,
    expected: Option<usize>,
    /// A bounded sequence (`int32[<=4]`) holds at most this many.
    max: Option<usize>,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.expected, self.max) {
            (Some(n), _) => write!(f, "an array of {n}"),
            (None, Some(max)) => write!(f, "a sequence of at most {max}"),
            (None, None) => f.write_str("a sequence"),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // The length came off the wire: trust it only as far as the bytes go.
        let hint = seq.size_hint().unwrap_or(0).min(4096);
        let mut items = Vec::with_capacity(hint);
        while let Some(v) = seq.next_element_seed(ElementSeed(self.element))? {
            if self.max.is_some_and(|max| items.len() >= max) {
                return Err(A::Error::invalid_length(items.len() + 1, &self));
            }
            items.push(v);
        }
        if let Some(n) = self.expected {
            if items.len() != n {
                return Err(A::Error::invalid_length(items.len(), &self));
            }
        }
        Ok(Value::Array(items))
    }
}

fn base64_value(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

struct OctetSequenceVisitor {
    max: Option<usize>,
}

impl OctetSequenceVisitor {
    fn value<E: serde::de::Error>(&self, v: &[u8]) -> Result<Value, E> {
        match self.max {
            Some(max) if v.len() > max => Err(E::invalid_length(v.len(), self)),
            _ => Ok(base64_value(v)),
        }
    }
}

impl<'de> Visitor<'de> for OctetSequenceVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max {
            Some(max) => write!(f, "a byte sequence of at most {max}"),
            None => f.write_str("a byte sequence"),
        }
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Value, E> {
        self.value(v)
    }
    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Value, E> {
        self.value(v)
    }
    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        self.value(&v)
    }
}

struct OctetTupleVisitor(usize);

impl<'de> Visitor<'de> for OctetTupleVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut bytes = Vec::with_capacity(self.0);
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        if bytes.len() != self.0 {
            return Err(A::Error::invalid_length(bytes.len(), &self));
        }
        Ok(base64_value(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::registry::Registry;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Time {
        sec: i32,
        nanosec: u32,
    }
    #[derive(Serialize)]
    struct Header {
        stamp: Time,
        frame_id: String,
    }
    #[derive(Serialize)]
    struct Status {
        status: i8,
        service: u16,
    }
    #[derive(Serialize)]
    struct NavSatFix {
        header: Header,
        status: Status,
        latitude: f64,
        longitude: f64,
        altitude: f64,
        position_covariance: [f64; 9],
        position_covariance_type: u8,
    }

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        cdr_encoding::to_vec::<_, byteorder::LittleEndian>(value).unwrap()
    }

    #[test]
    fn navsatfix_with_alignment_after_odd_fields() {
        let registry = Registry::shipped();
        let ty = registry.resolve("sensor_msgs/msg/NavSatFix").unwrap();
        let fix = NavSatFix {
            header: Header {
                stamp: Time {
                    sec: 17,
                    nanosec: 5,
                },
                frame_id: "gps".into(), // 4+4 bytes: the status then starts unaligned
            },
            status: Status {
                status: -1,
                service: 1,
            },
            latitude: 48.1,
            longitude: f64::NAN,
            altitude: 0.1,
            position_covariance: [1.5; 9],
            position_covariance_type: 2,
        };
        let decoded = decode_cdr_le(&ty, &encode(&fix)).unwrap();
        let json = serde_json::to_string(&Value::Object(decoded.0)).unwrap();
        assert_eq!(
            json,
            r#"{"header":{"stamp":{"sec":17,"nanosec":5},"frame_id":"gps"},"status":{"status":-1,"service":1},"latitude":48.1,"longitude":"NaN","altitude":0.1,"position_covariance":[1.5,1.5,1.5,1.5,1.5,1.5,1.5,1.5,1.5],"position_covariance_type":2}"#
        );
    }

    #[test]
    fn byte_arrays_are_base64_and_float32_widens_exactly() {
        #[derive(Serialize)]
        struct Image {
            header: Header,
            height: u32,
            width: u32,
            encoding: String,
            is_bigendian: u8,
            step: u32,
            #[serde(with = "serde_bytes_compat")]
            data: Vec<u8>,
        }
        mod serde_bytes_compat {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let registry = Registry::shipped();
        let ty = registry.resolve("sensor_msgs/Image").unwrap();
        let image = Image {
            header: Header {
                stamp: Time { sec: 1, nanosec: 2 },
                frame_id: String::new(),
            },
            height: 1,
            width: 3,
            encoding: "mono8".into(),
            is_bigendian: 0,
            step: 3,
            data: vec![0, 255, 7],
        };
        let decoded = decode_cdr_le(&ty, &encode(&image)).unwrap();
        assert_eq!(decoded.0["data"], Value::String("AP8H".into()));

        #[derive(Serialize)]
        struct Rgba(f32, f32, f32, f32);
        let ty = registry.resolve("std_msgs/ColorRGBA").unwrap();
        let decoded = decode_cdr_le(&ty, &encode(&Rgba(0.1, 1.0, f32::INFINITY, -0.0))).unwrap();
        let json = serde_json::to_string(&Value::Object(decoded.0)).unwrap();
        assert_eq!(
            json,
            r#"{"r":0.10000000149011612,"g":1.0,"b":"Infinity","a":-0.0}"#
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let registry = Registry::shipped();
        let ty = registry.resolve("sensor_msgs/PointCloud2").unwrap();
        // A sequence length far beyond the data.
        let mut body = encode(&(Time { sec: 1, nanosec: 1 }, "f".to_string(), 1u32, 1u32));
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_cdr_le(&ty, &body).is_err());
        for cut in 0..body.len() {
            assert!(decode_cdr_le(&ty, &body[..cut]).is_err());
        }
    }
}
