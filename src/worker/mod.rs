//! Background workers. Without `shared_preload_libraries`, a scheduler is started per database
//! on demand (after a `drip.*` call commits) and lives while runs need it; it starts one runner
//! per executing run, up to `drip.max_runs`. With `shared_preload_libraries`, a launcher also
//! probes every database so runs resume after a restart without any `drip.*` call.

mod batch;
mod claim;
pub mod foreground;
mod health;
pub mod launch;
pub mod launcher;
pub mod locks;
pub mod runner;
pub mod scheduler;
pub mod statements;
