//! start-up
