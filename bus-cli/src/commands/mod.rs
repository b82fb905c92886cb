//! The commands, one module each.

pub(crate) mod dead_letters;
pub(crate) mod groups;
pub(crate) mod publish;
pub(crate) mod tail;
