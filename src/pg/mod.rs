//! The thin layer over `pg_sys`: every `unsafe` call of data_drip lives below this module, each
//! behind a safe function whose comment says why it is sound. Domain modules never touch
//! `pg_sys` directly.

pub mod before_image;
pub mod client;
pub mod extension;
pub mod identity;
pub mod parse;
pub mod preload;
pub mod scratch;
pub mod settings;
pub mod signals;
pub mod subxact;
pub mod timeout;
pub mod transaction;
pub mod types;
pub mod wake;
pub mod worker_args;
