//! cli placeholder
