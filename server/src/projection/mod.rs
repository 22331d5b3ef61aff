//! Consumers of the log. Today: the router, which fans committed events out to
//! the connected sessions they concern. Search and push projections join later.

pub mod router;
