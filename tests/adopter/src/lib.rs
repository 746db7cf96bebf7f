//! Nothing to import: the programs are in `src/bin` (`pingd`, `webd`) and
//! the tests that drive them in `tests/`.
