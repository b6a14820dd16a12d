//! Talking to PostgreSQL: a small pool per role and every query the dashboard makes.

pub mod cache;
pub mod connect;
pub mod pool;
pub mod queries;
