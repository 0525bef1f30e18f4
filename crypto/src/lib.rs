//! Parley client-side cryptography (being built).
