//! parley-client's integration tests: real homeserver processes, real sockets.
#![allow(unreachable_pub)]

mod harness;

mod backup;
mod blocking;
mod canary;
mod cli;
mod devices;
mod disappearing;
mod e2e;
mod federation;
mod groups;
mod history;
mod linking;
mod media;
mod messaging;
mod offline;
mod presence;
mod races;
mod rejoin;
mod tmux;
