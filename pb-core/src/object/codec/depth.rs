//! A serde `Deserializer` wrapper that bounds the nesting depth of the value being decoded.
//!
//! Neither bincode nor serde limits recursion: a recursive user type such as
//! `enum Value { Leaf, Node(Box<Value>) }` decodes one stack frame per byte of input, and about
//! 20 KB of `Node` tags overflow a 2 MiB stack, which aborts the process. The wrapper counts
//! every level that can hold a nested value (a sequence, tuple or struct, a map, an enum variant,
//! an option's `Some`, a newtype) and fails as soon as the count passes the limit, before the
//! next level recurses. Sibling values do not add up: a level is left when its visitor returns.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The depth counter shared by every wrapper of one decode.
pub(crate) struct Depth {
    max: usize,
    current: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Depth {
    pub(crate) fn new(max: usize) -> Depth {
        Depth {
            max,
            current: Cell::new(0),
            exceeded: Cell::new(false),
        }
    }

    /// Whether a decode failed because the value was nested too deeply.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.get()
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        let next = self.current.get() + 1;
        if next > self.max {
            self.exceeded.set(true);
            return Err(E::custom(format_args!(
                "value nested deeper than the limit max_depth = {}",
                self.max
            )));
        }
        self.current.set(next);
        Ok(())
    }

    fn leave(&self) {
        self.current.set(self.current.get().saturating_sub(1));
    }

    fn nested<T, E: de::Error>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.enter()?;
        let r = f();
        self.leave();
        r
    }
}

/// Decodes `T` through a depth-limited view of the deserializer it is given.
pub(crate) struct Seed<'a, S> {
    pub(crate) seed: S,
    pub(crate) depth: &'a Depth,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(De {
            de: d,
            depth: self.depth,
        })
    }
}

struct De<'a, D> {
    de: D,
    depth: &'a Depth,
}

struct Vis<'a, V> {
    v: V,
    depth: &'a Depth,
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.de.$method(Vis { v: visitor, depth: self.depth })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for De<'_, D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_unit_struct(
            name,
            Vis {
                v: visitor,
                depth: self.depth,
            },
        )
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        if name == crate::object::OBJECT_REF {
            // An object reference is a leaf (an index), counted as no level, as before it
            // crossed as a newtype.
            return self.de.deserialize_newtype_struct(name, visitor);
        }
        self.de.deserialize_newtype_struct(
            name,
            Vis {
                v: visitor,
                depth: self.depth,
            },
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple(
            len,
            Vis {
                v: visitor,
                depth: self.depth,
            },
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple_struct(
            name,
            len,
            Vis {
                v: visitor,
                depth: self.depth,
            },
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_struct(
            name,
            fields,
            Vis {
                v: visitor,
                depth: self.depth,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_enum(
            name,
            variants,
            Vis {
                v: visitor,
                depth: self.depth,
            },
        )
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.v.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Vis<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.v.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.v.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let depth = self.depth;
        depth.nested(|| self.v.visit_some(De { de: d, depth }))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let depth = self.depth;
        depth.nested(|| self.v.visit_newtype_struct(De { de: d, depth }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        let depth = self.depth;
        depth.nested(|| self.v.visit_seq(Access { a, depth }))
    }

    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        let depth = self.depth;
        depth.nested(|| self.v.visit_map(Access { a, depth }))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        let depth = self.depth;
        depth.nested(|| self.v.visit_enum(Access { a, depth }))
    }
}

/// Wraps the seq, map, enum and variant accesses so that nested values stay counted.
struct Access<'a, A> {
    a: A,
    depth: &'a Depth,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.a.next_element_seed(Seed {
            seed,
            depth: self.depth,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.a.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.a.next_key_seed(Seed {
            seed,
            depth: self.depth,
        })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.a.next_value_seed(Seed {
            seed,
            depth: self.depth,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.a.size_hint()
    }
}

impl<'a, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<'a, A> {
    type Error = A::Error;
    type Variant = Access<'a, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let depth = self.depth;
        let (value, variant) = self.a.variant_seed(Seed { seed, depth })?;
        Ok((value, Access { a: variant, depth }))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.a.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.a.newtype_variant_seed(Seed {
            seed,
            depth: self.depth,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.a.tuple_variant(
            len,
            Vis {
                v: visitor,
                depth: self.depth,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.a.struct_variant(
            fields,
            Vis {
                v: visitor,
                depth: self.depth,
            },
        )
    }
}
