//! The vocabulary of coopr: identifiers, statuses, the catalog, tenants, clusters, nodes, jobs and
//! tasks, in Coopr's names and JSON shapes. No logic beyond parsing and formatting lives here.

pub mod catalog;
pub mod cluster;
pub mod error;
pub mod ids;
pub mod job;
pub mod lenient;
pub mod shared_json;
pub mod short_str;
pub mod status;
pub mod vecmap;

pub use catalog::*;
pub use cluster::*;
pub use error::IdError;
pub use ids::*;
pub use job::*;
pub use short_str::{InlineStr, ShortStr};
pub use status::*;
pub use vecmap::VecMap;
