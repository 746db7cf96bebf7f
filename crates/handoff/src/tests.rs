//! Tests that cross modules: the bad-input tables (one per area, every
//! error naming its culprit and the fix) and the secret-file rule on real
//! files, through `open_file`.

mod bad_inputs;
mod secret_files;
