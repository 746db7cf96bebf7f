//! Registry benchmark (placeholder until the criterion bench lands).
fn main() {}
