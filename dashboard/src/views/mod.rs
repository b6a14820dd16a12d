//! What the screens show: formatting, server-side SVG and the askama page types.

pub mod fmt;
pub mod pages;
pub mod svg;
