#![allow(unreachable_pub)] // a test binary has no public API

//! The homeserver's integration tests: real `parley-homeserver` processes, real HTTP and
//! WebSocket clients, on both backends (SQLite file; Postgres from `DATABASE_URL` or a
//! throwaway cluster). Plus the generic store suite, run against both stores directly.

mod harness;

mod accounts;
mod admin;
mod contacts;
mod crash;
mod delivery;
mod errors;
mod fed_store;
mod federation;
mod federation_chats;
mod federation_libp2p;
mod group_info;
mod groups;
mod keys;
mod media;
mod media_federation;
mod multinode;
mod observability;
mod presence;
mod push;
mod store_suite;
mod topology;
