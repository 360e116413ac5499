//! Pictures drawn in the page as SVG (by maud, so every label is escaped).

pub mod chart;
pub mod dag;
