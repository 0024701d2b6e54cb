//! Berth's records layer: everything between the store (`berth-store`, a
//! journal of byte keys) and the components that read or write records —
//! the API (`berth-server`), the controllers (`berth-control`), the agent
//! gateway (`berth-gateway`) and discovery (`berth-dns`). It owns the key
//! space, the one codec that keeps members a type does not carry, the one
//! compare-and-swap loop, the clock and ids every writer stamps records
//! with, and the watch-fed cache every follower plans from.
//!
//! It depends only on the model and the store: it must not serve HTTP,
//! decide placement or talk to agents, and no other Berth crate but those
//! two may sit below it.
//!
//! # Layout
//! - [`keys`]: every key prefix and the task index maintenance.
//! - `codec`: [`Stored`], [`encode`], [`get`].
//! - `update`: [`update`] (one record), [`transact`] (any transaction),
//!   [`replace`] (a cache-planned rewrite), [`Budget`].
//! - `clock`: [`Clock`], [`Ids`] and the [`Env`] that carries both.
//! - `cache`: [`Cache`], the watch-fed view; `follow`: [`follow`], the loop
//!   that keeps a [`Follower`]'s view current and steps it.
//! - `taskdefs`: [`TaskDefs`], task definitions read once.

mod cache;
mod clock;
mod codec;
mod error;
mod follow;
pub mod keys;
mod taskdefs;
mod update;

pub use cache::{Cache, ClusterView, Touched};
pub use clock::{Clock, Env, Ids, ManualClock, RandomIds, SequentialIds, SystemClock, TokioClock, new_id, now};
pub use codec::{Stored, encode, get, to_json};
pub use error::RecordsError;
pub use follow::{Follower, follow};
pub use taskdefs::TaskDefs;
pub use update::{Attempt, Budget, Change, Record, replace, transact, transact_at, update};
