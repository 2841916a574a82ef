//! The event model of nublar and its codecs: what a point is, how line protocol becomes one,
//! how one becomes line protocol again, and the layout the log stores it in.
//!
//! **This crate does no I/O**: it turns bytes into events and back, so the gateway, the log,
//! the processors and the lake can all share it without sharing anything else.

pub mod bench;
pub mod event;
pub mod geo;
pub mod json;
pub mod limits;
pub mod line_protocol;
pub mod stored;

pub use event::{
    ColumnKind, Event, Field, FieldType, FieldValue, ParsedLine, Precision, Tag, TimestampOverflow,
};
pub use limits::ParseLimits;
pub use line_protocol::{Lines, ParseError, ParseErrorKind, parse_lines, write_line};
