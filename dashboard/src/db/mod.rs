//! Talking to PostgreSQL: a small pool per role and every query the dashboard makes.

pub mod cache;
pub mod pool;
pub mod queries;
