//! A YAML document as a tree of nodes that each know their line and column.
//!
//! The manifest is read in two steps: `serde-saphyr` turns the text into this tree (only YAML syntax can
//! fail here), then `manifest` walks the tree and collects *every* problem with its position. Deserialising
//! straight into typed structs would stop at the first problem and could not suggest the key that was
//! meant; walking a tree can do both.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_location(loc: serde_saphyr::Location) -> Option<Pos> {
        (loc.line() > 0).then(|| Pos {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
        })
    }
}

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order (duplicate keys are rejected by the parser).
    Map(Vec<(Key, Node)>),
}

/// A mapping key (scalar keys only; `1: x` becomes the key `"1"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Node {
    /// What kind of node this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The entry `key` of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
    }
}

/// A YAML syntax error: the message and, when known, where.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub message: String,
    pub pos: Option<Pos>,
}

/// Parses one YAML document into a [`Node`] tree.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    // YAML 1.2 core booleans only: with YAML 1.1's `y`/`n`/`on`/`off`, a thespian called `y` or `n`
    // would silently become `true`.
    let options = serde_saphyr::options! { strict_booleans: true };
    match serde_saphyr::from_str_with_options::<Node>(text, options) {
        Ok(node) => Ok(node),
        Err(err) => {
            let err = err.without_snippet();
            // The message without the renderer's "at line X, column Y" suffix: we print the position
            // ourselves, as `file:line:column`. Control characters cannot reach a terminal this way.
            let message: String = UserMessageFormatter
                .format_message(err)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Err(SyntaxError {
                message,
                pos: err.location().and_then(Pos::from_location),
            })
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        Ok(Node {
            value: spanned.value,
            pos: Pos::from_location(spanned.referenced).unwrap_or_default(),
        })
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<KeyName>::deserialize(deserializer)?;
        Ok(Key {
            name: spanned.value.0,
            pos: Pos::from_location(spanned.referenced).unwrap_or_default(),
        })
    }
}

struct KeyName(String);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyName, E> {
                Ok(KeyName(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<KeyName, E> {
                Ok(KeyName(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyName, E> {
                Ok(KeyName(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyName, E> {
                Ok(KeyName(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyName, E> {
                Ok(KeyName(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyName, E> {
                Ok(KeyName(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyName, E> {
                Ok(KeyName("null".to_owned()))
            }
        }
        // As a string, whatever it looks like: `y:` is the key "y", not `true`.
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                // Beyond i64 nothing in a manifest is meaningful; keep the magnitude for the message.
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
                Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<Key, Node>()? {
                    entries.push((key, value));
                }
                Ok(Value::Map(entries))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// `Cow` for messages that quote user text: keeps it short and on one line.
pub fn quote(text: &str) -> Cow<'_, str> {
    const MAX: usize = 60;
    if text.len() <= MAX && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, column: u32) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn nodes_and_keys_carry_their_positions() {
        let doc = parse("fleet: demo\nthespians:\n  gilbert:\n    replicas: 2\n").unwrap();
        let entries = doc.as_map().unwrap();
        assert_eq!(entries[0].0.name, "fleet");
        assert_eq!(entries[0].0.pos, pos(1, 1));
        assert_eq!(entries[0].1.value, Value::Str("demo".into()));
        assert_eq!(entries[0].1.pos, pos(1, 8));
        let gilbert = doc.get("thespians").unwrap().get("gilbert").unwrap();
        let (key, value) = &gilbert.as_map().unwrap()[0];
        assert_eq!((key.name.as_str(), key.pos), ("replicas", pos(4, 5)));
        assert_eq!((value.value.clone(), value.pos), (Value::Int(2), pos(4, 15)));
    }

    #[test]
    fn scalars_are_typed_by_the_yaml_core_schema() {
        let doc = parse("a: 20ms\nb: 20\nc: 0.1\nd: true\ne: ~\nf:\ng: '20'\nh: [1, x]\n").unwrap();
        let v = |k: &str| doc.get(k).unwrap().value.clone();
        assert_eq!(v("a"), Value::Str("20ms".into()));
        assert_eq!(v("b"), Value::Int(20));
        assert_eq!(v("c"), Value::Float(0.1));
        assert_eq!(v("d"), Value::Bool(true));
        assert_eq!(v("e"), Value::Null);
        assert_eq!(v("f"), Value::Null);
        assert_eq!(v("g"), Value::Str("20".into()));
        let Value::Seq(items) = v("h") else {
            panic!("h is a list")
        };
        assert_eq!(items[1].value, Value::Str("x".into()));
        assert_eq!(items[1].pos, pos(8, 8));
    }

    #[test]
    fn syntax_errors_have_a_position_and_no_location_suffix() {
        let err = parse("fleet: demo\nthespians:\n  a: [1, 2\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
        assert!(!err.message.contains("at line"), "{err:?}");
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.contains("duplicate"), "{err:?}");
        assert_eq!(err.pos.map(|p| p.line), Some(2));
    }

    #[test]
    fn aliases_resolve_to_the_anchored_value() {
        let doc = parse("x: &s [1]\ny: *s\n").unwrap();
        let Value::Seq(items) = &doc.get("y").unwrap().value else {
            panic!("y is a list")
        };
        assert_eq!(items[0].value, Value::Int(1));
    }

    #[test]
    fn yaml_1_1_booleans_are_plain_strings() {
        let doc = parse(
            "n: yes
y: on
",
        )
        .unwrap();
        assert_eq!(doc.get("n").unwrap().value, Value::Str("yes".into()));
        assert_eq!(doc.get("y").unwrap().value, Value::Str("on".into()));
    }
}
